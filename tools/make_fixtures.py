"""Regenerates the golden POA fixtures: `python3 tools/make_fixtures.py`.

Writes random but realistically initialised teachers in POA's and DINOv2's
checkpoint layouts, and references computed in float64 by the elastic forward
in poa_reference.py. Before writing, it checks that forward three ways (see
`check_forward`) and fails loudly if anything disagrees. Needs torch; CI never
runs it (the outputs are committed).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file
from torch import Tensor, nn

from poa_reference import (
    ElasticViT,
    Geometry,
    LayerScale,
    block_indices,
    chunked_names,
    fold,
    paper_block_indices,
    poa_names,
)

ROOT = Path(__file__).resolve().parent.parent
State = dict[str, Tensor]
Subnet = tuple[int, int]

# The fp32 deployment path (folded weights, fp32 arithmetic) must land this
# close to the float64 references...
FP32_TOLERANCE = 1e-5
# ...and every plausible slicing bug must move some output this far.
BUG_MIN_EFFECT = 5e-2


def main() -> None:
    torch.use_deterministic_algorithms(True)
    vit_tiny(ROOT / "tests/fixtures/vit-tiny")
    vit_deep31(ROOT / "tests/fixtures/vit-deep31")


def vit_tiny(out: Path) -> None:
    g = Geometry(max_width=64, max_depth=4, head_dim=16, patch_size=8, image_size=32)
    widths, depths = range(32, 65, 16), range(2, 5, 1)
    grid = [(w, d) for w in widths for d in depths]
    gen = torch.Generator().manual_seed(99)
    fp32 = init_teacher(g, gen)
    fp16 = {k: v.half() for k, v in fp32.items()}
    bf16 = {k: v.bfloat16() for k, v in fp32.items()}
    nobias = {k: v.half() for k, v in init_teacher(g, gen, ln_bias=False).items()}
    heads = training_heads(g, gen)

    write_config(out / "output/config.yaml", g, widths, depths)
    save_pth(
        out / "output/eval/training_99/teacher_checkpoint.pth",
        {"teacher": poa_names(fp32) | heads},
    )
    save_pth(
        out / "teacher-fp16.pth",
        {"teacher": poa_names(fp16) | {k: v.half() for k, v in heads.items()}},
    )
    save_pth(
        out / "teacher-chunked.pth", chunked_names(fp16, chunks=2, depth=g.max_depth)
    )
    save_safetensors(out / "teacher-bf16.safetensors", bf16)
    save_safetensors(out / "teacher-nobias.safetensors", nobias)

    x = image_batch(2, g.image_size, gen)
    tensors = {"input": x}
    for tag, state, subnets in [
        ("", fp32, grid),
        ("fp16.", fp16, [(32, 2), (64, 4)]),
        ("bf16.", bf16, [(32, 2), (64, 4)]),
        ("nobias.", nobias, [(32, 2), (48, 3), (64, 4)]),
    ]:
        tensors |= references(tag, g, state, x, subnets)
    for tag in ("fp16.", "bf16."):
        for w, d in [(32, 2), (64, 4)]:
            key = f"w{w}-d{d}.patch_tokens"
            moved = (tensors[tag + key] - tensors[key]).abs().max().item()
            require(0 < moved < 0.2, f"{tag} rounding moves {key} by {moved:.2e}")
            print(f"  {tag}{key}: rounding the weights moves it by {moved:.1e}")
    save_safetensors(out / "reference.safetensors", tensors, metadata(g, depths))


def vit_deep31(out: Path) -> None:
    g = Geometry(max_width=32, max_depth=31, head_dim=16, patch_size=8, image_size=16)
    linspace, paper = block_indices(31, 23), paper_block_indices(31, 23)
    differ = [j for j, (a, b) in enumerate(zip(linspace, paper, strict=True)) if a != b]
    require(
        len(differ) == 1,
        f"linspace and floor(30j/22) differ at {differ}, expected one index",
    )
    gen = torch.Generator().manual_seed(31)
    fp32 = init_teacher(g, gen)
    save_safetensors(out / "teacher.safetensors", fp32)

    x = image_batch(1, g.image_size, gen)
    subnets = [(32, 23), (16, 23), (32, 31), (16, 31), (32, 12), (16, 1)]
    tensors = {"input": x} | references("", g, fp32, x, subnets)
    meta = metadata(g, {d for _, d in subnets}, paper_block_idx={"23": paper})
    save_safetensors(out / "reference.safetensors", tensors, meta)


def init_teacher(g: Geometry, gen: torch.Generator, ln_bias: bool = True) -> State:
    """Trained-looking fp32 weights: LN biases and LayerScale visibly matter."""
    model = ElasticViT(g, ln_bias=ln_bias)

    def normal(t: Tensor, mean: float, std: float) -> None:
        t.copy_(mean + std * torch.randn(t.shape, generator=gen))

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                fan_in = module.weight[0].numel()
                nn.init.trunc_normal_(
                    module.weight,
                    std=fan_in**-0.5,
                    a=-2 * fan_in**-0.5,
                    b=2 * fan_in**-0.5,
                    generator=gen,
                )
                normal(module.bias, 0.0, 0.05)
            elif isinstance(module, nn.LayerNorm):
                normal(module.weight, 1.0, 0.1)
                if module.bias is not None:
                    normal(module.bias, 0.0, 0.05)
            elif isinstance(module, LayerScale):
                module.gamma.copy_(
                    0.1 + 0.9 * torch.rand(module.gamma.shape, generator=gen)
                )
        for token in (model.cls_token, model.pos_embed, model.mask_token):
            normal(token, 0.0, 0.1)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def training_heads(g: Geometry, gen: torch.Generator) -> State:
    """Small stand-ins for POA's MDINOHead tensors (checkpointed, never exported)."""
    hidden, bottleneck, prototypes = 32, 16, 64
    shapes = {
        "mlp0.0.linear.weight": (hidden, g.max_width),
        "mlp0.0.linear.bias": (hidden,),
        "mlp0.2.weight": (hidden, hidden),
        "mlp0.2.bias": (hidden,),
        "mlp0.4.weight": (bottleneck, hidden),
        "mlp0.4.bias": (bottleneck,),
        "last_layer0.weight_g": (prototypes, 1),
        "last_layer0.weight_v": (prototypes, bottleneck),
    }
    return {
        f"{head}.{key}": 0.02 * torch.randn(shape, generator=gen)
        for head in ("dino_head", "ibot_head")
        for key, shape in shapes.items()
    }


def image_batch(batch: int, size: int, gen: torch.Generator) -> Tensor:
    """Smooth random images plus noise, ImageNet-normalised (roughly [-2, 2])."""
    coarse = torch.rand(batch, 3, 4, 4, generator=gen)
    pixels = F.interpolate(
        coarse, size=(size, size), mode="bilinear", align_corners=False
    )
    pixels = (pixels + 0.05 * torch.randn(pixels.shape, generator=gen)).clamp(0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return ((pixels - mean) / std).contiguous()


def references(
    tag: str,
    g: Geometry,
    state: State,
    x: Tensor,
    subnets: list[Subnet],
) -> State:
    """Float64 elastic-forward outputs of `state` as stored, kept as float32."""
    model = ElasticViT.from_state_dict(g, state)
    x64 = x.to(torch.float64)
    check_forward(tag or "fp32.", model, x64, subnets)
    out = {}
    with torch.no_grad():
        for w, d in subnets:
            cls, patches = model(x64, w, d)
            out[f"{tag}w{w}-d{d}.cls_token"] = cls.float().contiguous()
            out[f"{tag}w{w}-d{d}.patch_tokens"] = patches.float().contiguous()
    return out


@torch.no_grad()
def check_forward(
    tag: str, model: ElasticViT, x: Tensor, subnets: list[Subnet]
) -> None:
    """The elastic forward must (1) be the plain forward at full size, (2) match a
    plain ViT built from sliced weights with a folded in, in float64 and in
    float32, and (3) differ visibly from every plausible slicing bug."""
    g = model.geometry
    full = model(x, g.max_width, g.max_depth)
    plain = model.forward_plain(x)
    require(
        all(torch.equal(a, b) for a, b in zip(full, plain, strict=True)),
        f"{tag} full-size elastic forward != plain forward",
    )

    for w, d in subnets:
        name = f"{tag}w{w}-d{d}"
        ref = model(x, w, d)
        blocks = block_indices(g.max_depth, d)
        sub, state = fold(model, w, blocks)
        folded = ElasticViT.from_state_dict(sub, state)
        err64 = max_diff(ref, folded.forward_plain(x))
        require(
            err64 < 1e-10, f"{name}: folded float64 sub-network is off by {err64:.2e}"
        )
        err32 = max_diff(ref, folded.float().forward_plain(x.float()))
        require(
            err32 < FP32_TOLERANCE,
            f"{name}: folded float32 sub-network is off by {err32:.2e}",
        )

        bugs = slicing_bugs(model, sub, state, w, blocks)
        for bug, wrong in [
            ("first L blocks", list(range(d))),
            ("floor block indices", paper_block_indices(g.max_depth, d)),
        ]:
            if wrong != blocks:
                bugs[bug] = ElasticViT.from_state_dict(*fold(model, w, wrong))
        effects = {bug: max_diff(ref, m.forward_plain(x)) for bug, m in bugs.items()}
        weak = {bug: f"{e:.1e}" for bug, e in effects.items() if e < BUG_MIN_EFFECT}
        require(not weak, f"{name}: these bugs barely change the outputs: {weak}")
        shown = ", ".join(f"{bug} {e:.2f}" for bug, e in effects.items())
        print(f"  {name}: fp32 error {err32:.1e}; bugs move outputs by: {shown}")


def slicing_bugs(
    model: ElasticViT, sub: Geometry, state: State, width: int, blocks: list[int]
) -> dict[str, ElasticViT]:
    """Sub-networks an exporter with a plausible slicing mistake would produce."""
    g = model.geometry
    a = g.max_width / width
    full = model.state_dict()
    linears = tuple(
        f"{layer}.weight" for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    )

    def mutate(edit: Callable[[str, Tensor], Tensor]) -> ElasticViT:
        return ElasticViT.from_state_dict(
            sub, {k: edit(k, v) for k, v in state.items()}
        )

    def scale(
        suffixes: tuple[str, ...], factor: float
    ) -> Callable[[str, Tensor], Tensor]:
        return lambda key, t: t * factor if key.endswith(suffixes) else t

    def contiguous_qkv(key: str, t: Tensor) -> Tensor:
        if ".attn.qkv." not in key:
            return t
        _, new, role = key.split(".", 2)
        source = full[f"blocks.{blocks[int(new)]}.{role}"]
        return (
            a * source[: 3 * width, :width]
            if role.endswith("weight")
            else source[: 3 * width]
        )

    bugs = {}
    if width < g.max_width:
        bugs["a not applied"] = mutate(scale(linears, 1 / a))
        bugs["bias scaled by a"] = mutate(
            scale(tuple(k.replace("weight", "bias") for k in linears), a)
        )
        bugs["patch embed scaled by a"] = mutate(scale(("patch_embed.proj.weight",), a))
        bugs["qkv rows [0, 3w)"] = mutate(contiguous_qkv)
        kept_heads = replace(sub, head_dim=g.head_dim * width // g.max_width)
        bugs["head count kept at D/h"] = ElasticViT.from_state_dict(kept_heads, state)
    if any(is_ln_bias(k) for k in state):
        bugs["LN bias dropped"] = mutate(
            lambda key, t: torch.zeros_like(t) if is_ln_bias(key) else t
        )
    return bugs


def is_ln_bias(key: str) -> bool:
    return key.endswith(("norm1.bias", "norm2.bias")) or key == "norm.bias"


def max_diff(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> float:
    return max(
        (x.double() - y.double()).abs().max().item() for x, y in zip(a, b, strict=True)
    )


def require(ok: bool, message: str) -> None:
    if not ok:
        sys.exit(f"make_fixtures: check failed: {message}")


def metadata(g: Geometry, depths: Iterable[int], **extra: object) -> dict[str, str]:
    """The geometry (head_dim is not in the weights) and each depth's kept blocks.

    One key holding sorted JSON: safetensors writes metadata keys in hash order,
    and the fixtures must be byte-for-byte reproducible."""
    fixture = {
        "generator": "tools/make_fixtures.py (float64 elastic forward, as float32)",
        "geometry": asdict(g),
        "block_idx": {str(d): block_indices(g.max_depth, d) for d in depths},
        **extra,
    }
    return {"fixture": json.dumps(fixture, sort_keys=True)}


def write_config(
    path: Path,
    g: Geometry,
    widths: range,
    depths: range,
    overrides: dict[str, dict[str, object]] | None = None,
) -> None:
    """A POA training config as OmegaConf dumps it; few keys describe the teacher.

    `overrides` replaces keys section by section (a real training run's values)."""
    mixed = {"param_dtype": "fp16", "reduce_dtype": "fp16", "buffer_dtype": "fp32"}
    head = {
        "head_n_prototypes": [64],
        "head_bottleneck_dim": 16,
        "head_nlayers": 3,
        "head_hidden_dim": 32,
    }
    config = {
        "MODEL": {"WEIGHTS": ""},
        "compute_precision": {
            "grad_scaler": True,
            "teacher": {
                "backbone": {
                    "sharding_strategy": "SHARD_GRAD_OP",
                    "mixed_precision": mixed,
                }
            },
            "student": {
                "backbone": {
                    "sharding_strategy": "SHARD_GRAD_OP",
                    "mixed_precision": mixed,
                }
            },
        },
        "dino": {
            "loss_weight": 1.0,
            **head,
            "koleo_loss_weight": 0.1,
            "lambda_ie": 0.8,
        },
        "ibot": {
            "loss_weight": 1.0,
            "mask_sample_probability": 0.5,
            "mask_ratio_min_max": [0.1, 0.5],
            "separate_head": True,
            **head,
        },
        "train": {
            "batch_size_per_gpu": 64,
            "dataset_path": "ImageNet:split=TRAIN",
            "output_dir": "./output",
            "saveckp_freq": 20,
            "seed": 0,
            "num_workers": 10,
            "OFFICIAL_EPOCH_LENGTH": 625,
            "centering": "sinkhorn_knopp",
        },
        "student": {
            # POA builds `vit.__dict__[arch]`; vit_dynamic is its only ViT.
            "arch": "vit_dynamic",
            "min_embed_dim": widths.start,
            "max_embed_dim": widths.stop - 1,
            "min_depth": depths.start,
            "max_depth": depths.stop - 1,
            "head_dim": g.head_dim,
            "mode": "order",
            "patch_size": g.patch_size,
            "drop_path_rate": 0.2,
            "layerscale": 1.0e-05,
            "drop_path_uniform": True,
            "pretrained_weights": "",
            "ffn_layer": "mlp",
            "block_chunks": 0,
            "qkv_bias": True,
            "proj_bias": True,
            "ffn_bias": True,
            "width_interval": widths.step // g.head_dim,
            "depth_interval": depths.step,
            "net_select_scale": 3,
        },
        "teacher": {
            "momentum_teacher": 0.992,
            "final_momentum_teacher": 0.9999,
            "teacher_temp": 0.07,
        },
        "optim": {
            "epochs": 100,
            "weight_decay": 0.04,
            "base_lr": 0.004,
            "lr": 0.0,
            "warmup_epochs": 10,
            "min_lr": 2.0e-05,
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
    for section, values in (overrides or {}).items():
        config[section] = {**config.get(section, {}), **values}
    require(
        widths.stop - 1 == g.max_width and depths.stop - 1 == g.max_depth,
        f"{path}: grid does not end at the teacher",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.dump(config, Dumper=_OmegaConfDumper, sort_keys=False)
    path.write_text(text)


class _OmegaConfDumper(yaml.SafeDumper):
    """Block style and no `&id001` anchors for shared sub-dicts, like OmegaConf."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def save_pth(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)


def save_safetensors(
    path: Path, tensors: State, metadata: dict[str, str] | None = None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=metadata)


if __name__ == "__main__":
    main()
