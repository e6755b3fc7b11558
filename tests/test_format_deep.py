"""q4core.experiments.format_deep: the de-confounded gradient-format study on notebook 04's ResNet."""
import json

import pytest

from q4core import runs
from q4core.experiments import format_deep as fd
from q4core.experiments import gradients

CELLS = [("radix2", "nearest"), ("radix4", "nearest"), ("radix4", "stochastic")]


@pytest.fixture
def run_cache(tmp_path, monkeypatch):
    """A fresh run cache for the test (conftest turns caching off), no committed results."""
    monkeypatch.setenv("Q4CORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("Q4CORE_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("Q4CORE_NO_CACHE", "0")
    return tmp_path / "cache"


def test_study_structure_one_map_and_cached(run_cache, monkeypatch):
    calls = []
    real_map = runs.map

    def counting_map(configs, *a, **k):
        configs = list(configs)
        calls.append(configs)
        return real_map(configs, *a, **k)
    monkeypatch.setattr(runs, "map", counting_map)
    study = fd.deep_format_study([0, 1], epochs=1, max_steps=2, record_every=1, cells=CELLS)
    assert len(calls) == 1 and len(calls[0]) == len(CELLS) * 2 + 2       # every run in one map, fp32 per seed
    assert {c.train_kwargs["model"] for c in calls[0]} == {"resnet"}
    assert [c.recorder is not None for c in calls[0]] == [True] * 6 + [False] * 2
    json.dumps(study, allow_nan=False)                                     # JSON values, no NaN
    assert study["seeds"] == [0, 1] and study["max_steps"] == 2 and study["record_every"] == 1
    assert len(study["fp32"]["accuracy"]) == 2
    assert [(c["format"], c["rounding"]) for c in study["cells"]] == CELLS
    for c in study["cells"]:
        assert len(c["accuracy"]) == len(c["stopped"]) == len(c["fidelity"]) == 2
        assert all(a is None or 0.0 <= a <= 100.0 for a in c["accuracy"])
        for per_seed in c["fidelity"]:
            assert set(per_seed) == set(gradients.FIDELITY_KEYS)
            assert 0.0 < per_seed["dx_cos"] < 1.0 and 0.0 < per_seed["dw_cos"] < 1.0
        # the 4-bit GEMMs of the ResNet, convolutions included
        assert len(c["layers"]) >= 5
        assert all(set(v) == set(gradients.FIDELITY_KEYS) for v in c["layers"].values())
    # stochastic rounding is not nearest rounding: the cells measure different products
    assert study["cells"][1]["fidelity"] != study["cells"][2]["fidelity"]

    def no_training(self, jobs):
        raise AssertionError(f"trained again: {[c for _, c, _ in jobs]}")
    monkeypatch.setattr(runs.Serial, "run", no_training)
    assert fd.deep_format_study([0, 1], epochs=1, max_steps=2, record_every=1, cells=CELLS) == study


def _cell(fmt, rounding, acc, dx, dw=0.9):
    return {"format": fmt, "rounding": rounding, "accuracy": acc, "stopped": [None] * len(acc),
            "fidelity": [{"dx_cos": x, "dx_norm_ratio": 1.0, "dw_cos": dw, "dw_norm_ratio": 1.0} for x in dx],
            "layers": {}}


def _study(cells):
    return {"seeds": [0, 1, 2], "cells": cells, "fp32": {"accuracy": [99.0] * 3, "stopped": [None] * 3}}


def test_verdict_claims_only_what_every_rounding_mode_resolves():
    agree = _study([_cell("radix2", "nearest", [90.0, 91.0, 92.5], [0.95, 0.96, 0.97]),
                    _cell("radix4", "nearest", [80.0, 81.5, 82.0], [0.98, 0.99, 0.995]),
                    _cell("radix2", "stochastic", [90.0, 91.0, 92.0], [0.95, 0.96, 0.97]),
                    _cell("radix4", "stochastic", [85.0, 85.5, 87.0], [0.98, 0.99, 0.995])])
    acc = fd.deep_radix_verdicts(agree, "radix2", "radix4")
    assert set(acc["by_rounding"]) == {"nearest", "stochastic"}
    assert acc["by_rounding"]["nearest"]["mean"] == pytest.approx(10.0)
    assert acc["conclusion"] == "radix2 better" and acc["key"] == "accuracy"
    assert fd.deep_radix_verdicts(agree, "radix2", "radix4", key="dx_cos")["conclusion"] == "radix4 better"
    # equal dw cosine on every seed: no spread, no claim
    assert fd.deep_radix_verdicts(agree, "radix2", "radix4", key="dw_cos")["conclusion"] == "not resolved"
    # one rounding mode turns the accuracy verdict round: no claim across rounding modes
    disagree = _study(agree["cells"][:2] + [_cell("radix2", "stochastic", [80.0, 81.0, 82.5], [0.95] * 3),
                                            _cell("radix4", "stochastic", [90.0, 91.5, 92.0], [0.95] * 3)])
    v = fd.deep_radix_verdicts(disagree, "radix2", "radix4")
    assert v["by_rounding"]["nearest"]["verdict"] == "above" and v["by_rounding"]["stochastic"]["verdict"] == "below"
    assert v["conclusion"] == "not resolved"
    # a diverged run is dropped pairwise
    diverged = _study([_cell("radix2", "nearest", [90.0, None, 92.0, 93.5], [0.9] * 4),
                       _cell("radix4", "nearest", [80.0, 81.0, 82.5, 82.0], [0.9] * 4)])
    assert fd.deep_radix_verdicts(diverged)["by_rounding"]["nearest"]["n"] == 3


def test_the_mlp_verdicts_are_the_shared_logic():
    # radix_verdicts (MLP study: accuracy as a fraction) gives what the shared logic gives in points
    mlp = {"cells": [{"format": "radix2", "rounding": "log", "accuracy": [0.9, 0.91, 0.925]},
                     {"format": "radix4", "rounding": "log", "accuracy": [0.8, 0.815, 0.82]}]}
    v = gradients.radix_verdicts(mlp)
    assert v["conclusion"] == "radix2 better" and v["by_rounding"]["log"]["mean"] == pytest.approx(10.0)


@pytest.mark.parametrize("kwargs, name", [
    ({"seeds": []}, "seeds"), ({"seeds": [0, 0]}, "seeds"), ({"seeds": [-1]}, "seeds"),
    ({"epochs": 0}, "epochs"), ({"record_every": 0}, "record_every"), ({"max_steps": 0}, "max_steps"),
    ({"cells": []}, "cells"), ({"cells": [("radix2", "sideways")]}, "cells"),
    ({"cells": [("int4_sym", "log")]}, "cells"),
    ({"cells": "radix2"}, "cells"), ({"cells": [("radix2", "nearest")] * 2}, "cells"),
])
def test_bad_arguments_name_the_argument(kwargs, name, monkeypatch):
    monkeypatch.setattr(runs, "map", lambda *a, **k: pytest.fail("trained with bad arguments"))
    args = {"seeds": [0], **kwargs}
    with pytest.raises((ValueError, TypeError), match=name):
        fd.deep_format_study(**args)


def test_bad_verdict_arguments_name_the_argument():
    study = _study([_cell("radix2", "nearest", [90.0] * 3, [0.9] * 3), _cell("radix4", "nearest", [80.0] * 3,
                                                                              [0.9] * 3)])
    with pytest.raises(ValueError, match="key"):
        fd.deep_radix_verdicts(study, key="loss")
    with pytest.raises(ValueError, match="b must"):
        fd.deep_radix_verdicts(study, "radix2", "radix8")
    with pytest.raises(ValueError, match="study"):
        fd.deep_radix_verdicts({"radix2": []})
