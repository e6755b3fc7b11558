"""Parameters and the module tree: naming, parameter lists, train/eval, state dicts."""
from __future__ import annotations

import numpy as np

__all__ = ["Parameter", "Module", "Sequential"]


class Parameter:
    """An FP32 master tensor and its gradient.  ``decay=False`` exempts it from weight decay."""

    def __init__(self, data, decay=True):
        self.data = np.array(data, dtype=np.float32, order="C")
        self.grad = np.zeros_like(self.data)
        self.decay = bool(decay)

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, decay={self.decay})"


class Module:
    """Base of every layer: ``forward(x)`` caches what ``backward(grad_y)`` needs and returns the
    output; ``backward`` accumulates parameter gradients into ``Parameter.grad`` and returns
    ``dL/dx``.  Children and parameters are found from attributes (lists of modules included),
    in definition order, and named by attribute path (``"layers.0.weight"``).

    ``input_grad``: whether ``backward`` must return ``dL/dx``.  The trainer sets it False on a model whose
    input is data; the GEMM layers (Linear, Conv2d) then skip the ``dL/dx`` GEMM (and col2im) and return
    None, unless PACT needs that gradient for its clip's.  The parameter gradients are the same either way."""

    training = True
    input_grad = True

    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad_y):  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    def children(self):
        for key, value in vars(self).items():
            if isinstance(value, Module):
                yield key, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{key}.{i}", item

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self.children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix=""):
        for key, value in vars(self).items():
            if isinstance(value, Parameter):
                yield (f"{prefix}.{key}" if prefix else key), value
        for name, child in self.children():
            yield from child.named_parameters(f"{prefix}.{name}" if prefix else name)

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def zero_grad(self):
        for p in self.parameters():
            p.grad[...] = 0.0

    def train(self, mode=True):
        for _, m in self.named_modules():
            m.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def gemm_layers(self):
        """``(name, layer)`` of every layer that owns a GEMM (has a ``gemm`` attribute), in order."""
        from .qgemm import QuantGemm
        return [(n, m) for n, m in self.named_modules() if isinstance(getattr(m, "gemm", None), QuantGemm)]

    def policy_layer_names(self):
        """Names of the layers "first" and "last" count over: every GEMM layer and every layer that marks
        itself ``counts_as_layer`` (an embedding table: a language model's first layer is its embedding,
        so ``first_last`` keeps that lookup - not the first GEMM after it - as the high-precision first
        layer, as the paper does)."""
        from .qgemm import QuantGemm
        return [n for n, m in self.named_modules()
                if isinstance(getattr(m, "gemm", None), QuantGemm) or getattr(m, "counts_as_layer", False)]

    def set_policy(self, recipe):
        """Give every GEMM layer its recipe: ``recipe`` is a registered name, a dict or a
        :class:`~q4core.recipe.Recipe`; the first/last layers (of :meth:`policy_layer_names`) and
        ``overrides`` get theirs.  The layers share
        one :class:`~q4core.nn.qgemm.PrecisionState` (the global loss scale), kept as ``precision_state``."""
        from ..recipe import get_recipe
        from .qgemm import PrecisionState
        recipe = get_recipe(recipe)
        layers = self.gemm_layers()
        names = {n for n, _ in layers}
        unknown = sorted(set(recipe.overrides) - names)
        if unknown:
            raise ValueError(f"overrides name layers the model does not have: {unknown}; GEMM layers: "
                             f"{sorted(names)}")
        ends = self.policy_layer_names()
        state = PrecisionState()
        for index, (name, layer) in enumerate(layers):
            own = recipe.layer_recipe(name, ends.index(name), len(ends))
            layer.gemm.configure(own, own.name, index, name, state)
        self.policy, self.precision_state = recipe, state
        return self

    def add_regularisation(self):
        """Add the recipe's regularisation gradients (PACT's L2 on alpha) to the unscaled gradients; call it
        after backward (and after dividing out a loss scale), before the optimizer step."""
        for _, layer in self.gemm_layers():
            layer.gemm.add_regularisation()

    def state_dict(self):
        """Parameters and buffers (running statistics, quantizer state) as float arrays by name."""
        out = {f"param/{n}": p.data.copy() for n, p in self.named_parameters()}
        for name, module in self.named_modules():
            for key, value in module.buffers().items():
                out[f"buffer/{name}/{key}" if name else f"buffer//{key}"] = np.asarray(value).copy()
        return out

    def load_state_dict(self, state):
        params = dict(self.named_parameters())
        for name, p in params.items():
            key = f"param/{name}"
            if key not in state:
                raise KeyError(f"state has no entry {key!r}")
            value = np.asarray(state[key])
            if value.shape != p.data.shape:
                raise ValueError(f"{key}: shape {value.shape} does not match the model's {p.data.shape}")
            p.data[...] = value
        for name, module in self.named_modules():
            prefix = f"buffer/{name}/" if name else "buffer//"
            mine = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and "/" not in
                    k[len(prefix):]}
            if mine:
                try:
                    module.load_buffers(mine)
                except (KeyError, TypeError, ValueError, OverflowError) as exc:   # missing, or not a number it takes
                    raise ValueError(f"{prefix[:-1]}: its buffers {sorted(mine)} do not fit the module "
                                     f"({type(exc).__name__}: {exc})") from exc

    def buffers(self):
        """Non-parameter state worth saving (override)."""
        return {}

    def load_buffers(self, buffers):
        pass


class Sequential(Module):
    """Layers applied in order; backward in reverse order."""

    def __init__(self, *layers):
        self.layers = list(layers)

    @property
    def input_grad(self):
        return self.__dict__.get("_input_grad", True)

    @input_grad.setter
    def input_grad(self, value):
        # the first layer with parameters gets the flag: the layers before it (Flatten, Dropout) have none,
        # so backward can stop where a layer returns None
        self._input_grad = bool(value)
        for layer in self.layers:
            if next(iter(layer.named_parameters()), None) is not None:
                layer.input_grad = bool(value)
                break

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_y):
        for layer in reversed(self.layers):
            grad_y = layer.backward(grad_y)
            if grad_y is None:      # input_grad False: the layers before this one have no parameters
                return None
        return grad_y
