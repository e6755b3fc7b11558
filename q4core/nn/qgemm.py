"""The GEMM of a layer under its precision recipe: ``y = x @ w`` forward, both backward GEMMs.

One :class:`QuantGemm` belongs to each Linear/Conv/recurrent layer.  :meth:`QuantGemm.configure` gives it
the four operand specs of its recipe (:mod:`q4core.recipe`) and picks, once, the strategy of each of its
three products from the operand kinds (:mod:`q4core.recipe.operands`):

=================  ==========================================================================
operands           product
=================  ==========================================================================
float x float      float32 BLAS GEMM of the rounded values (fp32, fp16, FP8)
int x int          ``int4_matmul`` (int32, exact) times the two scales
fp4 x int          ``fp4_int4_matmul`` / ``int4_fp4_matmul`` (exact integer units) times the scales
anything else      float64 GEMM of the units (exact for integer units) times the scales
=================  ==========================================================================

With ``recipe.simulate`` the integer products run as float64 GEMMs of the same units (the numpy reference
quantizers make them): every unit is an integer, every sum stays below 2**53, so the float64 GEMM is exact
and both paths give identical results (tested).  The scales are applied after the GEMM by the same
expression in both paths (:func:`_rescale`).

Outside ``simulate`` the operands are made by the fused compiled makers of :mod:`q4core.quant`: the
scale statistic (SAWB moments, max) in one pass and the codes in another - for a weight the codes and
the GEMM's packed panels together; a gradient on both grids of two-phase rounding and its max |g| in
one pass; PACT's backward in one pass; the rescale of an integer product in the GEMM kernel's
store (``scale=`` of the ``*_unchecked`` GEMMs), or in one pass where it cannot (several K chunks).  They give the
same bits as :func:`q4core.recipe.operands.quantize` with :func:`~q4core.recipe.operands.scale_for`,
:func:`_rescale` and the numpy PACT backward (tested; ``fused = False`` switches back to those).

The layer keeps its quantizer state here: PACT's alpha, GradScale, frozen static scales, the
stochastic-rounding stream, and ``last`` (the last input, weight and output gradient, for recorders).

A block-scaled recipe (MXFP4, NVFP4) hands the products to :class:`~q4core.nn.blockscaled_gemm.BlockScaledGemm`
(``self.blockscaled``; None otherwise).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .. import gemm as _gemm
from .. import quant as _quant
from ..accumulate import fp16_block_matmul
from ..formats import NonFiniteError
from ..recipe import operands
from ..recipe.spec import INT_FORMATS, Recipe
from ..scaling import GradScale, minmax_clip
from .blockscaled_gemm import BlockScaledGemm
from .core import Module, Parameter

__all__ = ["QuantGemm", "WeightOperand", "PrecisionState"]

_F32_EXACT = 2 ** 24


def _rescale(acc, factor, exact_f32):
    """``acc * factor`` as float32.

    ``exact_f32`` (the caller's bound says every entry of the exact integer ``acc`` is below 2**24 in
    magnitude): float32 holds ``acc`` exactly, so the product is formed in float32 (factor rounded to
    float32, one product rounding); otherwise in float64, then rounded to float32.  The integer and the
    simulated path call this with the same exact ``acc`` and the same flag, so they round alike."""
    if exact_f32:
        y = acc.astype(np.float32)
        y *= np.float32(factor)
        return y
    return (acc.astype(np.float64) * factor).astype(np.float32)


class PrecisionState:
    """What the layers of one model share with the trainer: the global dynamic loss scale (the gradients
    the layers see are multiplied by it) and whether a layer that relies on it saturated this step."""

    __slots__ = ("loss_scale", "saturated")

    def __init__(self, loss_scale=1.0):
        self.loss_scale, self.saturated = float(loss_scale), False


class WeightOperand:
    """A weight prepared once per forward pass (reused by every timestep of a recurrent layer)."""

    __slots__ = ("w", "op", "packed", "op_t", "packed_t")

    def __init__(self, w, op, packed=None):
        self.w, self.op, self.packed = w, op, packed
        self.op_t = self.packed_t = None

    @property
    def scale(self):
        return self.op.scale


class _Input:
    """A layer input after :meth:`QuantGemm.prepare_input`: the float input ``x``, its operand ``op`` and
    PACT's clip ``clip`` (None: no PACT)."""

    __slots__ = ("x", "op", "clip")

    def __init__(self, x, op, clip):
        self.x, self.op, self.clip = x, op, clip

    @property
    def data(self):
        return self.op.units


class _Ctx:
    __slots__ = ("xop", "wop", "inp")

    def __init__(self, xop, wop, inp):
        self.xop, self.wop, self.inp = xop, wop, inp


class _Sequence:
    """State of a multi-call backward pass (see :meth:`QuantGemm.begin_sequence`)."""

    __slots__ = ("parts", "sg", "gmax")

    def __init__(self):
        self.parts, self.sg, self.gmax = [], None, 0.0


def _operand_kind(spec):
    """The kind of operand ``spec`` makes (see :mod:`q4core.recipe.operands`): float, int, fp4 or values."""
    if spec.format in ("fp32", "fp16", "fp8_e4m3", "fp8_e5m2"):
        return "float"
    if spec.format in INT_FORMATS:
        return "int"
    return "fp4" if spec.format == "radix4" else "values"


def _product_kind(a, b):
    """Strategy of ``a @ b`` from the operand kinds: float, int, fp4-left, fp4-right or generic."""
    if a == "float" and b == "float":
        return "float"
    if a == "int" and b == "int":
        return "int"
    if a == "fp4" and b == "int":
        return "fp4-left"
    if a == "int" and b == "fp4":
        return "fp4-right"
    return "generic"


def _coded_operand(spec, fmt, codes, scale, x):
    """The Operand of integer levels or radix-4 FP4 codes, as :func:`operands.quantize` makes it."""
    if spec.format == "radix4":
        return operands.Operand("fp4", codes, fmt.factor * 4.0 ** -6 * scale, fmt, x)
    return operands.Operand("int", codes, scale, fmt, x)


class QuantGemm(Module):
    """GEMM engine of one layer; :meth:`configure` (via ``Module.set_policy``) sets its recipe."""

    def __init__(self):
        self.alpha = Parameter(np.zeros(()), decay=False)   # PACT clip; 0 = not yet initialised
        self.unsigned = None          # input non-negative? fixed at the first quantized forward
        #: a known bound of |input| used as the clip of signed inputs instead of a per-call estimate
        #: (set by recurrent layers, whose per-timestep inputs must share one scale)
        self.fixed_clip = None
        self.last = {}
        self.training = True
        self.static_w = self.static_x = None     # frozen scales of the static-scale recipes (buffers)
        self.configure(Recipe(), "fp32")

    # ------------------------------------------------------------------ configuration
    def configure(self, recipe, mode=None, index=0, name="", state=None):
        """Take the layer's recipe (``recipe``: its own, after first/last and overrides) and decide every
        product's strategy once.  ``mode`` names it for readers (the recipe's name by default)."""
        self.recipe, self.index, self.name = recipe, index, name
        self.mode = mode or recipe.name
        self.state = state if state is not None else PrecisionState()
        r = recipe
        self.spec_w, self.spec_a, self.spec_gx, self.spec_gw = r.weight, r.activation, r.grad_dx, r.grad_dw
        self.fmt_w = operands.operand_format(r.weight)
        self.fmt_gx = operands.operand_format(r.grad_dx)
        self.fmt_gw = operands.operand_format(r.grad_dw)
        self.backend = "numpy" if r.simulate else "auto"
        # each product's strategy, decided here once (an activation spec keeps its kind for signed inputs)
        kind_w, kind_a = _operand_kind(r.weight), _operand_kind(r.activation)
        self.strategy = {"forward": _product_kind(kind_a, kind_w),
                         "grad_dx": _product_kind(_operand_kind(r.grad_dx), kind_w),
                         "grad_dw": _product_kind(kind_a, _operand_kind(r.grad_dw))}
        self.quantized = r.four_bit
        self.blockscaled = BlockScaledGemm(r, index) if r.block_scaled else None
        # the fused compiled operand makers (see the module docstring); False: operands.quantize
        self.fused = not r.simulate and _quant.AVAILABLE
        self._fmt_a = {}
        # the fused makers' thread count, resolved once (None: OMP_NUM_THREADS as it is now)
        self._quant_threads = _quant.resolve_threads(r.threads) if self.fused else None
        #: threads of the layer's compiled layout kernels (im2col, col2im, transposes: q4core.nn.layout)
        self.layout_threads = self._quant_threads if self.fused else 1
        self._tops = {}
        self._fmt_fusable = {}
        self._bounds = {}
        self.pact = r.activation.scaling == "pact"
        g = r.grad_dx
        self.grad_quantized = g.quantized and g.format != "fp16"
        self.gradscale = GradScale(self._gradscale_max()) if g.scaling == "gradscale" else GradScale(1.0)
        self._rng = np.random.default_rng([r.seed, index]) if "stochastic" in (
            g.rounding, r.weight.rounding, r.activation.rounding) else None
        return self

    def _gradscale_max(self):
        """GradScale keeps max |g| * scale in (t/2, t]: ``t`` = the format max (``align='max'``, the paper's
        rule) or twice the rounding threshold below the top magnitude (``'threshold'``), which uses the top
        code whenever it can and saturates at most by that threshold's ratio."""
        fmt = operands.operand_format(dataclasses.replace(self.spec_gx, phase=0))
        top = operands._format_max(fmt)
        if self.recipe.gradscale_align == "max":
            return top
        vals = fmt.values[fmt.values > 0]
        second = float(vals[-2]) if vals.size > 1 else 0.0
        threshold = {"nearest": 0.5 * (top + second), "log": math.sqrt(top * second),
                     "stochastic": second}[self.spec_gx.rounding]
        return 2.0 * threshold

    # ------------------------------------------------------------------ weights
    def prepare_weight(self, w):
        """Quantize/round the (K, N) weight once for this forward pass."""
        if self.blockscaled is not None:
            return self.blockscaled.prepare_weight(w)
        spec, fmt = self.spec_w, self.fmt_w
        if fmt is None or spec.scaling in ("none", "pow2-max"):
            scale = 1.0 if fmt is None or spec.scaling == "none" else operands.scale_for(w, spec, fmt)
            return WeightOperand(w, operands.quantize(w, spec, fmt, scale, backend=self.backend))
        if self.recipe.static_scale and self.static_w is not None:
            sw = self.static_w
        else:
            sw = self._scale_of(w, spec, fmt)
            if self.recipe.static_scale and self.training:
                self.static_w = sw
        wf = self._fusable(w, fmt) if spec.format in INT_FORMATS and spec.rounding != "stochastic" else None
        if wf is not None and wf.ndim == 2 and 0 not in wf.shape:
            # codes and the GEMM's packed panels from one read of the weight
            codes, packed = _quant.encode_packed_weight_unchecked(fmt, wf, sw)
            return WeightOperand(w, _coded_operand(spec, fmt, codes, sw, wf), packed)
        op = self._quantize(w, spec, fmt, sw, rng=self._rng_for(spec))
        packed = self._pack(op.units) if (op.kind == "int" and not self.recipe.simulate) else None
        return WeightOperand(w, op, packed)

    def _weight_t(self, wop):
        """The transposed weight operand (packed for the kernels), made once per forward pass."""
        if wop.op_t is None:
            wop.op_t = wop.op.transposed(self.fused, self.layout_threads)
            if wop.op.kind == "int" and not self.recipe.simulate:
                wop.packed_t = self._pack(wop.op_t.units)
        return wop.op_t, wop.packed_t

    def _rng_for(self, spec):
        return self._rng if spec.rounding == "stochastic" else None

    # ------------------------------------------------------------------ fused operand makers
    def _fusable(self, x, *fmts):
        """The C-contiguous float32/float64 ``x`` if the fused makers take it with every ``fmt``, else None."""
        if not self.fused or x.dtype.type not in (np.float32, np.float64):
            return None
        for f in fmts:
            known = self._fmt_fusable.get(id(f))
            if known is None or known[0] is not f:      # decided once per format object
                known = self._fmt_fusable[id(f)] = (f, f is not None and f.rounding != "stochastic"
                                                    and _quant.supports(f))
            if not known[1]:
                return None
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        return x if x.flags.aligned else None

    def _scale_of(self, x, spec, fmt):
        """:func:`operands.scale_for` of the stateless rules, the statistic from one compiled pass when
        the fused makers take ``x`` (max and SAWB: bit for bit the numpy statistics)."""
        xf = self._fusable(x, fmt) if spec.scaling in ("max", "sawb") else None
        if xf is None:
            return operands.scale_for(x, spec, fmt)
        if spec.scaling == "sawb":
            clip = _quant.sawb_clip_unchecked(xf)
        elif xf.size == 0:
            clip = 0.0
        else:
            hi, lo, flags = _quant.minmax_unchecked(xf, self._quant_threads)
            if flags:
                raise NonFiniteError("x contains NaN or Inf; a range cannot be estimated from it")
            clip = max(hi, 0.0) if getattr(fmt, "qmin", -1) == 0 else max(abs(hi), abs(lo))
        return self._scale_from_clip(xf, spec, fmt, clip)

    def _scale_from_clip(self, x, spec, fmt, clip):
        """``operands.scale_for(x, spec, fmt, clip=clip)``, the format's top value looked up once."""
        top = self._tops.get(id(fmt))
        if top is None or top[0] is not fmt:
            top = self._tops[id(fmt)] = (fmt, operands._format_max(fmt))
        clip = float(clip)
        if not (math.isfinite(clip) and clip >= 0):
            return operands.scale_for(x, spec, fmt, clip=clip)      # raises, naming the clip
        return clip / top[1] if clip > 0 else 1.0

    def _quantize(self, x, spec, fmt, scale, rng=None):
        """:func:`operands.quantize`, by the fused encoder when it takes ``x`` (integer and radix-4 FP4)."""
        xf = self._fusable(x, fmt) if rng is None and spec.format in (*INT_FORMATS, "radix4") else None
        if xf is None:
            return operands.quantize(x, spec, fmt, scale, rng=rng, backend=self.backend)
        codes = _quant.encode_unchecked(fmt, xf, scale, self._quant_threads)
        return _coded_operand(spec, fmt, codes, scale, xf)

    def _bound(self, op):
        """``op.bound``, looked up once per format object."""
        known = self._bounds.get(id(op.fmt))
        if known is None or known[0] is not op.fmt:
            known = self._bounds[id(op.fmt)] = (op.fmt, op.bound)
        return known[1]

    def _pack(self, units):
        return _gemm.pack_int4_unchecked(units) if self.fused else _gemm.pack_int4(units)

    # ------------------------------------------------------------------ activations
    def prepare_input(self, x):
        """Round or quantize a layer input once.  Convolutions call this on the image and run im2col on the
        units: rounding and quantization act elementwise and im2col only copies and zero-pads (zero is exact
        on every grid, and the range of the patches is the range of the image), so this equals quantizing
        the patch matrix, with a fraction of the work."""
        spec = self.spec_a
        if spec.format == "fp32" or self.blockscaled is not None:   # block scales: made on the (M, K) matrix
            return _Input(x, operands.Operand("float", x), None)
        if spec.scaling in ("none", "pow2-max"):
            fmt = operands.operand_format(spec)
            scale = 1.0 if spec.scaling == "none" else operands.scale_for(x, spec, fmt)
            return _Input(x, operands.quantize(x, spec, fmt, scale, backend=self.backend), None)
        if self.unsigned is None:
            self.unsigned = bool(x.size == 0 or x.min() >= 0)
        fmt = self._fmt_a.get(self.unsigned)
        if fmt is None:
            fmt = self._fmt_a[self.unsigned] = operands.operand_format(spec, signed=not self.unsigned)
        clip = None
        frozen = self.recipe.static_scale and self.static_x is not None
        if self.unsigned and self.pact:
            if float(self.alpha.data) <= 0.0:
                init = self.recipe.pact_init or minmax_clip(x, unsigned=True)
                self.alpha.data[...] = init if init > 0 else 1.0
            clip = float(self.alpha.data)
        if frozen:
            sx = self.static_x
            if clip is not None:
                clip = sx * fmt.max
        elif clip is not None:
            sx = self._scale_from_clip(x, spec, fmt, clip)
        elif not self.unsigned and self.fixed_clip is not None:
            sx = operands.scale_for(x, spec, fmt, clip=self.fixed_clip)
        else:
            # signed inputs take the signed grid with the per-call max (the spec's rule is for the unsigned)
            sx = self._scale_of(x, dataclasses.replace(spec, scaling="max"), fmt)
        if self.recipe.static_scale and self.training and self.static_x is None \
                and not (not self.unsigned and self.fixed_clip is not None):
            self.static_x = sx
        # PACT's clip(x, 0, alpha) needs no pass of its own: with step alpha / 15 the UINT4 encoder's
        # saturation at levels 0 and 15 gives exactly the levels of the clipped input
        op = self._quantize(x, spec, fmt, sx, rng=self._rng_for(spec))
        return _Input(x, op, clip)

    # ------------------------------------------------------------------ products
    def _product(self, which, a, b, b_packed=None):
        """``a @ b`` of two operands as float32 by the strategy of product ``which`` (see the module docstring)."""
        kind = self.strategy[which]
        if kind == "float":
            return a.units @ b.units
        K = a.units.shape[1]
        factor = a.scale * b.scale
        if self.recipe.accumulator == "fp16":       # simulated FP16 accumulation (q4core.accumulate)
            return _rescale(fp16_block_matmul(a.unit_values(), b.unit_values()), factor, False)
        if kind == "generic":
            return _rescale(a.unit_values() @ b.unit_values(), factor, False)
        exact_f32 = K * self._bound(a) * self._bound(b) < _F32_EXACT
        threads = self.recipe.threads
        # the fused engine has the kernel rescale in its store (same rounding); float32 comes back then
        scale = (factor, exact_f32) if self.fused else None
        if self.recipe.simulate:
            acc = a.unit_values() @ b.unit_values()
        elif kind == "int":
            acc = _gemm.int4_matmul_unchecked(a.units, b_packed if b_packed is not None else _gemm.pack_int4(b.units),
                                              threads=threads, scale=scale)
        elif kind == "fp4-left":
            acc = _gemm.fp4_int4_matmul_unchecked(a.units, b_packed if b_packed is not None else
                                                  _gemm.pack_int4(b.units), threads=threads, scale=scale)
        else:
            acc = _gemm.int4_fp4_matmul_unchecked(a.units, b.units, threads=threads, scale=scale)
        if scale is not None and acc.dtype.type is np.float32:
            return acc
        if self.fused and acc.dtype.type in (np.int32, np.int64) and acc.flags.c_contiguous:
            return _quant.rescale_unchecked(acc, factor, exact_f32, self._quant_threads)   # same rounding
        return _rescale(acc, factor, exact_f32)

    def forward(self, x, wop, inp=None, data=None):
        """``x`` (M, K) float32, ``wop`` from :meth:`prepare_weight` -> ``(y, ctx)``, y (M, N) float32.

        Convolutions pass ``inp`` (from :meth:`prepare_input` on the image; ``x`` is then ignored) and
        ``data``, the (M, K) patch matrix made from ``inp.data``."""
        if inp is None:
            inp = self.prepare_input(x)
        if self.blockscaled is not None:
            self.last["input"], self.last["weight"] = inp.x, wop.w
            return self.blockscaled.forward(inp.x if data is None else data, wop, inp)
        xop = inp.op if data is None else operands.Operand(inp.op.kind, data, inp.op.scale, inp.op.fmt)
        self.last["input"] = inp.x
        self.last["weight"] = wop.w
        if self.quantized:
            self.last["act_scale"], self.last["weight_scale"] = xop.scale, wop.op.scale
        return self._product("forward", xop, wop.op, wop.packed), _Ctx(xop, wop, inp)

    def pact_backward(self, grad_x, inp):
        """PACT's straight-through gradient for an input prepared by :meth:`prepare_input` (same shape as
        ``inp.x``): ``dL/dalpha`` gains the sum of ``dL/dx`` where ``x >= alpha``; ``dL/dx`` passes where
        ``0 <= x < alpha``.  Identity for inputs without a PACT clip.  (The L2 term on alpha is added by
        :meth:`add_regularisation` on the unscaled gradient.)"""
        if inp.clip is None:
            return grad_x
        x = inp.x
        if self.fused and x.dtype.type is np.float32 and grad_x.dtype.type is np.float32 \
                and x.shape == grad_x.shape:
            grad, over_sum = _quant.pact_backward_unchecked(np.ascontiguousarray(x), np.ascontiguousarray(grad_x),
                                                            inp.clip, self._quant_threads)   # same bits, one pass
            self.alpha.grad += np.float32(over_sum)
            return grad
        # masks applied by multiplication: np.where / boolean indexing are slow on random masks
        over = (x >= np.float32(inp.clip)).astype(grad_x.dtype)
        self.alpha.grad += np.float32(np.sum(grad_x * over, dtype=np.float64))
        return grad_x * ((x >= 0).astype(grad_x.dtype) - over)

    def add_regularisation(self):
        """Add PACT's L2 term ``pact_l2 * alpha`` to alpha's gradient.  The trainer calls this after the
        gradients are unscaled (loss scaling), so the penalty has the strength the recipe names."""
        if self.pact and self.recipe.pact_l2 and float(self.alpha.data) > 0:
            self.alpha.grad += np.float32(self.recipe.pact_l2 * float(self.alpha.data))

    def begin_sequence(self):
        """Start a backward pass made of many calls (a recurrent layer's timesteps): one gradient scale
        for the whole pass, GradScale updated once from its max, and one weight-gradient GEMM at the end."""
        return _Sequence()

    def finish_sequence(self, seq):
        """The weight gradient summed over the calls of ``seq`` (None if there were none)."""
        if self.blockscaled is not None:
            return self.blockscaled.finish_sequence(seq)
        if self.spec_gx.scaling == "gradscale" and seq.gmax > 0:
            self.gradscale.observe(seq.gmax)
        total = None
        groups = {}
        for x, g in seq.parts:
            groups.setdefault((x.kind, x.scale, g.kind, g.scale), []).append((x, g))
        for items in groups.values():
            x0, g0 = items[0]
            if len(items) > 1:
                X = operands.Operand(x0.kind, np.concatenate([x.units for x, _ in items]), x0.scale, x0.fmt)
                G = operands.Operand(g0.kind, np.concatenate([g.units for _, g in items]), g0.scale, g0.fmt)
            else:
                X, G = x0, g0
            part = self._product("grad_dw", X.transposed(self.fused, self.layout_threads), G)
            total = part if total is None else total + part
        return total

    def _scale_before_max(self, seq):
        """The gradient scale :meth:`_grad_scale` will give when it does not depend on this call's
        max |g| (so the fused encoder can take codes and max in one pass), else None."""
        spec = self.spec_gx
        if spec.scaling in ("gradscale", "loss-scale", "fixed") and seq is not None and seq.sg is not None:
            return seq.sg
        if spec.scaling == "gradscale":
            return self.gradscale.encode_scale() if self.gradscale.exp is not None else None
        if spec.scaling == "loss-scale":
            return 1.0
        if spec.scaling == "fixed":
            return self.state.loss_scale / self.recipe.grad_static_scale
        return None

    def _fused_gradients(self, gy, seq):
        """``(g_x, g_w, sg, gmax)`` by the fused encoder - both grids and max |g| in one pass when the
        scale is known beforehand - or None when it does not take this gradient."""
        spec_x, spec_w = self.spec_gx, self.spec_gw
        if spec_x.format not in (*INT_FORMATS, "radix4") or spec_w.format != spec_x.format \
                or spec_w.scaling != spec_x.scaling:
            return None
        g = self._fusable(gy, self.fmt_gx, self.fmt_gw)
        if g is None:
            return None
        fmt_w = None if spec_w.phase == spec_x.phase else self.fmt_gw
        threads = self._quant_threads
        sg = self._scale_before_max(seq)
        if sg is None:
            hi, lo, flags = _quant.minmax_unchecked(g, threads)
            sg, gmax = self._grad_scale(g, seq, math.nan if flags else (max(hi, -lo) if g.size else 0.0))
            cx, cw, _, _, _ = _quant.encode_gradient_unchecked(self.fmt_gx, fmt_w, g, sg, threads)
        else:
            cx, cw, hi, lo, flags = _quant.encode_gradient_unchecked(self.fmt_gx, fmt_w, g, sg, threads)
            # NaN / Inf: gmax NaN, which _grad_scale refuses (the codes are never used)
            sg2, gmax = self._grad_scale(g, seq, math.nan if flags else (max(hi, -lo) if g.size else 0.0))
            assert sg2 == sg, "the gradient scale changed with the max it was said not to depend on"
        g_x = _coded_operand(spec_x, self.fmt_gx, cx, sg, g)
        g_w = g_x if fmt_w is None else _coded_operand(spec_w, self.fmt_gw, cw, sg, g)
        return g_x, g_w, sg, gmax

    def _grad_scale(self, gy, seq, gmax=None):
        """The scale both gradient copies are encoded with, and max |g| (GradScale's input; computed
        here unless the caller has it)."""
        spec, fmt = self.spec_gx, self.fmt_gx
        if gmax is None:
            gmax = max(float(gy.max()), -float(gy.min())) if gy.size else 0.0    # max |g| without an |g| copy
        if not math.isfinite(gmax):
            raise FloatingPointError(f"layer {self.name!r}: the output gradient contains NaN or Inf")
        shared = spec.scaling in ("gradscale", "loss-scale", "fixed")   # one scale for a whole sequence
        if shared and seq is not None and seq.sg is not None:
            sg = seq.sg
        elif spec.scaling == "gradscale":
            self.gradscale.initialise(gmax)
            sg = self.gradscale.encode_scale()
        elif spec.scaling == "loss-scale":
            sg = 1.0        # the gradient arrives multiplied by the global loss scale: that is all its scaling
        elif spec.scaling == "fixed":
            sg = self.state.loss_scale / self.recipe.grad_static_scale
        else:               # max, pow2-max: per call
            sg = operands.scale_for(gy, spec, fmt)
        if spec.scaling == "loss-scale" and gmax > operands._format_max(fmt):
            self.state.saturated = True
        if seq is not None:
            seq.sg = sg if shared else None
            seq.gmax = max(seq.gmax, gmax)
        return sg, gmax

    def backward(self, grad_y, ctx, seq=None, pact=True, input_grad=True):
        """``dL/dy`` (M, N) -> ``(dL/dx (M, K), dL/dW (K, N))``.

        ``input_grad=False`` (the layer's input is data): ``dL/dx`` is not formed and comes back as None,
        unless the input has a PACT clip, whose gradient needs it.  Everything else - the gradient's
        quantization and GradScale - is as with ``True``.
        ``pact``: apply PACT's gradient to ``dL/dx`` here (a plain forward); convolutions pass False and
        call :meth:`pact_backward` on the image-shaped gradient after col2im.  With ``seq``
        (from :meth:`begin_sequence`) the weight gradient is deferred: ``dL/dW`` is returned as None and
        :meth:`finish_sequence` forms the sum over all calls with one GEMM."""
        self.last["grad_output"] = grad_y
        if self.blockscaled is not None:
            gx, gw = self.blockscaled.backward(grad_y, ctx, seq)
            return (self.pact_backward(gx, ctx.inp) if pact and ctx.inp is not None else gx), gw
        spec_x, spec_w = self.spec_gx, self.spec_gw
        if not spec_x.quantized or spec_x.scaling in ("none",):
            g_x = operands.quantize(grad_y, spec_x, self.fmt_gx)
            g_w = g_x
        elif (fused := self._fused_gradients(grad_y, seq)) is not None:
            g_x, g_w, sg, gmax = fused
            self.last["grad_scale"] = sg
            if spec_x.scaling == "gradscale" and seq is None:
                self.gradscale.observe(gmax)
        else:
            sg, gmax = self._grad_scale(grad_y, seq)
            self.last["grad_scale"] = sg
            rng = self._rng_for(spec_x)
            g_x = operands.quantize(grad_y, spec_x, self.fmt_gx, sg, rng=rng, backend=self.backend)
            g_w = g_x if spec_w.phase == spec_x.phase else \
                operands.quantize(grad_y, spec_w, self.fmt_gw, sg, rng=rng, backend=self.backend)
            if spec_x.scaling == "gradscale" and seq is None:
                self.gradscale.observe(gmax)
        if input_grad or (ctx.inp is not None and ctx.inp.clip is not None):
            w_t, w_t_packed = self._weight_t(ctx.wop)
            gx = self._product("grad_dx", g_x, w_t, w_t_packed)
            if pact:
                gx = self.pact_backward(gx, ctx.inp)
        else:
            gx = None
        if seq is not None:
            seq.parts.append((ctx.xop, g_w))
            return gx, None
        return gx, self._product("grad_dw", ctx.xop.transposed(self.fused, self.layout_threads), g_w)

    # ------------------------------------------------------------------ state
    def buffers(self):
        out = {"gradscale_exp": np.array(np.nan if self.gradscale.exp is None else self.gradscale.exp),
               "unsigned": np.array(-1 if self.unsigned is None else int(self.unsigned))}
        if self.static_w is not None:
            out["static_w"] = np.array(self.static_w)
        if self.static_x is not None:
            out["static_x"] = np.array(self.static_x)
        return out

    def load_buffers(self, b):
        if "gradscale_exp" in b:
            e = float(b["gradscale_exp"])
            self.gradscale.exp = None if math.isnan(e) else int(e)
        if "unsigned" in b:
            u = int(b["unsigned"])
            self.unsigned = None if u < 0 else bool(u)
        self.static_w = float(b["static_w"]) if "static_w" in b else None
        self.static_x = float(b["static_x"]) if "static_x" in b else None

    def quantizer_state(self):
        """What a notebook records: mode, scales, PACT alpha, GradScale scale."""
        return {"mode": self.mode, "unsigned_input": self.unsigned, "pact_alpha": float(self.alpha.data),
                "gradscale": self.gradscale.scale if self.gradscale.exp is not None else None,
                "weight_scale": self.last.get("weight_scale"), "act_scale": self.last.get("act_scale"),
                "grad_scale": self.last.get("grad_scale")}
