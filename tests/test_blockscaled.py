"""Block-scaled FP4 (MXFP4, MXFP8, NVFP4) bit for bit against an independent reference built on ml_dtypes."""
import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from q4core.blockscaled import E8M0_NAN, MXFP4, MXFP8_E4M3, NVFP4, BlockScaledFormat
from q4core.formats import E2M1, unpack_nibbles

F4 = ml_dtypes.float4_e2m1fn
F8 = ml_dtypes.float8_e4m3fn
E8M0 = ml_dtypes.float8_e8m0fnu


def ref_mx(x, block, elem_dtype, elem_max, emax_elem):
    """OCP MX v1.0 section 6.3, written out per block with ml_dtypes casts (independent of q4core)."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    scales = []
    for row in np.ndindex(x.shape[:-1]):
        srow = []
        for start in range(0, x.shape[-1], block):
            v = x[row][start:start + block]
            amax = np.abs(v).max()
            e = -127 if amax == 0 else max(-127, min(127, math.frexp(amax)[1] - 1 - emax_elem))
            scale = 2.0 ** e
            srow.append(int(np.array([scale]).astype(E8M0).view(np.uint8)[0]))
            elems = np.clip(v / scale, -elem_max, elem_max).astype(elem_dtype).astype(np.float64)
            out[row][start:start + block] = elems * scale
        scales.append(srow)
    return out, np.array(scales, np.uint8).reshape(x.shape[:-1] + (-1,))


def ref_nvfp4(x, block=16):
    """NVFP4 as arXiv 2509.25149 describes it: float32 tensor scale 448*6/amax, E4M3 block scales."""
    x = np.asarray(x, np.float64)
    amax_t = np.abs(x).max()
    s = float(np.float32(448.0 * 6.0 / amax_t)) if amax_t > 0 else 1.0
    out = np.empty_like(x)
    for row in np.ndindex(x.shape[:-1]):
        for start in range(0, x.shape[-1], block):
            v = x[row][start:start + block]
            d = np.array([min(np.abs(v).max() / 6.0 * s, 448.0)]).astype(F8).astype(np.float64)[0]
            if d == 0:
                out[row][start:start + block] = 0.0
                continue
            elems = np.clip(v / (d / s), -6, 6).astype(F4).astype(np.float64)
            out[row][start:start + block] = elems * (d / s)
    return out


arrays = st.tuples(st.integers(1, 4), st.integers(1, 100), st.integers(0, 2**32 - 1),
                   st.sampled_from([1e-30, 1e-6, 1.0, 1e6, 1e30]))


@settings(max_examples=60, deadline=None)
@given(arrays)
def test_mxfp4_equals_the_ocp_reference(case):
    rows, cols, seed, mag = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)) * mag * np.exp(rng.uniform(-3, 3, (rows, cols)))
    x[rng.random((rows, cols)) < 0.1] = 0.0
    want, want_scales = ref_mx(x, 32, F4, 6.0, 2)
    t = MXFP4.encode(x)
    np.testing.assert_array_equal(t.scale_codes, want_scales)
    np.testing.assert_array_equal(MXFP4.decode(t), want)
    np.testing.assert_array_equal(MXFP4.quantize(MXFP4.quantize(x)), MXFP4.quantize(x))   # idempotent


@settings(max_examples=30, deadline=None)
@given(arrays)
def test_mxfp8_equals_the_ocp_reference(case):
    rows, cols, seed, mag = case
    x = np.random.default_rng(seed).standard_normal((rows, cols)) * mag
    want, want_scales = ref_mx(x, 32, F8, 448.0, 8)
    t = MXFP8_E4M3.encode(x)
    np.testing.assert_array_equal(t.scale_codes, want_scales)
    np.testing.assert_array_equal(MXFP8_E4M3.decode(t), want)


@settings(max_examples=60, deadline=None)
@given(arrays)
def test_nvfp4_equals_the_two_level_reference(case):
    rows, cols, seed, mag = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)) * mag * np.exp(rng.uniform(-4, 4, (rows, cols)))
    np.testing.assert_array_equal(NVFP4.quantize(x), ref_nvfp4(x))


def test_written_out_cases():
    # a block whose max is exactly 6 * 2**k keeps it; ties round half to even on the element grid
    x = np.array([[6.0, 0.25, 0.75, 2.5, -5.0, 0.0] + [0.0] * 26])
    t = MXFP4.encode(x)
    assert t.scale_codes[0, 0] == 127                       # 2**0: floor(log2 6) - 2 = 0
    np.testing.assert_array_equal(MXFP4.decode(t)[0, :6], [6.0, 0.0, 1.0, 2.0, -4.0, 0.0])
    # values in [7, 8) x 2**X saturate at 6 x 2**X (the spec clamps to the element's max normal)
    assert MXFP4.quantize(np.array([7.9] + [0.0] * 31))[0] == 6.0
    # an all-zero block: scale 2**-127, all elements zero; a ragged last block
    t = MXFP4.encode(np.zeros((2, 40)))
    assert t.scale_codes.shape == (2, 2) and np.all(t.scale_codes == 0) and not MXFP4.decode(t).any()
    # scale exponents clamp at +-127
    big = MXFP4.encode(np.array([2.0 ** 200]))
    assert big.scale_codes[0] == 254 and MXFP4.decode(big)[0] == 6.0 * 2.0 ** 127
    tiny = MXFP4.encode(np.array([2.0 ** -200]))
    assert tiny.scale_codes[0] == 0 and MXFP4.decode(tiny)[0] == 0.0
    assert E8M0_NAN == 255 and np.isnan(MXFP4._scale_values(np.array([255], np.uint8)))[0]
    # NVFP4: the tensor max lands on 6 x 448 / s exactly
    x = np.array([3.0, -1.0, 0.1, 0.0] * 4)
    q = NVFP4.quantize(x)
    assert q[0] == 3.0 and NVFP4.encode(x).tensor_scale == float(np.float32(448 * 6 / 3.0))


def test_axis_and_2d_blocks():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 24))
    np.testing.assert_array_equal(MXFP4.quantize(x, axis=0), MXFP4.quantize(x.T).T)
    t = NVFP4.encode(x, block_shape=(16, 16))
    assert t.scale_codes.shape == (3, 2)
    q = NVFP4.decode(t)
    # one scale per 16 x 16 tile: every tile's values are E2M1 values times that tile's scale
    for i in range(3):
        for j in range(2):
            tile = q[16 * i:16 * i + 16, 16 * j:16 * j + 16] / t.block_scales()[i, j]
            assert np.isin(np.abs(tile), np.abs(E2M1.values)).all()
    with pytest.raises(ValueError, match="block_shape"):
        NVFP4.encode(np.zeros(16), block_shape=(16, 16))


def test_stochastic_rounding_is_unbiased_and_seeded():
    x = np.tile(np.array([0.3, 1.25, -2.6, 5.1]), (1, 8))
    draws = np.stack([MXFP4.quantize(x, rounding="stochastic", rng=s) for s in range(2000)])
    np.testing.assert_allclose(draws.mean(axis=0), x, atol=0.05)
    np.testing.assert_array_equal(MXFP4.quantize(x, rounding="stochastic", rng=7),
                                  MXFP4.quantize(x, rounding="stochastic", rng=7))
    with pytest.raises(ValueError, match="needs rng="):
        NVFP4.quantize(x, rounding="stochastic")


def test_packing_two_codes_per_byte():
    x = np.random.default_rng(1).standard_normal((3, 32))
    t = MXFP4.encode(x)
    p = t.packed()
    assert p.shape == (3, 16) and p.dtype == np.uint8
    np.testing.assert_array_equal(unpack_nibbles(p, 32), t.codes)
    with pytest.raises(ValueError, match="nothing to pack"):
        MXFP8_E4M3.encode(x).packed()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="NaN or Inf"):
        MXFP4.encode(np.array([1.0, np.nan]))
    with pytest.raises(TypeError, match="real numeric"):
        MXFP4.encode(np.array(["a"]))
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        MXFP4.encode(np.zeros((2, 2)), axis=2)
    with pytest.raises(ValueError, match="rounding"):
        MXFP4.encode(np.zeros(4), rounding="up")
    with pytest.raises(ValueError, match="at least one axis"):
        MXFP4.encode(np.float64(1.0))
    with pytest.raises(TypeError, match="made by NVFP4"):
        NVFP4.decode(MXFP4.encode(np.zeros(4)))
    with pytest.raises(ValueError, match="element must be"):
        BlockScaledFormat("x", object(), 32, "e8m0")
    empty = MXFP4.encode(np.zeros((0, 32)))
    assert empty.codes.shape == (0, 32) and MXFP4.decode(empty).shape == (0, 32)
