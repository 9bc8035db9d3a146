"""The engine learns real data: held-out accuracy / fit on stratified splits with a fixed seed,
features standardised with training statistics only."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split

from core.nn import Network, train


def split(x, y, stratify=True, seed=0):
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=seed,
                                          stratify=y if stratify else None)
    mean, std = xtr.mean(axis=0), xtr.std(axis=0)
    return (xtr - mean) / std, (xte - mean) / std, ytr, yte


def mlp(n_in, hidden, out, activation, loss, **dense):
    return Network.from_spec({"input_shape": [n_in], "loss": loss, "layers": [
        {"type": "dense", "units": hidden, "activation": "tanh", **dense},
        {"type": "dense", "units": out, "activation": activation}]})


def test_iris():
    xtr, xte, ytr, yte = split(*load_iris(return_X_y=True))
    net = mlp(4, 16, 3, "softmax", "categorical_crossentropy")
    train(net, xtr, ytr, {"epochs": 100, "batch_size": 16,
                          "optimizer": {"type": "adam", "learning_rate": 0.01}})
    assert (net.forward(xte).argmax(axis=1) == yte).mean() >= 0.95


def test_breast_cancer():
    xtr, xte, ytr, yte = split(*load_breast_cancer(return_X_y=True))
    net = mlp(30, 16, 1, "sigmoid", "binary_crossentropy")
    result = train(net, xtr, ytr, {"epochs": 30, "batch_size": 32, "validation_split": 0.2,
                                   "optimizer": {"type": "adam", "learning_rate": 0.005}})
    assert result.history[-1]["val_accuracy"] >= 0.9
    assert ((net.forward(xte)[:, 0] > 0.5) == yte).mean() >= 0.95


def test_diabetes_regression():
    """A noisy set: linear regression reaches R^2 ~0.36 on this split, a constant 0."""
    xtr, xte, ytr, yte = split(*load_diabetes(return_X_y=True), stratify=False)
    mean, std = ytr.mean(), ytr.std()
    net = mlp(10, 8, 1, "linear", "mse", l2=0.01)
    train(net, xtr, (ytr - mean) / std, {"epochs": 100, "batch_size": 32,
                                         "optimizer": {"type": "adam", "learning_rate": 0.002}})
    r2 = r2_score(yte, net.forward(xte)[:, 0] * std + mean)
    linear = LinearRegression().fit(xtr, ytr).score(xte, yte)
    assert r2 >= 0.3 and r2 >= linear - 0.05


def test_smooth_function_regression():
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(800, 2))
    y = np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] ** 2 - 0.5 * x[:, 0] * x[:, 1]
    y = y + 0.05 * rng.normal(size=len(y))
    xtr, xte, ytr, yte = split(x, y, stratify=False)
    net = mlp(2, 32, 1, "linear", "mse")
    train(net, xtr, ytr, {"epochs": 60, "batch_size": 32,
                          "optimizer": {"type": "adam", "learning_rate": 0.01},
                          "lr_schedule": {"type": "cosine", "min_lr": 0.0005}})
    mse = float(np.mean((net.forward(xte)[:, 0] - yte) ** 2))
    constant = float(np.mean((ytr.mean() - yte) ** 2))
    assert mse <= 0.05 * constant
