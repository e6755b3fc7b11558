/* Operand preparation for the GEMM kernels (layouts in gemm_portable.h):
 *   q4_pack_b  maps B (K x N bytes, any strides) through T byte tables into T packed
 *              operands (16-column panels, 4 consecutive k per 32-bit lane) and their
 *              column sums - one pass over B however many tables (FP4 exponent groups);
 *   q4_prep_a  maps A (M x K bytes, any strides) through T byte tables into T zero-padded
 *              row-major buffers (padding must already be zero).
 * Both also flag which byte values occur (``seen``, may be NULL) so the FP4 paths learn
 * which exponent groups are present without another pass, and both split their work over
 * OpenMP threads (panels / rows), each output byte written by exactly one thread. */
#ifndef Q4_GEMM_PACK_H
#define Q4_GEMM_PACK_H

#include <stdint.h>
#include <string.h>
#include "gemm_portable.h"
#include "gemm_threads.h"

#define Q4_MAX_TABLES 2
/* prep_a's row stride: Kp, plus Q4_LDA_SKEW bytes when Kp is a multiple of Q4_LDA_ALIAS, so
 * that the rows a micro-kernel reads together do not all map to the same L1 cache set */
#define Q4_LDA_ALIAS 512
#define Q4_LDA_SKEW 64

/* OR a thread's byte-presence flags into the shared ones */
static inline void q4_merge_seen(uint8_t *seen, const uint8_t *local) {
    if (seen == NULL) return;
#if Q4CORE_OPENMP
    #pragma omp critical(q4_seen)
#endif
    for (int v = 0; v < 256; v++) seen[v] |= local[v];
}

static inline void q4_pack_b(const uint8_t *src, int64_t sk, int64_t sj, int64_t K, int64_t N,
                             const int8_t *tables, int T, int8_t *out, int64_t out_stride,
                             int64_t *sums, int64_t Kp, int64_t Np, uint8_t *seen, int nthreads) {
    const int64_t npanels = Np / Q4_PANEL;
    /* clamped (gemm_threads.h), at least Q4_PACK_BYTES_PER_THREAD packed bytes per thread */
    nthreads = q4_threads_for_work(nthreads, npanels, Kp * Np * T, Q4_PACK_BYTES_PER_THREAD);
    (void)nthreads;
#if Q4CORE_OPENMP
    #pragma omp parallel num_threads(nthreads)
#endif
    {
        uint8_t local[256];
        memset(local, 0, sizeof(local));
#if Q4CORE_OPENMP
        #pragma omp for schedule(static)
#endif
        for (int64_t pj = 0; pj < npanels; pj++) {
            const int64_t j0 = pj * Q4_PANEL, jend = N - j0 < Q4_PANEL ? N - j0 : Q4_PANEL;
            int64_t acc[Q4_MAX_TABLES][Q4_PANEL];
            memset(acc, 0, sizeof(acc));
            for (int64_t k = 0; k < K; k++) {
                const uint8_t *row = src + k * sk + j0 * sj;
                const int64_t off = pj * Kp * Q4_PANEL + (k / Q4_KGROUP) * Q4_GROUP_BYTES
                                    + (k % Q4_KGROUP);
                for (int64_t j = 0; j < jend; j++) local[row[j * sj]] = 1;
                for (int t = 0; t < T; t++) {
                    const int8_t *tab = tables + 256 * t;
                    int8_t *dst = out + t * out_stride + off;
                    for (int64_t j = 0; j < jend; j++) {
                        int8_t v = tab[row[j * sj]];
                        dst[Q4_KGROUP * j] = v;
                        acc[t][j] += v;
                    }
                }
            }
            for (int t = 0; t < T; t++)
                for (int64_t j = 0; j < jend; j++) sums[t * Np + j0 + j] = acc[t][j];
        }
        q4_merge_seen(seen, local);
    }
}

static inline void q4_prep_a(const uint8_t *src, int64_t si, int64_t sk, int64_t M, int64_t K,
                             const uint8_t *tables, int T, uint8_t *out, int64_t out_stride,
                             int64_t lda, uint8_t *seen, int nthreads) {
    /* clamped (gemm_threads.h), at least Q4_PACK_BYTES_PER_THREAD prepared bytes per thread */
    nthreads = q4_threads_for_work(nthreads, M, M * K * T, Q4_PACK_BYTES_PER_THREAD);
    (void)nthreads;
#if Q4CORE_OPENMP
    #pragma omp parallel num_threads(nthreads)
#endif
    {
        uint8_t local[256];
        memset(local, 0, sizeof(local));
#if Q4CORE_OPENMP
        #pragma omp for schedule(static)
#endif
        for (int64_t i = 0; i < M; i++) {
            const uint8_t *row = src + i * si;
            if (seen != NULL)
                for (int64_t k = 0; k < K; k++) local[row[k * sk]] = 1;
            for (int t = 0; t < T; t++) {
                const uint8_t *tab = tables + 256 * t;
                uint8_t *dst = out + t * out_stride + i * lda;
                if (sk == 1)
                    for (int64_t k = 0; k < K; k++) dst[k] = tab[row[k]];
                else
                    for (int64_t k = 0; k < K; k++) dst[k] = tab[row[k * sk]];
            }
        }
        q4_merge_seen(seen, local);
    }
}

#endif /* Q4_GEMM_PACK_H */
