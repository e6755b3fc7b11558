"""Time of one training step under fp32, q4 (integer GEMM kernels) and simulated q4 (float GEMMs).

Models: the vision CNN on a 28x28 batch (MNIST shape) and the character language models (LSTM and 2-layer
Transformer, vocabulary 64), on synthetic inputs of the real shapes (timing does not depend on the values; no
data set is loaded).  A step is forward + loss + backward + SGD/Adam update.  GEMM-heavy workloads like
training's (:data:`HEAVY_WORKLOADS`, opt-in with ``heavy=``; the CLI times them by default):

* ``mlp1024``: :func:`q4core.nn.models.mlp` 784 -> 1024 -> 1024 -> 1024 -> 10, ``heavy_batch`` rows;
* ``rescnn``: a residual CNN on ``batch`` 3x32x32 images - 3x3 conv stem (64 channels) and 2x2 pool, two
  residual blocks [conv-BN-ReLU-conv-BN] + ReLU at 64 channels, global average pool, Linear - composed from the
  public :mod:`q4core.nn` layers and :class:`q4core.nn.models.Residual`; under the default recipe the stem and
  the head are fp16 and the four middle convolutions are 4-bit;
* ``transformer256``: :func:`q4core.nn.models.char_transformer` with d_model 256 (4 heads, 2 layers, MLP
  ratio 4) on ``lm_batch`` x ``seq_len`` tokens.

* :func:`train_step_times` - median step time per model and precision, and whether q4 and simulated q4 give
  identical losses.
* :func:`summarize_train` - per model the three times and the ratios the targets speak of.
* :func:`step_breakdown` - where a q4 step's time goes: the integer GEMMs, operand making (scales, quantize,
  encode, pack), the rescale of the int32 results, the float GEMMs of the fp16 first and last layers, and the
  rest.  Measured in runs of its own, with the engine's calls wrapped by timers (:func:`instrumented`); the
  timed runs of :func:`train_step_times` are never instrumented.

Targets (issue 4, :data:`TARGETS`): the q4 integer step at most 1.5x the fp32 step, and at least 3x faster
than the simulated q4 step.  Nothing here prints: ``python -m q4core.bench train`` (:mod:`q4core.bench.cli`;
:func:`main` here is that command) prints them.
"""
from __future__ import annotations

import contextlib
import importlib
import time

import numpy as np

from ._timing import patched, positive_int, thread_limit

__all__ = ["LANGUAGE_MODELS", "HEAVY_WORKLOADS", "PRECISIONS", "TARGETS", "ISSUE12_TARGETS", "BREAKDOWN_PARTS",
           "train_step_times", "summarize_train", "step_breakdown", "instrumented", "is_heavy"]

LANGUAGE_MODELS = ("char_lstm", "char_transformer")
#: GEMM-heavy workloads (see the module docstring)
HEAVY_WORKLOADS = ("mlp1024", "rescnn", "transformer256")
#: the precisions timed, in this order
PRECISIONS = ("fp32", "q4", "q4 simulated")
#: issue 4's targets: q4 / fp32 at most 1.5, simulated q4 / q4 at least 3
TARGETS = {"q4_over_fp32": 1.5, "simulated_over_q4": 3.0}
#: issue 12's targets for q4 / fp32: at most 1.0 on every built-in model, at most 0.6 on the GEMM-heavy workloads
ISSUE12_TARGETS = {"builtin": 1.0, "heavy": 0.6}
#: the display names of the GEMM-heavy workloads start with these (see :func:`_workloads`)
_HEAVY_PREFIXES = ("mlp 3x1024", "residual cnn", "transformer d256")


def is_heavy(model):
    """Whether a record's ``model`` name is one of the GEMM-heavy workloads."""
    return model.startswith(_HEAVY_PREFIXES)


def _policy(name, **kw):
    """The precision recipe of a timed run (:func:`q4core.recipe.get_recipe`)."""
    from ..recipe import get_recipe
    return get_recipe(name, **kw)


def _policies(threads, first_last):
    first_last = "same" if first_last == "q4" else first_last      # "q4": every layer 4-bit
    return {"fp32": _policy("fp32"),
            "q4": _policy("q4", threads=threads, first_last=first_last),
            "q4 simulated": _policy("q4", simulate=True, threads=threads, first_last=first_last)}


def residual_cnn(seed=0, channels=64, n_classes=10):
    """The ``rescnn`` workload: 3x32x32 images -> conv stem + pool -> 2 residual blocks -> pool -> Linear."""
    from ..nn import BatchNorm, Conv2d, GlobalAvgPool, Linear, MaxPool2d, ReLU, Sequential
    from ..nn.models import Residual
    seeds = iter(np.random.SeedSequence(seed).generate_state(8))
    c = channels

    def block():
        return Residual(Conv2d(c, c, 3, padding=1, rng=int(next(seeds))), BatchNorm(c), ReLU(),
                        Conv2d(c, c, 3, padding=1, rng=int(next(seeds))), BatchNorm(c))
    return Sequential(Conv2d(3, c, 3, padding=1, rng=int(next(seeds))), BatchNorm(c), ReLU(), MaxPool2d(2),
                      block(), ReLU(), block(), ReLU(), GlobalAvgPool(), Linear(c, n_classes, rng=int(next(seeds))))


def _workloads(batch, language_models, lm_batch, seq_len, seed, heavy=(), heavy_batch=256):
    """The benchmark's workloads, built from the public :mod:`q4core.nn` API: name -> (model builder, inputs,
    targets, optimizer name).  Synthetic inputs of the real shapes - the step time does not depend on the
    values."""
    from ..nn.models import build_model
    rng = np.random.default_rng(seed)
    loads = {f"vision cnn 28x28 (batch {batch})": (
        lambda: build_model("cnn", (1, 28, 28), 10, seed=seed),
        rng.random((batch, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, batch), "sgd")}
    ids = rng.integers(0, 64, (lm_batch, seq_len))
    targets = rng.integers(0, 64, (lm_batch, seq_len))
    for lm in language_models:
        loads[f"{lm} (batch {lm_batch} x {seq_len})"] = (
            lambda lm=lm: build_model(lm, (seq_len,), 64, seed=seed), ids, targets, "adam")
    if "mlp1024" in heavy:
        loads[f"mlp 3x1024 (batch {heavy_batch})"] = (
            lambda: build_model("mlp", (784,), 10, seed=seed, hidden=(1024, 1024, 1024)),
            rng.random((heavy_batch, 784)).astype(np.float32), rng.integers(0, 10, heavy_batch), "sgd")
    if "rescnn" in heavy:
        loads[f"residual cnn 32x32 (batch {batch})"] = (
            lambda: residual_cnn(seed), rng.random((batch, 3, 32, 32)).astype(np.float32),
            rng.integers(0, 10, batch), "sgd")
    if "transformer256" in heavy:
        loads[f"transformer d256 (batch {lm_batch} x {seq_len})"] = (
            lambda: build_model("char_transformer", (seq_len,), 64, seed=seed, dim=256, heads=4, layers=2),
            ids, targets, "adam")
    return loads


def _check_heavy(heavy):
    heavy = [heavy] if isinstance(heavy, str) else list(heavy)
    for h in heavy:
        if h not in HEAVY_WORKLOADS:
            raise ValueError(f"heavy must hold names from {HEAVY_WORKLOADS}, got {h!r}")
    return heavy


def _train_step(builder, x, y, optimizer, policy):
    """A fresh model under ``policy`` and a function running one training step of it (returns the loss)."""
    from ..nn import SGD, Adam, softmax_cross_entropy
    model = builder()
    model.set_policy(policy)
    model.input_grad = False        # as the trainer does: the input is data
    named = list(model.named_parameters())
    opt = SGD(named, lr=0.01) if optimizer == "sgd" else Adam(named, lr=1e-3)

    def step():
        model.zero_grad()
        loss, grad = softmax_cross_entropy(model.forward(x), y)
        model.backward(grad)
        model.add_regularisation()
        opt.step()
        return loss
    return step


def train_step_times(repeat=7, threads=1, batch=64, language_models=LANGUAGE_MODELS, lm_batch=32, seq_len=64,
                     first_last="fp16", seed=0, heavy=(), heavy_batch=256):
    """Median time of one training step under each of :data:`PRECISIONS`, per model.

    The vision CNN (``batch``) and the character language model(s) ``language_models`` (``char_lstm``,
    ``char_transformer``; ``lm_batch`` sequences of ``seq_len``); a step is forward + loss + backward +
    update (SGD for the CNN, Adam for the language models).  The three precisions are timed round-robin,
    one step each per round, after one warm-up step, so load from other processes hits them alike.  Before
    timing, one step of q4 and of simulated q4 from the same initial state is run and their losses compared
    (they must be identical).  ``first_last``: mode of the first and last layers under q4 (fp16 is the
    training default).  ``heavy``: names from :data:`HEAVY_WORKLOADS` to time as well (``heavy_batch``: rows
    of the ``mlp1024`` batch).

    Returns ``{"records": [{"model", "precision", "seconds", "samples"}], "identical_losses": {model: bool},
    "repeat", "threads", "first_last"}``.
    """
    repeat, threads, batch, lm_batch, seq_len, heavy_batch = _check_common(
        repeat, threads, batch, language_models, lm_batch, seq_len, first_last, heavy_batch)
    language_models = [language_models] if isinstance(language_models, str) else list(language_models)
    heavy = _check_heavy(heavy)
    policies = _policies(threads, first_last)
    records, identical = [], {}
    loads = _workloads(batch, language_models, lm_batch, seq_len, int(seed), heavy, heavy_batch)
    with thread_limit(threads):
        for model, (builder, x, y, opt) in loads.items():
            loss_q4 = _train_step(builder, x, y, opt, policies["q4"])()
            loss_sim = _train_step(builder, x, y, opt, policies["q4 simulated"])()
            identical[model] = bool(loss_q4 == loss_sim)
            steps = {name: _train_step(builder, x, y, opt, pol) for name, pol in policies.items()}
            for fn in steps.values():     # warm-up: scale initialisation, allocations
                fn()
            samples = {name: [] for name in steps}
            for _ in range(repeat):
                for name, fn in steps.items():
                    t0 = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - t0)
            for name, times in samples.items():
                records.append({"model": model, "precision": name, "seconds": float(np.median(times)),
                                "samples": [float(t) for t in times]})
    return {"records": records, "identical_losses": identical, "repeat": repeat, "threads": threads,
            "first_last": first_last}


def _check_common(repeat, threads, batch, language_models, lm_batch, seq_len, first_last, heavy_batch):
    values = tuple(positive_int(v, name) for v, name in (
        (repeat, "repeat"), (threads, "threads"), (batch, "batch"), (lm_batch, "lm_batch"), (seq_len, "seq_len"),
        (heavy_batch, "heavy_batch")))
    for lm in [language_models] if isinstance(language_models, str) else list(language_models):
        if lm not in LANGUAGE_MODELS:
            raise ValueError(f"language_models must hold {' or '.join(map(repr, LANGUAGE_MODELS))}, got {lm!r}")
    if first_last not in ("fp32", "fp16", "q4"):
        raise ValueError(f"first_last must be 'fp32', 'fp16' or 'q4', got {first_last!r}")
    return values


#: the parts of a q4 step :func:`step_breakdown` tells apart: part -> ((module, attribute), ...) wrapped by a
#: timer; the engine looks each of them up as a module attribute at every call, so wrapping the attribute
#: catches every call.  Attributes a module does not have (the engine changed) are left out.
BREAKDOWN_PARTS = {
    "integer GEMM": (("q4core.gemm", "int4_matmul_unchecked"), ("q4core.gemm", "fp4_int4_matmul_unchecked"),
                     ("q4core.gemm", "int4_fp4_matmul_unchecked"), ("q4core.gemm", "int4_matmul"),
                     ("q4core.gemm", "fp4_int4_matmul"), ("q4core.gemm", "int4_fp4_matmul")),
    "operand making": (("q4core.recipe.operands", "quantize"), ("q4core.recipe.operands", "scale_for"),
                       ("q4core.gemm", "pack_int4"), ("q4core.gemm", "pack_int4_unchecked"),
                       # the fused engine's operand kernels (qgemm calls them through q4core.quant)
                       ("q4core.quant", "encode_packed_weight_unchecked"), ("q4core.quant", "encode_unchecked"),
                       ("q4core.quant", "sawb_clip_unchecked"), ("q4core.quant", "minmax_unchecked"),
                       ("q4core.quant", "encode_gradient_unchecked")),
    # a pass of its own only where the kernel cannot rescale in its store (several K chunks, simulate)
    "int32 rescale": (("q4core.nn.qgemm", "_rescale"), ("q4core.quant", "rescale_unchecked")),
    # the layers' products of float operands: the fp16 first and last layers of the q4 recipe (float32 BLAS on
    # float16-rounded values) - work the fp32 step has too, which bounds how far below it a q4 step can go
    "float GEMM": (("q4core.nn.qgemm", "QuantGemm._product"),),
}
#: wrapped calls timed only when the predicate holds (the others pass through, their inner calls still timed)
_ONLY_WHEN = {"QuantGemm._product": lambda self, which, *args, **kwargs: self.strategy[which] == "float"}


class _Clock:
    """Seconds per part, counting only the outermost wrapped call (a wrapped function calling another is
    counted once, in the caller's part)."""

    def __init__(self):
        self.seconds = dict.fromkeys(BREAKDOWN_PARTS, 0.0)
        self.calls = dict.fromkeys(BREAKDOWN_PARTS, 0)
        self.depth = 0

    def wrap(self, part, fn, when=None):
        def timed(*args, **kwargs):
            if self.depth or (when is not None and not when(*args, **kwargs)):
                return fn(*args, **kwargs)
            self.depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - t0
                self.calls[part] += 1
                self.depth -= 1
        timed.__wrapped__ = fn
        return timed


@contextlib.contextmanager
def instrumented():
    """Within the block, the engine's calls listed in :data:`BREAKDOWN_PARTS` are timed; yields the
    :class:`_Clock` (``seconds`` and ``calls`` per part).  The originals are restored on exit."""
    clock = _Clock()

    def targets():
        for part, entries in BREAKDOWN_PARTS.items():
            for module_name, dotted in entries:
                owner = importlib.import_module(module_name)
                *path, attr = dotted.split(".")
                for name in path:          # a method: "Class.method"
                    owner = getattr(owner, name)
                if hasattr(owner, attr):
                    when = _ONLY_WHEN.get(dotted)
                    yield owner, attr, lambda fn, part=part, when=when: clock.wrap(part, fn, when)
    with patched(targets()):
        yield clock


def step_breakdown(repeat=5, threads=1, batch=64, language_models=LANGUAGE_MODELS, lm_batch=32, seq_len=64,
                   first_last="fp16", seed=0, heavy=(), heavy_batch=256):
    """Where the time of a q4 training step goes, per model (same workloads and arguments as
    :func:`train_step_times`): ``repeat`` instrumented steps after one warm-up step.

    Returns ``{"records": [{"model", "step_seconds" (median instrumented step), "fractions": {part: fraction
    of the summed step time}, "calls": {part: calls per step}}], "parts": [...], "repeat", "threads",
    "first_last", "note"}`` with the parts of :data:`BREAKDOWN_PARTS` and ``"rest"`` (everything else:
    im2col, activations, normalisation, attention's own products, loss, optimizer, Python).  The timers add a
    little to every wrapped call; these runs are not the timed ones.
    """
    repeat, threads, batch, lm_batch, seq_len, heavy_batch = _check_common(
        repeat, threads, batch, language_models, lm_batch, seq_len, first_last, heavy_batch)
    language_models = [language_models] if isinstance(language_models, str) else list(language_models)
    heavy = _check_heavy(heavy)
    policy = _policies(threads, first_last)["q4"]
    records = []
    loads = _workloads(batch, language_models, lm_batch, seq_len, int(seed), heavy, heavy_batch)
    with thread_limit(threads):
        for model, (builder, x, y, opt) in loads.items():
            step = _train_step(builder, x, y, opt, policy)
            step()      # warm-up: scale initialisation, allocations
            with instrumented() as clock:
                times = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    step()
                    times.append(time.perf_counter() - t0)
            total = sum(times)
            fractions = {part: s / total for part, s in clock.seconds.items()}
            fractions["rest"] = 1.0 - sum(fractions.values())
            records.append({"model": model, "step_seconds": float(np.median(times)), "fractions": fractions,
                            "calls": {part: n / repeat for part, n in clock.calls.items()}})
    return {"records": records, "parts": [*BREAKDOWN_PARTS, "rest"], "repeat": repeat, "threads": threads,
            "first_last": first_last,
            "note": "instrumented q4 steps (not the timed runs); fractions of the summed step time"}


def summarize_train(result):
    """Per model: ``{"fp32", "q4", "q4 simulated"}`` seconds and the ratios ``q4 / fp32`` and
    ``simulated / q4`` (how much the integer kernels save against simulating the same numbers)."""
    out = {}
    for r in result["records"]:
        out.setdefault(r["model"], {})[r["precision"]] = r["seconds"]
    for t in out.values():
        t["q4_over_fp32"] = t["q4"] / t["fp32"]
        t["simulated_over_q4"] = t["q4 simulated"] / t["q4"]
    return out


def main(argv=None):
    """``python -m q4core.bench train`` with the options ``argv`` (see :mod:`q4core.bench.cli`)."""
    import sys

    from .cli import main as cli_main
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])
