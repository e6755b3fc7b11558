"""4-bit share of multiply-accumulates, against hand counts on small models."""
import numpy as np
import pytest

from q4core.nn import LSTM, CausalSelfAttention, Conv2d, Embedding, Flatten, Linear, ReLU, Sequential
from q4core.nn.macs import mac_counts, mac_share


def test_linear_stack_hand_count():
    # forward MACs: 4*8 = 32, 8*6 = 48, 6*3 = 18; q4 keeps the first and last layer in fp16
    model = Sequential(Linear(4, 8, rng=0), ReLU(), Linear(8, 6, rng=1), ReLU(), Linear(6, 3, rng=2))
    out = mac_share(model, (4,), "q4")
    assert [r["macs_forward"] for r in out["layers"]] == [32, 48, 18]
    assert out["total_macs"] == 3 * 98 and out["four_bit_macs"] == 3 * 48
    assert out["share"] == pytest.approx(48 / 98) and out["forward_share"] == pytest.approx(48 / 98)
    assert mac_share(model, (4,), "fp32")["share"] == 0.0
    assert mac_share(model, (4,), "q4+all-q4")["share"] == 1.0


def test_per_product_precision():
    # notebook 02's study: 4-bit forward, float32 gradients -> only the forward products are 4-bit
    model = Sequential(Linear(4, 8, rng=0), ReLU(), Linear(8, 6, rng=1))
    out = mac_share(model, (4,), "fwd-max")
    assert out["forward_share"] == 1.0 and out["share"] == pytest.approx(1 / 3)
    # notebook 03's study: float forward, 4-bit gradients against a float32 weight -> nothing is 4 x 4 bits
    grads = mac_share(model, (4,), "grad-radix4")
    assert grads["share"] == 0.0
    assert all(r["four_bit"] == {"forward": False, "grad_dx": False, "grad_dw": False} for r in grads["layers"])


def test_conv_hand_count():
    # 1x5x5 input, 3x3 conv, padding 1, 2 channels: 25 positions * 9 * 2 = 450; then 50 -> 3 linear: 150
    model = Sequential(Conv2d(1, 2, 3, padding=1, rng=0), ReLU(), Flatten(), Linear(50, 3, rng=1))
    rows = mac_counts(model, (1, 5, 5), "q4")
    assert [r["macs_forward"] for r in rows] == [450, 150]
    # stride 2 without padding: 2x2 positions * 9 * 2 = 72
    assert mac_counts(Sequential(Conv2d(1, 2, 3, stride=2, rng=0)), (1, 5, 5))[0]["macs_forward"] == 72


def test_attention_and_lstm_hand_count():
    # T=3, D=4: qkv 3*4*12 = 144, proj 3*4*4 = 48, Q K^T and P V 2*3*3*4 = 72 (fp32), head 3*4*5 = 60
    model = Sequential(Embedding(5, 4, rng=0), CausalSelfAttention(4, heads=2, rng=1), Linear(4, 5, rng=2))
    out = mac_share(model, (3,), "q4")
    macs = {r["name"]: r["macs_forward"] for r in out["layers"]}
    assert macs == {"layers.1.qkv": 144, "layers.1.proj": 48, "layers.2": 60,
                    "layers.1 (activation products)": 72}
    assert out["share"] == pytest.approx(192 / 324)
    # LSTM, T=4, F=3, H=2: input 4*3*8 = 96, hidden 4*2*8 = 64 (one GEMM per timestep), both 4-bit
    lstm = Sequential(Embedding(6, 3, rng=0), LSTM(3, 2, rng=1), Linear(2, 6, rng=2))
    out = mac_share(lstm, (4,), "q4")
    assert [r["macs_forward"] for r in out["layers"]] == [96, 64, 4 * 2 * 6]
    assert out["share"] == pytest.approx(160 / 208)


def test_model_is_left_untouched():
    model = Sequential(Linear(4, 8, rng=0), ReLU(), Linear(8, 3, rng=1))
    before = {k: v.copy() for k, v in model.state_dict().items()}
    mac_share(model, (4,), "q4")
    assert all(np.array_equal(before[k], v, equal_nan=True) for k, v in model.state_dict().items())
    assert all(layer.gemm.mode == "fp32" for _, layer in model.gemm_layers())


def test_no_gemm_raises():
    with pytest.raises(ValueError, match="no GEMM layer"):
        mac_share(Sequential(ReLU()), (4,), "q4")
