"""Recurrent layers: simple_rnn, lstm and gru, trained by backpropagation through time.

Each takes one sample of shape (steps, features), i.e. batches of shape (n, steps, features), and
returns the last hidden state (n, units), or every hidden state (n, steps, units) with
`return_sequences`. The initial state is zero and the whole sequence is unrolled (full BPTT).

Layout, chosen for speed and for weight compatibility with Keras and PyTorch:

* the gates share one weight matrix: `kernel` (features, G*units), `recurrent_kernel`
  (units, G*units), with G = 1 (simple_rnn), 4 (lstm) or 3 (gru);
* simple_rnn and gru project the inputs of all steps with one GEMM up front (time-major,
  (steps*n, features) @ kernel); each step then does one recurrent GEMM (h @ recurrent_kernel)
  and element-wise work; the lstm runs feature-major with one GEMM per step (see LSTM);
* backward stores the per-step gradients of the gate pre-activations and forms the weight
  gradients and dL/dx with one GEMM each over all steps at the end.

Arrays keep the network's dtype throughout (float32 stays float32). With the default
activations (sigmoid gates, tanh candidate) the gates use sigmoid(z) = (1 + tanh(z/2)) / 2, so
that one tanh call covers all four LSTM gates; like the engine's activations, which the layers
use for any other choice, it is stable for inputs of any magnitude (no exp can overflow).

Example specs (model.input_shape is [steps, features]):

    {"type": "simple_rnn", "units": 32, "return_sequences": true}
    {"type": "lstm", "units": 64, "l2": 1e-4}
    {"type": "gru", "units": 64, "recurrent_activation": "sigmoid", "return_sequences": false}
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..activations import ACTIVATIONS, get_activation
from ..constants import column_sums
from ..spec import Field
from .base import INITIALIZER_CHOICES, REGULARIZER_FIELDS, Layer, ShapeError, register

# Gates are computed on whole blocks of columns, so only element-wise activations make sense.
_ELEMENTWISE = tuple(a for a in ACTIVATIONS if a != "softmax")

_COMMON_FIELDS = {
    "units": Field("int", minimum=1, description="size of the hidden state"),
    "return_sequences": Field("bool", default=False,
                              description="output every step (steps, units), not only the last"),
    "activation": Field("choice", default="tanh", choices=_ELEMENTWISE,
                        description="activation of the candidate / hidden state"),
    "use_bias": Field("bool", default=True),
    "kernel_initializer": Field("choice", default="glorot_uniform", choices=INITIALIZER_CHOICES,
                                description="for the input kernel (features, gates*units)"),
    "recurrent_initializer": Field("choice", default="orthogonal", choices=INITIALIZER_CHOICES,
                                   description="for the recurrent kernel (units, gates*units)"),
    "bias_initializer": Field("choice", default="zeros", choices=INITIALIZER_CHOICES),
    **REGULARIZER_FIELDS,
}
_RECURRENT_ACTIVATION = {
    "recurrent_activation": Field("choice", default="sigmoid", choices=_ELEMENTWISE,
                                  description="activation of the gates"),
}


class _Recurrent(Layer):
    """Shared plumbing: parameters, the time-major input projection, and the final GEMMs of
    backward. Subclasses implement `_run(P)` (the recurrence over pre-computed input
    projections) and `_run_backward(dy_t, last)`, or, like LSTM, forward and backward."""

    gates: ClassVar[int] = 1
    regularized = ("kernel", "recurrent_kernel")
    fields = _COMMON_FIELDS

    def __init__(self, config, name):
        super().__init__(config, name)
        self.units = int(config["units"])
        self.return_sequences = bool(config["return_sequences"])
        self.act = get_activation(config["activation"])
        self.rec = get_activation(config.get("recurrent_activation") or "sigmoid")

    # -- build --------------------------------------------------------------------------
    def build(self, input_shape, rng, dtype):
        if len(input_shape) != 2:
            hint = ("; to stack recurrent layers, set return_sequences: true on the earlier ones"
                    if len(input_shape) == 1 else "")
            raise ShapeError(f"needs inputs of shape (steps, features) per sample, got "
                             f"{list(input_shape)}{hint}")
        steps, features = input_shape
        u, width = self.units, self.gates * self.units
        cfg = self.config
        self.init_param("kernel", cfg["kernel_initializer"], (features, width), features, width,
                        rng, dtype)
        self.init_param("recurrent_kernel", cfg["recurrent_initializer"], (u, width), u, width,
                        rng, dtype)
        if cfg["use_bias"]:
            self.init_param("bias", cfg["bias_initializer"], self._bias_shape(), features, width,
                            rng, dtype)
        return (steps, u) if self.return_sequences else (u,)

    def _bias_shape(self) -> tuple[int, ...]:
        return (self.gates * self.units,)

    # -- forward ------------------------------------------------------------------------
    def forward(self, x, training):
        n, steps, features = x.shape
        # time-major copy of the inputs: step t is the contiguous block rows [t*n, (t+1)*n)
        self._xt = np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(steps * n, features)
        proj = self._xt @ self.params["kernel"]
        if "bias" in self.params:
            proj += self._input_bias()
        proj = proj.reshape(steps, n, -1)
        self._H = np.zeros((steps + 1, n, self.units), dtype=proj.dtype)  # H[0] is the zero state
        self._run(proj)
        if self.return_sequences:
            return np.ascontiguousarray(self._H[1:].transpose(1, 0, 2))
        return self._H[steps].copy()

    def _input_bias(self) -> np.ndarray:
        return self.params["bias"]

    # -- backward -----------------------------------------------------------------------
    def backward(self, dy):
        dP2 = self._weight_grads(dy)
        steps, n = self._H.shape[0] - 1, self._H.shape[1]
        dx = (dP2 @ self.params["kernel"].T).reshape(steps, n, -1)
        return dx.transpose(1, 0, 2)

    def backward_params(self, dy):
        self._weight_grads(dy)

    def _weight_grads(self, dy):
        """BPTT: fills the weight gradients; returns dL/d(input projection), (steps*n, G*units)."""
        steps, n, u = self._H.shape[0] - 1, self._H.shape[1], self.units
        if self.return_sequences:
            dy_t, last = dy.transpose(1, 0, 2), None
        else:
            dy_t, last = None, dy
        # dP: dL/d(input projection) per step; dQ: dL/d(h_prev @ recurrent_kernel [+ bias])
        dP, dQ = self._run_backward(dy_t, last)
        width = dP.shape[-1]
        dP2 = dP.reshape(steps * n, width)
        dQ2 = dQ.reshape(steps * n, width)
        g = self.grads
        np.matmul(self._xt.T, dP2, out=g["kernel"])
        # h_0 = 0 contributes nothing to dL/drecurrent_kernel, so step 0 is left out
        np.matmul(self._H[1:steps].reshape((steps - 1) * n, u).T, dQ2[n:],
                  out=g["recurrent_kernel"])
        if "bias" in self.params:
            self._bias_grad(dP2, dQ2)
        return dP2

    def _bias_grad(self, dP2, dQ2) -> None:
        column_sums(dP2, out=self.grads["bias"])

    @staticmethod
    def _dh_from(dy_t, last, t, steps, dh_next):
        """dL/dh_t: from the output at step t plus what flows back from step t+1."""
        if dy_t is not None:
            return dy_t[t] + dh_next if dh_next is not None else dy_t[t].copy()
        if t == steps - 1:
            return last.copy()
        return dh_next


@register
class SimpleRNN(_Recurrent):
    """Elman RNN: h_t = activation(x_t @ kernel + h_{t-1} @ recurrent_kernel + bias)."""

    type_name = "simple_rnn"
    gates = 1
    fields = _COMMON_FIELDS

    def _run(self, P):
        H, U, act = self._H, self.params["recurrent_kernel"], self.act
        for t in range(P.shape[0]):
            z = P[t]
            z += H[t] @ U  # P now holds the pre-activations
            H[t + 1] = act.forward(z)
        self._Z = P

    def _run_backward(self, dy_t, last):
        H, Z, U = self._H, self._Z, self.params["recurrent_kernel"]
        steps = Z.shape[0]
        dZ = np.empty_like(Z)
        dh = None
        for t in range(steps - 1, -1, -1):
            dh = self._dh_from(dy_t, last, t, steps, dh)
            dZ[t] = self.act.backward(Z[t], H[t + 1], dh)
            if t:
                dh = dZ[t] @ U.T
        return dZ, dZ


@register
class LSTM(_Recurrent):
    """Long short-term memory (Hochreiter & Schmidhuber, with a forget gate).

    Gate columns are ordered i, f, g, o (input, forget, candidate, output), as in Keras and
    PyTorch: i, f, o = recurrent_activation(...), g = activation(...),
    c_t = f * c_{t-1} + i * g, h_t = o * activation(c_t). The bias has shape (4*units,).
    `unit_forget_bias` (default true, as in Keras) sets the forget-gate bias to 1 at
    initialisation whatever bias_initializer says, so the cell remembers by default.

    Inside, the LSTM runs feature-major: one step's gates are a (4*units, n) array whose rows
    are ordered o, i, f, g, so each gate is one contiguous block (an element-wise NumPy call on
    it is one flat loop, about 3x faster than on a column block of an (n, 4*units) array) and
    the three sigmoid gates are adjacent. A step is one GEMM of the stacked weights with the
    stacked [h; x; 1] (see forward). The stored weights keep the public layout; each pass
    reorders them once (a few small copies)."""

    type_name = "lstm"
    gates = 4
    fields = {
        **_COMMON_FIELDS,
        **_RECURRENT_ACTIVATION,
        "unit_forget_bias": Field("bool", default=True,
                                  description="initialise the forget-gate bias to 1 "
                                              "(Jozefowicz et al. 2015)"),
    }

    def build(self, input_shape, rng, dtype):
        out = super().build(input_shape, rng, dtype)
        u = self.units
        if "bias" in self.params and self.config["unit_forget_bias"]:
            self.params["bias"][u:2 * u] = 1  # in place: the array is never rebound
        # internal row r holds public gate column _order[r]: o, i, f, g
        self._order = np.r_[3 * u:4 * u, 0:2 * u, 2 * u:3 * u]
        # default activations: sigmoid(z) = (tanh(z/2) + 1)/2, so one tanh covers all four gates
        # once the sigmoid gates' weights are halved (_scale)
        self._fast = self.rec.name == "sigmoid" and self.act.name == "tanh"
        self._scale = np.ones((4 * u, 1), dtype)
        if self._fast:
            self._scale[:3 * u] = 0.5
        return out

    def _stacked_weights(self) -> np.ndarray:
        """[recurrent_kernel; kernel; bias] as internal rows (4*units, units + features + 1),
        times _scale: one step's pre-activations are this matrix times the step's S column."""
        p = self.params
        w = [p["recurrent_kernel"], p["kernel"]] + ([p["bias"][None]] if "bias" in p else [])
        return np.ascontiguousarray(np.concatenate(w)[:, self._order].T * self._scale)

    # -- forward ------------------------------------------------------------------------
    def forward(self, x, training):
        n, steps, features = x.shape
        u, fast, act, rec = self.units, self._fast, self.act, self.rec
        dt = self._scale.dtype
        # S[t] = [h_t; x_t; 1] (rows; one column per sample), the state entering step t with
        # its input: one GEMM per step gives all the pre-activations, input projection and
        # bias included, and backward forms every weight gradient with one GEMM over all steps
        W = self._stacked_weights()
        S = np.empty((steps + 1, W.shape[1], n), dt)
        S[0, :u] = 0
        S[:steps, u:u + features] = x.transpose(1, 2, 0)
        S[:, u + features:] = 1
        A = np.empty((steps, 4 * u, n), dt)  # gate activations o, i, f, g
        Z = A if fast else np.empty_like(A)  # pre-activations (kept for backward if not fast)
        C = np.empty((steps + 1, u, n), dt)  # cell states, C[0] = 0
        C[0] = 0
        TC = np.empty((steps, u, n), dt)     # activation(c_t)
        ig = np.empty((u, n), dt)
        for t in range(steps):
            a, z = A[t], Z[t]
            np.matmul(W, S[t], out=z)
            if fast:  # z holds z/2 in the sigmoid rows (weights halved), so:
                np.tanh(a, out=a)
                sig = a[:3 * u]
                sig *= 0.5
                sig += 0.5
            else:
                a[:3 * u] = rec.forward(z[:3 * u])
                a[3 * u:] = act.forward(z[3 * u:])
            o, i, f, g = a[:u], a[u:2 * u], a[2 * u:3 * u], a[3 * u:]
            c = C[t + 1]
            np.multiply(f, C[t], out=c)
            np.multiply(i, g, out=ig)
            c += ig
            if fast:
                np.tanh(c, out=TC[t])
            else:
                TC[t] = act.forward(c)
            np.multiply(o, TC[t], out=S[t + 1, :u])
        if training:
            self._S, self._A, self._C, self._TC = S, A, C, TC
            self._Z = None if fast else Z
        H = S[1:, :u]
        if self.return_sequences:
            return np.ascontiguousarray(H.transpose(2, 0, 1))
        return np.ascontiguousarray(H[-1].T)

    # -- backward -----------------------------------------------------------------------
    def backward(self, dy):
        dZ = self._weight_grads(dy)
        steps, _, n = self._A.shape
        kernel = self.params["kernel"][:, self._order]
        return (kernel @ dZ).reshape(-1, steps, n).transpose(2, 1, 0)

    def backward_params(self, dy):
        self._weight_grads(dy)

    def _local_derivatives(self, t, k, ot) -> None:
        """Step t's derivatives into k and ot: dL/dz_t = k * dL/dh_t in the o rows and
        k * dL/dc_t in the i, f, g rows; dL/dc_t gains ot * dL/dh_t through
        h_t = o * activation(c_t). Per step, on arrays that stay in cache: whole-array passes
        over every step stream several MB through memory and cost more."""
        a, c_prev, tc, u = self._A[t], self._C[t], self._TC[t], self.units
        o, i, g = a[:u], a[u:2 * u], a[3 * u:]
        if self._fast:
            np.multiply(a, a, out=k)
            np.subtract(a[:3 * u], k[:3 * u], out=k[:3 * u])  # sigmoid' = a - a^2
            np.subtract(1, k[3 * u:], out=k[3 * u:])          # tanh' = 1 - a^2
            np.multiply(tc, tc, out=ot)
            np.subtract(1, ot, out=ot)                        # tanh'(c_t)
            ot *= o
        else:
            z = self._Z[t]
            k[:3 * u] = self.rec.backward(z[:3 * u], a[:3 * u], 1)
            k[3 * u:] = self.act.backward(z[3 * u:], g, 1)
            ot[...] = self.act.backward(self._C[t + 1], tc, o)
        k[:u] *= tc            # o: h_t = o * tanh(c_t)
        k[u:2 * u] *= g        # i: c_t = ... + i * g
        k[2 * u:3 * u] *= c_prev  # f: c_t = f * c_{t-1} + ...
        k[3 * u:] *= i         # g

    def _weight_grads(self, dy):
        """BPTT: fills the weight gradients; returns dL/dz feature-major, (4*units, steps*n)."""
        A, u = self._A, self.units
        steps, width, n = A.shape
        U = self.params["recurrent_kernel"][:, self._order]  # dL/dh_{t-1} = U @ dL/dz_t
        if self.return_sequences:
            dyT = dy.transpose(1, 2, 0)  # (steps, units, n)
        # dL/dz, feature-major over all steps: column t*n + j is sample j at step t
        dZ = np.empty_like(A)
        k = np.empty((width, n), A.dtype)
        dh, dc, ot = (np.empty((u, n), A.dtype) for _ in range(3))
        dc[...] = 0
        for t in range(steps - 1, -1, -1):
            if t == steps - 1:
                dh[...] = dyT[t] if self.return_sequences else dy.T
            else:
                np.matmul(U, dZ[t + 1], out=dh)
                if self.return_sequences:
                    dh += dyT[t]
            self._local_derivatives(t, k, ot)
            ot *= dh
            dc += ot  # dL/dc_t
            dz = dZ[t]
            np.multiply(dh, k[:u], out=dz[:u])
            for r in (u, 2 * u, 3 * u):  # i, f, g
                np.multiply(dc, k[r:r + u], out=dz[r:r + u])
            dc *= A[t, 2 * u:3 * u]  # through c_t = f * c_{t-1} + ...
        dZ2 = dZ.transpose(1, 0, 2).reshape(width, steps * n)
        S2 = self._S[:steps].transpose(1, 0, 2).reshape(-1, steps * n)
        G = S2 @ dZ2.T  # rows: recurrent_kernel, kernel, bias, as in _stacked_weights
        features = self.params["kernel"].shape[0]
        g = self.grads
        g["recurrent_kernel"][:, self._order] = G[:u]
        g["kernel"][:, self._order] = G[u:u + features]
        if "bias" in self.params:
            g["bias"][self._order] = G[u + features]
        return dZ2


def _sigmoid_into(z: np.ndarray, out: np.ndarray) -> None:
    """out = sigmoid(z) = (tanh(z/2) + 1)/2: one transcendental, and stable (tanh saturates)."""
    np.multiply(z, 0.5, out=out)
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5


@register
class GRU(_Recurrent):
    """Gated recurrent unit, the variant of PyTorch and of Keras with reset_after=True (the
    reset gate is applied after the recurrent matrix product, which allows one recurrent GEMM
    per step), not the original of Cho et al. (2014) that resets h before the product.

    Gate columns are ordered r, z, n (reset, update, candidate) as in PyTorch:
        r = rec(x W_r + b_r + h U_r + c_r),  z = rec(x W_z + b_z + h U_z + c_z)
        n = activation(x W_n + b_n + r * (h U_n + c_n)),  h' = (1 - z) * n + z * h
    with rec = recurrent_activation (sigmoid). The bias has shape (2, 3*units): row 0 the input
    bias b, row 1 the recurrent bias c (PyTorch's b_ih and b_hh; Keras orders gates z, r, h)."""

    type_name = "gru"
    gates = 3
    fields = {**_COMMON_FIELDS, **_RECURRENT_ACTIVATION}

    def __init__(self, config, name):
        super().__init__(config, name)
        self._fast = self.rec.name == "sigmoid"

    def _bias_shape(self):
        return (2, 3 * self.units)

    def _input_bias(self):
        return self.params["bias"][0]

    def _bias_grad(self, dP2, dQ2):
        column_sums(dP2, out=self.grads["bias"][0])
        column_sums(dQ2, out=self.grads["bias"][1])

    def _run(self, P):
        H, U, act, rec = self._H, self.params["recurrent_kernel"], self.act, self.rec
        steps, n, _ = P.shape
        u = self.units
        rb = self.params["bias"][1] if "bias" in self.params else None
        A = np.empty_like(P)  # r, z, n
        Q = np.empty_like(P)  # h_{t-1} @ U + c
        for t in range(steps):
            q, p, a = Q[t], P[t], A[t]
            np.matmul(H[t], U, out=q)
            if rb is not None:
                q += rb
            p[:, :2 * u] += q[:, :2 * u]  # P now holds the pre-activations
            if self._fast:
                _sigmoid_into(p[:, :2 * u], a[:, :2 * u])
            else:
                a[:, :2 * u] = rec.forward(p[:, :2 * u])
            p[:, 2 * u:] += a[:, :u] * q[:, 2 * u:]
            cand = a[:, 2 * u:]
            cand[...] = act.forward(p[:, 2 * u:])
            h = H[t + 1]
            np.subtract(H[t], cand, out=h)
            h *= a[:, u:2 * u]
            h += cand
        self._Z, self._A, self._Q = P, A, Q

    def _run_backward(self, dy_t, last):
        Z, A, Q, H = self._Z, self._A, self._Q, self._H
        U, act, rec = self.params["recurrent_kernel"], self.act, self.rec
        steps, n, width = Z.shape
        u = self.units
        dP = np.empty_like(Z)
        dQ = np.empty_like(Z)
        if self._fast:  # every step's sigmoid' = a - a^2 of r and z at once, not per step
            deriv = np.multiply(A[..., :2 * u], A[..., :2 * u])
            np.subtract(A[..., :2 * u], deriv, out=deriv)
        dh = None
        for t in range(steps - 1, -1, -1):
            dh = self._dh_from(dy_t, last, t, steps, dh)
            a, dp, dq = A[t], dP[t], dQ[t]
            r, z, cand = a[:, :u], a[:, u:2 * u], a[:, 2 * u:]
            np.multiply(dh, H[t] - cand, out=dp[:, u:2 * u])                # dz
            dp[:, 2 * u:] = act.backward(Z[t][:, 2 * u:], cand, dh - dh * z)  # d candidate pre
            np.multiply(dp[:, 2 * u:], Q[t][:, 2 * u:], out=dp[:, :u])      # dr
            if self._fast:
                dp[:, :2 * u] *= deriv[t]
            else:
                dp[:, :2 * u] = rec.backward(Z[t][:, :2 * u], a[:, :2 * u], dp[:, :2 * u])
            dq[:, :2 * u] = dp[:, :2 * u]
            np.multiply(dp[:, 2 * u:], r, out=dq[:, 2 * u:])
            if t:
                dh = dh * z + dq @ U.T
        return dP, dQ
