"""A fuzz suite for the public API and the training CLI, and fault tests of a training that is killed.

The contract every case checks: the right answer (bit for bit the numpy reference), or a ``TypeError`` /
``ValueError`` / ``OverflowError`` whose message names an argument that was wrong - never a crash, a hang, a
silent non-finite result, a stray warning or a partial file.  Cases that reach C code (formats, quantizers,
GEMMs, thread counts) run in a subprocess: a segfault or an abort in libgomp then fails one test instead of
killing the run (:func:`_isolated`).  Hypothesis draws the inputs from pools of valid and invalid values per
argument, so each case knows which arguments were bad and what the error must name.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parent.parent
ERRORS = (TypeError, ValueError, OverflowError)
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))


# ---------------------------------------------------------------------------------------------- isolation
def _isolated(function, env=None, timeout=600):
    """Run ``function`` (a name in this module) in a fresh Python; fail with its output if it fails, dies of a
    signal (segfault, abort) or hangs."""
    code = ("import importlib.util, os, sys; from hypothesis import settings; "
            # the same deterministic profile as the test process (tests/conftest.py)
            "settings.register_profile('q4core', derandomize=True); "
            "settings.register_profile('explore', derandomize=False); "
            "settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'q4core')); "
            f"spec = importlib.util.spec_from_file_location('fuzz', {str(Path(__file__))!r}); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            f"m.{function}()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO)
    died = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
    assert proc.returncode == 0, f"{function} failed ({died}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"


def _names_one_of(exc, names):
    """The error message names one of ``names`` (as a word; option names like ``--lr`` as written)."""
    text = str(exc)
    return any(re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text) for n in names)


def _check_outcome(call, reference, bad, arg_names):
    """Run ``call``; with bad arguments (their names in ``bad``) it must raise an error naming one of them, with
    good ones it must agree with ``reference()``: the same values and dtype, or an error of the same kind
    (value-dependent: a scale too large, a NaN under ``nan_policy='raise'``) naming one of ``arg_names``.
    No warning may escape either way.  Returns the result (None after an error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            got = call()
        except ERRORS as exc:
            assert _names_one_of(exc, bad or arg_names), f"{type(exc).__name__} names none of {bad or arg_names}: {exc}"
            if not bad:
                with pytest.raises(type(exc)):
                    reference()
            return None
        assert not bad, f"bad arguments {bad} were accepted"
        want = reference()
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    assert np.array_equal(got, want, equal_nan=True), (got, want)
    return got


# ---------------------------------------------------------------------------------------------- strategies
DTYPES = ["<f4", ">f4", "<f8", ">f8", "<f2", "<i1", "<i4", ">i4", "<u8", ">u2", "?", "<c8", "g", "O", "<M8[s]"]
GOOD_DTYPES = {"<f4", ">f4", "<f8", ">f8", "<i1", "<i4", ">i4", "<u8", ">u2"}   # what the compiled path takes


def _values(draw, n):
    finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)
    wild = st.sampled_from([0.0, -0.0, 1e-45, 1e-310, 6.0, 7.5, 1e38, 3.4e38, 1e300, -1e300,
                            np.inf, -np.inf, np.nan])
    return draw(st.lists(st.one_of(finite, finite, wild), min_size=n, max_size=n))


@st.composite
def arrays(draw, dtypes=DTYPES):
    """An array of a random dtype (either byte order), shape (0-d to 3-d, empty axes too) and layout (a
    transposed or strided view of a bigger buffer, negative steps)."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=3)))
    step = draw(st.sampled_from([1, 1, 2, -1, -2]))
    big = tuple(s * abs(step) for s in shape)
    n = int(np.prod(big)) if big else 1
    raw = np.array(_values(draw, min(n, 400)) + [0.0] * max(n - 400, 0), dtype=np.float64)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dtype.kind in "iu?":
            raw = np.nan_to_num(raw, posinf=0, neginf=0)
            lo, hi = (0, 1) if dtype.kind == "?" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
            base = np.clip(raw, lo, hi).astype(dtype)
        elif dtype.kind == "M":
            base = np.nan_to_num(raw).astype(np.int64).astype(dtype)
        elif dtype.kind == "O":
            base = raw.astype(object)
        else:
            base = raw.astype(dtype)
    base = base.reshape(big)
    view = base[tuple(slice(None, None, step) for _ in shape)] if shape else base
    if view.ndim >= 2 and draw(st.booleans()):
        view = view.swapaxes(0, -1)
    return view


GOOD_SCALES = st.one_of(st.floats(1e-30, 1e30), st.sampled_from([1.0, np.float32(0.5), np.int64(3), 1e-300,
                                                                  1e300]))
BAD_SCALES = st.sampled_from([0.0, -1.0, np.nan, np.inf, -np.inf, True, "1", None, np.array([1.0, 2.0])])
GOOD_THREADS = st.sampled_from([None, 1, 2, 3, 64, 100_000, 2**40, np.int32(2)])
BAD_THREADS = st.sampled_from([0, -1, True, 2.0, "2", 10**30 * -1])
GOOD_POLICIES = st.sampled_from(["raise", "propagate"])
BAD_POLICIES = st.sampled_from(["ignore", None, 0, "RAISE"])


def _rarely(draw, one_in):
    """True about once in ``one_in`` draws (hypothesis would pick a float's boundary, 0.0, far more often)."""
    return draw(st.sampled_from([True] + [False] * (one_in - 1)))


def _arg(draw, good, bad, name, bads, one_in=12):
    if _rarely(draw, one_in):
        bads.append(name)
        return draw(bad)
    return draw(good)


# ---------------------------------------------------------------------------------------------- quantizers
def _fuzz_quantizers():
    from q4core import formats as F
    from q4core import quant
    fmts = [F.INT4, F.UINT4, F.INT4_SYM, F.RADIX4_FP4, F.RADIX4_FP4_ODD, F.RADIX2_FP4, F.LOG10_4BIT, F.E2M1,
            F.FP8_E4M3, F.FP16, F.INT8]

    supported = [f for f in fmts if quant.supports(f)]

    @FUZZ
    @given(data=st.data(), fmt=st.one_of(st.sampled_from(supported), st.sampled_from(supported),
                                         st.sampled_from(fmts)),
           op=st.sampled_from(["quantize", "encode", "encode_packed"]))
    def run(data, fmt, op):
        draw, bad = data.draw, []
        x = draw(arrays(DTYPES if _rarely(draw, 4) else sorted(GOOD_DTYPES)))
        if x.dtype.str.lstrip("<>|=") not in {d.lstrip("<>") for d in GOOD_DTYPES}:
            bad.append("x")
        elif x.dtype.kind == "f" and _rarely(draw, 6):
            x = x.tolist()          # Python floats (a list, or one number): float64, as the reference takes them
        scale = _arg(draw, GOOD_SCALES, BAD_SCALES, "scale", bad)
        policy = _arg(draw, GOOD_POLICIES, BAD_POLICIES, "nan_policy", bad)
        threads = _arg(draw, GOOD_THREADS, BAD_THREADS, "threads", bad)
        if not quant.supports(fmt):
            bad.append("fmt")

        def call():
            return getattr(quant, op)(fmt, x, scale, nan_policy=policy, threads=threads)

        def reference():
            if op == "quantize":
                return fmt.quantize(x, scale, nan_policy=policy, backend="numpy")
            codes = fmt.encode(x, scale, nan_policy=policy, backend="numpy")
            return F.pack_nibbles(codes) if op == "encode_packed" else codes

        got = _check_outcome(call, reference, bad, ["x", "scale", "fmt", "nan_policy", "threads"])
        if got is not None and policy == "raise" and op == "quantize":
            assert np.isfinite(got).all(), "a non-finite result under nan_policy='raise'"
    run()


def _fuzz_nibbles():
    from q4core import formats as F
    from q4core import quant

    @FUZZ
    @given(data=st.data(), module=st.sampled_from(["formats", "quant"]))
    def run(data, module):
        draw, bad = data.draw, []
        packed = draw(arrays(["|u1"] * 12 + ["|i1", "<u2", "<f4", "?"]))
        if packed.dtype != np.uint8 or packed.ndim == 0:
            bad.append("packed")
        width = packed.shape[-1] if packed.ndim else 0
        n = _arg(draw, st.integers(max(2 * width - 1, 0), 2 * width), st.sampled_from(
            [-1, 2 * width + 1, 2 * width + 2, True, 1.0, None, 2**70]), "n", bad)
        signed = _arg(draw, st.booleans(), st.sampled_from(["no", 1, None]), "signed", bad)
        threads = draw(GOOD_THREADS) if module == "quant" else None

        def call():
            if module == "formats":
                return F.unpack_nibbles(packed, n, signed=signed)
            return quant.unpack_nibbles(packed, n, signed=signed, threads=threads)

        got = _check_outcome(call, lambda: F.unpack_nibbles(np.ascontiguousarray(packed), n, signed=signed), bad,
                             ["packed", "n", "signed", "threads"])
        if got is not None:     # and back: packing the codes gives the bytes again (padding nibble aside)
            again = F.pack_nibbles(got)
            mask = np.full(again.shape[-1:], 0xFF, np.uint8)
            if n % 2 and width:
                mask[-1] = 0x0F
            assert np.array_equal(again, packed & mask)
    run()


# ---------------------------------------------------------------------------------------------- GEMMs
def _operand(draw, rows, cols, kind):
    """An INT4 (``int8`` -8..7 or ``uint8`` 0..15) or FP4 (uint8 codes 0..15) operand, sometimes strided or
    transposed; returns (array, valid)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    twist = draw(st.sampled_from(["plain", "transposed", "strided", "reversed"] * 4
                                 + ["wide", "wrong dtype", "out of range", "3-d"]))
    signed = kind == "int4" and draw(st.booleans())
    dtype, lo, hi = (np.int8, -8, 7) if signed else (np.uint8, 0, 15)
    a = rng.integers(lo, hi + 1, size=(rows, cols)).astype(dtype)
    if twist == "transposed":
        a = np.ascontiguousarray(a.T).T
    elif twist == "strided":
        a = np.repeat(np.repeat(a, 2, axis=0), 3, axis=1)[::2, ::3]
    elif twist == "reversed":
        a = a[::-1, ::-1]
    elif twist == "wide":
        return a.astype(draw(st.sampled_from([np.int16, np.int32, np.float32, ">i2"]))), False
    elif twist == "wrong dtype":
        return a.astype(draw(st.sampled_from([np.bool_, np.float64, np.complex64]))), False
    elif twist == "out of range" and a.size:
        a = a.copy()
        a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([8, 127, -9] if signed else [16, 255]))
        return a, False
    elif twist == "3-d":
        return a[None], False
    return a, True


def _fuzz_gemms():
    from q4core import gemm

    def units(codes):
        e = (codes & 7).astype(np.int64)
        return np.where(e == 0, 0, np.left_shift(1, np.maximum(2 * (e - 1), 0))) * np.where(codes & 8, -1, 1)

    @FUZZ
    @given(data=st.data(), op=st.sampled_from(["int4", "fp4_int4", "int4_fp4"]),
           m=st.integers(0, 20), k=st.integers(0, 70), n=st.integers(0, 20),
           kernel=st.sampled_from([None, None, *gemm.available_kernels(), "nope", 3]))
    def run(data, op, m, k, n, kernel):
        draw, bad = data.draw, []
        a, a_ok = _operand(draw, m, k, "fp4" if op == "fp4_int4" else "int4")
        k_b = k + 1 if _rarely(draw, 10) else k
        b, b_ok = _operand(draw, k_b, n, "fp4" if op == "int4_fp4" else "int4")
        names = {"int4": ("a", "b"), "fp4_int4": ("g_codes", "b"), "int4_fp4": ("a", "g_codes")}[op]
        bad += [name for name, ok in zip(names, (a_ok, b_ok)) if not ok]
        if k_b != k and a_ok and b_ok:
            bad += list(names)            # the inner dimensions differ: either operand may be named
        threads = _arg(draw, GOOD_THREADS, BAD_THREADS, "threads", bad)
        if kernel not in (None, *gemm.available_kernels()):
            bad.append("kernel")
        b_values = b
        if op == "int4" and b_ok and _rarely(draw, 4):
            b = gemm.pack_int4(b)          # a packed weight matrix, reused as the kernels take it
        fn = {"int4": gemm.int4_matmul, "fp4_int4": gemm.fp4_int4_matmul, "int4_fp4": gemm.int4_fp4_matmul}[op]
        scale_names = {"int4": ("scale_a", "scale_b"), "fp4_int4": ("g_scale", "b_scale"),
                       "int4_fp4": ("a_scale", "g_scale")}[op]
        scaled = draw(st.booleans())
        scales = [_arg(draw, st.one_of(st.floats(-1e30, 1e30), st.sampled_from([1e200, 3e38])),
                       st.sampled_from([np.nan, np.inf, "1", None, np.ones(2)]), name, bad)
                  for name in scale_names] if scaled else []

        def reference():
            left = units(a) if op == "fp4_int4" else a.astype(np.int64)
            right = units(b_values) if op == "int4_fp4" else b_values.astype(np.int64)
            exact = left @ right
            if not scaled:
                return exact.astype(np.int32 if op == "int4" else np.int64)
            factor = scales[0] * scales[1] * (1.0 if op == "int4" else 4.0 ** -6)
            with np.errstate(all="ignore"):
                out = (exact.astype(np.float64) * factor).astype(np.float32)
            if not np.isfinite(out).all():
                raise OverflowError("beyond float32")
            return out

        def call():
            if scaled:
                return getattr(gemm, f"{op}_matmul_scaled")(a, b, *scales, threads=threads, kernel=kernel)
            return fn(a, b, threads=threads, kernel=kernel)

        _check_outcome(call, reference, bad, [*names, *scale_names, "threads", "kernel"])
    run()


def _fuzz_reference_formats():
    """Format constructors with random arguments, and the numpy reference itself (every format, stochastic
    rounding too): a format or an error naming the argument; results finite under ``nan_policy='raise'``;
    ``decode(encode(x)) == quantize(x)``; no warning (E2M1 and float32 overflow used to leak them)."""
    from q4core import formats as F
    ints = st.one_of(st.integers(-2, 20), st.sampled_from([True, 2.0, "4", None, 2**70]))
    constructors = {
        "IntFormat": (F.IntFormat, {"bits": ints, "signed": st.sampled_from([True, False, "no", 1, None]),
                                    "symmetric": st.sampled_from([False, True, "yes"]),
                                    "rounding": st.sampled_from(["nearest", "stochastic", "up", 0])}),
        "RadixFP": (F.RadixFP, {"radix": st.one_of(st.integers(-1, 20), st.sampled_from([2.5, 1e300, True])),
                                "exp_bits": ints, "phase": st.sampled_from([0, 1, 2, -1, True]),
                                "rounding": st.sampled_from(["nearest", "log", "stochastic", "x"]),
                                "bias": st.one_of(st.none(), st.integers(-2000, 2000), st.sampled_from([1.5]))}),
        "MiniFloat": (F.MiniFloat, {"exp_bits": ints, "man_bits": ints,
                                    "bias": st.one_of(st.none(), st.integers(-2000, 2000)),
                                    "ieee": st.sampled_from([True, False, "no"]),
                                    "fn": st.sampled_from([False, True, 0])}),
    }
    named = [F.INT4, F.UINT4, F.INT4_SYM, F.RADIX4_FP4, F.RADIX4_FP4_ODD, F.RADIX2_FP4, F.LOG10_4BIT, F.E2M1,
             F.FP8_E4M3, F.FP8_E5M2, F.FP16, F.INT8]

    @FUZZ
    @given(data=st.data(), which=st.sampled_from(sorted(constructors)))
    def run(data, which):
        draw = data.draw
        make, args = constructors[which]
        required = {"IntFormat": ("bits",), "MiniFloat": ("exp_bits", "man_bits")}.get(which, ())
        kwargs = {k: draw(v) for k, v in args.items() if k in required or draw(st.booleans())}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                fmt = make(**kwargs)
            except ERRORS as exc:
                assert _names_one_of(exc, list(kwargs)), f"{which}({kwargs}): {exc}"
                fmt = draw(st.sampled_from(named))
            x = draw(arrays(["<f4", ">f8", "<f8", "<f2", "<i4"]))
            scale = draw(GOOD_SCALES)
            policy = draw(GOOD_POLICIES)
            rng = np.random.default_rng(0)
            try:
                q = fmt.quantize(x, scale, rng=rng, nan_policy=policy, backend="numpy")
            except ERRORS as exc:
                assert _names_one_of(exc, ["x", "scale", "rng", "nan_policy"]), f"{fmt!r}: {exc}"
                return
            if policy == "raise" and not getattr(fmt, "ieee", False):   # IEEE formats overflow to Inf by design
                assert np.isfinite(q).all(), f"{fmt!r} made {x} non-finite under nan_policy='raise'"
            if fmt.rounding != "stochastic":
                try:
                    codes = fmt.encode(x, scale, nan_policy=policy, backend="numpy")
                except ValueError as exc:      # encode refuses NaN under either policy
                    assert _names_one_of(exc, ["x"]) and np.isnan(np.asarray(x, np.float64)).any(), exc
                    return
                with np.errstate(over="ignore"):    # decode gives float64; in float16 its Inf is quantize's
                    again = fmt.decode(codes, scale).astype(q.dtype)
                assert np.array_equal(again, q, equal_nan=True), (fmt, x, scale, again, q)
    run()


def _fuzz_recipes():
    """Random recipes (every role's format, scaling, rounding and phase, the global fields, junk among them)
    through ``get_recipe`` and a two-step training: a recipe or an error naming the field; a training that
    ends with a result (trained, or stopped with a message), never another exception or a warning."""
    from q4core.recipe import get_recipe
    from q4core.recipe.spec import FLOAT_FORMATS, FORMAT_NAMES, ROUNDINGS, SCALINGS
    from q4core.train import train
    formats = sorted(FORMAT_NAMES) + ["fp32"]
    operand = st.fixed_dictionaries({}, optional={
        "format": st.one_of(st.sampled_from(formats), st.sampled_from(["int3", 4, None])),
        "scaling": st.one_of(st.sampled_from(SCALINGS), st.sampled_from(["magic", 1])),
        "rounding": st.one_of(st.sampled_from(ROUNDINGS), st.sampled_from(["up", None])),
        "phase": st.sampled_from([0, 1, 2, -1, True, "1"]),
        "colour": st.just("red"),
    })
    fields = {
        "weight": operand, "activation": operand, "grad_dx": operand, "grad_dw": operand,
        "first_last": st.sampled_from(["same", *FLOAT_FORMATS, "int4", "fp64", 3]),
        "static_scale": st.sampled_from([False, True, "no"]),
        "grad_static_scale": st.sampled_from([1.0, 2**-10, 0.0, -1.0, np.inf]),
        "pact_l2": st.sampled_from([0.0, 1e-4, -1.0, np.nan]),
        "pact_init": st.sampled_from([0.0, 1.0, 1e30, -2.0]),
        "loss_scale_init": st.sampled_from([1.0, 4096.0, 0.5, 1e300]),
        "loss_scale_window": st.sampled_from([1, 200, 0, 2.5]),
        "accumulator": st.sampled_from(["exact", "fp16", "fp32", "int8"]),
        "gradscale_align": st.sampled_from(["max", "min", 0]),
    }

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))     # ~0.4 s a training
    @given(data=st.data(), base=st.sampled_from(["fp32", "q4", "fp16", "q4+e2m1"]))
    def run(data, base):
        chosen = data.draw(st.lists(st.sampled_from(sorted(fields)), unique=True, max_size=4))
        overrides = {key: data.draw(fields[key]) for key in chosen}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                get_recipe(base, **overrides)
            except ERRORS as exc:
                words = list(overrides) + [k for v in overrides.values() if isinstance(v, dict) for k in v]
                assert _names_one_of(exc, words), (overrides, exc)
                event("refused")
                return
            r = train(task="digits", model="mlp", recipe=base, epochs=1, max_steps=2, progress=False,
                      **overrides)
        event("stopped" if r["stopped"] else "trained")
        assert r["stopped"] is None or r["stopped"].startswith("training stopped: ")
        assert (r["test_accuracy"] is None) == (r["stopped"] is not None)
    run()


@pytest.mark.parametrize("function", ["_fuzz_quantizers", "_fuzz_nibbles", "_fuzz_gemms",
                                      "_fuzz_reference_formats", "_fuzz_recipes"])
def test_public_api_keeps_its_contract_on_random_input(function):
    _isolated(function)


def _huge_thread_requests():
    """Everything that reaches OpenMP, under ``OMP_NUM_THREADS=100000``: same numbers as one thread."""
    from q4core import gemm, quant
    from q4core.formats import INT4, RADIX4_FP4
    rng = np.random.default_rng(0)
    x = rng.normal(size=1 << 18)
    assert np.array_equal(quant.quantize(INT4, x, 0.5), quant.quantize(INT4, x, 0.5, threads=1))
    assert np.array_equal(quant.encode(RADIX4_FP4, x, 2.0, threads=40_000), quant.encode(RADIX4_FP4, x, 2.0))
    a = rng.integers(-8, 8, (300, 500)).astype(np.int8)
    b = rng.integers(-8, 8, (500, 200)).astype(np.int8)
    assert np.array_equal(gemm.int4_matmul(a, b, threads=100_000), a.astype(np.int64) @ b.astype(np.int64))
    from q4core.train import train
    r = train(task="digits", recipe="q4", model="mlp", epochs=1, max_steps=2, progress=False, threads=100_000)
    assert r["stopped"] is None and r["steps"] == 2


def test_absurd_thread_counts_neither_crash_nor_change_results():
    _isolated("_huge_thread_requests", env={"OMP_NUM_THREADS": "100000"})


# ---------------------------------------------------------------------------------------------- training CLI
def _fuzz_train_cli():
    import contextlib
    import io
    import tempfile

    from q4core.train import main

    options = {   # option: (valid values, invalid values)
        "--lr": (["0.05", "1e-3", "3", "1e10"], ["0", "-1", "nan", "inf", "1e39", "abc", ""]),
        "--batch-size": (["1", "7", "64", "1000000"], ["0", "-3", "2.5", "x"]),
        "--max-steps": (["1", "2"], ["0", "-1", "1.0"]),
        "--epochs": (["0", "1"], ["-1", "one"]),
        "--threads": (["1", "2", "100000"], ["0", "-2"]),
        "--seed": (["0", "7", str(2**40)], ["-1", "s"]),
        "--optimizer": (["sgd", "adam"], ["rmsprop"]),
        "--recipe": (["fp32", "q4", "fp16"], ["q3", "{bad json", "[]"]),
        "--config": (['{"simulate": true}', "{}", '{"loss_scale_window": 100}'],
                     ['{"threads": 0}', '{"nope": 1}', "[1]", "{bad", '{"loss_scale_init": -1}']),
    }
    # what an error may call an option besides its own name: --config holds recipe fields
    aliases = {"--config": ["recipe"], "--recipe": ["recipe"], "--seed": ["seed"]}

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data):
        bad, argv = [], ["--task", "digits", "--model", "mlp", "--no-progress"]
        for option, (good, wrong) in options.items():
            if not data.draw(st.booleans()):
                continue
            if _rarely(data.draw, 5):
                bad.append(option)
                argv += [option, data.draw(st.sampled_from(wrong))]
            else:
                argv += [option, data.draw(st.sampled_from(good))]
        if "--max-steps" not in argv:
            argv += ["--max-steps", "2"]
        with tempfile.TemporaryDirectory() as folder:
            out, ck = Path(folder, "r.json"), Path(folder, "ck.npz")
            argv += ["--out", str(out), "--checkpoint", str(ck)]
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    code = main(argv)
                except SystemExit as exc:      # argparse: a value of the wrong type
                    code = exc.code
            left = sorted(p.name for p in Path(folder).iterdir())
            event(f"exit status {code}")
            if bad:
                assert code == 2, (argv, code, err.getvalue())
                names = bad + [alias for option in bad for alias in aliases.get(option, [])]
                assert _names_one_of(err.getvalue(), names), (bad, err.getvalue())
                assert left == [], left
                return
            assert code in (0, 1), (argv, code, err.getvalue())
            result = json.loads(out.read_text())
            assert (result["stopped"] is None) == (code == 0)
            if code == 0:
                assert 0.0 <= result["test_accuracy"] <= 1.0
            assert set(left) <= {"r.json", "ck.npz"}, left
    run()


def test_training_cli_options_keep_the_contract():
    _isolated("_fuzz_train_cli")


# ---------------------------------------------------------------------------------------------- --data files
@st.composite
def npz_contents(draw):
    """What a user might put in a --data file: the four arrays (sometimes a validation pair, now and then one
    missing), each of a random dtype and shape; each kind of trouble (empty splits, NaN, text, vectors of the
    wrong rank, one class, labels negative, fractional, huge, sparse, too few or 2-d) turns up now and then."""
    n_train = 0 if _rarely(draw, 12) else draw(st.integers(1, 30))
    n_test = 0 if _rarely(draw, 12) else draw(st.integers(1, 10))
    feat = () if _rarely(draw, 12) else tuple(draw(st.sampled_from([(4,), (3, 3), (1, 3, 3), (2, 2, 2, 2)])))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    classes = 1 if _rarely(draw, 12) else draw(st.sampled_from([2, 3, 10]))

    def features(n):
        kind = draw(st.sampled_from(["float32", "float64", "int16", "uint8", "bool", ">f4"]))
        if _rarely(draw, 12):
            kind = draw(st.sampled_from(["nan", "inf", "str", "complex64"]))
        x = rng.normal(size=(n,) + feat) * draw(st.sampled_from([1.0, 1e-30, 1e30]))
        if kind in ("nan", "inf") and x.size:
            x.flat[0] = np.nan if kind == "nan" else np.inf
        with warnings.catch_warnings():     # 1e30 as int16 is garbage, and garbage is fine here
            warnings.simplefilter("ignore")
            return x.astype({"nan": "float64", "inf": "float64", "str": "U2"}.get(kind, kind))

    def labels(n):
        y = (np.arange(n) % classes).astype(draw(st.sampled_from(["int64", "uint8", "float32", "int32", ">i8"])))
        trouble = draw(st.sampled_from(["negative", "fraction", "huge", "sparse", "short", "2-d"])) \
            if _rarely(draw, 8) else None
        if trouble == "short":
            return y[:-1]
        if trouble == "2-d":
            return y[:, None]
        if n and trouble:
            y = y.astype(np.float64)
            y[0] = {"negative": -1, "fraction": 0.5, "huge": 2.0**62, "sparse": 5000}[trouble]
        return y

    arrays = {"X_train": features(n_train), "y_train": labels(n_train),
              "X_test": features(n_test), "y_test": labels(n_test)}
    if draw(st.booleans()):
        n_val = 0 if _rarely(draw, 12) else draw(st.integers(1, 5))
        arrays.update(X_val=features(n_val), y_val=labels(n_val))
    if _rarely(draw, 12):
        del arrays[draw(st.sampled_from(sorted(arrays)))]
    return arrays


def _check_task(task):
    assert task.n_classes >= 2
    for X, y in ((task.X_train, task.y_train), (task.X_val, task.y_val), (task.X_test, task.y_test)):
        assert len(X) == len(y) >= 1 and X.dtype == np.float32 and np.isfinite(X).all()
        assert y.dtype == np.int64 and y.min() >= 0 and y.max() < task.n_classes
        assert X.shape[1:] == task.X_train.shape[1:] and X.ndim in (2, 4)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(arrays=npz_contents(), seed=st.integers(0, 3))
def test_data_file_contents_give_a_task_or_a_clear_value_error(tmp_path_factory, arrays, seed):
    from q4core.tasks import load_npz_task
    from q4core.train import train
    path = tmp_path_factory.mktemp("data") / "d.npz"
    np.savez(path, **arrays)
    try:
        task = load_npz_task(path, seed)
    except ValueError as exc:
        assert re.search(r"\b[Xy]_(train|val|test)\b|labels|data file", str(exc)), str(exc)
        event(f"ValueError: {str(exc)[:30]}")
        return
    event("a task")
    _check_task(task)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = train(data=path, model="mlp", epochs=1, max_steps=1, progress=False, seed=seed)
    if r["stopped"] is None:
        assert 0.0 <= r["test_accuracy"] <= 1.0
    else:       # features of 1e30 overflow float32 arithmetic: a clear stop, no number
        event("training stopped")
        assert r["stopped"].startswith("training stopped: ") and r["test_accuracy"] is None


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(content=st.one_of(st.binary(max_size=300), st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06" + bytes(18),
                                                                    b"\x93NUMPY\x01\x00v\x00"])),
       cut=st.integers(0, 2000))
def test_any_bytes_in_a_data_file_or_checkpoint_are_a_value_error(tmp_path_factory, content, cut):
    """Random bytes, and real archives cut short anywhere: a ValueError naming the file, nothing unpickled."""
    from q4core.checkpoint import load_checkpoint, save_checkpoint
    from q4core.nn.models import build_model
    from q4core.tasks import load_npz_task
    folder = tmp_path_factory.mktemp("bytes")
    model = build_model("mlp", (4,), 3, seed=0)
    save_checkpoint(folder / "whole.npz", model)
    whole = (folder / "whole.npz").read_bytes()
    for name, data in (("random.npz", content), ("cut.npz", whole[:cut % len(whole)])):
        path = folder / name
        path.write_bytes(data)
        with pytest.raises(ValueError, match=re.escape(name)):
            load_npz_task(path)
        before = {k: v.copy() for k, v in model.state_dict().items()}
        with pytest.raises(ValueError, match=re.escape(name)):
            load_checkpoint(path, model)
        assert all(np.array_equal(before[k], v, equal_nan=True) for k, v in model.state_dict().items())


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), optimizer=st.sampled_from(["sgd", "adam"]))
def test_a_tampered_checkpoint_loads_whole_or_is_refused_naming_the_entry(tmp_path_factory, data, optimizer):
    from q4core.checkpoint import load_checkpoint, save_checkpoint
    from q4core.nn.models import build_model
    from q4core.nn.optim import SGD, Adam
    make_opt = {"sgd": lambda m: SGD(list(m.named_parameters()), lr=0.1),
                "adam": lambda m: Adam(list(m.named_parameters()), lr=0.1)}[optimizer]
    folder = tmp_path_factory.mktemp("ck")
    source = build_model("mlp", (4,), 3, seed=0)
    save_checkpoint(folder / "ck.npz", source, make_opt(source), meta={"epoch": 1})
    with np.load(folder / "ck.npz") as f:
        state = dict(f)
    entry = data.draw(st.sampled_from(sorted(state)))
    how = data.draw(st.sampled_from(["float16", "float64", "int32", "bool", "complex64", "U1", "nan", "inf",
                                     "drop", "row", "extra", "0-d"]))
    value = state[entry]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # making the bad file may warn; loading it must not
        if how == "drop":
            del state[entry]
        elif how == "extra":
            state[entry + "_extra"] = value
        elif how == "row":
            state[entry] = value.reshape(-1)[:1]
        elif how == "0-d":
            state[entry] = np.asarray(value.reshape(-1)[0] if value.size else 0)
        elif how in ("nan", "inf"):
            state[entry] = np.full(value.shape, np.nan if how == "nan" else np.inf, np.float32)
        else:
            try:
                state[entry] = value.astype(how) if how != "U1" else np.full(value.shape, "a")
            except ValueError:          # the metadata text as a number
                state[entry] = np.full(value.shape, "a")
    np.savez(folder / "bad.npz", **state)
    model = build_model("mlp", (4,), 3, seed=1)
    opt = make_opt(model)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    slots = {k: v.copy() for k, v in opt.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            load_checkpoint(folder / "bad.npz", model, opt)
        except ValueError as exc:
            event(f"refused ({how})")
            name = entry.split("/", 1)[1] if entry.startswith("optim/") else entry
            module = entry.rsplit("/", 1)[0] + ":"        # a module's buffers are checked together
            assert name in str(exc) or (entry.startswith("buffer/") and module in str(exc)), (entry, how, exc)
            assert all(np.array_equal(before[k], v, equal_nan=True) for k, v in model.state_dict().items())
            assert all(np.array_equal(slots[k], v) for k, v in opt.state_dict().items())
            return
    event(f"loaded ({how})")
    assert all(np.isfinite(p.data).all() for p in model.parameters())
    loaded = model.state_dict()
    for key, value in state.items():
        if key.startswith("param/"):
            assert np.array_equal(loaded[key], value.astype(np.float32)), key


# ---------------------------------------------------------------------------------------------- faults
def _start_training(folder, epochs=400):
    cmd = [sys.executable, "-m", "q4core.train", "--task", "digits", "--model", "mlp", "--epochs", str(epochs),
           "--checkpoint", str(folder / "ck.npz"), "--out", str(folder / "r.json"), "--no-progress"]
    # a test runner started in the background (nohup, `cmd &`) passes SIGINT on as ignored, and Python then
    # installs no KeyboardInterrupt handler: give the child the default disposition, as a terminal would
    return subprocess.Popen(cmd, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.002)
    return False


def _temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _assert_old_or_new_complete(folder, old_meta):
    """The checkpoint is the old complete one or a new complete one; --out is absent or complete JSON."""
    from q4core.checkpoint import load_checkpoint
    from q4core.nn.models import build_model
    from q4core.nn.optim import SGD
    model = build_model("mlp", (64,), 10, seed=0)
    meta = load_checkpoint(folder / "ck.npz", model, SGD(list(model.named_parameters()), lr=0.1))
    assert meta == old_meta or (meta["seed"] == 0 and meta["epoch"] >= 1), meta
    if (folder / "r.json").exists():
        json.loads((folder / "r.json").read_text())


@pytest.mark.parametrize("when", ["starting", "writing a checkpoint", "training"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_killed_training_leaves_old_or_new_complete_files(tmp_path, sig, when):
    from q4core.checkpoint import save_checkpoint
    from q4core.nn.models import build_model
    from q4core.nn.optim import SGD
    old = build_model("mlp", (64,), 10, seed=0)
    old_meta = {"epoch": 0, "old": True}
    save_checkpoint(tmp_path / "ck.npz", old, SGD(list(old.named_parameters()), lr=0.1), meta=old_meta)
    first = os.stat(tmp_path / "ck.npz").st_mtime_ns
    proc = _start_training(tmp_path)
    try:
        if when == "starting":
            time.sleep(0.3)
        elif when == "writing a checkpoint":    # best effort: the moment a temporary shows up
            _wait_for(lambda: _temporaries(tmp_path) or proc.poll() is not None)
        else:                                   # some epochs in: the old checkpoint has been replaced
            _wait_for(lambda: os.stat(tmp_path / "ck.npz").st_mtime_ns != first or proc.poll() is not None)
            time.sleep(0.5)
        assert proc.poll() is None, "the training ended before the signal"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGINT:
        if when != "starting":     # during imports Python itself reports the interrupt
            assert proc.returncode == 130, err
            assert "interrupted" in err and "Traceback" not in err, err
        assert _temporaries(tmp_path) == []
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "r.json").exists()
    _assert_old_or_new_complete(tmp_path, old_meta)
    # the next run over the same files cleans up what a killed writer left and writes complete files
    rerun = _start_training(tmp_path, epochs=1)
    rerun.communicate(timeout=120)
    assert rerun.returncode == 0
    assert _temporaries(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz", "r.json"]
    _assert_old_or_new_complete(tmp_path, old_meta)
    assert json.loads((tmp_path / "r.json").read_text())["stopped"] is None
