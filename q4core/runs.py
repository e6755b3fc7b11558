"""Every training run a cached task: a run's identity, the run cache, and the executors that fan runs out.

A run (:class:`RunConfig`) is one :func:`q4core.train.train` call without callbacks.  Its **identity** is the
canonical JSON of: the task name and a sha256 of the data it trains on (the arrays as loaded), the resolved
recipe (:meth:`q4core.recipe.Recipe.to_dict`, without ``threads``), every other training keyword (model,
epochs, schedule, ...), the seed, the **numerics version** (:func:`numerics_version`: a sha256 of the package
sources that define a run's numbers - formats, quantizers and their numpy references, GEMM wrappers, layers,
recipes, trainer, tasks, data loaders - read from the package files, not from git, so a README edit invalidates
nothing) and the numpy version.  Its **key** is the sha256 of that JSON.  The compiled kernels (Cython and C) are
implementations held bit for bit to those references by the tests, so, like the ISA kernel a machine picks, they
are not in the identity: each entry records the :func:`implementation_version` that computed it.  Kernel thread
counts are not part of the identity either: the integer kernels, OpenBLAS float32 GEMMs and the float16 path give
the same numbers for any thread count (tests/test_runs.py checks 1 against 2 threads).

**Cache** (:class:`RunCache`): one JSON file per key, ``<folder>/<key[:2]>/<key>.json`` holding the identity,
the result (history and metrics: what ``train`` returns, numpy scalars as Python numbers, NaN written as
``NaN``) and the sha256 of the result's canonical JSON.  The folder is ``$Q4CORE_CACHE``, else ``.q4cache/`` at
the repository root when q4core runs from a checkout (the folder holding ``notebooks/``), else - an installed
wheel - ``.q4cache/`` in the current folder.  Writes are atomic (:func:`q4core._io.write_atomic`); an entry that
does not parse, whose key, identity or checksum does not match, is reported (a ``RuntimeWarning``), recomputed and
overwritten, never trusted.  **Committed results** (``results/<label>/<key>.json``, same format, written by
``python -m q4core.runs export``) are read too; their key contains the numerics version, so a result of older
numerics is never found: it is recomputed.

**Executors**: :class:`Serial` (in this process; the default), :class:`Processes` (``jobs`` spawned processes)
and :class:`Dask` (``"tcp://HOST:8786"`` connects to a running scheduler, ``"local:N"`` starts a ``LocalCluster``
of N single-threaded worker processes; needs ``pip install 'q4core[cluster]'``).  In processes and Dask workers
every run pins its BLAS and OpenMP (GEMM) threads to 1 - each worker its own core, no oversubscription.
:func:`map` returns results in the order asked, whatever order they finish in; cached runs are not run again
and a run asked twice runs once.  A run that raises is reported with its configuration and traceback while the
others go on; :class:`RunsFailed` is raised at the end, after the finished runs are cached.

Process-wide defaults, read from the environment at every :func:`map` call (``q4-reproduce`` sets them for the
notebook kernels): ``Q4CORE_SCHEDULER`` (``serial`` | ``processes:N`` | ``local:N`` | ``tcp://HOST:PORT``),
``Q4CORE_CACHE`` (folder), ``Q4CORE_NO_CACHE=1`` (neither read nor write), ``Q4CORE_RECOMPUTE=1`` (run everything,
overwrite the cache), ``Q4CORE_RESULTS`` (committed results folder, default ``results/`` beside ``.q4cache/``),
``Q4CORE_PROGRESS=0`` (no progress bar).

Command line: ``python -m q4core.runs info | export --to results/ --label NAME | verify --sample N --seed S
[--max-seconds T]``.
"""
from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import contextlib
import functools
import hashlib
import importlib
import inspect
import json
import math
import multiprocessing
import os
import random
import sys
import time
import traceback
import uuid
import warnings
from pathlib import Path

import numpy as np

from ._io import write_atomic

__all__ = ["RunConfig", "RunCache", "RunsFailed", "MissingDaskError", "Serial", "Processes", "Dask",
           "numerics_version", "implementation_version", "identity", "run_key", "execute", "map", "default_cache",
           "default_executor", "executor_from_spec", "close_executors", "TIMING_KEYS", "numbers_of", "main"]

#: bump when the layout of a cache entry or of a normalised result changes
RESULT_FORMAT = 1
#: package files that define a run's numbers (globs relative to the q4core package folder): the Python engine -
#: formats, quantizers and their numpy references, the GEMM wrappers and their int64 reference, scaling, layers,
#: recipes, trainer, tasks, data loaders
NUMERICS_SOURCES = ("formats.py", "quant.py", "gemm.py", "scaling.py", "train.py", "tasks.py", "data.py",
                    "nn/*.py", "recipe/*.py")
#: the compiled implementations of those numbers: Cython modules and C kernels.  They are not part of a run's
#: identity - a faster kernel gives the same bits, just as the ISA kernel a machine picks (AMX, VNNI, AVX2,
#: portable) never was part of it - because every one is held bit for bit to its numpy reference by the tests
#: (test_gemm, test_quant, test_fused_operands, test_bsgemm, test_fuzz, integer == simulated training), and end
#: to end by recomputing committed runs (:func:`verify`, run by the test suite).  Each cache entry records the
#: implementation that computed it (:func:`implementation_version`, outside the key) as provenance.
IMPLEMENTATION_SOURCES = ("_quant.pyx", "_gemm.pyx", "_bsencode.pyx", "_bsgemm.pyx", "_layout.pyx", "src/*.h",
                          "src/*.c")
#: sources that change the numbers of some runs only: (file, recipe field, value or tuple of values; a dotted field
#: looks into an operand role) - hashed into those runs' identities (simulated FP16 accumulation is used by
#: accumulator="fp16" recipes alone, the block-scaled formats and layers by the mxfp4 / nvfp4 recipes)
_BLOCK = ("mxfp4", "nvfp4")
CONDITIONAL_SOURCES = (("accumulate.py", "accumulator", "fp16"), ("blockscaled.py", "weight.format", _BLOCK),
                       ("blockscaled_encode.py", "weight.format", _BLOCK), ("bsgemm.py", "weight.format", _BLOCK))
#: result keys that are measurements of time, not numbers of the run (left out by :func:`numbers_of`)
TIMING_KEYS = ("wall_seconds", "epoch_seconds")
#: train() keywords a cached run cannot take (callbacks and side effects)
_NOT_CACHEABLE = ("on_step", "progress", "checkpoint", "return_model", "task", "data", "recipe", "seed")
_PACKAGE = Path(__file__).resolve().parent


class RunsFailed(RuntimeError):
    """Some runs of a :func:`map` raised; ``failures`` is a list of ``(RunConfig, traceback text)``."""

    def __init__(self, failures, total):
        self.failures = failures
        lines = [f"{len(failures)} of {total} run(s) failed:"]
        for config, tb in failures:
            lines.append(f"--- {config!r}\n{tb.rstrip()}")
        super().__init__("\n".join(lines))


class MissingDaskError(ImportError):
    """A Dask scheduler was asked for and dask.distributed is not installed."""


# ---------------------------------------------------------------------------------------------- identity
def sources_hash(package, patterns, what="numerics"):
    """sha256 of the files of ``package`` matching ``patterns`` (globs), each hashed with its path relative to
    the package, in sorted order."""
    package = Path(package)
    h = hashlib.sha256()
    files = sorted({p for pattern in patterns for p in package.glob(pattern) if p.is_file()})
    if not files:
        raise RuntimeError(f"no {what} sources found under {package}")
    for path in files:
        h.update(path.relative_to(package).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def numerics_version(package=None):
    """sha256 of the package sources that define a run's numbers (:data:`NUMERICS_SOURCES`).  ``package``: the
    q4core folder (this one by default)."""
    return sources_hash(_PACKAGE if package is None else package, NUMERICS_SOURCES)


@functools.lru_cache(maxsize=None)
def implementation_version(package=None):
    """sha256 of the compiled implementation's sources (:data:`IMPLEMENTATION_SOURCES`): recorded in each cache
    entry as provenance, not part of its key."""
    return sources_hash(_PACKAGE if package is None else package, IMPLEMENTATION_SOURCES, "implementation")


def _plain(obj):
    """``obj`` with tuples as lists, numpy scalars and arrays as Python numbers and lists (JSON's types)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj)     # float32 -> float64 is exact
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"a run's configuration and result must be JSON-like; got {type(obj).__name__}: {obj!r}")


def _canonical(obj):
    """Canonical JSON text (sorted keys, no spaces; NaN/Infinity as Python's json writes them)."""
    return json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"), allow_nan=True)


def _sha256_text(text):
    return hashlib.sha256(text.encode()).hexdigest()


def _hash_arrays(h, obj, names):
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, np.ndarray):
            a = np.ascontiguousarray(value)
            h.update(f"{name}:{a.dtype.str}:{a.shape}\0".encode())
            h.update(a.tobytes())
        else:
            h.update(f"{name}={_canonical(value)}\0".encode())


@functools.lru_cache(maxsize=64)
def _task_checksum(task, seed, max_chars):
    from .tasks import CharLM, load_task
    t = load_task(task, seed, max_chars)
    h = hashlib.sha256(f"task:{task}\0".encode())
    if isinstance(t, CharLM):
        _hash_arrays(h, t, ("train_ids", "val_ids", "test_ids", "seq_len", "n_classes"))
    else:
        _hash_arrays(h, t, ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test", "n_classes"))
    return h.hexdigest()


def _dataset_checksum(data):
    if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        return "file:" + hashlib.sha256(Path(os.fsdecode(data)).read_bytes()).hexdigest()
    h = hashlib.sha256(b"dataset\0")
    _hash_arrays(h, data, ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test"))
    h.update(_canonical(list(getattr(data, "classes", None) or [])).encode())
    return h.hexdigest()


class RunConfig:
    """One training run: :func:`q4core.train.train` ``(task=task, data=data, recipe=recipe, seed=seed,
    **train_kwargs)`` with ``progress=False``.  ``recorder``: ``{"factory": "module:Class", "kwargs": {...}}`` - a
    per-step recorder made where the run executes and passed as ``on_step``; its ``records`` (JSON values) come
    back in the result as ``"records"``, so a recorded run is cached like any other (the recorder and its
    settings are part of the identity, and its module must be importable on the workers).
    ``task``: a built-in task name (its data loaded where the run
    executes, checked there against the checksum of the identity); ``data``: a :class:`q4core.data.Dataset` or a
    ``.npz`` path (shipped with the run) in place of a task.  ``train_kwargs``: any other ``train`` keyword or
    recipe field (not ``on_step``, ``checkpoint``, ``progress``, ``return_model``: a cached run has no
    callbacks or side effects).  ``source``: ``{"dataset": name, "seed": s}`` when ``data`` is
    :func:`q4core.experiments.common.load_dataset` ``(name, s)`` - not part of the identity, kept in the entry so
    that ``verify`` can load the data again (and checks its checksum)."""

    __slots__ = ("task", "data", "recipe", "seed", "train_kwargs", "source", "recorder", "_identity")

    def __init__(self, task=None, data=None, recipe="fp32", seed=0, source=None, recorder=None, **train_kwargs):
        from ._validation import check_int
        if (task is None) == (data is None):
            raise ValueError("RunConfig needs exactly one of task (a built-in task name) and data")
        if task is not None:
            from .tasks import TASKS
            if task not in TASKS:
                raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        bad = sorted(set(train_kwargs) & set(_NOT_CACHEABLE))
        if bad:
            raise ValueError(f"a cached run cannot take {bad}: callbacks and side effects stay in-process "
                             "(call q4core.train.train directly)")
        self.task, self.data, self.recipe = task, data, recipe
        self.seed = check_int(seed, "seed", min_value=0)
        self.train_kwargs = dict(train_kwargs)
        if source is not None and (not isinstance(source, dict) or set(source) != {"dataset", "seed"}):
            raise ValueError(f"source must be {{'dataset': name, 'seed': int}} or None, got {source!r}")
        self.source = source
        if recorder is not None:
            if not isinstance(recorder, dict) or set(recorder) != {"factory", "kwargs"} \
                    or not isinstance(recorder["factory"], str) or ":" not in recorder["factory"] \
                    or not isinstance(recorder["kwargs"], dict):
                raise ValueError(f"recorder must be {{'factory': 'module:Class', 'kwargs': dict}} or None, "
                                 f"got {recorder!r}")
            _recorder_class(recorder["factory"])        # importable here, or a clear error now
        self.recorder = recorder
        self._identity = None

    def __repr__(self):
        what = f"task={self.task!r}" if self.task is not None else f"data={type(self.data).__name__}"
        recipe = self.recipe if isinstance(self.recipe, str) else getattr(self.recipe, "name", "custom")
        return f"RunConfig({what}, recipe={recipe!r}, seed={self.seed}, {self.train_kwargs!r})"

    def __getstate__(self):
        state = {name: getattr(self, name) for name in self.__slots__}
        if state["data"] is not None and not isinstance(state["data"], (str, bytes, os.PathLike, _ShippedData)):
            state["data"] = _ShippedData(state["data"])
        return state

    def __setstate__(self, state):
        for name, value in state.items():
            setattr(self, name, value)

    def identity(self):
        """The identity dict (see the module docstring); computed once."""
        if self._identity is None:
            self._identity = identity(self)
        return self._identity

    def key(self):
        return _sha256_text(_canonical(self.identity()))

    def data_checksum(self):
        if self.data is not None:
            return _dataset_checksum(self.data)
        return _task_checksum(self.task, self.seed, self.train_kwargs.get("max_chars"))


class _ShippedData:
    """What ``train`` reads of a :class:`q4core.data.Dataset` (splits and class names), picklable (a Dataset's
    ``info`` mapping proxy is not): the form in which a run's data set travels to a worker."""

    _FIELDS = ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test", "classes")

    def __init__(self, data):
        for name in self._FIELDS:
            setattr(self, name, getattr(data, name, None))


@functools.lru_cache(maxsize=1)
def _train_parameters():
    from .train import train
    return frozenset(inspect.signature(train).parameters) - {"config_overrides"}


def identity(config):
    """The identity of ``config`` (a :class:`RunConfig`): task, data checksum, resolved recipe (no ``threads``:
    results do not depend on them), every other training keyword, seed, numerics and numpy versions."""
    from .recipe import get_recipe
    kw = config.train_kwargs
    overrides = {k: v for k, v in kw.items() if k not in _train_parameters()}
    # resolved exactly as train() resolves it; the ablation and recipe-field overrides live on in it
    recipe = get_recipe(config.recipe, kw.get("ablation"), **{"seed": config.seed, **overrides}).to_dict()
    recipe.pop("threads", None)
    schedule = {k: v for k, v in kw.items() if k in _train_parameters() and k != "ablation"}
    out = {"format": RESULT_FORMAT, "task": config.task if config.task is not None else "data",
           "data": config.data_checksum(), "recipe": recipe, "seed": config.seed, "train": _plain(schedule),
           "numerics": numerics_version(), "numpy": np.__version__}
    if getattr(config, "recorder", None) is not None:
        out["recorder"] = _plain(config.recorder)
    for source, field, value in CONDITIONAL_SOURCES:
        got = recipe
        for part in field.split("."):
            got = got.get(part) if isinstance(got, dict) else None
        if got == value or (isinstance(value, tuple) and got in value):
            out.setdefault("sources", {})[source] = hashlib.sha256((_PACKAGE / source).read_bytes()).hexdigest()[:16]
    return out


def _recorder_class(factory):
    module, _, name = factory.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"recorder factory {factory!r} cannot be imported: {exc}") from None


def run_key(config):
    """sha256 of the canonical JSON of ``identity(config)``."""
    return config.key()


def numbers_of(result):
    """A result without its timings (:data:`TIMING_KEYS`, also inside ``history``): what must be equal bit for
    bit between two executions of a run."""
    out = {k: v for k, v in result.items() if k not in TIMING_KEYS}
    if isinstance(out.get("history"), dict):
        out["history"] = {k: v for k, v in out["history"].items() if k not in TIMING_KEYS}
    return out


# ---------------------------------------------------------------------------------------------- execution
def _limit_threads(threads):
    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=int(threads))     # BLAS and OpenMP (the GEMM kernels' threads)


def execute(config, threads=1, expected_data=None):
    """Train ``config`` here; returns the normalised result (JSON types, as the cache gives it back).
    ``threads``: BLAS and GEMM threads, 1 for every executor: the integer kernels give the same bits for any
    thread count, but float32 BLAS does not (OpenBLAS splits a product differently on two threads, which moves the
    last bits of a float32 forward), and a cached result must not depend on where it ran.  ``expected_data``:
    the data checksum of the identity; a worker whose data differ (another data file on another machine) raises
    instead of training."""
    from .train import train
    if expected_data is not None and config.data_checksum() != expected_data:
        raise RuntimeError(f"the data of {config!r} here (on {os.uname().nodename}) differ from the data its "
                           "identity was computed from: install the same data files on every worker")
    kw = dict(config.train_kwargs)
    recorder = getattr(config, "recorder", None)
    if recorder is not None:
        kw["on_step"] = _recorder_class(recorder["factory"])(**recorder["kwargs"])
    with _limit_threads(threads):
        result = train(task=config.task or "digits", data=config.data, recipe=config.recipe, seed=config.seed,
                       progress=False, **kw)
    if recorder is not None:
        result = {**result, "records": kw["on_step"].records}
    return json.loads(_canonical(result))


def _execute_for_worker(config, expected_data):
    return execute(config, threads=1, expected_data=expected_data)


class Serial:
    """Every run in this process, one after the other, in the order asked."""

    name = "serial"

    def run(self, jobs):
        """``jobs``: list of ``(index, config, data_checksum)``; yields ``(index, result, None)`` or
        ``(index, None, traceback text)`` as runs finish."""
        for index, config, _ in jobs:
            try:
                yield index, execute(config), None
            except Exception:
                yield index, None, traceback.format_exc()


class Processes:
    """Runs in ``jobs`` spawned processes (spawn, not fork: OpenMP is not fork-safe), one thread each."""

    def __init__(self, jobs):
        from ._validation import check_int
        self.jobs = check_int(jobs, "jobs", min_value=1)
        self.name = f"processes:{self.jobs}"

    def run(self, jobs):
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=self.jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_execute_for_worker, config, data): index for index, config, data in jobs}
            for future in concurrent.futures.as_completed(futures):
                try:
                    yield futures[future], future.result(), None
                except Exception:
                    yield futures[future], None, traceback.format_exc()


_DASK_HINT = ("Dask is not installed: install it with  pip install 'q4core[cluster]'  (or  pip install "
              "'dask[distributed]'; conda: conda install -c conda-forge dask distributed)")
_CLIENTS = {}


class Dask:
    """Runs on a Dask distributed cluster: ``"tcp://HOST:PORT"`` connects to its scheduler (``dask-jobqueue``
    and ``dask-kubernetes`` clusters are such an address); ``"local:N"`` starts a ``LocalCluster`` of N
    single-threaded worker processes in this machine.  One client per address per process, kept for later
    sweeps and closed at exit.  Workers need q4core (same version) and its data; results come back to this
    process, which writes the cache (workers need no shared file system).  A worker that dies mid-run has its
    run rescheduled by the scheduler."""

    def __init__(self, scheduler):
        if not isinstance(scheduler, str) or not (scheduler.startswith("tcp://") or scheduler.startswith("local:")):
            raise ValueError(f"scheduler must be 'tcp://HOST:PORT' or 'local:N', got {scheduler!r}")
        if scheduler.startswith("local:"):
            from ._validation import check_int
            try:
                n = int(scheduler[len("local:"):])
            except ValueError:
                raise ValueError(f"scheduler 'local:N' needs a number of workers, got {scheduler!r}") from None
            check_int(n, "scheduler local:N workers", min_value=1)
        self.scheduler = self.name = scheduler
        _import_distributed(scheduler)

    def client(self):
        client = _CLIENTS.get(self.scheduler)
        if client is not None and client.status == "running":
            return client
        distributed = _import_distributed(self.scheduler)
        if self.scheduler.startswith("local:"):
            cluster = distributed.LocalCluster(n_workers=int(self.scheduler[len("local:"):]), threads_per_worker=1,
                                               processes=True, dashboard_address=None, silence_logs=40)
            client = distributed.Client(cluster)
        else:
            client = distributed.Client(self.scheduler, timeout="30s")
        _CLIENTS[self.scheduler] = client
        return client

    def run(self, jobs):
        distributed = _import_distributed(self.scheduler)
        client = self.client()
        futures = {}
        for index, config, data in jobs:
            future = client.submit(_execute_for_worker, config, data, pure=False,
                                   key=f"q4run-{index}-{uuid.uuid4().hex[:8]}")
            futures[future] = index
        for future in distributed.as_completed(list(futures)):
            try:
                yield futures[future], future.result(), None
            except Exception:
                yield futures[future], None, traceback.format_exc()


def _import_distributed(scheduler):
    try:
        import distributed
    except ImportError:
        raise MissingDaskError(f"scheduler {scheduler!r}: {_DASK_HINT}") from None
    return distributed


def close_executors():
    """Close the Dask clients (and their LocalClusters) this process opened."""
    while _CLIENTS:
        _, client = _CLIENTS.popitem()
        cluster = getattr(client, "cluster", None)
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()


atexit.register(close_executors)


def executor_from_spec(spec):
    """``"serial"``, ``"processes:N"``, ``"local:N"`` or ``"tcp://HOST:PORT"`` -> an executor."""
    if not isinstance(spec, str):
        raise ValueError(f"an executor spec must be a string, got {spec!r}")
    if spec == "serial":
        return Serial()
    if spec.startswith("processes:"):
        try:
            return Processes(int(spec[len("processes:"):]))
        except ValueError:
            raise ValueError(f"executor 'processes:N' needs a number of processes, got {spec!r}") from None
    if spec.startswith(("tcp://", "local:")):
        return Dask(spec)
    raise ValueError(f"executor must be 'serial', 'processes:N', 'local:N' or 'tcp://HOST:PORT', got {spec!r}")


def default_executor():
    """The executor ``$Q4CORE_SCHEDULER`` names, :class:`Serial` when it is unset or empty."""
    spec = os.environ.get("Q4CORE_SCHEDULER", "").strip()
    if not spec:
        return Serial()
    try:
        return executor_from_spec(spec)
    except ValueError as exc:
        raise ValueError(f"Q4CORE_SCHEDULER: {exc}") from None


# ---------------------------------------------------------------------------------------------- cache
def _env_flag(name):
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"{name} must be 1/true/yes or 0/false/no, got {os.environ[name]!r}")


def _root():
    """The checkout q4core runs from (the folder holding ``notebooks/``), else the current folder."""
    here = _PACKAGE.parent
    return here if (here / "notebooks").is_dir() else Path.cwd()


class RunCache:
    """Cache entries under ``folder`` (read if ``read``, written if ``write``) and committed results under
    ``results`` (read if ``read``).  See the module docstring for the layout and what is trusted."""

    def __init__(self, folder=None, results=None, read=True, write=True):
        self.folder = Path(folder) if folder is not None else _root() / ".q4cache"
        self.results = Path(results) if results is not None else _root() / "results"
        self.read, self.write = bool(read), bool(write)

    def __repr__(self):
        return f"RunCache({str(self.folder)!r}, results={str(self.results)!r}, read={self.read}, write={self.write})"

    def path(self, key):
        return self.folder / key[:2] / f"{key}.json"

    def committed_paths(self, key):
        if not self.results.is_dir():
            return []
        return sorted(self.results.glob(f"*/{key}.json"))

    @staticmethod
    def read_entry(path, key=None, identity=None):
        """``(result, None)`` of a valid entry at ``path``, else ``(None, why)``; ``key``/``identity`` if given
        must match the entry's."""
        try:
            entry = json.loads(Path(path).read_text())
        except FileNotFoundError:
            return None, "missing"
        except (OSError, ValueError) as exc:
            return None, f"unreadable ({exc})"
        if not isinstance(entry, dict) or not {"key", "identity", "sha256", "result"} <= set(entry):
            return None, "not a run entry"
        if entry.get("format") != RESULT_FORMAT:
            return None, f"entry format {entry.get('format')!r}, expected {RESULT_FORMAT}"
        if _sha256_text(_canonical(entry["identity"])) != entry["key"]:
            return None, "its identity does not hash to its key"
        if key is not None and entry["key"] != key:
            return None, f"it holds key {entry['key']}"
        if identity is not None and _canonical(entry["identity"]) != _canonical(identity):
            return None, "its identity differs from the run's"
        if _sha256_text(_canonical(entry["result"])) != entry["sha256"]:
            return None, "its result does not match its checksum (corrupt or partial)"
        return entry["result"], None

    def lookup(self, key, identity):
        """The cached or committed result of ``key``, or None; a bad entry is reported, never trusted."""
        if not self.read:
            return None
        for path in [self.path(key)] + self.committed_paths(key):
            result, why = self.read_entry(path, key, identity)
            if result is not None:
                return result
            if why != "missing":
                warnings.warn(f"run cache entry {path}: {why}; recomputing it", RuntimeWarning, stacklevel=3)
        return None

    def store(self, key, identity, result, source=None):
        if not self.write:
            return
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"format": RESULT_FORMAT, "key": key, "identity": identity, "source": source,
                 "implementation": implementation_version(), "sha256": _sha256_text(_canonical(result)),
                 "result": result}
        text = json.dumps(_plain(entry), sort_keys=True, indent=1, allow_nan=True)

        def write(tmp):
            with open(tmp, "w") as fh:
                fh.write(text)
        write_atomic(path, write, "run cache entry")

    def entries(self, folder=None):
        """Paths of every entry under ``folder`` (the cache folder by default)."""
        folder = self.folder if folder is None else Path(folder)
        return sorted(folder.glob("*/*.json")) if folder.is_dir() else []


def default_cache():
    """The cache the environment asks for (``Q4CORE_CACHE``, ``Q4CORE_RESULTS``, ``Q4CORE_NO_CACHE``,
    ``Q4CORE_RECOMPUTE``)."""
    no_cache, recompute = _env_flag("Q4CORE_NO_CACHE"), _env_flag("Q4CORE_RECOMPUTE")
    return RunCache(os.environ.get("Q4CORE_CACHE") or None, os.environ.get("Q4CORE_RESULTS") or None,
                    read=not (no_cache or recompute), write=not no_cache)


# ---------------------------------------------------------------------------------------------- map
def _record_requests(cache, identities):
    """Remember which runs this notebook asked for (``$Q4CORE_RUN_LABEL``, set by q4-reproduce), so that
    ``--cache-info`` can say what it would still run."""
    label = os.environ.get("Q4CORE_RUN_LABEL")
    if not label or not cache.write:
        return
    path = cache.folder / "requests" / f"{label.replace('/', '--')}.json"
    session = os.environ.get("Q4CORE_RUN_SESSION", "")
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    asked = old.get("identities", []) if old.get("session") == session else []
    asked += identities
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"label": label, "session": session, "identities": asked}, sort_keys=True, allow_nan=True)

    def write(tmp):
        with open(tmp, "w") as fh:
            fh.write(text)
    write_atomic(path, write, "run request log")


def map(configs, executor=None, cache=None, progress=None):  # noqa: A001 - the name says what it does
    """Results of ``configs`` (:class:`RunConfig` s), in the order asked.  ``executor``: an executor or a spec
    string (:func:`executor_from_spec`), default :func:`default_executor`; ``cache``: a :class:`RunCache`,
    default :func:`default_cache`.  ``progress``: a bar of runs done / cached / failed / total on stderr
    (default: when runs are to be computed and ``$Q4CORE_PROGRESS`` is not 0).  Raises :class:`RunsFailed`
    listing every failed run after the others finished (and were cached)."""
    configs = list(configs)
    for i, c in enumerate(configs):
        if not isinstance(c, RunConfig):
            raise TypeError(f"configs[{i}] must be a RunConfig, got {type(c).__name__}")
    executor = default_executor() if executor is None else (
        executor_from_spec(executor) if isinstance(executor, str) else executor)
    cache = default_cache() if cache is None else cache
    identities = [c.identity() for c in configs]
    keys = [c.key() for c in configs]
    _record_requests(cache, identities)
    texts = [None] * len(configs)
    todo = {}      # key -> first index asking for it
    for i, key in enumerate(keys):
        if key in todo or texts[i] is not None:
            continue
        result = cache.lookup(key, identities[i])
        if result is not None:
            texts[i] = _canonical(result)
        else:
            todo[key] = i
    n_cached = sum(t is not None for t in texts)
    jobs = [(i, configs[i], identities[i]["data"]) for i in todo.values()]
    show = progress if progress is not None else (len(jobs) > 0 and os.environ.get("Q4CORE_PROGRESS", "1") != "0")
    bar = _progress_bar(n_cached + len(jobs), n_cached, executor.name) if show and jobs else None
    failures = []
    by_key = {}
    try:
        for index, result, tb in executor.run(jobs) if jobs else ():
            if tb is not None:
                failures.append((index, tb))
            else:
                cache.store(keys[index], identities[index], result, configs[index].source)
                by_key[keys[index]] = _canonical(result)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(cached=n_cached, failed=len(failures))
    finally:
        if bar is not None:
            bar.close()
    if failures:
        raise RunsFailed([(configs[i], tb) for i, tb in sorted(failures)], len(configs))
    for i, key in enumerate(keys):
        if texts[i] is None:
            texts[i] = by_key[key]
    return [json.loads(t) for t in texts]     # a fresh object per slot: callers may change theirs


def _progress_bar(total, cached, name):
    """Distinct runs: ``cached`` of ``total`` done before anything runs."""
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=cached, desc=f"runs ({name})", unit="run", file=sys.stderr, leave=False)


# ---------------------------------------------------------------------------------------------- command line
def cache_info(cache=None, labels=None, out=None):
    """Print what the cache and the committed results hold (entries of the current numerics version and
    stale ones) and, per request log (a notebook and profile q4-reproduce ran, ``labels`` or all), how many of
    the runs it asked for are cached under the current numerics and how many it would still run."""
    cache = default_cache() if cache is None else cache
    out = out if out is not None else sys.stdout
    current = numerics_version()
    for what, folder in (("cache", cache.folder), ("committed results", cache.results)):
        paths = [p for p in (cache.entries(folder) if what == "cache" else sorted(folder.glob("*/*.json"))
                             if folder.is_dir() else []) if p.parent.name != "requests"]
        fresh = stale = bad = other_impl = 0
        for p in paths:
            try:
                entry = json.loads(p.read_text())
                numerics = entry["identity"]["numerics"]
            except (OSError, ValueError, KeyError, TypeError):
                bad += 1
                continue
            fresh += numerics == current
            stale += numerics != current
            other_impl += numerics == current and entry.get("implementation") != implementation_version()
        by = f" ({other_impl} computed by other compiled kernels)" if other_impl else ""
        print(f"{what} {folder}: {fresh} run(s) of the current numerics {current[:12]}{by}, {stale} of older "
              f"numerics (never reused){f', {bad} unreadable' if bad else ''}", file=out)
    logs = sorted((cache.folder / "requests").glob("*.json")) if (cache.folder / "requests").is_dir() else []
    wanted = None if labels is None else {str(label).replace("/", "--") for label in labels}
    shown = set()
    for path in logs:
        if wanted is not None and path.stem not in wanted:
            continue
        shown.add(path.stem)
        try:
            asked = json.loads(path.read_text())["identities"]
        except (OSError, ValueError, KeyError):
            print(f"  {path.stem}: request log unreadable", file=out)
            continue
        keys = {}
        for ident in asked:
            ident = {**ident, "numerics": current, "numpy": np.__version__}
            key = _sha256_text(_canonical(ident))
            keys[key] = ident
        cached = sum(1 for k, ident in keys.items()
                     if any(RunCache.read_entry(p, k, ident)[0] is not None
                            for p in [cache.path(k)] + cache.committed_paths(k)))
        print(f"  {path.stem.replace('--', '/')}: {len(keys)} run(s) asked at its last execution, {cached} cached, "
              f"{len(keys) - cached} would run", file=out)
    for label in sorted((wanted or set()) - shown):
        print(f"  {label.replace('--', '/')}: never executed with the cache on; all its runs would run", file=out)


def _requested_keys(cache, profile):
    """Keys of the runs the notebooks asked for at their last execution with ``profile`` (the request logs)."""
    keys = set()
    folder = cache.folder / "requests"
    for log in sorted(folder.glob(f"*--{profile}.json")) if folder.is_dir() else []:
        keys.update(_sha256_text(_canonical(i)) for i in json.loads(log.read_text()).get("identities", []))
    return keys


def export(to, label, cache=None, out=None, profile=None):
    """Copy the valid cache entries of the current numerics version into ``to/label/<key>.json`` (JSON only);
    with ``profile``, only the runs the notebooks asked for at their last execution with it (so a smoke test's
    runs never become committed results).  Returns how many were written."""
    cache = default_cache() if cache is None else cache
    if not label or "/" in label or label.startswith("."):
        raise ValueError(f"label must be a plain folder name, got {label!r}")
    wanted = None if profile is None else _requested_keys(cache, profile)
    if wanted is not None and not wanted:
        raise ValueError(f"no notebook has logged its runs for profile {profile!r}: run q4-reproduce --profile "
                         f"{profile} with the cache on first")
    dest = Path(to) / label
    dest.mkdir(parents=True, exist_ok=True)
    current, n = numerics_version(), 0
    for path in cache.entries():
        if path.parent.name == "requests" or (wanted is not None and path.stem not in wanted):
            continue
        result, why = RunCache.read_entry(path, path.stem)
        if result is None:
            print(f"skipped {path}: {why}", file=out or sys.stderr)
            continue
        if json.loads(path.read_text())["identity"]["numerics"] != current:
            continue
        text = path.read_text()

        def write(tmp, text=text):
            with open(tmp, "w") as fh:
                fh.write(text)
        write_atomic(dest / path.name, write, "committed result")
        n += 1
    return n


def _config_from_entry(entry):
    """The RunConfig a cache entry describes (its recipe is the resolved one); None for a run on data that
    cannot be loaded again by name."""
    ident = entry["identity"]
    kw = dict(ident["train"])
    if ident.get("recorder") is not None:
        kw["recorder"] = ident["recorder"]
    if ident["task"] != "data":
        return RunConfig(task=ident["task"], recipe=ident["recipe"], seed=ident["seed"], **kw)
    source = entry.get("source")
    if not source:
        return None
    from .experiments.common import load_dataset
    return RunConfig(data=load_dataset(source["dataset"], source["seed"]), recipe=ident["recipe"],
                     seed=ident["seed"], source=source, **kw)


def verify(sample, seed, max_seconds=None, results=None, out=None, where=None):
    """Recompute ``sample`` committed runs of the current numerics, chosen with ``random.Random(seed)``, and
    compare their numbers (:func:`numbers_of`) bit for bit.  Returns ``(checked, mismatches, skipped)``;
    stops choosing new runs once ``max_seconds`` have passed.  ``where``: a predicate on an entry (the parsed
    JSON) choosing among the valid entries only."""
    out = out if out is not None else sys.stdout
    cache = RunCache(results=results, read=False, write=False)
    current = numerics_version()
    candidates = []
    for path in sorted(cache.results.glob("*/*.json")) if cache.results.is_dir() else []:
        result, why = RunCache.read_entry(path, path.stem)
        if result is None:
            print(f"committed result {path}: {why}", file=out)
            candidates.append((path, None, None))
            continue
        entry = json.loads(path.read_text())
        if entry["identity"]["numerics"] == current and entry["identity"]["numpy"] == np.__version__ and \
                (where is None or where(entry)):
            candidates.append((path, entry, result))
    chosen = random.Random(seed).sample(candidates, min(int(sample), len(candidates)))
    t0, checked, mismatches, skipped = time.perf_counter(), 0, [], 0
    for path, entry, result in chosen:
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            skipped += 1
            continue
        if entry is None:
            mismatches.append(path)
            continue
        ident = entry["identity"]
        config = _config_from_entry(entry)
        if config is None:
            skipped += 1
            print(f"{path}: a run on a data set without a source to load it again; left out", file=out)
            continue
        if config.key() != path.stem:
            mismatches.append(path)
            print(f"{path}: its identity rebuilds to another key", file=out)
            continue
        fresh = execute(config)
        same = _canonical(numbers_of(fresh)) == _canonical(numbers_of(result))
        checked += 1
        made_by = entry.get("implementation")
        by = "" if made_by == implementation_version() else \
            f" (computed by implementation {str(made_by)[:12]}, checked with {implementation_version()[:12]})"
        print(f"{path.name[:16]} {ident['task']} {ident['recipe'].get('name')} seed {ident['seed']}: "
              f"{'identical' if same else 'DIFFERENT'}{by}", file=out)
        if not same:
            mismatches.append(path)
    return checked, mismatches, skipped


def committed_runs_of_current_numerics(results=None):
    """How many committed results (``results/*/*.json``) carry the current numerics and numpy versions."""
    folder = RunCache(results=results).results
    n = 0
    for path in sorted(folder.glob("*/*.json")) if folder.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            ident = json.loads(path.read_text())["identity"]
            n += ident["numerics"] == numerics_version() and ident["numpy"] == np.__version__
    return n


def _parser():
    p = argparse.ArgumentParser(prog="python -m q4core.runs", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="what the cache and the committed results hold")
    e = sub.add_parser("export", help="copy cached runs of the current numerics into committed results")
    e.add_argument("--to", required=True, help="the committed results folder (results/)")
    e.add_argument("--label", required=True, help="subfolder, e.g. the profile: default")
    e.add_argument("--profile", default=None,
                   help="only the runs the notebooks asked for at their last execution with this profile")
    v = sub.add_parser("verify", help="recompute committed runs chosen at random; demand identical numbers")
    v.add_argument("--sample", type=int, required=True)
    v.add_argument("--seed", type=int, required=True)
    v.add_argument("--max-seconds", type=float, default=None)
    v.add_argument("--results", default=None, help="committed results folder (default: results/ of the checkout)")
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        if args.command == "info":
            cache_info()
            return 0
        if args.command == "export":
            n = export(args.to, args.label, profile=args.profile)
            print(f"{n} run(s) of numerics {numerics_version()[:12]} written to {Path(args.to) / args.label}")
            return 0
        if args.sample < 1 or (args.max_seconds is not None and not math.isfinite(args.max_seconds)):
            raise ValueError("--sample must be >= 1 and --max-seconds finite")
        checked, mismatches, skipped = verify(args.sample, args.seed, args.max_seconds, args.results)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{checked} run(s) recomputed, {len(mismatches)} different, {skipped} left out (time limit or no source)")
    if checked == 0 and not mismatches:
        print("no committed results of the current numerics version to verify")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
