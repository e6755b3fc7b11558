"""``python -m q4core.bench train``: time one training step under fp32, q4 and simulated q4.

Models: the vision CNN on a 28x28 batch (MNIST shape) and the character language models (LSTM and
2-layer Transformer, vocabulary 64), on
synthetic inputs of the real shapes (timing does not depend on the values; no data set is loaded).
A step is forward + loss + backward + SGD/Adam update.  The three precisions are timed round-robin
(median of ``--repeat`` samples each) so load from other processes hits them alike.  Before timing,
one step of q4 and simulated q4 from the same initial state is checked to give identical losses.

Targets (issue 4): the q4 integer step at most 1.5x the fp32 step, and at least 3x faster than the
simulated q4 step.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from ..nn import SGD, Adam, make_policy, softmax_cross_entropy
from ..nn.models import build_model
from ._timing import thread_limit


def _workloads(args):
    rng = np.random.default_rng(0)
    xv = rng.random((args.batch, 1, 28, 28)).astype(np.float32)
    yv = rng.integers(0, 10, args.batch)
    ids = rng.integers(0, 64, (args.lm_batch, args.seq_len))
    tgt = rng.integers(0, 64, (args.lm_batch, args.seq_len))
    loads = {"vision cnn 28x28 (batch %d)" % args.batch: (lambda: build_model("cnn", (1, 28, 28), 10, seed=0),
                                                          xv, yv, "sgd")}
    for lm in args.lm:
        loads["%s (batch %d x %d)" % (lm, args.lm_batch, args.seq_len)] = (
            lambda lm=lm: build_model(lm, (args.seq_len,), 64, seed=0), ids, tgt, "adam")
    return loads


def _stepper(builder, x, y, opt_name, config):
    model = builder()
    model.set_policy(config)
    named = list(model.named_parameters())
    opt = SGD(named, lr=0.01) if opt_name == "sgd" else Adam(named, lr=1e-3)

    def step():
        model.zero_grad()
        loss, g = softmax_cross_entropy(model.forward(x), y)
        model.backward(g)
        opt.step()
        return loss
    return step


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m q4core.bench train", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="BLAS and integer-kernel threads (default 1)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lm", nargs="+", default=["char_lstm", "char_transformer"],
                   choices=("char_lstm", "char_transformer"), help="language models to time")
    p.add_argument("--lm-batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--first-last", default="fp16", choices=("fp32", "fp16", "q4"),
                   help="mode of the first and last layers under q4 (default fp16, the training default)")
    args = p.parse_args(argv)
    configs = {
        "fp32": make_policy("fp32"),
        "q4": make_policy("q4", threads=args.threads, first_last=args.first_last),
        "q4 simulated": make_policy("q4", simulate=True, threads=args.threads, first_last=args.first_last),
    }
    print(f"one training step, median of {args.repeat}, {args.threads} thread(s); q4 first/last layers: "
          f"{args.first_last}")
    status = 0
    with thread_limit(args.threads):
        for wname, (builder, x, y, opt) in _workloads(args).items():
            a = _stepper(builder, x, y, opt, configs["q4"])()
            b = _stepper(builder, x, y, opt, configs["q4 simulated"])()
            if a != b:
                print(f"  {wname}: q4 and simulated q4 losses differ ({a!r} vs {b!r})")
                status = 1
            steps = {name: _stepper(builder, x, y, opt, cfg) for name, cfg in configs.items()}
            for fn in steps.values():       # warm-up (PACT init, GradScale init, allocations)
                fn()
            samples = {name: [] for name in steps}
            for _ in range(args.repeat):
                for name, fn in steps.items():
                    t0 = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - t0)
            med = {name: statistics.median(s) for name, s in samples.items()}
            print(f"\n{wname}")
            for name, t in med.items():
                print(f"  {name:14s} {t * 1e3:9.2f} ms")
            r_fp32 = med["q4"] / med["fp32"]
            r_sim = med["q4 simulated"] / med["q4"]
            print(f"  q4 / fp32      {r_fp32:9.2f}x   target <= 1.5x : {'met' if r_fp32 <= 1.5 else 'short'}")
            print(f"  simulated / q4 {r_sim:9.2f}x   target >= 3x   : {'met' if r_sim >= 3 else 'short'}")
    return status


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
