"""Shared helpers of the benchmarks: medians of repeated wall-clock runs, thread limits, argument checks."""
import contextlib
import numbers
import statistics
import time

import numpy as np


def median_seconds(fn, repeat=7, warmup=1, min_time=0.0):
    """Median wall time of ``fn()`` over ``repeat`` runs after ``warmup`` untimed runs.

    With ``min_time > 0`` each timed sample loops ``fn`` until at least ``min_time``
    seconds have passed and reports the per-call time, so very fast calls are not
    dominated by timer resolution.
    """
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        n = 0
        t0 = time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time:
                break
        samples.append(elapsed / n)
    return statistics.median(samples)


def thread_limit(n):
    """Context manager limiting BLAS/OpenMP threads to ``n`` (threadpoolctl, a scikit-learn dependency)."""
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=n)


def positive_ints(values, name):
    """``values`` (a positive int or an iterable of them) as a non-empty list of ints; else a clear error."""
    if isinstance(values, (numbers.Integral, np.integer)):
        values = [values]
    try:
        values = list(values)
    except TypeError:
        raise TypeError(f"{name} must be a positive int or a list of them, got {values!r}") from None
    if not values:
        raise ValueError(f"{name} must not be empty")
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Integral, np.integer)) or v < 1:
            raise ValueError(f"{name} must hold positive ints, got {v!r}")
    return [int(v) for v in values]


def positive_int(value, name):
    """One positive int (see :func:`positive_ints`)."""
    return positive_ints(value, name)[0]


@contextlib.contextmanager
def patched(replacements):
    """Within the block, ``setattr(owner, attr, make(original))`` for each ``(owner, attr, make)`` of
    ``replacements`` (an iterable, consumed as the block starts); every original is put back on exit, also when
    the block raises or a later ``make`` fails.  The benchmarks wrap the engine's entry points with it (the
    engine looks them up as attributes at each call, so the wrapper sees every call)."""
    saved = []
    try:
        for owner, attr, make in replacements:
            original = getattr(owner, attr)
            saved.append((owner, attr, original))
            setattr(owner, attr, make(original))
        yield
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)
