"""Number formats of 4-bit training and their numpy reference quantizers.

Everything here is plain numpy and is the *ground truth*: every fast path in
``q4core`` (Cython quantizers, integer GEMMs) is tested bit for bit against it.

A format is a small explicit object (in the spirit of QPyTorch's ``number.py``)
that knows its grid.  Each one offers

``quantize(x, scale=1.0, rng=None)``
    float -> float on the grid (same float dtype as ``x``; integers become float64);
``encode(x, scale=1.0, rng=None)``
    float -> integer codes;
``decode(codes, scale=1.0)``
    codes -> float64 values;
``values``
    every representable value at ``scale == 1``, sorted, as float64.

Rounding modes and their tie rules (named, because an unnamed tie rule bites):

* ``IntFormat``: ``"nearest"`` rounds half to even (``np.rint``);
* ``RadixFP``: ``"nearest"`` rounds to the nearest grid value in the linear domain,
  ties away from zero (to the larger magnitude); ``"log"`` rounds to the nearest in
  the log domain (threshold at the geometric mean), ties away from zero;
* ``MiniFloat``: ``"nearest"`` rounds half to even on the last mantissa bit, as IEEE 754;
* everywhere, ``"stochastic"`` rounds up with probability equal to the distance from the
  lower neighbour divided by the gap, so it is unbiased inside the range; it needs
  ``rng`` (an ``int`` seed or a ``numpy.random.Generator``) and draws ``rng.random(x.shape)``.

All arithmetic is done in float64: ``y = float64(x) / scale`` is compared with the grid,
and the result ``q * scale`` is formed in float64 and then cast to ``x``'s dtype (byte-swapped
input gives the native dtype of the same width; longdouble is refused rather than rounded twice).
``x / scale`` beyond float64 saturates like any large value.  A grid value times ``scale`` that is
beyond ``x``'s dtype (``INT4.quantize(np.float32([3.4e38]), 6e37)``: level 6, 3.6e38) raises
``ValueError`` under ``nan_policy='raise'`` - a finite input never comes back as Inf - and becomes
Inf under ``'propagate'`` (IEEE minifloats overflow to Inf by design).  None of this warns.
``quantize`` turns NaN (allowed only with ``nan_policy='propagate'``) into the canonical
quiet NaN carrying the sign of the input, so results are defined bit for bit.

Backends: ``quantize`` and ``encode`` take ``backend="auto"|"numpy"|"cython"``.  The
numpy code in this module is the reference.  INT4/UINT4 (any ``IntFormat`` of at most
4 bits) and ``RadixFP`` formats of at most 3 exponent bits with ``"nearest"`` or ``"log"``
rounding have a compiled OpenMP path in :mod:`q4core.quant` that agrees bit for bit;
``"auto"`` takes it for native float32/float64 input when the extension is built,
``"cython"`` insists on it (error otherwise), ``"numpy"`` never takes it.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "NonFiniteError", "NumberFormat", "IntFormat", "RadixFP", "MiniFloat",
    "INT4", "INT4_SYM", "UINT4", "INT8", "RADIX4_FP4", "RADIX4_FP4_ODD", "RADIX2_FP4", "LOG10_4BIT",
    "E2M1", "FP8_E4M3", "FP8_E5M2", "FP16",
    "pack_nibbles", "unpack_nibbles", "image_to_levels", "levels_to_image",
    "FORMAT_NAMES", "get_format",
]

_ROUNDINGS = ("nearest", "stochastic")
_NAN_POLICIES = ("raise", "propagate")
_BACKENDS = ("auto", "numpy", "cython")

#: messages shared with the compiled path in :mod:`q4core.quant`, so both raise the same error
NONFINITE_MESSAGE = ("{name} contains NaN or Inf, which this format cannot hold "
                     "(pass nan_policy='propagate' to keep NaN and saturate Inf)")
NAN_CODE_MESSAGE = "{name} contains NaN, which has no code in this format"
FN_NONFINITE_MESSAGE = ("{name} contains NaN or Inf (pass nan_policy='propagate' to map NaN to this "
                        "format's NaN code and saturate Inf; the format has no Inf)")
#: a finite-only format under nan_policy='raise' never returns Inf: a grid value times the scale
#: beyond x's dtype is a scale that does not fit x's dtype, reported rather than cast to Inf
OVERFLOW_MESSAGE = ("x quantized with scale={scale!r} has values beyond the largest finite {dtype} "
                    "(they would become Inf): use a smaller scale or a wider dtype for x")


# --------------------------------------------------------------------------- validation
def _check_scale(scale, name="scale"):
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0.0:
        raise ValueError(f"{name} must be a finite positive number, got {scale!r}")
    return scale


def _as_float_array(x, name="x"):
    """Return ``x`` as a native-order float16/32/64 array (integers -> float64); refuse the rest.

    Byte-swapped floats (``'>f4'`` on a little-endian machine) keep their width, so they give
    the same values and dtype as native input.  Wider floats (longdouble) are refused: taking
    them through float64 first would round twice, so the caller must choose the conversion."""
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        if arr.dtype.itemsize not in (2, 4, 8):
            raise TypeError(f"{name} must hold float16, float32 or float64 numbers (or integers), got dtype "
                            f"{arr.dtype}: convert it explicitly (through float64 it could round twice)")
        native = np.dtype(f"=f{arr.dtype.itemsize}")
        return arr if arr.dtype == native else arr.astype(native)
    if arr.dtype.kind in "iu":
        return arr.astype(np.float64)
    raise TypeError(f"{name} must hold real floating-point or integer numbers, got dtype {arr.dtype}")


def _check_nan_policy(nan_policy):
    if nan_policy not in _NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {_NAN_POLICIES}, got {nan_policy!r}")


class NonFiniteError(ValueError):
    """NaN or Inf given to a format that cannot hold them (under ``nan_policy='raise'``).  A ``ValueError``
    like any bad argument; its own type lets the trainer tell a model whose activations overflowed (divergence)
    from a bad argument."""


def _check_finite(arr, name, nan_policy, message=NONFINITE_MESSAGE):
    """Raise :class:`NonFiniteError` on NaN or Inf when ``nan_policy == 'raise'``."""
    if nan_policy == "raise" and arr.size and not np.isfinite(arr).all():
        raise NonFiniteError(message.format(name=name))


def _to_dtype(out, dtype, scale, nan_policy):
    """The float64 result ``out`` cast to x's ``dtype``, silently where it overflows to Inf except
    under ``nan_policy='raise'``, which promises a finite result for finite input."""
    with np.errstate(over="ignore"):
        res = out.astype(dtype, copy=False)
    if nan_policy == "raise" and res.size and np.isinf(res).any():
        raise ValueError(OVERFLOW_MESSAGE.format(scale=scale, dtype=np.dtype(dtype).name))
    return res


def _check_no_nan(arr, name="x"):
    """``encode`` refuses NaN whatever the policy: no format here has a code for it
    except the IEEE minifloats, which handle NaN themselves."""
    if arr.size and np.isnan(arr).any():
        raise ValueError(NAN_CODE_MESSAGE.format(name=name))


def _canonical_nan(out, arr):
    """Replace NaN in the float64 result ``out`` by the quiet NaN with the sign of ``arr``."""
    nan = np.isnan(out)
    if nan.any():
        out = np.where(nan, np.copysign(np.nan, arr), out)
    return out


def _check_backend(backend):
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")


def _compiled_module():
    """``q4core.quant`` when its extension is built, else None (imported lazily: it imports us)."""
    try:
        from . import quant
    except ImportError:  # pragma: no cover - only without a built extension
        return None
    return quant if quant.AVAILABLE else None


def _as_generator(rng, name="rng"):
    if rng is None:
        raise ValueError(f"stochastic rounding needs {name}: an int seed or a numpy.random.Generator")
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (numbers.Integral, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"{name} must be an int seed or a numpy.random.Generator, got {type(rng).__name__}")


def _as_codes(codes, name="codes"):
    arr = np.asarray(codes)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return arr


class NumberFormat:
    """Common behaviour: validation, output dtype and ``q(q(x)) == q(x)``."""

    rounding = "nearest"
    bits = 0

    def _prepare(self, x, scale, nan_policy, name="x"):
        _check_nan_policy(nan_policy)
        arr = _as_float_array(x, name)
        scale = _check_scale(scale)
        _check_finite(arr, name, nan_policy)
        return arr, scale

    def _uniform(self, rng, shape):
        return _as_generator(rng).random(shape)

    def _fast_path(self, x, backend):
        """The compiled module when ``backend`` and the input ``x`` call for it, else None.

        The compiled path validates its input itself (same errors as the reference)."""
        _check_backend(backend)
        if backend == "numpy":
            return None
        quant = _compiled_module()
        if quant is None:
            if backend == "cython":
                raise ImportError("backend='cython' needs the compiled extension q4core._quant; "
                                  "build it with `python setup.py build_ext --inplace`")
            return None
        if not quant.supports(self):
            if backend == "cython":
                raise ValueError(f"backend='cython' has no compiled path for {self!r}")
            return None
        dtype = x.dtype if isinstance(x, np.ndarray) else np.asarray(x).dtype
        # either byte order: q4core.quant hands the kernels a native copy of byte-swapped input
        if dtype.kind != "f" or dtype.itemsize not in (4, 8):
            if backend == "cython":
                raise TypeError(f"backend='cython' needs float32 or float64 input, got {dtype}")
            return None
        return quant

    @property
    def max(self):
        """Largest finite representable value at scale 1."""
        v = self.values
        return float(v[np.isfinite(v)].max())

    def quantize(self, x, scale=1.0, rng=None, nan_policy="raise"):  # pragma: no cover - abstract
        raise NotImplementedError

    def __eq__(self, other):
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self):
        return hash(repr(self))


# --------------------------------------------------------------------------- integers
class IntFormat(NumberFormat):
    """Uniform integer grid: ``value = scale * q`` with ``q`` in ``[qmin, qmax]``.

    ``IntFormat(4)`` is INT4 (-8..7); ``IntFormat(4, signed=False)`` is UINT4 (0..15);
    ``IntFormat(4, symmetric=True)`` is INT4_SYM (-7..7: the symmetric grid SAWB and the paper's
    weights use, so that ``-q`` is on the grid whenever ``q`` is).
    ``"nearest"`` rounds half to even; values beyond the range saturate (Inf too, with
    ``nan_policy='propagate'``).  A zero result is always ``+0.0``: the integer grid has one
    zero, so ``quantize(x) == decode(encode(x))`` bit for bit.
    ``encode`` returns ``q`` itself as int8/uint8 (int16/uint16 above 8 bits).

    >>> INT4.quantize([0.4, 0.5, 1.5, -9.0, 100.0])
    array([ 0.,  0.,  2., -8.,  7.])
    """

    def __init__(self, bits, signed=True, rounding="nearest", symmetric=False):
        if not isinstance(bits, (numbers.Integral, np.integer)) or not 2 <= bits <= 16:
            raise ValueError(f"bits must be an integer in [2, 16], got {bits!r}")
        if rounding not in _ROUNDINGS:
            raise ValueError(f"rounding must be one of {_ROUNDINGS}, got {rounding!r}")
        for name, flag in (("signed", signed), ("symmetric", symmetric)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        if symmetric and not signed:
            raise ValueError("symmetric=True needs signed=True (an unsigned grid has no negative side)")
        self.bits = int(bits)
        self.signed = bool(signed)
        self.symmetric = bool(symmetric)
        self.rounding = rounding
        self.qmax = (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1
        self.qmin = (-self.qmax if self.symmetric else -(1 << (self.bits - 1))) if self.signed else 0

    def __repr__(self):
        return (f"IntFormat(bits={self.bits}, signed={self.signed}"
                f"{', symmetric=True' if self.symmetric else ''}, rounding={self.rounding!r}"
                f"{', ties=half-to-even' if self.rounding == 'nearest' else ''})")

    @property
    def code_dtype(self):
        if self.bits <= 8:
            return np.int8 if self.signed else np.uint8
        return np.int16 if self.signed else np.uint16

    @property
    def values(self):
        return np.arange(self.qmin, self.qmax + 1, dtype=np.float64)

    def _levels(self, arr, scale, rng):
        """Integer levels (float64) of ``arr / scale``; NaN stays NaN."""
        with np.errstate(over="ignore", under="ignore"):  # x / scale beyond float64 saturates
            y = arr.astype(np.float64) / scale
        if self.rounding == "nearest":
            q = np.rint(y)
        else:
            q = np.floor(y + self._uniform(rng, y.shape))
        # + 0.0 turns -0.0 into +0.0 (one zero); explicit comparisons keep NaN and do not
        # depend on how np.clip orders its min/max on signed zeros
        q = q + 0.0
        q = np.where(q < self.qmin, float(self.qmin), q)
        return np.where(q > self.qmax, float(self.qmax), q)

    def quantize(self, x, scale=1.0, rng=None, nan_policy="raise", backend="auto"):
        if (quant := self._fast_path(x, backend)) is not None:
            return quant.quantize(self, x, scale, nan_policy=nan_policy)
        arr, scale = self._prepare(x, scale, nan_policy)
        with np.errstate(over="ignore", under="ignore"):
            out = _canonical_nan(self._levels(arr, scale, rng) * scale, arr)
        return _to_dtype(out, arr.dtype, scale, nan_policy)

    def encode(self, x, scale=1.0, rng=None, nan_policy="raise", backend="auto"):
        if (quant := self._fast_path(x, backend)) is not None:
            return quant.encode(self, x, scale, nan_policy=nan_policy)
        arr, scale = self._prepare(x, scale, nan_policy)
        _check_no_nan(arr)
        return self._levels(arr, scale, rng).astype(self.code_dtype)

    def decode(self, codes, scale=1.0):
        codes = _as_codes(codes)
        scale = _check_scale(scale)
        if codes.size and (codes.min() < self.qmin or codes.max() > self.qmax):
            raise ValueError(f"codes must lie in [{self.qmin}, {self.qmax}] for {self!r}")
        return codes.astype(np.float64) * scale


def image_to_levels(image, bits=4):
    """Map a grey image in [0, 1] linearly onto the signed ``bits``-bit integers and round.

    The article's picture: [0, 1] -> [-8, 7] for 4 bits, i.e. ``x * 15 - 8``, rounded
    half to even.  Returns the integer levels as int16.

    >>> image_to_levels(0.3)     # 0.3 * 15 - 8 = -3.5 -> -4 (half to even)
    array(-4, dtype=int16)
    >>> image_to_levels([0.0, 1.0, 0.5])
    array([-8,  7,  0], dtype=int16)
    """
    arr = _as_float_array(image, "image").astype(np.float64)
    lo, hi = _image_levels(bits)
    # no nan_policy here: an image with NaN or Inf has no levels at all
    if arr.size and not np.isfinite(arr).all():
        raise ValueError("image contains NaN or Inf; image values must lie in [0, 1]")
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        raise ValueError("image values must lie in [0, 1]")
    return np.asarray(np.rint(arr * (hi - lo) + lo)).astype(np.int16)   # 0-d stays an array


def levels_to_image(levels, bits=4):
    """Inverse of :func:`image_to_levels`: integer levels (in the ``bits``-bit range) back to grey
    values in [0, 1]."""
    lo, hi = _image_levels(bits)
    levels = _as_codes(levels, "levels")
    if levels.size and (levels.min() < lo or levels.max() > hi):
        raise ValueError(f"levels must lie in [{lo}, {hi}] for bits={bits}")
    return (levels.astype(np.float64) - lo) / (hi - lo)


def _image_levels(bits):
    """(lowest, highest) signed level of ``bits`` bits; one bit has the two levels -1 and 0."""
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (numbers.Integral, np.integer)):
        raise TypeError(f"bits must be an int, got {bits!r}")
    if not 1 <= bits <= 15:                             # int16 levels
        raise ValueError(f"bits must be an integer in [1, 15], got {bits!r}")
    bits = int(bits)
    return (-1, 0) if bits == 1 else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)


# --------------------------------------------------------------------------- log formats
class RadixFP(NumberFormat):
    """Sign + exponent, no mantissa: magnitudes are powers of ``radix`` times a scale.

    Code layout (``1 + exp_bits`` bits): bit ``exp_bits`` is the sign, the low ``exp_bits``
    bits are the exponent field ``e``.  ``e == 0`` means zero; ``e = 1 .. 2**exp_bits - 1``
    means the magnitude ``scale * f * radix**(e - bias)`` with ``bias = 2**exp_bits - 1``
    by default, so the largest magnitude is ``f * scale``.  ``f`` is 1 for ``phase=0`` and
    ``sqrt(radix)`` for ``phase=1`` (the odd grid of two-phase rounding: ``{2 * 4**n}`` for
    radix 4).  ``RadixFP(4, 3)`` is the paper's radix-4 FP4: 7 magnitudes ``4**-6 .. 4**0``
    (a ``4**6 = 2**12`` dynamic range).

    Rounding: ``"nearest"`` in the linear domain - between neighbours ``m_lo < m_hi`` the
    threshold is the arithmetic midpoint (``4**n / 1.6`` for radix 4), ties away from zero;
    ``"log"`` - threshold at the geometric mean ``sqrt(m_lo * m_hi)``, ties away from zero;
    ``"stochastic"`` - up with probability ``(|y| - m_lo) / (m_hi - m_lo)``.
    Underflow: below the smallest magnitude ``m_1`` the lower neighbour is 0, so
    ``"nearest"`` flushes ``|y| < m_1 / 2`` to zero, ``"log"`` flushes ``|y| < m_1 / sqrt(radix)``.
    Overflow saturates at the largest magnitude (Inf too, with ``nan_policy='propagate'``).
    Zero keeps the sign of its input: ``quantize(-1e-30) == -0.0`` and its code has the sign bit.

    >>> RADIX4_FP4.quantize([0.3, 0.7, 5.0, -1e-9])
    array([ 0.25,  1.  ,  1.  , -0.  ])
    """

    def __init__(self, radix=4, exp_bits=3, phase=0, rounding="nearest", bias=None):
        if not isinstance(radix, (numbers.Integral, np.integer)) or radix < 2:
            raise ValueError(f"radix must be an integer >= 2, got {radix!r}")
        if not isinstance(exp_bits, (numbers.Integral, np.integer)) or not 1 <= exp_bits <= 6:
            raise ValueError(f"exp_bits must be an integer in [1, 6], got {exp_bits!r}")
        if rounding not in ("nearest", "log", "stochastic"):
            raise ValueError(f"rounding must be 'nearest', 'log' or 'stochastic', got {rounding!r}")
        if phase not in (0, 1):
            raise ValueError(f"phase must be 0 or 1, got {phase!r}")
        if bias is not None and (isinstance(bias, (bool, np.bool_))
                                 or not isinstance(bias, (numbers.Integral, np.integer))):
            raise TypeError(f"bias must be an int or None, got {bias!r}")
        root = math.isqrt(int(radix))
        if phase == 1 and root * root != radix:
            raise ValueError(f"phase=1 needs a radix that is a perfect square (4, 16, ...), got {radix}")
        self.radix = int(radix)
        self.exp_bits = int(exp_bits)
        self.bits = 1 + self.exp_bits
        self.phase = int(phase)
        self.rounding = rounding
        self.emax = (1 << self.exp_bits) - 1
        self.bias = self.emax if bias is None else int(bias)
        self.factor = float(root) if phase == 1 else 1.0
        e = np.arange(1, self.emax + 1, dtype=np.float64)
        with np.errstate(over="ignore", under="ignore"):  # judged below
            #: magnitudes m_1 < ... < m_emax at scale 1 (float64, exact for radix 2 and 4)
            self.magnitudes = self.factor * np.power(float(self.radix), e - self.bias)
            lower = np.concatenate(([0.0], self.magnitudes[:-1]))
            if rounding == "log":
                first = self.magnitudes[0] / math.sqrt(self.radix)
                self.thresholds = np.concatenate(([first], np.sqrt(lower[1:] * self.magnitudes[1:])))
            else:
                #: |y| >= thresholds[k] means exponent field >= k + 1
                self.thresholds = (lower + self.magnitudes) / 2.0
        # a grid with Inf (bias=-600: 4**606) or zeros (bias=600) would quantize finite input to
        # Inf or collapse codes; every magnitude and threshold must be finite, positive, increasing
        for arr in (self.magnitudes, self.thresholds):
            if not (np.isfinite(arr).all() and arr[0] > 0 and np.all(np.diff(arr) > 0)):
                raise ValueError(f"bias={self.bias} puts the grid of RadixFP({self.radix}, {self.exp_bits}) "
                                 f"(magnitudes {self.factor:g} * {self.radix}**(e - bias), e = 1..{self.emax}) "
                                 f"or its {rounding!r} thresholds outside the finite positive float64 numbers")

    def __repr__(self):
        ties = ", ties=away-from-zero" if self.rounding in ("nearest", "log") else ""
        return (f"RadixFP(radix={self.radix}, exp_bits={self.exp_bits}, phase={self.phase}, "
                f"bias={self.bias}, rounding={self.rounding!r}{ties})")

    @property
    def values(self):
        m = self.magnitudes
        return np.concatenate((-m[::-1], [0.0], m))

    @property
    def max(self):
        return float(self.magnitudes[-1])

    def _exponents(self, arr, scale, rng):
        """Exponent field (int64, 0 = zero) of ``|arr| / scale``; NaN gives -1."""
        with np.errstate(over="ignore", under="ignore"):  # |x| / scale beyond float64 saturates
            a = np.abs(arr.astype(np.float64)) / scale
        e = np.searchsorted(self.thresholds, a, side="right").astype(np.int64)
        if self.rounding == "stochastic":
            # e is now the nearest-by-midpoint field; recompute the bracketing pair instead
            grid = np.concatenate(([0.0], self.magnitudes))
            lo = np.searchsorted(grid, a, side="right") - 1          # grid[lo] <= a
            lo = np.clip(lo, 0, self.emax)
            hi = np.minimum(lo + 1, self.emax)
            gap = grid[hi] - grid[lo]
            with np.errstate(invalid="ignore", divide="ignore"):
                p = np.where(gap > 0, (a - grid[lo]) / np.where(gap > 0, gap, 1.0), 0.0)
            up = self._uniform(rng, a.shape) < p
            e = np.where(up, hi, lo).astype(np.int64)
        if arr.size:
            e = np.where(np.isnan(a), -1, e)
        return e

    def quantize(self, x, scale=1.0, rng=None, nan_policy="raise", backend="auto"):
        if (quant := self._fast_path(x, backend)) is not None:
            return quant.quantize(self, x, scale, nan_policy=nan_policy)
        arr, scale = self._prepare(x, scale, nan_policy)
        e = self._exponents(arr, scale, rng)
        grid = np.concatenate(([0.0], self.magnitudes))
        with np.errstate(over="ignore", under="ignore"):
            mag = np.where(e >= 0, grid[np.maximum(e, 0)], np.nan) * scale
        return _to_dtype(np.copysign(mag, arr.astype(np.float64)), arr.dtype, scale, nan_policy)

    def encode(self, x, scale=1.0, rng=None, nan_policy="raise", backend="auto"):
        """Codes as uint8: ``sign << exp_bits | e`` (sign from the sign bit of ``x``)."""
        if (quant := self._fast_path(x, backend)) is not None:
            return quant.encode(self, x, scale, nan_policy=nan_policy)
        arr, scale = self._prepare(x, scale, nan_policy)
        _check_no_nan(arr)
        e = self._exponents(arr, scale, rng)
        sign = np.signbit(arr).astype(np.int64)
        return ((sign << self.exp_bits) | e).astype(np.uint8)

    def decode(self, codes, scale=1.0):
        codes = _as_codes(codes)
        scale = _check_scale(scale)
        if codes.size and (codes.min() < 0 or codes.max() >= (1 << self.bits)):
            raise ValueError(f"codes must lie in [0, {(1 << self.bits) - 1}] for {self!r}")
        codes = codes.astype(np.int64)
        e = codes & self.emax
        grid = np.concatenate(([0.0], self.magnitudes))
        mag = grid[e] * scale
        return np.where((codes >> self.exp_bits) & 1, -mag, mag)

    def with_phase(self, phase):
        """The same format on the other grid of two-phase rounding."""
        return RadixFP(self.radix, self.exp_bits, phase, self.rounding, self.bias)


# --------------------------------------------------------------------------- minifloats
class MiniFloat(NumberFormat):
    """Binary floating point with ``exp_bits`` exponent and ``man_bits`` mantissa bits.

    ``value = (-1)**s * 2**(E - bias) * (1 + M / 2**man_bits)`` for exponent field
    ``E >= 1``, subnormals ``2**(1 - bias) * M / 2**man_bits`` for ``E == 0``; the code is the
    bit pattern ``s | E | M``.  Three conventions for the top of the range:

    * ``ieee=True`` (the default): the top exponent field is reserved for Inf (``M == 0``) and
      NaN (IEEE 754: FP16, FP8 E5M2); overflow rounds to Inf as IEEE 754 does.
    * ``ieee=False``: every code is a number (E2M1 = ``MiniFloat(2, 1, bias=1, ieee=False)``,
      max 6; note ``MiniFloat(2, 1)`` is the IEEE-style variant, max 3); overflow saturates.
    * ``ieee=False, fn=True``: the OCP "FN" convention of E4M3FN (ml_dtypes ``float8_e4m3fn``):
      no Inf, the all-ones magnitude code ``S.11..1.11..1`` is NaN and every other code a number,
      so ``MiniFloat(4, 3, ieee=False, fn=True)`` stops at 448 (not 480).  Finite input beyond
      the largest value saturates to +-max - unlike the OCP/ml_dtypes cast, which gives NaN
      there - because that is what a quantizer with a scale wants (the scale, not the format,
      decides the range).  NaN, where ``nan_policy='propagate'`` lets it in, becomes NaN
      (code ``S.11..1.11..1``, sign kept); Inf saturates like any large value.

    Without ``ieee`` the NaN / Inf of the input follow ``nan_policy`` as in the other formats;
    IEEE formats hold both themselves.  ``"nearest"`` rounds half to even, as IEEE 754, so
    ``MiniFloat(5, 10)`` equals numpy's float64 -> float16 conversion bit for bit.

    >>> E2M1.values[E2M1.values >= 0]
    array([0. , 0.5, 1. , 1.5, 2. , 3. , 4. , 6. ])
    >>> FP8_E4M3.max, FP8_E4M3.quantize([470.0, 1e6, -500.0])
    (448.0, array([ 448.,  448., -448.]))
    """

    def __init__(self, exp_bits, man_bits, bias=None, ieee=True, rounding="nearest", fn=False):
        if not isinstance(exp_bits, (numbers.Integral, np.integer)) or not 1 <= exp_bits <= 8:
            raise ValueError(f"exp_bits must be an integer in [1, 8], got {exp_bits!r}")
        if not isinstance(man_bits, (numbers.Integral, np.integer)) or not 0 <= man_bits <= 23:
            raise ValueError(f"man_bits must be an integer in [0, 23], got {man_bits!r}")
        if rounding not in _ROUNDINGS:
            raise ValueError(f"rounding must be one of {_ROUNDINGS}, got {rounding!r}")
        for name, flag in (("ieee", ieee), ("fn", fn)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        if fn and ieee:
            raise ValueError("fn=True (no Inf, NaN at the all-ones code) needs ieee=False")
        if bias is not None and (isinstance(bias, (bool, np.bool_))
                                 or not isinstance(bias, (numbers.Integral, np.integer))):
            raise TypeError(f"bias must be an int or None, got {bias!r}")
        self.exp_bits, self.man_bits = int(exp_bits), int(man_bits)
        self.bits = 1 + self.exp_bits + self.man_bits
        self.bias = (1 << (self.exp_bits - 1)) - 1 if bias is None else int(bias)
        self.ieee = bool(ieee)
        self.fn = bool(fn)
        self.rounding = rounding
        m = self.man_bits
        top = (1 << self.exp_bits) - 1
        self.max_field = top - 1 if self.ieee else top
        if self.ieee and (self.max_field < 1 or m < 1):
            raise ValueError(f"exp_bits={self.exp_bits}, man_bits={m}: an IEEE-style format (ieee=True) needs "
                             "exp_bits >= 2 and man_bits >= 1 (to tell NaN from Inf)")
        if self.fn and self.exp_bits + m < 2:
            raise ValueError(f"fn=True needs exp_bits + man_bits >= 2 (one code is NaN), got exp_bits="
                             f"{self.exp_bits}, man_bits={m}")
        # largest finite magnitude: field max_field with an all-ones mantissa, except that fn
        # gives the all-ones code to NaN, so its largest number is the code just below
        max_code = (self.max_field << m) | ((1 << m) - 1)
        if self.fn:
            max_code -= 1
        max_e, max_man = max_code >> m, max_code & ((1 << m) - 1)
        self.emin = 1 - self.bias                      # exponent of the smallest normal
        # every grid value must be an exact, finite, nonzero float64: the reference computes in it
        try:
            if max_e >= 1:
                self._max = math.ldexp(float((1 << m) + max_man), max_e - self.bias - m)
            else:
                self._max = math.ldexp(float(max_man), self.emin - m)
        except OverflowError:
            self._max = math.inf
        if not math.isfinite(self._max) or math.ldexp(1.0, self.emin - m) == 0.0:
            raise ValueError(f"bias={self.bias} puts the grid of this {self.exp_bits}-{m} format outside "
                             f"the finite float64 numbers")

    def __repr__(self):
        ties = ", ties=half-to-even" if self.rounding == "nearest" else ""
        return (f"MiniFloat(exp_bits={self.exp_bits}, man_bits={self.man_bits}, bias={self.bias}, "
                f"ieee={self.ieee}{', fn=True' if self.fn else ''}, rounding={self.rounding!r}{ties})")

    @property
    def max(self):
        return self._max

    @property
    def code_dtype(self):
        return np.uint8 if self.bits <= 8 else (np.uint16 if self.bits <= 16 else np.uint32)

    @property
    def values(self):
        codes = np.arange(1 << self.bits, dtype=np.int64)
        v = self.decode(codes)
        v = v[~np.isnan(v)]
        v = v[~((v == 0) & np.signbit(v))]              # one zero
        return np.sort(v)

    def _round_magnitude(self, a, rng):
        """Round |x| (float64, finite or Inf, no NaN) onto the grid; overflow handled."""
        with np.errstate(divide="ignore", invalid="ignore"):
            _, ex = np.frexp(a)                          # a = m * 2**ex, m in [0.5, 1)
        e = np.maximum(ex.astype(np.int64) - 1, self.emin)
        quantum_exp = e - self.man_bits
        y = np.ldexp(a, -quantum_exp)                    # exact: a power-of-two scaling
        if self.rounding == "nearest":
            q = np.rint(y)
        else:
            q = np.floor(y + self._uniform(rng, a.shape))
        with np.errstate(over="ignore"):                 # 1.7e308 rounds up to 2**1024: Inf, judged below
            out = np.ldexp(q, quantum_exp)
        out = np.where(np.isinf(a), np.inf, out)
        over = out > self._max
        if self.ieee:
            return np.where(over, np.inf, out)
        return np.where(over, self._max, out)           # saturate (fn too: no Inf to go to)

    def _prepare_minifloat(self, x, scale, nan_policy, backend):
        # IEEE formats hold NaN and Inf themselves, so nan_policy only matters without ieee
        _check_nan_policy(nan_policy)
        _check_backend(backend)
        if backend == "cython":
            raise ValueError(f"backend='cython' has no compiled path for {self!r}")
        if not self.fn:
            return self._prepare(x, scale, "propagate" if self.ieee else nan_policy)
        # fn has a NaN code but no Inf: 'raise' still refuses both, with a message that says
        # what 'propagate' does here
        arr, scale = self._prepare(x, scale, "propagate")
        _check_finite(arr, "x", nan_policy, FN_NONFINITE_MESSAGE)
        return arr, scale

    def quantize(self, x, scale=1.0, rng=None, nan_policy="raise", backend="auto"):
        arr, scale = self._prepare_minifloat(x, scale, nan_policy, backend)
        with np.errstate(over="ignore", under="ignore"):  # |x| / scale beyond float64 saturates
            a = np.abs(arr.astype(np.float64)) / scale
            nan = np.isnan(a)
            mag = self._round_magnitude(np.where(nan, 0.0, a), rng)
            out = np.copysign(np.where(nan, np.nan, mag) * scale, arr.astype(np.float64))
        # an IEEE format overflows to Inf by design; the others must not hand back Inf under 'raise'
        return _to_dtype(out, arr.dtype, scale, "propagate" if self.ieee else nan_policy)

    def encode(self, x, scale=1.0, rng=None, nan_policy="raise", backend="auto"):
        """Bit patterns ``s | E | M`` as unsigned integers (uint16 for FP16)."""
        arr, scale = self._prepare_minifloat(x, scale, nan_policy, backend)
        if not (self.ieee or self.fn):
            _check_no_nan(arr)
        with np.errstate(over="ignore", under="ignore"):
            a = np.abs(arr.astype(np.float64)) / scale
        nan = np.isnan(a)
        q = self._round_magnitude(np.where(nan, 0.0, a), rng)
        m = self.man_bits
        with np.errstate(divide="ignore", invalid="ignore"):
            _, ex = np.frexp(q)
        e = np.maximum(ex.astype(np.int64) - 1, self.emin)
        normal = q >= math.ldexp(1.0, self.emin)
        field = np.where(normal, e + self.bias, 0)
        frac = np.ldexp(q, -(e - m))                     # integer: 2**m + M (normal) or M
        man = np.where(normal, frac - (1 << m), frac)
        inf_field = (1 << self.exp_bits) - 1
        finite = np.isfinite(q)
        man = np.where(finite, man, 0)
        field = np.where(finite, field, inf_field)
        if self.ieee:                                   # the quiet NaN, as numpy's float16
            field = np.where(nan, inf_field, field)
            man = np.where(nan, 1 << (m - 1) if m else 0, man)
        elif self.fn:                                   # the one NaN code, S.11..1.11..1
            field = np.where(nan, inf_field, field)
            man = np.where(nan, (1 << m) - 1, man)
        bits = (np.signbit(arr).astype(np.int64) << (self.exp_bits + m)) | (field.astype(np.int64) << m) \
            | man.astype(np.int64)
        return bits.astype(self.code_dtype)

    def decode(self, codes, scale=1.0):
        codes = _as_codes(codes)
        scale = _check_scale(scale)
        if codes.size and (codes.min() < 0 or codes.max() >= (1 << self.bits)):
            raise ValueError(f"codes must lie in [0, {(1 << self.bits) - 1}] for {self!r}")
        c = codes.astype(np.int64)
        m = self.man_bits
        man = c & ((1 << m) - 1)
        field = (c >> m) & ((1 << self.exp_bits) - 1)
        sign = (c >> (self.exp_bits + m)) & 1
        normal = np.ldexp((1 << m) + man, field - self.bias - m)
        sub = np.ldexp(man.astype(np.float64), self.emin - m)
        mag = np.where(field == 0, sub, normal).astype(np.float64)
        if self.ieee:
            special = field == (1 << self.exp_bits) - 1
            mag = np.where(special & (man == 0), np.inf, mag)
            mag = np.where(special & (man != 0), np.nan, mag)
        elif self.fn:
            mag = np.where((field == (1 << self.exp_bits) - 1) & (man == (1 << m) - 1), np.nan, mag)
        return np.where(sign == 1, -mag, mag) * scale


# --------------------------------------------------------------------------- packing
def pack_nibbles(codes):
    """Pack 4-bit codes two per byte along the last axis.

    Element ``2*i`` goes to the low nibble of byte ``i``, element ``2*i + 1`` to the high
    nibble (the order of llama.cpp's Q4 and of our GEMM kernels).  Signed codes -8..7 are
    stored as two's complement nibbles (``q & 0xF``); unsigned codes 0..15 as they are.
    An odd last axis is padded with a zero nibble.  Returns uint8 of shape
    ``codes.shape[:-1] + (ceil(n / 2),)``.

    >>> pack_nibbles(np.array([1, -2, 3], dtype=np.int8))
    array([225,   3], dtype=uint8)
    """
    arr = _as_codes(codes)
    if arr.ndim == 0:
        raise ValueError("codes must have at least one dimension")
    if arr.size and (arr.min() < -8 or arr.max() > 15):
        raise ValueError("codes must be 4-bit: in [-8, 7] (signed) or [0, 15] (unsigned)")
    n = arr.shape[-1]
    nib = (arr.astype(np.int64) & 0xF).astype(np.uint8)
    if n % 2:
        nib = np.concatenate([nib, np.zeros(arr.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (nib[..., 0::2] | (nib[..., 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed, n, signed=False):
    """Inverse of :func:`pack_nibbles`: ``n`` codes along the last axis.

    ``signed=True`` sign-extends each nibble (int8, -8..7); otherwise returns uint8 0..15.
    """
    arr = _as_codes(packed, "packed")
    if arr.dtype != np.uint8:
        raise TypeError(f"packed must be uint8, got {arr.dtype}")
    if arr.ndim == 0:
        raise ValueError("packed must have at least one dimension")
    _check_unpack_args(n, signed)
    if n < 0 or (n + 1) // 2 != arr.shape[-1]:
        raise ValueError(f"n={n!r} does not match the packed length {arr.shape[-1]}")
    out = np.empty(arr.shape[:-1] + (2 * arr.shape[-1],), np.uint8)
    out[..., 0::2] = arr & 0xF
    out[..., 1::2] = arr >> 4
    out = out[..., :n]
    if signed:
        return ((out.astype(np.int16) ^ 8) - 8).astype(np.int8)
    return out.copy()


def _check_unpack_args(n, signed):
    """Shared with q4core.quant.unpack_nibbles: ``n`` an int (not a bool, which is an int to
    Python but never a count), ``signed`` a bool."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (numbers.Integral, np.integer)):
        raise TypeError(f"n must be an int (the number of codes), got {n!r}")
    if not isinstance(signed, (bool, np.bool_)):
        raise TypeError(f"signed must be a bool, got {signed!r}")


# --------------------------------------------------------------------------- named formats
INT4 = IntFormat(4, signed=True)
INT4_SYM = IntFormat(4, signed=True, symmetric=True)   #: -7..7, the symmetric weight grid
UINT4 = IntFormat(4, signed=False)
INT8 = IntFormat(8, signed=True)
RADIX4_FP4 = RadixFP(4, 3)                 #: the paper's gradient format, magnitudes 4**-6 .. 1
RADIX4_FP4_ODD = RadixFP(4, 3, phase=1)    #: odd grid of two-phase rounding, 2 * 4**-6 .. 2
RADIX2_FP4 = RadixFP(2, 3)                 #: radix-2 FP4 (1-3-0), magnitudes 2**-6 .. 1
LOG10_4BIT = RadixFP(10, 3)                #: the article's base-10 picture, 10**-6 .. 1
E2M1 = MiniFloat(2, 1, bias=1, ieee=False)  #: FP4 E2M1: 0, 0.5, 1, 1.5, 2, 3, 4, 6
#: FP8 E4M3 (1-4-3) as OCP E4M3FN / ml_dtypes float8_e4m3fn: max 448, S.1111.111 is NaN, no Inf;
#: a quantizer, so finite input beyond 448 saturates (the OCP cast would give NaN)
FP8_E4M3 = MiniFloat(4, 3, ieee=False, fn=True)
FP8_E5M2 = MiniFloat(5, 2, ieee=True)      #: HFP8 backward (1-5-2), IEEE-style
FP16 = MiniFloat(5, 10, ieee=True)         #: IEEE half precision


# --------------------------------------------------------------------------- registry
#: format names a precision recipe may use, each with what it is
FORMAT_NAMES = {
    "int4": "INT4, levels -8..7",
    "int4_sym": "symmetric INT4, levels -7..7",
    "uint4": "UINT4, levels 0..15",
    "radix2": "radix-2 FP4 (1-3-0), magnitudes 2**-6 .. 1",
    "radix4": "radix-4 FP4, magnitudes 4**-6 .. 1 (phase 1: 2 * 4**-6 .. 2)",
    "radix8": "radix-8 FP4, magnitudes 8**-6 .. 1",
    "radix16": "radix-16 FP4, magnitudes 16**-6 .. 1 (phase 1: 4 * 16**-6 .. 4)",
    "log10": "the article's base-10 4-bit log scale, 10**-6 .. 1",
    "e2m1": "FP4 E2M1: 0, 0.5, 1, 1.5, 2, 3, 4, 6",
    "fp8_e4m3": "FP8 E4M3 (1-4-3), OCP E4M3FN: max 448, S.1111.111 is NaN, no Inf; saturates",
    "fp8_e5m2": "FP8 E5M2 (1-5-2), IEEE-style",
    "fp16": "IEEE half precision",
}
_RADIX_OF = {"radix2": 2, "radix4": 4, "radix8": 8, "radix16": 16, "log10": 10}


def get_format(name, *, phase=0, rounding="nearest"):
    """The format object called ``name`` (one of :data:`FORMAT_NAMES`).

    ``rounding``: ``"nearest"`` (the format's own rule, named in its repr), ``"log"`` (radix formats only:
    nearest in the log domain) or ``"stochastic"``; ``phase``: 1 selects the odd grid of two-phase
    rounding (radix formats with a square radix: radix4, radix16)."""
    if name not in FORMAT_NAMES:
        raise ValueError(f"unknown format {name!r}; known formats: {', '.join(FORMAT_NAMES)}")
    if phase not in (0, 1) or isinstance(phase, bool):
        raise ValueError(f"phase must be 0 or 1, got {phase!r}")
    if phase and name not in ("radix4", "radix16"):
        raise ValueError(f"phase=1 (the odd grid) needs a square radix (radix4, radix16), not {name!r}")
    allowed = ("nearest", "log", "stochastic") if name in _RADIX_OF else ("nearest", "stochastic")
    if rounding not in allowed:
        raise ValueError(f"rounding for {name!r} must be one of {allowed}, got {rounding!r}")
    if name in _RADIX_OF:
        return RadixFP(_RADIX_OF[name], 3, phase=phase, rounding=rounding)
    if name in ("int4", "int4_sym", "uint4"):
        return IntFormat(4, signed=name != "uint4", symmetric=name == "int4_sym", rounding=rounding)
    base = {"e2m1": E2M1, "fp8_e4m3": FP8_E4M3, "fp8_e5m2": FP8_E5M2, "fp16": FP16}[name]
    if rounding == "nearest":
        return base
    return MiniFloat(base.exp_bits, base.man_bits, bias=base.bias, ieee=base.ieee, rounding=rounding,
                     fn=base.fn)
