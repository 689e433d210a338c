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
        every other 2-D array a sub-network's [N, w], optional `labels` [N]
        and optional `W` [C, D], `b` [C] (else a head is fitted on the
        teacher features with the labels). `exporter calibrate
        --dump-features` writes this layout.

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


def transfer(sub, teacher, whiten="layer_norm", back="fitted", kdep=True):
    """The map sub-network features -> teacher features, (weight [D, w], bias [D]).

    The defaults are what calibration::head does; the other settings are the
    naive variants `ablation` compares it with.
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


def cross_fitted_logits(sub, teacher, head, **variant):
    """Logits of the folded head, each half scored by a fit on the other."""
    n = len(sub)
    halves = [np.arange(0, n, 2), np.arange(1, n, 2)]
    out = np.zeros((n, len(head[1])))
    for scored, fitted in [(halves[0], halves[1]), (halves[1], halves[0])]:
        if variant.get("whiten") == "logits":  # regress the teacher's logits directly
            folded = ridge(sub[fitted], teacher[fitted] @ head[0].T + head[1])
        else:
            folded = compose(transfer(sub[fitted], teacher[fitted], **variant), head)
        out[scored] = sub[scored] @ folded[0].T + folded[1]
    return out


def cross_fitted(sub, teacher, head, **variant):
    return np.argmax(cross_fitted_logits(sub, teacher, head, **variant), axis=1)


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
    reference fits, and every golden value the Rust tests check."""
    labels, teacher, subs = synthetic(np.random.default_rng(10), 80, 12, 4, 3, (6, 12))
    classes = 3
    arrays = {"labels": labels.astype(np.int64), "teacher": teacher.astype(np.float32)}
    head = fit_head(arrays["teacher"].astype(np.float64), labels, classes)
    arrays["W"], arrays["b"] = head
    teacher_pred = predict(head, arrays["teacher"].astype(np.float64))
    for w, sub in subs.items():
        sub = sub.astype(np.float32)
        s64, t64 = sub.astype(np.float64), arrays["teacher"].astype(np.float64)
        arrays[f"sub{w}"] = sub
        arrays[f"A{w}"], arrays[f"c{w}"] = compose(transfer(s64, t64), head)
        transferred = scores(cross_fitted(s64, t64, head), teacher_pred, labels)
        naive = scores(predict(truncated(head, w), s64), teacher_pred, labels)
        # [agreement, accuracy] of the cross-fitted transfer, then the truncated head.
        arrays[f"quality{w}"] = np.array([*transferred, *naive])
        assert transferred[0] > naive[0] and transferred[1] > naive[1], (w, transferred, naive)
    np.savez(out, **arrays)
    print(f"wrote {out}")
    for w in (6, 12):
        print(f"  w{w}: transferred agreement/accuracy {arrays[f'quality{w}'][:2]}, truncated {arrays[f'quality{w}'][2:]}")


VARIANTS = {
    "LayerNorm + KDEP + fitted inverse (calibration::head)": {},
    "LayerNorm + fitted inverse, no KDEP": {"kdep": False},
    "LayerNorm + KDEP + mean-scale inverse": {"back": "mean"},
    "per-feature standardisation + KDEP": {"whiten": "standardise"},
    "raw targets + KDEP": {"whiten": "none"},
    "raw targets, no KDEP (plain least squares)": {"whiten": "none", "kdep": False},
    "teacher logits as targets (no feature space)": {"whiten": "logits"},
}


def ablation(path):
    data = np.load(path)
    teacher_key = "teacher" if "teacher" in data else "reference"
    teacher = data[teacher_key].astype(np.float64)
    labels = data["labels"].astype(np.int64) if "labels" in data else None
    if "W" in data:
        head = data["W"].astype(np.float64), data["b"].astype(np.float64)
    else:
        head = fit_head(teacher, labels, int(labels.max()) + 1)
    teacher_logits = teacher @ head[0].T + head[1]
    teacher_pred = np.argmax(teacher_logits, axis=1)
    truth = labels if labels is not None else teacher_pred
    spread = np.mean((teacher_logits - teacher_logits.mean(0)) ** 2)

    def row(name, logits):
        pred = np.argmax(logits, axis=1)
        err = np.mean((logits - teacher_logits) ** 2) / spread
        print(f"  {name:52} {np.mean(pred == teacher_pred):6.3f} {np.mean(pred == truth):6.3f} {err:8.4f}")

    subs = [
        k for k in data.files
        if data[k].ndim == 2 and len(data[k]) == len(teacher) and k not in (teacher_key, "reference")
    ]
    for key in sorted(subs):
        sub = data[key].astype(np.float64)
        w = sub.shape[1]
        print(f"{key} (w={w} of {teacher.shape[1]}), cross-fitted: agreement, accuracy, logit error / logit variance")
        row("truncated head", sub @ truncated(head, w)[0].T + head[1])
        for name, variant in VARIANTS.items():
            row(name, cross_fitted_logits(sub, teacher, head, **variant))


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
