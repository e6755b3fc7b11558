"""One flat, serialisable precision config per experiment, with presets and named ablations.

``PrecisionConfig`` is a dataclass whose :meth:`~PrecisionConfig.to_dict` / :meth:`~PrecisionConfig.from_dict`
round-trip through JSON, so a papermill parameters cell can carry it as a plain dict.  Roles follow the
GEMMs of a layer: *weight* and *activation* (forward operands), *grad* (the layer's output gradient,
operand of both backward GEMMs: grad-input ``dL/dx = dL/dy W^T`` and grad-weight ``dL/dW = x^T dL/dy``).

Modes (``mode`` and per-layer ``overrides``):

``fp32``  float32 GEMMs.
``fp16``  every GEMM operand rounded to float16, float32 accumulation; the trainer adds dynamic loss scaling.
``q4``    the paper's recipe: weights INT4 (SAWB), activations INT4 (PACT, unsigned after ReLU), rescaled
          every step; forward GEMM through :func:`q4core.gemm.int4_matmul`; output gradients in radix-4 FP4
          with per-layer GradScale and two-phase rounding; backward GEMMs through the FP4 x INT4 kernels.
          ``simulate=True`` runs the same quantizers (numpy reference) with float64 GEMMs instead.
``fp8``   HFP8-style fake quantization: forward operands in FP8 E4M3 (1-4-3), output gradients in FP8 E5M2
          (1-5-2), each with a per-tensor power-of-two scale from its max |x|; float32 GEMMs.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

__all__ = ["PrecisionConfig", "PRESETS", "ABLATIONS", "make_policy", "MODES", "GRAD_FORMATS"]

MODES = ("fp32", "fp16", "fp8", "q4")
GRAD_FORMATS = ("radix4", "radix2", "e2m1", "int4", "log10")
_WEIGHT_SCALINGS = ("sawb", "minmax")
_ACT_SCALINGS = ("pact", "minmax")
_ROUNDINGS = ("nearest", "stochastic")


@dataclass
class PrecisionConfig:
    """Precision policy of one training run (see the module docstring for the roles and modes)."""

    #: mode of every GEMM layer not overridden: fp32 | fp16 | fp8 | q4
    mode: str = "fp32"
    #: name of the preset/ablation this config came from (informational)
    name: str = "fp32"
    #: q4 weight range estimator: sawb | minmax
    weight_scaling: str = "sawb"
    #: q4 activation range estimator for non-negative inputs: pact | minmax (signed inputs always use minmax)
    activation_scaling: str = "pact"
    #: freeze every weight/activation scale after the first training step instead of rescaling each step
    static_scale: bool = False
    #: gradient format: radix4 | radix2 | e2m1 | int4 | log10 (only radix4 and int4 have integer kernels;
    #: the others always run simulated)
    grad_format: str = "radix4"
    #: per-layer power-of-two GradScale; off -> the gradient is encoded with scale ``1 / grad_static_scale``
    gradscale: bool = True
    #: the fixed gradient multiplier used when ``gradscale`` is off
    grad_static_scale: float = 1.0
    #: two-phase rounding (needs a radix that is a perfect square: radix4)
    tpr: bool = True
    #: which TPR copy feeds the grad-input GEMM (0 even grid, 1 odd grid); grad-weight gets the other
    tpr_input_phase: int = 0
    #: gradient rounding: nearest (ties away from zero) | stochastic
    grad_rounding: str = "nearest"
    #: seed of stochastic rounding (each layer derives its own stream from it)
    seed: int = 0
    #: fake quantization (numpy quantizers + float64 GEMMs) instead of the integer kernels
    simulate: bool = False
    #: mode of the first and the last GEMM layer (kept high by default, as is common)
    first_last: str = "fp16"
    #: per-layer modes by layer name, e.g. {"fc2": "fp32"}; wins over ``first_last``
    overrides: dict = field(default_factory=dict)
    #: L2 coefficient on PACT's alpha
    pact_l2: float = 1e-4
    #: initial PACT alpha; 0 -> max of the first batch the layer sees
    pact_init: float = 0.0
    #: fp16 dynamic loss scaling: initial scale, growth interval (steps without overflow before doubling)
    loss_scale_init: float = 2.0 ** 12
    loss_scale_window: int = 200
    #: threads of the integer kernels (None: the kernels' default)
    threads: int | None = None

    def __post_init__(self):
        self.validate()

    def validate(self):
        def one_of(name, options):
            value = getattr(self, name)
            if value not in options:
                raise ValueError(f"PrecisionConfig.{name} must be one of {options}, got {value!r}")
        one_of("mode", MODES)
        one_of("first_last", MODES)
        one_of("weight_scaling", _WEIGHT_SCALINGS)
        one_of("activation_scaling", _ACT_SCALINGS)
        one_of("grad_format", GRAD_FORMATS)
        one_of("grad_rounding", _ROUNDINGS)
        one_of("tpr_input_phase", (0, 1))
        if not isinstance(self.overrides, dict):
            raise TypeError(f"PrecisionConfig.overrides must be a dict, got {type(self.overrides).__name__}")
        for layer, mode in self.overrides.items():
            if mode not in MODES:
                raise ValueError(f"PrecisionConfig.overrides[{layer!r}] must be one of {MODES}, got {mode!r}")
        if self.tpr and self.grad_format not in ("radix4",):
            raise ValueError(f"two-phase rounding needs grad_format='radix4' (a square radix), got "
                             f"{self.grad_format!r}; set tpr=False")
        if not self.grad_static_scale > 0:
            raise ValueError(f"PrecisionConfig.grad_static_scale must be positive, got {self.grad_static_scale!r}")
        if self.pact_init < 0 or self.pact_l2 < 0:
            raise ValueError("PrecisionConfig.pact_init and pact_l2 must be non-negative")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"PrecisionConfig.threads must be a positive int or None, got {self.threads!r}")
        return self

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        if isinstance(d, cls):
            return dataclasses.replace(d)
        if not isinstance(d, dict):
            raise TypeError(f"a precision config must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown precision config keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)

    def to_json(self):
        return json.dumps(self.to_dict(), sort_keys=True)

    def mode_of(self, layer_name, index, count):
        """Mode of GEMM layer ``layer_name``, the ``index``-th of ``count`` GEMM layers."""
        if layer_name in self.overrides:
            return self.overrides[layer_name]
        if self.mode in ("q4", "fp8") and (index == 0 or index == count - 1):
            return self.first_last
        return self.mode


PRESETS = {
    "fp32": dict(mode="fp32"),
    "fp16": dict(mode="fp16"),
    "fp8": dict(mode="fp8"),
    "q4": dict(mode="q4"),
}

#: named ablations of the q4 recipe: each switches off or swaps one piece
ABLATIONS = {
    "no-gradscale": dict(gradscale=False),
    "no-tpr": dict(tpr=False),
    "int4-grad": dict(grad_format="int4", tpr=False, gradscale=False),
    "radix2": dict(grad_format="radix2", tpr=False),
    "e2m1": dict(grad_format="e2m1", tpr=False),
    "log10": dict(grad_format="log10", tpr=False),
    "static-scale": dict(static_scale=True),
    "minmax": dict(weight_scaling="minmax", activation_scaling="minmax"),
    "stochastic": dict(grad_rounding="stochastic"),
    "all-q4": dict(first_last="q4"),
    "simulate": dict(simulate=True),
}


def make_policy(precision="fp32", ablation=None, **overrides):
    """Config of a preset (``fp32``, ``fp16``, ``q4``), with an ablation or a list of ablations and
    keyword overrides applied on top.  ``precision`` may also be a dict or a PrecisionConfig."""
    if isinstance(precision, (dict, PrecisionConfig)):
        base = PrecisionConfig.from_dict(precision).to_dict()
    elif precision in PRESETS:
        base = dict(PRESETS[precision], name=precision)
    else:
        raise ValueError(f"precision must be one of {sorted(PRESETS)} or a config dict, got {precision!r}")
    ablations = [] if ablation is None else [ablation] if isinstance(ablation, str) else list(ablation)
    for name in ablations:
        if name not in ABLATIONS:
            raise ValueError(f"unknown ablation {name!r}; known: {sorted(ABLATIONS)}")
        if base.get("mode") != "q4":
            raise ValueError(f"ablation {name!r} applies to the q4 precision, not {base.get('mode')!r}")
        base.update(ABLATIONS[name])
    if ablations:
        base["name"] = base.get("name", precision) + "+" + "+".join(ablations)
    base.update(overrides)
    return PrecisionConfig.from_dict(base)
