"""Causal multi-head self-attention (enough for a 1-2 layer character Transformer).

The two projections (``qkv`` and ``proj``) are Linear layers, so they follow the precision policy;
the attention products ``Q K^T`` and ``P V`` multiply two activations and stay in FP32 (the paper's
recipe quantizes weight GEMMs; activation-activation products are kept high here).
"""
from __future__ import annotations

import math

import numpy as np

from .core import Module
from .layers import Linear, _check_positive_int

__all__ = ["CausalSelfAttention"]


class CausalSelfAttention(Module):
    """(N, T, D) -> (N, T, D); position t attends to positions <= t."""

    def __init__(self, dim, heads=1, rng=0):
        self.dim = _check_positive_int(dim, "dim")
        self.heads = _check_positive_int(heads, "heads")
        if dim % heads:
            raise ValueError(f"dim {dim} must be a multiple of heads {heads}")
        rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
        self.qkv = Linear(dim, 3 * dim, rng=rng)
        self.proj = Linear(dim, dim, rng=rng)
        self.proj.weight.data *= np.float32(1.0 / math.sqrt(2.0))

    def _split(self, a, N, T):
        return a.reshape(N, T, self.heads, self.dim // self.heads).transpose(0, 2, 1, 3)

    def forward(self, x):
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"attention expects (N, T, {self.dim}), got shape {x.shape}")
        N, T, D = x.shape
        qkv = self.qkv.forward(x)
        q, k, v = (self._split(qkv[..., i * D:(i + 1) * D], N, T) for i in range(3))
        scale = 1.0 / math.sqrt(D // self.heads)
        s = (q @ k.transpose(0, 1, 3, 2)) * scale
        causal = np.triu(np.ones((T, T), bool), 1)
        s = np.where(causal, -np.inf, s)
        s = s - s.max(axis=-1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=-1, keepdims=True)
        out = (p @ v).transpose(0, 2, 1, 3).reshape(N, T, D)
        # multiply-accumulates of the two FP32 activation products Q K^T and P V (read by q4core.nn.macs)
        self.float_macs = 2 * N * T * T * D
        self._cache = (q, k, v, p, scale, N, T)
        return self.proj.forward(out)

    def backward(self, grad_y):
        q, k, v, p, scale, N, T = self._cache
        go = self._split(self.proj.backward(grad_y), N, T)
        gp = go @ v.transpose(0, 1, 3, 2)
        gv = p.transpose(0, 1, 3, 2) @ go
        gs = p * (gp - (gp * p).sum(axis=-1, keepdims=True)) * scale
        gq = gs @ k
        gk = gs.transpose(0, 1, 3, 2) @ q
        merge = lambda a: a.transpose(0, 2, 1, 3).reshape(N, T, self.dim)   # noqa: E731
        gqkv = np.concatenate([merge(gq), merge(gk), merge(gv)], axis=-1)
        self._cache = None
        return self.qkv.backward(gqkv)
