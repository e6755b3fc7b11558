"""The compiled im2col / col2im and channel-layout copies (q4core._layout) against their numpy references, bit
for bit, and the first layer's skipped input gradient."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from q4core.nn import Conv2d, Linear, Sequential
from q4core.nn import layout as ic
from q4core.recipe import get_recipe

pytestmark = pytest.mark.skipif(not ic.AVAILABLE, reason="q4core._layout is not built")


@st.composite
def geometries(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride, padding = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    H = draw(st.integers(max(1, kh - 2 * padding), 9))
    W = draw(st.integers(max(1, kw - 2 * padding), 9))
    return draw(st.integers(0, 3)), draw(st.integers(1, 4)), H, W, kh, kw, stride, padding


def _values(rng, shape, dtype):
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, endpoint=True, dtype=dtype)
    # magnitudes over many binades, so the order of a pixel's sum shows in its rounding
    v = rng.standard_normal(shape) * 10.0 ** rng.integers(-6, 7, shape)
    return v.astype(dtype)


@settings(max_examples=150, deadline=None)
@given(geometries(), st.sampled_from([np.int8, np.uint8, np.float32, np.int32, np.float64, np.int64]),
       st.integers(1, 2), st.integers(0, 2 ** 32 - 1))
def test_im2col_equals_its_reference(geom, dtype, threads, seed):
    N, C, H, W, kh, kw, stride, padding = geom
    x = _values(np.random.default_rng(seed), (N, C, H, W), dtype)
    got, Ho, Wo = ic.im2col2d(x, kh, kw, stride, padding, threads=threads)
    want, Ho2, Wo2 = ic.im2col2d_reference(x, kh, kw, stride, padding)
    assert (Ho, Wo) == (Ho2, Wo2)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


@settings(max_examples=150, deadline=None)
@given(geometries(), st.integers(1, 2), st.integers(0, 2 ** 32 - 1))
def test_col2im_equals_its_reference_bit_for_bit(geom, threads, seed):
    N, C, H, W, kh, kw, stride, padding = geom
    Ho, Wo = (H + 2 * padding - kh) // stride + 1, (W + 2 * padding - kw) // stride + 1
    cols = _values(np.random.default_rng(seed), (N * Ho * Wo, C * kh * kw), np.float32)
    got = ic.col2im2d(cols, (N, C, H, W), kh, kw, stride, padding, Ho, Wo, threads=threads)
    want = ic.col2im2d_reference(cols, (N, C, H, W), kh, kw, stride, padding, Ho, Wo)
    assert got.shape == want.shape and got.dtype == np.float32
    assert got.tobytes() == np.ascontiguousarray(want).tobytes()


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 4), st.integers(0, 9), st.integers(0, 9), st.integers(0, 9), st.booleans(),
       st.integers(1, 2), st.integers(0, 2 ** 32 - 1))
def test_channel_layout_copies_equal_their_references(N, Ho, Wo, C, with_bias, threads, seed):
    """Channels first with the bias added (NaN, Inf, overflow and signed zeros included) and channels last,
    over shapes that exercise the 4 x 4 blocks and their edges."""
    rng = np.random.default_rng(seed)
    y = _values(rng, (N * Ho * Wo, C), np.float32)
    special = np.array([np.nan, np.inf, -np.inf, -0.0, np.finfo(np.float32).max], np.float32)
    mask = rng.random(y.shape) < 0.1
    y[mask] = rng.choice(special, int(mask.sum()))
    bias = _values(rng, (C,), np.float32) if with_bias else None
    got = ic.channels_first(y, N, Ho, Wo, bias, threads=threads)
    with np.errstate(over="ignore", invalid="ignore"):
        want = ic.channels_first_reference(y, N, Ho, Wo, bias)
    assert got.shape == want.shape == (N, C, Ho, Wo) and got.tobytes() == want.tobytes()
    g = _values(rng, (N, C, Ho, Wo), np.float32)
    got = ic.channels_last(g, threads=threads)
    want = ic.channels_last_reference(g)
    assert got.shape == want.shape == (N * Ho * Wo, C) and got.tobytes() == want.tobytes()


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 80), st.integers(0, 80), st.sampled_from([np.int8, np.uint8, np.float32, np.int32]),
       st.integers(1, 2), st.integers(0, 2 ** 32 - 1))
def test_transposed_moves_the_bytes(rows, cols, dtype, threads, seed):
    """The backward GEMMs' transposed operands: 16 x 16 SIMD blocks and their edges, any thread count."""
    a = _values(np.random.default_rng(seed), (rows, cols), dtype)
    got = ic.transposed(a, threads=threads)
    assert got.flags.c_contiguous and got.dtype == a.dtype and got.shape == (cols, rows)
    assert got.tobytes() == np.ascontiguousarray(a.T).tobytes()


def test_transposed_large_and_threaded():
    a = np.random.default_rng(1).integers(0, 256, (1000, 600)).astype(np.uint8)   # several 256-row blocks
    for threads in (1, 2):
        assert np.array_equal(ic.transposed(a, threads=threads), a.T)


def _same_values(got, want):
    """Bit for bit, except that NaNs need only be NaN where the reference has NaN: the sign and payload of
    NaN + NaN depend on the operands' order in the add instruction, which neither IEEE 754 nor numpy's own
    SIMD loops fix (signed zeros, Infs and every finite value are compared bit for bit)."""
    got, want = np.ascontiguousarray(got), np.ascontiguousarray(want)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert got.view(np.uint32)[~nan].tobytes() == want.view(np.uint32)[~nan].tobytes()


def test_col2im_corner_values_follow_the_reference():
    """Signed zeros, Inf, NaN and float32 overflow of a pixel's sum, where the order of the terms matters."""
    big = np.finfo(np.float32).max
    special = np.array([-0.0, 0.0, np.inf, -np.inf, np.nan, big, -big, 1e-45, 1.0, -1.0], np.float32)
    rng = np.random.default_rng(3)
    for kh, kw, stride, padding in ((3, 3, 1, 1), (2, 3, 2, 0), (3, 1, 1, 2), (5, 5, 1, 2)):
        N, C, H, W = 2, 2, 5, 4
        Ho, Wo = (H + 2 * padding - kh) // stride + 1, (W + 2 * padding - kw) // stride + 1
        for threads in (1, 2):
            cols = rng.choice(special, (N * Ho * Wo, C * kh * kw))
            got = ic.col2im2d(cols, (N, C, H, W), kh, kw, stride, padding, Ho, Wo, threads=threads)
            with np.errstate(over="ignore", invalid="ignore"):
                want = ic.col2im2d_reference(cols, (N, C, H, W), kh, kw, stride, padding, Ho, Wo)
            _same_values(got, want)
            finite = np.where(np.isfinite(cols), cols, np.float32(1.5))    # no NaN: every bit must match
            got = ic.col2im2d(finite, (N, C, H, W), kh, kw, stride, padding, Ho, Wo, threads=threads)
            with np.errstate(over="ignore"):
                want = ic.col2im2d_reference(finite, (N, C, H, W), kh, kw, stride, padding, Ho, Wo)
            assert got.tobytes() == np.ascontiguousarray(want).tobytes()


def test_the_compiled_kernels_refuse_what_they_cannot_take():
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        ic._layout.im2col(x, 5, 5, 1, 0, 1)
    with pytest.raises(ValueError, match="kernel"):
        ic._layout.im2col(x, 0, 3, 1, 0, 1)
    with pytest.raises(TypeError, match="1-, 4- or 8-byte"):
        ic._layout.im2col(x.astype(np.float16), 3, 3, 1, 0, 1)
    with pytest.raises(ValueError, match="4-D"):
        ic._layout.im2col(x[0], 3, 3, 1, 0, 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        ic._layout.im2col(np.zeros((1, 1, 4, 8), np.float32)[..., ::2], 3, 3, 1, 0, 1)
    with pytest.raises(TypeError, match="float32"):
        ic._layout.col2im(np.zeros((4, 9)), 1, 1, 4, 4, 3, 3, 1, 0, 1)
    with pytest.raises(ValueError, match="shape"):
        ic._layout.col2im(np.zeros((5, 9), np.float32), 1, 1, 4, 4, 3, 3, 1, 0, 1)
    with pytest.raises(ValueError, match="rows"):
        ic._layout.channels_first(np.zeros((5, 3), np.float32), 1, 2, 2, None, 1)
    with pytest.raises(ValueError, match="bias"):
        ic._layout.channels_first(np.zeros((4, 3), np.float32), 1, 2, 2, np.zeros(2, np.float32), 1)
    with pytest.raises(TypeError, match="float32"):
        ic._layout.channels_last(np.zeros((1, 2, 2, 2)), 1)


def test_non_contiguous_and_other_dtypes_take_the_reference():
    x = np.arange(2 * 3 * 5 * 6, dtype=np.float16).reshape(2, 3, 5, 6)
    got, _, _ = ic.im2col2d(x, 3, 3, 1, 1)
    assert got.dtype == np.float16
    xs = np.arange(2 * 3 * 5 * 12, dtype=np.float32).reshape(2, 3, 5, 12)[..., ::2]
    assert ic.im2col2d(xs, 3, 3, 1, 1)[0].tobytes() == ic.im2col2d_reference(xs, 3, 3, 1, 1)[0].tobytes()


@pytest.mark.parametrize("recipe", ["fp32", "q4"])
@pytest.mark.parametrize("first_last", ["fp16", "same"])
def test_a_model_whose_input_is_data_skips_dx_with_the_same_parameter_gradients(recipe, first_last):
    """``input_grad = False`` drops the first layer's dL/dx and nothing else: identical parameter gradients
    (and PACT's alpha gradient, for which a PACT-quantized first layer still forms dL/dx)."""
    rng = np.random.default_rng(0)
    x = rng.random((8, 1, 6, 6)).astype(np.float32)
    grads = []
    for input_grad in (True, False):
        model = Sequential(Conv2d(1, 4, 3, padding=1, rng=1), Conv2d(4, 2, 3, rng=2))
        kw = {} if recipe == "fp32" else {"first_last": first_last}
        model.set_policy(get_recipe(recipe, **kw))
        model.input_grad = input_grad
        y = model.forward(x)
        gx = model.backward(np.random.default_rng(1).standard_normal(y.shape).astype(np.float32))
        pact_first = recipe == "q4" and first_last == "same"     # PACT on the image needs dL/dx
        assert (gx is None) == (not input_grad and not pact_first)
        grads.append([p.grad.copy() for _, p in model.named_parameters()])
    for a, b in zip(*grads):
        assert a.tobytes() == b.tobytes()


def test_linear_input_grad_false_returns_none():
    lin = Linear(5, 3, rng=0)
    lin.input_grad = False
    lin.forward(np.ones((2, 5), np.float32))
    assert lin.backward(np.ones((2, 3), np.float32)) is None
    assert np.any(lin.weight.grad != 0)
