"""Files written so that nothing is lost: the old complete file or the new complete one, never a mix.

:func:`write_atomic` writes through a temporary file next to the destination (``.NAME.<pid>-XXXX.tmp``, so a
later run can tell a dead process's leftovers from a live one's) and renames it over the destination, after
removing the temporaries a killed writer left for the same destination (:func:`remove_stale_temporaries`);
:func:`check_replaceable` refuses a destination that exists and is not a regular file (a folder, a device such
as ``/dev/full``, a symlink, a FIFO), which a rename would silently replace.
"""
from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path

__all__ = ["check_replaceable", "write_atomic", "remove_stale_temporaries", "pid_alive"]

#: ``.NAME.<pid>-XXXX.tmp``: the destination's name and the writing process's id
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$")


def pid_alive(pid):
    """Whether process ``pid`` still runs (another user's process counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):     # another user's process; a pid no kernel hands out
        return True
    return True


def remove_stale_temporaries(folder, name=None):
    """Delete the ``.NAME.<pid>-XXXX.tmp`` regular files in ``folder`` (only those of destination ``name`` if
    given) whose writing process no longer runs; returns the removed paths (sorted).  Temporaries of live
    processes are left alone; a missing folder removes nothing."""
    removed = []
    try:
        entries = sorted(Path(folder).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for path in entries:
        match = _TMP_RE.match(path.name)
        if not match or (name is not None and match.group("name") != name) or pid_alive(int(match.group("pid"))):
            continue
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                path.unlink()
                removed.append(path)
        except FileNotFoundError:       # another process cleaned it up first
            pass
    return removed


def check_replaceable(path, what="destination"):
    """Raise ``ValueError`` if ``path`` exists and is not a regular file (folder, device, symlink, FIFO ...):
    an atomic rename would silently replace it."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a symlink" if stat.S_ISLNK(mode) else
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise ValueError(f"{what} {os.fspath(path)} exists and is {kind}; refusing to replace it")



def write_atomic(path, write, what="destination", mode=0o644):
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it over ``path``; the temporary
    is removed on any failure.  ``ValueError`` (naming ``what``) if ``path`` is not replaceable or its folder
    does not exist - checked before anything is written and again just before the rename."""
    path = Path(path)
    check_replaceable(path, what)
    if not path.parent.is_dir():
        raise ValueError(f"{what} {os.fspath(path)}: folder {path.parent} does not exist")
    remove_stale_temporaries(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, mode)   # mkstemp makes 0600; results are for everyone to read
        write(tmp)
        check_replaceable(path, what)   # still a regular file (or absent) just before the rename
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
