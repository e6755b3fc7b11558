"""The precision recipe: for each GEMM operand role, its format, scaling rule, rounding and TPR phase.

A layer's GEMM has three products and four operand roles (the model: microxcaling's ``mx/specs.py``)::

    forward      y     = x      @ W           roles: activation, weight
    grad-input   dL/dx = dL/dy  @ W^T         roles: grad_dx (the output gradient as this GEMM sees it), weight
    grad-weight  dL/dW = x^T    @ dL/dy       roles: activation, grad_dw

Each role is an :class:`OperandSpec` (format name from :data:`q4core.formats.FORMAT_NAMES`, or ``fp32``;
scaling rule; rounding; TPR phase).  A :class:`Recipe` holds the four specs plus what is recipe-wide:
which layers keep a higher precision (``first_last``, ``overrides``, both naming other recipes), the
accumulator, static (frozen) scales, PACT's and the loss scale's settings, the GradScale alignment,
``simulate`` (numpy quantizers + float64 GEMMs instead of the integer kernels) and the seed.

Recipes are plain data: :meth:`Recipe.to_dict` / :meth:`Recipe.from_dict` round-trip through JSON, so
a papermill parameters cell or the ``--recipe`` option of the CLI carries them.  Validation refuses
unknown names and impossible combinations with the allowed set in the message.

Scaling rules (the scale ``s`` of an operand; real value = ``s * grid value``):

``none``        s = 1 (float formats: fp32, fp16)
``max``         s = max|x| / format max, every call (the "current" per-step scaling)
``sawb``        weights: s = SAWB clip / format max, every step
``pact``        activations: s = alpha / format max, alpha learned per layer (non-negative inputs)
``pow2-max``    s = the power of two that puts max|x| at or below the format max (FP8, HFP8-style)
``gradscale``   gradients: per-layer power-of-two GradScale (:class:`q4core.scaling.GradScale`)
``loss-scale``  gradients: no per-layer scale; the network's one global dynamic loss scale
                (the trainer's) is all the scaling they get, as in FP16 training
``fixed``       gradients: encoded at a fixed scale ``1 / grad_static_scale`` of the true gradient
                (the loss scale divided out)
``block``       block-scaled formats (``mxfp4``, ``nvfp4``): the format's own scales, one per block along the
                reduction axis of each GEMM (and NVFP4's per-tensor scale); see below

Block-scaled FP4 (2025's recipes, :mod:`q4core.blockscaled`): ``mxfp4`` (32 E2M1 elements per E8M0 scale) and
``nvfp4`` (16 E2M1 elements per E4M3 scale, one FP32 scale per tensor), scaling ``block``, rounding ``nearest``
or ``stochastic``.  A recipe that uses them uses one of them for all four roles (a block-scaled GEMM multiplies two
operands of one format).  Each GEMM operand is blocked along that GEMM's reduction axis, so the layer quantizes
a tensor once per GEMM it enters (:mod:`q4core.nn.blockscaled_gemm`).  Recipe-wide: ``weight_blocks`` ``1d``
(blocks along the reduction axis; the grad-input GEMM needs a second quantization of W, along N) or ``2d``
(block x block tiles, 16 x 16 for NVFP4: one quantization serves W and W^T); ``hadamard`` (a 16 x 16 random
Hadamard transform along the batch axis of both inputs of the weight-gradient GEMM; it cancels in exact
arithmetic); ``blockscaled_forward`` ``block`` (the forward GEMM block-scaled too) or ``fp16``/``fp32``
(a higher-precision forward, as Tseng et al.'s MXFP4 recipe keeps it).

Activations: the spec names the format and rule for non-negative inputs (after ReLU: UINT4 with PACT);
inputs that can be negative use the signed counterpart of the format with ``max`` scaling (INT4_SYM).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .._validation import check_bool, check_int, check_one_of, check_real
from ..formats import FORMAT_NAMES

__all__ = ["OperandSpec", "Recipe", "ROLES", "SCALINGS", "ROUNDINGS", "FLOAT_FORMATS", "INT_FORMATS",
           "KERNEL_GRAD_FORMATS", "BLOCK_FORMATS"]

ROLES = ("weight", "activation", "grad_dx", "grad_dw")
FLOAT_FORMATS = ("fp32", "fp16", "fp8_e4m3", "fp8_e5m2")
#: integer grids the INT4 kernels take (levels in int8)
INT_FORMATS = ("int4", "int4_sym", "uint4")
#: gradient formats with an integer kernel against INT4 (FP4 x INT4, INT4 x INT4)
KERNEL_GRAD_FORMATS = ("radix4",) + INT_FORMATS
#: block-scaled FP4 formats (:mod:`q4core.blockscaled`), scaling rule ``block``
BLOCK_FORMATS = ("mxfp4", "nvfp4")
SCALINGS = ("none", "max", "sawb", "pact", "pow2-max", "gradscale", "loss-scale", "fixed", "block")
ROUNDINGS = ("nearest", "log", "stochastic")
_ROLE_SCALINGS = {
    "weight": ("none", "max", "sawb", "pow2-max", "block"),
    "activation": ("none", "max", "pact", "pow2-max", "block"),
    "grad_dx": ("none", "max", "pow2-max", "gradscale", "loss-scale", "fixed", "block"),
    "grad_dw": ("none", "max", "pow2-max", "gradscale", "loss-scale", "fixed", "block"),
}
_ACCUMULATORS = ("exact", "fp16")
_WEIGHT_BLOCKS = ("1d", "2d")
_BLOCKSCALED_FORWARD = ("block", "fp16", "fp32")
_GRADSCALE_ALIGN = ("max", "threshold")


def _one_of(where, value, allowed):
    check_one_of(value, where, allowed)


@dataclass(frozen=True)
class OperandSpec:
    """How one GEMM operand is made: ``format`` (``fp32`` or a name of :data:`q4core.formats.FORMAT_NAMES`),
    ``scaling`` (see the module docstring), ``rounding`` (``nearest`` - the format's named tie rule -,
    ``log`` for radix formats, ``stochastic``) and ``phase`` (1: the odd grid of two-phase rounding)."""

    format: str = "fp32"
    scaling: str = "none"
    rounding: str = "nearest"
    phase: int = 0

    def check(self, role):
        where = f"recipe {role}"
        _one_of(f"{where}.format", self.format, FLOAT_FORMATS[:1] + tuple(FORMAT_NAMES) + BLOCK_FORMATS)
        _one_of(f"{where}.scaling", self.scaling, _ROLE_SCALINGS[role])
        _one_of(f"{where}.rounding", self.rounding, ROUNDINGS)
        check_one_of(self.phase, f"{where}.phase", (0, 1))
        if (self.format in BLOCK_FORMATS) != (self.scaling == "block"):
            raise ValueError(f"{where}: scaling 'block' goes with the block-scaled formats "
                             f"({', '.join(BLOCK_FORMATS)}) and they take no other; got format {self.format!r} "
                             f"with scaling {self.scaling!r}")
        if self.format in BLOCK_FORMATS:
            if self.rounding not in ("nearest", "stochastic") or self.phase:
                raise ValueError(f"{where}: {self.format} takes rounding 'nearest' or 'stochastic' and phase 0, "
                                 f"got rounding {self.rounding!r}, phase {self.phase}")
            return self
        if self.format in ("fp32", "fp16"):
            if self.scaling != "none" or self.rounding != "nearest" or self.phase:
                raise ValueError(f"{where}: {self.format} takes scaling 'none', rounding 'nearest', phase 0")
            return self
        if self.scaling == "none":
            raise ValueError(f"{where}: a {self.format} operand needs a scaling rule; allowed: "
                             f"{', '.join(s for s in _ROLE_SCALINGS[role] if s != 'none')}")
        if self.phase and self.format not in ("radix4", "radix16"):
            raise ValueError(f"{where}: phase 1 (two-phase rounding's odd grid) needs a square radix "
                             f"(radix4, radix16), not {self.format!r}")
        if self.rounding == "log" and not (self.format.startswith("radix") or self.format == "log10"):
            raise ValueError(f"{where}: rounding 'log' applies to radix formats, not {self.format!r}")
        if self.scaling == "pact" and self.format != "uint4":
            raise ValueError(f"{where}: PACT clips non-negative activations onto uint4, not {self.format!r}")
        if self.format == "uint4" and role != "activation":
            raise ValueError(f"{where}: uint4 holds non-negative activations only")
        if self.scaling == "gradscale" and self.format in INT_FORMATS + ("fp8_e4m3", "fp8_e5m2", "fp16"):
            raise ValueError(f"{where}: GradScale is for log/FP4 gradient formats, not {self.format!r}")
        return self

    @property
    def quantized(self):
        return self.format != "fp32"

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d, role="operand"):
        if isinstance(d, cls):
            return d
        if isinstance(d, str):
            d = {"format": d}
        if not isinstance(d, dict):
            raise TypeError(f"recipe {role} must be a dict of format/scaling/rounding/phase, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"recipe {role} has unknown keys {unknown}; known: format, scaling, rounding, phase")
        return cls(**d)


FP32_SPEC = OperandSpec()


@dataclass
class Recipe:
    """Precision recipe of a training run (see the module docstring)."""

    #: registry name (informational; ``+``-joined ablations)
    name: str = "fp32"
    weight: OperandSpec = FP32_SPEC
    activation: OperandSpec = FP32_SPEC
    grad_dx: OperandSpec = FP32_SPEC
    grad_dw: OperandSpec = FP32_SPEC
    #: recipe of the first and the last GEMM layer (``same``: no exception); kept high by default, as is common
    first_last: str = "same"
    #: per-layer recipes by layer name, e.g. ``{"fc2": "fp32"}``; wins over ``first_last``
    overrides: dict = field(default_factory=dict)
    #: how the 4-bit GEMM products are summed: ``exact`` (integer / exact float64) or ``fp16`` (simulated
    #: float16 accumulation in chunks of 64 along K, :mod:`q4core.accumulate`); float products (fp32, fp16,
    #: FP8 operands) always accumulate in float32, as FP16 training does
    accumulator: str = "exact"
    #: freeze weight and activation scales after the first training step instead of rescaling every step
    static_scale: bool = False
    #: GradScale keeps the scaled max |g| in (t/2, t]: ``max`` t = format max (the paper's rule);
    #: ``threshold`` t = twice the rounding threshold below the top magnitude, so the top code is always used
    gradscale_align: str = "max"
    #: gradient multiplier of the ``fixed`` gradient scaling
    grad_static_scale: float = 1.0
    #: L2 coefficient on PACT's alpha (applied on the unscaled gradient) and the initial alpha (0: first max)
    pact_l2: float = 1e-4
    pact_init: float = 0.0
    #: dynamic loss scale (FP16 layers and ``loss-scale`` gradients): initial value, growth interval
    loss_scale_init: float = 2.0 ** 12
    loss_scale_window: int = 200
    #: fake quantization (numpy quantizers + float64 GEMMs) in place of the integer kernels; same numbers
    simulate: bool = False
    #: seed of stochastic rounding (each layer derives its own stream)
    seed: int = 0
    #: threads of the integer kernels (None: the kernels' default)
    threads: int | None = None
    #: block-scaled recipes: weight blocks ``1d`` (along each GEMM's reduction axis) or ``2d`` (block x block tiles)
    weight_blocks: str = "1d"
    #: block-scaled recipes: 16 x 16 random Hadamard transform on the batch axis of the weight-gradient GEMM's inputs
    hadamard: bool = False
    #: block-scaled recipes: the forward GEMM ``block``-scaled, or in ``fp16`` / ``fp32`` (Tseng et al. keep it high)
    blockscaled_forward: str = "block"

    def __post_init__(self):
        for role in ROLES:
            setattr(self, role, OperandSpec.from_dict(getattr(self, role), role))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self):
        for role in ROLES:
            getattr(self, role).check(role)
        dx, dw = self.grad_dx, self.grad_dw
        if (dx.format, dx.scaling, dx.rounding) != (dw.format, dw.scaling, dw.rounding):
            raise ValueError("recipe grad_dx and grad_dw quantize the same gradient: they must share format, "
                             f"scaling and rounding and may differ only in phase; got {dx} and {dw}")
        if dx.phase and dw.phase:
            raise ValueError("recipe grad_dx and grad_dw are both on the odd grid; two-phase rounding puts one "
                             "copy on each grid (set one phase to 0)")
        _one_of("recipe accumulator", self.accumulator, _ACCUMULATORS)
        if self.accumulator == "fp16" and not self.four_bit:
            raise ValueError("recipe accumulator 'fp16' simulates the accumulation of 4-bit products; this "
                             "recipe has no 4-bit operand (its float GEMMs accumulate in float32)")
        _one_of("recipe gradscale_align", self.gradscale_align, _GRADSCALE_ALIGN)
        if not isinstance(self.overrides, dict):
            raise TypeError(f"recipe overrides must be a dict, got {type(self.overrides).__name__}")
        # named recipes for some layers: checked now, not when a model is built from this recipe
        from .registry import recipe_names
        known = ("same", *recipe_names())
        for where, name in [("first_last", self.first_last)] + [(f"overrides[{k!r}]", v)
                                                                 for k, v in self.overrides.items()]:
            if not (isinstance(name, (dict, Recipe)) or (isinstance(name, str) and name in known)):
                raise ValueError(f"recipe {where} must be 'same', a recipe name or a dict of Recipe fields, got "
                                 f"{name!r}; recipe names: {', '.join(known[1:])}")
        for key in ("static_scale", "simulate"):
            check_bool(getattr(self, key), f"recipe {key}")
        check_real(self.grad_static_scale, "recipe grad_static_scale", positive=True)
        check_real(self.pact_init, "recipe pact_init", min_value=0)
        check_real(self.pact_l2, "recipe pact_l2", min_value=0)
        check_real(self.loss_scale_init, "recipe loss_scale_init", min_value=1)
        check_int(self.loss_scale_window, "recipe loss_scale_window", min_value=1)
        check_int(self.seed, "recipe seed", min_value=0)
        check_int(self.threads, "recipe threads", min_value=1, allow_none=True)
        self._validate_block_scaled()
        return self

    def _validate_block_scaled(self):
        _one_of("recipe weight_blocks", self.weight_blocks, _WEIGHT_BLOCKS)
        check_bool(self.hadamard, "recipe hadamard")
        _one_of("recipe blockscaled_forward", self.blockscaled_forward, _BLOCKSCALED_FORWARD)
        formats = {getattr(self, role).format for role in ROLES}
        if not formats & set(BLOCK_FORMATS):
            for key, plain in (("weight_blocks", "1d"), ("hadamard", False), ("blockscaled_forward", "block")):
                if getattr(self, key) != plain:
                    raise ValueError(f"recipe {key}={getattr(self, key)!r} applies to block-scaled recipes "
                                     f"(formats {', '.join(BLOCK_FORMATS)}); this recipe has none")
            return
        if len(formats) != 1:
            raise ValueError("recipe: a block-scaled GEMM multiplies two operands of one format, so a block-scaled "
                             "recipe uses one block format for all four roles; got "
                             + ", ".join(f"{role} {getattr(self, role).format}" for role in ROLES))
        if self.accumulator != "exact":
            raise ValueError("recipe accumulator: block-scaled GEMMs accumulate exactly in float64 "
                             "(q4core.bsgemm); 'fp16' accumulation is for the INT4 recipes")
        if self.static_scale:
            raise ValueError("recipe static_scale: block-scaled formats compute their block scales every call; "
                             "there is no scale to freeze")

    # ------------------------------------------------------------------ what it says
    @property
    def quantized(self):
        """True when any operand role is quantized (anything but plain fp32)."""
        return any(getattr(self, role).quantized for role in ROLES)

    @property
    def four_bit(self):
        """True when any operand role is in a 4-bit format."""
        return any(getattr(self, role).format not in FLOAT_FORMATS for role in ROLES)

    @property
    def block_scaled(self):
        """True when the recipe's operands are in a block-scaled format (mxfp4, nvfp4)."""
        return self.weight.format in BLOCK_FORMATS

    def uses(self, fmt):
        return any(getattr(self, role).format == fmt for role in ROLES)

    def layer_recipe(self, layer_name, index, count):
        """The recipe of GEMM layer ``layer_name``, the ``index``-th of ``count``: its override, else
        ``first_last`` for the first and the last layer, else this recipe.  A named recipe there inherits
        this one's seed, threads and simulate; ``same`` means this recipe."""
        name = self.overrides.get(layer_name)
        if name is None and self.first_last != "same" and index in (0, count - 1):
            name = self.first_last
        if name is None or name == "same":
            return self
        from .registry import get_recipe
        return get_recipe(name, seed=self.seed, threads=self.threads, simulate=self.simulate)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self):
        d = dataclasses.asdict(self)
        d["overrides"] = dict(self.overrides)
        return d

    @classmethod
    def from_dict(cls, d):
        if isinstance(d, cls):
            return dataclasses.replace(d, overrides=dict(d.overrides))
        if not isinstance(d, dict):
            raise TypeError(f"a recipe must be a dict (or a registered name), got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown recipe keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)

    def to_json(self):
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes):
        """A copy with fields changed; a role given as a partial dict updates that role's spec."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown recipe keys {unknown}; known keys: "
                             f"{sorted(f.name for f in dataclasses.fields(self))}")
        for role in ROLES:
            if isinstance(changes.get(role), dict):
                changes[role] = dataclasses.replace(getattr(self, role), **changes[role])
        return dataclasses.replace(self, overrides=dict(changes.pop("overrides", self.overrides)), **changes)
