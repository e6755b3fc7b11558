"""The benchmarks' results as text: lists of lines, printed by the CLI (:mod:`q4core.bench.cli`) and notebook 05.

Each function takes the dict a measurement function returned and formats it; nothing is measured here.
"""
from __future__ import annotations

from .gemm import CEILING_TARGET, ORT_TARGET, issue12_verdicts, limit_verdicts, target_verdicts
from .layer import ENGINE_GEMMS, OVERHEAD_TARGET_US, TARGET_SIZE, overhead_verdict
from .quantize import TARGETS as QUANTIZE_TARGETS
from .quantize import paths_of, threads_of
from .train import ISSUE12_TARGETS, PRECISIONS, is_heavy, summarize_train
from .train import TARGETS as TRAIN_TARGETS

__all__ = ["gemm_lines", "ceiling_lines", "quantize_lines", "train_lines", "breakdown_lines", "layer_lines"]


def _threads(t):
    return f"{t} thread{'s' if t > 1 else ''}"


def gemm_lines(result):
    """A :func:`q4core.bench.gemm.measure_gemm` result as a table: per size and thread count the median
    time, GOP/s and ratio to numpy float32 of every path, then issue 3's targets (when 2048 was measured)."""
    info = result["kernel_info"]
    lines = [f"q4core GEMM benchmark - {result.get('cpu_model', result['machine'])}, numpy {result['numpy']}",
             "CPU features: " + ", ".join(k for k, v in info["cpu"].items() if v is True),
             f"kernels timed: {', '.join(result['kernels'])}; default choice: {info['chosen_kernel']}; "
             f"OpenMP: {info['openmp']}; repeat={result['repeat']}; medians (on a shared machine they are noisy)"]
    blocks = {}
    for r in result["records"]:
        blocks.setdefault((r["size"], r["threads"]), []).append(r)
    for (n, t), rows in blocks.items():
        fp32 = next(r for r in rows if r["op"] == "fp32")
        mmi = next((r for r in rows if r["op"] == "ort_matmulint"), None)
        lines.append(f"\nM=N=K={n}, threads={t}  (numpy float32: {fp32['gops']:.1f} GFLOP/s)")
        lines.append(f"  {'op':16s} {'kernel':9s} {'median ms':>10s} {'GOP/s':>9s} {'x fp32':>7s} {'x ORT':>6s} "
                     f"{'of ceiling':>10s}")
        for r in rows:
            vs_ort = f"{mmi['seconds'] / r['seconds']:6.2f}" if mmi and r["op"] == "int4xint4" else f"{'':6s}"
            frac = (f"{r['fraction_of_ceiling']:10.2f}" if "fraction_of_ceiling" in r else f"{'':10s}")
            exact = {True: "  exact", False: "  NOT EXACT vs ours"}.get(r.get("exact"), "")
            lines.append(f"  {r['op']:16s} {r['kernel']:9s} {r['seconds'] * 1e3:10.2f} "
                         f"{r['gops']:9.1f} {r['ratio_vs_fp32']:7.2f} {vs_ort} {frac}{exact}")
    if "peer" in result:
        lines.append("\npeer: " + result["peer"]["message"] + "; 'x ORT': ORT MatMulInteger time / this time")
    lines.extend(ceiling_lines(result))
    verdicts = target_verdicts(result)
    if verdicts:
        lines.append("\ntargets at 2048^3, one thread (ratio to numpy float32 in this run):")
        for v in verdicts:
            head = f"  {v['op']:10s} {v['kernel']:9s} >= {v['goal']:4.1f}x:"
            if v["ratio"] is None:
                lines.append(f"{head} not measured (kernel not available here)")
            else:
                lines.append(f"{head} {v['ratio']:.2f}x {'met' if v['met'] else 'SHORT'}")
    limits = [v for v in limit_verdicts(result) if v["ceiling_met"] is not None or v["ort_met"] is not None]
    if limits:
        lines.append(f"\nissue 12 at 2048^3, one thread: INT4 x INT4 >= {CEILING_TARGET:g} of its ceiling and "
                     f">= {ORT_TARGET:g}x ORT MatMulInteger:")

        def verdict(value, met, unit):
            return "not measured" if value is None else f"{value:.2f}{unit} {'met' if met else 'SHORT'}"
        for v in limits:
            lines.append(f"  {v['kernel']:9s} of ceiling {verdict(v['fraction_of_ceiling'], v['ceiling_met'], ''):12s}"
                         f"  x ORT {verdict(v['vs_ort'], v['ort_met'], 'x')}"
                         + ("" if v["ort_attainable"] is None else
                            f"   (ceiling / ORT {v['ort_attainable']:.2f}x"
                            + (": beyond reach here)" if v["ort_attainable"] < ORT_TARGET else ")")))
    others = issue12_verdicts(result)
    if others:
        lines.append("\nissue 12 at 2048^3: INT4 x INT4 over numpy float32 (one thread), each backward GEMM over the "
                     "INT4 forward (one thread), two threads over one (INT4 x INT4):")
        for v in others:
            line = f"  {v['kernel']:9s} {v['target']:16s} >= {v['goal']:4.1f}: {v['value']:5.2f} " \
                   f"{'met' if v['met'] else 'SHORT'}"
            if v["attainable"] is not None:
                line += f"   (this CPU's {v['kernel']} ceiling allows at most {v['attainable']:.2f}x" + \
                        (": beyond reach here)" if v["attainable"] < v["goal"] else ")")
            lines.append(line)
    return lines


def ceiling_lines(result):
    """The ISA ceilings of a GEMM result (:mod:`q4core.bench.ceiling`), or why there are none."""
    if "ceilings" not in result:
        return [f"\nceilings: {result['ceiling_note']}"] if "ceiling_note" in result else []
    lines = ["\nceilings (fastest run of independent instruction chains, GOP/s = 2 ops per MAC; 'of ceiling' below "
             "is a path's GOP/s over its instruction's):"]
    for c in result["ceilings"]:
        lines.append(f"  {c['probe']:24s} {_threads(c['threads']):10s} {c['gops']:9.1f}")
    return lines


def quantize_lines(result):
    """A :func:`q4core.bench.quantize.measure_quantize` result as a table: median ms, GB/s of float32 input,
    Melem/s, speed-up over the numpy chain and copy time / this time, then issue 2's targets."""
    n, copy_s, info = result["n"], result["copy_s"], result["openmp"]
    gbytes = n * 4 / 1e9
    lines = [f"2^{n.bit_length() - 1} float32 values ({n * 4 / 2**20:.0f} MiB), scale {result['scale']}; "
             f"OpenMP {info['openmp']} (max {info['max_threads']} threads), SIMD clones: {info['simd_clones']}",
             f"{'path':50s} {'median ms':>10s} {'GB/s in':>8s} {'Melem/s':>8s} {'x numpy':>8s} {'copy/this':>9s}"]

    def row(label, seconds, numpy_s=None):
        speedup = f"{numpy_s / seconds:8.1f}" if numpy_s else f"{'':8s}"
        lines.append(f"{label:50s} {seconds * 1e3:10.2f} {gbytes / seconds:8.2f} {n / seconds / 1e6:8.0f} "
                     f"{speedup} {copy_s / seconds:9.2f}")

    row("memory copy (np.copyto)", copy_s)
    for label in paths_of(result):
        res = result[label]
        row(f"{label}: numpy", res["numpy_s"])
        for t in threads_of(res):
            row(f"{label}: compiled, {_threads(t)}", res[f"compiled_{t}t_s"], res["numpy_s"])
    lines.append(f"targets (encode+pack): 'x numpy' >= {QUANTIZE_TARGETS['x_numpy_1thread']:g} on 1 thread; "
                 f"'copy/this' >= {QUANTIZE_TARGETS['copy_over_compiled']:g} (within 3x of a memory copy)")
    return lines


def train_lines(result):
    """A :func:`q4core.bench.train.train_step_times` result: per model whether q4 and simulated q4 gave
    identical losses, the median step times, issue 4's two ratios against their targets and q4 / fp32 against
    issue 12's (stricter for the GEMM-heavy workloads)."""
    lines = []
    max_fp32, min_sim = TRAIN_TARGETS["q4_over_fp32"], TRAIN_TARGETS["simulated_over_q4"]
    for model, times in summarize_train(result).items():
        lines.append(f"\n{model}")
        if not result["identical_losses"][model]:
            lines.append("  q4 and simulated q4 losses differ: the integer path is wrong")
        for name in PRECISIONS:
            lines.append(f"  {name:14s} {times[name] * 1e3:9.2f} ms")
        r_fp32, r_sim = times["q4_over_fp32"], times["simulated_over_q4"]
        lines.append(f"  q4 / fp32      {r_fp32:9.2f}x   target <= {max_fp32:g}x : "
                     f"{'met' if r_fp32 <= max_fp32 else 'short'}")
        lines.append(f"  simulated / q4 {r_sim:9.2f}x   target >= {min_sim:g}x   : "
                     f"{'met' if r_sim >= min_sim else 'short'}")
        kind = "GEMM-heavy" if is_heavy(model) else "built-in model"
        goal = ISSUE12_TARGETS["heavy" if is_heavy(model) else "builtin"]
        lines.append(f"  q4 / fp32      {r_fp32:9.2f}x   issue 12: <= {goal:g}x ({kind}): "
                     f"{'met' if r_fp32 <= goal else 'short'}")
    return lines


def breakdown_lines(result):
    """A :func:`q4core.bench.train.step_breakdown` result: per model the instrumented q4 step time and the
    percentage of it in each part."""
    parts = result["parts"]
    lines = [f"\nwhere a q4 step's time goes ({result['note']}, {result['repeat']} steps, "
             f"{_threads(result['threads'])})",
             f"  {'model':36s} {'step ms':>8s} " + " ".join(f"{p:>14s}" for p in parts)]
    for r in result["records"]:
        lines.append(f"  {r['model']:36s} {r['step_seconds'] * 1e3:8.2f} "
                     + " ".join(f"{100 * r['fractions'][p]:13.1f}%" for p in parts))
    return lines


def layer_lines(result):
    """A :func:`q4core.bench.layer.measure_layer` result: per size the medians of the q4 layer, the fp32 layer
    and the bare GEMMs, the engine's cost beyond its GEMMs and q4 / fp32, then issue 12's forward-overhead
    target at 64."""
    lines = [f"quantized Linear(n, n) on n rows, training mode - {result['cpu_model']}, numpy {result['numpy']}, "
             f"{_threads(result['threads'])}",
             f"medians of {result['repeat']} samples of ~{result['sample_seconds'] * 1e3:g} ms loops, microseconds "
             "per call; q4 = the default recipe, the layer itself 4-bit",
             "GEMM(s) = the engine's entry points on prepared operands, public = the validated public functions; "
             "beyond GEMM = q4 layer - GEMM(s)"]
    for r in result["records"]:
        gemm, public = r["gemm_us"], r["public_gemm_us"]
        back_gemms = gemm["grad_dx"] + gemm["grad_dw"]
        lines += [f"\nn = {r['size']} (kernel {r['kernel']})",
                  f"  {'':9s} {'q4 layer':>10s} {'fp32 layer':>10s} {'q4/fp32':>8s} {'GEMM(s)':>9s} "
                  f"{'public':>9s} {'beyond GEMM':>12s}",
                  f"  {'forward':9s} {r['q4_forward_us']:10.1f} {r['fp32_forward_us']:10.1f} "
                  f"{r['forward_q4_over_fp32']:8.2f} {gemm['forward']:9.1f} {public['forward']:9.1f} "
                  f"{r['forward_beyond_gemm_us']:12.1f}",
                  f"  {'backward':9s} {r['q4_backward_us']:10.1f} {r['fp32_backward_us']:10.1f} "
                  f"{r['backward_q4_over_fp32']:8.2f} {back_gemms:9.1f} "
                  f"{public['grad_dx'] + public['grad_dw']:9.1f} {r['backward_beyond_gemms_us']:12.1f}",
                  "  backward GEMMs: " + ", ".join(
                      f"{p} {ENGINE_GEMMS[p][0]} {gemm[p]:.1f} (public {public[p]:.1f})"
                      for p in ("grad_dx", "grad_dw"))]
    verdict = overhead_verdict(result)
    n = TARGET_SIZE
    head = f"\nissue 12: forward of a {n}x{n}x{n} q4 layer <= {OVERHEAD_TARGET_US:g} us beyond its GEMM:"
    if verdict is None:
        lines.append(f"{head} not measured (size {TARGET_SIZE} not among the sizes)")
    else:
        lines.append(f"{head} {verdict['overhead_us']:.1f} us {'met' if verdict['met'] else 'short'}")
    return lines
