"""Checkpoints as plain ``.npz`` files (no pickle): parameters, buffers, optimizer slots and JSON metadata.

Saving is atomic (a temporary file in the same folder, renamed over ``path``; removed again if anything fails) and
refuses a ``path`` that exists and is not a regular file.  Loading is all or nothing: every entry is checked
against the model (and optimizer) before anything is assigned.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from ._io import check_replaceable, write_atomic
from ._npz import open_npz

__all__ = ["save_checkpoint", "load_checkpoint", "check_checkpoint_path"]

_META = "meta_json"


def check_checkpoint_path(path):
    """``ValueError`` naming ``path`` if a checkpoint could not be saved there (it exists and is not a regular
    file, or its folder does not exist); call it before long work that ends in :func:`save_checkpoint`.
    Returns ``path`` as a string."""
    path = os.fspath(path)
    check_replaceable(path, "checkpoint path")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"checkpoint path {path}: folder {folder} does not exist")
    return path


def save_checkpoint(path, model, optimizer=None, meta=None):
    """Write ``model`` (and ``optimizer``) state to ``path`` (.npz); ``meta`` must be JSON-serialisable.

    ``ValueError`` if ``path`` exists and is not a regular file or its folder does not exist (checked before
    anything is written).  The old file stays complete until the new one replaces it; no temporary is left
    behind on failure."""
    path = check_checkpoint_path(path)
    arrays = dict(model.state_dict())
    if optimizer is not None:
        arrays.update({f"optim/{k}": v for k, v in optimizer.state_dict().items()})
    arrays[_META] = np.array(json.dumps(meta if meta is not None else {}, sort_keys=True))
    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    write_atomic(path, write, "checkpoint path")


def _check_model_state(path, model, state):
    """``ValueError`` naming every parameter/buffer entry that is missing, unexpected, of the wrong shape or dtype
    (parameters: floating point and finite; buffers: numbers or booleans - a string or complex entry would fail,
    or lose its imaginary part, only while being assigned)."""
    mine = model.state_dict()
    problems = []
    for key, value in mine.items():
        if key.startswith("param/") and key not in state:
            problems.append(f"missing {key!r} (shape {np.shape(value)})")
    modules = {name for name, _ in model.named_modules()}
    for key, value in state.items():
        if not (key.startswith("param/") or key.startswith("buffer/")):
            continue
        if key not in mine:
            # a buffer the module sets only once used (static scales) is fine; one of a module the model lacks is not
            module = key[len("buffer/"):].rsplit("/", 1)[0] if key.startswith("buffer/") else None
            if module is None or module not in modules:
                problems.append(f"unexpected {key!r} (shape {np.shape(value)})")
        elif np.shape(value) != np.shape(mine[key]):
            problems.append(f"{key!r}: shape {np.shape(value)} in the file, {np.shape(mine[key])} in the model")
        elif value.dtype.kind not in ("f" if key.startswith("param/") else "fiub"):
            problems.append(f"{key!r}: dtype {value.dtype} in the file, {np.asarray(mine[key]).dtype} in the model")
        elif key.startswith("param/") and not np.isfinite(value).all():
            problems.append(f"{key!r} holds NaN or Inf")
    if problems:
        raise ValueError(f"{path}: checkpoint does not fit the model ({len(problems)} problem(s)): "
                         + "; ".join(problems))


def load_checkpoint(path, model, optimizer=None):
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``); returns
    the metadata dict.  Raises ``ValueError`` for a file that is not such a checkpoint (empty, truncated, not a
    zip, metadata not a JSON object) or does not fit the model/optimizer (names, shapes and dtypes in the message;
    parameters and optimizer slots must be real and finite, buffers numeric); then nothing was changed."""
    with open_npz(path, "checkpoint") as f:
        try:
            state = {k: f[k] for k in f.files}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
            raise ValueError(f"checkpoint {os.fspath(path)!r} is not a readable .npz file: an entry cannot be read "
                             f"({type(exc).__name__}: {exc})") from exc
    if _META not in state:
        raise ValueError(f"{path}: not a q4core checkpoint (no {_META!r} entry)")
    try:
        meta = json.loads(str(state[_META]))
    except ValueError as exc:
        raise ValueError(f"{path}: its {_META!r} entry is not JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: its {_META!r} entry must be a JSON object, got {type(meta).__name__}")
    _check_model_state(path, model, state)
    optim_state = {k[len("optim/"):]: v for k, v in state.items() if k.startswith("optim/")}
    if optimizer is not None:
        try:
            optimizer.check_state_dict(optim_state)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    # everything checked: assign (and put the model back as it was should a module still refuse its buffers)
    before = model.state_dict()
    try:
        model.load_state_dict(state)
    except BaseException as exc:
        model.load_state_dict(before)
        if isinstance(exc, (KeyError, TypeError, ValueError, OverflowError)):
            raise ValueError(f"{path}: checkpoint does not fit the model ({exc})") from exc
        raise
    if optimizer is not None:
        optimizer.load_state_dict(optim_state)
    return meta
