"""Notebook 03: gradients span orders of magnitude; linear vs log 4-bit scales, the radix sweep, GradScale, TPR.

Every training here runs on the engine (:func:`q4core.train.train` on an MLP, :mod:`.common`) with a recipe of
:mod:`q4core.recipe`: float32 forward and the output gradients of every layer in one 4-bit format (``grad-<fmt>``,
two-phase rounding wherever the radix is a square: radix 4 and 16 - the paper's radix-4 format *is* radix 4 with
TPR), and every gradient format made by the one operand quantizer (:mod:`q4core.recipe.operands`).

* :func:`collect_gradients` - the output gradients ``dL/dy`` of every Linear layer at chosen steps of a
  float32 training run (the tensors the paper quantizes to FP4).
* :func:`level_occupancy` - how a gradient tensor's entries spread over the 16 codes of a 4-bit format.
* :func:`format_errors` - quantization SNR, share flushed to zero and bias of each gradient format.
* :func:`gradscale_trace` - GradScale's per-layer scale, the scaled max |g| over a radix-4 training, and how
  often the top codes of the even and odd grids are used.
* :func:`tpr_bias` - the mean error of the gradient on the even grid, the odd grid and both (two-phase
  rounding), and of its per-feature batch sums.
* :func:`format_study` - the comparison without its confounds: every format under the same scale rule (the
  per-step max, aligned to the format's own maximum) and under each rounding mode, by accuracy and by the fidelity
  of the two backward GEMMs' outputs (:class:`GradientFidelityRecorder`).

Scales: linear INT4 uses max |g| / 7 (per-step max scaling); the log/FP formats use the scale GradScale
settles on, the largest power of two ``s`` with ``max|g| * s <= format max`` (:func:`power_of_two_scale`).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..formats import FORMAT_NAMES
from ..recipe import SWEEP_GRAD_FORMATS, get_recipe, operands
from ..scaling import GradScale
from .common import StepRecorder, accuracy_by_recipe, train_mlp

FORMAT_LABELS = {"int4_sym": "INT4 (linear)", "radix2": "radix 2", "radix4": "radix 4 (TPR)", "radix8": "radix 8",
                 "log10": "radix 10", "radix16": "radix 16 (TPR)", "e2m1": "E2M1 FP4"}
_SCALE_RULE = {name: ("max" if name == "int4_sym" else "gradscale") for name in SWEEP_GRAD_FORMATS}


def collect_gradients(dataset, steps, hidden=(64, 64), epochs=3, batch_size=32, lr=0.05, seed=0):
    """``{step: [g_layer0, g_layer1, ...]}`` (float64 copies) from a float32 training run; step 0 is the first."""
    wanted = set(int(s) for s in steps)
    grads = {}

    def on_step(step, model, info):
        if step - 1 in wanted:
            grads[step - 1] = [layer.gemm.last["grad_output"].astype(np.float64) for _, layer in model.gemm_layers()]

    result = train_mlp(dataset, "fp32", hidden=hidden, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                       on_step=on_step)
    missing = sorted(wanted - set(grads))
    if missing:
        raise ValueError(f"steps {missing} are beyond the {result['steps']} steps of the run")
    return dict(sorted(grads.items()))


def power_of_two_scale(g, fmt_max):
    """The GradScale for ``g``: the largest power of two ``s`` with ``max|g| * s <= fmt_max``."""
    gs = GradScale(fmt_max=fmt_max)
    gs.initialise(float(np.max(np.abs(g))))
    return gs


def quantize(g, name, phase=0, rounding="nearest"):
    """``g`` (float64) quantized in gradient format ``name`` with its scale (see the module docstring)."""
    if name not in _SCALE_RULE:
        raise ValueError(f"name must be one of {', '.join(_SCALE_RULE)}, got {name!r}")
    spec = get_recipe("grad-" + name).grad_dx.__class__(name, _SCALE_RULE[name], rounding, phase)
    fmt = operands.operand_format(spec)
    g = np.asarray(g, dtype=np.float64)
    if spec.scaling == "max":
        scale = operands.scale_for(g, spec, fmt)
    else:
        scale = power_of_two_scale(g, operands._format_max(fmt)).encode_scale()
    return operands.quantize(g, spec, fmt, scale, backend="numpy").dequantize()


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


def format_errors(gradients, names=SWEEP_GRAD_FORMATS):
    """Pool every tensor of ``gradients`` (``{step: [g, ...]}``) and measure each format (on its even grid).

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


def sweep_trainings(dataset, seeds, names=SWEEP_GRAD_FORMATS, hidden=(64, 64), epochs=3, batch_size=32, lr=0.05):
    """Test accuracy of short trainings with the output gradients of every layer in each format (recipes
    ``grad-<name>``: GradScale, or the per-step max for INT4; two-phase rounding for radix 4 and 16; float32
    forward), plus float32 (``"fp32"``): ``{name: {"recipe", "accuracy": [...], "mean", "std"}}``."""
    recipes = {"fp32": "fp32", **{n: f"grad-{n}" for n in names}}
    return accuracy_by_recipe(dataset, recipes, seeds, hidden=hidden, epochs=epochs, batch_size=batch_size, lr=lr)


def gradscale_trace(dataset, hidden=(64, 64), epochs=3, batch_size=32, lr=0.05, seed=0, recipe="grad-radix4"):
    """Radix-4 training (two-phase rounding) with GradScale: per step and layer ``log2_scale`` (of the scale the
    step's gradient was quantized with) and ``scaled_max`` (max|g| * that scale: in (1/2, 1] unless the gradient
    jumped since the last step - above 1 it saturates, below 1/2 levels are wasted), and ``top_code``: the share
    of layer-steps whose scaled max leaves the even grid's top code 1 unused (in (1/2, 0.625]: it rounds to 1/4)
    and whose scaled max reaches the odd grid's top code 2 (at or above 1.25: only on saturated steps)."""
    n_layers = len(hidden) + 1
    trace = {"step": [], "log2_scale": [[] for _ in range(n_layers)], "scaled_max": [[] for _ in range(n_layers)],
             "max_abs": [[] for _ in range(n_layers)]}

    def on_step(step, model, info):
        trace["step"].append(step - 1)
        for k, (_, layer) in enumerate(model.gemm_layers()):
            gemm = layer.gemm
            used = 1.0 / gemm.last["grad_scale"]      # the GradScale scale this step's gradient was encoded with
            g = gemm.last["grad_output"]
            top = max(float(g.max()), -float(g.min()))
            trace["max_abs"][k].append(top)
            trace["log2_scale"][k].append(int(round(math.log2(used))))
            trace["scaled_max"][k].append(top * used)

    trace["history"] = train_mlp(dataset, recipe, hidden=hidden, epochs=epochs, batch_size=batch_size, lr=lr,
                                 seed=seed, on_step=on_step)
    scaled = np.array(trace["scaled_max"])
    trace["top_code"] = {"even_top_unused": float(np.mean((scaled > 0.5) & (scaled < 0.625))),
                         "odd_top_reached": float(np.mean(scaled >= 1.25)),
                         "saturated": float(np.mean(scaled > 1.0))}
    return trace


def tpr_bias(gradients, name="radix4"):
    """Mean error of the gradient on the even grid, the odd grid and their average (two-phase rounding).

    For each tensor ``g`` (scale from :func:`power_of_two_scale`): ``elementwise`` = sum(sign(g) (q - g)) /
    sum|g|, i.e. how much magnitudes shrink or grow on average; ``batch_mean`` = the error of the per-feature
    batch sums ``sum_b q[b, j]`` against ``sum_b g[b, j]``, as a share of ``sum_b |g[b, j]|``, averaged over
    features (signed, so a systematic bias does not average out).  Returns ``{"even": {...}, "odd": {...},
    "tpr": {...}}`` with per-tensor lists and pooled values.
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


def alignment_trainings(dataset, seeds, hidden=(64, 64), epochs=3, batch_size=32, lr=0.05):
    """Accuracy of radix-4 (TPR) gradient trainings with GradScale aligned as the paper does (scaled max in
    (1/2, 1]) and aligned to the rounding threshold (in (0.625, 1.25]: the even grid's top code always used),
    same seeds."""
    return accuracy_by_recipe(dataset, {"(1/2, 1] (paper)": "grad-radix4",
                                        "(0.625, 1.25] (threshold)": "grad-radix4+gradscale-threshold"}, seeds,
                              hidden=hidden, epochs=epochs, batch_size=batch_size, lr=lr)


def tpr_trainings(dataset, seeds, hidden=(64, 64), epochs=3, batch_size=32, lr=0.05):
    """Accuracy of radix-4 gradient trainings with one grid (both backward GEMMs on the even grid) and with
    two-phase rounding, same seeds."""
    return accuracy_by_recipe(dataset, {"radix 4, one grid": "grad-radix4-one-grid",
                                        "radix 4, two-phase": "grad-radix4"}, seeds, hidden=hidden, epochs=epochs,
                              batch_size=batch_size, lr=lr)



#: rounding modes of the format study: nearest in the linear domain, nearest in the log domain (radix formats
#: only), stochastic (unbiased; seeded by the run's seed)
STUDY_ROUNDINGS = ("nearest", "log", "stochastic")


def study_recipe(fmt, rounding):
    """``grad-<fmt>`` with the per-step max scale (max |g| onto the format's own maximum) and ``rounding`` on both
    backward GEMMs' gradients: the same scale rule for every format, so only the format and rounding differ."""
    role = {"scaling": "max", "rounding": rounding}
    return get_recipe(f"grad-{fmt}", grad_dx=role, grad_dw=role).to_dict()


def study_cells(names=SWEEP_GRAD_FORMATS, roundings=STUDY_ROUNDINGS):
    """The (format, rounding) pairs the study trains: log rounding only for radix formats."""
    return [(f, r) for f in names for r in roundings
            if r != "log" or f.startswith("radix") or f == "log10"]


class GradientFidelityRecorder(StepRecorder):
    """``on_step`` recorder: every ``every`` steps, for each Linear layer with a quantized output gradient, the two
    backward products with the gradient as the layer quantized it against the float gradient - dL/dx = g W^T and
    dL/dW = x^T g - by cosine similarity and norm ratio (|quantized| / |float|).  The gradient is quantized again
    here with the layer's specs and scale (a stochastic one with a generator seeded by the step)."""

    def record(self, step, model, info):
        for name, layer in model.gemm_layers():
            rec = backward_fidelity(step, layer.gemm, self.gemm_input(layer))
            if rec is not None:
                self.records.append({"step": int(step), "layer": name, **rec})

    @staticmethod
    def gemm_input(layer):
        """The (M, K) input matrix of the layer's last forward GEMM, or None where the recorded input is not it
        (convolutions record their image; :class:`q4core.experiments.tpr_deep.DeepFidelityRecorder` makes the
        patch matrix)."""
        x = layer.gemm.last.get("input")
        return None if x is None or np.ndim(x) != 2 else x


def backward_fidelity(step, gemm, x):
    """The two backward products of one 4-bit layer with its last output gradient quantized as the layer
    quantized it (specs, formats and scale; a stochastic one with a generator seeded by ``step``) against the
    float gradient - dL/dx = g W^T and dL/dW = x^T g for the (M, K) input matrix ``x`` - as ``{"dx_cos",
    "dx_norm_ratio", "dw_cos", "dw_norm_ratio"}``; None where the layer has nothing to compare (no quantized
    gradient, or ``x`` None or not matching the gradient's rows)."""
    last = gemm.last
    g, w, sg = (last.get(k) for k in ("grad_output", "weight", "grad_scale"))
    if getattr(gemm, "blockscaled", None) is not None:
        return _blockscaled_fidelity(step, gemm, x, g, w)
    if g is None or x is None or w is None or not sg or gemm.fmt_gx is None:
        return None
    g, x, w = (np.asarray(v, np.float64) for v in (g, x, w))
    if x.ndim != 2 or x.shape[0] != g.shape[0]:
        return None
    rng = np.random.default_rng(step)
    gx = operands.quantize(g, gemm.spec_gx, gemm.fmt_gx, sg, rng=rng, backend="numpy").dequantize()
    gw = operands.quantize(g, gemm.spec_gw, gemm.fmt_gw, sg, rng=rng, backend="numpy").dequantize()
    return _products_against_float(g @ w.T, gx @ w.T, x.T @ g, x.T @ gw)


#: the numbers :func:`backward_fidelity` records per layer and step
FIDELITY_KEYS = ("dx_cos", "dx_norm_ratio", "dw_cos", "dw_norm_ratio")


def _products_against_float(dx_ref, dx_q, dw_ref, dw_q):
    """``{"dx_cos", "dx_norm_ratio", "dw_cos", "dw_norm_ratio"}``: each quantized backward product against its
    float one (float64) by cosine similarity and norm ratio |quantized| / |float|."""
    rec = {}
    for what, ref, q in (("dx", dx_ref, dx_q), ("dw", dw_ref, dw_q)):
        q = np.asarray(q, np.float64)
        nr, nq = float(np.linalg.norm(ref)), float(np.linalg.norm(q))
        rec[f"{what}_cos"] = float(np.sum(ref * q) / (nr * nq)) if nr > 0 and nq > 0 else 0.0
        rec[f"{what}_norm_ratio"] = nq / nr if nr > 0 else float("nan")
    return rec


def _blockscaled_fidelity(step, gemm, x, g, w):
    """:func:`backward_fidelity` of a block-scaled layer (MXFP4 / NVFP4): both backward products as the layer
    makes them - each operand blocked along the product's reduction axis, the weight as the recipe blocks it, the
    random Hadamard transform on the weight-gradient inputs when the recipe has it - by a copy of the layer's
    block-scaled GEMM whose random streams are seeded by ``step`` (the training streams are left alone)."""
    from ..nn.blockscaled_gemm import BlockScaledGemm, _BlockCtx
    if g is None or x is None or w is None:
        return None
    x, g, w = (np.asarray(v, np.float32) for v in (x, g, w))
    if x.ndim != 2 or x.shape[0] != g.shape[0]:
        return None
    recipe = gemm.blockscaled.recipe
    twin = BlockScaledGemm(dataclasses.replace(recipe, seed=int(step)), gemm.blockscaled.index)
    ctx = _BlockCtx(x, twin.prepare_weight(w), None)       # grad_input reads the weight operand alone
    g64, x64, w64 = (np.asarray(v, np.float64) for v in (g, x, w))
    return _products_against_float(g64 @ w64.T, twin.grad_input(g, ctx), x64.T @ g64, twin.grad_weight(x, g))


def _fidelity_summary(records):
    """Mean over recorded steps and layers of each fidelity number."""
    return {k: float(np.nanmean([r[k] for r in records])) if records else float("nan") for k in FIDELITY_KEYS}


def format_study(dataset, seeds, names=SWEEP_GRAD_FORMATS, roundings=STUDY_ROUNDINGS, hidden=(64, 64), epochs=3,
                 batch_size=32, lr=0.05, record_every=10):
    """Every (format, rounding) cell of :func:`study_cells` under the same scale rule: test accuracy over
    ``seeds`` (paired: the same seeds everywhere) and, from one recorded run per cell (the first seed), the
    fidelity of the dL/dx and dL/dW products averaged over training.  Returns ``{"cells": [{"format",
    "rounding", "accuracy": [...], "mean", "std", "fidelity": {...}}], "fp32": {...}}``; every run is cached."""
    from .. import runs as _runs
    from .common import mlp_run
    cells = study_cells(names, roundings)
    recipes = {f"{f}/{r}": study_recipe(f, r) for f, r in cells}
    acc = accuracy_by_recipe(dataset, {"fp32": "fp32", **recipes}, seeds, hidden=hidden, epochs=epochs,
                             batch_size=batch_size, lr=lr)
    recorder = GradientFidelityRecorder.spec(record_every)
    recorded = _runs.map([mlp_run(dataset, recipes[f"{f}/{r}"], hidden=hidden, epochs=epochs, batch_size=batch_size,
                                  lr=lr, seed=seeds[0], recorder=recorder) for f, r in cells])
    out = []
    for (f, r), rec in zip(cells, recorded):
        a = acc[f"{f}/{r}"]
        out.append({"format": f, "rounding": r, "accuracy": a["accuracy"], "mean": a["mean"], "std": a["std"],
                    "stopped": a["stopped"], "fidelity": _fidelity_summary(rec["records"])})
    return {"cells": out, "fp32": acc["fp32"], "seeds": list(seeds)}


def radix_verdicts(study, a="radix2", b="radix4"):
    """Paired accuracy difference ``a - b`` (points) under every rounding both formats have, and the conclusion
    that survives all of them: ``"<a> better"`` / ``"<b> better"`` only if every rounding mode resolves it the same
    way, else ``"not resolved"``.  Returns ``{"by_rounding": {rounding: interval}, "conclusion": str}``."""
    points = {(c["format"], c["rounding"]): [None if v is None else 100 * v for v in c["accuracy"]]
              for c in study["cells"]}
    return verdicts_across_roundings(points, a, b)


def verdicts_across_roundings(values, a, b):
    """:func:`radix_verdicts` on any per-seed quantity where higher is better: ``values`` maps ``(format,
    rounding)`` to the per-seed values (paired by position; None = a diverged run, dropped pairwise).  Returns
    ``{"by_rounding": {rounding: interval of a - b}, "conclusion": str}``."""
    from .. import stats
    by = {}
    for r in STUDY_ROUNDINGS:
        if (a, r) in values and (b, r) in values:
            by[r] = stats.paired_difference(values[(a, r)], values[(b, r)])
    verdicts = {iv["verdict"] for iv in by.values()}
    conclusion = "not resolved"
    if verdicts == {"above"}:
        conclusion = f"{a} better"
    elif verdicts == {"below"}:
        conclusion = f"{b} better"
    return {"by_rounding": by, "conclusion": conclusion}


def tpr_fidelity(dataset, seeds, hidden=(64, 64), epochs=3, batch_size=32, lr=0.05, record_every=10):
    """What two-phase rounding does to the backward products themselves: the mean cosine and norm ratio of each
    layer's dL/dx and dL/dW (quantized gradient against float, :class:`GradientFidelityRecorder`) in radix-4
    trainings with one grid and with two-phase rounding, one recorded run per seed.  Returns ``{label: {"per_seed":
    [summary, ...], "mean": summary}}`` (summary: ``dx_cos``, ``dx_norm_ratio``, ``dw_cos``, ``dw_norm_ratio``)."""
    from .. import runs as _runs
    from .common import mlp_run
    recorder = GradientFidelityRecorder.spec(record_every)
    recipes = {"radix 4, one grid": "grad-radix4-one-grid", "radix 4, two-phase": "grad-radix4"}
    configs = [mlp_run(dataset, recipe, hidden=hidden, epochs=epochs, batch_size=batch_size, lr=lr, seed=s,
                       recorder=recorder) for recipe in recipes.values() for s in seeds]
    results = iter(_runs.map(configs))
    out = {}
    for label in recipes:
        per_seed = [_fidelity_summary(next(results)["records"]) for _ in seeds]
        out[label] = {"per_seed": per_seed,
                      "mean": {k: float(np.mean([p[k] for p in per_seed])) for k in per_seed[0]}}
    return out


assert set(SWEEP_GRAD_FORMATS) <= set(FORMAT_NAMES)
