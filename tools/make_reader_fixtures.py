"""Regenerates the checkpoint-reader fixtures: `python3 tools/make_reader_fixtures.py`.

Writes tiny teacher checkpoints with real `torch.save` / `safetensors` into
exporter/tests/fixtures/checkpoint/, broken variants of them (rewritten zip
archives), and `expected.json`: for every readable tensor its original key,
shape, dtype and the float32 bit patterns that numpy (f32, f16) or torch (bf16)
produce when widening the stored values. Needs torch; CI never runs it (the
outputs are committed).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

OUT = Path(__file__).resolve().parent.parent / "exporter/tests/fixtures/checkpoint"
State = dict[str, Tensor]

# float16 bit patterns worth converting by hand: signed zeros, the smallest and
# largest subnormals, the smallest normal, 1, ~1/3, the largest finite, the
# infinities, a quiet and a signalling NaN.
F16_SPECIALS = [
    0x0000,
    0x8000,
    0x0001,
    0x8001,
    0x0155,
    0x03FF,
    0x0400,
    0x3C00,
    0x3555,
    0x7BFF,
    0xFBFF,
    0x7C00,
    0xFC00,
    0x7E00,
    0x7C01,
    0xFE01,
]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(7)
    expected: dict[str, dict] = {}

    teacher = PoaTeacher(width=4)
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    expected["poa_teacher.pth"] = save_pth(
        "poa_teacher.pth", {"teacher": teacher.state_dict()}, "teacher"
    )

    specials = (
        torch.tensor(F16_SPECIALS, dtype=torch.int32)
        .to(torch.int16)
        .view(torch.float16)
    )
    half: State = {
        "blocks.0.attn.qkv.weight": torch.randn(6, 2, generator=gen).half(),
        "norm.weight": specials.clone(),
    }
    params = {k: nn.Parameter(v, requires_grad=False) for k, v in half.items()}
    expected["fp16_params.pth"] = save_pth(
        "fp16_params.pth", {"model": {**params, "step": 7}}, "model"
    )

    bf16 = OrderedDict(
        [
            ("cls_token", torch.randn(1, 1, 4, generator=gen).bfloat16()),
            ("norm.bias", torch.tensor([0.5, -2.0, float("nan"), 3.0]).bfloat16()),
        ]
    )
    expected["bf16_protocol4.pth"] = save_pth(
        "bf16_protocol4.pth", {"state_dict": bf16}, "state_dict", pickle_protocol=4
    )

    # Views of one storage: the whole, two rows from an offset, one row.
    w = torch.arange(24, dtype=torch.float32).reshape(6, 4) / 8
    shared = {"whole": w, "rows": w[2:4], "last": w[5]}
    expected["shared_storage.pth"] = save_pth("shared_storage.pth", shared, None)

    torch.save({"ok": w, "wt": w.t()}, OUT / "non_contiguous.pth")
    torch.save({"x": torch.zeros(3, dtype=torch.float64)}, OUT / "float64.pth")
    torch.save({"x": torch.zeros(3, dtype=torch.float8_e4m3fn)}, OUT / "float8.pth")
    torch.save([torch.zeros(2), 1], OUT / "list.pth")
    torch.save({"w": torch.zeros(2), "payload": Evil()}, OUT / "evil.pth")

    chunked: State = {
        "cls_token": torch.randn(1, 1, 4, generator=gen),
        "blocks.0.0.norm1.weight": torch.randn(4, generator=gen),
        "blocks.0.1.attn.qkv.weight": torch.randn(12, 4, generator=gen),
        "blocks.1.2.mlp.fc1.bias": torch.randn(16, generator=gen),
        "norm.weight": torch.randn(4, generator=gen),
    }
    expected["chunked.safetensors"] = save_safetensors("chunked.safetensors", chunked)
    f16: State = {
        "specials": specials.clone(),
        "random": (torch.randn(64, generator=gen) * 1000).half(),
    }
    expected["f16.safetensors"] = save_safetensors("f16.safetensors", f16)
    save_file({"x": torch.zeros(2, dtype=torch.float64)}, OUT / "float64.safetensors")
    save_file(
        {"backbone.norm.norm.weight": torch.ones(2), "norm.weight": torch.ones(2)},
        OUT / "duplicate.safetensors",
    )

    src = OUT / "shared_storage.pth"
    rewrite_zip(src, "compressed.pth", lambda n, d: (d, zipfile.ZIP_DEFLATED))
    rewrite_zip(
        src,
        "no_data_pkl.pth",
        lambda n, d: None if n.endswith("data.pkl") else (d, None),
    )
    rewrite_zip(
        src,
        "missing_storage.pth",
        lambda n, d: None if n.endswith("/data/0") else (d, None),
    )
    rewrite_zip(
        src,
        "short_storage.pth",
        lambda n, d: (d[:-4] if n.endswith("/data/0") else d, None),
    )
    rewrite_zip(
        src,
        "truncated_pickle.pth",
        lambda n, d: (d[:40] if n.endswith("data.pkl") else d, None),
    )
    rewrite_zip(
        src,
        "big_endian.pth",
        lambda n, d: (b"big" if n.endswith("byteorder") else d, None),
    )

    (OUT / "expected.json").write_text(
        json.dumps(expected, indent=1, sort_keys=True) + "\n"
    )
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total} bytes, to {OUT}")


class Wrapped(nn.Module):
    """POA's elastic wrappers: the real layer sits under `.linear` / `.norm`."""

    def __init__(self, attr: str, layer: nn.Module) -> None:
        super().__init__()
        self.add_module(attr, layer)


class PoaTeacher(nn.Module):
    """One block of POA's ViT teacher, plus a training head, under POA's key names."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        block = nn.Module()
        block.norm1 = Wrapped("norm", nn.LayerNorm(width))
        block.attn = nn.Module()
        block.attn.qkv = Wrapped("linear", nn.Linear(width, 3 * width))
        block.ls1 = nn.Module()
        block.ls1.gamma = nn.Parameter(torch.zeros(width))
        self.backbone.blocks = nn.ModuleList([block])
        self.backbone.norm = Wrapped("norm", nn.LayerNorm(width))
        self.dino_head = nn.Linear(width, 2)


class Evil:
    """What a malicious checkpoint does: a reduce that would run a shell command."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def save_pth(name: str, obj: object, inner: Optional[str], **kwargs) -> dict:
    torch.save(obj, OUT / name, **kwargs)
    state = obj[inner] if inner else obj
    return describe({k: v for k, v in state.items() if isinstance(v, Tensor)})


def save_safetensors(name: str, state: State) -> dict:
    save_file(state, OUT / name)
    return describe(state)


def describe(state: State) -> dict:
    """Shape, dtype and widened float32 bits of every tensor, keyed by original name."""
    return {
        key: {
            "shape": list(t.shape),
            "dtype": str(t.dtype).removeprefix("torch."),
            "bits": f32_bits(t),
        }
        for key, t in state.items()
    }


def f32_bits(t: Tensor) -> list[int]:
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        # numpy has no bfloat16; torch widens it by a 16-bit shift.
        wide = t.float().numpy()
    else:
        wide = t.numpy().astype(np.float32)
    return [int(b) for b in wide.reshape(-1).view(np.uint32)]


def rewrite_zip(
    src: Path,
    name: str,
    edit: Callable[[str, bytes], Optional[tuple[bytes, Optional[int]]]],
) -> None:
    """Copies a torch zip entry by entry; `edit` may drop, change or recompress an entry."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(OUT / name, "w") as zout:
        for info in zin.infolist():
            edited = edit(info.filename, zin.read(info))
            if edited is None:
                continue
            data, method = edited
            zout.writestr(
                info.filename, data, compress_type=method or zipfile.ZIP_STORED
            )


if __name__ == "__main__":
    main()
