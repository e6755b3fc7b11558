"""The paper notebooks: committed clean (no outputs, one parameters cell, pinned kernel), and each runs
through papermill with the quick profile, twice, giving byte-identical figures and JSON numbers."""
import json
from pathlib import Path

import nbformat
import pytest

from q4core import reproduce

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = reproduce.find_notebooks(NOTEBOOKS_DIR)
IDS = [p.stem for p in NOTEBOOKS.values()]


def test_there_are_notebooks():
    assert "01" in NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS.values(), ids=IDS)
def test_source_notebook_is_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {index} has outputs: clear them before committing"
            assert cell.execution_count is None, f"cell {index} has an execution count"
    defaults = reproduce.parameter_defaults(nb)      # raises unless exactly one 'parameters' cell
    for name in reproduce.REQUIRED_PARAMETERS:
        assert name in defaults
    profiles = reproduce.notebook_profiles(nb)
    assert set(profiles) == set(reproduce.PROFILES)
    for profile in reproduce.PROFILES:   # every profile's names exist in the parameters cell
        reproduce.plan({path.name[:2]: path}, profile, {}, "figures")
    text = " ".join(c.source for c in nb.cells if c.cell_type == "markdown").lower()
    assert "what we measured" in text


def _run(number, figures, executed):
    return reproduce.main(["--profile", "quick", "--only", number, "--notebooks-dir", str(NOTEBOOKS_DIR),
                           "--figures-dir", str(figures), "--output-dir", str(executed)])


@pytest.mark.slow
@pytest.mark.parametrize("number", NOTEBOOKS.keys(), ids=IDS)
def test_notebook_runs_quick_and_reruns_identically(number, tmp_path):
    runs = []
    for name in ("first", "second"):
        assert _run(number, tmp_path / name / "figures", tmp_path / name / "executed") == 0
        files = {p.name: p.read_bytes() for p in (tmp_path / name / "figures").iterdir() if p.name != "manifest.json"}
        runs.append(files)
    first, second = runs
    stems = {Path(n).stem for n in first}
    assert stems, "the notebook saved no figure"
    for stem in stems:
        assert stem.startswith(f"{number}_")
        for ext in (".pdf", ".png", ".json"):
            assert stem + ext in first, f"{stem}{ext} missing"
    assert sorted(first) == sorted(second)
    for name in first:
        assert first[name] == second[name], f"{name} differs between two runs"
    for name in first:
        if name.endswith(".json"):
            assert json.loads(first[name])["caption"], f"{name} has no caption"
    executed = nbformat.read(tmp_path / "first" / "executed" / NOTEBOOKS[number].name, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    # the rendered report of this run holds the notebook's page and every figure it made
    from q4core.report import build_report
    done = build_report(tmp_path / "first" / "executed", tmp_path / "first" / "figures", tmp_path / "report")
    assert done["pages"] == [NOTEBOOKS[number].with_suffix(".html").name]
    index = (tmp_path / "report" / "index.html").read_text()
    for stem in stems:
        assert f"figures/{stem}.png" in index and (tmp_path / "report" / "figures" / f"{stem}.pdf").is_file()
    page = (tmp_path / "report" / done["pages"][0]).read_text()
    assert '<details class="q4-code">' in page and "data:image/png;base64" in page
