"""The training API and CLI: determinism, integer == simulated through train(), divergence, fp16 loss
scaling, user .npz data with its errors, checkpoints."""
import json
from pathlib import Path

import numpy as np
import pytest

from q4core.checkpoint import load_checkpoint, save_checkpoint
from q4core.nn.models import build_model
from q4core.train import load_npz_task, main, train


def _npz(tmp_path, n=120, shape=(8, 8), seed=0, **extra):
    rng = np.random.default_rng(seed)
    X = rng.random((n,) + shape).astype(np.float32)
    y = (X.reshape(n, -1).mean(axis=1) > 0.5).astype(np.int64) + 2 * (X.reshape(n, -1)[:, 0] > 0.5)
    arrays = dict(X_train=X[:90], y_train=y[:90], X_test=X[90:], y_test=y[90:])
    arrays.update(extra)
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return path


def test_train_digits_deterministic_and_complete():
    kw = dict(task="digits", epochs=2, seed=3, max_steps=6, progress=False, model="mlp")
    a, b = train(**kw), train(**kw)
    assert a["history"]["train_loss"] == b["history"]["train_loss"]
    assert a["history"]["val_accuracy"] == b["history"]["val_accuracy"]
    assert a["test_accuracy"] == b["test_accuracy"] and a["stopped"] is None and a["steps"] == 6
    c = train(**{**kw, "seed": 4})
    assert c["history"]["train_loss"] != a["history"]["train_loss"]
    json.dumps(a)


def test_train_q4_integer_equals_simulated():
    kw = dict(task="digits", recipe="q4", epochs=1, seed=0, max_steps=5, progress=False)
    a, b = train(**kw), train(simulate=True, **kw)
    assert a["history"]["train_loss"] == b["history"]["train_loss"]
    assert a["history"]["val_accuracy"] == b["history"]["val_accuracy"]
    assert a["recipe"]["simulate"] is False and b["recipe"]["simulate"] is True


def test_on_step_sees_layer_tensors_and_quantizer_state():
    seen = []

    def on_step(step, model, info):
        name, layer = model.gemm_layers()[1]
        st = layer.gemm.quantizer_state()
        seen.append((step, info["loss"], st["weight_scale"], st["gradscale"], st["pact_alpha"],
                     float(np.abs(layer.gemm.last["grad_output"]).max())))
    train(task="digits", recipe="q4", epochs=1, max_steps=3, progress=False, on_step=on_step)
    assert [s[0] for s in seen] == [1, 2, 3]
    assert all(s[2] > 0 and s[3] is not None and s[4] > 0 and s[5] > 0 for s in seen)


def test_divergence_stops_with_history():
    r = train(task="digits", epochs=3, lr=1e6, momentum=0.0, weight_decay=0.0, progress=False, seed=0)
    assert r["stopped"] is not None and "training stopped" in r["stopped"]
    assert r["test_accuracy"] is None
    assert r["steps"] >= 1


def test_overflowing_activations_are_a_divergence_not_a_bad_argument(tmp_path):
    # found by the explore fuzz profile: lr 1e10 makes the fp16 first layer's output Inf, which the next
    # layer's INT4 quantizer refuses; that is the model diverging (exit 1, result written), not exit 2
    out = tmp_path / "r.json"
    rc = main(["--task", "digits", "--model", "mlp", "--recipe", "q4", "--lr", "1e10", "--max-steps", "2",
               "--no-progress", "--out", str(out)])
    assert rc == 1
    result = json.loads(out.read_text())
    assert "NaN or Inf before a quantizer" in result["stopped"] and result["test_accuracy"] is None


def test_quantizers_raise_nonfinite_error_a_value_error():
    from q4core.formats import INT4, NonFiniteError
    with pytest.raises(NonFiniteError, match="x contains NaN or Inf"):
        INT4.encode(np.array([1.0, np.inf]))
    assert issubclass(NonFiniteError, ValueError)


def test_fp16_loss_scaling_skips_overflowing_steps():
    r = train(task="digits", recipe="fp16", epochs=1, max_steps=12, progress=False, loss_scale_init=2.0 ** 24)
    assert r["history"]["skipped_steps"][0] > 0
    assert r["loss_scale"] < 2.0 ** 24
    assert r["stopped"] is None and np.isfinite(r["history"]["train_loss"][0])


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_cli_user_data(tmp_path, model, capsys):
    path = _npz(tmp_path)
    out = tmp_path / "r.json"
    rc = main(["--data", str(path), "--model", model, "--recipe", "q4", "--epochs", "2", "--seed", "1",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["model"] == model and r["recipe"]["name"] == "q4" and len(r["history"]["train_loss"]) == 2
    assert 0.0 <= r["test_accuracy"] <= 1.0 and r["wall_seconds"] > 0
    assert "test accuracy" in capsys.readouterr().out


def test_cli_vectors_and_channel_images(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "v.npz"
    np.savez(p, X_train=rng.random((40, 5)), y_train=rng.integers(0, 3, 40), X_test=rng.random((10, 5)),
             y_test=rng.integers(0, 3, 10).astype(np.float64))
    assert main(["--data", str(p), "--model", "mlp", "--epochs", "1", "--out", str(tmp_path / "o.json"),
                 "--no-progress"]) == 0
    task = load_npz_task(_npz(tmp_path, shape=(2, 6, 6)))
    assert task.input_shape == (2, 6, 6) and task.n_classes == 4


@pytest.mark.parametrize("change,message", [
    (dict(drop="y_test"), "lacks the arrays"),
    (dict(y_train=np.zeros(5, np.int64)), "has 5 labels"),
    (dict(y_train=np.full(90, 0.5)), "integer class labels"),
    (dict(y_train=-np.ones(90, np.int64)), "non-negative"),
    (dict(X_test=np.full((30, 8, 8), np.nan)), "NaN"),
    (dict(X_test=np.zeros((30, 7, 8))), "X_test examples"),
    (dict(X_train=np.zeros(90)), "N x D vectors"),
    (dict(X_val=np.zeros((3, 8, 8))), "both X_val and y_val"),
])
def test_bad_user_data_gives_clear_errors(tmp_path, change, message, capsys):
    rng = np.random.default_rng(0)
    arrays = dict(X_train=rng.random((90, 8, 8)), y_train=rng.integers(0, 2, 90), X_test=rng.random((30, 8, 8)),
                  y_test=rng.integers(0, 2, 30))
    drop = change.pop("drop", None)
    arrays.update(change)
    if drop:
        del arrays[drop]
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(ValueError, match=message):
        load_npz_task(p)
    assert main(["--data", str(p), "--out", str(tmp_path / "o.json"), "--no-progress"]) == 2
    assert message.split()[0] in capsys.readouterr().err


def test_cli_argument_errors(tmp_path, capsys):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert main(["--data", str(tmp_path / "junk.npz"), "--out", str(tmp_path / "o.json")]) == 2
    assert "not a readable .npz" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "o.json")]) == 2
    assert main(["--out", str(tmp_path / "o.json")]) == 2
    path = _npz(tmp_path)
    assert main(["--data", str(path), "--model", "char_lstm", "--out", str(tmp_path / "o.json")]) == 2


def test_checkpoint_round_trip(tmp_path):
    ck = tmp_path / "ck.npz"
    r, model = train(task="digits", recipe="q4", epochs=1, max_steps=4, progress=False, checkpoint=ck,
                     return_model=True)
    fresh = build_model("cnn", (1, 8, 8), 10, seed=99)
    fresh.set_policy("q4")
    meta = load_checkpoint(ck, fresh)
    assert meta["step"] == 4 and meta["recipe"]["name"] == "q4"
    for (n, p), (m, q) in zip(model.named_parameters(), fresh.named_parameters()):
        assert n == m
        np.testing.assert_array_equal(p.data, q.data)
    x = np.random.default_rng(0).random((5, 1, 8, 8)).astype(np.float32)
    model.eval(), fresh.eval()
    np.testing.assert_array_equal(model.forward(x), fresh.forward(x))
    with np.load(ck, allow_pickle=False) as f:      # no pickled objects inside
        assert all(f[k].dtype != object for k in f.files)


def test_checkpoint_errors(tmp_path):
    model = build_model("mlp", (4,), 3, seed=0)
    p = tmp_path / "x.npz"
    np.savez(p, a=np.zeros(2))
    with pytest.raises(ValueError, match="not a q4core checkpoint"):
        load_checkpoint(p, model)
    save_checkpoint(p, model, meta={"k": 1})
    other = build_model("mlp", (5,), 3, seed=0)
    with pytest.raises(ValueError, match="shape"):
        load_checkpoint(p, other)


def test_bench_train_smoke(capsys):
    from q4core.bench.train import main as bench_main
    assert bench_main(["--repeat", "1", "--batch", "4", "--lm-batch", "2", "--seq-len", "8"]) == 0
    out = capsys.readouterr().out
    assert "vision cnn" in out and "char_lstm" in out and "char_transformer" in out and "q4 / fp32" in out


@pytest.mark.parametrize("name,shape,n,x", [
    ("speech_cnn", (12, 6), 4, np.random.default_rng(0).standard_normal((3, 12, 6)).astype(np.float32)),
    ("speech_lstm", (12, 6), 4, np.random.default_rng(0).standard_normal((3, 12, 6)).astype(np.float32)),
    ("char_lstm", (9,), 7, np.random.default_rng(0).integers(0, 7, (3, 9))),
    ("char_transformer", (9,), 7, np.random.default_rng(0).integers(0, 7, (3, 9))),
    ("char_gru", (9,), 7, np.random.default_rng(0).integers(0, 7, (3, 9))),
    ("speech_gru", (12, 6), 4, np.random.default_rng(0).standard_normal((3, 12, 6)).astype(np.float32)),
    ("mlp", (5, 5), 3, np.random.default_rng(0).random((3, 5, 5)).astype(np.float32)),
])
def test_model_builders_train_under_q4(name, shape, n, x):
    from q4core.nn import SGD, softmax_cross_entropy
    model = build_model(name, shape, n, seed=1)
    model.set_policy({"weight": {"format": "int4_sym", "scaling": "sawb"},
                      "activation": {"format": "uint4", "scaling": "pact"},
                      "grad_dx": {"format": "radix4", "scaling": "gradscale"},
                      "grad_dw": {"format": "radix4", "scaling": "gradscale", "phase": 1}, "name": "q4"})
    y = np.random.default_rng(1).integers(0, n, x.shape[:2] if name.startswith("char") else x.shape[0])
    opt = SGD(model.named_parameters(), lr=0.05)
    losses = []
    for _ in range(3):
        model.zero_grad()
        loss, g = softmax_cross_entropy(model.forward(x), y)
        model.backward(g)
        opt.step()
        losses.append(loss)
    assert np.isfinite(losses).all()
    assert all(layer.gemm.mode == "q4" for _, layer in model.gemm_layers())
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg", shape, n)


def test_cli_config_overrides(tmp_path, capsys):
    path = _npz(tmp_path)
    out = tmp_path / "r.json"
    assert main(["--data", str(path), "--recipe", "q4", "--config", '{"grad_dw": {"phase": 0}}',
                 "--epochs", "1", "--max-steps", "2", "--out", str(out), "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert r["recipe"]["grad_dw"]["phase"] == 0 and r["recipe"]["grad_dx"]["format"] == "radix4"
    assert main(["--data", str(path), "--config", "{nope", "--out", str(out)]) == 2
    assert main(["--data", str(path), "--config", '{"bogus": 1}', "--out", str(out)]) == 2
    assert "unknown recipe keys ['bogus']" in capsys.readouterr().err


def test_train_on_a_dataset_object():
    from q4core.data import load_digits_8x8
    r = train(data=load_digits_8x8(0), model="mlp", epochs=1, max_steps=3, progress=False)
    assert r["task"] == "dataset" and r["steps"] == 3 and 0 <= r["test_accuracy"] <= 1


def test_q4_learns_digits_close_to_fp32():
    fp32 = train(task="digits", recipe="fp32", epochs=2, progress=False, seed=0)
    q4 = train(task="digits", recipe="q4", epochs=2, progress=False, seed=0)
    assert fp32["test_accuracy"] > 0.85
    assert q4["test_accuracy"] > 0.85 and q4["test_accuracy"] > fp32["test_accuracy"] - 0.08


def test_layer_input_errors():
    from q4core.nn import BatchNorm, Conv2d, Embedding, Linear, MaxPool2d
    with pytest.raises(ValueError, match="expects 3 input features"):
        Linear(3, 2).forward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="channels"):
        Conv2d(2, 1, 3).forward(np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        Conv2d(1, 1, 5).forward(np.zeros((1, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match="larger than the input"):
        MaxPool2d(4).forward(np.zeros((1, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match="Embedding ids"):
        Embedding(3, 2).forward(np.array([3]))
    with pytest.raises(ValueError, match="BatchNorm expects"):
        BatchNorm(3).forward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="in_features"):
        Linear(0, 2)
    with pytest.raises(TypeError, match="real array"):
        Linear(2, 2).forward(np.array([["a", "b"]]))


def test_step_recorder():
    from q4core.train import StepRecorder
    rec = StepRecorder(every=2, keep_gradients=True, max_values=50)
    train(task="digits", recipe="q4", epochs=1, max_steps=4, progress=False, on_step=rec, model="mlp")
    steps = sorted({r["step"] for r in rec.records})
    assert steps == [2, 4]
    layers = {r["layer"] for r in rec.records}
    assert len(layers) == 3
    q4 = [r for r in rec.records if r["mode"] == "q4"]
    assert q4 and all(r["weight_scale"] > 0 and r["grad_absmax"] > 0 and r["weight_min"] < r["weight_max"]
                      for r in q4)
    assert all(s["grad"].size <= 50 for s in rec.samples) and len(rec.samples) == 6
    with pytest.raises(ValueError, match="every"):
        StepRecorder(every=0)


def test_divergence_by_loss_limit():
    r = train(task="digits", epochs=1, max_steps=3, progress=False, max_loss=1e-3, model="mlp")
    assert r["stopped"] is not None and "limit 0.001" in r["stopped"] and r["steps"] == 0
    assert r["history"]["train_loss"] == [] and len(r["history"]["step_loss"]) == 1


def test_weights_gone_non_finite_at_the_last_step_stop_training_and_write_no_checkpoint(tmp_path, monkeypatch):
    from q4core.nn import optim
    real_step = optim.SGD.step

    def step_then_overflow(self, lr=None):
        real_step(self, lr)
        if self.steps == 2:       # the last step of max_steps=2
            self.named[0][1].data[0] = np.inf
    monkeypatch.setattr(optim.SGD, "step", step_then_overflow)
    ck = tmp_path / "ck.npz"
    r = train(task="digits", model="mlp", epochs=1, max_steps=2, progress=False, checkpoint=ck)
    first = dict(build_model("mlp", (64,), 10, seed=0).named_parameters())
    assert next(iter(first)) in r["stopped"] and "non-finite at step 1" in r["stopped"]
    assert r["test_accuracy"] is None and r["steps"] == 1
    assert not ck.exists()


def test_overflowing_outputs_stop_training_without_warnings(tmp_path):
    import warnings
    rng = np.random.default_rng(0)
    path = tmp_path / "big.npz"
    np.savez(path, X_train=rng.normal(size=(64, 5)) * 1e3, y_train=np.arange(64) % 3,
             X_test=rng.normal(size=(9, 5)), y_test=np.arange(9) % 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = train(data=path, model="mlp", epochs=1, max_steps=1, lr=3e38, progress=False)
    assert "not finite" in r["stopped"] and r["test_accuracy"] is None
    assert np.isnan(r["history"]["val_accuracy"][-1])


@pytest.mark.parametrize("option, value, message", [
    ("--lr", "0", "--lr must be a finite positive number"),
    ("--lr", "1e300", "--lr must be a finite positive number <= 3.4"),
    ("--lr", "nan", "--lr must be"),
    ("--batch-size", "0", "--batch-size must be an int >= 1"),
    ("--max-steps", "0", "--max-steps must be an int >= 1"),
    ("--max-steps", "-1", "--max-steps must be an int >= 1"),
    ("--epochs", "-1", "--epochs must be an int >= 0"),
    ("--threads", "0", "--threads must be an int >= 1"),
])
def test_zero_and_out_of_range_options_are_errors_not_defaults(tmp_path, capsys, option, value, message):
    out = tmp_path / "r.json"
    assert main(["--task", "digits", "--model", "mlp", option, value, "--out", str(out), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("name, value", [("lr", 0), ("lr", 0.0), ("batch_size", 0), ("max_steps", 0),
                                         ("max_steps", -1), ("lr", 1e39)])
def test_zero_is_an_error_in_the_api_too(name, value):
    with pytest.raises(ValueError, match=name):
        train(task="digits", model="mlp", epochs=1, progress=False, **{name: value})


def test_an_interrupt_exits_130_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import q4core.train as train_module

    def interrupted(**kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(train_module, "train", interrupted)
    out = tmp_path / "r.json"
    assert main(["--task", "digits", "--out", str(out), "--checkpoint", str(tmp_path / "ck.npz")]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "was not written" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("clash", [("--data", "--out"), ("--checkpoint", "--out"), ("--data", "--checkpoint")])
def test_one_file_for_two_roles_is_refused_before_training(tmp_path, capsys, clash):
    data = _npz(tmp_path)
    before = data.read_bytes()
    paths = {"--data": str(data), "--checkpoint": str(tmp_path / "ck.npz"), "--out": str(tmp_path / "r.json")}
    paths[clash[1]] = str(tmp_path / "." / Path(paths[clash[0]]).name)     # the same file, spelt differently
    argv = [a for opt, value in paths.items() for a in (opt, value)]
    assert main(argv + ["--no-progress", "--max-steps", "1"]) == 2
    assert f"{clash[0]} and {clash[1]} are the same file" in capsys.readouterr().err
    assert data.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]


@pytest.mark.parametrize("option, config", [(["--threads", "1"], '{"threads": 0}'),
                                            (["--simulate"], '{"simulate": false}'), (["--seed", "3"], '{"seed": 4}')])
def test_an_option_and_config_setting_the_same_field_is_an_error(tmp_path, capsys, option, config):
    out = tmp_path / "r.json"
    argv = ["--task", "digits", "--model", "mlp", "--recipe", "q4", "--config", config, "--out", str(out)]
    assert main(argv + option) == 2
    assert f"{option[0]} and --config both set" in capsys.readouterr().err and not out.exists()
