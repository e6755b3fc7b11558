"""q4core.report: the static report of executed notebooks, and Findings (what we measured, as Markdown)."""
import json

import nbformat
import pytest

from q4core.report import Findings, build_report


def _executed(folder, number="07", title="7. A test notebook"):
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"parameters": {"profile": "quick", "seed": 3, "figures_dir": "x"}}
    code = nbformat.v4.new_code_cell("x = 1\n\nprint('<b>')")
    code.outputs = [nbformat.v4.new_output("stream", text="<b>\n")]
    found = Findings()
    found("gap +0.45 points, interval [+0.15, +0.75]: met")
    shown = nbformat.v4.new_code_cell("found")
    shown.outputs = [nbformat.v4.new_output("execute_result", data={"text/markdown": found._repr_markdown_(),
                                                                    "text/plain": str(found)}, execution_count=2)]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\ntext"), code, shown]
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / f"{number}_test.ipynb")


def _figures(folder, stem="07_demo"):
    folder.mkdir(parents=True, exist_ok=True)
    for ext in ("pdf", "png"):
        (folder / f"{stem}.{ext}").write_bytes(b"fake " + ext.encode())
    (folder / f"{stem}.json").write_text(json.dumps({"caption": "What the reader should see.", "data": {}}))
    entry = {"notebook": "07_test", "profile": "quick", "code_version": "git:abc1234", "sha256": "0"}
    manifest = {"figures": {f"{stem}.{e}": entry for e in ("pdf", "png", "json")}}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_report_pages_index_and_figures(tmp_path):
    _executed(tmp_path / "executed")
    _figures(tmp_path / "figures")
    done = build_report(tmp_path / "executed", tmp_path / "figures", tmp_path / "report")
    assert done == {"pages": ["07_test.html"], "figures": ["07_demo"]}
    index = (tmp_path / "report" / "index.html").read_text()
    assert "7. A test notebook" in index and "git:abc1234" in index and "What the reader should see." in index
    assert "&quot;seed&quot;: 3" in index and "figures_dir" not in index
    page = (tmp_path / "report" / "07_test.html").read_text()
    assert '<details class="q4-code">' in page and "print('&lt;b&gt;')" in page   # code folded, escaped
    assert "<li>gap +0.45 points" in page          # Findings rendered as Markdown, not as print output
    assert (tmp_path / "report" / "figures" / "07_demo.pdf").read_bytes() == b"fake pdf"
    # a second build replaces the report as a whole; nothing is left beside it
    (tmp_path / "report" / "stale.html").write_text("old")
    build_report(tmp_path / "executed", tmp_path / "figures", tmp_path / "report")
    assert not (tmp_path / "report" / "stale.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["executed", "figures", "report"]


def test_report_refuses_what_it_cannot_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="executed notebooks: none"):
        build_report(tmp_path / "nothing", tmp_path, tmp_path / "report")
    _executed(tmp_path / "executed")
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        build_report(tmp_path / "executed", tmp_path / "nofigs", tmp_path / "report")
    _figures(tmp_path / "figures")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        build_report(tmp_path / "executed", tmp_path / "figures", tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "x"


def test_findings_markdown_and_text():
    found = Findings()
    found("a_b *c*")
    found()
    found("\nsecond paragraph")
    found.table(["bits", "SNR dB"], [[4, "19.2"]])
    found.block("x   y\n1   2")
    md = found._repr_markdown_()
    assert md.startswith("- a\\_b \\*c\\*\n\n- second paragraph")
    assert "| bits | SNR dB |\n|---|---|\n| 4 | 19.2 |" in md and "```text\nx   y\n1   2\n```" in md
    assert str(found).startswith("a_b *c*\n\nsecond paragraph")
