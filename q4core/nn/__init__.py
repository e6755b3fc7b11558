"""Numpy neural-network layers whose GEMMs run in FP32, 16-bit, FP8 or real 4-bit integer arithmetic.

A model is a tree of :class:`Module` objects with ``forward(x)`` / ``backward(grad_y)``; every GEMM
layer (Linear, Conv2d, Conv1d, the LSTM's two projections, attention's projections) owns a
:class:`QuantGemm` that runs its products under the precision recipe of :mod:`q4core.recipe`::

    from q4core.nn import SGD, softmax_cross_entropy
    from q4core.nn.models import build_model
    from q4core.recipe import get_recipe
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    model.set_policy(get_recipe("q4"))        # or "fp32", "fp16", "fp8", "q4+no-tpr", a dict, a Recipe
    opt = SGD(model.named_parameters(), lr=0.05)
    loss, grad = softmax_cross_entropy(model.forward(x), y)
    model.zero_grad(); model.backward(grad); model.add_regularisation(); opt.step()

For analysis, ``model.gemm_layers()`` lists ``(name, layer)``; ``layer.gemm.last`` holds the last
input, weight and output gradient it saw and ``layer.gemm.quantizer_state()`` its weight/activation/
gradient scales, PACT alpha and GradScale scale.  :func:`q4core.train.train` wraps the loop.
"""
from .attention import CausalSelfAttention
from .core import Module, Parameter, Sequential
from .layers import (
                     AvgPool2d,
                     BatchNorm,
                     Conv1d,
                     Conv2d,
                     Dropout,
                     Embedding,
                     Flatten,
                     GlobalAvgPool,
                     LayerNorm,
                     Linear,
                     MaxPool1d,
                     MaxPool2d,
                     ReLU,
)
from .losses import softmax, softmax_cross_entropy
from .optim import SGD, Adam, lr_schedule
from .qgemm import QuantGemm
from .recurrent import GRU, LSTM

__all__ = ["Module", "Parameter", "Sequential", "Linear", "Conv2d", "Conv1d", "ReLU", "MaxPool2d",
           "AvgPool2d", "MaxPool1d", "GlobalAvgPool", "Flatten", "BatchNorm", "Dropout", "Embedding",
           "LayerNorm", "CausalSelfAttention", "LSTM", "GRU", "softmax", "softmax_cross_entropy", "SGD", "Adam",
           "lr_schedule", "QuantGemm"]
