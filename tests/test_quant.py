"""The compiled quantizers (q4core.quant / q4core._quant) against the numpy reference, bit for bit."""
import doctest
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from q4core import (
    _quant,  # noqa: F401  - the suite needs the built extension, never skips it
    quant,
)
from q4core.formats import (
    FP16,
    INT4,
    INT4_SYM,
    INT8,
    LOG10_4BIT,
    RADIX2_FP4,
    RADIX4_FP4,
    RADIX4_FP4_ODD,
    UINT4,
    IntFormat,
    RadixFP,
    pack_nibbles,
    unpack_nibbles,
)

FORMATS = [INT4, INT4_SYM, UINT4, RADIX4_FP4, RADIX4_FP4_ODD, RADIX2_FP4, LOG10_4BIT,
           RadixFP(4, 3, rounding="log"), RadixFP(4, 2), IntFormat(2), IntFormat(3, signed=False)]
SCALES = [1.0, 0.37, 2.0 ** -7, 3.0, 1e-30, 1e30]


def bits(a):
    a = np.asarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def reference(fmt, x, scale, nan_policy="propagate"):
    """(quantize, encode, encode+pack) of the numpy reference."""
    with np.errstate(over="ignore"):
        qv = fmt.quantize(x, scale, nan_policy=nan_policy, backend="numpy")
    xe = np.where(np.isnan(x), 0.0, x).astype(np.asarray(x).dtype)  # encode refuses NaN
    codes = fmt.encode(xe, scale, nan_policy=nan_policy, backend="numpy")
    packed = pack_nibbles(codes) if codes.ndim else None
    return qv, xe, codes, packed


def assert_same(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(bits(got), bits(want))


def check_all_ops(fmt, x, scale, threads=None):
    qv, xe, codes, packed = reference(fmt, x, scale)
    with np.errstate(over="ignore"):
        assert_same(quant.quantize(fmt, x, scale, nan_policy="propagate", threads=threads), qv)
    assert_same(quant.encode(fmt, xe, scale, nan_policy="propagate", threads=threads), codes)
    if packed is not None:
        assert_same(quant.encode_packed(fmt, xe, scale, nan_policy="propagate", threads=threads), packed)


def random_values(rng, n, dtype):
    """Values over many binades plus the specials, in random order."""
    x = rng.standard_normal(n) * np.exp2(rng.integers(-40, 40, n))
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e300, -1e-300, 5e-324])
    take = rng.random(n) < 0.05
    x[take] = rng.choice(specials, take.sum())
    with np.errstate(over="ignore"):
        return x.astype(dtype)


def boundary_values(fmt, scale, dtype):
    """Inputs at, just below and just above every rounding boundary of fmt at this scale."""
    if isinstance(fmt, IntFormat):
        edges = (np.arange(fmt.qmin, fmt.qmax + 1) + 0.5) * scale
        edges = np.concatenate([edges, -edges])
    else:
        edges = np.concatenate([fmt.thresholds * scale, -fmt.thresholds * scale,
                                fmt.magnitudes * scale, -fmt.magnitudes * scale])
    with np.errstate(over="ignore", under="ignore"):
        e = edges.astype(dtype)
        out = [e, np.nextafter(e, dtype(np.inf)), np.nextafter(e, dtype(-np.inf)),
               np.nextafter(np.nextafter(e, dtype(np.inf)), dtype(np.inf))]
    return np.concatenate(out)


# ---------------------------------------------------------------------------- corners, written out
@pytest.mark.parametrize("fmt", FORMATS, ids=repr)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", SCALES)
def test_boundaries_codes_and_specials(fmt, dtype, scale):
    x = boundary_values(fmt, scale, dtype)
    with np.errstate(over="ignore"):
        codes_back = fmt.decode(np.arange(1 << fmt.bits) if not isinstance(fmt, IntFormat)
                                else np.arange(fmt.qmin, fmt.qmax + 1), scale).astype(dtype)
    x = np.concatenate([x, codes_back, np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan], dtype)])
    check_all_ops(fmt, x, scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_written_out_int4_sym_cases(dtype):
    """INT4_SYM (-7..7): the bottom saturates at -7, not -8; ties half to even; one zero."""
    x = np.array([-7.5, -8.0, -7.49, -6.5, -100.0, 7.5, 6.5, 8.0, 0.5, -0.5, 1.5, -2.5, -0.0, 1e30, -1e30],
                 dtype)
    levels = np.array([-7, -7, -7, -6, -7, 7, 6, 7, 0, 0, 2, -2, 0, 7, -7], np.int8)
    assert_same(quant.encode(INT4_SYM, x), levels)
    assert_same(quant.quantize(INT4_SYM, x), levels.astype(dtype))
    assert not np.signbit(quant.quantize(INT4_SYM, x)[levels == 0]).any()    # +0 only
    assert_same(quant.encode_packed(INT4_SYM, x), pack_nibbles(levels))
    # -7 packs as the nibble 0x9, and no code is ever 0x8 (-8)
    assert_same(quant.encode_packed(INT4_SYM, np.array([-8.0, 8.0], dtype)), np.array([0x79], np.uint8))
    # at a scale: -7.5 * s is the tie between -7 and -8, and -8 is not on the grid
    s = 0.25
    assert_same(quant.quantize(INT4_SYM, (x * s).astype(dtype), s), (levels * s).astype(dtype))
    check_all_ops(INT4_SYM, x, s)
    # NaN / Inf policy, as the reference
    bad = np.array([1.0, np.inf, -np.inf, np.nan], dtype)
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        quant.quantize(INT4_SYM, bad)
    out = quant.quantize(INT4_SYM, bad, nan_policy="propagate")
    assert_same(out, INT4_SYM.quantize(bad, nan_policy="propagate", backend="numpy"))
    assert out[2] == -7 and out[1] == 7
    assert_same(quant.encode(INT4_SYM, bad[:3], nan_policy="propagate"), np.array([1, 7, -7], np.int8))
    # empty and strided
    assert_same(quant.encode(INT4_SYM, np.zeros((3, 0), dtype)), np.zeros((3, 0), np.int8))
    assert_same(quant.encode_packed(INT4_SYM, np.zeros((0, 5), dtype)), np.zeros((0, 3), np.uint8))
    base = np.linspace(-9, 9, 73 * 4).astype(dtype).reshape(73, 4)
    view = base[::-3, ::-2]
    check_all_ops(INT4_SYM, view, 0.5)
    check_all_ops(INT4_SYM, view.T, 1.0)


def test_written_out_int4_and_radix4_cases():
    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 7.5, -8.5, 100, -100, -0.0, 0.0, 1e-45], np.float32)
    assert_same(quant.encode(INT4, x), np.array([0, 2, 2, 0, -2, 7, -8, 7, -8, 0, 0, 0], np.int8))
    assert_same(quant.quantize(UINT4, x), np.array([0, 2, 2, 0, 0, 8, 0, 15, 0, 0, 0, 0], np.float32))
    zeros = quant.quantize(INT4, x) == 0
    assert zeros.sum() == 5 and not np.signbit(quant.quantize(INT4, x)[zeros]).any()   # one zero: +0
    r = np.array([0.625, np.nextafter(0.625, 0), 5.0, -1e-9, -0.0, 4.0 ** -6 / 2], np.float64)
    assert_same(quant.quantize(RADIX4_FP4, r), np.array([1, 0.25, 1, -0.0, -0.0, 4.0 ** -6]))
    assert_same(quant.encode(RADIX4_FP4, r), np.array([7, 6, 7, 8, 8, 1], np.uint8))
    assert_same(quant.quantize(RADIX4_FP4_ODD, np.array([1.25, 3.0])), np.array([2.0, 2.0]))
    # pack order: element 2i low nibble, 2i+1 high nibble; odd rows end in a zero high nibble
    assert_same(quant.encode_packed(INT4, np.array([[1.0, -2.0, 3.0]])), np.array([[0xE1, 0x03]], np.uint8))
    assert_same(quant.encode_packed(RADIX4_FP4, np.array([1.0, -1.0], np.float32)), np.array([0xF7], np.uint8))


@pytest.mark.parametrize("fmt", [INT4, INT4_SYM, RADIX4_FP4], ids=repr)
def test_nan_and_inf_policy_matches_reference(fmt):
    for bad in (np.nan, np.inf, -np.inf):
        x = np.array([1.0, bad, 2.0], np.float32)
        for fn in (quant.quantize, quant.encode, quant.encode_packed):
            with pytest.raises(ValueError, match="x contains NaN or Inf"):
                fn(fmt, x)
    x = np.array([np.nan, -np.nan, np.inf, -np.inf, 1.0])
    assert_same(quant.quantize(fmt, x, nan_policy="propagate"),
                fmt.quantize(x, nan_policy="propagate", backend="numpy"))
    for fn in (quant.encode, quant.encode_packed):
        with pytest.raises(ValueError, match="x contains NaN, which has no code"):
            fn(fmt, x, nan_policy="propagate")
    assert_same(quant.encode(fmt, x[2:], nan_policy="propagate"),
                fmt.encode(x[2:], nan_policy="propagate", backend="numpy"))


@pytest.mark.parametrize("shape", [(400_000,), (1001, 333)])
def test_nan_in_a_late_parallel_chunk_is_seen(shape):
    x = np.ones(shape, np.float32)
    x.flat[-2] = np.nan
    for fn in (quant.quantize, quant.encode, quant.encode_packed):
        with pytest.raises(ValueError, match="NaN or Inf"):
            fn(INT4, x, threads=2)
    for fn in (quant.encode, quant.encode_packed):
        with pytest.raises(ValueError, match="no code"):
            fn(RADIX4_FP4, x, nan_policy="propagate", threads=2)
    x.flat[-2] = -np.inf
    assert quant.encode(RADIX4_FP4, x, nan_policy="propagate", threads=2).flat[-2] == 15


@pytest.mark.parametrize("shape", [(0,), (1,), (2,), (0, 3), (3, 0), (1, 1), (5, 1), (4, 7), (2, 3, 5), ()])
@pytest.mark.parametrize("fmt", [INT4, INT4_SYM, UINT4, RADIX4_FP4], ids=repr)
def test_shapes_incl_empty_single_and_scalar(shape, fmt):
    rng = np.random.default_rng(sum(shape) + 7)
    x = rng.standard_normal(shape) * 3
    check_all_ops(fmt, x, 0.5)
    assert quant.quantize(fmt, x).shape == np.shape(x)
    if shape == ():
        with pytest.raises(ValueError, match="dimension"):
            quant.encode_packed(fmt, x)


# ---------------------------------------------------------------------------- sweeps
def strided_view(rng, base):
    """A random non-contiguous view of base: transposes, steps, negative strides."""
    v = base
    if v.ndim >= 2 and rng.random() < 0.5:
        v = np.swapaxes(v, 0, -1)
    index = tuple(slice(None, None, int(rng.choice([1, 2, -1, -2, 3]))) for _ in range(v.ndim))
    return v[index]


def test_seeded_sweep_shapes_strides_dtypes_scales():
    rng = np.random.default_rng(20260101)
    for trial in range(120):
        fmt = FORMATS[trial % len(FORMATS)]
        dtype = (np.float32, np.float64)[trial % 2]
        ndim = int(rng.integers(1, 4))
        shape = tuple(int(s) for s in rng.integers(0, 9, ndim))
        base = random_values(rng, int(np.prod(shape)), dtype).reshape(shape)
        x = strided_view(rng, base)
        scale = float(rng.choice(SCALES)) * float(rng.uniform(0.5, 2))
        check_all_ops(fmt, x, scale, threads=int(rng.integers(1, 3)))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data(), fmt=st.sampled_from(FORMATS), dtype=st.sampled_from([np.float32, np.float64]),
       scale=st.floats(1e-6, 1e6), threads=st.integers(1, 2))
def test_hypothesis_arrays(data, fmt, dtype, scale, threads):
    x = data.draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6),
                             elements=st.floats(width=np.dtype(dtype).itemsize * 8, allow_nan=True)))
    flip = data.draw(st.booleans())
    check_all_ops(fmt, x[..., ::-1] if flip else x, scale, threads)


@pytest.mark.parametrize("shape", [(3 * (1 << 16) + 11,), (1001, 333), (700, 300)])
@pytest.mark.parametrize("fmt", [INT4, INT4_SYM, RADIX4_FP4_ODD], ids=repr)
def test_threads_one_and_two_agree_on_large_arrays(shape, fmt):
    rng = np.random.default_rng(5)
    x = random_values(rng, int(np.prod(shape)), np.float32).reshape(shape)
    x[np.isnan(x)] = 1.0
    for fn in (quant.quantize, quant.encode, quant.encode_packed):
        one = fn(fmt, x, 0.25, nan_policy="propagate", threads=1)
        two = fn(fmt, x, 0.25, nan_policy="propagate", threads=2)
        assert_same(one, two)
    check_all_ops(fmt, x, 0.25, threads=2)


# ---------------------------------------------------------------------------- unpack
@pytest.mark.parametrize("shape", [(0,), (1,), (6,), (5, 7), (3, 4), (2, 0), (2, 1, 3), (300, 1001)])
def test_unpack_matches_reference(shape):
    rng = np.random.default_rng(9)
    n = shape[-1]
    packed = rng.integers(0, 256, shape[:-1] + ((n + 1) // 2,)).astype(np.uint8)
    if n % 2:
        packed[..., -1] &= 0x0F
    for signed in (False, True):
        for threads in (1, 2):
            assert_same(quant.unpack_nibbles(packed, n, signed=signed, threads=threads),
                        unpack_nibbles(packed, n, signed=signed))
    if packed.ndim >= 2 and packed.shape[-1] > 1:
        view = packed[::-1, ::-1]
        assert_same(quant.unpack_nibbles(view, n), unpack_nibbles(np.ascontiguousarray(view), n))


# ---------------------------------------------------------------------------- dispatch and errors
def test_format_methods_dispatch_to_the_compiled_path():
    x = random_values(np.random.default_rng(11), 1000, np.float32)
    x = x[np.isfinite(x)]
    for fmt in FORMATS:
        for backend in ("auto", "cython"):
            assert_same(fmt.quantize(x, 0.3, backend=backend), fmt.quantize(x, 0.3, backend="numpy"))
            assert_same(fmt.encode(x, 0.3, backend=backend), fmt.encode(x, 0.3, backend="numpy"))
    assert quant.supports(INT4) and quant.supports(RADIX4_FP4_ODD)
    assert not quant.supports(INT8) and not quant.supports(FP16)
    assert not quant.supports(IntFormat(4, rounding="stochastic"))
    assert not quant.supports(RadixFP(4, 3, rounding="stochastic")) and not quant.supports(RadixFP(2, 4))


def test_bad_input_raises_precise_errors():
    x = np.ones(4, np.float32)
    for fmt in (INT8, FP16, RadixFP(2, 4), IntFormat(4, rounding="stochastic")):
        with pytest.raises(ValueError, match="fmt"):
            quant.quantize(fmt, x)
    for bad in (np.ones(3, np.float16), np.ones(3, np.complex64), np.array(["a"]), np.ones(2, bool)):
        with pytest.raises(TypeError, match="x must be float32 or float64"):
            quant.encode(INT4, bad)
    for scale in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="scale"):
            quant.encode_packed(INT4, x, scale)
    with pytest.raises(TypeError, match="scale"):
        quant.quantize(INT4, x, "2")
    with pytest.raises(ValueError, match="nan_policy"):
        quant.quantize(INT4, x, nan_policy="omit")
    with pytest.raises(ValueError, match="threads"):
        quant.quantize(INT4, x, threads=0)
    with pytest.raises(TypeError, match="threads"):
        quant.quantize(INT4, x, threads=1.5)
    with pytest.raises(TypeError, match="uint8"):
        quant.unpack_nibbles(np.ones(2, np.int8), 4)
    with pytest.raises(ValueError, match="n="):
        quant.unpack_nibbles(np.ones(2, np.uint8), 5)
    with pytest.raises(ValueError, match="dimension"):
        quant.unpack_nibbles(np.uint8(3), 1)
    # the private kernel entry point checks what it relies on, too
    with pytest.raises(ValueError, match="out"):
        _quant.run("level", _quant.OP_ENCODE, x, np.empty(3, np.uint8), 1.0, (-8, 7), 1)
    with pytest.raises(ValueError, match="contiguous"):
        _quant.run("level", _quant.OP_QUANTIZE, np.ones(8)[::2], np.empty(4), 1.0, (-8, 7), 1)
    with pytest.raises(ValueError, match="range"):
        _quant.run("level", _quant.OP_ENCODE, x, np.empty(4, np.uint8), 1.0, (-128, 127), 1)


def test_unaligned_and_read_only_inputs():
    data = np.linspace(-9, 9, 1000).astype(np.float32).tobytes()
    x = np.frombuffer(b"\0" + data, dtype=np.float32, offset=1)     # misaligned by one byte
    assert not x.flags.aligned and not x.flags.writeable
    for fn, ref in ((quant.quantize, INT4.quantize), (quant.encode, INT4.encode)):
        assert_same(fn(INT4, x, 0.5), ref(np.array(x), 0.5, backend="numpy"))
    assert_same(INT4.quantize(x, 0.5), INT4.quantize(np.array(x), 0.5, backend="numpy"))


def test_big_endian_and_integer_inputs():
    x = np.array([0.4, 1.5, -3.2, 9.0], dtype=">f4")
    assert_same(quant.quantize(INT4, x), INT4.quantize(x.astype(np.float32), backend="numpy"))
    assert_same(quant.encode(INT4, [1, -2, 30]), INT4.encode([1, -2, 30], backend="numpy"))
    # every path gives the native dtype and the native values for byte-swapped input
    for fmt in (INT4, INT4_SYM, RADIX4_FP4):
        for native in (np.float32, np.float64):
            y = np.linspace(-9, 9, 101).astype(native)
            swapped = y.astype(np.dtype(native).newbyteorder())
            want = fmt.quantize(y, 0.3, backend="numpy")
            for got in (quant.quantize(fmt, swapped, 0.3), fmt.quantize(swapped, 0.3, backend="auto"),
                        fmt.quantize(swapped, 0.3, backend="cython"), fmt.quantize(swapped, 0.3, backend="numpy")):
                assert_same(got, want)
            assert_same(quant.encode_packed(fmt, swapped, 0.3), pack_nibbles(fmt.encode(y, 0.3, backend="numpy")))


@pytest.mark.parametrize("fmt,x,scale", [(INT4, np.float32([1.0, 3.4e38]), 6e37),
                                         (INT4_SYM, np.float32([-3.4e38]), 6e37),
                                         (RADIX4_FP4, np.float32([3.0e38]), 3.5e38),
                                         (INT4, np.array([1.7e308]), 1e308)])
def test_finite_input_never_becomes_inf_under_raise(fmt, x, scale):
    # the level's value q * scale is beyond x's dtype: an error naming x and scale, not Inf
    with pytest.raises(ValueError, match=r"x quantized with scale=.* beyond the largest finite"):
        quant.quantize(fmt, x, scale)
    with pytest.raises(ValueError, match=r"x quantized with scale="):
        fmt.quantize(x, scale, backend="numpy")
    with np.errstate(all="raise"):                       # 'propagate' returns Inf, silently, as the reference
        assert_same(quant.quantize(fmt, x, scale, nan_policy="propagate"),
                    fmt.quantize(x, scale, nan_policy="propagate", backend="numpy"))
    assert np.isinf(quant.quantize(fmt, x, scale, nan_policy="propagate")).any()
    # codes do not overflow: encode is unaffected
    assert_same(quant.encode(fmt, x, scale), fmt.encode(x, scale, backend="numpy"))
    # a scale whose top value overflows but these inputs do not reach it: no error
    small = np.zeros(3, x.dtype)
    assert_same(quant.quantize(fmt, small, scale), fmt.quantize(small, scale, backend="numpy"))


@pytest.mark.parametrize("fmt,level", [(INT4, 7), (INT4, -8), (INT4_SYM, -7), (RADIX4_FP4, 1)])
def test_overflow_check_at_the_float32_edge(fmt, level):
    # scales that put |level| * scale right at the float64 value from which the cast to float32
    # gives Inf (2**128 - 2**103, a tie to even): compiled and reference agree on raising
    edge = 2.0 ** 128 - 2.0 ** 103
    x = np.float32([np.sign(level) * np.finfo(np.float32).max])
    outcomes = set()
    for k in range(-3, 4):
        scale = edge / abs(level)
        for _ in range(abs(k)):                          # k ulps up or down
            scale = float(np.nextafter(scale, np.copysign(np.inf, k)))
        try:
            want = fmt.quantize(x, scale, backend="numpy")
        except ValueError:
            outcomes.add("raise")
            with pytest.raises(ValueError, match="x quantized with scale"):
                quant.quantize(fmt, x, scale)
        else:
            outcomes.add("finite")
            assert_same(quant.quantize(fmt, x, scale), want)
    assert outcomes == {"raise", "finite"}               # the edge is inside the swept scales


def test_unpack_refuses_bools_like_the_reference():
    packed = np.array([0x21], np.uint8)
    for bad in (True, np.bool_(False), 2.0):
        with pytest.raises(TypeError, match="n must be"):
            quant.unpack_nibbles(packed, bad)
        with pytest.raises(TypeError, match="n must be"):
            unpack_nibbles(packed, bad)
    with pytest.raises(TypeError, match="signed must be a bool"):
        quant.unpack_nibbles(packed, 2, signed="yes")


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize == 8, reason="longdouble is float64 on this platform")
def test_longdouble_is_refused_by_name():
    x = np.ones(3, np.longdouble)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        quant.quantize(INT4, x)
    with pytest.raises(TypeError, match="x must hold"):
        INT4.quantize(x)


def test_openmp_info_and_thread_default():
    info = quant.openmp_info()
    assert set(info) == {"openmp", "max_threads", "simd_clones"}
    assert info["max_threads"] >= 1
    if not info["openmp"]:
        assert info["max_threads"] == 1
        return
    code = "from q4core import quant; print(quant.openmp_info()['max_threads'])"
    env = dict(os.environ, OMP_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3"


# what a thread count larger than the machine's does, run in a child so that a crash (segfault,
# libgomp abort) fails this test instead of killing pytest
_HUGE_THREADS_CHILD = """
import numpy as np
from q4core import quant
from q4core.formats import INT4, RADIX4_FP4
t = {threads}
x = np.linspace(-9, 9, 1 << 18)
odd = np.linspace(-2, 2, 1001 * 333).reshape(1001, 333)       # odd rows: the row-parallel path
for fmt in (INT4, RADIX4_FP4):
    assert np.array_equal(quant.quantize(fmt, x, threads=t), quant.quantize(fmt, x, threads=1))
    assert np.array_equal(quant.encode(fmt, x, threads=t), quant.encode(fmt, x, threads=1))
    for y in (x, odd):
        assert np.array_equal(quant.encode_packed(fmt, y, threads=t), quant.encode_packed(fmt, y, threads=1))
packed = quant.encode_packed(INT4, odd)
for signed in (False, True):
    assert np.array_equal(quant.unpack_nibbles(packed, 333, signed=signed, threads=t),
                          quant.unpack_nibbles(packed, 333, signed=signed, threads=1))
assert np.array_equal(INT4.quantize(x), quant.quantize(INT4, x, threads=1))
print("ok")
"""


@pytest.mark.parametrize("threads,omp_env", [("100000", None), ("40000", None), ("10 ** 30", None),
                                             ("None", "100000"), ("None", "40000")])
def test_thread_counts_beyond_the_machine_are_clamped(threads, omp_env):
    env = dict(os.environ)
    if omp_env is not None:
        env["OMP_NUM_THREADS"] = omp_env
    out = subprocess.run([sys.executable, "-c", _HUGE_THREADS_CHILD.format(threads=threads)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr[-2000:])


def test_benchmark_runs_and_checks_its_results(capsys):
    from q4core.bench import quantize as bench
    assert bench.main(["--log2n", "11", "--repeat", "1", "--numpy-repeat", "1", "--quantize"]) == 0
    out = capsys.readouterr().out
    assert "int4 encode+pack: compiled, 1 thread" in out and "radix4_fp4 quantize" in out


def test_module_doctests():
    result = doctest.testmod(quant, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 3 and result.failed == 0


@pytest.mark.parametrize("fmt", [INT4_SYM, UINT4, IntFormat(4), IntFormat(2), IntFormat(3, signed=False),
                                 IntFormat(2, signed=False)], ids=repr)
def test_level_encode_at_its_boundaries_on_random_sizes(fmt):
    """The float32 level encoder (16 values per binary search over the bound table, a scalar tail)
    equals the reference on values at, one ulp below and above every level boundary, ties, NaN,
    +-Inf, signed zeros and huge values, for every size 0..100 and random sizes to 5000, at several
    scales; every start offset mod 16 of the 16-wide loop."""
    rng = np.random.default_rng(7)
    for scale in (0.05, 1.0, 3.0e-7, 2.5e5):
        mids = (np.arange(-9, 17) + 0.5) * scale
        near = np.concatenate([mids, np.nextafter(mids.astype(np.float32), np.float32(np.inf)),
                               np.nextafter(mids.astype(np.float32), np.float32(-np.inf))]).astype(np.float32)
        special = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 3e38, -3e38, 1e-45], np.float32)
        sizes = list(range(101)) + [int(s) for s in rng.integers(101, 5001, 12)]
        for n in sizes:
            x = rng.choice(near, n) if n else np.zeros(0, np.float32)
            if n and n % 3 == 0:
                x[rng.integers(0, n, 1 + n // 30)] = rng.choice(special, 1 + n // 30)
            for off in ((0, 5) if n > 5 else (0,)):
                xo = x[off:]
                if np.isfinite(xo).all():
                    np.testing.assert_array_equal(quant.encode(fmt, xo, scale),
                                                  fmt.encode(xo, scale, backend="numpy"))
                else:
                    with pytest.raises(ValueError, match="NaN or Inf"):
                        quant.encode(fmt, xo, scale)
