#!/usr/bin/env python3
"""Independent reference for `exporter calibrate`'s metrics, in numpy.

- weighted k-NN top-1 (DINO's protocol: L2-normalised features, cosine
  similarity, the k=20 most similar memory features vote for their class
  with weight exp(sim / 0.07), top-1 of the summed votes);
- linear CKA (Kornblith et al. 2019) of two feature matrices of the same
  images, from the HSIC form: tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))
  with K = X X^T, L = Y Y^T and H the centring matrix, so it does not share
  the Rust code's feature-space formula.

Usage:
    python3 tools/knn_reference.py golden OUT.json
        writes a seeded feature set (few KB) and this script's results:
        calibration/tests/fixtures/knn_cka_golden.json
    python3 tools/knn_reference.py check FEATURES.npz
        FEATURES.npz from `exporter calibrate --dump-features`: prints k-NN
        top-1 of every sub-network and its CKA to the reference.
"""
import json
import sys

import numpy as np

K = 20
T = 0.07


def knn_top1(train, train_labels, test, test_labels, classes, k=K, t=T):
    train = train / np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-30)
    test = test / np.maximum(np.linalg.norm(test, axis=1, keepdims=True), 1e-30)
    sim = test.astype(np.float64) @ train.astype(np.float64).T
    k = min(k, train.shape[0])
    correct = 0
    for row, label in zip(sim, test_labels):
        # stable sort on -sim: equal similarities keep memory order
        nearest = np.argsort(-row, kind="stable")[:k]
        votes = np.zeros(classes)
        np.add.at(votes, train_labels[nearest], np.exp(row[nearest] / t))
        correct += int(np.argmax(votes) == label)  # argmax: first of ties
    return 100.0 * correct / len(test_labels)


def linear_cka(x, y):
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    kx, ky = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    denom = np.sqrt(np.sum(kx * kx) * np.sum(ky * ky))
    return float(np.sum(kx * ky) / denom) if denom > 0 else 0.0


def golden(out):
    rng = np.random.default_rng(20261130)
    classes, dim = 5, 6
    centres = rng.normal(size=(classes, dim))

    def draw(n):
        labels = rng.integers(0, classes, n)
        feats = centres[labels] + 0.9 * rng.normal(size=(n, dim))
        return np.round(feats, 3), labels

    train, train_labels = draw(120)
    test, test_labels = draw(50)
    # A narrower, non-linear view of the same images, for CKA across widths.
    mix = rng.normal(size=(dim, 4))
    narrow = np.round(np.tanh(train @ mix) + 0.3 * rng.normal(size=(120, 4)), 3)
    data = {
        "classes": classes,
        "train": train.tolist(),
        "train_labels": train_labels.tolist(),
        "test": test.tolist(),
        "test_labels": test_labels.tolist(),
        "narrow": narrow.tolist(),
        "knn_top1": knn_top1(train, train_labels, test, test_labels, classes),
        "knn_top1_k5": knn_top1(train, train_labels, test, test_labels, classes, k=5),
        "cka_train_narrow": linear_cka(train, narrow),
        "cka_train_train": linear_cka(train, train),
    }
    with open(out, "w") as f:
        json.dump(data, f, separators=(",", ":"))
        f.write("\n")
    print({k: v for k, v in data.items() if k.startswith(("knn", "cka"))})


def check(path):
    z = np.load(path)
    train_idx, val_idx, labels = z["train"], z["val"], z["labels"]
    classes = int(labels.max()) + 1
    reference = z["reference"]
    for name in z.files:
        if name in ("train", "val", "labels", "reference"):
            continue
        f = z[name]
        acc = knn_top1(f[train_idx], labels[train_idx], f[val_idx], labels[val_idx], classes)
        print(f"{name:<12} knn_top1 {acc:6.2f}%  cka {linear_cka(reference, f):.6f}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "golden":
        golden(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        sys.exit(__doc__)
