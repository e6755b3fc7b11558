/* Fused operand makers: the scale statistics of the 4-bit operands, computed in one pass over the
 * float data, and the two-phase FP4 gradient encode (both grids and max |g| in one pass).
 *
 *   q4_minmax       max and min of x (NaN skipped, flagged): the per-step max scale and GradScale's
 *                   max |g| - exact in any order, so split over threads;
 *   q4_moments      SAWB's two sums, sum(x*x) and sum(|x|) in float64, plus max |x|: summed in
 *                   numpy's pairwise order (numpy/_core/src/umath/loops_utils.h.src,
 *                   pairwise_sum: runs below 8 summed in a row, blocks up to 128 in 8 interleaved
 *                   accumulators, longer runs split in halves rounded down to a multiple of 8), so
 *                   ``np.mean(w * w)`` and ``np.mean(np.abs(w))`` come out bit for bit (one thread:
 *                   the order is the point);
 *   q4_encode_pair  codes of x under one or two plans (quant_kernels.h: e.g. both grids of
 *                   two-phase rounding) plus max / min, x read from memory once (cache blocks).
 *   q4_pact_backward  PACT's straight-through dL/dx and dL/dalpha's sum in one pass, summed as numpy.
 *   q4_encode_pack_b  a weight to its INT4 codes and the GEMM's packed panels in one read.
 *   q4_rescale_*    an integer GEMM result times its scale factor as float32, rounded as the
 *                   engine's numpy expression.
 * The scanning functions return Q4_FLAG_NAN / Q4_FLAG_INF bits of what they saw. */
#ifndef Q4_FUSED_KERNELS_H
#define Q4_FUSED_KERNELS_H

#include <stdlib.h>
#include <string.h>
#include "quant_kernels.h"
/* the packed layout's constants; its portable micro-kernel is not used here */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "gemm_portable.h"
#include "rescale_rule.h"
#pragma GCC diagnostic pop

/* x*x summed in float64 must round exactly as numpy's separate multiply and add: no FMA */
#if defined(__GNUC__) && !defined(__clang__)
#define Q4_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define Q4_NO_CONTRACT
#endif

/* elements per work item of the threaded loops (results do not depend on it) */
#define Q4_FUSED_CHUNK ((ptrdiff_t)1 << 16)
/* numpy's pairwise-sum block (PW_BLOCKSIZE) and unroll */
#define Q4_PW_BLOCK 128
#define Q4_PW_UNROLL 8
/* independent running max / min per loop (vector width of the widest float32 registers) */
#define Q4_LANES 16
/* elements per cache block of the fused encode (4096 float32 = 16 KiB: within L1 with its codes) */
#define Q4_L1_BLOCK ((ptrdiff_t)4096)

/* the 8 accumulators of numpy's pairwise-sum block as the lanes of one vector (GCC / Clang vector
 * extensions: lane-wise IEEE arithmetic, so each lane rounds exactly as its scalar accumulator) */
typedef double q4_v8d __attribute__((vector_size(64)));
typedef uint64_t q4_v8u64 __attribute__((vector_size(64)));
typedef float q4_v8_f32 __attribute__((vector_size(32)));
typedef int32_t q4_v8i_f32 __attribute__((vector_size(32)));
#define Q4_ABS_MASK64 (((q4_v8u64){0}) + 0x7fffffffffffffffull)

#define Q4_T float
#define Q4_SUF f32
#define Q4_I int32_t
#define Q4_ABS_BITS 0x7fffffff
#define Q4_INF_BITS 0x7f800000
#define Q4_ABS(x) __builtin_fabsf(x)
#define Q4_FINITE_MAX 3.4028234663852886e38f
#define Q4_BOUNDS(p) ((p)->b32)
/* float32 squares are exact in float64, so an FMA the AVX2 clone might form rounds as numpy's
 * multiply-then-add: the float32 moments take SIMD clones; the float64 ones must not contract */
#define Q4_MOMENTS_ATTRS Q4_CLONES
#define Q4_MOMENTS_VECTOR 1       /* the block's 8 accumulators as one vector (8 x float64: AVX-512) */
#include "fused_kernels_t.h"

#define Q4_T double
#define Q4_SUF f64
#define Q4_I int64_t
#define Q4_ABS(x) __builtin_fabs(x)
#define Q4_FINITE_MAX 1.7976931348623157e308
#define Q4_BOUNDS(p) ((p)->b64)
#define Q4_MOMENTS_ATTRS Q4_NO_CONTRACT
#define Q4_MOMENTS_VECTOR 0       /* no SIMD clones here (no contraction): the scalar lanes are faster */
#include "fused_kernels_t.h"

/* The rescale after an integer GEMM, y = acc * factor as float32, rounded by the engine's rule
 * (rescale_rule.h).  One pass instead of numpy's two or three with their temporaries. */
#define Q4_DEFINE_RESCALE(SUF, I)                                                                \
Q4_CLONES static void q4_rescale_block_##SUF(const I *restrict acc, float *restrict out,          \
                                             ptrdiff_t n, double factor, int exact) {             \
    Q4_RESCALE_LOOP(out, acc, n, factor, exact);                                                  \
}                                                                                                 \
static void q4_rescale_##SUF(const I *acc, float *out, ptrdiff_t n, double factor, int exact,     \
                             int threads) {                                                       \
    const ptrdiff_t nchunks = (n + Q4_FUSED_CHUNK - 1) / Q4_FUSED_CHUNK;                          \
    threads = q4_threads_for_elems(threads, n);                                                   \
    if (threads <= 1) {             /* no parallel region at all: libgomp costs more than a small call */ \
        q4_rescale_block_##SUF(acc, out, n, factor, exact);                                       \
        return;                                                                                   \
    }                                                                                             \
    Q4_OMP_FOR                                                                                    \
    for (ptrdiff_t c = 0; c < nchunks; c++) {                                                     \
        const ptrdiff_t i0 = c * Q4_FUSED_CHUNK;                                                  \
        const ptrdiff_t len = n - i0 < Q4_FUSED_CHUNK ? n - i0 : Q4_FUSED_CHUNK;                  \
        q4_rescale_block_##SUF(acc + i0, out + i0, len, factor, exact);                           \
    }                                                                                             \
}
#if Q4CORE_OPENMP
#define Q4_OMP_FOR _Pragma("omp parallel for num_threads(threads) schedule(static)")
#else
#define Q4_OMP_FOR
#endif
Q4_DEFINE_RESCALE(i32, int32_t)
Q4_DEFINE_RESCALE(i64, int64_t)
#undef Q4_OMP_FOR
#undef Q4_DEFINE_RESCALE

/* PACT's backward for float32 x and dL/dy (q4core.nn.qgemm.QuantGemm.pact_backward): with
 * over = (x >= clip) and pass = (x >= 0) - over as float32 0 / 1, out = g * pass and the return
 * value is numpy's ``np.sum(g * over, dtype=np.float64)``: a casting reduction, which numpy runs
 * through 8192-element buffers, each summed pairwise and added in turn to 0.0 - the same here, the
 * buffers' pairwise sums split over threads, added in order. */
#define Q4_NP_BUFSIZE ((ptrdiff_t)8192)

static double q4_pw_masked(const float *g, const float *x, float clip, ptrdiff_t n) {
#define Q4_MASKED(i) ((double)(g[(i)] * (x[(i)] >= clip ? 1.0f : 0.0f)))
    if (n < Q4_PW_UNROLL) {
        double res = 0.0;
        for (ptrdiff_t i = 0; i < n; i++) res += Q4_MASKED(i);
        return res;
    }
    if (n <= Q4_PW_BLOCK) {
        double r[Q4_PW_UNROLL];
        for (int j = 0; j < Q4_PW_UNROLL; j++) r[j] = Q4_MASKED(j);
        ptrdiff_t i = Q4_PW_UNROLL;
        for (; i < n - (n % Q4_PW_UNROLL); i += Q4_PW_UNROLL)
            for (int j = 0; j < Q4_PW_UNROLL; j++) r[j] += Q4_MASKED(i + j);
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += Q4_MASKED(i);
        return res;
    }
#undef Q4_MASKED
    ptrdiff_t n2 = n / 2;
    n2 -= n2 % Q4_PW_UNROLL;
    return q4_pw_masked(g, x, clip, n2) + q4_pw_masked(g + n2, x + n2, clip, n - n2);
}

Q4_CLONES static void q4_pact_pass_block(const float *restrict x, const float *restrict g,
                                         float *restrict out, ptrdiff_t n, float clip) {
    for (ptrdiff_t i = 0; i < n; i++) {
        const float over = x[i] >= clip ? 1.0f : 0.0f;
        out[i] = g[i] * ((x[i] >= 0.0f ? 1.0f : 0.0f) - over);
    }
}

/* float32 rounded to the nearest float16 value, kept in float32: the bit arithmetic of
 * q4core/nn/half.py (round half to even on the 13 dropped mantissa bits; float16 subnormals on the
 * quantum 2^-24, rounded by the 1.5 * 2^23 trick, which rounds half to even like np.rint; +-Inf from
 * 65520 on; NaN kept as it is) as one branch-free loop the compiler vectorizes.  numpy's float16 cast
 * takes ~60 ns per subnormal result, and half.py's numpy passes ~6 ns per element. */
Q4_CLONES static void q4_round_f16(const float *restrict x, float *restrict out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        uint32_t b, sub;
        memcpy(&b, x + i, sizeof(b));
        const uint32_t a = b & 0x7FFFFFFFu, sign = b & 0x80000000u;
        const uint32_t normal = (b + 0x0FFFu + ((b >> 13) & 1u)) & 0xFFFFE000u;
        /* |x| < 2^-14: |x| * 2^24 < 1024 is exact, rounds to an integer, and scales back exactly */
        const float q = ((__builtin_fabsf(x[i]) * 16777216.0f + 12582912.0f) - 12582912.0f) * 5.9604644775390625e-8f;
        memcpy(&sub, &q, sizeof(sub));
        const uint32_t r = a > 0x7F800000u ? b                           /* NaN */
                         : a > 0x477FEFFFu ? (sign | 0x7F800000u)        /* |x| >= 65520: +-Inf */
                         : a < 0x38800000u ? (sign | sub)                /* float16 subnormal or zero */
                         : normal;
        memcpy(out + i, &r, sizeof(r));
    }
}

static double q4_pact_backward(const float *x, const float *g, float *out, ptrdiff_t n, float clip,
                               int threads) {
    const ptrdiff_t nbuf = (n + Q4_NP_BUFSIZE - 1) / Q4_NP_BUFSIZE;
    double stack[64];
    threads = q4_threads_for_elems(threads, n);
    double *part = threads <= 1 ? NULL
                 : nbuf <= 64 ? stack : (double *)malloc(sizeof(double) * (size_t)nbuf);
    double sum = 0.0;
    if (part == NULL) {     /* one thread, or no memory for the partial sums: the same order, serially
                               (and no parallel region: libgomp costs more than a small call) */
        for (ptrdiff_t c = 0; c < nbuf; c++) {
            const ptrdiff_t i0 = c * Q4_NP_BUFSIZE, len = n - i0 < Q4_NP_BUFSIZE ? n - i0 : Q4_NP_BUFSIZE;
            sum += q4_pw_masked(g + i0, x + i0, clip, len);
            q4_pact_pass_block(x + i0, g + i0, out + i0, len, clip);
        }
        return sum;
    }
#if Q4CORE_OPENMP
    #pragma omp parallel for num_threads(threads) schedule(static)
#endif
    for (ptrdiff_t c = 0; c < nbuf; c++) {
        const ptrdiff_t i0 = c * Q4_NP_BUFSIZE, len = n - i0 < Q4_NP_BUFSIZE ? n - i0 : Q4_NP_BUFSIZE;
        part[c] = q4_pw_masked(g + i0, x + i0, clip, len);
        q4_pact_pass_block(x + i0, g + i0, out + i0, len, clip);
    }
    for (ptrdiff_t c = 0; c < nbuf; c++) sum += part[c];
    if (part != stack) free(part);
    return sum;
}

/* the codes' scatter into the panels and the column sums: the sums row by row along contiguous
 * columns, the panels four rows (one k-group) at a time, each column's four codes one 32-bit lane
 * written together (interleaved stores: both loops vectorize) */
Q4_CLONES static void q4_pack_codes_b(const uint8_t *restrict codes, int64_t K, int64_t N,
                                      int8_t *restrict packed, int64_t Kp, int64_t *restrict sums) {
    for (int64_t k = 0; k < K; k++) {
        const int8_t *row = (const int8_t *)codes + k * N;
        for (int64_t j = 0; j < N; j++) sums[j] += row[j];
    }
    const int64_t K4 = K - K % Q4_KGROUP;
    for (int64_t k = 0; k < K4; k += Q4_KGROUP) {
        const uint8_t *r0 = codes + k * N, *r1 = r0 + N, *r2 = r1 + N, *r3 = r2 + N;
        int8_t *dst = packed + (k / Q4_KGROUP) * Q4_GROUP_BYTES;
        for (int64_t j0 = 0; j0 < N; j0 += Q4_PANEL, dst += Kp * Q4_PANEL) {
            const int64_t w = N - j0 < Q4_PANEL ? N - j0 : Q4_PANEL;
            for (int64_t j = 0; j < w; j++) {
                dst[Q4_KGROUP * j] = (int8_t)r0[j0 + j];
                dst[Q4_KGROUP * j + 1] = (int8_t)r1[j0 + j];
                dst[Q4_KGROUP * j + 2] = (int8_t)r2[j0 + j];
                dst[Q4_KGROUP * j + 3] = (int8_t)r3[j0 + j];
            }
        }
    }
    for (int64_t k = K4; k < K; k++) {          /* the last, partial k-group: byte by byte */
        const uint8_t *row = codes + k * N;
        int8_t *dst = packed + (k / Q4_KGROUP) * Q4_GROUP_BYTES + (k % Q4_KGROUP);
        for (int64_t j0 = 0; j0 < N; j0 += Q4_PANEL, dst += Kp * Q4_PANEL) {
            const int64_t w = N - j0 < Q4_PANEL ? N - j0 : Q4_PANEL;
            for (int64_t j = 0; j < w; j++) dst[Q4_KGROUP * j] = (int8_t)row[j0 + j];
        }
    }
}

/* A (K x N) weight straight to the GEMM's right operand: codes (K x N bytes, the level plan's
 * levels) and the packed panel layout of q4_pack_b with the identity table (gemm_portable.h: 16
 * columns per panel, 4 consecutive k per 32-bit lane; ``packed`` zeroed by the caller, Kp x Np)
 * and its int64 column sums (zeroed by the caller), reading the floats once.  Returns Q4_FLAG_* of x. */
static unsigned q4_encode_pack_b(const q4_plan *p, const void *x, int64_t K, int64_t N, uint8_t *codes,
                                 int8_t *packed, int64_t Kp, int64_t *sums) {
    /* the codes in one vectorized pass (a small weight stays in cache for the scatter below) */
    const unsigned flags = q4_run(p, Q4_OP_ENCODE, x, codes, K * N);
    q4_pack_codes_b(codes, K, N, packed, Kp, sums);
    return flags;
}

/* dispatch on the plan's dtype; plan1 may be NULL (one code array) */
static unsigned q4_encode_pair(const q4_plan *p0, const q4_plan *p1, const void *x, uint8_t *out0,
                               uint8_t *out1, ptrdiff_t n, double *hi, double *lo, int threads) {
    if (p0->is_f64)
        return q4_encode_pair_f64(p0, p1, (const double *)x, out0, out1, n, hi, lo, threads);
    return q4_encode_pair_f32(p0, p1, (const float *)x, out0, out1, n, hi, lo, threads);
}

#endif /* Q4_FUSED_KERNELS_H */
