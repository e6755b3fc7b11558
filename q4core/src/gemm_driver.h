/* The GEMM driver shared by every kernel: cache blocking, OpenMP over output tiles,
 * the zero-point correction and the store into the caller's int32 / int64 output.
 *
 * Computes, for rows i < M and columns j < N of the padded operands (gemm_portable.h):
 *     v[i, j] = sum_{k0 <= k < k1} A[i, k] * B[k, j]  -  corr[j]          (int32, exact)
 * and stores it as int32 or adds / stores it shifted into int64 (q4_gemm_groups).
 * ``corr[j] = a_offset * column sum of B over [k0, k1)`` undoes the +offset that made a
 * signed left operand unsigned for vpdpbusd / tdpbusd (gemmlowp's zero-point trick).
 * Each thread owns whole MC x NC output tiles and sums its K blocks in its own scratch,
 * so the integer result is the same for any thread count. */
#ifndef Q4_GEMM_DRIVER_H
#define Q4_GEMM_DRIVER_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if Q4CORE_OPENMP
#include <omp.h>
#endif

#include "gemm_cpu.h"
#include "gemm_kernels.h"
#include "gemm_threads.h"
#include "gemm_portable.h"
#include "gemm_avx2.h"
#include "gemm_vnni.h"
#include "gemm_avxvnni.h"
#include "gemm_amx.h"
#include "rescale_rule.h"

/* Cache blocking of the driver (each thread owns whole MC x NC output tiles) */
#define Q4_MC 128    /* output tile rows    (a multiple of every kernel's row step, and of 2 AMX tiles) */
#define Q4_NC 256    /* output tile columns (a multiple of 2 panels: the VNNI / AMX column step) */
#define Q4_KC 512    /* K block             (a multiple of Q4_KALIGN) */
#define Q4_CACHE_LINE 64   /* alignment of the per-thread scratch tiles */
#define Q4_MAX_SHIFT 16    /* largest group shift: an int32 sum << 16 stays far inside int64 */

/* the layout facts the kernels rely on, checked where they meet */
_Static_assert(Q4_AMX_TILE_BYTES == Q4_KALIGN, "a K block starts on an AMX A-tile row");
_Static_assert(Q4_KALIGN % Q4_KPAD == 0, "a K block boundary is a k-group boundary");
_Static_assert(Q4_AMX_COLS == Q4_PANEL && Q4_AMX_TILE_BYTES == Q4_GROUP_BYTES,
               "an AMX B tile is 16 k-groups of one packed panel");
_Static_assert(Q4_MC % (2 * Q4_AMX_ROWS) == 0 && Q4_MC % Q4_VNNI_ROWS == 0
               && Q4_MC % Q4_AVX2_ROWS == 0 && Q4_MC % Q4_AVXVNNI_ROWS == 0
               && Q4_MC % Q4_PORTABLE_ROWS == 0, "MC is a multiple of every row step");
_Static_assert(Q4_NC % (2 * Q4_PANEL) == 0 && Q4_KC % Q4_KALIGN == 0, "blocking fits the layout");

/* --- everything below about individual kernels is generated from Q4_KERNEL_TABLE --- */

#define Q4_X_NAME(ID, name, rows, ok, words) #name,
#define Q4_X_WORDS(ID, name, rows, ok, words) words,
#define Q4_X_ROWS(ID, name, rows, ok, words) rows,
#define Q4_X_COMPILED(ID, name, rows, ok, words) Q4_HAVE_##ID,
#define Q4_X_FN(ID, name, rows, ok, words) q4_tile_##name,
#define Q4_X_OK(ID, name, rows, ok, words) case Q4_##ID: return (ok);
static const char *const q4_kernel_names[Q4_NKERNELS] = { Q4_KERNEL_TABLE(Q4_X_NAME) };
static const char *const q4_kernel_words[Q4_NKERNELS] = { Q4_KERNEL_TABLE(Q4_X_WORDS) };
static const int q4_kernel_rows[Q4_NKERNELS] = { Q4_KERNEL_TABLE(Q4_X_ROWS) };
static const int q4_kernel_compiled_flags[Q4_NKERNELS] = { Q4_KERNEL_TABLE(Q4_X_COMPILED) };

static inline int q4_valid_kernel(int kernel) { return kernel >= 0 && kernel < Q4_NKERNELS; }

static inline const char *q4_kernel_name(int kernel) {
    return q4_valid_kernel(kernel) ? q4_kernel_names[kernel] : "";
}

/* what CPU + OS must offer, in words (for error messages) */
static inline const char *q4_kernel_requires(int kernel) {
    return q4_valid_kernel(kernel) ? q4_kernel_words[kernel] : "";
}

/* Whether the compiler built the kernel. */
static inline int q4_kernel_compiled(int kernel) {
    return q4_valid_kernel(kernel) ? q4_kernel_compiled_flags[kernel] : 0;
}

/* Whether CPU + OS allow the kernel (ignores whether it was compiled). */
static inline int q4_kernel_supported(int kernel, const q4_cpu_features *f) {
    switch (kernel) {
    Q4_KERNEL_TABLE(Q4_X_OK)
    default: return 0;
    }
}

/* Features detected once (the first call comes from the module import, under the GIL). */
static inline const q4_cpu_features *q4_features(void) {
    static q4_cpu_features f;
    static int done = 0;
    if (!done) { q4_detect_cpu(&f); done = 1; }
    return &f;
}

static inline q4_tile_fn q4_kernel_fn(int kernel) {
    static const q4_tile_fn fns[Q4_NKERNELS] = { Q4_KERNEL_TABLE(Q4_X_FN) };
    return q4_valid_kernel(kernel) ? fns[kernel] : NULL;
}

/* k each kernel steps over: a k-group (the padding of K), 64 for AMX (one tile row of A) */
static inline int q4_kernel_kstep(int kernel) {
    return kernel == Q4_AMX ? Q4_AMX_TILE_BYTES : Q4_KPAD;
}

/* The kernel for the k % kstep tail of a K range the chosen kernel ``fn`` cannot step over: for AMX
 * the AVX-512 VNNI kernel (every AMX CPU has it), else the portable one.  Both read the same layout. */
static inline q4_tile_fn q4_tail_fn(int kernel, q4_tile_fn fn) {
    if (q4_kernel_kstep(kernel) == Q4_KPAD) return fn;
    if (q4_kernel_compiled(Q4_VNNI) && q4_kernel_supported(Q4_VNNI, q4_features()))
        return q4_kernel_fn(Q4_VNNI);
    return q4_tile_portable;
}

/* rows of A (and of the output) each kernel steps over; A must be padded to a multiple */
static inline int q4_row_multiple(int kernel) {
    return q4_valid_kernel(kernel) ? q4_kernel_rows[kernel] : Q4_PORTABLE_ROWS;
}

#undef Q4_X_NAME
#undef Q4_X_WORDS
#undef Q4_X_ROWS
#undef Q4_X_COMPILED
#undef Q4_X_FN
#undef Q4_X_OK

static inline int q4_openmp_enabled(void) { return Q4CORE_OPENMP ? 1 : 0; }

/* a missing zero-point correction: subtracting zeros keeps the loops below branch-free */
static const int32_t q4_zero_corr[Q4_NC > Q4_MC ? Q4_NC : Q4_MC];

/* (int64) x << s for 0 <= s <= Q4_MAX_SHIFT, negative x included: the shift is done on the
 * unsigned representation (a left shift of a negative int64 is undefined in C), which
 * compilers vectorize, unlike the int64 multiply it replaces */
static inline int64_t q4_shl64(int64_t x, int s) { return (int64_t)((uint64_t)x << s); }

/* out row (int64) (+)= (s0 - c0) << h0  [+ (s1 - c1) << h1]  over n columns.  The cases are
 * separate loops so that each is a plain vectorizable loop (the merged loop with its
 * per-element branches on groups, corrections and mode took 7 ms for 2048 x 2048 x 2 groups) */
static inline void q4_store_int64_row(int64_t *restrict o, const int32_t *s0, const int32_t *c0, int h0,
                                      const int32_t *s1, const int32_t *c1, int h1, int64_t n,
                                      int accumulate) {
    if (s1 == NULL && accumulate)
        for (int64_t j = 0; j < n; j++) o[j] += q4_shl64((int64_t)s0[j] - c0[j], h0);
    else if (s1 == NULL)
        for (int64_t j = 0; j < n; j++) o[j] = q4_shl64((int64_t)s0[j] - c0[j], h0);
    else if (accumulate)
        for (int64_t j = 0; j < n; j++)
            o[j] += q4_shl64((int64_t)s0[j] - c0[j], h0) + q4_shl64((int64_t)s1[j] - c1[j], h1);
    else
        for (int64_t j = 0; j < n; j++)
            o[j] = q4_shl64((int64_t)s0[j] - c0[j], h0) + q4_shl64((int64_t)s1[j] - c1[j], h1);
}

/* int32 x << s on the unsigned representation (no undefined behaviour for negative x) */
static inline uint32_t q4_shl32(int32_t x, int s) { return (uint32_t)x << s; }

/* out row (int32) = (s0 - c0) << h0  [+ (s1 - c1) << h1]  over n columns, in modular 32-bit
 * arithmetic: exact whenever the true sum fits in int32, which the caller's K chunk guarantees */
static inline void q4_store_int32_row(int32_t *restrict o, const int32_t *s0, const int32_t *c0, int h0,
                                      const int32_t *s1, const int32_t *c1, int h1, int64_t n) {
    if (s1 == NULL)
        for (int64_t j = 0; j < n; j++) o[j] = (int32_t)q4_shl32((int32_t)((uint32_t)s0[j] - (uint32_t)c0[j]), h0);
    else
        for (int64_t j = 0; j < n; j++)
            o[j] = (int32_t)(q4_shl32((int32_t)((uint32_t)s0[j] - (uint32_t)c0[j]), h0)
                             + q4_shl32((int32_t)((uint32_t)s1[j] - (uint32_t)c1[j]), h1));
}

/* float32 out row = v * factor over n columns, rounded by the engine's rescale rule (rescale_rule.h,
 * shared with q4_rescale_* in fused_kernels.h) */
static inline void q4_scale_row(float *restrict o, const int32_t *restrict v, int64_t n, double factor,
                                int exact) {
    Q4_RESCALE_LOOP(o, v, n, factor, exact);
}

/* The arguments of one q4_gemm_groups call, shared by its threads. */
typedef struct {
    q4_tile_fn fn, tail;    /* tail: the kernel for a last k1 % kstep (q4_tail_fn) */
    int64_t kstep;
    int kernel, ngroups, mode, fused, exact;
    double factor;
    const uint8_t *const *A;
    const int8_t *const *B;
    const int32_t *const *corr;
    const int *shift;
    void *out;
    int64_t lda, M, Mp, Kp, N, Np, k0, k1, ldo, tiles_n, ntiles;
    int64_t tile_cols;      /* row stride of the scratch tiles (int32s) */
    size_t tile_ints;       /* int32s per scratch tile */
} q4_gemm_job;

/* Output tile t of the call: its K blocks into ``scratch`` (tile_ints int32 per group, or one
 * tile when fused), then the corrected, shifted store into the output. */
static inline void q4_gemm_tile(const q4_gemm_job *job, int64_t t, int32_t *scratch) {
    const q4_tile_fn fn = job->fn;
    const int ngroups = job->ngroups, mode = job->mode, fused = job->fused;
    const uint8_t *const *A = job->A;
    const int8_t *const *B = job->B;
    const int32_t *const *corr = job->corr;
    const int *shift = job->shift;
    void *out = job->out;
    const int64_t lda = job->lda, M = job->M, Mp = job->Mp, Kp = job->Kp, N = job->N, Np = job->Np;
    const int64_t k0 = job->k0, k1 = job->k1, ldo = job->ldo, tiles_n = job->tiles_n;
    const size_t tile_ints = job->tile_ints;
    const int64_t ldc_s = job->tile_cols;     /* the scratch tile's row stride */
    (void)fused;
    const int64_t i0 = (t / tiles_n) * Q4_MC, j0 = (t % tiles_n) * Q4_NC;
    const int64_t mrows = Mp - i0 < Q4_MC ? Mp - i0 : Q4_MC;
    const int64_t ncols = Np - j0 < Q4_NC ? Np - j0 : Q4_NC;
#if Q4_HAVE_VNNI
    if (fused) {
        for (int64_t kb = k0; kb < k1; kb += Q4_KC) {
            const int64_t ke = k1 - kb < Q4_KC ? k1 : kb + Q4_KC;
            const int64_t boff = (j0 / Q4_PANEL) * Kp * Q4_PANEL;
            q4_tile2_vnni(A[0] + i0 * lda, A[1] + i0 * lda, lda, B[0] + boff, B[1] + boff, Kp,
                          kb, ke, scratch, ldc_s, mrows, ncols, kb != k0, shift[0], shift[1]);
        }
        const int64_t iend = M - i0 < mrows ? M - i0 : mrows;
        const int64_t jend = N - j0 < ncols ? N - j0 : ncols;
        uint32_t cc[Q4_NC];     /* the combined correction, modular like the sums */
        int32_t row[Q4_NC];     /* mode 5: the int32 row before its rescale */
        for (int64_t j = 0; j < jend; j++)
            cc[j] = ((corr[0] ? (uint32_t)corr[0][j0 + j] : 0u) << shift[0])
                  + ((corr[1] ? (uint32_t)corr[1][j0 + j] : 0u) << shift[1]);
        for (int64_t i = 0; i < iend; i++) {
            const int32_t *s0 = scratch + i * ldc_s;
            if (mode == 3 || mode == 5) {
                int32_t *o = mode == 3 ? (int32_t *)out + (i0 + i) * ldo + j0 : row;
                for (int64_t j = 0; j < jend; j++) o[j] = (int32_t)((uint32_t)s0[j] - cc[j]);
                if (mode == 5)
                    q4_scale_row((float *)out + (i0 + i) * ldo + j0, row, jend, job->factor, job->exact);
            } else if (mode == 2) {
                int64_t *o = (int64_t *)out + (i0 + i) * ldo + j0;
                for (int64_t j = 0; j < jend; j++) o[j] = (int32_t)((uint32_t)s0[j] - cc[j]);
            } else {
                int64_t *o = (int64_t *)out + (i0 + i) * ldo + j0;
                for (int64_t j = 0; j < jend; j++) o[j] += (int32_t)((uint32_t)s0[j] - cc[j]);
            }
        }
        return;
    }
#endif
    for (int g = 0; g < ngroups; g++) {
        int32_t *sg = scratch + g * tile_ints;
        const uint8_t *ag = A[g] + i0 * lda;
        const int8_t *bg = B[g] + (j0 / Q4_PANEL) * Kp * Q4_PANEL;
        for (int64_t kb = k0; kb < k1; kb += Q4_KC) {
            const int64_t ke = k1 - kb < Q4_KC ? k1 : kb + Q4_KC;
            const int64_t km = kb + (ke - kb) / job->kstep * job->kstep;   /* what fn steps over */
            if (km > kb) fn(ag, lda, bg, Kp, kb, km, sg, ldc_s, mrows, ncols, kb != k0);
            if (ke > km) job->tail(ag, lda, bg, Kp, km, ke, sg, ldc_s, mrows, ncols, km != k0);
        }
        if (k1 <= k0) memset(sg, 0, sizeof(int32_t) * tile_ints);
    }
    const int64_t iend = M - i0 < mrows ? M - i0 : mrows;
    const int64_t jend = N - j0 < ncols ? N - j0 : ncols;
    const int32_t *c0 = corr[0] ? corr[0] + j0 : NULL;
    const int32_t *c1 = ngroups > 1 && corr[1] ? corr[1] + j0 : NULL;
    int32_t row[Q4_NC];         /* modes 4 and 5: the int32 row before its rescale */
    for (int64_t i = 0; i < iend; i++) {
        const int32_t *s0 = scratch + i * ldc_s;
        const int32_t *s1 = s0 + tile_ints;
        if (mode == 0 || mode == 4) {
            int32_t *o = mode == 0 ? (int32_t *)out + (i0 + i) * ldo + j0 : row;
            if (c0) for (int64_t j = 0; j < jend; j++) o[j] = s0[j] - c0[j];
            else memcpy(o, s0, sizeof(int32_t) * jend);
            if (mode == 4)
                q4_scale_row((float *)out + (i0 + i) * ldo + j0, row, jend, job->factor, job->exact);
            continue;
        }
        if (mode == 3 || mode == 5) {
            q4_store_int32_row(mode == 3 ? (int32_t *)out + (i0 + i) * ldo + j0 : row, s0,
                               c0 ? c0 : q4_zero_corr, shift[0], ngroups > 1 ? s1 : NULL,
                               c1 ? c1 : q4_zero_corr, ngroups > 1 ? shift[1] : 0, jend);
            if (mode == 5)
                q4_scale_row((float *)out + (i0 + i) * ldo + j0, row, jend, job->factor, job->exact);
            continue;
        }
        int64_t *o = (int64_t *)out + (i0 + i) * ldo + j0;
        q4_store_int64_row(o, s0, c0 ? c0 : q4_zero_corr, shift[0],
                           ngroups > 1 ? s1 : NULL, c1 ? c1 : q4_zero_corr,
                           ngroups > 1 ? shift[1] : 0, jend, mode == 1);
    }
}

/* One thread's share of the call: its scratch tile(s), then output tiles - all of them when
 * ``team`` is 0 (the caller runs alone, outside any OpenMP region), else those the enclosing
 * parallel region's work-sharing loop hands it.  Returns 1 when the scratch allocation failed. */
static inline int q4_gemm_thread(const q4_gemm_job *job, int team) {
    int32_t *scratch = (int32_t *)aligned_alloc(Q4_CACHE_LINE,
                                                sizeof(int32_t) * job->tile_ints * (job->fused ? 1 : job->ngroups));
#if Q4_HAVE_AMX
    if (job->kernel == Q4_AMX && scratch) q4_amx_thread_begin();
#endif
    if (team) {
        /* every thread must reach the work-sharing loop, even one without scratch */
#if Q4CORE_OPENMP
        #pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t t = 0; t < job->ntiles; t++)
            if (scratch != NULL) q4_gemm_tile(job, t, scratch);
    } else if (scratch != NULL) {
        for (int64_t t = 0; t < job->ntiles; t++) q4_gemm_tile(job, t, scratch);
    }
#if Q4_HAVE_AMX
    if (job->kernel == Q4_AMX && scratch) q4_amx_thread_end();
#endif
    const int failed = scratch == NULL;
    free(scratch);
    return failed;
}

/* One or two operand pairs ("groups") summed into one output: the FP4 x INT4 products are
 * two int8 GEMMs (exponent groups) whose int32 results are combined as g0 + (g1 << 8).
 * Both groups share M, N, K and the padded shapes; group g reads A[g] (row stride lda) and
 * packed B[g], and subtracts corr[g] (may be NULL) from its int32 sums.
 *   mode 0: out32  = v0                      (one group, shift 0)
 *   mode 1: out64 += sum_g (int64) v_g << shift[g]
 *   mode 2: out64  = sum_g (int64) v_g << shift[g]
 *   mode 3: out32  = sum_g v_g << shift[g]    (the caller guarantees that the exact sum fits int32:
 *                                              one K chunk of an FP4 product; half the bytes of mode 2)
 *   mode 4, 5: float32 out = (the int32 of mode 0, 3) * factor, rounded as q4_scale_row says - the
 *              engine's rescale in the store, instead of a pass over an int32 result (one K chunk)
 * Returns 0 on success, -1 for an unusable kernel, -2 for out-of-memory,
 * -3 for a product bound the AVX2 kernel cannot take without int16 saturation,
 * -4 for operand padding the kernel cannot step over or a bad group/mode. */
static int q4_gemm_groups(int kernel, int ngroups, const uint8_t *const *A, int64_t lda,
                          int64_t M, int64_t Mp, const int8_t *const *B, int64_t Kp,
                          int64_t N, int64_t Np, int64_t k0, int64_t k1,
                          const int32_t *const *corr, const int *shift, int mode,
                          void *out, int64_t ldo, int nthreads, int64_t max_product,
                          double factor, int exact) {
    q4_tile_fn fn = q4_kernel_fn(kernel);
    if (fn == NULL || !q4_kernel_supported(kernel, q4_features())) return -1;
#if Q4_HAVE_AVX2
    if (kernel == Q4_AVX2) fn = q4_avx2_for_product(max_product);
#endif
    /* K chunks start on a K block boundary; only the last may end off one (at Kp) */
    if (Mp % q4_row_multiple(kernel) != 0 || Np % Q4_PANEL != 0 || Kp % Q4_KPAD != 0
        || k0 % Q4_KALIGN != 0 || k1 < k0 || k1 > Kp || (k1 % Q4_KALIGN != 0 && k1 != Kp)
        || lda < Kp || ngroups < 1 || ngroups > 2
        || mode < 0 || mode > 5 || ((mode == 0 || mode == 4) && (ngroups != 1 || shift[0] != 0)))
        return -4;
    for (int g = 0; g < ngroups; g++)
        if (shift[g] < 0 || shift[g] > Q4_MAX_SHIFT) return -4;
#if Q4_HAVE_AVX2
    if (kernel == Q4_AVX2 && max_product > Q4_AVX2_MAX_PRODUCT) return -3;
#else
    (void)max_product;
#endif
    /* Two groups on the AVX-512 VNNI kernel: both in one pass over the shared operand, summed
     * as (v0 << s0) + (v1 << s1) in int32 inside the kernel (one scratch tile, one store).  The
     * modular 32-bit sum is exact when the result of this call fits in int32: always in modes 3, 5
     * (the caller's guarantee), else when max_product * (k1 - k0) * (2**s0 + 2**s1) does -
     * max_product bounds |a * b| of every stored product, the offset is inside A's range, so
     * |v_g| <= max_product * (k1 - k0). */
    int fused = 0;
#if Q4_HAVE_VNNI
    if (kernel == Q4_VNNI && ngroups == 2 && mode != 0 && k1 > k0) {
        if (mode == 3 || mode == 5) fused = 1;
        else if (max_product > 0 && max_product <= INT32_MAX / (k1 - k0)) {
            const int64_t v = max_product * (k1 - k0);    /* < 2**31: the shifted sum fits int64 */
            fused = (v << shift[0]) + (v << shift[1]) <= INT32_MAX;
        }
    }
#endif
    const int64_t tiles_m = (Mp + Q4_MC - 1) / Q4_MC, tiles_n = (Np + Q4_NC - 1) / Q4_NC;
    const int64_t ntiles = tiles_m * tiles_n;
    /* a scratch tile holds the rows and columns a tile can have (fewer than Q4_MC x Q4_NC when
     * Mp or Np is): on a small product the full tile's 128 KB with its 1 KB row stride (64 rows
     * in 16 L1 sets) cost more than the arithmetic.  Every kernel writes only rows < mrows and
     * columns < ncols of its tile, whatever the row stride (gemm_portable.h) */
    const int64_t tile_rows = Mp > 0 && Mp < Q4_MC ? Mp : Q4_MC;
    const int64_t tile_cols = Np > 0 && Np < Q4_NC ? Np : Q4_NC;
    const size_t tile_ints = (size_t)tile_rows * tile_cols;
    int failed = 0;
    /* clamped, and at least Q4_GEMM_MACS_PER_THREAD multiply-accumulates per thread */
    nthreads = q4_threads_for_work(nthreads, ntiles, Mp * Np * (k1 - k0) * ngroups,
                                   Q4_GEMM_MACS_PER_THREAD);
    (void)nthreads;
    const q4_gemm_job job = {fn, q4_tail_fn(kernel, fn), q4_kernel_kstep(kernel), kernel, ngroups, mode,
                             fused, exact, factor, A, B, corr, shift, out, lda, M, Mp, Kp, N, Np, k0, k1, ldo, tiles_n, ntiles, tile_cols, tile_ints};
    /* one thread: no OpenMP region at all (entering one costs more than a small product) */
    if (nthreads <= 1) {
        failed = q4_gemm_thread(&job, 0);
    } else {
#if Q4CORE_OPENMP
        #pragma omp parallel num_threads(nthreads) reduction(|:failed)
#endif
        failed |= q4_gemm_thread(&job, 1);
    }
    return failed ? -2 : 0;
}

/* The single-group form (INT4 x INT4). */
static inline int q4_gemm(int kernel, const uint8_t *A, int64_t lda, int64_t M, int64_t Mp,
                   const int8_t *B, int64_t Kp, int64_t N, int64_t Np, int64_t k0, int64_t k1,
                   const int32_t *corr, int mode, int shift, void *out, int64_t ldo,
                   int nthreads, int64_t max_product) {
    const uint8_t *As[1] = {A};
    const int8_t *Bs[1] = {B};
    const int32_t *cs[1] = {corr};
    int sh[1] = {shift};
    return q4_gemm_groups(kernel, 1, As, lda, M, Mp, Bs, Kp, N, Np, k0, k1, cs, sh, mode,
                          out, ldo, nthreads, max_product, 1.0, 0);
}

#endif /* Q4_GEMM_DRIVER_H */
