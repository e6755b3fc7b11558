"""GOP/s of every GEMM kernel path against numpy float32 matmul, measured in the same run.

* :func:`measure_gemm` - for every square size M = N = K and thread count, the median wall time of
  ``repeat`` runs (after one warm-up; the paths take turns, one run each per round, so that load from other
  processes on a shared machine affects all of them alike) of:

  - ``fp32``           numpy ``float32 @ float32`` with BLAS limited to the same thread count;
  - ``int4xint4``      :func:`q4core.gemm.int4_matmul`, weights packed once (``pack_int4``);
  - ``fp4xint4``       :func:`q4core.gemm.fp4_int4_matmul` (dL/dx = dL/dy @ W^T), weights packed once;
  - ``int4xfp4``       :func:`q4core.gemm.int4_fp4_matmul` (dL/dW = X^T @ dL/dy), FP4 packed per call;
  - ``mxfp4``, ``nvfp4`` :func:`q4core.bsgemm.blockscaled_matmul` of ``x`` (blocked along K) and ``w``
    (blocked along K) encoded once in MXFP4 / NVFP4 (issue 16; the per-call work packs both operands);
  - ``fakequant_int4`` the simulation baseline: quantize both float32 operands to INT4 (to the
    grid, i.e. quantize + dequantize) with the numpy reference, then float32 matmul;
  - ``fakequant_fp4``  the same with the left operand on the radix-4 FP4 grid;
  - with ``peers=True`` (the CLI's default): ``ort_matmulint`` (kernel ``mlas``), ONNX Runtime's u8 x s8
    ``MatMulInteger`` on the same INT4 codes, and ``ort_matmulnbits``, its 4-bit-weight ``MatMulNBits``
    (:mod:`q4core.bench.peers`), when onnxruntime is installed (else ``result["peer"]["message"]`` says it
    was skipped and how to install it).  Each peer record has ``exact``: whether its output equals our INT4
    product (MatMulInteger must).

  With ``ceilings=True`` (the CLI's default) each record also carries its ceiling (:mod:`q4core.bench.ceiling`:
  the rate of the kernel's inner instruction issued back to back, measured in the same run),
  ``ceiling_probe``, ``ceiling_gops`` and ``fraction_of_ceiling``.

  Every time includes the wrapper's work (validation, operand mapping, packing of the per-call operand).
  One "op" is a multiply or an add: 2 * M * N * K ops per GEMM.  The machine may be shared: read medians
  as what they are, and compare ratios from one run.
* :func:`check_kernels` - every kernel path against the numpy reference, bit for bit, on odd shapes.
* :func:`summarize_gemm` - speed-up over numpy float32 of the best kernel per GEMM of a training step.
* :func:`target_verdicts` - issue 3's speed targets at 2048^3, one thread, against a run's records.

Nothing here prints: ``python -m q4core.bench gemm`` (:mod:`q4core.bench.cli`) prints the table;
:func:`main` is that command, kept here for callers of ``q4core.bench.gemm.main(argv)``.
"""
from __future__ import annotations

import platform
import time

import numpy as np

from ._timing import median_seconds, positive_int, positive_ints, thread_limit

__all__ = ["GEMM_OPS", "BLOCKSCALED_OPS", "DEFAULT_SIZES", "TARGETS", "measure_gemm", "check_kernels", "summarize_gemm",
           "target_verdicts", "limit_verdicts", "issue12_verdicts", "records_of", "cpu_model", "CEILING_TARGET",
           "ORT_TARGET", "FP32_RATIO_TARGETS", "BACKWARD_TARGET", "SCALING_TARGET"]

#: the three GEMMs of a layer's training step: forward, grad-input, grad-weight
GEMM_OPS = ("int4xint4", "fp4xint4", "int4xfp4")
DEFAULT_SIZES = (512, 1024, 2048, 4096)
#: issue 3's targets at 2048^3, one thread: (op, kernel, minimum ratio to numpy float32)
TARGETS = (("int4xint4", "amx", 10.0), ("fp4xint4", "amx", 5.0), ("int4xfp4", "amx", 5.0),
           ("int4xint4", "vnni", 2.0), ("int4xint4", "avx2", 1.0))
#: issue 12's targets at 2048^3, one thread: INT4 x INT4 at this fraction of its ISA's ceiling, and this many
#: times ONNX Runtime's MatMulInteger speed
CEILING_TARGET, ORT_TARGET = 0.8, 1.5
#: issue 12's other GEMM targets at 2048^3: INT4 x INT4 this many times numpy float32 (one thread) per kernel;
#: each backward GEMM (FP4 x INT4, INT4 x FP4) at this fraction of the INT4 forward's speed on the same kernel
#: (one thread); two threads this many times one thread (INT4 x INT4).  ("VNNI" is AVX-512 VNNI, our ``vnni``; the
#: AMX goal of 10x is issue 3's too and is printed with :data:`TARGETS`.)
FP32_RATIO_TARGETS = {"vnni": 5.0}
BACKWARD_TARGET, SCALING_TARGET = 0.6, 1.7
#: outputs of kernels are checked against the reference during timing up to this size
_CHECK_MAX_SIZE = 1024
#: the block-scaled paths' numpy reference is an int64 product per K-block: checked up to this size only
_BS_CHECK_MAX_SIZE = 512
#: the block-scaled FP4 formats timed next to INT4 (op name -> format name in q4core.blockscaled)
BLOCKSCALED_OPS = {"mxfp4": "MXFP4", "nvfp4": "NVFP4"}


def _blockscaled_paths(x, w, n, t, kernels, portable_max_size):
    """``(op, kernel, fn)`` of the block-scaled FP4 GEMM (:data:`BLOCKSCALED_OPS`) of ``x @ w`` on each kernel,
    each checked against :func:`q4core.bsgemm.blockscaled_matmul_reference` up to :data:`_BS_CHECK_MAX_SIZE`."""
    from .. import blockscaled, bsgemm
    paths = []
    for op, name in BLOCKSCALED_OPS.items():
        fmt = getattr(blockscaled, name)
        a, b = fmt.encode(x, axis=1), fmt.encode(w, axis=0)
        ref = bsgemm.blockscaled_matmul_reference(a, b) if n <= _BS_CHECK_MAX_SIZE else None
        for k in kernels:
            if k == "portable" and n > portable_max_size:
                continue
            if ref is not None and not np.array_equal(bsgemm.blockscaled_matmul(a, b, threads=t, kernel=k), ref):
                raise RuntimeError(f"kernel {k} disagrees with the {name} reference at n={n}")
            paths.append((op, k, lambda a=a, b=b, k=k: bsgemm.blockscaled_matmul(a, b, threads=t, kernel=k)))
    return paths


def _operands(n, rng):
    from ..formats import INT4, RADIX4_FP4
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


def _fast_kernels(kernels):
    """``kernels`` checked against the available paths (default: every one but ``reference``)."""
    from .. import gemm
    available = gemm.available_kernels()
    if kernels is None:
        return [k for k in available if k != "reference"]
    kernels = [kernels] if isinstance(kernels, str) else list(kernels)
    bad = [k for k in kernels if k not in available or k == "reference"]
    if bad or not kernels:
        raise ValueError(f"kernels must be a non-empty list of {available[:-1]}, got {kernels!r}")
    return kernels


def _time_round_robin(paths, repeat, threads):
    """``(median, fastest, slowest)`` seconds of each ``(op, kernel, fn)`` path: one warm-up each, then
    ``repeat`` rounds of one run each, so a slow phase of a shared machine hits all of them, not just one."""
    samples = [[] for _ in paths]
    with thread_limit(threads):
        for _, _, fn in paths:
            fn()
        for _ in range(repeat):
            for i, (_, _, fn) in enumerate(paths):
                samples[i].append(median_seconds(fn, repeat=1, warmup=0))
    return [(float(np.median(times)), float(min(times)), float(max(times))) for times in samples]


def _peer_paths(d, n, t, ours, status):
    """The ONNX Runtime peers' timed paths at size ``n`` and ``t`` threads, and their exactness against ``ours``
    (our INT4 product of the same codes)."""
    from . import peers
    a, b = d["a"], d["b"]
    a_u8 = peers.int4_to_uint8(a)
    mmi = peers.matmul_integer(b, t)
    exact = {"ort_matmulint": bool(np.array_equal(mmi(a_u8), ours))}
    paths = [("ort_matmulint", "mlas", lambda: mmi(a_u8))]
    if "matmul_nbits" not in status:    # once per run: whether this onnxruntime has the contrib op
        status["matmul_nbits"] = peers.has_matmul_nbits()
    if status["matmul_nbits"] and n % 32 == 0:
        nbits = peers.matmul_nbits(b, t)
        a_f32 = a.astype(np.float32)
        exact["ort_matmulnbits"] = bool(np.array_equal(nbits(a_f32), ours.astype(np.float32)))
        paths.append(("ort_matmulnbits", "mlas", lambda: nbits(a_f32)))
    return paths, exact


def _add_ceilings(result, threads, kernels_info):
    """Measure the ceilings and put ``ceiling_probe``, ``ceiling_gops``, ``fraction_of_ceiling`` on every record
    that has one; ``result["ceilings"]`` the probe records or ``result["ceiling_note"]`` why there are none."""
    from . import ceiling
    try:
        measured = ceiling.measure_ceilings(threads=threads)
    except ceiling.CeilingUnavailable as exc:
        result["ceiling_note"] = str(exc)
        return
    result["ceilings"] = measured["records"]
    rate = {(c["probe"], c["threads"]): c["gops"] for c in measured["records"]}
    for r in result["records"]:
        probe = ceiling.probe_for(r["op"], r["kernel"], kernels_info["cpu"])
        if probe is not None and (probe, r["threads"]) in rate:
            r["ceiling_probe"], r["ceiling_gops"] = probe, rate[(probe, r["threads"])]
            r["fraction_of_ceiling"] = r["gops"] / r["ceiling_gops"]


def measure_gemm(sizes=DEFAULT_SIZES, threads=(1, 2), repeat=5, kernels=None, seed=0, portable_max_size=1024,
                 fakequant=True, peers=False, ceilings=False):
    """Time every kernel path and numpy float32 at each size and thread count; return the result dict.

    ``result["records"]``: one dict per (size, threads, op, kernel) with ``seconds`` (median wall time of
    ``repeat`` runs), ``gops`` (2 M N K / seconds / 1e9) and ``ratio_vs_fp32`` (numpy float32 time at the
    same size and threads, measured in the same run, over this time).  ``op`` is ``fp32``,
    ``fakequant_int4``, ``fakequant_fp4`` (kernel ``numpy``) or one of :data:`GEMM_OPS`.  ``kernels``:
    the paths to time (default: every available one but ``reference``); ``portable`` is skipped above
    ``portable_max_size``.  ``peers``: also time ONNX Runtime (skipped with ``result["peer"]["message"]``
    when it is not installed); ``ceilings``: measure the ISA ceilings and give each record its fraction.
    Up to size 1024 every kernel's INT4 x INT4 output is checked against the
    reference first (``RuntimeError`` if it differs).  Also in the result: ``kernel_info``, ``kernels``,
    ``sizes``, ``threads``, ``repeat``, ``seed``, ``numpy``, ``platform``, ``machine``, ``cpu_model``,
    ``unix_time``, ``note``; with ``peers``, ``peer`` (:func:`q4core.bench.peers.peer_status`); with
    ``ceilings``, ``ceilings`` (the probe records) or ``ceiling_note`` (why there are none).
    """
    from .. import gemm
    from ..formats import INT4, RADIX4_FP4
    sizes = positive_ints(sizes, "sizes")
    threads = positive_ints(threads, "threads")
    repeat = positive_int(repeat, "repeat")
    portable_max_size = positive_int(portable_max_size, "portable_max_size")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    kernels = _fast_kernels(kernels)
    info = gemm.kernel_info()
    peer = {"available": False}     # not requested: no "peer" entry in the result
    if peers:
        from .peers import peer_status
        peer = peer_status()
    records = []
    rng = np.random.default_rng(seed)
    for n in sizes:
        ops = 2.0 * n * n * n
        d = _operands(n, rng)
        packed = gemm.pack_int4(d["b"])
        x, w, a, gc = d["x"], d["w"], d["a"], d["gc"]
        check_ref = None    # the ground truth of this size's operands, once, to check every fast path's output
        ours = gemm.int4_matmul(a, packed) if peer["available"] else None   # what the peers must equal
        for t in threads:
            paths = [("fp32", "numpy", lambda: x @ w)]
            if fakequant:
                sx, sw, sg, g = d["sx"], d["sw"], d["sg"], d["g"]
                paths.append(("fakequant_int4", "numpy", lambda: INT4.quantize(x, sx) @ INT4.quantize(w, sw)))
                paths.append(("fakequant_fp4", "numpy", lambda: RADIX4_FP4.quantize(g, sg) @ INT4.quantize(w, sw)))
            for k in kernels:
                if k == "portable" and n > portable_max_size:
                    continue
                if n <= _CHECK_MAX_SIZE:
                    if check_ref is None:
                        check_ref = gemm.int4_matmul(a, packed, kernel="reference")
                    if not np.array_equal(gemm.int4_matmul(a, packed, threads=t, kernel=k), check_ref):
                        raise RuntimeError(f"kernel {k} disagrees with the reference at n={n}")
                paths.append(("int4xint4", k, lambda k=k: gemm.int4_matmul(a, packed, threads=t, kernel=k)))
                paths.append(("fp4xint4", k, lambda k=k: gemm.fp4_int4_matmul(gc, packed, threads=t, kernel=k)))
                paths.append(("int4xfp4", k, lambda k=k: gemm.int4_fp4_matmul(a, gc, threads=t, kernel=k)))
            paths.extend(_blockscaled_paths(x, w, n, t, kernels, portable_max_size))
            exact = {}
            if peer["available"]:
                peer_paths, exact = _peer_paths(d, n, t, ours, peer)
                paths.extend(peer_paths)
            timed = _time_round_robin(paths, repeat, t)
            fp32_s = timed[0][0]
            for (op, kernel, _), (s, fastest, slowest) in zip(paths, timed):
                # the spread of the repeats: a shared machine's load shows here, not in the median
                rec = {"size": n, "threads": t, "op": op, "kernel": kernel, "seconds": s,
                       "seconds_min": fastest, "seconds_max": slowest,
                       "gops": ops / s / 1e9, "ratio_vs_fp32": fp32_s / s}
                if op in exact:
                    rec["exact"] = exact[op]
                records.append(rec)
    result = {"kernel_info": info, "kernels": kernels, "sizes": sizes, "threads": threads, "numpy": np.__version__,
              "platform": platform.platform(), "machine": platform.processor() or platform.machine(),
              "cpu_model": cpu_model(), "unix_time": time.time(), "repeat": repeat, "seed": seed,
              "note": "median wall times; each ratio uses numpy float32 at the same size and "
                      "thread count measured in the same run", "records": records}
    if peers:
        result["peer"] = peer
    if ceilings:
        _add_ceilings(result, threads, info)
    return result


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (Linux), else :func:`platform.processor`."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def check_kernels(m=67, k=131, n=45, seed=0, kernels=None):
    """Every compiled kernel against the numpy reference on random ``m x k`` by ``k x n`` operands.

    Odd shapes exercise the padding; INT4 operands are signed, FP4 codes cover every code.  Returns a list
    of ``{"op", "kernel", "exact"}`` (``exact``: bit-for-bit equal to ``kernel="reference"``).
    """
    from .. import gemm
    m, k, n = (positive_int(v, name) for v, name in ((m, "m"), (k, "k"), (n, "n")))
    rng = np.random.default_rng(seed)
    a = rng.integers(-8, 8, (m, k)).astype(np.int8)
    b = rng.integers(-8, 8, (k, n)).astype(np.int8)
    g_left = rng.integers(0, 16, (m, k)).astype(np.uint8)
    g_right = rng.integers(0, 16, (k, n)).astype(np.uint8)
    packed = gemm.pack_int4(b)
    calls = {
        "int4xint4": lambda kern: gemm.int4_matmul(a, packed, kernel=kern),
        "fp4xint4": lambda kern: gemm.fp4_int4_matmul(g_left, packed, kernel=kern),
        "int4xfp4": lambda kern: gemm.int4_fp4_matmul(a, g_right, kernel=kern),
    }
    kernels = _fast_kernels(kernels)
    rows = []
    for op, call in calls.items():
        ref = call("reference")
        for kern in kernels:
            out = call(kern)
            rows.append({"op": op, "kernel": kern,
                         "exact": bool(out.dtype == ref.dtype and np.array_equal(out, ref))})
    return rows


def records_of(result_or_records):
    """The records of a :func:`measure_gemm` result (or the records themselves, as a list)."""
    if isinstance(result_or_records, dict):
        return result_or_records["records"]
    return list(result_or_records)


def summarize_gemm(result, size=None, threads=1):
    """Speed-ups over numpy float32 at one size (default: the largest measured) and thread count.

    ``result``: a :func:`measure_gemm` result or its records.  Returns ``{"size", "threads", "fp32_gops",
    "best": {op: {"kernel", "gops", "ratio"}}, "step_ratio", "fakequant_ratio"}``.  ``step_ratio`` is the
    speed-up of the three GEMMs of a training step taken together (forward + grad-input + grad-weight,
    equal work each): ``3 / sum(1 / ratio)``; ``fakequant_ratio`` the faster of the two simulation GEMMs.
    """
    recs = [r for r in records_of(result) if r["threads"] == threads]
    if not recs:
        raise ValueError(f"no records with threads={threads}")
    sizes = sorted({r["size"] for r in recs})
    size = sizes[-1] if size is None else size
    recs = [r for r in recs if r["size"] == size]
    if not recs:
        raise ValueError(f"no records with size={size}; measured sizes: {sizes}")
    fp32 = next(r for r in recs if r["op"] == "fp32")
    best = {}   # ours only: the peers have ops of their own
    for op in GEMM_OPS:
        cands = [r for r in recs if r["op"] == op]
        if cands:
            r = max(cands, key=lambda r: r["gops"])
            best[op] = {"kernel": r["kernel"], "gops": r["gops"], "ratio": r["ratio_vs_fp32"]}
    step = (len(best) / sum(1.0 / v["ratio"] for v in best.values())) if len(best) == len(GEMM_OPS) else None
    fq = [r["ratio_vs_fp32"] for r in recs if r["op"].startswith("fakequant")]
    return {"size": size, "threads": threads, "fp32_gops": fp32["gops"], "best": best, "step_ratio": step,
            "fakequant_ratio": max(fq) if fq else None}


def target_verdicts(result, size=2048, threads=1):
    """:data:`TARGETS` against a run: ``[{"op", "kernel", "goal", "ratio" (None: not measured), "met"}]``,
    or ``[]`` when the run has no records at ``size`` and ``threads``."""
    chosen = [r for r in records_of(result) if r["size"] == size and r["threads"] == threads]
    if not chosen:
        return []
    rows = []
    for op, kernel, goal in TARGETS:
        rec = next((r for r in chosen if r["op"] == op and r["kernel"] == kernel), None)
        ratio = None if rec is None else rec["ratio_vs_fp32"]
        rows.append({"op": op, "kernel": kernel, "goal": goal, "ratio": ratio,
                     "met": None if ratio is None else ratio >= goal})
    return rows


def limit_verdicts(result, size=2048, threads=1):
    """Issue 12's targets for each kernel's INT4 x INT4 at ``size`` and ``threads``: ``[{"kernel",
    "fraction_of_ceiling", "ceiling_met", "vs_ort", "ort_met", "ort_attainable"}]`` (``ort_attainable``: the
    kernel's instruction ceiling over ORT's GOP/s, the most any kernel of that instruction could reach;
    ``None`` where the run has no ceiling or no ORT peer); ``[]`` when the run has no such records."""
    recs = [r for r in records_of(result) if r["size"] == size and r["threads"] == threads]
    ort = next((r for r in recs if r["op"] == "ort_matmulint"), None)
    rows = []
    for r in recs:
        if r["op"] != "int4xint4":
            continue
        frac = r.get("fraction_of_ceiling")
        vs_ort = None if ort is None else ort["seconds"] / r["seconds"]
        # the most any kernel of this instruction could be over ORT: its ceiling over ORT's GOP/s
        ort_attainable = r["ceiling_gops"] / ort["gops"] if ort is not None and "ceiling_gops" in r else None
        rows.append({"kernel": r["kernel"], "fraction_of_ceiling": frac, "ort_attainable": ort_attainable,
                     "ceiling_met": None if frac is None else frac >= CEILING_TARGET,
                     "vs_ort": vs_ort, "ort_met": None if vs_ort is None else vs_ort >= ORT_TARGET})
    return rows


def issue12_verdicts(result, size=2048):
    """Issue 12's ratio targets against a run, per kernel of ours: ``[{"kernel", "target", "goal", "value",
    "met", "attainable"}]``.  ``target`` is ``"x fp32"`` (INT4 x INT4 over numpy float32, one thread; kernels
    of :data:`FP32_RATIO_TARGETS` only), ``"fp4xint4 / int4"`` and ``"int4xfp4 / int4"`` (a backward GEMM's
    speed over the forward's, one thread) or ``"2 / 1 threads"`` (INT4 x INT4; only when both were run).
    ``attainable`` (``"x fp32"`` only, else None) is the kernel's instruction ceiling over numpy float32 in the
    same run: a goal above it cannot be met on this CPU by any kernel of that instruction.  Rows whose
    records are missing are left out."""
    recs = [r for r in records_of(result) if r["size"] == size]

    def find(op, kernel, threads):
        return next((r for r in recs if r["op"] == op and r["kernel"] == kernel and r["threads"] == threads), None)
    rows = []
    for kernel in dict.fromkeys(r["kernel"] for r in recs if r["op"] == "int4xint4"):
        one = find("int4xint4", kernel, 1)
        if one is not None and kernel in FP32_RATIO_TARGETS:
            fp32 = find("fp32", "numpy", 1)
            attainable = (one["ceiling_gops"] / fp32["gops"]) if "ceiling_gops" in one and fp32 else None
            goal = FP32_RATIO_TARGETS[kernel]
            rows.append({"kernel": kernel, "target": "x fp32", "goal": goal, "value": one["ratio_vs_fp32"],
                         "met": one["ratio_vs_fp32"] >= goal, "attainable": attainable})
        for op in ("fp4xint4", "int4xfp4"):
            back = find(op, kernel, 1)
            if one is not None and back is not None:
                value = one["seconds"] / back["seconds"]
                rows.append({"kernel": kernel, "target": f"{op} / int4", "goal": BACKWARD_TARGET, "value": value,
                             "met": value >= BACKWARD_TARGET, "attainable": None})
        two = find("int4xint4", kernel, 2)
        if one is not None and two is not None:
            value = one["seconds"] / two["seconds"]
            rows.append({"kernel": kernel, "target": "2 / 1 threads", "goal": SCALING_TARGET, "value": value,
                         "met": value >= SCALING_TARGET, "attainable": None})
    return rows


def main(argv=None):
    """``python -m q4core.bench gemm`` with the options ``argv`` (see :mod:`q4core.bench.cli`)."""
    import sys

    from .cli import main as cli_main
    return cli_main(["gemm", *(sys.argv[1:] if argv is None else argv)])
