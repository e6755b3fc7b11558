"""``python -m q4core.bench {quantize,gemm,train,layer} [options]``: parse the arguments, measure, print.

The measurements are the plain functions of :mod:`q4core.bench.quantize`, :mod:`.gemm`, :mod:`.train` and
:mod:`.layer`;
the tables are :mod:`q4core.bench.report`'s.  Nothing is measured or formatted here.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from .._io import check_replaceable, write_atomic
from . import gemm, layer, quantize, report, train

COMMANDS = {
    "quantize": "INT4 / radix-4 FP4 quantize+pack throughput against the numpy chain",
    "gemm": "INT4 and FP4 x INT4 GEMM GOP/s of every kernel path against numpy float32, ONNX Runtime and the "
            "ISA ceilings",
    "train": "time of one training step under fp32, q4 and simulated q4",
    "layer": "per-call cost of a quantized Linear layer's forward and backward beyond its integer GEMMs, "
             "against fp32",
}


def _parser(name):
    return argparse.ArgumentParser(prog=f"python -m q4core.bench {name}", description=COMMANDS[name])


def _int_in(lo, hi):
    """argparse type: an int in ``[lo, hi]`` (argparse names the option in its error)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {value}")
        return value
    return parse


def _positive_float(text):
    """argparse type: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _print_and_save(lines, result, json_path):
    """Print a command's table; with ``--json``, write ``result`` there atomically and say so.  Returns 0."""
    print("\n".join(lines))
    if json_path:
        write_atomic(json_path, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)), "argument --json:")
        print(f"\nwrote {json_path}")
    return 0


def _check_output(parser, path, option):
    """Refuse an output path that cannot be written, before anything is measured (argparse error naming
    ``option``): its folder must exist and the path must be absent or a regular file."""
    if path is None:
        return
    folder = Path(path).parent
    if not folder.is_dir():
        parser.error(f"argument {option}: folder {os.fspath(folder)} does not exist")
    try:
        check_replaceable(path, f"argument {option}:")
    except ValueError as exc:
        parser.error(str(exc))


def _quantize(argv):
    ap = _parser("quantize")
    ap.add_argument("--log2n", type=_int_in(*quantize.LOG2N_RANGE), default=24,
                    help="number of values is 2**LOG2N, %d..%d (default 24)" % quantize.LOG2N_RANGE)
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per measurement (median)")
    ap.add_argument("--numpy-repeat", type=int, default=3, help="timed runs of the slow numpy chain")
    ap.add_argument("--scale", type=_positive_float, default=0.37, help="quantization scale (any finite > 0)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random input")
    ap.add_argument("--quantize", action="store_true",
                    help="also time float -> float quantize (fake quantization) against the reference")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)
    try:
        result = quantize.measure_quantize(log2n=args.log2n, repeat=args.repeat, numpy_repeat=args.numpy_repeat,
                                           scale=args.scale, seed=args.seed, quantize=args.quantize)
    except RuntimeError as exc:     # compiled core missing, or a compiled result that differs
        print(exc, file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else "\n".join(report.quantize_lines(result)))
    return 0


def _gemm(argv):
    p = _parser("gemm")
    p.add_argument("--sizes", type=int, nargs="+", default=list(gemm.DEFAULT_SIZES),
                   help="square sizes M = N = K (default: %(default)s)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per median (default: %(default)s)")
    p.add_argument("--kernels", nargs="+", default=None,
                   help="kernel paths to time (default: every available one except 'reference')")
    p.add_argument("--portable-max-size", type=int, default=1024,
                   help="skip the slow portable C kernel above this size (default: %(default)s)")
    p.add_argument("--no-fakequant", action="store_true", help="skip the fake-quantization baseline")
    p.add_argument("--no-peers", action="store_true", help="skip the ONNX Runtime peers (MatMulInteger, MatMulNBits)")
    p.add_argument("--no-ceilings", action="store_true", help="skip measuring the per-ISA ceilings")
    p.add_argument("--seed", type=int, default=0, help="seed of the random operands (default: %(default)s)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the measurements as JSON")
    args = p.parse_args(argv)
    _check_output(p, args.json, "--json")
    try:
        result = gemm.measure_gemm(args.sizes, threads=args.threads, repeat=args.repeat, kernels=args.kernels,
                                   seed=args.seed, portable_max_size=args.portable_max_size,
                                   fakequant=not args.no_fakequant, peers=not args.no_peers,
                                   ceilings=not args.no_ceilings)
    except ValueError as exc:       # bad sizes, threads, repeat or kernel names
        p.error(str(exc))
    except RuntimeError as exc:     # a kernel that disagrees with the reference
        print(exc, file=sys.stderr)
        return 1
    return _print_and_save(report.gemm_lines(result), result, args.json)


def _train(argv):
    p = _parser("train")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="BLAS and integer-kernel threads (default 1)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lm", nargs="+", default=list(train.LANGUAGE_MODELS), choices=train.LANGUAGE_MODELS,
                   help="language models to time")
    p.add_argument("--lm-batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--first-last", default="fp16", choices=("fp32", "fp16", "q4"),
                   help="mode of the first and last layers under q4 (default fp16, the training default)")
    p.add_argument("--heavy", nargs="*", default=list(train.HEAVY_WORKLOADS), choices=train.HEAVY_WORKLOADS,
                   help="GEMM-heavy workloads to time as well (default: all; none with a bare --heavy)")
    p.add_argument("--heavy-batch", type=int, default=256, help="rows of the mlp1024 batch (default 256)")
    p.add_argument("--breakdown", action="store_true",
                   help="after the timed runs, instrumented q4 steps: fraction of the step in the integer GEMMs, "
                        "operand making, the int32 rescale, the float GEMMs (fp16 layers) and the rest")
    args = p.parse_args(argv)
    common = {"threads": args.threads, "batch": args.batch, "language_models": args.lm, "lm_batch": args.lm_batch,
              "seq_len": args.seq_len, "first_last": args.first_last, "heavy": args.heavy,
              "heavy_batch": args.heavy_batch}
    print(f"one training step, median of {args.repeat}, {args.threads} thread(s); q4 first/last layers: "
          f"{args.first_last}")
    try:    # checks every argument before it runs anything; the breakdown below takes the same ones
        result = train.train_step_times(repeat=args.repeat, **common)
    except ValueError as exc:
        p.error(str(exc))
    print("\n".join(report.train_lines(result)))
    if args.breakdown:
        print("\n".join(report.breakdown_lines(train.step_breakdown(repeat=args.repeat, **common))))
    return 0 if all(result["identical_losses"].values()) else 1


def _layer(argv):
    p = _parser("layer")
    p.add_argument("--sizes", type=_int_in(1, 4096), nargs="+", default=list(layer.DEFAULT_SIZES),
                   help="layer sizes n: Linear(n, n) on n rows, 1..4096 (default: %(default)s)")
    p.add_argument("--repeat", type=_int_in(1, 1000), default=15,
                   help="samples per median, 1..1000 (default: %(default)s)")
    p.add_argument("--threads", type=_int_in(1, 1024), default=1,
                   help="BLAS and integer-kernel threads (default: %(default)s)")
    p.add_argument("--seed", type=_int_in(0, 2**32 - 1), default=0,
                   help="seed of the weights, input and gradient (default: %(default)s)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the measurements as JSON")
    args = p.parse_args(argv)
    _check_output(p, args.json, "--json")
    try:
        result = layer.measure_layer(args.sizes, repeat=args.repeat, threads=args.threads, seed=args.seed)
    except ValueError as exc:
        p.error(str(exc))
    except RuntimeError as exc:     # the q4 layer does not run the integer kernels
        print(exc, file=sys.stderr)
        return 1
    return _print_and_save(report.layer_lines(result), result, args.json)


_RUN = {"quantize": _quantize, "gemm": _gemm, "train": _train, "layer": _layer}


def main(argv=None):
    """Run ``argv`` (default ``sys.argv[1:]``): a benchmark name and its options; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m q4core.bench {%s} [options]\n" % ",".join(COMMANDS))
        for name, text in COMMANDS.items():
            print(f"  {name:9s} {text}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown benchmark {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    return _RUN[argv[0]](argv[1:])
