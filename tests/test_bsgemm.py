"""The block-scaled FP4 GEMM's kernels against its definition (q4core.bsgemm.blockscaled_matmul_reference),
bit for bit: every compiled kernel, the AMX kernel under emulation, 1-D and 16 x 16 blockings, MXFP4 and NVFP4."""
import ctypes
import dataclasses

import numpy as np
import pytest
from _amx_emulation import build_emulation
from hypothesis import example, given, settings
from hypothesis import strategies as st

from q4core import bsgemm, gemm
from q4core.blockscaled import MXFP4, MXFP8_E4M3, NVFP4

COMPILED = [k for k in gemm.available_kernels() if k != "reference"]
FORMATS = {"MXFP4": MXFP4, "NVFP4": NVFP4}
E4M3_NAN = 0x7F


def bits(x):
    """float64 array as its bit patterns: equal bits, not merely equal values (-0.0, NaN)."""
    return np.ascontiguousarray(x, np.float64).view(np.int64)


def operand_pair(fmt, m, k, n, two_d, rng, scale_exp=0, zero_frac=0.0):
    """(a, b) encoded from normal data times 10**scale_exp with a fraction of exact zeros; a blocked along K
    (axis 1), b along K (axis 0), or both in 16 x 16 tiles."""
    def draw(shape):
        x = rng.normal(size=shape) * 10.0 ** scale_exp
        x[rng.random(shape) < zero_frac] = 0.0
        return x
    if two_d:
        return (fmt.encode(draw((m, k)), block_shape=(16, 16)), fmt.encode(draw((k, n)), block_shape=(16, 16)))
    return fmt.encode(draw((m, k)), axis=1), fmt.encode(draw((k, n)), axis=0)


def with_random_codes(t, rng, extreme_scales):
    """``t`` with uniformly drawn element codes (all of E2M1, incl. -0 and +-6) and, if ``extreme_scales``,
    block scale codes drawn over the scale format's whole finite range (E8M0 2**-127 .. 2**127; E4M3
    subnormals .. 448)."""
    codes = rng.integers(0, 16, size=t.codes.shape).astype(np.uint8)
    scales = t.scale_codes
    if extreme_scales:
        if t.fmt is MXFP4:
            scales = rng.integers(0, 255, size=scales.shape).astype(np.uint8)        # 255 is NaN
        else:
            scales = rng.integers(0, 127, size=scales.shape).astype(np.uint8)        # 0x7F is NaN
            scales |= (rng.integers(0, 2, size=scales.shape) * 0x80).astype(np.uint8)  # either sign bit
    return dataclasses.replace(t, codes=codes, scale_codes=scales)


def check_all_kernels(a, b, threads=(1,)):
    ref = bsgemm.blockscaled_matmul_reference(a, b)
    assert ref.shape == (a.codes.shape[0], b.codes.shape[1]) and ref.dtype == np.float64
    for kernel in COMPILED:
        for t in threads:
            got = bsgemm.blockscaled_matmul(a, b, kernel=kernel, threads=t)
            assert got.shape == ref.shape and got.dtype == np.float64
            np.testing.assert_array_equal(bits(got), bits(ref), err_msg=f"{kernel}, threads={t}")
    return ref


# --------------------------------------------------------------------------- every kernel, bit for bit
@settings(max_examples=40, deadline=None)
@given(fmt=st.sampled_from(sorted(FORMATS)), m=st.integers(0, 80), k=st.integers(0, 150), n=st.integers(0, 80),
       two_d=st.booleans(), scale_exp=st.sampled_from([-30, -6, 0, 6, 30]), zero_frac=st.sampled_from([0, 0.3, 1]),
       random_codes=st.booleans(), seed=st.integers(0, 2**32 - 1))
@example(fmt="MXFP4", m=1, k=1, n=1, two_d=False, scale_exp=0, zero_frac=0, random_codes=False, seed=0)
@example(fmt="NVFP4", m=17, k=33, n=65, two_d=True, scale_exp=0, zero_frac=0, random_codes=True, seed=1)
@example(fmt="MXFP4", m=65, k=100, n=3, two_d=False, scale_exp=30, zero_frac=0, random_codes=True, seed=2)
@example(fmt="NVFP4", m=0, k=16, n=5, two_d=False, scale_exp=0, zero_frac=0, random_codes=False, seed=3)
@example(fmt="MXFP4", m=4, k=0, n=5, two_d=False, scale_exp=0, zero_frac=0, random_codes=False, seed=3)
def test_every_kernel_equals_the_definition(fmt, m, k, n, two_d, scale_exp, zero_frac, random_codes, seed):
    rng = np.random.default_rng(seed)
    a, b = operand_pair(FORMATS[fmt], m, k, n, two_d, rng, scale_exp, zero_frac)
    if random_codes:
        a, b = with_random_codes(a, rng, True), with_random_codes(b, rng, True)
    check_all_kernels(a, b)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_block_maxima_and_ties_everywhere(fmt):
    """Every element at +-6 (the largest integer product, 144 per k) and inputs on E2M1's rounding ties."""
    f = FORMATS[fmt]
    rng = np.random.default_rng(5)
    m, k, n = 19, 97, 21
    a, b = f.encode(np.full((m, k), 6.0), axis=1), f.encode(-np.full((k, n), 6.0), axis=0)
    ref = check_all_kernels(a, b)
    assert (ref < 0).all()
    ties = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0])
    a = f.encode(rng.choice(ties, size=(m, k)) * rng.choice([-1, 1], size=(m, k)), axis=1)
    b = f.encode(rng.choice(ties, size=(k, n)) * rng.choice([-1, 1], size=(k, n)), axis=0)
    check_all_kernels(a, b)


def test_one_d_times_two_d_blocking():
    """The recipes' mix: activations 1 x 16, weights 16 x 16 (NVFP4) and the other way round."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(37, 50))
    w = rng.normal(size=(50, 29))
    check_all_kernels(NVFP4.encode(x, axis=1), NVFP4.encode(w, block_shape=(16, 16)))
    check_all_kernels(NVFP4.encode(x, block_shape=(16, 16)), NVFP4.encode(w, axis=0))


def test_identical_across_thread_counts():
    """Large enough that the driver really starts two threads (2**24 multiply-accumulates each)."""
    rng = np.random.default_rng(7)
    for fmt in (MXFP4, NVFP4):
        a, b = operand_pair(fmt, 200, 700, 260, False, rng)
        check_all_kernels(a, b, threads=(1, 2))


@pytest.mark.parametrize("kernel", COMPILED)
def test_mxfp4_equals_the_float64_product_of_the_decoded_operands(kernel):
    """Power-of-two scales and exponents within 53 bits: no addition rounds, in any order."""
    rng = np.random.default_rng(8)
    for two_d in (False, True):
        a, b = operand_pair(MXFP4, 45, 333, 38, two_d, rng)
        got = bsgemm.blockscaled_matmul(a, b, kernel=kernel)
        np.testing.assert_array_equal(got, MXFP4.decode(a) @ MXFP4.decode(b))


def test_nvfp4_is_close_to_the_decoded_product():
    rng = np.random.default_rng(9)
    a, b = operand_pair(NVFP4, 30, 200, 20, False, rng)
    got = bsgemm.blockscaled_matmul(a, b)
    np.testing.assert_allclose(got, NVFP4.decode(a) @ NVFP4.decode(b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel", COMPILED + ["reference"])
def test_integer_entry_point_matches_the_tensor_entry_point(kernel):
    rng = np.random.default_rng(10)
    for fmt, two_d in ((MXFP4, False), (NVFP4, True)):
        a, b = operand_pair(fmt, 23, 90, 31, two_d, rng)
        blk, sa, sb = bsgemm._check_pair(a, b)
        got = bsgemm.blockscaled_matmul_int(bsgemm.operand_integers(a), bsgemm.operand_integers(b), sa, sb, blk,
                                            denom=float(a.tensor_scale) * float(b.tensor_scale), kernel=kernel)
        np.testing.assert_array_equal(bits(got), bits(bsgemm.blockscaled_matmul_reference(a, b)))


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_precise_errors():
    rng = np.random.default_rng(11)
    a, b = operand_pair(NVFP4, 8, 40, 6, False, rng)
    am, bm = operand_pair(MXFP4, 8, 40, 6, False, rng)
    with pytest.raises(TypeError, match="a must be a BlockScaledTensor"):
        bsgemm.blockscaled_matmul(np.zeros((8, 40)), b)
    with pytest.raises(ValueError, match="share one format"):
        bsgemm.blockscaled_matmul(a, bm)
    with pytest.raises(ValueError, match="inner dimensions"):
        bsgemm.blockscaled_matmul(a, NVFP4.encode(rng.normal(size=(41, 6)), axis=0))
    with pytest.raises(ValueError, match="b must be blocked along its reduction axis"):
        bsgemm.blockscaled_matmul(a, NVFP4.encode(rng.normal(size=(40, 6)), axis=1))
    with pytest.raises(ValueError, match="4-bit"):
        bsgemm.blockscaled_matmul(MXFP8_E4M3.encode(rng.normal(size=(8, 40)), axis=1), b)
    with pytest.raises(ValueError, match="same block length"):
        bsgemm.blockscaled_matmul(MXFP4.encode(rng.normal(size=(8, 40)), block_shape=(16, 16)), bm)
    with pytest.raises(ValueError, match="a must be 2-D"):
        bsgemm.blockscaled_matmul(NVFP4.encode(rng.normal(size=(2, 8, 40)), axis=2), b)
    with pytest.raises(ValueError, match="kernel must be one of"):
        bsgemm.blockscaled_matmul(a, b, kernel="gpu")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        bsgemm.blockscaled_matmul(a, b, threads=0)
    with pytest.raises(TypeError, match="threads must be a positive int"):
        bsgemm.blockscaled_matmul(a, b, threads=1.5)
    with pytest.raises(ValueError, match="b.codes must be uint8 NVFP4 element codes below 16"):
        bsgemm.blockscaled_matmul(a, dataclasses.replace(b, codes=b.codes | 16))
    odd = MXFP4.encode(rng.normal(size=(8, 40)), block_shape=(8, 8))
    with pytest.raises(ValueError, match="block lengths"):
        bsgemm.blockscaled_matmul(odd, MXFP4.encode(rng.normal(size=(40, 6)), block_shape=(8, 8)),
                                  kernel=COMPILED[-1])


def test_integer_entry_point_rejects_bad_arguments():
    ai, bi = np.zeros((4, 20), np.int8), np.zeros((20, 3), np.int8)
    sa, sb = np.ones((4, 2)), np.ones((2, 3))
    call = bsgemm.blockscaled_matmul_int
    with pytest.raises(TypeError, match="a_int must be an int8"):
        call(ai.astype(np.int16), bi, sa, sb, 16)
    with pytest.raises(ValueError, match=r"b_int must hold 2x E2M1 elements in \[-12, 12\]"):
        call(ai, np.full((20, 3), 13, np.int8), sa, sb, 16)
    with pytest.raises(ValueError, match="a_int must be 2-D"):
        call(np.zeros(20, np.int8), bi, sa, sb, 16)
    with pytest.raises(ValueError, match="inner dimensions"):
        call(ai, np.zeros((21, 3), np.int8), sa, sb, 16)
    with pytest.raises(ValueError, match="block must be one of"):
        call(ai, bi, sa, sb, 8)
    with pytest.raises(ValueError, match=r"sa must have shape \(4, 2\)"):
        call(ai, bi, np.ones((4, 1)), sb, 16)
    with pytest.raises(TypeError, match="sb must be a float64"):
        call(ai, bi, sa, sb.astype(np.float32), 16)
    with pytest.raises(ValueError, match="sb must be finite"):
        call(ai, bi, sa, np.full((2, 3), np.inf), 16)
    for bad in (2.0 ** -401, 2.0 ** 401, 1.0 + 2.0 ** -20):
        with pytest.raises(ValueError, match=r"sa must hold 0 or magnitudes in \[2\*\*-400, 2\*\*400\]"):
            call(ai, bi, np.full((4, 2), -bad), sb, 16)
    call(ai, bi, np.full((4, 2), -(2.0 - 2.0 ** -16) * 2.0 ** 399), sb, 16)      # the largest admitted
    with pytest.raises(ValueError, match="denom must be nonzero"):
        call(ai, bi, sa, sb, 16, denom=0.0)


# --------------------------------------------------------------------------- AMX, emulated
EMU_SHIM = """
#define Q4CORE_OPENMP 0
#define Q4_AMX_EMULATE 1
#include "bsgemm_kernels.h"
int q4_emu_bsgemm(const uint8_t *A, int64_t lda, int64_t M, int64_t Mp, const int8_t *B, int64_t Kp,
                  int64_t N, int64_t Np, int64_t K, int blk, const int32_t *corr, const double *sa,
                  const double *sb, double denom, double *out) {
    return q4_bsgemm(Q4_AMX, A, lda, M, Mp, B, Kp, N, Np, K, blk, corr, sa, sb, denom, out, N, 1);
}
"""


@pytest.fixture(scope="module")
def amx_emulated(tmp_path_factory):
    """The real q4_bs_tile_amx + driver compiled against scalar tile emulation (gemm_amx_emu.h)."""
    if bsgemm._bsgemm is None:
        pytest.skip("q4core._bsgemm is not built")
    lib = build_emulation(tmp_path_factory, EMU_SHIM, "q4bsamxemu")
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.q4_emu_bsgemm.argtypes = [ptr, i64, i64, i64, ptr, i64, i64, i64, i64, ctypes.c_int, ptr, ptr, ptr,
                                  ctypes.c_double, ptr]
    lib.q4_emu_bsgemm.restype = ctypes.c_int
    return lib


@pytest.mark.parametrize("fmt,shape,two_d", [("NVFP4", (1, 1, 1), False), ("MXFP4", (16, 64, 16), False),
                                             ("NVFP4", (17, 33, 129), True), ("MXFP4", (48, 70, 40), False),
                                             ("NVFP4", (70, 200, 66), False), ("MXFP4", (33, 31, 97), True)])
def test_amx_kernel_logic_under_emulation(amx_emulated, fmt, shape, two_d):
    """The blk-deep AMX tiles, 16-row / 16-column remainders and short last blocks, with the tile
    instructions emulated in C (the emulation aborts on a tile shape the hardware would refuse)."""
    from q4core import _bsgemm
    rng = np.random.default_rng(12)
    m, k, n = shape
    a, b = operand_pair(FORMATS[fmt], m, k, n, two_d, rng)
    a, b = with_random_codes(a, rng, True), with_random_codes(b, rng, True)
    blk, sa, sb = bsgemm._check_pair(a, b)
    ai, bi = bsgemm.operand_integers(a), bsgemm.operand_integers(b)
    a_buf, packed, kp, np_, corr, sa, sb_p = _bsgemm.operands(ai, bi, sa, sb, blk, 16)
    denom = float(a.tensor_scale) * float(b.tensor_scale)
    out = np.zeros((m, n))
    rc = amx_emulated.q4_emu_bsgemm(a_buf.ctypes.data, a_buf.shape[1], m, a_buf.shape[0], packed.ctypes.data, kp,
                                    n, np_, k, blk, corr.ctypes.data, sa.ctypes.data, sb_p.ctypes.data, denom,
                                    out.ctypes.data)
    assert rc == 0
    np.testing.assert_array_equal(bits(out), bits(bsgemm.blockscaled_matmul_reference(a, b)))
