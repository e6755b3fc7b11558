"""Computations behind the paper notebooks (01-03): everything a notebook computes, so notebooks hold none.

Notebook 01 (image precision): :func:`image_precision_sweep`, :func:`worked_example`, :func:`grey_level_loss`.
"""
import numbers

import numpy as np

from .formats import image_to_levels, levels_to_image
from .metrics import psnr, ssim


def _check_bits(bits, name="bits"):
    if not isinstance(bits, (numbers.Integral, np.integer)) or not 1 <= bits <= 15:
        raise ValueError(f"{name} must be integers in [1, 15], got {bits!r}")
    return int(bits)


def quantize_image(image, bits):
    """``image`` in [0, 1] -> signed ``bits``-bit levels (rounded half to even) -> back to [0, 1]."""
    bits = _check_bits(bits)
    return levels_to_image(image_to_levels(image, bits), bits)


def image_precision_sweep(image, bits_list):
    """For each ``bits``: the quantized image, PSNR (dB), SSIM and the number of grey levels it uses.

    Returns ``{"bits": [...], "psnr_db": [...], "ssim": [...], "levels_used": [...], "levels_available": [...],
    "images": {bits: array}}``.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"image must be a 2-D grey image, got shape {image.shape}")
    out = {"bits": [], "psnr_db": [], "ssim": [], "levels_used": [], "levels_available": [], "images": {}}
    for bits in bits_list:
        bits = _check_bits(bits, "bits_list")
        levels = image_to_levels(image, bits)
        restored = levels_to_image(levels, bits)
        out["bits"].append(bits)
        out["psnr_db"].append(psnr(image, restored))
        out["ssim"].append(ssim(image, restored))
        out["levels_used"].append(int(np.unique(levels).size))
        out["levels_available"].append(2 if bits == 1 else 2 ** bits)
        out["images"][bits] = restored
    return out


def worked_example(value=0.3, bits=4):
    """The article's example step by step: ``value`` -> ``value * (hi - lo) + lo`` -> rounded level -> grey.

    For 0.3 at 4 bits: 0.3 * 15 - 8 = -3.5 -> -4 (ties to even) -> (-4 + 8) / 15 = 0.2667.
    """
    bits = _check_bits(bits)
    lo, hi = (-1, 0) if bits == 1 else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    level = int(image_to_levels(value, bits))
    return {"value": float(value), "bits": bits, "lo": lo, "hi": hi, "scaled": float(value) * (hi - lo) + lo,
            "level": level, "restored": float(levels_to_image(np.int16(level), bits)),
            "tie_rule": "round half to even"}


def grey_level_loss(image, bits, source_levels=256):
    """How the ``source_levels`` grey values of an 8-bit photo collapse onto the levels of ``bits`` bits.

    Returns the histogram of the original grey values (``counts_before``, indexed 0..source_levels-1), the
    histogram of the quantized image on the same grid (``counts_after``), how many distinct values each has,
    and the rounding error per pixel in units of 1/(source_levels-1) (``error_bins``, ``error_counts``).
    """
    bits = _check_bits(bits)
    image = np.asarray(image, dtype=np.float64)
    grid = source_levels - 1
    before = np.rint(image * grid).astype(np.int64)
    restored = quantize_image(image, bits)
    after = np.rint(restored * grid).astype(np.int64)
    error = (restored - image) * grid
    edge = max(1.0, float(np.ceil(np.abs(error).max())))
    bins = np.linspace(-edge, edge, 2 * int(edge) + 1 if edge <= 64 else 129)
    counts, bins = np.histogram(error, bins=bins)
    return {"bits": bits, "counts_before": np.bincount(before.ravel(), minlength=source_levels),
            "counts_after": np.bincount(after.ravel(), minlength=source_levels),
            "distinct_before": int(np.unique(before).size), "distinct_after": int(np.unique(after).size),
            "error_bins": bins, "error_counts": counts,
            "mean_abs_error": float(np.mean(np.abs(error))), "max_abs_error": float(np.max(np.abs(error)))}
