"""Data sets and models by name: the training tasks of :mod:`q4core.train`.

``digits`` (sklearn 8x8), ``mnist`` (MNIST 5k, 28x28), ``speech`` (spoken digits, 50 x 32 log-mel),
``chars`` (BBC News characters, bits per character), or a user's ``.npz`` (:func:`load_npz_task`).  A task
yields training batches from a seeded generator and evaluates a model on its validation or test split;
:data:`DEFAULT_MODEL` and :data:`DEFAULTS` give each task's model and hyper-parameters.
"""
from __future__ import annotations

import math
import os
import zipfile

import numpy as np

from ._npz import open_npz
from .nn.losses import softmax_cross_entropy

__all__ = ["TASKS", "DEFAULT_MODEL", "DEFAULTS", "MAX_CLASSES", "SPARSE_LABELS_EXEMPT", "MIN_LABEL_DENSITY",
           "load_task", "load_npz_task", "Classification", "CharLM"]

TASKS = ("digits", "mnist", "speech", "chars")
DEFAULT_MODEL = {"digits": "cnn", "mnist": "cnn", "speech": "speech_cnn", "chars": "char_lstm"}
#: default hyper-parameters per task: batch size, optimizer, learning rate
DEFAULTS = {"digits": (64, "sgd", 0.05), "mnist": (64, "sgd", 0.05), "speech": (32, "adam", 2e-3),
             "chars": (32, "adam", 3e-3), "npz": (64, "sgd", 0.05)}
#: the most classes a user's labels may name (the output layer has one unit per class)
MAX_CLASSES = 100_000
#: labels with a maximum above this must use at least MIN_LABEL_DENSITY of the classes 0..max
SPARSE_LABELS_EXEMPT = 100
MIN_LABEL_DENSITY = 0.1


# ---------------------------------------------------------------------------------------------- data
class Classification:
    kind = "classification"
    metric = "accuracy"

    def __init__(self, X_train, y_train, X_val, y_val, X_test, y_test, n_classes, name):
        self.X_train, self.y_train, self.X_val, self.y_val = X_train, y_train, X_val, y_val
        self.X_test, self.y_test, self.n_classes, self.name = X_test, y_test, n_classes, name

    @property
    def input_shape(self):
        return self.X_train.shape[1:]

    def batches(self, rng, batch_size):
        order = rng.permutation(len(self.y_train))
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            yield self.X_train[idx], self.y_train[idx]

    def n_batches(self, batch_size):
        return math.ceil(len(self.y_train) / batch_size)

    def evaluate(self, model, split, batch_size=256):
        X, y = (self.X_val, self.y_val) if split == "val" else (self.X_test, self.y_test)
        if len(y) == 0:
            return float("nan")
        correct = 0
        for i in range(0, len(y), batch_size):
            logits = model.forward(X[i:i + batch_size])
            if not np.isfinite(logits).all():     # the argmax of NaNs would pass for a chance-level accuracy
                where = "validation" if split == "val" else split
                raise FloatingPointError(f"the model's outputs on the {where} split are not finite")
            correct += int(np.sum(logits.argmax(axis=-1) == y[i:i + batch_size]))
        return correct / len(y)


class CharLM:
    kind = "language"
    metric = "bpc"

    def __init__(self, corpus, seq_len=64, eval_chars=20000, name="chars"):
        self.train_ids, self.seq_len = corpus.train, int(seq_len)
        self.val_ids, self.test_ids = corpus.val[:eval_chars + 1], corpus.test[:eval_chars + 1]
        self.n_classes, self.name = len(corpus.vocabulary), name
        self.input_shape = (self.seq_len,)

    def _windows(self, ids):
        n = (len(ids) - 1) // self.seq_len
        x = ids[:n * self.seq_len].reshape(n, self.seq_len)
        y = ids[1:n * self.seq_len + 1].reshape(n, self.seq_len)
        return x, y

    def n_batches(self, batch_size):
        return math.ceil(((len(self.train_ids) - 1) // self.seq_len) / batch_size)

    def batches(self, rng, batch_size):
        # a random offset each epoch so windows do not always start at the same characters
        off = int(rng.integers(0, self.seq_len))
        x, y = self._windows(self.train_ids[off:])
        order = rng.permutation(len(x))
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            yield x[idx], y[idx]

    def evaluate(self, model, split, batch_size=64):
        x, y = self._windows(self.val_ids if split == "val" else self.test_ids)
        total, count = 0.0, 0
        for i in range(0, len(x), batch_size):
            loss, _ = softmax_cross_entropy(model.forward(x[i:i + batch_size]), y[i:i + batch_size])
            n = y[i:i + batch_size].size
            total += loss * n
            count += n
        return total / count / math.log(2) if count else float("nan")


def _standardise(train, *others):
    """Per-feature standardisation with training statistics (float32)."""
    axes = (0, 1) if train.ndim == 3 else (0,)
    mean = train.mean(axis=axes, keepdims=True, dtype=np.float64)
    std = train.std(axis=axes, keepdims=True, dtype=np.float64) + 1e-6
    return [((a - mean) / std).astype(np.float32) for a in (train,) + others]


def load_task(task, seed, max_chars=None):
    from . import data
    if task == "digits":
        d = data.load_digits_8x8(seed)
    elif task == "mnist":
        d = data.load_mnist_5k(seed)
    elif task == "speech":
        d = data.load_spoken_digits(seed)
        Xtr, Xva, Xte = _standardise(d.X_train, d.X_val, d.X_test)
        return Classification(Xtr, d.y_train, Xva, d.y_val, Xte, d.y_test, len(d.classes), task)
    elif task == "chars":
        corpus = data.load_bbc_chars(seed, lowercase=True, max_chars=max_chars or 400_000)
        return CharLM(corpus)
    else:
        raise ValueError(f"task must be one of {TASKS} (or pass data=FILE.npz), got {task!r}")
    return Classification(d.X_train, d.y_train, d.X_val, d.y_val, d.X_test, d.y_test, len(d.classes), task)


def _count_classes(*label_sets):
    """The number of model outputs for these labels (``max + 1``); ``ValueError`` for fewer than 2 classes or
    labels far sparser than their maximum: a stray label of 2,000,000 among ten classes would otherwise build a
    model with two million mostly unused outputs."""
    labels = np.concatenate(label_sets)
    n_classes = int(labels.max()) + 1
    if n_classes < 2:
        raise ValueError("the labels name fewer than 2 classes")
    present = len(np.unique(labels))
    if n_classes > SPARSE_LABELS_EXEMPT and present < MIN_LABEL_DENSITY * n_classes:
        raise ValueError(f"the labels run up to {n_classes - 1} ({n_classes} classes) but only {present} distinct "
                         f"values occur: fewer than {MIN_LABEL_DENSITY:.0%} of the classes; number the classes "
                         f"0..K-1 (np.unique(y, return_inverse=True) does it)")
    return n_classes


def load_npz_task(path, seed=0, val_fraction=0.1):
    """Validate a user's ``.npz`` (``X_train, y_train, X_test, y_test`` [, ``X_val, y_val``]) and return a task.

    Images N x H x W become N x 1 x H x W; labels must be non-negative integers (integer-valued floats
    are accepted) below :data:`MAX_CLASSES`, and when they run above :data:`SPARSE_LABELS_EXEMPT` at least
    :data:`MIN_LABEL_DENSITY` of the classes ``0..max`` must occur; every split given must be non-empty.  Without
    a validation split, ``val_fraction`` of the training set is held out (seeded).  ``ValueError`` naming the
    array (or saying what the file is, if not an ``.npz``) for anything else.
    """
    path = os.fspath(path)
    with open_npz(path, "data file") as f:
        files = set(f.files)
        missing = [k for k in ("X_train", "y_train", "X_test", "y_test") if k not in files]
        if missing:
            raise ValueError(f"data file {path!r} lacks the arrays {missing}; it holds {sorted(files)}")
        if ("X_val" in files) != ("y_val" in files):
            raise ValueError(f"data file {path!r} must hold both X_val and y_val, or neither")
        try:
            arrays = {k: f[k] for k in files if k in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")}
        except ValueError as exc:
            raise ValueError(f"data file {path!r} holds object arrays, which are not accepted ({exc})") from exc
        except (zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
            raise ValueError(f"data file {path!r} is not a readable .npz file: an array cannot be read "
                             f"({type(exc).__name__}: {exc})") from exc

    def features(name):
        X = arrays[name]
        if X.dtype.kind not in "fiub":
            raise ValueError(f"{name} must be numeric, got dtype {X.dtype}")
        if X.ndim not in (2, 3, 4):
            raise ValueError(f"{name} must be N x D vectors or N x H x W / N x C x H x W images, got shape {X.shape}")
        X = X.astype(np.float32)
        if not np.isfinite(X).all():
            raise ValueError(f"{name} contains NaN or Inf")
        return X[:, None] if X.ndim == 3 else X

    def labels(name, n):
        y = arrays[name]
        if y.ndim != 1:
            raise ValueError(f"{name} must be a 1-D array of class labels, got shape {y.shape}")
        if len(y) != n:
            raise ValueError(f"{name} has {len(y)} labels but X has {n} examples")
        if y.dtype.kind == "f":
            if not (np.isfinite(y).all() and np.array_equal(y, np.round(y))):
                raise ValueError(f"{name} must hold integer class labels")
        elif y.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
        if y.size and y.min() < 0:
            raise ValueError(f"{name} must hold non-negative class labels, found {y.min()}")
        if y.size and y.max() >= MAX_CLASSES:     # before the int64 cast: 2**64 - 1 and 1e300 must not wrap
            raise ValueError(f"{name} holds the label {y.max()}: at most MAX_CLASSES = {MAX_CLASSES} classes "
                             f"(labels 0..{MAX_CLASSES - 1}) are accepted")
        return y.astype(np.int64)

    def split(xname, yname):
        X = features(xname)
        y = labels(yname, len(X))
        if len(X) == 0:
            raise ValueError(f"{xname} and {yname} hold no examples"
                             + ("; leave both out to hold out part of the training set" if xname == "X_val" else ""))
        return X, y

    Xtr, ytr = split("X_train", "y_train")
    Xte, yte = split("X_test", "y_test")
    if len(Xtr) < 2:
        raise ValueError(f"X_train needs at least 2 examples, got {len(Xtr)}")
    if Xtr.shape[1:] != Xte.shape[1:]:
        raise ValueError(f"X_train examples have shape {Xtr.shape[1:]} but X_test examples {Xte.shape[1:]}")
    if "X_val" in arrays:
        Xva, yva = split("X_val", "y_val")
        if Xva.shape[1:] != Xtr.shape[1:]:
            raise ValueError(f"X_val examples have shape {Xva.shape[1:]} but X_train examples {Xtr.shape[1:]}")
    else:
        order = np.random.default_rng(seed).permutation(len(ytr))
        n_val = max(1, int(round(val_fraction * len(ytr))))
        Xva, yva = Xtr[order[:n_val]], ytr[order[:n_val]]
        Xtr, ytr = Xtr[order[n_val:]], ytr[order[n_val:]]
    n_classes = _count_classes(ytr, yva, yte)
    return Classification(Xtr, ytr, Xva, yva, Xte, yte, n_classes, f"npz:{path}")
