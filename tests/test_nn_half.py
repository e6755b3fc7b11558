"""round_to_float16 equals numpy's float16 round trip bit for bit, in its compiled loop and in its numpy
passes (the reference and fallback)."""
import numpy as np
import pytest

from q4core.nn import half


def _numpy_passes(x):
    return half._round_numpy(np.ascontiguousarray(x, dtype=np.float32))


ROUNDERS = [pytest.param(half.round_to_float16, id="public"), pytest.param(_numpy_passes, id="numpy")]


def _reference(x):
    with np.errstate(over="ignore"):
        return x.astype(np.float16).astype(np.float32)


def _same_bits(a, b):
    nan = np.isnan(a)
    assert np.array_equal(np.isnan(b), nan)
    np.testing.assert_array_equal(a[~nan].view(np.uint32), b[~nan].view(np.uint32))


@pytest.mark.parametrize("round_to_float16", ROUNDERS)
def test_every_float16_value_midpoint_and_neighbour(round_to_float16):
    h = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    f = np.unique(h[np.isfinite(h)].astype(np.float32))
    mid = ((f[:-1].astype(np.float64) + f[1:]) / 2).astype(np.float32)     # exact ties
    up, down = np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(-np.inf))
    x = np.concatenate([f, mid, up, down])
    _same_bits(_reference(x), round_to_float16(x))


@pytest.mark.parametrize("round_to_float16", ROUNDERS)
def test_corner_cases(round_to_float16):
    x = np.array([0.0, -0.0, 65504, 65519.996, 65520, -65520, 65536, 1e30, 3.4e38, -3.4e38, np.inf, -np.inf,
                  np.nan, -np.nan, 2 ** -24, 2 ** -25, -2 ** -25, 2 ** -25 * 1.0000001, 2 ** -14, 2 ** -14 * 0.99999,
                  1e-45, -1e-45, 1e-40], np.float32)
    _same_bits(_reference(x), round_to_float16(x))
    assert round_to_float16(np.zeros(0, np.float32)).shape == (0,)


@pytest.mark.parametrize("round_to_float16", ROUNDERS)
def test_random_magnitudes_and_shapes(round_to_float16):
    rng = np.random.default_rng(0)
    for scale in (1e-7, 1e-5, 1e-2, 1.0, 1e4, 1e6):
        x = (rng.standard_normal((37, 11)) * scale).astype(np.float32)
        y = round_to_float16(x)
        assert y.shape == x.shape and y.dtype == np.float32
        _same_bits(_reference(x), y)
    x = rng.standard_normal((8, 6)).astype(np.float32)[:, ::2]               # non-contiguous input
    _same_bits(_reference(x), round_to_float16(x))


@pytest.mark.skipif(half._quant is None, reason="compiled core not built")
def test_compiled_loop_equals_numpy_passes_on_every_kind_of_bit_pattern():
    """Random 32-bit patterns (NaN payloads, infinities, subnormals, both signs) and the patterns next to
    every rounding boundary of the C loop give the same bits as the numpy passes, NaN bits included."""
    rng = np.random.default_rng(7)
    edges = np.array([0x38800000, 0x477FEFFF, 0x7F800000, 0x33000000, 0x0, 0x1000], np.int64)
    near = (edges[:, None] + np.arange(-4096, 4097)[None, :]).ravel()
    bits = np.concatenate([rng.integers(0, 2 ** 32, 1 << 20, dtype=np.uint64),
                           np.clip(near, 0, 0x7FFFFFFF).astype(np.uint64)]).astype(np.uint32)
    bits = np.concatenate([bits, bits ^ np.uint32(0x80000000)])
    x = bits.view(np.float32)
    compiled = half._quant.round_f16(x.copy())
    with np.errstate(invalid="ignore", over="ignore"):
        expected = half._round_numpy(x.copy())
    np.testing.assert_array_equal(compiled.view(np.uint32), expected.view(np.uint32))


@pytest.mark.skipif(half._quant is None, reason="compiled core not built")
def test_compiled_loop_refuses_other_dtypes():
    with pytest.raises(TypeError, match="x must be float32"):
        half._quant.round_f16(np.zeros(3, np.float64))
