"""Numpy neural-network layers whose GEMMs run in FP32, 16-bit, FP8 or real 4-bit integer arithmetic.

A model is a tree of :class:`Module` objects with ``forward(x)`` / ``backward(grad_y)``; every GEMM
layer (Linear, Conv2d, Conv1d, the LSTM's two projections, attention's projections) owns a
:class:`QuantGemm` that runs its products under the mode given by a :class:`PrecisionConfig`::

    from q4core.nn import SGD, make_policy, softmax_cross_entropy
    from q4core.nn.models import build_model
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    model.set_policy(make_policy("q4"))              # or "fp32", "fp16", "fp8", a dict, ablations...
    opt = SGD(model.named_parameters(), lr=0.05)
    loss, grad = softmax_cross_entropy(model.forward(x), y)
    model.zero_grad(); model.backward(grad); opt.step()

For analysis, ``model.gemm_layers()`` lists ``(name, layer)``; ``layer.gemm.last`` holds the last
input, weight and output gradient it saw and ``layer.gemm.quantizer_state()`` its weight/activation/
gradient scales, PACT alpha and GradScale scale.  :func:`q4core.train.train` wraps the loop.
"""
from .core import Module, Parameter, Sequential
from .attention import CausalSelfAttention
from .recurrent import GRU, LSTM
from .layers import (AvgPool2d, BatchNorm, Conv1d, Conv2d, Dropout, Embedding, Flatten, GlobalAvgPool,
                     LayerNorm, Linear, MaxPool1d, MaxPool2d, ReLU)
from .losses import softmax, softmax_cross_entropy
from .optim import SGD, Adam, lr_schedule
from .policy import ABLATIONS, PRESETS, PrecisionConfig, make_policy
from .qgemm import QuantGemm

__all__ = ["Module", "Parameter", "Sequential", "Linear", "Conv2d", "Conv1d", "ReLU", "MaxPool2d",
           "AvgPool2d", "MaxPool1d", "GlobalAvgPool", "Flatten", "BatchNorm", "Dropout", "Embedding",
           "LayerNorm", "CausalSelfAttention", "LSTM", "GRU", "softmax", "softmax_cross_entropy", "SGD", "Adam", "lr_schedule", "PrecisionConfig",
           "PRESETS", "ABLATIONS", "make_policy", "QuantGemm"]
