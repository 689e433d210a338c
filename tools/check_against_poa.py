"""Checks the committed references against POA's OWN elastic forward.

    python3 tools/check_against_poa.py /path/to/POA   # a clone of github.com/alipay/POA

Loads every fixture teacher into POA's `vit_dynamic`, selects each referenced
sub-network with POA's `get_by_type("<w>_<d>")`, runs `forward_features` in
float64 and compares the normed CLS and patch tokens. ResNet fixtures go into
POA's `resnet_dynamic` built from their config.yaml; each referenced
(mid widths, depths) is selected with POA's own `get_index` and compared as
`x_norm_clstoken` / `x_prenorm`. Needs torch and POA's sources (xFormers is
not needed); CI never runs it.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from poa_reference import poa_names

FIXTURES = Path(__file__).resolve().parent.parent / "tests/fixtures"
# The references are float64 results stored as float32: only that rounding is left.
TOLERANCE = 1e-6


def main(poa_repo: str) -> None:
    sys.path.insert(0, poa_repo)
    warnings.filterwarnings("ignore", message="xFormers is not available")
    tiny, deep = FIXTURES / "vit-tiny", FIXTURES / "vit-deep31"
    checkpoint = tiny / "output/eval/training_99/teacher_checkpoint.pth"
    cases = [
        ("", torch.load(checkpoint)["teacher"], tiny),
        ("fp16.", torch.load(tiny / "teacher-fp16.pth")["teacher"], tiny),
        ("bf16.", poa_names(load_file(tiny / "teacher-bf16.safetensors")), tiny),
        ("nobias.", poa_names(load_file(tiny / "teacher-nobias.safetensors")), tiny),
        ("", poa_names(load_file(deep / "teacher.safetensors")), deep),
    ]
    for tag, teacher, fixture in cases:
        worst = check(tag, teacher, fixture / "reference.safetensors")
        print(f"{fixture.name} {tag or 'fp32.'}*: max |POA - reference| = {worst:.1e}")
        if worst > TOLERANCE:
            sys.exit(f"check_against_poa: {fixture.name} {tag}* disagrees with POA")
    resnets = [
        (FIXTURES / "resnet-tiny", "output/eval/training_49/teacher_checkpoint.pth", "output/config.yaml"),
        (FIXTURES / "resnet-deep31", "teacher.safetensors", "config.yaml"),
    ]
    for fixture, teacher, config in resnets:
        worst = check_resnet(fixture / teacher, fixture / config, fixture / "reference.safetensors")
        print(f"{fixture.name}: max |POA - reference| / max |reference| = {worst:.1e}")
        if worst > TOLERANCE:
            sys.exit(f"check_against_poa: {fixture.name} disagrees with POA")


def check_resnet(teacher: Path, config: Path, reference: Path) -> float:
    """The largest difference of POA's ResNet outputs from the references,
    relative to each reference's magnitude."""
    import yaml
    from poa.models.resnet import resnet_dynamic

    student = yaml.safe_load(config.read_text())["student"]
    model = resnet_dynamic(
        min_depths=student["min_depths"],
        max_depths=student["max_depths"],
        stem_channels=student["stem_channels"],
        base_channels=student["base_channels"],
        num_gn_groups=student["num_gn_groups"],
        strides=tuple(student["strides"]),
    )
    state = torch.load(teacher) if teacher.suffix == ".pth" else load_file(teacher)
    state = state.get("teacher", state)
    backbone = {
        k.removeprefix("backbone."): v for k, v in state.items() if "head." not in k
    }
    backbone.setdefault("mask_token", model.mask_token.detach())
    missing, unexpected = model.load_state_dict(backbone, strict=True)
    model = model.double().eval()
    refs = safe_open(reference, "pt")
    subnets = json.loads(refs.metadata()["fixture"])["subnets"]
    x = refs.get_tensor("input").double()
    worst = 0.0
    for sid, s in subnets.items():
        # POA's own selection: `get_index(i)` of a grid holding this one network.
        model.networks = [(tuple(s["mid_widths"]), tuple(s["depths"]))]
        model.get_index(0)
        with torch.no_grad():
            out = model.forward_features(x)
        for poa_key, ours in [("x_norm_clstoken", "cls_token"), ("x_prenorm", "patch_tokens")]:
            ref = refs.get_tensor(f"{sid}.{ours}").double()
            err = (out[poa_key] - ref).abs().max() / ref.abs().max()
            worst = max(worst, err.item())
    return worst


def check(tag: str, teacher: dict[str, Tensor], reference: Path) -> float:
    """The largest difference between POA's outputs and the `tag` references."""
    from poa.layers.dynamic_ops import DynamicLayerNorm
    from poa.models.vision_transformer import vit_dynamic

    refs = safe_open(reference, "pt")
    g = json.loads(refs.metadata()["fixture"])["geometry"]
    model = vit_dynamic(
        patch_size=g["patch_size"],
        min_embed_dim=g["head_dim"],
        max_embed_dim=g["max_width"],
        min_depth=1,
        max_depth=g["max_depth"],
        head_dim=g["head_dim"],
        img_size=g["image_size"],
        init_values=1e-5,
        ffn_layer="mlp",
    )
    # POA passes `device` positionally to nn.LayerNorm, which torch >= 2.1 reads
    # as bias=None. Give the norms the bias POA's checkpoints carry (zero when a
    # checkpoint has none, which is the rule for a missing bias).
    for module in model.modules():
        if isinstance(module, DynamicLayerNorm):
            module.norm = torch.nn.LayerNorm(module.max_dim, module.eps)
            torch.nn.init.zeros_(module.norm.bias)
    backbone = {
        k.removeprefix("backbone."): v for k, v in teacher.items() if "head." not in k
    }
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    if unexpected or not all(k.endswith("norm.bias") for k in missing):
        sys.exit(f"check_against_poa: keys do not fit POA: {missing} {unexpected}")
    model = model.double().eval()

    x = refs.get_tensor("input").double()
    worst = 0.0
    for name in refs.keys():
        subnet, _, output = name.removeprefix(tag).partition(".")
        if not name.startswith(tag) or output != "cls_token":
            continue
        width, depth = subnet.removeprefix("w").split("-d")
        model.get_by_type(f"{width}_{depth}")
        with torch.no_grad():
            out = model.forward_features(x)
        for poa_key, ours in [
            ("x_norm_clstoken", "cls_token"),
            ("x_norm_patchtokens", "patch_tokens"),
        ]:
            ref = refs.get_tensor(f"{tag}{subnet}.{ours}").double()
            worst = max(worst, (out[poa_key] - ref).abs().max().item())
    return worst


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
