/* AVX2 tile kernel: vpmaddubsw (u8 x s8 -> int16 pair sums) then vpmaddwd with ones
 * (int16 pairs -> int32).  vpmaddubsw saturates at int16, so the caller guarantees
 * max|a| * max|b| <= 4095: a pair sum is then <= 8190 and we may add FOUR k-groups in
 * int16 (<= 32760 < 32767) before widening - exact, never saturating.  For INT4 x INT4
 * the product bound is 15 * 15 = 225, for the FP4 x INT4 groups at most 128 * 15 = 1920.
 * Register block: 4 rows x 16 columns (8 ymm accumulators).  Layout: see gemm_portable.h. */
#ifndef Q4_GEMM_AVX2_H
#define Q4_GEMM_AVX2_H

#include "gemm_cpu.h"
#include "gemm_portable.h"

#if Q4_X86
#define Q4_HAVE_AVX2 1
#define Q4_AVX2_MAX_PRODUCT 4095

__attribute__((target("avx2")))
static void q4_tile_avx2(const uint8_t *A, int64_t lda, const int8_t *B, int64_t Kp,
                         int64_t k0, int64_t k1, int32_t *C, int64_t ldc,
                         int64_t mrows, int64_t ncols, int accumulate) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t jp = 0; jp < ncols; jp += 16) {
        const int8_t *panel = B + (jp / 16) * Kp * 16;
        for (int64_t i = 0; i < mrows; i += 4) {
            __m256i acc[4][2];
            for (int r = 0; r < 4; r++) {
                int32_t *c = C + (i + r) * ldc + jp;
                acc[r][0] = accumulate ? _mm256_loadu_si256((const __m256i *)c) : _mm256_setzero_si256();
                acc[r][1] = accumulate ? _mm256_loadu_si256((const __m256i *)(c + 8)) : _mm256_setzero_si256();
            }
            const uint8_t *a0 = A + i * lda;
            /* k1 - k0 is a multiple of 64, i.e. of 16 k-groups: step four groups at a time */
            for (int64_t g = k0 / 4; g < k1 / 4; g += 4) {
                __m256i s[4][2];
                for (int u = 0; u < 4; u++) {
                    const int8_t *bg = panel + (g + u) * 64;
                    __m256i b0 = _mm256_loadu_si256((const __m256i *)bg);
                    __m256i b1 = _mm256_loadu_si256((const __m256i *)(bg + 32));
                    for (int r = 0; r < 4; r++) {
                        int32_t word;
                        memcpy(&word, a0 + r * lda + 4 * (g + u), 4);
                        __m256i av = _mm256_set1_epi32(word);
                        __m256i p0 = _mm256_maddubs_epi16(av, b0);
                        __m256i p1 = _mm256_maddubs_epi16(av, b1);
                        if (u == 0) { s[r][0] = p0; s[r][1] = p1; }
                        else { s[r][0] = _mm256_add_epi16(s[r][0], p0); s[r][1] = _mm256_add_epi16(s[r][1], p1); }
                    }
                }
                for (int r = 0; r < 4; r++) {
                    acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(s[r][0], ones));
                    acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(s[r][1], ones));
                }
            }
            for (int r = 0; r < 4; r++) {
                int32_t *c = C + (i + r) * ldc + jp;
                _mm256_storeu_si256((__m256i *)c, acc[r][0]);
                _mm256_storeu_si256((__m256i *)(c + 8), acc[r][1]);
            }
        }
    }
}
#else
#define Q4_HAVE_AVX2 0
#endif

#endif /* Q4_GEMM_AVX2_H */
