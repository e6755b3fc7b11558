"""Rounding float32 to the nearest float16 value, kept in float32, fast for every input.

numpy's float32 -> float16 cast is exact but takes a slow path for results that are float16
subnormals (|x| < 2**-14): ~60 ns per element, which gradients hit all the time.  This does the same
rounding with float32 bit arithmetic: round half to even on the 10th mantissa bit for normal float16
values, on the fixed quantum 2**-24 below 2**-14, overflow to +-Inf above 65504 (values >= 65520 round
up past the largest finite float16), NaN kept.  It equals ``x.astype(float16).astype(float32)`` bit
for bit (tested over every float16 boundary, ties, subnormals, overflow, NaN and Inf).
With the compiled core the same bit arithmetic runs as one C loop (``_quant.round_f16``: ~15x faster
than these numpy passes, which cost ~1.5 ms on a 256 x 1024 activation - a fp16 layer rounds its input,
weight and gradients every step); the numpy passes stay as its reference and fallback.
"""
from __future__ import annotations

import numpy as np

try:
    from .. import _quant
except ImportError:              # the compiled core is not built: the numpy passes below
    _quant = None

__all__ = ["round_to_float16"]

_MIN_NORMAL_BITS = np.uint32(0x38800000)   # 2**-14 as float32 bits
_INF_BITS = np.uint32(0x7F800000)


def round_to_float16(x):
    """float32 array whose values are ``x`` rounded to float16 (round half to even)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if _quant is not None and x.flags.aligned and x.dtype.isnative:
        return _quant.round_f16(x)
    return _round_numpy(x)


def _round_numpy(x):
    """:func:`round_to_float16` of a C-contiguous float32 ``x`` in numpy passes (reference and fallback)."""
    b = x.view(np.uint32)
    # round half to even on the 13 dropped mantissa bits (in place: few temporaries, few page faults);
    # subnormal results, overflow and NaN are fixed below
    r = b >> np.uint32(13)
    r &= np.uint32(1)
    r += np.uint32(0x0FFF)
    r += b
    r &= np.uint32(0xFFFFE000)
    a = b & np.uint32(0x7FFFFFFF)
    small = a < _MIN_NORMAL_BITS
    if small.any():
        with np.errstate(over="ignore"):      # large entries overflow here but are not selected
            sub = x * np.float32(2.0 ** 24)   # exact for the tiny entries (a power-of-two scaling)
        np.rint(sub, out=sub)
        sub *= np.float32(2.0 ** -24)
        # branch-free select (np.where on a random mask is several times slower)
        mask = small.view(np.uint8).astype(np.uint32)
        np.negative(mask, out=mask)                       # 0 or 0xFFFFFFFF
        sub_bits = sub.view(np.uint32)
        sub_bits ^= r
        sub_bits &= mask
        r ^= sub_bits
    out = r.view(np.float32)
    big = a > np.uint32(0x477FEFFF)              # |x| >= 65520 (and Inf/NaN): rounds past 65504
    if big.any():
        out[big] = np.where(a[big] > _INF_BITS, x[big], np.copysign(np.float32(np.inf), x[big]))
    return out
