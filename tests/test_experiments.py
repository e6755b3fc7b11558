"""q4core.analysis and q4core.experiments: the computations behind notebooks 01-03."""
import math

import numpy as np
import pytest

from q4core import analysis, data
from q4core.experiments import gradients, mlp, rescaling
from q4core.formats import RADIX4_FP4


@pytest.fixture(scope="module")
def digits():
    return data.load_digits_8x8(seed=0)


def test_worked_example_and_sweep():
    ex = analysis.worked_example(0.3, 4)
    assert (ex["scaled"], ex["level"]) == (-3.5, -4) and ex["restored"] == pytest.approx(4 / 15)
    image = np.linspace(0, 1, 40 * 40).reshape(40, 40)
    sweep = analysis.image_precision_sweep(image, [1, 2, 4, 8])
    assert sweep["levels_used"] == [2, 4, 16, 256] and sweep["levels_available"] == [2, 4, 16, 256]
    assert all(a < b for a, b in zip(sweep["psnr_db"], sweep["psnr_db"][1:]))   # more bits, less error
    loss = analysis.grey_level_loss(image, 4)
    assert loss["distinct_after"] == 16 and loss["counts_after"].sum() == image.size
    assert loss["max_abs_error"] <= 255 / 15 / 2 + 1e-9   # at most half a 4-bit step
    with pytest.raises(ValueError, match="bits_list"):
        analysis.image_precision_sweep(image, [0])


def test_training_is_deterministic_and_learns(digits):
    _, h1 = mlp.train(digits, mlp.Recipe(), epochs=2, seed=3)
    _, h2 = mlp.train(digits, mlp.Recipe(), epochs=2, seed=3)
    assert h1 == h2
    assert h1["test_accuracy"] > 0.8 and h1["loss"][1] < h1["loss"][0]


def test_quantized_forward_uses_the_grids(digits):
    model = mlp.MLP((64, 16, 10), mlp.Recipe(weight="sawb", activation="current"), seed=0)
    x = digits.X_train[:8].reshape(8, -1).astype(np.float64)
    model.forward(x)
    a, aq, wq, _ = model.cache[0]
    step_w = np.max(np.abs(wq)) / 7 if np.max(np.abs(wq)) else 1.0
    assert np.allclose(wq / step_w, np.rint(wq / step_w))            # on the -7..7 grid
    assert len(np.unique(wq)) <= 15 and len(np.unique(aq)) <= 16


def test_gradient_quantization_matches_formats():
    g = np.random.default_rng(0).normal(size=(16, 8)) * 1e-3
    gs = gradients.power_of_two_scale(g, 1.0)
    assert np.max(np.abs(g)) * gs.scale <= 1.0 < 2 * np.max(np.abs(g)) * gs.scale
    q = gradients.quantize(g, "radix4")
    assert np.array_equal(q, RADIX4_FP4.quantize(g, gs.encode_scale()))
    lin = gradients.quantize(g, "int4")
    step = np.max(np.abs(g)) / 7
    assert np.allclose(lin / step, np.rint(lin / step)) and np.max(np.abs(lin / step)) <= 8
    with pytest.raises(ValueError, match="name must be"):
        gradients.quantize(g, "radix3")
    with pytest.raises(ValueError, match="tpr needs"):
        mlp.Recipe(grad="radix2", tpr=True)


def test_format_errors_and_tpr_bias_on_known_values():
    # a gradient sitting exactly on the even grid: radix 4 is exact there, the odd grid is not
    g = np.array([[1.0, -0.25, 1 / 16, -1 / 64]]) * 0.5
    errs = gradients.format_errors({0: [g]}, names=("radix4",))
    assert errs["radix4"]["snr_db"] == math.inf and errs["radix4"]["zero_share"] == 0
    bias = gradients.tpr_bias({0: [g]})
    assert bias["even"]["mean_elementwise"] == 0.0
    assert bias["tpr"]["mean_elementwise"] == pytest.approx(bias["odd"]["mean_elementwise"] / 2)


def test_recorders_run(digits):
    rec = rescaling.record_ranges(digits, hidden=(16,), epochs=1, every=5)
    assert len(rec["step"]) == len(rec["weight_max"][0]) == len(rec["snr_weight"]["sawb"][1])
    assert rec["step"][:2] == [0, 5]
    assert all(lo <= hi for lo, hi in zip(rec["weight_min"][0], rec["weight_max"][0]))
    grads = gradients.collect_gradients(digits, [0, 3], hidden=(16,), epochs=1)
    assert sorted(grads) == [0, 3] and grads[0][1].shape == (32, 10)
    with pytest.raises(ValueError, match="beyond"):
        gradients.collect_gradients(digits, [10 ** 6], hidden=(16,), epochs=1)
    trace = gradients.gradscale_trace(digits, hidden=(16,), epochs=1)
    scaled = np.array(trace["scaled_max"])
    assert scaled.shape == (2, trace["history"]["steps"])
    assert np.all(scaled[:, 0] <= 1.0) and np.all(scaled[:, 0] > 0.5)   # first step: set, not walked to
    assert mlp.step_to_step_change([1.0, 2.0, 1.0]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="dataset"):
        mlp.load_dataset("cifar")


def test_stack_cross_check_runs_on_the_training_stack():
    from q4core.experiments import stack
    out = stack.compare_on_stack({"fp32": ("fp32", None)}, task="digits", seeds=[0], epochs=1, max_steps=2)
    assert set(out) == {"fp32"} and 0.0 <= out["fp32"]["mean"] <= 1.0 and out["fp32"]["stopped"] == [None]
    assert set(stack.GRADIENT_CONFIGS.values()) >= {("q4", None), ("q4", "no-tpr"), ("q4", "log10")}
    with pytest.raises(ValueError, match="seeds"):
        stack.compare_on_stack({"fp32": ("fp32", None)}, seeds=[])
