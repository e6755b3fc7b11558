"""Fast 4-bit quantize / encode / encode+pack, bit for bit equal to :mod:`q4core.formats`.

Thin validating wrapper around the compiled :mod:`q4core._quant` (OpenMP, SIMD clones).
Formats with a compiled path (:func:`supports`):

* ``IntFormat`` of at most 4 bits with ``"nearest"`` rounding (INT4 -8..7, UINT4 0..15);
* ``RadixFP`` of at most 3 exponent bits with ``"nearest"`` or ``"log"`` rounding (the
  paper's radix-4 FP4 on either grid of two-phase rounding, radix-2 FP4, the base-10 scale).

Why it is exact: the reference's rounding is a monotone function of ``x``, so for each
level boundary there is a smallest input value (in ``x``'s own float type) from which on the
next level is taken.  Those values are found once per call by bisection over the float bit
patterns, evaluating the reference's own double arithmetic; the element loops then only
compare ``x`` with them (no division, no rounding), branch-free so they vectorize.

Inputs: any shape (0-d too), any strides (non-contiguous input is copied first), float32
or float64 (integers become float64, as in the reference).  ``threads`` is the number of
OpenMP threads (default: ``omp_get_max_threads()``, which follows ``OMP_NUM_THREADS``), clamped
to the processors OpenMP may use (``omp_get_num_procs()``): more cannot help, and a huge team
makes libgomp abort or crash.  The result does not depend on it.  NaN / Inf follow ``nan_policy``
exactly as the reference:
``'raise'`` refuses both; ``'propagate'`` keeps NaN when quantizing and saturates Inf;
``encode`` refuses NaN either way.  Under ``'raise'`` a quantized value beyond ``x``'s dtype (a
scale too large for it) raises ``ValueError`` instead of coming back as Inf, as the reference.

Fused operand makers (one pass over the float data each, bit for bit the numpy reference):
:func:`minmax_clip` and :func:`sawb_clip` (the scale statistics of :mod:`q4core.scaling`) and
:func:`encode_gradient` (a gradient on both grids of two-phase rounding plus its max |g|, which
GradScale takes).  The training engine calls their ``*_unchecked`` forms on tensors it made.

>>> from q4core.formats import INT4, RADIX4_FP4
>>> encode_packed(INT4, np.array([1.0, -2.0, 3.0], dtype=np.float32))
array([225,   3], dtype=uint8)
>>> quantize(RADIX4_FP4, [0.3, 0.7, 5.0, -1e-9])
array([ 0.25,  1.  ,  1.  , -0.  ])
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .formats import (
    NAN_CODE_MESSAGE,
    NONFINITE_MESSAGE,
    OVERFLOW_MESSAGE,
    IntFormat,
    NonFiniteError,
    RadixFP,
    _check_nan_policy,
    _check_scale,
    _check_unpack_args,
)
from .gemm import _packed_from_layout
from .scaling import sawb_from_moments

try:
    from . import _quant
except ImportError:  # pragma: no cover - only without a built extension
    _quant = None

#: True when the compiled extension is importable
AVAILABLE = _quant is not None

__all__ = ["AVAILABLE", "supports", "quantize", "encode", "encode_packed", "unpack_nibbles",
           "openmp_info", "minmax_clip", "sawb_clip", "encode_gradient", "resolve_threads"]


def openmp_info():
    """``{'openmp': bool, 'max_threads': int, 'simd_clones': str}`` of the compiled build.

    ``openmp`` is False for a serial build (no OpenMP compiler support, or
    ``Q4CORE_DISABLE_OPENMP`` set at build time); ``max_threads`` is then 1.
    """
    _require()
    return _quant.openmp_info()


def supports(fmt):
    """Whether ``fmt`` has a compiled path here (see the module docstring)."""
    if isinstance(fmt, IntFormat):
        return fmt.bits <= 4 and fmt.rounding == "nearest"
    if isinstance(fmt, RadixFP):
        return fmt.exp_bits <= 3 and fmt.rounding in ("nearest", "log")
    return False


def _require():
    if _quant is None:
        raise ImportError("q4core._quant is not built; run `python setup.py build_ext --inplace`")


def _kernel_params(fmt):
    if not supports(fmt):
        raise ValueError(f"fmt has no compiled path: {fmt!r} (see q4core.quant.supports)")
    if isinstance(fmt, IntFormat):
        return "level", (fmt.qmin, fmt.qmax)
    grid = np.concatenate(([0.0], fmt.magnitudes))
    return "signmag", (fmt.thresholds, grid, fmt.exp_bits)


def _as_input(x, name="x"):
    """C-contiguous native float32/float64 array (integers -> float64, as the reference)."""
    arr = np.asarray(x)
    if arr.dtype.kind in "iu":
        arr = arr.astype(np.float64)
    elif arr.dtype.kind != "f" or arr.dtype.itemsize not in (4, 8):
        raise TypeError(f"{name} must be float32 or float64 (or integers) for the compiled path, "
                        f"got dtype {arr.dtype}")
    dtype = np.dtype(np.float32 if arr.dtype.itemsize == 4 else np.float64)
    arr = np.asarray(arr, dtype=dtype, order="C")
    if not arr.flags.aligned:  # e.g. np.frombuffer at an odd offset: the kernels need aligned floats
        arr = arr.copy()
    return arr


def _threads(threads):
    """The thread count to run: validated, then clamped to [1, processors] here already (the
    kernels clamp again) so that a Python int beyond a C int is no OverflowError either."""
    if threads is None:
        threads = _quant.openmp_info()["max_threads"]      # OMP_NUM_THREADS may exceed the machine
    elif isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (numbers.Integral, np.integer)):
        raise TypeError(f"threads must be a positive int or None, got {type(threads).__name__}")
    elif threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return max(1, min(int(threads), _quant.num_procs()))


def _apply(what, fmt, x, scale, nan_policy, threads):
    _require()
    op = {"quantize": _quant.OP_QUANTIZE, "encode": _quant.OP_ENCODE,
          "encode_packed": _quant.OP_ENCODE_PACK}[what]
    kind, params = _kernel_params(fmt)
    _check_nan_policy(nan_policy)
    arr = _as_input(x)
    scale = _check_scale(scale)
    nthreads = _threads(threads)
    if op == _quant.OP_QUANTIZE:
        out = np.empty(arr.shape, arr.dtype)
    elif op == _quant.OP_ENCODE:
        out = np.empty(arr.shape, np.uint8)
    else:
        if arr.ndim == 0:
            raise ValueError("x must have at least one dimension to pack")
        out = np.empty(arr.shape[:-1] + ((arr.shape[-1] + 1) // 2,), np.uint8)
    flags = _quant.run(kind, op, arr, out, scale, params, nthreads)
    if nan_policy == "raise" and flags & (_quant.FLAG_NAN | _quant.FLAG_INF):
        raise NonFiniteError(NONFINITE_MESSAGE.format(name="x"))
    if op != _quant.OP_QUANTIZE and flags & _quant.FLAG_NAN:
        raise ValueError(NAN_CODE_MESSAGE.format(name="x"))
    if op == _quant.OP_QUANTIZE and nan_policy == "raise" and _may_overflow(fmt, scale, arr.dtype) \
            and np.isinf(out).any():
        # as the reference: finite input (checked above) never comes back as Inf under 'raise'
        raise ValueError(OVERFLOW_MESSAGE.format(scale=scale, dtype=arr.dtype.name))
    if op == _quant.OP_ENCODE and isinstance(fmt, IntFormat) and fmt.signed:
        out = out.view(np.int8)
    return out


#: the smallest float64 that rounds to Inf when cast to the dtype (float32: half an ulp above its
#: max, a tie that goes to the even Inf); plain floats so the check costs nothing on small calls
_INF_FROM = {np.dtype(np.float32): 2.0 ** 128 - 2.0 ** 103, np.dtype(np.float64): math.inf}


def _may_overflow(fmt, scale, dtype):
    """Whether the largest value of fmt at this scale, formed as the kernels form it (a float64
    product cast to ``dtype``), is Inf - only then can a finite input quantize to Inf, and only
    then is ``out`` scanned."""
    top = float(max(-fmt.qmin, fmt.qmax) if isinstance(fmt, IntFormat) else fmt.max) * scale
    return top >= _INF_FROM[dtype]


def quantize(fmt, x, scale=1.0, *, nan_policy="raise", threads=None):
    """``fmt.quantize(x, scale)`` (float -> float on the grid), compiled; same dtype as ``x``."""
    return _apply("quantize", fmt, x, scale, nan_policy, threads)


def encode(fmt, x, scale=1.0, *, nan_policy="raise", threads=None):
    """``fmt.encode(x, scale)``, compiled: int8 for signed ``IntFormat``, else uint8."""
    return _apply("encode", fmt, x, scale, nan_policy, threads)


def encode_packed(fmt, x, scale=1.0, *, nan_policy="raise", threads=None):
    """``pack_nibbles(fmt.encode(x, scale))`` in one pass: uint8, last axis halved (rounded up).

    Element ``2*i`` of each row goes to the low nibble of byte ``i``, ``2*i + 1`` to the high
    nibble; an odd row length leaves its last high nibble zero.  Needs ``fmt.bits <= 4``.
    """
    if getattr(fmt, "bits", 99) > 4:
        raise ValueError(f"fmt must have at most 4 bits to pack two codes per byte, got {fmt!r}")
    return _apply("encode_packed", fmt, x, scale, nan_policy, threads)


def unpack_nibbles(packed, n, *, signed=False, threads=None):
    """Compiled :func:`q4core.formats.unpack_nibbles`: ``n`` codes along the last axis.

    ``signed=True`` sign-extends each nibble (int8, -8..7); otherwise uint8 0..15.
    """
    _require()
    arr = np.asarray(packed)
    if arr.dtype != np.uint8:
        raise TypeError(f"packed must be uint8, got {arr.dtype}")
    if arr.ndim == 0:
        raise ValueError("packed must have at least one dimension")
    _check_unpack_args(n, signed)
    if n < 0 or (n + 1) // 2 != arr.shape[-1]:
        raise ValueError(f"n={n!r} does not match the packed length {arr.shape[-1]}")
    arr = np.asarray(arr, order="C")
    out = np.empty(arr.shape[:-1] + (int(n),), np.uint8)
    _quant.unpack(arr, out, bool(signed), _threads(threads))
    return out.view(np.int8) if signed else out


# --------------------------------------------------------------------------- fused operand makers
_PARAMS = {}


def _cached_params(fmt):
    """(kind, params) of a supported format, computed once per format object (keyed by identity:
    a format's hash formats its repr, which would cost more than the lookup saves)."""
    entry = _PARAMS.get(id(fmt))
    if entry is None or entry[0] is not fmt:
        if len(_PARAMS) > 256:          # formats made on the fly: keep the cache small
            _PARAMS.clear()
        entry = _PARAMS[id(fmt)] = (fmt, _kernel_params(fmt))
    return entry[1]


def _fast_float(x):
    """``x`` as an aligned C-contiguous native float32/float64 array, or None (other dtypes)."""
    arr = np.asarray(x)
    if arr.dtype.kind != "f" or arr.dtype.itemsize not in (4, 8):
        return None
    arr = np.asarray(arr, dtype=np.dtype(f"=f{arr.dtype.itemsize}"), order="C")
    return arr if arr.flags.aligned else arr.copy()


def resolve_threads(threads=None):
    """The thread count the compiled makers run for a ``threads=`` argument (None: OpenMP's default
    now), validated and clamped; the engine resolves it once and passes the int to ``*_unchecked``."""
    _require()
    return _threads(threads)


def _engine_threads(threads):
    return threads if type(threads) is int and threads >= 1 else _threads(threads)


def minmax_unchecked(x, threads=None):
    """``(max, min, flags)`` of an aligned C-contiguous float32/float64 ``x`` (engine entry point)."""
    return _quant.minmax(x, _engine_threads(threads))


def minmax_clip(x, unsigned=False, *, threads=None):
    """Compiled :func:`q4core.scaling.minmax_clip` (max|x|, or max x for ``unsigned``), one pass."""
    _require()
    arr = _fast_float(x)
    if arr is None:
        from .scaling import minmax_clip as reference
        return reference(x, unsigned)
    if arr.size == 0:
        return 0.0
    hi, lo, flags = minmax_unchecked(arr, _threads(threads))
    if flags:
        raise NonFiniteError("x contains NaN or Inf; a range cannot be estimated from it")
    return max(hi, 0.0) if unsigned else max(abs(hi), abs(lo))


def sawb_clip_unchecked(w):
    """SAWB clip of an aligned C-contiguous float32/float64 ``w`` (engine entry point): the
    moments in one pass, summed in numpy's pairwise order.  Raises as the reference does."""
    if w.size == 0:
        return 0.0
    sq, ab, top, flags = _quant.moments(w)
    if flags:
        raise NonFiniteError("w contains NaN or Inf; a range cannot be estimated from it")
    if top == 0.0:
        return 0.0
    return sawb_from_moments(sq / w.size, ab / w.size, top)


def sawb_clip(w):
    """Compiled :func:`q4core.scaling.sawb_clip` (default coefficients), bit for bit: one pass for
    ``mean(w**2)``, ``mean(|w|)`` and ``max|w|``.  numpy sums a non-C-contiguous array in its memory
    order, so such input (and other dtypes) is left to the reference."""
    _require()
    arr = np.asarray(w)
    if arr.dtype.kind != "f" or arr.dtype.itemsize not in (4, 8) or not arr.flags.c_contiguous \
            or not arr.flags.aligned:
        from .scaling import sawb_clip as reference
        return reference(w)
    return sawb_clip_unchecked(_fast_float(arr))


def encode_gradient_unchecked(fmt_dx, fmt_dw, g, scale, threads=None):
    """``(codes_dx, codes_dw, max, min, flags)`` of an aligned C-contiguous float32/float64 ``g`` in
    one pass (engine entry point): ``codes_dw`` is ``codes_dx`` itself when ``fmt_dw`` is ``fmt_dx``
    or None.  NaN / Inf are only flagged: the codes are then meaningless.  Codes of a signed
    ``IntFormat`` are int8 (as ``encode`` gives them), else uint8; both formats of one kind."""
    k0, p0 = _cached_params(fmt_dx)
    out0 = np.empty(g.shape, np.uint8)
    if fmt_dw is None or fmt_dw is fmt_dx:
        hi, lo, flags = _quant.encode_pair(g, scale, k0, p0, out0, None, None, out0, _engine_threads(threads))
        out1 = out0
    else:
        k1, p1 = _cached_params(fmt_dw)
        out1 = np.empty(g.shape, np.uint8)
        hi, lo, flags = _quant.encode_pair(g, scale, k0, p0, out0, k1, p1, out1, _engine_threads(threads))
    if isinstance(fmt_dx, IntFormat) and fmt_dx.signed:
        out0 = out0.view(np.int8)
        out1 = out1.view(np.int8) if isinstance(fmt_dw, IntFormat) and fmt_dw.signed else out0
    return out0, out1, hi, lo, flags


def encode_gradient(fmt_dx, fmt_dw, g, scale, *, threads=None):
    """A gradient on two grids at one scale and its max |g|, in one pass over ``g``:
    ``(fmt_dx.encode(g, scale), fmt_dw.encode(g, scale), max(g.max(), -g.min()))`` bit for bit
    (two-phase rounding: ``fmt_dx`` the even grid into dL/dx, ``fmt_dw`` the odd grid into dL/dW;
    ``fmt_dw=None`` returns the first codes twice).  Either format may be any with a compiled path
    (:func:`supports`).  NaN or Inf in ``g`` raise ``ValueError`` as ``encode`` does; an empty ``g``
    has max 0.0."""
    _require()
    for name, fmt in (("fmt_dx", fmt_dx), ("fmt_dw", fmt_dw)):
        if (fmt is not None or name == "fmt_dx") and not supports(fmt):
            raise ValueError(f"{name} has no compiled path: {fmt!r} (see q4core.quant.supports)")
    if fmt_dw is not None and type(fmt_dw) is not type(fmt_dx):
        raise ValueError(f"fmt_dx and fmt_dw must be of one kind, got {fmt_dx!r} and {fmt_dw!r}")
    arr = _as_input(g, "g")
    scale = _check_scale(scale)
    c0, c1, hi, lo, flags = encode_gradient_unchecked(fmt_dx, fmt_dw, arr, scale, _threads(threads))
    if flags:
        raise NonFiniteError(NONFINITE_MESSAGE.format(name="g"))
    return c0, c1, (max(hi, -lo) if arr.size else 0.0)


def encode_unchecked(fmt, x, scale, threads=None):
    """``encode(fmt, x, scale)`` for an aligned C-contiguous float32/float64 ``x`` (engine entry point:
    no argument validation; the format's parameters are cached).  NaN / Inf raise as in ``encode``."""
    kind, params = _cached_params(fmt)
    out = np.empty(x.shape, np.uint8)
    if _quant.run(kind, _quant.OP_ENCODE, x, out, scale, params, _engine_threads(threads)):
        raise NonFiniteError(NONFINITE_MESSAGE.format(name="x"))
    return out.view(np.int8) if isinstance(fmt, IntFormat) and fmt.signed else out


def rescale_unchecked(acc, factor, exact_f32, threads=None):
    """float32 ``acc * factor`` of an exact integer GEMM result (C-contiguous int32/int64), rounded as
    :func:`q4core.nn.qgemm._rescale` rounds it (``exact_f32``: every |acc| < 2**24, product in float32),
    in one pass (engine entry point)."""
    return _quant.rescale(acc, float(factor), bool(exact_f32), _engine_threads(threads))


def pact_backward_unchecked(x, grad, clip, threads=None):
    """PACT's straight-through backward for C-contiguous float32 ``x`` and ``grad`` of one shape, in one
    pass (engine entry point): ``(grad * ((x >= 0) - over), np.sum(grad * over, dtype=np.float64))`` with
    ``over = x >= float32(clip)`` as float32 0 / 1, bit for bit (the sum in numpy's order)."""
    return _quant.pact_backward(x, grad, np.float32(clip), _engine_threads(threads))


def encode_packed_weight_unchecked(fmt, w, scale):
    """``(codes, PackedInt4)`` of a 2-D aligned C-contiguous float32/float64 weight on an integer format:
    ``encode(fmt, w, scale)`` and ``gemm.pack_int4`` of it, built in one read of ``w`` (engine entry
    point; same bytes as encoding then packing, tested).  NaN / Inf raise as in ``encode``."""
    kind, params = _cached_params(fmt)
    codes, bpacked, Kp, Np, sums, flags = _quant.encode_pack_b(w, scale, kind, params)
    if flags:
        raise NonFiniteError(NONFINITE_MESSAGE.format(name="x"))
    if fmt.signed:
        codes = codes.view(np.int8)
    return codes, _packed_from_layout(codes, (bpacked, Kp, Np, sums))
