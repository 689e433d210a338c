#!/usr/bin/env python3
"""Independent reference for `calibration::ranges` with `--ranges inner`.

Runs a bundle graph with onnxruntime on 21 formula images (`pixels`, the
same formula as tests/ranges.rs), with the activations of every MatMul, Gemm and Conv (inputs and
outputs computed from the graph's input) added as graph outputs, and prints
per tensor the minimum, the maximum and the nearest-rank 99.99th percentile
of |x| over all values of all images, as JSON.

    cargo run -p tailor-exporter --bin exporter -- --subnets 32x2 -q \
        tests/fixtures/vit-tiny/output/eval/training_99/teacher_checkpoint.pth -o /tmp/b
    python3 tools/ranges_reference.py /tmp/b/graphs/w32-d2.onnx > tests/fixtures/ranges-golden.json

21 images keep every tensor at most 65536 values (the Rust side's sample
size, so its percentile is exact too) and above 10000 for most, so the
percentile is not simply the largest |x|. Needs onnx, onnxruntime, numpy.
CI never runs it.
"""

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
IMAGES = 21
PERCENTILE = 99.99
OPS = {"MatMul", "Gemm", "Conv"}


def inner_tensors(graph):
    """Names of the MatMul/Gemm/Conv activations: tensors reachable from a
    graph input, excluding the graph's inputs and outputs."""
    constants = {t.name for t in graph.initializer}
    inputs = {i.name for i in graph.input if i.name not in constants}
    outputs = {o.name for o in graph.output}
    # Reachability from the inputs, computed as a fixed point rather than in
    # one ordered pass.
    reached = set(inputs)
    changed = True
    while changed:
        changed = False
        for node in graph.node:
            if reached.intersection(node.input) and not reached.issuperset(node.output):
                reached.update(node.output)
                changed = True
    names = set()
    for node in graph.node:
        if node.op_type in OPS:
            names.update(t for t in list(node.input) + list(node.output) if t in reached)
    return sorted(names - inputs - outputs)


def pixels(n, side):
    """[n, 3, side, side]: 2.2 sin(0.7 n + 1.3 c + 0.37 y + 0.23 x + 0.05 x y),
    computed in float64, stored as float32."""
    n, c, y, x = np.meshgrid(
        np.arange(n), np.arange(3), np.arange(side), np.arange(side), indexing="ij"
    )
    phase = 0.7 * n + 1.3 * c + 0.37 * y + 0.23 * x + 0.05 * x * y
    return (2.2 * np.sin(phase.astype(np.float64))).astype(np.float32)


def ranges(values):
    flat = np.concatenate([v.astype(np.float64).ravel() for v in values])
    magnitudes = np.sort(np.abs(flat))
    rank = max(1, math.ceil(PERCENTILE / 100 * magnitudes.size))
    return {
        "min": float(flat.min()),
        "max": float(flat.max()),
        "abs_percentile": float(magnitudes[rank - 1]),
        "values": int(flat.size),
    }


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(graph_path):
    model = onnx.load(graph_path)  # with its external data
    names = inner_tensors(model.graph)
    outputs = [o.name for o in model.graph.output]
    for name in names:
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    # No fusion may swallow a tensor asked for, and none changes a value.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    side = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    images = pixels(IMAGES, side)
    wanted = outputs + names
    per_image = [session.run(wanted, {"pixel_values": image[None]}) for image in images]
    tensors = {"pixel_values": ranges([images])}
    for k, name in enumerate(wanted):
        tensors[name] = ranges([out[k] for out in per_image])
    # The locations, as the file names them (loading resolves them away).
    references = onnx.load(graph_path, load_external_data=False)
    weights = sorted(
        {
            e.value
            for t in references.graph.initializer
            for e in t.external_data
            if e.key == "location"
        }
    )
    golden = {
        "tool": "tools/ranges_reference.py (onnxruntime %s, optimisations off)" % ort.__version__,
        "graph_sha256": sha256(graph_path),
        "weights_sha256": {w: sha256(Path(graph_path).parent / w) for w in weights},
        "images": IMAGES,
        "percentile": PERCENTILE,
        "tensors": tensors,
    }
    json.dump(golden, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main(sys.argv[1])
