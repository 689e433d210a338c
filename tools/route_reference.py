#!/usr/bin/env python3
"""Independent reference for `exporter route`: every path's cls_token
computed by ONNX Runtime from the path's whole graph (where route runs the
graphs cut at their blocks, shared prefixes once, with tract), from the
dataset's pixels prepared here in numpy, then scored by
knn_reference.knn_top1.

Usage:
    python3 tools/route_reference.py BUNDLE DATA.npz FEATURES.npz
        FEATURES.npz from `exporter route --dump-features`: only its split
        (`train`, `val`) and `labels` are read as inputs; its features are
        only compared. Prints per path: id, k-NN top-1 in percent on the
        ONNX Runtime features, and the largest difference between the dumped
        cls_token and ONNX Runtime's, relative to the largest |value|.

The preparation is POA's evaluation transform as torchvision defines it:
Resize(round(S*256/224)) of the shorter side, bilinear with half-pixel
centres (no antialiasing is involved: MNIST's 28 pixels are enlarged),
CenterCrop(S) with its corner rounded half to even (Python's round), grey
repeated to three channels, ImageNet's mean and std. Here it is written as
two interpolation matrices applied to the image. Needs numpy and
onnxruntime; .ci/run installs both.
"""
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from knn_reference import knn_top1

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def resize_matrix(src, dst):
    """[dst, src]: row i interpolates output pixel i, whose centre is at
    (i + 0.5) * src / dst - 0.5 in source pixels, clamped to the image."""
    pos = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0, src - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, src - 1)
    frac = pos - lo
    m = np.zeros((dst, src))
    np.add.at(m, (np.arange(dst), lo), 1 - frac)
    np.add.at(m, (np.arange(dst), hi), frac)
    return m


def pixel_values(images, side):
    """uint8 [N, H, W] grey -> float32 [N, 3, side, side]."""
    n, h, w = images.shape
    short = round(side * 256 / 224)
    rh, rw = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    top, left = round((rh - side) / 2), round((rw - side) / 2)
    ry = resize_matrix(h, rh)[top : top + side]
    rx = resize_matrix(w, rw)[left : left + side]
    grey = np.einsum("yh,nhw,xw->nyx", ry, images / 255.0, rx)
    rgb = (grey[:, None] - MEAN[None, :, None, None]) / STD[None, :, None, None]
    return rgb.astype(np.float32)


def main(bundle, data, dump):
    bundle = Path(bundle)
    dump = np.load(dump)
    train, val, labels = dump["train"], dump["val"], dump["labels"]
    n = len(labels)
    dataset = np.load(data)
    if not np.array_equal(dataset["labels"][:n], labels):
        sys.exit(f"the dump's labels are not the first {n} of {data}")
    manifest = json.loads((bundle / "manifest.json").read_text())
    classes = int(labels.max()) + 1
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    pixels = {}  # by the graph's image side
    for subnet in manifest["subnets"]:
        graph = str(bundle / subnet["onnx"])
        session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        side = session.get_inputs()[0].shape[-1]
        if side not in pixels:
            pixels[side] = pixel_values(dataset["images"][:n], side)
        (cls,) = session.run(["cls_token"], {"pixel_values": pixels[side]})
        acc = knn_top1(cls[train], labels[train], cls[val], labels[val], classes)
        diff = np.abs(dump[subnet["id"]] - cls).max() / np.abs(cls).max()
        print(f"{subnet['id']} {acc:.4f} {diff:.3e}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
