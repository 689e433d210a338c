"""POA's elastic ("dynamic") bottleneck ResNet forward in float64 numpy,
written from the rules (poa-elastic-rules.md) and from reading POA's
`poa/models/resnet.py` and `poa/layers` (not imported, not copied).

The teacher: a stem (7×7/2 conv without bias, GroupNorm, ReLU, 3×3/2 max
pool), four stages of bottleneck blocks (1×1 conv, 3×3 conv carrying the
stride, 1×1 conv, each followed by GroupNorm; ReLU after the first two and
after the residual sum), a 1×1 conv + GroupNorm shortcut on a stage's first
block when its stride or channels change. No conv has a bias; every
GroupNorm has `num_gn_groups` groups and eps 1e-5.

A sub-network is never materialised: `forward(weights, g, mids, depths, x)`
slices on the fly as POA does. Stage i keeps blocks
`linspace(0, max_i - 1, depth_i).astype(int64)`; a block of mid width m
(of max_mid = out/2) uses conv1 `[:m]`, conv2 `[:m, :m]`, conv3 `[:, :m]`,
norm1/norm2 `[:m]` with the SAME number of groups, and multiplies the INPUTS
of conv2 and conv3 by max_mid / m (conv1's input is never sliced: scale 1).
Stage widths and the stem are never sliced.

Outputs: `cls_token` = the mean over positions of the last feature map
(POA's `x_norm_clstoken`), `patch_tokens` = the flattened map [B, hw, C]
(POA's `x_prenorm`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

GN_EPS = 1e-5
Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class Geometry:
    """What POA's `student:` keys say (and the image size from `crops`)."""

    stem_channels: int
    base_channels: int
    num_gn_groups: int
    min_depths: tuple[int, int, int, int]
    max_depths: tuple[int, int, int, int]
    strides: tuple[int, int, int, int]
    image_size: int

    def out_channels(self, stage: int) -> int:
        return self.base_channels * 4 * 2**stage

    def in_channels(self, stage: int) -> int:
        return self.stem_channels if stage == 0 else self.out_channels(stage - 1)

    def max_mid(self, stage: int) -> int:
        return self.out_channels(stage) // 2

    def mid_choices(self, stage: int) -> list[int]:
        """out/4 .. out/2 in steps of groups · 2^stage (POA's bottleneck widths)."""
        out = self.out_channels(stage)
        return list(range(out // 4, out // 2 + 1, self.num_gn_groups * 2**stage))

    def mid_widths(self) -> list[tuple[int, ...]]:
        """The width choices, zipped across stages."""
        return list(zip(*(self.mid_choices(i) for i in range(4))))

    def depth_grid(self) -> list[tuple[int, ...]]:
        ranges = [range(lo, hi + 1) for lo, hi in zip(self.min_depths, self.max_depths)]
        return list(itertools.product(*ranges))

    def has_shortcut(self, stage: int) -> bool:
        return self.strides[stage] != 1 or self.in_channels(stage) != self.out_channels(stage)


def block_indices(max_depth: int, depth: int) -> list[int]:
    if not 0 < depth <= max_depth:
        raise ValueError(f"depth {depth} is not in [1, {max_depth}]")
    return np.linspace(0, max_depth - 1, depth).astype(np.int64).tolist()


def paper_block_indices(max_depth: int, depth: int) -> list[int]:
    """The paper's floor((max-1)·j/(depth-1)): NOT what POA's code keeps."""
    if depth == 1:
        return [0]
    return [(max_depth - 1) * j // (depth - 1) for j in range(depth)]


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Cross-correlation, NCHW × OIHW, float64."""
    b, c, h, wd = x.shape
    o, c2, k, _ = w.shape
    assert c == c2, (x.shape, w.shape)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - k) // stride + 1
    ow = (wd + 2 * pad - k) // stride + 1
    out = np.zeros((b, o, oh, ow))
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
            out += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j])
    return out


def group_norm(x: np.ndarray, groups: int, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    b, c, h, w = x.shape
    g = x.reshape(b, groups, -1)
    mean = g.mean(axis=2, keepdims=True)
    var = ((g - mean) ** 2).mean(axis=2, keepdims=True)
    normed = ((g - mean) / np.sqrt(var + GN_EPS)).reshape(b, c, h, w)
    return normed * weight[None, :, None, None] + bias[None, :, None, None]


def max_pool(x: np.ndarray, k: int = 3, stride: int = 2, pad: int = 1) -> np.ndarray:
    b, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    out = np.full((b, c, oh, ow), -np.inf)
    for i in range(k):
        for j in range(k):
            out = np.maximum(out, xp[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride])
    return out


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def bottleneck(
    w: Weights, g: Geometry, stage: int, block: int, mid: int, x: np.ndarray
) -> np.ndarray:
    p = f"layer{stage + 1}.layers.{block}."
    a = g.max_mid(stage) / mid
    stride = g.strides[stage] if block == 0 else 1
    groups = g.num_gn_groups
    out = conv2d(x, w[p + "conv1.conv.weight"][:mid], 1, 0)
    out = relu(group_norm(out, groups, w[p + "norm1.weight"][:mid], w[p + "norm1.bias"][:mid]))
    out = conv2d(out * a, w[p + "conv2.conv.weight"][:mid, :mid], stride, 1)
    out = relu(group_norm(out, groups, w[p + "norm2.weight"][:mid], w[p + "norm2.bias"][:mid]))
    out = conv2d(out * a, w[p + "conv3.conv.weight"][:, :mid], 1, 0)
    out = group_norm(out, groups, w[p + "norm3.weight"], w[p + "norm3.bias"])
    identity = x
    if block == 0 and g.has_shortcut(stage):
        identity = conv2d(x, w[p + "downsample.0.weight"], g.strides[stage], 0)
        identity = group_norm(
            identity, groups, w[p + "downsample.1.weight"], w[p + "downsample.1.bias"]
        )
    return relu(out + identity)


def forward(
    w: Weights,
    g: Geometry,
    mids: tuple[int, ...],
    depths: tuple[int, ...],
    x: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(cls_token [B, C], patch_tokens [B, hw, C]) of sub-network (mids, depths)."""
    for i, m in enumerate(mids):
        if m not in g.mid_choices(i):
            raise ValueError(f"stage {i + 1} mid width {m} is not one of {g.mid_choices(i)}")
    x = conv2d(x, w["conv1.weight"], 2, 3)
    x = max_pool(relu(group_norm(x, g.num_gn_groups, w["norm1.weight"], w["norm1.bias"])))
    for stage in range(4):
        for block in block_indices(g.max_depths[stage], depths[stage]):
            x = bottleneck(w, g, stage, block, mids[stage], x)
    tokens = x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1)
    return tokens.mean(axis=1), tokens


def fold(w: Weights, g: Geometry, mids: tuple[int, ...], depths: tuple[int, ...]) -> Weights:
    """A standalone fixed-size ResNet (scales folded into conv2/conv3, blocks
    renumbered) whose plain forward must equal the elastic one."""
    out: Weights = {k: v for k, v in w.items() if not k.startswith("layer")}
    for stage in range(4):
        m, a = mids[stage], g.max_mid(stage) / mids[stage]
        for j, block in enumerate(block_indices(g.max_depths[stage], depths[stage])):
            src, dst = f"layer{stage + 1}.layers.{block}.", f"layer{stage + 1}.layers.{j}."
            for k, v in w.items():
                if not k.startswith(src):
                    continue
                name = k.removeprefix(src)
                if name.startswith("conv1"):
                    v = v[:m]
                elif name.startswith("conv2"):
                    v = v[:m, :m] * a
                elif name.startswith("conv3"):
                    v = v[:, :m] * a
                elif name.startswith(("norm1", "norm2")):
                    v = v[:m]
                out[dst + name] = v
    return out


def forward_plain(w: Weights, g: Geometry, depths: tuple[int, ...], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A fixed ResNet: every block of `depths` in order, channels as stored, no scales."""
    x = conv2d(x, w["conv1.weight"], 2, 3)
    x = max_pool(relu(group_norm(x, g.num_gn_groups, w["norm1.weight"], w["norm1.bias"])))
    for stage in range(4):
        for block in range(depths[stage]):
            p = f"layer{stage + 1}.layers.{block}."
            stride = g.strides[stage] if block == 0 else 1
            gn = lambda t, n: group_norm(t, g.num_gn_groups, w[p + n + ".weight"], w[p + n + ".bias"])  # noqa: E731
            out = relu(gn(conv2d(x, w[p + "conv1.conv.weight"], 1, 0), "norm1"))
            out = relu(gn(conv2d(out, w[p + "conv2.conv.weight"], stride, 1), "norm2"))
            out = gn(conv2d(out, w[p + "conv3.conv.weight"], 1, 0), "norm3")
            identity = x
            if p + "downsample.0.weight" in w:
                identity = gn(conv2d(x, w[p + "downsample.0.weight"], g.strides[stage], 0), "downsample.1")
            x = relu(out + identity)
    tokens = x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1)
    return tokens.mean(axis=1), tokens


def teacher_shapes(g: Geometry) -> dict[str, tuple[int, ...]]:
    """Every backbone tensor of the teacher with its shape, in module order."""
    shapes: dict[str, tuple[int, ...]] = {
        "conv1.weight": (g.stem_channels, 3, 7, 7),
        "norm1.weight": (g.stem_channels,),
        "norm1.bias": (g.stem_channels,),
    }
    for stage in range(4):
        cin, out, mid = g.in_channels(stage), g.out_channels(stage), g.max_mid(stage)
        for block in range(g.max_depths[stage]):
            p = f"layer{stage + 1}.layers.{block}."
            shapes[p + "conv1.conv.weight"] = (mid, cin if block == 0 else out, 1, 1)
            shapes[p + "norm1.weight"] = shapes[p + "norm1.bias"] = (mid,)
            shapes[p + "conv2.conv.weight"] = (mid, mid, 3, 3)
            shapes[p + "norm2.weight"] = shapes[p + "norm2.bias"] = (mid,)
            shapes[p + "conv3.conv.weight"] = (out, mid, 1, 1)
            shapes[p + "norm3.weight"] = shapes[p + "norm3.bias"] = (out,)
            if block == 0 and g.has_shortcut(stage):
                shapes[p + "downsample.0.weight"] = (out, cin, 1, 1)
                shapes[p + "downsample.1.weight"] = shapes[p + "downsample.1.bias"] = (out,)
    return shapes
