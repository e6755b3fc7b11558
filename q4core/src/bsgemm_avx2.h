/* AVX-VNNI and AVX2 block-scaled FP4 tile kernels (bsgemm_kernels.h), the ymm twins of bsgemm_vnni.h: the
 * whole K loop of a 4-row x 8-column register block with the float64 sums in registers.  Per K-block the
 * int32 sums of blk / 4 k-groups come from vpdpbusd ymm (AVX-VNNI) or vpmaddubsw + vpmaddwd (AVX2: a pair
 * sum is at most 2 * 24 * 12 = 576, far from int16 saturation), then P = sum - corr is converted to float64
 * and added times qa_i * sb_j (qa = sa / 4, bsgemm_kernels.h) with a separate multiply and add (AVX2 does not
 * imply FMA; the product is exact either way). */
#ifndef Q4_BSGEMM_AVX2_H
#define Q4_BSGEMM_AVX2_H

#include "gemm_cpu.h"
#include "gemm_portable.h"
#include "bsgemm_vnni.h"

#define Q4_BS_YMM_ROWS 4    /* = the avx2 / avxvnni kernels' row step: A is padded to it */
#define Q4_BS_YMM_COLS 8    /* int32 lanes of a ymm: half a packed panel */

#if Q4_X86
#define Q4_HAVE_BS_YMM 1

/* The register block; DOT(acc, a, b) is the int32 dot-product step of the ISA (a macro, so that each
 * instantiation compiles under its own target attribute). */
#define Q4_BS_YMM_BLOCK(DOT)                                                                                \
    __m256d d[Q4_BS_YMM_ROWS][2];                                                                          \
    for (int r = 0; r < Q4_BS_YMM_ROWS; r++) d[r][0] = d[r][1] = _mm256_setzero_pd();                      \
    const int64_t groups = blk / Q4_KGROUP;                                                                \
    for (int64_t kb = 0; kb < nkb; kb++) {                                                                 \
        __m256i s[Q4_BS_YMM_ROWS];                                                                         \
        for (int r = 0; r < Q4_BS_YMM_ROWS; r++) s[r] = _mm256_setzero_si256();                            \
        for (int64_t g = kb * groups; g < (kb + 1) * groups; g++) {                                        \
            const __m256i b = _mm256_loadu_si256((const __m256i *)(half + g * Q4_GROUP_BYTES));             \
            for (int r = 0; r < Q4_BS_YMM_ROWS; r++) {                                                     \
                int32_t word;                                                                              \
                memcpy(&word, a0 + r * lda + Q4_KGROUP * g, 4);                                            \
                s[r] = DOT(s[r], _mm256_set1_epi32(word), b);                                              \
            }                                                                                              \
        }                                                                                                  \
        const __m256i c = _mm256_loadu_si256((const __m256i *)(corr + kb * ldcorr));                        \
        const __m256d sbl = _mm256_loadu_pd(sb + kb * ldsb), sbh = _mm256_loadu_pd(sb + kb * ldsb + 4);    \
        for (int r = 0; r < Q4_BS_YMM_ROWS; r++) {                                                         \
            const __m256i p = _mm256_sub_epi32(s[r], c);                                                   \
            const __m256d ai = _mm256_set1_pd(sa[r * lds + kb]);                                           \
            const __m256d pl = _mm256_cvtepi32_pd(_mm256_castsi256_si128(p));                              \
            const __m256d ph = _mm256_cvtepi32_pd(_mm256_extracti128_si256(p, 1));                         \
            d[r][0] = _mm256_add_pd(d[r][0], _mm256_mul_pd(pl, _mm256_mul_pd(ai, sbl)));                      \
            d[r][1] = _mm256_add_pd(d[r][1], _mm256_mul_pd(ph, _mm256_mul_pd(ai, sbh)));                      \
        }                                                                                                  \
    }                                                                                                      \
    for (int r = 0; r < Q4_BS_YMM_ROWS; r++) {                                                             \
        _mm256_storeu_pd(acc + r * ldacc, d[r][0]);                                                        \
        _mm256_storeu_pd(acc + r * ldacc + 4, d[r][1]);                                                    \
    }

/* the tile loop over 4-row blocks and half panels; BLOCKFN(a0, half, corr, sa, sb, acc) runs one block */
#define Q4_BS_YMM_TILE(BLOCKFN)                                                                            \
    for (int64_t jp = 0; jp < ncols; jp += Q4_PANEL) {                                                     \
        const int8_t *panel = B + (jp / Q4_PANEL) * Kp * Q4_PANEL;                                         \
        for (int h = 0; h < Q4_PANEL / Q4_BS_YMM_COLS; h++) {                                              \
            const int64_t j = jp + h * Q4_BS_YMM_COLS;                                                     \
            for (int64_t i = 0; i < mrows; i += Q4_BS_YMM_ROWS)                                            \
                BLOCKFN(A + i * lda, lda, panel + h * Q4_BS_YMM_COLS * Q4_KGROUP, nkb, blk, corr + j, ldcorr, \
                        sa + i * lds, lds, sb + j, ldsb, acc + i * ldacc + j, ldacc);                      \
        }                                                                                                  \
    }

#define Q4_BS_YMM_BLOCK_ARGS                                                                               \
    const uint8_t *a0, int64_t lda, const int8_t *half, int64_t nkb, int blk, const int32_t *corr,         \
    int64_t ldcorr, const double *sa, int64_t lds, const double *sb, int64_t ldsb, double *acc, int64_t ldacc
#define Q4_BS_TILE_ARGS                                                                                    \
    const uint8_t *A, int64_t lda, const int8_t *B, int64_t Kp, int64_t nkb, int blk, const int32_t *corr,  \
    int64_t ldcorr, const double *sa, int64_t lds, const double *sb, int64_t ldsb, double *acc,            \
    int64_t ldacc, int64_t mrows, int64_t ncols

/* AVX2: u8 x s8 pair sums (int16, exact here) widened to int32 by a multiply-add with ones */
#define Q4_BS_DOT_AVX2(acc, a, b) \
    _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((a), (b)), _mm256_set1_epi16(1)))

__attribute__((target("avx2"), always_inline))
static inline void q4_bs_avx2_block(Q4_BS_YMM_BLOCK_ARGS) { Q4_BS_YMM_BLOCK(Q4_BS_DOT_AVX2) }

__attribute__((target("avx2")))
static void q4_bs_tile_avx2(Q4_BS_TILE_ARGS) { Q4_BS_YMM_TILE(q4_bs_avx2_block) }

#if Q4_HAVE_AVXVNNI_CC
#define Q4_HAVE_BS_AVXVNNI 1
#define Q4_BS_DOT_AVXVNNI(acc, a, b) _mm256_dpbusd_avx_epi32((acc), (a), (b))

__attribute__((target("avx2,avxvnni"), always_inline))
static inline void q4_bs_avxvnni_block(Q4_BS_YMM_BLOCK_ARGS) { Q4_BS_YMM_BLOCK(Q4_BS_DOT_AVXVNNI) }

__attribute__((target("avx2,avxvnni")))
static void q4_bs_tile_avxvnni(Q4_BS_TILE_ARGS) { Q4_BS_YMM_TILE(q4_bs_avxvnni_block) }
#else
#define Q4_HAVE_BS_AVXVNNI 0
#endif

#else
#define Q4_HAVE_BS_YMM 0
#define Q4_HAVE_BS_AVXVNNI 0
#endif

#endif /* Q4_BSGEMM_AVX2_H */
