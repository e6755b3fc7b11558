/* AVX-512 VNNI tile kernel: vpdpbusd zmm (u8 x s8, four products summed into each int32
 * lane, no intermediate saturation).  Register block: 8 rows x 32 columns = 16 zmm
 * accumulators (8 x 16 for a last odd panel); per k-group two B loads and eight 4-byte A broadcasts feed 16 vpdpbusd.
 * Layout: see gemm_portable.h. */
#ifndef Q4_GEMM_VNNI_H
#define Q4_GEMM_VNNI_H

#include "gemm_cpu.h"
#include "gemm_portable.h"

#define Q4_VNNI_ROWS 8      /* rows of the register block (gemm_kernels.h) */

#if Q4_HAVE_AVX512VNNI_CC
#define Q4_HAVE_VNNI 1

/* 8 rows x (16 * nb) columns; nb is 1 or 2 and constant after inlining */
__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline))
static inline void q4_vnni_block(const uint8_t *a0, int64_t lda, const int8_t *p0, const int8_t *p1,
                                 int64_t g0, int64_t g1, int32_t *c, int64_t ldc,
                                 int accumulate, const int nb) {
    __m512i acc[Q4_VNNI_ROWS][2];
    for (int r = 0; r < Q4_VNNI_ROWS; r++)
        for (int h = 0; h < nb; h++)
            acc[r][h] = accumulate ? _mm512_loadu_si512(c + r * ldc + 16 * h) : _mm512_setzero_si512();
    for (int64_t g = g0; g < g1; g++) {
        __m512i b0 = _mm512_loadu_si512(p0 + g * Q4_GROUP_BYTES);
        __m512i b1 = nb == 2 ? _mm512_loadu_si512(p1 + g * Q4_GROUP_BYTES) : b0;
        for (int r = 0; r < Q4_VNNI_ROWS; r++) {
            int32_t word;
            memcpy(&word, a0 + r * lda + Q4_KGROUP * g, 4);
            __m512i av = _mm512_set1_epi32(word);
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], av, b0);
            if (nb == 2) acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], av, b1);
        }
    }
    for (int r = 0; r < Q4_VNNI_ROWS; r++)
        for (int h = 0; h < nb; h++)
            _mm512_storeu_si512(c + r * ldc + 16 * h, acc[r][h]);
}

__attribute__((target("avx512f,avx512bw,avx512vnni")))
static void q4_tile_vnni(const uint8_t *A, int64_t lda, const int8_t *B, int64_t Kp,
                         int64_t k0, int64_t k1, int32_t *C, int64_t ldc,
                         int64_t mrows, int64_t ncols, int accumulate) {
    for (int64_t jp = 0; jp < ncols; jp += 2 * Q4_PANEL) {
        const int8_t *p0 = B + (jp / Q4_PANEL) * Kp * Q4_PANEL;
        const int8_t *p1 = p0 + Kp * Q4_PANEL;
        const int two = ncols - jp >= 2 * Q4_PANEL;     /* else a last single panel */
        const int64_t g0 = k0 / Q4_KGROUP, g1 = k1 / Q4_KGROUP;
        for (int64_t i = 0; i < mrows; i += Q4_VNNI_ROWS) {
            if (two)
                q4_vnni_block(A + i * lda, lda, p0, p1, g0, g1, C + i * ldc + jp, ldc, accumulate, 2);
            else
                q4_vnni_block(A + i * lda, lda, p0, p1, g0, g1, C + i * ldc + jp, ldc, accumulate, 1);
        }
    }
}
#else
#define Q4_HAVE_VNNI 0
#define q4_tile_vnni ((q4_tile_fn)0)   /* not compiled: a null entry in the kernel table */
#endif

#endif /* Q4_GEMM_VNNI_H */
