"""q4core.reproduce: the papermill runner - selection, parameter checks, failures, manifest, clean re-runs,
staging and publishing, locking, process lifetime.

Uses tiny temporary notebooks (a few seconds each); the real notebooks are run in test_notebooks.py.  Tests that
start Jupyter kernels are marked slow.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from q4core import reproduce

slow = pytest.mark.slow   # starts Jupyter kernels

PARAMS = 'profile = "default"\nseed = 0\nfigures_dir = "figures"\nvalue = 1.0\nfail = False\n'
FIGURE = """
from q4core import plotting
fig, ax = plotting.new_figure()
ax.plot([0, 1], [0, value * seed])
ax.set_xlabel("x (1)")
plotting.save_figure(fig, "{name}", figures_dir, data={{"value": value, "seed": seed}}, caption="test")
"""


def make_notebook(path, n_figures=2, fail_after=None, params=PARAMS):
    nb = new_notebook()
    cells = [new_markdown_cell("# test"), new_code_cell(params)]
    cells[1].metadata["tags"] = ["parameters"]
    stem = path.stem.split("_")[0]
    for i in range(n_figures):
        if fail_after is not None and i == fail_after:
            cells.append(new_code_cell('if fail:\n    raise RuntimeError("deliberate failure")'))
        cells.append(new_code_cell(FIGURE.format(name=f"{stem}_fig{i}")))
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["q4core"] = {"profiles": {"quick": {"value": 2.0}, "default": {"value": 3.0}, "full": {}}}
    nbformat.write(nb, path)
    return path


@pytest.fixture
def project(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    make_notebook(notebooks / "01_good.ipynb")
    make_notebook(notebooks / "02_flaky.ipynb", n_figures=2, fail_after=1)
    return tmp_path


def run(project, *args):
    return reproduce.main(["--notebooks-dir", str(project / "notebooks"), "--figures-dir", str(project / "figures"),
                           "--output-dir", str(project / "executed"), *args])


@slow
def test_failing_notebook_keeps_previous_figures_and_others_run(project, capsys):
    assert run(project, "--profile", "quick", "-p", "seed", "1") == 0
    figures = project / "figures"
    old = {p.name: p.read_bytes() for p in figures.glob("02_*")}
    old_manifest = json.loads((figures / "manifest.json").read_text())["figures"]
    capsys.readouterr()
    # second run: seed changes every figure, notebook 02 fails between its two figures
    code = run(project, "--profile", "quick", "-p", "seed", "2", "-p", "fail", "True", "--jobs", "2")
    assert code == 1
    report = capsys.readouterr().out
    assert "02_flaky" in report and "RuntimeError: deliberate failure" in report and "In [" in report
    assert "01_good: ok" in report
    # 02 failed after saving its first figure: nothing of this run is published, not even that figure -
    # all of 02's figures are the previous run's (never a mix of two runs)
    assert {p.name: p.read_bytes() for p in figures.glob("02_*")} == old
    assert json.loads((figures / "01_fig1.json").read_text())["data"] == {"value": 2.0, "seed": 2}
    manifest = json.loads((figures / "manifest.json").read_text())["figures"]
    assert manifest["01_fig0.pdf"]["parameters"]["seed"] == 2        # 01 succeeded: updated
    for name in old:
        assert manifest[name] == old_manifest[name]                  # 02 failed: entries kept
    assert not [p for p in figures.iterdir() if p.name.endswith(".tmp")]
    assert not list((figures / reproduce.STAGING).glob("*/*"))      # staging emptied


@slow
def test_manifest_records_each_figure(project):
    assert run(project, "--profile", "quick", "--only", "1") == 0
    manifest = json.loads((project / "figures" / "manifest.json").read_text())["figures"]
    assert sorted(manifest) == [f"01_fig{i}.{e}" for i in range(2) for e in ("json", "pdf", "png")]
    import hashlib
    for name, entry in manifest.items():
        assert entry["notebook"] == "01_good" and entry["profile"] == "quick"
        assert entry["parameters"] == {"value": 2.0, "profile": "quick"}
        assert entry["code_version"]
        assert entry["sha256"] == hashlib.sha256((project / "figures" / name).read_bytes()).hexdigest()


@slow
def test_reruns_are_identical(project):
    assert run(project, "--profile", "default", "--only", "01") == 0
    first = {p.name: p.read_bytes() for p in (project / "figures").iterdir()}
    executed = (project / "executed" / "01_good.ipynb").read_text()
    assert run(project, "--profile", "default", "--only", "01_good") == 0
    assert {p.name: p.read_bytes() for p in (project / "figures").iterdir()} == first
    assert (project / "executed" / "01_good.ipynb").read_text() == executed
    nb = nbformat.read(project / "executed" / "01_good.ipynb", as_version=4)
    assert "start_time" not in nb.metadata["papermill"] and "duration" not in nb.metadata["papermill"]
    for cell in nb.cells:
        assert "execution" not in cell.metadata
        assert "start_time" not in cell.metadata.get("papermill", {})
    assert json.loads((project / "figures" / "01_fig0.json").read_text())["data"]["value"] == 3.0


@pytest.mark.parametrize("args, message", [
    (["--only", "07"], "unknown notebook '07'"),
    (["--only", "01_other"], "unknown notebook"),
    (["-p", "learning_rate", "0.1"], "unknown parameter(s) learning_rate"),
])
def test_bad_requests_fail_before_anything_runs(project, capsys, args, message):
    assert run(project, *args) == 2
    assert message in capsys.readouterr().err
    assert not (project / "figures").exists() and not (project / "executed").exists()


def test_profile_names_are_checked_against_the_parameters_cell(project, capsys):
    path = project / "notebooks" / "03_typo.ipynb"
    make_notebook(path, n_figures=1)
    nb = nbformat.read(path, as_version=4)
    nb.metadata["q4core"]["profiles"]["quick"] = {"valeu": 2.0}
    nbformat.write(nb, path)
    assert run(project, "--profile", "quick") == 2
    assert "03_typo.ipynb: unknown parameter(s) valeu" in capsys.readouterr().err
    assert not (project / "figures").exists()


def test_notebook_without_required_parameters_is_rejected(project, capsys):
    make_notebook(project / "notebooks" / "04_bare.ipynb", n_figures=1,
                  params='profile = "default"\nvalue = 1.0\n')
    assert run(project, "--only", "04") == 2
    assert "does not define seed, figures_dir" in capsys.readouterr().err


def test_list_shows_parameters_and_profiles(project, capsys):
    assert run(project, "--list") == 0
    out = capsys.readouterr().out
    assert "01_good" in out and "02_flaky" in out and "'value': 1.0" in out and "profile quick" in out


def test_strip_timing_and_helpers():
    nb = new_notebook(cells=[new_code_cell("x = 1")])
    nb.metadata["papermill"] = {"start_time": "t", "end_time": "t", "duration": 1.0, "parameters": {"a": 1},
                                "input_path": "i", "output_path": "o"}
    nb.cells[0].metadata.update(execution={"iopub.execute_input": "t"}, papermill={"duration": 0.1, "status": "ok"})
    reproduce.strip_timing(nb)
    assert nb.metadata["papermill"] == {"parameters": {"a": 1}}
    assert nb.cells[0].metadata == {"papermill": {"status": "ok"}}
    assert reproduce.parse_value("3") == 3 and reproduce.parse_value("[1, 2]") == [1, 2]
    assert reproduce.parse_value("china") == "china" and reproduce.parse_value("True") is True
    two = new_notebook(cells=[new_code_cell("a = 1"), new_code_cell("b = 2")])
    for cell in two.cells:
        cell.metadata["tags"] = ["parameters"]
    with pytest.raises(ValueError, match="exactly one"):
        reproduce.parameters_cell(two)


def test_missing_ipykernel_is_a_clear_error(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ipykernel" else real(name, *a))
    with pytest.raises(reproduce.UsageError, match="ipykernel is not installed"):
        reproduce.kernel_environment()


# ------------------------------------------------------------------ staging, manifest, locking, processes
def cli(project, *args, env=None, timeout=300):
    """The real command in a subprocess (its own TMPDIR so its temporary folders can be inspected)."""
    tmp = project / "tmp"
    tmp.mkdir(exist_ok=True)
    full_env = {**os.environ, "TMPDIR": str(tmp), **(env or {})}
    return subprocess.run([sys.executable, "-m", "q4core.reproduce", "--notebooks-dir", str(project / "notebooks"),
                           "--figures-dir", str(project / "figures"), "--output-dir", str(project / "executed"),
                           *args], capture_output=True, text=True, env=full_env, timeout=timeout)


def test_parameter_types_are_checked_against_the_defaults(project, capsys):
    assert run(project, "-p", "seed", "x") == 2
    assert "parameter seed (-p) must be an int like its default 0, got 'x' (str)" in capsys.readouterr().err
    assert run(project, "-p", "fail", "1") == 2
    assert "parameter fail (-p) must be a bool" in capsys.readouterr().err
    assert run(project, "-p", "seed", "1.5") == 2
    assert not (project / "figures").exists() and not (project / "executed").exists()
    path = project / "notebooks" / "03_typed.ipynb"
    make_notebook(path, n_figures=1, params=PARAMS + "bits = [8, 4]\n")
    nb = nbformat.read(path, as_version=4)
    nb.metadata["q4core"]["profiles"]["quick"] = {"bits": [8, "x"]}
    nbformat.write(nb, path)
    assert run(project, "--profile", "quick", "--only", "03") == 2
    assert "parameter bits (profile quick) must be a list like its default [8, 4]" in capsys.readouterr().err
    notebooks = reproduce.find_notebooks(project / "notebooks")
    # an int where the default is a float is fine; so is a list of ints for a list of ints
    jobs = reproduce.plan({"03": notebooks["03"]}, "default", {"value": 2, "bits": [2]}, project / "figures")
    assert jobs[0][2]["value"] == 2 and jobs[0][2]["bits"] == [2]


def _notebook_with_profile_dependent_figures(path):
    make_notebook(path, n_figures=0, params=PARAMS + "n = 2\n")
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(new_code_cell("for i in range(n):\n" + "\n".join(
        "    " + line for line in FIGURE.format(name="05_fig{i}").replace("{i}", "{i}").strip().splitlines())))
    nb.cells[-1].source = nb.cells[-1].source.replace('"05_fig{i}"', 'f"05_fig{i}"')
    nb.metadata["q4core"]["profiles"] = {"quick": {"n": 1}, "default": {"n": 2}, "full": {}}
    nbformat.write(nb, path)


@slow
def test_manifest_records_only_what_the_run_wrote(project):
    _notebook_with_profile_dependent_figures(project / "notebooks" / "05_varies.ipynb")
    assert run(project, "--profile", "default", "--only", "05") == 0
    figures = project / "figures"
    default_entries = json.loads((figures / "manifest.json").read_text())["figures"]
    assert sorted(default_entries) == [f"05_fig{i}.{e}" for i in range(2) for e in ("json", "pdf", "png")]
    assert run(project, "--profile", "quick", "--only", "05") == 0
    manifest = json.loads((figures / "manifest.json").read_text())["figures"]
    for ext in ("json", "pdf", "png"):
        assert manifest[f"05_fig0.{ext}"]["profile"] == "quick"
        assert manifest[f"05_fig1.{ext}"] == default_entries[f"05_fig1.{ext}"]   # not made by quick: untouched
    assert manifest["05_fig1.json"]["parameters"]["n"] == 2


_WRITER = """
import sys
from pathlib import Path
from q4core import reproduce
folder, who, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(count):
    name = f"{who}_{i:03d}.json"
    (folder / name).write_text(name)
    reproduce.update_manifest(folder, {name: {"notebook": who, "sha256": "x"}})
"""


def test_concurrent_manifest_updates_lose_nothing(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), who, "60"]) for who in ("11", "12", "13")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    manifest = json.loads((tmp_path / "manifest.json").read_text())["figures"]
    assert sorted(manifest) == sorted(f"{w}_{i:03d}.json" for w in ("11", "12", "13") for i in range(60))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_publish_refuses_a_destination_that_is_not_a_regular_file(tmp_path):
    stage = tmp_path / "stage"
    figures = tmp_path / "figures"
    stage.mkdir(), figures.mkdir()
    for ext in ("pdf", "png"):
        (stage / f"06_x.{ext}").write_text(ext)
    (figures / "06_x.png").mkdir()
    with pytest.raises(ValueError, match=r"06_x.png exists and is a folder"):
        reproduce.publish(stage, figures, "06", "06_x", {})
    assert sorted(p.name for p in figures.iterdir()) == ["06_x.png"]   # nothing moved
    assert (figures / "06_x.png").is_dir()


def test_runner_errors_say_what_and_where(project, tmp_path):
    (tmp_path / "a_file").write_text("x")
    r = cli(project, "--figures-dir", str(tmp_path / "a_file"))
    assert r.returncode == 2 and "--figures-dir" in r.stderr and "is not a folder" in r.stderr
    assert "Traceback" not in r.stderr
    assert list((project / "tmp").iterdir()) == []                      # no temporary folder leaked
    r = cli(project, "--list", "--notebooks-dir", str(tmp_path / "missing"))
    assert r.returncode == 2 and f"{tmp_path / 'missing'}: no such folder" in r.stderr
    (tmp_path / "empty").mkdir()
    for extra in ([], ["--list"]):
        r = cli(project, *extra, "--notebooks-dir", str(tmp_path / "empty"))
        assert r.returncode == 2 and f"no notebooks NN_name.ipynb in {tmp_path / 'empty'}" in r.stderr


def test_default_notebooks_folder_is_found_or_the_error_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    candidates = reproduce._candidate_notebook_dirs()
    if any(c.is_dir() for c in candidates):      # a checkout: found there
        assert reproduce.default_notebooks_dir() == next(c for c in candidates if c.is_dir())
    else:                                         # a wheel install
        with pytest.raises(reproduce.UsageError, match="looked in .*--notebooks-dir"):
            reproduce.default_notebooks_dir()
    (tmp_path / "notebooks").mkdir()
    assert reproduce.default_notebooks_dir() in candidates


@slow
def test_a_successful_run_is_quiet_about_kernel_shutdown(project):
    r = cli(project, "--profile", "quick", "--only", "01")
    assert r.returncode == 0, r.stderr
    assert "KeyboardInterrupt" not in r.stderr and "Traceback" not in r.stderr, r.stderr


SLEEPER = """
import os, time, pathlib
pathlib.Path(marker_dir, f"{os.getpid()}").write_text(str(os.getppid()))
time.sleep(sleep)
"""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:     # a zombie is dead too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@slow
def test_sigkill_of_the_runner_takes_workers_and_kernels_with_it(project, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    params = PARAMS + f"sleep = 0\nmarker_dir = {str(markers)!r}\n"
    for stem in ("03_sleepy", "04_sleepy"):
        make_notebook(project / "notebooks" / f"{stem}.ipynb", n_figures=0, params=params)
        nb = nbformat.read(project / "notebooks" / f"{stem}.ipynb", as_version=4)
        nb.cells.append(new_code_cell(FIGURE.format(name=f"{stem[:2]}_fig0")))     # a first figure ...
        nb.cells.append(new_code_cell(SLEEPER))                                     # ... then a long cell ...
        nb.cells.append(new_code_cell(FIGURE.format(name=f"{stem[:2]}_fig1")))     # ... then another figure
        nbformat.write(nb, project / "notebooks" / f"{stem}.ipynb")
    (project / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(project / "tmp")}
    cmd = [sys.executable, "-m", "q4core.reproduce", "--notebooks-dir", str(project / "notebooks"),
           "--figures-dir", str(project / "figures"), "--output-dir", str(project / "executed"),
           "--only", "03,04", "--jobs", "2", "-p", "sleep", "20"]
    runner = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(markers.iterdir())) < 2:
        assert runner.poll() is None and time.monotonic() < deadline, "the kernels never started"
        time.sleep(0.2)
    kernels = [int(p.name) for p in markers.iterdir()]
    workers = [int(p.read_text()) for p in markers.iterdir()]
    assert runner.pid not in workers                    # the kernels run under worker processes
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in kernels + workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in kernels + workers if _alive(pid)], "orphans survived the runner"
    figures = project / "figures"
    assert not list(figures.glob("0[34]_*"))            # nothing published by the killed run
    left = list((figures / reproduce.STAGING).glob("*/*")) + list((project / "tmp").glob("q4core-jupyter-*"))
    assert left                                         # the kill left staged figures and the kernelspec folder
    # the next run cleans what the dead run left, and works
    r = subprocess.run(cmd[:-2] + ["sleep", "0"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not list((project / "tmp").glob("q4core-jupyter-*"))
    assert not list((figures / reproduce.STAGING).glob("*/*"))
    assert not [p for p in figures.iterdir() if p.name.endswith(".tmp")]
    assert sorted(p.name for p in figures.glob("0[34]_*")) == sorted(
        f"{n}_fig{i}.{e}" for n in ("03", "04") for i in range(2) for e in ("json", "pdf", "png"))


@slow
def test_sigint_of_a_serial_run_keeps_the_previous_figures_and_manifest(project, tmp_path):
    """Ctrl-C of `q4-reproduce` (serial) while a notebook runs, after a good run: the figures and the manifest are
    the previous complete ones (sha256 as recorded), no kernel survives, no temporary file is left."""
    import hashlib
    markers = tmp_path / "markers"
    markers.mkdir()
    params = PARAMS + f"sleep = 0\nmarker_dir = {str(markers)!r}\n"
    path = project / "notebooks" / "03_sleepy.ipynb"
    make_notebook(path, n_figures=0, params=params)
    nb = nbformat.read(path, as_version=4)
    nb.cells += [new_code_cell(FIGURE.format(name="03_fig0")), new_code_cell(SLEEPER),
                 new_code_cell(FIGURE.format(name="03_fig1"))]
    nbformat.write(nb, path)
    cmd = [sys.executable, "-m", "q4core.reproduce", "--notebooks-dir", str(project / "notebooks"),
           "--figures-dir", str(project / "figures"), "--output-dir", str(project / "executed"), "--only", "03"]
    first = subprocess.run(cmd + ["-p", "seed", "1"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    figures = project / "figures"
    before = {p.name: p.read_bytes() for p in figures.iterdir() if p.is_file()}
    for m in markers.iterdir():
        m.unlink()
    # SIGINT as a terminal delivers it: a runner started in the background would inherit it ignored
    runner = subprocess.Popen(cmd + ["-p", "seed", "2", "-p", "sleep", "30"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(markers.iterdir()):
        assert runner.poll() is None and time.monotonic() < deadline, "the kernel never reached the long cell"
        time.sleep(0.2)
    kernel = int(next(markers.iterdir()).name)
    runner.send_signal(signal.SIGINT)
    assert runner.wait(timeout=60) != 0
    deadline = time.monotonic() + 15
    while _alive(kernel) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(kernel), "the kernel survived Ctrl-C of the runner"
    after = {p.name: p.read_bytes() for p in figures.iterdir() if p.is_file()}
    assert after == before                   # the new seed's first figure was staged, never published
    manifest = json.loads(before["manifest.json"])["figures"]
    for name, entry in manifest.items():
        assert hashlib.sha256(after[name]).hexdigest() == entry["sha256"]
    assert not [p for p in figures.rglob("*") if p.name.endswith(".tmp")]


def _in_reproduce_kernel(monkeypatch, scenario):
    """Start a kernel with q4-reproduce's manager and kernelspec, ``await scenario(km, kc)`` once it is ready,
    shut it down (half a second for late signals to land), remove the kernelspec folder; returns what the
    scenario returned."""
    import asyncio
    import shutil
    manager_class = reproduce._kernel_manager_class()
    root = reproduce.kernel_environment()
    monkeypatch.setenv("JUPYTER_PATH", str(root))

    async def run():
        km = manager_class(kernel_name=reproduce.KERNEL_NAME)
        await km.start_kernel()
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
            return await scenario(km, kc)
        finally:
            kc.stop_channels()
            await km.shutdown_kernel()
            await asyncio.sleep(0.5)
    try:
        return asyncio.run(run())
    finally:
        shutil.rmtree(root, ignore_errors=True)


_CATCH_SIGINT = """
import pathlib, signal
def _mark(signum, frame):
    pathlib.Path({marker!r}).write_text("SIGINT")
get_ipython().kernel.saved_sigint_handler = _mark   # ipykernel restores this handler after the cell
"""


@slow
def test_kernel_manager_does_not_interrupt_a_kernel_it_shuts_down(tmp_path, monkeypatch):
    """jupyter_client (>= 8) sends SIGINT before shutdown; ipykernel then logs 'KeyboardInterrupt caught in
    kernel.' after a successful notebook whenever the signal lands in a message handler."""
    import asyncio
    marker = tmp_path / "sigint"

    async def scenario(km, kc):
        reply = await kc.execute_interactive(_CATCH_SIGINT.format(marker=str(marker)), timeout=60)
        assert reply["content"]["status"] == "ok"
        await km.interrupt_kernel()                  # a real interrupt still reaches the kernel ...
        for _ in range(100):
            if marker.exists():
                break
            await asyncio.sleep(0.05)
        assert marker.exists(), "the kernel did not see a deliberate interrupt"
        marker.unlink()
    _in_reproduce_kernel(monkeypatch, scenario)      # ... but shutting it down sends none
    assert not marker.exists(), "the kernel was interrupted while being shut down"


@pytest.mark.parametrize("logger_name", ["tornado.general", "tornado.application", "asyncio"])
def test_kernel_log_filter_drops_only_the_enotsock_race_during_shutdown(logger_name, monkeypatch):
    import errno
    import logging

    import zmq

    from q4core import _kernel_log
    assert logger_name in _kernel_log.LOGGERS
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record)
    logger = logging.getLogger(logger_name)
    handler = Keep()
    before = list(logger.filters)
    # a Dask LocalCluster earlier in the session sets tornado's loggers to CRITICAL: the records must reach us
    level, disabled = logger.level, logger.disabled
    logger.setLevel(logging.DEBUG)
    logger.disabled = False
    logger.addHandler(handler)
    try:
        _kernel_log.install()
        _kernel_log.install()                                   # idempotent: one filter
        assert sum(isinstance(f, _kernel_log.ShutdownRaceFilter) for f in logger.filters) == 1
        for shutting_down in (False, True):
            monkeypatch.setattr(_kernel_log, "shutting_down", lambda s=shutting_down: s)
            for exc in (zmq.ZMQError(errno.ENOTSOCK), zmq.ZMQError(errno.EAGAIN), ValueError("real")):
                try:
                    raise exc
                except Exception:           # the record CI printed: this message, this exception
                    logger.error("Uncaught exception in ZMQStream callback", exc_info=True)
            logger.error("a plain message")
    finally:
        logger.removeHandler(handler)
        logger.filters[:] = before
        logger.setLevel(level)
        logger.disabled = disabled
    kept = [(type(r.exc_info[1]).__name__, r.exc_info[1].errno if isinstance(r.exc_info[1], zmq.ZMQError) else None)
            if r.exc_info else None for r in seen]
    running = [("ZMQError", errno.ENOTSOCK), ("ZMQError", errno.EAGAIN), ("ValueError", None), None]
    assert kept == running + running[1:]        # while a notebook runs all is kept; at shutdown all but ENOTSOCK


_CHECK_KERNEL_LOG = """
import logging
_names = set(globals())
assert "_q4_kernel_log" not in _names and "q4core" not in _names, sorted(_names)
from q4core._kernel_log import ShutdownRaceFilter, shutting_down
assert any(isinstance(f, ShutdownRaceFilter) for f in logging.getLogger("tornado.general").filters)
assert not shutting_down()          # a running kernel: a closed-socket error here would be a real one, kept
"""


@slow
def test_reproduce_kernels_start_with_the_shutdown_race_filter_and_a_clean_namespace(monkeypatch):
    async def scenario(km, kc):
        return (await kc.execute_interactive(_CHECK_KERNEL_LOG, timeout=60))["content"]
    content = _in_reproduce_kernel(monkeypatch, scenario)
    assert content["status"] == "ok", content


def test_a_figure_destination_that_is_not_a_regular_file_stops_the_run_before_it_starts(project, capsys):
    figures = project / "figures"
    (figures / "01_fig1.png").mkdir(parents=True)
    assert run(project, "--only", "01") == 2
    assert "01_fig1.png exists and is a folder; refusing to replace it" in capsys.readouterr().err
    assert sorted(p.name for p in figures.iterdir()) == ["01_fig1.png"] and not (project / "executed").exists()


def test_stale_files_of_dead_runs_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    figures = tmp_path / "figures"
    figures.mkdir()
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp))     # where kernel_environment() makes its folder
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [temp / f"q4core-jupyter-{dead.pid}-abc", figures / f".01_a.png.{dead.pid}-abcd1234.tmp",
             figures / ".01_a.png.ab_cd123.tmp", figures / reproduce.STAGING / "01_a"]
    live = [temp / f"q4core-jupyter-{os.getpid()}-abc", figures / f".01_a.png.{os.getpid()}-abcd1234.tmp",
            temp / "q4core-jupyter-old", figures / "01_a.png", figures / ".keep.tmp"]
    for path in stale + live:
        if path.suffix in (".tmp", ".png"):
            path.write_text("x")
        else:
            path.mkdir(parents=True)
    (figures / reproduce.STAGING / "01_a" / "01_a.png").write_text("x")
    held = reproduce._lock_dir(figures / reproduce.STAGING / "02_b")     # a live run staging notebook 02
    try:
        (figures / reproduce.STAGING / "02_b" / "02_b.png").write_text("x")
        removed = reproduce.remove_stale_files(figures)
        assert sorted(removed) == sorted(stale)
        assert all(p.exists() for p in live) and not any(p.exists() for p in stale)
        assert (figures / reproduce.STAGING / "02_b" / "02_b.png").exists()
    finally:
        os.close(held)


def test_quick_writes_a_scratch_folder_publication_profiles_the_committed_one(tmp_path):
    root = tmp_path
    assert reproduce.default_folders("quick", root, root / "notebooks") == \
        (root / "build" / "quick" / "figures", root / "build" / "quick" / "executed")
    for profile in ("default", "full"):
        assert reproduce.default_folders(profile, root, root / "notebooks") == \
            (root / "figures", root / "notebooks" / "executed")


def test_publication_figures_need_a_clean_tree(tmp_path):
    figures = tmp_path / "figures"
    with pytest.raises(reproduce.UsageError, match="uncommitted changes.*--allow-dirty"):
        reproduce.check_provenance("default", figures, tmp_path, "git:abc1234-dirty", allow_dirty=False)
    assert reproduce.check_provenance("full", figures, tmp_path, "git:abc1234-dirty", True) == "git:abc1234-dirty"
    # clean trees, the quick profile and other folders are not publication figures
    assert reproduce.check_provenance("default", figures, tmp_path, "git:abc1234", False) is None
    assert reproduce.check_provenance("quick", figures, tmp_path, "git:abc1234-dirty", False) is None
    assert reproduce.check_provenance("default", tmp_path / "elsewhere", tmp_path, "git:abc-dirty", False) is None


def test_dirty_tree_is_recorded_in_the_figure_json(tmp_path, monkeypatch):
    from q4core import plotting
    fig, _ = plotting.new_figure()
    monkeypatch.setenv("Q4CORE_DIRTY_TREE", "git:abc1234-dirty")
    paths = plotting.save_figure(fig, "09_x", tmp_path, data={"v": 1}, caption="c")
    assert json.loads(paths["json"].read_text())["dirty_tree"] == "git:abc1234-dirty"
    monkeypatch.delenv("Q4CORE_DIRTY_TREE")
    paths = plotting.save_figure(fig, "09_x", tmp_path, data={"v": 1}, caption="c")
    assert "dirty_tree" not in json.loads(paths["json"].read_text())


@slow
def test_report_after_a_successful_run(project, capsys):
    assert run(project, "--profile", "quick", "--only", "01", "--report", str(project / "report")) == 0
    assert "report: 1 notebook page(s)" in capsys.readouterr().out
    index = (project / "report" / "index.html").read_text()
    assert "01_good.html" in index and "figures/01_fig0.png" in index
    (project / "afile").write_text("x")
    assert run(project, "--profile", "quick", "--only", "01", "--report", str(project / "afile")) == 2
    assert "is not a folder" in capsys.readouterr().err
