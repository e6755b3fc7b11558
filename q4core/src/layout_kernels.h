/* Channel-layout copies of a convolution's GEMM (q4core._layout): a row-major (rows, cols) float32 block
 * transposed into (cols, rows), with an optional bias[col] added - one float32 addition per element, the
 * same rounding as numpy's ``y + bias``.  Moves and single additions only: the result is the numpy
 * reference's, bit for bit, however the loops are blocked.
 *
 * x86-64: 4 x 4 blocks transposed in SSE registers (baseline x86-64, no target flags needed); elsewhere,
 * and for the edges, the scalar loop. */
#ifndef Q4_LAYOUT_KERNELS_H
#define Q4_LAYOUT_KERNELS_H

#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
#define Q4_LAYOUT_SSE 1
#else
#define Q4_LAYOUT_SSE 0
#endif

static inline void q4_transpose_edge(const float *a, float *out, int64_t rows, int64_t cols, const float *bias,
                                     int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; c++) {
        const float b = bias ? bias[c] : 0.0f;
        for (int64_t r = r0; r < r1; r++)
            out[c * rows + r] = bias ? a[r * cols + c] + b : a[r * cols + c];
    }
}

/* out (cols, rows) = a (rows, cols) transposed [+ bias[col]] */
static void q4_transpose_f32(const float *a, float *out, int64_t rows, int64_t cols, const float *bias) {
    const int64_t R = rows & ~(int64_t)3, C = cols & ~(int64_t)3;
#if Q4_LAYOUT_SSE
    /* 4 x 4 blocks, row-block outer: each 4-row strip of ``a`` is read once, front to back */
    for (int64_t r = 0; r < R; r += 4) {
        for (int64_t c = 0; c < C; c += 4) {
            __m128 v0 = _mm_loadu_ps(a + r * cols + c), v1 = _mm_loadu_ps(a + (r + 1) * cols + c);
            __m128 v2 = _mm_loadu_ps(a + (r + 2) * cols + c), v3 = _mm_loadu_ps(a + (r + 3) * cols + c);
            _MM_TRANSPOSE4_PS(v0, v1, v2, v3);
            if (bias) {     /* x + b: the reference's one rounding (no bias: a pure move, -0.0 kept) */
                v0 = _mm_add_ps(v0, _mm_set1_ps(bias[c]));
                v1 = _mm_add_ps(v1, _mm_set1_ps(bias[c + 1]));
                v2 = _mm_add_ps(v2, _mm_set1_ps(bias[c + 2]));
                v3 = _mm_add_ps(v3, _mm_set1_ps(bias[c + 3]));
            }
            _mm_storeu_ps(out + c * rows + r, v0);
            _mm_storeu_ps(out + (c + 1) * rows + r, v1);
            _mm_storeu_ps(out + (c + 2) * rows + r, v2);
            _mm_storeu_ps(out + (c + 3) * rows + r, v3);
        }
    }
#else
    q4_transpose_edge(a, out, rows, cols, bias, 0, R, 0, C);
#endif
    q4_transpose_edge(a, out, rows, cols, bias, R, rows, 0, cols);    /* the last rows % 4 rows */
    q4_transpose_edge(a, out, rows, cols, bias, 0, R, C, cols);       /* the last cols % 4 columns */
}

#if Q4_LAYOUT_SSE
/* one 16 x 16 byte block: rows of ``a`` (stride lda) -> rows of ``out`` (stride ldo), by four rounds of
 * interleaves (bytes, 16-bit pairs, 32-bit quads, 64-bit halves) */
static inline void q4_transpose_u8_16x16(const uint8_t *a, int64_t lda, uint8_t *out, int64_t ldo) {
    __m128i x[16], y[16];
    for (int k = 0; k < 16; k++) x[k] = _mm_loadu_si128((const __m128i *)(a + k * lda));
    for (int k = 0; k < 8; k++) {
        y[2 * k] = _mm_unpacklo_epi8(x[2 * k], x[2 * k + 1]);
        y[2 * k + 1] = _mm_unpackhi_epi8(x[2 * k], x[2 * k + 1]);
    }
    for (int q = 0; q < 4; q++) {              /* rows 4q .. 4q+3 */
        const __m128i *t = y + 4 * q;
        x[4 * q] = _mm_unpacklo_epi16(t[0], t[2]);
        x[4 * q + 1] = _mm_unpackhi_epi16(t[0], t[2]);
        x[4 * q + 2] = _mm_unpacklo_epi16(t[1], t[3]);
        x[4 * q + 3] = _mm_unpackhi_epi16(t[1], t[3]);
    }
    for (int h = 0; h < 2; h++)                /* rows 8h .. 8h+7 */
        for (int m = 0; m < 4; m++) {
            y[8 * h + 2 * m] = _mm_unpacklo_epi32(x[8 * h + m], x[8 * h + 4 + m]);
            y[8 * h + 2 * m + 1] = _mm_unpackhi_epi32(x[8 * h + m], x[8 * h + 4 + m]);
        }
    for (int m = 0; m < 8; m++) {
        _mm_storeu_si128((__m128i *)(out + (2 * m) * ldo), _mm_unpacklo_epi64(y[m], y[8 + m]));
        _mm_storeu_si128((__m128i *)(out + (2 * m + 1) * ldo), _mm_unpackhi_epi64(y[m], y[8 + m]));
    }
}
#endif

/* out (cols, rows) = a (rows, cols) transposed, for bytes (the INT4 levels and FP4 codes of the backward
 * GEMMs' transposed operands): 16 x 16 blocks in SSE registers, the edges byte by byte.  Rows [r0, r1)
 * only (r0 a multiple of 16): threads take disjoint row ranges, i.e. disjoint column ranges of ``out``. */
static void q4_transpose_u8(const uint8_t *a, uint8_t *out, int64_t rows, int64_t cols, int64_t r0, int64_t r1) {
    int64_t R = r0, C = 0;
#if Q4_LAYOUT_SSE
    R = r0 + ((r1 - r0) & ~(int64_t)15);
    C = cols & ~(int64_t)15;
    for (int64_t r = r0; r < R; r += 16)
        for (int64_t c = 0; c < C; c += 16)
            q4_transpose_u8_16x16(a + r * cols + c, cols, out + c * rows + r, rows);
#endif
    for (int64_t c = 0; c < cols; c++) {       /* the edges: rows R.. r1 of every column, columns C.. */
        uint8_t *restrict o = out + c * rows;
        for (int64_t r = (c < C ? R : r0); r < r1; r++) o[r] = a[r * cols + c];
    }
}

/* col2im of one image: patch gradients ``cols`` (Ho*Wo rows, C*kh*kw) summed into ``out`` (C, H, W).
 * The reference (q4core.nn.layout.col2im2d_reference) adds the (i, j) kernel offsets one after another,
 * i-major, each as one float32 ``+=`` into a zeroed padded image.  Here ``cols`` is first transposed into
 * ``colsT`` (C*kh*kw, Ho*Wo), so that each (c, i, j) is a contiguous plane; then, channel by channel, the
 * planes are added in (i, j) order into the zeroed padded image ``pad`` (C, H + 2p, W + 2p; or ``out``
 * itself without padding) - every pixel receives its terms in the reference's order, one float32 addition
 * each; the loop over a row is a plain vectorizable elementwise add.  ``pad`` and ``colsT`` are the caller's
 * scratch. */
static void q4_col2im_image(const float *cols, float *out, float *pad, float *colsT, int64_t C, int64_t H,
                            int64_t W, int64_t kh, int64_t kw, int64_t stride, int64_t padding, int64_t Ho,
                            int64_t Wo) {
    const int64_t HW = Ho * Wo, Hp = H + 2 * padding, Wp = W + 2 * padding;
    float *g = padding ? pad : out;
    q4_transpose_f32(cols, colsT, HW, C * kh * kw, NULL);
    memset(g, 0, sizeof(float) * (size_t)(C * Hp * Wp));
    for (int64_t c = 0; c < C; c++) {
        float *plane = g + c * Hp * Wp;
        for (int64_t i = 0; i < kh; i++) {
            for (int64_t j = 0; j < kw; j++) {
                const float *src = colsT + ((c * kh + i) * kw + j) * HW;
                for (int64_t ho = 0; ho < Ho; ho++) {
                    float *restrict d = plane + (ho * stride + i) * Wp + j;
                    const float *restrict sr = src + ho * Wo;
                    if (stride == 1)
                        for (int64_t wo = 0; wo < Wo; wo++) d[wo] = d[wo] + sr[wo];
                    else
                        for (int64_t wo = 0; wo < Wo; wo++) d[wo * stride] = d[wo * stride] + sr[wo];
                }
            }
        }
    }
    if (padding)
        for (int64_t c = 0; c < C; c++)
            for (int64_t y = 0; y < H; y++)
                memcpy(out + (c * H + y) * W, g + (c * Hp + y + padding) * Wp + padding, sizeof(float) * (size_t)W);
}

#endif /* Q4_LAYOUT_KERNELS_H */
