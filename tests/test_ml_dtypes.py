"""Every MiniFloat preset against an independent implementation, bit for bit.

ml_dtypes (a test-only dependency) implements the OCP / IEEE small floats:

    E2M1     <-> ml_dtypes.float4_e2m1fn
    FP8_E4M3 <-> ml_dtypes.float8_e4m3fn
    FP8_E5M2 <-> ml_dtypes.float8_e5m2
    FP16     <-> numpy.float16

Code layout: our codes are the bit patterns ``s | E | M``, the same as ml_dtypes' storage for the
8- and 16-bit types.  float4_e2m1fn is stored one value per byte, the 4-bit pattern in the low
nibble (sign = bit 3); ``to_storage`` / ``from_storage`` below map between the two explicitly and
check that mapping on every code.

Two behaviours differ on purpose, and are tested as ours, not ml_dtypes':

* beyond the largest finite value our non-IEEE formats saturate (a quantizer with a scale wants
  that); ml_dtypes' E4M3FN cast gives NaN above 464, its E2M1 cast saturates like ours;
* ml_dtypes before 0.7 casts float64 to the 8- and 4-bit types through float32, so a float64 value
  near a tie can round twice; ours rounds float64 once (ml_dtypes 0.7.0 rounds these once too).
  Comparisons with float64 input therefore use values that float32 holds exactly, and one test pins
  the double-rounding case down for either ml_dtypes.
"""
import ml_dtypes
import numpy as np
import pytest

from q4core.formats import E2M1, FP8_E4M3, FP8_E5M2, FP16

PRESETS = {
    "E2M1": (E2M1, ml_dtypes.float4_e2m1fn),
    "FP8_E4M3": (FP8_E4M3, ml_dtypes.float8_e4m3fn),
    "FP8_E5M2": (FP8_E5M2, ml_dtypes.float8_e5m2),
    "FP16": (FP16, np.float16),
}
STORAGE = {1: np.uint8, 2: np.uint16}


def bits(a):
    a = np.asarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def to_storage(codes, dt):
    """Our codes -> an array of ml_dtypes' type ``dt`` with those bit patterns."""
    storage = STORAGE[np.dtype(dt).itemsize]
    return np.asarray(codes).astype(storage).view(dt)


def from_storage(values):
    """ml_dtypes' values -> our codes (their bit patterns)."""
    values = np.asarray(values)
    return values.view(STORAGE[values.dtype.itemsize])


def cast(x, dt):
    """ml_dtypes' round-to-nearest-even cast (overflow warnings are part of its contract)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(x).astype(dt)


def grid_points(fmt):
    """Every finite non-negative value of fmt, ascending."""
    v = fmt.values
    return v[np.isfinite(v) & (v >= 0)]


def in_range_inputs(fmt, dtype, seed):
    """Random values over the whole range, exact ties between neighbours and the points just
    beside them, subnormals, +-0 and +-max - all exactly representable in float32."""
    rng = np.random.default_rng(seed)
    g = grid_points(fmt)
    smallest, top = g[1], g[-1]
    n = 20_000
    mag = np.exp2(rng.uniform(np.log2(smallest) - 2, np.log2(top), n))
    rand = (mag * rng.choice([-1.0, 1.0], n)).astype(np.float32)
    ties = ((g[:-1] + g[1:]) / 2).astype(np.float32)          # exact midpoints (few bits)
    assert np.array_equal(ties.astype(np.float64), (g[:-1] + g[1:]) / 2)
    near = np.concatenate([np.nextafter(ties, np.float32(0)), np.nextafter(ties, np.float32(np.inf))])
    subnormal = g[g < 2.0 ** fmt.emin].astype(np.float32)      # includes 0
    fixed = np.array([0.0, -0.0, top, -top, smallest, -smallest, smallest / 2, smallest / 4], np.float32)
    x = np.concatenate([rand, ties, -ties, near, -near, subnormal, -subnormal, g.astype(np.float32),
                        -g.astype(np.float32), fixed])
    return x.astype(dtype)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_code_decodes_to_ml_dtypes_value(name):
    fmt, dt = PRESETS[name]
    codes = np.arange(1 << fmt.bits)
    theirs = to_storage(codes, dt)
    # the explicit layout map: their storage of our code c is c itself (float4: low nibble)
    np.testing.assert_array_equal(from_storage(theirs), codes)
    ref = theirs.astype(np.float64)
    ours = fmt.decode(codes)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    keep = ~np.isnan(ref)
    np.testing.assert_array_equal(bits(ours[keep]), bits(ref[keep]))      # -0.0 and +-Inf included
    # round trip: encoding their value gives back the code
    np.testing.assert_array_equal(fmt.encode(ref[keep], backend="numpy", nan_policy="propagate"),
                                  codes[keep])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_max_and_values_match_ml_dtypes(name):
    fmt, dt = PRESETS[name]
    info = ml_dtypes.finfo(dt)
    assert fmt.max == float(info.max)
    assert 2.0 ** fmt.emin == float(info.smallest_normal)
    assert 2.0 ** (fmt.emin - fmt.man_bits) == float(info.smallest_subnormal)
    every = to_storage(np.arange(1 << fmt.bits), dt).astype(np.float64)
    every = every[~np.isnan(every)]
    np.testing.assert_array_equal(fmt.values, np.unique(every))          # one zero, sorted, no NaN


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_quantize_in_range_equals_ml_dtypes_cast(name, dtype):
    fmt, dt = PRESETS[name]
    x = in_range_inputs(fmt, dtype, seed=len(name))
    want = cast(x, dt)
    np.testing.assert_array_equal(fmt.encode(x, backend="numpy"), from_storage(want))
    np.testing.assert_array_equal(bits(fmt.quantize(x, backend="numpy")), bits(want.astype(dtype)))


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("k", [-20, -3, 5])
def test_power_of_two_scale_is_an_exact_shift(name, k):
    # ml_dtypes has no scale; with a power of two, x / s and q * s are exact, so
    # quantize(x, s) == cast(x / s) * s bit for bit (no scaled value leaves float32 here)
    fmt, dt = PRESETS[name]
    s = 2.0 ** k
    x = (in_range_inputs(fmt, np.float64, seed=k + 40) * s).astype(np.float32)
    want = (cast(x.astype(np.float64) / s, dt).astype(np.float64) * s).astype(np.float32)
    np.testing.assert_array_equal(bits(fmt.quantize(x, s, backend="numpy")), bits(want))


@pytest.mark.parametrize("name", ["FP8_E5M2", "FP16"])
def test_ieee_overflow_inf_and_nan_equal_ml_dtypes(name):
    # the IEEE formats overflow to Inf, hold Inf and encode NaN as the quiet NaN, like ml_dtypes
    fmt, dt = PRESETS[name]
    top = fmt.max
    ulp = 2.0 ** (np.floor(np.log2(top)) - fmt.man_bits)
    x = np.array([top + ulp / 2, top + ulp / 2 - ulp / 8, 2 * top, 1e30, np.inf, -np.inf, np.nan, -np.nan,
                  -(top + ulp / 2)], np.float32)
    want = cast(x, dt)
    np.testing.assert_array_equal(fmt.encode(x, backend="numpy"), from_storage(want))
    np.testing.assert_array_equal(bits(fmt.quantize(x, backend="numpy")), bits(want.astype(np.float32)))


def test_e4m3_beyond_max_saturates_where_ml_dtypes_gives_nan():
    # intentional: a quantizer saturates; E4M3FN's cast keeps 448 up to the tie at 464 (half to
    # even: 448 has the even mantissa) and gives NaN above it
    x = np.array([448.0, 460.0, 464.0, 464.0625, 479.0, 1e4, 3e38, -500.0], np.float32)
    theirs = cast(x, ml_dtypes.float8_e4m3fn).astype(np.float64)
    np.testing.assert_array_equal(theirs[:3], [448, 448, 448])
    assert np.isnan(theirs[3:]).all()
    np.testing.assert_array_equal(FP8_E4M3.quantize(x, backend="numpy"), [448] * 7 + [-448])
    np.testing.assert_array_equal(FP8_E4M3.encode(x, backend="numpy"), [0x7E] * 7 + [0xFE])
    # NaN: same code as ml_dtypes (sign kept); Inf: ml_dtypes gives NaN, we saturate like 1e30
    special = np.array([np.nan, -np.nan, np.inf, -np.inf], np.float32)
    theirs = from_storage(cast(special, ml_dtypes.float8_e4m3fn))
    np.testing.assert_array_equal(theirs, [0x7F, 0xFF, 0x7F, 0xFF])
    np.testing.assert_array_equal(FP8_E4M3.encode(special, backend="numpy", nan_policy="propagate"),
                                  [0x7F, 0xFF, 0x7E, 0xFE])


def test_e2m1_saturates_like_ml_dtypes_but_refuses_nan():
    x = np.array([6.0, 6.5, 7.0, 100.0, 3e38, -1e30], np.float32)
    want = cast(x, ml_dtypes.float4_e2m1fn)
    np.testing.assert_array_equal(from_storage(want), [7, 7, 7, 7, 7, 15])   # ml_dtypes saturates too
    np.testing.assert_array_equal(E2M1.encode(x, backend="numpy"), from_storage(want))
    # intentional: E2M1 has no NaN; ml_dtypes turns NaN into -0 (code 8), which would hide it
    assert from_storage(cast(np.array([np.nan], np.float32), ml_dtypes.float4_e2m1fn))[0] == 8
    with pytest.raises(ValueError, match="NaN"):
        E2M1.encode([np.nan], backend="numpy", nan_policy="propagate")
    assert np.isnan(E2M1.quantize([np.nan], backend="numpy", nan_policy="propagate")).all()


@pytest.mark.parametrize("name,tie", [("E2M1", 1.25), ("FP8_E4M3", 1.0625), ("FP8_E5M2", 1.125)])
def test_float64_rounds_once_where_ml_dtypes_rounds_twice(name, tie):
    # intentional: float64 input just above a tie between 1 and the next value goes up in one
    # correct rounding (ours); ml_dtypes before 0.7 rounds it to float32 first (onto the tie), then to
    # even (1.0); ml_dtypes 0.7.0 rounds it once, as we do.  Either way nothing else is allowed.
    fmt, dt = PRESETS[name]
    x = np.array([tie + 2.0 ** -40])
    ours = fmt.quantize(x, backend="numpy")[0]
    assert ours == 2 * tie - 1.0
    theirs = cast(x, dt).astype(np.float64)[0]
    via_float32 = cast(x.astype(np.float32), dt).astype(np.float64)[0]
    assert via_float32 == 1.0                        # the double rounding, spelled out
    assert theirs in (via_float32, ours), theirs
    # numpy's float16 rounds float64 once, and FP16 agrees with it everywhere (test_formats.py)
    assert FP16.quantize(np.array([1 + 2.0 ** -11 + 2.0 ** -40]), backend="numpy")[0] == \
        np.float16(1 + 2.0 ** -11 + 2.0 ** -40)
