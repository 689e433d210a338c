#!/usr/bin/env python3
"""A ResNet-50-shaped SDR teacher with random weights, to measure a bundle's
size at the paper's scale (docs/sdr.md, "Storage"): torchvision's ResNet-50
layout (stem 7×7/2 + max pool, stages of 3, 4, 6, 3 bottlenecks, 224 px),
the last 8 bottlenecks SDR blocks with 2 groups each, 2⁸ = 256 paths, as the
paper's ImageNet SDRnet has. The split is the example's (shared = even mid
channels, groups ≡ 1 and ≡ 3 mod 4). Only sizes matter here, so the weights
are seeded noise and the BatchNorm statistics are positive.

    python3 tools/make_sdr_resnet50.py OUT_DIR   # OUT_DIR/sdr.safetensors (~100 MB) and sdr.json
"""

import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

STAGES = [(3, 64, 256, 1), (4, 128, 512, 2), (6, 256, 1024, 2), (3, 512, 2048, 2)]
ROUTED = 8


def main(out):
    rng = np.random.default_rng(0)
    t = {}

    def conv(name, cout, cin, k):
        t[name] = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)

    def bn(name, c):
        t[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        t[f"{name}.bias"] = rng.uniform(-0.1, 0.1, c).astype(np.float32)
        t[f"{name}.running_mean"] = rng.uniform(-0.1, 0.1, c).astype(np.float32)
        t[f"{name}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)

    conv("stem.conv.weight", 64, 3, 7)
    bn("stem.bn", 64)
    cin, modules = 64, []
    for s, (n, mid, cout, stride) in enumerate(STAGES):
        for i in range(n):
            m = f"layer{s + 1}.{i}"
            conv(f"{m}.conv1.weight", mid, cin, 1)
            bn(f"{m}.bn1", mid)
            conv(f"{m}.conv2.weight", mid, mid, 3)
            bn(f"{m}.bn2", mid)
            conv(f"{m}.conv3.weight", cout, mid, 1)
            bn(f"{m}.bn3", cout)
            if i == 0:
                conv(f"{m}.downsample.0.weight", cout, cin, 1)
                bn(f"{m}.downsample.1", cout)
            modules.append((m, mid))
            cin = cout
    spec = {
        "format": "tailor-sdr/1",
        "image_size": 224,
        "bn_eps": 1e-5,
        "stem": {"stride": 2, "max_pool": True},
        "strides": [s[3] for s in STAGES],
        "sdr_blocks": [
            {
                "module": m,
                "mid_channels": mid,
                "shared": list(range(0, mid, 2)),
                "groups": [list(range(1, mid, 4)), list(range(3, mid, 4))],
            }
            for m, mid in modules[-ROUTED:]
        ],
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(t, str(out / "sdr.safetensors"))
    (out / "sdr.json").write_text(json.dumps(spec, indent=1))
    params = sum(v.size for v in t.values())
    print(f"{out}/sdr.safetensors: {params:,} values, {len(spec['sdr_blocks'])} SDR blocks")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
