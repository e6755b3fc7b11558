"""Notebook 05's figures, drawn from the measurement dicts of :mod:`q4core.bench` and the estimate of
:func:`q4core.efficiency.energy_estimate`.  Nothing is measured here; each figure is deterministic given its
input numbers (same numbers -> same bytes).  Each ``plot_*`` returns ``(fig, data)``: ``data`` holds the
plotted numbers, for the JSON written beside the figure by :func:`q4core.plotting.save_figure`.
"""
from __future__ import annotations

import numpy as np

from ..bench.gemm import GEMM_OPS, records_of
from ..bench.memory import STORAGE

__all__ = ["plot_gemm_throughput", "plot_memory", "plot_efficiency", "plot_train_steps", "cpu_label"]

_OP_TITLES = {"int4xint4": "forward  INT4 x INT4", "fp4xint4": "grad-input  FP4 x INT4",
              "int4xfp4": "grad-weight  INT4 x FP4"}


def cpu_label():
    """The CPU the timings were taken on, for the figure JSON and the README: model name (Linux
    ``/proc/cpuinfo``, else :func:`platform.processor`), the integer units found and the logical CPUs usable."""
    import os
    import platform

    from .. import kernel_info
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    cpu = kernel_info()["cpu"]
    units = [label for flag, label in (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX-512 VNNI"),
                                        ("avx_vnni", "AVX-VNNI"), ("avx2", "AVX2")) if cpu.get(flag)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name} ({', '.join(units) or 'no integer vector units'}), {cores} logical CPUs"


def _gops_range(rec):
    """``[slowest, fastest]`` GOP/s of a record's repeats (its median's GOP/s when the spread is unknown)."""
    ops = rec["gops"] * rec["seconds"]
    return [ops / rec.get("seconds_max", rec["seconds"]), ops / rec.get("seconds_min", rec["seconds"])]


def _spread(ax, recs, color):
    """The fastest-to-slowest range of the repeats as a band: how much the machine's load moved the timing."""
    if len(recs) > 1:
        lo, hi = zip(*(_gops_range(r) for r in recs))
        ax.fill_between([r["size"] for r in recs], lo, hi, color=color, alpha=0.15, lw=0)
    elif recs:
        lo, hi = _gops_range(recs[0])
        ax.vlines(recs[0]["size"], lo, hi, color=color, lw=1.0, alpha=0.5)


def _kernel_colors(kernels):
    from ..plotting import PALETTE
    order = ["blue", "vermillion", "green", "purple", "orange", "sky_blue", "black"]
    return {k: PALETTE[order[i % len(order)]] for i, k in enumerate(kernels)}


def plot_gemm_throughput(result, threads=1):
    """GOP/s against size, one panel per GEMM of a training step; every kernel path, numpy float32 and the
    fake-quantization baseline.  Returns ``(fig, data)`` (``data``: the plotted numbers, for the JSON)."""
    from ..plotting import PALETTE, new_figure
    recs = sorted((r for r in records_of(result) if r["threads"] == threads),
                  key=lambda r: (r["op"], r["kernel"], r["size"]))
    if not recs:
        raise ValueError(f"no records with threads={threads}")
    kernels = sorted({r["kernel"] for r in recs if r["op"] in GEMM_OPS},
                     key=lambda k: ("amx", "vnni", "avxvnni", "avx2", "portable").index(k)
                     if k in ("amx", "vnni", "avxvnni", "avx2", "portable") else 99)
    colors = _kernel_colors(kernels)
    fig, axes = new_figure("double", aspect=0.38, nrows=1, ncols=3, sharey=True)
    sizes = sorted({r["size"] for r in recs})
    fp32 = [r for r in recs if r["op"] == "fp32"]
    data = {"threads": threads, "sizes": sizes, "series": []}
    for ax, op in zip(axes, GEMM_OPS):
        ax.plot([r["size"] for r in fp32], [r["gops"] for r in fp32], "k--", marker="s", ms=3,
                label="numpy float32 (BLAS)")
        _spread(ax, fp32, PALETTE["black"])
        fq_op = "fakequant_int4" if op == "int4xint4" else "fakequant_fp4"
        fq = [r for r in recs if r["op"] == fq_op]
        if fq:
            ax.plot([r["size"] for r in fq], [r["gops"] for r in fq], ls=":", marker="x", ms=3,
                    color=PALETTE["black"], alpha=0.6, label="fake-quantized, float32 GEMM")
        for k in kernels:
            kr = [r for r in recs if r["op"] == op and r["kernel"] == k]
            if kr:
                ax.plot([r["size"] for r in kr], [r["gops"] for r in kr], marker="o", ms=3,
                        color=colors[k], label=f"q4core {k}")
                _spread(ax, kr, colors[k])
                data["series"].append({"op": op, "kernel": k, "sizes": [r["size"] for r in kr],
                                       "gops": [r["gops"] for r in kr],
                                       "gops_range": [_gops_range(r) for r in kr],
                                       "ratio_vs_fp32": [r["ratio_vs_fp32"] for r in kr]})
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_title(_OP_TITLES[op])
        ax.set_xlabel("M = N = K")
    axes[0].set_ylabel(f"GOP/s ({threads} thread{'s' if threads > 1 else ''})")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:          # kernels missing from the first panel (none today) still get an entry
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=6)
    data["series"].insert(0, {"op": "fp32", "kernel": "numpy", "sizes": [r["size"] for r in fp32],
                              "gops": [r["gops"] for r in fp32], "gops_range": [_gops_range(r) for r in fp32]})
    data["cpu"] = cpu_label()
    return fig, data


def plot_memory(per_value, per_parameter, per_activation):
    """Bytes per value of each format (left) and per parameter / per activation under each recipe
    (right, stacked by component).  Returns ``(fig, data)``."""
    from matplotlib.patches import Patch

    from ..plotting import COLORS, new_figure
    fig, (ax_v, ax_p, ax_a) = new_figure("double", aspect=0.42, nrows=1, ncols=3,
                                         gridspec_kw={"width_ratios": [1.0, 1.0, 0.8]})
    labels = [r["label"] for r in per_value]
    y = np.arange(len(labels))
    ax_v.barh(y, [r["bytes_per_value"] for r in per_value], color=COLORS[4], height=0.6)
    ax_v.set_yticks(y)
    ax_v.set_yticklabels(labels)
    ax_v.invert_yaxis()
    ax_v.set_xlabel("bytes per value (measured array)")
    for yi, r in zip(y, per_value):
        ax_v.text(r["bytes_per_value"], yi, f" {r['bytes_per_value']:.3g}", va="center", fontsize=6)
    ax_v.set_xlim(0, max(r["bytes_per_value"] for r in per_value) * 1.3)
    kinds = []
    for ax, rows, title in ((ax_p, per_parameter, "per parameter"), (ax_a, per_activation, "per activation")):
        left = np.zeros(len(rows))
        for i, row in enumerate(rows):
            for c in row["components"]:
                if c["kind"] not in kinds:
                    kinds.append(c["kind"])
                j = kinds.index(c["kind"])
                ax.barh(i, c["bytes_per_value"], left=left[i], height=0.6, color=COLORS[j % len(COLORS)],
                        edgecolor="white", lw=0.5)
                left[i] += c["bytes_per_value"]
            ax.text(left[i], i, f" {left[i]:.3g} B", va="center", fontsize=6)
        ax.set_yticks(np.arange(len(rows)))
        ax.set_yticklabels([r["recipe"] for r in rows] if ax is ax_p else [])
        ax.invert_yaxis()
        ax.set_xlim(0, max(left) * 1.35)
        ax.set_xlabel(f"bytes {title}")
    handles = [Patch(color=COLORS[j % len(COLORS)], label=STORAGE[k][0]) for j, k in enumerate(kinds)]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=6)
    data = {"per_value": per_value, "per_parameter": per_parameter, "per_activation": per_activation}
    return fig, data


def plot_efficiency(estimate):
    """Energy gain and density (area) gain per MAC over the baseline, from published per-operation
    figures, with the claimed factor as a line.  Returns ``(fig, data)``."""
    from ..plotting import PALETTE, new_figure
    rows = estimate["rows"]
    fig, axes = new_figure("double", aspect=0.3, nrows=1, ncols=2, sharey=True)
    y = np.arange(len(rows))
    for ax, key, title in ((axes[0], "energy_gain", "energy per MAC"), (axes[1], "density_gain", "MACs per area")):
        vals = [r[key] for r in rows]
        ax.barh(y, vals, height=0.6, color=[PALETTE["vermillion"] if "INT4" in r["name"] else PALETTE["sky_blue"]
                                            for r in rows])
        ax.axvline(estimate["claimed"], color="k", ls="--", lw=0.8)
        ax.text(estimate["claimed"], -0.85, f" paper: >{estimate['claimed']:g}x", fontsize=6, va="center")
        ax.axvline(1.0, color="0.6", lw=0.6)
        for yi, v in zip(y, vals):
            ax.text(v, yi, f" {v:.2g}x", va="center", fontsize=6)
        ax.set_xscale("log")
        ax.set_xlabel(f"gain in {title} over {estimate['baseline']} (45 nm)")
    axes[0].set_yticks(y)
    axes[0].set_yticklabels([r["name"] for r in rows])
    axes[0].set_ylim(len(rows) - 0.5, -1.3)     # top to bottom, with a row of room for the claim's label
    data = {"baseline": estimate["baseline"], "claimed": estimate["claimed"], "rows": rows,
            "assumptions": estimate["assumptions"], "source": estimate["source"]}
    return fig, data


def plot_train_steps(rows):
    """Median time of one training step per model and precision.  ``rows``: dicts with ``model``,
    ``precision`` and ``seconds``.  Returns ``(fig, data)``."""
    from ..plotting import COLORS, new_figure
    rows = sorted(rows, key=lambda r: (r["model"], r["precision"]))
    models = sorted({r["model"] for r in rows})
    precisions = list(dict.fromkeys(r["precision"] for r in sorted(rows, key=lambda r: r["precision"])))
    fig, axes = new_figure("double", aspect=0.3, nrows=1, ncols=len(models), squeeze=False)
    for ax, model in zip(axes[0], models):
        mr = {r["precision"]: r for r in rows if r["model"] == model}
        names = [p for p in precisions if p in mr]
        ms = [mr[p]["seconds"] * 1e3 for p in names]
        ax.bar(range(len(names)), ms, color=[COLORS[precisions.index(p) % len(COLORS)] for p in names])
        for i, p in enumerate(names):      # every timed repeat, so the spread of a shared machine is visible
            samples = [1e3 * v for v in mr[p].get("samples", [])]
            ax.plot(np.full(len(samples), i), samples, "o", ms=2, mfc="none", mec="0.2", mew=0.6)
            ax.text(i, max([ms[i], *samples]), f"{ms[i]:.3g}\n", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names)
        ax.set_title(model)
        ax.set_ylabel("ms per training step")
        top = max([*ms, *(1e3 * v for p in names for v in mr[p].get("samples", []))], default=0)
        ax.set_ylim(0, top * 1.2 if top > 0 else 1)
    return fig, {"rows": rows, "cpu": cpu_label()}
