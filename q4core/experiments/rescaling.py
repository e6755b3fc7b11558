"""Notebook 02: ranges drift during training; fixed scale vs per-step rescaling vs SAWB/PACT.

:func:`record_ranges` trains an MLP on the engine with SAWB weights and PACT activations (recipe
``fwd-sawb-pact``: 4-bit forward on the integer kernels, float32 gradients) and, at every step, measures each
layer's weight and input range and the quantization SNR the same tensors get under each scaling, each made by
the one operand quantizer (:mod:`q4core.recipe.operands`):

* weights - ``fixed`` (clip = max |W| of the first step, frozen), ``current`` (max |W| of this step),
  ``sawb`` (SAWB clip of this step); INT4_SYM -7..7;
* activations (the ReLU output, the input of layers 2..) - ``fixed`` (max of the first step), ``current``
  (max of this step), ``pact`` (this step's learned alpha); UINT4 0..15.

:func:`compare_trainings` trains the same network under each scaling recipe for several seeds.
"""
from __future__ import annotations

import numpy as np

from .._validation import check_int
from ..recipe import get_recipe, operands
from ..scaling import minmax_clip, sawb_clip
from .common import accuracy_by_recipe, snr_or_nan, train_mlp

#: label -> recipe name (4-bit forward on every layer, float32 gradients)
RECIPES = {
    "fp32": "fp32",
    "fixed scale": "fwd-fixed",
    "per-step max": "fwd-max",
    "SAWB + PACT": "fwd-sawb-pact",
}


def _snr_at_clip(x, spec, fmt, clip):
    """SNR of ``x`` made into an operand of ``spec`` at ``clip`` (the layer's rule, with another clip)."""
    op = operands.quantize(np.ascontiguousarray(x, np.float32), spec, fmt,
                           operands.scale_for(x, spec, fmt, clip=clip), backend="numpy")
    return snr_or_nan(x, op.dequantize())


def record_ranges(dataset, hidden=(64, 64), epochs=3, batch_size=32, lr=0.05, seed=0, every=1):
    """Train with SAWB + PACT and record ranges and SNRs every ``every`` steps.

    Returns ``{"step": [...], "layers": [...], "weight_min"/"weight_max": [layer][step], "act_min"/"act_max",
    "alpha", "snr_weight": {scheme: [layer][step]}, "snr_act": {scheme: [layer][step]}, "history": ...}``.
    Layers are the Linear layers; activation rows are the inputs of layers 2.. (ReLU outputs).  Step 0 is the
    first training step (the tensors it used, before its update).
    """
    check_int(every, "every", min_value=1)
    recipe = get_recipe(RECIPES["SAWB + PACT"])
    spec_w, spec_a = recipe.weight, recipe.activation
    fmt_w, fmt_a = operands.operand_format(spec_w), operands.operand_format(spec_a)
    n_layers = len(hidden) + 1
    rec = {"step": [], "layers": list(range(n_layers)),
           "weight_min": [[] for _ in range(n_layers)], "weight_max": [[] for _ in range(n_layers)],
           "act_min": [[] for _ in range(1, n_layers)], "act_max": [[] for _ in range(1, n_layers)],
           "alpha": [[] for _ in range(1, n_layers)],
           "snr_weight": {s: [[] for _ in range(n_layers)] for s in ("fixed", "current", "sawb")},
           "snr_act": {s: [[] for _ in range(1, n_layers)] for s in ("fixed", "current", "pact")}}
    first_w, first_a = {}, {}

    def on_step(step, model, info):
        step -= 1                                    # the engine counts steps done; we name the step itself
        if step % every:
            return
        rec["step"].append(step)
        for k, (_, layer) in enumerate(model.gemm_layers()):
            last = layer.gemm.last
            w = last["weight"]
            rec["weight_min"][k].append(float(w.min()))
            rec["weight_max"][k].append(float(w.max()))
            current = minmax_clip(w)
            first_w.setdefault(k, current)
            for scheme, clip in (("fixed", first_w[k]), ("current", current), ("sawb", sawb_clip(w))):
                rec["snr_weight"][scheme][k].append(_snr_at_clip(w, spec_w, fmt_w, clip))
            if k == 0:
                continue
            a = last["input"]                         # the ReLU output, before PACT clips it
            top = float(a.max())
            first_a.setdefault(k, top)
            alpha = float(layer.gemm.alpha.data)
            rec["act_min"][k - 1].append(float(a.min()))
            rec["act_max"][k - 1].append(top)
            rec["alpha"][k - 1].append(alpha)
            for scheme, clip in (("fixed", first_a[k]), ("current", top), ("pact", alpha)):
                rec["snr_act"][scheme][k - 1].append(_snr_at_clip(a, spec_a, fmt_a, clip))

    rec["history"] = train_mlp(dataset, recipe, hidden=hidden, epochs=epochs, batch_size=batch_size, lr=lr,
                               seed=seed, on_step=on_step)
    return rec


def compare_trainings(dataset, seeds, recipes=None, hidden=(64, 64), epochs=3, batch_size=32, lr=0.05):
    """Test accuracy of a short training per recipe and seed: ``{label: {"recipe", "accuracy": [...], "mean",
    "std", "stopped"}}`` (``recipes``: label -> recipe name, :data:`RECIPES` by default)."""
    return accuracy_by_recipe(dataset, RECIPES if recipes is None else recipes, seeds, hidden=hidden,
                              epochs=epochs, batch_size=batch_size, lr=lr)
