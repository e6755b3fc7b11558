"""Block-scaled FP4 GEMM: ``C = A @ B`` for MXFP4 / NVFP4 operands, in integer arithmetic plus block scales.

An E2M1 element times 2 is an integer in [-12, 12], so within one block of the reduction axis the product of two
block-scaled operands is an integer dot product (int32 is ample: ``|sum| <= 32 * 144``) times the two block scales.
The result is defined exactly - the kernels must reproduce it bit for bit:

    acc[i, j] = 0.0 (float64)
    for kb in K-blocks, in order:
        acc[i, j] += float64(P_kb[i, j]) * (sa[i, kb] * sb[kb, j] * 0.25)
    C[i, j] = acc[i, j] / (tensor_scale_a * tensor_scale_b)

where ``P_kb`` is the integer product of block ``kb`` (elements as 2x integers), ``sa``/``sb`` the decoded block
scales (E8M0: powers of two; E4M3: at most 4 significant bits) and the tensor scales NVFP4's float32 encode
scales (1.0 for MX).  Every multiplication above is exact in float64 (``sa * sb * 0.25`` has at most 8 significant
bits, ``P_kb`` at most 13); only the additions and the final division round, in the stated order.  For MXFP4 the
final division is by 1 and the result equals the float64 product of the decoded operands whenever the partial
sums' exponents stay within float64's 53 bits (tests check it on ordinary data).

Operands: ``a`` is ``(M, K)`` blocked along axis 1 (1-D blocks) or in 2-D tiles; ``b`` is ``(K, N)`` blocked along
axis 0 or in 2-D tiles (NVFP4's 16 x 16 weight blocks, which serve both ``W`` and ``W.T``).  Both must be made by
the same 4-bit format with the same block length along K.

Kernels: ``blockscaled_matmul(a, b, kernel=..., threads=...)`` runs the C driver of
``q4core/src/bsgemm_kernels.h`` on any compiled kernel of :func:`q4core.kernel_info` (AMX, AVX-512 VNNI,
AVX-VNNI, AVX2, portable: the per-K-block int32 products come from the INT4 GEMM's tile kernels) or
``kernel="reference"`` (the numpy definition); every kernel returns the same bits, for any thread count.
:func:`blockscaled_matmul_int` is the lower-level entry point on int8 elements and float64 block scales.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import gemm as _gemm_api
from .blockscaled import BlockScaledTensor

try:
    from . import _bsgemm
except ImportError:          # extension not built: only the reference runs
    _bsgemm = None

__all__ = ["blockscaled_matmul", "blockscaled_matmul_int", "blockscaled_matmul_reference", "operand_integers",
           "BLOCK_LENGTHS"]

# the block scales the int8 entry point admits: every product P * sa * sb / 4 is then an exact float64 (13 + 17 +
# 17 significant bits, no underflow or overflow), which the kernels' fused multiply-adds and their folding of the
# 0.25 into A's scales rely on (bsgemm_kernels.h); the formats' scales (E8M0, E4M3) are far inside
_SCALE_MIN, _SCALE_MAX = 2.0 ** -400, 2.0 ** 400
_SCALE_LOW_BITS = (1 << 36) - 1      # float64 mantissa bits below the 16 explicit ones a scale may use

#: block lengths along K the compiled kernels take (NVFP4's 16, MXFP4's 32: divisors of the 64-byte K padding)
BLOCK_LENGTHS = (16, 32)


def _k_blocking(t, name, reduction_axis):
    """(block length along K, per-element-row/col scale array with one column per K-block) of operand ``t``."""
    if not isinstance(t, BlockScaledTensor):
        raise TypeError(f"{name} must be a BlockScaledTensor (q4core.blockscaled ... .encode), got {type(t).__name__}")
    if t.codes.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {t.codes.shape}")
    if t.fmt.element.bits != 4:
        raise ValueError(f"{name} is {t.fmt.name}: the block-scaled GEMM takes 4-bit (E2M1) elements only")
    if t.codes.dtype != np.uint8 or (t.codes.size and int(t.codes.max()) >= 1 << t.fmt.element.bits):
        raise ValueError(f"{name}.codes must be uint8 {t.fmt.name} element codes below {1 << t.fmt.element.bits}")
    axes = tuple(t.axis)
    scales = t.fmt._scale_values(t.scale_codes)             # float64, one per block (exact decode)
    if axes == (reduction_axis,):
        # 1-D blocks: the scale codes have the blocked axis last, (rows, K-blocks) or (cols, K-blocks)
        blk = t.block_shape[0]
        return blk, scales if reduction_axis == 1 else scales.T
    if axes == (0, 1):
        # 2-D tiles: expand the non-reduction axis so there is one scale per row (a) or column (b)
        other = 1 - reduction_axis
        blk = t.block_shape[reduction_axis]
        full = np.repeat(scales, t.block_shape[other], axis=other)
        full = full[:t.codes.shape[0], :] if other == 0 else full[:, :t.codes.shape[1]]
        return blk, full
    raise ValueError(f"{name} must be blocked along its reduction axis ({reduction_axis}) or in 2-D tiles, "
                     f"got blocked axes {axes}")


def _code_values(fmt):
    """int8 (256,): ``2 * value`` of each element code of ``fmt`` (0 past its last code)."""
    n = 1 << fmt.element.bits
    table = np.zeros(256, np.int8)
    table[:n] = np.rint(fmt.element.decode(np.arange(n, dtype=np.uint8)) * 2.0)
    return table


def operand_integers(t):
    """The element codes of ``t`` as integers ``2 * value`` in [-12, 12] (int8)."""
    return np.take(_code_values(t.fmt), t.codes)


def _check_pair(a, b):
    blk_a, sa = _k_blocking(a, "a", 1)
    blk_b, sb = _k_blocking(b, "b", 0)
    if a.fmt is not b.fmt:
        raise ValueError(f"a and b must share one format, got {a.fmt.name} and {b.fmt.name}")
    if blk_a != blk_b:
        raise ValueError(f"a and b must have the same block length along K, got {blk_a} and {blk_b}")
    if a.codes.shape[1] != b.codes.shape[0]:
        raise ValueError(f"inner dimensions differ: a is {a.codes.shape}, b is {b.codes.shape}")
    return blk_a, sa, sb


def blockscaled_matmul_reference(a, b):
    """The definition above in numpy (int64 block products, float64 accumulation in K-block order)."""
    blk, sa, sb = _check_pair(a, b)
    m, k = a.codes.shape
    n = b.codes.shape[1]
    ai = operand_integers(a).astype(np.int64)
    bi = operand_integers(b).astype(np.int64)
    acc = np.zeros((m, n), dtype=np.float64)
    for kb, k0 in enumerate(range(0, k, blk)):
        p = ai[:, k0:k0 + blk] @ bi[k0:k0 + blk, :]
        acc += p.astype(np.float64) * (sa[:, kb:kb + 1] * sb[kb:kb + 1, :] * 0.25)
    return acc / (float(a.tensor_scale) * float(b.tensor_scale))


def blockscaled_matmul(a, b, *, kernel=None, threads=None):
    """``A @ B`` of two block-scaled FP4 operands as float64 (see the module docstring for the exact result).

    ``kernel``: a name of :data:`q4core.gemm.KERNEL_NAMES` (None: ``Q4CORE_KERNEL`` or the fastest available);
    ``threads``: OpenMP threads (None: the default).  The result does not depend on either."""
    kid = _gemm_api._kernel_id(kernel)
    nthreads = _gemm_api._check_threads(threads)
    if kid < 0:
        return blockscaled_matmul_reference(a, b)
    blk, sa, sb = _check_pair(a, b)
    denom = float(a.tensor_scale) * float(b.tensor_scale)
    # the packing maps the element codes to 2x-integers in the same pass (no int8 copy of either operand)
    return _run(a.codes, b.codes, sa, sb, blk, denom, kid, nthreads, _code_values(a.fmt))


def _run(a_src, b_src, sa, sb, blk, denom, kid, nthreads, values=None):
    if _bsgemm is None:
        raise RuntimeError("the compiled extension q4core._bsgemm is not built; use kernel='reference'")
    if blk not in BLOCK_LENGTHS:
        raise ValueError(f"the compiled kernels take block lengths {BLOCK_LENGTHS} along K, got {blk}; "
                         f"use kernel='reference'")
    if values is None:
        return _bsgemm.bsgemm(a_src, b_src, sa, sb, blk, denom, kid, nthreads)
    return _bsgemm.bsgemm(a_src, b_src, sa, sb, blk, denom, kid, nthreads, values)


def _check_elements(x, name):
    if not isinstance(x, np.ndarray) or x.dtype != np.int8:
        raise TypeError(f"{name} must be an int8 numpy array of 2x E2M1 elements, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {x.shape}")
    if x.size and (x.min() < -12 or x.max() > 12):
        raise ValueError(f"{name} must hold 2x E2M1 elements in [-12, 12], got values in [{x.min()}, {x.max()}]")
    return np.ascontiguousarray(x)


def _check_scales(x, name, shape):
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        raise TypeError(f"{name} must be a float64 numpy array of block scales, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (one scale per row / column and K-block), got {x.shape}")
    if x.size and not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite")
    mag = np.abs(x[x != 0])
    if mag.size and ((mag < _SCALE_MIN).any() or (mag > _SCALE_MAX).any()
                     or (mag.view(np.uint64) & np.uint64(_SCALE_LOW_BITS)).any()):
        raise ValueError(f"{name} must hold 0 or magnitudes in [2**-400, 2**400] with at most 17 significant bits "
                         "(the formats' scales have 1 or 4), so that every scale product is exact")
    return np.ascontiguousarray(x)


def blockscaled_matmul_int(a_int, b_int, sa, sb, block, *, denom=1.0, kernel=None, threads=None):
    """The block-scaled product on its integer form: ``a_int`` (M, K) and ``b_int`` (K, N) int8 2x-elements in
    [-12, 12], ``sa`` (M, nkb) and ``sb`` (nkb, N) float64 decoded block scales (nkb = ceil(K / block)),
    ``block`` 16 or 32, ``denom`` the product of the tensor scales.  Same result as
    :func:`blockscaled_matmul` of the operands these came from.  Block scales must be 0 or of magnitude in
    [2**-400, 2**400] with at most 17 significant bits (the formats' scales are), so that every kernel's result
    is the definition's."""
    a_int = _check_elements(a_int, "a_int")
    b_int = _check_elements(b_int, "b_int")
    if a_int.shape[1] != b_int.shape[0]:
        raise ValueError(f"inner dimensions differ: a_int is {a_int.shape}, b_int is {b_int.shape}")
    if isinstance(block, (bool, np.bool_)) or not isinstance(block, (numbers.Integral, np.integer)) \
            or int(block) not in BLOCK_LENGTHS:
        raise ValueError(f"block must be one of {BLOCK_LENGTHS}, got {block!r}")
    block = int(block)
    m, k = a_int.shape
    n = b_int.shape[1]
    nkb = -(-k // block)
    sa = _check_scales(sa, "sa", (m, nkb))
    sb = _check_scales(sb, "sb", (nkb, n))
    denom = _gemm_api._check_scale(denom, "denom")
    if denom == 0.0:
        raise ValueError("denom must be nonzero")
    kid = _gemm_api._kernel_id(kernel)
    nthreads = _gemm_api._check_threads(threads)
    if kid < 0:
        acc = np.zeros((m, n), dtype=np.float64)
        ai, bi = a_int.astype(np.int64), b_int.astype(np.int64)
        for kb, k0 in enumerate(range(0, k, block)):
            p = ai[:, k0:k0 + block] @ bi[k0:k0 + block, :]
            acc += p.astype(np.float64) * (sa[:, kb:kb + 1] * sb[kb:kb + 1, :] * 0.25)
        return acc / denom
    return _run(a_int, b_int, sa, sb, block, denom, kid, nthreads)
