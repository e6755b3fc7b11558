"""GOP/s of every GEMM kernel path against numpy float32 matmul, measured in the same run.

``python -m q4core.bench gemm [--sizes 512 1024 2048 4096] [--threads 1 2] [--repeat 5]
[--kernels vnni avx2 ...] [--json out.json]``

For every square size M = N = K and thread count it times (median wall time of
``--repeat`` runs after one warm-up; the paths take turns, one run each per round, so that
load from other processes on a shared machine affects all of them alike):

* ``fp32``           numpy ``float32 @ float32`` with BLAS limited to the same thread count;
* ``int4xint4``      :func:`q4core.gemm.int4_matmul`, weights packed once (``pack_int4``);
* ``fp4xint4``       :func:`q4core.gemm.fp4_int4_matmul` (dL/dx = dL/dy @ W^T), weights packed once;
* ``int4xfp4``       :func:`q4core.gemm.int4_fp4_matmul` (dL/dW = X^T @ dL/dy), FP4 packed per call;
* ``fakequant_int4`` the simulation baseline: quantize both float32 operands to INT4 (to the
  grid, i.e. quantize + dequantize) with the numpy reference, then float32 matmul;
* ``fakequant_fp4``  the same with the left operand on the radix-4 FP4 grid.

Every time includes the wrapper's work (validation, operand mapping, packing of the
per-call operand).  One "op" is a multiply or an add: 2 * M * N * K ops per GEMM.
The machine may be shared: read medians as what they are, and compare ratios from one run.
"""
import argparse
import json
import platform
import sys
import time

import numpy as np

from ._timing import median_seconds, thread_limit

DEFAULT_SIZES = (512, 1024, 2048, 4096)


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m q4core.bench gemm", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                   help="square sizes M = N = K (default: %(default)s)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="thread counts (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per median (default: %(default)s)")
    p.add_argument("--kernels", nargs="+", default=None,
                   help="kernel paths to time (default: every available one except 'reference')")
    p.add_argument("--portable-max-size", type=int, default=1024,
                   help="skip the slow portable C kernel above this size (default: %(default)s)")
    p.add_argument("--no-fakequant", action="store_true", help="skip the fake-quantization baseline")
    p.add_argument("--seed", type=int, default=0, help="seed of the random operands (default: %(default)s)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the measurements as JSON")
    args = p.parse_args(argv)
    if any(s < 1 for s in args.sizes) or any(t < 1 for t in args.threads) or args.repeat < 1:
        p.error("sizes, threads and repeat must be positive")
    return args


def _operands(n, rng):
    from q4core.formats import INT4, RADIX4_FP4
    x = rng.standard_normal((n, n), dtype=np.float32)
    w = rng.standard_normal((n, n), dtype=np.float32)
    g = (rng.standard_normal((n, n)) * np.exp2(rng.uniform(-10, 0, (n, n)))).astype(np.float32)
    sx, sw = float(np.abs(x).max() / 7.0), float(np.abs(w).max() / 7.0)
    sg = float(np.abs(g).max())
    return {
        "x": x, "w": w, "g": g, "sx": sx, "sw": sw, "sg": sg,
        "a": INT4.encode(x, sx).astype(np.int8),
        "b": INT4.encode(w, sw).astype(np.int8),
        "gc": RADIX4_FP4.encode(g, sg),
    }


def run(args, out=print):
    from q4core import gemm
    from q4core.formats import INT4, RADIX4_FP4

    info = gemm.kernel_info()
    kernels = args.kernels or [k for k in gemm.available_kernels() if k != "reference"]
    for k in kernels:
        if k not in gemm.available_kernels():
            raise SystemExit(f"kernel {k!r} is not available here; available: {gemm.available_kernels()}")
    out(f"q4core GEMM benchmark - {platform.processor() or platform.machine()}, numpy {np.__version__}")
    out("CPU features: " + ", ".join(k for k, v in info["cpu"].items() if v is True))
    out(f"kernels timed: {', '.join(kernels)}; default choice: {info['chosen_kernel']}; "
        f"OpenMP: {info['openmp']}; repeat={args.repeat}; medians (on a shared machine they are noisy)")
    records = []
    rng = np.random.default_rng(args.seed)
    for n in args.sizes:
        ops = 2.0 * n * n * n
        d = _operands(n, rng)
        packed = gemm.pack_int4(d["b"])
        # the ground truth of this run's operands, once, to check every fast path's output
        check_ref = None
        for t in args.threads:
            # every path of this (size, threads) is timed round-robin - one run of each per
            # round - so a slow phase of a shared machine hits all of them, not just one
            x, w = d["x"], d["w"]
            paths = [("fp32", "numpy", lambda: x @ w)]
            if not args.no_fakequant:
                sx, sw, sg, g = d["sx"], d["sw"], d["sg"], d["g"]
                paths.append(("fakequant_int4", "numpy",
                              lambda: INT4.quantize(x, sx) @ INT4.quantize(w, sw)))
                paths.append(("fakequant_fp4", "numpy",
                              lambda: RADIX4_FP4.quantize(g, sg) @ INT4.quantize(w, sw)))
            for k in kernels:
                if k == "portable" and n > args.portable_max_size:
                    continue
                a, gc = d["a"], d["gc"]
                c = gemm.int4_matmul(a, packed, threads=t, kernel=k)
                if check_ref is None and n <= 1024:
                    check_ref = gemm.int4_matmul(a, packed, kernel="reference")
                if check_ref is not None and not np.array_equal(c, check_ref):
                    raise SystemExit(f"kernel {k} disagrees with the reference at n={n}")
                paths.append(("int4xint4", k, lambda k=k: gemm.int4_matmul(a, packed, threads=t, kernel=k)))
                paths.append(("fp4xint4", k, lambda k=k: gemm.fp4_int4_matmul(gc, packed, threads=t, kernel=k)))
                paths.append(("int4xfp4", k, lambda k=k: gemm.int4_fp4_matmul(a, gc, threads=t, kernel=k)))
            samples = [[] for _ in paths]
            with thread_limit(t):
                for _, _, fn in paths:          # warm-up
                    fn()
                for _ in range(args.repeat):
                    for i, (_, _, fn) in enumerate(paths):
                        samples[i].append(median_seconds(fn, repeat=1, warmup=0))
            rows = []
            for (op, kernel, _), times in zip(paths, samples):
                seconds = float(np.median(times))
                rows.append({"size": n, "threads": t, "op": op, "kernel": kernel,
                             "seconds": seconds, "gops": ops / seconds / 1e9})
            fp32 = rows[0]
            for rec in rows:
                rec["ratio_vs_fp32"] = fp32["seconds"] / rec["seconds"]
            records.extend(rows)
            out(f"\nM=N=K={n}, threads={t}  (numpy float32: {fp32['gops']:.1f} GFLOP/s)")
            out(f"  {'op':16s} {'kernel':9s} {'median ms':>10s} {'GOP/s':>9s} {'x fp32':>7s}")
            for rec in rows:
                out(f"  {rec['op']:16s} {rec['kernel']:9s} {rec['seconds'] * 1e3:10.2f} "
                    f"{rec['gops']:9.1f} {rec['ratio_vs_fp32']:7.2f}")
    _print_targets(records, out)
    return {"kernel_info": info, "numpy": np.__version__, "platform": platform.platform(),
            "unix_time": time.time(), "repeat": args.repeat, "seed": args.seed,
            "note": "median wall times; each ratio uses numpy float32 at the same size and "
                    "thread count measured in the same run", "records": records}


#: issue 3's targets at 2048^3, one thread: (op, kernel, minimum ratio to numpy float32)
TARGETS = (("int4xint4", "amx", 10.0), ("fp4xint4", "amx", 5.0), ("int4xfp4", "amx", 5.0),
           ("int4xint4", "vnni", 2.0), ("int4xint4", "avx2", 1.0))


def _print_targets(records, out):
    chosen = [r for r in records if r["size"] == 2048 and r["threads"] == 1]
    if not chosen:
        return
    out("\ntargets at 2048^3, one thread (ratio to numpy float32 in this run):")
    for op, kernel, goal in TARGETS:
        rec = next((r for r in chosen if r["op"] == op and r["kernel"] == kernel), None)
        if rec is None:
            out(f"  {op:10s} {kernel:9s} >= {goal:4.1f}x: not measured (kernel not available here)")
        else:
            verdict = "met" if rec["ratio_vs_fp32"] >= goal else "SHORT"
            out(f"  {op:10s} {kernel:9s} >= {goal:4.1f}x: {rec['ratio_vs_fp32']:.2f}x {verdict}")


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    result = run(args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
