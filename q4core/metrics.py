"""Image and signal fidelity measures used by the notebooks: PSNR, SSIM (numpy) and quantization SNR.

All take float arrays, validate them (same shape, finite, non-empty) and return Python floats.
"""
import math

import numpy as np


def _pair(reference, test, name_ref="reference", name_test="test"):
    ref = np.asarray(reference, dtype=np.float64)
    tst = np.asarray(test, dtype=np.float64)
    if ref.shape != tst.shape:
        raise ValueError(f"{name_ref} and {name_test} must have the same shape, got {ref.shape} and {tst.shape}")
    if ref.size == 0:
        raise ValueError(f"{name_ref} is empty")
    for arr, name in ((ref, name_ref), (tst, name_test)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} holds NaN or Inf")
    return ref, tst


def mse(reference, test):
    """Mean squared error."""
    ref, tst = _pair(reference, test)
    return float(np.mean((ref - tst) ** 2))


def psnr(reference, test, data_range=1.0):
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range**2 / MSE)``; ``inf`` when identical."""
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range!r}")
    err = mse(reference, test)
    return math.inf if err == 0 else float(10.0 * math.log10(data_range ** 2 / err))


def quantization_snr_db(signal, quantized):
    """Signal-to-quantization-noise ratio in dB: ``10 log10(sum x^2 / sum (x - q)^2)``.

    ``inf`` when the quantization is exact; ``-inf`` when the signal is all zeros but the error is not.
    """
    x, q = _pair(signal, quantized, "signal", "quantized")
    noise = float(np.sum((x - q) ** 2))
    power = float(np.sum(x ** 2))
    if noise == 0:
        return math.inf
    if power == 0:
        return -math.inf
    return float(10.0 * math.log10(power / noise))


def _gaussian_kernel(sigma, radius):
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _filter_valid(image, kernel):
    """Separable 2-D correlation keeping only fully covered pixels ('valid')."""
    rows = np.apply_along_axis(np.convolve, 1, image, kernel, mode="valid")
    return np.apply_along_axis(np.convolve, 0, rows, kernel, mode="valid")


def ssim(reference, test, data_range=1.0, sigma=1.5, radius=5, k1=0.01, k2=0.03, return_map=False):
    """Structural similarity (Wang, Bovik, Sheikh & Simoncelli 2004) of two grey images.

    Gaussian window (``sigma`` = 1.5, 11 x 11 for ``radius`` = 5), constants ``C1 = (k1 L)^2``,
    ``C2 = (k2 L)^2`` with ``L = data_range``, population (biased) local variances, mean over the 'valid'
    region (pixels whose whole window lies inside the image).  1.0 for identical images.
    ``return_map=True`` also returns the local SSIM map.
    """
    ref, tst = _pair(reference, test)
    if ref.ndim != 2:
        raise ValueError(f"reference must be a 2-D grey image, got {ref.ndim} dimensions")
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range!r}")
    if not (isinstance(radius, int) and radius >= 1) or not sigma > 0:
        raise ValueError(f"radius must be a positive int and sigma positive, got {radius!r}, {sigma!r}")
    if min(ref.shape) < 2 * radius + 1:
        raise ValueError(f"image {ref.shape} is smaller than the {2 * radius + 1}-pixel window")
    kernel = _gaussian_kernel(sigma, radius)
    mu_x, mu_y = _filter_valid(ref, kernel), _filter_valid(tst, kernel)
    var_x = _filter_valid(ref * ref, kernel) - mu_x ** 2
    var_y = _filter_valid(tst * tst, kernel) - mu_y ** 2
    cov = _filter_valid(ref * tst, kernel) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    local = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    value = float(np.mean(local))
    return (value, local) if return_map else value
