"""Central-difference gradient checks in float64, shared by the engine tests."""

from __future__ import annotations

import numpy as np

from core.nn import Network


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a-b| / max(|a|+|b|, tiny), the numpy-ml / cs231n metric."""
    denom = np.maximum(np.abs(a) + np.abs(b), 1e-10)
    return float(np.max(np.abs(a - b) / denom)) if a.size else 0.0


def numerical_gradients(net: Network, x, y, sample_weight=None, eps: float = 1e-6,
                        max_entries: int = 60, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each trainable array, (analytic, numerical) derivatives at up to `max_entries`
    randomly chosen entries (all entries for small arrays)."""
    assert net.dtype == np.float64, "gradient checks need float64"
    rng = np.random.default_rng(seed)
    _, grads = net.loss_and_gradients(x, y, sample_weight)
    out = {}
    for key, p in net.params().items():
        flat = p.reshape(-1)
        idx = np.arange(flat.size) if flat.size <= max_entries else rng.choice(flat.size, max_entries, replace=False)
        num = np.empty(len(idx))
        for j, i in enumerate(idx):
            old = flat[i]
            flat[i] = old + eps
            lp, _ = net.loss_and_gradients(x, y, sample_weight)
            flat[i] = old - eps
            lm, _ = net.loss_and_gradients(x, y, sample_weight)
            flat[i] = old
            num[j] = (lp - lm) / (2 * eps)
        out[key] = (grads[key].reshape(-1)[idx], num)
    return out


def input_gradient_check(net: Network, x, y, eps: float = 1e-6) -> float:
    """Relative error of dL/dx (through the whole network) against central differences."""
    x = np.array(x, dtype=np.float64)
    net._set_stochastic(False)
    try:
        yy = net.loss.prepare_targets(y, net.output_shape, net.dtype)
        z = net.logits(x, training=True)
        _, dz, _ = net.loss(net.output_activation, z, yy)
        dx = dz
        for layer in reversed(net.layers):
            dx = layer.backward(dx)
    finally:
        net._set_stochastic(True)
    flat = x.reshape(-1)
    num = np.empty_like(flat)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        lp, _ = net.loss_and_gradients(x, y)
        flat[i] = old - eps
        lm, _ = net.loss_and_gradients(x, y)
        flat[i] = old
        num[i] = (lp - lm) / (2 * eps)
    return relative_error(dx.reshape(-1), num)


def assert_gradients_match(net: Network, x, y, sample_weight=None, tol: float = 1e-6, **kw) -> None:
    for key, (analytic, numeric) in numerical_gradients(net, x, y, sample_weight, **kw).items():
        err = relative_error(analytic, numeric)
        assert err <= tol, f"{key}: relative error {err:.2e} > {tol:.0e}"


TOL = 1e-6


def make(layers, input_shape, loss="mse", seed=1, dtype="float64") -> Network:
    """A network from a list of layer specs, float64 by default for gradient checks."""
    return Network.from_spec({"input_shape": list(input_shape), "loss": loss, "layers": layers},
                             seed=seed, dtype=dtype)


def check_gradients(net: Network, x, y, tol: float = TOL, eps: float = 1e-6) -> None:
    """Weights and inputs both: dL/dw and dL/dx against central differences (step eps)."""
    assert_gradients_match(net, x, y, eps=eps, tol=tol)
    assert input_gradient_check(net, x, y, eps=eps) <= tol
