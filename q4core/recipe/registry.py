"""Named recipes: the precisions, the paper's 4-bit recipe, its ablations and the notebooks' studies.

``get_recipe(name)`` returns a fresh :class:`~q4core.recipe.spec.Recipe`; ``get_recipe("q4",
ablation=["no-tpr"], simulate=True)`` applies named ablations (:data:`ABLATIONS`, each a patch of the q4
recipe) and field overrides on top.  Every name (presets, ``q4+<ablation>``, the block-scaled FP4 recipes of
2025 and their ablations, the study recipes of notebooks 02 and 03) is listed by :func:`recipe_names`.
"""
from __future__ import annotations

from .spec import OperandSpec, Recipe

__all__ = ["PRESETS", "ABLATIONS", "BLOCK_SCALED", "BLOCK_ABLATIONS", "BLOCK_SCALED_ABLATED", "STUDIES",
           "get_recipe", "recipe_names", "SWEEP_GRAD_FORMATS",
           "grad_recipe"]

_W_SAWB = OperandSpec("int4_sym", "sawb")
_A_PACT = OperandSpec("uint4", "pact")
_G_EVEN = OperandSpec("radix4", "gradscale", phase=0)
_G_ODD = OperandSpec("radix4", "gradscale", phase=1)
_FP16 = OperandSpec("fp16")

#: the precisions a run is compared across
PRESETS = {
    "fp32": {},
    "fp16": dict(weight=_FP16, activation=_FP16, grad_dx=_FP16, grad_dw=_FP16),
    # HFP8-style: E4M3 forward, E5M2 gradients, per-tensor power-of-two scales, float32 GEMMs
    "fp8": dict(weight=OperandSpec("fp8_e4m3", "pow2-max"), activation=OperandSpec("fp8_e4m3", "pow2-max"),
                grad_dx=OperandSpec("fp8_e5m2", "pow2-max"), grad_dw=OperandSpec("fp8_e5m2", "pow2-max"),
                first_last="fp16"),
    # the paper: SAWB INT4 weights, PACT UINT4 activations, radix-4 FP4 gradients with per-layer GradScale and
    # two-phase rounding (even grid into dL/dx, odd grid into dL/dW); first and last layers in FP16
    "q4": dict(weight=_W_SAWB, activation=_A_PACT, grad_dx=_G_EVEN, grad_dw=_G_ODD, first_last="fp16"),
}


def _block(fmt, rounding="nearest"):
    return OperandSpec(fmt, "block", rounding)


#: 2025's block-scaled FP4 training recipes (q4core.blockscaled formats; layers: q4core.nn.blockscaled_gemm)
BLOCK_SCALED = {
    # NVIDIA, "Pretraining LLMs with NVFP4" (arXiv 2509.25149): NVFP4 in all three GEMMs; 16 x 16 weight tiles,
    # 1 x 16 blocks for activations and gradients; stochastic rounding on gradients only; a 16 x 16 random
    # Hadamard transform on the weight-gradient GEMM's inputs; the last ~15 % of layers (and the first) in BF16.
    # Our models have a handful of GEMM layers, so "first and last layer" is the closest cut; BF16 has no numpy
    # type and fp16 is the engine's 16-bit precision (the one q4 keeps them in), so they run in fp16.
    "nvfp4": dict(weight=_block("nvfp4"), activation=_block("nvfp4"), grad_dx=_block("nvfp4", "stochastic"),
                  grad_dw=_block("nvfp4", "stochastic"), weight_blocks="2d", hadamard=True, first_last="fp16"),
    # Tseng et al., "Training LLMs with MXFP4" (arXiv 2502.20586): the backward GEMMs in MXFP4 (blocks of 32,
    # E8M0 scales) with stochastic rounding of the gradients and a random Hadamard transform bounding its
    # variance; the forward pass stays in BF16 (fp16 here, as above); first and last layer as in q4 and nvfp4.
    "mxfp4": dict(weight=_block("mxfp4"), activation=_block("mxfp4"), grad_dx=_block("mxfp4", "stochastic"),
                  grad_dw=_block("mxfp4", "stochastic"), hadamard=True, blockscaled_forward="fp16",
                  first_last="fp16"),
}

#: ablations of the block-scaled recipes (``nvfp4+no-rht``, ...): each switches off or swaps one piece
BLOCK_ABLATIONS = {
    "no-rht": dict(hadamard=False),
    "no-sr": dict(grad_dx=_block("nvfp4"), grad_dw=_block("nvfp4")),
    "1d-weights": dict(weight_blocks="1d"),
    # NVFP4's recipe with MXFP4's scales: E8M0 per 32 elements (2-D weight tiles become 32 x 32), no tensor scale
    "mx-scales": dict(weight=_block("mxfp4"), activation=_block("mxfp4"), grad_dx=_block("mxfp4", "stochastic"),
                      grad_dw=_block("mxfp4", "stochastic")),
}

#: the registered ablations of each block-scaled recipe
BLOCK_SCALED_ABLATED = {"nvfp4": ("no-rht", "no-sr", "1d-weights", "mx-scales"), "mxfp4": ("no-rht",)}


def _grads(fmt, scaling="gradscale", tpr=None, rounding="nearest"):
    """Both gradient roles in ``fmt``; two-phase rounding wherever the radix allows it (unless tpr=False)."""
    tpr = fmt in ("radix4", "radix16") if tpr is None else tpr
    return dict(grad_dx=OperandSpec(fmt, scaling, rounding, 0), grad_dw=OperandSpec(fmt, scaling, rounding, int(tpr)))


#: named ablations of the q4 recipe: each switches off or swaps one piece
ABLATIONS = {
    "no-tpr": dict(grad_dw=_G_EVEN),
    # the paper's comparison for GradScale: one global dynamic loss scale for the whole network
    "global-loss-scale": _grads("radix4", "loss-scale"),
    # gradients at a fixed unit scale (no scaling at all: most of them underflow)
    "fixed-grad-scale": _grads("radix4", "fixed"),
    "int4-grad": _grads("int4_sym", "max"),
    "radix2": _grads("radix2"),
    "radix8": _grads("radix8"),
    "radix16": _grads("radix16"),
    "log10": _grads("log10"),
    "e2m1": _grads("e2m1"),
    "static-scale": dict(static_scale=True),
    "minmax": dict(weight=OperandSpec("int4_sym", "max"), activation=OperandSpec("uint4", "max")),
    "stochastic": _grads("radix4", rounding="stochastic"),
    "log-rounding": _grads("radix4", rounding="log"),
    "gradscale-threshold": dict(gradscale_align="threshold"),
    "all-q4": dict(first_last="same"),
    # the paper's hardware sums in FP16: simulated, chunks of 64 along K (q4core.accumulate)
    "fp16-accumulate": dict(accumulator="fp16"),
    "simulate": dict(simulate=True),
}

#: gradient formats of notebook 03's sweep
SWEEP_GRAD_FORMATS = ("int4_sym", "radix2", "radix4", "radix8", "log10", "radix16", "e2m1")


def grad_recipe(fmt, tpr=None, rounding="nearest"):
    """Notebook 03's study: float32 forward, gradients of every layer in ``fmt`` (GradScale for the log and FP
    formats, the per-step max for linear INT4), two-phase rounding where the radix allows it."""
    scaling = "max" if fmt == "int4_sym" else "gradscale"
    return dict(_grads(fmt, scaling, tpr=tpr, rounding=rounding))


#: recipes of notebook 02 (4-bit forward, float32 gradients, every layer) and 03 (float forward, 4-bit gradients)
STUDIES = {
    "fwd-fixed": dict(weight=OperandSpec("int4_sym", "max"), activation=OperandSpec("uint4", "max"),
                      static_scale=True),
    "fwd-max": dict(weight=OperandSpec("int4_sym", "max"), activation=OperandSpec("uint4", "max")),
    "fwd-sawb-pact": dict(weight=_W_SAWB, activation=_A_PACT),
    **{f"grad-{fmt}": grad_recipe(fmt) for fmt in SWEEP_GRAD_FORMATS},
    "grad-radix4-one-grid": grad_recipe("radix4", tpr=False),
}


def recipe_names():
    """Every registered name: presets, ``q4+<ablation>`` for each ablation, the studies."""
    return (sorted(PRESETS) + [f"q4+{a}" for a in ABLATIONS] + sorted(BLOCK_SCALED)
            + [f"{r}+{a}" for r in sorted(BLOCK_SCALED) for a in BLOCK_SCALED_ABLATED[r]] + sorted(STUDIES))


def _base(name):
    if name in PRESETS:
        return dict(PRESETS[name], name=name)
    if name in STUDIES:
        return dict(STUDIES[name], name=name)
    if name in BLOCK_SCALED:
        return dict(BLOCK_SCALED[name], name=name)
    head, sep, tail = name.partition("+")
    if sep and (head in PRESETS or head in STUDIES or head in BLOCK_SCALED):
        return _patched(_base(head), tail.split("+"))
    raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(recipe_names())} "
                     f"(or a dict of Recipe fields)")


def _patched(base, ablations):
    for a in ablations:
        block_scaled = Recipe.from_dict(base).block_scaled
        table = BLOCK_ABLATIONS if block_scaled else ABLATIONS
        if a not in table:
            raise ValueError(f"unknown ablation {a!r} of {'a block-scaled' if block_scaled else 'a 4-bit'} recipe; "
                             f"known ablations: {', '.join(table)}")
        if not Recipe.from_dict(base).four_bit:
            raise ValueError(f"ablation {a!r} changes a 4-bit recipe; {base.get('name')!r} has no 4-bit operand")
        patch = dict(BLOCK_ABLATIONS[a]) if block_scaled else ABLATIONS[a]
        if a == "no-sr":        # nearest rounding of the recipe's own gradient format
            patch = {role: _block(base["grad_dx"].format) for role in ("grad_dx", "grad_dw")}
        base = dict(base, **patch)
    if ablations:
        base["name"] = base.get("name", "custom") + "".join(f"+{a}" for a in ablations)
    return base


def get_recipe(recipe="fp32", ablation=None, **overrides):
    """A fresh :class:`Recipe`: ``recipe`` is a registered name, a dict of Recipe fields or a Recipe;
    ``ablation`` a name or list of names of :data:`ABLATIONS` applied in order; ``overrides`` set fields
    (a role given as a partial dict updates that role)."""
    if isinstance(recipe, Recipe):
        base = recipe.to_dict()
    elif isinstance(recipe, dict):
        base = Recipe.from_dict(recipe).to_dict()
    elif isinstance(recipe, str):
        base = _base(recipe)
    else:
        raise TypeError(f"recipe must be a name, a dict or a Recipe, got {type(recipe).__name__}")
    ablations = [] if ablation is None else [ablation] if isinstance(ablation, str) else list(ablation)
    base = _patched(base, ablations)
    return Recipe.from_dict(base).replace(**overrides) if overrides else Recipe.from_dict(base)
