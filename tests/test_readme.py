"""The README's Python example runs as written (so what it promises stays true)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "[-4]" in out          # the article's worked example 0.3 -> -3.5 -> -4


def test_readme_tables_match_the_figure_json():
    """The README's result tables are what `python -m q4core.readme_tables` makes from figures/*.json."""
    from q4core import readme_tables
    assert readme_tables.update_readme(check=True) == [], \
        "README tables differ from the figure JSON: run `python -m q4core.readme_tables`"


def test_readme_tables_detect_drift(tmp_path):
    """A changed number in the JSON makes --check fail and names the table; a rewrite fixes it."""
    import json
    import shutil

    from q4core import readme_tables
    figs = tmp_path / "figures"
    shutil.copytree(README.parent / "figures", figs)
    readme = tmp_path / "README.md"
    readme.write_text(README.read_text())
    assert readme_tables.update_readme(readme, figs, check=True) == []
    path = figs / "04_results.json"
    doc = json.loads(path.read_text())
    doc["data"]["vision"]["precisions"]["q4"]["mean"] += 1.0
    path.write_text(json.dumps(doc))
    assert readme_tables.main(["--check", "--readme", str(readme), "--figures-dir", str(figs)]) == 1
    before = readme.read_text()
    assert readme_tables.update_readme(readme, figs) == ["accuracy"]
    assert readme.read_text() != before and readme_tables.update_readme(readme, figs, check=True) == []


def test_readme_tables_refuse_unknown_and_missing(tmp_path):
    from q4core import readme_tables
    with pytest.raises(ValueError, match="unknown table 'nope'"):
        readme_tables.render("nope")
    with pytest.raises(FileNotFoundError, match="04_results.json is missing"):
        readme_tables.render("accuracy", tmp_path)


def test_tpr_resnet_table_from_figure_json(tmp_path):
    import json

    from q4core import readme_tables, stats
    iv = stats.paired_difference([0.10, 0.12, 0.11], [0.20, 0.25, 0.21])     # written out: mean -0.11
    one = stats.paired_difference([0.9], [0.8])
    data = {"summary": {"network": {"mean_shift": iv, "var_log2": iv, "dx_cos": one, "dw_cos": iv}},
            "tests": {"with TPR": [97.0, 96.5, 97.2], "without TPR": [96.8, 96.9, 97.0]}, "seeds": [0, 1, 2],
            "epochs": 2}
    (tmp_path / "04_tpr_resnet.json").write_text(json.dumps({"data": data}))
    text = readme_tables.render("tpr-resnet", tmp_path)
    assert "| BatchNorm running-mean bias, mean over layers of the absolute shift (float SDs) | -0.1100 [" in text
    assert "lower with TPR" in text                       # all three seeds well below: the interval excludes 0
    assert "+0.1000 (one seed) | not resolved" in text
    assert "seeds [0, 1, 2] paired, 2 epoch(s)" in text


def test_accuracy_table_with_unequal_seed_counts(tmp_path):
    import json

    from q4core import readme_tables
    from q4core.experiments import full_training as ft

    def run(domain, precision, seed, test, metric):
        return {"domain": domain, "precision": precision, "ablation": None, "seed": seed, "metric": metric,
                "test": test, "stopped": None}
    runs = [run("vision", p, s, 98.0 - (0.3 + 0.1 * s if p == "q4" else 0.0), "accuracy")
            for p in ("fp32", "fp16", "q4") for s in range(3)]
    runs += [run("language", p, s, 2.0 + (0.01 * s if p == "q4" else 0.0), "bpc")
             for p in ("fp32", "fp16", "q4") for s in range(5)]
    table = ft.results_table(runs)
    (tmp_path / "04_results.json").write_text(json.dumps({"data": table}))
    text = readme_tables.render("accuracy", tmp_path)
    assert "(vision: 3, language: 5 seeds)" in text
    assert text.count("| vision |") == 1 and text.count("| language |") == 1


def test_format_study_resnet_table_from_figure_json(tmp_path):
    import json

    from q4core import readme_tables

    def cell(fmt, rounding, acc, dx, dw):
        return {"format": fmt, "rounding": rounding, "accuracy": acc, "stopped": [None] * len(acc),
                "fidelity": [{"dx_cos": dx, "dw_cos": dw}] * len(acc), "layers": {}}
    data = {"seeds": [0, 1, 2], "epochs": 2, "fp32": {"accuracy": [97.0, 97.2, 97.4]},
            "cells": [cell("radix4", "nearest", [96.0, 96.2, 96.4], 0.95, 0.94),
                      cell("radix4", "log", [95.0, None, 95.4], 0.96, 0.93),
                      cell("int4_sym", "nearest", [96.5, 96.5, 96.5], 0.99, 0.98)]}
    (tmp_path / "03_format_study_resnet.json").write_text(json.dumps({"data": {"study": data, "verdicts": {}}}))
    text = readme_tables.render("format-study-resnet", tmp_path)
    assert "| radix4 | 96.20 ± 0.20, 0.950, 0.940 | 95.20 ± 0.28 (1 diverged), 0.960, 0.930 |" in text
    assert "| int4_sym | 96.50 ± 0.00, 0.990, 0.980 | - |" in text
    assert "2 epochs" in text and "seeds [0, 1, 2] (float32 gradients: 97.20 ± 0.20)" in text
