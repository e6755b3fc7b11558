"""Simulated FP16 accumulation: the vectorised path against the scalar reference, and how it differs from exact."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from q4core.accumulate import BLOCK, accumulator_scale, fp16_block_matmul, fp16_block_matmul_reference
from q4core.nn import Linear
from q4core.recipe import get_recipe
from q4core.recipe.operands import _FP4_UNITS


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 150), st.integers(1, 3), st.integers(1, 80), st.integers(0, 2 ** 32 - 1),
       st.booleans())
def test_vectorised_equals_reference_bit_for_bit(M, K, N, block, seed, fp4):
    rng = np.random.default_rng(seed)
    # FP4 units (powers of 4 up to 4096) x INT4_SYM, or UINT4 x INT4_SYM
    a = _FP4_UNITS[rng.integers(0, 16, (M, K))] if fp4 else rng.integers(0, 16, (M, K)).astype(float)
    b = rng.integers(-7, 8, (K, N)).astype(float)
    np.testing.assert_array_equal(fp16_block_matmul(a, b, block), fp16_block_matmul_reference(a, b, block))


def test_short_sums_are_exact_and_zeros_give_zero():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 16, (5, 8)).astype(float)
    b = rng.integers(-7, 8, (8, 3)).astype(float)
    np.testing.assert_array_equal(fp16_block_matmul(a, b), a @ b)       # every partial sum fits 11 bits
    assert accumulator_scale(np.zeros((2, 3)), b[:3]) == 1.0
    np.testing.assert_array_equal(fp16_block_matmul(np.zeros((2, 3)), b[:3]), np.zeros((2, 3)))


def test_long_sums_lose_low_bits_within_float16_error_bounds():
    # 64 products of 105 (UINT4 15 x INT4 7): the running sum passes 4096 units, where float16's spacing is 4
    a, b = np.full((1, 64), 15.0), np.full((64, 1), 7.0)
    exact = float((a @ b)[0, 0])
    got = float(fp16_block_matmul(a, b)[0, 0])
    assert got != exact
    assert abs(got - exact) <= 64 * 2.0 ** -11 * exact      # each addition rounds by at most half an ulp
    # a long sum of random products: chunking in blocks of 64 keeps the error below one long float16 chain's
    rng = np.random.default_rng(1)
    a = rng.integers(0, 16, (16, 4096)).astype(float)
    b = rng.integers(0, 8, (4096, 1)).astype(float)
    exact = a @ b
    chunked = np.abs(fp16_block_matmul(a, b) - exact).mean()
    chained = np.abs(fp16_block_matmul(a, b, block=4096) - exact).mean()
    assert 0 < chunked < chained


def test_no_overflow_at_the_largest_sum():
    a, b = np.full((1, 1024), 4096.0), np.full((1024, 1), 8.0)     # FP4 max x INT4 min, every product maximal
    got = fp16_block_matmul(a, b)
    assert np.isfinite(got).all() and got[0, 0] == (a @ b)[0, 0]


def test_deterministic_and_argument_errors():
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 16, (3, 200)).astype(float), rng.integers(-7, 8, (200, 2)).astype(float)
    np.testing.assert_array_equal(fp16_block_matmul(a, b), fp16_block_matmul(a.copy(), b.copy()))
    assert BLOCK == 64
    with pytest.raises(ValueError, match="a and b must be"):
        fp16_block_matmul(a, b.T)
    with pytest.raises(ValueError, match="block must be a positive int"):
        fp16_block_matmul(a, b, block=0)
    with pytest.raises(ValueError, match="finite"):
        fp16_block_matmul(a + np.inf, b)


def test_recipe_option_and_the_layer_product():
    r = get_recipe("q4", "fp16-accumulate")
    assert r.accumulator == "fp16" and r.name == "q4+fp16-accumulate"
    with pytest.raises(ValueError, match="accumulator 'fp16'"):
        get_recipe("fp32", accumulator="fp16")
    with pytest.raises(ValueError, match="accumulator must be one of"):
        get_recipe("q4", accumulator="fp8")
    # a 4-bit Linear: the fp16-accumulated forward is the exact one's units re-summed in float16, then scaled
    x = np.abs(np.random.default_rng(3).standard_normal((8, 512))).astype(np.float32)
    exact_layer, fp16_layer = Linear(512, 4, rng=4), Linear(512, 4, rng=4)
    exact_layer.gemm.configure(get_recipe("q4"))
    fp16_layer.gemm.configure(r)
    y_exact, y16 = exact_layer.forward(x), fp16_layer.forward(x)
    ctx = fp16_layer._ctx
    units = fp16_block_matmul(ctx.xop.unit_values(), ctx.wop.op.unit_values())
    expected = (units * (ctx.xop.scale * ctx.wop.op.scale)).astype(np.float32) + fp16_layer.bias.data
    np.testing.assert_array_equal(y16, expected)
    assert not np.array_equal(y16, y_exact)
    np.testing.assert_allclose(y16, y_exact, rtol=1e-2, atol=1e-2 * np.abs(y_exact).max())
