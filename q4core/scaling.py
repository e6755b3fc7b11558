"""Per-step range estimators of 4-bit training: min/max, SAWB, PACT, GradScale, two-phase rounding.

Each estimator turns a tensor into the *scale* of a 4-bit grid (value = scale * level).  They are
recomputed every training step ("current" scaling), which is what lets a 4-bit grid follow a
range that drifts from step to step.  All arithmetic is float64 so a scale is a deterministic
function of its tensor.

* :func:`minmax_clip` - clip at max |x| (the plain estimator, an ablation of SAWB/PACT);
* :func:`sawb_clip` - statistics-aware weight binning, ``c1*sqrt(E[w^2]) + c2*E[|w|]`` with
  ``c1 = 12.68, c2 = -12.80`` (the 4-bit coefficients);
* :func:`int_scale` - the grid step that maps a clip value onto symmetric signed levels
  (-7..7, ``clip / 7``) or unsigned levels (0..15, ``clip / 15``);
* :func:`pact_forward` / :func:`pact_backward` - PACT's learned clip ``y = clip(x, 0, alpha)``
  with the straight-through gradient ``dy/dalpha = 1`` where ``x >= alpha``, plus L2 on alpha;
* :class:`GradScale` - per-layer power-of-two gradient scale: after each use, if the scaled
  max |g| is above the format max the scale halves, at or below half of it the scale doubles;
* :func:`two_phase_encode` - the incoming gradient rounded on the even grid ``{4**n}`` and on the
  odd grid ``{2 * 4**n}`` (TPR), returned as two code arrays.
"""
from __future__ import annotations

import math

import numpy as np

from .formats import NonFiniteError, RadixFP

__all__ = ["SAWB_C1", "SAWB_C2", "minmax_clip", "sawb_clip", "sawb_from_moments", "int_scale", "pact_forward",
           "pact_backward", "GradScale", "two_phase_encode"]

SAWB_C1 = 12.68
SAWB_C2 = -12.80


def _finite_array(x, name):
    arr = np.asarray(x, dtype=np.float64)
    if arr.size and not np.isfinite(arr).all():
        raise NonFiniteError(f"{name} contains NaN or Inf; a range cannot be estimated from it")
    return arr


def minmax_clip(x, unsigned=False):
    """max |x| (or max x for ``unsigned``); 0.0 for an empty or all-zero tensor.

    Computed from ``x.max()`` and ``x.min()`` in the input's own dtype (exact: max and min round
    nothing), so no float64 copy of a large activation is made; NaN or Inf anywhere is refused."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"x must be a real array, got dtype {arr.dtype}")
    if arr.size == 0:
        return 0.0
    hi, lo = float(arr.max()), float(arr.min())
    if not (math.isfinite(hi) and math.isfinite(lo)):
        raise NonFiniteError("x contains NaN or Inf; a range cannot be estimated from it")
    return max(hi, 0.0) if unsigned else max(abs(hi), abs(lo))


def sawb_clip(w, c1=SAWB_C1, c2=SAWB_C2):
    """SAWB clip ``c1 * sqrt(mean(w**2)) + c2 * mean(|w|)``.

    The formula is fitted to bell-shaped weights; for flat distributions it can be <= 0 or
    exceed max |w|, so the result is clamped into ``(0, max|w|]`` (max |w| when it is not
    positive).  Returns 0.0 for an empty or all-zero tensor.
    """
    arr = _finite_array(w, "w")
    if arr.size == 0:
        return 0.0
    a = np.abs(arr)
    top = float(a.max())
    if top == 0.0:
        return 0.0
    return sawb_from_moments(float(np.mean(arr * arr)), float(np.mean(a)), top, c1, c2)


def sawb_from_moments(mean_sq, mean_abs, top, c1=SAWB_C1, c2=SAWB_C2):
    """SAWB's clip from ``mean(w**2)``, ``mean(|w|)`` and ``max|w| = top > 0`` (shared by
    :func:`sawb_clip` and the compiled :func:`q4core.quant.sawb_clip`, so both round alike)."""
    clip = c1 * math.sqrt(mean_sq) + c2 * mean_abs
    if not clip > 0.0 or clip > top:
        return top
    return clip


def int_scale(clip, unsigned=False, bits=4):
    """Grid step for a clip value: ``clip / (2**(bits-1) - 1)`` signed (symmetric levels, -7..7 for
    4 bits), ``clip / (2**bits - 1)`` unsigned (0..15).  A zero clip gives scale 1.0 (all levels 0)."""
    clip = float(clip)
    if not math.isfinite(clip) or clip < 0:
        raise ValueError(f"clip must be a finite non-negative number, got {clip!r}")
    if clip == 0.0:
        return 1.0
    return clip / ((1 << bits) - 1 if unsigned else (1 << (bits - 1)) - 1)


def pact_forward(x, alpha):
    """PACT clip ``min(max(x, 0), alpha)`` (float32 result for float32 input)."""
    alpha = float(alpha)
    if not alpha > 0.0 or not math.isfinite(alpha):
        raise ValueError(f"PACT alpha must be a finite positive number, got {alpha!r}")
    x = np.asarray(x)
    return np.minimum(np.maximum(x, 0), np.asarray(alpha, dtype=x.dtype))


def pact_backward(x, alpha, grad_y, l2=0.0):
    """Gradients of PACT: ``(dL/dx, dL/dalpha)``.

    Straight-through: ``dL/dx = dL/dy`` where ``0 <= x < alpha``, else 0; ``dL/dalpha`` is the sum of
    ``dL/dy`` where ``x >= alpha`` plus ``l2 * alpha`` (L2 regularisation on alpha).
    """
    x = np.asarray(x)
    grad_y = np.asarray(grad_y)
    if x.shape != grad_y.shape:
        raise ValueError(f"grad_y shape {grad_y.shape} does not match x shape {x.shape}")
    over = x >= alpha
    grad_x = np.where((x >= 0) & ~over, grad_y, np.zeros((), grad_y.dtype))
    grad_alpha = float(np.sum(grad_y[over], dtype=np.float64)) + l2 * float(alpha)
    return grad_x, grad_alpha


class GradScale:
    """Per-layer power-of-two gradient scale.

    The gradient is multiplied by ``scale`` before it is rounded to the format (equivalently it is
    encoded with format scale ``1 / scale``, exact because ``scale`` is a power of two).
    :meth:`observe` takes the max |g| of the *unscaled* gradient just used: if ``max|g| * scale``
    is above ``fmt_max`` the scale halves, if it is at or below ``fmt_max / 2`` it doubles, else it
    stays.  The first observation sets the scale directly to the largest power of two that keeps
    ``max|g| * scale <= fmt_max``, so training does not spend its first steps walking to it.
    An all-zero gradient leaves the scale unchanged.
    """

    def __init__(self, fmt_max=1.0, scale=None, min_exp=-126, max_exp=126):
        if not fmt_max > 0:
            raise ValueError(f"fmt_max must be positive, got {fmt_max!r}")
        self.fmt_max = float(fmt_max)
        self.min_exp, self.max_exp = int(min_exp), int(max_exp)
        self.exp = None if scale is None else self._exp_of(scale)

    @staticmethod
    def _exp_of(scale):
        m, e = math.frexp(float(scale))
        if m != 0.5:
            raise ValueError(f"GradScale scale must be a power of two, got {scale!r}")
        return e - 1

    @property
    def scale(self):
        """Current scale (1.0 before the first observation)."""
        return 2.0 ** (0 if self.exp is None else self.exp)

    def encode_scale(self):
        """The format scale to encode with: ``1 / scale``."""
        return 2.0 ** -(0 if self.exp is None else self.exp)

    def initialise(self, max_abs):
        """Set the scale from a first max |g| (no-op once set or for a zero/non-finite max)."""
        if self.exp is None and max_abs > 0 and math.isfinite(max_abs):
            self.exp = int(math.floor(math.log2(self.fmt_max / max_abs)))
            while max_abs * 2.0 ** self.exp > self.fmt_max:   # log2 may round up by one
                self.exp -= 1
            self.exp = min(max(self.exp, self.min_exp), self.max_exp)

    def observe(self, max_abs):
        """Update from the max |g| of the gradient just quantized with the current scale."""
        max_abs = float(max_abs)
        if not (max_abs > 0 and math.isfinite(max_abs)):
            return
        if self.exp is None:
            self.initialise(max_abs)
            return
        scaled = max_abs * self.scale
        if scaled > self.fmt_max:
            self.exp = max(self.exp - 1, self.min_exp)
        elif scaled <= self.fmt_max / 2:
            self.exp = min(self.exp + 1, self.max_exp)

    def state(self):
        return {"exp": self.exp}

    def load_state(self, state):
        self.exp = state["exp"]

    def __repr__(self):
        return f"GradScale(scale=2**{self.exp}, fmt_max={self.fmt_max})"


def two_phase_encode(g, scale, radix=4, exp_bits=3, rounding="nearest", rng=None, backend="auto"):
    """Two-phase rounding: codes of ``g`` on the even grid (phase 0) and the odd grid (phase 1).

    Returns ``(codes_even, codes_odd)``, uint8 ``sign << 3 | e`` as :class:`~q4core.formats.RadixFP`
    encodes them (ties away from zero in the linear domain).
    """
    even = RadixFP(radix, exp_bits, phase=0, rounding=rounding)
    odd = RadixFP(radix, exp_bits, phase=1, rounding=rounding)
    return (even.encode(g, scale, rng=rng, backend=backend),
            odd.encode(g, scale, rng=rng, backend=backend))
