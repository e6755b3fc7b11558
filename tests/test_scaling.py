"""Range estimators: SAWB, min/max, PACT, GradScale, two-phase rounding."""
import math

import numpy as np
import pytest

from q4core.formats import RADIX4_FP4, RADIX4_FP4_ODD
from q4core.scaling import (
    SAWB_C1,
    SAWB_C2,
    GradScale,
    int_scale,
    minmax_clip,
    pact_backward,
    pact_forward,
    sawb_clip,
    two_phase_encode,
)


def test_sawb_formula_on_gaussian_weights():
    w = np.random.default_rng(0).standard_normal(10000)
    expected = SAWB_C1 * math.sqrt(np.mean(w ** 2)) + SAWB_C2 * np.mean(np.abs(w))
    assert sawb_clip(w) == pytest.approx(expected, rel=1e-12)
    assert 0 < sawb_clip(w) < np.abs(w).max()
    assert (SAWB_C1, SAWB_C2) == (12.68, -12.80)


def test_sawb_falls_back_to_max_for_flat_weights():
    w = np.array([-1.0, 1.0, -1.0, 1.0])     # formula gives -0.12: not a clip
    assert sawb_clip(w) == 1.0
    assert sawb_clip(np.zeros(3)) == 0.0
    assert sawb_clip(np.zeros(0)) == 0.0


def test_minmax_and_int_scale():
    x = np.array([-3.0, 0.5, 2.0])
    assert minmax_clip(x) == 3.0
    assert minmax_clip(x, unsigned=True) == 2.0
    assert int_scale(7.0) == 1.0
    assert int_scale(15.0, unsigned=True) == 1.0
    assert int_scale(0.0) == 1.0
    with pytest.raises(ValueError, match="clip"):
        int_scale(-1.0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        minmax_clip(np.array([1.0, np.nan]))


def test_pact_forward_and_straight_through_backward():
    x = np.array([-1.0, 0.0, 0.5, 2.0, 3.0])
    np.testing.assert_array_equal(pact_forward(x, 2.0), [0.0, 0.0, 0.5, 2.0, 2.0])
    gy = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    gx, ga = pact_backward(x, 2.0, gy, l2=0.1)
    np.testing.assert_array_equal(gx, [0.0, 2.0, 3.0, 0.0, 0.0])
    assert ga == pytest.approx(4.0 + 5.0 + 0.1 * 2.0)
    with pytest.raises(ValueError, match="alpha"):
        pact_forward(x, 0.0)


def test_gradscale_initialise_halve_double_keep():
    gs = GradScale(fmt_max=1.0)
    assert gs.scale == 1.0
    gs.observe(0.01)                   # first sight: largest power of two with 0.01 * s <= 1
    assert gs.scale == 64.0 and 0.01 * 64 <= 1.0 < 0.01 * 128
    gs.observe(0.02)                   # 0.02 * 64 = 1.28 > 1 -> halve
    assert gs.scale == 32.0
    gs.observe(0.01)                   # 0.32 <= 0.5 -> double
    assert gs.scale == 64.0
    gs.observe(0.01)                   # 0.64: keep
    assert gs.scale == 64.0
    gs.observe(1.0 / 128)              # exactly half: double
    assert gs.scale == 128.0
    gs.observe(0.0)                    # an all-zero gradient changes nothing
    assert gs.scale == 128.0
    assert gs.encode_scale() == 1.0 / 128
    with pytest.raises(ValueError, match="power of two"):
        GradScale(scale=3.0)


def test_two_phase_rounding_grids():
    g = np.array([0.3, -0.3, 1.0 / 16, 0.9, 0.0])
    even, odd = two_phase_encode(g, 1.0)
    np.testing.assert_array_equal(RADIX4_FP4.decode(even), [0.25, -0.25, 1.0 / 16, 1.0, 0.0])
    # odd grid 2 * 4**n: 0.3 is below the midpoint 0.3125 of 0.125 and 0.5
    np.testing.assert_array_equal(RADIX4_FP4_ODD.decode(odd), [0.125, -0.125, 1.0 / 32, 0.5, 0.0])


def test_two_phase_rounding_errors_point_opposite_ways_on_average():
    g = np.random.default_rng(1).uniform(0.01, 1.0, 20000)
    even, odd = two_phase_encode(g, 1.0)
    e_err = RADIX4_FP4.decode(even) - g
    o_err = RADIX4_FP4_ODD.decode(odd) - g
    both = (RADIX4_FP4.decode(even) + RADIX4_FP4_ODD.decode(odd)) / 2 - g
    assert abs(both.mean()) < max(abs(e_err.mean()), abs(o_err.mean()))
