"""q4core.checkpoint and optimizer state: all-or-nothing loading, precise errors, safe atomic saving."""
import os
import warnings

import numpy as np
import pytest

from q4core.checkpoint import load_checkpoint, save_checkpoint
from q4core.nn.optim import SGD, Adam
from q4core.train import build_model


def _state(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def test_loading_into_the_wrong_model_changes_nothing(tmp_path):
    saved = build_model("mlp", (4,), 3, seed=1)
    path = tmp_path / "ck.npz"
    save_checkpoint(path, saved)
    other = build_model("mlp", (4,), 5, seed=2)     # same first layers, different last one
    before = _state(other)
    assert any(np.array_equal(before[k], v) is False for k, v in saved.state_dict().items() if k in before
               and np.shape(before[k]) == np.shape(v))   # something that would have been overwritten
    with pytest.raises(ValueError, match=r"does not fit the model.*shape \(\d+, 3\) in the file, \(\d+, 5\)"):
        load_checkpoint(path, other)
    assert _same(_state(other), before)


def test_optimizer_mismatch_changes_neither_model_nor_optimizer(tmp_path):
    model = build_model("mlp", (4,), 3, seed=1)
    opt = Adam(model.named_parameters(), lr=1e-3)
    path = tmp_path / "ck.npz"
    save_checkpoint(path, model, opt)
    fresh = build_model("mlp", (4,), 3, seed=7)
    sgd = SGD(fresh.named_parameters(), lr=0.1)
    before = _state(fresh)
    with pytest.raises(ValueError, match="optimizer state does not fit this SGD.*missing entry 'velocity/"):
        load_checkpoint(path, fresh, sgd)
    assert _same(_state(fresh), before)


def test_optimizer_slot_of_the_wrong_shape_is_refused_not_broadcast():
    w = np.zeros((8, 256), np.float32)

    class P:
        data, grad, decay = w, np.zeros_like(w), True
    opt = Adam([("fc.weight", P())])
    state = opt.state_dict()
    state["m/fc.weight"] = np.ones((1, 256), np.float32)
    with pytest.raises(ValueError, match=r"'m/fc.weight': shape \(1, 256\) in the state, \(8, 256\) in the optimizer"):
        opt.load_state_dict(state)
    assert not opt.m["fc.weight"].any() and opt.steps == 0
    with pytest.raises(ValueError, match="unexpected entries 'x/y'"):
        opt.load_state_dict({**opt.state_dict(), "x/y": np.zeros(1)})
    with pytest.raises(ValueError, match="'steps' must be a non-negative integer"):
        opt.load_state_dict({**opt.state_dict(), "steps": np.zeros(2)})


@pytest.mark.parametrize("content, why", [(b"", "empty"), (b"PK\x03\x04trunc", "damaged or truncated"),
                                          (b"not a zip", "not a zip archive"),
                                          (b"\x93NUMPY\x01\x00", "single .npy array")])
def test_unreadable_files_raise_value_error(tmp_path, content, why):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"not a readable .npz file: .*{why}"):
        load_checkpoint(path, build_model("mlp", (4,), 3, seed=0))


def test_a_folder_is_never_replaced_and_no_temporary_is_left(tmp_path):
    model = build_model("mlp", (4,), 3, seed=0)
    target = tmp_path / "ck.npz"
    target.mkdir()
    with pytest.raises(ValueError, match=r"ck.npz exists and is a folder"):
        save_checkpoint(target, model)
    assert target.is_dir() and sorted(os.listdir(tmp_path)) == ["ck.npz"]
    with pytest.raises(ValueError, match="does not exist"):
        save_checkpoint(tmp_path / "no" / "ck.npz", model)
    assert sorted(os.listdir(tmp_path)) == ["ck.npz"]


def test_failed_save_keeps_the_old_checkpoint_and_leaves_no_temporary(tmp_path):
    model = build_model("mlp", (4,), 3, seed=0)
    path = tmp_path / "ck.npz"
    save_checkpoint(path, model, meta={"v": 1})
    old = path.read_bytes()

    class Exploding:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("disk on fire")

    class HalfWritten:      # the first array is written, the second fails: a half-written temporary
        def state_dict(self):
            return {"param/a": np.zeros(1000), "param/b": Exploding()}
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_checkpoint(path, HalfWritten(), meta={"v": 2})
    assert path.read_bytes() == old and sorted(os.listdir(tmp_path)) == ["ck.npz"]
    assert load_checkpoint(path, build_model("mlp", (4,), 3, seed=5)) == {"v": 1}


def test_check_checkpoint_path_before_the_work(tmp_path):
    from q4core.checkpoint import check_checkpoint_path
    assert check_checkpoint_path(tmp_path / "new.npz") == str(tmp_path / "new.npz")
    (tmp_path / "file.npz").write_bytes(b"old")
    assert check_checkpoint_path(tmp_path / "file.npz") == str(tmp_path / "file.npz")   # a file may be replaced
    os.mkfifo(tmp_path / "fifo.npz")
    with pytest.raises(ValueError, match="fifo.npz exists and is not a regular file"):
        check_checkpoint_path(tmp_path / "fifo.npz")


def _dead_pid():
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_saving_removes_the_temporaries_of_killed_writers_of_that_file_only(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f".ck.npz.{dead}-abcd1234.tmp"
    live = tmp_path / f".ck.npz.{os.getpid()}-efgh5678.tmp"
    other = tmp_path / f".other.npz.{dead}-abcd1234.tmp"
    for p in (stale, live, other):
        p.write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path / "ck.npz", build_model("mlp", (4,), 3, seed=0))
    assert not stale.exists() and live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ck.npz", live.name, other.name])


def _tampered(tmp_path, change):
    model = build_model("mlp", (4,), 3, seed=0)
    save_checkpoint(tmp_path / "ck.npz", model, SGD(list(model.named_parameters()), lr=0.1), meta={"epoch": 1})
    with np.load(tmp_path / "ck.npz") as f:
        state = dict(f)
    change(state)
    np.savez(tmp_path / "bad.npz", **state)
    return tmp_path / "bad.npz"


@pytest.mark.parametrize("entry, value, message", [
    ("param/layers.1.weight", lambda v: np.full(v.shape, "a"), r"'param/layers.1.weight': dtype <U1 in the file"),
    ("param/layers.1.weight", lambda v: v.astype(np.complex64), "dtype complex64 in the file"),
    ("param/layers.1.weight", lambda v: v.astype(bool), "dtype bool in the file"),
    ("param/layers.1.bias", lambda v: np.full(v.shape, np.nan, np.float32), r"'param/layers.1.bias' holds NaN or Inf"),
    ("buffer/layers.2/running_mean", lambda v: np.full(v.shape, "x"), "dtype <U1 in the file"),
    ("optim/velocity/layers.1.weight", lambda v: np.full(v.shape, np.inf, np.float32), "holds NaN or Inf"),
    ("meta_json", lambda v: np.array("[1, 2]"), "must be a JSON object, got list"),
])
def test_tampered_entries_are_refused_by_name_and_nothing_changes(tmp_path, entry, value, message):
    path = _tampered(tmp_path, lambda state: state.__setitem__(entry, value(state[entry])))
    model = build_model("mlp", (4,), 3, seed=1)
    opt = SGD(list(model.named_parameters()), lr=0.1)
    before, slots = _state(model), {k: v.copy() for k, v in opt.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=message):
            load_checkpoint(path, model, opt)
    assert _same(before, _state(model)) and _same(slots, opt.state_dict())
