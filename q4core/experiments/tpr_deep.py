"""Two-phase rounding (TPR) where it matters: on the ResNet of notebook 04, with and without TPR (``q4`` against
``q4`` with the ``no-tpr`` ablation, one radix-4 grid for both backward GEMMs), paired by seed.

Two things are recorded during training, at every ``every``-th step (:class:`TPRRecorder`, a cached run's
recorder):

* **the backward GEMMs** (:class:`DeepFidelityRecorder`): per 4-bit layer, the cosine and norm ratio of the
  dL/dX and dL/dW GEMM outputs computed from the gradient as the layer quantized it against those from the float
  gradient (:func:`q4core.experiments.gradients.backward_fidelity`); for a convolution dL/dX is the patch-gradient
  matrix (before col2im) and X the patch matrix - the GEMM's own operands.
* **the bias of BatchNorm's running statistics** (:class:`BatchNormBiasRecorder`): per BatchNorm layer and channel,
  the running mean and variance (what the layer normalises with at evaluation) against the batch statistics of
  that layer's input in a *float* forward (``fp32`` recipe) of a copy of the model with the same weights, on a
  fixed batch of validation images::

      mean_shift = mean_c (running_mean_c - mu_c) / sqrt(var_c + eps)        (in units of the float SD)
      var_log2   = mean_c log2((running_var_c + eps) / (var_c + eps))        (0: no bias; 1: twice the variance)

  Signed means over channels: a bias, not a spread (``mean_shift_rms`` gives the size).  The same two numbers for
  the batch statistics of the q4 forward of the same batch (``q4_mean_shift``, ``q4_var_log2``) separate the
  forward quantization's share (q4 batch vs float batch) from the running averages' (lag and batch sampling).

Why this quantity: a BatchNorm layer trained in 4 bits normalises every evaluation input with its running
statistics, so a bias of those against the statistics its own weights produce is an error every test image sees;
gradient errors reach it only through the weights the training arrives at.  The issue asks for it as the place
TPR's effect should show in a residual CNN.  The numbers are ours: we could not check the paper's own definition.
"""
from __future__ import annotations

import copy

import numpy as np

from .._validation import check_int, check_int_list
from ..nn.layers import BatchNorm, Conv2d, im2col2d
from .common import StepRecorder
from .gradients import FIDELITY_KEYS, GradientFidelityRecorder, backward_fidelity

__all__ = ["BatchNormBiasRecorder", "DeepFidelityRecorder", "TPRRecorder", "bn_bias", "batch_statistics",
           "TPR_RECIPES", "tpr_study", "summarise_study", "resnet_config", "BN_KEYS", "GEMM_KEYS"]

#: label -> q4core.recipe ablation of q4 (None: the full recipe, with TPR)
TPR_RECIPES = {"with TPR": None, "without TPR": "no-tpr"}
BN_KEYS = ("mean_shift", "mean_shift_rms", "var_log2", "q4_mean_shift", "q4_var_log2")
GEMM_KEYS = FIDELITY_KEYS


def batch_statistics(model, x, recipe=None):
    """``{BatchNorm module name: (mean, var)}`` (float64 per channel, unbiased variance as the running variance
    uses) of each BatchNorm layer's input in a training-mode forward of ``x`` through a *copy* of ``model``
    (``recipe``: given to the copy first, e.g. ``"fp32"`` for a float forward with the same weights).  The model
    itself is left as it was (running statistics, quantizer state, recorded operands)."""
    net = copy.deepcopy(model)
    if recipe is not None:
        net.set_policy(recipe)
    net.train()
    stats = {}
    for name, module in net.named_modules():
        if isinstance(module, BatchNorm):
            def capture(inp, _name=name, _bn=module, _forward=module.forward):
                axes, _ = _bn._axes(inp)
                n = inp.size // _bn.num_features
                stats[_name] = (inp.mean(axis=axes, dtype=np.float64),
                                inp.var(axis=axes, dtype=np.float64) * n / max(n - 1, 1))
                return _forward(inp)
            module.forward = capture       # an instance attribute on the copy: the class stays untouched
    with np.errstate(over="ignore", invalid="ignore"):
        net.forward(x)
    return stats


def bn_bias(running_mean, running_var, mean, var, eps):
    """``{"mean_shift", "mean_shift_rms", "var_log2"}`` of running statistics against batch statistics
    (module docstring), each channel's mean offset in units of the batch SD ``sqrt(var + eps)``."""
    rm, rv, m, v = (np.asarray(a, np.float64) for a in (running_mean, running_var, mean, var))
    if not rm.shape == rv.shape == m.shape == v.shape or rm.ndim != 1:
        raise ValueError(f"statistics must be four 1-D arrays of one length, got shapes "
                         f"{[a.shape for a in (rm, rv, m, v)]}")
    shift = (rm - m) / np.sqrt(v + eps)
    return {"mean_shift": float(shift.mean()), "mean_shift_rms": float(np.sqrt(np.mean(shift ** 2))),
            "var_log2": float(np.mean(np.log2((rv + eps) / (v + eps))))}


class BatchNormBiasRecorder(StepRecorder):
    """``on_step`` recorder: every ``every`` steps, each BatchNorm layer's running statistics against the float
    forward's (and the q4 forward's) batch statistics on a fixed batch: the first ``batch`` validation inputs of
    ``task`` loaded with ``data_seed`` (the run's seed: the run's own split).  Records ``{"step", "layer",
    "kind": "bn", **BN_KEYS}``."""

    def __init__(self, every=10, task="mnist", data_seed=0, batch=256):
        super().__init__(every)
        from ..tasks import load_task
        check_int(data_seed, "data_seed", min_value=0)
        check_int(batch, "batch", min_value=2)
        self.x = np.ascontiguousarray(load_task(task, int(data_seed)).X_val[:int(batch)])

    @classmethod
    def spec(cls, every, task="mnist", data_seed=0, batch=256):
        return {"factory": f"{cls.__module__}:{cls.__qualname__}",
                "kwargs": {"every": int(every), "task": str(task), "data_seed": int(data_seed), "batch": int(batch)}}

    def record(self, step, model, info):
        self.records.extend(self.bn_records(step, model, self.x))

    @staticmethod
    def bn_records(step, model, x):
        float_stats = batch_statistics(model, x, "fp32")
        q4_stats = batch_statistics(model, x)
        out = []
        for name, module in model.named_modules():
            if not isinstance(module, BatchNorm) or name not in float_stats:
                continue
            m, v = float_stats[name]
            rec = {"step": int(step), "layer": name, "kind": "bn",
                   **bn_bias(module.running_mean, module.running_var, m, v, module.eps)}
            q = bn_bias(*q4_stats[name], m, v, module.eps)
            rec["q4_mean_shift"], rec["q4_var_log2"] = q["mean_shift"], q["var_log2"]
            out.append(rec)
        return out


class DeepFidelityRecorder(GradientFidelityRecorder):
    """:class:`~q4core.experiments.gradients.GradientFidelityRecorder` for any model: a convolution's GEMM input
    is its patch matrix, made again from the recorded image (``im2col2d`` with the layer's geometry)."""

    @staticmethod
    def gemm_input(layer):
        x = layer.gemm.last.get("input")
        if x is not None and isinstance(layer, Conv2d) and np.ndim(x) == 4:
            return im2col2d(np.asarray(x), layer.kh, layer.kw, layer.stride, layer.padding)[0]
        return GradientFidelityRecorder.gemm_input(layer)

    def record(self, step, model, info):
        for name, layer in model.gemm_layers():
            rec = backward_fidelity(step, layer.gemm, self.gemm_input(layer))
            if rec is not None:
                self.records.append({"step": int(step), "layer": name, "kind": "gemm", **rec})


class TPRRecorder(BatchNormBiasRecorder):
    """Both: :class:`BatchNormBiasRecorder`'s records (``kind`` ``"bn"``) and :class:`DeepFidelityRecorder`'s
    (``kind`` ``"gemm"``) at the same steps."""

    def record(self, step, model, info):
        super().record(step, model, info)
        fidelity = DeepFidelityRecorder(self.every)
        fidelity.record(step, model, info)
        self.records.extend(fidelity.records)


def resnet_config(recipe, seed, epochs, max_steps, recorder=None, ablation=None):
    """A cached run (:class:`q4core.runs.RunConfig`) of the ResNet of notebook 04's vision domain under ``recipe``
    (a name or a recipe dict) and ``ablation``, recorded by ``recorder`` (a recorder spec, or None)."""
    from ..runs import RunConfig
    from .full_training import DOMAINS
    spec = DOMAINS["vision"]
    return RunConfig(task=spec["task"], model=spec["model"], recipe=recipe, ablation=ablation, seed=int(seed),
                     epochs=int(epochs), max_steps=max_steps, recorder=recorder)


def _config(label, seed, epochs, max_steps, every, batch):
    from .full_training import DOMAINS
    recorder = TPRRecorder.spec(every, DOMAINS["vision"]["task"], int(seed), batch)
    return resnet_config("q4", seed, epochs, max_steps, recorder, ablation=TPR_RECIPES[label])


def tpr_study(seeds, epochs=2, max_steps=None, record_every=10, batch=256):
    """The ResNet (notebook 04's vision model) under q4 with and without TPR, ``seeds`` paired, each run recorded by
    :class:`TPRRecorder` (cached runs, one :func:`q4core.runs.map`).  Returns ``{label: [{"seed", "test",
    "records"}, ...]}`` for the labels of :data:`TPR_RECIPES` (``test``: accuracy in percent, None if the run
    diverged)."""
    from .. import runs
    seeds = check_int_list(seeds, "seeds", min_value=0)
    check_int(epochs, "epochs", min_value=1)
    check_int(record_every, "record_every", min_value=1)
    configs = [_config(label, s, epochs, max_steps, record_every, batch) for label in TPR_RECIPES for s in seeds]
    results = iter(runs.map(configs))
    out = {}
    for label in TPR_RECIPES:
        out[label] = []
        for s in seeds:
            r = next(results)
            acc = r.get("test_accuracy")
            out[label].append({"seed": s, "test": None if acc is None else 100.0 * float(acc),
                               "stopped": r["stopped"], "records": r["records"]})
    return out


def _per_seed(records, kind, keys, last=None):
    """``{layer: {key: mean over the recorded steps}}`` of one run's records of ``kind`` (``last``: only the last
    that many recorded steps, e.g. the end of training)."""
    rows = [r for r in records if r.get("kind") == kind]
    steps = sorted({r["step"] for r in rows})
    if last is not None:
        steps = steps[-int(last):]
    out = {}
    for r in rows:
        if r["step"] in steps:
            for k in keys:
                out.setdefault(r["layer"], {}).setdefault(k, []).append(r[k])
    return {layer: {k: float(np.nanmean(v)) for k, v in d.items()} for layer, d in out.items()}


def summarise_study(study, last_bn=3):
    """Per label and layer, the per-seed values (BatchNorm bias over the last ``last_bn`` recorded steps - the
    statistics the trained model evaluates with; GEMM fidelity over all recorded steps) and the paired effect of
    TPR per layer and averaged over layers: ``{"bn": {layer: {key: {"with", "without", "effect": interval}}},
    "gemm": {...}, "network": {key: interval}}`` where an interval is :func:`q4core.stats.paired_difference` of
    with-TPR minus without-TPR over seeds."""
    from .. import stats
    with_runs, without_runs = study["with TPR"], study["without TPR"]
    if [r["seed"] for r in with_runs] != [r["seed"] for r in without_runs]:
        raise ValueError("the runs with and without TPR must have the same seeds in the same order")
    out = {"bn": {}, "gemm": {}, "network": {}}
    for kind, keys, last in (("bn", BN_KEYS, last_bn), ("gemm", GEMM_KEYS, None)):
        a = [_per_seed(r["records"], kind, keys, last) for r in with_runs]
        b = [_per_seed(r["records"], kind, keys, last) for r in without_runs]
        layers = list(dict.fromkeys(layer for d in a + b for layer in d))
        for layer in layers:
            out[kind][layer] = {}
            for k in keys:
                va = [d.get(layer, {}).get(k) for d in a]
                vb = [d.get(layer, {}).get(k) for d in b]
                out[kind][layer][k] = {"with": va, "without": vb, "effect": stats.paired_difference(va, vb)}
        for k in keys:
            # per seed: the mean over layers; |mean_shift| and |var_log2| so that biases of either sign add up
            absolute = k in ("mean_shift", "var_log2", "q4_mean_shift", "q4_var_log2")

            def network(d, _k=k, _abs=absolute):
                vals = [abs(v[_k]) if _abs else v[_k] for v in d.values() if _k in v]
                return float(np.mean(vals)) if vals else None
            out["network"][k] = stats.paired_difference([network(d) for d in a], [network(d) for d in b])
    return out
