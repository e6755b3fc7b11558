/* AVX-512 VNNI block-scaled FP4 tile kernel (bsgemm_kernels.h): the whole K loop of an 8-row x 16-column
 * register block with the float64 accumulators in registers.  Per K-block: blk / 4 vpdpbusd per row into
 * zeroed int32 sums (u8 x s8, A offset by Q4_BS_OFFSET: gemm_vnni.h's register block, one panel wide),
 * then P = sum - corr, two int32 -> float64 conversions and two fused multiply-adds by
 * qa_i * sb_j (qa = sa / 4, bsgemm_kernels.h).  P * qa_i * sb_j is exact (bsgemm_kernels.h), so the fused
 * multiply-add rounds exactly like the definition's multiply then add; the per-element order of operations is the
 * definition's.  Without the fusion the int32 sums go through memory once per K-block, and at blocks
 * of 16 that store and reload cost more than the dot products. */
#ifndef Q4_BSGEMM_VNNI_H
#define Q4_BSGEMM_VNNI_H

#include "gemm_cpu.h"
#include "gemm_portable.h"

#define Q4_BS_VNNI_ROWS 8   /* = Q4_VNNI_ROWS: A is padded for the vnni kernel's row step */

/* acc[r, 0:16] = the definition's float64 sum over every K-block, r < 8; sa row stride lds, corr / sb row
 * (K-block) strides ldcorr / ldsb, all offset to this block's first row / column */
typedef void (*q4_bs_fused_fn)(const uint8_t *A, int64_t lda, const int8_t *B, int64_t Kp, int64_t nkb, int blk,
                               const int32_t *corr, int64_t ldcorr, const double *sa, int64_t lds,
                               const double *sb, int64_t ldsb, double *acc, int64_t ldacc,
                               int64_t mrows, int64_t ncols);

#if Q4_HAVE_AVX512VNNI_CC
#define Q4_HAVE_BS_VNNI 1

__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline))
static inline void q4_bs_vnni_block(const uint8_t *a0, int64_t lda, const int8_t *panel, int64_t nkb, int blk,
                                    const int32_t *corr, int64_t ldcorr, const double *sa, int64_t lds,
                                    const double *sb, int64_t ldsb, double *acc, int64_t ldacc) {
    __m512d d[Q4_BS_VNNI_ROWS][2];
    for (int r = 0; r < Q4_BS_VNNI_ROWS; r++) d[r][0] = d[r][1] = _mm512_setzero_pd();
    const int64_t groups = blk / Q4_KGROUP;
    for (int64_t kb = 0; kb < nkb; kb++) {
        __m512i s[Q4_BS_VNNI_ROWS];
        for (int r = 0; r < Q4_BS_VNNI_ROWS; r++) s[r] = _mm512_setzero_si512();
        for (int64_t g = kb * groups; g < (kb + 1) * groups; g++) {
            const __m512i b = _mm512_loadu_si512(panel + g * Q4_GROUP_BYTES);
            for (int r = 0; r < Q4_BS_VNNI_ROWS; r++) {
                int32_t word;
                memcpy(&word, a0 + r * lda + Q4_KGROUP * g, 4);
                s[r] = _mm512_dpbusd_epi32(s[r], _mm512_set1_epi32(word), b);
            }
        }
        const __m512i c = _mm512_loadu_si512(corr + kb * ldcorr);
        const __m512d sbl = _mm512_loadu_pd(sb + kb * ldsb), sbh = _mm512_loadu_pd(sb + kb * ldsb + 8);
        for (int r = 0; r < Q4_BS_VNNI_ROWS; r++) {
            const __m512i p = _mm512_sub_epi32(s[r], c);
            const __m512d ai = _mm512_set1_pd(sa[r * lds + kb]);
            const __m512d pl = _mm512_cvtepi32_pd(_mm512_castsi512_si256(p));
            const __m512d ph = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(p, 1));
            d[r][0] = _mm512_fmadd_pd(pl, _mm512_mul_pd(ai, sbl), d[r][0]);
            d[r][1] = _mm512_fmadd_pd(ph, _mm512_mul_pd(ai, sbh), d[r][1]);
        }
    }
    for (int r = 0; r < Q4_BS_VNNI_ROWS; r++) {
        _mm512_storeu_pd(acc + r * ldacc, d[r][0]);
        _mm512_storeu_pd(acc + r * ldacc + 8, d[r][1]);
    }
}

__attribute__((target("avx512f,avx512bw,avx512vnni")))
static void q4_bs_tile_vnni(const uint8_t *A, int64_t lda, const int8_t *B, int64_t Kp, int64_t nkb, int blk,
                            const int32_t *corr, int64_t ldcorr, const double *sa, int64_t lds,
                            const double *sb, int64_t ldsb, double *acc, int64_t ldacc,
                            int64_t mrows, int64_t ncols) {
    for (int64_t jp = 0; jp < ncols; jp += Q4_PANEL) {
        const int8_t *panel = B + (jp / Q4_PANEL) * Kp * Q4_PANEL;
        for (int64_t i = 0; i < mrows; i += Q4_BS_VNNI_ROWS)
            q4_bs_vnni_block(A + i * lda, lda, panel, nkb, blk, corr + jp, ldcorr, sa + i * lds, lds,
                             sb + jp, ldsb, acc + i * ldacc + jp, ldacc);
    }
}
#else
#define Q4_HAVE_BS_VNNI 0
#endif

#endif /* Q4_BSGEMM_VNNI_H */
