"""q4core.metrics: PSNR, SSIM (against a window-by-window reference), quantization SNR."""
import math

import numpy as np
import pytest

from q4core import metrics


def _ssim_by_windows(x, y, radius=5, sigma=1.5, data_range=1.0):
    """Direct definition: one weighted window at a time (slow, obvious)."""
    t = np.arange(-radius, radius + 1)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    size = 2 * radius + 1
    values = []
    for i in range(x.shape[0] - size + 1):
        for j in range(x.shape[1] - size + 1):
            a, b = x[i:i + size, j:j + size], y[i:i + size, j:j + size]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
            cov = (w * (a - ma) * (b - mb)).sum()
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("seed", range(4))
def test_ssim_matches_window_definition(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(11, 20, size=2))
    x = rng.random(shape)
    y = np.clip(x + rng.normal(scale=0.1 * (seed + 1), size=shape), 0, 1)
    assert metrics.ssim(x, y) == pytest.approx(_ssim_by_windows(x, y), rel=1e-10, abs=1e-12)


def test_ssim_properties():
    rng = np.random.default_rng(7)
    x = rng.random((32, 40))
    y = rng.random((32, 40))
    assert metrics.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ssim(x, y) == pytest.approx(metrics.ssim(y, x), rel=1e-12)
    assert metrics.ssim(x, y) < 0.2          # unrelated noise images
    assert metrics.ssim(x, np.clip(x + 0.01 * rng.normal(size=x.shape), 0, 1)) > metrics.ssim(x, y)
    value, local = metrics.ssim(x, y, return_map=True)
    assert local.shape == (32 - 10, 40 - 10) and value == pytest.approx(local.mean())


def test_psnr_known_values():
    x = np.zeros((4, 4))
    assert metrics.psnr(x, x + 0.1) == pytest.approx(20.0)        # MSE 0.01 -> 20 dB
    assert metrics.psnr(x, x + 1.0, data_range=255.0) == pytest.approx(20 * math.log10(255))
    assert metrics.psnr(x, x) == math.inf
    assert metrics.mse([1.0, 3.0], [0.0, 0.0]) == 5.0


def test_quantization_snr():
    x = np.array([1.0, -1.0, 2.0, -2.0])
    assert metrics.quantization_snr_db(x, x * 1.1) == pytest.approx(20.0)   # noise is 1/10 of the signal
    assert metrics.quantization_snr_db(x, x) == math.inf
    assert metrics.quantization_snr_db(np.zeros(3), np.ones(3)) == -math.inf


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="empty"):
        metrics.mse([], [])
    with pytest.raises(ValueError, match="test holds NaN"):
        metrics.psnr([0.0], [np.nan])
    with pytest.raises(ValueError, match="data_range"):
        metrics.psnr([0.0], [1.0], data_range=0)
    with pytest.raises(ValueError, match="2-D"):
        metrics.ssim(np.zeros(30), np.zeros(30))
    with pytest.raises(ValueError, match="window"):
        metrics.ssim(np.zeros((5, 30)), np.zeros((5, 30)))
    with pytest.raises(ValueError, match="quantized holds NaN"):
        metrics.quantization_snr_db([1.0], [np.inf])
