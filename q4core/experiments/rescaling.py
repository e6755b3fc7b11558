"""Notebook 02: ranges drift during training; fixed scale vs per-step rescaling vs SAWB/PACT.

:func:`record_ranges` trains one network with SAWB weights and PACT activations (the paper's forward recipe,
gradients in float64) and, at every step, measures each hidden layer's weight and activation range and the
quantization SNR the same tensors would get under each scaling:

* weights - ``fixed`` (clip = max |W| of the first step, frozen), ``current`` (max |W| of this step),
  ``sawb`` (SAWB clip of this step); INT4 -7..7;
* activations (the ReLU output before PACT's clip) - ``fixed`` (max of the first step), ``current``
  (max of this step), ``pact`` (this step's learned alpha); UINT4 0..15.

:func:`compare_trainings` trains the same network under each scaling recipe for several seeds.
"""
from __future__ import annotations

import numpy as np

from .mlp import Recipe, _quant_a, _quant_w, snr_or_nan, train
from .. import scaling

RECIPES = {
    "fp32": Recipe(),
    "fixed scale": Recipe(weight="fixed", activation="fixed"),
    "per-step max": Recipe(weight="current", activation="current"),
    "SAWB + PACT": Recipe(weight="sawb", activation="pact"),
}


def record_ranges(dataset, hidden=(64, 64), epochs=3, batch_size=32, lr=0.05, seed=0, every=1):
    """Train with SAWB + PACT and record ranges and SNRs every ``every`` steps.

    Returns ``{"step": [...], "layers": [...], "weight_min"/"weight_max": [layer][step], "act_min"/"act_max",
    "alpha", "snr_weight": {scheme: [layer][step]}, "snr_act": {scheme: [layer][step]}, "history": ...}``.
    Layers are the Linear layers; activation rows are the inputs of layers 1.. (ReLU outputs).
    """
    if not (isinstance(every, int) and every >= 1):
        raise ValueError(f"every must be a positive int, got {every!r}")
    n_layers = len(hidden) + 1
    rec = {"step": [], "layers": list(range(n_layers)),
           "weight_min": [[] for _ in range(n_layers)], "weight_max": [[] for _ in range(n_layers)],
           "act_min": [[] for _ in range(1, n_layers)], "act_max": [[] for _ in range(1, n_layers)],
           "alpha": [[] for _ in range(1, n_layers)],
           "snr_weight": {s: [[] for _ in range(n_layers)] for s in ("fixed", "current", "sawb")},
           "snr_act": {s: [[] for _ in range(1, n_layers)] for s in ("fixed", "current", "pact")}}
    first_w, first_a = {}, {}

    def on_step(step, model):
        if step % every:
            return
        rec["step"].append(step)
        for k, w in enumerate(model.weights):
            rec["weight_min"][k].append(float(w.min()))
            rec["weight_max"][k].append(float(w.max()))
            current = scaling.minmax_clip(w)
            first_w.setdefault(k, current)
            for scheme, clip in (("fixed", first_w[k]), ("current", current), ("sawb", scaling.sawb_clip(w))):
                rec["snr_weight"][scheme][k].append(snr_or_nan(w, _quant_w(w, clip)))
        for k in range(1, n_layers):
            a = np.maximum(model.cache[k - 1][3], 0.0)    # the ReLU output, before PACT clips it
            top = float(a.max())
            first_a.setdefault(k, top)
            rec["act_min"][k - 1].append(float(a.min()))
            rec["act_max"][k - 1].append(top)
            rec["alpha"][k - 1].append(float(model.alpha[k]))
            for scheme, clip in (("fixed", first_a[k]), ("current", top), ("pact", model.alpha[k])):
                rec["snr_act"][scheme][k - 1].append(snr_or_nan(a, _quant_a(a, clip)))

    _, history = train(dataset, RECIPES["SAWB + PACT"], hidden=hidden, epochs=epochs, batch_size=batch_size,
                       lr=lr, seed=seed, on_step=on_step)
    rec["history"] = history
    return rec


def compare_trainings(dataset, seeds, recipes=None, hidden=(64, 64), epochs=3, batch_size=32, lr=0.05):
    """Test accuracy of a short training per recipe and seed: ``{name: {"accuracy": [...], "mean", "std"}}``."""
    recipes = RECIPES if recipes is None else recipes
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must not be empty")
    out = {}
    for name, recipe in recipes.items():
        accs = [train(dataset, recipe, hidden=hidden, epochs=epochs, batch_size=batch_size, lr=lr,
                      seed=s)[1]["test_accuracy"] for s in seeds]
        out[name] = {"accuracy": accs, "mean": float(np.mean(accs)), "std": float(np.std(accs))}
    return out
