"""Opening a ``.npz`` archive someone handed us, with an error that says what the file really is.

``np.load`` reports a folder as ``IsADirectoryError``, an empty file as ``EOFError``, a ``.npy`` array by returning
an array (which then fails as "does not support the context manager protocol") and a file of random bytes as
"contains pickled data".  :func:`open_npz` looks at the file first and raises ``ValueError`` naming the file and
what it found; it never unpickles anything.
"""
from __future__ import annotations

import os
import stat
import zipfile

import numpy as np

__all__ = ["open_npz"]

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")     # a local file header; the end record of an empty archive


def open_npz(path, what):
    """``np.load(path, allow_pickle=False)`` of an ``.npz`` archive (an ``NpzFile``; use it in a ``with``).

    ``FileNotFoundError`` if ``path`` does not exist; ``ValueError`` starting with ``"{what} {path!r} is not a
    readable .npz file"`` and saying why (a folder, empty, a single ``.npy`` array, not a zip archive, a damaged
    archive) otherwise."""
    name = os.fspath(path)
    head = f"{what} {name!r} is not a readable .npz file"
    try:
        mode = os.stat(name).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {name!r} does not exist") from None
    except OSError as exc:
        raise ValueError(f"{head} ({exc.strerror})") from exc
    if stat.S_ISDIR(mode):
        raise ValueError(f"{head}: it is a folder")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{head}: it is not a regular file")
    try:
        with open(name, "rb") as fh:
            start = fh.read(8)
    except OSError as exc:
        raise ValueError(f"{head} ({exc.strerror})") from exc
    if not start:
        raise ValueError(f"{head}: it is empty (0 bytes)")
    if start.startswith(_NPY_MAGIC):
        raise ValueError(f"{head}: it is a single .npy array; save the named arrays with np.savez")
    if not start.startswith(_ZIP_MAGICS):
        raise ValueError(f"{head}: it is not a zip archive (it starts with {start!r})")
    try:
        return np.load(name, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise ValueError(f"{head}: a damaged or truncated archive ({type(exc).__name__}: {exc})") from exc
