"""Notebook 06 (4-bit training, 2020 to 2025): the 2020 radix-4 recipe next to 2025's block-scaled FP4 recipes
(NVFP4, MXFP4) on notebook 04's models, seeds and schedules.

* :func:`run_configs` / :func:`run_recipes` - every domain of notebook 04 (:data:`DOMAINS`) under ``fp16`` and
  each recipe of a list, with notebook 04's seeds and schedule.  The configurations are made by notebook 04's own
  builder, so the ``fp16`` runs are the *same* cached runs as notebook 04's (cache hits, not retrained), and so are
  the ``q4`` runs when ``q4_recorder_every`` is notebook 04's ``record_every``: its q4 runs carry a
  :class:`~q4core.experiments.full_training.QuantErrorRecorder`, which is part of a run's identity (it does not
  change training), so unrecorded q4 runs would be other runs, trained again.
* :func:`gap_table` - per domain and recipe, the gap to fp16 paired by seed with its 95 % Student-t interval and
  notebook 04's verdict against the 1-point aim (:func:`q4core.experiments.full_training.results_table`: met /
  missed / inconclusive); :func:`recipe_comparisons` - every pair of recipes per domain, paired by seed, and which
  one the interval supports ("not resolved" where it includes zero).
* :func:`run_ablations` / :func:`ablation_effects` - recipes with one piece changed (``nvfp4+no-rht``, ...) on one
  domain, each paired by seed against its full recipe (the name before the first ``+``).
* :func:`fidelity_runs` - per layer, the cosine and norm ratio of dL/dW and dL/dx computed from the quantized
  gradient against the float one, accumulated over a short recorded run (notebook 03's
  :class:`~q4core.experiments.gradients.GradientFidelityRecorder`; it records the GEMM layers whose input is an
  (M, K) matrix - Linear and LSTM projections, not convolutions - and whose output gradient is quantized).  The
  recorder quantizes each layer's last output gradient again with the layer's own specs and scale
  (:func:`q4core.recipe.operands.quantize`), so a recipe's fidelity is measured as faithfully as that function
  reproduces the recipe's backward operands (a random Hadamard transform applied elsewhere is not seen).
* :func:`memory_per_value` - bits one stored value costs in each 4-bit format: element bits + scale bits / block
  + the per-tensor scale amortized over ``n`` values, from the format objects (and counted on a real encoding).
* :func:`gemm_throughput` - GOP/s of each format's GEMM on our kernels (:func:`q4core.bench.gemm.measure_gemm`
  for numpy float32, INT4 x INT4 and the FP4 x INT4 backward products; the block-scaled GEMM
  :func:`q4core.bsgemm.blockscaled_matmul` for MXFP4 and NVFP4 only when it is backed by a kernel - else those
  rows are skipped with the reason).

Compute budget of the default profile (notebook 04's default schedule, 6 seeds; notebook 04's q4 runs take about
65 s (vision), 23 s (speech) and 12 s (language) each at one thread, block-scaled runs an expected 1.5-2x that):
the fp16 and q4 runs are notebook 04's (0 s; the q4 runs only with ``q4_recorder_every`` = notebook 04's
``record_every``, else another 6 seeds x (65 + 23 + 12) s = 600 s).  New main runs: 2 recipes (nvfp4, mxfp4) x 6
seeds x (65 + 23 + 12) s x 1.5-2 = 1800-2400 s.  Ablations on the language domain: 5 ablation recipes x 3 seeds
x 12 s x 1.5-2 = 270-360 s (their full recipes are main runs).  Gradient fidelity: one recorded run per recipe (3)
on the language domain, 24 s each at most: 72 s.  GEMM timing at 1024: about 10 s (8 s measured, with the
block-scaled rows skipped).  Total 2150-2840 core-seconds, i.e. 18-24 minutes on the 2 cores (two single-threaded
workers) - within the 25 minutes beyond notebook 04.
"""
from __future__ import annotations

import math

import numpy as np

from .. import stats
from .._validation import check_int, check_int_list
from . import full_training as ft

__all__ = ["DOMAINS", "REFERENCE", "run_configs", "run_recipes", "gap_table", "recipe_comparisons", "full_recipe_of",
           "run_ablations", "ablation_effects", "fidelity_runs", "summarise_fidelity", "FORMATS",
           "memory_per_value", "gemm_throughput"]

#: notebook 04's domains (task, model, label): the same models, so the same runs
DOMAINS = ft.DOMAINS
#: every gap is taken against this precision, paired by seed
REFERENCE = "fp16"


def _check_recipes(recipes, name):
    if isinstance(recipes, str) or not isinstance(recipes, (list, tuple)) or not recipes \
            or not all(isinstance(r, str) and r for r in recipes):
        raise ValueError(f"{name} must be a non-empty list of recipe names, got {recipes!r}")
    if len(set(recipes)) != len(recipes):
        raise ValueError(f"{name} repeats a recipe: {recipes!r}")
    return list(recipes)


def _check_domain(domain):
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {sorted(DOMAINS)}, got {domain!r}")


def _with_reference(recipes):
    return [REFERENCE] + [r for r in recipes if r != REFERENCE]


# ---------------------------------------------------------------------------------------------- main runs
#: the recipe whose runs notebook 04 records (its QuantErrorRecorder) when asked
_RECORDED_RECIPE = "q4"


def _items(domain, recipes, seeds, train_kwargs, q4_recorder_every):
    """``ft._run_all`` items of fp16 and each recipe per seed (recipe-major); only the q4 runs get the recorder."""
    return [(domain, r, None, s, q4_recorder_every if r == _RECORDED_RECIPE else None, train_kwargs)
            for r in _with_reference(recipes) for s in seeds]


def run_configs(domain, recipes, seeds, epochs, max_steps=None, max_chars=None, train_kwargs=None,
                q4_recorder_every=None):
    """The cached runs (:class:`q4core.runs.RunConfig`) of ``domain`` under fp16 and each of ``recipes`` for each
    seed, in that order (recipe-major), built by notebook 04's builder: with notebook 04's seeds and schedule the
    fp16 configurations are identical to its main runs (same keys, so cache hits), and so are the q4 ones when
    ``q4_recorder_every`` is notebook 04's ``record_every`` (the q4 runs then carry its QuantErrorRecorder; None:
    unrecorded, other runs).  Other recipes are never recorded."""
    _check_domain(domain)
    recipes = _check_recipes(recipes, "recipes")
    seeds = check_int_list(seeds, "seeds", min_value=0)
    check_int(epochs, "epochs", min_value=1)
    if q4_recorder_every is not None:
        check_int(q4_recorder_every, "q4_recorder_every", min_value=1)
    schedule = ft._schedule(domain, epochs, max_steps, max_chars, train_kwargs)
    return [ft._config(domain, recipe, None, seed, schedule, every)
            for _, recipe, _, seed, every, _ in _items(domain, recipes, seeds, train_kwargs, q4_recorder_every)]


def run_recipes(domain, recipes, seeds, epochs, max_steps=None, max_chars=None, train_kwargs=None, done=(),
                q4_recorder_every=None):
    """Train (or take from the cache) the runs of :func:`run_configs`; notebook 04's run dicts (``precision`` =
    the recipe name, ``test`` in table units: accuracy in %, bits per character as is; recorded q4 runs also carry
    ``errors``, the recorder's records).  Runs in ``done`` with the same recipe, seed and schedule are reused
    (not the q4 runs to be recorded: notebook 04's rule)."""
    run_configs(domain, recipes, seeds, epochs, max_steps, max_chars, train_kwargs, q4_recorder_every)  # checks
    items = _items(domain, recipes, seeds, train_kwargs, q4_recorder_every)
    return ft._run_all(items, epochs, max_steps, max_chars, done)


def gap_table(runs, recipes):
    """``{domain: {recipe: entry}}``: notebook 04's results-table entry of each recipe as the candidate against
    fp16 (``gap`` in table units and ``gap_in_target_unit`` with values per seed, mean, SD, 95 % t-interval;
    ``target``; ``verdict`` met / missed / inconclusive; ``precisions``: the test metric of both)."""
    recipes = _check_recipes(recipes, "recipes")
    out = {}
    for domain in dict.fromkeys(r["domain"] for r in runs):
        out[domain] = {}
        for recipe in recipes:
            if recipe == REFERENCE:
                continue
            entry = ft.results_table([r for r in runs if r["domain"] == domain], reference=REFERENCE,
                                     candidate=recipe)[domain]
            if "gap" not in entry:
                raise ValueError(f"domain {domain!r} has no {recipe!r} or no {REFERENCE!r} runs")
            out[domain][recipe] = entry
    return out


def _by_seed(runs, domain, recipe):
    return {r["seed"]: r["test"] for r in runs if r["domain"] == domain and r["precision"] == recipe}


def _paired_loss(runs, domain, worse, better, metric):
    """Per common seed, how much worse ``worse`` is than ``better`` (positive = worse; accuracy in points, bits
    per character in bits): notebook 04's signed gap between two recipes."""
    a, b = _by_seed(runs, domain, worse), _by_seed(runs, domain, better)
    seeds = [s for s in b if s in a]
    return seeds, [ft.gap(b[s], a[s], metric) for s in seeds]


def _judged(seeds, diffs):
    iv = stats.paired_interval(diffs)
    return {"seeds": seeds, "values": diffs, **iv, "verdict": stats.verdict(iv)}


def recipe_comparisons(runs, recipes):
    """Every pair of ``recipes`` on every domain, paired by seed: ``{domain: [{"a", "b", "metric", "values"
    (per seed: a's loss of quality against b; positive = a worse), "mean", "low", "high", ..., "verdict"
    ("above" = a worse, "below" = a better, "not resolved"), "winner" (a recipe name or None)}]}``."""
    recipes = _check_recipes(recipes, "recipes")
    out = {}
    for domain in dict.fromkeys(r["domain"] for r in runs):
        metric = next(r["metric"] for r in runs if r["domain"] == domain)
        rows = []
        for i, a in enumerate(recipes):
            for b in recipes[i + 1:]:
                seeds, diffs = _paired_loss(runs, domain, a, b, metric)
                row = {"a": a, "b": b, "metric": metric, **_judged(seeds, diffs)}
                row["winner"] = {"above": b, "below": a}.get(row["verdict"])
                rows.append(row)
        out[domain] = rows
    return out


# ---------------------------------------------------------------------------------------------- ablations
def full_recipe_of(ablation):
    """The full recipe an ablation recipe is paired against: the name before its first ``+``
    (``nvfp4+no-rht`` -> ``nvfp4``)."""
    head, sep, tail = str(ablation).partition("+")
    if not sep or not head or not tail:
        raise ValueError(f"an ablation recipe is '<recipe>+<change>', got {ablation!r}")
    return head


def run_ablations(domain, ablation_recipes, seeds, epochs, max_steps=None, max_chars=None, train_kwargs=None,
                  done=()):
    """Each of ``ablation_recipes`` and its full recipe (:func:`full_recipe_of`) on ``domain`` with ``seeds`` and
    the schedule; run dicts as :func:`run_recipes` (full-recipe runs already in ``done`` are reused)."""
    ablation_recipes = _check_recipes(ablation_recipes, "ablation_recipes")
    fulls = list(dict.fromkeys(full_recipe_of(a) for a in ablation_recipes))
    return run_recipes(domain, fulls + ablation_recipes, seeds, epochs, max_steps, max_chars, train_kwargs, done)


def ablation_effects(runs, domain, ablation_recipes):
    """Per ablation recipe, its effect against its full recipe on ``domain``, paired by seed: ``{ablation: {"full",
    "metric", "seeds", "values" (positive = the change makes it worse; points or bits per character), "mean",
    "sd", "low", "high", "verdict" ("above" = worse, "below" = better, "not resolved")}}``."""
    ablation_recipes = _check_recipes(ablation_recipes, "ablation_recipes")
    rows = [r for r in runs if r["domain"] == domain]
    if not rows:
        raise ValueError(f"runs hold no run of domain {domain!r}")
    metric = rows[0]["metric"]
    out = {}
    for ablation in ablation_recipes:
        full = full_recipe_of(ablation)
        seeds, diffs = _paired_loss(rows, domain, ablation, full, metric)
        if not seeds:
            raise ValueError(f"runs hold no seed with both {ablation!r} and {full!r} on {domain!r}")
        out[ablation] = {"full": full, "metric": metric, **_judged(seeds, diffs)}
    return out


# ---------------------------------------------------------------------------------------------- gradient fidelity
def _fidelity_config(domain, recipe, seed, schedule, every):
    """A recorded run: notebook 04's configuration with a GradientFidelityRecorder made where it runs."""
    from ..runs import RunConfig
    from .gradients import GradientFidelityRecorder
    spec = DOMAINS[domain]
    return RunConfig(task=spec["task"], recipe=recipe, seed=int(seed), ablation=None, epochs=int(schedule["epochs"]),
                     model=spec["model"], max_steps=schedule["max_steps"],
                     recorder=GradientFidelityRecorder.spec(every), **schedule["train_kwargs"])


_FIDELITY_KEYS = ("dw_cos", "dw_norm_ratio", "dx_cos", "dx_norm_ratio")


def summarise_fidelity(records):
    """Mean over recorded steps per layer: ``{layer: {"dw_cos", "dw_norm_ratio", "dx_cos", "dx_norm_ratio",
    "n"}}`` in the order layers were seen (NaN entries - a zero float product - left out of the mean)."""
    acc = {}
    for r in records:
        acc.setdefault(r["layer"], []).append(r)
    out = {}
    for layer, recs in acc.items():
        out[layer] = {k: _nanmean([r[k] for r in recs]) for k in _FIDELITY_KEYS}
        out[layer]["n"] = len(recs)
    return out


def _nanmean(values):
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    return float(np.mean(v)) if v else float("nan")


def fidelity_runs(domain, recipes, seed, epochs, every, max_steps=None, max_chars=None, train_kwargs=None):
    """One recorded run per recipe on ``domain`` (seed ``seed``, the schedule given): ``{recipe: {"layers":
    summarise_fidelity(records), "steps", "records": n}}``.  Runs are cached like every other (the recorder is
    part of their identity); a recipe whose layers quantize no gradient records nothing (``layers`` empty)."""
    from .. import runs as _runs
    _check_domain(domain)
    recipes = _check_recipes(recipes, "recipes")
    check_int(seed, "seed", min_value=0)
    check_int(epochs, "epochs", min_value=1)
    check_int(every, "every", min_value=1)
    schedule = ft._schedule(domain, epochs, max_steps, max_chars, train_kwargs)
    results = _runs.map([_fidelity_config(domain, r, seed, schedule, every) for r in recipes])
    return {r: {"layers": summarise_fidelity(res["records"]), "steps": int(res["steps"]),
                "records": len(res["records"])} for r, res in zip(recipes, results)}


# ---------------------------------------------------------------------------------------------- memory
def _formats():
    from ..blockscaled import MXFP4, NVFP4
    from ..formats import INT4, RADIX4_FP4
    return {"INT4": INT4, "radix-4 FP4": RADIX4_FP4, "MXFP4": MXFP4, "NVFP4": NVFP4}


#: the 4-bit formats compared, in the order of the 2020 recipe's (INT4 forward, radix-4 FP4 gradients) then 2025's
FORMATS = ("INT4", "radix-4 FP4", "MXFP4", "NVFP4")
_TENSOR_SCALE_BITS = 32     # one float32 per tensor (SAWB/PACT/GradScale scale; NVFP4's encode scale)


def _scale_bits(fmt):
    """Bits of one block scale: E8M0 is a byte of exponent (code 255 = NaN), E4M3 the FP8 format's width."""
    from ..blockscaled import E8M0_NAN
    from ..formats import FP8_E4M3
    return int(math.log2(E8M0_NAN + 1)) if fmt.scale == "e8m0" else int(FP8_E4M3.bits)


def _layout(fmt):
    """(element bits, block scale bits, block length, tensor scale bits) of a format object."""
    if hasattr(fmt, "block"):               # block-scaled: a scale per block; NVFP4 also one per tensor
        return fmt.element.bits, _scale_bits(fmt), fmt.block, _TENSOR_SCALE_BITS if fmt.scale == "e4m3" else 0
    return fmt.bits, 0, None, _TENSOR_SCALE_BITS  # the 2020 formats: one float32 scale per tensor


def _counted_bits(fmt, n, seed):
    """Bits per value counted on a real encoding of ``n`` normal samples (one row): packed element codes, the
    block scale codes and the tensor scale (a float32: 4 bytes)."""
    x = np.random.default_rng(seed).standard_normal((1, n))
    if hasattr(fmt, "block"):
        t = fmt.encode(x, axis=-1)
        nbytes = t.packed().nbytes + t.scale_codes.nbytes + (4 if fmt.scale == "e4m3" else 0)
    else:
        from ..quant import encode_packed
        amax = float(np.abs(x).max())
        nbytes = encode_packed(fmt, x, amax / 7.0 if fmt.max == 7 else amax).nbytes + 4
    return 8.0 * nbytes / n


def memory_per_value(n=4096, seed=0):
    """Bits per stored value of each of :data:`FORMATS` for a tensor of ``n`` values: ``[{"format", "element_bits",
    "scale_bits", "block", "tensor_scale_bits", "bits" (element + scale / block + tensor scale / n), "counted_bits"
    (8 x bytes of a real encoding of n values / n)}]``.  ``n`` a multiple of 32 makes every block whole, and then
    ``counted_bits == bits``."""
    check_int(n, "n", min_value=2)
    rows = []
    for name, fmt in _formats().items():
        elem, scale, block, tensor = _layout(fmt)
        bits = elem + (scale / block if block else 0.0) + tensor / n
        rows.append({"format": name, "element_bits": int(elem), "scale_bits": int(scale), "block": block,
                     "tensor_scale_bits": int(tensor), "bits": float(bits),
                     "counted_bits": _counted_bits(fmt, n, seed)})
    return rows


# ---------------------------------------------------------------------------------------------- throughput
def _fast_kernels():
    from .. import gemm
    kernels = [k for k in gemm.available_kernels() if k not in ("reference", "portable")]
    return kernels or ["portable"]


def gemm_throughput(size=1024, repeat=5, seed=0, threads=1):
    """GOP/s (2 M N K ops per GEMM over the median wall time) of a ``size``-cubed GEMM per format on ``threads``
    threads: ``{"rows": [{"format", "op", "kernel", "seconds", "seconds_min", "seconds_max", "gops",
    "ratio_vs_fp32"}], "skipped": [{"format", "reason"}], "cpu_model", "kernel_info", "size", "threads"}``.
    Every row comes from one :func:`q4core.bench.gemm.measure_gemm` run (the fastest kernel of each op): float32
    (numpy), INT4 x INT4 (forward), the radix-4 FP4 x INT4 products (dL/dx, dL/dW) and the block-scaled MXFP4 and
    NVFP4 GEMMs (:mod:`q4core.bsgemm`, which the bench checks against the reference up to a moderate size)."""
    from ..bench import gemm as bench
    check_int(size, "size", min_value=1)
    check_int(repeat, "repeat", min_value=1)
    check_int(threads, "threads", min_value=1)
    res = bench.measure_gemm(sizes=(size,), threads=(threads,), repeat=repeat, kernels=_fast_kernels(), seed=seed,
                             fakequant=False)
    labels = {"fp32": "float32", "int4xint4": "INT4 x INT4", "fp4xint4": "radix-4 FP4 x INT4 (dL/dx)",
              "int4xfp4": "INT4 x radix-4 FP4 (dL/dW)"}
    labels.update({op: f"{name} x {name}" for op, name in bench.BLOCKSCALED_OPS.items()})
    best = {}
    for r in res["records"]:
        if r["op"] in labels and (r["op"] not in best or r["gops"] > best[r["op"]]["gops"]):
            best[r["op"]] = r
    rows = [{"format": labels[op], "op": op, **{k: best[op][k] for k in (
        "kernel", "seconds", "seconds_min", "seconds_max", "gops", "ratio_vs_fp32")}} for op in labels if op in best]
    skipped = [{"format": labels[op], "reason": "no kernel of this build measured it"}
               for op in labels if op not in best]
    return {"rows": rows, "skipped": skipped, "cpu_model": res["cpu_model"], "kernel_info": res["kernel_info"],
            "size": int(size), "threads": int(threads), "repeat": int(repeat)}
