"""LSTM and GRU layers (the paper's speech and language models were LSTMs), trained by backpropagation through time.

The input projection of all timesteps is one GEMM (``x_t @ W_x`` for every t at once); the recurrent
projection ``h_{t-1} @ W_h`` is one GEMM per timestep with the weight quantized once per forward
pass.  Both follow the precision policy (``input`` and ``hidden`` GEMM layers).  Gate order: input,
forget, cell, output; the forget bias starts at 1.

Under q4 the hidden states of one forward pass share one INT4 scale: its clip is max |h| of the previous
training step's pass (1.0 at first: |h| < 1 always), so the weight gradient ``sum_t h_{t-1}^T dz_t`` is
one GEMM over all timesteps; the backward pass uses one GradScale scale for all timesteps and updates
it once from their max |dz| (a per-step, per-layer scale as in the paper, not a per-timestep one).
"""
from __future__ import annotations

import math

import numpy as np

from .core import Module, Parameter
from .layers import _check_positive_int
from .qgemm import QuantGemm

__all__ = ["LSTM", "GRU"]


def _sigmoid(z):
    return 0.5 * (np.tanh(0.5 * z) + 1.0)


class _Projection(Module):
    """A bias-free weight and its GEMM engine (a GEMM layer of the policy)."""

    def __init__(self, w, signed_input):
        self.weight = Parameter(w)
        self.gemm = QuantGemm()
        if signed_input:
            self.gemm.unsigned = False


class _Recurrent(Module):
    """What LSTM and GRU share: the input and hidden GEMM layers of ``gates`` gates, the q4 hidden-state clip
    (a buffer, saved with checkpoints) and the first half of a forward pass."""

    def __init__(self, input_size, hidden_size, gates, rng):
        F = self.input_size = _check_positive_int(input_size, "input_size")
        H = self.hidden_size = _check_positive_int(hidden_size, "hidden_size")
        rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
        bound = 1.0 / math.sqrt(H)
        self.input = _Projection(rng.uniform(-bound, bound, (F, gates * H)), signed_input=False)
        self.input.gemm.unsigned = None     # decided by the data (e.g. non-negative features)
        self.hidden = _Projection(rng.uniform(-bound, bound, (H, gates * H)), signed_input=True)
        self.hidden_clip = 1.0

    def buffers(self):
        return {"hidden_clip": np.array(self.hidden_clip)}

    def load_buffers(self, b):
        self.hidden_clip = float(b["hidden_clip"])

    def _begin(self, x, bias):
        """Check x, project every timestep at once (+ bias) and prepare the recurrent weight:
        returns (N, T, H, projected input (N, T, gates*H), prepared hidden weight)."""
        if x.ndim != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"{type(self).__name__} expects (N, T, {self.input_size}), got shape {x.shape}")
        N, T, F = x.shape
        gx, gh = self.input.gemm, self.hidden.gemm
        z, self._ctx_x = gx.forward(np.ascontiguousarray(x).reshape(N * T, F),
                                    gx.prepare_weight(self.input.weight.data))
        z = z.reshape(N, T, -1) + bias
        wh = gh.prepare_weight(self.hidden.weight.data)
        gh.fixed_clip = self.hidden_clip
        return N, T, self.hidden_size, z, wh

    def _end(self, x, hs):
        """Remember the input shape; in training, the clip of the next pass is this pass's max |h|."""
        self._shape = x.shape
        if self.training:
            m = float(np.max(np.abs(hs))) if hs.size else 0.0
            if 0.0 < m <= 1.0:
                self.hidden_clip = m
        return hs


class LSTM(_Recurrent):
    """(N, T, F) -> (N, T, H): the hidden state at every timestep (zero initial state)."""

    def __init__(self, input_size, hidden_size, rng=0):
        super().__init__(input_size, hidden_size, 4, rng)
        H = self.hidden_size
        b = np.zeros(4 * H)
        b[H:2 * H] = 1.0
        self.bias = Parameter(b, decay=False)

    def forward(self, x):
        N, T, H, zx, wh = self._begin(x, self.bias.data)
        gh = self.hidden.gemm
        h = np.zeros((N, H), x.dtype)
        c = np.zeros((N, H), x.dtype)
        hs = np.empty((N, T, H), x.dtype)
        self._steps = []
        for t in range(T):
            zh, ctx = gh.forward(h, wh)
            z = zx[:, t] + zh
            i, f, o = _sigmoid(z[:, :H]), _sigmoid(z[:, H:2 * H]), _sigmoid(z[:, 3 * H:])
            g = np.tanh(z[:, 2 * H:3 * H])
            c_prev = c
            c = f * c + i * g
            tc = np.tanh(c)
            h = o * tc
            hs[:, t] = h
            self._steps.append((ctx, i, f, g, o, c_prev, tc))
        return self._end(x, hs)

    def backward(self, grad_y):
        N, T, F = self._shape
        H = self.hidden_size
        dz_all = np.empty((N, T, 4 * H), grad_y.dtype)
        dh = np.zeros((N, H), grad_y.dtype)
        dc = np.zeros((N, H), grad_y.dtype)
        gh = self.hidden.gemm
        seq = gh.begin_sequence()
        for t in reversed(range(T)):
            ctx, i, f, g, o, c_prev, tc = self._steps[t]
            dh = dh + grad_y[:, t]
            do = dh * tc
            dc = dc + dh * o * (1.0 - tc * tc)
            di, df, dg = dc * g, dc * c_prev, dc * i
            dc = dc * f
            dz = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)], axis=1)
            dz_all[:, t] = dz
            dh, _ = gh.backward(np.ascontiguousarray(dz), ctx, seq)
        dwh = gh.finish_sequence(seq)
        if dwh is not None:
            self.hidden.weight.grad += dwh
        self.bias.grad += dz_all.sum(axis=(0, 1))
        dx, dwx = self.input.gemm.backward(dz_all.reshape(N * T, 4 * H), self._ctx_x)
        self.input.weight.grad += dwx
        self._steps = self._ctx_x = None
        return dx.reshape(N, T, F)


class GRU(_Recurrent):
    """(N, T, F) -> (N, T, H) gated recurrent unit (zero initial state), gates ordered reset, update, new:

    ``r = s(x Wr + h Ur + b_r)``, ``z = s(x Wz + h Uz + b_z)``, ``n = tanh(x Wn + b_n + r * (h Un + c_n))``,
    ``h' = (1 - z) * n + z * h``.  The GEMM layers and the q4 sequence handling are as in :class:`LSTM`.
    """

    def __init__(self, input_size, hidden_size, rng=0):
        super().__init__(input_size, hidden_size, 3, rng)
        H = self.hidden_size
        self.bias_input = Parameter(np.zeros(3 * H), decay=False)
        self.bias_hidden = Parameter(np.zeros(3 * H), decay=False)

    def forward(self, x):
        N, T, H, ax, wh = self._begin(x, self.bias_input.data)
        gh = self.hidden.gemm
        h = np.zeros((N, H), x.dtype)
        hs = np.empty((N, T, H), x.dtype)
        self._steps = []
        for t in range(T):
            ah, ctx = gh.forward(h, wh)
            ah = ah + self.bias_hidden.data
            r = _sigmoid(ax[:, t, :H] + ah[:, :H])
            z = _sigmoid(ax[:, t, H:2 * H] + ah[:, H:2 * H])
            hn = ah[:, 2 * H:]
            n = np.tanh(ax[:, t, 2 * H:] + r * hn)
            h_prev = h
            h = (1 - z) * n + z * h_prev
            hs[:, t] = h
            self._steps.append((ctx, r, z, n, hn, h_prev))
        return self._end(x, hs)

    def backward(self, grad_y):
        N, T, F = self._shape
        H = self.hidden_size
        dax = np.empty((N, T, 3 * H), grad_y.dtype)
        dh = np.zeros((N, H), grad_y.dtype)
        gh = self.hidden.gemm
        seq = gh.begin_sequence()
        for t in reversed(range(T)):
            ctx, r, z, n, hn, h_prev = self._steps[t]
            dh = dh + grad_y[:, t]
            dn = dh * (1 - z) * (1 - n * n)
            dz = dh * (h_prev - n) * z * (1 - z)
            dr = dn * hn * r * (1 - r)
            dax[:, t] = np.concatenate([dr, dz, dn], axis=1)
            dah = np.concatenate([dr, dz, dn * r], axis=1)
            self.bias_hidden.grad += dah.sum(axis=0)
            dh_h, _ = gh.backward(np.ascontiguousarray(dah), ctx, seq)
            dh = dh * z + dh_h
        dwh = gh.finish_sequence(seq)
        if dwh is not None:
            self.hidden.weight.grad += dwh
        self.bias_input.grad += dax.sum(axis=(0, 1))
        dx, dwx = self.input.gemm.backward(dax.reshape(N * T, 3 * H), self._ctx_x)
        self.input.weight.grad += dwx
        self._steps = self._ctx_x = None
        return dx.reshape(N, T, F)
