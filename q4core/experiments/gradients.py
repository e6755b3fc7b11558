"""Notebook 03: gradients span orders of magnitude; linear vs log 4-bit scales, the radix sweep, GradScale, TPR.

* :func:`collect_gradients` - the output gradients ``dL/dy`` of every Linear layer at chosen steps of a
  float64 training run (the tensors the paper quantizes to FP4).
* :func:`level_occupancy` - how a gradient tensor's entries spread over the 16 codes of a 4-bit format.
* :func:`format_errors` - quantization SNR, share flushed to zero and bias of each gradient format.
* :func:`gradscale_trace` - GradScale's per-layer scale and the scaled max |g| over a radix-4 training.
* :func:`tpr_bias` - the mean error of the gradient on the even grid, the odd grid and both (two-phase
  rounding), and of its per-feature batch sums (the statistic BatchNorm's backward pass and a bias
  gradient consume).

Scales: linear INT4 uses max |g| / 7 (per-step max scaling); the log/FP formats use the scale GradScale
settles on, the largest power of two ``s`` with ``max|g| * s <= format max`` (:func:`power_of_two_scale`).
"""
from __future__ import annotations

import math

import numpy as np

from .mlp import GRAD_FORMATS, Recipe, grad_format, quantize_gradient, train
from .. import scaling

SWEEP_FORMATS = ("int4", "radix2", "radix4", "radix8", "log10", "radix16", "e2m1")
FORMAT_LABELS = {"int4": "INT4 (linear)", "radix2": "radix 2", "radix4": "radix 4", "radix8": "radix 8",
                 "log10": "radix 10", "radix16": "radix 16", "e2m1": "E2M1 FP4"}


def collect_gradients(dataset, steps, hidden=(64, 64), epochs=3, batch_size=32, lr=0.05, seed=0):
    """``{step: [g_layer0, g_layer1, ...]}`` (float64 copies) from a float64 training run."""
    wanted = set(int(s) for s in steps)
    grads = {}

    def on_step(step, model):
        if step in wanted:
            grads[step] = [g.copy() for g in model.last_grads]

    _, history = train(dataset, Recipe(), hidden=hidden, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                       on_step=on_step)
    missing = sorted(wanted - set(grads))
    if missing:
        raise ValueError(f"steps {missing} are beyond the {history['steps']} steps of the run")
    return dict(sorted(grads.items()))


def power_of_two_scale(g, fmt_max):
    """The GradScale scale for ``g``: the largest power of two ``s`` with ``max|g| * s <= fmt_max``."""
    gs = scaling.GradScale(fmt_max=fmt_max)
    gs.initialise(float(np.max(np.abs(g))))
    return gs


def _format_max(name):
    fmt = grad_format(name)
    return 1.0 if fmt is None or name == "int4" else float(fmt.max)


def quantize(g, name, phase=0):
    """``g`` quantized in gradient format ``name`` with its scale (see the module docstring)."""
    if name not in GRAD_FORMATS or name == "none":
        raise ValueError(f"name must be one of {', '.join(GRAD_FORMATS[1:])}, got {name!r}")
    gs = None if name == "int4" else power_of_two_scale(g, _format_max(name))
    return quantize_gradient(g, name, gs, phase=phase)


def level_occupancy(g, name):
    """Share of the non-zero entries of ``g`` on each value they round to: ``(values, shares)``, values in
    units of max |g| (exact zeros - ReLU's - are left out: every format keeps them)."""
    g = np.asarray(g, dtype=np.float64)
    q = quantize(g, name)[g != 0]
    top = float(np.max(np.abs(g)))
    values, counts = np.unique(q, return_counts=True)
    return values / top, counts / q.size


def decades(g):
    """log10(|g| / max|g|) of the non-zero entries (how many orders of magnitude below the max)."""
    a = np.abs(np.asarray(g, dtype=np.float64)).ravel()
    a = a[a > 0]
    return np.log10(a / a.max())


def format_errors(gradients, names=SWEEP_FORMATS):
    """Pool every tensor of ``gradients`` (``{step: [g, ...]}``) and measure each format.

    Per format: ``snr_db`` (signal power over error power summed over all tensors), ``zero_share``
    (non-zero entries flushed to 0), ``relative_bias`` (sum(|q| - |g|) / sum |g|: negative = magnitudes
    shrink).
    """
    tensors = [g for layer_grads in gradients.values() for g in layer_grads]
    out = {}
    for name in names:
        power = noise = flushed = nonzero = bias = mass = 0.0
        for g in tensors:
            q = quantize(g, name)
            power += float(np.sum(g * g))
            noise += float(np.sum((q - g) ** 2))
            nz = g != 0
            nonzero += float(np.sum(nz))
            flushed += float(np.sum(nz & (q == 0)))
            bias += float(np.sum(np.abs(q) - np.abs(g)))
            mass += float(np.sum(np.abs(g)))
        out[name] = {"snr_db": 10 * math.log10(power / noise) if noise > 0 else math.inf,
                     "zero_share": flushed / nonzero if nonzero else 0.0,
                     "relative_bias": bias / mass if mass else 0.0}
    return out


def sweep_trainings(dataset, seeds, names=SWEEP_FORMATS, hidden=(64, 64), epochs=3, batch_size=32, lr=0.05):
    """Test accuracy of short trainings with the output gradients quantized in each format (GradScale on,
    float64 forward), plus float64 (``"fp32"``): ``{name: {"accuracy": [...], "mean", "std"}}``."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must not be empty")
    out = {}
    for name in ("none", *names):
        accs = [train(dataset, Recipe(grad=name), hidden=hidden, epochs=epochs, batch_size=batch_size, lr=lr,
                      seed=s)[1]["test_accuracy"] for s in seeds]
        out["fp32" if name == "none" else name] = {"accuracy": accs, "mean": float(np.mean(accs)),
                                                   "std": float(np.std(accs))}
    return out


def gradscale_trace(dataset, hidden=(64, 64), epochs=3, batch_size=32, lr=0.05, seed=0, tpr=True):
    """Radix-4 training with GradScale: per step and layer ``log2_scale`` (of the scale the step's gradient was
    quantized with) and ``scaled_max`` (max|g| * that scale: in (1/2, 1] unless the gradient jumped since the
    last step - above 1 it saturates, below 1/2 levels are wasted) and the training ``history``."""
    n_layers = len(hidden) + 1
    trace = {"step": [], "log2_scale": [[] for _ in range(n_layers)], "scaled_max": [[] for _ in range(n_layers)],
             "max_abs": [[] for _ in range(n_layers)]}

    def on_step(step, model):
        trace["step"].append(step)
        for k, used in enumerate(model.grad_scale_used):
            # the scale this step's gradient was quantized with (backward() has already updated GradScale)
            top = float(np.max(np.abs(model.last_grads[k])))
            trace["max_abs"][k].append(top)
            trace["log2_scale"][k].append(int(round(math.log2(used))))
            trace["scaled_max"][k].append(top * used)

    _, history = train(dataset, Recipe(grad="radix4", tpr=tpr), hidden=hidden, epochs=epochs, batch_size=batch_size,
                       lr=lr, seed=seed, on_step=on_step)
    trace["history"] = history
    return trace


def tpr_bias(gradients, name="radix4"):
    """Mean error of the gradient on the even grid, the odd grid and their average (two-phase rounding).

    For each tensor ``g`` (scale from :func:`power_of_two_scale`): ``elementwise`` = sum(q - g) / sum|g|
    with the sign of g taken out (sum(sign(g) (q - g))), i.e. how much magnitudes shrink or grow on
    average; ``batch_mean`` = the error of the per-feature batch sums ``sum_b q[b, j]`` against
    ``sum_b g[b, j]``, as a share of ``sum_b |g[b, j]|``, averaged over features (signed, so a systematic
    bias does not average out).  Returns ``{"even": {...}, "odd": {...}, "tpr": {...}}`` with per-tensor
    lists and pooled values.
    """
    if name not in ("radix4", "radix16"):
        raise ValueError(f"two-phase rounding needs radix4 or radix16, got {name!r}")
    out = {k: {"elementwise": [], "batch_mean": []} for k in ("even", "odd", "tpr")}
    for layer_grads in gradients.values():
        for g in layer_grads:
            even = quantize(g, name, phase=0)
            odd = quantize(g, name, phase=1)
            mass = float(np.sum(np.abs(g)))
            col_mass = np.sum(np.abs(g), axis=0)
            keep = col_mass > 0
            for key, q in (("even", even), ("odd", odd), ("tpr", 0.5 * (even + odd))):
                out[key]["elementwise"].append(float(np.sum(np.sign(g) * (q - g))) / mass)
                col_err = np.sum(q - g, axis=0)[keep] * np.sign(np.sum(g, axis=0)[keep])
                out[key]["batch_mean"].append(float(np.mean(col_err / col_mass[keep])))
    for key in out:
        out[key]["mean_elementwise"] = float(np.mean(out[key]["elementwise"]))
        out[key]["mean_batch_mean"] = float(np.mean(out[key]["batch_mean"]))
    return out


def tpr_trainings(dataset, seeds, hidden=(64, 64), epochs=3, batch_size=32, lr=0.05):
    """Accuracy of radix-4 gradient trainings with and without two-phase rounding (and with only the odd
    grid is not offered: without TPR both GEMMs use the even grid)."""
    out = {}
    for label, recipe in (("radix 4, one grid", Recipe(grad="radix4")),
                          ("radix 4, two-phase", Recipe(grad="radix4", tpr=True))):
        accs = [train(dataset, recipe, hidden=hidden, epochs=epochs, batch_size=batch_size, lr=lr,
                      seed=s)[1]["test_accuracy"] for s in seeds]
        out[label] = {"accuracy": accs, "mean": float(np.mean(accs)), "std": float(np.std(accs))}
    return out
