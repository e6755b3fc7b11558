"""Exactness of every GEMM kernel path against an int64 numpy product computed here.

The oracle in this file is written independently of q4core.gemm's own reference:
``a.astype(int64) @ b.astype(int64)`` and, for FP4, units taken from the formats module's
decoder (``RadixFP.decode(codes) * 4**6 / f``).
"""
import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _amx_emulation import build_emulation
from hypothesis import example, given, settings
from hypothesis import strategies as st

import q4core.gemm as gemm
from q4core.formats import RadixFP

KERNELS = gemm.available_kernels()              # includes "reference"
FAST = [k for k in KERNELS if k != "reference"]
ALL_NAMES = list(gemm.KERNEL_NAMES)


def units_from_formats(codes):
    """Exact integer units of FP4 codes from the formats reference (phase 0, scale 1)."""
    vals = RadixFP(4, 3, 0).decode(codes) * 4.0 ** 6
    units = vals.astype(np.int64)
    assert np.array_equal(units, vals)            # exact powers of four
    return units


def oracle(a, b):
    return np.asarray(a).astype(np.int64) @ np.asarray(b).astype(np.int64)


def rand_int4(rng, shape, signed):
    if signed:
        return rng.integers(-8, 8, shape).astype(np.int8)
    return rng.integers(0, 16, shape).astype(np.uint8)


def rand_fp4(rng, shape, zeros=0.2):
    """Codes spread over every exponent (wide log-normal magnitudes) plus exact zeros."""
    x = rng.normal(size=shape) * np.exp2(rng.uniform(-14, 2, size=shape))
    x[rng.random(shape) < zeros] = 0.0
    return RadixFP(4, 3, 0).encode(x)


SHAPES = [(1, 1, 1), (17, 33, 129), (17, 129, 33), (3, 65, 5), (33, 63, 31), (40, 200, 70),
          (64, 64, 64), (2, 1, 3), (5, 257, 1), (1, 300, 40)]


# --------------------------------------------------------------------------- INT4 x INT4
@pytest.mark.parametrize("kernel", KERNELS)
def test_int4_random_shapes_all_sign_combos(kernel):
    rng = np.random.default_rng(1)
    for (m, k, n) in SHAPES:
        for a_signed in (True, False):
            for b_signed in (True, False):
                a = rand_int4(rng, (m, k), a_signed)
                b = rand_int4(rng, (k, n), b_signed)
                c = gemm.int4_matmul(a, b, kernel=kernel)
                assert c.dtype == np.int32 and c.shape == (m, n)
                np.testing.assert_array_equal(c, oracle(a, b), err_msg=f"{kernel} {m}x{k}x{n}")


@pytest.mark.parametrize("kernel", KERNELS)
def test_int4_strided_and_transposed_views(kernel):
    rng = np.random.default_rng(2)
    base_a = rand_int4(rng, (90, 150), True)
    base_b = rand_int4(rng, (160, 100), False)
    cases = [
        (base_a[::3, ::2], base_b[:75, ::2]),          # step slices
        (base_a[:40, :70], base_b.T[:70, :33]),         # transposed view on the right
        (base_a.T[:50, :45], base_b[:90:2, 1::3]),      # transposed view on the left
        (base_a[::-2, ::-1][:30, :150], base_b[::-1, :][:150, :20].T.T),  # negative strides
        (np.asfortranarray(base_a[:20, :100]), np.asfortranarray(base_b[:100, :30])),
    ]
    for a, b in cases:
        np.testing.assert_array_equal(gemm.int4_matmul(a, b, kernel=kernel), oracle(a, b))


@pytest.mark.parametrize("kernel", KERNELS)
def test_int4_extreme_operands(kernel):
    for k in (1, 64, 1000, 4097):
        for a_val, b_val in ((-8, -8), (-8, 7), (7, 7), (15, 15), (15, -8), (0, 7)):
            a_dt = np.int8 if a_val < 8 and a_val >= -8 else np.uint8
            b_dt = np.int8 if -8 <= b_val < 8 else np.uint8
            a = np.full((3, k), a_val, a_dt)
            b = np.full((k, 5), b_val, b_dt)
            c = gemm.int4_matmul(a, b, kernel=kernel)
            assert (c == a_val * b_val * k).all(), (kernel, k, a_val, b_val)


def _extreme_int4(rng, shape, signed, lo_first):
    """INT4 levels mostly at the extremes, with whole rows (lo_first) / columns at one extreme, so that
    int16 partial sums of the AVX2 kernel reach the product bound in every span."""
    lo, hi = (-8, 7) if signed else (0, 15)
    x = np.where(rng.random(shape) < 0.75, np.where(rng.random(shape) < 0.5, lo, hi),
                 rng.integers(lo, hi + 1, shape))
    if lo_first:
        x[0, :], x[-1, :] = lo, hi
    else:
        x[:, 0], x[:, -1] = lo, hi
    return x.astype(np.int8 if signed else np.uint8)


@pytest.mark.parametrize("kernel", FAST)
def test_int16_spans_and_k_blocks_at_the_product_bound(kernel):
    """K lengths whose k-group counts end int16 spans (AVX2: 64 groups for INT4 x INT4, 16 for INT4 x FP4,
    4 for FP4 x INT4) and the driver's 512-deep K blocks at every remainder the kernel loops see (4 or 0
    groups mod 8, one group short or past a block), M not a multiple of the row block and N not of the
    16-column panel, operands at the extremes, one and two threads: all equal the int64 product."""
    rng = np.random.default_rng(31)
    for (m, k, n) in [(5, 16, 17), (7, 48, 31), (6, 252, 16), (9, 320, 33), (3, 508, 18), (5, 516, 3),
                      (6, 1088, 20), (2, 2112, 35)]:
        for a_signed, b_signed in ((True, True), (False, True), (True, False), (False, False)):
            a = _extreme_int4(rng, (m, k), a_signed, True)
            b = _extreme_int4(rng, (k, n), b_signed, False)
            packed = gemm.pack_int4(b)
            g_left = np.where(rng.random((m, k)) < 0.5, 0x7 | 8 * (rng.random((m, k)) < 0.5),
                              rand_fp4(rng, (m, k))).astype(np.uint8)
            g_right = np.where(rng.random((k, n)) < 0.5, 0x7 | 8 * (rng.random((k, n)) < 0.5),
                               rand_fp4(rng, (k, n))).astype(np.uint8)
            for threads in (1, 2):
                err = f"{kernel} {m}x{k}x{n} signed {a_signed} {b_signed} threads {threads}"
                np.testing.assert_array_equal(gemm.int4_matmul(a, packed, kernel=kernel, threads=threads),
                                              oracle(a, b), err_msg=err)
                np.testing.assert_array_equal(gemm.fp4_int4_matmul(g_left, packed, kernel=kernel, threads=threads),
                                              oracle(units_from_formats(g_left), b), err_msg=err)
                np.testing.assert_array_equal(gemm.int4_fp4_matmul(a, g_right, kernel=kernel, threads=threads),
                                              oracle(a, units_from_formats(g_right)), err_msg=err)


@pytest.mark.parametrize("kernel", FAST)
def test_int4_k_chunks_summed_exactly(kernel, monkeypatch):
    # force 64-long K chunks so the chunk loop (int64 sum of int32 chunk results) runs
    monkeypatch.setattr(gemm, "_KCHUNK_LIMIT", 64)
    rng = np.random.default_rng(3)
    for (m, k, n) in [(5, 300, 7), (33, 129, 40), (1, 64, 1), (2, 65, 3)]:
        for a_signed in (True, False):
            a = rand_int4(rng, (m, k), a_signed)
            b = rand_int4(rng, (k, n), not a_signed)
            c = gemm.int4_matmul(a, b, kernel=kernel)
            assert c.dtype == np.int32
            np.testing.assert_array_equal(c, oracle(a, b))
    a = np.full((2, 640), 15, np.uint8)
    g = np.full((2, 640), 0x7 | 8, np.uint8)         # -4096 units everywhere
    np.testing.assert_array_equal(gemm.fp4_int4_matmul(g, a.T, kernel=kernel),
                                  np.full((2, 2), -4096 * 15 * 640))
    np.testing.assert_array_equal(gemm.int4_fp4_matmul(a, g.T, kernel=kernel),
                                  np.full((2, 2), -4096 * 15 * 640))


def test_int4_overflow_raises_instead_of_wrapping():
    # 15 * 15 * K exceeds int32 once K > 9,544,371
    k = 9_600_000
    a = np.full((1, k), 15, np.uint8)
    b = np.full((k, 1), 15, np.uint8)
    packed = gemm.pack_int4(b)
    for kernel in KERNELS:
        with pytest.raises(OverflowError, match="int32"):
            gemm.int4_matmul(a, packed, kernel=kernel)
    with pytest.raises(OverflowError, match="int32"):
        gemm.int4_matmul_unchecked(a, packed)
    # the same K with a result that fits int32: exact, through two K chunks
    a2 = a.copy()
    a2[0, 1::2] = 0
    for kernel in KERNELS:
        c = gemm.int4_matmul(a2, packed, kernel=kernel)
        assert c.dtype == np.int32 and int(c[0, 0]) == 15 * 15 * (k // 2)
    c = gemm.int4_matmul_unchecked(a2, packed)
    assert c.dtype == np.int32 and int(c[0, 0]) == 15 * 15 * (k // 2)


@pytest.mark.parametrize("kernel", FAST)
def test_threads_give_identical_results(kernel):
    rng = np.random.default_rng(4)
    a = rand_int4(rng, (150, 300), True)
    b = rand_int4(rng, (300, 270), True)
    g = rand_fp4(rng, (150, 300))
    ref = oracle(a, b)
    outs = [gemm.int4_matmul(a, b, kernel=kernel, threads=t) for t in (1, 2, 3)]
    for c in outs:
        np.testing.assert_array_equal(c, ref)
    f1 = gemm.fp4_int4_matmul(g, b, kernel=kernel, threads=1)
    f2 = gemm.fp4_int4_matmul(g, b, kernel=kernel, threads=2)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(f1, oracle(units_from_formats(g), b))


@pytest.mark.parametrize("kernel", KERNELS)
def test_packed_b_reuse(kernel):
    rng = np.random.default_rng(5)
    b = rand_int4(rng, (70, 45), False)
    packed = gemm.pack_int4(b)
    b_copy = b.copy()
    b[:] = 0                                    # the packed copy is independent of b
    assert packed.shape == (70, 45) and not packed.signed
    for trial in range(3):
        a = rand_int4(rng, (10 + trial, 70), trial % 2 == 0)
        np.testing.assert_array_equal(gemm.int4_matmul(a, packed, kernel=kernel), oracle(a, b_copy))
        g = rand_fp4(rng, (9, 70))
        np.testing.assert_array_equal(gemm.fp4_int4_matmul(g, packed, kernel=kernel),
                                      oracle(units_from_formats(g), b_copy))


@pytest.mark.parametrize("kernel", KERNELS)
def test_empty_operands(kernel):
    for (m, k, n) in [(0, 5, 3), (4, 0, 3), (4, 5, 0)]:
        a = np.zeros((m, k), np.int8)
        b = np.zeros((k, n), np.uint8)
        c = gemm.int4_matmul(a, b, kernel=kernel)
        assert c.shape == (m, n) and c.dtype == np.int32 and not c.any()
        f = gemm.fp4_int4_matmul(np.zeros((m, k), np.uint8), b, kernel=kernel)
        assert f.shape == (m, n) and f.dtype == np.int64 and not f.any()


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 40), k=st.integers(1, 300), n=st.integers(1, 40),
       step_a=st.integers(1, 3), step_b=st.integers(1, 3), transpose_b=st.booleans(),
       a_signed=st.booleans(), b_signed=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_property_every_kernel_matches_oracle(m, k, n, step_a, step_b, transpose_b,
                                              a_signed, b_signed, seed):
    rng = np.random.default_rng(seed)
    a = rand_int4(rng, (m * step_a, k * step_a), a_signed)[::step_a, ::step_a]
    if transpose_b:
        b = rand_int4(rng, (n * step_b, k), b_signed)[::step_b].T
    else:
        b = rand_int4(rng, (k, n * step_b), b_signed)[:, ::step_b]
    g = rand_fp4(rng, (m, k))
    ref, ref_fp4 = oracle(a, b), oracle(units_from_formats(g), b)
    ref_fp4_right = oracle(b.T, units_from_formats(g).T)
    for kernel in KERNELS:
        np.testing.assert_array_equal(gemm.int4_matmul(a, b, kernel=kernel), ref)
        np.testing.assert_array_equal(gemm.fp4_int4_matmul(g, b, kernel=kernel), ref_fp4)
        np.testing.assert_array_equal(gemm.int4_fp4_matmul(b.T, g.T, kernel=kernel), ref_fp4_right)


@settings(max_examples=12, deadline=None)
@given(m=st.integers(1, 290), k=st.integers(0, 1100), n=st.integers(1, 560), threads=st.integers(1, 3),
       a_signed=st.booleans(), b_signed=st.booleans(), seed=st.integers(0, 2**32 - 1))
@example(m=129, k=513, n=257, threads=2, a_signed=True, b_signed=True, seed=1)    # one past each block
@example(m=256, k=1024, n=512, threads=3, a_signed=False, b_signed=True, seed=2)  # whole blocks
@example(m=290, k=1100, n=1, threads=2, a_signed=True, b_signed=False, seed=3)    # one column
@example(m=1, k=1100, n=560, threads=1, a_signed=False, b_signed=False, seed=4)   # one row
@example(m=47, k=0, n=33, threads=2, a_signed=True, b_signed=True, seed=5)        # K = 0
def test_property_shapes_across_the_driver_blocking(m, k, n, threads, a_signed, b_signed, seed):
    """Shapes that cross the driver's 128-row / 256-column output tiles and 512-deep K blocks
    and every tile kernel's 16-row / 32-column remainders (AMX: 2 x 2 tiles of 16 x 16), for
    every compiled kernel but the slow portable one, at 1-3 threads: all three products exact."""
    rng = np.random.default_rng(seed)
    a = rand_int4(rng, (m, k), a_signed)
    b = rand_int4(rng, (k, n), b_signed)
    g = rand_fp4(rng, (m, k))
    gr = rand_fp4(rng, (k, n))
    ref, ref_left, ref_right = oracle(a, b), oracle(units_from_formats(g), b), oracle(a, units_from_formats(gr))
    packed = gemm.pack_int4(b)
    for kernel in [kn for kn in FAST if kn != "portable"]:
        np.testing.assert_array_equal(gemm.int4_matmul(a, packed, kernel=kernel, threads=threads), ref)
        np.testing.assert_array_equal(gemm.fp4_int4_matmul(g, packed, kernel=kernel, threads=threads), ref_left)
        np.testing.assert_array_equal(gemm.int4_fp4_matmul(a, gr, kernel=kernel, threads=threads), ref_right)


# --------------------------------------------------------------------------- FP4 x INT4
def test_fp4_units_every_code():
    codes = np.arange(16, dtype=np.uint8)
    expected = [0, 1, 4, 16, 64, 256, 1024, 4096, 0, -1, -4, -16, -64, -256, -1024, -4096]
    np.testing.assert_array_equal(gemm.fp4_units(codes), expected)
    np.testing.assert_array_equal(gemm.fp4_units(codes), units_from_formats(codes))
    for phase in (0, 1):
        fmt = RadixFP(4, 3, phase)
        f = 2.0 if phase else 1.0
        np.testing.assert_array_equal(gemm.fp4_units(codes) * f * 4.0 ** -6, fmt.decode(codes))


@pytest.mark.parametrize("kernel", KERNELS)
def test_fp4_both_sides_random(kernel):
    rng = np.random.default_rng(6)
    for (m, k, n) in SHAPES:
        for signed in (True, False):
            g_left = rand_fp4(rng, (m, k))
            b = rand_int4(rng, (k, n), signed)
            c = gemm.fp4_int4_matmul(g_left, b, kernel=kernel)
            assert c.dtype == np.int64
            np.testing.assert_array_equal(c, oracle(units_from_formats(g_left), b))
            a = rand_int4(rng, (m, k), signed)
            g_right = rand_fp4(rng, (k, n))
            c = gemm.int4_fp4_matmul(a, g_right, kernel=kernel)
            np.testing.assert_array_equal(c, oracle(a, units_from_formats(g_right)))


@pytest.mark.parametrize("kernel", KERNELS)
def test_fp4_exponent_groups_and_extremes(kernel):
    k = 777
    b_min = np.full((k, 4), -8, np.int8)
    b_max = np.full((k, 4), 15, np.uint8)
    for code in range(16):                        # every code alone, against both extremes
        g = np.full((3, k), code, np.uint8)
        u = int(units_from_formats(np.uint8(code)))
        for b in (b_min, b_max):
            expect = u * int(b[0, 0]) * k
            assert (gemm.fp4_int4_matmul(g, b, kernel=kernel) == expect).all(), (code, kernel)
            assert (gemm.int4_fp4_matmul(b.T, g.T, kernel=kernel) == expect).all(), (code, kernel)
    rng = np.random.default_rng(7)
    only_low = rng.choice([0, 1, 2, 3, 4, 9, 10, 11, 12], size=(6, 90)).astype(np.uint8)
    only_high = rng.choice([0, 5, 6, 7, 13, 14, 15], size=(6, 90)).astype(np.uint8)
    b = rand_int4(rng, (90, 11), True)
    for g in (only_low, only_high):
        np.testing.assert_array_equal(gemm.fp4_int4_matmul(g, b, kernel=kernel),
                                      oracle(units_from_formats(g), b))
        np.testing.assert_array_equal(gemm.int4_fp4_matmul(b.T, g.T, kernel=kernel),
                                      oracle(b.T, units_from_formats(g.T)))


@pytest.mark.parametrize("kernel", KERNELS)
def test_fp4_strided_views(kernel):
    rng = np.random.default_rng(8)
    g = rand_fp4(rng, (60, 140))
    b = rand_int4(rng, (140, 90), True)
    np.testing.assert_array_equal(gemm.fp4_int4_matmul(g[::2, :70], b[::2, ::3], kernel=kernel),
                                  oracle(units_from_formats(g[::2, :70]), b[::2, ::3]))
    np.testing.assert_array_equal(gemm.int4_fp4_matmul(b.T[:50, ::2], g.T[::2, :33], kernel=kernel),
                                  oracle(b.T[:50, ::2], units_from_formats(g.T[::2, :33])))


def test_fp4_long_k_real_chunks():
    # fp4 x int4 with the FP4 operand on the left has the shortest int32-safe chunk
    # (offset FP4 <= 128 times |int4| <= 15: about 1.1 million); cross it for real with
    # operands that push the raw accumulator past int32 if one chunk covered all of K
    k = 1_500_000
    rng = np.random.default_rng(9)
    g = np.full((1, k), 4, np.uint8)              # +64 units: offset operand 128
    g[0, rng.random(k) < 0.1] = 7                  # +4096: exercises the high group too
    b = np.full((k, 1), 15, np.uint8)
    ref = oracle(units_from_formats(g), b)
    for kernel in KERNELS:
        np.testing.assert_array_equal(gemm.fp4_int4_matmul(g, b, kernel=kernel), ref)
        np.testing.assert_array_equal(gemm.int4_fp4_matmul(b.T, g.T, kernel=kernel), ref.T)
    # the engine entry points split K the same way (default kernel)
    np.testing.assert_array_equal(gemm.fp4_int4_matmul_unchecked(g, gemm.pack_int4(b)), ref)
    np.testing.assert_array_equal(gemm.int4_fp4_matmul_unchecked(b.T.copy(), g.T.copy()), ref.T)


@pytest.mark.parametrize("phase", [0, 1])
def test_scaled_variants(phase):
    rng = np.random.default_rng(10)
    a = rand_int4(rng, (12, 50), True)
    b = rand_int4(rng, (50, 9), False)
    c = gemm.int4_matmul_scaled(a, b, 0.37, 1.5e-3)
    assert c.dtype == np.float32
    np.testing.assert_array_equal(c, (oracle(a, b) * (0.37 * 1.5e-3)).astype(np.float32))
    fmt = RadixFP(4, 3, phase)
    grad = rng.normal(size=(12, 50)) * 0.01
    codes = fmt.encode(grad, 0.02)
    f = 2.0 if phase else 1.0
    got = gemm.fp4_int4_matmul_scaled(codes, b, 0.02, 0.5, phase=phase)
    exact = oracle(units_from_formats(codes), b) * (f * 4.0 ** -6 * 0.02 * 0.5)
    np.testing.assert_array_equal(got, exact.astype(np.float32))
    np.testing.assert_allclose(got, fmt.decode(codes, 0.02) @ (b * 0.5), rtol=1e-6, atol=1e-12)
    codes_r = fmt.encode(rng.normal(size=(50, 9)), 1.0)
    got = gemm.int4_fp4_matmul_scaled(a, codes_r, 0.25, 1.0, phase=phase)
    np.testing.assert_allclose(got, (a * 0.25) @ fmt.decode(codes_r, 1.0), rtol=1e-6, atol=1e-12)


# --------------------------------------------------------------------------- AMX, emulated
EMU_SHIM = """
#define Q4CORE_OPENMP 0
#define Q4_AMX_EMULATE 1
#include "gemm_driver.h"
int q4_emu_gemm(const uint8_t *A, int64_t lda, int64_t M, int64_t Mp, const int8_t *B,
                int64_t Kp, int64_t N, int64_t Np, const int32_t *corr, int32_t *out) {
    return q4_gemm(Q4_AMX, A, lda, M, Mp, B, Kp, N, Np, 0, Kp, corr, 0, 0, out, N, 1, 0);
}
/* one K chunk [k0, k1) into int64 out: mode 2 stores, mode 1 adds */
int q4_emu_gemm_range(const uint8_t *A, int64_t lda, int64_t M, int64_t Mp, const int8_t *B, int64_t Kp,
                      int64_t N, int64_t Np, int64_t k0, int64_t k1, const int32_t *corr, int mode,
                      int64_t *out) {
    return q4_gemm(Q4_AMX, A, lda, M, Mp, B, Kp, N, Np, k0, k1, corr, mode, 0, out, N, 1, 0);
}
/* pretend the CPU lacks AVX-512 VNNI (on = 0), or restore what it reported (on = 1): the AMX kernel's
 * K tail then runs on the portable kernel */
void q4_emu_set_vnni(int on) {
    static int saved = -1;
    q4_cpu_features *f = (q4_cpu_features *)q4_features();
    if (saved < 0) saved = f->avx512vnni;
    f->avx512vnni = on ? saved : 0;
}
"""


@pytest.fixture(scope="module")
def amx_emulated(tmp_path_factory):
    """The real q4_tile_amx + driver compiled against scalar tile emulation (gemm_amx_emu.h)."""
    if not gemm.kernel_info()["compiled"]:
        pytest.skip("q4core._gemm is not built")
    lib = build_emulation(tmp_path_factory, EMU_SHIM, "q4amxemu")
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.q4_emu_gemm.argtypes = [ptr, i64, i64, i64, ptr, i64, i64, i64, ptr, ptr]
    lib.q4_emu_gemm.restype = ctypes.c_int
    lib.q4_emu_gemm_range.argtypes = [ptr, i64, i64, i64, ptr, i64, i64, i64, i64, i64, ptr, ctypes.c_int, ptr]
    lib.q4_emu_gemm_range.restype = ctypes.c_int
    lib.q4_emu_set_vnni.argtypes = [ctypes.c_int]
    return lib


def test_amx_kernel_logic_under_emulation(amx_emulated):
    """AMX is absent on the development machine: check the kernel's tiling, strides, 16-row /
    16-column remainders and K blocking with the tile instructions emulated in C."""
    from q4core import _gemm
    rng = np.random.default_rng(12)
    identity = np.arange(256).astype(np.uint8).view(np.int8)
    for (m, k, n) in [(1, 1, 1), (16, 64, 16), (17, 33, 129), (48, 700, 40), (32, 1100, 33),
                      (40, 1024, 50)]:
        for signed in (True, False):
            a = rand_int4(rng, (m, k), signed)
            b = rand_int4(rng, (k, n), not signed)
            packed, kp, np_, sums, seen = _gemm.pack_b(b.view(np.uint8), identity[None, :])
            packed, sums = packed[0], sums[0]
            assert np.array_equal(np.nonzero(seen)[0], np.unique(b.view(np.uint8)))
            a_bufs, seen = _gemm.prep_a(a.view(np.uint8), gemm._offset_table(signed)[None, :], kp, 16)
            a_buf = a_bufs[0]
            assert np.array_equal(np.nonzero(seen)[0], np.unique(a.view(np.uint8)))
            offset = 8 if signed else 0
            assert np.array_equal(sums, _gemm.column_sums(packed, kp, np_))
            corr = (sums * offset).astype(np.int32)
            out = np.zeros((m, n), np.int32)
            rc = amx_emulated.q4_emu_gemm(a_buf.ctypes.data, a_buf.shape[1], m, a_buf.shape[0],
                                          packed.ctypes.data, kp, n, np_, corr.ctypes.data,
                                          out.ctypes.data)
            assert rc == 0
            np.testing.assert_array_equal(out, oracle(a, b), err_msg=f"{m}x{k}x{n}")


@pytest.mark.parametrize("tail", ["vnni", "portable"])
def test_amx_k_tails_and_chunks_under_emulation(amx_emulated, tail):
    """K is padded to 4, and the AMX kernel steps 64 k per tile: the driver gives a last K % 64 to the VNNI
    kernel, or to the portable one on a CPU without it (forced here).  Products in K chunks (int64, stored then
    added, as q4core.gemm splits a long K) whose last chunk ends off a multiple of 64, K below 64 (all tail, A's
    row stride Kp), and the driver's refusal of K ranges that do not fit the layout."""
    from q4core import _gemm
    if tail == "vnni" and not gemm.kernel_info()["cpu"]["avx512_vnni"]:
        pytest.skip("no AVX-512 VNNI here: the tail already runs on the portable kernel")
    rng = np.random.default_rng(13)
    identity = np.arange(256).astype(np.uint8).view(np.int8)[None, :]
    ptr = ctypes.c_void_p
    amx_emulated.q4_emu_set_vnni(tail == "vnni")
    try:
        for (m, k, n, chunk) in [(16, 4, 16, 64), (20, 36, 40, 64), (33, 60, 17, 64), (17, 200, 33, 64),
                                 (40, 700, 50, 128), (16, 1100, 32, 512), (32, 1100, 48, 1024)]:
            a = rand_int4(rng, (m, k), True)
            b = rand_int4(rng, (k, n), False)
            packed, kp, np_, _, _ = _gemm.pack_b(b.view(np.uint8), identity)
            bufs, _ = _gemm.prep_a(a.view(np.uint8), gemm._offset_table(True)[None, :], kp, 16, 1, False)
            assert kp == -(-k // 4) * 4 and bufs.shape[2] == (kp if kp < 64 else -(-kp // 64) * 64)
            out = np.zeros((m, n), np.int64)
            for c, k0 in enumerate(range(0, kp, chunk)):
                k1 = min(kp, k0 + chunk)
                corr = np.zeros(np_, np.int32)
                corr[:n] = 8 * b[k0:k1].astype(np.int64).sum(axis=0)       # the offset's zero-point correction
                rc = amx_emulated.q4_emu_gemm_range(bufs[0].ctypes.data, bufs.shape[2], m, bufs.shape[1],
                                                    packed[0].ctypes.data, kp, n, np_, k0, k1,
                                                    corr.ctypes.data, 2 if c == 0 else 1, out.ctypes.data)
                assert rc == 0
            np.testing.assert_array_equal(out, oracle(a, b), err_msg=f"{m}x{k}x{n} chunk {chunk} tail {tail}")
        # ranges the layout cannot take: past Kp, ending off 64 before Kp, starting off 64, Kp not k-groups
        a_buf, b_buf = bufs[0], packed[0]
        for (kp_, k0, k1) in [(kp, 0, kp + 4), (kp, 0, 100), (kp, 4, kp), (kp - 2, 0, kp - 2)]:
            rc = amx_emulated.q4_emu_gemm_range(a_buf.ctypes.data, a_buf.shape[1], m, a_buf.shape[0],
                                                b_buf.ctypes.data, kp_, n, np_, k0, k1, ptr(None), 2,
                                                out.ctypes.data)
            assert rc == -4, (kp_, k0, k1)
    finally:
        amx_emulated.q4_emu_set_vnni(1)


@pytest.mark.parametrize("shape,dtype", [((0,), np.uint8), ((1,), np.int8), ((3, 65), np.uint8),
                                         ((2, 17, 129), np.int32), ((5, 7), np.int64)])
def test_aligned_zeros_are_zero_and_start_on_a_cache_line(shape, dtype):
    from q4core import _gemm
    for _ in range(4):      # different allocations land at different offsets
        x = _gemm.aligned_zeros(shape, dtype)
        assert x.shape == shape and x.dtype == dtype and x.flags.c_contiguous and x.flags.writeable
        assert not x.any()
        assert x.size == 0 or x.ctypes.data % _gemm.OPERAND_ALIGN == 0   # empty: no data to align


def test_operand_buffers_start_on_a_cache_line():
    """AMX tile rows are 64 bytes: a buffer 16 bytes off (numpy's default for large arrays)
    splits every row over two cache lines and halves the kernel's speed."""
    from q4core import _gemm
    rng = np.random.default_rng(21)
    for (m, k, n) in [(5, 70, 9), (33, 200, 40), (300, 1100, 17)]:
        b = rand_fp4(rng, (k, n))
        packed, kp, np_, _, _ = _gemm.pack_b(b, gemm._RIGHT_FP4_TABLES)
        assert all(packed[t].ctypes.data % _gemm.OPERAND_ALIGN == 0 for t in range(2))
        bufs, _ = _gemm.prep_a(rand_fp4(rng, (m, k)), gemm._LEFT_FP4_TABLES, kp, 16)
        assert all(bufs[t].ctypes.data % _gemm.OPERAND_ALIGN == 0 for t in range(2))
        assert bufs.shape[2] % _gemm.OPERAND_ALIGN == 0      # so every row starts aligned too


def _packings(_gemm):
    """Scalar loops, then the VBMI loops (the same again where the CPU lacks VBMI)."""
    try:
        for simd in (False, True):
            _gemm.set_pack_simd(simd)
            yield simd
    finally:
        _gemm.set_pack_simd(True)


def _source_bytes(rng, shape, wide):
    """Nibbles, or nibbles with a few bytes >= 16 (those take the byte-by-byte flag path)."""
    x = rng.integers(0, 16, shape).astype(np.uint8)
    if wide:
        x[rng.random(shape) < 0.02] = rng.integers(16, 256)
    return x


def _misaligned_copy(x, offset=16):
    """A C-contiguous copy of ``x`` whose data starts ``offset`` bytes past a 64-byte line."""
    raw = np.zeros(x.nbytes + 128, np.uint8)
    start = (offset - raw.ctypes.data) % 64
    out = raw[start:start + x.nbytes].view(x.dtype).reshape(x.shape)
    out[...] = x
    assert out.ctypes.data % 64 == offset
    return out


@pytest.mark.parametrize("kernel", FAST)
def test_gemm_takes_misaligned_operand_buffers(kernel):
    """Buffers made elsewhere (the engine's fused operand makers) may start anywhere: gemm
    copies a misaligned one to an aligned buffer, and the product is the same."""
    from q4core import _gemm
    rng = np.random.default_rng(23)
    m, k, n = 45, 300, 70
    a = rand_int4(rng, (m, k), True)
    b = rand_int4(rng, (k, n), True)
    identity = np.arange(256).astype(np.uint8).view(np.int8)[None, :]
    packed, kp, np_, sums, _ = _gemm.pack_b(b.view(np.uint8), identity)
    bufs, _ = _gemm.prep_a(a.view(np.uint8), gemm._offset_table(True)[None, :], kp,
                           _gemm.ROW_MULTIPLES[gemm._KERNEL_ID[kernel]])
    for a_buf, b_buf in [(bufs[0], packed[0]), (_misaligned_copy(bufs[0]), packed[0]),
                         (bufs[0], _misaligned_copy(packed[0])),
                         (_misaligned_copy(bufs[0], 32), _misaligned_copy(packed[0], 8))]:
        c = _gemm.gemm((a_buf,), m, (b_buf,), n, kp, np_, gemm._kchunk(225), (8,), (0,), 225,
                       gemm._KERNEL_ID[kernel], 0, (sums[0],))
        np.testing.assert_array_equal(c, oracle(a, b))
    aligned = _gemm.aligned_zeros((3, 64), np.uint8)
    assert _gemm._aligned(aligned) is aligned
    moved = _gemm._aligned(_misaligned_copy(bufs[0]))
    assert moved.ctypes.data % 64 == 0 and np.array_equal(moved, bufs[0])


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 40), k=st.integers(1, 260), n=st.integers(1, 150), tables=st.integers(1, 2),
       wide=st.booleans(), reverse=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_vbmi_packing_equals_scalar_packing(m, k, n, tables, wide, reverse, seed):
    """pack_b's and prep_a's AVX-512 VBMI loops give the scalar loops' bytes, column sums and
    presence flags: N and K tails (masked 64-byte chunks, k-groups past K), bytes >= 16, both
    table counts, and a row-reversed (negative stride) source."""
    from q4core import _gemm
    rng = np.random.default_rng(seed)
    b = _source_bytes(rng, (k, n), wide)
    a = _source_bytes(rng, (m, k), wide)
    if reverse:
        b, a = b[::-1], a[::-1]
    tabs_b = rng.integers(-128, 128, (tables, 256)).astype(np.int8)
    tabs_a = rng.integers(0, 256, (tables, 256)).astype(np.uint8)
    kp = _gemm._round_up(k, _gemm.K_PAD)
    results = []
    for _ in _packings(_gemm):
        results.append((_gemm.pack_b(b, tabs_b), _gemm.prep_a(a, tabs_a, kp, 16),
                        _gemm.prep_a(a, tabs_a, kp, 8, 0, False)))
    (pb0, pa0, pn0), (pb1, pa1, pn1) = results
    for x, y in zip(pb0, pb1):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(pa0[0], pa1[0])
    np.testing.assert_array_equal(pa0[1], pa1[1])
    np.testing.assert_array_equal(pn0[0], pn1[0])
    assert pn0[1] is None and pn1[1] is None
    # and both against the definition
    packed, kp_b, np_, sums, seen = pb1
    assert kp_b == kp
    for t in range(tables):
        mapped = tabs_b[t][b].astype(np.int64)
        np.testing.assert_array_equal(sums[t, :n], mapped.sum(axis=0))
        unpacked = packed[t].reshape(np_ // 16, kp // 4, 16, 4).transpose(1, 3, 0, 2).reshape(kp, np_)
        np.testing.assert_array_equal(unpacked[:k, :n], mapped)
        assert not unpacked[k:].any() and not unpacked[:, n:].any()
    np.testing.assert_array_equal(np.nonzero(seen)[0], np.unique(b))


@pytest.mark.parametrize("kernel", FAST)
def test_gemms_equal_oracle_with_either_packing(kernel):
    from q4core import _gemm
    rng = np.random.default_rng(22)
    a = rand_int4(rng, (37, 203), True)
    b = rand_int4(rng, (203, 70), False)
    g = rand_fp4(rng, (37, 203))
    gr = rand_fp4(rng, (203, 70))
    for _ in _packings(_gemm):
        np.testing.assert_array_equal(gemm.int4_matmul(a, b, kernel=kernel), oracle(a, b))
        np.testing.assert_array_equal(gemm.fp4_int4_matmul(g, b, kernel=kernel),
                                      oracle(units_from_formats(g), b))
        np.testing.assert_array_equal(gemm.int4_fp4_matmul(a, gr, kernel=kernel),
                                      oracle(a, units_from_formats(gr)))


# --------------------------------------------------------------------------- dispatch
def test_kernel_info_and_available():
    info = gemm.kernel_info()
    for key in ("cpu", "available_kernels", "chosen_kernel", "env_override", "openmp", "threads"):
        assert key in info
    assert info["available_kernels"] == KERNELS
    assert KERNELS[-1] == "reference"
    if info["compiled"]:
        assert "portable" in KERNELS
        for flag in ("avx2", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "os_amx"):
            assert flag in info["cpu"]
    assert info["threads"] >= 1


@pytest.mark.parametrize("name", KERNELS)
def test_env_var_forces_kernel(name, monkeypatch):
    monkeypatch.setenv("Q4CORE_KERNEL", name)
    assert gemm.kernel_info()["chosen_kernel"] == name
    rng = np.random.default_rng(11)
    a = rand_int4(rng, (9, 70), True)
    b = rand_int4(rng, (70, 13), True)
    np.testing.assert_array_equal(gemm.int4_matmul(a, b), oracle(a, b))


@pytest.mark.parametrize("name", [n for n in ALL_NAMES if n not in KERNELS])
def test_unavailable_kernel_raises(name, monkeypatch):
    a = np.zeros((2, 3), np.int8)
    b = np.zeros((3, 2), np.int8)
    with pytest.raises(RuntimeError, match=f"'{name}' is not available"):
        gemm.int4_matmul(a, b, kernel=name)
    monkeypatch.setenv("Q4CORE_KERNEL", name)
    with pytest.raises(RuntimeError, match="Q4CORE_KERNEL"):
        gemm.int4_matmul(a, b)
    assert "env_error" in gemm.kernel_info()


def test_bad_inputs_raise_clear_errors(monkeypatch):
    a = np.zeros((2, 3), np.int8)
    b = np.zeros((3, 4), np.int8)
    g = np.zeros((2, 3), np.uint8)
    with pytest.raises(TypeError, match="a must be an int8"):
        gemm.int4_matmul(a.astype(np.float32), b)
    with pytest.raises(TypeError, match="b must be an int8"):
        gemm.int4_matmul(a, b.astype(np.int16))
    with pytest.raises(ValueError, match=r"a \(signed int8\) must hold 4-bit values in \[-8, 7\]"):
        gemm.int4_matmul(np.full((2, 3), 8, np.int8), b)
    with pytest.raises(ValueError, match=r"b \(unsigned uint8\) must hold 4-bit values in \[0, 15\]"):
        gemm.int4_matmul(a, np.full((3, 4), 16, np.uint8))
    with pytest.raises(ValueError, match="found values in"):
        gemm.pack_int4(np.full((3, 4), -9, np.int8))
    with pytest.raises(ValueError, match="shape mismatch"):
        gemm.int4_matmul(a, np.zeros((4, 4), np.int8))
    with pytest.raises(ValueError, match="2-D"):
        gemm.int4_matmul(np.zeros(3, np.int8), b)
    with pytest.raises(ValueError, match="kernel must be one of"):
        gemm.int4_matmul(a, b, kernel="avx9000")
    monkeypatch.setenv("Q4CORE_KERNEL", "sse")
    with pytest.raises(ValueError, match="Q4CORE_KERNEL must be one of"):
        gemm.int4_matmul(a, b)
    monkeypatch.delenv("Q4CORE_KERNEL")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        gemm.int4_matmul(a, b, threads=0)
    with pytest.raises(TypeError, match="threads must be a positive int"):
        gemm.int4_matmul(a, b, threads=1.5)
    with pytest.raises(TypeError, match="g_codes must be a uint8"):
        gemm.fp4_int4_matmul(g.astype(np.int8), b)
    with pytest.raises(ValueError, match=r"g_codes must hold 4-bit FP4 codes in \[0, 15\]"):
        gemm.fp4_int4_matmul(np.full((2, 3), 16, np.uint8), b)
    with pytest.raises(ValueError, match="shape mismatch"):
        gemm.int4_fp4_matmul(a, np.zeros((4, 4), np.uint8))
    with pytest.raises(TypeError, match="only the right-hand INT4 operand may be packed"):
        gemm.int4_matmul(gemm.pack_int4(a), b)
    with pytest.raises(ValueError, match="phase must be 0 or 1"):
        gemm.fp4_int4_matmul_scaled(g, b, 1.0, 1.0, phase=2)
    with pytest.raises(ValueError, match="scale_a must be finite"):
        gemm.int4_matmul_scaled(a, b, float("nan"), 1.0)
    with pytest.raises(TypeError, match="g_scale must be a real number"):
        gemm.fp4_int4_matmul_scaled(g, b, "1", 1.0)


# --------------------------------------------------------------------------- benchmark smoke run
def test_bench_gemm_smoke(tmp_path, capsys):
    import json

    from q4core.bench import gemm as bench_gemm
    out = tmp_path / "gemm.json"
    assert bench_gemm.main(["--sizes", "40", "--threads", "1", "--repeat", "1",
                            "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    ops = {(r["op"], r["kernel"]) for r in result["records"]}
    assert ("fp32", "numpy") in ops and ("fakequant_int4", "numpy") in ops
    for kernel in FAST:
        for op in ("int4xint4", "fp4xint4", "int4xfp4"):
            assert (op, kernel) in ops
    assert all(r["gops"] > 0 and r["ratio_vs_fp32"] > 0 for r in result["records"])
    assert "M=N=K=40, threads=1" in capsys.readouterr().out


# --------------------------------------------------------------------------- the kernel table
def _header_table():
    """(ID, name, rows macro) of every X(...) row of the C kernel table, parsed from the header."""
    import re
    text = (Path(gemm.__file__).parent / "src" / "gemm_kernels.h").read_text()
    body = text[text.index("#define Q4_KERNEL_TABLE(X)"):text.index("/* kernel ids")]
    return re.findall(r"X\((\w+), (\w+), (\w+),", body)


def test_kernel_names_come_from_the_c_table():
    rows = _header_table()
    assert len(rows) >= 5
    assert list(gemm.KERNEL_NAMES) == [name for _, name, _ in rows] + ["reference"]
    if not gemm.kernel_info()["compiled"]:
        pytest.skip("q4core._gemm is not built")
    from q4core import _gemm
    assert list(_gemm.KERNELS) == [name for _, name, _ in rows]
    table = gemm.kernel_info()["kernels"]
    assert [k["name"] for k in table] == list(gemm.KERNEL_NAMES)
    for i, k in enumerate(table[:-1]):
        assert k["id"] == i and k["row_multiple"] == _gemm.row_multiple(i) == _gemm.ROW_MULTIPLES[i]
        assert k["requires"]
    # what each register block steps over, unchanged by the table (AMX tiles are 16 rows)
    assert {k["name"]: k["row_multiple"] for k in table[:-1]} == {
        "amx": 16, "vnni": 8, "avxvnni": 4, "avx2": 4, "portable": 4}
    assert table[-1]["name"] == "reference" and table[-1]["supported"]
    assert [k["name"] for k in table if k["compiled"] and k["supported"]] + ["reference"] \
        == gemm.available_kernels()
    assert (_gemm.PANEL_COLS, _gemm.K_PAD, _gemm.K_ALIGN) == (16, 4, 64)


@pytest.mark.parametrize("k, kp, lda", [(1, 4, 4), (16, 16, 16), (33, 36, 36), (63, 64, 64), (64, 64, 64),
                                        (65, 68, 128), (100, 100, 128), (512, 512, 576), (700, 700, 704)])
def test_k_is_padded_to_a_k_group(k, kp, lda):
    """K is padded to a k-group (4), not to the AMX tile row (64): at K = 16 the kernels multiply 16 k, not
    64 (a 4x saving where a convolution has 16 channels).  A's row stride is Kp below 64 (short rows
    share a cache line), else Kp rounded up to 64 with the aliasing skew; the fused weight packing agrees."""
    from q4core import _gemm, _quant, quant
    from q4core.formats import INT4_SYM
    rng = np.random.default_rng(k)
    b = rand_int4(rng, (k, 20), True)
    packed, kp_b, np_, sums, _ = _gemm.pack_b(b.view(np.uint8), np.arange(256).astype(np.uint8).view(np.int8)[None, :])
    assert (kp_b, np_, packed.shape) == (kp, 32, (1, kp * 32))
    bufs, _ = _gemm.prep_a(rand_int4(rng, (5, k), True).view(np.uint8), gemm._offset_table(True)[None, :], kp, 8)
    assert bufs.shape == (1, 8, lda) and not bufs[0, :, k:].any()
    w = rng.normal(size=(k, 20)).astype(np.float32)
    assert _quant.encode_pack_b(w, 0.1, *quant._cached_params(INT4_SYM))[2] == kp
    with pytest.raises(ValueError, match="k_multiple"):
        _gemm.pack_b(b.view(np.uint8), np.arange(256).astype(np.uint8).view(np.int8)[None, :], 0, 6)


def test_c_enum_follows_the_table(tmp_path):
    """The C enum ids (used by the driver) are the Python kernel ids, in table order."""
    cc = shutil.which(os.environ.get("CC", "cc").split()[0])
    if cc is None:
        pytest.skip("needs a C compiler")
    src = tmp_path / "enum.c"
    src.write_text('#include <stdio.h>\n#define Q4CORE_OPENMP 0\n#include "gemm_driver.h"\n'
                   'int main(void) { for (int i = 0; i < Q4_NKERNELS; i++) '
                   'printf("%s %d\\n", q4_kernel_name(i), q4_row_multiple(i));\n'
                   'printf("%d %d %d %d %d\\n", Q4_AMX, Q4_VNNI, Q4_AVXVNNI, Q4_AVX2, Q4_PORTABLE);'
                   ' return 0; }\n')
    exe = tmp_path / "enum"
    subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-I",
                    str(Path(gemm.__file__).parent / "src"), str(src), "-o", str(exe)],
                   check=True, capture_output=True)
    lines = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split("\n")
    names = [line.split()[0] for line in lines[:-2]]
    assert names == list(gemm.KERNEL_NAMES[:-1])
    assert lines[-2].split() == [str(names.index(n)) for n in
                                 ("amx", "vnni", "avxvnni", "avx2", "portable")]


# --------------------------------------------------------------------------- engine entry points
def _fp4_codes(rng, shape, phase):
    x = rng.normal(size=shape) * np.exp2(rng.uniform(-14, 2, size=shape))
    x[rng.random(shape) < 0.2] = 0.0
    return RadixFP(4, 3, phase).encode(x, 1.0)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(0, 40), k=st.integers(0, 200), n=st.integers(0, 40),
       a_signed=st.booleans(), b_signed=st.booleans(), phase=st.sampled_from([0, 1]),
       threads=st.sampled_from([None, 1, 2]), seed=st.integers(0, 2**32 - 1))
def test_unchecked_equals_public_equals_oracle(m, k, n, a_signed, b_signed, phase, threads, seed):
    rng = np.random.default_rng(seed)
    a = rand_int4(rng, (m, k), a_signed)
    b = rand_int4(rng, (k, n), b_signed)
    packed = gemm.pack_int4(b)
    g_left = _fp4_codes(rng, (m, k), phase)
    g_right = _fp4_codes(rng, (k, n), phase)
    # the oracle's units come from the formats module (a phase only scales the values)
    units_l, units_r = units_from_formats(g_left), units_from_formats(g_right)
    for kernel in KERNELS:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("Q4CORE_KERNEL", kernel)
            for got, public, ref in [
                (gemm.int4_matmul_unchecked(a, packed, threads=threads),
                 gemm.int4_matmul(a, packed, threads=threads), oracle(a, b)),
                (gemm.fp4_int4_matmul_unchecked(g_left, packed, threads=threads),
                 gemm.fp4_int4_matmul(g_left, packed, threads=threads), oracle(units_l, b)),
                (gemm.int4_fp4_matmul_unchecked(a, g_right, threads=threads),
                 gemm.int4_fp4_matmul(a, g_right, threads=threads), oracle(a, units_r)),
            ]:
                # the engine may take an FP4 product as int32 when every exact entry fits (narrow)
                assert got.dtype in (public.dtype, np.dtype(np.int32)) and got.shape == public.shape == ref.shape
                np.testing.assert_array_equal(got, public, err_msg=kernel)
                np.testing.assert_array_equal(got, ref, err_msg=kernel)


@pytest.mark.parametrize("k", [gemm._INT32_MAX // gemm._FP4_ENTRY_BOUND, gemm._INT32_MAX // gemm._FP4_ENTRY_BOUND + 1])
def test_unchecked_fp4_products_narrow_to_int32_only_while_every_entry_fits(k):
    """The largest FP4 x INT4 entries (units +-4**6 times 15) summed over the longest K that keeps them inside
    int32 come back as int32 and exact, on every kernel; one K more and they come back as int64, still exact."""
    units = gemm.fp4_units(np.arange(16, dtype=np.uint8))
    top, bottom = np.uint8(np.argmax(units)), np.uint8(np.argmin(units))
    assert units[top] == 4 ** 6 and units[bottom] == -4 ** 6
    g_left = np.array([[top] * k, [bottom] * k], np.uint8)
    b = np.full((k, 2), 15, np.uint8)
    packed = gemm.pack_int4(b)
    fits = k * 4 ** 6 * 15 <= gemm._INT32_MAX
    want = np.array([[k * 4 ** 6 * 15] * 2, [-k * 4 ** 6 * 15] * 2], np.int64)
    for kernel in KERNELS:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("Q4CORE_KERNEL", kernel)
            for got, exact in ((gemm.fp4_int4_matmul_unchecked(g_left, packed), want),
                               (gemm.int4_fp4_matmul_unchecked(b.T.copy(), g_left.T.copy()), want.T)):
                expect = np.int32 if fits and kernel != "reference" else np.int64
                assert got.dtype == expect, kernel
                np.testing.assert_array_equal(got, exact, err_msg=kernel)



def _fused_k_limit(max_product):
    """Largest padded K whose two-group product the driver sums in int32 inside one pass
    (gemm_driver.h: max_product * Kp * (2**0 + 2**8) inside int32)."""
    kp = gemm._INT32_MAX // (max_product * 257)
    return kp // gemm._gemm.K_PAD * gemm._gemm.K_PAD


@pytest.mark.parametrize("side", ["left", "right"])
def test_fp4_products_at_the_int32_two_group_limit(side):
    """The public (int64) FP4 products sum both exponent groups in int32 in one kernel pass while the
    driver's bound allows it (AVX-512 VNNI), else in int64 as before: extreme and random operands on
    both sides of that K limit, every kernel, 1 and 2 threads, exact and identical."""
    bound = gemm._FP4_INT4_BOUND if side == "left" else gemm._INT4_FP4_BOUND
    units = gemm.fp4_units(np.arange(16, dtype=np.uint8))
    top, bottom = np.uint8(np.argmax(units)), np.uint8(np.argmin(units))
    rng = np.random.default_rng(31)
    limit = _fused_k_limit(bound)
    for k in (limit, limit + 1):
        g = np.array([[top] * k, [bottom] * k, [7 if i % 2 else 4 for i in range(k)]], np.uint8)
        g = np.concatenate([g, rand_fp4(rng, (5, k))])
        b = np.concatenate([np.full((k, 2), 15, np.uint8), np.full((k, 2), 0, np.uint8),
                            rng.integers(0, 16, (k, 13), dtype=np.uint8)], axis=1)
        bs = (b.astype(np.int16) - 8).astype(np.int8)
        for bb in (b, bs):
            if side == "left":
                ref = oracle(units_from_formats(g), bb)
            else:
                ref = oracle(bb.T, units_from_formats(g.T))
            for kernel in KERNELS:
                for t in (1, 2):
                    got = (gemm.fp4_int4_matmul(g, bb, kernel=kernel, threads=t) if side == "left"
                           else gemm.int4_fp4_matmul(bb.T, g.T, kernel=kernel, threads=t))
                    assert got.dtype == np.int64
                    np.testing.assert_array_equal(got, ref, err_msg=f"{kernel} k={k} threads={t}")


def test_unchecked_phase_codes_decode_to_the_same_product():
    """Both TPR phases produce codes of one kind: the unchecked product times f * 4**-6 is the
    float product of the decoded values (phase 1: f = 2)."""
    rng = np.random.default_rng(21)
    b = rand_int4(rng, (70, 9), True)
    packed = gemm.pack_int4(b)
    for phase in (0, 1):
        fmt = RadixFP(4, 3, phase)
        codes = fmt.encode(rng.normal(size=(5, 70)), 1.0)
        f = 2.0 if phase else 1.0
        c = gemm.fp4_int4_matmul_unchecked(codes, packed, threads=1)
        np.testing.assert_array_equal(c * (f * 4.0 ** -6), fmt.decode(codes, 1.0) @ b)


def test_unchecked_skips_validation_but_keeps_k_chunks(monkeypatch):
    rng = np.random.default_rng(22)
    a = rand_int4(rng, (7, 300), True)
    b = rand_int4(rng, (300, 5), False)
    g = rand_fp4(rng, (7, 300))
    packed = gemm.pack_int4(b)
    short = gemm.pack_int4(b[:299])

    def no_checks(*args, **kw):
        raise AssertionError("an engine entry point ran a validation scan")

    monkeypatch.setattr(gemm, "_check_int4", no_checks)
    monkeypatch.setattr(gemm, "_check_fp4", no_checks)
    monkeypatch.setattr(gemm, "_KCHUNK_LIMIT", 64)          # five K chunks summed in int64
    for kernel in KERNELS:
        monkeypatch.setenv("Q4CORE_KERNEL", kernel)
        c = gemm.int4_matmul_unchecked(a, packed)
        assert c.dtype == np.int32
        np.testing.assert_array_equal(c, oracle(a, b))
        np.testing.assert_array_equal(gemm.fp4_int4_matmul_unchecked(g, packed),
                                      oracle(units_from_formats(g), b))
        np.testing.assert_array_equal(gemm.int4_fp4_matmul_unchecked(b.T.copy(), g.T.copy()),
                                      oracle(b.T, units_from_formats(g).T))
        # a plain (unpacked) right operand is accepted too
        np.testing.assert_array_equal(gemm.int4_matmul_unchecked(a, b), oracle(a, b))
    # the one check kept: inner dimensions (O(1); a mismatch would be silently zero-padded)
    with pytest.raises(ValueError, match="shape mismatch: a is 7x300 and b_packed is 299x5"):
        gemm.int4_matmul_unchecked(a, short)
    with pytest.raises(ValueError, match="g_codes.shape.1. must equal b_packed"):
        gemm.fp4_int4_matmul_unchecked(g[:, :299], packed)
    with pytest.raises(ValueError, match="a.shape.1. must equal g_codes"):
        gemm.int4_fp4_matmul_unchecked(a, g[:, :5].copy())


def test_unchecked_kernel_is_cached_and_follows_the_env_var(monkeypatch):
    rng = np.random.default_rng(23)
    a = rand_int4(rng, (3, 10), True)
    packed = gemm.pack_int4(rand_int4(rng, (10, 4), True))
    monkeypatch.delenv("Q4CORE_KERNEL", raising=False)
    gemm.int4_matmul_unchecked(a, packed)
    default_id = gemm._ENGINE_KERNEL[1]
    assert gemm.KERNEL_NAMES[default_id] == KERNELS[0]
    calls = []
    real = gemm._resolve_kernel
    monkeypatch.setattr(gemm, "_resolve_kernel", lambda k: calls.append(k) or real(k))
    for _ in range(3):
        gemm.int4_matmul_unchecked(a, packed)
    assert calls == []                                       # resolved once, then cached
    monkeypatch.setenv("Q4CORE_KERNEL", "reference")
    np.testing.assert_array_equal(gemm.int4_matmul_unchecked(a, packed), oracle(a, packed.as_array()))
    assert calls == [None] and gemm._ENGINE_KERNEL[1] == gemm._REFERENCE_ID
    monkeypatch.setenv("Q4CORE_KERNEL", "sse")
    with pytest.raises(ValueError, match="Q4CORE_KERNEL must be one of"):
        gemm.int4_matmul_unchecked(a, packed)


# --------------------------------------------------------------------------- threads bound
THREADS_SCRIPT = """
import sys
import numpy as np
from q4core import gemm
rng = np.random.default_rng(0)
a = rng.integers(-8, 8, (70, 130)).astype(np.int8)
b = rng.integers(0, 16, (130, 50)).astype(np.uint8)
g = rng.integers(0, 16, (70, 130)).astype(np.uint8)
ref = a.astype(np.int64) @ b.astype(np.int64)
t = eval(sys.argv[1])
packed = gemm.pack_int4(b)
assert (gemm.int4_matmul(a, packed, threads=t) == ref).all()
assert (gemm.int4_matmul(a, b, threads=t) == ref).all()
assert (gemm.int4_matmul_unchecked(a, packed, threads=t) == ref).all()
gu = gemm.fp4_units(g)
assert (gemm.fp4_int4_matmul(g, packed, threads=t) == gu @ b.astype(np.int64)).all()
assert (gemm.fp4_int4_matmul_unchecked(g, packed, threads=t) == gu @ b.astype(np.int64)).all()
assert (gemm.int4_fp4_matmul(a.T.copy(), g, threads=t) == a.T.astype(np.int64) @ gu).all()
assert (gemm.int4_fp4_matmul_unchecked(a.T.copy(), g, threads=t) == a.T.astype(np.int64) @ gu).all()
info = gemm.kernel_info()
assert 1 <= info["threads"] <= info["thread_limit"], info
print("ok", info["threads"], info["thread_limit"])
"""


@pytest.mark.parametrize("threads, env", [("100000", None), ("2**40", None), ("None", "100000"),
                                          ("None", "2147483647"), ("1", "100000")])
def test_huge_thread_requests_are_clamped_not_fatal(threads, env):
    """threads=100000 or OMP_NUM_THREADS=100000 used to segfault while libgomp created the
    threads; run in a subprocess so that a crash fails this test instead of killing pytest."""
    run_env = dict(os.environ)
    run_env.pop("Q4CORE_KERNEL", None)
    if env is not None:
        run_env["OMP_NUM_THREADS"] = env
    proc = subprocess.run([sys.executable, "-c", THREADS_SCRIPT, threads], env=run_env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.startswith("ok")


def test_thread_limit_is_reported():
    info = gemm.kernel_info()
    assert info["thread_limit"] >= 1 and info["threads"] <= info["thread_limit"]
    assert "clamped" in info["thread_clamp"]
    if info["compiled"] and info["openmp"]:
        assert info["thread_limit"] <= max(os.cpu_count() or 1, 1)


@pytest.mark.parametrize("scales", [(1e30, 1e30), (1e200, 1e200), (3e38, 1.0)])
def test_scaled_products_beyond_float32_raise_instead_of_returning_inf(scales):
    a = np.full((2, 3), 7, np.int8)
    b = np.full((3, 2), 7, np.int8)
    b[:, 1] = 0                        # a zero entry: 0 * Inf would be NaN
    g = np.full((2, 3), 7, np.uint8)   # FP4 units 4**6
    with pytest.raises(OverflowError, match=r"scale_a \* scale_b = .* exceeds the float32 range"):
        gemm.int4_matmul_scaled(a, b, *scales)
    with pytest.raises(OverflowError, match=r"g_scale \* b_scale = .* exceeds the float32 range"):
        gemm.fp4_int4_matmul_scaled(g, b, *scales)
    with pytest.raises(OverflowError, match=r"a_scale \* g_scale = .* exceeds the float32 range"):
        gemm.int4_fp4_matmul_scaled(a, g.T.copy(), *scales)
    # just inside: the largest scale whose product still fits gives finite, exact-as-float32 numbers
    fits = float(np.finfo(np.float32).max) / 147 / 2
    out = gemm.int4_matmul_scaled(a, b, fits, 1.0)
    assert np.isfinite(out).all() and out[0, 0] == np.float32(147 * fits)


# --------------------------------------------------------------------------- entry-point checks
def test_entry_points_reject_mismatched_operands():
    """The private entry points check their operands in C (no typed memoryviews on the fast
    path): every mismatch raises, none reaches the kernels."""
    from q4core import _gemm
    rng = np.random.default_rng(31)
    a = rand_int4(rng, (20, 70), True)
    b = rand_int4(rng, (70, 30), True)
    identity = np.arange(256).astype(np.uint8).view(np.int8)[None, :]
    packed, kp, np_, sums, _ = _gemm.pack_b(b.view(np.uint8), identity)
    bufs, _ = _gemm.prep_a(a.view(np.uint8), gemm._offset_table(True)[None, :], kp, 16)
    kid = gemm._KERNEL_ID[FAST[0]] if FAST else 0

    def run(a_buf=bufs[0], m=20, b_buf=packed[0], n=30, kp_=kp, np__=np_, colsums=(sums[0],), offs=(8,)):
        return _gemm.gemm((a_buf,), m, (b_buf,), n, kp_, np__, gemm._kchunk(225), offs, (0,), 225,
                          kid, 1, colsums)

    np.testing.assert_array_equal(run(), oracle(a, b))
    bad = [dict(n=np_ + 1),                                # more output columns than packed
           dict(m=bufs.shape[1] + 1),                      # more output rows than the buffer
           dict(kp_=kp + 64),                              # K padding the buffers do not have
           dict(kp_=-kp, np__=-np_),                       # negative padded shapes
           dict(b_buf=packed[0][:-16]),                    # packed B too short
           dict(colsums=(sums[0][:-1],)),                  # column sums too short
           dict(colsums=(sums[0].astype(np.int32),)),      # column sums of the wrong type
           dict(a_buf=bufs[0].view(np.int8)),              # A of the wrong type
           dict(a_buf=bufs[0][:, :64]),                    # A row stride below Kp (a strided view)
           dict(a_buf=bufs[0].ravel()),                    # A not 2-D
           dict(kp_=kp + 2, b_buf=np.zeros((kp + 2) * np_, np.int8)),    # Kp not a whole number of k-groups
           dict(a_buf=np.zeros((bufs.shape[1], kp + 2), np.uint8))]      # A row stride not one either
    assert kp % 4 == 0      # so kp + 2 is not whole k-groups
    for kw in bad:
        with pytest.raises((ValueError, TypeError)):
            run(**kw)
    # a strided A (rows further apart than its width) is copied, not rejected
    wide = np.zeros((bufs.shape[1], bufs.shape[2] + 64), np.uint8)
    wide[:, :bufs.shape[2]] = bufs[0]
    np.testing.assert_array_equal(run(a_buf=wide[:, :bufs.shape[2]]), oracle(a, b))
    with pytest.raises(ValueError):
        _gemm.prep_a(a.view(np.uint8), np.zeros((1, 255), np.uint8), kp, 16)
    with pytest.raises(ValueError):
        _gemm.prep_a(a.view(np.uint8), np.zeros((3, 256), np.uint8), kp, 16)
    with pytest.raises(ValueError):
        _gemm.prep_a(a.view(np.uint8), gemm._offset_table(True)[None, :], 64, 16)     # K > Kp
    with pytest.raises(ValueError):
        _gemm.prep_a(a.view(np.uint8), gemm._offset_table(True)[None, :], kp, 0)      # rows < 1
    with pytest.raises(ValueError):
        _gemm.prep_a(a.view(np.uint8), gemm._offset_table(True)[None, :], kp + 2, 16)  # Kp % 4
    with pytest.raises(ValueError):
        _gemm.column_sums(packed[0], kp - 2, np_)                                     # Kp % 4
    with pytest.raises(ValueError):
        _gemm.prep_a(a, gemm._offset_table(True)[None, :], kp, 16)                    # int8, not bytes
    with pytest.raises(ValueError):
        _gemm.pack_b(b.view(np.uint8), np.zeros((3, 256), np.int8))
    with pytest.raises(ValueError):
        _gemm.pack_b(b.view(np.uint8), np.zeros((1, 256), np.uint8))                  # tables must be int8
    with pytest.raises(ValueError):
        _gemm.column_sums(packed[0][:-1], kp, np_)


def test_entry_points_take_any_buffer():
    """Byte sources that are not ndarrays go through the buffer protocol as before (the same
    bytes as from arrays), strided sources are read with their strides, and a table stack whose
    rows are not 256 bytes apart is refused as before."""
    from q4core import _gemm
    rng = np.random.default_rng(32)
    a = rng.integers(0, 16, (9, 70)).astype(np.uint8)
    b = rng.integers(0, 16, (70, 21)).astype(np.uint8)
    tabs_a = rng.integers(0, 256, (2, 256)).astype(np.uint8)
    tabs_b = rng.integers(-128, 128, (2, 256)).astype(np.int8)
    kp = _gemm._round_up(70, _gemm.K_PAD)
    ref_a = _gemm.prep_a(a, tabs_a, kp, 16)
    ref_b = _gemm.pack_b(b, tabs_b)
    strided_a = np.zeros((2, 512), np.uint8)
    strided_a[:, :256] = tabs_a
    strided_b = np.zeros((2, 512), np.int8)
    strided_b[:, :256] = tabs_b
    with pytest.raises(ValueError):
        _gemm.prep_a(a, strided_a[:, :256], kp, 16)
    with pytest.raises(ValueError):
        _gemm.pack_b(b, strided_b[:, :256])
    for src_a, tab_a, src_b, tab_b in [(memoryview(a), memoryview(tabs_a), memoryview(b), memoryview(tabs_b)),
                                       (memoryview(a.tobytes()).cast('B', a.shape), tabs_a, b, tabs_b),
                                       (np.ascontiguousarray(a[:, ::-1])[:, ::-1], tabs_a,
                                        np.asfortranarray(b), tabs_b)]:
        got_a = _gemm.prep_a(src_a, tab_a, kp, 16)
        got_b = _gemm.pack_b(src_b, tab_b)
        np.testing.assert_array_equal(got_a[0], ref_a[0])
        np.testing.assert_array_equal(got_a[1], ref_a[1])
        for x, y in zip(got_b, ref_b):
            np.testing.assert_array_equal(x, y)


def test_internal_entry_points_refuse_none_and_overflowing_shapes():
    """Review findings: a None operand reached C through a typed memoryview (segfault), and Kp * Np could wrap
    past the length checks; a zero-itemsize dtype let aligned_zeros accept any element count."""
    from q4core import _gemm
    t8, tu8 = np.zeros((1, 256), np.int8), np.zeros((1, 256), np.uint8)
    for call in (lambda: _gemm.pack_b(None, t8), lambda: _gemm.pack_b(np.zeros((3, 3), np.uint8), None),
                 lambda: _gemm.prep_a(None, tu8, 64, 4), lambda: _gemm.prep_a(np.zeros((3, 3), np.uint8), None, 64, 4)):
        with pytest.raises(TypeError):
            call()
    with pytest.raises(ValueError):
        _gemm.column_sums(np.zeros(1024, np.int8), 2 ** 62, 64)
    with pytest.raises(ValueError):
        _gemm.gemm((np.zeros((0, 2 ** 58), np.uint8),), 0, (np.zeros(0, np.int8),), 16, 2 ** 58, 64, 2 ** 58,
                   (8,), (0,), 512, 1, 1)
    with pytest.raises(ValueError, match="too big"):
        _gemm.aligned_zeros((2 ** 62, 2 ** 62), "S")


# --------------------------------------------------------------------------- rescale in the kernel's store
def _engine_rescale(acc, factor, exact):
    """The engine's rescale written out here: float32 product when exact, else float64 rounded once."""
    if exact:
        return acc.astype(np.float32) * np.float32(factor)
    return (acc.astype(np.float64) * factor).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(FAST), st.integers(0, 150), st.integers(1, 300), st.integers(0, 300),
       st.sampled_from(["int", "fp4-left", "fp4-right"]), st.booleans(), st.integers(1, 2),
       st.integers(0, 2 ** 32 - 1))
@example("vnni" if "vnni" in FAST else FAST[0], 129, 257, 513, "fp4-left", False, 2, 0)
def test_scale_rescales_in_the_store_bit_for_bit(kernel, m, k, n, product, exact, threads, seed):
    """``scale=(factor, exact)`` of the engine entry points: float32 equal to rescaling the exact integers
    (int32 or int64 when the kernel cannot fuse it), over random shapes, factors and both roundings."""
    rng = np.random.default_rng(seed)
    factor = float(rng.uniform(0.5, 2.0) * 10.0 ** rng.integers(-9, 4))
    a_signed = bool(rng.integers(0, 2))
    saved = os.environ.get("Q4CORE_KERNEL")
    os.environ["Q4CORE_KERNEL"] = kernel
    try:
        if product == "int":
            a, b = rand_int4(rng, (m, k), a_signed), rand_int4(rng, (k, n), not a_signed)
            exact_ints = oracle(a, b)
            run = lambda s: gemm.int4_matmul_unchecked(a, gemm.pack_int4(b), threads, scale=s)  # noqa: E731
        elif product == "fp4-left":
            g, b = rand_fp4(rng, (m, k)), rand_int4(rng, (k, n), a_signed)
            exact_ints = oracle(units_from_formats(g), b)
            run = lambda s: gemm.fp4_int4_matmul_unchecked(g, gemm.pack_int4(b), threads, scale=s)  # noqa: E731
        else:
            a, g = rand_int4(rng, (m, k), a_signed), rand_fp4(rng, (k, n))
            exact_ints = oracle(a, units_from_formats(g))
            run = lambda s: gemm.int4_fp4_matmul_unchecked(a, g, threads, scale=s)  # noqa: E731
        got = run((factor, exact))
    finally:
        if saved is None:
            del os.environ["Q4CORE_KERNEL"]
        else:
            os.environ["Q4CORE_KERNEL"] = saved
    fp4 = g if product != "int" else None
    if m == 0 or n == 0 or (fp4 is not None and not fp4.any()):
        # nothing to fuse (empty, or an all-zero FP4 operand): the exact zeros, as without scale
        np.testing.assert_array_equal(got, exact_ints)
        return
    assert got.dtype == np.float32         # K <= 300 is one chunk: always rescaled in the store
    assert got.shape == (m, n)
    assert got.tobytes() == _engine_rescale(exact_ints, factor, exact).tobytes()


@pytest.mark.parametrize("kernel", FAST)
def test_scale_over_several_k_chunks_returns_the_integers(kernel, monkeypatch):
    """Where K runs in several chunks the kernel cannot rescale in its store: the integers come back."""
    monkeypatch.setattr(gemm, "_KCHUNK_LIMIT", 64)
    monkeypatch.setenv("Q4CORE_KERNEL", kernel)
    rng = np.random.default_rng(5)
    a, b = rand_int4(rng, (7, 300), True), rand_int4(rng, (300, 9), False)
    got = gemm.int4_matmul_unchecked(a, gemm.pack_int4(b), 1, scale=(0.25, True))
    assert got.dtype in (np.int32, np.int64)
    np.testing.assert_array_equal(got, oracle(a, b))
