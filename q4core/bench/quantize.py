"""``python -m q4core.bench quantize``: compiled INT4 / radix-4 FP4 encode+pack throughput.

For ``2**24`` float32 values (64 MiB) it times, in one run and as medians:

* the compiled encode+pack (``q4core.quant.encode_packed``) of INT4 and radix-4 FP4, on
  1 thread and on 2 threads;
* the equivalent numpy chain (the reference ``fmt.encode(..., backend="numpy")`` followed
  by ``pack_nibbles``) - the ratio compiled / numpy is the speed-up;
* a plain memory copy of the same float32 array (``np.copyto``) - the ratio copy time /
  compiled time says how close the kernel gets to memory speed.

With ``--quantize`` it also times float -> float quantize (the fake-quantization path)
against the reference ``fmt.quantize(..., backend="numpy")``.

Throughput is GB/s of float32 input and Melem/s.  Targets (issue 2): >= 5x the numpy chain
on one thread, and within 3x of the memory copy (ratio >= 0.33).  Nothing is asserted:
timings on a shared machine are noisy, so they are printed, never tested.
"""
import argparse
import json
import sys

import numpy as np

from ._timing import median_seconds


def _parse(argv):
    ap = argparse.ArgumentParser(prog="python -m q4core.bench quantize", description=__doc__.split("\n")[0])
    ap.add_argument("--log2n", type=int, default=24, help="number of values is 2**LOG2N (default 24)")
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per measurement (median)")
    ap.add_argument("--numpy-repeat", type=int, default=3, help="timed runs of the slow numpy chain")
    ap.add_argument("--scale", type=float, default=0.37, help="quantization scale (any positive)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random input")
    ap.add_argument("--quantize", action="store_true",
                    help="also time float -> float quantize (fake quantization) against the reference")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return ap.parse_args(argv)


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    from .. import quant
    from ..formats import INT4, RADIX4_FP4, pack_nibbles

    if not quant.AVAILABLE:
        print("q4core._quant is not built: run `python setup.py build_ext --inplace`", file=sys.stderr)
        return 1
    n = 1 << args.log2n
    rng = np.random.default_rng(args.seed)
    # values spread over the whole INT4 range and over many binades (radix-4 FP4's range)
    x = (rng.standard_normal(n) * np.exp2(rng.integers(-10, 3, n))).astype(np.float32)
    gbytes = x.nbytes / 1e9
    copy_dst = np.empty_like(x)
    info = quant.openmp_info()
    results = {"n": n, "scale": args.scale, "openmp": info,
               "copy_s": median_seconds(lambda: np.copyto(copy_dst, x), repeat=args.repeat)}
    max_threads = 2 if info["openmp"] else 1
    paths = []   # (label, numpy chain, compiled function of threads)
    for name, fmt in (("int4", INT4), ("radix4_fp4", RADIX4_FP4)):
        paths.append((f"{name} encode+pack",
                      lambda fmt=fmt: pack_nibbles(fmt.encode(x, args.scale, backend="numpy")),
                      lambda t, fmt=fmt: quant.encode_packed(fmt, x, args.scale, threads=t)))
    if args.quantize:
        for name, fmt in (("int4", INT4), ("radix4_fp4", RADIX4_FP4)):
            paths.append((f"{name} quantize (f32 -> f32)",
                          lambda fmt=fmt: fmt.quantize(x, args.scale, backend="numpy"),
                          lambda t, fmt=fmt: quant.quantize(fmt, x, args.scale, threads=t)))
    for label, numpy_fn, compiled_fn in paths:
        ref = numpy_fn()
        res = {"numpy_s": median_seconds(numpy_fn, repeat=args.numpy_repeat, warmup=0)}
        for threads in range(1, max_threads + 1):
            out = compiled_fn(threads)
            if out.dtype != ref.dtype or not np.array_equal(out.view(np.uint8), ref.view(np.uint8)):
                # a benchmark of a wrong answer is worthless
                print(f"{label}: compiled result differs from the numpy reference", file=sys.stderr)
                return 1
            res[f"compiled_{threads}t_s"] = median_seconds(lambda: compiled_fn(threads), repeat=args.repeat)
        results[label] = res

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    copy_s = results["copy_s"]
    print(f"2^{args.log2n} float32 values ({x.nbytes / 2**20:.0f} MiB), scale "
          f"{args.scale}; OpenMP {info['openmp']} (max {info['max_threads']} threads), "
          f"SIMD clones: {info['simd_clones']}")
    print(f"{'path':50s} {'median ms':>10s} {'GB/s in':>8s} {'Melem/s':>8s} {'x numpy':>8s} {'copy/this':>9s}")

    def row(label, seconds, numpy_s=None):
        speedup = f"{numpy_s / seconds:8.1f}" if numpy_s else f"{'':8s}"
        print(f"{label:50s} {seconds * 1e3:10.2f} {gbytes / seconds:8.2f} {n / seconds / 1e6:8.0f} "
              f"{speedup} {copy_s / seconds:9.2f}")

    row("memory copy (np.copyto)", copy_s)
    for label, _, _ in paths:
        res = results[label]
        row(f"{label}: numpy", res["numpy_s"])
        for threads in range(1, max_threads + 1):
            row(f"{label}: compiled, {threads} thread{'s' if threads > 1 else ''}",
                res[f"compiled_{threads}t_s"], res["numpy_s"])
    print("targets (encode+pack): 'x numpy' >= 5 on 1 thread; 'copy/this' >= 0.33 "
          "(within 3x of a memory copy)")
    return 0
