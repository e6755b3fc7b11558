"""q4core.tasks: a user's .npz is read only when it holds what training needs; every other file or content is a
ValueError that names the array (or says what the file is), before any model is built."""
import os

import numpy as np
import pytest

from q4core.tasks import MAX_CLASSES, MIN_LABEL_DENSITY, SPARSE_LABELS_EXEMPT, load_npz_task
from q4core.train import main


def _arrays(n_train=40, n_test=12, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return dict(X_train=rng.normal(size=(n_train, 5)).astype(np.float32),
                y_train=np.arange(n_train) % classes,
                X_test=rng.normal(size=(n_test, 5)).astype(np.float32),
                y_test=np.arange(n_test) % classes)


def _save(tmp_path, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("split", ["train", "test", "val"])
def test_an_empty_split_is_refused_naming_it(tmp_path, split):
    arrays = _arrays()
    if split == "val":
        arrays.update(X_val=arrays["X_train"][:0], y_val=arrays["y_train"][:0])
    else:
        arrays.update({f"X_{split}": arrays[f"X_{split}"][:0], f"y_{split}": arrays[f"y_{split}"][:0]})
    with pytest.raises(ValueError, match=f"X_{split} and y_{split} hold no examples"):
        load_npz_task(_save(tmp_path, **arrays))


def test_a_held_out_validation_split_is_never_empty(tmp_path):
    task = load_npz_task(_save(tmp_path, **_arrays(n_train=2)))
    assert len(task.y_val) == 1 and len(task.y_train) == 1


@pytest.mark.parametrize("label", [2**40, 2**63 - 1, MAX_CLASSES])
def test_a_huge_label_is_refused_before_anything_is_allocated(tmp_path, label):
    arrays = _arrays()
    arrays["y_train"] = arrays["y_train"].astype(np.int64)
    arrays["y_train"][5] = label
    with pytest.raises(ValueError, match=f"y_train holds the label {label}: at most MAX_CLASSES = {MAX_CLASSES}"):
        load_npz_task(_save(tmp_path, **arrays))


@pytest.mark.parametrize("dtype, label", [(np.uint64, 2**64 - 1), (np.float64, 1e300)])
def test_labels_beyond_int64_do_not_wrap(tmp_path, dtype, label):
    arrays = _arrays()
    arrays["y_test"] = arrays["y_test"].astype(dtype)
    arrays["y_test"][0] = label
    with pytest.raises(ValueError, match="y_test holds the label"):
        load_npz_task(_save(tmp_path, **arrays))


def test_labels_far_sparser_than_their_maximum_are_refused_with_the_numbers(tmp_path):
    arrays = _arrays(classes=10)
    stray = 2 * SPARSE_LABELS_EXEMPT
    arrays["y_train"][0] = stray        # 11 distinct labels of stray + 1 classes
    with pytest.raises(ValueError, match=f"up to {stray} \\({stray + 1} classes\\) but only 11 distinct"):
        load_npz_task(_save(tmp_path, **arrays))


def test_dense_enough_labels_and_small_gaps_are_accepted(tmp_path):
    # labels 0 and 7 only: below the exemption, 8 outputs
    arrays = _arrays()
    arrays["y_train"] = np.where(arrays["y_train"] == 0, 0, 7)
    assert load_npz_task(_save(tmp_path, **arrays)).n_classes == 8
    # exactly MIN_LABEL_DENSITY of 0..n-1 present above the exemption
    n = 10 * SPARSE_LABELS_EXEMPT
    present = int(np.ceil(MIN_LABEL_DENSITY * n))
    arrays = _arrays(n_train=present, n_test=present)
    arrays["y_train"] = arrays["y_test"] = np.linspace(0, n - 1, present).astype(np.int64)
    np.savez(tmp_path / "dense.npz", **arrays)
    assert load_npz_task(tmp_path / "dense.npz").n_classes == n


def _npy(path):
    np.save(path, np.zeros(3))
    os.replace(str(path) + ".npy", path)


@pytest.mark.parametrize("make, why", [
    (lambda p: p.mkdir(), "it is a folder"),
    (lambda p: p.write_bytes(b""), "it is empty"),
    (_npy, "it is a single .npy array"),
    (lambda p: p.write_bytes(bytes(range(256)) * 4), "it is not a zip archive"),
    (lambda p: p.write_bytes(b"PK\x03\x04" + bytes(100)), "a damaged or truncated archive"),
])
def test_what_is_not_an_npz_is_named_for_what_it_is(tmp_path, make, why, capsys):
    path = tmp_path / "data.npz"
    make(path)
    with pytest.raises(ValueError, match=f"data file .* is not a readable .npz file: {why}"):
        load_npz_task(path)
    out = tmp_path / "o.json"
    assert main(["--data", str(path), "--out", str(out), "--no-progress"]) == 2
    assert why in capsys.readouterr().err
    assert not out.exists()


def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_npz_task(tmp_path / "nope.npz")
