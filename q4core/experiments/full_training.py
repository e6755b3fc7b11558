"""Notebook 04 (full 4-bit training): every domain under fp32, fp16 and q4, the results table, the ablations and
the diagnosis of a miss.

Domains (:data:`DOMAINS`): *vision* - a residual CNN (10 convolutions, BatchNorm) on MNIST-5k (test accuracy);
*speech* - an LSTM acoustic model on the spoken digits (test accuracy); *language* - the character LSTM on BBC News
text (test bits per character).  Under q4 every GEMM but the first and last is 4-bit (:func:`mac_share`).
Every run goes through :func:`q4core.train.train` with the same seed list and
the same schedule for each precision, so the only difference between the columns of the table is the precision
policy.

Units: accuracies are reported in percent, so "points" are percentage points; bits per character stay in bits.
The *gap* of the 4-bit run to the 16-bit run is signed so that a positive gap is always a loss of quality:
``fp16 - q4`` for accuracy, ``q4 - fp16`` for bits per character.  The paper's aim (4-bit within about one point of
16-bit) is read as 1 percentage point of accuracy and, for bits per character, 1 % of the 16-bit value
(:data:`TARGETS`).  With several seeds, the gap is taken per seed (the runs of one seed share initial weights and
batch order) and reported as mean and standard deviation over seeds.

Diagnosis (:class:`QuantErrorRecorder`): an ``on_step`` callback that, at recorded steps, quantizes each 4-bit
layer's last weight, input and output gradient with the reference quantizers of :mod:`q4core.formats` at the
scales the layer used, and keeps their relative error ``||q(x) - x|| / ||x||`` (SNR in dB = -20 log10 of it).
Every run is a cached task of :mod:`q4core.runs` (a sweep is one :func:`q4core.runs.map`, so a parallel executor
runs it in parallel); the q4 runs with a :class:`QuantErrorRecorder` make it where they run and return its records.
"""
from __future__ import annotations

import math

import numpy as np

from .._validation import check_int, check_int_list
from ..recipe import operands
from ..stats import paired_interval
from .common import StepRecorder

__all__ = ["domain_seeds", "DOMAINS", "PRECISIONS", "ABLATIONS", "TARGETS", "run_domain", "run_ablations",
           "results_table", "ablation_table", "ablation_study", "format_table", "to_points", "gap",
           "QuantErrorRecorder", "summarise_errors", "diagnose", "curves_of", "q4_layers", "layer_sensitivity"]

#: domain -> the q4core.train task, model and what the metric is called
# models like the paper's, mostly 4-bit (every GEMM but the first and last under q4; share of MACs: mac_share)
DOMAINS = {
    "vision": {"task": "mnist", "model": "resnet", "label": "ResNet (10 conv), MNIST-5k"},
    "speech": {"task": "speech", "model": "speech_lstm", "label": "LSTM, spoken digits"},
    "language": {"task": "chars", "model": "char_lstm", "label": "char LSTM, BBC News"},
}
PRECISIONS = ("fp32", "fp16", "q4")
#: ablation label -> q4core.recipe ablation name (None: the full recipe)
ABLATIONS = {
    "q4 (full recipe)": None,
    "one loss scale (no GradScale)": "global-loss-scale",
    "no TPR": "no-tpr",
    "INT4 gradients": "int4-grad",
    "radix-2 FP4": "radix2",
    "E2M1 FP4": "e2m1",
    "static scale": "static-scale",
}
#: the paper's "within about one point", per metric: (value, how it is measured)
TARGETS = {"accuracy": (1.0, "percentage points"), "bpc": (1.0, "% of the 16-bit bits per character")}


# ---------------------------------------------------------------------------------------------- units
def to_points(value, metric):
    """A test metric in the table's unit: accuracy in percent, bits per character as is; None stays None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if metric == "accuracy":
        return 100.0 * float(value)
    if metric == "bpc":
        return float(value)
    raise ValueError(f"metric must be 'accuracy' or 'bpc', got {metric!r}")


def gap(reference, candidate, metric):
    """Loss of quality of ``candidate`` against ``reference`` (both in table units); positive = worse.

    Accuracy: ``reference - candidate`` percentage points.  bpc: ``candidate - reference`` bits.  None if either
    is None (a run that diverged has no test metric)."""
    if reference is None or candidate is None:
        return None
    if metric == "accuracy":
        return float(reference) - float(candidate)
    if metric == "bpc":
        return float(candidate) - float(reference)
    raise ValueError(f"metric must be 'accuracy' or 'bpc', got {metric!r}")


def _target_gap(g, reference, metric):
    """The gap in the unit of :data:`TARGETS` (bpc: percent of the reference)."""
    if g is None:
        return None
    if metric == "bpc":
        return 100.0 * g / reference if reference else None
    return g


def _stats(values):
    """Mean, sample SD (ddof = 1) and the 95 % Student-t interval of the mean over seeds (None entries: runs
    that diverged, left out)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"values": list(values), "mean": None, "std": None, "n": 0, "low": None, "high": None}
    ci = paired_interval(vals)
    return {"values": list(values), "mean": ci["mean"], "std": ci["sd"] if ci["sd"] is not None else 0.0,
            "n": ci["n"], "low": ci["low"] if ci["n"] > 1 else None, "high": ci["high"] if ci["n"] > 1 else None}


def target_verdict(interval, target):
    """``met`` when the whole 95 % interval of the gap is at or below ``target``, ``missed`` when it is all
    above, ``inconclusive`` otherwise (also with one seed: no interval); None without a gap."""
    if interval["mean"] is None:
        return None
    if interval["low"] is None:
        return "inconclusive"
    if interval["high"] <= target:
        return "met"
    if interval["low"] > target:
        return "missed"
    return "inconclusive"


# ---------------------------------------------------------------------------------------------- runs
def curves_of(result):
    """The per-epoch and per-step curves of a :func:`q4core.train.train` result (no timings: they differ
    between runs and would make the figures' JSON non-reproducible)."""
    h, m = result["history"], result["metric"]
    return {"epoch": list(range(1, len(h["train_loss"]) + 1)), "train_loss": [float(v) for v in h["train_loss"]],
            "val": [to_points(v, m) for v in h["val_" + m]], "step_loss": [float(v) for v in h["step_loss"]]}


def _schedule(domain, epochs, max_steps, max_chars, train_kwargs):
    """Everything besides precision, ablation and seed that decides a run's numbers."""
    kw = dict(train_kwargs or {})
    if DOMAINS[domain]["task"] == "chars" and max_chars is not None:
        kw["max_chars"] = int(max_chars)
    return {"epochs": int(epochs), "max_steps": max_steps, "train_kwargs": kw}


def _config(domain, precision, ablation, seed, schedule, recorder_every=None):
    """The cached run (:class:`q4core.runs.RunConfig`) of one domain, precision, ablation and seed; with
    ``recorder_every`` it records quantization errors (:class:`QuantErrorRecorder`) where it runs."""
    from ..runs import RunConfig
    spec = DOMAINS[domain]
    recorder = None if recorder_every is None else QuantErrorRecorder.spec(recorder_every)
    return RunConfig(task=spec["task"], recipe=precision, seed=int(seed), ablation=ablation,
                     epochs=int(schedule["epochs"]), model=spec["model"], max_steps=schedule["max_steps"],
                     recorder=recorder, **schedule["train_kwargs"])


def _run_dict(domain, precision, ablation, seed, schedule, result):
    m = result["metric"]
    return {"domain": domain, "precision": precision, "ablation": ablation, "seed": int(seed), "metric": m,
            "test": to_points(result.get("test_" + m), m), "stopped": result["stopped"], "steps": result["steps"],
            "curves": curves_of(result), "wall_seconds": float(result["wall_seconds"]), "schedule": schedule}


def _run_all(items, epochs, max_steps, max_chars, done=()):
    """Run dicts of ``items`` = ``(domain, precision, ablation, seed, recorder_every, train_kwargs)``, in order.

    A run without a recorder with the same domain, precision, ablation, seed and schedule as one in ``done``
    (earlier run dicts) is taken from there (training is deterministic); all the others go to
    :func:`q4core.runs.map` together (cached, and parallel on a parallel executor).  A run with
    ``recorder_every`` records quantization errors where it runs; they come back as ``errors``."""
    from .. import runs
    out, pending = [None] * len(items), []
    for i, (domain, precision, ablation, seed, recorder_every, train_kwargs) in enumerate(items):
        schedule = _schedule(domain, epochs, max_steps, max_chars, train_kwargs)
        for r in () if recorder_every else done:
            if (r["domain"], r["precision"], r["ablation"], r["seed"], r["schedule"]) == (
                    domain, precision, ablation, int(seed), schedule):
                out[i] = dict(r)
                break
        else:
            pending.append((i, schedule, _config(domain, precision, ablation, seed, schedule, recorder_every)))
    results = runs.map([config for _, _, config in pending]) if pending else []
    for (i, schedule, _), result in zip(pending, results):
        domain, precision, ablation, seed = items[i][:4]
        out[i] = _run_dict(domain, precision, ablation, seed, schedule, result)
        if items[i][4]:
            out[i]["errors"] = result["records"]
    return out


def domain_seeds(first_seed, n_seeds, seed_counts=None):
    """``{domain: [first_seed, first_seed + 1, ...]}``: ``n_seeds`` seeds per domain, or ``seed_counts[domain]``
    where given (a domain whose verdict is not resolved gets more).  A domain's first seeds are the same whatever
    its count, so its runs for them are the same cached runs."""
    check_int(first_seed, "first_seed", min_value=0)
    check_int(n_seeds, "n_seeds", min_value=1)
    counts = dict(seed_counts or {})
    for d, k in counts.items():
        if d not in DOMAINS:
            raise ValueError(f"seed_counts names an unknown domain {d!r}; domains: {sorted(DOMAINS)}")
        check_int(k, f"seed_counts[{d!r}]", min_value=1)
    return {d: [int(first_seed) + i for i in range(int(counts.get(d, n_seeds)))] for d in DOMAINS}


def _check_common(domain, seeds, epochs):
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {sorted(DOMAINS)}, got {domain!r}")
    seeds = check_int_list(seeds, "seeds", min_value=0)
    check_int(epochs, "epochs", min_value=1)
    return seeds


def run_domain(domain, seeds=(0,), epochs=1, precisions=PRECISIONS, max_steps=None, max_chars=None,
               recorder_every=None, train_kwargs=None, done=()):
    """Train ``domain`` under each precision and seed (same seeds, same schedule); returns a list of run dicts
    ``{domain, precision, ablation, seed, metric, test, stopped, steps, curves, wall_seconds}`` (``test`` in table
    units).  With ``recorder_every``, the q4 runs carry ``errors``: the :class:`QuantErrorRecorder` records.
    Runs in ``done`` with the same schedule are reused (not the q4 runs when errors are to be recorded)."""
    seeds = _check_common(domain, seeds, epochs)
    items = []
    for precision in precisions:
        for s in seeds:
            every = recorder_every if recorder_every and precision == "q4" else None
            items.append((domain, precision, None, s, every, train_kwargs))
    return _run_all(items, epochs, max_steps, max_chars, done)


def run_ablations(domain, seeds=(0,), epochs=1, ablations=None, max_steps=None, max_chars=None, train_kwargs=None,
                  done=()):
    """q4 with each ablation of :data:`ABLATIONS` (label -> policy ablation name) on ``domain``; run dicts as
    :func:`run_domain`, with ``label`` added.  Runs already in ``done`` with the same schedule are reused."""
    seeds = _check_common(domain, seeds, epochs)
    ablations = ABLATIONS if ablations is None else ablations
    labels = [label for label in ablations for _ in seeds]
    runs = _run_all([(domain, "q4", name, s, None, train_kwargs) for name in ablations.values() for s in seeds],
                    epochs, max_steps, max_chars, done)
    for label, run in zip(labels, runs):
        run["label"] = label
    return runs


def ablation_study(domains, seeds=(0,), epochs=None, max_steps=None, max_chars=None, train_kwargs=None, done=()):
    """The ablations on each of ``domains``: q4 with each :data:`ABLATIONS` change, and fp32 / fp16 with the
    same seeds and schedule as lines of reference.  ``epochs``: ``{domain: epochs}`` (the same schedule as the
    main runs, so that the full recipe here is comparable with the results table).  ``done``: run dicts already
    trained (e.g. the main runs); a run with the same domain, precision, ablation, seed and schedule is taken
    from there instead of being trained again.

    Returns ``{domain: {"metric", "epochs", "seeds", "ablations": ablation_table(...), "reference":
    results_table(...)[domain]["precisions"]}}``."""
    if isinstance(domains, str) or not isinstance(domains, (list, tuple)) or not domains:
        raise ValueError(f"ablation domains must be a non-empty list of {sorted(DOMAINS)}, got {domains!r}")
    for d in domains:
        if d not in DOMAINS:
            raise ValueError(f"ablation domains must be among {sorted(DOMAINS)}, got {d!r}")
    if len(set(domains)) != len(domains):
        raise ValueError(f"ablation domains repeat a domain: {domains!r}")
    epochs = epochs or {}
    out = {}
    for d in domains:
        if d not in epochs:
            raise ValueError(f"epochs has no entry for ablation domain {d!r}")
        runs = run_ablations(d, seeds=seeds, epochs=epochs[d], max_steps=max_steps, max_chars=max_chars,
                             train_kwargs=train_kwargs, done=done)
        base = run_domain(d, seeds=seeds, epochs=epochs[d], precisions=("fp32", "fp16"), max_steps=max_steps,
                          max_chars=max_chars, train_kwargs=train_kwargs, done=done)
        out[d] = {"metric": runs[0]["metric"], "epochs": int(epochs[d]), "seeds": [int(s) for s in seeds],
                  "ablations": ablation_table(runs, baseline="fp16", baseline_runs=base),
                  "reference": results_table(base)[d]["precisions"]}
    return out


# ---------------------------------------------------------------------------------------------- tables
def results_table(runs, reference="fp16", candidate="q4"):
    """One row per domain: per precision the test metric over seeds (values, mean, sample SD, 95 % t-interval),
    the gap of ``candidate`` to ``reference`` paired by seed (positive = worse) with its interval, the target and
    the verdict the interval supports (:func:`target_verdict`: met / missed / inconclusive).  Runs that diverged
    count as None (and the row's gap is None for that seed)."""
    table = {}
    for domain in dict.fromkeys(r["domain"] for r in runs):
        rows = [r for r in runs if r["domain"] == domain]
        metrics = {r["metric"] for r in rows}
        if len(metrics) != 1:
            raise ValueError(f"domain {domain!r} mixes metrics {sorted(metrics)}")
        metric = metrics.pop()
        by = {}
        for r in rows:
            by.setdefault(r["precision"], {})[r["seed"]] = r["test"]
        entry = {"metric": metric, "unit": "%" if metric == "accuracy" else "bits/char",
                 "precisions": {p: {**_stats(list(v.values())), "seeds": list(v)} for p, v in by.items()},
                 "stopped": {r["precision"]: r["stopped"] for r in rows if r["stopped"]}}
        if reference in by and candidate in by:
            common = [s for s in by[reference] if s in by[candidate]]
            gaps = [gap(by[reference][s], by[candidate][s], metric) for s in common]
            rel = [_target_gap(g, by[reference][s], metric) for g, s in zip(gaps, common)]
            target, unit = TARGETS[metric]
            g_stats, t_stats = _stats(gaps), _stats(rel)
            entry.update(gap=g_stats, gap_in_target_unit=t_stats, target=target, target_unit=unit,
                         reference=reference, candidate=candidate, verdict=target_verdict(t_stats, target))
        table[domain] = entry
    return table


def ablation_table(runs, baseline="fp16", baseline_runs=None):
    """Per ablation label: test metric over seeds and, when ``baseline_runs`` (runs of the same domain) holds
    the ``baseline`` precision, the gap to it per seed.  Returns ``{label: {..stats.., gap: stats}}``."""
    ref = {}
    for r in baseline_runs or []:
        if r["precision"] == baseline and r["ablation"] is None:
            ref[r["seed"]] = r["test"]
    out = {}
    for label in dict.fromkeys(r["label"] for r in runs):
        rows = [r for r in runs if r["label"] == label]
        metric = rows[0]["metric"]
        entry = {"metric": metric, "ablation": rows[0]["ablation"], **_stats([r["test"] for r in rows]),
                 "seeds": [r["seed"] for r in rows], "stopped": [r["stopped"] for r in rows]}
        if ref:
            entry["gap"] = _stats([gap(ref.get(r["seed"]), r["test"], metric) for r in rows])
        out[label] = entry
    return out


def _fmt(stats, digits, interval=False):
    if stats["mean"] is None:
        return "diverged"
    s = f"{stats['mean']:.{digits}f}"
    if stats["n"] > 1:
        s += f" [{stats['low']:.{digits}f}, {stats['high']:.{digits}f}]" if interval else \
            f" +- {stats['std']:.{digits}f}"
    return s


def format_table(table):
    """The results table as fixed-width text (the paper's layout: metric per precision, then the gap)."""
    precs = list(dict.fromkeys(p for e in table.values() for p in e["precisions"]))
    head = (f"{'domain':<10} {'metric':<12}" + "".join(f" {p:>17}" for p in precs)
            + f" {'4-bit gap [95% CI]':>26} {'1-point aim':>13}")
    lines = [head, "-" * len(head)]
    for domain, e in table.items():
        digits = 2 if e["metric"] == "accuracy" else 3
        name = "accuracy (%)" if e["metric"] == "accuracy" else "bits/char"
        row = f"{domain:<10} {name:<12}" + "".join(
            f" {_fmt(e['precisions'][p], digits) if p in e['precisions'] else '':>17}" for p in precs)
        if "gap" in e:
            g = _fmt(e["gap_in_target_unit"], 2 if e["metric"] == "accuracy" else 1, interval=True)
            if e["metric"] == "bpc" and e["gap_in_target_unit"]["mean"] is not None:
                g += " %"
            row += f" {g:>26} {e['verdict'] or '-':>13}"
        lines.append(row)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- diagnosis
def _relative_error(x, q):
    x = np.asarray(x, dtype=np.float64)
    n = float(np.linalg.norm(x))
    if not n:
        return None
    return float(np.linalg.norm(np.asarray(q, dtype=np.float64) - x)) / n


class QuantErrorRecorder(StepRecorder):
    """``on_step`` callback: every ``every`` steps, for each layer running in ``q4``, the relative quantization
    error of its weight, input (activation) and output gradient, each quantized as the layer quantizes it:
    weight INT4 (levels -7..7) at the layer's last weight scale; input UINT4 (clipped to ``[0, 15 * scale]``,
    PACT's clip) when the layer saw non-negative inputs, else INT4 -7..7; gradient in the layer's gradient
    format (the even TPR grid for radix 4) at its last gradient scale.

    The weight is the one after the optimizer step, quantized at the scale of the step before (the closest
    the callback can get; one step moves the scale very little).  A recurrent layer's input and gradient are
    those of its last timestep.  ``records``: flat dicts ``{step, layer, role, rel_error, snr_db}``.
    """

    ROLES = ("weight", "activation", "gradient")

    def record(self, step, model, info):
        for name, layer in model.gemm_layers():
            gemm = layer.gemm
            if not gemm.quantized:
                continue
            for role, err in self.layer_errors(gemm).items():
                if err is not None:
                    self.records.append({"step": int(step), "layer": name, "role": role, "rel_error": err,
                                         "snr_db": -20.0 * math.log10(err) if err > 0 else math.inf})

    @staticmethod
    def layer_errors(gemm):
        """``{role: relative error or None}`` of one 4-bit :class:`~q4core.nn.qgemm.QuantGemm` from its ``last``,
        each operand made again by the one operand quantizer (:mod:`q4core.recipe.operands`) at the layer's
        last scale, with the layer's specs."""
        last = gemm.last
        out = dict.fromkeys(QuantErrorRecorder.ROLES)
        cases = (("weight", "weight", "weight_scale", gemm.spec_w, gemm.fmt_w),
                 ("activation", "input", "act_scale", gemm.spec_a,
                  operands.operand_format(gemm.spec_a, signed=not gemm.unsigned)),
                 ("gradient", "grad_output", "grad_scale", gemm.spec_gx, gemm.fmt_gx))
        for role, key, scale_key, spec, fmt in cases:
            x, scale = last.get(key), last.get(scale_key)
            if x is None or not scale or fmt is None:
                continue
            x = np.ascontiguousarray(x, dtype=np.float32)
            out[role] = _relative_error(x, operands.quantize(x, spec, fmt, scale, backend="numpy").dequantize())
        return out


def summarise_errors(records):
    """Mean relative error and SNR per (layer, role) over the recorded steps:
    ``{layer: {role: {"rel_error", "snr_db", "n"}}}`` in the order layers were seen."""
    acc = {}
    for r in records:
        acc.setdefault(r["layer"], {}).setdefault(r["role"], []).append(r["rel_error"])
    out = {}
    for layer, roles in acc.items():
        out[layer] = {}
        for role, errs in roles.items():
            e = float(np.mean(errs))
            out[layer][role] = {"rel_error": e, "snr_db": -20.0 * math.log10(e) if e > 0 else math.inf,
                                "n": len(errs)}
    return out


def diagnose(summary):
    """The tensor with the largest mean relative error (lowest SNR) and the per-role worst layer:
    ``{"worst": (layer, role, rel_error), "by_role": {role: (layer, rel_error)}}``; None if nothing recorded."""
    cells = [(layer, role, v["rel_error"]) for layer, roles in summary.items() for role, v in roles.items()]
    if not cells:
        return None
    by_role = {}
    for layer, role, e in cells:
        if role not in by_role or e > by_role[role][1]:
            by_role[role] = (layer, e)
    return {"worst": max(cells, key=lambda c: c[2]), "by_role": by_role}


def q4_layers(domain, max_chars=None):
    """Names of the layers that run in 4 bits under the ``q4`` preset (the first and last GEMM layers stay
    in 16 bits), in order - the layers :func:`layer_sensitivity` can switch to fp16 one at a time."""
    return [name for name, layer in _q4_model(domain, max_chars).gemm_layers() if layer.gemm.quantized]


def _q4_model(domain, max_chars=None):
    from ..train import train
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {sorted(DOMAINS)}, got {domain!r}")
    spec = DOMAINS[domain]
    kw = {"max_chars": int(max_chars)} if spec["task"] == "chars" and max_chars is not None else {}
    # epochs=0: the model is built and given the q4 policy, nothing is trained (the public way to get it)
    _, net = train(spec["task"], "q4", epochs=0, model=spec["model"], progress=False, return_model=True, **kw)
    return net


def layer_labels(domain, max_chars=None):
    """``{module path: readable label}`` of every GEMM layer of ``domain``'s model, for figures: the layer kind,
    its number among layers of that kind, the attribute it is (e.g. ``hidden``) and its precision under q4
    (``"Conv2d 2 (4-bit)"`` instead of ``layers.4``)."""
    net = _q4_model(domain, max_chars)
    modules = dict(net.named_modules())
    counts, out = {}, {}
    for name, layer in net.gemm_layers():
        parent, _, leaf = name.rpartition(".")
        # a GEMM held as an attribute (Conv1d's conv, an LSTM's input/hidden projection) is named by its owner
        owner = layer if leaf.isdigit() or parent not in modules else modules[parent]
        kind = type(owner).__name__.strip("_")
        if owner is layer or (kind, parent) not in counts:
            counts[kind] = counts.get(kind, 0) + 1
            counts[(kind, parent)] = counts[kind]
        what = f"{kind} {counts[(kind, parent)] if owner is not layer else counts[kind]}"
        what += "" if owner is layer or leaf == "conv" else f" {leaf}"
        out[name] = f"{what} ({'4-bit' if layer.gemm.quantized else 'fp16'})"
    return out


def layer_sensitivity(domain, layers, seeds=(0,), epochs=1, max_steps=None, max_chars=None, train_kwargs=None):
    """The causal half of the diagnosis: q4 with one layer at a time kept in fp16 (``overrides``).  A layer whose
    switch closes most of the 4-bit gap is the one whose quantization costs the accuracy.  Run dicts as
    :func:`run_domain`, with ``label`` = the layer kept in fp16."""
    seeds = _check_common(domain, seeds, epochs)
    items, labels = [], []
    for layer in layers:
        kw = dict(train_kwargs or {})
        kw["overrides"] = {**kw.get("overrides", {}), layer: "fp16"}
        for s in seeds:
            items.append((domain, "q4", None, s, None, kw))
            labels.append(layer)
    runs = _run_all(items, epochs, max_steps, max_chars)
    for label, run in zip(labels, runs):
        run["label"] = label
    return runs


def mac_share(domain, max_chars=None):
    """The fraction of a training step's multiply-accumulates that ``domain``'s model does in 4 bits under q4
    (:func:`q4core.nn.macs.mac_share`, on the task's input shape)."""
    from ..nn.macs import mac_share as _share
    from ..tasks import load_task
    net = _q4_model(domain, max_chars)
    spec = DOMAINS[domain]
    kw = {"max_chars": int(max_chars)} if spec["task"] == "chars" and max_chars is not None else {}
    return _share(net, load_task(spec["task"], 0, **kw).input_shape, "q4")
