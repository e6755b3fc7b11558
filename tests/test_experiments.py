"""q4core.analysis and q4core.experiments: the computations behind notebooks 01-03."""
import math

import numpy as np
import pytest

from q4core import analysis, data
from q4core.experiments import common, gradients, rescaling
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
    h1 = common.train_mlp(digits, "fp32", epochs=2, seed=3)
    h2 = common.train_mlp(digits, "fp32", epochs=2, seed=3)
    assert h1["history"]["step_loss"] == h2["history"]["step_loss"] and h1["test_accuracy"] == h2["test_accuracy"]
    assert h1["test_accuracy"] > 0.8 and h1["history"]["train_loss"][1] < h1["history"]["train_loss"][0]


def test_study_recipes_quantize_what_they_say(digits):
    """fwd-*: 4-bit forward on every layer, float gradients; grad-*: float forward, 4-bit gradients."""
    _, net = common.train_mlp(digits, "fwd-sawb-pact", hidden=(16,), epochs=1, return_model=True)
    for _, layer in net.gemm_layers():
        g = layer.gemm
        assert g.spec_w.format == "int4_sym" and g.spec_gx.format == "fp32"
    _, net = common.train_mlp(digits, "grad-radix4", hidden=(16,), epochs=1, return_model=True)
    phases = {(layer.gemm.spec_gx.phase, layer.gemm.spec_gw.phase) for _, layer in net.gemm_layers()}
    assert phases == {(0, 1)}                       # radix 4 in the sweep is the paper's format: with TPR
    assert all(layer.gemm.spec_w.format == "fp32" for _, layer in net.gemm_layers())


def test_gradient_quantization_matches_formats():
    g = np.random.default_rng(0).normal(size=(16, 8)) * 1e-3
    gs = gradients.power_of_two_scale(g, 1.0)
    assert np.max(np.abs(g)) * gs.scale <= 1.0 < 2 * np.max(np.abs(g)) * gs.scale
    q = gradients.quantize(g, "radix4")
    assert np.array_equal(q, RADIX4_FP4.quantize(g, gs.encode_scale()))
    lin = gradients.quantize(g, "int4_sym")
    step = np.max(np.abs(g)) / 7
    assert np.allclose(lin / step, np.rint(lin / step)) and np.max(np.abs(lin / step)) <= 7
    with pytest.raises(ValueError, match="name must be"):
        gradients.quantize(g, "radix3")


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
    assert rec["step"][:2] == [0, 5] and len(rec["alpha"][0]) == len(rec["step"])
    assert all(lo <= hi for lo, hi in zip(rec["weight_min"][0], rec["weight_max"][0]))
    grads = gradients.collect_gradients(digits, [0, 3], hidden=(16,), epochs=1)
    assert sorted(grads) == [0, 3] and grads[0][1].shape == (32, 10)
    with pytest.raises(ValueError, match="beyond"):
        gradients.collect_gradients(digits, [10 ** 6], hidden=(16,), epochs=1)
    trace = gradients.gradscale_trace(digits, hidden=(16,), epochs=1)
    scaled = np.array(trace["scaled_max"])
    assert scaled.shape == (2, trace["history"]["steps"])
    assert np.all(scaled[:, 0] <= 1.0) and np.all(scaled[:, 0] > 0.5)   # first step: set, not walked to
    assert 0 <= trace["top_code"]["even_top_unused"] <= 1
    assert common.step_to_step_change([1.0, 2.0, 1.0]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="dataset"):
        common.load_dataset("cifar")


def test_stack_cross_check_runs_on_the_training_stack():
    from q4core.experiments import stack
    out = stack.compare_on_stack({"fp32": ("fp32", None)}, task="digits", seeds=[0], epochs=1, max_steps=2)
    assert set(out) == {"fp32"} and 0.0 <= out["fp32"]["mean"] <= 1.0 and out["fp32"]["stopped"] == [None]
    assert set(stack.GRADIENT_CONFIGS.values()) >= {("q4", None), ("q4", "no-tpr"), ("q4", "log10"),
                                                    ("q4", "global-loss-scale")}
    with pytest.raises(ValueError, match="seeds"):
        stack.compare_on_stack({"fp32": ("fp32", None)}, seeds=[])


def test_format_study_gives_every_format_the_same_scale_rule():
    from q4core.experiments import gradients as gr
    from q4core.recipe import SWEEP_GRAD_FORMATS
    cells = gr.study_cells()
    assert len(cells) == 2 * len(SWEEP_GRAD_FORMATS) + 5          # log rounding: the five radix formats only
    for fmt, rounding in cells:
        r = gr.study_recipe(fmt, rounding)
        for role in ("grad_dx", "grad_dw"):
            assert r[role]["format"] == fmt and r[role]["scaling"] == "max" and r[role]["rounding"] == rounding
    assert gr.study_recipe("radix4", "nearest")["grad_dw"]["phase"] == 1       # radix 4 keeps its TPR


def test_radix_verdict_needs_every_rounding_mode_to_agree():
    from q4core.experiments import gradients as gr
    def cell(f, r, accs):
        return {"format": f, "rounding": r, "accuracy": accs}
    better = [0.95, 0.96, 0.97]
    worse = [0.90, 0.905, 0.915]
    study = {"cells": [cell("radix2", r, better) for r in gr.STUDY_ROUNDINGS]
             + [cell("radix4", r, worse) for r in gr.STUDY_ROUNDINGS]}
    assert gr.radix_verdicts(study)["conclusion"] == "radix2 better"
    study["cells"][-1] = cell("radix4", "stochastic", [0.99, 0.94, 0.97])    # one mode does not resolve it
    v = gr.radix_verdicts(study)
    assert v["by_rounding"]["stochastic"]["verdict"] == "not resolved" and v["conclusion"] == "not resolved"


def test_gradient_fidelity_recorder_compares_the_backward_products():
    from q4core.experiments import common
    from q4core.experiments import gradients as gr
    from q4core.train import train
    ds = common.load_dataset("digits", seed=0)
    rec = gr.GradientFidelityRecorder(every=3)
    train(data=ds, model="mlp", recipe=gr.study_recipe("radix4", "nearest"), epochs=1, max_steps=7, seed=0,
          on_step=rec, progress=False, model_kwargs={"hidden": (16,), "batchnorm": False})
    assert {r["step"] for r in rec.records} == {3, 6} and len({r["layer"] for r in rec.records}) == 2
    for r in rec.records:
        assert 0.5 < r["dx_cos"] <= 1.0 + 1e-12 and 0.5 < r["dw_cos"] <= 1.0 + 1e-12
        assert 0.3 < r["dx_norm_ratio"] < 2 and 0.3 < r["dw_norm_ratio"] < 2
    with pytest.raises(ValueError, match="every must be a positive int"):
        gr.GradientFidelityRecorder(0)


def test_in_process_recordings_run_on_one_thread_like_cached_runs():
    """A recording run (on_step) trains in the notebook's process; it pins one thread as cached runs do, so a
    q4-reproduce with or without a LocalCluster gives the same figures (float32 BLAS on two threads differs)."""
    from threadpoolctl import threadpool_limits

    from q4core.experiments import common
    mnist = common.load_dataset("mnist", seed=0)
    losses = []
    for limit in (1, 2):
        seen = []

        def record(step, model, info, seen=seen):
            if step < 5:
                seen.append(info["loss"])
        with threadpool_limits(limits=limit):
            common.train_mlp(mnist, "grad-radix2", epochs=1, seed=0, on_step=record)
        losses.append(seen)
    assert losses[0] == losses[1] and len(losses[0]) == 4
