"""Layers with forward and backward in numpy (float32 activations, FP32 master weights).

GEMM layers (Linear, Conv2d, Conv1d) run their matrix product through a :class:`~q4core.nn.qgemm.QuantGemm`
(precision set by ``Module.set_policy``); bias, normalisation, pooling and the rest stay in FP32.
Convolutions use im2col: the patches form an (N*positions, C*k) matrix times the (C*k, out) weight.
The input is rounded or quantized once as an image and im2col copies the rounded values or 4-bit levels
(equal to quantizing the patch matrix, k*k times less work); PACT's gradient is applied to the image.
im2col, col2im and the channel-layout copies run compiled (:mod:`q4core.nn.layout`, bit for bit its numpy
reference) unless the recipe simulates.
"""
from __future__ import annotations

import math

import numpy as np

from .._validation import check_int
from .core import Module, Parameter
from .layout import channels_first, channels_last, col2im2d, im2col2d
from .qgemm import QuantGemm

__all__ = ["Linear", "Conv2d", "Conv1d", "ReLU", "MaxPool2d", "AvgPool2d", "MaxPool1d", "GlobalAvgPool",
           "Flatten", "BatchNorm", "Dropout", "Embedding", "LayerNorm", "im2col2d", "col2im2d"]


def _rng(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be an int seed or a numpy.random.Generator, got {type(rng).__name__}")


def _check_positive_int(value, name):
    return check_int(value, name, min_value=1)


def _as_f32(x, name, ndim):
    """float32 (float64 is kept, so gradient checks can run the layers in float64)."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        if x.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be a real array, got dtype {x.dtype}")
        x = x.astype(np.float32)
    if x.ndim not in ndim:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim))} dimensions, got shape {x.shape}")
    return x


class Linear(Module):
    """``y = x @ W + b`` over the last axis of ``x``; W stored (in, out), He-uniform initialised."""

    def __init__(self, in_features, out_features, bias=True, rng=0):
        in_features = _check_positive_int(in_features, "in_features")
        out_features = _check_positive_int(out_features, "out_features")
        bound = math.sqrt(6.0 / in_features)
        self.weight = Parameter(_rng(rng).uniform(-bound, bound, (in_features, out_features)))
        self.bias = Parameter(np.zeros(out_features)) if bias else None
        self.gemm = QuantGemm()
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x):
        x = _as_f32(x, "x", range(1, 8))
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Linear expects {self.in_features} input features, got shape {x.shape}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        wop = self.gemm.prepare_weight(self.weight.data)
        y, self._ctx = self.gemm.forward(x2, wop)
        if self.bias is not None:
            y += self.bias.data
        self._lead = lead
        return y.reshape(*lead, self.out_features)

    def backward(self, grad_y):
        g2 = np.ascontiguousarray(grad_y).reshape(-1, self.out_features)
        gx, gw = self.gemm.backward(g2, self._ctx, input_grad=self.input_grad)
        self.weight.grad += gw
        if self.bias is not None:
            self.bias.grad += g2.sum(axis=0)
        self._ctx = None
        return None if gx is None else gx.reshape(*self._lead, self.in_features)


class Conv2d(Module):
    """2-D convolution (N, C, H, W) -> (N, out, Ho, Wo) via im2col + GEMM; weight (out, C, kh, kw)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, rng=0):
        self.in_channels = _check_positive_int(in_channels, "in_channels")
        self.out_channels = _check_positive_int(out_channels, "out_channels")
        k = kernel_size if isinstance(kernel_size, tuple) else (kernel_size, kernel_size)
        self.kh, self.kw = (_check_positive_int(v, "kernel_size") for v in k)
        self.stride = _check_positive_int(stride, "stride")
        if not isinstance(padding, (int, np.integer)) or isinstance(padding, bool) or padding < 0:
            raise ValueError(f"padding must be a non-negative int, got {padding!r}")
        self.padding = int(padding)
        fan_in = self.in_channels * self.kh * self.kw
        bound = math.sqrt(6.0 / fan_in)
        shape = (self.out_channels, self.in_channels, self.kh, self.kw)
        self.weight = Parameter(_rng(rng).uniform(-bound, bound, shape))
        self.bias = Parameter(np.zeros(self.out_channels)) if bias else None
        self.gemm = QuantGemm()

    def forward(self, x):
        x = _as_f32(x, "x", (4,))
        if x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d expects {self.in_channels} channels, got shape {x.shape}")
        if x.shape[2] + 2 * self.padding < self.kh or x.shape[3] + 2 * self.padding < self.kw:
            raise ValueError(f"input {x.shape[2:]} is smaller than the kernel {(self.kh, self.kw)}")
        # round/quantize the image once, then im2col the operand (see QuantGemm.prepare_input)
        self._inp = self.gemm.prepare_input(x)
        fast, threads = self.gemm.fused, self.gemm.layout_threads
        cols, Ho, Wo = im2col2d(self._inp.data, self.kh, self.kw, self.stride, self.padding, fast, threads)
        w2 = self.weight.data.reshape(self.out_channels, -1).T
        y, self._ctx = self.gemm.forward(None, self.gemm.prepare_weight(w2), inp=self._inp, data=cols)
        self._shape, self._out = x.shape, (Ho, Wo)
        # channels first, the bias added on the way (one float32 addition per element, as y + bias)
        return channels_first(y, x.shape[0], Ho, Wo, None if self.bias is None else self.bias.data, fast, threads)

    def backward(self, grad_y):
        Ho, Wo = self._out
        fast, threads = self.gemm.fused, self.gemm.layout_threads
        g2 = channels_last(np.asarray(grad_y), fast, threads)
        gcols, gw = self.gemm.backward(g2, self._ctx, pact=False, input_grad=self.input_grad)
        self.weight.grad += gw.T.reshape(self.weight.data.shape)
        if self.bias is not None:
            self.bias.grad += g2.sum(axis=0)
        gx = None
        if gcols is not None:
            gx = col2im2d(gcols, self._shape, self.kh, self.kw, self.stride, self.padding, Ho, Wo, fast, threads)
            gx = self.gemm.pact_backward(gx, self._inp)
        self._ctx = self._inp = None
        return gx


class Conv1d(Module):
    """1-D convolution over time: (N, C, T) -> (N, out, To), weight (out, C, k); im2col + GEMM."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, rng=0):
        self.conv = Conv2d(in_channels, out_channels, (1, kernel_size), stride, 0, bias, rng)
        self.padding = int(padding)
        if self.padding < 0:
            raise ValueError(f"padding must be a non-negative int, got {padding!r}")

    def forward(self, x):
        x = _as_f32(x, "x", (3,))
        if self.padding:
            x = np.pad(x, ((0, 0), (0, 0), (self.padding, self.padding)))
        return self.conv.forward(x[:, :, None, :])[:, :, 0, :]

    def backward(self, grad_y):
        g = self.conv.backward(np.asarray(grad_y)[:, :, None, :])[:, :, 0, :]
        if self.padding:
            g = g[:, :, self.padding:-self.padding]
        return np.ascontiguousarray(g)


class ReLU(Module):
    """``max(x, 0)``; the gradient passes where ``x > 0``.  (Arithmetic masks, not ``np.where``, whose
    data-dependent branches make it several times slower on activations.)"""

    def forward(self, x):
        self._mask = (x > 0).astype(x.dtype)
        return x * self._mask

    def backward(self, grad_y):
        return grad_y * self._mask


class _Pool2d(Module):
    def __init__(self, kernel_size=2):
        self.k = _check_positive_int(kernel_size, "kernel_size")

    def _check_input(self, x):
        """x as float32 (N, C, H, W), remembered for backward; returns x and the output size."""
        x = _as_f32(x, "x", (4,))
        k = self.k
        Ho, Wo = x.shape[2] // k, x.shape[3] // k
        if Ho == 0 or Wo == 0:
            raise ValueError(f"pooling window {k} is larger than the input {x.shape[2:]}")
        self._shape = x.shape
        return x, Ho, Wo

    def _windows(self, x):
        x, Ho, Wo = self._check_input(x)
        N, C = x.shape[:2]
        k = self.k
        # non-overlapping windows; rows/columns that do not fill a window are dropped (floor)
        return x[:, :, :Ho * k, :Wo * k].reshape(N, C, Ho, k, Wo, k).transpose(0, 1, 2, 4, 3, 5).reshape(
            N, C, Ho, Wo, k * k)

    def _scatter(self, gwin):
        N, C, H, W = self._shape
        k = self.k
        Ho, Wo = H // k, W // k
        g = np.zeros(self._shape, gwin.dtype)
        g[:, :, :Ho * k, :Wo * k] = gwin.reshape(N, C, Ho, Wo, k, k).transpose(0, 1, 2, 4, 3, 5).reshape(
            N, C, Ho * k, Wo * k)
        return g


class MaxPool2d(_Pool2d):
    """Non-overlapping k x k max pooling; the gradient goes to the first maximum of each window
    (window positions in row-major order)."""

    def _positions(self, x):
        """The k*k strided views x[:, :, i::k, j::k] cut to whole windows, row-major."""
        x, Ho, Wo = self._check_input(x)
        k = self.k
        return [x[:, :, i:Ho * k:k, j:Wo * k:k] for i in range(k) for j in range(k)]

    def forward(self, x):
        views = self._positions(x)
        best = views[0].copy()
        arg = np.zeros(best.shape, np.int8 if len(views) < 128 else np.int32)
        for p, v in enumerate(views[1:], start=1):
            better = (v > best).astype(arg.dtype)     # strict: the first maximum keeps the gradient
            np.maximum(best, v, out=best)
            arg += better * (arg.dtype.type(p) - arg)  # arithmetic select: boolean setitem is 30x slower
        self._arg = arg
        return best

    def backward(self, grad_y):
        grad_y = np.asarray(grad_y)
        N, C, H, W = self._shape
        k = self.k
        Ho, Wo = H // k, W // k
        g = np.zeros(self._shape, grad_y.dtype)
        for p in range(k * k):
            i, j = divmod(p, k)
            g[:, :, i:Ho * k:k, j:Wo * k:k] = grad_y * (self._arg == p)
        return g


class AvgPool2d(_Pool2d):
    """Non-overlapping k x k average pooling."""

    def forward(self, x):
        win = self._windows(x)
        return win.mean(axis=-1, dtype=win.dtype)

    def backward(self, grad_y):
        g = np.asarray(grad_y)[..., None] / (self.k * self.k)
        return self._scatter(np.broadcast_to(g, g.shape[:-1] + (self.k * self.k,)))


class MaxPool1d(Module):
    """Non-overlapping max pooling over the last axis of (N, C, T)."""

    def __init__(self, kernel_size=2):
        self.pool = MaxPool2d(kernel_size)

    def forward(self, x):
        self._T = x.shape[2]
        k = self.pool.k
        x4 = np.repeat(_as_f32(x, "x", (3,))[:, :, None, :], k, axis=2)   # k identical rows: 1-D pool via 2-D
        return self.pool.forward(x4)[:, :, 0, :]

    def backward(self, grad_y):
        g = self.pool.backward(np.asarray(grad_y)[:, :, None, :])
        return g.sum(axis=2)


class GlobalAvgPool(Module):
    """Mean over every axis after the channel axis: (N, C, ...) -> (N, C)."""

    def forward(self, x):
        self._shape = x.shape
        return x.reshape(x.shape[0], x.shape[1], -1).mean(axis=2, dtype=x.dtype)

    def backward(self, grad_y):
        n = int(np.prod(self._shape[2:]))
        g = np.asarray(grad_y)[:, :, None] / n
        return np.broadcast_to(g, (self._shape[0], self._shape[1], n)).reshape(self._shape).copy()


class Flatten(Module):
    def forward(self, x):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_y):
        return grad_y.reshape(self._shape)


class BatchNorm(Module):
    """Batch normalisation over axis 1 (features of (N, C) or channels of (N, C, ...)), kept in FP32.

    Training uses the batch statistics (biased variance) and updates running averages with
    ``momentum``; evaluation uses the running averages."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        self.num_features = _check_positive_int(num_features, "num_features")
        self.gamma = Parameter(np.ones(num_features), decay=False)
        self.beta = Parameter(np.zeros(num_features), decay=False)
        self.running_mean = np.zeros(num_features, np.float32)
        self.running_var = np.ones(num_features, np.float32)
        self.eps, self.momentum = float(eps), float(momentum)

    def _axes(self, x):
        if x.ndim < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm expects (N, {self.num_features}, ...), got shape {x.shape}")
        return (0,) + tuple(range(2, x.ndim)), (1, -1) + (1,) * (x.ndim - 2)

    def forward(self, x):
        axes, bshape = self._axes(x)
        if self.training:
            mean = x.mean(axis=axes, dtype=np.float64)
            var = x.var(axis=axes, dtype=np.float64)
            n = x.size // self.num_features
            m = self.momentum
            self.running_mean = ((1 - m) * self.running_mean + m * mean).astype(np.float32)
            self.running_var = ((1 - m) * self.running_var + m * var * n / max(n - 1, 1)).astype(np.float32)
        else:
            mean, var = self.running_mean, self.running_var
        inv = (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)
        xhat = (x - mean.astype(x.dtype).reshape(bshape)) * inv.reshape(bshape)
        self._xhat, self._inv, self._axes_shape = xhat, inv, (axes, bshape)
        return xhat * self.gamma.data.reshape(bshape) + self.beta.data.reshape(bshape)

    def backward(self, grad_y):
        axes, bshape = self._axes_shape
        xhat, inv = self._xhat, self._inv
        self.gamma.grad += (grad_y * xhat).sum(axis=axes)
        self.beta.grad += grad_y.sum(axis=axes)
        gxhat = grad_y * self.gamma.data.reshape(bshape)
        if not self.training:
            return gxhat * inv.reshape(bshape)
        mean_g = gxhat.mean(axis=axes, keepdims=True)
        mean_gx = (gxhat * xhat).mean(axis=axes, keepdims=True)
        return ((gxhat - mean_g - xhat * mean_gx) * inv.reshape(bshape)).astype(grad_y.dtype)

    def buffers(self):
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def load_buffers(self, b):
        self.running_mean = np.asarray(b["running_mean"], np.float32).copy()
        self.running_var = np.asarray(b["running_var"], np.float32).copy()


class Dropout(Module):
    """Inverted dropout with rate ``p``; its own seeded stream makes runs repeatable."""

    def __init__(self, p=0.5, rng=0):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout rate p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self._rng = _rng(rng)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        keep = self._rng.random(x.shape) >= self.p
        self._mask = keep.astype(x.dtype) / (1.0 - self.p)
        return x * self._mask

    def backward(self, grad_y):
        return grad_y if self._mask is None else grad_y * self._mask


class Embedding(Module):
    """Integer ids (any shape) -> vectors (shape + (dim,)); a table lookup, kept in FP32.  It counts as a
    layer of the precision policy (the first one of a language model), though it has no GEMM."""

    counts_as_layer = True

    def __init__(self, num_embeddings, dim, rng=0):
        self.num_embeddings = _check_positive_int(num_embeddings, "num_embeddings")
        self.dim = _check_positive_int(dim, "dim")
        self.weight = Parameter(_rng(rng).normal(0.0, 1.0 / math.sqrt(dim), (num_embeddings, dim)))

    def forward(self, ids):
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"Embedding ids must be integers, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_embeddings):
            raise ValueError(f"Embedding ids must lie in [0, {self.num_embeddings}), found "
                             f"[{ids.min()}, {ids.max()}]")
        self._ids = ids
        return self.weight.data[ids]

    def backward(self, grad_y):
        np.add.at(self.weight.grad, self._ids.reshape(-1), np.asarray(grad_y).reshape(-1, self.dim))
        return None


class LayerNorm(Module):
    """Normalisation over the last axis with learned gain and bias, in FP32."""

    def __init__(self, dim, eps=1e-5):
        self.dim = _check_positive_int(dim, "dim")
        self.gamma = Parameter(np.ones(dim), decay=False)
        self.beta = Parameter(np.zeros(dim), decay=False)
        self.eps = float(eps)

    def forward(self, x):
        if x.shape[-1] != self.dim:
            raise ValueError(f"LayerNorm expects last axis {self.dim}, got shape {x.shape}")
        mean = x.mean(axis=-1, keepdims=True, dtype=np.float64)
        var = x.var(axis=-1, keepdims=True, dtype=np.float64)
        self._inv = (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)
        self._xhat = ((x - mean) * self._inv).astype(x.dtype)
        return self._xhat * self.gamma.data + self.beta.data

    def backward(self, grad_y):
        xhat = self._xhat
        axes = tuple(range(grad_y.ndim - 1))
        self.gamma.grad += (grad_y * xhat).sum(axis=axes)
        self.beta.grad += grad_y.sum(axis=axes)
        g = grad_y * self.gamma.data
        return ((g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
                * self._inv).astype(grad_y.dtype)
