"""The benchmark workloads and one runner per system (engine, scikit-learn, PyTorch).

Every runner trains the same architecture on the same float32 data with the same batch size and
optimizer (Adam, learning rate 1e-3, shuffled every epoch) and exposes `epoch()`, which trains
one epoch and returns the number of samples it went through. scikit-learn and PyTorch are
imported only when a runner for them is built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.nn import Network, Trainer

LR = 1e-3


@dataclass
class Workload:
    name: str
    title: str
    x: np.ndarray  # float32 features, (n, *input_shape) channels_last for images
    y: np.ndarray  # class indices (n,)
    spec: dict[str, Any]  # the engine's model spec
    batch_size: int
    epochs_per_round: int = 1  # tiny epochs are timed in groups so that one timing is not ~1 ms
    sklearn_hidden: tuple[int, ...] | None = None  # MLPClassifier(hidden_layer_sizes) if it applies

    @property
    def classes(self) -> int:
        return int(self.spec["layers"][-1]["units"])


def _dense(units, activation):
    return {"type": "dense", "units": units, "activation": activation}


def _teacher_labels(x2: np.ndarray, classes: int, rng, noise: float = 0.2) -> np.ndarray:
    """Labels from a random linear teacher, a fraction `noise` of them replaced by random ones:
    learnable, yet never fitted so well that softmax outputs and gradients sink into float32
    denormals (which would time the CPU's denormal path instead of the training)."""
    w = rng.standard_normal((x2.shape[1], classes), dtype=np.float32)
    y = np.asarray((x2 @ w).argmax(axis=1), dtype=np.intp)
    flip = rng.random(len(y)) < noise
    y[flip] = rng.integers(0, classes, int(flip.sum()))
    return y


def mlp_synthetic(n: int = 20_000, seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 784), dtype=np.float32)
    spec = {"input_shape": [784], "loss": "categorical_crossentropy",
            "layers": [_dense(256, "relu"), _dense(128, "relu"), _dense(10, "softmax")]}
    return Workload("mlp", "MLP 784-256-128-10, 20k synthetic, batch 128", x,
                    _teacher_labels(x, 10, rng), spec, 128, sklearn_hidden=(256, 128))


def mlp_digits(epochs_per_round: int = 10) -> Workload:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    spec = {"input_shape": [64], "loss": "categorical_crossentropy",
            "layers": [_dense(128, "relu"), _dense(64, "relu"), _dense(10, "softmax")]}
    return Workload("digits", "MLP 64-128-64-10, sklearn digits (1797), batch 128",
                    (x / 16).astype(np.float32), y.astype(np.intp), spec, 128,
                    epochs_per_round=epochs_per_round, sklearn_hidden=(128, 64))


def conv_synthetic(n: int = 4096, seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    spec = {"input_shape": [28, 28, 1], "loss": "categorical_crossentropy", "layers": [
        {"type": "conv2d", "filters": 16, "kernel_size": 3, "activation": "relu"},
        {"type": "max_pool2d", "pool_size": 2},
        {"type": "conv2d", "filters": 32, "kernel_size": 3, "activation": "relu"},
        {"type": "max_pool2d", "pool_size": 2},
        {"type": "flatten"},
        _dense(10, "softmax")]}
    return Workload("conv", "conv 3x3x16-pool-3x3x32-pool-dense10, 28x28x1, batch 64", x,
                    _teacher_labels(x.reshape(n, -1), 10, rng), spec, 64)


def lstm_synthetic(n: int = 4096, steps: int = 50, features: int = 8, seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, steps, features), dtype=np.float32)
    spec = {"input_shape": [steps, features], "loss": "categorical_crossentropy",
            "layers": [{"type": "lstm", "units": 64}, _dense(10, "softmax")]}
    return Workload("lstm", "LSTM 64 over 50 steps x 8 features + dense10, batch 64", x,
                    _teacher_labels(x[:, -5:].reshape(n, -1), 10, rng), spec, 64)


def make(name: str, quick: bool = False) -> Workload:
    """The workload `name` at the benchmark's size (tiny with quick, a smoke run)."""
    if name == "mlp":
        return mlp_synthetic(n=2000 if quick else 20_000)
    if name == "digits":
        return mlp_digits(epochs_per_round=2 if quick else 10)
    if name == "conv":
        return conv_synthetic(n=256 if quick else 4096)
    if name == "lstm":
        return lstm_synthetic(n=256 if quick else 4096)
    raise ValueError(f"unknown workload {name!r}")


NAMES = ("mlp", "digits", "conv", "lstm")


# -- runners ----------------------------------------------------------------------------------

class EngineRunner:
    """The engine's own Trainer, exactly as a job runs it (metrics and diagnostics included)."""

    system = "engine"

    def __init__(self, wl: Workload, dtype: str = "float32", seed: int = 0):
        self.n = len(wl.x)
        self.net = Network.from_spec(wl.spec, seed=seed, dtype=dtype)
        self.x, self.y = wl.x.astype(dtype, copy=False), wl.y
        self.per_round = wl.epochs_per_round
        self.trainer = Trainer(self.net, {"optimizer": {"type": "adam", "learning_rate": LR},
                                          "batch_size": wl.batch_size, "epochs": 1, "seed": seed})

    def epoch(self) -> int:
        # the trainer continues where it stopped, up to cfg["epochs"]: one more round of epochs
        self.trainer.cfg["epochs"] = self.trainer.epoch + self.per_round
        self.trainer.fit(self.x, self.y)
        return self.n * self.per_round


class SklearnRunner:
    """MLPClassifier.partial_fit: one epoch of shuffled mini-batches of Adam per call."""

    system = "sklearn"

    def __init__(self, wl: Workload, seed: int = 0):
        from sklearn.neural_network import MLPClassifier

        self.n, self.per_round = len(wl.x), wl.epochs_per_round
        self.x, self.y = wl.x.reshape(len(wl.x), -1), wl.y
        self.classes = np.arange(wl.classes)
        self.clf = MLPClassifier(hidden_layer_sizes=wl.sklearn_hidden, activation="relu", solver="adam",
                                 alpha=0.0, batch_size=wl.batch_size, learning_rate_init=LR, shuffle=True,
                                 random_state=seed)

    def epoch(self) -> int:
        for _ in range(self.per_round):
            self.clf.partial_fit(self.x, self.y, classes=self.classes)
        return self.n * self.per_round


class TorchRunner:
    """A plain PyTorch loop: randperm, index, zero_grad, forward, cross_entropy, backward, Adam
    step, loss.item() per batch (what a logging training loop does)."""

    system = "torch"

    def __init__(self, wl: Workload, seed: int = 0):
        import torch
        from torch import nn

        self.torch = torch
        torch.manual_seed(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.n, self.bs, self.per_round = len(wl.x), wl.batch_size, wl.epochs_per_round
        x = wl.x
        if wl.name == "conv":  # PyTorch convolutions take (n, channels, height, width)
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        self.x = torch.from_numpy(x)
        self.y = torch.from_numpy(wl.y.astype(np.int64))
        self.model = _torch_model(wl, nn)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.loss = nn.CrossEntropyLoss()

    def epoch(self) -> int:
        torch = self.torch
        for _ in range(self.per_round):
            order = torch.randperm(self.n, generator=self.gen)
            total = 0.0
            for start in range(0, self.n, self.bs):
                idx = order[start:start + self.bs]
                self.opt.zero_grad(set_to_none=True)
                loss = self.loss(self.model(self.x[idx]), self.y[idx])
                loss.backward()
                self.opt.step()
                total += loss.item()
        return self.n * self.per_round


class NumpyReferenceRunner:
    """The "careful plain-NumPy MLP" that issue 4 measures against: one hand-written loop for a
    relu stack with softmax cross-entropy and Adam, every buffer preallocated, `out=` everywhere,
    weights and gradients in one flat vector each, the first layer's input gradient skipped, the
    engine's ten-pass Adam -- and nothing else (no metrics, gradient norms, checks or framework).
    It is the ceiling for NumPy on this work; the engine's ratio to it is what the engine's
    generality costs."""

    system = "numpy_reference"

    def __init__(self, wl: Workload, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.n, self.bs, self.per_round = len(wl.x), wl.batch_size, wl.epochs_per_round
        self.x, self.y = wl.x.reshape(len(wl.x), -1), wl.y
        sizes = [self.x.shape[1], *wl.sklearn_hidden, wl.classes]
        shapes = [s for a, b in zip(sizes[:-1], sizes[1:], strict=True) for s in ((a, b), (b,))]
        total = sum(int(np.prod(s)) for s in shapes)
        self.flat = np.zeros(total, np.float32)
        self.grad = np.zeros(total, np.float32)
        self.m, self.v = np.zeros(total, np.float32), np.zeros(total, np.float32)
        self.tmp, self.den = np.empty(total, np.float32), np.empty(total, np.float32)
        views, grads, offset = [], [], 0
        for shape in shapes:
            end = offset + int(np.prod(shape))
            views.append(self.flat[offset:end].reshape(shape))
            grads.append(self.grad[offset:end].reshape(shape))
            offset = end
        self.w, self.b = views[0::2], views[1::2]
        self.gw, self.gb = grads[0::2], grads[1::2]
        for w in self.w:  # Glorot uniform, as the engine's dense default
            limit = np.sqrt(6 / sum(w.shape))
            w[...] = rng.uniform(-limit, limit, w.shape)
        self.h = [np.empty((self.bs, k), np.float32) for k in sizes[1:]]  # layer outputs
        self.d = [np.empty((self.bs, k), np.float32) for k in sizes[1:]]  # dL/dz per layer
        self.zero = np.zeros((self.bs, max(sizes[1:])), np.float32)
        self.ones = np.ones(self.bs, np.float32)
        self.rng, self.t = np.random.default_rng(seed), 0

    def epoch(self) -> int:
        for _ in range(self.per_round):
            order = self.rng.permutation(self.n)
            for start in range(0, self.n, self.bs):
                idx = order[start:start + self.bs]
                self.gradients(self.x[idx], self.y[idx])
                self.adam()
        return self.n * self.per_round

    def gradients(self, x, y):
        """Forward and backward: fills self.grad."""
        m, last = len(x), len(self.w) - 1
        h = [x] + [buf[:m] for buf in self.h]
        d = [buf[:m] for buf in self.d]
        for i, (w, b) in enumerate(zip(self.w, self.b, strict=True)):
            np.matmul(h[i], w, out=h[i + 1])
            h[i + 1] += b
            if i < last:
                np.maximum(h[i + 1], self.zero[:m, :w.shape[1]], out=h[i + 1])
        # softmax cross-entropy: dL/dz = (softmax(z) - onehot(y)) / m
        z = d[last]
        np.subtract(h[-1], h[-1].max(axis=1, keepdims=True), out=z)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        z[np.arange(m), y] -= 1
        z *= np.float32(1 / m)
        for i in range(last, -1, -1):
            np.matmul(h[i].T, d[i], out=self.gw[i])
            np.matmul(self.ones[:m], d[i], out=self.gb[i])
            if i:  # dL/dh = dz W^T, then through the relu
                np.matmul(d[i], self.w[i].T, out=d[i - 1])
                d[i - 1] *= h[i] > 0

    def adam(self, b1=0.9, b2=0.999, eps=1e-8):
        """Adam in ten passes, as the engine's: m and v kept as sums M = m/(1-b1), V = v/(1-b2)."""
        self.t += 1
        f, g, m, v, tmp, den = np.float32, self.grad, self.m, self.v, self.tmp, self.den
        m *= f(b1)
        m += g
        np.multiply(g, g, out=tmp)
        v *= f(b2)
        v += tmp
        step = LR * np.sqrt(1 - b2**self.t) / (1 - b1**self.t) * (1 - b1) / np.sqrt(1 - b2)
        np.multiply(m, f(step), out=tmp)
        np.sqrt(v, out=den)
        den += f(eps / np.sqrt(1 - b2))
        tmp /= den
        self.flat -= tmp


def _torch_model(wl: Workload, nn):
    if wl.name in ("mlp", "digits"):
        sizes = [wl.x.shape[1], *wl.sklearn_hidden, wl.classes]
        mods = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            mods += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*mods[:-1])
    if wl.name == "conv":
        return nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(5 * 5 * 32, wl.classes))
    if wl.name == "lstm":
        class LastStep(nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm = nn.LSTM(wl.x.shape[2], 64, batch_first=True)
                self.head = nn.Linear(64, wl.classes)

            def forward(self, x):
                out, _ = self.lstm(x)
                return self.head(out[:, -1])
        return LastStep()
    raise ValueError(wl.name)


def mlp_gemm_flops(spec: dict[str, Any]) -> tuple[int, int]:
    """Per-sample training FLOPs of a dense stack: (6 x params, the exact GEMM count).

    The exact count is forward x W (2 flops per weight), dL/dW (2 per weight) and dL/dx for every
    layer but the first, whose input gradient nobody needs (PyTorch skips it too)."""
    sizes = [spec["input_shape"][0]] + [layer["units"] for layer in spec["layers"]]
    weights = [a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    params = sum(weights) + sum(sizes[1:])
    return 6 * params, 4 * sum(weights) + 2 * sum(weights[1:])
