"""Shared timing helpers for the benchmarks: medians of repeated wall-clock runs."""
import statistics
import time


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
