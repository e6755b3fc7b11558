"""Notebook 03's de-confounded gradient-format study on the deep model: the ResNet of notebook 04's vision domain.

The small MLP of :func:`q4core.experiments.gradients.format_study` isolates the gradient format; this module asks
whether its radix conclusion survives a deep residual CNN whose backward GEMMs - convolutions included - all take
the 4-bit gradient.  Every (format, rounding) cell of :func:`~q4core.experiments.gradients.study_cells` trains the
ResNet under :func:`~q4core.experiments.gradients.study_recipe` (the per-step max scale for every format, the
cell's rounding on both backward GEMMs' gradients), one cached run per seed, each recorded by
:class:`~q4core.experiments.tpr_deep.DeepFidelityRecorder` (per 4-bit layer: cosine and norm ratio of the dL/dX
and dL/dW GEMM outputs made from the quantized gradient against the float gradient's).  ``fp32`` per seed is the
accuracy reference.  All runs go to one :func:`q4core.runs.map`, so an executor runs them in parallel.
"""
from __future__ import annotations

import numpy as np

from .._validation import check_int, check_int_list, check_one_of
from .gradients import FIDELITY_KEYS, study_cells, study_recipe, verdicts_across_roundings
from .tpr_deep import DeepFidelityRecorder, _per_seed, resnet_config

__all__ = ["deep_format_study", "deep_radix_verdicts", "VERDICT_KEYS"]

#: the per-seed quantities :func:`deep_radix_verdicts` compares (higher is better for each)
VERDICT_KEYS = ("accuracy", "dx_cos", "dw_cos")


def _check_cells(cells):
    """``cells`` as a list of (format, rounding) tuples, each one of :func:`study_cells`."""
    allowed = study_cells()
    if isinstance(cells, (str, bytes)):
        raise TypeError(f"cells must be a list of (format, rounding) pairs, got {cells!r}")
    try:
        out = [tuple(c) for c in cells]
    except TypeError:
        raise TypeError(f"cells must be a list of (format, rounding) pairs, got {cells!r}") from None
    if not out:
        raise ValueError("cells must not be empty")
    for i, c in enumerate(out):
        if c not in allowed:
            raise ValueError(f"cells[{i}] must be a (format, rounding) pair of gradients.study_cells() - log "
                             f"rounding for radix formats only - got {cells[i]!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"cells must not repeat a cell, got {cells!r}")
    return out


def _percent(result):
    acc = result.get("test_accuracy")
    return None if acc is None or acc != acc else 100.0 * float(acc)


def _network_fidelity(layers):
    """Mean over the 4-bit layers of each layer's run mean (every layer counts once); None where nothing was
    recorded."""
    out = {}
    for k in FIDELITY_KEYS:
        vals = [d[k] for d in layers.values() if k in d and np.isfinite(d[k])]
        out[k] = float(np.mean(vals)) if vals else None
    return out


def deep_format_study(seeds, epochs=2, max_steps=None, record_every=20, cells=None):
    """Every cell of :func:`~q4core.experiments.gradients.study_cells` (or ``cells``: (format, rounding) pairs of
    it) on the ResNet of notebook 04's vision domain, ``seeds`` paired (the same seeds in every cell), plus ``fp32``
    per seed.  ``max_steps``: None (whole epochs) or a positive step limit.  Returns (JSON values)::

        {"seeds": [...], "epochs", "max_steps", "record_every",
         "fp32": {"accuracy": [% or None per seed], "stopped": [...]},
         "cells": [{"format", "rounding", "accuracy": [% or None (diverged) per seed], "stopped": [...],
                    "fidelity": [{dx_cos, dx_norm_ratio, dw_cos, dw_norm_ratio} per seed: mean over the recorded
                                 steps, then over the 4-bit layers],
                    "layers": {layer: {key: mean over seeds of the layer's run mean}}}]}
    """
    from .. import runs
    seeds = check_int_list(seeds, "seeds", min_value=0)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must not repeat a seed (they pair the cells), got {seeds!r}")
    check_int(epochs, "epochs", min_value=1)
    if max_steps is not None:
        check_int(max_steps, "max_steps", min_value=1)
        max_steps = int(max_steps)
    check_int(record_every, "record_every", min_value=1)
    cells = study_cells() if cells is None else _check_cells(cells)
    recorder = DeepFidelityRecorder.spec(int(record_every))
    configs = [resnet_config(study_recipe(f, r), s, epochs, max_steps, recorder) for f, r in cells for s in seeds]
    configs += [resnet_config("fp32", s, epochs, max_steps) for s in seeds]
    results = iter(runs.map(configs))        # one map: the executor runs them side by side
    out_cells = []
    for f, r in cells:
        done = [next(results) for _ in seeds]
        layers = [_per_seed(d["records"], "gemm", FIDELITY_KEYS) for d in done]
        names = list(dict.fromkeys(name for d in layers for name in d))
        layer_means = {}
        for name in names:
            layer_means[name] = {}
            for k in FIDELITY_KEYS:
                vals = [d[name][k] for d in layers if name in d and np.isfinite(d[name].get(k, np.nan))]
                layer_means[name][k] = float(np.mean(vals)) if vals else None
        out_cells.append({"format": f, "rounding": r, "accuracy": [_percent(d) for d in done],
                          "stopped": [d["stopped"] for d in done],
                          "fidelity": [_network_fidelity(d) for d in layers], "layers": layer_means})
    ref = [next(results) for _ in seeds]
    return {"seeds": seeds, "epochs": int(epochs), "max_steps": max_steps, "record_every": int(record_every),
            "fp32": {"accuracy": [_percent(d) for d in ref], "stopped": [d["stopped"] for d in ref]},
            "cells": out_cells}


def deep_radix_verdicts(study, a="radix2", b="radix4", key="accuracy"):
    """:func:`~q4core.experiments.gradients.radix_verdicts` on a :func:`deep_format_study`: the paired difference
    ``a - b`` of ``key`` (``"accuracy"`` in points, or a per-seed fidelity ``"dx_cos"`` / ``"dw_cos"``; higher is
    better for each) under every rounding mode both formats have, and ``"<a> better"`` / ``"<b> better"`` only if
    every one of them resolves it the same way, else ``"not resolved"``.  Returns ``{"by_rounding": {rounding:
    interval}, "conclusion": str, "key": key}``."""
    check_one_of(key, "key", VERDICT_KEYS)
    if not isinstance(study, dict) or "cells" not in study:
        raise ValueError("study must be the dict deep_format_study returns (with 'cells')")
    formats = {c["format"] for c in study["cells"]}
    for name, fmt in (("a", a), ("b", b)):
        if fmt not in formats:
            raise ValueError(f"{name} must be a format of the study ({', '.join(sorted(formats))}), got {fmt!r}")
    values = {}
    for c in study["cells"]:
        per_seed = c["accuracy"] if key == "accuracy" else [s.get(key) for s in c["fidelity"]]
        values[(c["format"], c["rounding"])] = per_seed
    return {**verdicts_across_roundings(values, a, b), "key": key}


assert set(VERDICT_KEYS[1:]) <= set(FIDELITY_KEYS)     # the fidelity keys the verdicts read are recorded
