"""The numpy reference number formats (q4core.formats): grids, tie rules, corners, errors.

Everything here runs with ``backend="numpy"`` so it tests the reference itself; the compiled
path is compared against it in test_quant.py.
"""
import doctest

import numpy as np
import pytest

from q4core import formats
from q4core.formats import (
    E2M1,
    FP8_E4M3,
    FP8_E5M2,
    FP16,
    INT4,
    INT8,
    LOG10_4BIT,
    RADIX2_FP4,
    RADIX4_FP4,
    RADIX4_FP4_ODD,
    UINT4,
    IntFormat,
    MiniFloat,
    RadixFP,
    image_to_levels,
    levels_to_image,
    pack_nibbles,
    unpack_nibbles,
)

NAMED = {"INT4": INT4, "UINT4": UINT4, "INT8": INT8, "RADIX4_FP4": RADIX4_FP4,
         "RADIX4_FP4_ODD": RADIX4_FP4_ODD, "RADIX2_FP4": RADIX2_FP4, "LOG10_4BIT": LOG10_4BIT,
         "E2M1": E2M1, "FP8_E4M3": FP8_E4M3, "FP8_E5M2": FP8_E5M2, "FP16": FP16}
STOCHASTIC = [IntFormat(4, rounding="stochastic"), IntFormat(4, signed=False, rounding="stochastic"),
              RadixFP(4, 3, rounding="stochastic"), RadixFP(4, 3, phase=1, rounding="stochastic"),
              MiniFloat(2, 1, bias=1, ieee=False, rounding="stochastic"),
              MiniFloat(5, 10, rounding="stochastic")]


def q(fmt, x, scale=1.0, **kw):
    return fmt.quantize(x, scale, backend="numpy", **kw)


def enc(fmt, x, scale=1.0, **kw):
    return fmt.encode(x, scale, backend="numpy", **kw)


def bits(a):
    """Bit patterns of a float array (so -0.0 and NaN payloads count)."""
    a = np.asarray(a)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def all_codes(fmt):
    if isinstance(fmt, IntFormat):
        return np.arange(fmt.qmin, fmt.qmax + 1).astype(fmt.code_dtype)
    dtype = fmt.code_dtype if isinstance(fmt, MiniFloat) else np.uint8
    return np.arange(1 << fmt.bits).astype(dtype)


def test_module_doctests():
    result = doctest.testmod(formats, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 5 and result.failed == 0


def test_image_mapping_of_the_article():
    assert image_to_levels(0.3) == -4               # 0.3 * 15 - 8 = -3.5 -> -4, half to even
    assert image_to_levels(0.3).shape == ()
    levels = image_to_levels(np.linspace(0, 1, 16))
    np.testing.assert_array_equal(levels, np.arange(-8, 8))
    np.testing.assert_allclose(levels_to_image(levels), np.linspace(0, 1, 16))
    with pytest.raises(ValueError, match="image"):
        image_to_levels([0.5, 1.5])
    with pytest.raises(ValueError, match="image"):
        image_to_levels([np.nan])


@pytest.mark.parametrize("name,count,lo,hi", [
    ("INT4", 16, -8, 7), ("UINT4", 16, 0, 15), ("INT8", 256, -128, 127),
    ("RADIX4_FP4", 15, -1, 1), ("RADIX4_FP4_ODD", 15, -2, 2), ("RADIX2_FP4", 15, -1, 1),
    ("LOG10_4BIT", 15, -1, 1), ("E2M1", 15, -6, 6), ("FP8_E4M3", 253, -448, 448),
    ("FP8_E5M2", 2 * (31 * 4 - 1) + 1 + 2, -np.inf, np.inf), ("FP16", 2 * (31 * 1024 - 1) + 1 + 2, -np.inf, np.inf),
])
def test_values_are_sorted_unique_grids(name, count, lo, hi):
    v = NAMED[name].values
    assert v.dtype == np.float64 and len(v) == count
    assert np.all(np.diff(v) > 0)
    assert v[0] == lo and v[-1] == hi
    assert 0.0 in v


def test_radix4_grid_and_thresholds_are_the_papers():
    np.testing.assert_array_equal(RADIX4_FP4.magnitudes, 4.0 ** np.arange(-6, 1))
    np.testing.assert_array_equal(RADIX4_FP4_ODD.magnitudes, 2 * 4.0 ** np.arange(-6, 1))
    # between 4**(n-1) and 4**n the threshold is their midpoint 4**n / 1.6
    np.testing.assert_array_equal(RADIX4_FP4.thresholds[1:], 4.0 ** np.arange(-5, 1) / 1.6)
    assert RADIX4_FP4.thresholds[0] == 4.0 ** -6 / 2          # underflow to zero below half of m_1
    assert RADIX4_FP4.max / RADIX4_FP4.magnitudes[0] == 2 ** 12
    assert RADIX4_FP4.with_phase(1) == RADIX4_FP4_ODD and RADIX4_FP4_ODD.with_phase(0) == RADIX4_FP4
    for fmt in (INT4, RADIX4_FP4, E2M1, FP16):
        assert "ties=" in repr(fmt)


@pytest.mark.parametrize("name", sorted(NAMED))
@pytest.mark.parametrize("scale", [1.0, 0.37, 2.0 ** -5])
def test_every_code_decodes_and_reencodes(name, scale):
    fmt = NAMED[name]
    codes = all_codes(fmt)
    values = fmt.decode(codes, scale)
    keep = ~np.isnan(values)
    if isinstance(fmt, IntFormat):
        assert keep.all()
    opts = {"nan_policy": "propagate"}
    np.testing.assert_array_equal(enc(fmt, values[keep], scale, **opts), codes[keep])
    assert enc(fmt, values[keep], scale, **opts).dtype == codes.dtype
    np.testing.assert_array_equal(bits(q(fmt, values[keep], scale, **opts)), bits(values[keep]))


def test_int_ties_round_half_to_even():
    x = np.array([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, 6.5, -7.5, 7.5])
    np.testing.assert_array_equal(q(INT4, x), [0, 2, 2, 4, 0, -2, -2, 6, -8, 7])
    np.testing.assert_array_equal(q(UINT4, [0.5, 1.5, 14.5, 15.5, -0.5]), [0, 2, 14, 15, 0])
    # exact ties at a scale: 1.5 -> 2 and 2.5 -> 2; the tie is judged on float64(x) / scale, so
    # 0.3 / 0.2 = 1.4999999999999998 is no tie and goes down
    np.testing.assert_array_equal(q(INT4, [0.375, 0.625, 0.3], 0.25), [0.5, 0.5, 0.25])
    assert q(INT4, 0.3, 0.2) == 0.2


def test_int_saturates_and_has_one_zero():
    np.testing.assert_array_equal(enc(INT4, [1e30, -1e30, 7.49, -8.5, -8.51]), [7, -8, 7, -8, -8])
    np.testing.assert_array_equal(enc(UINT4, [1e30, -3.0, 15.49]), [15, 0, 15])
    z = q(INT4, np.array([-0.0, -0.3, 0.0, -1e-300]))
    assert not np.signbit(z).any()                                  # +0.0 only
    assert not np.signbit(q(UINT4, np.array([-0.0, -0.4, -5.0], np.float32))).any()
    assert enc(INT4, -0.0) == 0 and enc(INT4, np.array([-0.0])).dtype == np.int8
    assert enc(UINT4, [3.0]).dtype == np.uint8


def test_radix_ties_go_away_from_zero():
    below = np.nextafter(0.625, 0)
    np.testing.assert_array_equal(q(RADIX4_FP4, [0.625, below, -0.625, -below]), [1, 0.25, -1, -0.25])
    np.testing.assert_array_equal(q(RADIX4_FP4_ODD, [1.25, np.nextafter(1.25, 0)]), [2, 0.5])
    m1 = 4.0 ** -6
    assert q(RADIX4_FP4, m1 / 2) == m1                              # underflow tie goes up
    assert q(RADIX4_FP4, np.nextafter(m1 / 2, 0)) == 0
    log = RadixFP(4, 3, rounding="log")                             # geometric mean sqrt(1/4 * 1)
    np.testing.assert_array_equal(q(log, [0.5, np.nextafter(0.5, 0), 0.6]), [1, 0.25, 1])
    np.testing.assert_array_equal(q(RADIX2_FP4, [0.75, np.nextafter(0.75, 0)]), [1, 0.5])
    np.testing.assert_array_equal(q(LOG10_4BIT, [0.55, np.nextafter(0.55, 0)]), [1, 0.1])


def test_radix_saturates_underflows_and_keeps_sign_of_zero():
    np.testing.assert_array_equal(q(RADIX4_FP4, [5.0, 1e30, -1e30], 1.0), [1, 1, -1])
    np.testing.assert_array_equal(q(RADIX4_FP4, [5.0, 1e30], 0.5), [0.5, 0.5])
    np.testing.assert_array_equal(q(RADIX4_FP4_ODD, [100.0]), [2.0])
    z = q(RADIX4_FP4, np.array([1e-9, -1e-9, 0.0, -0.0], np.float32))
    np.testing.assert_array_equal(bits(z), bits(np.array([0.0, -0.0, 0.0, -0.0], np.float32)))
    np.testing.assert_array_equal(enc(RADIX4_FP4, [0.0, -0.0, 1.0, -1.0, 4.0 ** -6, -1e-9]),
                                  [0, 8, 7, 15, 1, 8])


def test_minifloat_ties_overflow_and_subnormals():
    # E2M1: 0, 0.5, 1, 1.5, 2, 3, 4, 6 (0.5 is the subnormal); ties to the even mantissa
    np.testing.assert_array_equal(q(E2M1, [0.25, 0.75, 2.5, 3.5, 5.0, 1.25, 100.0, -7.0]),
                                  [0, 1, 2, 4, 4, 1, 6, -6])
    assert E2M1.decode([1]) == 0.5 and E2M1.max == 6.0
    # FP8 E4M3 (OCP E4M3FN, saturating, max 448) and E5M2 (IEEE: overflow to Inf, tie at max + half ulp)
    assert q(FP8_E4M3, 1000.0) == 448 and FP8_E4M3.decode([1]) == 2.0 ** -9
    assert q(FP8_E5M2, 57344.0) == 57344 and q(FP8_E5M2, 61439.0) == 57344
    assert q(FP8_E5M2, 61440.0) == np.inf
    assert FP8_E5M2.decode([1]) == 2.0 ** -16
    # FP16 subnormals and the overflow tie
    assert q(FP16, 2.0 ** -25) == 0 and q(FP16, 3 * 2.0 ** -26) == 2.0 ** -24
    assert q(FP16, 65519.99) == 65504 and q(FP16, 65520.0) == np.inf
    assert enc(FP16, -0.0) == 0x8000 and np.signbit(q(FP16, -0.0))


def test_fp16_every_code_matches_numpy_float16():
    codes = np.arange(1 << 16, dtype=np.uint16)
    ref = codes.view(np.float16).astype(np.float64)
    got = FP16.decode(codes)
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(bits(got[~nan]), bits(ref[~nan]))
    np.testing.assert_array_equal(enc(FP16, ref[~nan]), codes[~nan])
    # NaN encodes as numpy's quiet NaN with the sign kept
    np.testing.assert_array_equal(enc(FP16, [np.nan, -np.nan]),
                                  np.array([np.nan, -np.nan], np.float16).view(np.uint16))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fp16_random_inputs_match_numpy_float16(dtype):
    rng = np.random.default_rng(1)
    n = 200_000
    x = (rng.standard_normal(n) * np.exp2(rng.uniform(-30, 20, n))).astype(dtype)
    # exact ties of the float16 grid (half-ulp points), overflow and Inf
    half = np.arange(1 << 15, dtype=np.uint16).view(np.float16).astype(np.float64)
    half = half[np.isfinite(half)]
    ties = ((half[:-1] + half[1:]) / 2).astype(dtype)
    x = np.concatenate([x, ties, -ties, np.array([65520, 65519, 1e10, np.inf, -np.inf, 0, -0.0], dtype)])
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    np.testing.assert_array_equal(enc(FP16, x), want.view(np.uint16))
    np.testing.assert_array_equal(bits(q(FP16, x)), bits(want.astype(dtype)))


@pytest.mark.parametrize("name", sorted(NAMED))
@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_quantize_is_idempotent(name, scale):
    fmt = NAMED[name]
    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.float64):
        x = (rng.standard_normal(5000) * np.exp2(rng.uniform(-20, 12, 5000))).astype(dtype)
        once = q(fmt, x, scale)
        assert once.dtype == dtype
        np.testing.assert_array_equal(bits(q(fmt, once, scale, nan_policy="propagate")), bits(once))
        # quantize == decode(encode) up to the cast (and Inf for the IEEE formats)
        with np.errstate(over="ignore"):
            via_codes = fmt.decode(enc(fmt, x, scale, nan_policy="propagate"), scale).astype(dtype)
        np.testing.assert_array_equal(bits(via_codes), bits(once))


@pytest.mark.parametrize("fmt", STOCHASTIC, ids=repr)
def test_stochastic_keeps_grid_points_and_is_deterministic(fmt):
    x = fmt.values[np.isfinite(fmt.values)] * 0.5
    np.testing.assert_array_equal(fmt.quantize(x, 0.5, rng=0), x)
    y = np.linspace(-3, 3, 1001)
    a, b = fmt.quantize(y, rng=123), fmt.quantize(y, rng=np.random.default_rng(123))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, fmt.quantize(y, rng=124))
    np.testing.assert_array_equal(fmt.encode(y, rng=5), fmt.encode(y, rng=5))
    with pytest.raises(ValueError, match="rng"):
        fmt.quantize(y)
    with pytest.raises(TypeError, match="rng"):
        fmt.quantize(y, rng="seed")


@pytest.mark.parametrize("fmt,x,lo,hi", [
    (STOCHASTIC[0], 0.3, 0.0, 1.0), (STOCHASTIC[0], -2.75, -3.0, -2.0),
    (STOCHASTIC[1], 14.2, 14.0, 15.0),
    (STOCHASTIC[2], 0.4, 0.25, 1.0), (STOCHASTIC[2], -0.01, -1 / 64, -1 / 256),
    (STOCHASTIC[3], 0.3, 0.125, 0.5), (STOCHASTIC[4], 2.6, 2.0, 3.0),
    (STOCHASTIC[5], 1 + 2.0 ** -12, 1.0, 1 + 2.0 ** -10),
])
def test_stochastic_rounding_is_unbiased(fmt, x, lo, hi):
    n = 200_000
    out = fmt.quantize(np.full(n, x), rng=2024)
    assert set(np.unique(out)) <= {lo, hi}
    p = (x - lo) / (hi - lo)
    sigma = (hi - lo) * np.sqrt(p * (1 - p) / n)
    assert abs(out.mean() - x) < 5 * sigma


def test_stochastic_beyond_range_saturates():
    assert np.all(STOCHASTIC[0].quantize(np.full(100, 9.5), rng=0) == 7)
    assert np.all(STOCHASTIC[2].quantize(np.full(100, -3.0), rng=0) == -1)


@pytest.mark.parametrize("fmt", [INT4, UINT4, RADIX4_FP4, E2M1], ids=repr)
def test_nan_and_inf_follow_nan_policy(fmt):
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="x contains NaN or Inf"):
            q(fmt, [1.0, bad])
        with pytest.raises(ValueError, match="x contains NaN or Inf"):
            enc(fmt, [1.0, bad])
    out = q(fmt, np.array([np.nan, -np.nan, np.inf, -np.inf], np.float32), nan_policy="propagate")
    np.testing.assert_array_equal(bits(out[:2]), bits(np.array([np.nan, -np.nan], np.float32)))
    assert out[2] == fmt.max and out[3] == fmt.values[0]
    with pytest.raises(ValueError, match="x contains NaN, which has no code"):
        enc(fmt, [np.nan], nan_policy="propagate")
    np.testing.assert_array_equal(enc(fmt, [np.inf], nan_policy="propagate"), enc(fmt, [fmt.max]))


def test_fp8_e4m3_is_ocp_e4m3fn():
    """OCP E4M3FN: max 448, S.1111.111 is NaN, no Inf; every other code a number."""
    f = FP8_E4M3
    assert f.fn and not f.ieee and f.max == 448.0 and "fn=True" in repr(f)
    assert f == MiniFloat(4, 3, ieee=False, fn=True) and f != MiniFloat(4, 3, ieee=False)
    assert MiniFloat(4, 3, ieee=False).max == 480.0           # the all-finite variant keeps its 480
    d = f.decode(np.arange(256))
    np.testing.assert_array_equal(np.flatnonzero(np.isnan(d)), [0x7F, 0xFF])
    assert d[0x7E] == 448 and d[0xFE] == -448 and d[0x78] == 256 and not np.isinf(d).any()
    # values lists only numbers: 254 non-NaN codes, one of them -0
    v = f.values
    assert len(v) == 253 and np.isfinite(v).all() and v[-1] == 448 and v[0] == -448
    # finite input beyond the range saturates (the OCP cast would give NaN above 464)
    x = np.array([448.0, 449.0, 463.999, 464.0, 464.001, 480.0, 1e6, 1e300, -470.0])
    np.testing.assert_array_equal(q(f, x), [448, 448, 448, 448, 448, 448, 448, 448, -448])
    np.testing.assert_array_equal(enc(f, x), [0x7E] * 8 + [0xFE])
    np.testing.assert_array_equal(q(f, [900.0, 1e6], 2.0), [896.0, 896.0])
    # NaN: refused under 'raise' (Inf too), mapped to the NaN code under 'propagate'
    for bad in (np.nan, np.inf, -np.inf):
        for fn in (q, enc):
            with pytest.raises(ValueError, match="x contains NaN or Inf"):
                fn(f, [1.0, bad])
    out = q(f, np.array([np.nan, -np.nan, np.inf, -np.inf], np.float32), nan_policy="propagate")
    np.testing.assert_array_equal(bits(out), bits(np.array([np.nan, -np.nan, 448, -448], np.float32)))
    np.testing.assert_array_equal(enc(f, [np.nan, -np.nan, np.inf, -np.inf], nan_policy="propagate"),
                                  [0x7F, 0xFF, 0x7E, 0xFE])
    # q(q(x)) == q(x) and quantize == decode(encode), NaN included
    y = np.concatenate([np.linspace(-600, 600, 4801), [np.nan, -np.nan, 0.0, -0.0]])
    once = q(f, y, nan_policy="propagate")
    np.testing.assert_array_equal(bits(q(f, once, nan_policy="propagate")), bits(once))
    np.testing.assert_array_equal(bits(f.decode(enc(f, y, nan_policy="propagate"))), bits(once))


def test_minifloat_conventions_are_validated():
    with pytest.raises(ValueError, match="fn=True .* ieee=False"):
        MiniFloat(4, 3, fn=True)                               # ieee defaults to True
    with pytest.raises(TypeError, match="fn must be a bool"):
        MiniFloat(4, 3, ieee=False, fn=1)
    with pytest.raises(TypeError, match="ieee must be a bool"):
        MiniFloat(4, 3, ieee="no")
    with pytest.raises(ValueError, match="fn=True needs"):
        MiniFloat(1, 0, ieee=False, fn=True)                   # one magnitude code, and it is NaN
    # fn with no mantissa bit: the top field is the NaN, the largest number one field below
    e3m0 = MiniFloat(3, 0, ieee=False, fn=True)
    assert e3m0.max == 2.0 ** (6 - 3) and np.isnan(e3m0.decode([7, 15])).all()
    # the IEEE-style E2M1 variant is not the E2M1 preset
    assert MiniFloat(2, 1).max == 3.0 and E2M1.max == 6.0 and E2M1 == MiniFloat(2, 1, bias=1, ieee=False)
    assert formats.get_format("fp8_e4m3", rounding="stochastic").fn


def test_ieee_formats_hold_nan_and_inf():
    out = q(FP16, [np.nan, np.inf, -np.inf])
    assert np.isnan(out[0]) and out[1] == np.inf and out[2] == -np.inf
    np.testing.assert_array_equal(enc(FP8_E5M2, [np.inf, -np.inf, np.nan]), [0x7C, 0xFC, 0x7E])
    with pytest.raises(ValueError, match="nan_policy"):
        q(FP16, [1.0], nan_policy="ignore")


@pytest.mark.parametrize("fmt", list(NAMED.values()), ids=repr)
def test_bad_arguments_raise_precise_errors(fmt):
    for bad_scale in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="scale"):
            q(fmt, [1.0], bad_scale)
    for bad_scale in ("1", None, True, 1j):
        with pytest.raises(TypeError, match="scale"):
            q(fmt, [1.0], bad_scale)
    for bad_x in (np.array([1 + 1j]), np.array([True]), np.array(["a"]), [None]):
        with pytest.raises(TypeError, match="x must hold"):
            q(fmt, bad_x)
    with pytest.raises(ValueError, match="nan_policy"):
        q(fmt, [1.0], nan_policy="omit")
    with pytest.raises(ValueError, match="backend"):
        fmt.quantize([1.0], backend="fortran")
    with pytest.raises(TypeError, match="codes"):
        fmt.decode([0.5])
    top = 1 << fmt.bits
    with pytest.raises(ValueError, match="codes must lie"):
        fmt.decode([top + 5000])
    with pytest.raises(ValueError, match="codes must lie"):
        fmt.decode([-top])
    for empty in (np.zeros(0), np.zeros((3, 0), np.float32)):
        out = q(fmt, empty)
        assert out.shape == empty.shape and out.dtype == empty.dtype
        assert enc(fmt, empty).shape == empty.shape
    assert q(fmt, np.float32(1.0)).dtype == np.float32
    assert q(fmt, [1, 2]).dtype == np.float64          # integers quantize as float64


def test_constructors_refuse_bad_parameters():
    for bad in (lambda: IntFormat(1), lambda: IntFormat(4, rounding="up"), lambda: RadixFP(1, 3),
                lambda: RadixFP(4, 0), lambda: RadixFP(10, 3, phase=1), lambda: RadixFP(4, 3, phase=2),
                lambda: RadixFP(4, 3, rounding="down"), lambda: MiniFloat(0, 3),
                lambda: MiniFloat(4, 30), lambda: MiniFloat(3, 0, ieee=True),
                lambda: MiniFloat(1, 2, ieee=True), lambda: MiniFloat(4, 3, rounding="log")):
        with pytest.raises(ValueError):
            bad()


def test_backend_choice():
    x = np.linspace(-10, 10, 1001, dtype=np.float32)
    for backend in ("auto", "numpy"):
        np.testing.assert_array_equal(bits(INT4.quantize(x, 0.5, backend=backend)),
                                      bits(q(INT4, x, 0.5)))
    with pytest.raises(ValueError, match="no compiled path"):
        FP16.quantize(x, backend="cython")
    with pytest.raises(ValueError, match="no compiled path"):
        STOCHASTIC[0].quantize(x, rng=0, backend="cython")
    with pytest.raises(TypeError, match="float32 or float64"):
        INT4.quantize(x.astype(np.float16), backend="cython")
    # float16 input takes the reference under "auto" and keeps its dtype
    assert INT4.quantize(x.astype(np.float16)).dtype == np.float16


@pytest.mark.parametrize("shape", [(0,), (1,), (2,), (7,), (3, 5), (2, 3, 4), (4, 0)])
def test_pack_unpack_round_trip(shape):
    rng = np.random.default_rng(3)
    signed = rng.integers(-8, 8, shape).astype(np.int8)
    unsigned = rng.integers(0, 16, shape).astype(np.uint8)
    n = shape[-1]
    for codes, is_signed in ((signed, True), (unsigned, False)):
        packed = pack_nibbles(codes)
        assert packed.dtype == np.uint8 and packed.shape == shape[:-1] + ((n + 1) // 2,)
        back = unpack_nibbles(packed, n, signed=is_signed)
        assert back.dtype == codes.dtype
        np.testing.assert_array_equal(back, codes)
    if n % 2 and signed.size:
        assert np.all(pack_nibbles(unsigned)[..., -1] >> 4 == 0)    # odd rows pad a zero nibble


def test_pack_order_and_errors():
    np.testing.assert_array_equal(pack_nibbles(np.array([1, 2, 15, 0], np.uint8)), [0x21, 0x0F])
    np.testing.assert_array_equal(pack_nibbles(np.array([-1, -8], np.int8)), [0x8F])
    with pytest.raises(ValueError, match="4-bit"):
        pack_nibbles(np.array([16]))
    with pytest.raises(ValueError, match="4-bit"):
        pack_nibbles(np.array([-9]))
    with pytest.raises(ValueError, match="dimension"):
        pack_nibbles(np.int8(3))
    with pytest.raises(TypeError, match="codes"):
        pack_nibbles(np.array([1.0]))
    with pytest.raises(TypeError, match="uint8"):
        unpack_nibbles(np.array([1], np.int8), 2)
    with pytest.raises(ValueError, match="n="):
        unpack_nibbles(np.array([1, 2], np.uint8), 5)


# ---------------------------------------------------------------------------- faults found by a hostile tester
@pytest.mark.parametrize("name", sorted(NAMED))
@pytest.mark.parametrize("native", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("backend", ["numpy", "auto"])
def test_byte_swapped_input_gives_the_native_result(name, native, backend):
    # '>f4' came back float64 (and differed from the '<f4' result in the last bits)
    fmt = NAMED[name]
    rng = np.random.default_rng(6)
    x = (rng.standard_normal(500) * np.exp2(rng.uniform(-12, 12, 500))).astype(native)
    swapped = x.astype(np.dtype(native).newbyteorder())
    assert not swapped.dtype.isnative and np.array_equal(swapped, x)
    want = fmt.quantize(x, 0.5, backend=backend)
    got = fmt.quantize(swapped, 0.5, backend=backend)
    assert got.dtype == np.dtype(native) and got.dtype.isnative
    np.testing.assert_array_equal(bits(got), bits(want))
    np.testing.assert_array_equal(fmt.encode(swapped, 0.5, backend=backend), fmt.encode(x, 0.5, backend=backend))


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize == 8, reason="longdouble is float64 on this platform")
@pytest.mark.parametrize("name", sorted(NAMED))
def test_longdouble_is_refused_by_name(name):
    # converting to float64 first would round twice; the caller must choose
    fmt = NAMED[name]
    x = np.array([1.25], np.longdouble)
    for fn in (fmt.quantize, fmt.encode):
        for backend in ("numpy", "auto"):
            with pytest.raises(TypeError, match="x must hold .*longdouble|x must hold .*float128"):
                fn(x, backend=backend)
    with pytest.raises(TypeError, match="image"):
        image_to_levels(x)


@pytest.mark.parametrize("fmt,x,scale", [
    (INT4, np.float32([3.4e38]), 6e37),                # 3.4e38 / 6e37 -> level 6 -> 3.6e38 > float32 max
    (RADIX4_FP4, np.float16([6e4]), 7e4),              # -> magnitude 1 -> 7e4 > float16 max
    (UINT4, np.float16([-1.0, 6e4]), 5000.0),          # -> level 12 -> 60000 ok; 15 * 5000 would not be
    (E2M1, np.float32([3.4e38]), 6e37),                # -> 6 -> 3.6e38
    (FP8_E4M3, np.float16([6e4]), 150.0),              # -> 400 -> 60000 fits: no error (control)
    (INT4, np.array([1e308]), 1.7e308),                # -> level 1 fits float64 (control)
    (INT4, np.array([1.7e308]), 1e308),                # -> level 2 -> 2e308 overflows float64 itself
])
@pytest.mark.parametrize("backend", ["numpy", "auto"])
def test_finite_input_never_becomes_inf_under_raise(fmt, x, scale, backend):
    with np.errstate(over="ignore"):
        exact = fmt.decode(fmt.encode(x, scale, backend="numpy"), scale)
        fits = bool(np.isfinite(exact.astype(x.dtype)).all())
    if fits:
        out = fmt.quantize(x, scale, backend=backend)
        assert np.isfinite(out).all()
        return
    with pytest.raises(ValueError, match=r"x quantized with scale=.* beyond the largest finite"):
        fmt.quantize(x, scale, backend=backend)
    # 'propagate' lets Inf through, silently (no RuntimeWarning)
    with np.errstate(all="raise"):
        out = fmt.quantize(x, scale, nan_policy="propagate", backend=backend)
    assert np.isinf(out).any() and out.dtype == x.dtype


def test_overflow_cases_of_the_report_raise():
    # the two written-out cases, so the parametrized control logic above cannot hide them
    for backend in ("numpy", "auto"):
        with pytest.raises(ValueError, match="scale"):
            INT4.quantize(np.float32([3.4e38]), 6e37, backend=backend)
        with pytest.raises(ValueError, match="scale"):
            RADIX4_FP4.quantize(np.float16([6e4]), 7e4, backend=backend)


def test_grids_that_are_not_finite_are_refused():
    for bias in (-600, 600, -520, 1000):        # -520: 4**527 = 2**1054 overflows float64
        with pytest.raises(ValueError, match="bias"):
            RadixFP(4, 3, bias=bias)                   # 4**(e + 600) is Inf; 4**(e - 600) is 0
    assert RadixFP(4, 3, bias=-20).max == 4.0 ** 27    # large but finite, thresholds too
    with pytest.raises(ValueError, match="bias"):
        RadixFP(10, 3, bias=-300, rounding="log")      # magnitudes finite, a geometric-mean threshold not
    with pytest.raises(TypeError, match="bias"):
        RadixFP(4, 3, bias=1.5)
    with pytest.raises(ValueError, match="bias"):
        MiniFloat(5, 2, bias=-2000)
    with pytest.raises(ValueError, match="bias"):
        MiniFloat(5, 2, bias=1100)


def test_image_helpers_validate_their_own_arguments():
    with pytest.raises(ValueError, match="image") as info:
        image_to_levels([0.5, np.nan])
    assert "nan_policy" not in str(info.value)          # image_to_levels has no nan_policy
    for bad in (0, 16, -1, True, 2.0):
        with pytest.raises((ValueError, TypeError), match="bits"):
            levels_to_image([0], bits=bad)
        with pytest.raises((ValueError, TypeError), match="bits"):
            image_to_levels([0.5], bits=bad)
    with pytest.raises(ValueError, match="levels"):
        levels_to_image([8], bits=4)                   # 4-bit levels are -8..7
    np.testing.assert_array_equal(levels_to_image([-1, 0], bits=1), [0.0, 1.0])
    np.testing.assert_array_equal(levels_to_image(image_to_levels([0.0, 1.0], bits=15), bits=15), [0.0, 1.0])


def test_unpack_nibbles_refuses_bools():
    packed = np.array([0x21], np.uint8)
    for bad in (True, np.bool_(True), 1.0):
        with pytest.raises(TypeError, match="n must be"):
            unpack_nibbles(packed, bad)
    with pytest.raises(TypeError, match="signed must be a bool"):
        unpack_nibbles(packed, 2, signed=1)
    np.testing.assert_array_equal(unpack_nibbles(packed, np.int64(1)), [1])


@pytest.mark.parametrize("fmt", [INT4, UINT4, RADIX4_FP4, E2M1, FP8_E4M3, FP8_E5M2, FP16,
                                 STOCHASTIC[0], STOCHASTIC[2], STOCHASTIC[4]], ids=repr)
def test_documented_paths_raise_no_warnings(fmt):
    # x / scale beyond float64 saturates, and casts that overflow are reported (or silent Inf
    # under 'propagate'), never a RuntimeWarning
    cases = [(np.array([1e300, -1e300, 5e-324]), 1e-300), (np.array([1e300]), 1.0),
             (np.array([1.7e308, -np.finfo(np.float64).max]), 1.0),   # rounds up to 2**1024 in float64
             (np.float32([3.4e38, -3.4e38]), 6e37), (np.float16([6e4]), 7e4), (np.array([1e-300]), 1e300)]
    with np.errstate(all="raise"):
        for x, scale in cases:
            for op in (fmt.quantize, fmt.encode):
                for policy in ("raise", "propagate"):
                    try:
                        op(x, scale, rng=0, nan_policy=policy, backend="numpy")
                    except ValueError as err:
                        assert "x quantized with scale" in str(err)
