"""q4core.stats: paired Student-t intervals and the verdicts they support."""
import math

import pytest

from q4core import stats


def test_paired_interval_known_values():
    ci = stats.paired_interval([1.0, 2.0, 3.0])
    # mean 2, sample SD 1, t_{0.975, 2} = 4.302653 -> half-width 4.302653 / sqrt(3)
    assert ci["n"] == 3 and ci["mean"] == 2.0 and ci["sd"] == 1.0
    assert ci["low"] == pytest.approx(2 - 4.302653 / math.sqrt(3), abs=1e-6)
    assert ci["high"] == pytest.approx(2 + 4.302653 / math.sqrt(3), abs=1e-6)
    assert stats.verdict(ci) == "not resolved"          # three seeds one way are not evidence here


def test_verdicts_follow_the_interval():
    assert stats.verdict(stats.paired_interval([1.0, 1.1, 0.9, 1.0])) == "above"
    assert stats.verdict(stats.paired_interval([-1.0, -1.1, -0.9, -1.0])) == "below"
    assert stats.verdict(stats.paired_interval([0.1, -0.1, 0.05, -0.05]), margin=1.0) == "within"
    assert stats.verdict(stats.paired_interval([0.1, -0.1, 0.05, -0.05])) == "not resolved"


def test_degenerate_inputs():
    one = stats.paired_interval([0.5])
    assert one["n"] == 1 and one["low"] == -math.inf and stats.verdict(one) == "not resolved"
    assert stats.paired_interval([None, float("nan")])["n"] == 0
    with pytest.raises(ValueError, match="confidence"):
        stats.paired_interval([1.0, 2.0], confidence=1.5)
    assert stats.binomial_se(0.96, 1000) == pytest.approx(0.0062, abs=1e-4)
    with pytest.raises(ValueError, match="n must be positive"):
        stats.binomial_se(0.5, 0)


def test_paired_difference_and_describe():
    a, b = [93.0, 94.0, 95.0], [90.0, 90.5, 91.5]
    iv = stats.paired_difference(a, b)
    assert iv["n"] == 3 and iv["verdict"] == "above"
    assert iv["mean"] == pytest.approx(10 / 3)
    text = stats.describe(iv, "radix 2", "radix 4")
    assert "radix 2 is better" in text and "over 3 seeds" in text
    assert "radix 4 is better" in stats.describe(iv, "radix 2", "radix 4", higher_is_better=False)
    noisy = stats.paired_difference([93.0, 90.0, 95.0], [92.0, 92.0, 92.0])
    assert noisy["verdict"] == "not resolved" and "not resolved" in stats.describe(noisy, "x", "y")
    # a diverged run drops its pair; one pair left gives no interval
    one = stats.paired_difference([93.0, None], [92.0, 91.0])
    assert one["n"] == 1 and "one seed" in stats.describe(one, "x", "y")
    with pytest.raises(ValueError, match="pair up seed by seed"):
        stats.paired_difference([1.0], [1.0, 2.0])


def test_equal_differences_resolve_nothing():
    """Two seeds each one test item apart give zero SD: a zero-width t-interval is not evidence."""
    iv = stats.paired_interval([-1.11, -1.11])
    assert iv["degenerate"] and iv["low"] == -math.inf and iv["high"] == math.inf
    assert stats.verdict(iv) == "not resolved"
    assert "no spread" in stats.describe(stats.paired_difference([92.2, 92.2], [93.31, 93.31]), "a", "b")


def test_half_width_is_the_t_interval_of_that_many_seeds():
    # the half-width paired_interval builds from data equals half_width of its sd and n
    d = [0.3, 1.1, -0.4, 0.9, 0.2, 1.4]
    iv = stats.paired_interval(d)
    assert stats.half_width(iv["sd"], 6) == pytest.approx(iv["high"] - iv["mean"], rel=1e-12)
    # written out: t_{0.975, 9} = 2.262157, so 10 seeds of SD 1 give 2.262157 / sqrt(10) = 0.715357
    assert stats.half_width(1.0, 10) == pytest.approx(0.715357, abs=1e-6)
    assert stats.half_width(0.0, 3) == 0.0


@pytest.mark.parametrize("n", [1, 0, 2.5, True])
def test_half_width_needs_two_seeds(n):
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        stats.half_width(1.0, n)


def test_half_width_rejects_negative_sd():
    with pytest.raises(ValueError, match="sd"):
        stats.half_width(-1.0, 4)


def test_seeds_to_resolve_is_the_first_n_whose_interval_clears_the_threshold():
    n = stats.seeds_to_resolve(1.4, 0.55, 1.0)
    assert stats.half_width(0.55, n) < 0.4 <= stats.half_width(0.55, n - 1)
    assert stats.seeds_to_resolve(0.2, 0.5, 1.0) == stats.seeds_to_resolve(1.8, 0.5, 1.0)   # symmetric
    assert stats.seeds_to_resolve(1.0, 0.5, 1.0) is None        # a mean on the threshold never resolves
    assert stats.seeds_to_resolve(5.0, 0.0, 1.0) == 2           # no spread: the smallest interval
