"""Numpy neural-network layers whose GEMMs run in FP32, 16-bit or real 4-bit integer arithmetic."""
from .core import Module, Parameter, Sequential
from .attention import CausalSelfAttention
from .recurrent import LSTM
from .layers import (AvgPool2d, BatchNorm, Conv1d, Conv2d, Dropout, Embedding, Flatten, GlobalAvgPool,
                     LayerNorm, Linear, MaxPool1d, MaxPool2d, ReLU)
from .losses import softmax, softmax_cross_entropy
from .optim import SGD, Adam, lr_schedule
from .policy import ABLATIONS, PRESETS, PrecisionConfig, make_policy
from .qgemm import QuantGemm

__all__ = ["Module", "Parameter", "Sequential", "Linear", "Conv2d", "Conv1d", "ReLU", "MaxPool2d",
           "AvgPool2d", "MaxPool1d", "GlobalAvgPool", "Flatten", "BatchNorm", "Dropout", "Embedding",
           "LayerNorm", "CausalSelfAttention", "LSTM", "softmax", "softmax_cross_entropy", "SGD", "Adam", "lr_schedule", "PrecisionConfig",
           "PRESETS", "ABLATIONS", "make_policy", "QuantGemm"]
