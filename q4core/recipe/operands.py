"""The one operand quantizer: a float tensor and an :class:`~q4core.recipe.spec.OperandSpec` -> an :class:`Operand`.

Every place that makes a GEMM operand - the layers' :class:`~q4core.nn.qgemm.QuantGemm`, the
quantization-error recorder of notebook 04, the scaling studies of notebook 02 - calls :func:`quantize`
with a scale from :func:`scale_for` (the stateless rules) or from the layer's state (frozen static scales,
PACT's alpha, GradScale, the loss scale).  An operand is held at *unit scale* so the integer kernels can
take it as it is:

===========  =====================================  ==============================================
kind         ``units``                              real value
===========  =====================================  ==============================================
``float``    float32 values (fp32/fp16/FP8 rounded)   ``units``
``int``      int8/uint8 levels (INT4, INT4_SYM, UINT4)  ``units * scale``
``fp4``      uint8 radix-4 FP4 codes; units ``4**(e-1)`` ``units * scale`` (``scale`` holds ``f * 4**-6``)
``values``   float64 grid values of any other format  ``units * scale``
===========  =====================================  ==============================================
"""
from __future__ import annotations

import math

import numpy as np

from ..formats import get_format
from ..scaling import minmax_clip, sawb_clip
from .spec import BLOCK_FORMATS, INT_FORMATS

__all__ = ["Operand", "operand_format", "scale_for", "quantize", "unit_bound"]

_FP4_UNITS = np.array([0.0] + [4.0 ** (e - 1) for e in range(1, 8)] + [-0.0] + [-(4.0 ** (e - 1)) for e in range(1, 8)])


class Operand:
    """A GEMM operand: ``kind`` (see the module docstring), ``units``, ``scale``, ``fmt`` (None for float)."""

    __slots__ = ("kind", "units", "scale", "fmt", "source")

    def __init__(self, kind, units, scale=1.0, fmt=None, source=None):
        self.kind, self.units, self.scale, self.fmt, self.source = kind, units, float(scale), fmt, source

    @property
    def bound(self):
        """Largest |unit| (None where the units are not integers)."""
        return unit_bound(self.fmt) if self.kind in ("int", "fp4") else None

    def unit_values(self):
        """float64 units (exact: integers or grid values)."""
        if self.kind == "fp4":
            return _FP4_UNITS[self.units.astype(np.intp)]
        return self.units.astype(np.float64)

    def dequantize(self):
        """The real values it stands for, float64."""
        if self.kind == "float":
            return self.units.astype(np.float64)
        return self.unit_values() * self.scale

    @property
    def T(self):
        """The transposed operand, for the backward GEMMs: C-contiguous units for the integer kernels, a view
        for float GEMMs (BLAS takes transposes as they are)."""
        return self.transposed()

    def transposed(self, compiled=False, threads=None):
        """:attr:`T`, the units of an integer/FP4 operand transposed by the compiled byte transpose when
        ``compiled`` (:func:`q4core.nn.layout.transposed`: the same bytes, moved in SIMD blocks)."""
        if self.kind == "float":
            units = self.units.T
        elif compiled:
            from ..nn.layout import transposed
            units = transposed(self.units, threads=threads)
        else:
            units = np.ascontiguousarray(self.units.T)
        return Operand(self.kind, units, self.scale, self.fmt)


def unit_bound(fmt):
    """Largest |unit| of an integer-kind format: INT4 8, INT4_SYM 7, UINT4 15, radix-4 FP4 4**6 = 4096."""
    if getattr(fmt, "radix", None) == 4 and hasattr(fmt, "phase"):
        return 4096
    return max(abs(fmt.qmin), abs(fmt.qmax))


def operand_format(spec, signed=False):
    """The format object of ``spec`` (None for fp32).  ``signed``: the input can be negative, so an
    activation spec on UINT4 is taken on its signed counterpart, INT4_SYM."""
    if spec.format == "fp32":
        return None
    if spec.format in BLOCK_FORMATS:
        # blocked along each GEMM's reduction axis: made by q4core.nn.blockscaled_gemm, not by quantize()
        from ..blockscaled import MXFP4, NVFP4
        return {"mxfp4": MXFP4, "nvfp4": NVFP4}[spec.format]
    name = "int4_sym" if (signed and spec.format == "uint4") else spec.format
    return get_format(name, phase=spec.phase, rounding=spec.rounding)


def _format_max(fmt):
    """The largest magnitude at scale 1 (radix formats: phase 0's, so both TPR grids share a scale)."""
    if hasattr(fmt, "phase"):
        return fmt.max / fmt.factor
    return float(fmt.max)


def scale_for(x, spec, fmt, clip=None):
    """The scale a stateless rule gives ``x``: ``max`` (max|x| / format max), ``sawb`` (SAWB clip / format
    max), ``pow2-max`` (the power of two putting max|x| at or below the format max); or ``clip / format max``
    for a clip the caller holds (PACT's alpha, a frozen or fixed clip).  A zero clip gives 1.0."""
    top = _format_max(fmt)
    if clip is None:
        if spec.scaling == "pow2-max":
            # tolerant of Inf/NaN: under loss scaling an overflowed tensor passes through to be seen
            m = max(float(np.max(x)), -float(np.min(x))) if x.size else 0.0
            return 1.0 if (m == 0.0 or not math.isfinite(m)) else 2.0 ** math.ceil(math.log2(m / top))
        if spec.scaling == "sawb":
            clip = sawb_clip(x)
        elif spec.scaling == "max":
            clip = minmax_clip(x, unsigned=getattr(fmt, "qmin", -1) == 0)
        else:
            raise ValueError(f"scaling {spec.scaling!r} needs a scale or clip from the layer's state")
    clip = float(clip)
    if not (math.isfinite(clip) and clip >= 0):
        raise ValueError(f"clip must be a finite non-negative number, got {clip!r}")
    return clip / top if clip > 0 else 1.0


def quantize(x, spec, fmt, scale=1.0, *, rng=None, backend="auto"):
    """``x`` as an :class:`Operand` of ``spec`` on ``fmt`` (from :func:`operand_format`) at ``scale``.

    Integer grids saturate at their ends (so UINT4 at scale ``alpha / 15`` *is* PACT's ``clip(x, 0, alpha)``
    followed by rounding); radix formats flush below half their smallest magnitude and saturate above the top;
    fp16 rounds half to even (bit for bit numpy's float16); FP8 saturates.  ``backend`` as in
    :mod:`q4core.formats` (``numpy`` for the simulated twin of the integer path)."""
    if fmt is None:                                    # fp32
        return Operand("float", x, 1.0, None, x)
    if spec.format in BLOCK_FORMATS:
        raise ValueError(f"a {spec.format} operand is blocked along its GEMM's reduction axis: quantize it with "
                         f"q4core.nn.blockscaled_gemm, not operands.quantize")
    if spec.format == "fp16":
        from ..nn.half import round_to_float16
        return Operand("float", round_to_float16(x), 1.0, fmt, x)
    if spec.format.startswith("fp8"):
        # FP8 operands stay float32 values (their GEMM is a float one); Inf/NaN pass so loss scaling sees them
        if x.size and not np.isfinite(x).all():
            return Operand("float", np.asarray(x, np.float32).copy(), 1.0, fmt, x)
        return Operand("float", fmt.quantize(np.asarray(x, np.float32), scale, backend="numpy"), 1.0, fmt, x)
    x = np.ascontiguousarray(x)
    if spec.format in INT_FORMATS or fmt.__class__.__name__ == "IntFormat":
        return Operand("int", fmt.encode(x, scale, rng=rng, backend=backend), scale, fmt, x)
    if spec.format == "radix4":
        codes = fmt.encode(x, scale, rng=rng, backend=backend)
        return Operand("fp4", codes, fmt.factor * 4.0 ** -6 * scale, fmt, x)
    values = fmt.decode(fmt.encode(x, scale, rng=rng, backend="numpy"))
    return Operand("values", values, scale, fmt, x)
