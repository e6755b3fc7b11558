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

from ..speed import summarize_train, train_step_times


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
    print(f"one training step, median of {args.repeat}, {args.threads} thread(s); q4 first/last layers: "
          f"{args.first_last}")
    # the workloads and the timing loop are q4core.speed's (notebook 05 shows the same numbers)
    result, reason = train_step_times(repeat=args.repeat, threads=args.threads, batch=args.batch,
                                      language_models=args.lm, lm_batch=args.lm_batch, seq_len=args.seq_len,
                                      first_last=args.first_last)
    if result is None:
        print(reason)
        return 1
    status = 0
    for model, times in summarize_train(result).items():
        print(f"\n{model}")
        if not result["identical_losses"][model]:
            print("  q4 and simulated q4 losses differ: the integer path is wrong")
            status = 1
        for name in ("fp32", "q4", "q4 simulated"):
            print(f"  {name:14s} {times[name] * 1e3:9.2f} ms")
        r_fp32, r_sim = times["q4_over_fp32"], times["simulated_over_q4"]
        print(f"  q4 / fp32      {r_fp32:9.2f}x   target <= 1.5x : {'met' if r_fp32 <= 1.5 else 'short'}")
        print(f"  simulated / q4 {r_sim:9.2f}x   target >= 3x   : {'met' if r_sim >= 3 else 'short'}")
    return status


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
