"""``python -m q4core.bench`` argument checks: bad options fail before anything is measured, with an argparse
error naming the option; ``--json`` is written atomically.  Fast: the measurement functions are replaced by
ones that fail the test if they are reached (or by a stand-in result where the run should complete)."""
import json

import pytest

from q4core.bench import cli
from q4core.bench import gemm as bench_gemm
from q4core.bench import quantize as bench_quantize


@pytest.fixture
def no_measuring(monkeypatch):
    def reached(*args, **kwargs):
        raise AssertionError("measured although the options were bad")
    monkeypatch.setattr(bench_quantize, "measure_quantize", reached)
    monkeypatch.setattr(bench_gemm, "measure_gemm", reached)


def _usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("value, message", [("-1", "must be between 1 and 28, got -1"),
                                            ("0", "must be between 1 and 28, got 0"),
                                            ("29", "must be between 1 and 28, got 29"),
                                            ("60", "must be between 1 and 28, got 60"),
                                            ("2.5", "expected an int, got '2.5'")])
def test_quantize_log2n_out_of_range(no_measuring, capsys, value, message):
    err = _usage_error(["quantize", "--log2n", value], capsys)
    assert "argument --log2n:" in err and message in err


@pytest.mark.parametrize("value", ["0", "-0.5", "nan", "inf", "-inf", "abc"])
def test_quantize_scale_not_positive_finite(no_measuring, capsys, value):
    err = _usage_error(["quantize", f"--scale={value}"], capsys)   # "=": "-inf" is not an option
    assert "argument --scale:" in err and value in err


def test_measure_quantize_checks_its_arguments():
    for bad in (0, 29, 60):
        with pytest.raises(ValueError, match="log2n"):
            bench_quantize.measure_quantize(log2n=bad)
    for bad in (0.0, -1.0, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="scale"):
            bench_quantize.measure_quantize(log2n=4, scale=bad)


def test_gemm_json_in_a_missing_folder(no_measuring, tmp_path, capsys):
    err = _usage_error(["gemm", "--json", str(tmp_path / "missing_dir" / "x.json")], capsys)
    assert "argument --json:" in err and "missing_dir does not exist" in err


def test_gemm_json_that_is_a_folder(no_measuring, tmp_path, capsys):
    err = _usage_error(["gemm", "--json", str(tmp_path)], capsys)
    assert "argument --json:" in err and "is a folder" in err


def _stand_in_result():
    """A hand-made result of the shape measure_gemm returns (not a measurement)."""
    rec = {"size": 8, "threads": 1, "op": "fp32", "kernel": "numpy", "seconds": 1e-3, "gops": 1e-3,
           "ratio_vs_fp32": 1.0}
    return {"kernel_info": {"cpu": {"avx2": True}, "chosen_kernel": "avx2", "openmp": True}, "kernels": ["avx2"],
            "machine": "x86_64", "numpy": "2", "repeat": 1, "records": [rec]}


def test_gemm_json_written_atomically(monkeypatch, tmp_path, capsys):
    from q4core import _io
    monkeypatch.setattr(bench_gemm, "measure_gemm", lambda *a, **k: _stand_in_result())
    calls = []
    real = _io.write_atomic
    monkeypatch.setattr("q4core.bench.cli.write_atomic", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    out = tmp_path / "x.json"
    out.write_text("old")
    assert cli.main(["gemm", "--sizes", "8", "--threads", "1", "--json", str(out)]) == 0
    assert calls == [str(out)]
    assert json.loads(out.read_text())["records"][0]["op"] == "fp32"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]      # no temporary left behind
    assert f"wrote {out}" in capsys.readouterr().out
