"""The models like the paper's: the residual CNN, and which GEMM layers each model keeps high under q4."""
import numpy as np
import pytest

from q4core.nn import Conv2d, Embedding, Linear, Sequential
from q4core.nn.models import BasicBlock, build_model
from tests.test_nn_gradcheck import _check


def test_basic_block_backward_matches_finite_differences():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5))
    block = BasicBlock(3, 4, stride=2, rng=1)
    _check(block, x, reset=lambda: block.train())
    identity = BasicBlock(3, 3, stride=1, rng=2)
    assert identity.shortcut is None
    _check(identity, x)


def test_resnet_shape_depth_and_four_bit_layers():
    model = build_model("resnet", (28, 28), 10, seed=0)
    convs = [n for n, m in model.named_modules() if isinstance(m, Conv2d)]
    assert len(convs) == 10
    model.set_policy("q4")
    modes = [layer.gemm.mode for _, layer in model.gemm_layers()]
    assert modes == ["fp16"] + ["q4"] * 9 + ["fp16"]
    x = np.random.default_rng(1).random((2, 1, 28, 28)).astype(np.float32)
    y = model.forward(x)
    assert y.shape == (2, 10)
    gx = model.backward(np.ones_like(y))
    assert gx.shape == x.shape and np.isfinite(gx).all()
    # 8x8 digits: no stem pooling, stride 2 in the second stage
    assert build_model("resnet", (8, 8), 10, seed=0).forward(x[:, :, :8, :8]).shape == (2, 10)


def test_resnet_argument_errors():
    with pytest.raises(ValueError, match="model .resnet. needs images"):
        build_model("resnet", (5,), 3)
    with pytest.raises(ValueError, match="blocks"):
        build_model("resnet", (8, 8), 3, blocks=0)
    with pytest.raises(ValueError, match="at least one stage"):
        build_model("resnet", (8, 8), 3, widths=())


@pytest.mark.parametrize("name,shape,high", [
    # speech LSTM: Linear front end and classifier high; LSTM input-to-hidden and hidden-to-hidden 4-bit
    ("speech_lstm", (12, 6), {"layers.0", "layers.4"}),
    # language models: the embedding is the first layer, so every GEMM but the head is 4-bit
    ("char_lstm", (9,), {"layers.2"}),
    ("char_transformer", (9,), {"layers.7"}),
])
def test_sequence_models_quantize_every_gemm_but_first_and_last(name, shape, high):
    model = build_model(name, shape, 7, seed=0).set_policy("q4")
    modes = {n: layer.gemm.mode for n, layer in model.gemm_layers()}
    assert {n for n, m in modes.items() if m != "q4"} == high
    assert all(m == "fp16" for n, m in modes.items() if n in high)
    if name == "char_lstm":
        assert {"layers.1.input", "layers.1.hidden"} <= {n for n, m in modes.items() if m == "q4"}
    if name == "char_transformer":
        q4 = {n for n, m in modes.items() if m == "q4"}
        assert sum(n.endswith(("qkv", "proj")) for n in q4) == 4 and len(q4) == 8


def test_embedding_counts_as_the_first_layer():
    model = Sequential(Embedding(5, 4, rng=0), Linear(4, 4, rng=1), Linear(4, 5, rng=2))
    assert model.policy_layer_names() == ["layers.0", "layers.1", "layers.2"]
    model.set_policy("q4")
    assert [layer.gemm.mode for _, layer in model.gemm_layers()] == ["q4", "fp16"]
    # without an embedding the first GEMM layer is the first layer
    plain = Sequential(Linear(4, 4, rng=1), Linear(4, 4, rng=2), Linear(4, 5, rng=3)).set_policy("q4")
    assert [layer.gemm.mode for _, layer in plain.gemm_layers()] == ["fp16", "q4", "fp16"]
