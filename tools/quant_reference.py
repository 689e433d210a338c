#!/usr/bin/env python3
"""Independent reference for `tailor_exporter::quant`: the same fp32
sub-network quantised by ONNX Runtime's own `quantize_static` (QDQ, weights
symmetric int8 per channel, activations per tensor: every product's inputs
and the outputs of Gemm and Conv; biases left float), from
the same calibration images, run on a few real digits.

    cargo run -p tailor-exporter --bin exporter -- --subnets 48x3 -q \
        examples/poa-vit-tiny/eval/training_799/teacher_checkpoint.pth -o /tmp/b
    python3 tools/quant_reference.py golden /tmp/b/graphs/w48-d3.onnx \
        examples/mnist-calib.npz tests/fixtures/quant-golden.json
    python3 tools/quant_reference.py check GRAPH.onnx...   # onnx.checker, full
    python3 tools/quant_reference.py types GRAPH.onnx      # inputs' types per node

`golden` calibrates on the npz's first CALIBRATION images and runs its last
DIGITS images, each prepared exactly as runtime/src/image.rs prepares it
(shorter side to round(S*256/224) bilinear with pixel centres aligned,
centre crop, grey to three channels, ImageNet mean and std; float32 as
there). For each variant (MinMax with symmetric int8 activations, MinMax
with asymmetric uint8, and Percentile 99.99 symmetric int8) it writes the
`cls_token` of every digit, each quantised activation's scale and zero
point, and, once, the sha256 of each weight's int8 values and of its
per-channel scales. The `cls_token` is ONNX Runtime's as it runs by default
(its QDQ fusions: QGemm, QLinearConv... integer kernels, which round the
float bias to int32 and requantise in their own arithmetic) and, as
`cls_token_unfused`, with every optimisation off: each QuantizeLinear,
DequantizeLinear and float product run as written, the graph's ONNX
meaning, which is what tract computes. ONNX Runtime has no MSE calibrator (its others, Entropy and
Distribution, are different criteria), so MSE has no reference here.

Needs numpy, onnx and onnxruntime (1.31.1 made the committed fixture).
CI runs only `check` and `types` (tests/fp16.rs: which nodes compute in
float16, by ONNX's shape inference rather than our rewrite's own account).
"""

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

CALIBRATION = 64
DIGITS = 8
PERCENTILE = 99.99
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
VARIANTS = {
    "minmax-s8": (CalibrationMethod.MinMax, QuantType.QInt8),
    "minmax-u8": (CalibrationMethod.MinMax, QuantType.QUInt8),
    "percentile-s8": (CalibrationMethod.Percentile, QuantType.QInt8),
}


def prepare(image, side):
    """[3, side, side] float32 from an [H, W] uint8 grey image."""
    h, w = image.shape
    short = round(side * 256 / 224)
    if w >= h:
        rw, rh = np.floor(short * w / h), float(short)
    else:
        rw, rh = float(short), np.floor(short * h / w)
    left = np.round((rw - side) / 2.0)  # numpy rounds half to even, as CenterCrop
    top = np.round((rh - side) / 2.0)

    def source(i, offset, resized, length):
        f = np.clip((i + offset + 0.5) * length / resized - 0.5, 0.0, length - 1)
        i0 = np.floor(f).astype(np.int64)
        return i0, np.minimum(i0 + 1, length - 1), (f - i0).astype(np.float32)

    y0, y1, ty = source(np.arange(side, dtype=np.float64), top, rh, h)
    x0, x1, tx = source(np.arange(side, dtype=np.float64), left, rw, w)
    p = image.astype(np.float32) / np.float32(255.0)
    ty, tx = ty[:, None], tx[None, :]
    one = np.float32(1.0)
    upper = p[y0][:, x0] * (one - tx) + p[y0][:, x1] * tx
    lower = p[y1][:, x0] * (one - tx) + p[y1][:, x1] * tx
    v = upper * (one - ty) + lower * ty
    return np.stack([(v - MEAN[c]) / STD[c] for c in range(3)]).astype(np.float32)


class Images(CalibrationDataReader):
    def __init__(self, pixels):
        self.batches = iter([{"pixel_values": p[None]} for p in pixels])

    def get_next(self):
        return next(self.batches, None)


def qdq_parameters(model):
    """Activation scale and zero point by tensor; per weight the sha256 of
    its int8 values and of its scales (little-endian f32)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    activations, weights = {}, {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            activations[node.input[0]] = {
                "scale": float(inits[node.input[1]]),
                "zero_point": int(inits[node.input[2]]),
            }
        elif node.op_type == "DequantizeLinear" and node.input[0] in inits:
            name = node.input[0].removesuffix("_quantized")
            values = inits[node.input[0]]
            if values.dtype != np.int8:
                continue
            scales = inits[node.input[1]].astype("<f4")
            weights[name] = {
                "sha256": hashlib.sha256(values.tobytes()).hexdigest(),
                "scales_sha256": hashlib.sha256(scales.tobytes()).hexdigest(),
            }
    return activations, weights


def golden(graph, npz, target):
    data = np.load(npz)
    images = data["images"]
    model = onnx.load(graph, load_external_data=False)
    side = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    calibration = np.stack([prepare(im, side) for im in images[:CALIBRATION]])
    digit_index = list(range(len(images) - DIGITS, len(images)))
    digits = np.stack([prepare(images[i], side) for i in digit_index])

    def cls_token(path, fused=True):
        options = ort.SessionOptions()
        if not fused:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return s.run(["cls_token"], {"pixel_values": digits})[0]

    def sha256(path):
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    weights = {t.external_data[0].value for t in model.graph.initializer if t.external_data}
    out = {
        "graph": Path(graph).stem,
        # The files quantised, so a test sees when the exporter changed them.
        "graph_sha256": sha256(graph),
        "weights_sha256": {w: sha256(Path(graph).parent / w) for w in sorted(weights)},
        "onnxruntime": ort.__version__,
        "calibration_images": CALIBRATION,
        "digits": digit_index,
        "labels": data["labels"][digit_index].tolist(),
        "fp32": cls_token(graph).tolist(),
        "variants": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, (method, activation) in VARIANTS.items():
            path = Path(tmp) / f"{name}.onnx"
            quantize_static(
                graph,
                path,
                Images(calibration),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["MatMul", "Gemm", "Conv"],
                per_channel=True,
                activation_type=activation,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
                extra_options={
                    "ActivationSymmetric": activation == QuantType.QInt8,
                    "WeightSymmetric": True,
                    "QuantizeBias": False,
                    # As ours: Gemm's and Conv's outputs are quantised
                    # too (what lets ONNX Runtime fuse them into QGemm and
                    # QLinearConv), the attention MatMuls' stay float.
                    "OpTypesToExcludeOutputQuantization": ["MatMul"],
                    "CalibPercentile": PERCENTILE,
                    # The percentile of |x|, as ours; MinMax keeps the true
                    # range (symmetric here would widen uint8's).
                    "CalibTensorRangeSymmetric": method == CalibrationMethod.Percentile,
                },
            )
            activations, weights = qdq_parameters(onnx.load(path))
            out["variants"][name] = {
                "cls_token": cls_token(path).tolist(),
                "cls_token_unfused": cls_token(path, fused=False).tolist(),
                "activations": activations,
            }
            out.setdefault("weights", weights)
    # A file, not stdout: the percentile calibrator prints as it goes.
    Path(target).write_text(json.dumps(out, indent=1) + "\n")


def check(paths):
    for p in paths:
        onnx.checker.check_model(p, full_check=True)
    print("checked", len(paths))


def types(path):
    """Each node's op, name and its inputs' element types, as ONNX's own
    shape inference types them (`FLOAT`, `FLOAT16`...), one JSON line."""
    model = onnx.shape_inference.infer_shapes(onnx.load(path, load_external_data=False))
    graph = model.graph
    known = {
        v.name: v.type.tensor_type.elem_type
        for v in list(graph.input) + list(graph.output) + list(graph.value_info)
    }
    known.update({t.name: t.data_type for t in graph.initializer})
    name = onnx.TensorProto.DataType.Name
    nodes = [
        {
            "op": n.op_type,
            "name": n.name,
            "inputs": [name(known[i]) if i in known else None for i in n.input],
        }
        for n in graph.node
    ]
    print(json.dumps(nodes))


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "check":
        check(sys.argv[2:])
    elif len(sys.argv) == 3 and sys.argv[1] == "types":
        types(sys.argv[2])
    elif len(sys.argv) == 5 and sys.argv[1] == "golden":
        golden(*sys.argv[2:])
    else:
        sys.exit(__doc__)
