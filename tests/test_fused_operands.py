"""Fused operand makers (q4core/src/fused_kernels.h via q4core.quant) against the numpy reference, bit for bit,
and the engine with them against the engine without them (``QuantGemm.fused = False``)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from q4core import gemm, quant, scaling
from q4core.formats import INT4_SYM, RADIX4_FP4, RADIX4_FP4_ODD, UINT4, RadixFP
from q4core.nn import SGD, Adam, softmax_cross_entropy
from q4core.nn.models import build_model
from q4core.nn.qgemm import QuantGemm, _rescale
from q4core.recipe import get_recipe

SIZES = [0, 1, 7, 8, 9, 15, 16, 127, 128, 129, 136, 255, 1000, 4097, 8193, 70001]


def same(a, b):
    assert a == b or (a != a and b != b), (a, b)


def wide_values(rng, n, dtype):
    """Magnitudes over many decades, both signs, some exact zeros and signed zeros."""
    x = rng.standard_normal(n) * np.exp2(rng.uniform(-20, 20, n))
    x[rng.random(n) < 0.05] = 0.0
    x[rng.random(n) < 0.02] = -0.0
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
def test_sawb_and_minmax_equal_the_reference(n, dtype):
    rng = np.random.default_rng(n)
    for x in (wide_values(rng, n, dtype), (rng.standard_normal(n) * 0.05).astype(dtype)):
        same(quant.sawb_clip(x), scaling.sawb_clip(x))
        for unsigned in (False, True):
            same(quant.minmax_clip(x, unsigned), scaling.minmax_clip(x, unsigned))
        if n >= 8:
            shaped = x[: n - n % 4].reshape(4, -1)
            same(quant.sawb_clip(shaped), scaling.sawb_clip(shaped))
            same(quant.sawb_clip(shaped.T), scaling.sawb_clip(shaped.T))   # F order: the reference
            same(quant.minmax_clip(shaped[:, ::3]), scaling.minmax_clip(shaped[:, ::3]))


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(st.sampled_from([np.float32, np.float64]), hnp.array_shapes(max_dims=3, max_side=40),
                  elements=st.floats(-1e6, 1e6, width=32)))
def test_sawb_and_minmax_hypothesis(x):
    same(quant.sawb_clip(x), scaling.sawb_clip(x))
    same(quant.minmax_clip(x), scaling.minmax_clip(x))
    same(quant.minmax_clip(x, True), scaling.minmax_clip(x, True))


def test_statistics_corner_cases():
    z = np.zeros((3, 5), np.float32)
    assert quant.sawb_clip(z) == 0.0 == scaling.sawb_clip(z)
    assert quant.minmax_clip(-z) == 0.0
    top = np.array([np.finfo(np.float32).max, -np.finfo(np.float32).max], np.float32)
    same(quant.sawb_clip(top), scaling.sawb_clip(top))             # squares beyond float32, not float64
    big = np.array([1e200, -3e200, 5.0])                             # float64 squares overflow to Inf
    same(quant.sawb_clip(big), scaling.sawb_clip(big))
    ints = np.arange(-5, 9).reshape(2, 7)                            # other dtypes: the reference
    same(quant.sawb_clip(ints), scaling.sawb_clip(ints))
    same(quant.minmax_clip(ints), scaling.minmax_clip(ints))
    for bad in (np.nan, np.inf, -np.inf):
        for dtype in (np.float32, np.float64):
            x = np.ones(300, dtype)
            x[257] = bad
            with pytest.raises(ValueError, match="w contains NaN or Inf"):
                quant.sawb_clip(x)
            with pytest.raises(ValueError, match="x contains NaN or Inf"):
                quant.minmax_clip(x)


def reference_gradient(fmt0, fmt1, g, scale):
    c0 = fmt0.encode(g, scale, backend="numpy")
    c1 = c0 if fmt1 is None else fmt1.encode(g, scale, backend="numpy")
    gmax = max(float(g.max()), -float(g.min())) if g.size else 0.0
    return c0, c1, gmax


def check_gradient(fmt0, fmt1, g, scale, threads=None):
    c0, c1, gmax = quant.encode_gradient(fmt0, fmt1, g, scale, threads=threads)
    r0, r1, rmax = reference_gradient(fmt0, fmt1, g, scale)
    np.testing.assert_array_equal(c0, r0)
    np.testing.assert_array_equal(c1, r1)
    assert c0.dtype == r0.dtype and c0.shape == r0.shape
    same(gmax, rmax)


PAIRS = [(RADIX4_FP4, RADIX4_FP4_ODD), (RADIX4_FP4, None), (RADIX4_FP4_ODD, RADIX4_FP4),
         (RadixFP(4, 3, 0, "log"), RadixFP(4, 3, 1, "log")), (INT4_SYM, None)]


@pytest.mark.parametrize("fmts", PAIRS, ids=repr)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradient_encode_equals_the_reference(fmts, dtype):
    rng = np.random.default_rng(11)
    for n in SIZES:
        g = wide_values(rng, n, dtype)
        for scale in (2.0 ** -20, 2.0 ** -3, 1.0, 3.7e5):
            check_gradient(*fmts, g, scale)
    # ties: every threshold and level boundary at this scale, and one ulp either side
    fmt0 = fmts[0]
    thr = fmt0.thresholds if isinstance(fmt0, RadixFP) else np.arange(-7.5, 8.0)
    scale = 2.0 ** -5
    t = np.concatenate([thr, -thr]) * scale
    g = np.concatenate([t, np.nextafter(t, np.inf), np.nextafter(t, -np.inf)]).astype(dtype)
    check_gradient(*fmts, g, scale)
    # saturation at the top and flush below the bottom
    check_gradient(*fmts, np.array([1e30, -1e30, 1e-30, -1e-30, 0.0, -0.0], dtype), 1.0)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(st.sampled_from([np.float32, np.float64]), hnp.array_shapes(min_dims=1, max_dims=3, max_side=50),
                  elements=st.floats(-1e4, 1e4, width=32)),
       st.sampled_from(PAIRS), st.floats(1e-6, 1e3), st.booleans())
def test_gradient_encode_hypothesis(g, fmts, scale, strided):
    check_gradient(*fmts, g[..., ::-1] if strided else g, scale)


@pytest.mark.parametrize("n", [3 * (1 << 18) + 5, (1 << 16) + 1])
def test_gradient_encode_identical_for_any_thread_count(n):
    g = wide_values(np.random.default_rng(n), n, np.float32)
    for threads in (1, 2, 3):
        check_gradient(RADIX4_FP4, RADIX4_FP4_ODD, g, 2.0 ** -12, threads)


def test_gradient_encode_bad_input():
    g = np.ones((4, 70000), np.float32)
    for bad in (np.nan, np.inf):
        g[3, 69999] = bad
        with pytest.raises(ValueError, match="g contains NaN or Inf"):
            quant.encode_gradient(RADIX4_FP4, RADIX4_FP4_ODD, g, 1.0)
    with pytest.raises(ValueError, match="scale must be a finite positive"):
        quant.encode_gradient(RADIX4_FP4, None, g[:, :2], 0.0)
    with pytest.raises(ValueError, match="fmt_dw has no compiled path"):
        quant.encode_gradient(RADIX4_FP4, RadixFP(4, 3, 0, "stochastic"), g[:, :2], 1.0)
    with pytest.raises(TypeError, match="g must be float32 or float64"):
        quant.encode_gradient(RADIX4_FP4, None, g.astype(np.float16), 1.0)
    c0, c1, gmax = quant.encode_gradient(RADIX4_FP4, RADIX4_FP4_ODD, np.zeros((0, 3), np.float32), 1.0)
    assert c0.shape == c1.shape == (0, 3) and gmax == 0.0


# ---------------------------------------------------------------------------- the engine
RECIPES = ["q4", "q4+minmax", "q4+no-tpr", "q4+int4-grad", "q4+global-loss-scale", "q4+fixed-grad-scale",
           "q4+log-rounding", "q4+static-scale", "q4+gradscale-threshold", "fwd-max"]


def engine_pair(recipe):
    layers = []
    for fused in (True, False):
        qg = QuantGemm().configure(get_recipe(recipe, threads=1), recipe)
        qg.fused = fused
        layers.append(qg)
    assert layers[0].fused, "the fused makers are not in use: is q4core._quant built?"
    return layers


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("signed_input", [False, True])
def test_engine_fused_equals_unfused(recipe, signed_input):
    rng = np.random.default_rng(5)
    fused, plain = engine_pair(recipe)
    for _ in range(3):
        x = rng.standard_normal((33, 70)).astype(np.float32)
        x = x if signed_input else np.abs(x)
        w = (rng.standard_normal((70, 21)) * 0.1).astype(np.float32)
        gy = (rng.standard_normal((33, 21)) * 10.0 ** rng.uniform(-6, 0)).astype(np.float32)
        outs = []
        for qg in (fused, plain):
            wop = qg.prepare_weight(w)
            y, ctx = qg.forward(x, wop)
            gx, gw = qg.backward(gy, ctx)
            outs.append((wop.op.units, wop.op.scale, ctx.xop.units, ctx.xop.scale, y, gx, gw,
                         qg.gradscale.exp, qg.last.get("grad_scale"), qg.alpha.grad.copy()))
        for a, b in zip(*outs):
            np.testing.assert_array_equal(a, b)
            assert np.asarray(a).dtype == np.asarray(b).dtype


def test_engine_refuses_nonfinite_gradients_as_before():
    for qg in engine_pair("q4"):
        wop = qg.prepare_weight(np.ones((4, 3), np.float32))
        _, ctx = qg.forward(np.ones((2, 4), np.float32), wop)
        qg.backward(np.ones((2, 3), np.float32), ctx)                   # GradScale set: one-pass path
        _, ctx = qg.forward(np.ones((2, 4), np.float32), wop)
        with pytest.raises(FloatingPointError, match="NaN or Inf"):
            qg.backward(np.array([[1.0, np.nan, 0.0], [0.0, 0.0, 0.0]], np.float32), ctx)


def loss_history(name, shape, ncls, x, y, optimizer, recipe, fused, steps=5):
    model = build_model(name, shape, ncls, seed=3)
    model.set_policy(get_recipe(recipe, threads=1))
    gemms = [m for _, m in model.named_modules() if isinstance(m, QuantGemm)]
    assert gemms and all(g.fused for g in gemms)
    for g in gemms:
        g.fused = fused
    named = list(model.named_parameters())
    opt = SGD(named, lr=0.05) if optimizer == "sgd" else Adam(named, lr=3e-3)
    out = []
    for _ in range(steps):
        model.zero_grad()
        loss, grad = softmax_cross_entropy(model.forward(x), y)
        model.backward(grad)
        model.add_regularisation()
        opt.step()
        out.append(float(loss))
    return out


@pytest.mark.parametrize("model,recipe", [("cnn", "q4"), ("mlp", "q4+all-q4"), ("char_lstm", "q4"),
                                          ("char_transformer", "q4+minmax")])
def test_short_training_identical_loss_history(model, recipe):
    rng = np.random.default_rng(7)
    if model == "cnn":
        x = rng.standard_normal((16, 1, 12, 12)).astype(np.float32)
        args = ((1, 12, 12), 10, x, rng.integers(0, 10, 16), "sgd")
    elif model == "mlp":
        args = ((40,), 5, rng.standard_normal((32, 40)).astype(np.float32), rng.integers(0, 5, 32), "sgd")
    else:
        args = ((12,), 20, rng.integers(0, 20, (4, 12)), rng.integers(0, 20, (4, 12)), "adam")
    fused = loss_history(model, *args, recipe, True)
    plain = loss_history(model, *args, recipe, False)
    assert fused == plain


@settings(max_examples=80, deadline=None)
@given(st.sampled_from([np.int32, np.int64]), st.booleans(),
       st.tuples(st.integers(0, 70), st.integers(0, 70)), st.floats(1e-30, 1e30), st.integers(0, 2 ** 32))
def test_rescale_equals_the_engine_expression(dtype, exact, shape, factor, seed):
    rng = np.random.default_rng(seed)
    bound = 2 ** 24 - 1 if exact else np.iinfo(dtype).max
    acc = rng.integers(-bound, bound, shape, dtype=dtype, endpoint=True)
    with np.errstate(over="ignore"):
        ref = _rescale(acc, factor, exact)
    out = quant.rescale_unchecked(acc, factor, exact)
    assert out.dtype == np.float32 and out.shape == acc.shape
    np.testing.assert_array_equal(out.view(np.uint32), ref.view(np.uint32))


def test_rescale_identical_for_any_thread_count_and_refuses_bad_input():
    acc = np.random.default_rng(2).integers(-2 ** 40, 2 ** 40, (700, 1100))
    outs = [quant.rescale_unchecked(acc, 3.1e-7, False, threads) for threads in (1, 2, 3)]
    for out in outs:
        np.testing.assert_array_equal(out, _rescale(acc, 3.1e-7, False))
    with pytest.raises(TypeError, match="acc must be native int32 or int64"):
        quant.rescale_unchecked(acc.astype(np.float64), 1.0, False)
    with pytest.raises(ValueError, match="C-contiguous"):
        quant.rescale_unchecked(acc.T, 1.0, False)


def reference_pact_backward(x, g, clip):
    over = (x >= np.float32(clip)).astype(np.float32)
    return g * ((x >= 0).astype(np.float32) - over), float(np.sum(g * over, dtype=np.float64))


@settings(max_examples=60, deadline=None)
@given(hnp.array_shapes(min_dims=1, max_dims=4, max_side=40), st.floats(1e-3, 10.0), st.integers(0, 2 ** 32))
def test_pact_backward_equals_the_reference(shape, clip, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    x.flat[:: 7] = np.float32(clip)                      # ties at the clip and at zero
    x.flat[3:: 11] = 0.0
    g = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-6, 6, shape)).astype(np.float32)
    out, total = quant.pact_backward_unchecked(x, g, clip)
    ref, ref_total = reference_pact_backward(x, g, clip)
    np.testing.assert_array_equal(out.view(np.uint32), ref.view(np.uint32))
    assert total == ref_total


@pytest.mark.parametrize("shape", [(64, 16, 28, 28), (3, 8193), (8192,), (8193,), (0, 4)])
def test_pact_backward_long_sums_and_threads(shape):
    # beyond numpy's 8192-element buffers, which set the order of the float64 sum
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    g = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-6, 6, shape)).astype(np.float32)
    ref, ref_total = reference_pact_backward(x, g, 0.5)
    for threads in (1, 2, 3):
        out, total = quant.pact_backward_unchecked(x, g, 0.5, threads)
        np.testing.assert_array_equal(out, ref)
        assert total == ref_total
    with pytest.raises(ValueError, match="one shape"):
        quant.pact_backward_unchecked(x, g[..., :0], 0.5)
    with pytest.raises(TypeError, match="g must be native float32"):
        quant.pact_backward_unchecked(x, g.astype(np.float64), 0.5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (64, 64), (70, 21), (130, 300)])
def test_encode_packed_weight_equals_encode_then_pack(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    w = (rng.standard_normal(shape) * 0.3).astype(dtype)
    w.flat[::5] = 0.05 * (np.arange(w.size)[::5] % 17 - 8 + 0.5)       # ties between levels
    for fmt in (INT4_SYM, UINT4):
        codes, packed = quant.encode_packed_weight_unchecked(fmt, w, 0.05)
        ref = fmt.encode(w, 0.05, backend="numpy")
        assert codes.dtype == ref.dtype
        np.testing.assert_array_equal(codes, ref)
        for got, want in zip(packed._kernel_cache["layout"], gemm.pack_int4(ref)._kernel_cache["layout"]):
            np.testing.assert_array_equal(got, want)
        a = rng.integers(0, 16, (5, shape[0])).astype(np.uint8)
        np.testing.assert_array_equal(gemm.int4_matmul(a, packed), a.astype(np.int64) @ ref.astype(np.int64))
    w[1 % shape[0], 0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        quant.encode_packed_weight_unchecked(INT4_SYM, w, 0.05)


def _moment_inputs(rng, n, dtype, case):
    """Wide magnitudes; few values (ties, exact sums); NaN / Inf / signed zeros; squares beyond float32."""
    if case == 0:
        return wide_values(rng, n, dtype)
    if case == 1:
        return (rng.integers(-3, 4, n) * 0.5).astype(dtype)
    if case == 2:
        x = wide_values(rng, n, dtype)
        if n:
            pick = rng.integers(0, n, 1 + n // 40)
            x[pick] = rng.choice(np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0], dtype), pick.size)
        return x
    big = np.finfo(dtype).max
    return (rng.uniform(-1, 1, n) * big).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_moments_bit_identical_on_random_sizes(dtype):
    """_quant.moments' sums in numpy's pairwise order (8 accumulators per block of <= 128, halves
    rounded down to a multiple of 8), max |x| and its flags, on every size 0..300 and random sizes
    up to 5000, with NaN / Inf / ties / signed zeros / float32 squares beyond float32."""
    from q4core import _quant
    rng = np.random.default_rng(20261201)
    sizes = list(range(301)) + [int(s) for s in rng.integers(301, 5001, 150)] + [1024, 4096, 4097, 5000]
    for n in sizes:
        for case in range(4):
            x = _moment_inputs(rng, n, dtype, case)
            if n > 3 and case == 2 and n % 5 == 0:
                x[:] = np.nan                          # no value for the max at all
            sq, ab, top, flags = _quant.moments(x)
            d = x.astype(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                same(sq, float(np.add.reduce(d * d)))
                same(ab, float(np.add.reduce(np.abs(d))))
                a = np.abs(d)[~np.isnan(d)]
            same(top, float(a.max()) if a.size else 0.0)
            assert flags == (0 if np.isfinite(d).all() else _quant.FLAG_NAN | _quant.FLAG_INF), (n, case)
            if n >= 8 and case == 0:                  # an unaligned start: the same sums
                y = np.empty(n + 1, dtype)[1:]
                y[:] = x
                assert _quant.moments(y)[:3] == (sq, ab, top)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 70), st.integers(0, 70), st.sampled_from([np.float32, np.float64]),
       st.integers(0, 2 ** 32))
def test_encode_pack_b_any_shape(K, N, dtype, seed):
    """encode_pack_b (four rows per packed lane, partial last k-group) equals encode then pack_b,
    its packed buffer starts on the GEMM's operand alignment and is writeable."""
    from q4core import _gemm, _quant
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((K, N)) * 0.3).astype(dtype)
    for fmt in (INT4_SYM, UINT4):
        kind, params = quant._cached_params(fmt)
        codes, packed, Kp, Np, sums, flags = _quant.encode_pack_b(w, 0.05, kind, params)
        ref = fmt.encode(w, 0.05, backend="numpy")
        assert flags == 0 and codes.shape == (K, N)
        np.testing.assert_array_equal(codes.view(ref.dtype), ref)
        want, wKp, wNp, wsums, _ = _gemm.pack_b(ref.view(np.uint8), np.arange(256).astype(np.uint8)
                                                 .view(np.int8)[None, :])
        assert (Kp, Np) == (wKp, wNp)
        assert packed.dtype == np.int8 and packed.shape == (Kp * Np,) and packed.flags.writeable
        assert packed.ctypes.data % _gemm.OPERAND_ALIGN == 0 and packed.flags.c_contiguous
        np.testing.assert_array_equal(packed, want[0])
        np.testing.assert_array_equal(sums, wsums[0])


def test_compiled_makers_refuse_bad_arrays_at_c_level():
    """The C-level checks keep the documented errors: dtype / byte order -> TypeError, layout -> ValueError."""
    from q4core import _quant
    x = np.linspace(-1, 1, 64).astype(np.float32).reshape(8, 8)
    for bad in (x.astype(">f4"), x.astype(np.float16), x.astype(np.int32), x.astype(np.longdouble)):
        with pytest.raises(TypeError, match="x must be float32 or float64"):
            _quant.moments(bad)
        with pytest.raises(TypeError, match="x must be float32 or float64"):
            _quant.minmax(bad, 1)
    for bad in (x.T, x[:, ::2]):
        with pytest.raises(ValueError, match="aligned, C-contiguous"):
            _quant.moments(bad)
    unaligned = np.zeros(257, np.uint8)[1:].view(np.float32)
    assert not unaligned.flags.aligned
    with pytest.raises(ValueError, match="aligned, C-contiguous"):
        _quant.moments(unaligned)
    acc = np.arange(64, dtype=np.int32).reshape(8, 8)
    for bad in (acc.astype(">i4"), acc.astype(np.int16), acc.astype(np.uint32), acc.astype(np.float32)):
        with pytest.raises(TypeError, match="acc must be native int32 or int64"):
            _quant.rescale(bad, 1.0, True, 1)
    for ok in (acc.astype(np.intc), acc.astype(np.longlong), acc.astype(np.int64)):
        np.testing.assert_array_equal(_quant.rescale(ok, 0.5, True, 1), acc * np.float32(0.5))
    kind, params = quant._cached_params(INT4_SYM)
    out = np.empty(64, np.uint8)
    with pytest.raises(ValueError, match="writeable"):
        ro = out.copy()
        ro.flags.writeable = False
        _quant.run(kind, _quant.OP_ENCODE, x, ro, 0.1, params, 1)
    with pytest.raises(ValueError, match="match x in dtype"):
        _quant.run(kind, _quant.OP_QUANTIZE, x, np.empty(64, np.float64), 0.1, params, 1)
    _quant.run(kind, _quant.OP_QUANTIZE, x, np.empty(64, np.dtype("=f4")), 0.1, params, 1)
    with pytest.raises(ValueError, match="each out must be"):
        _quant.encode_pair(x, 0.1, kind, params, np.empty(63, np.uint8), None, None, out, 1)
    with pytest.raises(ValueError, match="each out must be"):
        _quant.encode_pair(x, 0.1, kind, params, out, kind, params, np.empty((8, 8), np.uint8).T, 1)
    with pytest.raises(TypeError, match="packed must be uint8"):
        _quant.unpack(np.zeros(4, np.int8), np.zeros(8, np.uint8), False, 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        _quant.unpack(np.zeros((4, 4), np.uint8).T, np.zeros((4, 8), np.uint8), False, 1)
    info = _quant.openmp_info()
    info["simd_clones"] = "changed"                     # a fresh dict per call
    assert _quant.openmp_info()["simd_clones"] != "changed"


def test_the_compiled_makers_refuse_none_before_reading_it():
    """Review finding: the C-level checks read a None argument as an array (undefined behaviour)."""
    from q4core import _quant
    x, g = np.zeros(8, np.float32), np.zeros(8, np.float32)
    for call in (lambda: _quant.moments(None), lambda: _quant.minmax(None, 1), lambda: _quant.round_f16(None),
                 lambda: _quant.rescale(None, 1.0, True, 1), lambda: _quant.pact_backward(None, g, 1.0, 1),
                 lambda: _quant.pact_backward(x, None, 1.0, 1),
                 lambda: _quant.unpack(None, np.zeros(8, np.uint8), True, 1),
                 lambda: _quant.encode_pack_b(None, 0.1, "level", (0, 15))):
        with pytest.raises(TypeError, match="NoneType"):
            call()
