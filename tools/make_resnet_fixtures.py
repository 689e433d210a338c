"""Regenerates the golden POA ResNet fixtures: `python3 tools/make_resnet_fixtures.py`.

Writes small random but realistically initialised bottleneck ResNet teachers
in POA's checkpoint layout and references computed in float64 by the elastic
forward in resnet_reference.py (numpy). Before writing, it checks that
forward (see `check_forward`) and fails loudly if anything disagrees. Needs
torch (to write `.pth` as POA training does) and numpy; CI never runs it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml

from make_fixtures import _OmegaConfDumper, save_pth, save_safetensors
from resnet_reference import (
    Geometry,
    Weights,
    block_indices,
    fold,
    forward,
    forward_plain,
    paper_block_indices,
    teacher_shapes,
)

ROOT = Path(__file__).resolve().parent.parent
Subnet = tuple[tuple[int, ...], tuple[int, ...]]

# The fp32 deployment path (folded weights, fp32 arithmetic) must land this
# close to the float64 references, relative to the output's magnitude...
FP32_TOLERANCE = 1e-5
# ...and every plausible slicing bug must move some output this far (relative).
BUG_MIN_EFFECT = 1e-2


def main() -> None:
    tiny(ROOT / "tests/fixtures/resnet-tiny")
    deep31(ROOT / "tests/fixtures/resnet-deep31")


def tiny(out: Path) -> None:
    """GroupNorm(2) on mid widths 4/6/8 (groups of 2, 3 and 4 channels)."""
    g = Geometry(
        stem_channels=8,
        base_channels=4,
        num_gn_groups=2,
        min_depths=(1, 1, 2, 1),
        max_depths=(2, 3, 4, 1),
        strides=(1, 2, 2, 2),
        image_size=56,
    )
    rng = np.random.default_rng(7)
    weights = init_teacher(g, rng)
    mids = g.mid_widths()
    subnets: list[Subnet] = [
        (mids[0], (1, 1, 2, 1)),
        (mids[1], (2, 2, 3, 1)),
        (mids[2], (2, 3, 4, 1)),
        (mids[1], (1, 3, 2, 1)),
        (mids[2], (1, 1, 3, 1)),
        (mids[0], (2, 3, 4, 1)),
    ]
    x = image_batch(2, g.image_size, rng)
    check_forward(g, weights, subnets, x)
    write_config(out / "output/config.yaml", g)
    teacher = {"backbone." + k: torch.from_numpy(v.astype(np.float32)) for k, v in weights.items()}
    teacher["backbone.mask_token"] = torch.zeros(1, g.stem_channels, 1, 1)
    teacher["dino_head.mlp.0.weight"] = torch.from_numpy(rng.normal(0, 0.1, (16, 8 * g.base_channels * 4)).astype(np.float32))
    save_pth(out / "output/eval/training_49/teacher_checkpoint.pth", {"teacher": teacher})
    save_references(out / "reference.safetensors", g, weights, subnets, x, {})


def deep31(out: Path) -> None:
    """Stage 3 of 31 blocks: at depth 23 (and 27) numpy's linspace keeps a
    block the paper's floor formula does not. GroupNorm(1)."""
    g = Geometry(
        stem_channels=4,
        base_channels=1,
        num_gn_groups=1,
        min_depths=(1, 1, 1, 1),
        max_depths=(1, 1, 31, 1),
        strides=(1, 2, 2, 2),
        image_size=40,
    )
    rng = np.random.default_rng(31)
    weights = init_teacher(g, rng)
    mids = g.mid_widths()
    subnets: list[Subnet] = [
        (mids[1], (1, 1, 23, 1)),
        (mids[0], (1, 1, 23, 1)),
        (mids[1], (1, 1, 27, 1)),
        (mids[1], (1, 1, 31, 1)),
        (mids[0], (1, 1, 1, 1)),
    ]
    x = image_batch(1, g.image_size, rng)
    check_forward(g, weights, subnets, x)
    numpy_23, paper_23 = block_indices(31, 23), paper_block_indices(31, 23)
    require(
        sum(a != b for a, b in zip(numpy_23, paper_23)) == 1,
        "linspace and the floor formula must differ at exactly one index at 31/23",
    )
    floor_effect = rel_diff(
        forward(weights, g, mids[1], (1, 1, 23, 1), x),
        forward_blocks(weights, g, mids[1], (1, 1, 23, 1), x, paper_23),
    )
    require(floor_effect > BUG_MIN_EFFECT, f"the floor formula moves outputs by only {floor_effect:.1e}")
    write_config(out / "config.yaml", g)
    plain = {k: torch.from_numpy(v.astype(np.float32)) for k, v in weights.items()}
    save_safetensors(out / "teacher.safetensors", plain)
    save_references(
        out / "reference.safetensors",
        g,
        weights,
        subnets,
        x,
        {"paper_block_idx": {"23": paper_23}, "floor_effect": round(floor_effect, 3)},
    )


# Bottleneck convs this small make their outputs' variance comparable to
# GroupNorm's eps, the only place POA's a = max_mid/mid shows: GroupNorm
# cancels any scale of its input except against eps.
BOTTLENECK_CONV_SCALE = 3e-3


def init_teacher(g: Geometry, rng: np.random.Generator) -> Weights:
    """Convs N(0, 1/fan_in) (bottleneck convs BOTTLENECK_CONV_SCALE times
    that), GroupNorm weight N(1, 0.1) and bias N(0, 0.05)."""
    weights: Weights = {}
    for name, shape in teacher_shapes(g).items():
        if len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            scale = BOTTLENECK_CONV_SCALE if ".conv." in name else 1.0
            v = rng.normal(0.0, scale / np.sqrt(fan_in), shape)
        elif name.endswith("weight"):
            v = rng.normal(1.0, 0.1, shape)
        else:
            v = rng.normal(0.0, 0.05, shape)
        # Stored as fp32: the reference computes with exactly what is stored.
        weights[name] = v.astype(np.float32).astype(np.float64)
    return weights


def image_batch(batch: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random images plus noise, ImageNet-normalised (roughly [-2, 2])."""
    coarse = rng.random((batch, 3, 4, 4))
    t = torch.nn.functional.interpolate(
        torch.from_numpy(coarse), size=(size, size), mode="bilinear", align_corners=False
    ).numpy()
    pixels = np.clip(t + 0.05 * rng.standard_normal(t.shape), 0, 1)
    mean = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    return ((pixels - mean) / std).astype(np.float32).astype(np.float64)


def forward_blocks(w: Weights, g: Geometry, mids, depths, x, stage3_blocks: list[int]):
    """The elastic forward with stage 3's kept blocks given explicitly (bug model)."""
    import resnet_reference as r

    original = r.block_indices
    r.block_indices = lambda m, d: stage3_blocks if m == g.max_depths[2] and d == depths[2] else original(m, d)
    try:
        return forward(w, g, mids, depths, x)
    finally:
        r.block_indices = original


def check_forward(g: Geometry, w: Weights, subnets: list[Subnet], x: np.ndarray) -> None:
    """The elastic forward against a plain one, in float32, and against bugs."""
    full = g.mid_widths()[-1], g.max_depths
    require(
        rel_diff(forward(w, g, *full, x), forward_plain(w, g, g.max_depths, x)) == 0.0,
        "at full size the elastic forward must equal the plain forward exactly",
    )
    for mids, depths in subnets:
        want = forward(w, g, mids, depths, x)
        folded = fold(w, g, mids, depths)
        require(
            rel_diff(want, forward_plain(folded, g, depths, x)) < 1e-12,
            f"{mids} {depths}: folded plain forward differs",
        )
        f32 = {k: v.astype(np.float32) for k, v in folded.items()}
        got32 = forward_plain(f32, g, depths, x.astype(np.float32))
        err = rel_diff(want, got32)
        require(err < FP32_TOLERANCE, f"{mids} {depths}: fp32 path off by {err:.1e}")
    mids, depths = subnets[1]
    want = forward(w, g, mids, depths, x)
    for bug, effect in slicing_bugs(g, w, mids, depths, x).items():
        require(
            rel_diff(want, effect) > BUG_MIN_EFFECT,
            f"bug '{bug}' moves the outputs by only {rel_diff(want, effect):.1e}",
        )


def slicing_bugs(g: Geometry, w: Weights, mids, depths, x) -> dict[str, tuple]:
    """Outputs of plausible exporter bugs, each of which the references must catch."""
    import resnet_reference as r

    def patched(name: str, fn):
        original = getattr(r, name)
        setattr(r, name, fn)
        try:
            return forward(w, g, mids, depths, x)
        finally:
            setattr(r, name, original)

    gn = r.group_norm
    bugs = {
        # GroupNorm with the wrong grouping: per channel, or all channels as one.
        "per-channel norm": patched("group_norm", lambda t, groups, wt, b: gn(t, t.shape[1], wt, b)),
        "first blocks instead of linspace": patched(
            "block_indices", lambda m, d: list(range(d))
        ),
        "no a on conv2/conv3": patched("bottleneck", _bottleneck_scaled(g, lambda a: (1.0, 1.0, 1.0))),
        "a on conv1 too": patched("bottleneck", _bottleneck_scaled(g, lambda a: (a, a, a))),
        "a on conv3 only": patched("bottleneck", _bottleneck_scaled(g, lambda a: (1.0, 1.0, a))),
    }
    if g.num_gn_groups > 1:
        bugs["one group"] = patched("group_norm", lambda t, groups, wt, b: gn(t, 1, wt, b))
    return bugs


def _bottleneck_scaled(g: Geometry, scales):
    """A bottleneck whose conv1/conv2/conv3 inputs take `scales(a)`."""
    import resnet_reference as r

    def block(w, g, stage, blk, mid, x):
        p = f"layer{stage + 1}.layers.{blk}."
        s1, s2, s3 = scales(g.max_mid(stage) / mid)
        stride = g.strides[stage] if blk == 0 else 1
        gn = lambda t, n, m=None: r.group_norm(t, g.num_gn_groups, w[p + n + ".weight"][:m], w[p + n + ".bias"][:m])  # noqa: E731
        out = r.relu(gn(r.conv2d(x * s1, w[p + "conv1.conv.weight"][:mid], 1, 0), "norm1", mid))
        out = r.relu(gn(r.conv2d(out * s2, w[p + "conv2.conv.weight"][:mid, :mid], stride, 1), "norm2", mid))
        out = gn(r.conv2d(out * s3, w[p + "conv3.conv.weight"][:, :mid], 1, 0), "norm3")
        identity = x
        if blk == 0 and g.has_shortcut(stage):
            identity = gn(r.conv2d(x, w[p + "downsample.0.weight"], g.strides[stage], 0), "downsample.1")
        return r.relu(out + identity)

    return block


def rel_diff(a: tuple, b: tuple) -> float:
    """The largest difference of two (cls, patches) pairs over the first's magnitude."""
    return max(float(np.abs(x - y).max() / np.abs(x).max()) for x, y in zip(a, b))


def require(ok: bool, message: str) -> None:
    if not ok:
        sys.exit(f"make_resnet_fixtures: {message}")


def subnet_id(mids: tuple[int, ...], depths: tuple[int, ...]) -> str:
    """The exporter's id: stage-1 mid width, then the four stage depths."""
    return f"w{mids[0]}-d{'.'.join(map(str, depths))}"


def save_references(path: Path, g: Geometry, w: Weights, subnets: list[Subnet], x: np.ndarray, extra: dict) -> None:
    tensors = {"input": torch.from_numpy(x.astype(np.float32))}
    for mids, depths in subnets:
        cls, patches = forward(w, g, mids, depths, x)
        sid = subnet_id(mids, depths)
        tensors[f"{sid}.cls_token"] = torch.from_numpy(cls.astype(np.float32))
        tensors[f"{sid}.patch_tokens"] = torch.from_numpy(patches.astype(np.float32))
    fixture = {
        "generator": "tools/make_resnet_fixtures.py (float64 numpy elastic forward, as float32)",
        "geometry": asdict(g),
        "mid_widths": g.mid_widths(),
        "subnets": {subnet_id(m, d): {"mid_widths": m, "depths": d} for m, d in subnets},
        "block_idx": {
            str(d): block_indices(g.max_depths[2], d)
            for d in sorted({d[2] for _, d in subnets})
        },
        **extra,
    }
    save_safetensors(path, tensors, {"fixture": json.dumps(fixture, sort_keys=True)})


def write_config(path: Path, g: Geometry) -> None:
    """A POA ResNet training config as OmegaConf dumps it (resnet_ssl_default_config keys)."""
    config = {
        "MODEL": {"WEIGHTS": ""},
        "dino": {"loss_weight": 1.0, "head_n_prototypes": [64], "head_bottleneck_dim": 16},
        "train": {"batch_size_per_gpu": 64, "output_dir": "./output", "scale_for_num_patch": 4},
        "student": {
            "arch": "resnet_dynamic",
            "patch_size": 4,
            "min_depths": list(g.min_depths),
            "max_depths": list(g.max_depths),
            "stem_channels": g.stem_channels,
            "base_channels": g.base_channels,
            "num_gn_groups": g.num_gn_groups,
            "strides": list(g.strides),
            "mode": "order",
            "net_select_scale": 2,
            "ibot_scale_factor": 2,
            "drop_path_rate": 0.0,
            "pretrained_weights": "",
        },
        "teacher": {"momentum_teacher": 0.992, "teacher_temp": 0.07},
        "optim": {"epochs": 100, "base_lr": 0.004},
        "crops": {
            "global_crops_scale": [0.32, 1.0],
            "local_crops_number": 8,
            "global_crops_size": g.image_size,
            "local_crops_size": g.image_size // 2,
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.dump(config, Dumper=_OmegaConfDumper, sort_keys=False))


if __name__ == "__main__":
    main()
