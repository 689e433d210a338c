"""POA's elastic ("dynamic") ViT forward, written from the slicing rules
(poa-elastic-rules.md), independently of the Rust exporter.

The model is a full-size DINOv2-style ViT (LayerScale, exact GELU, LayerNorm eps
1e-6, qkv/proj/fc biases, one CLS token, no registers). Like POA's own code, a
sub-network is never materialised: `ElasticViT.forward(x, width, depth)` slices
the full weights on the fly and multiplies the INPUT of every elastic Linear by
a = D / w (`F.linear(x * a, W_slice, b)`).

`ElasticViT.forward_plain` is the ordinary fixed-size forward (module calls, no
slicing); `fold` cuts a standalone sub-network out of the full weights with a
folded in. The fixture script uses both to check the elastic forward.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

LN_EPS = 1e-6


@dataclass(frozen=True)
class Geometry:
    """The teacher's fixed shape: what a config.yaml (or the weights) says."""

    max_width: int
    max_depth: int
    head_dim: int
    patch_size: int
    image_size: int
    mlp_ratio: int = 4

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def check_width(self, width: int) -> None:
        if width % self.head_dim or not 0 < width <= self.max_width:
            raise ValueError(
                f"width {width} is not a multiple of {self.head_dim} "
                f"in (0, {self.max_width}]"
            )


def block_indices(max_depth: int, depth: int) -> list[int]:
    """The teacher blocks a depth-`depth` sub-network keeps (POA's `get_block_idx`)."""
    if not 0 < depth <= max_depth:
        raise ValueError(f"depth {depth} is not in [1, {max_depth}]")
    return np.linspace(0, max_depth - 1, depth).astype(np.int64).tolist()


def paper_block_indices(max_depth: int, depth: int) -> list[int]:
    """The paper's floor((Lmax-1)·j/(L-1)), exactly: NOT what POA's code keeps."""
    if depth == 1:
        return [0]
    return [(max_depth - 1) * j // (depth - 1) for j in range(depth)]


def qkv_rows(width: int, max_width: int) -> Tensor:
    """Rows of the fused [3D, D] qkv weight that a width-`width` sub-network keeps."""
    return torch.cat(
        [torch.arange(k * max_width, k * max_width + width) for k in range(3)]
    )


def elastic_linear(x: Tensor, linear: nn.Linear, rows: Tensor | slice) -> Tensor:
    """POA's DynamicLinear: first x.shape[-1] inputs, `rows` outputs, input times a."""
    in_features = x.shape[-1]
    a = linear.in_features / in_features
    bias = linear.bias[rows] if linear.bias is not None else None
    return F.linear(x * a, linear.weight[rows, :in_features], bias)


def elastic_layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    """LayerNorm over the first x.shape[-1] channels; a missing bias is zero."""
    width = x.shape[-1]
    bias = norm.bias[:width] if norm.bias is not None else None
    return F.layer_norm(x, (width,), norm.weight[:width], bias, norm.eps)


def attend(qkv: Tensor, head_dim: int) -> Tensor:
    """Multi-head self-attention on fused [B, N, 3w] qkv with heads of `head_dim`."""
    b, n, three_w = qkv.shape
    width = three_w // 3
    q, k, v = qkv.reshape(b, n, 3, width // head_dim, head_dim).permute(2, 0, 3, 1, 4)
    attn = ((q * head_dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    return (attn @ v).transpose(1, 2).reshape(b, n, width)


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))


class Attention(nn.Module):
    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(attend(self.qkv(x), self.head_dim))

    def forward_elastic(self, x: Tensor) -> Tensor:
        width = x.shape[-1]
        qkv = elastic_linear(x, self.qkv, qkv_rows(width, self.proj.in_features))
        return elastic_linear(attend(qkv, self.head_dim), self.proj, slice(0, width))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))

    def forward_elastic(self, x: Tensor) -> Tensor:
        width = x.shape[-1]
        hidden = width * self.fc1.out_features // self.fc1.in_features
        h = F.gelu(elastic_linear(x, self.fc1, slice(0, hidden)))
        return elastic_linear(h, self.fc2, slice(0, width))


class Block(nn.Module):
    def __init__(self, geometry: Geometry, ln_bias: bool) -> None:
        super().__init__()
        dim = geometry.max_width
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS, bias=ln_bias)
        self.attn = Attention(dim, geometry.head_dim)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS, bias=ln_bias)
        self.mlp = Mlp(dim, dim * geometry.mlp_ratio)
        self.ls2 = LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x)) * self.ls1.gamma
        return x + self.mlp(self.norm2(x)) * self.ls2.gamma

    def forward_elastic(self, x: Tensor) -> Tensor:
        width = x.shape[-1]
        x = (
            x
            + self.attn.forward_elastic(elastic_layer_norm(x, self.norm1))
            * self.ls1.gamma[:width]
        )
        return (
            x
            + self.mlp.forward_elastic(elastic_layer_norm(x, self.norm2))
            * self.ls2.gamma[:width]
        )


class PatchEmbed(nn.Module):
    def __init__(self, geometry: Geometry) -> None:
        super().__init__()
        p = geometry.patch_size
        self.proj = nn.Conv2d(3, geometry.max_width, kernel_size=p, stride=p)


class ElasticViT(nn.Module):
    """A full-size teacher whose parameter names are plain DINOv2 names."""

    def __init__(self, geometry: Geometry, ln_bias: bool = True) -> None:
        super().__init__()
        self.geometry = geometry
        dim = geometry.max_width
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + geometry.num_patches, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embed = PatchEmbed(geometry)
        self.blocks = nn.ModuleList(
            Block(geometry, ln_bias) for _ in range(geometry.max_depth)
        )
        self.norm = nn.LayerNorm(dim, eps=LN_EPS, bias=ln_bias)

    @classmethod
    def from_state_dict(
        cls, geometry: Geometry, state: dict[str, Tensor]
    ) -> ElasticViT:
        """A float64 model holding exactly the (possibly rounded) values of `state`."""
        model = cls(geometry, ln_bias="norm.bias" in state).to(torch.float64)
        model.load_state_dict(
            {k: v.to(torch.float64) for k, v in state.items()}, strict=True
        )
        return model

    def tokens(self, x: Tensor, width: int) -> Tensor:
        """Patch embedding (output channels sliced, unscaled), CLS token, positions."""
        conv = self.patch_embed.proj
        patches = F.conv2d(
            x, conv.weight[:width], conv.bias[:width], stride=conv.stride
        )
        patches = patches.flatten(2).transpose(1, 2)
        cls = self.cls_token[..., :width].expand(x.shape[0], -1, -1)
        grid = (x.shape[-2] // conv.stride[0], x.shape[-1] // conv.stride[1])
        return torch.cat([cls, patches], dim=1) + self.position_embedding(width, grid)

    def position_embedding(self, width: int, grid: tuple[int, int]) -> Tensor:
        """The CLS and patch position embeddings, sliced; only the teacher's grid."""
        side = self.geometry.image_size // self.geometry.patch_size
        if grid != (side, side):
            raise ValueError(f"patch grid {grid} is not the teacher's {side}x{side}")
        return self.pos_embed[..., :width]

    def forward(self, x: Tensor, width: int, depth: int) -> tuple[Tensor, Tensor]:
        """POA's elastic forward: final-normed CLS [B, w] and patches [B, N, w]."""
        self.geometry.check_width(width)
        h = self.tokens(x, width)
        for i in block_indices(self.geometry.max_depth, depth):
            h = self.blocks[i].forward_elastic(h)
        h = elastic_layer_norm(h, self.norm)
        return h[:, 0], h[:, 1:]

    def forward_plain(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The ordinary fixed-size ViT forward through every block: no slicing, no a."""
        h = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        h = (
            torch.cat([self.cls_token.expand(x.shape[0], -1, -1), h], dim=1)
            + self.pos_embed
        )
        for block in self.blocks:
            h = block(h)
        h = self.norm(h)
        return h[:, 0], h[:, 1:]


def fold(
    model: ElasticViT, width: int, blocks: list[int]
) -> tuple[Geometry, dict[str, Tensor]]:
    """A standalone sub-network: weights sliced per the rules, a folded in."""
    g = model.geometry
    g.check_width(width)
    a = g.max_width / width
    hidden = width * g.mlp_ratio
    full = model.state_dict()
    rows = qkv_rows(width, g.max_width)
    out = {
        "cls_token": full["cls_token"][..., :width],
        "pos_embed": full["pos_embed"][..., :width],
        "mask_token": full["mask_token"][..., :width],
        "patch_embed.proj.weight": full["patch_embed.proj.weight"][:width],
        "patch_embed.proj.bias": full["patch_embed.proj.bias"][:width],
    }
    # Every remaining tensor is a per-block or final-norm parameter: slice by its role.
    slicers = {
        "attn.qkv.weight": lambda t: a * t[rows, :width],
        "attn.qkv.bias": lambda t: t[rows],
        "attn.proj.weight": lambda t: a * t[:width, :width],
        "mlp.fc1.weight": lambda t: a * t[:hidden, :width],
        "mlp.fc1.bias": lambda t: t[:hidden],
        "mlp.fc2.weight": lambda t: a * t[:width, :hidden],
    }
    for new, old in enumerate(blocks):
        prefix = f"blocks.{old}."
        for key, tensor in full.items():
            if key.startswith(prefix):
                role = key[len(prefix) :]
                out[f"blocks.{new}.{role}"] = slicers.get(role, lambda t: t[:width])(
                    tensor
                )
    for key in ("norm.weight", "norm.bias"):
        if key in full:
            out[key] = full[key][:width]
    sub = Geometry(
        width, len(blocks), g.head_dim, g.patch_size, g.image_size, g.mlp_ratio
    )
    return sub, {k: v.clone() for k, v in out.items()}


_POA_LINEAR = re.compile(
    r"^(blocks\.\d+\.(?:attn\.(?:qkv|proj)|mlp\.fc[12]))\.(weight|bias)$"
)
_POA_NORM = re.compile(r"^((?:blocks\.\d+\.)?norm[12]?)\.(weight|bias)$")


def poa_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Plain DINOv2 names -> POA's: `backbone.`, `.linear.` and `.norm.` added."""
    renamed = {}
    for key, tensor in state.items():
        key = _POA_LINEAR.sub(r"\1.linear.\2", key)
        key = _POA_NORM.sub(r"\1.norm.\2", key)
        renamed[f"backbone.{key}"] = tensor
    return renamed


def backbone_from_poa(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """POA's checkpoint names -> plain DINOv2 names; training heads are dropped."""
    plain = {}
    for key, tensor in state.items():
        if key.startswith("backbone."):
            key = key.removeprefix("backbone.")
            plain[key.replace(".linear.", ".").replace(".norm.", ".")] = tensor
    return plain


def chunked_names(
    state: dict[str, Tensor], chunks: int, depth: int
) -> dict[str, Tensor]:
    """Plain names -> DINOv2's block chunks `blocks.<chunk>.<i>.*` (i stays global)."""
    size = depth // chunks
    block = re.compile(r"^blocks\.(\d+)\.")
    return {
        block.sub(lambda m: f"blocks.{int(m.group(1)) // size}.{m.group(1)}.", key): t
        for key, t in state.items()
    }
