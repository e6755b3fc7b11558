"""Cross-check on the project's own 4-bit training stack (:func:`q4core.train.train`: integer INT4 x INT4 and
FP4 x INT4 GEMMs, SAWB/PACT, GradScale, TPR, first and last layers in FP16 as its ``q4`` preset says).

The notebooks' MLP studies isolate one idea at a time (4-bit forward only, or 4-bit gradients only); this runs
the full recipe and its ablations (:data:`q4core.recipe.ABLATIONS`) on the default model of the task, so a reader
can see whether a conclusion survives the whole recipe.
"""
from __future__ import annotations

import numpy as np

#: notebook 02: forward scaling (label -> (precision, ablation))
RESCALING_CONFIGS = {
    "fp32": ("fp32", None),
    "fixed scale": ("q4", "static-scale"),
    "per-step max": ("q4", "minmax"),
    "SAWB + PACT": ("q4", None),
}
#: notebook 03: gradient format, GradScale and TPR
GRADIENT_CONFIGS = {
    "fp32": ("fp32", None),
    "radix 4 (q4 recipe)": ("q4", None),
    "no TPR": ("q4", "no-tpr"),
    "one loss scale (no GradScale)": ("q4", "global-loss-scale"),
    "radix 2": ("q4", "radix2"),
    "radix 10": ("q4", "log10"),
    "E2M1 FP4": ("q4", "e2m1"),
    "INT4 gradients": ("q4", "int4-grad"),
}


def compare_on_stack(configs, task="digits", seeds=(0,), epochs=2, max_steps=None):
    """Test accuracy per config and seed with :func:`q4core.train.train`.

    The whole sweep is one :func:`q4core.runs.map` (cached runs are not trained again).
    Returns ``{label: {"accuracy": [...], "mean", "std", "stopped": [...], "precision", "ablation"}}``;
    a run that diverged reports the accuracy it stopped at and its reason in ``stopped``.
    """
    from .. import runs
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must not be empty")
    results = iter(runs.map([runs.RunConfig(task=task, recipe=precision, seed=s, ablation=ablation, epochs=epochs,
                                            max_steps=max_steps)
                             for precision, ablation in configs.values() for s in seeds]))
    out = {}
    for label, (precision, ablation) in configs.items():
        accs, stopped = [], []
        for _ in seeds:
            result = next(results)
            accs.append(float(result["test_accuracy"]))
            stopped.append(result["stopped"])
        out[label] = {"accuracy": accs, "mean": float(np.mean(accs)), "std": float(np.std(accs)),
                      "stopped": stopped, "precision": precision, "ablation": ablation}
    return out
