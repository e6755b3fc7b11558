"""q4core.reproduce: the papermill runner - selection, parameter checks, failures, manifest, clean re-runs.

Uses tiny temporary notebooks (a few seconds each); the real notebooks are run in test_notebooks.py.
"""
import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from q4core import reproduce

pytestmark = pytest.mark.slow   # starts Jupyter kernels

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
    # 02's first figure was redone, its second (never reached) is the previous good one
    assert (figures / "02_fig0.json").read_bytes() != old["02_fig0.json"]
    for ext in ("pdf", "png", "json"):
        assert (figures / f"02_fig1.{ext}").read_bytes() == old[f"02_fig1.{ext}"]
    assert json.loads((figures / "01_fig1.json").read_text())["data"] == {"value": 2.0, "seed": 2}
    manifest = json.loads((figures / "manifest.json").read_text())["figures"]
    assert manifest["01_fig0.pdf"]["parameters"]["seed"] == 2        # 01 succeeded: updated
    assert manifest["02_fig1.pdf"] == old_manifest["02_fig1.pdf"]    # 02 failed: entries kept
    assert not [p for p in figures.iterdir() if p.name.endswith(".tmp")]


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
