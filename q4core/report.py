"""A static report of the executed notebooks: what a reader of the repository opens instead of running anything.

``python -m q4core.report --executed notebooks/executed --figures figures --out report`` (and ``q4-reproduce
--report DIR``) turns each executed notebook into one HTML page - code folded into a ``<details>`` block above its
output, figures embedded, the "what we measured" Markdown as the notebook rendered it - and writes an
``index.html`` listing the notebooks (title, profile, parameters) and every figure of ``figures/manifest.json`` with
its code version, links to its PDF, PNG and JSON, and its caption.  Figures are copied into ``report/figures/`` so
the folder is self-contained.  The whole report is built in a staging folder and swapped in at the end, so a failed
build leaves the previous report as it was.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["Findings", "build_report", "main"]

class Findings:
    """The "what we measured" of a notebook as Markdown, not print output: call it like ``print`` (one finding
    per call; ``say()`` with no argument starts a new paragraph) and end the cell with the object - Jupyter shows
    it as Markdown (``_repr_markdown_``), so the executed notebook and the report render it as text a reader
    can quote, and ``str()`` gives the plain text."""

    def __init__(self):
        self.paragraphs = [[]]

    def __call__(self, *parts, sep=" "):
        text = sep.join(str(p) for p in parts)
        if text.startswith("\n") or not text.strip():   # print("\n...") / print(): a new paragraph
            self._new_paragraph()
        if text.strip():
            self.paragraphs[-1].append(text.strip("\n"))

    def _new_paragraph(self):
        if self.paragraphs[-1]:
            self.paragraphs.append([])

    def block(self, text):
        """Preformatted text (an aligned table made for a terminal), kept as it is."""
        self._new_paragraph()
        self.paragraphs[-1].append(("block", str(text)))
        self.paragraphs.append([])

    def table(self, header, rows):
        """A Markdown table: ``header`` a list of column names, ``rows`` lists of cells (formatted already)."""
        self._new_paragraph()
        self.paragraphs[-1].append(("table", [str(h) for h in header], [[str(c) for c in r] for r in rows]))
        self.paragraphs.append([])

    def _repr_markdown_(self):
        blocks = []
        for para in self.paragraphs:
            if not para:
                continue
            if isinstance(para[0], tuple) and para[0][0] == "block":
                blocks.append("```text\n" + para[0][1] + "\n```")
            elif isinstance(para[0], tuple):
                _, header, rows = para[0]
                lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                lines += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in rows]
                blocks.append("\n".join(lines))
            else:
                blocks.append("\n".join(f"- {_md_escape(line)}" for line in para))
        return "\n\n".join(blocks) + "\n"

    def __str__(self):
        out = []
        for para in self.paragraphs:
            if not para:
                continue
            if isinstance(para[0], tuple) and para[0][0] == "block":
                out.append(para[0][1])
            elif isinstance(para[0], tuple):
                _, header, rows = para[0]
                out.append("\n".join("  ".join(r) for r in [header] + rows))
            else:
                out.append("\n".join(para))
        return "\n\n".join(out)

    __repr__ = __str__


def _md_escape(line):
    """Text as literal Markdown: characters that would start emphasis or HTML are escaped; newlines kept."""
    for ch in ("\\", "*", "_", "`", "<", ">", "[", "]", "#", "|"):
        line = line.replace(ch, "\\" + ch)
    return line.replace("\n", "  \n  ")


_CSS = """
body { font-family: DejaVu Sans, Helvetica, Arial, sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em;
       line-height: 1.45; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ccc; padding: 0.2em 0.5em; }
code { font-size: 0.9em; } .caption { font-size: 0.9em; color: #444; } .meta { color: #666; font-size: 0.85em; }
"""
_FOLD = ('<details class="q4-code"><summary>code (cell {n})</summary>'
         '<pre style="font-size:0.8em;overflow-x:auto">{src}</pre></details>')


def _title(nb, fallback):
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def _folded(nb):
    """A copy of ``nb`` whose code sources are folded ``<details>`` blocks before the cells' outputs."""
    import nbformat
    out = nbformat.v4.new_notebook(metadata=nb.metadata)
    for n, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            tags = cell.get("metadata", {}).get("tags", [])
            if "injected-parameters" in tags:
                continue   # papermill's copy of the parameters: shown in the index instead
            # a Markdown cell (raw HTML cells are sanitised by nbconvert, which drops <details>); newlines as
            # &#10; keep the block on one line, so a blank line in the code cannot end the HTML block
            src = html.escape(cell.source).replace("\n", "&#10;")
            out.cells.append(nbformat.v4.new_markdown_cell(_FOLD.format(n=n, src=src)))
        out.cells.append(cell)
    return out


def _render_notebook(path):
    import nbformat
    from nbconvert import HTMLExporter
    nb = nbformat.read(path, as_version=4)
    exporter = HTMLExporter(template_name="lab")
    exporter.exclude_input = True
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(_folded(nb))
    return nb, body


def _params(nb):
    return nb.metadata.get("papermill", {}).get("parameters", {})


def build_report(executed_dir, figures_dir, out_dir):
    """Write the report into ``out_dir`` (replaced as a whole); returns ``{"pages": [...], "figures": [...]}``.

    ``FileNotFoundError`` if ``executed_dir`` holds no executed notebook (``NN_*.ipynb``) or ``figures_dir`` has no
    ``manifest.json``; ``ValueError`` if ``out_dir`` exists and is not a folder."""
    executed_dir, figures_dir, out_dir = Path(executed_dir), Path(figures_dir), Path(out_dir)
    notebooks = sorted(p for p in executed_dir.glob("[0-9][0-9]_*.ipynb")) if executed_dir.is_dir() else []
    if not notebooks:
        raise FileNotFoundError(f"executed notebooks: none (NN_*.ipynb) in {executed_dir}; run q4-reproduce first")
    manifest_path = figures_dir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"figures: {manifest_path} is missing; run q4-reproduce first")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {out_dir} exists and is not a folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(manifest_path.read_text())["figures"]
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{os.getpid()}-", dir=out_dir.parent))
    os.chmod(stage, 0o755)   # mkdtemp makes 0700; a report is for everyone to read
    try:
        (stage / "figures").mkdir()
        pages, rows = [], []
        for path in notebooks:
            nb, body = _render_notebook(path)
            page = path.with_suffix(".html").name
            (stage / page).write_text(body, encoding="utf-8")
            params = _params(nb)
            pages.append({"page": page, "notebook": path.stem, "title": _title(nb, path.stem), "parameters": params})
        figures = sorted({name.rsplit(".", 1)[0] for name in manifest})
        for stem in figures:
            links = []
            for ext in ("pdf", "png", "json"):
                src = figures_dir / f"{stem}.{ext}"
                if src.is_file():
                    shutil.copy2(src, stage / "figures" / src.name)
                    links.append(f'<a href="figures/{src.name}">{ext.upper()}</a>')
            meta = manifest.get(f"{stem}.png") or manifest.get(f"{stem}.json") or {}
            caption = ""
            js = figures_dir / f"{stem}.json"
            if js.is_file():
                caption = json.loads(js.read_text()).get("caption", "")
            rows.append((stem, meta, links, caption))
        parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>q4core report</title><style>{_CSS}"
                 "</style></head><body><h1>q4core: 4-bit training, reproduced</h1>",
                 "<p>The executed notebooks of the last <code>q4-reproduce</code> run, and every figure with the run "
                 "that made it. Each page folds its code; the figures and the measured text are the notebook's "
                 "own output.</p><h2>Notebooks</h2><table><tr><th>notebook</th><th>profile</th>"
                 "<th>parameters</th></tr>"]
        for p in pages:
            prof = p["parameters"].get("profile", "")
            shown = {k: v for k, v in p["parameters"].items() if k not in ("profile", "figures_dir")}
            parts.append(f"<tr><td><a href='{p['page']}'>{html.escape(p['title'])}</a></td><td>{html.escape(str(prof))}"
                         f"</td><td><code>{html.escape(json.dumps(shown))}</code></td></tr>")
        parts.append("</table><h2>Figures</h2><table><tr><th>figure</th><th>made by</th><th>files</th>"
                     "<th>caption</th></tr>")
        for stem, meta, links, caption in rows:
            made = f"{meta.get('notebook', '?')}, profile {meta.get('profile', '?')}, {meta.get('code_version', '?')}"
            parts.append(f"<tr><td><code>{stem}</code></td><td class='meta'>{html.escape(made)}</td>"
                         f"<td>{' '.join(links)}</td><td class='caption'>{html.escape(caption)}</td></tr>")
        parts.append("</table></body></html>\n")
        (stage / "index.html").write_text("".join(parts), encoding="utf-8")
        # swap: the old report is removed only once the new one is complete
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old.{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(stage, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return {"pages": [p["page"] for p in pages], "figures": figures}


def main(argv=None):
    root = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(prog="python -m q4core.report", description=__doc__.split("\n")[0])
    ap.add_argument("--executed", type=Path, default=root / "notebooks" / "executed",
                    help="folder of executed notebooks (default: notebooks/executed/ of this checkout)")
    ap.add_argument("--figures", type=Path, default=root / "figures", help="figures folder with manifest.json")
    ap.add_argument("--out", type=Path, default=root / "report", help="report folder (replaced as a whole)")
    args = ap.parse_args(argv)
    try:
        done = build_report(args.executed, args.figures, args.out)
    except (FileNotFoundError, ValueError) as e:
        ap.error(str(e))
    print(f"report: {len(done['pages'])} notebooks, {len(done['figures'])} figures -> {args.out}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
