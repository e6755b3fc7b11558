/* AVX2 tile kernel: vpmaddubsw (u8 x s8 -> int16 pair sums) then vpmaddwd with ones
 * (int16 pairs -> int32).  vpmaddubsw saturates at int16 and so would our int16 adds, so
 * the number of k-groups summed in int16 before widening ("span") is chosen from the
 * caller's bound max|a| * max|b|: span * 2 * bound <= 32767 keeps every int16 exact.
 * INT4 x INT4 (bound 225) runs with span 64, INT4 x FP4 units (960) with 16, FP4 x INT4
 * (1920, offset FP4 up to 128) with 4; bounds above 4095 are refused by the driver.
 * Register block: 4 rows x 16 columns (8 ymm accumulators).  Layout: see gemm_portable.h. */
#ifndef Q4_GEMM_AVX2_H
#define Q4_GEMM_AVX2_H

#include "gemm_cpu.h"
#include "gemm_portable.h"

#define Q4_AVX2_ROWS 4      /* rows of the register block (gemm_kernels.h) */

#if Q4_X86
#define Q4_HAVE_AVX2 1
#define Q4_AVX2_MAX_PRODUCT 4095

/* One step of the inner loop: k-group u (0..7) of the loop iteration's 8, for all 4 rows. */
#define Q4_AVX2_GROUP(u)                                                                       \
    "vmovdqu " #u "*64(%[pb]), %[b0]\n\t"                                                     \
    "vmovdqu " #u "*64+32(%[pb]), %[b1]\n\t"                                                  \
    "vpbroadcastd " #u "*4(%[pa]), %[x0]\n\t"                                                 \
    "vpbroadcastd " #u "*4(%[pa],%[lda]), %[x1]\n\t"                                          \
    "vpmaddubsw %[b0], %[x0], %[t0]\n\t"  "vpaddw %[t0], %[s00], %[s00]\n\t"                   \
    "vpmaddubsw %[b1], %[x0], %[t1]\n\t"  "vpaddw %[t1], %[s01], %[s01]\n\t"                   \
    "vpbroadcastd " #u "*4(%[pa],%[lda],2), %[x0]\n\t"                                        \
    "vpmaddubsw %[b0], %[x1], %[t0]\n\t"  "vpaddw %[t0], %[s10], %[s10]\n\t"                   \
    "vpmaddubsw %[b1], %[x1], %[t1]\n\t"  "vpaddw %[t1], %[s11], %[s11]\n\t"                   \
    "vpbroadcastd " #u "*4(%[pa],%[lda3]), %[x1]\n\t"                                         \
    "vpmaddubsw %[b0], %[x0], %[t0]\n\t"  "vpaddw %[t0], %[s20], %[s20]\n\t"                   \
    "vpmaddubsw %[b1], %[x0], %[t1]\n\t"  "vpaddw %[t1], %[s21], %[s21]\n\t"                   \
    "vpmaddubsw %[b0], %[x1], %[t0]\n\t"  "vpaddw %[t0], %[s30], %[s30]\n\t"                   \
    "vpmaddubsw %[b1], %[x1], %[t1]\n\t"  "vpaddw %[t1], %[s31], %[s31]\n\t"

/* s[r][h] = int16 pair sums over n >= 0 k-groups of row r of A (bytes at a + r * lda, 4 per
 * group) times the packed panel groups at b (64 bytes each), columns 8h .. 8h+7.
 * The groups in multiples of 4 run in assembly, 8 per loop iteration (a count that is 4 mod 8
 * enters the loop at its second half): with the 4 x 16 block, its 8 int16 sums, the two B
 * vectors, two broadcast A words and two products take 14 ymm registers, and gcc, given the
 * intrinsics, added a register copy per vpaddw and spilled, which left the kernel front-end
 * bound at ~0.70 of the vpmaddubsw + vpaddw ceiling.  The loop is 22 instructions per k-group
 * (2 loads, 4 broadcasts, 8 vpmaddubsw, 8 vpaddw) plus 4 per 8 groups.  K is padded to a k-group
 * only (gemm_portable.h), so a last span may have n % 4 groups more: those run in intrinsics. */
__attribute__((target("avx2"), always_inline))
static inline void q4_avx2_span_groups(const uint8_t *a, int64_t lda, const int8_t *b, int64_t n,
                                       __m256i s[Q4_AVX2_ROWS][2]) {
    __m256i s00, s01, s10, s11, s20, s21, s30, s31, b0, b1, x0, x1, t0, t1;
    const int64_t n4 = n & ~(int64_t)3;
    const uint8_t *pa = a, *end = a + Q4_KGROUP * n4;
    const int8_t *pb = b;
    const int64_t lda3 = 3 * lda;
    if (n4 == 0) {
        s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = _mm256_setzero_si256();
    } else {
    __asm__ volatile(
        "vpxor %[s00], %[s00], %[s00]\n\t" "vpxor %[s01], %[s01], %[s01]\n\t"
        "vpxor %[s10], %[s10], %[s10]\n\t" "vpxor %[s11], %[s11], %[s11]\n\t"
        "vpxor %[s20], %[s20], %[s20]\n\t" "vpxor %[s21], %[s21], %[s21]\n\t"
        "vpxor %[s30], %[s30], %[s30]\n\t" "vpxor %[s31], %[s31], %[s31]\n\t"
        "testq $4, %[n]\n\t"
        "jz 1f\n\t"
        "subq $16, %[pa]\n\t"
        "subq $256, %[pb]\n\t"
        "jmp 3f\n\t"
        ".p2align 5\n"
        "1:\n\t"
        Q4_AVX2_GROUP(0) Q4_AVX2_GROUP(1) Q4_AVX2_GROUP(2) Q4_AVX2_GROUP(3)
        "3:\n\t"
        Q4_AVX2_GROUP(4) Q4_AVX2_GROUP(5) Q4_AVX2_GROUP(6) Q4_AVX2_GROUP(7)
        "addq $32, %[pa]\n\t"
        "addq $512, %[pb]\n\t"
        "cmpq %[end], %[pa]\n\t"
        "jne 1b\n\t"
        : [s00] "=&x"(s00), [s01] "=&x"(s01), [s10] "=&x"(s10), [s11] "=&x"(s11),
          [s20] "=&x"(s20), [s21] "=&x"(s21), [s30] "=&x"(s30), [s31] "=&x"(s31),
          [b0] "=&x"(b0), [b1] "=&x"(b1), [x0] "=&x"(x0), [x1] "=&x"(x1),
          [t0] "=&x"(t0), [t1] "=&x"(t1), [pa] "+r"(pa), [pb] "+r"(pb)
        : [end] "r"(end), [n] "r"(n4), [lda] "r"(lda), [lda3] "r"(lda3)
        : "memory", "cc");
    }
    for (int64_t g = n4; g < n; g++) {      /* the n % 4 last groups (see above) */
        const __m256i c0 = _mm256_loadu_si256((const __m256i *)(b + g * Q4_GROUP_BYTES));
        const __m256i c1 = _mm256_loadu_si256((const __m256i *)(b + g * Q4_GROUP_BYTES + 32));
        __m256i w[Q4_AVX2_ROWS];
        for (int r = 0; r < Q4_AVX2_ROWS; r++) {
            int32_t word;
            memcpy(&word, a + r * lda + Q4_KGROUP * g, 4);
            w[r] = _mm256_set1_epi32(word);
        }
        s00 = _mm256_add_epi16(s00, _mm256_maddubs_epi16(w[0], c0));
        s01 = _mm256_add_epi16(s01, _mm256_maddubs_epi16(w[0], c1));
        s10 = _mm256_add_epi16(s10, _mm256_maddubs_epi16(w[1], c0));
        s11 = _mm256_add_epi16(s11, _mm256_maddubs_epi16(w[1], c1));
        s20 = _mm256_add_epi16(s20, _mm256_maddubs_epi16(w[2], c0));
        s21 = _mm256_add_epi16(s21, _mm256_maddubs_epi16(w[2], c1));
        s30 = _mm256_add_epi16(s30, _mm256_maddubs_epi16(w[3], c0));
        s31 = _mm256_add_epi16(s31, _mm256_maddubs_epi16(w[3], c1));
    }
    s[0][0] = s00; s[0][1] = s01; s[1][0] = s10; s[1][1] = s11;
    s[2][0] = s20; s[2][1] = s21; s[3][0] = s30; s[3][1] = s31;
}
#undef Q4_AVX2_GROUP

/* Body shared by the span variants: int16 pair sums of up to ``span`` consecutive k-groups
 * are added before one vpmaddwd widens them; span is a compile-time constant after inlining. */
__attribute__((target("avx2"), always_inline))
static inline void q4_avx2_body(const uint8_t *A, int64_t lda, const int8_t *B, int64_t Kp,
                                int64_t k0, int64_t k1, int32_t *C, int64_t ldc,
                                int64_t mrows, int64_t ncols, int accumulate, const int span) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t jp = 0; jp < ncols; jp += Q4_PANEL) {
        const int8_t *panel = B + (jp / Q4_PANEL) * Kp * Q4_PANEL;
        for (int64_t i = 0; i < mrows; i += Q4_AVX2_ROWS) {
            __m256i acc[Q4_AVX2_ROWS][2];
            for (int r = 0; r < Q4_AVX2_ROWS; r++) {
                int32_t *c = C + (i + r) * ldc + jp;
                acc[r][0] = accumulate ? _mm256_loadu_si256((const __m256i *)c) : _mm256_setzero_si256();
                acc[r][1] = accumulate ? _mm256_loadu_si256((const __m256i *)(c + 8)) : _mm256_setzero_si256();
            }
            const uint8_t *a0 = A + i * lda;
            /* prefetch the next panel's k-range into L1, a few lines per row block, so that its
             * first row block does not wait on L2 / L3 */
            if (jp + Q4_PANEL < ncols) {
                const int8_t *np_ = panel + Kp * Q4_PANEL + k0 / Q4_KGROUP * Q4_GROUP_BYTES;
                const int64_t lines = (k1 - k0) / Q4_KGROUP, nblk = mrows / Q4_AVX2_ROWS;
                const int64_t per = (lines + nblk - 1) / nblk, ib = i / Q4_AVX2_ROWS;
                for (int64_t l = ib * per; l < lines && l < (ib + 1) * per; l++)
                    _mm_prefetch((const char *)(np_ + 64 * l), _MM_HINT_T0);
            }
            for (int64_t g = k0 / Q4_KGROUP; g < k1 / Q4_KGROUP;) {
                const int64_t gend = k1 / Q4_KGROUP - g < span ? k1 / Q4_KGROUP : g + span;
                __m256i s[Q4_AVX2_ROWS][2];
                q4_avx2_span_groups(a0 + Q4_KGROUP * g, lda, panel + g * Q4_GROUP_BYTES, gend - g, s);
                g = gend;
                for (int r = 0; r < Q4_AVX2_ROWS; r++) {
                    acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(s[r][0], ones));
                    acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(s[r][1], ones));
                }
            }
            for (int r = 0; r < Q4_AVX2_ROWS; r++) {
                int32_t *c = C + (i + r) * ldc + jp;
                _mm256_storeu_si256((__m256i *)c, acc[r][0]);
                _mm256_storeu_si256((__m256i *)(c + 8), acc[r][1]);
            }
        }
    }
}

/* span 4: any product bound <= 4095 (4 groups * 2 products * 4095 = 32760) */
__attribute__((target("avx2")))
static void q4_tile_avx2(const uint8_t *A, int64_t lda, const int8_t *B, int64_t Kp,
                         int64_t k0, int64_t k1, int32_t *C, int64_t ldc,
                         int64_t mrows, int64_t ncols, int accumulate) {
    q4_avx2_body(A, lda, B, Kp, k0, k1, C, ldc, mrows, ncols, accumulate, 4);
}

/* span 16: product bound <= 1023 (16 * 2 * 1023 = 32736), e.g. INT4 x FP4 units (960) */
__attribute__((target("avx2")))
static void q4_tile_avx2_span16(const uint8_t *A, int64_t lda, const int8_t *B, int64_t Kp,
                                int64_t k0, int64_t k1, int32_t *C, int64_t ldc,
                                int64_t mrows, int64_t ncols, int accumulate) {
    q4_avx2_body(A, lda, B, Kp, k0, k1, C, ldc, mrows, ncols, accumulate, 16);
}

/* span 64: product bound <= 255 (64 * 2 * 255 = 32640), e.g. INT4 x INT4 (225) */
__attribute__((target("avx2")))
static void q4_tile_avx2_span64(const uint8_t *A, int64_t lda, const int8_t *B, int64_t Kp,
                                int64_t k0, int64_t k1, int32_t *C, int64_t ldc,
                                int64_t mrows, int64_t ncols, int accumulate) {
    q4_avx2_body(A, lda, B, Kp, k0, k1, C, ldc, mrows, ncols, accumulate, 64);
}

/* the longest int16 span that is safe for a product bound */
static inline q4_tile_fn q4_avx2_for_product(int64_t max_product) {
    if (max_product <= 255) return q4_tile_avx2_span64;
    if (max_product <= 1023) return q4_tile_avx2_span16;
    return q4_tile_avx2;
}
#else
#define Q4_HAVE_AVX2 0
#define q4_tile_avx2 ((q4_tile_fn)0)   /* not compiled: a null entry in the kernel table */
#endif

#endif /* Q4_GEMM_AVX2_H */
