"""Block-scaled 4-bit formats of 2025's FP4 training: OCP MXFP4 (and MXFP8) and NVIDIA's NVFP4.

A block-scaled format stores a tensor as small elements (E2M1 FP4: +-{0, 0.5, 1, 1.5, 2, 3, 4, 6}, or E4M3 FP8)
plus one shared scale per block of consecutive elements along the reduction axis:

* **MXFP4** (OCP Microscaling Formats v1.0, section 6.3): blocks of 32, an E8M0 scale (a power of two
  ``2**X``, ``X`` in [-127, 127], code ``X + 127``, code 255 = NaN) with ``X = floor(log2(amax)) - emax_elem``
  where ``emax_elem`` is the element format's largest exponent (2 for E2M1, 8 for E4M3); elements are
  ``x / 2**X`` rounded to the element grid, saturating at its maximum.  An all-zero block gets ``X = -127``.
  Dividing by a power of two is exact, so MX quantization has no rounding but the element's.
* **NVFP4** (NVIDIA, arXiv 2509.25149): blocks of 16, an E4M3 scale per block and one FP32 scale per tensor.
  With ``A`` the tensor's absolute maximum, the tensor's encode scale is ``s = 448 * 6 / A`` (float32); each
  block's decode scale ``amax_block / 6 * s`` is rounded to E4M3 (half to even, saturating at 448) and the
  elements are ``x * s / scale_e4m3`` rounded to E2M1.  Decoding multiplies back: ``element * scale_e4m3 / s``.
  The arithmetic here is float64 on float32-rounded scales (the reference); a hardware NVFP4 quantizer computes
  in float32 and may differ in the last bit of ``x * s / scale`` - the property tests state the tolerance.

``fmt.encode(x, axis=-1)`` gives a :class:`BlockScaledTensor` (element codes, scale codes, tensor scale, layout);
``fmt.decode(t)`` and ``fmt.quantize(x)`` (= decode of encode) give float64.  ``block_shape=(16, 16)`` asks for
2-D blocks (NVFP4's weight scaling: one scale per 16 x 16 tile of a 2-D weight).  Rounding: ``"nearest"`` (half to
even) or ``"stochastic"`` with an explicit ``rng`` (seed or Generator).  The tensor's length along the blocked axis
need not be a multiple of the block: the last block is shorter (as if padded with zeros).  NaN or Inf in the input
raise ``ValueError`` (no block-scaled training recipe feeds them in).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .formats import E2M1, FP8_E4M3, MiniFloat, pack_nibbles

__all__ = ["BlockScaledFormat", "BlockScaledTensor", "MXFP4", "MXFP8_E4M3", "NVFP4", "E8M0_NAN"]

E8M0_NAN = 255          #: the E8M0 code that means NaN
_E8M0_BIAS = 127


@dataclass(frozen=True)
class BlockScaledTensor:
    """Codes of a block-scaled tensor. ``codes``: element bit patterns (uint8), same shape as the input;
    ``scale_codes``: one per block (uint8: E8M0 or E4M3 bits), shape = the input's with the blocked axes divided
    by the block (rounded up); ``tensor_scale``: NVFP4's float32 encode scale (1.0 for MX); ``axis`` and
    ``block_shape`` the layout."""

    codes: np.ndarray
    scale_codes: np.ndarray
    tensor_scale: float
    axis: tuple
    block_shape: tuple
    fmt: "BlockScaledFormat"

    def packed(self):
        """The 4-bit element codes two per byte along the last axis (:func:`q4core.formats.pack_nibbles`)."""
        if self.fmt.element.bits != 4:
            raise ValueError(f"{self.fmt.name} elements are {self.fmt.element.bits}-bit: nothing to pack")
        return pack_nibbles(self.codes)

    def block_scales(self):
        """The block scales as float64 values (decode multiplies each element by its block's value)."""
        return self.fmt._scale_values(self.scale_codes) / self.tensor_scale


class BlockScaledFormat:
    """A block-scaled format: ``element`` (a :class:`~q4core.formats.MiniFloat`), ``block`` elements per
    scale along the reduction axis, ``scale`` ``"e8m0"`` (MX) or ``"e4m3"`` (NVFP4, with a per-tensor float32
    scale)."""

    def __init__(self, name, element, block, scale):
        if not isinstance(element, MiniFloat) or element.ieee:
            raise ValueError(f"element must be a non-IEEE MiniFloat (E2M1, E4M3FN), got {element!r}")
        if scale not in ("e8m0", "e4m3"):
            raise ValueError(f"scale must be 'e8m0' or 'e4m3', got {scale!r}")
        if not isinstance(block, int) or block < 1:
            raise ValueError(f"block must be a positive int, got {block!r}")
        self.name, self.element, self.block, self.scale = name, element, block, scale
        self.emax_elem = int(math.floor(math.log2(element.max)))

    def __repr__(self):
        return f"BlockScaledFormat({self.name!r}, element={self.element!r}, block={self.block}, scale={self.scale!r})"

    # ------------------------------------------------------------------ scales
    def _scale_values(self, codes):
        c = np.asarray(codes).astype(np.int64)
        if self.scale == "e8m0":
            out = np.ldexp(1.0, c - _E8M0_BIAS)
            return np.where(c == E8M0_NAN, np.nan, out)
        return FP8_E4M3.decode(c.astype(np.uint8))

    def _block_scale_codes(self, amax, tensor_scale):
        """Scale code of each block from its absolute maximum ``amax`` (float64 array)."""
        if self.scale == "e8m0":
            # floor(log2(amax)) from the float exponent, not from log2's rounding: exact for every double
            _, ex = np.frexp(np.where(amax > 0, amax, 1.0))
            x = ex.astype(np.int64) - 1 - self.emax_elem
            x = np.where(amax > 0, x, -_E8M0_BIAS)
            return (np.clip(x, -_E8M0_BIAS, _E8M0_BIAS) + _E8M0_BIAS).astype(np.uint8)
        decode = amax / self.element.max * tensor_scale
        return FP8_E4M3.encode(decode)          # half to even, saturates at 448

    # ------------------------------------------------------------------ layout
    def _blocking(self, shape, axis, block_shape):
        nd = len(shape)
        if block_shape is None:
            axes = (axis,)
            block_shape = (self.block,)
        else:
            block_shape = tuple(int(b) for b in block_shape)
            if len(block_shape) != 2 or nd < 2:
                raise ValueError(f"block_shape must be (rows, cols) of a 2-D (or batched) array, got {block_shape}")
            axes = (nd - 2, nd - 1)
        axes = tuple(a % nd if -nd <= a < nd else _bad_axis(a, nd) for a in axes)
        return axes, block_shape

    def _blocks(self, arr, axes, block_shape):
        """View ``arr`` (zero-padded to whole blocks) as (..., n_blocks..., block...) and the block amax."""
        pad = [(0, 0)] * arr.ndim
        for a, b in zip(axes, block_shape):
            pad[a] = (0, (-arr.shape[a]) % b)
        p = np.pad(arr, pad)
        moved = np.moveaxis(p, axes, tuple(range(arr.ndim - len(axes), arr.ndim)))
        lead = moved.shape[:arr.ndim - len(axes)]
        sizes = moved.shape[arr.ndim - len(axes):]
        nblocks = tuple(s // b for s, b in zip(sizes, block_shape))
        if len(axes) == 1:
            blocks = moved.reshape(lead + (nblocks[0], block_shape[0]))
            amax = np.abs(blocks).max(axis=-1) if blocks.size else np.zeros(lead + nblocks)
        else:
            blocks = moved.reshape(lead + (nblocks[0], block_shape[0], nblocks[1], block_shape[1]))
            amax = np.abs(blocks).max(axis=(-3, -1)) if blocks.size else np.zeros(lead + nblocks)
        return blocks, amax, lead, nblocks

    def _expand(self, per_block, axes, block_shape, shape):
        """Broadcast one value per block back to every element of ``shape``."""
        out = per_block
        nd = len(shape)
        k = len(axes)
        for i, b in enumerate(block_shape):
            out = np.repeat(out, b, axis=nd - k + i)
        out = out[(Ellipsis,) + tuple(slice(0, shape[a]) for a in axes)]
        return np.moveaxis(out, tuple(range(nd - k, nd)), axes)

    # ------------------------------------------------------------------ encode / decode
    def encode(self, x, axis=-1, block_shape=None, rounding="nearest", rng=None):
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"x must be a real numeric array, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"x holds NaN or Inf; {self.name} quantization takes finite values only")
        if rounding not in ("nearest", "stochastic"):
            raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
        if rounding == "stochastic" and rng is None:
            raise ValueError("rounding='stochastic' needs rng= (a seed or numpy Generator): results must be "
                             "reproducible")
        if arr.ndim == 0:
            raise ValueError("x must have at least one axis to block along")
        axes, block_shape = self._blocking(arr.shape, axis, block_shape)
        tensor_scale = 1.0
        if self.scale == "e4m3":
            amax_t = float(np.abs(arr).max()) if arr.size else 0.0
            tensor_scale = float(np.float32(FP8_E4M3.max * self.element.max / amax_t)) if amax_t > 0 else 1.0
        _, amax, lead, nblocks = self._blocks(arr, axes, block_shape)
        scale_codes = self._block_scale_codes(amax, tensor_scale)
        per_elem = self._expand(self._scale_values(scale_codes) / tensor_scale, axes, block_shape, arr.shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.where(per_elem > 0, arr / np.where(per_elem > 0, per_elem, 1.0), 0.0)
        elem = self.element if rounding == "nearest" else MiniFloat(
            self.element.exp_bits, self.element.man_bits, bias=self.element.bias, ieee=False, fn=self.element.fn,
            rounding="stochastic")
        codes = elem.encode(y, rng=rng)
        return BlockScaledTensor(codes.astype(np.uint8), scale_codes, tensor_scale, axes, block_shape, self)

    def decode(self, t):
        if not isinstance(t, BlockScaledTensor) or t.fmt is not self:
            raise TypeError(f"decode takes a BlockScaledTensor made by {self.name}")
        per_elem = self._expand(t.block_scales(), t.axis, t.block_shape, t.codes.shape)
        return self.element.decode(t.codes) * per_elem

    def quantize(self, x, axis=-1, block_shape=None, rounding="nearest", rng=None):
        """``decode(encode(x))`` as float64: the values a block-scaled GEMM would see."""
        return self.decode(self.encode(x, axis, block_shape, rounding, rng))


def _bad_axis(a, nd):
    raise ValueError(f"axis {a} is out of range for an array of {nd} dimensions")


MXFP4 = BlockScaledFormat("MXFP4", E2M1, 32, "e8m0")
MXFP8_E4M3 = BlockScaledFormat("MXFP8_E4M3", FP8_E4M3, 32, "e8m0")
NVFP4 = BlockScaledFormat("NVFP4", E2M1, 16, "e4m3")
