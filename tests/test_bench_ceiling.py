"""The per-ISA ceiling probe of ``bench gemm``: which probe bounds which kernel, the probe builds and runs here,
a clear message without a C compiler, and every GEMM record's fraction of its ceiling."""
import math

import pytest

from q4core import gemm
from q4core.bench import ceiling, report
from q4core.bench import gemm as bench_gemm

AVX2_ONLY = {"avx2": True, "fma": True, "avx512f": False, "avx512_vnni": False, "avx_vnni": False,
             "amx_int8": False}
EVERYTHING = {flag: True for _, _, flags in ceiling.PROBES.values() for flag in flags}


def test_probes_follow_the_cpu_features():
    assert ceiling.available_probes(AVX2_ONLY) == ["avx2 vpmaddubsw+vpaddw", "fma ymm"]
    assert ceiling.available_probes(EVERYTHING) == list(ceiling.PROBES)
    assert ceiling.available_probes({"avx2": True}) == ["avx2 vpmaddubsw+vpaddw"]      # no FMA flag: no fma ymm
    assert ceiling.available_probes(dict(EVERYTHING, os_amx=False))[-3:] == ["avx-vnni vpdpbusd ymm", "fma ymm",
                                                                             "fma zmm"]


def test_which_probe_bounds_which_path():
    assert ceiling.probe_for("int4xint4", "amx", EVERYTHING) == "amx tdpbssd"
    assert ceiling.probe_for("fp4xint4", "vnni", EVERYTHING) == "avx512 vpdpbusd zmm"
    assert ceiling.probe_for("int4xfp4", "avxvnni", EVERYTHING) == "avx-vnni vpdpbusd ymm"
    assert ceiling.probe_for("int4xint4", "avx2", AVX2_ONLY) == "avx2 vpmaddubsw+vpaddw"
    assert ceiling.probe_for("fp32", "numpy", EVERYTHING) == "fma zmm"
    assert ceiling.probe_for("fp32", "numpy", AVX2_ONLY) == "fma ymm"
    assert ceiling.probe_for("ort_matmulint", "mlas", EVERYTHING) == "amx tdpbssd"
    assert ceiling.probe_for("ort_matmulint", "mlas", dict(EVERYTHING, amx_int8=False)) == "avx512 vpdpbusd zmm"
    assert ceiling.probe_for("ort_matmulint", "mlas", AVX2_ONLY) == "avx2 vpmaddubsw+vpaddw"
    assert ceiling.probe_for("int4xint4", "vnni", AVX2_ONLY) is None         # kernel the CPU cannot run
    assert ceiling.probe_for("int4xint4", "portable", EVERYTHING) is None
    assert ceiling.probe_for("fakequant_int4", "numpy", EVERYTHING) is None


def _built_or_skip():
    try:
        ceiling._library()
    except ceiling.CeilingUnavailable as exc:
        pytest.skip(str(exc))


def test_every_probe_of_this_cpu_runs():
    _built_or_skip()
    result = ceiling.measure_ceilings(threads=[1, 2], repeat=2, seconds=0.002)
    usable = ceiling.available_probes()
    assert [(r["probe"], r["threads"]) for r in result["records"]] == [(p, t) for p in usable for t in (1, 2)]
    for r in result["records"]:
        assert len(r["samples_gops"]) == 2 and r["gops"] == max(r["samples_gops"])
        assert math.isfinite(r["gops"]) and r["gops"] > 0
    assert result["skipped"] == [p for p in ceiling.PROBES if p not in usable]


def test_measure_ceilings_checks_its_arguments():
    with pytest.raises(ValueError, match="probes"):
        ceiling.measure_ceilings(probes=["sse9"])
    with pytest.raises(ValueError, match="seconds"):
        ceiling.measure_ceilings(seconds=0)
    with pytest.raises(ValueError, match="threads"):
        ceiling.measure_ceilings(threads=[0])
    missing = [p for p in ceiling.PROBES if p not in ceiling.available_probes()]
    if missing:
        with pytest.raises(ValueError, match="lacks"):
            ceiling.measure_ceilings(probes=missing[:1])


def test_without_a_compiler_the_benchmark_says_so(monkeypatch):
    monkeypatch.setattr(ceiling, "_lib", None)
    monkeypatch.setenv("CC", "no-such-compiler-q4core")
    monkeypatch.setattr(ceiling.shutil, "which", lambda name: None)
    with pytest.raises(ceiling.CeilingUnavailable, match="no C compiler found"):
        ceiling.measure_ceilings(threads=[1], repeat=1)
    result = bench_gemm.measure_gemm([8], threads=[1], repeat=1, kernels=["portable"], fakequant=False,
                                     ceilings=True)
    assert "no C compiler found" in result["ceiling_note"] and "ceilings" not in result
    assert all("fraction_of_ceiling" not in r for r in result["records"])


def test_gemm_records_carry_their_fraction_of_the_ceiling():
    _built_or_skip()
    kernels = [k for k in ("avx2", "vnni") if k in gemm.available_kernels()]
    if not kernels:
        pytest.skip("no SIMD kernel on this CPU")
    result = bench_gemm.measure_gemm([16], threads=[1], repeat=1, kernels=kernels, fakequant=False,
                                     ceilings=True)
    rate = {c["probe"]: c["gops"] for c in result["ceilings"]}
    for r in result["records"]:
        if r["kernel"] in kernels or r["op"] == "fp32":
            assert r["ceiling_probe"] == ceiling.probe_for(r["op"], r["kernel"])
            assert r["ceiling_gops"] == rate[r["ceiling_probe"]]
            assert r["fraction_of_ceiling"] == pytest.approx(r["gops"] / r["ceiling_gops"])


def test_not_requested_means_not_in_the_result():
    result = bench_gemm.measure_gemm([8], threads=[1], repeat=1, kernels=["portable"], fakequant=False)
    assert "peer" not in result and "ceilings" not in result and "ceiling_note" not in result
    text = "\n".join(report.gemm_lines(result))
    assert "peer:" not in text and "ceilings" not in text
