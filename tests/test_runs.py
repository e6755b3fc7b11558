"""q4core.runs: identity, cache (corrupt entries never trusted), order of results, executors agreeing bit for bit,
committed results, and the experiments' sweeps giving the numbers they gave before they went through the cache."""
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from q4core import runs
from q4core.experiments import common, full_training, stack
from q4core.train import train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def digits():
    return common.load_dataset("digits", seed=0)


@pytest.fixture
def cache(tmp_path):
    return runs.RunCache(tmp_path / "cache", tmp_path / "results")


def _small(ds, recipe="fp32", seed=0, steps=12, **kw):
    """A 16-unit MLP on digits for ``steps`` steps; ``kw``: further train() keywords or recipe fields."""
    config = common.mlp_run(ds, recipe, hidden=(16,), epochs=1, seed=seed)
    config.train_kwargs.update(max_steps=steps, **kw)
    config._identity = None
    return config


class Recording(runs.Serial):
    """A real serial executor that remembers which runs it trained and can finish them in reverse order."""

    def __init__(self, reverse=False):
        self.reverse, self.trained = reverse, []

    def run(self, jobs):
        jobs = list(jobs)[::-1] if self.reverse else list(jobs)
        self.trained += [index for index, _, _ in jobs]
        yield from super().run(jobs)


# ---------------------------------------------------------------------------------------------- identity
def test_identity_is_stable_and_sensitive(digits):
    base = _small(digits)
    assert base.key() == _small(digits).key()
    assert len(base.key()) == 64
    assert base.identity()["numerics"] == runs.numerics_version()
    changed = [_small(digits, seed=1), _small(digits, recipe="q4"), _small(digits, steps=13), _small(digits, lr=0.1)]
    keys = {c.key() for c in changed} | {base.key()}
    assert len(keys) == len(changed) + 1
    # one pixel of the training data changed -> another data checksum, another key
    altered = common.load_dataset("digits", seed=0)
    altered.X_train[0, 0, 0, 0] += np.float32(0.25)
    assert _small(altered).identity()["data"] != base.identity()["data"]
    assert _small(altered).key() != base.key()
    # kernel threads do not change numbers, so not the identity either; a recipe field does
    assert _small(digits, threads=1).key() == base.key()
    assert _small(digits, simulate=True).key() != base.key()
    # a built-in task: its data are checksummed as loaded, per seed
    t0 = runs.RunConfig(task="digits", recipe="q4", seed=0, max_steps=3, epochs=1)
    assert t0.key() == runs.RunConfig(task="digits", recipe="q4", seed=0, max_steps=3, epochs=1).key()
    assert t0.key() != runs.RunConfig(task="digits", recipe="q4", ablation="no-tpr", seed=0, max_steps=3,
                                      epochs=1).key()


def test_numerics_version_follows_numeric_sources_only(tmp_path):
    pkg = tmp_path / "q4core"
    shutil.copytree(ROOT / "q4core", pkg, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c"))
    shutil.copytree(ROOT / "q4core" / "src", pkg / "src", dirs_exist_ok=True)
    before = runs.numerics_version(pkg)
    assert before == runs.numerics_version(ROOT / "q4core")
    (pkg / "plotting.py").write_text((pkg / "plotting.py").read_text() + "\n# a comment\n")
    (tmp_path / "README.md").write_text("an edit")
    assert runs.numerics_version(pkg) == before
    impl = runs.implementation_version(pkg)
    assert impl == runs.implementation_version(ROOT / "q4core")
    for source in ("gemm.py", "nn/qgemm.py", "recipe/registry.py", "quant.py", "src/gemm_portable.h",
                   "src/quant_kernels.h", "_gemm.pyx", "_quant.pyx"):
        copy = tmp_path / f"copy-{source.replace('/', '-')}" / "q4core"
        shutil.copytree(pkg, copy)
        (copy / source).write_text((copy / source).read_text() + "\n/* x */\n" if source.endswith(".h")
                                   else (copy / source).read_text() + "\n# x\n")
        compiled = source.startswith("src/") or source.endswith(".pyx")
        # the Python engine defines the numbers; a compiled kernel is an implementation held bit for bit to it
        # by the tests, recorded as provenance, not part of a run's identity
        assert (runs.numerics_version(copy) == before) == compiled, source
        assert (runs.implementation_version(copy) != impl) == compiled, source


def test_every_compiled_source_is_an_implementation_source():
    """A new Cython module or C header is covered by the implementation version (and so by provenance)."""
    pkg = ROOT / "q4core"
    compiled = {p for p in pkg.glob("*.pyx")} | {p for p in (pkg / "src").iterdir() if p.suffix in (".h", ".c")}
    covered = {p for pattern in runs.IMPLEMENTATION_SOURCES for p in pkg.glob(pattern)}
    assert compiled and compiled <= covered, sorted(str(p) for p in compiled - covered)
    numerics = {p for pattern in runs.NUMERICS_SOURCES for p in pkg.glob(pattern)}
    assert not numerics & covered


def test_a_cached_run_cannot_take_a_callback(digits):
    with pytest.raises(ValueError, match="on_step"):
        runs.RunConfig(task="digits", on_step=print)
    with pytest.raises(ValueError, match="exactly one of task"):
        runs.RunConfig(task="digits", data=digits)
    with pytest.raises(ValueError, match="task must be one of"):
        runs.RunConfig(task="imagenet")


# ---------------------------------------------------------------------------------------------- cache
def test_second_execution_runs_nothing_and_one_changed_seed_runs_one(digits, cache):
    configs = [_small(digits, "fp32", s) for s in (0, 1, 2)]
    first = Recording()
    results = runs.map(configs, executor=first, cache=cache)
    assert first.trained == [0, 1, 2]
    again = Recording()
    assert runs.map(configs, executor=again, cache=cache) == results
    assert again.trained == []
    changed = Recording()
    runs.map(configs[:2] + [_small(digits, "fp32", 7)], executor=changed, cache=cache)
    assert changed.trained == [2]
    # the same run asked twice runs once; both get equal, separate results
    twice = Recording()
    out = runs.map([_small(digits, "fp32", 9), _small(digits, "fp32", 9)], executor=twice, cache=cache)
    assert twice.trained == [0] and out[0] == out[1] and out[0] is not out[1]


def _corrupt_truncate(path):
    path.write_text(path.read_text()[: len(path.read_text()) // 2])


def _corrupt_number(path):
    entry = json.loads(path.read_text())
    entry["result"]["test_accuracy"] = entry["result"]["test_accuracy"] + 0.125     # valid JSON, wrong payload
    path.write_text(json.dumps(entry))


def _corrupt_identity(path):
    entry = json.loads(path.read_text())
    entry["identity"]["seed"] = 5
    path.write_text(json.dumps(entry))


@pytest.mark.parametrize("corrupt, why", [(_corrupt_truncate, "unreadable"), (_corrupt_number, "checksum"),
                                          (_corrupt_identity, "does not hash")])
def test_a_corrupt_entry_is_recomputed_never_trusted(digits, cache, corrupt, why):
    config = _small(digits, "grad-radix4")
    good = runs.map([config], executor=Recording(), cache=cache)[0]
    path = cache.path(config.key())
    corrupt(path)
    again = Recording()
    with pytest.warns(RuntimeWarning, match=why):
        result = runs.map([config], executor=again, cache=cache)[0]
    assert again.trained == [0]
    assert runs.numbers_of(result) == runs.numbers_of(good)
    assert runs.RunCache.read_entry(path, config.key(), config.identity())[0] is not None    # rewritten whole


def test_no_partial_entry_and_env_settings(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("Q4CORE_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("Q4CORE_NO_CACHE", "0")
    config = _small(digits)
    runs.map([config], executor="serial")
    files = [p for p in (tmp_path / "c").rglob("*") if p.is_file()]
    assert [p.name for p in files] == [f"{config.key()}.json"]        # no temporaries left behind
    monkeypatch.setenv("Q4CORE_RECOMPUTE", "1")
    rec = Recording()
    runs.map([config], executor=rec)
    assert rec.trained == [0]
    monkeypatch.setenv("Q4CORE_RECOMPUTE", "maybe")
    with pytest.raises(ValueError, match="Q4CORE_RECOMPUTE must be"):
        runs.map([config], executor=rec)
    monkeypatch.setenv("Q4CORE_RECOMPUTE", "0")
    monkeypatch.setenv("Q4CORE_SCHEDULER", "cluster-of-dreams")
    with pytest.raises(ValueError, match="Q4CORE_SCHEDULER"):
        runs.map([config])


# ---------------------------------------------------------------------------------------------- order, failures
def test_results_come_in_the_order_asked_whatever_order_they_finish(digits, cache):
    configs = [_small(digits, r, s) for r in ("fp32", "q4") for s in (0, 1)]
    forward = runs.map(configs, executor=Recording(), cache=runs.RunCache(cache.folder, read=False, write=False))
    backward_executor = Recording(reverse=True)
    backward = runs.map(configs, executor=backward_executor, cache=cache)
    assert backward_executor.trained == [3, 2, 1, 0]
    assert [runs.numbers_of(r) for r in backward] == [runs.numbers_of(r) for r in forward]
    assert [(r["recipe"]["name"], r["seed"]) for r in backward] == [("fp32", 0), ("fp32", 1), ("q4", 0), ("q4", 1)]


def test_a_failed_run_is_reported_with_its_config_and_the_others_are_cached(digits, cache):
    bad = _small(digits, "fp32", 0, batch_size=0)      # train() rejects it when it runs
    good = _small(digits, "fp32", 1)
    with pytest.raises(runs.RunsFailed, match=r"1 of 2 run\(s\) failed") as info:
        runs.map([bad, good], executor=Recording(), cache=cache)
    assert info.value.failures[0][0] is bad
    assert "batch_size must be an int >= 1" in info.value.failures[0][1]
    assert cache.lookup(good.key(), good.identity()) is not None
    assert not cache.path(bad.key()).exists()


# ---------------------------------------------------------------------------------------------- executors
def test_thread_counts_do_not_change_numbers_here(digits):
    # true for these small products; float32 BLAS on larger ones is not (next test): runs pin one thread
    for recipe in ("fp32", "fp16", "q4"):
        config = _small(digits, recipe, steps=15)
        one = runs.execute(config, threads=1)
        two = runs.execute(config, threads=2)
        assert runs.numbers_of(one) == runs.numbers_of(two), recipe


def test_a_run_executes_on_one_thread_whoever_calls_it():
    """float32 BLAS with two threads gives other last bits than with one on an MNIST-sized MLP (OpenBLAS splits
    the product), so every executor - serial included - runs a cached run on one thread: the result must not
    depend on where it ran."""
    from threadpoolctl import threadpool_limits
    mnist = common.load_dataset("mnist", seed=0)
    config = common.mlp_run(mnist, "grad-radix2", epochs=1, seed=0)
    config.train_kwargs.update(max_steps=8)
    config._identity = None
    pinned = runs.execute(config, threads=1)
    with threadpool_limits(limits=2):
        assert runs.numbers_of(runs.execute(config)) == runs.numbers_of(pinned)


def test_serial_processes_and_local_cluster_agree_bit_for_bit(digits, tmp_path):
    pytest.importorskip("distributed")
    configs = [_small(digits, r, s, steps=20) for r in ("fp32", "grad-radix4", "q4") for s in (0, 1)]
    configs[0].train_kwargs["max_steps"] = 39     # the first run the longest: it finishes last
    out = {}
    try:
        for spec in ("serial", "processes:2", "local:2"):
            cache = runs.RunCache(tmp_path / spec.replace(":", "-"), tmp_path / "none")
            out[spec] = [json.dumps(runs.numbers_of(r), sort_keys=True) for r in runs.map(configs, spec, cache)]
            assert len(cache.entries()) == len(configs)
    finally:
        runs.close_executors()
    assert out["serial"] == out["processes:2"] == out["local:2"]


def test_a_worker_killed_mid_sweep_is_rescheduled_and_no_partial_entry_is_left(digits, tmp_path):
    import os
    import signal
    import threading
    import time
    pytest.importorskip("distributed")
    configs = [_small(digits, "q4", s, steps=120, epochs=3) for s in range(8)]
    expected = [runs.numbers_of(r) for r in runs.map(configs, "serial", runs.RunCache(read=False, write=False))]
    cache = runs.RunCache(tmp_path / "c", tmp_path / "r")
    executor = runs.Dask("local:2")
    killed = {}
    try:
        pids = sorted(executor.client().run(os.getpid).values())

        def kill_one_worker_after_the_first_run():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not cache.entries():
                time.sleep(0.02)
            killed["finished_before"] = len(cache.entries())
            os.kill(pids[0], signal.SIGKILL)

        killer = threading.Thread(target=kill_one_worker_after_the_first_run)
        killer.start()
        out = runs.map(configs, executor, cache)
        killer.join()
        assert pids[0] not in executor.client().run(os.getpid).values()      # the worker was really killed
    finally:
        runs.close_executors()
    assert 1 <= killed["finished_before"] < len(configs)
    assert [runs.numbers_of(r) for r in out] == expected
    assert sorted(p.name for p in cache.folder.rglob("*") if p.is_file()) == sorted(f"{c.key()}.json"
                                                                                  for c in configs)


def test_missing_dask_is_a_precise_error(tmp_path):
    code = ("import sys; sys.modules['distributed'] = None\n"
            "from q4core import runs\n"
            "try:\n    runs.executor_from_spec('local:2')\n"
            "except runs.MissingDaskError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "local:2" in out and "pip install 'q4core[cluster]'" in out
    code = ("import sys; sys.modules['distributed'] = None\n"
            "from q4core.reproduce import main\n"
            f"sys.exit(main(['--scheduler', 'tcp://127.0.0.1:8786', '--figures-dir', {str(tmp_path)!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--scheduler" in proc.stderr and "pip install 'q4core[cluster]'" in proc.stderr
    with pytest.raises(ValueError, match="scheduler must be"):
        runs.Dask("udp://x")
    with pytest.raises(ValueError, match="needs a number"):
        runs.executor_from_spec("processes:two")


# ---------------------------------------------------------------------------------------------- the experiments
def test_sweeps_give_the_numbers_they_gave_before_the_cache(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("Q4CORE_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("Q4CORE_NO_CACHE", "0")
    recipes = {"fp32": "fp32", "radix 4": "grad-radix4"}
    kw = {"hidden": (16,), "epochs": 1, "batch_size": 64, "lr": 0.05}

    def before():   # accuracy_by_recipe as it was: one train() per recipe and seed
        out = {}
        for label, recipe in recipes.items():
            accs = [float(train(data=digits, model="mlp", recipe=recipe, epochs=1, seed=s, batch_size=64, lr=0.05,
                                optimizer="sgd", weight_decay=0.0, progress=False,
                                model_kwargs={"hidden": (16,), "batchnorm": False})["test_accuracy"])
                    for s in (0, 1)]
            out[label] = accs
        return out

    old = before()
    for _ in range(2):     # computed, then from the cache
        new = common.accuracy_by_recipe(digits, recipes, [0, 1], **kw)
        assert {k: v["accuracy"] for k, v in new.items()} == old
    assert len(list((tmp_path / "c").glob("*/*.json"))) == 4

    # notebook 04's runs and the stack cross-check
    run = full_training.run_ablations("vision", seeds=[0], epochs=1, max_steps=4,
                                      ablations={"no TPR": "no-tpr"})[0]
    mnist = train("mnist", "q4", ablation="no-tpr", epochs=1, seed=0, model=full_training.DOMAINS["vision"]["model"],
                  max_steps=4, progress=False)
    assert run["curves"] == full_training.curves_of(mnist)
    assert run["test"] == full_training.to_points(mnist["test_accuracy"], "accuracy")
    direct = train("digits", "q4", ablation="no-tpr", epochs=1, seed=0, max_steps=4, progress=False)
    on_stack = stack.compare_on_stack({"no TPR": ("q4", "no-tpr")}, task="digits", seeds=[0], epochs=1, max_steps=4)
    assert on_stack["no TPR"]["accuracy"] == [float(direct["test_accuracy"])]


# ---------------------------------------------------------------------------------------------- committed results
def test_export_verify_and_committed_lookup(digits, tmp_path):
    cache = runs.RunCache(tmp_path / "cache", tmp_path / "results")
    configs = [runs.RunConfig(task="digits", recipe="q4", seed=0, epochs=1, max_steps=5), _small(digits, "fp32")]
    runs.map(configs, executor="serial", cache=cache)
    assert runs.export(tmp_path / "results", "default", cache=cache) == 2
    # a fresh cache finds them among the committed results
    fresh = runs.RunCache(tmp_path / "empty", tmp_path / "results")
    rec = Recording()
    runs.map(configs, executor=rec, cache=fresh)
    assert rec.trained == []
    assert runs.committed_runs_of_current_numerics(tmp_path / "results") == 2
    checked, mismatches, skipped = runs.verify(2, seed=0, results=tmp_path / "results", out=open("/dev/null", "w"))
    assert (checked, mismatches, skipped) == (2, [], 0)
    # a committed number that recomputes differently (checksum made to match) is caught
    path = tmp_path / "results" / "default" / f"{configs[0].key()}.json"
    entry = json.loads(path.read_text())
    entry["result"]["history"]["step_loss"][0] += 1e-6
    entry["sha256"] = runs._sha256_text(runs._canonical(entry["result"]))
    path.write_text(json.dumps(entry))
    checked, mismatches, _ = runs.verify(2, seed=0, results=tmp_path / "results", out=open("/dev/null", "w"))
    assert checked == 2 and mismatches == [path]
    # results of other numerics are never found
    entry["identity"]["numerics"] = "0" * 64
    stale_key = runs._sha256_text(runs._canonical(entry["identity"]))
    assert stale_key != configs[0].key()


def test_committed_results_recompute_bit_for_bit():
    n = runs.committed_runs_of_current_numerics()
    if n == 0:
        pytest.skip(f"results/ holds no runs of the current numerics version {runs.numerics_version()[:12]} "
                    f"(numpy {np.__version__}); `python -m q4core.runs export` fills it")
    # a different pair of committed runs every day (the seed is in the failure message, to repeat it)
    import time
    seed = int(time.time()) // 86400
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        checked, mismatches, _ = runs.verify(sample=2, seed=seed, max_seconds=60)
    assert checked >= 1 and mismatches == [], f"python -m q4core.runs verify --sample 2 --seed {seed}"


def _integer_q4_run(entry):
    """A committed run of the 4-bit integer path (INT4 forward, FP4 gradients: every compiled GEMM and quantizer
    kernel of the default recipe) on the small digits task."""
    ident = entry["identity"]
    return ident["task"] == "digits" and ident["recipe"]["name"] == "q4" and not ident["recipe"]["simulate"]


def test_the_compiled_kernels_recompute_a_committed_integer_run_bit_for_bit():
    """The compiled kernels are not in a run's identity (runs.IMPLEMENTATION_SOURCES): besides their bit-for-bit
    tests, one committed 4-bit integer run recomputed on this machine's kernel must give its committed numbers."""
    checked, mismatches, _ = runs.verify(sample=1, seed=0, out=open("/dev/null", "w"), where=_integer_q4_run)
    if checked == 0 and not mismatches:     # verify chose among valid runs of the current numerics only
        pytest.skip("results/ holds no committed 4-bit integer digits run of the current numerics")
    assert checked == 1 and mismatches == []


# ---------------------------------------------------------------------------------------------- cache info
def test_cache_info_says_what_a_profile_would_still_run(digits, tmp_path, monkeypatch, capsys):
    import io
    monkeypatch.setenv("Q4CORE_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("Q4CORE_RESULTS", str(tmp_path / "r"))
    monkeypatch.setenv("Q4CORE_NO_CACHE", "0")
    monkeypatch.setenv("Q4CORE_RUN_LABEL", "02_adaptive_rescaling/quick")
    monkeypatch.setenv("Q4CORE_RUN_SESSION", "s1")
    configs = [_small(digits, "fp32", s) for s in (0, 1, 2)]
    runs.map(configs, executor="serial")
    path = runs.default_cache().path(configs[1].key())
    path.unlink()
    out = io.StringIO()
    runs.cache_info(labels=["02_adaptive_rescaling/quick", "03_log_gradients/quick"], out=out)
    text = out.getvalue()
    assert "cache " in text and "2 run(s) of the current numerics" in text
    assert "02_adaptive_rescaling/quick: 3 run(s) asked at its last execution, 2 cached, 1 would run" in text
    assert "03_log_gradients/quick: never executed" in text
    # and through q4-reproduce, for the notebooks selected
    from q4core.reproduce import main
    assert main(["--cache-info", "--profile", "quick", "--only", "02"]) == 0
    shown = capsys.readouterr().out
    assert "02_adaptive_rescaling/quick: 3 run(s) asked" in shown and "03_" not in shown


def test_a_recorded_run_is_cached_with_its_records(cache):
    """Notebook 04's error-recording q4 runs: the recorder is made where the run executes, its records come back
    in the result, equal to a recorder run in this process; a second execution trains nothing."""
    recorder = {"factory": "q4core.experiments.full_training:QuantErrorRecorder", "kwargs": {"every": 2}}
    config = runs.RunConfig(task="digits", recipe="q4", seed=0, epochs=1, max_steps=6, recorder=recorder)
    plain = runs.RunConfig(task="digits", recipe="q4", seed=0, epochs=1, max_steps=6)
    assert config.key() != plain.key() and config.identity()["recorder"] == recorder
    first = Recording()
    [result] = runs.map([config], executor=first, cache=cache)
    here = full_training.QuantErrorRecorder(2)
    with runs._limit_threads(1):          # as every run executes (float32 BLAS on two threads moves last bits)
        direct = train("digits", "q4", seed=0, epochs=1, max_steps=6, on_step=here, progress=False)
    assert result["records"] == json.loads(json.dumps(here.records)) and len(result["records"]) > 0
    assert runs.numbers_of({k: v for k, v in result.items() if k != "records"}) == \
        runs.numbers_of(json.loads(json.dumps(direct)))
    again = Recording()
    assert runs.map([config], executor=again, cache=cache) == [result] and again.trained == []
    with pytest.raises(ValueError, match="recorder must be"):
        runs.RunConfig(task="digits", recorder={"factory": "x"})
    with pytest.raises(ValueError, match="cannot be imported"):
        runs.RunConfig(task="digits", recorder={"factory": "q4core.nothing:X", "kwargs": {}})


def test_fp16_accumulation_runs_also_hash_its_module():
    """accumulate.py changes only accumulator='fp16' runs: their identities carry its hash, the others do not."""
    fp16 = runs.RunConfig(task="digits", recipe="q4", ablation="fp16-accumulate", seed=0, epochs=1)
    exact = runs.RunConfig(task="digits", recipe="q4", seed=0, epochs=1)
    assert set(fp16.identity()["sources"]) == {"accumulate.py"}
    assert "sources" not in exact.identity()


def test_export_of_one_profile_takes_only_the_runs_it_asked_for(digits, tmp_path, monkeypatch):
    cache = runs.RunCache(tmp_path / "cache", tmp_path / "results")
    with pytest.raises(ValueError, match="no notebook has logged its runs for profile 'default'"):
        runs.export(tmp_path / "out", "default", cache=cache, profile="default")
    monkeypatch.setenv("Q4CORE_RUN_LABEL", "02_x/default")
    asked = _small(digits, "fp32", seed=0)
    runs.map([asked], executor="serial", cache=cache)
    monkeypatch.setenv("Q4CORE_RUN_LABEL", "02_x/quick")
    runs.map([_small(digits, "fp32", seed=1)], executor="serial", cache=cache)
    assert runs.export(tmp_path / "out", "default", cache=cache, profile="default") == 1
    assert [p.stem for p in (tmp_path / "out" / "default").glob("*.json")] == [asked.key()]
