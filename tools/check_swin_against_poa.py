"""Checks the committed Swin references against POA's OWN elastic forward.

    python3 tools/check_swin_against_poa.py /path/to/POA   # a clone of github.com/alipay/POA

Loads both fixture teachers into POA's `swin_dynamic`, selects each
referenced sub-network with POA's `get_by_type("<w>_<d3>")`, runs
`forward_features` in float64 and compares `x_norm_clstoken` and the normed
stage-4 tokens (`ibot_scale_factor=1`, so `x_norm_patchtokens` is not
upsampled). Needs torch and POA's sources (xFormers is not needed); CI never
runs it.
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

from swin_reference import poa_name

FIXTURE = Path(__file__).resolve().parent.parent / "tests/fixtures/swin-tiny"
# The references are float64 results stored as float32: only that rounding is left.
TOLERANCE = 1e-6


def main(poa_repo: str) -> None:
    sys.path.insert(0, poa_repo)
    warnings.filterwarnings("ignore", message="xFormers is")
    checkpoint = FIXTURE / "output/eval/training_49/teacher_checkpoint.pth"
    nobias = load_file(FIXTURE / "teacher-nobias-fp16.safetensors")
    cases = [
        ("", torch.load(checkpoint)["teacher"]),
        ("nobias.", {poa_name(k): v for k, v in nobias.items()}),
    ]
    for tag, teacher in cases:
        worst, count = check(tag, teacher, FIXTURE / "reference.safetensors")
        print(
            f"{FIXTURE.name} {tag or 'fp32.'}* ({count} sub-networks): max |POA - reference| = {worst:.1e}"
        )
        if worst > TOLERANCE:
            sys.exit(f"check_swin_against_poa: {tag}* disagrees with POA")


def check(tag: str, teacher: dict[str, Tensor], reference: Path) -> tuple[float, int]:
    """The largest difference between POA's outputs and the `tag` references."""
    from poa.layers.dynamic_ops import DynamicLayerNorm
    from poa.models.swin_transformer import swin_dynamic

    refs = safe_open(reference, "pt")
    g = json.loads(refs.metadata()["fixture"])["geometry"]
    model = swin_dynamic(
        patch_size=g["patch_size"],
        min_embed_dim=g["head_dim"],
        max_embed_dim=g["max_width"],
        min_s3_depth=1,
        max_depths=g["max_depths"],
        head_dim=g["head_dim"],
        window_size=g["window_size"],
        img_size=g["image_size"],
        ibot_scale_factor=1,
    )
    # POA passes `device` positionally to nn.LayerNorm, which torch >= 2.1 reads
    # as bias=None. Give the norms the bias POA's checkpoints carry (zero when a
    # checkpoint has none, which is the rule for a missing bias).
    for module in model.modules():
        if isinstance(module, DynamicLayerNorm):
            module.norm = torch.nn.LayerNorm(module.max_dim, module.eps)
            torch.nn.init.zeros_(module.norm.bias)
    backbone = {
        k.removeprefix("backbone."): v.double() if v.is_floating_point() else v
        for k, v in teacher.items()
        if "head." not in k
    }
    model = model.double().eval()
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    if unexpected or not all(k.endswith("norm.bias") for k in missing):
        sys.exit(f"check_swin_against_poa: keys do not fit POA: {missing} {unexpected}")

    x = refs.get_tensor("input").double()
    worst, count = 0.0, 0
    for name in refs.keys():
        subnet, _, output = name.removeprefix(tag).rpartition(".")
        if not name.startswith(tag) or output != "cls_token" or subnet[0] != "w":
            continue
        width, depths = subnet.removeprefix("w").split("-d")
        model.get_by_type(f"{width}_{depths.split('.')[2]}")
        if model.get_depths() != [int(d) for d in depths.split(".")]:
            sys.exit(
                f"check_swin_against_poa: POA's depths {model.get_depths()} for {subnet}"
            )
        with torch.no_grad():
            out = model.forward_features(x)
        for poa_key, ours in [
            ("x_norm_clstoken", "cls_token"),
            ("x_norm_patchtokens", "patch_tokens"),
        ]:
            ref = refs.get_tensor(f"{tag}{subnet}.{ours}").double()
            worst = max(worst, (out[poa_key] - ref).abs().max().item())
        count += 1
    return worst, count


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
