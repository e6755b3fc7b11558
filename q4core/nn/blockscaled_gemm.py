"""A layer's three GEMMs under a block-scaled FP4 recipe (MXFP4, NVFP4; 2025's FP4 training recipes).

:class:`~q4core.nn.qgemm.QuantGemm` hands a layer to :class:`BlockScaledGemm` when its recipe is block-scaled
(``recipe.block_scaled``).  A block-scaled operand is blocked along the reduction axis of the GEMM it enters,
so each tensor is quantized once per GEMM:

=============  =======================  ==========================================================
product        reduction axis           operands
=============  =======================  ==========================================================
forward        K (features)             ``x`` (M, K) along axis 1; ``W`` (K, N) along axis 0
grad-input     N (outputs)              ``dY`` (M, N) along axis 1; ``W^T`` (N, K) along axis 0
grad-weight    M (batch)                ``x^T`` (K, M) along axis 1; ``dY`` (M, N) along axis 0
=============  =======================  ==========================================================

With ``weight_blocks="1d"`` the weight is quantized twice (along K for the forward, along N for grad-input);
with ``"2d"`` one quantization in block x block tiles serves both (the tiles of ``W^T`` are the transposed tiles
of ``W``).  With ``hadamard`` both inputs of the grad-weight GEMM are multiplied along the batch axis by one
block-diagonal random Hadamard matrix ``R`` (16 x 16 blocks ``H16 diag(signs) / 4``, zero rows padding the batch
to a multiple of 16): ``R^T R = I``, so ``(R x)^T (R dY) = x^T dY`` before quantization, and quantizing the
rotated operands spreads a block's outlier over its block (Tseng et al. 2025; NVIDIA 2025).  The signs come
from ``(recipe seed, layer index, number of weight-gradient GEMMs so far)`` - one per training step -:
deterministic.  Stochastic rounding draws from the layer's stream ``(recipe seed, layer index)``.  Neither
counter is saved in a checkpoint, so a resumed run rounds and rotates with other draws than an uninterrupted one.

Operands are encoded by :func:`q4core.blockscaled_encode.encode_rows` (bit for bit ``fmt.encode``; compiled
loops when built).

Every product is :func:`q4core.bsgemm.blockscaled_matmul` of two encoded operands (its exact definition:
integer block products, float64 accumulation in K-block order), rounded to float32 - or, with
``recipe.simulate``, :func:`~q4core.bsgemm.blockscaled_matmul_reference`, which gives the same bits.
``blockscaled_forward="fp16"``/``"fp32"`` runs the forward GEMM in float32 on fp16-rounded / plain operands.
NaN or Inf reaching a layer: the forward returns NaN (the trainer reports the divergence), the backward raises
``FloatingPointError`` (the trainer skips the step and lowers the loss scale), as the INT4 path does.
"""
from __future__ import annotations

import functools
import inspect

import numpy as np

from .. import bsgemm
from ..blockscaled import BlockScaledTensor
from ..blockscaled_encode import encode_rows
from ..recipe import operands
from .half import round_to_float16

__all__ = ["BlockScaledGemm", "BlockWeight", "hadamard16", "random_hadamard", "rotate_batch", "transposed"]

_HADAMARD_BLOCK = 16


def hadamard16():
    """The 16 x 16 Sylvester Hadamard matrix (entries +-1), float64."""
    h = np.ones((1, 1))
    while h.shape[0] < _HADAMARD_BLOCK:
        h = np.block([[h, h], [h, -h]])
    return h


_H16 = hadamard16()


def random_hadamard(rng):
    """``H16 diag(s) / 4`` with random signs ``s`` from ``rng`` (a numpy Generator): orthogonal, ``R^T R = I``."""
    signs = rng.integers(0, 2, _HADAMARD_BLOCK) * 2.0 - 1.0
    return _H16 * signs / 4.0


def rotate_batch(x, r):
    """``x`` (M, C) multiplied along axis 0 by the block-diagonal matrix of 16 x 16 blocks ``r``, float64; M is
    zero-padded to a multiple of 16 (the padded rows of two rotated operands contribute nothing to ``x^T y``)."""
    m = x.shape[0]
    pad = (-m) % _HADAMARD_BLOCK
    xp = np.zeros((m + pad, x.shape[1])) if pad else np.asarray(x, np.float64)
    if pad:
        xp[:m] = x
    blocks = xp.reshape(-1, _HADAMARD_BLOCK, x.shape[1])
    return np.matmul(r, blocks).reshape(m + pad, x.shape[1])


def transposed(t):
    """The :class:`BlockScaledTensor` of ``A^T`` for ``t`` holding a 2-D ``A``: 1-D blocks along axis 1 become
    1-D blocks along axis 0 (the scale array is the same: one row per row of ``A``); 2-D tiles transpose."""
    if tuple(t.axis) == (1,):
        return BlockScaledTensor(t.codes.T, t.scale_codes, t.tensor_scale, (0,), t.block_shape, t.fmt)
    if tuple(t.axis) == (0, 1):
        return BlockScaledTensor(t.codes.T, t.scale_codes.T, t.tensor_scale, (0, 1), t.block_shape[::-1], t.fmt)
    raise ValueError(f"transposed takes a 2-D tensor blocked along axis 1 or in tiles, got axes {t.axis}")


class BlockWeight:
    """A weight prepared once per forward pass: ``w`` (K, N), ``forward`` (its forward operand: encoded, or
    float32 values), ``grad_input`` (the encoded ``W^T``, made at the first backward call and reused)."""

    __slots__ = ("w", "forward", "grad_input")

    def __init__(self, w, forward):
        self.w, self.forward, self.grad_input = w, forward, None


class _BlockCtx:
    __slots__ = ("x", "wop", "inp")

    def __init__(self, x, wop, inp):
        self.x, self.wop, self.inp = x, wop, inp


class BlockScaledGemm:
    """The block-scaled GEMMs of one layer under ``recipe`` (block-scaled; see the module docstring); ``index``
    is the layer's position, which seeds its random streams."""

    def __init__(self, recipe, index):
        self.recipe, self.index = recipe, int(index)
        self.fmt = operands.operand_format(recipe.weight)
        self.tile = (self.fmt.block, self.fmt.block) if recipe.weight_blocks == "2d" else None
        self.rng = np.random.default_rng([recipe.seed, self.index, 1])
        self.hadamard_calls = 0
        self.matmul = bsgemm.blockscaled_matmul_reference if recipe.simulate else bsgemm.blockscaled_matmul
        if not recipe.simulate and "threads" in inspect.signature(bsgemm.blockscaled_matmul).parameters:
            # the compiled kernels take the recipe's thread count (their result does not depend on it)
            self.matmul = functools.partial(bsgemm.blockscaled_matmul, threads=recipe.threads)

    # ------------------------------------------------------------------ operands
    def encode(self, x, axis, spec, block_shape=None):
        """The 2-D ``x`` blocked along ``axis`` (or in ``block_shape`` tiles) by ``spec``'s rounding: bit for bit
        ``fmt.encode(x, axis=1)`` (or the tiles) - and along axis 0 ``transposed(fmt.encode(x.T, axis=1))``,
        so stochastic rounding draws in the order of the blocked rows - by the fast encoder."""
        rng = self.rng if spec.rounding == "stochastic" else None
        if block_shape is not None or axis == 1:
            return encode_rows(self.fmt, x, block_shape, spec.rounding, rng)
        return transposed(encode_rows(self.fmt, x.T, None, spec.rounding, rng))

    def _encode_weight(self, w, axis):
        if self.tile is not None:
            return self.encode(w, None, self.recipe.weight, self.tile)
        return self.encode(w, axis, self.recipe.weight)

    def prepare_weight(self, w):
        mode = self.recipe.blockscaled_forward
        if not np.isfinite(w).all():
            return BlockWeight(w, None)
        if mode == "block":
            return BlockWeight(w, self._encode_weight(w, 0))
        return BlockWeight(w, round_to_float16(w) if mode == "fp16" else np.asarray(w, np.float32))

    def _grad_input_weight(self, wop):
        """The encoded ``W^T`` (N, K) blocked along N: the forward's tiles transposed, or a second encoding."""
        if wop.grad_input is None:
            if self.tile is not None and isinstance(wop.forward, BlockScaledTensor):
                t = wop.forward
            else:
                t = self._encode_weight(wop.w, 1)
            wop.grad_input = transposed(t)
        return wop.grad_input

    def _product(self, a, b):
        return self.matmul(a, b).astype(np.float32)

    # ------------------------------------------------------------------ products
    def forward(self, x, wop, inp=None):
        """``y = x @ W`` (M, N) float32 and the backward's context."""
        ctx = _BlockCtx(x, wop, inp)
        if wop.forward is None or not np.isfinite(x).all():
            return np.full((x.shape[0], wop.w.shape[1]), np.nan, np.float32), ctx
        if isinstance(wop.forward, BlockScaledTensor):
            return self._product(self.encode(x, 1, self.recipe.activation), wop.forward), ctx
        xf = round_to_float16(x) if self.recipe.blockscaled_forward == "fp16" else x
        return np.asarray(xf, np.float32) @ wop.forward, ctx

    def grad_input(self, grad_y, ctx):
        """``dL/dx = dY @ W^T`` (M, K) float32."""
        return self._product(self.encode(grad_y, 1, self.recipe.grad_dx), self._grad_input_weight(ctx.wop))

    def grad_weight(self, x, grad_y):
        """``dL/dW = x^T @ dY`` (K, N) float32, through the random Hadamard transform when the recipe has it."""
        if self.recipe.hadamard:
            r = random_hadamard(np.random.default_rng([self.recipe.seed, self.index, 2, self.hadamard_calls]))
            self.hadamard_calls += 1
            x, grad_y = rotate_batch(x, r), rotate_batch(grad_y, r)
        a = self.encode(x.T, 1, self.recipe.activation)
        return self._product(a, self.encode(grad_y, 0, self.recipe.grad_dw))

    def backward(self, grad_y, ctx, seq=None):
        """``(dL/dx, dL/dW)``; with ``seq`` (a recurrent layer's pass) ``dL/dW`` is deferred to
        :meth:`finish_sequence` and returned as None."""
        if not np.isfinite(grad_y).all():
            raise FloatingPointError("the output gradient contains NaN or Inf")
        gx = self.grad_input(grad_y, ctx)
        if seq is not None:
            seq.parts.append((ctx.x, grad_y))
            return gx, None
        return gx, self.grad_weight(ctx.x, grad_y)

    def finish_sequence(self, seq):
        """The weight gradient of all calls of ``seq``: one GEMM over their concatenated batch axes."""
        if not seq.parts:
            return None
        x = np.concatenate([x for x, _ in seq.parts])
        g = np.concatenate([g for _, g in seq.parts])
        return self.grad_weight(x, g)
