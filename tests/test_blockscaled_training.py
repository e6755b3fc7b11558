"""Notebook 06's experiment module (q4core.experiments.blockscaled_training): the tables on written-out run dicts,
the run configurations against notebook 04's, tiny real trainings with stand-in recipes (q4 and its ablations for
the block-scaled recipes that live on another branch), memory per value, GEMM throughput, and the notebook's
figure JSON under the quick profile."""
import json
import math
from pathlib import Path

import pytest

from q4core.experiments import blockscaled_training as bt
from q4core.runs import RunConfig

T_975_2 = 4.302652729911275      # Student t, 97.5 % quantile, 2 degrees of freedom (3 seeds)


def _run(domain, precision, seed, test, metric="accuracy"):
    return {"domain": domain, "precision": precision, "ablation": None, "seed": seed, "metric": metric,
            "test": test, "stopped": None}


def _runs(domain, tests, metric="accuracy"):
    return [_run(domain, p, s, v, metric) for p, vals in tests.items() for s, v in enumerate(vals)]


ACC = _runs("vision", {"fp16": [90.0, 91.0, 92.0], "a": [89.0, 90.5, 91.0], "b": [89.9, 90.8, 91.85]})


# ---------------------------------------------------------------------------------------------- tables
def test_gap_table_pairs_by_seed_and_gives_notebook_04s_verdicts():
    table = bt.gap_table(ACC, ["a", "b"])["vision"]
    a = table["a"]["gap_in_target_unit"]
    assert a["values"] == pytest.approx([1.0, 0.5, 1.0])
    half = T_975_2 * math.sqrt(1 / 12) / math.sqrt(3)       # sd of (1, 0.5, 1) is sqrt(1/12)
    assert (a["low"], a["high"]) == pytest.approx((5 / 6 - half, 5 / 6 + half))
    assert table["a"]["verdict"] == "inconclusive"           # [0.12, 1.55] reaches above the 1-point aim
    assert table["b"]["gap_in_target_unit"]["values"] == pytest.approx([0.1, 0.2, 0.15])
    assert table["b"]["verdict"] == "met"                    # [0.03, 0.27]: all of it below 1
    assert set(table) == {"a", "b"}                          # fp16 is the reference, not a row


def test_gap_table_skips_the_reference_and_needs_the_candidate():
    assert set(bt.gap_table(ACC, ["fp16", "a"])["vision"]) == {"a"}
    with pytest.raises(ValueError, match="no 'c'"):
        bt.gap_table(ACC, ["a", "c"])


def test_recipe_comparisons_name_a_winner_only_where_the_interval_excludes_zero():
    runs = _runs("vision", {"fp16": [90.0, 91.0, 92.0], "a": [89.0, 90.5, 91.0], "b": [91.0, 92.4, 93.1]})
    (row,) = bt.recipe_comparisons(runs, ["a", "b"])["vision"]
    assert row["values"] == pytest.approx([2.0, 1.9, 2.1])   # a's loss of accuracy against b, per seed
    assert (row["verdict"], row["winner"]) == ("above", "b")
    (row,) = bt.recipe_comparisons(ACC, ["a", "b"])["vision"]
    assert row["values"] == pytest.approx([0.9, 0.3, 0.85])
    assert row["low"] < 0 < row["high"]
    assert (row["verdict"], row["winner"]) == ("not resolved", None)


def test_recipe_comparisons_lower_bits_per_character_is_better():
    runs = _runs("language", {"fp16": [1.8, 1.9, 2.0], "a": [2.0, 2.1, 2.2], "b": [1.9, 2.02, 2.09]}, "bpc")
    (row,) = bt.recipe_comparisons(runs, ["a", "b"])["language"]
    assert row["values"] == pytest.approx([0.1, 0.08, 0.11])
    assert row["winner"] == "b"
    (row,) = bt.recipe_comparisons(runs, ["b", "a"])["language"]
    assert row["values"] == pytest.approx([-0.1, -0.08, -0.11])
    assert (row["verdict"], row["winner"]) == ("below", "b")


def test_ablation_effects_pair_each_change_with_its_full_recipe():
    runs = _runs("language", {"q4": [2.0, 2.1, 2.2], "q4+no-tpr": [2.1, 2.15, 2.32], "mx": [1.0, 1.0, 1.0],
                              "mx+x": [0.9, 1.0, 0.95]}, "bpc")
    eff = bt.ablation_effects(runs, "language", ["q4+no-tpr", "mx+x"])
    assert eff["q4+no-tpr"]["full"] == "q4"
    assert eff["q4+no-tpr"]["values"] == pytest.approx([0.1, 0.05, 0.12])    # positive: the change is worse
    assert eff["q4+no-tpr"]["verdict"] == "above"
    assert eff["mx+x"]["values"] == pytest.approx([-0.1, 0.0, -0.05])
    assert eff["mx+x"]["verdict"] == "not resolved"
    with pytest.raises(ValueError, match="no seed with both 'nvfp4\\+no-sr' and 'nvfp4'"):
        bt.ablation_effects(runs, "language", ["nvfp4+no-sr"])
    with pytest.raises(ValueError, match="no run of domain 'speech'"):
        bt.ablation_effects(runs, "speech", ["nvfp4+no-rht"])


@pytest.mark.parametrize("name, full", [("nvfp4+no-rht", "nvfp4"), ("mxfp4+no-rht", "mxfp4"),
                                        ("q4+no-tpr+radix2", "q4")])
def test_full_recipe_of(name, full):
    assert bt.full_recipe_of(name) == full


@pytest.mark.parametrize("name", ["nvfp4", "+no-rht", "nvfp4+", ""])
def test_full_recipe_of_rejects_a_name_that_is_no_ablation(name):
    with pytest.raises(ValueError, match="ablation recipe is '<recipe>\\+<change>'"):
        bt.full_recipe_of(name)


# ---------------------------------------------------------------------------------------------- configurations
def test_run_configs_are_notebook_04s_runs():
    configs = bt.run_configs("language", ["q4", "q4+no-tpr"], seeds=[0, 1], epochs=2, max_steps=3, max_chars=8000)
    assert [(c.recipe, c.seed) for c in configs] == [(r, s) for r in ("fp16", "q4", "q4+no-tpr") for s in (0, 1)]
    # as notebook 04's run_domain builds its main runs: same keys, so its cached fp16 and q4 runs are hits
    for c in configs[:4]:
        nb04 = RunConfig(task="chars", recipe=c.recipe, seed=c.seed, ablation=None, epochs=2, model="char_lstm",
                         max_steps=3, recorder=None, max_chars=8000)
        assert c.key() == nb04.key()


def test_run_configs_record_only_the_q4_runs_with_notebook_04s_recorder():
    from q4core.experiments import full_training as ft
    configs = bt.run_configs("speech", ["q4", "nvfp4"], seeds=[0, 1], epochs=1, max_steps=3, q4_recorder_every=7)
    recorders = {(c.recipe, c.seed): c.recorder for c in configs}
    assert recorders[("q4", 0)] == recorders[("q4", 1)] == ft.QuantErrorRecorder.spec(7)
    assert recorders[("fp16", 0)] is recorders[("nvfp4", 1)] is None
    unrecorded = bt.run_configs("speech", ["q4"], seeds=[0], epochs=1, max_steps=3)
    assert unrecorded[1].recorder is None and unrecorded[1].key() != configs[2].key()


@pytest.mark.parametrize("kwargs, match", [
    ({"domain": "imagenet"}, "domain must be one of"),
    ({"recipes": "q4"}, "recipes must be a non-empty list"),
    ({"recipes": []}, "recipes must be a non-empty list"),
    ({"recipes": ["q4", "q4"]}, "recipes repeats a recipe"),
    ({"seeds": [-1]}, "seeds"),
    ({"epochs": 0}, "epochs"),
    ({"q4_recorder_every": 0}, "q4_recorder_every"),
])
def test_run_configs_reject_bad_arguments(kwargs, match):
    args = {"domain": "speech", "recipes": ["q4"], "seeds": [0], "epochs": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        bt.run_configs(**args)


# ---------------------------------------------------------------------------------------------- notebook 04's runs
NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def _parameters(number, profile):
    """A notebook's parameters under ``profile``: its parameters cell overridden by the profile (q4-reproduce's)."""
    import nbformat

    from q4core import reproduce
    nb = nbformat.read(reproduce.find_notebooks(NOTEBOOKS_DIR)[number], as_version=4)
    return {**reproduce.parameter_defaults(nb), **reproduce.notebook_profiles(nb)[profile]}


class _Asked(Exception):
    pass


def _asked_configs(monkeypatch, sweep):
    """The RunConfigs ``sweep()`` hands to q4core.runs.map (stopped there: nothing is trained or read)."""
    from q4core import runs as runs_module
    asked = []

    def capture(configs, *args, **kwargs):
        asked.extend(configs)
        raise _Asked

    monkeypatch.setattr(runs_module, "map", capture)
    try:
        sweep()
    except _Asked:
        pass
    return asked


def _nb04_main_runs(monkeypatch, p):
    """Notebook 04's main runs, asked for as its first code cell asks for them."""
    from q4core.experiments import full_training as ft
    seeds = ft.domain_seeds(p["seed"], p["n_seeds"], p["seed_counts"])
    epochs = {"vision": p["vision_epochs"], "speech": p["speech_epochs"], "language": p["language_epochs"]}
    configs = []
    for domain in ft.DOMAINS:
        configs += _asked_configs(monkeypatch, lambda domain=domain: ft.run_domain(
            domain, seeds=seeds[domain], epochs=epochs[domain], max_steps=p["max_steps"] or None,
            max_chars=p["language_chars"], recorder_every=p["record_every"]))
    return configs


def _nb06_main_runs(monkeypatch, p):
    """Notebook 06's main runs, asked for as its first code cell asks for them."""
    seeds = [p["seed"] + i for i in range(p["n_seeds"])]
    epochs = {"vision": p["vision_epochs"], "speech": p["speech_epochs"], "language": p["language_epochs"]}
    configs = []
    for domain in bt.DOMAINS:
        configs += _asked_configs(monkeypatch, lambda domain=domain: bt.run_recipes(
            domain, p["recipes"], seeds=seeds, epochs=epochs[domain], max_steps=p["max_steps"] or None,
            max_chars=p["language_chars"], q4_recorder_every=p["q4_record_every"]))
    return configs


@pytest.mark.parametrize("profile", ["quick", "default", "full"])
def test_notebook_06_records_its_q4_runs_as_notebook_04_does(profile):
    assert _parameters("06", profile)["q4_record_every"] == _parameters("04", profile)["record_every"]


@pytest.mark.parametrize("precision", ["q4", "fp16"])
def test_notebook_06s_default_runs_are_notebook_04s(monkeypatch, precision):
    p04, p06 = _parameters("04", "default"), _parameters("06", "default")
    nb04 = {c.key(): c for c in _nb04_main_runs(monkeypatch, p04) if c.recipe == precision}
    nb06 = [c for c in _nb06_main_runs(monkeypatch, p06) if c.recipe == precision]
    tasks = {spec["task"] for spec in bt.DOMAINS.values()}
    assert {(c.task, c.seed) for c in nb06} == {(t, p06["seed"] + i) for t in tasks for i in range(p06["n_seeds"])}
    for c in nb06:
        assert c.key() in nb04, f"notebook 06 asks for a {precision} run notebook 04 does not make: {c!r}"
        assert c.identity() == nb04[c.key()].identity()
    # run_configs names the same runs run_recipes asks for
    epochs = {"vision": p06["vision_epochs"], "speech": p06["speech_epochs"], "language": p06["language_epochs"]}
    listed = [c.key() for d in bt.DOMAINS for c in bt.run_configs(
        d, p06["recipes"], [p06["seed"] + i for i in range(p06["n_seeds"])], epochs[d], p06["max_steps"] or None,
        p06["language_chars"], q4_recorder_every=p06["q4_record_every"]) if c.recipe == precision]
    assert listed == [c.key() for c in nb06]


# ---------------------------------------------------------------------------------------------- tiny trainings
@pytest.mark.slow
def test_run_recipes_and_ablations_train_reuse_and_tabulate(monkeypatch):
    runs = bt.run_recipes("language", ["q4", "q4+int4-grad"], seeds=[0, 1], epochs=1, max_steps=2, max_chars=8000)
    assert [(r["precision"], r["seed"]) for r in runs] == [(p, s) for p in ("fp16", "q4", "q4+int4-grad")
                                                            for s in (0, 1)]
    assert all(r["metric"] == "bpc" and r["test"] > 0 and r["steps"] == 2 for r in runs)
    table = bt.gap_table(runs, ["q4", "q4+int4-grad"])["language"]
    assert table["q4"]["gap"]["n"] == 2
    from q4core import runs as runs_module

    def no_training(configs, *a, **k):
        raise AssertionError(f"trained again: {configs}")
    monkeypatch.setattr(runs_module, "map", no_training)
    again = bt.run_ablations("language", ["q4+int4-grad"], seeds=[0, 1], epochs=1, max_steps=2, max_chars=8000,
                             done=runs)
    assert [r["test"] for r in again] == [r["test"] for r in runs]      # every run reused from done
    eff = bt.ablation_effects(again, "language", ["q4+int4-grad"])["q4+int4-grad"]
    assert eff["values"] == pytest.approx([runs[4]["test"] - runs[2]["test"], runs[5]["test"] - runs[3]["test"]])


@pytest.mark.slow
def test_fidelity_runs_record_the_quantized_layers_only():
    fid = bt.fidelity_runs("language", ["q4", "fp32"], seed=0, epochs=1, every=1, max_steps=3, max_chars=8000)
    layers = fid["q4"]["layers"]
    assert set(layers) == {"layers.1.input", "layers.1.hidden"}     # the LSTM's two 4-bit GEMMs
    for v in layers.values():
        assert v["n"] == 3
        assert 0.5 < v["dw_cos"] <= 1.0 and 0.5 < v["dx_cos"] <= 1.0
        assert 0.5 < v["dw_norm_ratio"] < 1.5 and 0.5 < v["dx_norm_ratio"] < 1.5
    assert fid["fp32"]["layers"] == {} and fid["fp32"]["records"] == 0    # no quantized gradient: nothing


def test_summarise_fidelity_means_per_layer_without_nan():
    recs = [{"layer": "a", "dw_cos": 0.9, "dw_norm_ratio": 1.0, "dx_cos": 0.8, "dx_norm_ratio": float("nan")},
            {"layer": "a", "dw_cos": 0.7, "dw_norm_ratio": 0.5, "dx_cos": 0.6, "dx_norm_ratio": 2.0},
            {"layer": "b", "dw_cos": 1.0, "dw_norm_ratio": 1.0, "dx_cos": 1.0, "dx_norm_ratio": 1.0}]
    out = bt.summarise_fidelity(recs)
    assert list(out) == ["a", "b"]
    assert out["a"] == pytest.approx({"dw_cos": 0.8, "dw_norm_ratio": 0.75, "dx_cos": 0.7, "dx_norm_ratio": 2.0,
                                      "n": 2})


# ---------------------------------------------------------------------------------------------- memory
def test_memory_per_value_element_plus_block_and_tensor_scales():
    rows = {r["format"]: r for r in bt.memory_per_value(4096)}
    assert list(rows) == list(bt.FORMATS)
    assert rows["INT4"]["bits"] == 4 + 32 / 4096
    assert rows["radix-4 FP4"]["bits"] == 4 + 32 / 4096
    assert rows["MXFP4"]["bits"] == 4.25                      # E8M0 byte per 32, no tensor scale
    assert rows["NVFP4"]["bits"] == 4.5 + 32 / 4096           # E4M3 byte per 16 + an FP32 per tensor
    for r in rows.values():                                    # whole blocks: a real encoding costs the same
        assert r["counted_bits"] == r["bits"]


def test_memory_per_value_counts_the_padding_of_a_last_short_block():
    rows = {r["format"]: r for r in bt.memory_per_value(100)}
    assert rows["MXFP4"]["counted_bits"] == 8 * (50 + 4) / 100       # 50 packed bytes + 4 E8M0 scales
    assert rows["NVFP4"]["counted_bits"] == 8 * (50 + 7 + 4) / 100   # 7 E4M3 scales + the FP32 tensor scale
    with pytest.raises(ValueError, match="n"):
        bt.memory_per_value(1)


# ---------------------------------------------------------------------------------------------- throughput
def test_throughput_times_every_format_from_one_bench_run():
    out = bt.gemm_throughput(64, repeat=1)
    assert [r["op"] for r in out["rows"]] == ["fp32", "int4xint4", "fp4xint4", "int4xfp4", "mxfp4", "nvfp4"]
    assert all(r["gops"] > 0 and r["seconds_min"] <= r["seconds"] <= r["seconds_max"] for r in out["rows"])
    assert out["rows"][0]["ratio_vs_fp32"] == 1.0 and out["skipped"] == []


# ---------------------------------------------------------------------------------------------- the notebook
@pytest.mark.slow
def test_notebook_06_quick_figures_hold_their_numbers(tmp_path):
    from q4core import reproduce
    notebooks = Path(__file__).resolve().parent.parent / "notebooks"
    assert reproduce.main(["--profile", "quick", "--only", "06", "--notebooks-dir", str(notebooks), "--figures-dir",
                           str(tmp_path / "figures"), "--output-dir", str(tmp_path / "executed")]) == 0
    doc = {name: json.loads((tmp_path / "figures" / f"06_{name}.json").read_text())
           for name in ("gap", "ablations", "fidelity", "memory")}
    assert set(doc["gap"]["data"]) == {"gaps", "comparisons"}
    assert set(doc["gap"]["data"]["gaps"]) == {"vision", "speech", "language"}
    entry = doc["gap"]["data"]["gaps"]["speech"]["q4"]
    assert {"gap", "gap_in_target_unit", "verdict", "target"} <= set(entry)
    assert len(entry["gap_in_target_unit"]["values"]) == 2                   # the quick profile's two seeds
    assert set(doc["ablations"]["data"]) == {"domain", "seeds", "effects"}
    assert {"full", "values", "low", "high", "verdict"} <= set(doc["ablations"]["data"]["effects"]["nvfp4+no-rht"])
    assert set(doc["fidelity"]["data"]) == {"domain", "seed", "recipes"}
    assert doc["fidelity"]["data"]["recipes"]["q4"]["layers"]
    assert set(doc["memory"]["data"]) == {"memory"}
    assert [r["format"] for r in doc["memory"]["data"]["memory"]] == list(bt.FORMATS)
    # timings are not byte-reproducible: the quick profile keeps the throughput figure out of the figures folder
    assert not list((tmp_path / "figures").glob("06_throughput*"))
    assert all(d["caption"] for d in doc.values())
