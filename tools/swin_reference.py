"""POA's elastic ("dynamic") Swin forward in float64 numpy, written from the
slicing rules (poa-elastic-rules.md) and from reading POA's
`poa/models/swin_transformer.py` and `poa/layers/` (not imported, not copied),
independently of the Rust exporter. Needs only numpy.

The teacher is an mmseg-style Swin: patch embed conv + LayerNorm, four stages
of window-attention blocks (odd teacher blocks shift their windows), patch
merging (2x2 unfold, LayerNorm, Linear without bias) between stages, and a
final LayerNorm `norm3` over the stage-4 tokens. LayerNorm eps 1e-5, exact GELU,
MLP ratio 4, qkv/proj/fc biases, no LayerScale, no absolute positions.

A sub-network is (width w, depths [d1, d2, d3, d4]); stage s has width
w·2^s of the teacher's C·2^s. Like POA, `ElasticSwin.forward` never builds
it: the full weights are sliced on the fly and the INPUT of qkv, proj, fc1, fc2
and the merge reduction is multiplied by a = C / w. What POA does and the
plain Swin papers do not (each checked against POA's code, see tools/README.md):

- the patch-embed LayerNorm normalises over all C channels, then keeps [:w];
- windows are zero-padded at the bottom/right to a multiple of the window
  after norm1; padded tokens take part in attention (not masked), and the
  window is never shrunk to a smaller resolution; the shift (window // 2)
  is still applied, with the mask computed on the padded map;
- a kept block shifts iff its TEACHER index is odd (not its new position);
- patch merging pads odd maps at the bottom/right, orders the 2x2 neighbours
  as nn.Unfold does ((0,0), (0,1), (1,0), (1,1), row offset first) and
  the merged channels [k][c]; its norm and reduction input use teacher
  channels ∪_k [k·C_s, k·C_s + w_s); the reduction keeps outputs [:2·w_s];
- the shifted-window mask is -100 (not -inf) between different regions;
- `relative_position_bias_table[:, :heads]`, heads = w_s / head_dim.

`forward_plain` runs a standalone Swin from ready-made tensors (no slicing,
no a) and `fold` cuts such a standalone sub-network from the teacher with a
folded in; the fixture script uses both to check `forward`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN_EPS = 1e-5
MLP_RATIO = 4
STAGES = 4
# POA's shifted-window mask value between tokens of different regions.
MASK = -100.0
# nn.Unfold's order of the 2x2 neighbours merged into one token: (row, column).
MERGE_OFFSETS = ((0, 0), (0, 1), (1, 0), (1, 1))

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class Geometry:
    """The teacher's fixed shape: what POA's config.yaml says."""

    max_width: int
    max_depths: tuple[int, int, int, int]
    head_dim: int
    window_size: int
    patch_size: int
    image_size: int

    def stage_resolutions(self) -> list[int]:
        """Token-map side per stage: the patch grid, then ceil(/2) per merge."""
        side = self.image_size // self.patch_size
        sides = [side]
        for _ in range(STAGES - 1):
            side = (side + 1) // 2
            sides.append(side)
        return sides

    def check(self, width: int, depths: tuple[int, ...]) -> None:
        if width % self.head_dim or not 0 < width <= self.max_width:
            raise ValueError(
                f"width {width} is not a multiple of {self.head_dim} "
                f"in (0, {self.max_width}]"
            )
        if len(depths) != STAGES or not all(
            0 < d <= m for d, m in zip(depths, self.max_depths, strict=True)
        ):
            raise ValueError(f"depths {depths} not within {self.max_depths}")


def block_indices(max_depth: int, depth: int) -> list[int]:
    """The teacher blocks a stage of depth `depth` keeps (POA's `set_depth`)."""
    return np.linspace(0, max_depth - 1, depth).astype(np.int64).tolist()


def relative_position_index(window: int) -> np.ndarray:
    """[W², W²] row of the bias table for query p and key q: (Δrow, Δcol) of p - q."""
    rows, cols = np.divmod(np.arange(window * window), window)
    d_row = rows[:, None] - rows[None, :] + window - 1
    d_col = cols[:, None] - cols[None, :] + window - 1
    return d_row * (2 * window - 1) + d_col


def grouped(width: int, full: int, groups: int) -> np.ndarray:
    """Indices ∪_k [k·full, k·full + width): q/k/v rows, merged channels."""
    return np.concatenate(
        [np.arange(k * full, k * full + width) for k in range(groups)]
    )


_erf = np.frompyfunc(math.erf, 1, 1)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(x.dtype))


def layer_norm(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None
) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + LN_EPS) * weight
    return y if bias is None else y + bias


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, a: float = 1.0):
    """POA's elastic Linear: F.linear(x · a, W, b) (a = 1 for a plain Linear)."""
    y = (x * x.dtype.type(a)) @ weight.T
    return y if bias is None else y + bias


def pad_to(x: np.ndarray, multiple: int) -> np.ndarray:
    """Zero-pads [B, H, W, C] at the bottom and right to multiples of `multiple`."""
    _, h, w, _ = x.shape
    return np.pad(x, ((0, 0), (0, -h % multiple), (0, -w % multiple), (0, 0)))


def partition(x: np.ndarray, window: int) -> np.ndarray:
    """[B, H, W, ...] -> [B, nW, W², ...]: windows in row-major order."""
    b, h, w = x.shape[:3]
    rest = x.shape[3:]
    x = x.reshape(b, h // window, window, w // window, window, *rest)
    x = x.transpose(0, 1, 3, 2, 4, *range(5, 5 + len(rest)))
    return x.reshape(b, (h // window) * (w // window), window * window, *rest)


def unpartition(x: np.ndarray, window: int, h: int, w: int) -> np.ndarray:
    """The inverse of `partition` for [B, nW, W², C]."""
    b, c = x.shape[0], x.shape[-1]
    x = x.reshape(b, h // window, w // window, window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def shift_mask(h: int, w: int, window: int, shift: int) -> np.ndarray:
    """[nW, W², W²] additive mask of a shifted window on an (h, w) padded map.

    The rolled map has three bands per axis, [0, n-W), [n-W, n-shift) and
    [n-shift, n); tokens from different (row band, column band) regions are
    masked with -100."""

    def bands(n: int) -> np.ndarray:
        band = np.zeros(n, dtype=np.int64)
        band[n - window : n - shift] = 1
        band[n - shift :] = 2
        return band

    region = bands(h)[:, None] * 3 + bands(w)[None, :]
    windows = partition(region[None, :, :], window)[0]  # [nW, W²]
    differ = windows[:, :, None] != windows[:, None, :]
    return np.where(differ, MASK, 0.0)


@dataclass(frozen=True)
class Attention:
    """One (shifted) window attention, its tensors already cut for the width."""

    qkv_weight: np.ndarray
    qkv_bias: np.ndarray | None
    proj_weight: np.ndarray
    proj_bias: np.ndarray
    bias_table: np.ndarray  # [(2W-1)², heads]
    head_dim: int
    window: int
    shift: int
    a: float = 1.0
    # Checks only: True excludes padded tokens from attention (NOT what POA does).
    mask_padding: bool = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """[B, H, W, C] -> [B, H, W, C]."""
        b, h, w, c = x.shape
        win, heads = self.window, c // self.head_dim
        padded = pad_to(x, win)
        hp, wp = padded.shape[1:3]
        mask = np.zeros((1, win * win, win * win))
        if self.shift:
            padded = np.roll(padded, (-self.shift, -self.shift), axis=(1, 2))
            mask = shift_mask(hp, wp, win, self.shift)
        if self.mask_padding:
            real = pad_to(np.ones((1, h, w, 1)), win)
            real = np.roll(real, (-self.shift, -self.shift), axis=(1, 2))
            keys = partition(real, win)[0, :, :, 0]  # [nW, W²]
            mask = mask + np.where(keys[:, None, :] > 0, 0.0, MASK)
        tokens = partition(padded, win)  # [B, nW, W², C]
        qkv = linear(tokens, self.qkv_weight, self.qkv_bias, self.a)
        qkv = qkv.reshape(*tokens.shape[:3], 3, heads, self.head_dim)
        q, k, v = (qkv[..., i, :, :].swapaxes(2, 3) for i in range(3))  # [B,nW,h,W²,d]
        scores = (q * self.head_dim**-0.5) @ k.swapaxes(-1, -2)
        bias = self.bias_table[relative_position_index(win)]  # [W², W², heads]
        scores = scores + bias.transpose(2, 0, 1) + mask[None, :, None].astype(x.dtype)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        ctx = (probs @ v).swapaxes(2, 3).reshape(tokens.shape)
        out = linear(ctx, self.proj_weight, self.proj_bias, self.a)
        out = unpartition(out, win, hp, wp)
        if self.shift:
            out = np.roll(out, (self.shift, self.shift), axis=(1, 2))
        return out[:, :h, :w]


def merge_neighbours(x: np.ndarray) -> np.ndarray:
    """[B, H, W, C] -> [B, ⌈H/2⌉, ⌈W/2⌉, 4C]: 2x2 neighbours, odd maps padded, [k][c]."""
    x = pad_to(x, 2)
    return np.concatenate([x[:, i::2, j::2] for i, j in MERGE_OFFSETS], axis=-1)


def mlp(x, fc1_w, fc1_b, fc2_w, fc2_b, a: float = 1.0) -> np.ndarray:
    return linear(gelu(linear(x, fc1_w, fc1_b, a)), fc2_w, fc2_b, a)


def embed(x: np.ndarray, w: Weights, p: int, width: int) -> np.ndarray:
    """Patch conv with every teacher channel, LayerNorm over all of them, then
    the first `width` channels (POA's quirk): [B,3,H,W] -> [B, H/p, W/p, width]."""
    b, c, h, wd = x.shape
    patches = x.reshape(b, c, h // p, p, wd // p, p)
    tokens = np.einsum("bcypxq,ocpq->byxo", patches, w["patch_embed.proj.weight"])
    tokens = tokens + w["patch_embed.proj.bias"]
    tokens = layer_norm(
        tokens, w["patch_embed.norm.weight"], w.get("patch_embed.norm.bias")
    )
    return tokens[..., :width]


def outputs(x: np.ndarray, weight, bias) -> tuple[np.ndarray, np.ndarray]:
    """norm3 over the stage-4 tokens: (their mean [B, C], the tokens [B, hw, C])."""
    tokens = layer_norm(x.reshape(x.shape[0], -1, x.shape[-1]), weight, bias)
    return tokens.mean(1), tokens


class ElasticSwin:
    """A full-size teacher (plain names, float64) run as POA runs a sub-network."""

    def __init__(self, geometry: Geometry, weights: Weights) -> None:
        self.g = geometry
        self.w = {
            k: v.astype(np.float64) if v.dtype.kind == "f" else v
            for k, v in weights.items()
        }

    def bias(self, name: str, index) -> np.ndarray | None:
        """A sliced LayerNorm bias; a missing one (recent torch's POA) is none."""
        return self.w[name][index] if name in self.w else None

    def forward(self, x: np.ndarray, width: int, depths: tuple[int, ...]):
        """POA's `get_by_type(f"{w}_{d3}")` + `forward_features`:
        (x_norm_clstoken [B, 8w], x_norm tokens [B, hw, 8w])."""
        g, w = self.g, self.w
        g.check(width, depths)
        a = g.max_width / width
        x = embed(x.astype(np.float64), w, g.patch_size, width)
        for s in range(STAGES):
            ws, cs = width << s, g.max_width << s
            for i in block_indices(g.max_depths[s], depths[s]):
                n = f"stages.{s}.blocks.{i}."
                rows = grouped(ws, cs, 3)
                attn = Attention(
                    qkv_weight=w[n + "attn.w_msa.qkv.weight"][rows, :ws],
                    qkv_bias=w[n + "attn.w_msa.qkv.bias"][rows],
                    proj_weight=w[n + "attn.w_msa.proj.weight"][:ws, :ws],
                    proj_bias=w[n + "attn.w_msa.proj.bias"][:ws],
                    bias_table=w[n + "attn.w_msa.relative_position_bias_table"][
                        :, : ws // g.head_dim
                    ],
                    head_dim=g.head_dim,
                    window=g.window_size,
                    shift=g.window_size // 2 if i % 2 else 0,
                    a=a,
                )
                cut = slice(0, ws)
                x = x + attn(
                    layer_norm(
                        x, w[n + "norm1.weight"][cut], self.bias(n + "norm1.bias", cut)
                    )
                )
                h = layer_norm(
                    x, w[n + "norm2.weight"][cut], self.bias(n + "norm2.bias", cut)
                )
                hidden = slice(0, MLP_RATIO * ws)
                x = x + mlp(
                    h,
                    w[n + "ffn.fc1.weight"][hidden, :ws],
                    w[n + "ffn.fc1.bias"][hidden],
                    w[n + "ffn.fc2.weight"][:ws, hidden],
                    w[n + "ffn.fc2.bias"][:ws],
                    a,
                )
            if s < STAGES - 1:
                n = f"stages.{s}.downsample."
                idx = grouped(ws, cs, 4)
                merged = merge_neighbours(x)
                merged = layer_norm(
                    merged, w[n + "norm.weight"][idx], self.bias(n + "norm.bias", idx)
                )
                # ScaledDynamicLinear: a = 4·C_s / (4·w_s).
                x = linear(merged, w[n + "reduction.weight"][: 2 * ws, idx], None, a)
        top = slice(0, width << (STAGES - 1))
        return outputs(x, w["norm3.weight"][top], self.bias("norm3.bias", top))


@dataclass(frozen=True)
class Arch:
    """A standalone Swin sub-network: what `forward_plain` runs."""

    width: int
    # Per stage, per kept block: whether it shifts its windows.
    shifts: tuple[tuple[bool, ...], ...]
    head_dim: int
    window_size: int
    patch_size: int
    # Checks only: a bug variant that masks padded tokens out of attention.
    mask_padding: bool = False


def forward_plain(arch: Arch, w: Weights, x: np.ndarray):
    """An ordinary fixed-size Swin on `w` (blocks numbered 0.. per stage): no
    slicing, no a. Its patch embed may have more channels than `arch.width`
    (the teacher's, for POA's LayerNorm quirk)."""
    dtype = w["norm3.weight"].dtype
    x = embed(x.astype(dtype), w, arch.patch_size, arch.width)
    for s, shifts in enumerate(arch.shifts):
        for j, shifted in enumerate(shifts):
            n = f"stages.{s}.blocks.{j}."
            attn = Attention(
                qkv_weight=w[n + "attn.w_msa.qkv.weight"],
                qkv_bias=w[n + "attn.w_msa.qkv.bias"],
                proj_weight=w[n + "attn.w_msa.proj.weight"],
                proj_bias=w[n + "attn.w_msa.proj.bias"],
                bias_table=w[n + "attn.w_msa.relative_position_bias_table"],
                head_dim=arch.head_dim,
                window=arch.window_size,
                shift=arch.window_size // 2 if shifted else 0,
                mask_padding=arch.mask_padding,
            )
            x = x + attn(layer_norm(x, w[n + "norm1.weight"], w.get(n + "norm1.bias")))
            h = layer_norm(x, w[n + "norm2.weight"], w.get(n + "norm2.bias"))
            x = x + mlp(
                h,
                w[n + "ffn.fc1.weight"],
                w[n + "ffn.fc1.bias"],
                w[n + "ffn.fc2.weight"],
                w[n + "ffn.fc2.bias"],
            )
        if s < len(arch.shifts) - 1:
            n = f"stages.{s}.downsample."
            merged = layer_norm(
                merge_neighbours(x), w[n + "norm.weight"], w.get(n + "norm.bias")
            )
            x = linear(merged, w[n + "reduction.weight"], None)
    return outputs(x, w["norm3.weight"], w.get("norm3.bias"))


def full_arch(g: Geometry) -> Arch:
    """The teacher itself as a standalone Swin."""
    shifts = tuple(tuple(i % 2 == 1 for i in range(d)) for d in g.max_depths)
    return Arch(g.max_width, shifts, g.head_dim, g.window_size, g.patch_size)


def fold(
    g: Geometry, teacher: Weights, width: int, blocks: list[list[int]]
) -> tuple[Arch, Weights]:
    """A standalone sub-network: the kept teacher `blocks` per stage, weights
    sliced per the rules with a folded in, the patch embed kept whole."""
    a = g.max_width / width
    out = {k: v for k, v in teacher.items() if k.startswith("patch_embed.")}
    for s, kept in enumerate(blocks):
        ws, cs = width << s, g.max_width << s
        rows, hidden = grouped(ws, cs, 3), MLP_RATIO * ws
        cuts = {
            "attn.w_msa.qkv.weight": lambda t: a * t[rows, :ws],
            "attn.w_msa.qkv.bias": lambda t: t[rows],
            "attn.w_msa.proj.weight": lambda t: a * t[:ws, :ws],
            "attn.w_msa.relative_position_bias_table": lambda t: t[
                :, : ws // g.head_dim
            ],
            "ffn.fc1.weight": lambda t: a * t[:hidden, :ws],
            "ffn.fc1.bias": lambda t: t[:hidden],
            "ffn.fc2.weight": lambda t: a * t[:ws, :hidden],
        }
        for j, i in enumerate(kept):
            prefix = f"stages.{s}.blocks.{i}."
            for key, t in teacher.items():
                if key.startswith(prefix) and not key.endswith(
                    "relative_position_index"
                ):
                    role = key[len(prefix) :]
                    out[f"stages.{s}.blocks.{j}.{role}"] = cuts.get(
                        role, lambda t: t[:ws]
                    )(t)
        if s < STAGES - 1:
            n = f"stages.{s}.downsample."
            idx = grouped(ws, cs, 4)
            out[n + "norm.weight"] = teacher[n + "norm.weight"][idx]
            if n + "norm.bias" in teacher:
                out[n + "norm.bias"] = teacher[n + "norm.bias"][idx]
            out[n + "reduction.weight"] = (
                a * teacher[n + "reduction.weight"][: 2 * ws, idx]
            )
    top = width << (STAGES - 1)
    for key in ("norm3.weight", "norm3.bias"):
        if key in teacher:
            out[key] = teacher[key][:top]
    shifts = tuple(tuple(i % 2 == 1 for i in kept) for kept in blocks)
    arch = Arch(width, shifts, g.head_dim, g.window_size, g.patch_size)
    return arch, {k: np.ascontiguousarray(v) for k, v in out.items()}


_LINEARS = (".qkv", ".w_msa.proj", ".fc1", ".fc2", ".reduction")


def poa_name(key: str) -> str:
    """A plain name -> POA's: `backbone.`, and `.linear.` / `.norm.` before the
    parameter of an elastic Linear / LayerNorm (`norm`, `norm1`, ...)."""
    module, _, param = key.rpartition(".")
    if module.endswith(_LINEARS):
        key = f"{module}.linear.{param}"
    elif module.rpartition(".")[2].startswith("norm"):
        key = f"{module}.norm.{param}"
    return f"backbone.{key}"
