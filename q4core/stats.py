"""Statistics a reviewer accepts: paired differences over seeds, Student-t intervals, verdicts that follow them.

A comparison of two recipes trained with the same seeds (same initial weights, batch order and schedule) is
a set of paired differences ``d_i``.  :func:`paired_interval` gives their mean, sample SD (ddof = 1) and the
two-sided Student-t interval; :func:`verdict` says what the interval supports - and "not resolved" when it
supports neither side.  Three seeds all pointing one way are p = 0.125, not evidence: the interval says so.
"""
from __future__ import annotations

import math

import numpy as np

from ._validation import check_real

__all__ = ["paired_interval", "verdict", "binomial_se", "paired_difference", "describe", "half_width",
           "seeds_to_resolve"]


def paired_interval(diffs, confidence=0.95):
    """``{"n", "mean", "sd", "low", "high", "confidence"}`` of paired differences (NaN entries dropped).

    ``sd`` is the sample SD (ddof = 1); the interval is ``mean +- t_{(1+c)/2, n-1} * sd / sqrt(n)``.  With fewer
    than two differences, or with differences all equal (zero SD: ``"degenerate"``), the interval is unbounded
    (``-inf, inf``): it says nothing about the spread."""
    check_real(confidence, "confidence", min_value=0, max_value=1)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    d = np.asarray([v for v in diffs if v is not None], dtype=np.float64)
    d = d[~np.isnan(d)]
    n = int(d.size)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "low": -math.inf, "high": math.inf, "confidence": confidence}
    mean = float(d.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "sd": None, "low": -math.inf, "high": math.inf, "confidence": confidence}
    from scipy.stats import t
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        # every difference the same (on a discrete test set: the same number of items, e.g. two seeds each one
        # image apart): the t-interval has zero width, which measures nothing about the spread
        return {"n": n, "mean": mean, "sd": 0.0, "low": -math.inf, "high": math.inf, "confidence": confidence,
                "degenerate": True}
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half, "confidence": confidence}


def verdict(interval, margin=0.0):
    """What an interval of differences ``a - b`` supports against ``margin``: ``"below"`` if its upper end is
    below ``-margin``, ``"above"`` if its lower end is above ``margin``, ``"within"`` if it lies inside
    ``[-margin, margin]`` (only with ``margin > 0``), else ``"not resolved"``."""
    lo, hi = interval["low"], interval["high"]
    if hi < -margin:
        return "below"
    if lo > margin:
        return "above"
    if margin > 0 and -margin <= lo and hi <= margin:
        return "within"
    return "not resolved"


def half_width(sd, n, confidence=0.95):
    """Half-width ``t_{(1+c)/2, n-1} * sd / sqrt(n)`` of the Student-t interval of a mean of ``n`` paired
    differences with sample SD ``sd``: what ``n`` seeds would give if their spread were the one observed (a
    planning figure, not a measurement)."""
    check_real(sd, "sd", min_value=0)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (an interval needs two seeds), got {n!r}")
    check_real(confidence, "confidence", min_value=0, max_value=1)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    from scipy.stats import t
    return float(t.ppf(0.5 + confidence / 2, int(n) - 1)) * float(sd) / math.sqrt(int(n))


def seeds_to_resolve(mean, sd, threshold, confidence=0.95, max_seeds=1000):
    """The fewest seeds ``n >= 2`` whose interval ``mean +- half_width(sd, n)`` would lie wholly on one side of
    ``threshold``, if the observed ``mean`` and ``sd`` held; None if even ``max_seeds`` would not (``mean`` on
    the threshold) - a planning figure: more seeds move the mean too."""
    check_real(mean, "mean")
    check_real(threshold, "threshold")
    distance = abs(float(mean) - float(threshold))
    for n in range(2, int(max_seeds) + 1):
        if half_width(sd, n, confidence) < distance:
            return n
    return None


def binomial_se(p, n):
    """Binomial standard error ``sqrt(p (1 - p) / n)`` of an accuracy ``p`` measured on ``n`` test items."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n!r}")
    return math.sqrt(p * (1 - p) / n)


def paired_difference(a, b, confidence=0.95):
    """Interval of ``a - b`` paired by position (seed), ``None`` entries (diverged runs) dropped pairwise; adds
    ``"verdict"`` (:func:`verdict` with no margin: ``"above"`` = ``a`` higher, ``"below"`` = ``b`` higher)."""
    if len(a) != len(b):
        raise ValueError(f"a and b must pair up seed by seed, got {len(a)} and {len(b)} values")
    diffs = [None if x is None or y is None else float(x) - float(y) for x, y in zip(a, b)]
    iv = paired_interval(diffs, confidence)
    return {**iv, "verdict": verdict(iv)}


def describe(iv, a_name, b_name, unit="points", higher_is_better=True):
    """One sentence for a paired difference ``a - b`` from :func:`paired_difference`: the mean, the interval,
    the seeds, and what it supports - ``"<a> is better"`` / ``"<b> is better"`` only where the interval excludes
    zero, else ``"not resolved"``."""
    if iv["mean"] is None:
        return f"{a_name} minus {b_name}: no pair of finished runs"
    if iv["n"] < 2:
        return f"{a_name} minus {b_name}: {iv['mean']:+.2f} {unit} from one seed: not resolved (no interval)"
    if iv.get("degenerate"):
        return (f"{a_name} minus {b_name}: {iv['mean']:+.2f} {unit} on each of {iv['n']} seeds (no spread to build "
                "an interval from): not resolved")
    better = {"above": a_name if higher_is_better else b_name,
              "below": b_name if higher_is_better else a_name}.get(iv["verdict"])
    said = f"{better} is better" if better else "not resolved"
    pct = round(100 * iv["confidence"])
    return (f"{a_name} minus {b_name}: {iv['mean']:+.2f} {unit}, {pct}% interval [{iv['low']:+.2f}, "
            f"{iv['high']:+.2f}] over {iv['n']} seeds: {said}")
