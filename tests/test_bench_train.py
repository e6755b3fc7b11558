"""``bench train``'s GEMM-heavy workloads and the per-step breakdown: the workloads train under q4 with losses
identical to simulated q4, the residual CNN's middle layers are the 4-bit ones, the breakdown's timers wrap the
engine's calls without changing a result and are gone afterwards, and bad options fail before anything runs.
Tiny shapes: these check the machinery, not speed."""
import json

import numpy as np
import pytest

import q4core.gemm
import q4core.recipe.operands
from q4core.bench import cli, report, train

TINY = {"batch": 2, "language_models": [], "lm_batch": 2, "seq_len": 4, "heavy_batch": 2}


def test_heavy_workloads_train_and_match_simulation():
    result = train.train_step_times(repeat=1, heavy=train.HEAVY_WORKLOADS, **TINY)
    models = list(result["identical_losses"])
    assert models == ["vision cnn 28x28 (batch 2)", "mlp 3x1024 (batch 2)", "residual cnn 32x32 (batch 2)",
                      "transformer d256 (batch 2 x 4)"]
    assert all(result["identical_losses"].values())       # q4 == simulated q4, bit for bit
    assert {(r["model"], r["precision"]) for r in result["records"]} == {
        (m, p) for m in models for p in train.PRECISIONS}
    summary = train.summarize_train(result)
    assert all(t["q4_over_fp32"] > 0 for t in summary.values())
    json.dumps(result)


def test_heavy_workloads_are_opt_in_and_named():
    assert len(train.train_step_times(repeat=1, **TINY)["identical_losses"]) == 1
    with pytest.raises(ValueError, match="heavy must hold names"):
        train.train_step_times(repeat=1, heavy=["gpt"], **TINY)
    with pytest.raises(ValueError, match="heavy_batch"):
        train.train_step_times(repeat=1, **dict(TINY, heavy_batch=0))


def test_residual_cnn_shape_and_layers():
    from q4core.nn import Conv2d, Linear
    model = train.residual_cnn(seed=3)
    gemm_layers = [layer for _, layer in model.gemm_layers()]
    assert [type(layer) for layer in gemm_layers] == [Conv2d] * 5 + [Linear]
    y = model.forward(np.random.default_rng(0).random((2, 3, 32, 32)).astype(np.float32))
    assert y.shape == (2, 10)
    same = train.residual_cnn(seed=3)
    assert all(np.array_equal(a.data, b.data) for (_, a), (_, b) in zip(model.named_parameters(),
                                                                       same.named_parameters()))


def test_breakdown_counts_the_integer_gemms_of_each_workload():
    result = train.step_breakdown(repeat=2, heavy=["rescnn", "mlp1024"], **TINY)
    calls = {r["model"]: r["calls"]["integer GEMM"] for r in result["records"]}
    # fp16 first and last layers: the CNN's middle conv and hidden Linear, the MLP's two 1024x1024 layers and
    # the residual CNN's four middle convolutions are 4-bit, three integer GEMMs each per step
    assert calls == {"vision cnn 28x28 (batch 2)": 6, "mlp 3x1024 (batch 2)": 6, "residual cnn 32x32 (batch 2)": 12}
    for r in result["records"]:
        assert set(r["fractions"]) == set(result["parts"]) == {*train.BREAKDOWN_PARTS, "rest"}
        assert sum(r["fractions"].values()) == pytest.approx(1.0)
        assert all(0 <= r["fractions"][p] <= 1 for p in train.BREAKDOWN_PARTS)
        assert r["calls"]["operand making"] > 0 and r["step_seconds"] > 0
        # the kernels rescale in their store (one K chunk at these sizes): no separate rescale pass is left
        assert r["calls"]["int32 rescale"] == 0
        # the fp16 first and last layers' three products each, less the first layer's dL/dx (its input is
        # data: input_grad False), float GEMMs timed apart from the integer ones
        assert r["calls"]["float GEMM"] == 5, r["model"]
    text = "\n".join(report.breakdown_lines(result))
    assert "integer GEMM" in text and "residual cnn 32x32 (batch 2)" in text


def test_instrumented_changes_no_result_and_restores_the_engine():
    originals = (q4core.gemm.int4_matmul_unchecked, q4core.gemm.pack_int4, q4core.recipe.operands.quantize)
    loads = train._workloads(2, [], 2, 4, 0, ["mlp1024"], 2)
    builder, x, y, opt = loads["mlp 3x1024 (batch 2)"]
    policy = train._policies(1, "fp16")["q4"]
    plain = train._train_step(builder, x, y, opt, policy)
    with train.instrumented() as clock:
        assert q4core.gemm.int4_matmul_unchecked is not originals[0]
        timed = train._train_step(builder, x, y, opt, policy)
        losses = [timed(), timed()]
    assert losses == [plain(), plain()]
    assert clock.calls["integer GEMM"] == 12 and clock.seconds["integer GEMM"] > 0
    assert (q4core.gemm.int4_matmul_unchecked, q4core.gemm.pack_int4, q4core.recipe.operands.quantize) == originals
    with pytest.raises(RuntimeError, match="boom"), train.instrumented():
        raise RuntimeError("boom")
    assert q4core.gemm.int4_matmul_unchecked is originals[0]


def test_nested_wrapped_calls_count_once():
    clock = train._Clock()
    inner = clock.wrap("operand making", lambda: 1)
    outer = clock.wrap("integer GEMM", lambda: inner() + 1)
    assert outer() == 2 and inner() == 1
    assert clock.calls == {"integer GEMM": 1, "operand making": 1, "int32 rescale": 0, "float GEMM": 0}
    # a call outside its predicate passes through uncounted, and the calls inside it are still timed
    gated = clock.wrap("float GEMM", lambda kind: inner() + (kind == "float"), when=lambda kind: kind == "float")
    assert gated("int") == 1 and gated("float") == 2
    assert clock.calls["float GEMM"] == 1 and clock.calls["operand making"] == 2


def test_train_cli_options(capsys, monkeypatch):
    def reached(*args, **kwargs):
        raise AssertionError("ran although the options were bad")
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--heavy", "gpt"])
    assert exc.value.code == 2 and "argument --heavy: invalid choice: 'gpt'" in capsys.readouterr().err
    monkeypatch.setattr(train, "step_breakdown", reached)
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--heavy-batch", "0", "--breakdown"])
    assert exc.value.code == 2 and "heavy_batch must hold positive ints" in capsys.readouterr().err
    monkeypatch.undo()
    assert cli.main(["train", "--repeat", "1", "--batch", "2", "--lm", "char_lstm", "--lm-batch", "2",
                     "--seq-len", "4", "--heavy", "--breakdown"]) == 0
    out = capsys.readouterr().out
    assert "where a q4 step's time goes" in out and "char_lstm (batch 2 x 4)" in out and "mlp 3x1024" not in out


def test_the_gemm_heavy_workloads_are_the_ones_is_heavy_names():
    """is_heavy reads the display names _workloads makes: every heavy workload, and no other, must match (a
    renamed workload would otherwise be held to the lenient built-in target)."""
    loads = train._workloads(2, list(train.LANGUAGE_MODELS), 2, 4, 0, list(train.HEAVY_WORKLOADS), 2)
    plain = train._workloads(2, list(train.LANGUAGE_MODELS), 2, 4, 0, [], 2)
    heavy = [name for name in loads if name not in plain]
    assert len(heavy) == len(train.HEAVY_WORKLOADS)
    assert all(train.is_heavy(name) for name in heavy)
    assert not any(train.is_heavy(name) for name in plain)


def test_patched_puts_every_original_back_also_when_a_later_replacement_fails():
    from q4core.bench._timing import patched

    class Owner:
        a, b = 1, 2

    def broken(_):
        raise RuntimeError("no wrapper")
    with pytest.raises(RuntimeError, match="no wrapper"), patched([(Owner, "a", lambda v: v + 10),
                                                                   (Owner, "b", broken)]):
        pass
    assert (Owner.a, Owner.b) == (1, 2)
    with patched([(Owner, "a", lambda v: v + 10)]):
        assert Owner.a == 11
    assert Owner.a == 1
