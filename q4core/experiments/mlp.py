"""A small numpy MLP trained with fake-quantized weights, activations and gradients, recording every step.

Network: ``x -> Linear -> ReLU -> ... -> Linear -> softmax cross-entropy``, float64, He-initialised from an
explicit seed, plain SGD with momentum.  Per Linear layer ``k`` the forward GEMM is ``Q_a(x_k) @ Q_w(W_k)``
and the backward GEMMs use the quantized output gradient ``Q_g(dL/dy_k)``:
``dL/dx_k = Q_g^in(dL/dy_k) Q_w(W_k)^T`` and ``dL/dW_k = Q_a(x_k)^T Q_g^w(dL/dy_k)``
(with two-phase rounding ``Q_g^in`` uses the even grid and ``Q_g^w`` the odd grid; without it both are the
same).  Rounding is straight-through in the backward pass.

:class:`Recipe` fields (all strings/bools, so a papermill parameters cell can carry them):

``weight``      ``none`` | ``fixed`` (scale from the first step's max |W|, then frozen) | ``current``
                (max |W| every step) | ``sawb`` (SAWB clip every step); symmetric INT4 levels -7..7.
``activation``  ``none`` | ``fixed`` | ``current`` (max every step) | ``pact`` (learned clip alpha per layer,
                replaces the ReLU); unsigned 0..15.  alpha learns with its own rate ``lr * pact_lr_scale``:
                its gradient is a sum over the few clipped entries of a batch-mean loss, ~1e-3 here, so at
                the weights' rate it would not move in a short run.  The network input (pixels in [0, 1]) is quantized
                with the same rule, PACT excepted (it uses its current max).
``grad``        ``none`` | ``int4`` (linear, scale max|g|/7 each step) | ``log10`` | ``radix2`` | ``radix4`` |
                ``radix8`` | ``radix16`` (sign + 3 exponent bits, magnitudes ``radix**-6 .. 1`` times the scale,
                nearest in the linear domain, ties away from zero) | ``e2m1`` (FP4 0..6).
``gradscale``   per-layer power-of-two GradScale (:class:`q4core.scaling.GradScale`) for the log/FP formats;
                off -> scale 1 (raw gradients: most underflow).
``tpr``         two-phase rounding (radix4 and radix16 only: the odd grid needs an integer sqrt(radix)).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .. import scaling
from ..formats import E2M1, INT4, UINT4, IntFormat, RadixFP
from ..metrics import quantization_snr_db

WEIGHT_MODES = ("none", "fixed", "current", "sawb")
ACTIVATION_MODES = ("none", "fixed", "current", "pact")
GRAD_FORMATS = ("none", "int4", "log10", "radix2", "radix4", "radix8", "radix16", "e2m1")
_W_LEVELS = 7.0    # symmetric -7..7 (SAWB's grid)
_A_LEVELS = 15.0   # unsigned 0..15


@dataclass
class Recipe:
    """What is quantized and how (see the module docstring)."""
    weight: str = "none"
    activation: str = "none"
    grad: str = "none"
    gradscale: bool = True
    tpr: bool = False
    pact_alpha: float = 4.0      # initial PACT clip
    pact_l2: float = 1e-4        # L2 on alpha
    pact_lr_scale: float = 100.0 # alpha's learning rate is lr * pact_lr_scale (its gradient is tiny, see below)

    def __post_init__(self):
        for name, allowed in (("weight", WEIGHT_MODES), ("activation", ACTIVATION_MODES), ("grad", GRAD_FORMATS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"recipe {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.tpr and self.grad not in ("radix4", "radix16"):
            raise ValueError(f"tpr needs grad radix4 or radix16 (an odd grid sqrt(radix) * radix**n), got {self.grad!r}")

    def to_dict(self):
        return dataclasses.asdict(self)


def grad_format(name, phase=0):
    """The number format of a ``grad`` recipe name (``None`` for none)."""
    if name == "none":
        return None
    if name == "int4":
        return INT4
    if name == "e2m1":
        return E2M1
    radix = 10 if name == "log10" else int(name[len("radix"):])
    return RadixFP(radix, 3, phase=phase)


def quantize_gradient(g, name, gradscale=None, phase=0):
    """``g`` quantized (fake) in format ``name``: int4 with scale max|g|/7; log/FP formats with scale
    ``gradscale.encode_scale()`` (1 without GradScale).  Returns float64."""
    fmt = grad_format(name, phase)
    if fmt is None:
        return np.asarray(g, dtype=np.float64)
    if isinstance(fmt, IntFormat):
        top = float(np.max(np.abs(g))) if g.size else 0.0
        return fmt.quantize(g, top / 7.0 if top > 0 else 1.0).astype(np.float64)
    scale = gradscale.encode_scale() if gradscale is not None else 1.0
    return fmt.quantize(g, scale).astype(np.float64)


def _int_quant(x, clip, levels, fmt):
    """Fake-quantize onto ``levels`` steps up to ``clip`` (values beyond clip saturate)."""
    if not clip > 0:
        return np.zeros_like(x)
    return fmt.quantize(x, clip / levels).astype(np.float64)


def weight_clips(w, fixed_clip=None):
    """Clip of each weight scaling for a tensor: ``{"fixed", "current", "sawb"}`` (fixed needs the frozen value)."""
    current = scaling.minmax_clip(w)
    return {"fixed": fixed_clip if fixed_clip is not None else current, "current": current,
            "sawb": scaling.sawb_clip(w)}


def _quant_w(w, clip):
    return _int_quant(np.clip(w, -clip, clip), clip, _W_LEVELS, INT4) if clip > 0 else np.zeros_like(w)


def _quant_a(a, clip):
    return _int_quant(np.clip(a, 0.0, clip), clip, _A_LEVELS, UINT4) if clip > 0 else np.zeros_like(a)


class MLP:
    """``sizes = (n_in, h1, ..., n_out)`` fully connected ReLU network with fake quantization."""

    def __init__(self, sizes, recipe=None, seed=0):
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ValueError(f"sizes must list at least an input and an output width, got {sizes!r}")
        self.sizes = tuple(int(s) for s in sizes)
        self.recipe = recipe if recipe is not None else Recipe()
        rng = np.random.default_rng(seed)
        self.weights = [rng.normal(0.0, math.sqrt(2.0 / a), size=(a, b)) for a, b in zip(sizes[:-1], sizes[1:])]
        self.biases = [np.zeros(b) for b in sizes[1:]]
        n = len(self.weights)
        self.fixed_w = [None] * n
        self.fixed_a = [None] * n
        self.alpha = [float(self.recipe.pact_alpha)] * n          # alpha[k] clips the input of layer k (k >= 1)
        self.gradscales = [scaling.GradScale(fmt_max=self._grad_max()) for _ in range(n)]
        self.last = {}

    def _grad_max(self):
        fmt = grad_format(self.recipe.grad)
        return 1.0 if fmt is None or isinstance(fmt, IntFormat) else float(fmt.max)

    def _act_clip(self, k, a):
        mode = self.recipe.activation
        if mode == "pact" and k > 0:
            return self.alpha[k]
        current = float(a.max()) if a.size else 0.0
        if mode == "fixed":
            if self.fixed_a[k] is None:
                self.fixed_a[k] = current
            return self.fixed_a[k]
        return current

    def forward(self, x, record=False):
        r = self.recipe
        cache = []
        a = np.asarray(x, dtype=np.float64)
        n = len(self.weights)
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            if r.activation == "none":
                aq = a
            else:
                aq = _quant_a(a, self._act_clip(k, a))
            if r.weight == "none":
                wq = w
            else:
                clips = weight_clips(w, self.fixed_w[k])
                if r.weight == "fixed" and self.fixed_w[k] is None:
                    self.fixed_w[k] = clips["current"]
                wq = _quant_w(w, clips[r.weight])
            z = aq @ wq + b
            cache.append((a, aq, wq, z))
            if k < n - 1:
                if r.activation == "pact":
                    a = scaling.pact_forward(z, self.alpha[k + 1])
                else:
                    a = np.maximum(z, 0.0)
        self.cache = cache
        return z

    def backward(self, grad_logits):
        r = self.recipe
        n = len(self.weights)
        grads_w, grads_b, grad_alpha = [None] * n, [None] * n, [0.0] * n
        g = grad_logits
        self.last_grads = [None] * n
        self.grad_scale_used = [None] * n
        for k in reversed(range(n)):
            a, aq, wq, z = self.cache[k]
            self.last_grads[k] = g
            gs = self.gradscales[k] if r.gradscale else None
            if gs is not None and r.grad not in ("none", "int4"):
                gs.initialise(float(np.max(np.abs(g))))
                self.grad_scale_used[k] = gs.scale   # the scale this step's gradient is quantized with
            g_in = quantize_gradient(g, r.grad, gs, phase=0)
            g_w = quantize_gradient(g, r.grad, gs, phase=1) if r.tpr else g_in
            if gs is not None and r.grad not in ("none", "int4"):
                gs.observe(float(np.max(np.abs(g))))
            grads_w[k] = aq.T @ g_w
            grads_b[k] = g_in.sum(axis=0)
            if k == 0:
                break
            grad_a = g_in @ wq.T
            z_prev = self.cache[k - 1][3]
            if r.activation == "pact":
                g, grad_alpha[k] = scaling.pact_backward(z_prev, self.alpha[k], grad_a, l2=r.pact_l2)
            else:
                pass_through = z_prev > 0
                if r.activation == "fixed":   # saturated values do not pass the straight-through estimator
                    pass_through &= z_prev < self._act_clip(k, z_prev)
                g = grad_a * pass_through
        return grads_w, grads_b, grad_alpha


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy and its gradient w.r.t. the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted)
    p /= p.sum(axis=1, keepdims=True)
    n = len(labels)
    loss = float(-np.mean(np.log(p[np.arange(n), labels] + 1e-300)))
    grad = p
    grad[np.arange(n), labels] -= 1.0
    return loss, grad / n


def accuracy(model, X, y, batch=512):
    """Fraction of ``X`` classified as ``y`` (the forward pass uses the model's quantization)."""
    hits = 0
    for i in range(0, len(y), batch):
        hits += int(np.sum(model.forward(X[i:i + batch]).argmax(axis=1) == y[i:i + batch]))
    return hits / len(y)


def train(dataset, recipe=None, hidden=(64, 64), epochs=5, batch_size=32, lr=0.05, momentum=0.9, seed=0,
          on_step=None):
    """Train an :class:`MLP` on a :class:`q4core.data.Dataset`; returns ``(model, history)``.

    ``on_step(step, model)`` runs after each forward/backward pass, before the update (the model's
    ``cache`` and ``last_grads`` hold this step's tensors).  ``history``: per-epoch ``loss``,
    ``val_accuracy``; final ``test_accuracy``; the recipe.  Deterministic for a given seed.
    """
    if not (isinstance(epochs, int) and epochs >= 1 and isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"epochs and batch_size must be positive ints, got {epochs!r}, {batch_size!r}")
    recipe = recipe if recipe is not None else Recipe()
    X = dataset.X_train.reshape(len(dataset.y_train), -1).astype(np.float64)
    y = dataset.y_train
    Xv = dataset.X_val.reshape(len(dataset.y_val), -1).astype(np.float64)
    Xt = dataset.X_test.reshape(len(dataset.y_test), -1).astype(np.float64)
    model = MLP((X.shape[1], *hidden, len(dataset.classes)), recipe, seed=seed)
    rng = np.random.default_rng(seed + 1)
    vel_w = [np.zeros_like(w) for w in model.weights]
    vel_b = [np.zeros_like(b) for b in model.biases]
    history = {"recipe": recipe.to_dict(), "loss": [], "val_accuracy": [], "diverged": False}
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(y))
        losses = []
        for i in range(0, len(y) - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            logits = model.forward(X[idx])
            loss, grad = cross_entropy(logits, y[idx])
            if not math.isfinite(loss):
                history["diverged"] = True
                break
            losses.append(loss)
            grads_w, grads_b, grad_alpha = model.backward(grad)
            if on_step is not None:
                on_step(step, model)
            for k in range(len(model.weights)):
                vel_w[k] = momentum * vel_w[k] - lr * grads_w[k]
                vel_b[k] = momentum * vel_b[k] - lr * grads_b[k]
                model.weights[k] += vel_w[k]
                model.biases[k] += vel_b[k]
                if recipe.activation == "pact" and k > 0:
                    model.alpha[k] = max(model.alpha[k] - lr * recipe.pact_lr_scale * grad_alpha[k], 1e-3)
            step += 1
        if history["diverged"]:
            break
        history["loss"].append(float(np.mean(losses)))
        history["val_accuracy"].append(accuracy(model, Xv, dataset.y_val))
    history["steps"] = step
    history["test_accuracy"] = accuracy(model, Xt, dataset.y_test)
    return model, history


def snr_or_nan(x, q):
    """Quantization SNR in dB, NaN for an all-zero tensor (nothing to measure)."""
    value = quantization_snr_db(x, q)
    return value if math.isfinite(value) else float("nan")


DATASETS = ("digits", "mnist")


def load_dataset(name, seed=0):
    """``"digits"`` (scikit-learn 8 x 8 digits, 1259 training images) or ``"mnist"`` (the 5k MNIST subset),
    pixels in [0, 1], from :mod:`q4core.data`."""
    from .. import data
    if name == "digits":
        return data.load_digits_8x8(seed=seed)
    if name == "mnist":
        return data.load_mnist_5k(seed=seed)
    raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}")


def step_to_step_change(series):
    """Median relative change ``|x[t+1] - x[t]| / |x[t]|`` of a per-step series (0 for fewer than 2 steps)."""
    x = np.asarray(series, dtype=np.float64)
    if x.size < 2:
        return 0.0
    return float(np.median(np.abs(np.diff(x)) / np.maximum(np.abs(x[:-1]), 1e-300)))
