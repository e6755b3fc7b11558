"""Checkpoints as plain ``.npz`` files (no pickle): parameters, buffers, optimizer slots and JSON metadata."""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

__all__ = ["save_checkpoint", "load_checkpoint"]

_META = "meta_json"


def save_checkpoint(path, model, optimizer=None, meta=None):
    """Write ``model`` (and ``optimizer``) state to ``path`` (.npz); ``meta`` must be JSON-serialisable."""
    arrays = dict(model.state_dict())
    if optimizer is not None:
        arrays.update({f"optim/{k}": v for k, v in optimizer.state_dict().items()})
    arrays[_META] = np.array(json.dumps(meta if meta is not None else {}, sort_keys=True))
    tmp = f"{os.fspath(path)}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_checkpoint(path, model, optimizer=None):
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``); returns
    the metadata dict.  Raises ``ValueError`` for a file that is not such a checkpoint."""
    try:
        with np.load(path, allow_pickle=False) as f:
            state = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a readable .npz checkpoint ({exc})") from exc
    if _META not in state:
        raise ValueError(f"{path}: not a q4core checkpoint (no {_META!r} entry)")
    model.load_state_dict(state)
    if optimizer is not None:
        optimizer.load_state_dict({k[len("optim/"):]: v for k, v in state.items() if k.startswith("optim/")})
    return json.loads(str(state[_META]))
