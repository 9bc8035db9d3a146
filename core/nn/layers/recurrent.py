"""Recurrent layers: simple_rnn, lstm and gru, trained by backpropagation through time.

Each takes one sample of shape (steps, features), i.e. batches of shape (n, steps, features), and
returns the last hidden state (n, units), or every hidden state (n, steps, units) with
`return_sequences`. The initial state is zero and the whole sequence is unrolled (full BPTT).

Stored weights follow Keras and PyTorch: the gates share one weight matrix, `kernel`
(features, G*units) and `recurrent_kernel` (units, G*units), with G = 1 (simple_rnn), 4 (lstm)
or 3 (gru).

Inside, the layers run feature-major, chosen for speed:

* a step's state is a (units, n) array, one column per sample, so that each gate is one
  contiguous block and an element-wise NumPy call on it is one flat loop (about 3x faster than
  on a column block of an (n, G*units) array, where each call walks n short rows);
* S[t] = [h_t; x_t; 1] stacks the state entering step t on its input and a row of ones, and the
  weights are stacked to match (`_stacked_weights`), so one GEMM per step gives every
  pre-activation, input projection and bias included;
* backward keeps the per-step gradients of the pre-activations, dZ, and forms every weight
  gradient with one GEMM over all steps (S^T dZ) and dL/dx with one more.

Arrays keep the network's dtype throughout (float32 stays float32). With the default
activations (sigmoid gates, tanh candidate) the gates use sigmoid(z) = (1 + tanh(z/2)) / 2 with
the gates' weights halved, so that one tanh call covers every gate of a step; like the engine's
activations, which the layers use for any other choice, it is stable for inputs of any
magnitude (no exp can overflow).

Example specs (model.input_shape is [steps, features]):

    {"type": "simple_rnn", "units": 32, "return_sequences": true}
    {"type": "lstm", "units": 64, "l2": 1e-4}
    {"type": "gru", "units": 64, "recurrent_activation": "sigmoid", "return_sequences": false}
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..activations import ACTIVATIONS, get_activation
from ..spec import Field
from .base import INITIALIZER_CHOICES, REGULARIZER_FIELDS, Layer, ShapeError, register, size_of

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
    """Shared plumbing: parameters, the stacked state S, the outputs, and the GEMMs of
    backward. A subclass stacks its weights (`_stacked_weights`), runs the steps (`_run`, and
    `_run_backward(dys, U)` with U the stacked weights' state columns transposed, so that
    dL/dh_{t-1} = U @ dL/dz_t) and puts the stacked weight gradient back (`_store_grads`)."""

    gates: ClassVar[int] = 1
    regularized = ("kernel", "recurrent_kernel")
    sequential = True
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
        self._dtype = np.dtype(dtype)
        return (steps, u) if self.return_sequences else (u,)

    def cost(self):
        steps, features = self.input_shape
        rows, state = self.gates * self.units, self.units + features + 1
        # the stacked state S of every step, and per step and gate row: the pre-activation, the
        # activation and their gradients, and a cell state's share (measured: about 5 values)
        return steps * rows * state, (steps + 1) * state + 5 * steps * rows + size_of(self.output_shape)

    def _bias_shape(self) -> tuple[int, ...]:
        return (self.gates * self.units,)

    # internal row r of a step's pre-activations holds public gate column _order[r]; the
    # forward's stacked weights are multiplied row by row by _scale, when a fast path sets it
    _order: slice | np.ndarray = slice(None)
    _scale: np.ndarray | None = None

    def _stacked_weights(self, scaled: bool) -> np.ndarray:
        """(rows, units + features [+ 1]): a step's pre-activations are this times S[t].
        `scaled` is the forward's variant, where a fast path may fold constants in."""
        p = self.params
        w = [p["recurrent_kernel"], p["kernel"]] + ([p["bias"][None]] if "bias" in p else [])
        rows = np.concatenate(w)[:, self._order].T
        return np.ascontiguousarray(rows * self._scale if scaled and self._scale is not None else rows)

    # -- forward ------------------------------------------------------------------------
    def forward(self, x, training):
        n, steps, features = x.shape
        u = self.units
        W = self._stacked_weights(scaled=True)
        # S[t] = [h_t; x_t; 1]: the state entering step t, its input and a row of ones (bias)
        S = np.empty((steps + 1, W.shape[1], n), self._dtype)
        S[0, :u] = 0
        S[:steps, u:u + features] = x.transpose(1, 2, 0)
        S[:, u + features:] = 1
        self._run(W, S, training)  # writes h_{t+1} into S[t + 1, :u]
        if training:
            self._S = S
        H = S[1:, :u]
        if self.return_sequences:
            return np.ascontiguousarray(H.transpose(2, 0, 1))
        return np.ascontiguousarray(H[-1].T)

    # -- backward -----------------------------------------------------------------------
    def backward(self, dy):
        dZ, W = self._weight_grads(dy)
        steps, n = self._S.shape[0] - 1, self._S.shape[2]
        u, features = self.units, self.params["kernel"].shape[0]
        return (W[:, u:u + features].T @ dZ).reshape(features, steps, n).transpose(2, 1, 0)

    def backward_params(self, dy):
        self._weight_grads(dy)

    def _weight_grads(self, dy):
        """BPTT: fills the weight gradients; returns dL/dz of every step, (rows, steps*n), and
        the (unscaled) stacked weights it used."""
        S, u = self._S, self.units
        steps, n = S.shape[0] - 1, S.shape[2]
        W = self._stacked_weights(scaled=False)
        # dL/dh_t from the outputs: (steps, units, n) for sequences, else only the last step's
        dys = dy.transpose(1, 2, 0) if self.return_sequences else dy.T
        dZ = self._run_backward(dys, W[:, :u].T)  # (steps, rows, n)
        dZ2 = dZ.transpose(1, 0, 2).reshape(dZ.shape[1], steps * n)
        S2 = S[:steps].transpose(1, 0, 2).reshape(-1, steps * n)
        self._store_grads(S2 @ dZ2.T)  # (units + features [+ 1], rows)
        return dZ2, W

    def _output_gradient(self, dys, t, steps, dh):
        """dL/dh_{t+1} from the layer's output into dh (the part from later steps is added by
        the caller): the step's slice of dy for sequences, dy itself at the last step."""
        if self.return_sequences:
            dh += dys[t]
        elif t == steps - 1:
            dh += dys

    def _store_grads(self, G: np.ndarray) -> None:
        """The stacked weight gradient G, (units + features [+ 1], rows), back into the public
        arrays, gate columns in their public order."""
        u, features, g = self.units, self.params["kernel"].shape[0], self.grads
        g["recurrent_kernel"][:, self._order] = G[:u]
        g["kernel"][:, self._order] = G[u:u + features]
        if "bias" in self.params:
            g["bias"][self._order] = G[u + features]


@register
class SimpleRNN(_Recurrent):
    """Elman RNN: h_t = activation(x_t @ kernel + h_{t-1} @ recurrent_kernel + bias)."""

    type_name = "simple_rnn"
    gates = 1
    fields = _COMMON_FIELDS

    def _run(self, W, S, training):
        u, steps = self.units, S.shape[0] - 1
        Z = np.empty((steps, u, S.shape[2]), self._dtype)  # pre-activations
        for t in range(steps):
            np.matmul(W, S[t], out=Z[t])
            S[t + 1, :u] = self.act.forward(Z[t])
        if training:
            self._Z = Z

    def _run_backward(self, dys, U):
        S, Z, u = self._S, self._Z, self.units
        steps = Z.shape[0]
        dZ = np.empty_like(Z)
        dh = np.zeros(Z.shape[1:], Z.dtype)
        for t in range(steps - 1, -1, -1):
            self._output_gradient(dys, t, steps, dh)
            dZ[t] = self.act.backward(Z[t], S[t + 1, :u], dh)
            if t:
                np.matmul(U, dZ[t], out=dh)
        return dZ


@register
class LSTM(_Recurrent):
    """Long short-term memory (Hochreiter & Schmidhuber, with a forget gate).

    Gate columns are ordered i, f, g, o (input, forget, candidate, output), as in Keras and
    PyTorch: i, f, o = recurrent_activation(...), g = activation(...),
    c_t = f * c_{t-1} + i * g, h_t = o * activation(c_t). The bias has shape (4*units,).
    `unit_forget_bias` (default true, as in Keras) sets the forget-gate bias to 1 at
    initialisation whatever bias_initializer says, so the cell remembers by default.

    Inside, a step's gates are rows o, i, f, g of a (4*units, n) array, so that the three
    sigmoid gates are adjacent."""

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
        if self._fast:
            self._scale = np.ones((4 * u, 1), dtype)
            self._scale[:3 * u] = 0.5
        return out

    def _run(self, W, S, training):
        u, fast, act, rec = self.units, self._fast, self.act, self.rec
        steps, n = S.shape[0] - 1, S.shape[2]
        dt = self._dtype
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
            self._A, self._C, self._TC = A, C, TC
            self._Z = None if fast else Z

    def _local_derivatives(self, t0, t1, K, OT) -> None:
        """Steps t0..t1-1's derivatives into K[:t1-t0] and OT[:t1-t0]: dL/dz_t = K * dL/dh_t in
        the o rows and K * dL/dc_t in the i, f, g rows; dL/dc_t gains OT * dL/dh_t through
        h_t = o * activation(c_t). None of it depends on dL/dh, so it runs on a block of steps
        at once: per step, the calls' fixed cost dominates (measured: 13% of the BPTT loop)."""
        A, c_prev, tc, u = self._A[t0:t1], self._C[t0:t1], self._TC[t0:t1], self.units
        k, ot = K[:t1 - t0], OT[:t1 - t0]
        o, i, g = A[:, :u], A[:, u:2 * u], A[:, 3 * u:]
        if self._fast:
            np.multiply(A, A, out=k)
            np.subtract(A[:, :3 * u], k[:, :3 * u], out=k[:, :3 * u])  # sigmoid' = a - a^2
            np.subtract(1, k[:, 3 * u:], out=k[:, 3 * u:])             # tanh' = 1 - a^2
            np.multiply(tc, tc, out=ot)
            np.subtract(1, ot, out=ot)                                 # tanh'(c_t)
            ot *= o
        else:
            z = self._Z[t0:t1]
            k[:, :3 * u] = self.rec.backward(z[:, :3 * u], A[:, :3 * u], 1)
            k[:, 3 * u:] = self.act.backward(z[:, 3 * u:], g, 1)
            ot[...] = self.act.backward(self._C[t0 + 1:t1 + 1], tc, o)
        k[:, :u] *= tc               # o: h_t = o * tanh(c_t)
        k[:, u:2 * u] *= g           # i: c_t = ... + i * g
        k[:, 2 * u:3 * u] *= c_prev  # f: c_t = f * c_{t-1} + ...
        k[:, 3 * u:] *= i            # g

    def _run_backward(self, dys, U):
        A, u = self._A, self.units
        steps, width, n = A.shape
        dZ = np.empty_like(A)
        # blocks of ~1 MB: few calls, and what a block's passes write is still in cache when
        # the steps read it
        block = min(steps, max(1, (1 << 20) // (width * n * A.itemsize)))
        K, OT = np.empty((block, width, n), A.dtype), np.empty((block, u, n), A.dtype)
        # the i, f and g rows as (3, units, n) blocks, so that one call multiplies all three
        K_ifg, dZ_ifg = K[:, u:].reshape(block, 3, u, n), dZ[:, u:].reshape(steps, 3, u, n)
        dh, dc = np.zeros((u, n), A.dtype), np.zeros((u, n), A.dtype)
        for t1 in range(steps, 0, -block):
            t0 = max(t1 - block, 0)
            self._local_derivatives(t0, t1, K, OT)
            for t in range(t1 - 1, t0 - 1, -1):
                if t < steps - 1:
                    np.matmul(U, dZ[t + 1], out=dh)
                self._output_gradient(dys, t, steps, dh)
                ot = OT[t - t0]
                ot *= dh
                dc += ot  # dL/dc_t
                np.multiply(dh, K[t - t0, :u], out=dZ[t, :u])
                np.multiply(dc, K_ifg[t - t0], out=dZ_ifg[t])
                dc *= A[t, 2 * u:3 * u]  # through c_t = f * c_{t-1} + ...
        return dZ


@register
class GRU(_Recurrent):
    """Gated recurrent unit, the variant of PyTorch and of Keras with reset_after=True (the
    reset gate is applied after the recurrent matrix product, which allows one recurrent GEMM
    per step), not the original of Cho et al. (2014) that resets h before the product.

    Gate columns are ordered r, z, n (reset, update, candidate) as in PyTorch:
        r = rec(x W_r + b_r + h U_r + c_r),  z = rec(x W_z + b_z + h U_z + c_z)
        n = activation(x W_n + b_n + r * (h U_n + c_n)),  h' = (1 - z) * n + z * h
    with rec = recurrent_activation (sigmoid). The bias has shape (2, 3*units): row 0 the input
    bias b, row 1 the recurrent bias c (PyTorch's b_ih and b_hh; Keras orders gates z, r, h).

    Inside, a step's pre-activations are four row blocks: r and z (input and recurrent parts
    summed), x W_n + b_n and h U_n + c_n (kept apart, since r multiplies only the second); the
    stacked weights hold zeros where a block takes no part of S."""

    type_name = "gru"
    gates = 3
    fields = {**_COMMON_FIELDS, **_RECURRENT_ACTIVATION}

    def __init__(self, config, name):
        super().__init__(config, name)
        self._fast = self.rec.name == "sigmoid" and self.act.name == "tanh"

    def _bias_shape(self):
        return (2, 3 * self.units)

    def _stacked_weights(self, scaled):
        p, u = self.params, self.units
        K, U = p["kernel"], p["recurrent_kernel"]
        f = K.shape[0]
        W = np.zeros((4 * u, u + f + ("bias" in p)), self._dtype)
        W[:2 * u, :u] = U[:, :2 * u].T            # r, z: h U + x W + b + c
        W[:2 * u, u:u + f] = K[:, :2 * u].T
        W[2 * u:3 * u, u:u + f] = K[:, 2 * u:].T  # x W_n + b_n
        W[3 * u:, :u] = U[:, 2 * u:].T            # h U_n + c_n
        if "bias" in p:
            b = p["bias"]
            W[:2 * u, -1] = b[0, :2 * u] + b[1, :2 * u]
            W[2 * u:3 * u, -1] = b[0, 2 * u:]
            W[3 * u:, -1] = b[1, 2 * u:]
        if scaled and self._fast:
            W[:2 * u] *= 0.5  # sigmoid(z) = (tanh(z/2) + 1)/2
        return W

    def _run(self, W, S, training):
        u, fast, act, rec = self.units, self._fast, self.act, self.rec
        steps, n = S.shape[0] - 1, S.shape[2]
        dt = self._dtype
        Z = np.empty((steps, 4 * u, n), dt)  # pre-activations: r, z (halved if fast), xn, hn
        A = np.empty((steps, 3 * u, n), dt)  # r, z, n
        NZ = np.empty((steps, u, n), dt)     # the candidate's pre-activation
        tmp = np.empty((u, n), dt)
        for t in range(steps):
            z, a, nz = Z[t], A[t], NZ[t]
            np.matmul(W, S[t], out=z)
            if fast:
                np.tanh(z[:2 * u], out=a[:2 * u])
                a[:2 * u] *= 0.5
                a[:2 * u] += 0.5
            else:
                a[:2 * u] = rec.forward(z[:2 * u])
            r, zg, cand = a[:u], a[u:2 * u], a[2 * u:]
            np.multiply(r, z[3 * u:], out=nz)
            nz += z[2 * u:3 * u]
            if fast:
                np.tanh(nz, out=cand)
            else:
                cand[...] = act.forward(nz)
            # h' = (1 - z) n + z h = n + z (h - n)
            np.subtract(S[t, :u], cand, out=tmp)
            tmp *= zg
            np.add(cand, tmp, out=S[t + 1, :u])
        if training:
            self._Z, self._A, self._NZ = Z, A, NZ

    def _run_backward(self, dys, U):
        S, Z, A, NZ, u = self._S, self._Z, self._A, self._NZ, self.units
        steps, _, n = Z.shape
        dZ = np.empty_like(Z)
        dh = np.zeros((u, n), Z.dtype)
        direct, dn = np.empty((u, n), Z.dtype), np.empty((u, n), Z.dtype)
        sig = np.empty((2 * u, n), Z.dtype)
        for t in range(steps - 1, -1, -1):
            self._output_gradient(dys, t, steps, dh)
            a, dz = A[t], dZ[t]
            r, zg, cand = a[:u], a[u:2 * u], a[2 * u:]
            d_rz, d_r, d_z, d_xn, d_hn = dz[:2 * u], dz[:u], dz[u:2 * u], dz[2 * u:3 * u], dz[3 * u:]
            # h' = n + z (h - n)
            np.subtract(S[t, :u], cand, out=d_z)
            d_z *= dh                         # dL/dz
            np.multiply(dh, zg, out=direct)   # dL/dh_{t-1} straight through z h
            np.subtract(dh, direct, out=dn)   # dL/dn = dh (1 - z)
            if self._fast:
                np.multiply(cand, cand, out=d_xn)
                np.subtract(1, d_xn, out=d_xn)  # tanh' = 1 - n^2
                d_xn *= dn                      # dL/d(x W_n + b_n)
            else:
                d_xn[...] = self.act.backward(NZ[t], cand, dn)
            np.multiply(d_xn, r, out=d_hn)            # dL/d(h U_n + c_n), which r multiplies
            np.multiply(d_xn, Z[t, 3 * u:], out=d_r)  # dL/dr
            if self._fast:
                np.multiply(a[:2 * u], a[:2 * u], out=sig)
                np.subtract(a[:2 * u], sig, out=sig)  # sigmoid' = a - a^2
                d_rz *= sig
            else:
                d_rz[...] = self.rec.backward(Z[t, :2 * u], a[:2 * u], d_rz)
            if t:
                np.matmul(U, dz, out=dh)
                dh += direct
        return dZ

    def _store_grads(self, G):
        u, f, g = self.units, self.params["kernel"].shape[0], self.grads
        g["recurrent_kernel"][:, :2 * u] = G[:u, :2 * u]
        g["recurrent_kernel"][:, 2 * u:] = G[:u, 3 * u:]
        g["kernel"][:, :2 * u] = G[u:u + f, :2 * u]
        g["kernel"][:, 2 * u:] = G[u:u + f, 2 * u:3 * u]
        if "bias" in self.params:
            b = g["bias"]
            b[0, :2 * u] = b[1, :2 * u] = G[u + f, :2 * u]
            b[0, 2 * u:] = G[u + f, 2 * u:3 * u]
            b[1, 2 * u:] = G[u + f, 3 * u:]
