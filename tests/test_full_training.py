"""q4core.experiments.full_training: units, gap arithmetic, the results and ablation tables, the quantization-error
recorder, and a tiny real run (well-formed curves)."""
import math

import numpy as np
import pytest

from q4core.experiments import full_training as ft
from q4core.nn.qgemm import QuantGemm
from q4core.recipe import get_recipe


def test_units_and_gap_sign():
    assert ft.to_points(0.9734, "accuracy") == pytest.approx(97.34)
    assert ft.to_points(2.5, "bpc") == 2.5
    assert ft.to_points(None, "accuracy") is None
    assert ft.to_points(float("nan"), "bpc") is None
    # positive gap = the candidate (4-bit) is worse
    assert ft.gap(98.0, 97.25, "accuracy") == pytest.approx(0.75)
    assert ft.gap(97.0, 98.0, "accuracy") == pytest.approx(-1.0)
    assert ft.gap(2.00, 2.05, "bpc") == pytest.approx(0.05)
    assert ft.gap(2.00, 1.90, "bpc") == pytest.approx(-0.10)
    assert ft.gap(None, 1.0, "bpc") is None and ft.gap(1.0, None, "accuracy") is None
    with pytest.raises(ValueError, match="metric"):
        ft.gap(1.0, 2.0, "bleu")
    with pytest.raises(ValueError, match="metric"):
        ft.to_points(1.0, "loss")


def _run(domain, precision, seed, test, metric="accuracy", stopped=None):
    return {"domain": domain, "precision": precision, "ablation": None, "seed": seed, "metric": metric,
            "test": test, "stopped": stopped}


def test_results_table_per_seed_gap_mean_and_spread():
    runs = [_run("vision", "fp32", 0, 98.0), _run("vision", "fp32", 1, 97.0),
            _run("vision", "fp16", 0, 98.0), _run("vision", "fp16", 1, 97.5),
            _run("vision", "q4", 0, 97.5), _run("vision", "q4", 1, 95.5),
            _run("language", "fp16", 0, 2.0, "bpc"), _run("language", "q4", 0, 2.01, "bpc")]
    table = ft.results_table(runs)
    v = table["vision"]
    assert v["precisions"]["fp32"]["mean"] == pytest.approx(97.5)
    assert v["precisions"]["fp32"]["std"] == pytest.approx(0.5 ** 0.5)   # sample SD of 98, 97
    assert v["gap"]["values"] == pytest.approx([0.5, 2.0])          # paired by seed
    assert v["gap"]["mean"] == pytest.approx(1.25)
    assert v["gap"]["std"] == pytest.approx(1.5 / 2 ** 0.5)
    # two seeds: t_{0.975, 1} = 12.706, half-width 12.706 * 1.0607 / sqrt(2) = 9.53: nothing is resolved
    assert v["gap"]["low"] == pytest.approx(1.25 - 9.5297, abs=1e-3)
    assert v["verdict"] == "inconclusive"                            # mean 1.25 > 1, but the interval spans it
    lang = table["language"]
    assert lang["gap"]["mean"] == pytest.approx(0.01)
    assert lang["gap_in_target_unit"]["mean"] == pytest.approx(0.5)    # 0.01 bits = 0.5 % of 2.0
    assert lang["verdict"] == "inconclusive"                           # one seed: no interval
    text = ft.format_table(table)
    assert "vision" in text and "language" in text and "inconclusive" in text
    assert "97.50 +- 0.71" in text


def test_target_verdict_follows_the_interval():
    tight = ft._stats([0.2, 0.3, 0.25, 0.3])
    assert ft.target_verdict(tight, 1.0) == "met"
    assert ft.target_verdict(ft._stats([2.0, 2.2, 2.1, 2.05]), 1.0) == "missed"
    assert ft.target_verdict(ft._stats([0.0, 2.0, 1.0]), 1.0) == "inconclusive"
    assert ft.target_verdict(ft._stats([None]), 1.0) is None


def test_results_table_diverged_run_and_mixed_metrics():
    runs = [_run("speech", "fp16", 0, 90.0), _run("speech", "q4", 0, None, stopped="training stopped: nan")]
    e = ft.results_table(runs)["speech"]
    assert e["gap"]["mean"] is None and e["verdict"] is None
    assert e["stopped"] == {"q4": "training stopped: nan"}
    assert "diverged" in ft.format_table({"speech": e})
    with pytest.raises(ValueError, match="mixes metrics"):
        ft.results_table([_run("x", "fp16", 0, 1.0), _run("x", "q4", 0, 1.0, "bpc")])


def test_ablation_table_gap_to_baseline():
    runs = [dict(_run("vision", "q4", s, t), label=label, ablation=name)
            for label, name, s, t in (("q4 (full recipe)", None, 0, 96.0), ("q4 (full recipe)", None, 1, 95.0),
                                      ("no TPR", "no-tpr", 0, 93.0), ("no TPR", "no-tpr", 1, 92.0))]
    base = [_run("vision", "fp16", 0, 97.0), _run("vision", "fp16", 1, 96.0), _run("vision", "fp32", 0, 99.0)]
    t = ft.ablation_table(runs, baseline="fp16", baseline_runs=base)
    assert list(t) == ["q4 (full recipe)", "no TPR"]
    assert t["q4 (full recipe)"]["gap"]["values"] == pytest.approx([1.0, 1.0])
    assert t["no TPR"]["mean"] == pytest.approx(92.5)
    assert t["no TPR"]["gap"]["mean"] == pytest.approx(4.0)
    assert "gap" not in ft.ablation_table(runs)["no TPR"]


def _q4_gemm(**config):
    gemm = QuantGemm()
    gemm.configure(get_recipe("q4", **config), index=1, name="test")
    return gemm


def test_layer_errors_zero_on_grid_and_exact_off_grid():
    gemm = _q4_gemm()
    sw, sx, sg = 0.5, 0.25, 1.0          # radix-4 grid at scale 1: 4**-6 .. 1
    gemm.unsigned = True
    gemm.last = {"weight": np.float32([[1.0, -0.5], [3.5, 0.0]]), "weight_scale": sw,
                 "input": np.float32([[0.25, 3.75], [0.0, 1.0]]), "act_scale": sx,
                 "grad_output": np.float32([[1.0, -4.0 ** -3], [4.0 ** -2, 0.0]]), "grad_scale": sg}
    errs = ft.QuantErrorRecorder.layer_errors(gemm)
    assert errs == {"weight": 0.0, "activation": 0.0, "gradient": 0.0}
    # off the grid: weight 0.26 -> 0.5 (INT4 step 0.5); input 5.0 clipped to 15 * 0.25 = 3.75
    gemm.last.update(weight=np.float32([1.0, 0.26]), input=np.float32([5.0, 1.0]), grad_output=np.float32([0.3]))
    errs = ft.QuantErrorRecorder.layer_errors(gemm)
    assert errs["weight"] == pytest.approx(0.24 / math.hypot(1.0, 0.26), rel=1e-6)
    assert errs["activation"] == pytest.approx(1.25 / math.hypot(5.0, 1.0), rel=1e-6)
    assert errs["gradient"] == pytest.approx(abs(0.25 - 0.3) / 0.3, rel=1e-5)   # 0.3 -> 4**-1 (nearest)
    # a layer with signed inputs: INT4 levels -7..7 (-8 is not used)
    gemm.unsigned = False
    gemm.last.update(input=np.float32([-2.0, 1.0]))
    assert ft.QuantErrorRecorder.layer_errors(gemm)["activation"] == pytest.approx(0.25 / math.hypot(2, 1))


def test_summarise_and_diagnose():
    recs = [{"step": s, "layer": name, "role": r, "rel_error": e}
            for s, name, r, e in ((1, "a", "weight", 0.1), (2, "a", "weight", 0.3), (1, "a", "gradient", 0.4),
                               (1, "b", "gradient", 0.5), (1, "b", "activation", 0.05))]
    summ = ft.summarise_errors(recs)
    assert list(summ) == ["a", "b"]
    assert summ["a"]["weight"]["rel_error"] == pytest.approx(0.2) and summ["a"]["weight"]["n"] == 2
    assert summ["a"]["weight"]["snr_db"] == pytest.approx(-20 * math.log10(0.2))
    d = ft.diagnose(summ)
    assert d["worst"] == ("b", "gradient", 0.5)
    assert d["by_role"]["weight"] == ("a", pytest.approx(0.2))
    assert ft.diagnose({}) is None
    with pytest.raises(ValueError, match="every"):
        ft.QuantErrorRecorder(0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="domain"):
        ft.run_domain("video")
    with pytest.raises(ValueError, match="seeds"):
        ft.run_domain("vision", seeds=[])
    with pytest.raises(ValueError, match="epochs"):
        ft.run_ablations("vision", epochs=0)
    for bad in ("vision", [], ["vision", "video"], ["speech", "speech"]):
        with pytest.raises(ValueError, match="ablation domains"):
            ft.ablation_study(bad, epochs={"vision": 1, "speech": 1})
    with pytest.raises(ValueError, match="no entry"):
        ft.ablation_study(["speech"], epochs={"vision": 1})


def test_ablation_study_tiny_run():
    study = ft.ablation_study(["speech"], seeds=[0], epochs={"speech": 1}, max_steps=2)
    s = study["speech"]
    assert s["metric"] == "accuracy" and s["epochs"] == 1 and s["seeds"] == [0]
    assert list(s["ablations"]) == list(ft.ABLATIONS)
    for a in s["ablations"].values():
        assert a["seeds"] == [0] and a["gap"]["n"] == 1
    assert set(s["reference"]) == {"fp32", "fp16"}


def test_ablation_study_reuses_runs_with_the_same_schedule(monkeypatch):
    main = ft.run_domain("speech", seeds=[0], epochs=1, max_steps=2)
    fresh = ft.ablation_study(["speech"], seeds=[0], epochs={"speech": 1}, max_steps=2)
    trained = []
    real_train = __import__("q4core.train", fromlist=["train"]).train

    def counting_train(task="digits", recipe="fp32", ablation=None, **kw):   # called as q4core.runs calls it
        trained.append((recipe, ablation))
        return real_train(task, recipe, ablation=ablation, **kw)
    monkeypatch.setattr("q4core.train.train", counting_train)
    reused = ft.ablation_study(["speech"], seeds=[0], epochs={"speech": 1}, max_steps=2, done=main)
    assert reused == fresh                           # deterministic: reuse changes no number
    assert ("q4", None) not in trained and ("fp16", None) not in trained and ("fp32", None) not in trained
    assert len(trained) == len(ft.ABLATIONS) - 1     # only the changed recipes were trained
    trained.clear()
    ft.ablation_study(["speech"], seeds=[0], epochs={"speech": 1}, max_steps=3, done=main)   # other schedule
    assert ("q4", None) in trained and ("fp16", None) in trained


def test_tiny_run_returns_well_formed_curves_and_errors():
    runs = ft.run_domain("speech", seeds=[3], epochs=2, max_steps=3, precisions=("fp32", "q4"), recorder_every=1)
    assert [r["precision"] for r in runs] == ["fp32", "q4"]
    for r in runs:
        assert r["metric"] == "accuracy" and r["seed"] == 3 and r["stopped"] is None and r["steps"] == 3
        c = r["curves"]
        assert c["epoch"] == [1] and len(c["train_loss"]) == len(c["val"]) == 1   # max_steps ends epoch 1
        assert len(c["step_loss"]) == 3 and all(math.isfinite(v) for v in c["step_loss"])
        assert 0.0 <= r["test"] <= 100.0
    assert "errors" not in runs[0]
    errs = runs[1]["errors"]
    assert {e["role"] for e in errs} == {"weight", "activation", "gradient"}
    assert {e["step"] for e in errs} == {1, 2, 3}
    assert all(0.0 < e["rel_error"] < 1.0 for e in errs)
    assert sorted(ft.q4_layers("speech")) == sorted({e["layer"] for e in errs})   # model order vs name order


def test_layer_labels_are_readable_and_say_the_precision():
    labels = ft.layer_labels("vision")
    assert set(ft.q4_layers("vision")) < set(labels)
    for name, label in labels.items():
        assert "layers." not in label and label.endswith(("(4-bit)", "(fp16)"))
        assert label.endswith("(4-bit)") == (name in ft.q4_layers("vision"))
    assert ft.layer_labels("language", max_chars=20000)["layers.1.hidden"] == "LSTM 1 hidden (4-bit)"


def test_domain_seeds_extends_one_domain_and_keeps_the_first_seeds():
    six = ft.domain_seeds(0, 6)
    assert six == {d: [0, 1, 2, 3, 4, 5] for d in ft.DOMAINS}
    more = ft.domain_seeds(0, 6, {"language": 10})
    assert more["language"] == list(range(10)) and more["vision"] == six["vision"]
    assert more["language"][:6] == six["language"]          # the first six stay the same (cached) runs
    assert ft.domain_seeds(3, 2)["speech"] == [3, 4]


@pytest.mark.parametrize("counts, match", [({"audio": 3}, "unknown domain 'audio'"),
                                           ({"language": 0}, "seed_counts\\['language'\\]")])
def test_domain_seeds_rejects_bad_counts(counts, match):
    with pytest.raises(ValueError, match=match):
        ft.domain_seeds(0, 6, counts)


def test_results_table_with_unequal_seed_counts_per_domain():
    runs = [_run("vision", p, s, 98.0 - (0.5 + 0.1 * s * s if p == "q4" else 0.0)) for p in ("fp16", "q4")
            for s in range(3)]
    runs += [_run("language", p, s, 2.0 + (0.01 + 0.001 * s * s if p == "q4" else 0.0), metric="bpc")
             for p in ("fp16", "q4") for s in range(5)]
    table = ft.results_table(runs)
    assert table["vision"]["gap"]["n"] == 3 and table["language"]["gap"]["n"] == 5
    assert table["language"]["precisions"]["q4"]["seeds"] == [0, 1, 2, 3, 4]
    assert table["language"]["verdict"] in ("met", "missed", "inconclusive") and table["vision"]["verdict"]
    assert "language" in ft.format_table(table) and "vision" in ft.format_table(table)
