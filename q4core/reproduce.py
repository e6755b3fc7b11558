"""``q4-reproduce``: run the paper notebooks through papermill and regenerate every figure.

Usage::

    q4-reproduce                         # every notebook, profile "default", figures into figures/
    q4-reproduce --profile quick         # the CI profile (a few minutes for all notebooks)
    q4-reproduce --only 02 --only 03     # or --only 02,03 ; a number or a full stem (02_adaptive_rescaling)
    q4-reproduce --jobs 2                # notebooks in parallel processes
    q4-reproduce -p seed 3 --list        # list notebooks, their parameters and profiles; nothing runs
    q4-reproduce --scheduler local:2     # every training run of the notebooks on a 2-worker Dask LocalCluster
    q4-reproduce --scheduler tcp://HOST:8786   # ... on a running Dask cluster (pip install 'q4core[cluster]')
    q4-reproduce --cache-info --profile quick  # what the run cache holds, what the profile would still run
    q4-reproduce --recompute             # re-run every training run (overwrite the cache); --no-cache: ignore it

Conventions every notebook follows (notebooks 04, 05 ... too)
---------------------------------------------------------------
* A notebook is ``notebooks/NN_name.ipynb`` (``NN`` two digits).  The committed source holds NO outputs and
  no execution counts, its kernelspec is pinned to ``python3``, and exactly one code cell is tagged
  ``parameters`` (plain ``name = literal`` assignments, one per line).
* The parameters cell defines at least ``profile``, ``seed`` and ``figures_dir``.  The runner always passes
  ``profile``, ``figures_dir`` (absolute) and the profile's values.
* Profiles live in the notebook's own metadata - no central table::

      nb.metadata["q4core"] = {"profiles": {"quick": {...}, "default": {...}, "full": {...}}}

  ``quick`` must keep the notebook well under a minute; ``default`` makes the publication figures;
  ``full`` may use several seeds and longer training.  Every name in a profile must be a name assigned in
  the parameters cell (checked before anything runs, like ``-p`` names).
* Figures are saved only through :func:`q4core.plotting.save_figure` with names starting with the notebook
  number (``02_ranges``); each figure's numbers go to the JSON beside it.  The last cell(s) print "what we
  measured" from variables computed in the run, never typed-in numbers.
* No library code in notebooks: computations live in ``q4core`` modules.

What a run does
---------------
* Kernel: papermill runs kernel ``python3`` - the runner writes a kernelspec named ``python3`` for the
  *current* interpreter (``sys.executable -m ipykernel_launcher``) into a private folder put first on
  ``JUPYTER_PATH``, so the notebooks always run in the environment the runner runs in, even where no
  ``python3`` kernel is installed or it points elsewhere.  ipykernel missing -> a clear error.
* The kernel's environment gets ``MPLBACKEND=Agg``, ``SOURCE_DATE_EPOCH=0``, ``PYTHONHASHSEED=0`` and
  ``Q4CORE_FIGURES_DIR`` (the notebook's staging folder, see below).
* The kernel manager does not interrupt a kernel it is shutting down (jupyter_client >= 8 sends SIGINT first,
  and ipykernel logged ``KeyboardInterrupt caught in kernel.`` after successful notebooks).
* Executed notebooks go to ``--output-dir`` (default ``notebooks/executed/``) with papermill's timestamps and
  durations and nbclient's ``execution`` cell metadata removed, so re-runs diff cleanly.
* Staging: a notebook saves its figures into ``figures_dir/.q4core-staging/NN_name/`` (that is the
  ``figures_dir`` it is given), a folder the runner holds under an exclusive ``fcntl.flock`` for the whole run
  and removes afterwards.  Only when the notebook succeeds are its figures published: each moved into
  ``figures_dir`` by an atomic rename, then the manifest updated - all under the manifest lock.  A failing
  notebook publishes nothing: all its previous figures stay as they were, never a mix of two runs.  (The
  executed notebook therefore shows the staging folder as its ``figures_dir`` parameter.)  Destinations are
  checked before anything runs: a figure file that exists and is not a regular file stops the run.
* ``figures_dir/manifest.json`` records each figure file (``NN_*.pdf|png|json``) a successful run wrote:
  notebook, parameters, profile, code version (``git describe --always --dirty`` of the repository, else the
  package version) and sha256.  Files the run did not write (a figure the default profile makes and quick
  does not) keep the entry of the run that wrote them; entries of files that no longer exist are dropped.
  Updates are read-modify-write under an ``fcntl.flock`` of the ``figures_dir`` folder itself (no lock file
  left among the figures) and written atomically, so concurrent runners never lose an entry.
* A failing notebook does not stop the others; at the end the runner reports notebook, cell and error and
  exits 1.
* Processes: with ``--jobs N`` the workers poll the runner and exit when it dies (even by SIGKILL); each kernel
  polls its parent the same way (ipykernel's ``JPY_PARENT_PID`` poller), so nothing goes on running or writing
  after the runner is gone.  At start the runner removes what dead runs left behind: ``q4core-jupyter-<pid>-*``
  kernelspec folders and ``.NAME.EXT.<pid>-*.tmp`` files of processes that no longer run, figure temporaries
  in the older pid-less form (``.NN_name.png.XXXXXXXX.tmp``), and staging folders no live run holds.
* Errors in the command (unknown notebook, unknown parameter, a parameter whose type differs from its
  default's, missing profile, a figures/output folder that is a file, no notebooks found - the message says
  where the runner looked) exit 2 before anything runs.
* Installed from a wheel, the package holds no notebooks: pass ``--notebooks-dir`` (a clone's ``notebooks/``).
* Training runs (:mod:`q4core.runs`): the kernels get ``Q4CORE_SCHEDULER`` (``--scheduler``; ``local:N`` starts
  one ``LocalCluster`` in the runner that every kernel connects to), ``Q4CORE_NO_CACHE`` / ``Q4CORE_RECOMPUTE``
  (``--no-cache`` / ``--recompute``), and ``Q4CORE_RUN_LABEL`` = ``NN_name/profile``, under which the runs a
  notebook asks for are logged so that ``--cache-info`` can say how many of them are cached.
"""
import argparse
import ast
import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from ._io import check_replaceable, pid_alive, write_atomic

PROFILES = ("quick", "default", "full")
KERNEL_NAME = "python3"
# run in the kernel before the notebook (binds no name in the notebook's namespace)
# (traitlets' item form of a list option: one line, appended to the kernel's exec_lines)
KERNEL_EXEC_LINE = "--IPKernelApp.exec_lines=import q4core._kernel_log as _q4_kernel_log; del _q4_kernel_log"
NOTEBOOK_RE = re.compile(r"^(\d\d)_[A-Za-z0-9_]+\.ipynb$")
REQUIRED_PARAMETERS = ("profile", "seed", "figures_dir")
_TIMING_KEYS = ("start_time", "end_time", "duration")
STAGING = ".q4core-staging"
_FIGURE_SUFFIXES = (".pdf", ".png", ".json")
_JUPYTER_PREFIX = "q4core-jupyter-"


class UsageError(ValueError):
    """A bad command line: unknown notebook, unknown parameter or profile.  Raised before anything runs."""


def repository_root():
    """The folder holding ``notebooks/``: the git checkout this package lives in, else the current folder."""
    here = Path(__file__).resolve().parent.parent
    if (here / "notebooks").is_dir():
        return here
    return Path.cwd()


def _candidate_notebook_dirs():
    here = Path(__file__).resolve().parent.parent / "notebooks"
    cwd = Path.cwd() / "notebooks"
    return [here] if here == cwd else [here, cwd]


def default_notebooks_dir():
    """``notebooks/`` of the checkout this package lives in, else of the current folder; UsageError saying where
    it looked if neither exists (a wheel install holds no notebooks: use ``--notebooks-dir``)."""
    candidates = _candidate_notebook_dirs()
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise UsageError(f"no notebooks folder: looked in {' and '.join(map(str, candidates))}; q4core installed from "
                     f"a wheel holds no notebooks - pass --notebooks-dir (the notebooks/ folder of a q4core clone)")


# ----------------------------------------------------------------------------------------- notebooks
def find_notebooks(notebooks_dir):
    """``{"01": Path(...01_image_precision.ipynb), ...}`` for every ``NN_name.ipynb`` in the folder.

    UsageError if the folder does not exist or holds no such notebook (the message names the folder)."""
    notebooks_dir = Path(notebooks_dir)
    if not notebooks_dir.is_dir():
        raise UsageError(f"--notebooks-dir {notebooks_dir}: " +
                         ("not a folder" if notebooks_dir.exists() else "no such folder"))
    found = {}
    for path in sorted(Path(notebooks_dir).glob("*.ipynb")):
        match = NOTEBOOK_RE.match(path.name)
        if match:
            if match.group(1) in found:
                raise UsageError(f"two notebooks numbered {match.group(1)}: {found[match.group(1)].name}, {path.name}")
            found[match.group(1)] = path
    if not found:
        raise UsageError(f"no notebooks NN_name.ipynb in {notebooks_dir.resolve()}")
    return found


def parameters_cell(nb):
    """The one code cell tagged ``parameters`` (ValueError if there are none or several)."""
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"expected exactly one cell tagged 'parameters', found {len(cells)}")
    if cells[0].cell_type != "code":
        raise ValueError("the cell tagged 'parameters' must be a code cell")
    return cells[0]


def parameter_defaults(nb):
    """``{name: default}`` of the parameters cell (literal values; non-literals as ``None``)."""
    tree = ast.parse(parameters_cell(nb).source)
    defaults = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    try:
                        defaults[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        defaults[target.id] = None
    return defaults


def notebook_profiles(nb):
    """The ``metadata["q4core"]["profiles"]`` dict of a notebook (``{}`` if it has none)."""
    return dict(nb.metadata.get("q4core", {}).get("profiles", {}))


def parse_value(text):
    """``-p`` values: Python literals (``3``, ``0.5``, ``[1, 2]``, ``True``, ``'x'``) else the plain string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _kind(default):
    if isinstance(default, bool):
        return "a bool (True/False)"
    if isinstance(default, int):
        return "an int"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, (list, tuple)):
        return "a list"
    return f"a {type(default).__name__}"


def _fits(value, default):
    """Whether ``value`` has the type of the parameter's ``default`` (None: anything; float accepts int; a
    list's elements are checked against the default's when those all have one type)."""
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            return False
        kinds = {_kind(d) for d in default if d is not None}
        if len(kinds) == 1:
            model = next(d for d in default if d is not None)
            return all(_fits(v, model) for v in value)
        return True
    if isinstance(default, dict):
        return isinstance(value, dict)
    return isinstance(value, type(default))


def check_parameter_types(path, defaults, values, source):
    """UsageError naming the parameter if a value's type differs from its default's in the parameters cell."""
    for name, value in values.items():
        if name in defaults and not _fits(value, defaults[name]):
            raise UsageError(f"{Path(path).name}: parameter {name} ({source}) must be {_kind(defaults[name])} like "
                             f"its default {defaults[name]!r}, got {value!r} ({type(value).__name__})")


def select(notebooks, only):
    """Keep the notebooks named in ``only`` (numbers like ``02`` or ``2`` or full stems); UsageError if unknown."""
    if not only:
        return dict(notebooks)
    chosen = {}
    for item in only:
        for token in filter(None, (t.strip() for t in item.split(","))):
            key = token[:-6] if token.endswith(".ipynb") else token
            number = key.split("_", 1)[0]
            number = number.zfill(2) if number.isdigit() else number
            path = notebooks.get(number)
            if path is None or ("_" in key and path.stem != key):
                raise UsageError(f"unknown notebook {token!r}; known: {', '.join(p.stem for p in notebooks.values())}")
            chosen[number] = path
    return dict(sorted(chosen.items()))


def plan(notebooks, profile, overrides, figures_dir):
    """Check every notebook against the request and return ``[(number, path, parameters), ...]``.

    Raises :class:`UsageError` on a notebook without a proper parameters cell, a missing profile, or a
    parameter name (from the profile or ``-p``) that its parameters cell does not define.
    """
    import nbformat
    jobs = []
    for number, path in notebooks.items():
        nb = nbformat.read(path, as_version=4)
        try:
            defaults = parameter_defaults(nb)
        except (ValueError, SyntaxError) as exc:
            raise UsageError(f"{path.name}: {exc}") from None
        missing = [n for n in REQUIRED_PARAMETERS if n not in defaults]
        if missing:
            raise UsageError(f"{path.name}: the parameters cell does not define {', '.join(missing)}")
        profiles = notebook_profiles(nb)
        if profiles and profile not in profiles:
            raise UsageError(f"{path.name}: no profile {profile!r} in its metadata (has {', '.join(profiles)})")
        params = dict(profiles.get(profile, {}))
        params.update(overrides)
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise UsageError(f"{path.name}: unknown parameter(s) {', '.join(unknown)}; "
                             f"its parameters are {', '.join(defaults)}")
        check_parameter_types(path, defaults, profiles.get(profile, {}), f"profile {profile}")
        check_parameter_types(path, defaults, overrides, "-p")
        params["profile"] = profile
        params["figures_dir"] = str(staging_dir(figures_dir, path.stem))
        jobs.append((number, path, params))
    return jobs


# ----------------------------------------------------------------------------------------- kernel
def kernel_environment():
    """A private Jupyter data folder with a ``python3`` kernelspec for this interpreter; returns its path."""
    import importlib.util
    if importlib.util.find_spec("ipykernel") is None:
        raise UsageError(f"ipykernel is not installed for {sys.executable}; the notebooks need it: "
                         f"{sys.executable} -m pip install ipykernel")
    root = Path(tempfile.mkdtemp(prefix=f"{_JUPYTER_PREFIX}{os.getpid()}-"))
    spec_dir = root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (q4core)", "language": "python",
            "metadata": {"supported_encryption": ["curve"]}}
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return root


def _kernel_env(figures_dir, jupyter_root, runs_env=None):
    env = {"MPLBACKEND": "Agg", "SOURCE_DATE_EPOCH": "0", "PYTHONHASHSEED": "0",
           "Q4CORE_FIGURES_DIR": str(Path(figures_dir).resolve()), **(runs_env or {})}
    old = os.environ.get("JUPYTER_PATH")
    env["JUPYTER_PATH"] = str(jupyter_root) + (os.pathsep + old if old else "")
    return env


# ----------------------------------------------------------------------------------------- running
def strip_timing(nb):
    """Remove what changes on every run: papermill timestamps/durations and paths, nbclient ``execution``
    metadata, the random id of papermill's injected-parameters cell."""
    pm = nb.metadata.get("papermill")
    if pm is not None:
        for key in _TIMING_KEYS:
            pm.pop(key, None)
        pm.pop("input_path", None)
        pm.pop("output_path", None)
    for cell in nb.cells:
        meta = cell.get("metadata", {})
        meta.pop("execution", None)
        if "injected-parameters" in meta.get("tags", []):
            cell["id"] = "injected-parameters"   # papermill gives it a random id on every run
        cell_pm = meta.get("papermill")
        if cell_pm is not None:
            for key in _TIMING_KEYS:
                cell_pm.pop(key, None)
    return nb


def _kernel_manager_class():
    """papermill's kernel manager with three changes.

    * No interrupt at shutdown: jupyter_client (>= 8) sends SIGINT to the kernel before asking it to shut down,
      and ipykernel, idle by then, logs ``[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel`` after every
      successful notebook.  The notebook has finished when papermill shuts the kernel down, so there is nothing
      to interrupt; a real interrupt (not shutting down) still goes through.
    * No traceback from ipykernel's shutdown race: the kernel imports ``q4core._kernel_log`` first, which drops
      the one log record ipykernel 7.x can emit after a finished notebook (a ZMQError ENOTSOCK from a send on a
      socket closed under it, once the kernel shuts down); every other kernel log line still reaches stderr.
    * It encrypts the kernel's ZMQ sockets (CurveZMQ) where jupyter_client, pyzmq and the kernelspec support it,
      so ipykernel (>= 7.3) does not warn about plain TCP on every notebook.
    None (papermill's default manager) if jupyter_client is missing."""
    try:
        import zmq
        from jupyter_client.manager import AsyncKernelManager
        from traitlets import default
    except ImportError:
        return None

    class QuietShutdownKernelManager(AsyncKernelManager):
        async def _async_interrupt_kernel(self):
            if getattr(self, "shutting_down", False):
                return
            await super()._async_interrupt_kernel()

        def format_kernel_cmd(self, extra_arguments=None):
            cmd = super().format_kernel_cmd(extra_arguments)
            if "ipykernel_launcher" in cmd:      # an IPython kernel: filter its shutdown race (q4core/_kernel_log)
                cmd.append(KERNEL_EXEC_LINE)
            return cmd

    if not hasattr(AsyncKernelManager, "transport_encryption") or not zmq.has("curve"):
        return QuietShutdownKernelManager

    class EncryptedKernelManager(QuietShutdownKernelManager):
        @default("transport_encryption")
        def _default_transport_encryption(self):
            return "auto"      # provisions keys only when the kernelspec says the kernel supports them
    return EncryptedKernelManager


def staging_dir(figures_dir, stem):
    """Where notebook ``stem`` saves its figures before they are published: ``figures_dir/.q4core-staging/stem``."""
    return Path(figures_dir).resolve() / STAGING / stem


def _lock_dir(folder, blocking=True):
    """An fd of ``folder`` (created if missing) under an exclusive ``fcntl.flock``; None if ``blocking`` is False
    and another process holds it.  The lock dies with the process (even on SIGKILL).  If the folder was removed or
    replaced while we waited, the new one is locked instead."""
    folder = Path(folder)
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:      # a parent removed meanwhile (an emptied staging folder): again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        mine = os.fstat(fd)
        try:
            now = os.stat(folder)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
            return fd
        os.close(fd)                   # removed by the previous holder: lock the folder that is there now


@contextlib.contextmanager
def _locked(folder):
    """Exclusive ``fcntl.flock`` of the folder itself for the block (no lock file left lying about)."""
    fd = _lock_dir(folder)
    try:
        yield
    finally:
        os.close(fd)


def _empty(folder):
    for entry in Path(folder).iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def run_notebook(path, params, output_path, env, figures_dir=None, record=None):
    """Execute one notebook with papermill; returns ``{"ok": bool, "cell", "error", "published"}`` (never raises).

    With ``figures_dir``, the notebook's ``figures_dir`` parameter must be its staging folder
    (:func:`staging_dir`); the folder is emptied first and held under a lock for the whole run, and on success
    its figures are published (:func:`publish`) with ``record`` = ``{"profile", "parameters", "code_version"}``
    for the manifest."""
    import nbformat
    import papermill
    os.environ.update(env)
    result = {"notebook": Path(path).stem, "ok": True, "cell": None, "error": None, "published": []}
    output_path = Path(output_path)
    stage = Path(params["figures_dir"]) if figures_dir is not None else None
    with contextlib.ExitStack() as stack:
        if stage is not None:
            os.environ["Q4CORE_FIGURES_DIR"] = str(stage)   # plotting.default_figures_dir() stages too
            stack.enter_context(_locked(stage))
            _empty(stage)   # whatever is there was left by a dead run (we hold the lock)
            stack.callback(_remove_stage, stage)   # runs before the lock is released
        try:
            output_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            result.update(ok=False, error=f"output folder {output_path.parent}: {exc}")
            return result
        manager = _kernel_manager_class()
        extra = {"kernel_manager_class": manager} if manager is not None else {}
        try:
            papermill.execute_notebook(str(path), str(output_path), parameters=params, kernel_name=KERNEL_NAME,
                                       cwd=str(Path(path).parent), progress_bar=False, log_output=False, **extra)
        except papermill.PapermillExecutionError as exc:
            result.update(ok=False, cell=(exc.cell_index, exc.exec_count), error=f"{exc.ename}: {exc.evalue}")
        except Exception as exc:   # kernel died, bad notebook ...: report, keep going with the others
            result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        if output_path.exists():
            try:
                nb = nbformat.read(output_path, as_version=4)
                nbformat.write(strip_timing(nb), output_path)
            except Exception:   # a half-written output notebook must not hide the real error
                pass
        if result["cell"] is not None:
            result["cell"] = _describe_cell(output_path if output_path.exists() else path, *result["cell"])
        if stage is not None:
            if result["ok"]:
                try:
                    number = Path(path).name[:2]
                    result["published"] = publish(stage, figures_dir, number, Path(path).stem, record or {})
                except Exception as exc:
                    result.update(ok=False, error=f"publishing the figures: {type(exc).__name__}: {exc}")
    return result


def _remove_stage(stage):
    """Remove a staging folder (its holder calls this before unlocking) and the staging root if now empty."""
    shutil.rmtree(stage, ignore_errors=True)
    try:
        Path(stage).parent.rmdir()
    except OSError:
        pass   # another notebook is staging there


def publish(stage, figures_dir, number, notebook, record):
    """Move the figures ``NN_*.pdf|png|json`` from ``stage`` into ``figures_dir`` (each an atomic rename) and
    record exactly those files in the manifest, all under the manifest lock.  Every destination is checked
    first: one that exists and is not a regular file -> ValueError, nothing moved.  Returns the names moved."""
    figures_dir = Path(figures_dir)
    files = sorted(p for p in Path(stage).iterdir()
                   if p.name.startswith(f"{number}_") and p.suffix in _FIGURE_SUFFIXES
                   and stat.S_ISREG(os.lstat(p).st_mode))
    if not files:
        return []
    with _locked(figures_dir):
        for file in files:
            check_replaceable(figures_dir / file.name, "figure file")
        entries = {}
        for file in files:
            entries[file.name] = {"notebook": notebook, **record, "sha256": _sha256(file)}
        for file in files:
            os.replace(file, figures_dir / file.name)
        _write_manifest(figures_dir, entries)
    return [f.name for f in files]


def _describe_cell(path, index, exec_count):
    """``In [5] (cell 8 of the executed notebook): first line of its source``.

    ``path`` is the executed notebook; papermill's own ``cell_index`` does not count the error banner it adds
    on top, so the cell is found by its execution count."""
    import nbformat
    try:
        cells = nbformat.read(path, as_version=4).cells
        hits = [i for i, c in enumerate(cells) if c.cell_type == "code" and c.get("execution_count") == exec_count]
        index = hits[0] if hits else index
        lines = cells[index].source.strip().splitlines()
        first = lines[0][:60] if lines else ""
    except Exception:
        first = "?"
    return f"In [{exec_count}] (cell {index} of the executed notebook): {first}"


def code_version(root):
    """``git describe --always --dirty`` of ``root`` if it is a checkout, else ``q4core.__version__``."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True,
                             text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return "git:" + out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from . import __version__
    return __version__


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_manifest(figures_dir, entries):
    """Merge ``{file name: entry}`` into ``manifest.json`` and write it atomically; the caller holds the lock.
    Entries of files that no longer exist are dropped."""
    figures_dir = Path(figures_dir)
    path = figures_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        manifest = {}
    figures = dict(manifest.get("figures", {}))
    figures.update(entries)
    figures = {name: entry for name, entry in figures.items() if (figures_dir / name).is_file()}
    manifest = {"about": "figures made by q4-reproduce (q4core.reproduce); sha256 of each file",
                "figures": dict(sorted(figures.items()))}
    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(manifest, fh, indent=1, sort_keys=True)
            fh.write("\n")
    write_atomic(path, write, "manifest")
    return path


def update_manifest(figures_dir, entries):
    """Merge ``{file name: entry}`` into ``figures_dir/manifest.json`` under its lock (read-modify-write by
    concurrent runners loses nothing); returns the manifest's path."""
    figures_dir = Path(figures_dir)
    with _locked(figures_dir):
        return _write_manifest(figures_dir, entries)


def remove_stale_files(figures_dir):
    """Remove what dead runs left: ``q4core-jupyter-<pid>-*`` folders in the temp folder and temporary files
    in ``figures_dir`` of processes no longer running, staging folders no live run holds.  Returns the paths."""
    from .plotting import remove_stale_temporaries
    removed = []
    pattern = re.compile(rf"^{_JUPYTER_PREFIX}(\d+)-")
    for folder in sorted(Path(tempfile.gettempdir()).glob(f"{_JUPYTER_PREFIX}*")):
        match = pattern.match(folder.name)
        if match and folder.is_dir() and not folder.is_symlink() and not pid_alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    removed += remove_stale_temporaries(figures_dir)
    # before q4core put the writer's pid in the name (.NAME.EXT.XXXXXXXX.tmp, mkstemp's 8 characters): no
    # current version writes these, so they are leftovers of killed runs
    legacy = re.compile(r"^\.\d\d_[A-Za-z0-9_.-]+\.(pdf|png|json)\.[A-Za-z0-9_]{8}\.tmp$")
    for path in sorted(Path(figures_dir).glob(".*.tmp")):
        if legacy.match(path.name) and stat.S_ISREG(os.lstat(path).st_mode):
            path.unlink(missing_ok=True)
            removed.append(path)
    staging = Path(figures_dir) / STAGING
    if staging.is_dir():
        for folder in sorted(p for p in staging.iterdir() if p.is_dir() and not p.is_symlink()):
            fd = _lock_dir(folder, blocking=False)
            if fd is None:
                continue            # a live run is using it
            try:
                _remove_stage(folder)
                removed.append(folder)
            finally:
                os.close(fd)
        try:
            staging.rmdir()
        except OSError:
            pass
    return removed


def _watch_parent(parent_pid, interval=0.2):
    """In a worker: exit at once when the runner (``parent_pid``) is gone, even if it was SIGKILLed."""
    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(3)
            time.sleep(interval)
    threading.Thread(target=watch, name="q4core-parent-watch", daemon=True).start()


def check_destinations(figures_dir, numbers):
    """UsageError before anything runs if a figure file of these notebooks in ``figures_dir`` (or its
    ``manifest.json``) exists and is not a regular file: publishing would have to replace it."""
    folder = Path(figures_dir)
    if not folder.is_dir():
        return
    paths = [folder / "manifest.json"] + sorted(p for n in numbers for p in folder.glob(f"{n}_*")
                                                if p.suffix in _FIGURE_SUFFIXES)
    for path in paths:
        try:
            check_replaceable(path, "figure file")
        except ValueError as exc:
            raise UsageError(f"--figures-dir: {exc}") from None


def _check_folder(folder, option):
    """Create ``folder`` if needed; UsageError naming the option if it is a file or cannot be made."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option} {folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} {folder}: cannot create it ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {folder}: not writable")


def _runs_environment(scheduler, no_cache, recompute):
    """The kernels' Q4CORE_* run settings; a ``local:N`` scheduler is started here, once, for every kernel.
    UsageError for a bad scheduler or a missing Dask."""
    from . import runs
    env = {}     # what is not asked for is inherited from the runner's environment
    if no_cache:
        env["Q4CORE_NO_CACHE"] = "1"
    if recompute:
        env["Q4CORE_RECOMPUTE"] = "1"
    if scheduler is None:
        return env
    try:
        executor = runs.executor_from_spec(scheduler)
    except (ValueError, ImportError) as exc:
        raise UsageError(f"--scheduler: {exc}") from None
    if isinstance(executor, runs.Dask) and scheduler.startswith("local:"):
        scheduler = executor.client().scheduler.address     # one cluster for all kernels
    env["Q4CORE_SCHEDULER"] = scheduler
    return env


def cache_info(profile="default", only=(), notebooks_dir=None, out=None):
    """Print what the run cache holds and, per selected notebook, how many of the runs it asked for at its last
    execution with this profile are cached (:func:`q4core.runs.cache_info`)."""
    from . import runs
    if profile not in PROFILES:
        raise UsageError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    notebooks_dir = Path(notebooks_dir) if notebooks_dir else default_notebooks_dir()
    notebooks = select(find_notebooks(notebooks_dir), only)
    runs.cache_info(labels=[f"{path.stem}/{profile}" for path in notebooks.values()], out=out)


def default_folders(profile, root, notebooks_dir):
    """``(figures_dir, output_dir)`` when none are given.  Publication profiles (``default``, ``full``) write the
    committed ``figures/`` of the repository root (:func:`repository_root`: the checkout this package runs from,
    else the current folder) and ``notebooks/executed/``; ``quick`` writes a scratch ``build/quick/figures`` and
    ``build/quick/executed`` there instead, so a smoke test never overwrites the publication figures."""
    if profile == "quick":
        return root / "build" / "quick" / "figures", root / "build" / "quick" / "executed"
    return root / "figures", notebooks_dir / "executed"


def check_provenance(profile, figures_dir, root, version, allow_dirty):
    """Publication figures come from a clean, committed tree: a ``default``/``full`` run into the repository's
    ``figures/`` from a checkout with uncommitted changes is refused (UsageError) unless ``allow_dirty``; then the
    figures' JSON carry ``"dirty_tree"`` (returned here, passed to the kernels as ``Q4CORE_DIRTY_TREE``)."""
    if profile == "quick" or not version.endswith("-dirty"):
        return None
    if Path(figures_dir).resolve() != (root / "figures").resolve():
        return None
    if not allow_dirty:
        raise UsageError(f"the checkout has uncommitted changes ({version}): publication figures are made from a "
                         "clean, committed tree - commit first, write elsewhere with --figures-dir, or pass "
                         "--allow-dirty (each figure's JSON then records the dirty tree)")
    return version


def reproduce(profile="default", only=(), overrides=None, jobs=1, notebooks_dir=None, figures_dir=None,
              output_dir=None, out=None, scheduler=None, no_cache=False, recompute=False, allow_dirty=False,
              report_dir=None):
    """Run the notebooks; returns the list of per-notebook results (dicts with ``ok``, ``cell``, ``error``).
    ``scheduler``, ``no_cache``, ``recompute``: where and whether the notebooks' training runs run
    (:mod:`q4core.runs`).  Folders default to :func:`default_folders`; :func:`check_provenance` decides whether
    a dirty tree may write publication figures (``allow_dirty``).  ``report_dir``: when every notebook
    succeeded, build the HTML report there (:func:`q4core.report.build_report`).

    Raises :class:`UsageError` before anything runs on a bad request.
    """
    out = out if out is not None else sys.stdout
    if profile not in PROFILES:
        raise UsageError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if not isinstance(jobs, int) or jobs < 1:
        raise UsageError(f"jobs must be a positive integer, got {jobs!r}")
    root = repository_root()
    notebooks_dir = Path(notebooks_dir) if notebooks_dir else default_notebooks_dir()
    default_figures, default_output = default_folders(profile, root, notebooks_dir)
    figures_dir = Path(figures_dir) if figures_dir else default_figures
    output_dir = Path(output_dir) if output_dir else default_output
    for folder, option in ((figures_dir, "--figures-dir"), (output_dir, "--output-dir")):
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{option} {folder}: exists and is not a folder")
    notebooks = select(find_notebooks(notebooks_dir), only)
    work = plan(notebooks, profile, dict(overrides or {}), figures_dir)
    check_destinations(figures_dir, [number for number, _, _ in work])
    _check_folder(figures_dir, "--figures-dir")
    _check_folder(output_dir, "--output-dir")
    version = code_version(root)
    dirty = check_provenance(profile, figures_dir, root, version, allow_dirty)
    if report_dir is not None and Path(report_dir).exists() and not Path(report_dir).is_dir():
        raise UsageError(f"--report {report_dir}: exists and is not a folder")
    remove_stale_files(figures_dir)
    results = []
    jupyter_root = kernel_environment()
    try:
        env = _kernel_env(figures_dir, jupyter_root, _runs_environment(scheduler, no_cache, recompute))
        if dirty:
            env["Q4CORE_DIRTY_TREE"] = dirty
        args = []
        session = f"{os.getpid()}-{time.time_ns()}"
        for _, path, params in work:
            record = {"profile": profile, "code_version": version,
                      "parameters": {k: v for k, v in params.items() if k != "figures_dir"}}
            nb_env = {**env, "Q4CORE_RUN_LABEL": f"{path.stem}/{profile}", "Q4CORE_RUN_SESSION": session}
            args.append((path, params, output_dir / path.name, nb_env, figures_dir, record))
        print(f"q4-reproduce: profile {profile}, {len(work)} notebook(s), jobs {jobs}, figures -> {figures_dir}",
              file=out, flush=True)
        if jobs == 1 or len(work) == 1:
            saved = dict(os.environ)
            try:
                for a in args:
                    results.append(run_notebook(*a))
                    _print_result(results[-1], out)
            finally:
                os.environ.clear()
                os.environ.update(saved)
        else:
            with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, initializer=_watch_parent,
                                                        initargs=(os.getpid(),)) as pool:
                futures = [pool.submit(run_notebook, *a) for a in args]
                for (_, path, _), future in zip(work, futures):
                    try:
                        results.append(future.result())
                    except Exception:   # the worker process itself died
                        results.append({"notebook": path.stem, "ok": False, "cell": None,
                                        "error": traceback.format_exc()})
                    _print_result(results[-1], out)
    finally:
        shutil.rmtree(jupyter_root, ignore_errors=True)
        if scheduler is not None and scheduler.startswith("local:"):
            from .runs import close_executors
            close_executors()
    failed = [r for r in results if not r["ok"]]
    if report_dir is not None and results and not failed:
        from .report import build_report
        done = build_report(output_dir, figures_dir, report_dir)
        print(f"report: {len(done['pages'])} notebook page(s), {len(done['figures'])} figure(s) -> "
              f"{Path(report_dir) / 'index.html'}", file=out, flush=True)
    if failed:
        print(f"\n{len(failed)} notebook(s) failed (nothing of theirs published: their figures keep their "
              f"previous versions):",
              file=out)
        for r in failed:
            print(f"  {r['notebook']}: {r['cell'] or 'before/outside a cell'}: {r['error']}", file=out)
    return results


def _print_result(result, out):
    status = "ok" if result["ok"] else f"FAILED at {result['cell'] or '?'}: {result['error']}"
    print(f"  {result['notebook']}: {status}", file=out, flush=True)


def list_notebooks(notebooks_dir=None, out=None):
    """Print each notebook's parameters and profiles; UsageError if the folder is missing or holds none."""
    import nbformat
    out = out if out is not None else sys.stdout
    notebooks_dir = Path(notebooks_dir) if notebooks_dir else default_notebooks_dir()
    for path in find_notebooks(notebooks_dir).values():
        nb = nbformat.read(path, as_version=4)
        print(f"{path.stem}", file=out)
        try:
            print(f"  parameters: {parameter_defaults(nb)}", file=out)
        except (ValueError, SyntaxError) as exc:
            print(f"  parameters: ERROR {exc}", file=out)
        for name, values in notebook_profiles(nb).items():
            print(f"  profile {name}: {values}", file=out)


def build_parser():
    parser = argparse.ArgumentParser(prog="q4-reproduce", description="Run the q4core notebooks with papermill "
                                     "and regenerate every figure (see the q4core.reproduce docstring).")
    parser.add_argument("--profile", default="default", choices=PROFILES, help="parameter profile (default: default)")
    parser.add_argument("--only", action="append", default=[], metavar="NN",
                        help="run only these notebooks (02, 2, 02_adaptive_rescaling; repeat or comma list)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="notebooks in N parallel processes")
    parser.add_argument("--list", action="store_true", help="list notebooks, parameters and profiles; run nothing")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="parameter passed to every selected notebook (Python literal or string)")
    parser.add_argument("--notebooks-dir", default=None,
                        help="folder of NN_name.ipynb (default: notebooks/ of the checkout q4core runs from, else of "
                             "the current folder; needed with a wheel install)")
    parser.add_argument("--figures-dir", default=None,
                        help="where figures go (default: figures/ of the repository root - the checkout q4core runs "
                             "from, else the current folder; build/quick/figures there for --profile quick)")
    parser.add_argument("--output-dir", default=None,
                        help="executed notebooks (default: notebooks/executed/; build/quick/executed for quick)")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="let a checkout with uncommitted changes write publication figures (their JSON say so)")
    parser.add_argument("--report", default=None, metavar="DIR",
                        help="after a successful run, render the executed notebooks and figures as HTML into DIR")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="run the notebooks' training runs on Dask: tcp://HOST:8786 (a running scheduler) or "
                             "local:N (a LocalCluster of N single-threaded workers); also processes:N, serial")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the run cache")
    parser.add_argument("--recompute", action="store_true", help="re-run every training run, overwrite the cache")
    parser.add_argument("--cache-info", action="store_true",
                        help="what the run cache holds and what the profile would still run; run nothing")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    notebooks_dir = Path(args.notebooks_dir) if args.notebooks_dir else None
    try:
        if args.list:
            list_notebooks(notebooks_dir)
            return 0
        if args.cache_info:
            cache_info(args.profile, args.only, notebooks_dir)
            return 0
        overrides = {name: parse_value(value) for name, value in args.parameter}
        results = reproduce(args.profile, args.only, overrides, args.jobs, notebooks_dir, args.figures_dir,
                            args.output_dir, scheduler=args.scheduler, no_cache=args.no_cache,
                            recompute=args.recompute, allow_dirty=args.allow_dirty, report_dir=args.report)
    except UsageError as exc:
        print(f"q4-reproduce: error: {exc}", file=sys.stderr)
        return 2
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
