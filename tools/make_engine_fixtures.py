#!/usr/bin/env python3
"""Writes the tiny ONNX graph the runtime's engine tests load.

runtime/tests/fixtures/engine/
    tiny.onnx            pixel_values [batch,3,4,4] -> cls_token [batch,8], patch_tokens [batch,16,8]
    weights/w8.bin       its two initializers as ONNX external data (one file, two offsets),
                         laid out like a bundle's graphs/weights/w<width>.bin
    reference.json       an input batch and the outputs numpy computes for it (float64, then
                         rounded to float32), independent of any ONNX runtime

The graph is a toy patch embedding: every pixel position is a token whose 3 channels go
through one Linear (MatMul + Add); the CLS token is the mean of the patch tokens.

Run from anywhere (needs numpy and onnx): python3 tools/make_engine_fixtures.py
"""

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

OUT = Path(__file__).resolve().parent.parent / "runtime" / "tests" / "fixtures" / "engine"
WIDTH = 8
SIDE = 4
TOKENS = SIDE * SIDE
WEIGHTS = "weights/w8.bin"


def external(name: str, array: np.ndarray, blob: bytearray) -> TensorProto:
    """An initializer whose bytes are appended to `blob` and referenced by offset."""
    data = np.ascontiguousarray(array, dtype="<f4").tobytes()
    tensor = TensorProto()
    tensor.name = name
    tensor.data_type = TensorProto.FLOAT
    tensor.dims.extend(array.shape)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", WEIGHTS), ("offset", len(blob)), ("length", len(data))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)
    blob.extend(data)
    return tensor


def main() -> None:
    rng = np.random.default_rng(20240806)
    weight = rng.standard_normal((3, WIDTH)).astype(np.float32)
    bias = rng.standard_normal(WIDTH).astype(np.float32)

    blob = bytearray()
    initializers = [external("embed.weight", weight, blob), external("embed.bias", bias, blob)]
    shape = helper.make_tensor("tokens_shape", TensorProto.INT64, [3], [0, 3, TOKENS])
    nodes = [
        helper.make_node("Reshape", ["pixel_values", "tokens_shape"], ["channels_first"]),
        helper.make_node("Transpose", ["channels_first"], ["tokens"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["tokens", "embed.weight"], ["projected"]),
        helper.make_node("Add", ["projected", "embed.bias"], ["patch_tokens"]),
        helper.make_node("ReduceMean", ["patch_tokens"], ["cls_token"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tailor-engine-fixture",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, SIDE, SIDE])],
        [
            helper.make_tensor_value_info("cls_token", TensorProto.FLOAT, ["batch", WIDTH]),
            helper.make_tensor_value_info("patch_tokens", TensorProto.FLOAT, ["batch", TOKENS, WIDTH]),
        ],
        initializer=initializers + [shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8

    (OUT / "weights").mkdir(parents=True, exist_ok=True)
    (OUT / WEIGHTS).write_bytes(bytes(blob))
    onnx.save_model(model, OUT / "tiny.onnx")
    # From the path, so the checker also resolves the external data.
    onnx.checker.check_model(OUT / "tiny.onnx", full_check=True)

    pixels = rng.standard_normal((2, 3, SIDE, SIDE)).astype(np.float32)
    tokens = pixels.astype(np.float64).reshape(2, 3, TOKENS).transpose(0, 2, 1)
    patch = tokens @ weight.astype(np.float64) + bias.astype(np.float64)
    cls = patch.mean(axis=1)
    reference = {
        "pixel_values": {"shape": list(pixels.shape), "data": pixels.ravel().tolist()},
        "cls_token": {"shape": list(cls.shape), "data": cls.astype(np.float32).ravel().tolist()},
        "patch_tokens": {"shape": list(patch.shape), "data": patch.astype(np.float32).ravel().tolist()},
    }
    (OUT / "reference.json").write_text(json.dumps(reference) + "\n")


if __name__ == "__main__":
    main()
