"""q4core.bench (memory accounting against real arrays, GEMM measurement records, training-step records, CPU
facts, text reports) and q4core.experiments.speed (notebook 05's figures)."""
import json
import math

import numpy as np
import pytest

from q4core import efficiency, formats, gemm, plotting, quant
from q4core.bench import cpu, memory, report, train
from q4core.bench import gemm as bench_gemm
from q4core.experiments import speed as figures


# --------------------------------------------------------------------------- memory
@pytest.mark.parametrize("shape", [(4, 1), (3, 7), (16, 16), (5, 255), (2, 3, 9)])
def test_memory_per_value_counts_the_real_packed_arrays(shape):
    kinds = [k for k in memory.STORAGE if k != "int4_gemm_operand" or len(shape) == 2]
    rows = {r["kind"]: r for r in memory.memory_per_value(shape, seed=1, kinds=kinds)}
    size = int(np.prod(shape))
    rows_of_bytes = int(np.prod(shape[:-1])) * math.ceil(shape[-1] / 2)   # one byte per two codes, per row
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    s = float(np.abs(x).max())
    expect = {
        "fp32": x.nbytes,
        "fp16": formats.FP16.encode(x).nbytes,
        "fp8_e4m3": formats.FP8_E4M3.encode(x, s / formats.FP8_E4M3.max).nbytes,
        "fp8_e5m2": formats.FP8_E5M2.encode(x, s / formats.FP8_E5M2.max).nbytes,
        "int4": quant.encode_packed(formats.INT4, x, s / 7).nbytes,
        "uint4": quant.encode_packed(formats.UINT4, np.abs(x), s / 15).nbytes,
        "fp4": formats.pack_nibbles(formats.RADIX4_FP4.encode(x, s)).nbytes,
    }
    assert expect["fp32"] == 4 * size and expect["fp16"] == 2 * size and expect["fp8_e4m3"] == size
    for kind in ("int4", "uint4", "fp4"):
        assert expect[kind] == rows_of_bytes
    for kind, nbytes in expect.items():
        r = rows[kind]
        assert r["nbytes"] == nbytes, kind
        assert r["values"] == size
        assert r["bytes_per_value"] == nbytes / size
        assert r["nominal_bytes"] == r["bits"] / 8
    if "int4_gemm_operand" in rows:
        k, n = shape
        kp, np_ = -(-k // 4) * 4, -(-n // 16) * 16    # K padded to 4, N to 16: int8 lanes + int64 column sums
        assert rows["int4_gemm_operand"]["nbytes"] == kp * np_ + 8 * np_


def test_memory_bits_come_from_the_formats():
    bits = {r["kind"]: r["bits"] for r in memory.memory_per_value((2, 4))}
    assert bits == {"fp32": 32, "fp16": 16, "fp8_e4m3": 8, "fp8_e5m2": 8, "int4": 4, "uint4": 4, "fp4": 4,
                    "int4_gemm_operand": 4}


def test_memory_recipes_sum_their_components():
    per_value = {r["kind"]: r["bytes_per_value"] for r in memory.memory_per_value((8, 10), seed=3)}
    for rows, recipes in ((memory.memory_per_parameter((8, 10), seed=3), memory.PARAMETER_RECIPES),
                          (memory.memory_per_activation((8, 10), seed=3), memory.ACTIVATION_RECIPES)):
        assert [r["recipe"] for r in rows] == list(recipes)
        for r in rows:
            assert r["bytes"] == pytest.approx(sum(per_value[k] for _, k in recipes[r["recipe"]]), rel=1e-15)
    # even rows: packing is exact, so the paper's recipe costs 4 + 0.5 + 2 bytes per parameter
    # and 0.5 + 2 * 0.5 per activation element (two FP4 copies of the gradient under TPR)
    param = {r["recipe"]: r for r in memory.memory_per_parameter((4, 6))}
    act = {r["recipe"]: r for r in memory.memory_per_activation((4, 6))}
    assert param["q4 (paper)"]["bytes"] == 6.5 and param["fp32"]["bytes"] == 8.0
    assert act["q4 (paper)"]["bytes"] == 1.5 and act["fp32"]["bytes"] == 8.0 and act["HFP8"]["bytes"] == 2.0


def test_memory_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        memory.memory_per_value((2, 2), kinds=["int3"])
    with pytest.raises(ValueError, match="shape"):
        memory.memory_per_value((2, 0))
    with pytest.raises(ValueError, match="2-D"):
        memory.memory_per_value((2, 2, 2), kinds=["int4_gemm_operand"])


# --------------------------------------------------------------------------- GEMM
def test_check_kernels_every_kernel_is_exact():
    rows = bench_gemm.check_kernels(m=5, k=70, n=17, seed=2)
    kernels = [k for k in gemm.available_kernels() if k != "reference"]
    assert {(r["op"], r["kernel"]) for r in rows} == {(op, k) for op in bench_gemm.GEMM_OPS for k in kernels}
    assert all(r["exact"] for r in rows)


def test_measure_gemm_records_are_well_formed():
    result = bench_gemm.measure_gemm([16, 32], threads=[1], repeat=1, seed=4)
    kernels = [k for k in gemm.available_kernels() if k != "reference"]
    recs = result["records"]
    assert result["sizes"] == [16, 32] and result["threads"] == [1] and result["kernels"] == kernels
    assert result["repeat"] == 1 and result["seed"] == 4 and result["kernel_info"] == gemm.kernel_info()
    ops = bench_gemm.GEMM_OPS + tuple(bench_gemm.BLOCKSCALED_OPS)
    expected = {(n, op, k) for n in (16, 32) for op in ops for k in kernels}
    expected |= {(n, op, "numpy") for n in (16, 32) for op in ("fp32", "fakequant_int4", "fakequant_fp4")}
    assert {(r["size"], r["op"], r["kernel"]) for r in recs} == expected
    assert len(recs) == len(expected)
    for r in recs:
        assert r["threads"] == 1 and r["seconds"] > 0 and math.isfinite(r["seconds"])
        assert r["gops"] == pytest.approx(2 * r["size"] ** 3 / r["seconds"] / 1e9)
        fp32 = next(f for f in recs if f["op"] == "fp32" and f["size"] == r["size"])
        assert r["ratio_vs_fp32"] == pytest.approx(fp32["seconds"] / r["seconds"])
    json.dumps(result)      # serialisable as it is
    lines = report.gemm_lines(result)
    assert lines[2].startswith("kernels timed: " + ", ".join(kernels))
    assert "\nM=N=K=16, threads=1  (numpy float32: " in lines[3] and "\nM=N=K=32, threads=1  (" in "\n".join(lines)
    assert not any("targets at 2048" in line for line in lines)      # 2048 not measured: no verdicts


def test_measure_gemm_options_and_errors():
    result = bench_gemm.measure_gemm(8, repeat=1, kernels=["portable"], fakequant=False, portable_max_size=8)
    assert {(r["op"], r["kernel"]) for r in result["records"]} == {("fp32", "numpy")} | {
        (op, "portable") for op in bench_gemm.GEMM_OPS + tuple(bench_gemm.BLOCKSCALED_OPS)}
    with pytest.raises(ValueError, match="kernels"):
        bench_gemm.measure_gemm([8], kernels=["reference"])
    with pytest.raises(ValueError, match="kernels"):
        bench_gemm.measure_gemm([8], kernels=["sse9"])
    with pytest.raises(ValueError, match="sizes"):
        bench_gemm.measure_gemm([0])
    with pytest.raises(ValueError, match="repeat"):
        bench_gemm.measure_gemm([8], repeat=0)
    with pytest.raises(ValueError, match="seed"):
        bench_gemm.measure_gemm([8], seed=-1)
    with pytest.raises(ValueError, match="kernels"):
        bench_gemm.check_kernels(kernels=["reference"])


def test_measure_gemm_refuses_a_kernel_that_disagrees(monkeypatch, capsys):
    from q4core.bench import cli
    real = gemm.int4_matmul

    def wrong(a, b, kernel=None, **kw):      # every fast path off by one; the reference stays right
        out = real(a, b, kernel=kernel, **kw)
        return out if kernel == "reference" else out + 1
    monkeypatch.setattr(gemm, "int4_matmul", wrong)
    with pytest.raises(RuntimeError, match="disagrees with the reference at n=8"):
        bench_gemm.measure_gemm([8], threads=[1], repeat=1, fakequant=False)
    assert cli.main(["gemm", "--sizes", "8", "--threads", "1", "--repeat", "1"]) == 1
    assert "disagrees with the reference" in capsys.readouterr().err


def test_cli_dispatch_and_argument_errors(capsys):
    from q4core.bench import cli
    assert cli.main([]) == 0 and "usage: python -m q4core.bench {quantize,gemm,train,layer}" in capsys.readouterr().out
    assert cli.main(["nope"]) == 2 and "unknown benchmark 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["gemm", "--sizes", "0"])
    assert exc.value.code == 2 and "sizes must hold positive ints" in capsys.readouterr().err
    assert cli.main(["gemm", "--sizes", "8", "--threads", "1", "--repeat", "1", "--kernels", "portable",
                     "--no-fakequant"]) == 0
    out = capsys.readouterr().out
    assert "kernels timed: portable;" in out and "int4xfp4         portable" in out and "fakequant" not in out


def _fake_records():
    """Hand-made records (not measurements) to test the arithmetic of the summary."""
    recs = []
    for n, fp32_s in ((64, 1.0), (128, 8.0)):
        recs.append({"size": n, "threads": 1, "op": "fp32", "kernel": "numpy", "seconds": fp32_s})
        for op, speedups in (("int4xint4", {"vnni": 4.0, "avx2": 2.0}), ("fp4xint4", {"vnni": 2.0, "avx2": 1.0}),
                             ("int4xfp4", {"vnni": 1.0, "avx2": 0.5})):
            for k, s in speedups.items():
                recs.append({"size": n, "threads": 1, "op": op, "kernel": k, "seconds": fp32_s / s})
        recs.append({"size": n, "threads": 1, "op": "fakequant_int4", "kernel": "numpy", "seconds": fp32_s * 1.25})
    for r in recs:
        r["gops"] = 2 * r["size"] ** 3 / r["seconds"] / 1e9
        fp32_s = next(f["seconds"] for f in recs if f["op"] == "fp32" and f["size"] == r["size"])
        r["ratio_vs_fp32"] = fp32_s / r["seconds"]
    return recs


def test_summarize_gemm_arithmetic():
    s = bench_gemm.summarize_gemm({"records": _fake_records()})
    assert s["size"] == 128 and s["threads"] == 1
    assert {op: v["kernel"] for op, v in s["best"].items()} == {op: "vnni" for op in bench_gemm.GEMM_OPS}
    assert s["best"]["int4xint4"]["ratio"] == pytest.approx(4.0)
    assert s["step_ratio"] == pytest.approx(3 / (1 / 4 + 1 / 2 + 1 / 1))
    assert s["fakequant_ratio"] == pytest.approx(0.8)
    assert bench_gemm.summarize_gemm(_fake_records(), size=64)["size"] == 64
    with pytest.raises(ValueError, match="size"):
        bench_gemm.summarize_gemm(_fake_records(), size=100)
    with pytest.raises(ValueError, match="threads"):
        bench_gemm.summarize_gemm(_fake_records(), threads=2)


def test_target_verdicts_and_their_lines():
    recs = [dict(r, size=2048) for r in _fake_records() if r["size"] == 128]
    verdicts = {(v["op"], v["kernel"]): v for v in bench_gemm.target_verdicts(recs)}
    assert set(verdicts) == {(op, k) for op, k, _ in bench_gemm.TARGETS}
    assert verdicts[("int4xint4", "vnni")] == {"op": "int4xint4", "kernel": "vnni", "goal": 2.0,
                                               "ratio": pytest.approx(4.0), "met": True}
    assert verdicts[("int4xint4", "avx2")]["met"] is True            # 2.0 >= 1.0
    assert verdicts[("int4xint4", "amx")]["ratio"] is None and verdicts[("int4xint4", "amx")]["met"] is None
    assert bench_gemm.target_verdicts(recs, threads=2) == []
    result = {"records": recs, "kernel_info": {"cpu": {"avx2": True, "amx_int8": False}, "chosen_kernel": "vnni",
                                               "openmp": True},
              "kernels": ["vnni", "avx2"], "machine": "x86_64", "numpy": "2", "repeat": 1}
    text = "\n".join(report.gemm_lines(result))
    assert "CPU features: avx2\n" in text and "amx_int8" not in text
    assert "int4xint4  vnni      >=  2.0x: 4.00x met" in text
    assert "int4xint4  amx       >= 10.0x: not measured (kernel not available here)" in text


# --------------------------------------------------------------------------- other measurements
def test_measure_quantize_and_its_table():
    from q4core.bench import quantize
    result = quantize.measure_quantize(log2n=10, repeat=1, numpy_repeat=1, quantize=True, seed=3)
    assert result["n"] == 1024 and result["scale"] == 0.37 and result["copy_s"] > 0
    labels = quantize.paths_of(result)
    assert labels == ["int4 encode+pack", "radix4_fp4 encode+pack", "int4 quantize (f32 -> f32)",
                      "radix4_fp4 quantize (f32 -> f32)"]
    threads = [1, 2] if result["openmp"]["openmp"] else [1]
    for label in labels:
        assert quantize.threads_of(result[label]) == threads
        assert all(v > 0 for v in result[label].values())
    json.dumps(result)
    lines = report.quantize_lines(result)
    assert lines[0].startswith("2^10 float32 values (0 MiB), scale 0.37")
    assert len(lines) == 2 + 1 + len(labels) * (1 + len(threads)) + 1
    assert lines[-1].startswith("targets (encode+pack): 'x numpy' >= 5 on 1 thread; 'copy/this' >= 0.33")
    with pytest.raises(ValueError, match="log2n"):
        quantize.measure_quantize(log2n=0)


def test_instruction_macs():
    rows = {r["instruction"]: r for r in cpu.instruction_macs({"avx512_vnni": True, "amx_int8": False})}
    assert rows["vpdpbusd zmm"]["macs"] == 4 * rows["vfmadd231ps zmm"]["macs"] == 64
    assert rows["tdpbssd"]["macs"] == 2 * rows["tdpbf16ps"]["macs"] == 16 * 16 * 64
    assert rows["vpdpbusd zmm"]["present"] is True and rows["tdpbssd"]["present"] is False
    assert rows["vfmadd231ph zmm"]["present"] is None       # not probed: unknown, not "absent"


def test_cpu_summary_is_consistent_with_kernel_info():
    s = cpu.cpu_summary()
    assert s["available_kernels"] == gemm.available_kernels()
    assert s["chosen_kernel"] in s["available_kernels"]
    assert set(s["features"]).isdisjoint(s["missing"])


def test_train_step_times_tiny(monkeypatch):
    built = []
    policy = train._policy

    def spy(name, **kw):      # every policy of the benchmark is built by train._policy
        built.append((name, kw))
        return policy(name, **kw)
    monkeypatch.setattr(train, "_policy", spy)
    result = train.train_step_times(repeat=2, batch=2, language_models=["char_lstm", "char_transformer"],
                                    lm_batch=2, seq_len=4, first_last="q4")
    # first_last="q4" (every layer 4-bit) is the recipe's first_last="same"
    assert built == [("fp32", {}), ("q4", {"threads": 1, "first_last": "same"}),
                     ("q4", {"simulate": True, "threads": 1, "first_last": "same"})]
    models = list(result["identical_losses"])
    assert len(models) == 3 and all(result["identical_losses"].values())   # q4 == simulated q4, bit for bit
    assert result["repeat"] == 2 and result["threads"] == 1 and result["first_last"] == "q4"
    assert {(r["model"], r["precision"]) for r in result["records"]} == {
        (m, p) for m in models for p in train.PRECISIONS}
    for r in result["records"]:
        assert len(r["samples"]) == 2 and r["seconds"] == pytest.approx(float(np.median(r["samples"])))
        assert r["seconds"] > 0
    summary = train.summarize_train(result)
    for m in models:
        t = summary[m]
        assert t["q4_over_fp32"] == pytest.approx(t["q4"] / t["fp32"])
        assert t["simulated_over_q4"] == pytest.approx(t["q4 simulated"] / t["q4"])
    lines = report.train_lines(result)
    assert [line.strip() for line in lines if not line.startswith("  ")] == models
    assert not any("differ" in line for line in lines)
    json.dumps(result)
    with pytest.raises(ValueError, match="repeat"):
        train.train_step_times(repeat=0)
    with pytest.raises(ValueError, match="language_models"):
        train.train_step_times(language_models=["gpt"])
    with pytest.raises(ValueError, match="first_last"):
        train.train_step_times(first_last="int8")


def test_train_lines_flag_differing_losses():
    result = {"records": [{"model": "m", "precision": p, "seconds": s}
                          for p, s in (("fp32", 0.01), ("q4", 0.012), ("q4 simulated", 0.048))],
              "identical_losses": {"m": False}}
    text = "\n".join(report.train_lines(result))
    assert "q4 and simulated q4 losses differ" in text
    assert "q4 / fp32           1.20x   target <= 1.5x : met" in text
    assert "simulated / q4      4.00x   target >= 3x   : met" in text
    assert "q4 / fp32           1.20x   issue 12: <= 1x (built-in model): short" in text


def test_train_lines_hold_gemm_heavy_workloads_to_issue_12s_stricter_target():
    def records(model, q4):
        return [{"model": model, "precision": p, "seconds": s}
                for p, s in (("fp32", 0.010), ("q4", q4), ("q4 simulated", 0.048))]
    heavy, small = "residual cnn 32x32 (batch 64)", "vision cnn 28x28 (batch 64)"
    assert train.is_heavy(heavy) and train.is_heavy("mlp 3x1024 (batch 256)") and not train.is_heavy(small)
    result = {"records": records(heavy, 0.007) + records(small, 0.007),
              "identical_losses": {heavy: True, small: True}}
    text = "\n".join(report.train_lines(result))
    assert "q4 / fp32           0.70x   issue 12: <= 0.6x (GEMM-heavy): short" in text
    assert "q4 / fp32           0.70x   issue 12: <= 1x (built-in model): met" in text


# --------------------------------------------------------------------------- figures
def _bytes(paths):
    return {k: p.read_bytes() for k, p in paths.items()}


def test_figures_are_byte_stable_given_the_same_numbers(tmp_path):
    recs = _fake_records()
    per_value = memory.memory_per_value((4, 6))
    makers = {
        "05_t_gemm": lambda: figures.plot_gemm_throughput({"records": recs}),
        "05_t_memory": lambda: figures.plot_memory(per_value, memory.memory_per_parameter((4, 6)),
                                                 memory.memory_per_activation((4, 6))),
        "05_t_eff": lambda: figures.plot_efficiency(efficiency.energy_estimate()),
        "05_t_train": lambda: figures.plot_train_steps([
            {"model": "cnn", "precision": p, "seconds": s} for p, s in (("fp32", 0.01), ("q4", 0.02))]),
    }
    for name, make in makers.items():
        runs = []
        for d in ("a", "b"):
            fig, data = make()
            runs.append(_bytes(plotting.save_figure(fig, name, tmp_path / d, data=data, caption="c")))
        assert runs[0] == runs[1], name
    data = json.loads((tmp_path / "a" / "05_t_gemm.json").read_text())["data"]
    vnni = next(s for s in data["series"] if s["op"] == "int4xint4" and s["kernel"] == "vnni")
    assert vnni["ratio_vs_fp32"] == [4.0, 4.0] and vnni["sizes"] == [64, 128]
    with pytest.raises(ValueError, match="threads"):
        figures.plot_gemm_throughput({"records": recs}, threads=2)
