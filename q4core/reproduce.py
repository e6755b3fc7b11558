"""``q4-reproduce``: run the paper notebooks through papermill and regenerate every figure.

Usage::

    q4-reproduce                         # every notebook, profile "default", figures into figures/
    q4-reproduce --profile quick         # the CI profile (a few minutes for all notebooks)
    q4-reproduce --only 02 --only 03     # or --only 02,03 ; a number or a full stem (02_adaptive_rescaling)
    q4-reproduce --jobs 2                # notebooks in parallel processes
    q4-reproduce -p seed 3 --list        # list notebooks, their parameters and profiles; nothing runs

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
  ``Q4CORE_FIGURES_DIR``.
* Executed notebooks go to ``--output-dir`` (default ``notebooks/executed/``) with papermill's timestamps and
  durations and nbclient's ``execution`` cell metadata removed, so re-runs diff cleanly.
* ``figures_dir/manifest.json`` records each figure file (``NN_*.pdf|png|json``) of each notebook that
  succeeded: notebook, parameters, profile, code version (``git describe --always --dirty`` of the
  repository, else the package version) and sha256.  Entries of notebooks that failed or did not run are
  kept as they were.
* A failing notebook does not stop the others; at the end the runner reports notebook, cell and error and
  exits 1.  Because :func:`~q4core.plotting.save_figure` writes atomically, the figures a failed notebook had
  not reached keep their previous good versions.
* Errors in the command (unknown notebook, unknown parameter, missing profile) exit 2 before anything runs.
"""
import argparse
import ast
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

PROFILES = ("quick", "default", "full")
KERNEL_NAME = "python3"
NOTEBOOK_RE = re.compile(r"^(\d\d)_[A-Za-z0-9_]+\.ipynb$")
REQUIRED_PARAMETERS = ("profile", "seed", "figures_dir")
_TIMING_KEYS = ("start_time", "end_time", "duration")


class UsageError(ValueError):
    """A bad command line: unknown notebook, unknown parameter or profile.  Raised before anything runs."""


def repository_root():
    """The folder holding ``notebooks/``: the git checkout this package lives in, else the current folder."""
    here = Path(__file__).resolve().parent.parent
    if (here / "notebooks").is_dir():
        return here
    return Path.cwd()


# ----------------------------------------------------------------------------------------- notebooks
def find_notebooks(notebooks_dir):
    """``{"01": Path(...01_image_precision.ipynb), ...}`` for every ``NN_name.ipynb`` in the folder."""
    found = {}
    for path in sorted(Path(notebooks_dir).glob("*.ipynb")):
        match = NOTEBOOK_RE.match(path.name)
        if match:
            if match.group(1) in found:
                raise UsageError(f"two notebooks numbered {match.group(1)}: {found[match.group(1)].name}, {path.name}")
            found[match.group(1)] = path
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
        params["profile"] = profile
        params["figures_dir"] = str(Path(figures_dir).resolve())
        jobs.append((number, path, params))
    return jobs


# ----------------------------------------------------------------------------------------- kernel
def kernel_environment():
    """A private Jupyter data folder with a ``python3`` kernelspec for this interpreter; returns its path."""
    import importlib.util
    if importlib.util.find_spec("ipykernel") is None:
        raise UsageError(f"ipykernel is not installed for {sys.executable}; the notebooks need it: "
                         f"{sys.executable} -m pip install ipykernel")
    root = Path(tempfile.mkdtemp(prefix="q4core-jupyter-"))
    spec_dir = root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (q4core)", "language": "python",
            "metadata": {"supported_encryption": ["curve"]}}
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return root


def _kernel_env(figures_dir, jupyter_root):
    env = {"MPLBACKEND": "Agg", "SOURCE_DATE_EPOCH": "0", "PYTHONHASHSEED": "0",
           "Q4CORE_FIGURES_DIR": str(Path(figures_dir).resolve())}
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
    """A kernel manager that encrypts the kernel's ZMQ sockets (CurveZMQ) where jupyter_client, pyzmq and the
    kernelspec support it, so ipykernel (>= 7.3) does not warn about plain TCP on every notebook; None (papermill's
    default manager) elsewhere."""
    try:
        import zmq
        from jupyter_client.manager import AsyncKernelManager
        from traitlets import default
    except ImportError:
        return None
    if not hasattr(AsyncKernelManager, "transport_encryption") or not zmq.has("curve"):
        return None

    class EncryptedKernelManager(AsyncKernelManager):
        @default("transport_encryption")
        def _default_transport_encryption(self):
            return "auto"      # provisions keys only when the kernelspec says the kernel supports them
    return EncryptedKernelManager


def run_notebook(path, params, output_path, env):
    """Execute one notebook with papermill; returns ``{"ok": bool, "cell", "error"}`` (never raises)."""
    import nbformat
    import papermill
    os.environ.update(env)
    result = {"notebook": Path(path).stem, "ok": True, "cell": None, "error": None}
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
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
    return result


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


def update_manifest(figures_dir, succeeded, profile, version):
    """Rewrite ``manifest.json``: entries of the notebooks in ``succeeded`` replaced, others kept."""
    figures_dir = Path(figures_dir)
    path = figures_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        manifest = {}
    figures = manifest.get("figures", {})
    for number, notebook, params in succeeded:
        figures = {k: v for k, v in figures.items() if v.get("notebook") != notebook}
        for file in sorted(figures_dir.glob(f"{number}_*")):
            if file.suffix in (".pdf", ".png", ".json"):
                shown = {k: v for k, v in params.items() if k != "figures_dir"}
                figures[file.name] = {"notebook": notebook, "profile": profile, "parameters": shown,
                                      "code_version": version, "sha256": _sha256(file)}
    manifest = {"about": "figures made by q4-reproduce (q4core.reproduce); sha256 of each file",
                "figures": dict(sorted(figures.items()))}
    fd, tmp = tempfile.mkstemp(dir=figures_dir, prefix=".manifest.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def reproduce(profile="default", only=(), overrides=None, jobs=1, notebooks_dir=None, figures_dir=None,
              output_dir=None, out=None):
    """Run the notebooks; returns the list of per-notebook results (dicts with ``ok``, ``cell``, ``error``).

    Raises :class:`UsageError` before anything runs on a bad request.
    """
    out = out if out is not None else sys.stdout
    if profile not in PROFILES:
        raise UsageError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if not isinstance(jobs, int) or jobs < 1:
        raise UsageError(f"jobs must be a positive integer, got {jobs!r}")
    root = repository_root()
    notebooks_dir = Path(notebooks_dir) if notebooks_dir else root / "notebooks"
    figures_dir = Path(figures_dir) if figures_dir else root / "figures"
    output_dir = Path(output_dir) if output_dir else notebooks_dir / "executed"
    notebooks = select(find_notebooks(notebooks_dir), only)
    if not notebooks:
        raise UsageError(f"no notebooks NN_name.ipynb in {notebooks_dir}")
    work = plan(notebooks, profile, dict(overrides or {}), figures_dir)
    jupyter_root = kernel_environment()
    env = _kernel_env(figures_dir, jupyter_root)
    figures_dir.mkdir(parents=True, exist_ok=True)
    version = code_version(root)
    results = []
    args = [(path, params, output_dir / path.name, env) for _, path, params in work]
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
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(run_notebook, *a) for a in args]
            for future in futures:
                try:
                    results.append(future.result())
                except Exception:   # the worker process itself died
                    results.append({"notebook": "?", "ok": False, "cell": None, "error": traceback.format_exc()})
                _print_result(results[-1], out)
    succeeded = [(number, path.stem, params) for (number, path, params), r in zip(work, results) if r["ok"]]
    update_manifest(figures_dir, succeeded, profile, version)
    shutil.rmtree(jupyter_root, ignore_errors=True)
    failed = [r for r in results if not r["ok"]]
    if failed:
        print(f"\n{len(failed)} notebook(s) failed (their unfinished figures keep their previous versions):",
              file=out)
        for r in failed:
            print(f"  {r['notebook']}: {r['cell'] or 'before/outside a cell'}: {r['error']}", file=out)
    return results


def _print_result(result, out):
    status = "ok" if result["ok"] else f"FAILED at {result['cell'] or '?'}: {result['error']}"
    print(f"  {result['notebook']}: {status}", file=out, flush=True)


def list_notebooks(notebooks_dir, out=None):
    import nbformat
    out = out if out is not None else sys.stdout
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
    parser.add_argument("--notebooks-dir", default=None, help="folder of NN_name.ipynb (default: notebooks/)")
    parser.add_argument("--figures-dir", default=None, help="where figures go (default: figures/)")
    parser.add_argument("--output-dir", default=None, help="executed notebooks (default: notebooks/executed/)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    notebooks_dir = Path(args.notebooks_dir) if args.notebooks_dir else repository_root() / "notebooks"
    try:
        if args.list:
            list_notebooks(notebooks_dir)
            return 0
        overrides = {name: parse_value(value) for name, value in args.parameter}
        results = reproduce(args.profile, args.only, overrides, args.jobs, notebooks_dir, args.figures_dir,
                            args.output_dir)
    except UsageError as exc:
        print(f"q4-reproduce: error: {exc}", file=sys.stderr)
        return 2
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
