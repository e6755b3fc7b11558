"""Exact INT4 x INT4 and radix-4 FP4 x INT4 matrix products, dispatched by CPU.

Public API
----------
``int4_matmul(a, b)``                 int32 ``A @ B`` of 4-bit integers (exact)
``int4_matmul_scaled(a, b, sa, sb)``  float32 ``sa * sb * (A @ B)``
``fp4_int4_matmul(g, b)``             int64 ``units(G) @ B`` - FP4 on the left  (dL/dx = dL/dy @ W^T)
``int4_fp4_matmul(a, g)``             int64 ``A @ units(G)`` - FP4 on the right (dL/dW = X^T @ dL/dy)
``*_scaled`` variants                 float32, ``units product * f * 4**-6 * scales``
``pack_int4(b)``                      pack a weight matrix once, reuse it in every call
``kernel_info()``, ``available_kernels()``

Operands
--------
INT4: ``int8`` arrays with values in [-8, 7] (signed) or ``uint8`` arrays with values in
[0, 15] (unsigned, e.g. PACT activations).  Either operand may be unsigned.
FP4: radix-4 FP4 codes as produced by ``RadixFP(4, 3, phase).encode(g, scale)``: uint8
``sign << 3 | e``; ``e == 0`` is zero, otherwise the magnitude is ``f * 4**(e - 7)``
(``f = 1`` for phase 0, ``2`` for phase 1).  We compute with exact integer *units*
``sign * 4**(e - 1)`` (0 for ``e == 0``), so the real value is ``units * f * 4**-6 * scale``.

Exactness
---------
Every kernel returns exactly the int64 numpy product.  Kernels accumulate in int32; the
K axis is split into chunks short enough that no int32 accumulator can wrap for the
operand ranges at hand, and the chunks are summed in int64.  ``int4_matmul`` returns
int32 and raises ``OverflowError`` when an exact entry does not fit in int32 (only
possible for K > 9.5 million); it never wraps.  Integer results do not depend on the
thread count.

Kernels (``kernel=`` or the ``Q4CORE_KERNEL`` environment variable)
--------------------------------------------------------------------
``reference`` (numpy int64, the test oracle), ``portable`` (plain C), ``avx2``
(vpmaddubsw + vpmaddwd), ``vnni`` (AVX-512 VNNI vpdpbusd), ``avxvnni`` (VEX vpdpbusd),
``amx`` (AMX-INT8 tdpbusd tiles).  The default is the fastest one the CPU *and* OS allow.
"""
from __future__ import annotations

import numbers
import os

import numpy as np

try:  # the compiled kernels; without them only the numpy reference is available
    from . import _gemm
except ImportError:  # pragma: no cover - exercised only on an unbuilt checkout
    _gemm = None

__all__ = [
    "PackedInt4", "pack_int4", "int4_matmul", "int4_matmul_scaled", "fp4_units",
    "fp4_int4_matmul", "int4_fp4_matmul", "fp4_int4_matmul_scaled", "int4_fp4_matmul_scaled",
    "kernel_info", "available_kernels", "KERNEL_NAMES",
]

#: every kernel name, fastest first (``reference`` is the numpy oracle)
KERNEL_NAMES = ("amx", "vnni", "avxvnni", "avx2", "portable", "reference")
_ENV = "Q4CORE_KERNEL"
_INT32_MAX = np.iinfo(np.int32).max
_INT32_MIN = np.iinfo(np.int32).min
#: upper bound on the K chunk of the compiled kernels (a multiple of 64).  None: only the
#: int32 safety bound applies.  Tests lower it to exercise the chunked path on small shapes.
_KCHUNK_LIMIT = None

# radix-4 FP4 code -> exact integer units sign * 4**(e-1) (e = code & 7, sign = bit 3)
_CODES = np.arange(16)
_E = _CODES & 7
_FP4_UNITS = np.where(_E > 0, 4 ** np.maximum(_E - 1, 0), 0) * np.where(_CODES >> 3, -1, 1)
_FP4_UNITS = _FP4_UNITS.astype(np.int64)


# --------------------------------------------------------------------------- validation
def _check_int4(x, name):
    """Return (array, signed) for an INT4 operand given as int8 [-8, 7] or uint8 [0, 15]."""
    if isinstance(x, PackedInt4):
        raise TypeError(f"{name} must be an int8/uint8 array here, not a PackedInt4 "
                        "(only the right-hand INT4 operand may be packed)")
    arr = np.asarray(x)
    if arr.dtype == np.int8:
        lo, hi, signed = -8, 7, True
    elif arr.dtype == np.uint8:
        lo, hi, signed = 0, 15, False
    else:
        raise TypeError(f"{name} must be an int8 array (values -8..7) or a uint8 array "
                        f"(values 0..15), got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
    if arr.size:
        mn, mx = int(arr.min()), int(arr.max())
        if mn < lo or mx > hi:
            kind = "signed int8" if signed else "unsigned uint8"
            raise ValueError(f"{name} ({kind}) must hold 4-bit values in [{lo}, {hi}], "
                             f"found values in [{mn}, {mx}]")
    return arr, signed


def _check_fp4(x, name):
    arr = np.asarray(x)
    if arr.dtype != np.uint8:
        raise TypeError(f"{name} must be a uint8 array of radix-4 FP4 codes "
                        f"(sign << 3 | e), got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
    if arr.size and int(arr.max()) > 15:
        raise ValueError(f"{name} must hold 4-bit FP4 codes in [0, 15], found {int(arr.max())}")
    return arr


def _check_inner(a_shape, b_shape, a_name, b_name):
    if a_shape[1] != b_shape[0]:
        raise ValueError(f"shape mismatch: {a_name} is {a_shape[0]}x{a_shape[1]} and "
                         f"{b_name} is {b_shape[0]}x{b_shape[1]}; {a_name}.shape[1] must "
                         f"equal {b_name}.shape[0]")


def _check_threads(threads):
    if threads is None:
        return 0
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (numbers.Integral, np.integer)):
        raise TypeError(f"threads must be a positive int or None, got {threads!r}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return int(threads)


def _check_scale(scale, name):
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {type(scale).__name__}")
    scale = float(scale)
    if not np.isfinite(scale):
        raise ValueError(f"{name} must be finite, got {scale!r}")
    return scale


def _check_phase(phase):
    if phase not in (0, 1) or isinstance(phase, (bool, np.bool_)):
        raise ValueError(f"phase must be 0 or 1, got {phase!r}")
    return 2.0 if phase == 1 else 1.0


# --------------------------------------------------------------------------- kernel choice
def available_kernels():
    """Kernel names usable on this CPU and OS, fastest first; always ends with 'reference'."""
    if _gemm is None:
        return ["reference"]
    return [k for k in _gemm.available_kernels()] + ["reference"]


def _resolve_kernel(kernel):
    source = "kernel"
    if kernel is None:
        kernel = os.environ.get(_ENV) or None
        source = f"environment variable {_ENV}"
    if kernel is None:
        return available_kernels()[0]
    if not isinstance(kernel, str) or kernel not in KERNEL_NAMES:
        raise ValueError(f"{source} must be one of {', '.join(KERNEL_NAMES)}; got {kernel!r}")
    if kernel not in available_kernels():
        why = ("the compiled extension q4core._gemm is not built" if _gemm is None
               else _gemm.unavailable_reason(kernel))
        raise RuntimeError(f"{source}={kernel!r} is not available here: {why}. "
                           f"Available: {', '.join(available_kernels())}")
    return kernel


def kernel_info():
    """What the CPU and OS offer, which kernels are usable, which one is chosen, threads."""
    env = os.environ.get(_ENV) or None
    try:
        chosen = _resolve_kernel(None)
        error = None
    except (ValueError, RuntimeError) as exc:
        chosen, error = None, str(exc)
    info = {
        "compiled": _gemm is not None,
        "cpu": _gemm.cpu_features() if _gemm is not None else {},
        "available_kernels": available_kernels(),
        "chosen_kernel": chosen,
        "env_override": env,
        "openmp": bool(_gemm.openmp_enabled()) if _gemm is not None else False,
        "threads": int(_gemm.default_threads()) if _gemm is not None else 1,
    }
    if error:
        info["env_error"] = error
    return info


# --------------------------------------------------------------------------- packed weights
class PackedInt4:
    """A right-hand INT4 operand (K x N) prepared once for every kernel and reused.

    Holds a contiguous int8 copy of the values (signed or unsigned nibbles both fit
    int8), the K x N shape, the signedness, and the kernel layout (16-column panels,
    4 consecutive k per 32-bit lane - the VNNI / AMX B-tile order), built on first use.
    """

    __slots__ = ("values", "signed", "shape", "_kernel_cache")

    def __init__(self, b):
        arr, signed = _check_int4(b, "b")
        # always a private copy: later writes to ``b`` must not change the packed weights
        self.values = np.array(arr.view(np.int8) if not signed else arr, order="C", copy=True)
        self.values.setflags(write=False)
        self.signed = signed
        self.shape = arr.shape
        self._kernel_cache = {}

    def __repr__(self):
        kind = "signed [-8, 7]" if self.signed else "unsigned [0, 15]"
        return f"PackedInt4(shape={self.shape}, {kind})"

    def as_array(self):
        """The original values (int8 if signed, uint8 if unsigned)."""
        return self.values if self.signed else self.values.view(np.uint8)


def pack_int4(b):
    """Pack the right-hand INT4 operand ``b`` (K x N) once for reuse across GEMM calls.

    With the compiled kernels present the kernel layout is built here, so the first GEMM
    call costs the same as every later one.
    """
    packed = PackedInt4(b)
    if _gemm is not None and packed.shape[0] and packed.shape[1]:
        _kernel_operand(packed)
    return packed


def _right_int4(b, name="b"):
    if isinstance(b, PackedInt4):
        return b, b.as_array(), b.signed
    arr, signed = _check_int4(b, name)
    return None, arr, signed


def fp4_units(codes):
    """Exact integer units ``sign * 4**(e-1)`` (int64) of radix-4 FP4 codes."""
    arr = np.asarray(codes)
    if arr.dtype != np.uint8:
        raise TypeError(f"codes must be a uint8 array of radix-4 FP4 codes, got dtype {arr.dtype}")
    if arr.size and int(arr.max()) > 15:
        raise ValueError(f"codes must hold 4-bit FP4 codes in [0, 15], found {int(arr.max())}")
    return _FP4_UNITS[arr.astype(np.intp)]


# --------------------------------------------------------------------------- reference
def _ref_product(a64, b64):
    """Exact int64 product.  numpy's integer matmul is not BLAS-backed but it is exact."""
    return a64 @ b64


def _to_int32(c64, K):
    if c64.size and (c64.max() > _INT32_MAX or c64.min() < _INT32_MIN):
        raise OverflowError("int4_matmul: an exact entry of A @ B does not fit in int32 "
                            f"(exact range [{int(c64.min())}, {int(c64.max())}], K={K}); split K "
                            "and sum the int32 parts in int64")
    return c64.astype(np.int32)


# --------------------------------------------------------------------------- public GEMMs
def int4_matmul(a, b, *, threads=None, kernel=None):
    """Exact ``A @ B`` of INT4 operands as int32 (M x N).

    ``a``: (M, K) int8 in [-8, 7] or uint8 in [0, 15]; ``b``: (K, N) likewise, or a
    :class:`PackedInt4`.  Raises ``OverflowError`` if an exact entry exceeds int32.
    """
    a, a_signed = _check_int4(a, "a")
    packed, b_arr, b_signed = _right_int4(b)
    _check_inner(a.shape, b_arr.shape, "a", "b")
    nthreads = _check_threads(threads)
    kernel = _resolve_kernel(kernel)
    if kernel == "reference":
        c64 = _ref_product(a.astype(np.int64), b_arr.astype(np.int64))
    else:
        if a.size == 0 or b_arr.size == 0:
            return np.zeros((a.shape[0], b_arr.shape[1]), np.int32)
        if packed is None:
            packed = PackedInt4(b_arr)
        layout = _kernel_operand(packed, nthreads)
        bufs, _ = _left_buffers(a, [_offset_table(a_signed)], kernel, layout[1], nthreads)
        c = _launch(kernel, nthreads, bufs, [8 if a_signed else 0], [layout], [0], 15 * 15,
                    a.shape[0], b_arr.shape[1])
        if c.dtype == np.int32:      # one K chunk: int32 accumulators provably did not wrap
            return c
        c64 = c
    return _to_int32(c64, a.shape[1])


def int4_matmul_scaled(a, b, scale_a, scale_b, **kw):
    """``scale_a * scale_b * (A @ B)`` as float32 (product formed in float64 from the exact integers)."""
    sa, sb = _check_scale(scale_a, "scale_a"), _check_scale(scale_b, "scale_b")
    c = int4_matmul(a, b, **kw)
    return (c.astype(np.float64) * (sa * sb)).astype(np.float32)


def fp4_int4_matmul(g_codes, b, *, threads=None, kernel=None):
    """Exact int64 ``units(G) @ B``: FP4 gradient codes (M x K) times INT4 (K x N)."""
    g = _check_fp4(g_codes, "g_codes")
    packed, b_arr, b_signed = _right_int4(b)
    _check_inner(g.shape, b_arr.shape, "g_codes", "b")
    nthreads = _check_threads(threads)
    kernel = _resolve_kernel(kernel)
    if kernel == "reference":
        return _ref_product(_FP4_UNITS[g.astype(np.intp)], b_arr.astype(np.int64))
    M, N = g.shape[0], b_arr.shape[1]
    if g.size == 0 or b_arr.size == 0:
        return np.zeros((M, N), np.int64)
    if packed is None:
        packed = PackedInt4(b_arr)
    layout = _kernel_operand(packed, nthreads)
    # exponents 1..4 (units +-1..64) and 5..7 (units / 256 = +-1..16) each fit int8; the
    # FP4 operand gets +64 / +16 so it is unsigned for vpdpbusd / tdpbusd, and the kernel
    # subtracts offset * column sums of B; the two int32 results combine as lo + (hi << 8)
    offsets = (64, 16)
    bufs, seen = _left_buffers(g, [_fp4_left_table(0, 64), _fp4_left_table(1, 16)], kernel,
                               layout[1], nthreads)
    groups = _groups_present(seen)
    if not groups:
        return np.zeros((M, N), np.int64)
    # offset FP4 operand <= 128 (low group) times |int4| <= 15
    c = _launch(kernel, nthreads, [bufs[i] for i in groups], [offsets[i] for i in groups],
                [layout] * len(groups), [8 * i for i in groups], 128 * 15, M, N)
    return c.astype(np.int64, copy=False)


def int4_fp4_matmul(a, g_codes, *, threads=None, kernel=None):
    """Exact int64 ``A @ units(G)``: INT4 (M x K, may be unsigned) times FP4 codes (K x N)."""
    a, a_signed = _check_int4(a, "a")
    g = _check_fp4(g_codes, "g_codes")
    _check_inner(a.shape, g.shape, "a", "g_codes")
    nthreads = _check_threads(threads)
    kernel = _resolve_kernel(kernel)
    if kernel == "reference":
        return _ref_product(a.astype(np.int64), _FP4_UNITS[g.astype(np.intp)])
    M, N = a.shape[0], g.shape[1]
    if a.size == 0 or g.size == 0:
        return np.zeros((M, N), np.int64)
    tables = np.zeros((2, 256), np.int8)
    tables[0, :16], tables[1, :16] = _fp4_group_units(0), _fp4_group_units(1)
    bpacked, Kp, Np, sums, seen = _gemm.pack_b(g.view(np.uint8), tables, nthreads)
    groups = _groups_present(seen)
    if not groups:
        return np.zeros((M, N), np.int64)
    bufs, _ = _left_buffers(a, [_offset_table(a_signed)], kernel, Kp, nthreads)
    layouts = [(bpacked[i], Kp, Np, sums[i]) for i in groups]
    # offset INT4 operand <= 15 times |FP4 group units| <= 64
    c = _launch(kernel, nthreads, [bufs[0]] * len(groups), [8 if a_signed else 0] * len(groups),
                layouts, [8 * i for i in groups], 15 * 64, M, N)
    return c.astype(np.int64, copy=False)


def fp4_int4_matmul_scaled(g_codes, b, g_scale, b_scale, phase=0, **kw):
    """float32 ``dequant(G) @ dequant(B)`` = units product * f * 4**-6 * g_scale * b_scale."""
    f = _check_phase(phase)
    gs, bs = _check_scale(g_scale, "g_scale"), _check_scale(b_scale, "b_scale")
    c = fp4_int4_matmul(g_codes, b, **kw)
    return (c.astype(np.float64) * (f * 4.0 ** -6 * gs * bs)).astype(np.float32)


def int4_fp4_matmul_scaled(a, g_codes, a_scale, g_scale, phase=0, **kw):
    """float32 ``dequant(A) @ dequant(G)`` = units product * f * 4**-6 * a_scale * g_scale."""
    f = _check_phase(phase)
    as_, gs = _check_scale(a_scale, "a_scale"), _check_scale(g_scale, "g_scale")
    c = int4_fp4_matmul(a, g_codes, **kw)
    return (c.astype(np.float64) * (f * 4.0 ** -6 * as_ * gs)).astype(np.float32)


# --------------------------------------------------------------------------- fast path plumbing
def _offset_table(signed):
    """Byte -> unsigned left operand: signed nibbles get +8 (two's complement byte in)."""
    t = np.arange(256, dtype=np.int64)
    if signed:
        t = (t.astype(np.uint8).view(np.int8).astype(np.int64) + 8)
    return (t & 0xFF).astype(np.uint8)


def _fp4_group_units(group):
    """Per-code int8 units of one exponent group (others -> 0): e 1..4, or e 5..7 divided by 256."""
    if group == 0:
        u = np.where((_E >= 1) & (_E <= 4), _FP4_UNITS, 0)
    else:
        u = np.where(_E >= 5, _FP4_UNITS // 256, 0)
    return u.astype(np.int64)


def _fp4_left_table(group, offset):
    t = np.full(256, 0, np.int64)
    t[:16] = _fp4_group_units(group) + offset
    return t.astype(np.uint8)


def _groups_present(seen):
    """Indices of the FP4 exponent groups with at least one code: 0 (e = 1..4), 1 (e = 5..7)."""
    e = _E[np.asarray(seen[:16], bool)]
    present = (bool(((e >= 1) & (e <= 4)).any()), bool((e >= 5).any()))
    return [i for i in (0, 1) if present[i]]


def _kernel_operand(packed, nthreads=0):
    """(packed bytes, Kp, Np, column sums int64) of a PackedInt4, built once per object.

    K is padded to a multiple of 64 and N to one of 16 with zeros (gemm_portable.h).
    """
    cache = packed._kernel_cache
    if "layout" not in cache:
        identity = np.arange(256, dtype=np.int64).astype(np.uint8).view(np.int8)
        bpacked, Kp, Np, sums, _ = _gemm.pack_b(packed.values.view(np.uint8), identity[None, :],
                                                nthreads)
        cache["layout"] = (bpacked[0], Kp, Np, sums[0])
    return cache["layout"]


def _left_buffers(a, tables, kernel, Kp, nthreads):
    """Map the left operand through each byte table into the kernel's padded row-major buffers."""
    rows = _gemm.row_multiple(KERNEL_NAMES.index(kernel))
    bufs, seen = _gemm.prep_a(a.view(np.uint8), np.stack(tables), Kp, rows, nthreads)
    return list(bufs), seen


def _launch(kernel, nthreads, a_bufs, offsets, layouts, shifts, max_product, M, N):
    """Exact ``sum_g ((a_bufs[g] - offsets[g]) @ B_g) << shifts[g]`` through a compiled kernel.

    Returns int32 for one unshifted group that needs one K chunk, else int64.  The K chunk
    (a multiple of 64) is the longest over which ``max_product * K`` - a bound on every
    int32 accumulator and on every zero-point correction - stays inside int32.
    """
    Kp, Np = layouts[0][1], layouts[0][2]
    kchunk = (_INT32_MAX // max_product) // 64 * 64
    if _KCHUNK_LIMIT is not None:
        kchunk = min(kchunk, int(_KCHUNK_LIMIT))
    return _gemm.gemm(tuple(a_bufs), M, tuple(lay[0] for lay in layouts), N, Kp, Np, kchunk,
                      tuple(offsets), tuple(shifts), max_product, KERNEL_NAMES.index(kernel),
                      nthreads, tuple(lay[3] for lay in layouts))


# --------------------------------------------------------------------------- engine entry points
# The training engine calls these on operands it has just made itself (codes in range, C-contiguous,
# the right dtypes, B packed with pack_int4), so they skip the public functions' validation scans.
# Preconditions are the caller's to keep; the public functions above stay the validated API.
def int4_matmul_unchecked(a, b, threads=None):
    """``int4_matmul`` without operand checks: ``a`` C-contiguous int8/uint8 levels, ``b`` a PackedInt4."""
    return int4_matmul(a, b, threads=threads)


def fp4_int4_matmul_unchecked(g_codes, b, threads=None):
    """``fp4_int4_matmul`` without operand checks: ``g_codes`` C-contiguous uint8 radix-4 codes, ``b`` packed."""
    return fp4_int4_matmul(g_codes, b, threads=threads)


def int4_fp4_matmul_unchecked(a, g_codes, threads=None):
    """``int4_fp4_matmul`` without operand checks: C-contiguous levels ``a`` and codes ``g_codes``."""
    return int4_fp4_matmul(a, g_codes, threads=threads)
