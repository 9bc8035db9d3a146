"""Writes the example datasets into examples/data from data that scikit-learn ships (and one
generated set), split into train and held-out test parts with a fixed seed.

    python examples/make_data.py

Features are standardised with the training part's mean and standard deviation, which is the
preprocessing these small networks expect."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_iris
from sklearn.model_selection import train_test_split

DATA = Path(__file__).resolve().parent / "data"


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0)
    std[std == 0] = 1
    return ((train - mean) / std).round(5), ((test - mean) / std).round(5)


def write_csv(path: Path, header: list[str], x: np.ndarray, y: list) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row, target in zip(x.tolist(), y, strict=True):
            w.writerow([*row, target])


def tabular(name: str, bunch, target_name: str, labels=None, stratify=True) -> None:
    x, y = bunch.data, bunch.target
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0,
                                          stratify=y if stratify else None)
    xtr, xte = standardise(xtr, xte)
    names = [n.replace(" ", "_") for n in bunch.feature_names]
    convert = (lambda v: labels[int(v)]) if labels is not None else (lambda v: round(float(v), 5))
    for part, xs, ys in (("train", xtr, ytr), ("test", xte, yte)):
        write_csv(DATA / f"{name}_{part}.csv", [*names, target_name], xs, [convert(v) for v in ys])


def digits() -> None:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8, 1).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    for part, xs, ys in (("train", xtr, ytr), ("test", xte, yte)):
        np.savez_compressed(DATA / f"digits_{part}.npz", features=xs, targets=ys.astype(np.int64))


def waves(n: int = 1200, steps: int = 40) -> None:
    """Noisy sine, square and sawtooth waves of random frequency and phase: which is which?"""
    rng = np.random.default_rng(0)
    t = np.arange(steps)
    kind = rng.integers(0, 3, n)
    freq = rng.uniform(0.05, 0.2, n)[:, None]
    phase = rng.uniform(0, 2 * np.pi, n)[:, None]
    angle = 2 * np.pi * freq * t + phase
    sine = np.sin(angle)
    square = np.sign(sine)
    saw = 2 * ((angle / (2 * np.pi)) % 1) - 1
    x = np.choose(kind[:, None], [sine, square, saw]) + rng.normal(0, 0.2, (n, steps))
    x = x[:, :, None].astype(np.float32)
    names = np.array(["sine", "square", "sawtooth"])
    xtr, xte, ytr, yte = train_test_split(x, names[kind], test_size=0.25, random_state=0, stratify=kind)
    for part, xs, ys in (("train", xtr, ytr), ("test", xte, yte)):
        np.savez_compressed(DATA / f"waves_{part}.npz", features=xs, targets=ys)


def main() -> None:
    DATA.mkdir(exist_ok=True)
    iris = load_iris()
    tabular("iris", iris, "species", labels=list(iris.target_names))
    cancer = load_breast_cancer()
    tabular("breast_cancer", cancer, "diagnosis", labels=list(cancer.target_names))
    tabular("diabetes", load_diabetes(), "progression", stratify=False)
    digits()
    waves()
    for p in sorted(DATA.iterdir()):
        print(f"{p.name}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
