"""Regenerates the golden Swin fixtures: `python3 tools/make_swin_fixtures.py`.

Writes a small random but realistically initialised Swin teacher in POA's
checkpoint layout (and a plain-named fp16 variant without LayerNorm biases),
and references computed in float64 by the elastic forward in
swin_reference.py. Before writing, it checks that forward three ways (see
`check_forward`) and fails loudly if anything disagrees. Needs numpy,
safetensors, pyyaml and torch (only to write the .pth as POA training does);
CI never runs it (the outputs are committed).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.numpy import save_file

from make_fixtures import _OmegaConfDumper, require
from swin_reference import (
    MLP_RATIO,
    STAGES,
    ElasticSwin,
    Geometry,
    block_indices,
    fold,
    forward_plain,
    full_arch,
    grouped,
    poa_name,
    relative_position_index,
)

ROOT = Path(__file__).resolve().parent.parent
Weights = dict[str, np.ndarray]
Subnet = tuple[int, tuple[int, ...]]

# The fp32 deployment path (folded weights, fp32 arithmetic) must land this
# close to the float64 references...
FP32_TOLERANCE = 1e-5
# ...and every plausible slicing bug must move some output this far.
BUG_MIN_EFFECT = 5e-2

# Stage resolutions 10, 5, 3, 2 with windows of 3: stages 1, 2 and 4 pad their
# windows (10 -> 12, 5 -> 6, 2 -> 3), merges 2 and 3 pad odd maps (5, 3), and
# stage 4's map is smaller than a window yet still shifts.
GEOMETRY = Geometry(
    max_width=12,
    max_depths=(2, 2, 5, 2),
    head_dim=4,
    window_size=3,
    patch_size=4,
    image_size=40,
)
WIDTHS = range(4, 13, 4)
S3_DEPTHS = range(2, 6)


def main() -> None:
    swin_tiny(ROOT / "tests/fixtures/swin-tiny")


def subnet_id(width: int, depths: tuple[int, ...]) -> str:
    return f"w{width}-d{'.'.join(map(str, depths))}"


def stage_depths(g: Geometry, s3_depth: int) -> tuple[int, ...]:
    """POA's `get_by_type`: only stage 3's depth is elastic."""
    return tuple(s3_depth if s == 2 else d for s, d in enumerate(g.max_depths))


def swin_tiny(out: Path) -> None:
    g = GEOMETRY
    require(
        [r % g.window_size != 0 for r in g.stage_resolutions()]
        == [True, True, False, True],
        f"stage resolutions {g.stage_resolutions()} do not exercise window padding",
    )
    rng = np.random.default_rng(8)
    fp32 = init_teacher(g, rng)
    nobias = {
        k: v.astype(np.float16) if v.dtype.kind == "f" else v
        for k, v in fp32.items()
        if not is_ln_bias(k)
    }
    heads = training_heads(g, rng)

    write_config(out / "output/config.yaml", g)
    state = {poa_name(k): torch.from_numpy(v) for k, v in fp32.items()}
    save_pth(
        out / "output/eval/training_49/teacher_checkpoint.pth",
        {"teacher": state | {k: torch.from_numpy(v) for k, v in heads.items()}},
    )
    save_safetensors(out / "teacher-nobias-fp16.safetensors", nobias)

    x = image_batch(2, g.image_size, rng)
    grid = [(w, stage_depths(g, d)) for w in WIDTHS for d in S3_DEPTHS]
    tensors = {"input": x}
    tensors |= references("", g, fp32, x, grid)
    few = [grid[0], grid[5], grid[-1]]
    tensors |= references("nobias.", g, nobias, x, few)
    for w, d in few:
        key = f"{subnet_id(w, d)}.patch_tokens"
        moved = np.abs(tensors["nobias." + key] - tensors[key]).max()
        require(
            moved > BUG_MIN_EFFECT,
            f"dropping LN biases moves {key} by only {moved:.2e}",
        )
    fixture = {
        "generator": "tools/make_swin_fixtures.py (float64 elastic forward, as float32)",
        "geometry": asdict(g),
        "widths": list(WIDTHS),
        "s3_depths": list(S3_DEPTHS),
        "block_idx": {str(d): block_indices(g.max_depths[2], d) for d in S3_DEPTHS},
    }
    save_safetensors(
        out / "reference.safetensors",
        tensors,
        {"fixture": json.dumps(fixture, sort_keys=True)},
    )


def init_teacher(g: Geometry, rng: np.random.Generator) -> Weights:
    """Trained-looking fp32 weights, plain names (POA's without `backbone.`,
    `.linear.`, `.norm.`): linears trunc-normal 1/sqrt(fan_in), biases N(0,
    0.05), LayerNorms N(1, 0.1) / N(0, 0.05), bias tables N(0, 0.5)."""
    w: Weights = {}
    c, p = g.max_width, g.patch_size

    def trunc(shape: tuple[int, ...]) -> np.ndarray:
        std = float(np.prod(shape[1:])) ** -0.5
        return np.clip(rng.normal(0, std, shape), -2 * std, 2 * std)

    def normal(shape: tuple[int, ...], mean: float, std: float) -> np.ndarray:
        return rng.normal(mean, std, shape)

    def norm(name: str, dim: int) -> None:
        w[f"{name}.weight"] = normal((dim,), 1.0, 0.1)
        w[f"{name}.bias"] = normal((dim,), 0.0, 0.05)

    def lin(name: str, out: int, inp: int, bias: bool = True) -> None:
        w[f"{name}.weight"] = trunc((out, inp))
        if bias:
            w[f"{name}.bias"] = normal((out,), 0.0, 0.05)

    w["patch_embed.proj.weight"] = trunc((c, 3, p, p))
    w["patch_embed.proj.bias"] = normal((c,), 0.0, 0.05)
    norm("patch_embed.norm", c)
    table = (2 * g.window_size - 1) ** 2
    for s in range(STAGES):
        cs = c << s
        for i in range(g.max_depths[s]):
            n = f"stages.{s}.blocks.{i}"
            norm(f"{n}.norm1", cs)
            w[f"{n}.attn.w_msa.relative_position_bias_table"] = normal(
                (table, cs // g.head_dim), 0.0, 0.5
            )
            w[f"{n}.attn.w_msa.relative_position_index"] = relative_position_index(
                g.window_size
            )
            lin(f"{n}.attn.w_msa.qkv", 3 * cs, cs)
            lin(f"{n}.attn.w_msa.proj", cs, cs)
            norm(f"{n}.norm2", cs)
            lin(f"{n}.ffn.fc1", MLP_RATIO * cs, cs)
            lin(f"{n}.ffn.fc2", cs, MLP_RATIO * cs)
        if s < STAGES - 1:
            norm(f"stages.{s}.downsample.norm", 4 * cs)
            lin(f"stages.{s}.downsample.reduction", 2 * cs, 4 * cs, bias=False)
        norm(f"norm{s}", cs)
    w["mask_token"] = normal((1, c), 0.0, 0.1)
    return {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in w.items()}


def training_heads(g: Geometry, rng: np.random.Generator) -> Weights:
    """Small stand-ins for POA's MDINOHead tensors (checkpointed, never exported)."""
    hidden, prototypes, feat = 16, 32, g.max_width << (STAGES - 1)
    shapes = {
        "mlp0.0.linear.weight": (hidden, feat),
        "mlp0.0.linear.bias": (hidden,),
        "mlp0.2.weight": (hidden, hidden),
        "last_layer0.weight_g": (prototypes, 1),
        "last_layer0.weight_v": (prototypes, hidden),
    }
    return {
        f"{head}.{key}": (0.02 * rng.standard_normal(shape)).astype(np.float32)
        for head in ("dino_head", "ibot_head")
        for key, shape in shapes.items()
    }


def image_batch(batch: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random images plus noise, ImageNet-normalised (roughly [-2, 2])."""
    coarse = rng.random((batch, 3, 4, 4))
    at = np.linspace(0, 3, size)
    rows = np.stack([np.interp(at, np.arange(4), v) for v in coarse.reshape(-1, 4)])
    rows = rows.reshape(batch, 3, 4, size)
    pixels = (
        np.stack(
            [
                np.interp(at, np.arange(4), col)
                for col in rows.transpose(0, 1, 3, 2).reshape(-1, 4)
            ]
        )
        .reshape(batch, 3, size, size)
        .transpose(0, 1, 3, 2)
    )
    pixels = np.clip(pixels + 0.05 * rng.standard_normal(pixels.shape), 0, 1)
    mean = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((pixels - mean) / std, dtype=np.float32)


def references(
    tag: str, g: Geometry, state: Weights, x: np.ndarray, subnets: list[Subnet]
) -> Weights:
    """Float64 elastic-forward outputs of `state` as stored, kept as float32."""
    model = ElasticSwin(g, state)
    x64 = x.astype(np.float64)
    check_forward(tag or "fp32.", model, x64, subnets)
    out = {}
    for w, d in subnets:
        cls, patches = model.forward(x64, w, d)
        out[f"{tag}{subnet_id(w, d)}.cls_token"] = cls.astype(np.float32)
        out[f"{tag}{subnet_id(w, d)}.patch_tokens"] = patches.astype(np.float32)
    return out


def check_forward(
    tag: str, model: ElasticSwin, x: np.ndarray, subnets: list[Subnet]
) -> None:
    """The elastic forward must (1) be the plain forward at full size, (2) match
    a plain Swin built from sliced weights with a folded in, in float64 and in
    float32, and (3) differ visibly from every plausible slicing bug."""
    g = model.g
    full = model.forward(x, g.max_width, g.max_depths)
    plain = forward_plain(full_arch(g), model.w, x)
    err = max_diff(full, plain)
    require(err == 0.0, f"{tag} full-size elastic forward != plain forward ({err:.1e})")

    for w, d in subnets:
        name = f"{tag}{subnet_id(w, d)}"
        ref = model.forward(x, w, d)
        blocks = [block_indices(m, n) for m, n in zip(g.max_depths, d, strict=True)]
        arch, sub = fold(g, model.w, w, blocks)
        err64 = max_diff(ref, forward_plain(arch, sub, x))
        require(
            err64 < 1e-10, f"{name}: folded float64 sub-network is off by {err64:.2e}"
        )
        sub32 = {
            k: v.astype(np.float32) if v.dtype.kind == "f" else v
            for k, v in sub.items()
        }
        err32 = max_diff(ref, forward_plain(arch, sub32, x.astype(np.float32)))
        require(
            err32 < FP32_TOLERANCE,
            f"{name}: folded float32 sub-network is off by {err32:.2e}",
        )

        effects = {
            bug: max_diff(ref, forward_plain(bug_arch, bug_weights, x))
            for bug, (bug_arch, bug_weights) in slicing_bugs(
                model, arch, sub, w, blocks
            ).items()
        }
        weak = {bug: f"{e:.1e}" for bug, e in effects.items() if e < BUG_MIN_EFFECT}
        require(not weak, f"{name}: these bugs barely change the outputs: {weak}")
        shown = ", ".join(f"{bug} {e:.2f}" for bug, e in effects.items())
        print(f"  {name}: fp32 error {err32:.1e}; bugs move outputs by: {shown}")


def slicing_bugs(
    model: ElasticSwin, arch, sub: Weights, width: int, blocks: list[list[int]]
) -> dict[str, tuple]:
    """Sub-networks an exporter with a plausible slicing mistake would produce."""
    g, teacher = model.g, model.w
    a = g.max_width / width

    def mutate(edit: Callable[[str, np.ndarray], np.ndarray]) -> tuple:
        return arch, {k: edit(k, v) for k, v in sub.items()}

    def merged_columns(order: Callable[[np.ndarray], np.ndarray]) -> tuple:
        """Merge norm and reduction inputs taken in a wrong order."""

        def edit(key: str, t: np.ndarray) -> np.ndarray:
            if ".downsample." not in key:
                return t
            return order(t.reshape(*t.shape[:-1], 4, -1)).reshape(t.shape)

        return mutate(edit)

    def contiguous(key: str, t: np.ndarray) -> np.ndarray:
        """qkv rows [0, 3w_s) and merge channels [0, 4w_s) instead of ∪_k."""
        if ".qkv." not in key and ".downsample." not in key:
            return t
        parts = key.split(".")
        s = int(parts[1])
        ws = width << s
        if ".qkv." in key:
            source = teacher[
                ".".join(parts[:3] + [str(blocks[s][int(parts[3])])] + parts[4:])
            ]
            return (
                a * source[: 3 * ws, :ws]
                if key.endswith("weight")
                else source[: 3 * ws]
            )
        source = teacher[key][..., : 4 * ws]
        return a * source[: 2 * ws] if key.endswith("reduction.weight") else source

    bugs = {}
    if width < g.max_width:
        linear_weights = (
            "qkv.weight",
            "proj.weight",
            "fc1.weight",
            "fc2.weight",
            "reduction.weight",
        )
        bugs["a not applied"] = mutate(
            lambda k, t: t / a if k.endswith(linear_weights) else t
        )
        bugs["patch-embed LN over w"] = mutate(
            lambda k, t: t[:width] if k.startswith("patch_embed.") else t
        )
        bugs["qkv rows, merge channels contiguous"] = mutate(contiguous)
    bugs["merged [c][k]"] = merged_columns(lambda t: t.swapaxes(-1, -2))
    bugs["merge neighbours in Swin's x0..x3 order"] = merged_columns(
        lambda t: t[..., [0, 2, 1, 3], :]
    )
    bugs["bias table index q - p"] = mutate(
        lambda k, t: t[::-1] if k.endswith("relative_position_bias_table") else t
    )
    bugs["padded tokens masked"] = replace(arch, mask_padding=True), sub
    by_position = tuple(tuple(j % 2 == 1 for j in range(len(kept))) for kept in blocks)
    if by_position != arch.shifts:
        bugs["shift by kept position"] = replace(arch, shifts=by_position), sub
    # Microsoft's Swin does not shift a map that fits in one window; POA does.
    fits = [side <= g.window_size for side in g.stage_resolutions()]
    unshifted = tuple(
        tuple(shift and not fit for shift in shifts)
        for shifts, fit in zip(arch.shifts, fits, strict=True)
    )
    bugs["no shift where the map fits a window"] = replace(arch, shifts=unshifted), sub
    first = [list(range(len(kept))) for kept in blocks]
    if first != blocks:
        bugs["first d blocks"] = fold(g, teacher, width, first)
    if any(is_ln_bias(k) for k in sub):
        bugs["LN bias dropped"] = mutate(
            lambda k, t: np.zeros_like(t) if is_ln_bias(k) else t
        )
    return bugs


def is_ln_bias(key: str) -> bool:
    return key.endswith("bias") and key.rpartition(".")[0].rpartition(".")[
        2
    ].startswith("norm")


def max_diff(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> float:
    return max(
        float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max())
        for x, y in zip(a, b, strict=True)
    )


def write_config(path: Path, g: Geometry) -> None:
    """A POA Swin training config as OmegaConf dumps it (POA's
    swin_ssl_default_config.yaml, shortened), describing GEOMETRY's grid."""
    config = {
        "MODEL": {"WEIGHTS": ""},
        "dino": {
            "loss_weight": 1.0,
            "head_n_prototypes": [32],
            "head_bottleneck_dim": 16,
        },
        "ibot": {
            "loss_weight": 1.0,
            "mask_sample_probability": 0.5,
            "separate_head": False,
        },
        "train": {
            "batch_size_per_gpu": 64,
            "dataset_path": "ImageNet:split=TRAIN",
            "output_dir": "./output",
            "seed": 0,
            "OFFICIAL_EPOCH_LENGTH": 625,
            "centering": "sinkhorn_knopp",
            "scale_for_num_patch": 4,
        },
        "student": {
            "arch": "swin_dynamic",
            "min_embed_dim": WIDTHS.start,
            "max_embed_dim": WIDTHS.stop - 1,
            "min_s3_depth": S3_DEPTHS.start,
            "max_depths": list(g.max_depths),
            "head_dim": g.head_dim,
            "mode": "order",
            "patch_size": g.patch_size,
            "window_size": g.window_size,
            "drop_path_rate": 0.2,
            "qkv_bias": True,
            "ibot_scale_factor": 2,
            "pretrained_weights": "",
            "width_interval": WIDTHS.step // g.head_dim,
            "depth_interval": S3_DEPTHS.step,
            "net_select_scale": 2,
        },
        "teacher": {"momentum_teacher": 0.992, "teacher_temp": 0.07},
        "optim": {
            "epochs": 100,
            "weight_decay": 0.04,
            "base_lr": 0.004,
            "layerwise_decay": 0.9,
        },
        "crops": {
            "global_crops_scale": [0.32, 1.0],
            "local_crops_number": 8,
            "local_crops_scale": [0.05, 0.32],
            "global_crops_size": g.image_size,
            "local_crops_size": g.image_size // 2,
        },
        "evaluation": {"eval_period_iterations": 12500},
    }
    require(
        WIDTHS.stop - 1 == g.max_width and S3_DEPTHS.stop - 1 == g.max_depths[2],
        f"{path}: grid does not end at the teacher",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.dump(config, Dumper=_OmegaConfDumper, sort_keys=False))


def save_pth(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)


def save_safetensors(
    path: Path, tensors: Weights, metadata: dict[str, str] | None = None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: np.ascontiguousarray(v) for k, v in tensors.items()},
        path,
        metadata=metadata,
    )
    path.chmod(0o644)  # safetensors.numpy creates files private to the user


if __name__ == "__main__":
    main()
