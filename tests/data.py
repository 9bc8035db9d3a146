"""Small real datasets and specs for the service tests."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.datasets import load_iris


def iris() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    return ((x - x.mean(0)) / x.std(0)).round(4), y


def iris_job(epochs: int = 60, **training: Any) -> dict[str, Any]:
    x, y = iris()
    return {
        "model": {"input_shape": [4],
                  "layers": [{"type": "dense", "units": 16, "activation": "relu"},
                             {"type": "dense", "units": 3, "activation": "softmax"}],
                  "loss": "categorical_crossentropy"},
        "training": {"optimizer": {"type": "sgd", "learning_rate": 0.1}, "epochs": epochs,
                     "batch_size": 16, "seed": 0, **training},
        "dataset": {"features": x.tolist(), "targets": y.tolist()},
    }


def digits_split():
    """scikit-learn's 8x8 digits as (n, 8, 8, 1) images in [0, 1], split 75/25 with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8, 1)
    return train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
