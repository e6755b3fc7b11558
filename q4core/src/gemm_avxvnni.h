/* AVX-VNNI tile kernel: the VEX-encoded 256-bit vpdpbusd (Alder Lake and later, Zen 5;
 * Zen 4 reports it too).  Register block: 4 rows x 16 columns (8 ymm accumulators).
 * Layout: see gemm_portable.h. */
#ifndef Q4_GEMM_AVXVNNI_H
#define Q4_GEMM_AVXVNNI_H

#include "gemm_cpu.h"
#include "gemm_portable.h"

#define Q4_AVXVNNI_ROWS 4   /* rows of the register block (gemm_kernels.h) */

#if Q4_HAVE_AVXVNNI_CC
#define Q4_HAVE_AVXVNNI 1

__attribute__((target("avx2,avxvnni")))
static void q4_tile_avxvnni(const uint8_t *A, int64_t lda, const int8_t *B, int64_t Kp,
                            int64_t k0, int64_t k1, int32_t *C, int64_t ldc,
                            int64_t mrows, int64_t ncols, int accumulate) {
    for (int64_t jp = 0; jp < ncols; jp += Q4_PANEL) {
        const int8_t *panel = B + (jp / Q4_PANEL) * Kp * Q4_PANEL;
        for (int64_t i = 0; i < mrows; i += Q4_AVXVNNI_ROWS) {
            __m256i acc[Q4_AVXVNNI_ROWS][2];
            for (int r = 0; r < Q4_AVXVNNI_ROWS; r++) {
                int32_t *c = C + (i + r) * ldc + jp;
                acc[r][0] = accumulate ? _mm256_loadu_si256((const __m256i *)c) : _mm256_setzero_si256();
                acc[r][1] = accumulate ? _mm256_loadu_si256((const __m256i *)(c + 8)) : _mm256_setzero_si256();
            }
            const uint8_t *a0 = A + i * lda;
            for (int64_t g = k0 / Q4_KGROUP; g < k1 / Q4_KGROUP; g++) {
                const int8_t *bg = panel + g * Q4_GROUP_BYTES;
                __m256i b0 = _mm256_loadu_si256((const __m256i *)bg);
                __m256i b1 = _mm256_loadu_si256((const __m256i *)(bg + 32));
                for (int r = 0; r < Q4_AVXVNNI_ROWS; r++) {
                    int32_t word;
                    memcpy(&word, a0 + r * lda + Q4_KGROUP * g, 4);
                    __m256i av = _mm256_set1_epi32(word);
                    acc[r][0] = _mm256_dpbusd_avx_epi32(acc[r][0], av, b0);
                    acc[r][1] = _mm256_dpbusd_avx_epi32(acc[r][1], av, b1);
                }
            }
            for (int r = 0; r < Q4_AVXVNNI_ROWS; r++) {
                int32_t *c = C + (i + r) * ldc + jp;
                _mm256_storeu_si256((__m256i *)c, acc[r][0]);
                _mm256_storeu_si256((__m256i *)(c + 8), acc[r][1]);
            }
        }
    }
}
#else
#define Q4_HAVE_AVXVNNI 0
#define q4_tile_avxvnni ((q4_tile_fn)0)   /* not compiled: a null entry in the kernel table */
#endif

#endif /* Q4_GEMM_AVXVNNI_H */
