"""Compiled INT4 / radix-4 FP4 encode+pack throughput against the numpy chain and a memory copy.

:func:`measure_quantize` times, for ``2**log2n`` float32 values (default ``2**24``, 64 MiB), in one run
and as medians:

* the compiled encode+pack (``q4core.quant.encode_packed``) of INT4 and radix-4 FP4, on 1 thread and,
  with OpenMP, on 2 threads;
* the equivalent numpy chain (the reference ``fmt.encode(..., backend="numpy")`` followed by
  ``pack_nibbles``) - the ratio compiled / numpy is the speed-up;
* a plain memory copy of the same float32 array (``np.copyto``) - the ratio copy time / compiled time
  says how close the kernel gets to memory speed.

With ``quantize=True`` it also times float -> float quantize (the fake-quantization path) against the
reference ``fmt.quantize(..., backend="numpy")``.

Targets (issue 2, :data:`TARGETS`): >= 5x the numpy chain on one thread, and within 3x of the memory copy
(ratio >= 0.33).  Nothing is asserted or printed here: ``python -m q4core.bench quantize``
(:mod:`q4core.bench.cli`; :func:`main` here is that command) prints the table; timings on a shared
machine are noisy.
"""
from __future__ import annotations

import math

import numpy as np

from ._timing import median_seconds, positive_int

__all__ = ["measure_quantize", "paths_of", "threads_of", "TARGETS", "LOG2N_RANGE"]

#: bounds of ``log2n``: 2**28 float32 values are 1 GiB, and a run holds several arrays of that size
LOG2N_RANGE = (1, 28)

#: issue 2's targets for encode+pack: speed-up over the numpy chain on one thread, copy time / compiled time
TARGETS = {"x_numpy_1thread": 5.0, "copy_over_compiled": 0.33}


def measure_quantize(log2n=24, repeat=7, numpy_repeat=3, scale=0.37, seed=0, quantize=False):
    """Median seconds of each path; ``RuntimeError`` when the compiled core is missing or disagrees.

    Returns ``{"n", "scale", "openmp" (q4core.quant.openmp_info()), "copy_s", <label>: {"numpy_s",
    "compiled_1t_s"[, "compiled_2t_s"]}, ...}`` with one ``<label>`` per path (``"int4 encode+pack"``,
    ``"radix4_fp4 encode+pack"`` and, with ``quantize``, ``"... quantize (f32 -> f32)"``) -
    :func:`paths_of` lists them in order.  Every compiled result is first checked to be byte-identical
    to the numpy chain's (a benchmark of a wrong answer is worthless).
    """
    from .. import quant
    from ..formats import INT4, RADIX4_FP4, pack_nibbles

    log2n = positive_int(log2n, "log2n")
    if not LOG2N_RANGE[0] <= log2n <= LOG2N_RANGE[1]:
        raise ValueError(f"log2n must be between {LOG2N_RANGE[0]} and {LOG2N_RANGE[1]}, got {log2n}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)) \
            or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    repeat, numpy_repeat = positive_int(repeat, "repeat"), positive_int(numpy_repeat, "numpy_repeat")
    if not quant.AVAILABLE:
        raise RuntimeError("q4core._quant is not built: run `python setup.py build_ext --inplace`")
    n = 1 << log2n
    rng = np.random.default_rng(seed)
    # values spread over the whole INT4 range and over many binades (radix-4 FP4's range)
    x = (rng.standard_normal(n) * np.exp2(rng.integers(-10, 3, n))).astype(np.float32)
    copy_dst = np.empty_like(x)
    info = quant.openmp_info()
    results = {"n": n, "scale": scale, "openmp": info,
               "copy_s": median_seconds(lambda: np.copyto(copy_dst, x), repeat=repeat)}
    max_threads = 2 if info["openmp"] else 1
    paths = []   # (label, numpy chain, compiled function of threads)
    for name, fmt in (("int4", INT4), ("radix4_fp4", RADIX4_FP4)):
        paths.append((f"{name} encode+pack",
                      lambda fmt=fmt: pack_nibbles(fmt.encode(x, scale, backend="numpy")),
                      lambda t, fmt=fmt: quant.encode_packed(fmt, x, scale, threads=t)))
    if quantize:
        for name, fmt in (("int4", INT4), ("radix4_fp4", RADIX4_FP4)):
            paths.append((f"{name} quantize (f32 -> f32)",
                          lambda fmt=fmt: fmt.quantize(x, scale, backend="numpy"),
                          lambda t, fmt=fmt: quant.quantize(fmt, x, scale, threads=t)))
    for label, numpy_fn, compiled_fn in paths:
        ref = numpy_fn()
        res = {"numpy_s": median_seconds(numpy_fn, repeat=numpy_repeat, warmup=0)}
        for threads in range(1, max_threads + 1):
            out = compiled_fn(threads)
            if out.dtype != ref.dtype or not np.array_equal(out.view(np.uint8), ref.view(np.uint8)):
                raise RuntimeError(f"{label}: compiled result differs from the numpy reference")
            res[f"compiled_{threads}t_s"] = median_seconds(lambda: compiled_fn(threads), repeat=repeat)
        results[label] = res
    return results


def paths_of(result):
    """The path labels of a :func:`measure_quantize` result, in the order they were timed."""
    return [k for k, v in result.items() if isinstance(v, dict) and "numpy_s" in v]


def threads_of(path_result):
    """The compiled thread counts timed for one path (``result[label]``), ascending."""
    return sorted(int(k[len("compiled_"):-len("t_s")]) for k in path_result if k.startswith("compiled_"))


def main(argv=None):
    """``python -m q4core.bench quantize`` with the options ``argv`` (see :mod:`q4core.bench.cli`)."""
    import sys

    from .cli import main as cli_main
    return cli_main(["quantize", *(sys.argv[1:] if argv is None else argv)])
