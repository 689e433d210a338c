"""The head transfer of calibration::head, written independently in numpy.

    python3 tools/head_reference.py fixture [OUT.npz]
        writes the small golden fixture the Rust tests read
        (calibration/tests/fixtures/head-transfer.npz by default)
    python3 tools/head_reference.py synthetic OUT.npz
        writes larger synthetic features (2000 images, D = 64, 10 classes) in
        the format `ablation` reads
    python3 tools/head_reference.py ablation FEATURES.npz
        compares the transfer with the naive variants on real features: an
        .npz with the teacher's features as `teacher` or `reference` [N, D],
        every other 2-D array a sub-network's [N, w], optional `labels` [N],
        optional `train` and `val` image indices (else a seeded 80/20 split)
        and optional `W` [C, D], `b` [C] (else a head is fitted on the
        teacher's train features with the labels). Maps are fitted on the
        train images and every score is on the val images. `exporter
        calibrate --dump-features` writes this layout.

Same maths as the Rust code, different route: ridge regression is solved as
one augmented least-squares problem (np.linalg.lstsq on [X 1; sqrt(l) I 0])
instead of centred normal equations with a Cholesky factor, and the principal
directions come from np.linalg.svd instead of an eigendecomposition of the
Gram matrix.
"""

from __future__ import annotations

import sys

import numpy as np

ALPHA = 1e-3  # ridge penalty relative to the mean eigenvalue of the centred Gram
LN_EPS = 1e-5  # non-parametric LayerNorm's epsilon (PyTorch's default)


def ridge(x, y, alpha=ALPHA):
    """(weight [q, p], bias [q]) minimising |x W^T + b - y|^2 + l |W|^2."""
    n, p = x.shape
    lam = alpha * np.sum((x - x.mean(0)) ** 2) / p
    design = np.vstack(
        [np.hstack([x, np.ones((n, 1))]), np.hstack([np.sqrt(lam) * np.eye(p), np.zeros((p, 1))])]
    )
    target = np.vstack([y, np.zeros((p, y.shape[1]))])
    sol = np.linalg.lstsq(design, target, rcond=None)[0]
    return sol[:p].T, sol[p]


def layer_norm(t):
    mean = t.mean(1, keepdims=True)
    var = ((t - mean) ** 2).mean(1, keepdims=True)
    return (t - mean) / np.sqrt(var + LN_EPS)


def fit_head(features, labels, classes):
    return ridge(features, np.eye(classes)[labels])


def compose(first, second):
    """second after first, both (weight, bias)."""
    (w1, b1), (w2, b2) = first, second
    return w2 @ w1, w2 @ b1 + b2


PLAIN = {"whiten": "none", "kdep": False}  # calibration::head's Route::Plain


def transfer(sub, teacher, whiten="layer_norm", back="fitted", kdep=True):
    """The map sub-network features -> teacher features, (weight [D, w], bias [D]).

    The defaults are calibration::head's Route::LnKdep, PLAIN its
    Route::Plain; the other settings are the variants `ablation` compares.
    """
    w, d = sub.shape[1], teacher.shape[1]
    if whiten == "layer_norm":
        z = layer_norm(teacher)
        if back == "fitted":
            to_teacher = ridge(z, teacher)
        else:  # undo LayerNorm with the dataset's mean image mean and deviation
            m = teacher.mean(1).mean()
            s = np.sqrt(teacher.var(1) + LN_EPS).mean()
            to_teacher = (s * np.eye(d), np.full(d, m))
    elif whiten == "standardise":  # per-feature dataset statistics: exactly affine
        mu, sd = teacher.mean(0), teacher.std(0) + 1e-12
        z = (teacher - mu) / sd
        to_teacher = (np.diag(sd), mu)
    else:
        z = teacher
        to_teacher = (np.eye(d), np.zeros(d))
    if kdep and w < d:
        z_mean = z.mean(0)
        vt = np.linalg.svd(z - z_mean, full_matrices=False)[2]
        v = vt[:w].T
        to_z = compose(ridge(sub, (z - z_mean) @ v), (v, z_mean))
    else:
        to_z = ridge(sub, z)
    return compose(to_z, to_teacher)


def predict(layer, x):
    weight, bias = layer
    return np.argmax(x @ weight.T + bias, axis=1)


def held_out_logits(sub, teacher, head, fit, score, **variant):
    """Logits on the `score` images of the head folded with a map fitted on `fit`."""
    if variant.get("whiten") == "logits":  # regress the teacher's logits directly
        folded = ridge(sub[fit], teacher[fit] @ head[0].T + head[1])
    else:
        folded = compose(transfer(sub[fit], teacher[fit], **variant), head)
    return sub[score] @ folded[0].T + folded[1]


def truncated(head, w):
    return head[0][:, :w], head[1]


def scores(pred, teacher_pred, labels):
    return np.mean(pred == teacher_pred), np.mean(pred == labels)


def synthetic(rng, n, d, k, classes, widths):
    """Teacher features with class structure, and per width the features of
    a sub-network: a noisy mix of the teacher's first channels and the latent
    classes, LayerNormed with its own affine, as a ViT's final norm would."""
    labels = rng.integers(0, classes, n)
    latent = 2.0 * rng.normal(size=(classes, k))[labels] + rng.normal(size=(n, k))
    pre = latent @ rng.normal(size=(k, d)) + 0.3 * rng.normal(size=(n, d))
    teacher = layer_norm(pre) * (1 + 0.2 * rng.normal(size=d)) + 0.1 * rng.normal(size=d)
    subs = {}
    for w in widths:
        mix = 0.6 * latent @ rng.normal(size=(k, w)) + 0.5 * rng.normal(size=(n, w))
        sub = layer_norm(0.8 * pre[:, :w] + mix)
        subs[w] = sub * (1 + 0.2 * rng.normal(size=w)) + 0.1 * rng.normal(size=w)
    return labels, teacher, subs


def make_fixture(out):
    """Structured teacher features and two sub-networks' features (a noisy
    mix of the teacher's first channels and the latent classes), the head the
    reference fits, a train/val split, and every golden value the Rust tests
    check."""
    rng = np.random.default_rng(10)
    labels, teacher, subs = synthetic(rng, 80, 12, 4, 3, (6, 12))
    classes = 3
    order = rng.permutation(80)
    train, val = np.sort(order[:60]), np.sort(order[60:])
    arrays = {
        "labels": labels.astype(np.int64), "teacher": teacher.astype(np.float32),
        "train": train.astype(np.int64), "val": val.astype(np.int64),
    }
    head = fit_head(arrays["teacher"].astype(np.float64), labels, classes)
    arrays["W"], arrays["b"] = head
    teacher_pred = predict(head, arrays["teacher"].astype(np.float64))
    for w, sub in subs.items():
        sub = sub.astype(np.float32)
        s64, t64 = sub.astype(np.float64), arrays["teacher"].astype(np.float64)
        arrays[f"sub{w}"] = sub
        arrays[f"A{w}"], arrays[f"c{w}"] = compose(transfer(s64, t64), head)
        arrays[f"plainA{w}"], arrays[f"plainc{w}"] = compose(transfer(s64, t64, **PLAIN), head)
        naive = scores(predict(truncated(head, w), s64[val]), teacher_pred[val], labels[val])
        for name, variant in (("quality", PLAIN), ("lnkdep_quality", {})):
            pred = np.argmax(held_out_logits(s64, t64, head, train, val, **variant), axis=1)
            transferred = scores(pred, teacher_pred[val], labels[val])
            # [agreement, accuracy] on val of the map fitted on train, then the truncated head.
            arrays[f"{name}{w}"] = np.array([*transferred, *naive])
            assert transferred[0] > naive[0] and transferred[1] > naive[1], (w, name, transferred, naive)
    np.savez(out, **arrays)
    print(f"wrote {out}")
    for w in (6, 12):
        for name in ("quality", "lnkdep_quality"):
            q = arrays[f"{name}{w}"]
            print(f"  w{w} {name}: transferred agreement/accuracy {q[:2]}, truncated {q[2:]}")


VARIANTS = {
    "LayerNorm + KDEP + fitted inverse (Route::LnKdep)": {},
    "LayerNorm + fitted inverse, no KDEP": {"kdep": False},
    "LayerNorm + KDEP + mean-scale inverse": {"back": "mean"},
    "per-feature standardisation + KDEP": {"whiten": "standardise"},
    "raw targets + KDEP": {"whiten": "none"},
    "raw targets, no KDEP (plain least squares; Route::Plain)": PLAIN,
    "teacher logits as targets (no feature space)": {"whiten": "logits"},
}


def ablation(path):
    data = np.load(path)
    teacher_key = "teacher" if "teacher" in data else "reference"
    teacher = data[teacher_key].astype(np.float64)
    n = len(teacher)
    labels = data["labels"].astype(np.int64) if "labels" in data and len(data["labels"]) else None
    if "train" in data and len(data["train"]):
        train, val = data["train"].astype(np.int64), data["val"].astype(np.int64)
    else:
        order = np.random.default_rng(0).permutation(n)
        train, val = order[: (4 * n + 4) // 5], order[(4 * n + 4) // 5 :]
    if "W" in data:
        head = data["W"].astype(np.float64), data["b"].astype(np.float64)
    else:
        head = fit_head(teacher[train], labels[train], int(labels.max()) + 1)
    teacher_logits = teacher[val] @ head[0].T + head[1]
    teacher_pred = np.argmax(teacher_logits, axis=1)
    truth = labels[val] if labels is not None else teacher_pred
    spread = np.mean((teacher_logits - teacher_logits.mean(0)) ** 2)
    print(f"teacher head on the {len(val)} val images: accuracy {np.mean(teacher_pred == truth):.3f}; maps fitted on {len(train)}")

    def row(name, logits):
        pred = np.argmax(logits, axis=1)
        err = np.mean((logits - teacher_logits) ** 2) / spread
        print(f"  {name:56} {np.mean(pred == teacher_pred):6.3f} {np.mean(pred == truth):6.3f} {err:8.4f}")

    subs = [
        k for k in data.files
        if data[k].ndim == 2 and len(data[k]) == n and k not in (teacher_key, "reference")
    ]
    for key in sorted(subs):
        sub = data[key].astype(np.float64)
        w = sub.shape[1]
        print(f"{key} (w={w} of {teacher.shape[1]}), on val: agreement, accuracy, logit error / logit variance")
        row("truncated head", sub[val] @ truncated(head, w)[0].T + head[1])
        for name, variant in VARIANTS.items():
            row(name, held_out_logits(sub, teacher, head, train, val, **variant))


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "fixture":
        make_fixture(sys.argv[2] if len(sys.argv) > 2 else "calibration/tests/fixtures/head-transfer.npz")
    elif len(sys.argv) == 3 and sys.argv[1] == "synthetic":
        labels, teacher, subs = synthetic(np.random.default_rng(0), 2000, 64, 12, 10, (16, 32, 48, 64))
        np.savez(sys.argv[2], labels=labels, teacher=teacher, **{f"sub_w{w}": s for w, s in subs.items()})
    elif len(sys.argv) == 3 and sys.argv[1] == "ablation":
        ablation(sys.argv[2])
    else:
        sys.exit(__doc__)
