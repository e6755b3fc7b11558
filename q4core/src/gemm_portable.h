/* The portable u8 x s8 tile kernel: plain C over the packed layout, builds on any compiler
 * and CPU (x86-64 without extensions, ARM, ...).  It is the scalar twin of the SIMD kernels.
 *
 * Shared layout (every kernel):
 *   A  row-major uint8, row stride lda >= Kp, K padded with zeros to Kp, a multiple of 4 (one
 *      k-group: every kernel steps over K in k-groups, so padding to more only adds zeros to
 *      multiply - 4x the work at K = 16 when it was 64);
 *   B  packed int8 in 16-column panels; panel p starts at B + p * Kp * 16, and inside it the
 *      k-group g (k = 4g .. 4g+3) is 64 bytes: column j's four k-values at bytes 4j .. 4j+3.
 *      This is the operand order of vpdpbusd / vpmaddubsw (4 consecutive k per 32-bit lane)
 *      and exactly the AMX B-tile row layout (K/4 rows of N*4 bytes).
 *   C  int32 tile, row stride ldc; rows [0, mrows) with mrows a multiple of the kernel's
 *      row step (gemm_kernels.h: 4; AVX-512 VNNI 8; AMX 16), columns [0, ncols) with ncols a
 *      multiple of 16; k-range [k0, k1) with k0 and k1 multiples of 4, and for the AMX kernel,
 *      which steps 64 k per tile, k1 - k0 a multiple of 64 (the GEMM driver starts its K blocks on
 *      64 and hands a last k1 % 64 to another kernel).
 * C (+)= A[:, k0:k1] @ B[k0:k1, :].  The caller guarantees that no int32 sum can wrap. */
#ifndef Q4_GEMM_PORTABLE_H
#define Q4_GEMM_PORTABLE_H

#include <stdint.h>

/* Layout constants shared by every kernel, the packing (gemm_pack.h), the driver and
 * q4core/_gemm.pyx (which exposes them to q4core.gemm). */
#define Q4_PANEL 16                          /* columns of B per packed panel             */
#define Q4_KGROUP 4                          /* consecutive k in one 32-bit lane          */
#define Q4_GROUP_BYTES (Q4_PANEL * Q4_KGROUP)  /* bytes of one k-group of a panel (64)      */
#define Q4_KPAD Q4_KGROUP                    /* K is padded to a multiple of this          */
#define Q4_KALIGN 64                         /* the driver's K blocks and the caller's K
                                                chunks start on multiples of this: one AMX
                                                A-tile row                                */
#define Q4_PORTABLE_ROWS 4                   /* rows of the portable register block       */
#define Q4_HAVE_PORTABLE 1                   /* builds everywhere                         */

/* n rounded up to a multiple of m > 0 (the padded sizes: Kp, Np, Mp) */
static inline int64_t q4_round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

typedef void (*q4_tile_fn)(const uint8_t *A, int64_t lda, const int8_t *B, int64_t Kp,
                           int64_t k0, int64_t k1, int32_t *C, int64_t ldc,
                           int64_t mrows, int64_t ncols, int accumulate);

static void q4_tile_portable(const uint8_t *A, int64_t lda, const int8_t *B, int64_t Kp,
                             int64_t k0, int64_t k1, int32_t *C, int64_t ldc,
                             int64_t mrows, int64_t ncols, int accumulate) {
    for (int64_t jp = 0; jp < ncols; jp += Q4_PANEL) {
        const int8_t *panel = B + (jp / Q4_PANEL) * Kp * Q4_PANEL;
        for (int64_t i = 0; i < mrows; i += Q4_PORTABLE_ROWS) {
            int32_t acc[Q4_PORTABLE_ROWS][Q4_PANEL];
            for (int r = 0; r < Q4_PORTABLE_ROWS; r++)
                for (int j = 0; j < Q4_PANEL; j++)
                    acc[r][j] = accumulate ? C[(i + r) * ldc + jp + j] : 0;
            for (int64_t g = k0 / Q4_KGROUP; g < k1 / Q4_KGROUP; g++) {
                const int8_t *bg = panel + g * Q4_GROUP_BYTES;
                for (int r = 0; r < Q4_PORTABLE_ROWS; r++) {
                    const uint8_t *a = A + (i + r) * lda + Q4_KGROUP * g;
                    int32_t a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
                    for (int j = 0; j < Q4_PANEL; j++)
                        acc[r][j] += a0 * bg[4 * j] + a1 * bg[4 * j + 1]
                                   + a2 * bg[4 * j + 2] + a3 * bg[4 * j + 3];
                }
            }
            for (int r = 0; r < Q4_PORTABLE_ROWS; r++)
                for (int j = 0; j < Q4_PANEL; j++)
                    C[(i + r) * ldc + jp + j] = acc[r][j];
        }
    }
}

#endif /* Q4_GEMM_PORTABLE_H */
