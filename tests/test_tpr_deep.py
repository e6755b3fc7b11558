"""q4core.experiments.tpr_deep: BatchNorm running-statistics bias and backward-GEMM fidelity on deep models."""
import math

import numpy as np
import pytest

from q4core.experiments import gradients
from q4core.experiments import tpr_deep as td
from q4core.nn import models
from q4core.nn.layers import BatchNorm, Conv2d, im2col2d


def test_bn_bias_written_out():
    # channel 0: offset 1 in units of SD 2 -> 0.5, variance 4x -> log2 = 2; channel 1: no bias
    b = td.bn_bias([1.0, 0.0], [16.0, 1.0], [0.0, 0.0], [4.0, 1.0], eps=0.0)
    assert b["mean_shift"] == pytest.approx(0.25)
    assert b["mean_shift_rms"] == pytest.approx(math.sqrt(0.125))
    assert b["var_log2"] == pytest.approx(1.0)
    assert td.bn_bias([0.3], [2.0], [0.3], [2.0], eps=1e-5) == {"mean_shift": 0.0, "mean_shift_rms": 0.0,
                                                                 "var_log2": 0.0}


def test_bn_bias_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="four 1-D arrays"):
        td.bn_bias([0.0, 1.0], [1.0], [0.0, 1.0], [1.0, 1.0], eps=0.0)


def test_float_batch_statistics_are_the_bn_input_moments_and_leave_the_model_alone():
    net = models.mlp(6, 3, hidden=(5,), batchnorm=True, seed=1).set_policy("q4")
    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    bn = next(m for _, m in net.named_modules() if isinstance(m, BatchNorm))
    before = (bn.running_mean.copy(), bn.running_var.copy())
    stats = td.batch_statistics(net, x, "fp32")
    lin = net.layers[1]
    h = x.astype(np.float64) @ lin.weight.data.astype(np.float64) + lin.bias.data
    (name, (mean, var)), = stats.items()
    assert name == "layers.2"
    np.testing.assert_allclose(mean, h.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, h.var(axis=0, ddof=1), rtol=1e-4)
    np.testing.assert_array_equal(bn.running_mean, before[0])        # the copy trained, not the model
    np.testing.assert_array_equal(bn.running_var, before[1])
    assert net.policy.name == "q4"
    # the q4 forward of the same batch sees quantized operands: other statistics
    q4_mean = td.batch_statistics(net, x)["layers.2"][0]
    assert not np.allclose(q4_mean, mean)


def test_deep_fidelity_makes_the_patch_matrix_of_a_convolution():
    conv = Conv2d(2, 3, 3, padding=1, bias=False, rng=0)
    x = np.random.default_rng(1).normal(size=(2, 2, 5, 5)).astype(np.float32)
    conv.gemm.last["input"] = x
    cols = td.DeepFidelityRecorder.gemm_input(conv)
    np.testing.assert_array_equal(cols, im2col2d(x, 3, 3, 1, 1)[0])
    assert gradients.GradientFidelityRecorder.gemm_input(conv) is None     # the MLP recorder skips it


def _train_recorded(recipe, ablation=None, steps=3):
    from q4core.train import train
    rec = td.TPRRecorder(every=1, task="digits", data_seed=0, batch=32)
    train("digits", recipe, ablation=ablation, epochs=1, model="resnet", max_steps=steps, seed=0, progress=False,
          on_step=rec, batch_size=16, model_kwargs={"widths": (4, 8), "blocks": 1})
    return rec.records


def test_tpr_recorder_records_every_bn_and_every_4bit_conv():
    records = _train_recorded("q4")
    bn = [r for r in records if r["kind"] == "bn"]
    gemm = [r for r in records if r["kind"] == "gemm"]
    assert sorted({r["step"] for r in bn}) == [1, 2, 3] and sorted({r["step"] for r in gemm}) == [1, 2, 3]
    # widths (4, 8), one block each: stem BN + 2 BN per block + the projection's BN
    assert len({r["layer"] for r in bn}) == 6
    # 4-bit GEMMs: the two convolutions of each block and the projection (stem and classifier stay 16-bit)
    assert len({r["layer"] for r in gemm}) == 5
    for r in gemm:
        assert 0.0 < r["dx_cos"] <= 1.0 + 1e-12 and 0.0 < r["dw_cos"] <= 1.0 + 1e-12
    for r in bn:
        assert all(math.isfinite(r[k]) for k in td.BN_KEYS)


def test_without_tpr_both_backward_gemms_see_one_grid():
    # one grid for both GEMMs: dL/dX and dL/dW come from the same quantized gradient; with TPR they differ
    one = [r for r in _train_recorded("q4", "no-tpr", steps=1) if r["kind"] == "gemm"]
    two = [r for r in _train_recorded("q4", steps=1) if r["kind"] == "gemm"]
    assert [r["layer"] for r in one] == [r["layer"] for r in two]
    assert any(a["dw_cos"] != b["dw_cos"] for a, b in zip(one, two))


def _fake_run(seed, shift, cos):
    recs = []
    for step in (10, 20, 30, 40):
        recs.append({"step": step, "layer": "bn1", "kind": "bn", "mean_shift": shift, "mean_shift_rms": abs(shift),
                     "var_log2": -shift, "q4_mean_shift": 0.0, "q4_var_log2": 0.0})
        recs.append({"step": step, "layer": "conv1", "kind": "gemm", "dx_cos": cos, "dx_norm_ratio": 1.0,
                     "dw_cos": cos, "dw_norm_ratio": 1.0})
    return {"seed": seed, "test": 90.0, "stopped": None, "records": recs}


def test_summarise_study_pairs_seeds():
    study = {"with TPR": [_fake_run(s, 0.1 + 0.01 * s, 0.9) for s in range(3)],
             "without TPR": [_fake_run(s, -0.3 - 0.02 * s * s, 0.8 + 0.01 * s) for s in range(3)]}
    out = td.summarise_study(study)
    eff = out["bn"]["bn1"]["mean_shift"]["effect"]
    # per seed: (0.1 + 0.01 s) - (-0.3 - 0.02 s^2) = 0.4, 0.43, 0.5
    assert eff["n"] == 3 and eff["mean"] == pytest.approx((0.4 + 0.43 + 0.5) / 3)
    # the network figure takes |bias|: 0.1 - 0.3, 0.11 - 0.32, 0.12 - 0.38
    assert out["network"]["mean_shift"]["mean"] == pytest.approx((-0.2 - 0.21 - 0.26) / 3)
    assert out["gemm"]["conv1"]["dw_cos"]["effect"]["mean"] == pytest.approx(0.09)


def test_summarise_study_needs_the_same_seeds():
    study = {"with TPR": [_fake_run(0, 0.1, 0.9)], "without TPR": [_fake_run(1, 0.1, 0.9)]}
    with pytest.raises(ValueError, match="same seeds"):
        td.summarise_study(study)


def test_tpr_study_runs_both_recipes_with_records():
    study = td.tpr_study([0], epochs=1, max_steps=2, record_every=2, batch=16)
    assert set(study) == set(td.TPR_RECIPES)
    for runs in study.values():
        assert runs[0]["seed"] == 0 and runs[0]["records"]
        assert {r["kind"] for r in runs[0]["records"]} == {"bn", "gemm"}
    with pytest.raises(ValueError, match="seeds"):
        td.tpr_study([], epochs=1)


def test_deep_fidelity_agrees_with_the_mlp_recorder_on_linear_layers():
    from q4core.train import train
    mlp_rec, deep_rec = gradients.GradientFidelityRecorder(1), td.DeepFidelityRecorder(1)

    def both(step, model, info):
        mlp_rec(step, model, info)
        deep_rec(step, model, info)
    train("digits", "q4", epochs=1, model="mlp", max_steps=2, seed=0, progress=False, on_step=both,
          model_kwargs={"hidden": (16, 16)})
    assert mlp_rec.records
    assert [{k: v for k, v in r.items() if k != "kind"} for r in deep_rec.records] == mlp_rec.records
    for r in mlp_rec.records:     # 4-bit gradients: products close to the float ones, not equal
        assert 0.5 < r["dx_cos"] < 1.0 and 0.5 < r["dw_cos"] < 1.0
