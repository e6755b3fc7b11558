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
#include "gemm_portable.h"
#include "gemm_avx2.h"
#include "gemm_vnni.h"
#include "gemm_avxvnni.h"
#include "gemm_amx.h"

/* kernel ids: the order of q4core.gemm.KERNEL_NAMES */
enum { Q4_AMX = 0, Q4_VNNI = 1, Q4_AVXVNNI = 2, Q4_AVX2 = 3, Q4_PORTABLE = 4, Q4_NKERNELS = 5 };

#define Q4_MC 128    /* output tile rows    (multiple of 32) */
#define Q4_NC 256   /* output tile columns (multiple of 32) */
#define Q4_KC 512    /* K block             (multiple of 64) */

static inline int q4_kernel_compiled(int kernel) {
    switch (kernel) {
    case Q4_AMX: return Q4_HAVE_AMX;
    case Q4_VNNI: return Q4_HAVE_VNNI;
    case Q4_AVXVNNI: return Q4_HAVE_AVXVNNI;
    case Q4_AVX2: return Q4_HAVE_AVX2;
    case Q4_PORTABLE: return 1;
    default: return 0;
    }
}

/* Whether CPU + OS allow the kernel (ignores whether it was compiled). */
static inline int q4_kernel_supported(int kernel, const q4_cpu_features *f) {
    switch (kernel) {
#if defined(Q4_AMX_EMULATE)
    case Q4_AMX: (void)f; return 1;      /* test-only build with scalar tile emulation */
#else
    case Q4_AMX: return f->amx_tile && f->amx_int8 && f->os_amx && f->amx_permission == 1;
#endif
    case Q4_VNNI: return f->avx512f && f->avx512bw && f->avx512vnni && f->os_avx512;
    case Q4_AVXVNNI: return f->avx2 && f->avxvnni && f->os_avx;
    case Q4_AVX2: return f->avx2 && f->os_avx;
    case Q4_PORTABLE: return 1;
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
    switch (kernel) {
#if Q4_HAVE_AMX
    case Q4_AMX: return q4_tile_amx;
#endif
#if Q4_HAVE_VNNI
    case Q4_VNNI: return q4_tile_vnni;
#endif
#if Q4_HAVE_AVXVNNI
    case Q4_AVXVNNI: return q4_tile_avxvnni;
#endif
#if Q4_HAVE_AVX2
    case Q4_AVX2: return q4_tile_avx2;
#endif
    case Q4_PORTABLE: return q4_tile_portable;
    default: return NULL;
    }
}

/* rows of A (and of the output) each kernel steps over; A must be padded to a multiple */
static inline int q4_row_multiple(int kernel) {
    switch (kernel) {
    case Q4_AMX: return 16;
    case Q4_VNNI: return 8;
    default: return 4;
    }
}

static inline int q4_openmp_enabled(void) { return Q4CORE_OPENMP ? 1 : 0; }

static inline int q4_default_threads(void) {
#if Q4CORE_OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* One or two operand pairs ("groups") summed into one output: the FP4 x INT4 products are
 * two int8 GEMMs (exponent groups) whose int32 results are combined as g0 + (g1 << 8).
 * Both groups share M, N, K and the padded shapes; group g reads A[g] (row stride lda) and
 * packed B[g], and subtracts corr[g] (may be NULL) from its int32 sums.
 *   mode 0: out32  = v0                      (one group, shift 0)
 *   mode 1: out64 += sum_g (int64) v_g << shift[g]
 *   mode 2: out64  = sum_g (int64) v_g << shift[g]
 * Returns 0 on success, -1 for an unusable kernel, -2 for out-of-memory,
 * -3 for a product bound the AVX2 kernel cannot take without int16 saturation,
 * -4 for operand padding the kernel cannot step over or a bad group/mode. */
static int q4_gemm_groups(int kernel, int ngroups, const uint8_t *const *A, int64_t lda,
                          int64_t M, int64_t Mp, const int8_t *const *B, int64_t Kp,
                          int64_t N, int64_t Np, int64_t k0, int64_t k1,
                          const int32_t *const *corr, const int *shift, int mode,
                          void *out, int64_t ldo, int nthreads, int64_t max_product) {
    q4_tile_fn fn = q4_kernel_fn(kernel);
    if (fn == NULL || !q4_kernel_supported(kernel, q4_features())) return -1;
#if Q4_HAVE_AVX2
    if (kernel == Q4_AVX2) fn = q4_avx2_for_product(max_product);
#endif
    if (Mp % q4_row_multiple(kernel) != 0 || Np % 16 != 0 || Kp % 64 != 0 || k0 % 64 != 0
        || (k1 % 64 != 0 && k1 != k0) || lda < Kp || ngroups < 1 || ngroups > 2
        || mode < 0 || mode > 2 || (mode == 0 && (ngroups != 1 || shift[0] != 0)))
        return -4;
    for (int g = 0; g < ngroups; g++)
        if (shift[g] < 0 || shift[g] > 16) return -4;
#if Q4_HAVE_AVX2
    if (kernel == Q4_AVX2 && max_product > Q4_AVX2_MAX_PRODUCT) return -3;
#else
    (void)max_product;
#endif
    const int64_t tiles_m = (Mp + Q4_MC - 1) / Q4_MC, tiles_n = (Np + Q4_NC - 1) / Q4_NC;
    const int64_t ntiles = tiles_m * tiles_n;
    const size_t tile_ints = (size_t)Q4_MC * Q4_NC;
    int failed = 0;
    (void)nthreads;
#if Q4CORE_OPENMP
    if (nthreads <= 0) nthreads = omp_get_max_threads();
    if (nthreads > ntiles) nthreads = (int)(ntiles > 0 ? ntiles : 1);
    #pragma omp parallel num_threads(nthreads) reduction(|:failed)
#endif
    {
        int32_t *scratch = (int32_t *)aligned_alloc(64, sizeof(int32_t) * tile_ints * ngroups);
        if (scratch == NULL) failed = 1;
        {
#if Q4_HAVE_AMX
            if (kernel == Q4_AMX && scratch) q4_amx_thread_begin();
#endif
            /* every thread must reach the work-sharing loop, even one without scratch */
#if Q4CORE_OPENMP
            #pragma omp for schedule(dynamic, 1)
#endif
            for (int64_t t = 0; t < ntiles; t++) {
                if (scratch == NULL) continue;
                const int64_t i0 = (t / tiles_n) * Q4_MC, j0 = (t % tiles_n) * Q4_NC;
                const int64_t mrows = Mp - i0 < Q4_MC ? Mp - i0 : Q4_MC;
                const int64_t ncols = Np - j0 < Q4_NC ? Np - j0 : Q4_NC;
                for (int g = 0; g < ngroups; g++) {
                    int32_t *sg = scratch + g * tile_ints;
                    for (int64_t kb = k0; kb < k1; kb += Q4_KC) {
                        const int64_t ke = k1 - kb < Q4_KC ? k1 : kb + Q4_KC;
                        fn(A[g] + i0 * lda, lda, B[g] + (j0 / 16) * Kp * 16, Kp, kb, ke,
                           sg, Q4_NC, mrows, ncols, kb != k0);
                    }
                    if (k1 <= k0) memset(sg, 0, sizeof(int32_t) * tile_ints);
                }
                const int64_t iend = M - i0 < mrows ? M - i0 : mrows;
                const int64_t jend = N - j0 < ncols ? N - j0 : ncols;
                const int32_t *c0 = corr[0] ? corr[0] + j0 : NULL;
                const int32_t *c1 = ngroups > 1 && corr[1] ? corr[1] + j0 : NULL;
                for (int64_t i = 0; i < iend; i++) {
                    const int32_t *s0 = scratch + i * Q4_NC;
                    const int32_t *s1 = s0 + tile_ints;
                    if (mode == 0) {
                        int32_t *o = (int32_t *)out + (i0 + i) * ldo + j0;
                        if (c0) for (int64_t j = 0; j < jend; j++) o[j] = s0[j] - c0[j];
                        else memcpy(o, s0, sizeof(int32_t) * jend);
                        continue;
                    }
                    int64_t *o = (int64_t *)out + (i0 + i) * ldo + j0;
                    for (int64_t j = 0; j < jend; j++) {
                        int64_t v = (int64_t)(s0[j] - (c0 ? c0[j] : 0)) * ((int64_t)1 << shift[0]);
                        if (ngroups > 1)
                            v += (int64_t)(s1[j] - (c1 ? c1[j] : 0)) * ((int64_t)1 << shift[1]);
                        o[j] = mode == 1 ? o[j] + v : v;
                    }
                }
            }
#if Q4_HAVE_AMX
            if (kernel == Q4_AMX && scratch) q4_amx_thread_end();
#endif
            free(scratch);
        }
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
                          out, ldo, nthreads, max_product);
}

#endif /* Q4_GEMM_DRIVER_H */
