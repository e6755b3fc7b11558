"""Optimizers on FP32 master weights and learning-rate schedules.

The optimizer always updates the float32 ``Parameter.data`` (the master copy); quantized copies are
made from it at every forward pass.  Weight decay is L2 (added to the gradient) for SGD and decoupled
(AdamW style) for Adam; parameters with ``decay=False`` (norm gains/biases, PACT alpha) are exempt.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["SGD", "Adam", "lr_schedule"]


def lr_schedule(kind, base_lr, total_steps, warmup=0, step_size=None, gamma=0.1, min_lr=0.0):
    """A function ``step -> learning rate``.

    ``kind``: ``"constant"``, ``"cosine"`` (from ``base_lr`` to ``min_lr`` over ``total_steps``) or
    ``"step"`` (multiply by ``gamma`` every ``step_size`` steps).  ``warmup`` steps ramp linearly first.
    """
    if kind not in ("constant", "cosine", "step"):
        raise ValueError(f"schedule kind must be 'constant', 'cosine' or 'step', got {kind!r}")
    if not base_lr > 0:
        raise ValueError(f"base_lr must be positive, got {base_lr!r}")
    total_steps = max(int(total_steps), 1)
    if kind == "step" and (step_size is None or step_size < 1):
        raise ValueError("the 'step' schedule needs step_size >= 1")

    def lr(step):
        if warmup and step < warmup:
            return base_lr * (step + 1) / warmup
        if kind == "constant":
            return base_lr
        if kind == "step":
            return base_lr * gamma ** (step // step_size)
        t = min(max(step - warmup, 0) / max(total_steps - warmup, 1), 1.0)
        return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t))
    return lr


class _Optimizer:
    def __init__(self, named_params, lr, weight_decay):
        self.named = list(named_params)
        if not self.named:
            raise ValueError("the optimizer got no parameters")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative, got {weight_decay!r}")
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.steps = 0

    def state_dict(self):
        out = {"steps": np.array(self.steps)}
        for key, slots in self._slots().items():
            for name, arr in slots.items():
                out[f"{key}/{name}"] = arr.copy()
        return out

    def check_state_dict(self, state):
        """Raise ``ValueError`` (naming the entries and shapes) unless ``state`` fits this optimizer exactly:
        a scalar integer ``steps`` and every slot with this optimizer's shape - no broadcasting, nothing
        missing, nothing extra."""
        problems = []
        expected = {"steps"}
        if "steps" not in state:
            problems.append("missing entry 'steps'")
        else:
            steps = np.asarray(state["steps"])
            if steps.shape != () or steps.dtype.kind not in "iu" or int(steps) < 0:
                problems.append(f"'steps' must be a non-negative integer scalar, got {steps.dtype} shape {steps.shape}")
        for key, slots in self._slots().items():
            for name, arr in slots.items():
                entry = f"{key}/{name}"
                expected.add(entry)
                if entry not in state:
                    problems.append(f"missing entry {entry!r} (shape {arr.shape})")
                    continue
                value = np.asarray(state[entry])
                if value.shape != arr.shape:
                    problems.append(f"{entry!r}: shape {value.shape} in the state, {arr.shape} in the optimizer")
                elif value.dtype.kind not in "fiu":
                    problems.append(f"{entry!r}: dtype {value.dtype} is not numeric")
                elif not np.isfinite(value).all():
                    problems.append(f"{entry!r} holds NaN or Inf")
        extra = sorted(set(state) - expected)
        if extra:
            problems.append(f"unexpected entries {', '.join(map(repr, extra))}")
        if problems:
            raise ValueError(f"optimizer state does not fit this {type(self).__name__}: " + "; ".join(problems))

    def load_state_dict(self, state):
        """Load a :meth:`state_dict`; all or nothing (:meth:`check_state_dict` first, then assign)."""
        self.check_state_dict(state)
        self.steps = int(state["steps"])
        for key, slots in self._slots().items():
            for name in slots:
                slots[name][...] = state[f"{key}/{name}"]


class SGD(_Optimizer):
    """SGD with (heavy-ball) momentum: ``v = mu v + (g + wd w)``, ``w -= lr v``."""

    def __init__(self, named_params, lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=False):
        super().__init__(named_params, lr, weight_decay)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.velocity = {n: np.zeros_like(p.data) for n, p in self.named}

    def _slots(self):
        return {"velocity": self.velocity}

    def step(self, lr=None):
        lr = np.float32(self.lr if lr is None else lr)
        mu = np.float32(self.momentum)
        for name, p in self.named:
            g = p.grad
            if self.weight_decay and p.decay:
                g = g + np.float32(self.weight_decay) * p.data
            v = self.velocity[name]
            v *= mu
            v += g
            p.data -= lr * (g + mu * v if self.nesterov else v)
        self.steps += 1


class Adam(_Optimizer):
    """Adam with bias correction and decoupled weight decay."""

    def __init__(self, named_params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(named_params, lr, weight_decay)
        self.b1, self.b2 = (float(b) for b in betas)
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas!r}")
        self.eps = float(eps)
        self.m = {n: np.zeros_like(p.data) for n, p in self.named}
        self.v = {n: np.zeros_like(p.data) for n, p in self.named}

    def _slots(self):
        return {"m": self.m, "v": self.v}

    def step(self, lr=None):
        lr = self.lr if lr is None else lr
        self.steps += 1
        c1 = 1.0 - self.b1 ** self.steps
        c2 = 1.0 - self.b2 ** self.steps
        for name, p in self.named:
            g = p.grad
            m, v = self.m[name], self.v[name]
            m *= np.float32(self.b1)
            m += np.float32(1 - self.b1) * g
            v *= np.float32(self.b2)
            v += np.float32(1 - self.b2) * g * g
            if self.weight_decay and p.decay:
                p.data -= np.float32(lr * self.weight_decay) * p.data
            p.data -= (np.float32(lr / c1) * m / (np.sqrt(v / np.float32(c2)) + np.float32(self.eps))).astype(
                np.float32)
