"""The GEMM of a layer under its precision mode: ``y = x @ w`` forward, both backward GEMMs.

One :class:`QuantGemm` belongs to each Linear/Conv/recurrent layer and holds its quantizer state
(PACT alpha, GradScale, frozen static scales, the stochastic-rounding stream) and the last tensors it
saw (``last``), so a notebook can record ranges and real gradients during training.

q4 arithmetic, integer path (``simulate=False``)
    forward   ``int4_matmul(levels(x), levels(w))`` (int32, exact) times ``s_x * s_w``
    grad-in   ``fp4_int4_matmul(codes(g), levels(w)^T)`` (int64 units, exact) times ``f * 4**-6 * s_g * s_w``
    grad-w    ``int4_fp4_matmul(levels(x)^T, codes(g))`` times ``f * 4**-6 * s_x * s_g``
q4 arithmetic, simulated path (``simulate=True``)
    the same quantizers run as the numpy reference (``backend="numpy"``), operands are dequantized at
    unit scale (integer levels, FP4 values ``f * 4**(e-7)``) and multiplied by a float64 BLAS GEMM; the
    per-tensor scales are applied after the GEMM in the same float64 expression as the integer path.
    Every operand is an integer times a power of two and every sum stays below 2**53, so the float64
    GEMM is exact and both paths give identical results (tested).
"""
from __future__ import annotations

import math

import numpy as np

from .. import gemm as _gemm
from ..formats import E2M1, FP8_E4M3, FP8_E5M2, INT4, LOG10_4BIT, RADIX2_FP4, UINT4, IntFormat, RadixFP
from ..scaling import GradScale, int_scale, minmax_clip, sawb_clip
from .core import Module, Parameter
from .half import round_to_float16
from .policy import PrecisionConfig

__all__ = ["QuantGemm", "WeightOperand"]

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


def _fp8(fmt, x):
    """``x`` rounded to ``fmt`` (an FP8 MiniFloat) with a per-tensor power-of-two scale that puts max |x|
    at or below the format's max (float32 result; Inf/NaN propagate so loss scaling can see them)."""
    x = np.asarray(x, np.float32)
    m = float(np.max(np.abs(x))) if x.size else 0.0
    if not math.isfinite(m):
        return x.copy()
    scale = 1.0 if m == 0.0 else 2.0 ** math.ceil(math.log2(m / fmt.max))
    return fmt.quantize(x, scale, backend="numpy")


class WeightOperand:
    """A weight matrix prepared once per forward pass (reused by every timestep of a recurrent layer)."""

    __slots__ = ("w", "mode", "data", "scale", "levels_t", "packed", "packed_t")

    def __init__(self, w, mode, data, scale=1.0):
        self.w, self.mode, self.data, self.scale = w, mode, data, scale
        self.levels_t = self.packed = self.packed_t = None


class _Input:
    """A layer input after :meth:`QuantGemm.prepare_input`: the float input ``x``, the GEMM operand
    ``data`` (float, or INT4/UINT4 levels), its scale ``sx`` and PACT clip ``clip`` (None: no PACT)."""

    __slots__ = ("x", "data", "sx", "clip")

    def __init__(self, x, data, sx, clip):
        self.x, self.data, self.sx, self.clip = x, data, sx, clip


class _Ctx:
    __slots__ = ("xq", "sx", "wop", "inp")

    def __init__(self, xq, sx, wop, inp):
        self.xq, self.sx, self.wop, self.inp = xq, sx, wop, inp


class _Sequence:
    """State of a multi-call backward pass (see :meth:`QuantGemm.begin_sequence`)."""

    __slots__ = ("parts", "sg", "gmax")

    def __init__(self):
        self.parts, self.sg, self.gmax = [], None, 0.0


class QuantGemm(Module):
    """GEMM engine of one layer.  ``mode`` is set by :meth:`configure` (via ``Module.set_policy``)."""

    def __init__(self):
        self.alpha = Parameter(np.zeros(()), decay=False)   # PACT clip; 0 = not yet initialised
        self.config = PrecisionConfig()
        self.mode = "fp32"
        self.index = 0
        self.name = ""
        self.unsigned = None          # input non-negative? fixed at the first forward in q4
        self.gradscale = GradScale(1.0)
        self.static_w = self.static_x = None
        #: a known bound of |input| used as the clip of signed inputs instead of a per-call estimate
        #: (set by recurrent layers, whose per-timestep inputs must share one scale)
        self.fixed_clip = None
        self.last = {}
        self._rng = None
        self.training = True

    # ------------------------------------------------------------------ configuration
    def configure(self, config, mode, index=0, name=""):
        self.config, self.mode, self.index, self.name = config, mode, index, name
        if mode == "q4":
            fmt = self.grad_format(0)
            self.gradscale = GradScale(fmt.max)    # unused when config.gradscale is off
            self._rng = np.random.default_rng([config.seed, index])
        return self

    def grad_format(self, phase):
        cfg = self.config
        r = cfg.grad_rounding
        if cfg.grad_format == "radix4":
            return RadixFP(4, 3, phase=phase, rounding=r)
        if cfg.grad_format == "radix2":
            return RadixFP(2, 3, rounding=r) if r != "nearest" else RADIX2_FP4
        if cfg.grad_format == "log10":
            return RadixFP(10, 3, rounding=r) if r != "nearest" else LOG10_4BIT
        if cfg.grad_format == "e2m1":
            return E2M1 if r == "nearest" else type(E2M1)(2, 1, bias=1, ieee=False, rounding=r)
        return IntFormat(4, rounding=r)

    def _backend(self):
        return "numpy" if self.config.simulate else "auto"

    def _rng_or_none(self):
        return self._rng if self.config.grad_rounding == "stochastic" else None

    def _frozen(self):
        """Static-scale ablation: scales are measured while training and frozen after the first step."""
        return self.config.static_scale

    # ------------------------------------------------------------------ weights
    def prepare_weight(self, w):
        """Quantize/round the (K, N) weight once for this forward pass."""
        if self.mode == "fp32":
            return WeightOperand(w, "fp32", w)
        if self.mode == "fp16":
            return WeightOperand(w, "fp16", round_to_float16(w))
        if self.mode == "fp8":
            return WeightOperand(w, "fp8", _fp8(FP8_E4M3, w))
        if self._frozen() and self.static_w is not None:
            sw = self.static_w
        else:
            clip = sawb_clip(w) if self.config.weight_scaling == "sawb" else minmax_clip(w)
            sw = int_scale(clip)
            if self._frozen() and self.training:
                self.static_w = sw
        levels = INT4.encode(np.ascontiguousarray(w), sw, backend=self._backend())
        np.maximum(levels, -7, out=levels)      # symmetric levels -7..7
        op = WeightOperand(w, "q4", levels, sw)
        if not self.config.simulate:
            op.packed = _gemm.pack_int4(levels)
        return op

    def _weight_t(self, wop):
        if wop.levels_t is None:
            wop.levels_t = np.ascontiguousarray(wop.data.T)
            if not self.config.simulate:
                wop.packed_t = _gemm.pack_int4(wop.levels_t)
        return wop.levels_t if self.config.simulate else wop.packed_t

    # ------------------------------------------------------------------ activations
    def _quantize_input(self, x):
        cfg = self.config
        if self.unsigned is None:
            self.unsigned = bool(x.size == 0 or x.min() >= 0)
        backend = self._backend()
        if self.unsigned:
            if cfg.activation_scaling == "pact":
                if float(self.alpha.data) <= 0.0:
                    init = cfg.pact_init or minmax_clip(x, unsigned=True)
                    self.alpha.data[...] = init if init > 0 else 1.0
                clip = float(self.alpha.data)
            else:
                clip = minmax_clip(x, unsigned=True)
            if self._frozen() and self.static_x is not None:
                sx = self.static_x
                clip = sx * 15
            else:
                sx = int_scale(clip, unsigned=True)
            if self._frozen() and self.training and self.static_x is None:
                self.static_x = sx
            # PACT's clip(x, 0, alpha) needs no pass of its own: with step alpha / 15 the UINT4 encoder's
            # saturation at levels 0 and 15 gives exactly the levels of the clipped input
            return UINT4.encode(np.ascontiguousarray(x), sx, backend=backend), sx, clip
        if self.fixed_clip is not None:
            sx = int_scale(self.fixed_clip)
        elif self._frozen() and self.static_x is not None:
            sx = self.static_x
        else:
            sx = int_scale(minmax_clip(x))
            if self._frozen() and self.training:
                self.static_x = sx
        levels = INT4.encode(np.ascontiguousarray(x), sx, backend=backend)
        np.maximum(levels, -7, out=levels)
        return levels, sx, None

    # ------------------------------------------------------------------ forward / backward
    def prepare_input(self, x):
        """Round (fp16/fp8) or quantize (q4) a layer input once.  Convolutions call this on the image and
        run im2col on the result: rounding and quantization act elementwise and im2col only copies and
        zero-pads (zero is exact on every grid, and the range of the patches is the range of the image),
        so this equals quantizing the patch matrix, with a fraction of the work."""
        if self.mode == "fp32":
            return _Input(x, x, 1.0, None)
        if self.mode == "fp16":
            return _Input(x, round_to_float16(x), 1.0, None)
        if self.mode == "fp8":
            return _Input(x, _fp8(FP8_E4M3, x), 1.0, None)
        xq, sx, clip = self._quantize_input(x)
        return _Input(x, xq, sx, clip)

    def forward(self, x, wop, inp=None, data=None):
        """``x`` (M, K) float32, ``wop`` from :meth:`prepare_weight` -> ``(y, ctx)``, y (M, N) float32.

        Convolutions pass ``inp`` (from :meth:`prepare_input` on the image; ``x`` is then ignored) and
        ``data``, the (M, K) patch matrix made from ``inp.data``."""
        if inp is None:
            inp = self.prepare_input(x)
        data = inp.data if data is None else data
        self.last["input"] = inp.x
        self.last["weight"] = wop.w
        ctx = _Ctx(data, inp.sx, wop, inp)
        if wop.mode != "q4":
            return data @ wop.data, ctx
        self.last["act_scale"], self.last["weight_scale"] = inp.sx, wop.scale
        K = data.shape[1]
        if self.config.simulate:
            acc = data.astype(np.float64) @ wop.data.astype(np.float64)
        else:
            acc = _gemm.int4_matmul(data, wop.packed, threads=self.config.threads)
        return _rescale(acc, inp.sx * wop.scale, K * 8 * 15 < _F32_EXACT), ctx

    def pact_backward(self, grad_x, inp):
        """PACT's straight-through gradient for an input prepared by :meth:`prepare_input` (same shape as
        ``inp.x``): ``dL/dalpha`` gains the sum of ``dL/dx`` where ``x >= alpha`` (plus L2 on alpha);
        ``dL/dx`` passes where ``0 <= x < alpha``.  Identity for inputs without a PACT clip."""
        if inp.clip is None or self.mode != "q4" or self.config.activation_scaling != "pact":
            return grad_x
        # masks applied by multiplication: np.where / boolean indexing are slow on random masks
        x = inp.x
        over = (x >= np.float32(inp.clip)).astype(grad_x.dtype)
        self.alpha.grad += np.float32(np.sum(grad_x * over, dtype=np.float64)
                                      + self.config.pact_l2 * float(self.alpha.data))
        return grad_x * ((x >= 0).astype(grad_x.dtype) - over)

    def backward(self, grad_y, ctx, seq=None, pact=True):
        """``dL/dy`` (M, N) -> ``(dL/dx (M, K), dL/dW (K, N))``.

        ``pact``: apply PACT's gradient to ``dL/dx`` here (a plain forward); convolutions pass False and
        call :meth:`pact_backward` on the image-shaped gradient after col2im.  With ``seq``
        (from :meth:`begin_sequence`) the weight gradient is deferred: ``dL/dW`` is returned as None and
        :meth:`finish_sequence` forms the sum over all calls with one GEMM."""
        self.last["grad_output"] = grad_y
        wop = ctx.wop
        if wop.mode in ("fp32", "fp16", "fp8"):
            g = grad_y if wop.mode == "fp32" else round_to_float16(grad_y) if wop.mode == "fp16" else \
                _fp8(FP8_E5M2, grad_y)
            x = ctx.xq
            gx = g @ wop.data.T
            if seq is None:
                return gx, x.T @ g
            seq.parts.append(("float", x, g, 1.0, 1.0, 0))
            return gx, None
        gx, gw = self._backward_q4(grad_y, ctx, seq)
        if pact:
            gx = self.pact_backward(gx, ctx.inp)
        return gx, gw

    def begin_sequence(self):
        """Start a backward pass made of many calls (a recurrent layer's timesteps): one gradient scale
        for the whole pass, GradScale updated once from its max, and one weight-gradient GEMM at the end."""
        return _Sequence()

    def finish_sequence(self, seq):
        """The weight gradient summed over the calls of ``seq`` (None if there were none)."""
        if self.mode == "q4" and self.config.gradscale and seq.gmax > 0:
            self.gradscale.observe(seq.gmax)
        total = None
        groups = {}
        for kind, x, g, sx, sg, phase in seq.parts:
            groups.setdefault((kind, sx, sg, phase), []).append((x, g))
        for (kind, sx, sg, phase), items in groups.items():
            X = np.concatenate([x for x, _ in items]) if len(items) > 1 else items[0][0]
            G = np.concatenate([g for _, g in items]) if len(items) > 1 else items[0][1]
            part = self._weight_product(kind, X, G, sx, sg, phase)
            total = part if total is None else total + part
        return total

    def _weight_product(self, kind, x, g, sx, sg, phase=0):
        """``x^T g`` for one operand kind (float, radix-4 FP4 codes, other formats' unit values, INT4)."""
        cfg = self.config
        if kind == "float":
            return x.T @ g
        sim = cfg.simulate
        if kind == "radix4":
            fmt = self.grad_format(phase)
            f = fmt.factor * 4.0 ** -6
            if sim:
                acc = (x.T.astype(np.float64) @ fmt.decode(g)) * (1.0 / f)
            else:
                acc = _gemm.int4_fp4_matmul(np.ascontiguousarray(x.T), g, threads=cfg.threads)
            return _rescale(acc, f * sx * sg, x.shape[0] * 15 * 4096 < _F32_EXACT)
        if kind == "int4":
            if sim:
                acc = x.T.astype(np.float64) @ g.astype(np.float64)
            else:
                acc = _gemm.int4_matmul(np.ascontiguousarray(x.T), g, threads=cfg.threads)
            return _rescale(acc, sx * sg, x.shape[0] * 15 * 8 < _F32_EXACT)
        # "values": gradients of a format without an integer kernel, dequantized at unit scale
        return _rescale(x.T.astype(np.float64) @ g, sx * sg, False)

    def _backward_q4(self, gy, ctx, seq=None):
        cfg = self.config
        wop = ctx.wop
        sim = cfg.simulate
        gmax = max(float(gy.max()), -float(gy.min())) if gy.size else 0.0    # max |g| without an |g| copy
        if not math.isfinite(gmax):
            raise FloatingPointError(f"layer {self.name!r}: the output gradient contains NaN or Inf")
        w_t = self._weight_t(wop)
        rng = self._rng_or_none()
        backend = self._backend()
        if cfg.grad_format == "int4":
            # a per-call scale from max |g|: calls of a sequence cannot share one GEMM unless equal
            sg = int_scale(gmax)
            g = self.grad_format(0).encode(gy, sg, rng=rng, backend=backend)
            np.maximum(g, -7, out=g)
            self.last["grad_scale"] = sg
            if sim:
                acc_x = g.astype(np.float64) @ w_t.astype(np.float64)
            else:
                acc_x = _gemm.int4_matmul(g, w_t, threads=cfg.threads)
            gx = _rescale(acc_x, sg * wop.scale, g.shape[1] * 8 * 8 < _F32_EXACT)
            part = ("int4", ctx.xq, g, ctx.sx, sg, 0)
        else:
            if seq is not None and seq.sg is not None:
                sg = seq.sg
            elif cfg.gradscale:
                self.gradscale.initialise(gmax)
                sg = self.gradscale.encode_scale()
            else:
                sg = 1.0 / cfg.grad_static_scale
            if seq is not None:
                seq.sg = sg
                seq.gmax = max(seq.gmax, gmax)
            self.last["grad_scale"] = sg
            if cfg.grad_format == "radix4":
                p_in = cfg.tpr_input_phase if cfg.tpr else 0
                p_w = 1 - p_in if cfg.tpr else 0
                fmt_in, fmt_w = self.grad_format(p_in), self.grad_format(p_w)
                g_in = fmt_in.encode(gy, sg, rng=rng, backend=backend)
                g_w = fmt_w.encode(gy, sg, rng=rng, backend=backend) if cfg.tpr else g_in
                f_in = fmt_in.factor * 4.0 ** -6
                if sim:
                    # dequantize at unit scale (f * 4**(e-7)), exact float64 GEMM, back to integer units
                    acc_x = (fmt_in.decode(g_in) @ w_t.astype(np.float64)) * (1.0 / f_in)
                else:
                    acc_x = _gemm.fp4_int4_matmul(g_in, w_t, threads=cfg.threads)
                # FP4 units 4**(e-1) <= 4096 (both phases), |INT4 levels| <= 8
                gx = _rescale(acc_x, f_in * sg * wop.scale, g_in.shape[1] * 4096 * 8 < _F32_EXACT)
                part = ("radix4", ctx.xq, g_w, ctx.sx, sg, p_w)
            else:
                # radix-2, base-10 and E2M1 gradients have no integer kernel: always fake quantization
                fmt = self.grad_format(0)
                v = fmt.decode(fmt.encode(gy, sg, rng=rng, backend="numpy"))
                gx = _rescale(v @ wop.data.astype(np.float64).T, sg * wop.scale, False)
                part = ("values", ctx.xq, v, ctx.sx, sg, 0)
            if cfg.gradscale and seq is None:
                self.gradscale.observe(gmax)
        if seq is not None:
            seq.parts.append(part)
            return gx, None
        return gx, self._weight_product(*part)

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
