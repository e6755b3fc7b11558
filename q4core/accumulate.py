"""Simulated FP16 accumulation of a 4-bit GEMM (the recipe's ``accumulator="fp16"``).

The integer kernels sum the products of a 4-bit GEMM exactly (int32).  The paper's hardware accumulates in
FP16, which loses the low bits of long sums ("swamping"); this module measures that optimism.  The scheme is
chunk-based accumulation (Wang et al., NeurIPS 2018; Sun et al., NeurIPS 2019), the accumulation the paper's
FP16 units build on:

* every product ``a[i, k] * b[k, j]`` of the two operands' units (exact in float64) is rounded to float16;
* along K, products are summed in blocks of :data:`BLOCK` = 64 (a hardware dot-product chunk): a float16
  running sum, rounded to float16 after every addition, in the order k = 0, 1, ...;
* the block sums are added in float16 too, in block order.  Both levels in float16 is the pessimistic and
  faithful choice: the paper claims FP16 accumulation, not FP32 for the chunk totals, and a float32 second
  level would hide most of the loss for the layer sizes here (K <= 1152 gives at most 18 blocks);
* before rounding, every product is multiplied by one power of two per GEMM (:func:`accumulator_scale`),
  an exponent bias (free in hardware) that puts ``K * max|a| * max|b|`` - the largest sum the GEMM can
  form - at or below 2**15, so no sum overflows float16 (max 65504).  A power of two changes no rounding
  away from float16's range ends, and at this bias every product of the 4-bit grids (units >= 1, K <= 2**14)
  is a normal float16: what is measured is the precision loss of float16 sums (swamping of small products
  by a large running sum), not overflow.  The result is divided by the bias again, exactly.

Float16 addition here is a float64 addition of two float16 values (exact) rounded once to float16 (numpy's
float64 -> float16 conversion rounds to nearest even), so the result does not depend on the platform.
:func:`fp16_block_matmul_reference` is the plain scalar loop; :func:`fp16_block_matmul` the same operations on
whole (M, N) arrays per k; tests demand bit-for-bit agreement.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["BLOCK", "accumulator_scale", "fp16_block_matmul", "fp16_block_matmul_reference"]

#: products summed per float16 chunk along K
BLOCK = 64
#: the largest possible |sum| is put at or below this power of two (see the module docstring)
_TOP_EXPONENT = 15


def _check(a, b, block):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"a and b must be (M, K) and (K, N) matrices, got shapes {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a and b must be finite (they are the units of quantized operands)")
    if not isinstance(block, (int, np.integer)) or isinstance(block, bool) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    return a, b, int(block)


def accumulator_scale(a, b):
    """The power of two that puts ``K * max|a| * max|b|`` (the largest sum the (M, K) x (K, N) GEMM can
    form) in (2**14, 2**15]; 1.0 when either operand is all zeros."""
    top = a.shape[1] * float(np.max(np.abs(a), initial=0.0)) * float(np.max(np.abs(b), initial=0.0))
    if top == 0.0:
        return 1.0
    return 2.0 ** (_TOP_EXPONENT - math.ceil(math.log2(top)))


def fp16_block_matmul_reference(a, b, block=BLOCK):
    """``a @ b`` accumulated as the module docstring says, one scalar at a time (float64 result)."""
    a, b, block = _check(a, b, block)
    M, K = a.shape
    N = b.shape[1]
    s = accumulator_scale(a, b)
    out = np.zeros((M, N))
    for i in range(M):
        for j in range(N):
            total = np.float16(0.0)
            for start in range(0, K, block):
                part = np.float16(0.0)
                for k in range(start, min(start + block, K)):
                    product = np.float16(a[i, k] * b[k, j] * s)
                    part = np.float16(float(part) + float(product))
                total = np.float16(float(total) + float(part))
            out[i, j] = float(total) / s
    return out


def fp16_block_matmul(a, b, block=BLOCK):
    """:func:`fp16_block_matmul_reference` on whole (M, N) arrays per k (the same operations, same result)."""
    a, b, block = _check(a, b, block)
    M, K = a.shape
    N = b.shape[1]
    s = accumulator_scale(a, b)
    total = np.zeros((M, N), np.float16)
    part = np.empty((M, N), np.float64)
    for start in range(0, K, block):
        part16 = np.zeros((M, N), np.float16)
        for k in range(start, min(start + block, K)):
            np.multiply.outer(a[:, k] * s, b[k], out=part)      # exact: a power of two times an exact product
            part16 = (part16.astype(np.float64) + part.astype(np.float16)).astype(np.float16)
        total = (total.astype(np.float64) + part16).astype(np.float16)
    return total.astype(np.float64) / s
