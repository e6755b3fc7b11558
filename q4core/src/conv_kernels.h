/* Channel-layout copies of a convolution's GEMM (q4core._conv): a row-major (rows, cols) float32 block
 * transposed into (cols, rows), with an optional bias[col] added - one float32 addition per element, the
 * same rounding as numpy's ``y + bias``.  Moves and single additions only: the result is the numpy
 * reference's, bit for bit, however the loops are blocked.
 *
 * x86-64: 4 x 4 blocks transposed in SSE registers (baseline x86-64, no target flags needed); elsewhere,
 * and for the edges, the scalar loop. */
#ifndef Q4_CONV_KERNELS_H
#define Q4_CONV_KERNELS_H

#include <stdint.h>
#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define Q4_CONV_SSE 1
#else
#define Q4_CONV_SSE 0
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
#if Q4_CONV_SSE
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

#endif /* Q4_CONV_KERNELS_H */
