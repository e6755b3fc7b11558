"""Model builders for the three domains of the paper: vision, speech and language.

Every builder takes an explicit ``seed`` (all initial weights come from ``numpy.random.default_rng(seed)``)
and returns a :class:`~q4core.nn.core.Module` whose first and last GEMM layers are the ones the
precision policy keeps high by default.
"""
from __future__ import annotations

import numpy as np

from .attention import CausalSelfAttention
from .core import Module, Parameter, Sequential
from .layers import (
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
    _check_positive_int,
)
from .recurrent import GRU, LSTM

__all__ = ["Transpose", "TimeMean", "Residual", "BasicBlock", "PositionEmbedding", "mlp", "cnn", "resnet",
           "speech_cnn", "speech_lstm", "char_lstm", "char_transformer", "build_model"]


class Transpose(Module):
    """Permute the axes after the batch axis, e.g. (N, T, F) -> (N, F, T) with ``axes=(0, 2, 1)``."""

    def __init__(self, axes):
        self.axes = tuple(axes)
        self.inverse = tuple(np.argsort(self.axes))

    def forward(self, x):
        return np.ascontiguousarray(x.transpose(self.axes))

    def backward(self, grad_y):
        return np.ascontiguousarray(grad_y.transpose(self.inverse))


class TimeMean(Module):
    """Mean over axis 1: (N, T, H) -> (N, H)."""

    def forward(self, x):
        self._T = x.shape[1]
        return x.mean(axis=1, dtype=x.dtype)

    def backward(self, grad_y):
        return np.repeat(grad_y[:, None] / self._T, self._T, axis=1)


class Residual(Module):
    """``x + body(x)``."""

    def __init__(self, *layers):
        self.body = Sequential(*layers)

    def forward(self, x):
        return x + self.body.forward(x)

    def backward(self, grad_y):
        return grad_y + self.body.backward(grad_y)


class BasicBlock(Module):
    """ResNet's basic block: ``ReLU(BN(conv3x3(ReLU(BN(conv3x3(x))))) + shortcut(x))``; the shortcut is the
    identity, or a 1x1 convolution + BN where the block changes the channels or strides (He et al. 2016,
    option B).  Every convolution is a GEMM layer of the precision policy."""

    def __init__(self, in_channels, out_channels, stride=1, rng=0):
        s = _seeds(rng)
        self.body = Sequential(Conv2d(in_channels, out_channels, 3, stride, 1, bias=False, rng=next(s)),
                               BatchNorm(out_channels), ReLU(),
                               Conv2d(out_channels, out_channels, 3, 1, 1, bias=False, rng=next(s)),
                               BatchNorm(out_channels))
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = Sequential(Conv2d(in_channels, out_channels, 1, stride, 0, bias=False, rng=next(s)),
                                       BatchNorm(out_channels))
        self.relu = ReLU()

    def forward(self, x):
        skip = x if self.shortcut is None else self.shortcut.forward(x)
        return self.relu.forward(self.body.forward(x) + skip)

    def backward(self, grad_y):
        g = self.relu.backward(grad_y)
        gx = self.body.backward(g)
        return gx + (g if self.shortcut is None else self.shortcut.backward(g))


class PositionEmbedding(Module):
    """Adds a learned vector per position to (N, T, D), T <= ``max_len``."""

    def __init__(self, max_len, dim, seed=0):
        self.weight = Parameter(np.random.default_rng(seed).normal(0, 0.02, (max_len, dim)))

    def forward(self, x):
        T = x.shape[1]
        if T > self.weight.data.shape[0]:
            raise ValueError(f"sequence length {T} exceeds the position table ({self.weight.data.shape[0]})")
        self._T = T
        return x + self.weight.data[:T]

    def backward(self, grad_y):
        self.weight.grad[:self._T] += grad_y.sum(axis=0)
        return grad_y


def _seeds(seed):
    ss = np.random.SeedSequence(seed)
    return iter(int(s.generate_state(1)[0]) for s in ss.spawn(64))


def mlp(input_dim, n_classes, hidden=(256, 128), batchnorm=True, dropout=0.0, seed=0):
    """Flatten -> [Linear -> BatchNorm -> ReLU (-> Dropout)] * len(hidden) -> Linear."""
    s = _seeds(seed)
    layers, d = [Flatten()], _check_positive_int(input_dim, "input_dim")
    for h in hidden:
        layers.append(Linear(d, h, rng=next(s)))
        if batchnorm:
            layers.append(BatchNorm(h))
        layers.append(ReLU())
        if dropout:
            layers.append(Dropout(dropout, rng=next(s)))
        d = h
    layers.append(Linear(d, _check_positive_int(n_classes, "n_classes"), rng=next(s)))
    return Sequential(*layers)


def cnn(in_shape, n_classes, channels=(16, 32), hidden=64, seed=0):
    """Small CNN for (C, H, W) images (28x28 MNIST, 8x8 digits): [3x3 conv -> BN -> ReLU -> 2x2 max pool]
    per entry of ``channels``, then Linear -> BN -> ReLU -> Linear."""
    if len(in_shape) != 3:
        raise ValueError(f"cnn needs in_shape (C, H, W), got {in_shape!r}")
    s = _seeds(seed)
    C, H, W = (int(v) for v in in_shape)
    layers = []
    for ch in channels:
        layers += [Conv2d(C, ch, 3, padding=1, rng=next(s)), BatchNorm(ch), ReLU()]
        if H >= 2 and W >= 2:
            layers.append(MaxPool2d(2))
            H, W = H // 2, W // 2
        C = ch
    layers += [Flatten(), Linear(C * H * W, hidden, rng=next(s)), BatchNorm(hidden), ReLU(),
               Linear(hidden, n_classes, rng=next(s))]
    return Sequential(*layers)


def resnet(in_shape, n_classes, widths=(16, 32), blocks=2, seed=0):
    """Small ResNet for (C, H, W) images: a 3x3 stem conv -> BN -> ReLU (then 2x2 max pooling on images of
    16 pixels or more, as ResNet's stem pools), ``blocks`` :class:`BasicBlock` per entry of ``widths`` (each
    stage after the first starts with stride 2 and a 1x1 projection shortcut), global average pooling,
    Linear.  The defaults give 10 convolutions (stem, 8 in blocks, 1 projection) and 11 GEMM layers: under
    ``first_last`` only the stem and the classifier stay high.  (No depthwise-separable MobileNet block:
    the engine's Conv2d has no channel groups.)"""
    if len(in_shape) != 3:
        raise ValueError(f"resnet needs in_shape (C, H, W), got {in_shape!r}")
    widths = tuple(_check_positive_int(w, "widths") for w in widths)
    if not widths:
        raise ValueError("resnet needs at least one stage width")
    blocks = _check_positive_int(blocks, "blocks")
    s = _seeds(seed)
    C, H, W = (int(v) for v in in_shape)
    layers = [Conv2d(C, widths[0], 3, padding=1, bias=False, rng=next(s)), BatchNorm(widths[0]), ReLU()]
    if H >= 16 and W >= 16:
        layers.append(MaxPool2d(2))
    C = widths[0]
    for stage, width in enumerate(widths):
        for b in range(blocks):
            layers.append(BasicBlock(C, width, stride=2 if (stage and not b) else 1, rng=next(s)))
            C = width
    layers += [GlobalAvgPool(), Linear(C, _check_positive_int(n_classes, "n_classes"), rng=next(s))]
    return Sequential(*layers)


def speech_cnn(n_frames, n_features, n_classes, channels=(64, 64), kernel=5, seed=0):
    """(N, T, F) log-mel features -> 1-D convolutions over time (features as channels) -> mean over time
    -> Linear."""
    s = _seeds(seed)
    layers, C = [Transpose((0, 2, 1))], int(n_features)
    T = int(n_frames)
    for i, ch in enumerate(channels):
        layers += [Conv1d(C, ch, kernel, padding=kernel // 2, rng=next(s)), BatchNorm(ch), ReLU()]
        if T >= 2 and i < len(channels) - 1:
            layers.append(MaxPool1d(2))
            T //= 2
        C = ch
    layers += [GlobalAvgPool(), Linear(C, n_classes, rng=next(s))]
    return Sequential(*layers)


_CELLS = {"lstm": LSTM, "gru": GRU}


def speech_lstm(n_features, n_classes, hidden=64, cell="lstm", seed=0):
    """(N, T, F) -> Linear(F, hidden) -> ReLU -> LSTM (or GRU) -> mean over time -> Linear."""
    s = _seeds(seed)
    return Sequential(Linear(n_features, hidden, rng=next(s)), ReLU(), _CELLS[cell](hidden, hidden, rng=next(s)),
                      TimeMean(), Linear(hidden, n_classes, rng=next(s)))


def char_lstm(vocab_size, embed=32, hidden=128, cell="lstm", seed=0):
    """Character language model: Embedding -> LSTM (or GRU) -> Linear to next-character logits (N, T, V)."""
    s = _seeds(seed)
    return Sequential(Embedding(vocab_size, embed, rng=next(s)), _CELLS[cell](embed, hidden, rng=next(s)),
                      Linear(hidden, vocab_size, rng=next(s)))


def char_transformer(vocab_size, max_len=64, dim=64, heads=4, layers=2, mlp_ratio=4, seed=0):
    """Pre-norm character Transformer: Embedding + positions -> ``layers`` x [x + Attn(LN x);
    x + MLP(LN x)] -> LN -> Linear."""
    s = _seeds(seed)
    mods = [Embedding(vocab_size, dim, rng=next(s)), PositionEmbedding(max_len, dim, seed=next(s))]
    for _ in range(layers):
        mods.append(Residual(LayerNorm(dim), CausalSelfAttention(dim, heads, rng=next(s))))
        mods.append(Residual(LayerNorm(dim), Linear(dim, mlp_ratio * dim, rng=next(s)), ReLU(),
                             Linear(mlp_ratio * dim, dim, rng=next(s))))
    mods += [LayerNorm(dim), Linear(dim, vocab_size, rng=next(s))]
    return Sequential(*mods)


def build_model(name, input_shape, n_classes, seed=0, **kw):
    """Builder by name: ``mlp``, ``cnn``, ``resnet`` (images), ``speech_cnn``, ``speech_lstm``, ``speech_gru``
    (N x T x F), ``char_lstm``, ``char_gru``, ``char_transformer`` (``n_classes`` = vocabulary size)."""
    input_shape = tuple(int(v) for v in input_shape)
    if name == "mlp":
        return mlp(int(np.prod(input_shape)), n_classes, seed=seed, **kw)
    if name == "cnn":
        if len(input_shape) == 2:
            input_shape = (1,) + input_shape
        if len(input_shape) != 3:
            raise ValueError(f"model 'cnn' needs images (H x W or C x H x W per example), got {input_shape}")
        return cnn(input_shape, n_classes, seed=seed, **kw)
    if name == "resnet":
        if len(input_shape) == 2:
            input_shape = (1,) + input_shape
        if len(input_shape) != 3:
            raise ValueError(f"model 'resnet' needs images (H x W or C x H x W per example), got {input_shape}")
        return resnet(input_shape, n_classes, seed=seed, **kw)
    if name == "speech_cnn":
        return speech_cnn(input_shape[0], input_shape[1], n_classes, seed=seed, **kw)
    if name in ("speech_lstm", "speech_gru"):
        return speech_lstm(input_shape[1], n_classes, cell=name[-4:].strip("_"), seed=seed, **kw)
    if name in ("char_lstm", "char_gru"):
        return char_lstm(n_classes, cell=name[-4:].strip("_"), seed=seed, **kw)
    if name == "char_transformer":
        return char_transformer(n_classes, max_len=input_shape[0], seed=seed, **kw)
    raise ValueError(f"unknown model {name!r}; choose mlp, cnn, resnet, speech_cnn, speech_lstm, speech_gru, "
                     "char_lstm, char_gru, char_transformer")
