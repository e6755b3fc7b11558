"""Precision recipes: registry round trip, fp16/fp8 rounding, and the 4-bit integer path == simulated path."""
import json

import numpy as np
import pytest

from q4core import gemm
from q4core.formats import INT4, UINT4
from q4core.nn import (
    GRU,
    LSTM,
    SGD,
    Adam,
    CausalSelfAttention,
    Conv2d,
    Embedding,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    softmax_cross_entropy,
)
from q4core.recipe import ABLATIONS, Recipe, get_recipe, recipe_names
from q4core.scaling import int_scale, sawb_clip


def _cnn(seed=0):
    return Sequential(Conv2d(1, 4, 3, padding=1, rng=seed), ReLU(), MaxPool2d(2), Flatten(),
                      Linear(4 * 16, 24, rng=seed + 1), ReLU(), Linear(24, 16, rng=seed + 2), ReLU(),
                      Linear(16, 10, rng=seed + 3))


def _batch(seed=0, n=16):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, n)


def _run(model, config, steps=4, opt="sgd", data=None):
    model.set_policy(config)
    o = SGD(model.named_parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4) if opt == "sgd" else \
        Adam(model.named_parameters(), lr=1e-2)
    x, y = data if data is not None else _batch()
    losses = []
    for _ in range(steps):
        model.zero_grad()
        loss, g = softmax_cross_entropy(model.forward(x), y)
        model.backward(g)
        o.step()
        losses.append(loss)
    return losses, [p.data.copy() for p in model.parameters()]


def _assert_identical(a, b):
    assert a[0] == b[0], f"losses differ: {a[0]} vs {b[0]}"
    for p, q in zip(a[1], b[1]):
        np.testing.assert_array_equal(p, q)


#: every recipe with an integer kernel for all its 4-bit operands
KERNEL_RECIPES = [None, "no-tpr", "int4-grad", "minmax", "static-scale", "stochastic", "all-q4",
                  "global-loss-scale", "fixed-grad-scale", "gradscale-threshold", "log-rounding", "fp16-accumulate"]


def test_kernel_recipe_list_is_complete():
    # a recipe whose gradients are radix-4 FP4 or INT4 has kernels; the list above must name every such ablation
    from q4core.recipe.spec import KERNEL_GRAD_FORMATS
    with_kernels = {a for a in ABLATIONS if get_recipe("q4", a).grad_dx.format in KERNEL_GRAD_FORMATS}
    assert with_kernels - {"simulate"} == set(KERNEL_RECIPES) - {None}


@pytest.mark.parametrize("ablation", KERNEL_RECIPES)
def test_integer_and_simulated_q4_give_identical_losses_and_weights(ablation):
    integer = _run(_cnn(), get_recipe("q4", ablation))
    simulated = _run(_cnn(), get_recipe("q4", ablation, simulate=True))
    _assert_identical(integer, simulated)
    # and q4 really differs from fp32 (the quantizers are in the loop)
    assert integer[0] != _run(_cnn(), get_recipe("fp32"))[0]


def test_integer_and_simulated_identical_for_tpr_phase_swap_and_adam():
    cfg = dict(grad_dx={"phase": 1}, grad_dw={"phase": 0}, first_last="same")
    _assert_identical(_run(_cnn(), get_recipe("q4", **cfg), opt="adam"),
                      _run(_cnn(), get_recipe("q4", simulate=True, **cfg), opt="adam"))


def _lm(seed=0):
    return Sequential(Embedding(12, 8, rng=seed), LSTM(8, 8, rng=seed + 1), GRU(8, 8, rng=seed + 4),
                      CausalSelfAttention(8, heads=2, rng=seed + 2), Linear(8, 12, rng=seed + 3))


def test_integer_and_simulated_identical_for_lstm_gru_and_attention():
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 12, (3, 6))
    tgt = rng.integers(0, 12, (3, 6))
    cfg = dict(first_last="same")
    _assert_identical(_run(_lm(), get_recipe("q4", **cfg), data=(ids, tgt), steps=3),
                      _run(_lm(), get_recipe("q4", simulate=True, **cfg), data=(ids, tgt), steps=3))


def test_integer_path_identical_across_thread_counts():
    one = _run(_cnn(), get_recipe("q4", first_last="same", threads=1))
    two = _run(_cnn(), get_recipe("q4", first_last="same", threads=2))
    _assert_identical(one, two)


def test_q4_linear_forward_is_the_dequantized_product():
    lin = Linear(6, 5, bias=False, rng=3)
    lin.gemm.configure(get_recipe("q4"))
    x = np.abs(np.random.default_rng(2).standard_normal((4, 6))).astype(np.float32)
    y = lin.forward(x)
    w = lin.weight.data
    sw = int_scale(sawb_clip(w))
    alpha = float(lin.gemm.alpha.data)
    assert alpha == pytest.approx(x.max())          # PACT alpha starts at the first batch's max
    sx = alpha / 15
    qx = UINT4.encode(np.minimum(x, np.float32(alpha)), sx)
    qw = np.maximum(INT4.encode(w, sw), -7)
    expected = (gemm.int4_matmul(qx, qw).astype(np.float32) * np.float32(sx * sw))
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_allclose(y, x @ w, rtol=0.3, atol=0.3 * np.abs(x @ w).max())
    st = lin.gemm.quantizer_state()
    assert st["mode"] == "q4" and st["unsigned_input"] is True and st["weight_scale"] == sw


def test_pact_alpha_learns():
    model = _cnn()
    cfg = get_recipe("q4", first_last="same")
    _run(model, cfg, steps=3)
    alphas = [float(layer.gemm.alpha.data) for _, layer in model.gemm_layers()]
    assert all(a > 0 for a in alphas[1:])
    assert any(layer.gemm.alpha.grad != 0 for _, layer in model.gemm_layers())


def test_fp16_rounds_gemm_operands():
    lin = Linear(3, 2, bias=False, rng=0)
    lin.gemm.configure(get_recipe("fp16"))
    x = np.array([[1.0 + 2 ** -12, 0.0, 0.0]], np.float32)   # not a float16 number: rounds to 1.0
    y = lin.forward(x)
    np.testing.assert_array_equal(y, np.float32(1.0) * lin.weight.data[0].astype(np.float16).astype(np.float32)[None])


def test_first_and_last_layers_kept_high_and_overrides():
    model = _cnn()
    model.set_policy(get_recipe("q4", overrides={"layers.4": "fp32"}))
    modes = [layer.gemm.mode for _, layer in model.gemm_layers()]
    assert modes == ["fp16", "fp32", "q4", "fp16"]
    with pytest.raises(ValueError, match="overrides name layers"):
        model.set_policy(get_recipe("q4", overrides={"nope": "fp32"}))


@pytest.mark.parametrize("name", recipe_names())
def test_every_registered_recipe_round_trips(name):
    r = get_recipe(name)
    d = json.loads(json.dumps(r.to_dict()))
    assert Recipe.from_dict(d) == r and get_recipe(d) == r and r.name == name
    assert Recipe.from_dict(d).to_dict() == d


def test_recipe_errors_name_the_allowed_set():
    cfg = get_recipe("q4", "no-tpr", seed=3, overrides={"fc": "fp16"})
    assert cfg.name == "q4+no-tpr" and cfg.grad_dw.phase == 0 and cfg.overrides == {"fc": "fp16"}
    with pytest.raises(ValueError, match="unknown recipe keys"):
        Recipe.from_dict({"weight": "int4_sym", "bogus": 1})
    with pytest.raises(ValueError, match="format must be one of.*radix4"):
        get_recipe("q4", grad_dx={"format": "int8"})
    with pytest.raises(ValueError, match="phase 1 .* square radix"):
        get_recipe("q4", grad_dx={"format": "e2m1"}, grad_dw={"format": "e2m1", "phase": 1})
    with pytest.raises(ValueError, match="share format"):
        get_recipe("q4", grad_dw={"format": "radix2", "phase": 0})
    with pytest.raises(ValueError, match="unknown ablation"):
        get_recipe("q4", "nope")
    with pytest.raises(ValueError, match="has no 4-bit operand"):
        get_recipe("fp32", "no-tpr")
    with pytest.raises(ValueError, match="unknown recipe 'q5'; known recipes: fp16, fp32"):
        get_recipe("q5")
    with pytest.raises(ValueError, match="PACT clips non-negative"):
        get_recipe("q4", activation={"format": "int4_sym"})


def test_global_loss_scale_ablation_uses_one_scale_and_no_gradscale():
    """The paper's comparison for GradScale: the gradients the 4-bit layers encode carry only the network's loss
    scale (trainer-held, lowered when a 4-bit layer saturates), never a per-layer scale."""
    from q4core.train import train
    r, net = train("digits", "q4", "global-loss-scale", epochs=1, max_steps=30, progress=False, return_model=True)
    assert r["stopped"] is None and r["loss_scale"] < r["recipe"]["loss_scale_init"]
    q = [layer.gemm for _, layer in net.gemm_layers() if layer.gemm.quantized]
    assert q and all(g.last["grad_scale"] == 1.0 and g.gradscale.exp is None for g in q)


def test_pact_l2_is_applied_on_the_unscaled_gradient():
    """Bug: the L2 term on alpha was added inside the loss-scaled backward pass and divided by the loss scale."""
    lin = Linear(4, 3, bias=False, rng=0)
    lin.gemm.configure(get_recipe("q4", pact_l2=0.5))
    x = np.abs(np.random.default_rng(0).standard_normal((6, 4))).astype(np.float32)
    y = lin.forward(x)
    lin.backward(np.zeros_like(y))                 # no data gradient: alpha's gradient is the L2 term alone
    assert float(lin.gemm.alpha.grad) == 0.0
    lin.gemm.add_regularisation()
    assert float(lin.gemm.alpha.grad) == pytest.approx(0.5 * float(lin.gemm.alpha.data))


@pytest.mark.parametrize("ablation", ["radix2", "e2m1", "log10"])
def test_fake_quantized_gradient_formats_train(ablation):
    losses, _ = _run(_cnn(), get_recipe("q4", ablation, first_last="same"), steps=3)
    assert all(np.isfinite(losses))


def test_fp8_operands_on_the_e4m3_grid_and_gradients_on_e5m2():
    from q4core.formats import FP8_E4M3, FP8_E5M2
    lin = Linear(4, 3, bias=False, rng=0)
    lin.gemm.configure(get_recipe("fp8"))
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    lin.forward(x)
    wq = lin.gemm.prepare_weight(lin.weight.data).op.units
    scale = 2.0 ** np.ceil(np.log2(np.abs(lin.weight.data).max() / FP8_E4M3.max))
    np.testing.assert_array_equal(wq, FP8_E4M3.quantize(lin.weight.data, scale))
    gy = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32) * 1e-3
    lin.backward(gy)
    gscale = 2.0 ** np.ceil(np.log2(np.abs(gy).max() / FP8_E5M2.max))
    g8 = FP8_E5M2.quantize(gy, gscale)
    x8 = FP8_E4M3.quantize(x, 2.0 ** np.ceil(np.log2(np.abs(x).max() / FP8_E4M3.max)))
    np.testing.assert_array_equal(lin.weight.grad, x8.T @ g8)
    model = _cnn()
    model.set_policy(get_recipe("fp8"))
    assert [layer.gemm.mode for _, layer in model.gemm_layers()] == ["fp16", "fp8", "fp8", "fp16"]


@pytest.mark.parametrize("field, value", [("first_last", "fp8_e4m3"), ("first_last", 3),
                                          ("overrides", {"layers.1": "nope"})])
def test_layer_recipe_names_are_checked_with_the_recipe_not_when_a_model_is_built(field, value):
    from q4core.recipe import get_recipe
    with pytest.raises(ValueError, match=f"recipe {field}.* must be 'same', a recipe name or a dict"):
        get_recipe("q4", **{field: value})
