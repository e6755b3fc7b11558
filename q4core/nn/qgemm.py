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

The layer keeps its quantizer state here: PACT's alpha, GradScale, frozen static scales, the
stochastic-rounding stream, and ``last`` (the last input, weight and output gradient, for recorders).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .. import gemm as _gemm
from ..accumulate import fp16_block_matmul
from ..recipe import operands
from ..recipe.spec import INT_FORMATS, Recipe
from ..scaling import GradScale, minmax_clip
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
        spec, fmt = self.spec_w, self.fmt_w
        if fmt is None or spec.scaling in ("none", "pow2-max"):
            scale = 1.0 if fmt is None or spec.scaling == "none" else operands.scale_for(w, spec, fmt)
            return WeightOperand(w, operands.quantize(w, spec, fmt, scale, backend=self.backend))
        if self.recipe.static_scale and self.static_w is not None:
            sw = self.static_w
        else:
            sw = operands.scale_for(w, spec, fmt)
            if self.recipe.static_scale and self.training:
                self.static_w = sw
        op = operands.quantize(w, spec, fmt, sw, rng=self._rng_for(spec), backend=self.backend)
        packed = _gemm.pack_int4(op.units) if (op.kind == "int" and not self.recipe.simulate) else None
        return WeightOperand(w, op, packed)

    def _weight_t(self, wop):
        """The transposed weight operand (packed for the kernels), made once per forward pass."""
        if wop.op_t is None:
            wop.op_t = wop.op.T
            if wop.op.kind == "int" and not self.recipe.simulate:
                wop.packed_t = _gemm.pack_int4(wop.op_t.units)
        return wop.op_t, wop.packed_t

    def _rng_for(self, spec):
        return self._rng if spec.rounding == "stochastic" else None

    # ------------------------------------------------------------------ activations
    def prepare_input(self, x):
        """Round or quantize a layer input once.  Convolutions call this on the image and run im2col on the
        units: rounding and quantization act elementwise and im2col only copies and zero-pads (zero is exact
        on every grid, and the range of the patches is the range of the image), so this equals quantizing
        the patch matrix, with a fraction of the work."""
        spec = self.spec_a
        if spec.format == "fp32":
            return _Input(x, operands.Operand("float", x), None)
        if spec.scaling in ("none", "pow2-max"):
            fmt = operands.operand_format(spec)
            scale = 1.0 if spec.scaling == "none" else operands.scale_for(x, spec, fmt)
            return _Input(x, operands.quantize(x, spec, fmt, scale, backend=self.backend), None)
        if self.unsigned is None:
            self.unsigned = bool(x.size == 0 or x.min() >= 0)
        fmt = operands.operand_format(spec, signed=not self.unsigned)
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
            sx = operands.scale_for(x, spec, fmt, clip=clip)
        elif not self.unsigned and self.fixed_clip is not None:
            sx = operands.scale_for(x, spec, fmt, clip=self.fixed_clip)
        else:
            # signed inputs take the signed grid with the per-call max (the spec's rule is for the unsigned)
            sx = operands.scale_for(x, dataclasses.replace(spec, scaling="max"), fmt)
        if self.recipe.static_scale and self.training and self.static_x is None \
                and not (not self.unsigned and self.fixed_clip is not None):
            self.static_x = sx
        # PACT's clip(x, 0, alpha) needs no pass of its own: with step alpha / 15 the UINT4 encoder's
        # saturation at levels 0 and 15 gives exactly the levels of the clipped input
        op = operands.quantize(x, spec, fmt, sx, rng=self._rng_for(spec), backend=self.backend)
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
        exact_f32 = K * a.bound * b.bound < _F32_EXACT
        threads = self.recipe.threads
        if self.recipe.simulate:
            acc = a.unit_values() @ b.unit_values()
        elif kind == "int":
            acc = _gemm.int4_matmul_unchecked(a.units, b_packed if b_packed is not None else _gemm.pack_int4(b.units),
                                              threads=threads)
        elif kind == "fp4-left":
            acc = _gemm.fp4_int4_matmul_unchecked(a.units, b_packed if b_packed is not None else
                                                  _gemm.pack_int4(b.units), threads=threads)
        else:
            acc = _gemm.int4_fp4_matmul_unchecked(a.units, b.units, threads=threads)
        return _rescale(acc, factor, exact_f32)

    def forward(self, x, wop, inp=None, data=None):
        """``x`` (M, K) float32, ``wop`` from :meth:`prepare_weight` -> ``(y, ctx)``, y (M, N) float32.

        Convolutions pass ``inp`` (from :meth:`prepare_input` on the image; ``x`` is then ignored) and
        ``data``, the (M, K) patch matrix made from ``inp.data``."""
        if inp is None:
            inp = self.prepare_input(x)
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
        # masks applied by multiplication: np.where / boolean indexing are slow on random masks
        x = inp.x
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
            part = self._product("grad_dw", X.T, G)
            total = part if total is None else total + part
        return total

    def _grad_scale(self, gy, seq):
        """The scale both gradient copies are encoded with, and max |g| (GradScale's input)."""
        spec, fmt = self.spec_gx, self.fmt_gx
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

    def backward(self, grad_y, ctx, seq=None, pact=True):
        """``dL/dy`` (M, N) -> ``(dL/dx (M, K), dL/dW (K, N))``.

        ``pact``: apply PACT's gradient to ``dL/dx`` here (a plain forward); convolutions pass False and
        call :meth:`pact_backward` on the image-shaped gradient after col2im.  With ``seq``
        (from :meth:`begin_sequence`) the weight gradient is deferred: ``dL/dW`` is returned as None and
        :meth:`finish_sequence` forms the sum over all calls with one GEMM."""
        self.last["grad_output"] = grad_y
        spec_x, spec_w = self.spec_gx, self.spec_gw
        if not spec_x.quantized or spec_x.scaling in ("none",):
            g_x = operands.quantize(grad_y, spec_x, self.fmt_gx)
            g_w = g_x
        else:
            sg, gmax = self._grad_scale(grad_y, seq)
            self.last["grad_scale"] = sg
            rng = self._rng_for(spec_x)
            g_x = operands.quantize(grad_y, spec_x, self.fmt_gx, sg, rng=rng, backend=self.backend)
            g_w = g_x if spec_w.phase == spec_x.phase else \
                operands.quantize(grad_y, spec_w, self.fmt_gw, sg, rng=rng, backend=self.backend)
            if spec_x.scaling == "gradscale" and seq is None:
                self.gradscale.observe(gmax)
        w_t, w_t_packed = self._weight_t(ctx.wop)
        gx = self._product("grad_dx", g_x, w_t, w_t_packed)
        if pact:
            gx = self.pact_backward(gx, ctx.inp)
        if seq is not None:
            seq.parts.append((ctx.xop, g_w))
            return gx, None
        return gx, self._product("grad_dw", ctx.xop.T, g_w)

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
