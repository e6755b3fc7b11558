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
The compiled kernels are listed once, in the C kernel table (``q4core/src/gemm_kernels.h``);
``KERNEL_NAMES``, ``available_kernels()`` and ``kernel_info()["kernels"]`` come from it.

Threads (``threads=`` or ``OMP_NUM_THREADS``) are clamped to ``kernel_info()["thread_limit"]``,
the processors this process may run on: an absurd request used to crash thread creation.

Engine entry points
-------------------
``int4_matmul_unchecked``, ``fp4_int4_matmul_unchecked``, ``int4_fp4_matmul_unchecked``: the
same products without operand validation, and ``pack_int4_unchecked`` (no scan, no copy), for the
training engine (see the end of this file).
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

#: the numpy int64 oracle: a Python-only kernel, always last and always available
_REFERENCE = "reference"
#: every kernel name, fastest first: the compiled ones in the order of the C kernel table
#: (q4core/src/gemm_kernels.h, exposed by q4core._gemm at import), then ``reference``
KERNEL_NAMES = (tuple(_gemm.KERNELS) if _gemm is not None else ()) + (_REFERENCE,)
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
    """0 (OpenMP's default) for None, else a positive int clamped to the thread limit."""
    if threads is None:
        return 0
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (numbers.Integral, np.integer)):
        raise TypeError(f"threads must be a positive int or None, got {threads!r}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return _clamp_threads(threads)


def _clamp_threads(threads):
    """At most the processors this process may run on (the C code clamps too; this also
    keeps a huge Python int from overflowing the C ``int`` it is passed as)."""
    return min(int(threads), _THREAD_LIMIT)


def _check_scale(scale, name):
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {type(scale).__name__}")
    scale = float(scale)
    if not np.isfinite(scale):
        raise ValueError(f"{name} must be finite, got {scale!r}")
    return scale


def _scaled_float32(c, factor, what):
    """The exact integers ``c`` times ``factor`` (float64) as float32; ``OverflowError`` naming ``what`` (the
    scales) where an entry would not fit in float32 - Inf (or NaN, from 0 * Inf) must not come back silently."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = (c.astype(np.float64) * factor).astype(np.float32)
    if out.size and not np.isfinite(out).all():
        raise OverflowError(f"{what} = {factor:.6g} times the integer product exceeds the float32 range "
                            f"(max {float(np.finfo(np.float32).max):.6g}); use smaller scales")
    return out


def _check_phase(phase):
    if phase not in (0, 1) or isinstance(phase, (bool, np.bool_)):
        raise ValueError(f"phase must be 0 or 1, got {phase!r}")
    return 2.0 if phase == 1 else 1.0


# --------------------------------------------------------------------------- kernel choice
#: kernel name -> id in the C kernel table; the reference has none (-1 below)
_KERNEL_ID = {name: i for i, name in enumerate(KERNEL_NAMES[:-1])}
_REFERENCE_ID = -1
#: the most threads a GEMM-side parallel region starts (gemm_threads.h): the processors this
#: process may run on and OMP_THREAD_LIMIT.  ``threads=`` and OMP_NUM_THREADS are clamped to it.
_THREAD_LIMIT = int(_gemm.thread_limit()) if _gemm is not None else 1
#: the compiled kernels usable here, fastest first (CPU features are detected once at import)
_AVAILABLE = tuple(_gemm.available_kernels()) if _gemm is not None else ()


def available_kernels():
    """Kernel names usable on this CPU and OS, fastest first; always ends with 'reference'."""
    return list(_AVAILABLE) + [_REFERENCE]


def _resolve_kernel(kernel):
    source = "kernel"
    if kernel is None:
        kernel = os.environ.get(_ENV) or None
        source = f"environment variable {_ENV}"
    if kernel is None:
        return available_kernels()[0]
    if not isinstance(kernel, str) or kernel not in KERNEL_NAMES:
        extra = "" if _gemm is not None else " (the compiled extension q4core._gemm is not built)"
        raise ValueError(f"{source} must be one of {', '.join(KERNEL_NAMES)}{extra}; got {kernel!r}")
    if kernel not in available_kernels():
        why = ("the compiled extension q4core._gemm is not built" if _gemm is None
               else _gemm.unavailable_reason(kernel))
        raise RuntimeError(f"{source}={kernel!r} is not available here: {why}. "
                           f"Available: {', '.join(available_kernels())}")
    return kernel


def _kernel_id(kernel):
    """Kernel id for a ``kernel=`` argument (None: environment or default); -1 is the reference."""
    return _KERNEL_ID.get(_resolve_kernel(kernel), _REFERENCE_ID)


# (Q4CORE_KERNEL value, kernel id) of the engine entry points' last resolution
_ENGINE_KERNEL = (object(), None)


def _engine_kernel_id():
    """The default kernel id, resolved once and again only when Q4CORE_KERNEL changes."""
    global _ENGINE_KERNEL
    env = os.environ.get(_ENV)
    cached_env, kid = _ENGINE_KERNEL
    if env != cached_env or kid is None:
        kid = _kernel_id(None)          # raises, naming Q4CORE_KERNEL, if it is bad
        _ENGINE_KERNEL = (env, kid)     # one tuple: a concurrent reader sees old or new
    return kid


def kernel_info():
    """What the CPU and OS offer, which kernels are usable, which one is chosen, threads.

    ``kernels`` is the kernel table (q4core/src/gemm_kernels.h) plus the numpy reference;
    ``threads`` is the default thread count after the clamp to ``thread_limit``."""
    env = os.environ.get(_ENV) or None
    try:
        chosen = _resolve_kernel(None)
        error = None
    except (ValueError, RuntimeError) as exc:
        chosen, error = None, str(exc)
    table = [dict(k) for k in _gemm.KERNEL_TABLE] if _gemm is not None else []
    table.append({"id": None, "name": _REFERENCE, "requires": "nothing (numpy int64 product)",
                  "row_multiple": None, "compiled": False, "supported": True})
    info = {
        "compiled": _gemm is not None,
        "cpu": _gemm.cpu_features() if _gemm is not None else {},
        "kernels": table,
        "available_kernels": available_kernels(),
        "chosen_kernel": chosen,
        "env_override": env,
        "openmp": bool(_gemm.openmp_enabled()) if _gemm is not None else False,
        "threads": int(_gemm.default_threads()) if _gemm is not None else 1,
        "thread_limit": _THREAD_LIMIT,
        "thread_clamp": ("threads= and OMP_NUM_THREADS are clamped to thread_limit: the processors "
                         "this process may run on (and OMP_THREAD_LIMIT); results do not depend on it"),
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


def _trusted_packed(arr, signed):
    """A PackedInt4 around an operand already known to hold INT4 values, for one call: no
    range scan and no private copy (nothing keeps it after the call)."""
    packed = PackedInt4.__new__(PackedInt4)
    packed.values = arr.view(np.int8)
    packed.signed = signed
    packed.shape = arr.shape
    packed._kernel_cache = {}
    return packed


def _right_int4(b, name="b"):
    """(PackedInt4, values, signed) of a right-hand INT4 operand, validated unless packed."""
    if isinstance(b, PackedInt4):
        return b, b.as_array(), b.signed
    arr, signed = _check_int4(b, name)
    return _trusted_packed(arr, signed), arr, signed


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
    packed, b_arr, _ = _right_int4(b)
    _check_inner(a.shape, b_arr.shape, "a", "b")
    nthreads = _check_threads(threads)
    return _int4_run(a, a_signed, packed, _kernel_id(kernel), nthreads)


def int4_matmul_scaled(a, b, scale_a, scale_b, **kw):
    """``scale_a * scale_b * (A @ B)`` as float32 (product formed in float64 from the exact integers);
    ``OverflowError`` if an entry does not fit in float32 (never a silent Inf)."""
    sa, sb = _check_scale(scale_a, "scale_a"), _check_scale(scale_b, "scale_b")
    c = int4_matmul(a, b, **kw)
    return _scaled_float32(c, sa * sb, "scale_a * scale_b")


def fp4_int4_matmul(g_codes, b, *, threads=None, kernel=None):
    """Exact int64 ``units(G) @ B``: FP4 gradient codes (M x K) times INT4 (K x N)."""
    g = _check_fp4(g_codes, "g_codes")
    packed, b_arr, _ = _right_int4(b)
    _check_inner(g.shape, b_arr.shape, "g_codes", "b")
    nthreads = _check_threads(threads)
    return _fp4_int4_run(g, packed, _kernel_id(kernel), nthreads)


def int4_fp4_matmul(a, g_codes, *, threads=None, kernel=None):
    """Exact int64 ``A @ units(G)``: INT4 (M x K, may be unsigned) times FP4 codes (K x N)."""
    a, a_signed = _check_int4(a, "a")
    g = _check_fp4(g_codes, "g_codes")
    _check_inner(a.shape, g.shape, "a", "g_codes")
    nthreads = _check_threads(threads)
    return _int4_fp4_run(a, a_signed, g, _kernel_id(kernel), nthreads)


def fp4_int4_matmul_scaled(g_codes, b, g_scale, b_scale, phase=0, **kw):
    """float32 ``dequant(G) @ dequant(B)`` = units product * f * 4**-6 * g_scale * b_scale; ``OverflowError``
    if an entry does not fit in float32."""
    f = _check_phase(phase)
    gs, bs = _check_scale(g_scale, "g_scale"), _check_scale(b_scale, "b_scale")
    c = fp4_int4_matmul(g_codes, b, **kw)
    return _scaled_float32(c, f * 4.0 ** -6 * gs * bs, "f * 4**-6 * g_scale * b_scale")


def int4_fp4_matmul_scaled(a, g_codes, a_scale, g_scale, phase=0, **kw):
    """float32 ``dequant(A) @ dequant(G)`` = units product * f * 4**-6 * a_scale * g_scale; ``OverflowError``
    if an entry does not fit in float32."""
    f = _check_phase(phase)
    as_, gs = _check_scale(a_scale, "a_scale"), _check_scale(g_scale, "g_scale")
    c = int4_fp4_matmul(a, g_codes, **kw)
    return _scaled_float32(c, f * 4.0 ** -6 * as_ * gs, "f * 4**-6 * a_scale * g_scale")


# --------------------------------------------------------------------------- fast path plumbing
# How INT4 and FP4 operands become the kernels' u8 x s8 products (see the module docstring):
_INT4_OFFSET = 8          # signed nibble + 8 -> 0..15, unsigned as vpdpbusd / tdpbusd need
_INT4_MAX = 15            # |INT4 operand| after the offset (or unsigned): <= 15
_FP4_HI_SHIFT = 8         # exponent group 1 (e = 5..7) is stored as units / 2**8
_FP4_GROUP_MAX = 64       # |units| of either exponent group as stored: <= 64
_FP4_LEFT_OFFSETS = (64, 16)  # FP4 on the left: + offset makes each group unsigned
_FP4_LEFT_MAX = 128       # offset left FP4 operand: <= 64 + 64
# bounds on one product |a * b| of each GEMM: they set the K chunk and the AVX2 int16 span
_INT4_INT4_BOUND = _INT4_MAX * _INT4_MAX               # 225
_FP4_INT4_BOUND = _FP4_LEFT_MAX * _INT4_MAX            # 1920
_INT4_FP4_BOUND = _INT4_MAX * _FP4_GROUP_MAX           # 960
# bound on one exact FP4 x INT4 product |units(g) * b| (units up to 4**6): with K * this inside int32
# the engine takes the combined result of both exponent groups as int32 (half the bytes of int64)
_FP4_ENTRY_BOUND = 4 ** 6 * _INT4_MAX                  # 61440


def _offset_table(signed):
    """Byte -> unsigned left operand: signed nibbles get +8 (two's complement byte in)."""
    t = np.arange(256, dtype=np.int64)
    if signed:
        t = (t.astype(np.uint8).view(np.int8).astype(np.int64) + _INT4_OFFSET)
    return (t & 0xFF).astype(np.uint8)


def _fp4_group_units(group):
    """Per-code int8 units of one exponent group (others -> 0): e 1..4, or e 5..7 divided by 256."""
    if group == 0:
        u = np.where((_E >= 1) & (_E <= 4), _FP4_UNITS, 0)
    else:
        u = np.where(_E >= 5, _FP4_UNITS // (1 << _FP4_HI_SHIFT), 0)
    return u.astype(np.int64)


def _fp4_left_table(group, offset):
    t = np.full(256, 0, np.int64)
    t[:16] = _fp4_group_units(group) + offset
    return t.astype(np.uint8)


def _frozen(x):
    x.setflags(write=False)
    return x


# byte tables, built once: (T, 256) arrays for prep_a / pack_b
_LEFT_INT4_TABLES = {True: _frozen(_offset_table(True)[None, :]),
                     False: _frozen(_offset_table(False)[None, :])}
_LEFT_FP4_TABLES = _frozen(np.stack([_fp4_left_table(0, _FP4_LEFT_OFFSETS[0]),
                                     _fp4_left_table(1, _FP4_LEFT_OFFSETS[1])]))
_RIGHT_FP4_TABLES = np.zeros((2, 256), np.int8)
_RIGHT_FP4_TABLES[0, :16], _RIGHT_FP4_TABLES[1, :16] = _fp4_group_units(0), _fp4_group_units(1)
_frozen(_RIGHT_FP4_TABLES)
_IDENTITY_TABLE = _frozen(np.arange(256, dtype=np.int64).astype(np.uint8).view(np.int8)[None, :])
# the FP4 codes of each exponent group (low: e = 1..4, high: e = 5..7, either sign)
_GROUP_CODES = (tuple(int(c) for c in _CODES if 1 <= _E[c] <= 4),
                tuple(int(c) for c in _CODES if _E[c] >= 5))


def _groups_present(seen):
    """Indices of the FP4 exponent groups with at least one code: 0 (e = 1..4), 1 (e = 5..7)."""
    flags = np.asarray(seen[:16], bool).tolist()
    return [i for i in (0, 1) if any(flags[c] for c in _GROUP_CODES[i])]


def _kernel_operand(packed, nthreads=0):
    """(packed bytes, Kp, Np, column sums int64) of a PackedInt4, built once per object.

    K is padded to a multiple of ``_gemm.K_ALIGN`` (64) and N to one of ``_gemm.PANEL_COLS``
    (16) with zeros (gemm_portable.h).
    """
    layout = packed._kernel_cache.get("layout")
    if layout is None:
        bpacked, Kp, Np, sums, _ = _gemm.pack_b(packed.values.view(np.uint8), _IDENTITY_TABLE,
                                                nthreads)
        layout = packed._kernel_cache["layout"] = (bpacked[0], Kp, Np, sums[0])
    return layout


def _kchunk(max_product):
    """The longest K chunk (a multiple of K_ALIGN) over which ``max_product * K`` - a bound on
    every int32 accumulator and on every zero-point correction - stays inside int32."""
    kchunk = (_INT32_MAX // max_product) // _gemm.K_ALIGN * _gemm.K_ALIGN
    if _KCHUNK_LIMIT is not None:
        kchunk = min(kchunk, int(_KCHUNK_LIMIT))
    return kchunk


# The three products below are shared by the public functions (after validation) and the
# engine entry points (which trust their operands), so both give the same bits by construction.
# ``kid`` is a kernel id of the C table or _REFERENCE_ID; ``nthreads`` 0 means the default.
def _int4_run(a, a_signed, packed, kid, nthreads, scale=None):
    """int32 A @ B: ``a`` 2-D int8/uint8 INT4 levels (any strides), ``packed`` a PackedInt4.  ``scale``:
    see :func:`int4_matmul_unchecked`."""
    M, K, N = a.shape[0], a.shape[1], packed.shape[1]
    if kid == _REFERENCE_ID:
        return _to_int32(_ref_product(a.astype(np.int64), packed.as_array().astype(np.int64)), K)
    if M == 0 or K == 0 or N == 0:
        return np.zeros((M, N), np.int32)
    bpacked, Kp, Np, sums = _kernel_operand(packed, nthreads)
    bufs, _ = _gemm.prep_a(a.view(np.uint8), _LEFT_INT4_TABLES[a_signed], Kp,
                           _gemm.ROW_MULTIPLES[kid], nthreads, False)
    c = _gemm.gemm((bufs[0],), M, (bpacked,), N, Kp, Np, _kchunk(_INT4_INT4_BOUND),
                   (_INT4_OFFSET if a_signed else 0,), (0,), _INT4_INT4_BOUND, kid, nthreads,
                   (sums,), False, scale)
    if c.dtype != np.int64:      # one K chunk: int32 accumulators provably did not wrap (or float32, scaled)
        return c
    return _to_int32(c, K)


def _fp4_int4_run(g, packed, kid, nthreads, narrow=False, scale=None):
    """int64 units(G) @ B: ``g`` 2-D uint8 FP4 codes 0..15 (any strides), ``packed`` a PackedInt4;
    ``narrow``: int32 instead when every exact entry provably fits (K * _FP4_ENTRY_BOUND inside int32 and
    K one chunk; see _gemm.gemm)."""
    M, K, N = g.shape[0], g.shape[1], packed.shape[1]
    if kid == _REFERENCE_ID:
        return _ref_product(_FP4_UNITS[g.astype(np.intp)], packed.as_array().astype(np.int64))
    if M == 0 or K == 0 or N == 0:
        return np.zeros((M, N), np.int64)
    bpacked, Kp, Np, sums = _kernel_operand(packed, nthreads)
    # exponents 1..4 (units +-1..64) and 5..7 (units / 256 = +-1..16) each fit int8; the
    # FP4 operand gets +64 / +16 so it is unsigned for vpdpbusd / tdpbusd, and the kernel
    # subtracts offset * column sums of B; the two int32 results combine as lo + (hi << 8)
    bufs, seen = _gemm.prep_a(g.view(np.uint8), _LEFT_FP4_TABLES, Kp, _gemm.ROW_MULTIPLES[kid],
                              nthreads)
    groups = _groups_present(seen)
    if not groups:
        return np.zeros((M, N), np.int64)
    n = len(groups)
    c = _gemm.gemm(tuple(bufs[i] for i in groups), M, (bpacked,) * n, N, Kp, Np,
                   _kchunk(_FP4_INT4_BOUND), tuple(_FP4_LEFT_OFFSETS[i] for i in groups),
                   tuple(_FP4_HI_SHIFT * i for i in groups), _FP4_INT4_BOUND, kid, nthreads,
                   (sums,) * n, narrow and K * _FP4_ENTRY_BOUND <= _INT32_MAX, scale if narrow else None)
    return c if narrow else c.astype(np.int64, copy=False)


def _int4_fp4_run(a, a_signed, g, kid, nthreads, narrow=False, scale=None):
    """int64 A @ units(G): ``a`` 2-D INT4 levels, ``g`` 2-D uint8 FP4 codes 0..15 (any strides);
    ``narrow`` as for :func:`_fp4_int4_run`."""
    M, K, N = a.shape[0], a.shape[1], g.shape[1]
    if kid == _REFERENCE_ID:
        return _ref_product(a.astype(np.int64), _FP4_UNITS[g.astype(np.intp)])
    if M == 0 or K == 0 or N == 0:
        return np.zeros((M, N), np.int64)
    bpacked, Kp, Np, sums, seen = _gemm.pack_b(g.view(np.uint8), _RIGHT_FP4_TABLES, nthreads)
    groups = _groups_present(seen)
    if not groups:
        return np.zeros((M, N), np.int64)
    bufs, _ = _gemm.prep_a(a.view(np.uint8), _LEFT_INT4_TABLES[a_signed], Kp,
                           _gemm.ROW_MULTIPLES[kid], nthreads, False)
    n = len(groups)
    c = _gemm.gemm((bufs[0],) * n, M, tuple(bpacked[i] for i in groups), N, Kp, Np,
                   _kchunk(_INT4_FP4_BOUND), ((_INT4_OFFSET if a_signed else 0),) * n,
                   tuple(_FP4_HI_SHIFT * i for i in groups), _INT4_FP4_BOUND, kid, nthreads,
                   tuple(sums[i] for i in groups), narrow and K * _FP4_ENTRY_BOUND <= _INT32_MAX,
                   scale if narrow else None)
    return c if narrow else c.astype(np.int64, copy=False)


# --------------------------------------------------------------------------- engine entry points
# The training engine calls these on operands it has just made itself, so they skip the public
# functions' validation scans (dtype / shape / range checks), resolve the kernel once (again
# only when Q4CORE_KERNEL changes) and run the same code as the public functions after their
# checks: identical results.  Preconditions are the caller's to keep - a value out of range
# gives a wrong answer, not an error; the public functions above stay the validated API.
#   a        C-contiguous 2-D int8 levels -8..7 (signed) or uint8 0..15 (unsigned); the
#            signedness is the dtype (int8 or not);
#   g_codes  C-contiguous 2-D uint8 radix-4 FP4 codes 0..15 (either phase: the phase is a
#            scale, applied by the caller);
#   b_packed a PackedInt4 from pack_int4 (a plain int8/uint8 array is accepted too, packed
#            for this call only);
#   threads  None (the default, OMP_NUM_THREADS) or a positive int; clamped like everywhere.
# Shapes must agree (checked: O(1), ValueError); empty dimensions give zeros.
def _engine_threads(threads):
    return 0 if threads is None else _clamp_threads(threads)


def _engine_packed(b):
    if isinstance(b, PackedInt4):
        return b
    b = np.asarray(b)
    return _trusted_packed(b, b.dtype.type is np.int8)


def _engine_inner(a_shape, b_shape, a_name, b_name):
    # O(1), and a mismatch would otherwise be a silently wrong (zero-padded) product
    if a_shape[1] != b_shape[0]:
        _check_inner(a_shape, b_shape, a_name, b_name)


def pack_int4_unchecked(b):
    """``pack_int4`` for an INT4 operand the engine just made (C-contiguous int8 levels -8..7 or uint8
    0..15): no range scan and no private copy - the caller must not write to ``b`` afterwards."""
    packed = _trusted_packed(b, b.dtype.type is np.int8)
    if _gemm is not None and packed.shape[0] and packed.shape[1]:
        _kernel_operand(packed)
    return packed


def _packed_from_layout(codes, layout):
    """A PackedInt4 around engine-made INT4 ``codes`` whose kernel layout (packed bytes, Kp, Np, column
    sums) was built with them (q4core.quant.encode_packed_weight_unchecked)."""
    packed = _trusted_packed(codes, codes.dtype.type is np.int8)
    packed._kernel_cache["layout"] = layout
    return packed


def int4_matmul_unchecked(a, b_packed, threads=None, scale=None):
    """``int4_matmul`` without operand checks: ``a`` int8/uint8 levels, ``b_packed`` a PackedInt4.

    ``scale = (factor, exact)`` (the engine's rescale, :func:`q4core.nn.qgemm._rescale`): when a compiled
    kernel forms the product in one K chunk, it returns the float32 ``product * factor`` rounded as that
    rescale rounds it, formed in the kernel's store (no int32 result, no pass over it); otherwise the exact
    integers as without ``scale`` - the caller tells them apart by dtype and rescales those itself.  The
    same holds for the two FP4 entry points below."""
    packed = _engine_packed(b_packed)
    _engine_inner(a.shape, packed.shape, "a", "b_packed")
    return _int4_run(a, a.dtype.type is np.int8, packed, _engine_kernel_id(),
                     _engine_threads(threads), scale)


def fp4_int4_matmul_unchecked(g_codes, b_packed, threads=None, scale=None):
    """``fp4_int4_matmul`` without operand checks: ``g_codes`` uint8 radix-4 codes, ``b_packed`` packed.
    The same exact integers, as int32 when they provably fit (K <= 34952), else int64."""
    packed = _engine_packed(b_packed)
    _engine_inner(g_codes.shape, packed.shape, "g_codes", "b_packed")
    return _fp4_int4_run(g_codes, packed, _engine_kernel_id(), _engine_threads(threads), narrow=True,
                         scale=scale)


def int4_fp4_matmul_unchecked(a, g_codes, threads=None, scale=None):
    """``int4_fp4_matmul`` without operand checks: levels ``a`` (int8/uint8) and codes ``g_codes``.
    The same exact integers, as int32 when they provably fit (K <= 34952), else int64."""
    _engine_inner(a.shape, g_codes.shape, "a", "g_codes")
    return _int4_fp4_run(a, a.dtype.type is np.int8, g_codes, _engine_kernel_id(),
                         _engine_threads(threads), narrow=True, scale=scale)
