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

/* Both FP4 exponent groups in one pass (q4_tile2_vnni): 4 rows x (16 * nb) columns x 2 groups =
 * up to 16 zmm accumulators.  ``share`` 1: one A for both groups (INT4 x FP4: A broadcast once,
 * two B panels); 2: one B for both groups (FP4 x INT4: B loaded once, two A broadcasts).  At the
 * end of the K block the two int32 sums are combined as (v0 << s0) + (v1 << s1) in modular 32-bit
 * arithmetic (exact whenever the caller's final result fits in int32) and stored (or added) once. */
#define Q4_VNNI2_ROWS 4
__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline))
static inline void q4_vnni_block2(const uint8_t *a0, const uint8_t *a1, int64_t lda,
                                  const int8_t *p00, const int8_t *p01, const int8_t *p10,
                                  const int8_t *p11, int64_t g0, int64_t g1, int32_t *c, int64_t ldc,
                                  int accumulate, int s0, int s1, const int nb, const int share) {
    const int R = Q4_VNNI2_ROWS;
    __m512i acc0[Q4_VNNI2_ROWS][2], acc1[Q4_VNNI2_ROWS][2];
    for (int r = 0; r < R; r++)
        for (int h = 0; h < 2; h++) { acc0[r][h] = _mm512_setzero_si512(); acc1[r][h] = _mm512_setzero_si512(); }
    for (int64_t g = g0; g < g1; g++) {
        const __m512i b00 = _mm512_loadu_si512(p00 + g * Q4_GROUP_BYTES);
        const __m512i b01 = nb == 2 ? _mm512_loadu_si512(p01 + g * Q4_GROUP_BYTES) : b00;
        const __m512i b10 = share == 2 ? b00 : _mm512_loadu_si512(p10 + g * Q4_GROUP_BYTES);
        const __m512i b11 = share == 2 ? b01 : (nb == 2 ? _mm512_loadu_si512(p11 + g * Q4_GROUP_BYTES) : b10);
        for (int r = 0; r < R; r++) {
            int32_t w0, w1;
            memcpy(&w0, a0 + r * lda + Q4_KGROUP * g, 4);
            const __m512i av0 = _mm512_set1_epi32(w0);
            __m512i av1 = av0;
            if (share != 1) { memcpy(&w1, a1 + r * lda + Q4_KGROUP * g, 4); av1 = _mm512_set1_epi32(w1); }
            acc0[r][0] = _mm512_dpbusd_epi32(acc0[r][0], av0, b00);
            acc1[r][0] = _mm512_dpbusd_epi32(acc1[r][0], av1, b10);
            if (nb == 2) {
                acc0[r][1] = _mm512_dpbusd_epi32(acc0[r][1], av0, b01);
                acc1[r][1] = _mm512_dpbusd_epi32(acc1[r][1], av1, b11);
            }
        }
    }
    const __m128i c0 = _mm_cvtsi32_si128(s0), c1 = _mm_cvtsi32_si128(s1);
    for (int r = 0; r < R; r++)
        for (int h = 0; h < nb; h++) {
            __m512i v = _mm512_add_epi32(_mm512_sll_epi32(acc0[r][h], c0), _mm512_sll_epi32(acc1[r][h], c1));
            if (accumulate) v = _mm512_add_epi32(v, _mm512_loadu_si512(c + r * ldc + 16 * h));
            _mm512_storeu_si512(c + r * ldc + 16 * h, v);
        }
}

/* C (+)= ((A0 @ B0) << s0) + ((A1 @ B1) << s1), int32 modular; share as for q4_vnni_block2
 * (0: nothing shared). Same tile contract as q4_tile_vnni otherwise. */
__attribute__((target("avx512f,avx512bw,avx512vnni")))
static void q4_tile2_vnni(const uint8_t *A0, const uint8_t *A1, int64_t lda, const int8_t *B0,
                          const int8_t *B1, int64_t Kp, int64_t k0, int64_t k1, int32_t *C, int64_t ldc,
                          int64_t mrows, int64_t ncols, int accumulate, int s0, int s1) {
    const int share = A0 == A1 ? 1 : (B0 == B1 ? 2 : 0);
    const int64_t g0 = k0 / Q4_KGROUP, g1 = k1 / Q4_KGROUP;
    for (int64_t jp = 0; jp < ncols; jp += 2 * Q4_PANEL) {
        const int64_t off = (jp / Q4_PANEL) * Kp * Q4_PANEL;
        const int8_t *p00 = B0 + off, *p01 = p00 + Kp * Q4_PANEL;
        const int8_t *p10 = B1 + off, *p11 = p10 + Kp * Q4_PANEL;
        const int two = ncols - jp >= 2 * Q4_PANEL;
        for (int64_t i = 0; i < mrows; i += Q4_VNNI2_ROWS) {
            const uint8_t *a0 = A0 + i * lda, *a1 = A1 + i * lda;
            int32_t *c = C + i * ldc + jp;
#define Q4_VNNI2_CALL(NB, SH) q4_vnni_block2(a0, a1, lda, p00, p01, p10, p11, g0, g1, c, ldc, accumulate, s0, s1, NB, SH)
            if (two) {
                if (share == 1) Q4_VNNI2_CALL(2, 1); else if (share == 2) Q4_VNNI2_CALL(2, 2); else Q4_VNNI2_CALL(2, 0);
            } else {
                if (share == 1) Q4_VNNI2_CALL(1, 1); else if (share == 2) Q4_VNNI2_CALL(1, 2); else Q4_VNNI2_CALL(1, 0);
            }
#undef Q4_VNNI2_CALL
        }
    }
}
#else
#define Q4_HAVE_VNNI 0
#define q4_tile_vnni ((q4_tile_fn)0)   /* not compiled: a null entry in the kernel table */
#endif

#endif /* Q4_GEMM_VNNI_H */
