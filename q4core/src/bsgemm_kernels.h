/* Block-scaled FP4 GEMM (MXFP4, NVFP4) on q4core's integer kernels; the exact result is defined in
 * q4core/bsgemm.py:
 *     acc[i, j] = 0.0;  for kb in order: acc[i, j] += (double)P_kb[i, j] * ((sa[i, kb] * sb[kb, j]) * 0.25)
 *     C[i, j] = acc[i, j] / denom                      (denom = product of the two tensor scales)
 * with P_kb the int32 product of K-block kb of the 2x-integer elements (in [-12, 12]).
 *
 * Operands (made by q4core/_bsgemm.pyx with the packing of gemm_pack.h):
 *   A  uint8, 2x-element + Q4_BS_OFFSET (so in [0, 24]: vpdpbusd / tdpbusd take u8 x s8), row-major,
 *      row stride lda, K zero-padded to Kp (a multiple of 64), rows zero-padded to Mp;
 *   B  int8 2x-elements packed in 16-column panels (gemm_portable.h), K padded to Kp, N to Np;
 *   corr  int32 (nkb, Np): Q4_BS_OFFSET * the column sums of B over each K-block (undoes the offset);
 *   qa  float64 (Mp, nkb): A's block scales divided by 4, zero-padded.  qa_i * sb_j equals (sa_i * sb_j) * 0.25,
 *       and P * qa_i * sb_j is exact (so a fused multiply-add rounds like the definition's multiply then add),
 *       for every scale q4core.bsgemm admits: 0 or magnitudes in [2**-400, 2**400] with at most 17
 *       significant bits (E8M0 and E4M3 scales are far inside);
 *   sb  float64 (nkb, Np) block scales of B's columns, zero-padded.
 * Every K-block starts at a multiple of blk (16 or 32, a divisor of 64), so the k-range [kb*blk, kb*blk + blk)
 * lies inside Kp and a short last block reads zero padding.  The int32 partial sums of one K-block come from
 * the INT4 GEMM's tile kernels (gemm_*.h, called with that k-range; any multiple of 4 works for them) or, for
 * AMX, from q4_bs_tile_amx below (tiles configured blk bytes deep, since tdpbusd sums over the tile's whole
 * depth); the float64 epilogue then runs per K-block in order.  The AVX-512 VNNI, AVX-VNNI and AVX2 kernels
 * instead fuse both and keep the float64 sums in registers (bsgemm_vnni.h, bsgemm_avx2.h); the portable
 * kernel and AMX (whose tile results must go through memory) use the int32 tile + epilogue path.  Each thread
 * owns whole output tiles and runs the same sequence of operations on each element, so the result is identical
 * for any thread count. */
#ifndef Q4_BSGEMM_KERNELS_H
#define Q4_BSGEMM_KERNELS_H

#include "gemm_driver.h"
#include "bsgemm_vnni.h"
#include "bsgemm_avx2.h"

#define Q4_BS_OFFSET 12     /* 2x E2M1 elements are in [-12, 12]; + 12 makes them unsigned */
#define Q4_BS_MC 32         /* output tile rows: a multiple of every row step (AMX: 2 x 16) */
#define Q4_BS_NC 64         /* output tile columns: a multiple of 2 panels */
_Static_assert(Q4_BS_VNNI_ROWS == Q4_VNNI_ROWS && Q4_BS_YMM_ROWS == Q4_AVX2_ROWS && Q4_BS_YMM_ROWS == Q4_AVXVNNI_ROWS,
               "the fused kernels step over their INT4 twins' rows (A is padded for those)");
_Static_assert(Q4_BS_MC % (2 * Q4_AMX_ROWS) == 0 && Q4_BS_MC % Q4_VNNI_ROWS == 0
               && Q4_BS_MC % Q4_AVX2_ROWS == 0 && Q4_BS_MC % Q4_AVXVNNI_ROWS == 0
               && Q4_BS_MC % Q4_PORTABLE_ROWS == 0 && Q4_BS_NC % (2 * Q4_PANEL) == 0,
               "the block-scaled tile fits every kernel's register block");

/* The epilogue of one K-block over a tile: acc += (double)(S - corr) * (qa_i * sb_j).
 * P * s is exact (13 + 8 significant bits), so a fused multiply-add rounds exactly like the separate
 * multiply and add of the definition: the ISA variants below differ in speed only. */
#define Q4_BS_EPILOGUE_BODY                                                                          \
    for (int64_t i = 0; i < mrows; i++) {                                                           \
        const double ai = sa[i * sa_stride];                                                        \
        const int32_t *s = S + i * Q4_BS_NC;                                                        \
        double *o = acc + i * Q4_BS_NC;                                                             \
        for (int64_t j = 0; j < ncols; j++)                                                         \
            o[j] += (double)(s[j] - corr[j]) * (ai * sb[j]);                                        \
    }

typedef void (*q4_bs_epilogue_fn)(double *acc, const int32_t *S, const int32_t *corr, const double *sa,
                                  int64_t sa_stride, const double *sb, int64_t mrows, int64_t ncols);

static void q4_bs_epilogue_plain(double *restrict acc, const int32_t *restrict S, const int32_t *restrict corr,
                                 const double *restrict sa, int64_t sa_stride, const double *restrict sb,
                                 int64_t mrows, int64_t ncols) {
    Q4_BS_EPILOGUE_BODY
}

#if Q4_X86
__attribute__((target("avx2,fma")))
static void q4_bs_epilogue_avx2(double *restrict acc, const int32_t *restrict S, const int32_t *restrict corr,
                                const double *restrict sa, int64_t sa_stride, const double *restrict sb,
                                int64_t mrows, int64_t ncols) {
    Q4_BS_EPILOGUE_BODY
}
#endif
#if Q4_HAVE_AVX512VNNI_CC
__attribute__((target("avx512f,avx512bw,avx512vl,fma")))
static void q4_bs_epilogue_avx512(double *restrict acc, const int32_t *restrict S, const int32_t *restrict corr,
                                  const double *restrict sa, int64_t sa_stride, const double *restrict sb,
                                  int64_t mrows, int64_t ncols) {
    Q4_BS_EPILOGUE_BODY
}
#endif

static q4_bs_epilogue_fn q4_bs_epilogue_for(int kernel) {
    switch (kernel) {
#if Q4_HAVE_AVX512VNNI_CC
    case Q4_AMX:
        /* AMX CPUs have AVX-512; the emulation build may run where it is absent */
        return q4_features()->avx512f && q4_features()->os_avx512 ? q4_bs_epilogue_avx512 : q4_bs_epilogue_plain;
    case Q4_VNNI: return q4_bs_epilogue_avx512;
#endif
#if Q4_X86
    case Q4_AVXVNNI:
    case Q4_AVX2: return q4_features()->fma ? q4_bs_epilogue_avx2 : q4_bs_epilogue_plain;
#endif
    default: return q4_bs_epilogue_plain;
    }
}

#if Q4_HAVE_AMX
/* AMX tiles for one K-block of depth blk bytes: tmm0..3 C (16 x 16 int32), tmm4/5 A (16 rows x blk
 * bytes), tmm6/7 B (blk / 4 k-groups x 64 bytes) */
Q4_AMX_TARGET
static void q4_bs_amx_thread_begin(int blk) {
    q4_tilecfg cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.palette_id = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = t >= 6 ? (uint8_t)(blk / Q4_KGROUP) : Q4_AMX_ROWS;
        cfg.colsb[t] = t == 4 || t == 5 ? (uint16_t)blk : Q4_AMX_TILE_BYTES;
    }
    Q4_LDTILECFG(cfg);
}

/* C = A[:, k0:k0+blk] @ B[k0:k0+blk, :] over a tile (mrows a multiple of 16, ncols of 16), the depth blk
 * set by q4_bs_amx_thread_begin */
Q4_AMX_TARGET
static void q4_bs_tile_amx(const uint8_t *A, int64_t lda, const int8_t *B, int64_t Kp, int64_t k0,
                           int32_t *C, int64_t ldc, int64_t mrows, int64_t ncols) {
    const long cstride = (long)(ldc * (int64_t)sizeof(int32_t));
    __asm__ volatile("" : : : "memory");   /* the tile intrinsics do not declare their memory */
    for (int64_t jp = 0; jp < ncols; jp += 2 * Q4_AMX_COLS) {
        const int8_t *p0 = B + (jp / Q4_PANEL) * Kp * Q4_PANEL + k0 * Q4_PANEL;
        const int8_t *p1 = p0 + Kp * Q4_PANEL;
        const int two_n = ncols - jp >= 2 * Q4_AMX_COLS;
        _tile_loadd(6, p0, Q4_GROUP_BYTES);
        if (two_n) _tile_loadd(7, p1, Q4_GROUP_BYTES);
        for (int64_t i = 0; i < mrows; i += 2 * Q4_AMX_ROWS) {
            const int two_m = mrows - i >= 2 * Q4_AMX_ROWS;
            int32_t *c = C + i * ldc + jp;
            const uint8_t *a0 = A + i * lda + k0;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            _tile_loadd(4, a0, (long)lda);
            _tile_dpbusd(0, 4, 6);
            if (two_n) _tile_dpbusd(1, 4, 7);
            if (two_m) {
                _tile_loadd(5, a0 + Q4_AMX_ROWS * lda, (long)lda);
                _tile_dpbusd(2, 5, 6);
                if (two_n) _tile_dpbusd(3, 5, 7);
            }
            Q4_AMX_BLOCK(_tile_stored, c, ldc, cstride, two_m, two_n);
        }
    }
    __asm__ volatile("" : : : "memory");
}
#endif

/* Returns 0 on success, -1 for an unusable kernel, -2 for out-of-memory, -4 for a bad blocking or
 * padding. */
static int q4_bsgemm(int kernel, const uint8_t *A, int64_t lda, int64_t M, int64_t Mp,
                     const int8_t *B, int64_t Kp, int64_t N, int64_t Np, int64_t K, int blk,
                     const int32_t *corr, const double *sa, const double *sb, double denom,
                     double *out, int64_t ldo, int nthreads) {
    q4_tile_fn fn = q4_kernel_fn(kernel);
    if (fn == NULL || !q4_kernel_supported(kernel, q4_features())) return -1;
#if Q4_HAVE_AVX2
    if (kernel == Q4_AVX2) fn = q4_avx2_for_product(2 * Q4_BS_OFFSET * Q4_BS_OFFSET);
#endif
    if ((blk != 16 && blk != 32) || Mp % q4_row_multiple(kernel) != 0 || Mp < M || Np % Q4_PANEL != 0
        || Np < N || Kp % Q4_KALIGN != 0 || Kp < K || lda < Kp)
        return -4;
    const q4_bs_epilogue_fn epilogue = q4_bs_epilogue_for(kernel);
    q4_bs_fused_fn fused = NULL;     /* a kernel with the epilogue in registers (bsgemm_vnni.h) */
#if Q4_HAVE_BS_VNNI
    if (kernel == Q4_VNNI) fused = q4_bs_tile_vnni;
#endif
#if Q4_HAVE_BS_AVXVNNI
    if (kernel == Q4_AVXVNNI) fused = q4_bs_tile_avxvnni;
#endif
#if Q4_HAVE_BS_YMM
    if (kernel == Q4_AVX2) fused = q4_bs_tile_avx2;
#endif
    const int64_t nkb = (K + blk - 1) / blk;
    const int64_t tiles_m = (M + Q4_BS_MC - 1) / Q4_BS_MC, tiles_n = (N + Q4_BS_NC - 1) / Q4_BS_NC;
    const int64_t ntiles = tiles_m * tiles_n;
    const size_t tile = (size_t)Q4_BS_MC * Q4_BS_NC;
    int failed = 0;
    nthreads = q4_threads_for_work(nthreads, ntiles, Mp * Np * (nkb * blk), Q4_GEMM_MACS_PER_THREAD);
    (void)nthreads;
#if Q4CORE_OPENMP
    #pragma omp parallel num_threads(nthreads) reduction(|:failed)
#endif
    {
        int32_t *S = (int32_t *)aligned_alloc(Q4_CACHE_LINE, sizeof(int32_t) * tile);
        double *acc = (double *)aligned_alloc(Q4_CACHE_LINE, sizeof(double) * tile);
        const int ok = S != NULL && acc != NULL;
        if (!ok) failed = 1;
#if Q4_HAVE_AMX
        if (kernel == Q4_AMX && ok) q4_bs_amx_thread_begin(blk);
#endif
        /* every thread must reach the work-sharing loop, even one without scratch */
#if Q4CORE_OPENMP
        #pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t t = 0; t < ntiles; t++) {
            if (!ok) continue;
            const int64_t i0 = (t / tiles_n) * Q4_BS_MC, j0 = (t % tiles_n) * Q4_BS_NC;
            /* the kernels step over padded rows / panels; the epilogue over the real ones */
            const int64_t mrows = Mp - i0 < Q4_BS_MC ? Mp - i0 : Q4_BS_MC;
            const int64_t ncols = Np - j0 < Q4_BS_NC ? Np - j0 : Q4_BS_NC;
            const int64_t iend = M - i0 < mrows ? M - i0 : mrows;
            const int64_t jend = N - j0 < ncols ? N - j0 : ncols;
            const int8_t *bt = B + (j0 / Q4_PANEL) * Kp * Q4_PANEL;
            if (fused != NULL) {
                fused(A + i0 * lda, lda, bt, Kp, nkb, blk, corr + j0, Np, sa + i0 * nkb, nkb, sb + j0, Np,
                      acc, Q4_BS_NC, mrows, ncols);
            } else {
                for (int64_t i = 0; i < iend; i++) memset(acc + i * Q4_BS_NC, 0, sizeof(double) * jend);
                for (int64_t kb = 0; kb < nkb; kb++) {
                    const int64_t k0 = kb * blk;
#if Q4_HAVE_AMX
                    if (kernel == Q4_AMX)
                        q4_bs_tile_amx(A + i0 * lda, lda, bt, Kp, k0, S, Q4_BS_NC, mrows, ncols);
                    else
#endif
                        fn(A + i0 * lda, lda, bt, Kp, k0, k0 + blk, S, Q4_BS_NC, mrows, ncols, 0);
                    epilogue(acc, S, corr + kb * Np + j0, sa + i0 * nkb + kb, nkb, sb + kb * Np + j0, iend, jend);
                }
            }
            for (int64_t i = 0; i < iend; i++) {
                double *o = out + (i0 + i) * ldo + j0;
                const double *a = acc + i * Q4_BS_NC;
                for (int64_t j = 0; j < jend; j++) o[j] = a[j] / denom;
            }
        }
#if Q4_HAVE_AMX
        if (kernel == Q4_AMX && ok) q4_amx_thread_end();
#endif
        free(S);
        free(acc);
    }
    return failed ? -2 : 0;
}

#endif /* Q4_BSGEMM_KERNELS_H */
