"""Time of one training step under fp32, q4 (integer GEMM kernels) and simulated q4 (float GEMMs).

Models: the vision CNN on a 28x28 batch (MNIST shape) and the character language models (LSTM and 2-layer
Transformer, vocabulary 64), on synthetic inputs of the real shapes (timing does not depend on the values; no
data set is loaded).  A step is forward + loss + backward + SGD/Adam update.

* :func:`train_step_times` - median step time per model and precision, and whether q4 and simulated q4 give
  identical losses.
* :func:`summarize_train` - per model the three times and the ratios the targets speak of.

Targets (issue 4, :data:`TARGETS`): the q4 integer step at most 1.5x the fp32 step, and at least 3x faster
than the simulated q4 step.  Nothing here prints: ``python -m q4core.bench train`` (:mod:`q4core.bench.cli`;
:func:`main` here is that command) prints them.
"""
from __future__ import annotations

import time

import numpy as np

from ._timing import positive_int, thread_limit

__all__ = ["LANGUAGE_MODELS", "PRECISIONS", "TARGETS", "train_step_times", "summarize_train"]

LANGUAGE_MODELS = ("char_lstm", "char_transformer")
#: the precisions timed, in this order
PRECISIONS = ("fp32", "q4", "q4 simulated")
#: issue 4's targets: q4 / fp32 at most 1.5, simulated q4 / q4 at least 3
TARGETS = {"q4_over_fp32": 1.5, "simulated_over_q4": 3.0}


def _policy(name, **kw):
    """The precision recipe of a timed run (:func:`q4core.recipe.get_recipe`)."""
    from ..recipe import get_recipe
    return get_recipe(name, **kw)


def _policies(threads, first_last):
    first_last = "same" if first_last == "q4" else first_last      # "q4": every layer 4-bit
    return {"fp32": _policy("fp32"),
            "q4": _policy("q4", threads=threads, first_last=first_last),
            "q4 simulated": _policy("q4", simulate=True, threads=threads, first_last=first_last)}


def _workloads(batch, language_models, lm_batch, seq_len, seed):
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
    return loads


def _train_step(builder, x, y, optimizer, policy):
    """A fresh model under ``policy`` and a function running one training step of it (returns the loss)."""
    from ..nn import SGD, Adam, softmax_cross_entropy
    model = builder()
    model.set_policy(policy)
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
                     first_last="fp16", seed=0):
    """Median time of one training step under each of :data:`PRECISIONS`, per model.

    The vision CNN (``batch``) and the character language model(s) ``language_models`` (``char_lstm``,
    ``char_transformer``; ``lm_batch`` sequences of ``seq_len``); a step is forward + loss + backward +
    update (SGD for the CNN, Adam for the language models).  The three precisions are timed round-robin,
    one step each per round, after one warm-up step, so load from other processes hits them alike.  Before
    timing, one step of q4 and of simulated q4 from the same initial state is run and their losses compared
    (they must be identical).  ``first_last``: mode of the first and last layers under q4 (fp16 is the
    training default).

    Returns ``{"records": [{"model", "precision", "seconds", "samples"}], "identical_losses": {model: bool},
    "repeat", "threads", "first_last"}``.
    """
    repeat, threads, batch, lm_batch, seq_len = (
        positive_int(v, name) for v, name in ((repeat, "repeat"), (threads, "threads"), (batch, "batch"),
                                              (lm_batch, "lm_batch"), (seq_len, "seq_len")))
    language_models = [language_models] if isinstance(language_models, str) else list(language_models)
    for lm in language_models:
        if lm not in LANGUAGE_MODELS:
            raise ValueError(f"language_models must hold {' or '.join(map(repr, LANGUAGE_MODELS))}, got {lm!r}")
    if first_last not in ("fp32", "fp16", "q4"):
        raise ValueError(f"first_last must be 'fp32', 'fp16' or 'q4', got {first_last!r}")
    policies = _policies(threads, first_last)
    records, identical = [], {}
    with thread_limit(threads):
        for model, (builder, x, y, opt) in _workloads(batch, language_models, lm_batch, seq_len, int(seed)).items():
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
