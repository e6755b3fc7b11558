"""Fast encoding of 2-D arrays into block-scaled FP4 (MXFP4, NVFP4): bit for bit :meth:`BlockScaledFormat.encode`.

The training layers (:mod:`q4core.nn.blockscaled_gemm`) quantize every GEMM operand of every step, so the
general encoder of :mod:`q4core.blockscaled` (any rank, any axis, any element format) is too slow there: it
expands the block scales to every element with ``np.repeat`` and rounds through the general minifloat code.
:func:`encode_rows` takes the one case the layers need - a 2-D array blocked along axis 1, or in 2-D tiles -
and does the same float64 arithmetic on broadcast views:

* the tensor scale, the block maxima and the scale codes exactly as the reference computes them;
* ``y = x / block scale`` (one float64 division per element, the reference's);
* E2M1 rounding of ``|y|``: the quantum is 0.5 below 2, 1 below 4 and 2 above (E2M1's exponents), so
  ``|y| / quantum`` is exact and ``rint`` (nearest, ties to even) or ``floor(. + u)`` (stochastic, ``u`` drawn
  as the reference draws it: one ``rng.random(x.shape)``) rounds as :class:`~q4core.formats.MiniFloat` does;
  the code follows from the rounded integer and the quantum class without forming the value; saturation at 6;
  the sign bit of ``y``.

The two element-wise passes (block maxima; division, rounding and code of each element) run as compiled loops
(``q4core._bsencode``, the same double arithmetic) when the extension is built (on a C-contiguous copy of ``x``);
else as numpy.  E2M1 elements only (MXFP4, NVFP4); the tests compare every code and scale code of both
paths with the reference.
"""
from __future__ import annotations

import numpy as np

from .blockscaled import BlockScaledFormat, BlockScaledTensor
from .formats import FP8_E4M3

try:
    from . import _bsencode
except ImportError:       # pragma: no cover - the compiled extension is optional
    _bsencode = None

__all__ = ["encode_rows", "COMPILED"]

#: the compiled loops are built (``encode_rows(..., compiled=False)`` forces numpy)
COMPILED = _bsencode is not None

def _e2m1_magnitude_codes(a, rounding, rng):
    """E2M1 magnitude codes (uint8, 0..7) of ``a = |y|`` (float64), as ``E2M1.encode`` (nearest) or its stochastic
    twin gives them: the reference's arithmetic ``n = rint(a / quantum)`` or ``floor(a / quantum + u)`` with the
    quantum 2**(e - 1) of E2M1's exponent e (0.5 below 2, 1 below 4, 2 above), and the code from ``n`` directly:
    ``n`` below 2 (codes 0..4), ``n + 2`` in [2, 4) (codes 4..6), ``n + 4`` from 4 (codes 6, 7), saturating at 7."""
    ge2, ge4 = a >= 2.0, a >= 4.0
    units = a * np.where(ge2, np.where(ge4, 0.5, 1.0), 2.0)      # exact: a power-of-two scaling
    if rounding == "nearest":
        np.rint(units, out=units)
    else:
        units += rng.random(a.shape)
        np.floor(units, out=units)
    np.minimum(units, 7.0, out=units)
    codes = units.astype(np.uint8)
    codes += (ge2.view(np.uint8) + ge4.view(np.uint8)) << 1
    np.minimum(codes, 7, out=codes)
    return codes


def encode_rows(fmt, x, block_shape=None, rounding="nearest", rng=None, compiled=None):
    """``fmt.encode(x, axis=1, rounding=rounding, rng=rng)`` of a 2-D ``x`` - or with ``block_shape`` (rows,
    cols) its 2-D tiles - bit for bit, faster.  ``rng``: a numpy Generator (stochastic rounding).  ``compiled``:
    None uses the compiled loops where they apply, False the numpy path."""
    if not isinstance(fmt, BlockScaledFormat) or fmt.element.bits != 4:
        raise ValueError(f"fmt must be a block-scaled format with E2M1 elements (MXFP4, NVFP4), got {fmt!r}")
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    if rounding == "stochastic" and not isinstance(rng, np.random.Generator):
        raise ValueError("rounding='stochastic' needs rng= (a numpy Generator): results must be reproducible")
    arr = np.asarray(x)
    if arr.dtype.type not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if arr.ndim != 2:
        raise ValueError(f"x must be 2-D, got shape {arr.shape}")
    m, k = arr.shape
    if (COMPILED if compiled is None else compiled) and 0 not in arr.shape:
        return _encode_compiled(fmt, np.ascontiguousarray(arr), block_shape, rounding, rng)
    br, bc = (1, fmt.block) if block_shape is None else (int(block_shape[0]), int(block_shape[1]))
    pr, pc = (-m) % br, (-k) % bc
    padded = np.pad(arr, ((0, pr), (0, pc))) if (pr or pc) else arr
    tiles = padded.reshape((m + pr) // br, br, (k + pc) // bc, bc)
    # block maxima on the input's own dtype (float32 -> float64 is exact); their max is the tensor's, and NaN / Inf
    # show in them
    amax = (np.abs(tiles).max(axis=(1, 3)) if tiles.size else np.zeros(tiles.shape[::2])).astype(np.float64)
    tensor_scale, scale_codes, per_block = _scales(fmt, amax)
    per_block = per_block[:, None, :, None]
    zero = per_block <= 0                                # the reference sets these blocks to +0
    y = tiles / np.where(zero, 1.0, per_block) if zero.any() else tiles / per_block   # float64, as the reference
    if zero.any():
        y = np.where(zero, 0.0, y)
    y = y.reshape(padded.shape)[:m, :k]
    codes = _e2m1_magnitude_codes(np.abs(y), rounding, rng)
    codes |= np.signbit(y).view(np.uint8) << 3
    if block_shape is None:
        return BlockScaledTensor(codes, scale_codes, tensor_scale, (1,), (bc,), fmt)
    return BlockScaledTensor(codes, scale_codes, tensor_scale, (0, 1), (br, bc), fmt)


def _scales(fmt, amax, compiled=False):
    """(tensor scale, scale codes, float64 scale of every block) from the block maxima, as the reference
    (``compiled``: NVFP4's E4M3 scale codes and values by the compiled loop, the same arithmetic)."""
    if not np.isfinite(amax).all():
        raise ValueError(f"x holds NaN or Inf; {fmt.name} quantization takes finite values only")
    tensor_scale = 1.0
    if fmt.scale == "e4m3":
        amax_t = float(amax.max()) if amax.size else 0.0
        tensor_scale = float(np.float32(FP8_E4M3.max * fmt.element.max / amax_t)) if amax_t > 0 else 1.0
        if compiled and fmt.element.max == 6.0:
            return (tensor_scale, *_bsencode.e4m3_block_scales(np.ascontiguousarray(amax, np.float64),
                                                                tensor_scale))
    scale_codes = fmt._block_scale_codes(amax, tensor_scale)
    return tensor_scale, scale_codes, np.ascontiguousarray(fmt._scale_values(scale_codes) / tensor_scale)


def _encode_compiled(fmt, arr, block_shape, rounding, rng):
    br, bc = (1, fmt.block) if block_shape is None else (int(block_shape[0]), int(block_shape[1]))
    tensor_scale, scale_codes, per_block = _scales(fmt, _bsencode.block_amax(arr, br, bc), compiled=True)
    u = rng.random(arr.shape) if rounding == "stochastic" else None
    codes = _bsencode.e2m1_codes(arr, per_block, br, bc, u)
    if block_shape is None:
        return BlockScaledTensor(codes, scale_codes, tensor_scale, (1,), (bc,), fmt)
    return BlockScaledTensor(codes, scale_codes, tensor_scale, (0, 1), (br, bc), fmt)
