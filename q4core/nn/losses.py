"""Softmax cross-entropy (mean over examples), computed stably in float64."""
from __future__ import annotations

import numpy as np

__all__ = ["softmax_cross_entropy", "softmax"]


def softmax(logits, axis=-1):
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of ``logits`` (..., C) against integer ``labels`` (...) and its gradient.

    Returns ``(loss, grad)``: loss a Python float (nats), grad float32 of the logits' shape.
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels shape {labels.shape} must equal the logits shape {logits.shape} without "
                         "its last (class) axis")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    C = logits.shape[-1]
    if labels.size and (labels.min() < 0 or labels.max() >= C):
        raise ValueError(f"labels must lie in [0, {C}), found [{labels.min()}, {labels.max()}]")
    if labels.size == 0:
        raise ValueError("softmax_cross_entropy needs at least one example")
    z = logits.reshape(-1, C).astype(np.float64)
    y = labels.reshape(-1)
    z = z - z.max(axis=1, keepdims=True)
    logsum = np.log(np.exp(z).sum(axis=1))
    n = y.size
    loss = float(np.mean(logsum - z[np.arange(n), y]))
    p = np.exp(z - logsum[:, None])
    p[np.arange(n), y] -= 1.0
    return loss, (p / n).astype(np.float32).reshape(logits.shape)
