"""round_to_float16 equals numpy's float16 round trip bit for bit."""
import numpy as np

from q4core.nn.half import round_to_float16


def _reference(x):
    with np.errstate(over="ignore"):
        return x.astype(np.float16).astype(np.float32)


def _same_bits(a, b):
    nan = np.isnan(a)
    assert np.array_equal(np.isnan(b), nan)
    np.testing.assert_array_equal(a[~nan].view(np.uint32), b[~nan].view(np.uint32))


def test_every_float16_value_midpoint_and_neighbour():
    h = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    f = np.unique(h[np.isfinite(h)].astype(np.float32))
    mid = ((f[:-1].astype(np.float64) + f[1:]) / 2).astype(np.float32)     # exact ties
    up, down = np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(-np.inf))
    x = np.concatenate([f, mid, up, down])
    _same_bits(_reference(x), round_to_float16(x))


def test_corner_cases():
    x = np.array([0.0, -0.0, 65504, 65519.996, 65520, -65520, 65536, 1e30, 3.4e38, -3.4e38, np.inf, -np.inf,
                  np.nan, -np.nan, 2 ** -24, 2 ** -25, -2 ** -25, 2 ** -25 * 1.0000001, 2 ** -14, 2 ** -14 * 0.99999,
                  1e-45, -1e-45, 1e-40], np.float32)
    _same_bits(_reference(x), round_to_float16(x))
    assert round_to_float16(np.zeros(0, np.float32)).shape == (0,)


def test_random_magnitudes_and_shapes():
    rng = np.random.default_rng(0)
    for scale in (1e-7, 1e-5, 1e-2, 1.0, 1e4, 1e6):
        x = (rng.standard_normal((37, 11)) * scale).astype(np.float32)
        y = round_to_float16(x)
        assert y.shape == x.shape and y.dtype == np.float32
        _same_bits(_reference(x), y)
    x = rng.standard_normal((8, 6)).astype(np.float32)[:, ::2]               # non-contiguous input
    _same_bits(_reference(x), round_to_float16(x))
