"""The ONNX Runtime peers of ``bench gemm``: MatMulInteger equals our INT4 product exactly on the same codes,
MatMulNBits gets our INT4 weights in its packed layout, and without onnxruntime the benchmark says it skipped
the peer and how to install it.  The exactness tests skip when onnxruntime is not installed."""
import re
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from q4core import gemm
from q4core.bench import cli, peers
from q4core.bench import gemm as bench_gemm


def _codes(rng, shape):
    return rng.integers(-8, 8, shape).astype(np.int8)


@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_integer_equals_ours_on_int4_codes(threads):
    pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(3)
    a, b = _codes(rng, (67, 131)), _codes(rng, (131, 45))
    equal, peer, ours = peers.check_matmul_integer(a, b, threads=threads)
    assert equal and peer.dtype == np.int32
    assert np.array_equal(ours, a.astype(np.int64) @ b.astype(np.int64))


@pytest.mark.parametrize("a_value, b_value", [(-8, -8), (-8, 7), (7, 7), (0, -8)])
def test_matmul_integer_corner_codes(a_value, b_value):
    """Extreme codes: every product +64 (-8 x -8), -56, +49, or zero, summed over K = 1000."""
    pytest.importorskip("onnxruntime")
    a = np.full((5, 1000), a_value, np.int8)
    b = np.full((1000, 3), b_value, np.int8)
    equal, peer, _ = peers.check_matmul_integer(a, b)
    assert equal and np.all(peer == 1000 * a_value * b_value)


@settings(max_examples=20, deadline=None)
@given(m=st.integers(1, 40), k=st.integers(1, 70), n=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_matmul_integer_equals_ours_any_shape(m, k, n, seed):
    pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(seed)
    assert peers.check_matmul_integer(_codes(rng, (m, k)), _codes(rng, (k, n)))[0]


def test_int4_to_uint8_maps_codes_and_refuses_others():
    assert peers.int4_to_uint8(np.array([-8, -1, 0, 7], np.int8)).tolist() == [0, 7, 8, 15]
    with pytest.raises(ValueError, match="a_codes must be integer INT4 codes in -8..7, got dtype int8, range -9..0"):
        peers.int4_to_uint8(np.array([-9, 0], np.int8))
    with pytest.raises(ValueError, match="a_codes.*float32"):
        peers.int4_to_uint8(np.zeros(3, np.float32))


def test_matmul_nbits_packs_our_int4_weights():
    """With float32 accumulation (accuracy_level 0) the integer sums are exact in float32 here, so the 4-bit
    weight GEMM must give our product: the block packing (zero point 8, low nibble first) is right."""
    pytest.importorskip("onnxruntime")
    if not peers.has_matmul_nbits():
        pytest.skip("this onnxruntime has no MatMulNBits")
    rng = np.random.default_rng(5)
    a, b = _codes(rng, (9, 96)), _codes(rng, (96, 13))
    y = peers.matmul_nbits(b, accuracy_level=0)(a.astype(np.float32))
    assert np.array_equal(y, (a.astype(np.int64) @ b.astype(np.int64)).astype(np.float32))
    with pytest.raises(ValueError, match="multiple of 32"):
        peers.matmul_nbits(_codes(rng, (40, 3)))


def test_bench_gemm_times_the_peers_next_to_ours(capsys):
    pytest.importorskip("onnxruntime")
    result = bench_gemm.measure_gemm([32], threads=[1], repeat=1, kernels=["avx2"] if "avx2" in
                                     gemm.available_kernels() else ["portable"], fakequant=False, peers=True)
    assert result["peer"]["available"]
    recs = {r["op"]: r for r in result["records"]}
    assert recs["ort_matmulint"]["exact"] is True and recs["ort_matmulint"]["kernel"] == "mlas"
    if peers.has_matmul_nbits():
        assert "exact" in recs["ort_matmulnbits"]
    assert bench_gemm.summarize_gemm(result)["best"]["int4xint4"]["kernel"] != "mlas"


def test_without_onnxruntime_the_peer_is_skipped_with_a_hint(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)      # import fails as if not installed
    monkeypatch.setitem(sys.modules, "onnx", None)             # (with or without onnx installed: same result)
    status = peers.peer_status()
    assert not status["available"] and re.search(r"\(onnx(runtime)? is not installed\)", status["message"])
    assert 'pip install "q4core[bench]"' in status["message"]
    assert cli.main(["gemm", "--sizes", "8", "--threads", "1", "--repeat", "1", "--kernels", "portable",
                     "--no-fakequant", "--no-ceilings"]) == 0
    out = capsys.readouterr().out
    assert "peer: ONNX Runtime peer skipped (onnx" in out and "is not installed)" in out and "ort_" not in out


def test_report_shows_peer_ratio_and_ceiling_fraction():
    """The table's 'x ORT' and 'of ceiling' columns, from a hand-made result (not a measurement)."""
    from q4core.bench import report
    recs = [{"size": 64, "threads": 1, "op": "fp32", "kernel": "numpy", "seconds": 4.0, "gops": 1.0,
             "ratio_vs_fp32": 1.0, "ceiling_probe": "fma zmm", "ceiling_gops": 4.0, "fraction_of_ceiling": 0.25},
            {"size": 64, "threads": 1, "op": "int4xint4", "kernel": "vnni", "seconds": 1.0, "gops": 4.0,
             "ratio_vs_fp32": 4.0, "ceiling_probe": "avx512 vpdpbusd zmm", "ceiling_gops": 5.0,
             "fraction_of_ceiling": 0.8},
            {"size": 64, "threads": 1, "op": "ort_matmulint", "kernel": "mlas", "seconds": 2.5, "gops": 1.6,
             "ratio_vs_fp32": 1.6, "exact": True}]
    result = {"records": recs, "kernel_info": {"cpu": {"avx2": True}, "chosen_kernel": "vnni", "openmp": True},
              "kernels": ["vnni"], "machine": "x86_64", "cpu_model": "Test CPU", "numpy": "2", "repeat": 1,
              "peer": {"message": "onnxruntime 9 (MLAS)"},
              "ceilings": [{"probe": "avx512 vpdpbusd zmm", "threads": 1, "gops": 5.0}]}
    lines = report.gemm_lines(result)
    assert lines[0].startswith("q4core GEMM benchmark - Test CPU")
    row = next(line for line in lines if line.lstrip().startswith("int4xint4"))
    assert row.split()[-2:] == ["2.50", "0.80"]                       # x ORT = 2.5 / 1.0; of ceiling 0.8
    assert next(line for line in lines if "ort_matmulint" in line).endswith("exact")
    text = "\n".join(lines)
    assert "peer: onnxruntime 9 (MLAS)" in text and "avx512 vpdpbusd zmm      1 thread" in text
    del result["ceilings"]
    result["ceiling_note"] = "no compiler"
    assert "ceilings: no compiler" in "\n".join(report.gemm_lines(result))


def test_limit_verdicts_against_ceiling_and_peer():
    """Issue 12's two INT4 targets from hand-made records (not measurements)."""
    from q4core.bench import report

    def rec(op, kernel, seconds, **extra):
        return {"size": 2048, "threads": 1, "op": op, "kernel": kernel, "seconds": seconds, "gops": 1 / seconds,
                "ratio_vs_fp32": 1.0, **extra}
    recs = [rec("fp32", "numpy", 8.0), rec("int4xint4", "vnni", 1.0, fraction_of_ceiling=0.85),
            rec("int4xint4", "avx2", 2.0, fraction_of_ceiling=0.5), rec("int4xint4", "portable", 4.0),
            rec("fp4xint4", "vnni", 1.0, fraction_of_ceiling=0.9), rec("ort_matmulint", "mlas", 1.6)]
    rows = {v["kernel"]: v for v in bench_gemm.limit_verdicts(recs)}
    assert set(rows) == {"vnni", "avx2", "portable"}                     # INT4 x INT4 of ours only
    assert rows["vnni"]["ceiling_met"] is True and rows["vnni"]["vs_ort"] == pytest.approx(1.6)
    assert rows["vnni"]["ort_met"] is True
    assert rows["avx2"]["ceiling_met"] is False and rows["avx2"]["ort_met"] is False     # 0.8x ORT
    assert rows["portable"]["fraction_of_ceiling"] is None and rows["portable"]["ceiling_met"] is None
    no_peer = [r for r in recs if r["op"] != "ort_matmulint"]
    assert all(v["vs_ort"] is None for v in bench_gemm.limit_verdicts(no_peer))
    assert bench_gemm.limit_verdicts(recs, threads=2) == []
    result = {"records": recs, "kernel_info": {"cpu": {}, "chosen_kernel": "vnni", "openmp": True},
              "kernels": ["vnni", "avx2", "portable"], "machine": "x86_64", "numpy": "2", "repeat": 1}
    text = "\n".join(report.gemm_lines(result))
    assert "  vnni      of ceiling 0.85 met      x ORT 1.60x met" in text
    assert "  avx2      of ceiling 0.50 SHORT    x ORT 0.80x SHORT" in text
    assert "  portable  of ceiling not measured  x ORT 0.40x SHORT" in text


def test_issue12_verdicts_from_hand_made_records():
    """Issue 12's fp32-ratio, backward-over-forward and thread-scaling targets (hand-made records, not
    measurements), and the ceilings that say when a goal is beyond the CPU."""
    from q4core.bench import report

    def rec(op, kernel, seconds, threads=1, **extra):
        return {"size": 2048, "threads": threads, "op": op, "kernel": kernel, "seconds": seconds,
                "gops": 1 / seconds, "ratio_vs_fp32": 8.0 / seconds if op != "fp32" else 1.0, **extra}
    recs = [rec("fp32", "numpy", 8.0), rec("int4xint4", "vnni", 2.0, ceiling_gops=1 / 1.8),
            rec("fp4xint4", "vnni", 4.0), rec("int4xfp4", "vnni", 3.0),
            rec("fp32", "numpy", 4.0, threads=2), rec("int4xint4", "vnni", 1.1, threads=2),
            rec("int4xint4", "avx2", 3.0),
            rec("ort_matmulint", "mlas", 2.0, ceiling_gops=1.0)]
    rows = {(v["kernel"], v["target"]): v for v in bench_gemm.issue12_verdicts(recs)}
    assert set(rows) == {("vnni", "x fp32"), ("vnni", "fp4xint4 / int4"), ("vnni", "int4xfp4 / int4"),
                         ("vnni", "2 / 1 threads")}                    # avx2 has no goal, no backward, one thread
    assert rows[("vnni", "x fp32")]["value"] == pytest.approx(4.0) and rows[("vnni", "x fp32")]["met"] is False
    assert rows[("vnni", "x fp32")]["attainable"] == pytest.approx(8.0 / 1.8)          # ceiling / fp32
    fp4, back = rows[("vnni", "fp4xint4 / int4")], rows[("vnni", "int4xfp4 / int4")]
    scaling = rows[("vnni", "2 / 1 threads")]
    assert fp4["value"] == pytest.approx(0.5) and not fp4["met"]
    assert back["value"] == pytest.approx(2 / 3) and back["met"]
    assert scaling["value"] == pytest.approx(2 / 1.1) and scaling["met"]
    limits = {v["kernel"]: v for v in bench_gemm.limit_verdicts(recs)}
    assert limits["vnni"]["ort_attainable"] == pytest.approx((1 / 1.8) / 0.5)          # ceiling / ORT's GOP/s
    assert limits["avx2"]["ort_attainable"] is None                                    # no ceiling measured
    result = {"records": recs, "kernel_info": {"cpu": {}, "chosen_kernel": "vnni", "openmp": True},
              "kernels": ["vnni", "avx2"], "repeat": 1, "numpy": "x", "machine": "m"}
    text = "\n".join(report.gemm_lines(result))
    assert "vnni      x fp32           >=  5.0:  4.00 SHORT   (this CPU's vnni ceiling allows at most 4.44x: " \
           "beyond reach here)" in text
    assert "(ceiling / ORT 1.11x: beyond reach here)" in text
