"""How much of a model's arithmetic a recipe puts in 4 bits: multiply-accumulates (MACs) per layer.

:func:`mac_counts` runs one forward pass of a copy of the model on one example and counts, for every GEMM
layer, ``M * K * N`` of each call (a recurrent layer's timesteps add up).  A training step runs three
products of that size per layer - forward ``x @ W``, grad-input ``dL/dy @ W^T``, grad-weight
``x^T @ dL/dy`` - and each is 4-bit when both its operands are in a 4-bit format under the layer's own
recipe (the one ``Module.set_policy`` gives it: ``first_last`` and ``overrides`` included).  Products
that are no GEMM layer's - attention's ``Q K^T`` and ``P V``, two activations - are reported by their
module as ``float_macs`` and counted as high precision, forward and backward (3x as well).
Element-wise work (bias, BatchNorm, pooling, gates) is not counted: it is not multiply-accumulate work of
the GEMM units the paper's hardware estimate is about.
"""
from __future__ import annotations

import copy

import numpy as np

from ..recipe import get_recipe
from ..recipe.spec import FLOAT_FORMATS

__all__ = ["mac_counts", "mac_share"]

#: the three products of a GEMM layer and the operand roles each multiplies
_PRODUCTS = {"forward": ("activation", "weight"), "grad_dx": ("grad_dx", "weight"),
             "grad_dw": ("activation", "grad_dw")}


def _four_bit(spec):
    return spec.format not in FLOAT_FORMATS


def _example(model, input_shape):
    from .layers import Embedding
    shape = (1,) + tuple(int(v) for v in input_shape)
    if any(isinstance(m, Embedding) for _, m in model.named_modules()):
        return np.zeros(shape, np.int64)
    return np.zeros(shape, np.float32)


def mac_counts(model, input_shape, recipe="q4"):
    """MACs of one training step on one example of shape ``input_shape`` (without the batch axis), per layer.

    Returns a list of dicts: ``name``, ``recipe`` (the layer's own recipe name, or ``fp32`` for the
    activation products), ``macs_forward`` and per product (``forward``, ``grad_dx``, ``grad_dw``) its MACs
    and whether it is 4-bit (``four_bit``: a dict product -> bool).  The model itself is left untouched."""
    recipe = get_recipe(recipe)
    net = copy.deepcopy(model)
    net.set_policy(recipe)
    own = {name: layer.gemm.recipe for name, layer in net.gemm_layers()}
    net.set_policy("fp32")          # counting needs shapes only; no quantizer state is touched
    net.eval()
    counted = {name: 0 for name in own}
    for name, layer in net.gemm_layers():
        forward = layer.gemm.forward

        def counting(x, wop, inp=None, data=None, _forward=forward, _name=name):
            rows = (data if data is not None else x).shape[0]
            K, N = wop.w.shape
            counted[_name] += int(rows) * int(K) * int(N)
            return _forward(x, wop, inp=inp, data=data)

        layer.gemm.forward = counting
    net.forward(_example(net, input_shape))
    rows = []
    for name, r in own.items():
        four = {p: _four_bit(getattr(r, a)) and _four_bit(getattr(r, b)) for p, (a, b) in _PRODUCTS.items()}
        if r.blockscaled_forward != "block":      # a block-scaled recipe with a 16/32-bit forward GEMM
            four["forward"] = False
        rows.append({"name": name, "recipe": r.name, "macs_forward": counted[name], "four_bit": four})
    for name, module in net.named_modules():
        extra = getattr(module, "float_macs", 0)
        if extra:
            rows.append({"name": f"{name} (activation products)", "recipe": "fp32", "macs_forward": int(extra),
                         "four_bit": dict.fromkeys(_PRODUCTS, False)})
    return rows


def mac_share(model, input_shape, recipe="q4"):
    """The fraction of a training step's MACs done in 4-bit under ``recipe`` (see :func:`mac_counts`).

    Returns ``{"share", "forward_share", "four_bit_macs", "total_macs", "layers"}``: ``share`` over the
    three products of every layer, ``forward_share`` over the forward products alone (inference), MACs per
    example, and ``layers`` the rows of :func:`mac_counts`."""
    rows = mac_counts(model, input_shape, recipe)
    total = 3 * sum(r["macs_forward"] for r in rows)
    four = sum(r["macs_forward"] for r in rows for p in _PRODUCTS if r["four_bit"][p])
    fwd_total = sum(r["macs_forward"] for r in rows)
    fwd_four = sum(r["macs_forward"] for r in rows if r["four_bit"]["forward"])
    if total == 0:
        raise ValueError("the model has no multiply-accumulate work to share out (no GEMM layer ran)")
    return {"share": four / total, "forward_share": fwd_four / fwd_total, "four_bit_macs": four,
            "total_macs": total, "layers": rows}
