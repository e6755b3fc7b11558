"""``python -m q4core.bench layer``: the command runs end to end on a tiny layer and writes its JSON, bad options
are argparse errors naming the option, a layer off the integer path is refused, and the report gives the right
verdicts on hand-made records.  No timing assertions."""
import json

import numpy as np
import pytest

from q4core import gemm
from q4core.bench import cli, report
from q4core.bench import layer as bench_layer
from q4core.recipe import get_recipe

PRODUCTS = ("forward", "grad_dx", "grad_dw")
RECORD_KEYS = {"size", "kernel", "q4_forward_us", "q4_backward_us", "fp32_forward_us", "fp32_backward_us",
               "gemm_us", "public_gemm_us", "forward_beyond_gemm_us", "backward_beyond_gemms_us",
               "forward_q4_over_fp32", "backward_q4_over_fp32", "loops"}


def test_cli_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "layer.json"
    assert cli.main(["layer", "--sizes", "16", "--repeat", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "n = 16" in printed and "beyond GEMM" in printed
    assert "not measured (size 64 not among the sizes)" in printed
    result = json.loads(out.read_text())
    assert {"records", "cpu_model", "numpy", "repeat", "threads", "seed", "target_us", "target_size"} <= set(result)
    assert result["repeat"] == 2 and result["threads"] == 1 and result["target_us"] == 30.0
    [record] = result["records"]
    assert set(record) == RECORD_KEYS and record["size"] == 16
    assert set(record["gemm_us"]) == set(record["public_gemm_us"]) == set(PRODUCTS)
    assert record["forward_beyond_gemm_us"] == pytest.approx(record["q4_forward_us"] - record["gemm_us"]["forward"])
    assert record["backward_beyond_gemms_us"] == pytest.approx(
        record["q4_backward_us"] - record["gemm_us"]["grad_dx"] - record["gemm_us"]["grad_dw"])
    assert all(v > 0 for v in record["gemm_us"].values()) and record["q4_forward_us"] > 0


@pytest.fixture
def no_measuring(monkeypatch):
    def reached(*args, **kwargs):
        raise AssertionError("measured although the options were bad")
    monkeypatch.setattr(bench_layer, "measure_layer", reached)


@pytest.mark.parametrize("argv, option", [(["--sizes", "0"], "--sizes"), (["--sizes", "16", "x"], "--sizes"),
                                          (["--sizes", "5000"], "--sizes"), (["--repeat", "0"], "--repeat"),
                                          (["--repeat", "2.5"], "--repeat"), (["--threads", "0"], "--threads"),
                                          (["--seed=-1"], "--seed"), (["--seed", "abc"], "--seed")])
def test_bad_options_are_argparse_errors(no_measuring, capsys, argv, option):
    with pytest.raises(SystemExit) as exc:
        cli.main(["layer", *argv])
    assert exc.value.code == 2
    assert f"argument {option}:" in capsys.readouterr().err


def test_json_in_a_missing_folder(no_measuring, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["layer", "--json", str(tmp_path / "missing_dir" / "x.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --json:" in err and "missing_dir does not exist" in err


@pytest.mark.parametrize("kwargs, name", [({"sizes": [0]}, "sizes"), ({"sizes": []}, "sizes"),
                                          ({"repeat": 0}, "repeat"), ({"threads": -1}, "threads"),
                                          ({"seed": -1}, "seed"), ({"sample_seconds": 0.0}, "sample_seconds")])
def test_measure_layer_checks_its_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        bench_layer.measure_layer(**kwargs)


def _inputs(n=16):
    rng = np.random.default_rng(0)
    return np.maximum(rng.standard_normal((n, n)), 0).astype(np.float32), \
        (rng.standard_normal((n, n)) * 1e-3).astype(np.float32)


@pytest.mark.parametrize("recipe", [get_recipe("q4"),                          # one layer: first and last, fp16
                                    get_recipe("q4", simulate=True, first_last="same"),
                                    get_recipe("fp32")])
def test_a_layer_off_the_integer_path_is_refused(recipe):
    layer = bench_layer._layer(16, recipe, 0)
    with pytest.raises(RuntimeError, match="integer"):
        bench_layer._integer_operands(layer, *_inputs())


def test_the_q4_layer_hands_the_kernels_its_operands():
    originals = {entry: getattr(gemm, entry) for entry, _ in bench_layer.ENGINE_GEMMS.values()}
    layer = bench_layer._layer(16, get_recipe("q4", first_last="same"), 0)
    operands = bench_layer._integer_operands(layer, *_inputs())
    assert list(operands) == list(PRODUCTS)
    assert {entry: getattr(gemm, entry) for entry in originals} == originals     # wrappers removed
    (xa, w, s_fwd), (gx, wt, s_dx), (xt, gw, s_dw) = (operands[p] for p in PRODUCTS)
    # the engine has each kernel rescale in its store: a (factor, exact) pair per product
    assert all(isinstance(s, tuple) and len(s) == 2 and s[0] > 0 for s in (s_fwd, s_dx, s_dw))
    assert xa.dtype == np.uint8 and w.dtype == np.int8        # PACT levels of a ReLU output, signed weight
    np.testing.assert_array_equal(wt, w.T)
    np.testing.assert_array_equal(xt, xa.T)
    assert gx.dtype == gw.dtype == np.uint8 and gx.shape == gw.shape == (16, 16)


def _record(size, forward_beyond):
    gemm_us = {"forward": 4.0, "grad_dx": 5.0, "grad_dw": 6.0}
    return {"size": size, "kernel": "vnni", "q4_forward_us": 4.0 + forward_beyond, "q4_backward_us": 70.0,
            "fp32_forward_us": 8.0, "fp32_backward_us": 14.0, "gemm_us": gemm_us,
            "public_gemm_us": {k: v + 1.0 for k, v in gemm_us.items()},
            "forward_beyond_gemm_us": forward_beyond, "backward_beyond_gemms_us": 59.0,
            "forward_q4_over_fp32": (4.0 + forward_beyond) / 8.0, "backward_q4_over_fp32": 5.0, "loops": {}}


def _result(*records):
    return {"records": list(records), "cpu_model": "Test CPU 9000", "numpy": "2.x", "repeat": 3, "threads": 1,
            "seed": 0, "sample_seconds": 0.01, "target_us": 30.0, "target_size": 64}


@pytest.mark.parametrize("beyond, verdict", [(12.5, "12.5 us met"), (30.0, "30.0 us met"), (45.25, "45.2 us short"),
                                             (30.04, "30.0 us short")])
def test_report_verdicts(beyond, verdict):
    lines = report.layer_lines(_result(_record(64, beyond), _record(256, 1.0)))
    assert "Test CPU 9000" in lines[0]
    assert lines[-1].endswith(verdict) and "64x64x64" in lines[-1] and "<= 30 us" in lines[-1]
    text = "\n".join(lines)
    assert "n = 64 (kernel vnni)" in text and "n = 256" in text
    forward = next(line for line in text.splitlines() if line.strip().startswith("forward"))
    assert forward.split()[1:] == [f"{4.0 + beyond:.1f}", "8.0", f"{(4.0 + beyond) / 8:.2f}", "4.0", "5.0",
                                   f"{beyond:.1f}"]
    backward = next(line for line in text.splitlines() if line.strip().startswith("backward "))
    assert backward.split()[1:] == ["70.0", "14.0", "5.00", "11.0", "13.0", "59.0"]


def test_report_without_the_target_size():
    lines = report.layer_lines(_result(_record(128, 99.0)))
    assert lines[-1].endswith("not measured (size 64 not among the sizes)")
    assert bench_layer.overhead_verdict(_result(_record(128, 99.0))) is None
    assert bench_layer.overhead_verdict(_result(_record(64, 31.0)))["met"] is False
