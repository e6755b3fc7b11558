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
#include "gemm_cpu.h"
#include "gemm_portable.h"
#include "gemm_threads.h"

#define Q4_MAX_TABLES 2
/* prep_a's row stride (q4core/_gemm.pyx): Kp below 64, else Kp rounded up to 64, plus Q4_LDA_SKEW
 * bytes when that is a multiple of Q4_LDA_ALIAS, so that the rows a micro-kernel reads together do
 * not all map to the same L1 cache set */
#define Q4_LDA_ALIAS 512
#define Q4_LDA_SKEW 64

/* --- AVX-512 VBMI byte mapping --------------------------------------------------------------
 * The scalar loops below spend a table lookup, a byte store and a presence-flag store per byte
 * and per table; at 2048 x 2048 that was 3 ms for the FP4 left operand and 8 ms for the FP4
 * right operand, as much as a whole AMX GEMM.  With VBMI a 256-byte table is four zmm and a
 * lookup of 64 bytes is two vpermi2b and a blend on the top bit.  Presence flags of values
 * 0..15 (all an INT4 / FP4 operand holds) are a bit per value ORed together with vpshufb;
 * a 64-byte chunk holding any larger byte sets its flags one by one, as the scalar loop does.
 * Results are identical to the scalar loops' (tests compare both, q4_pack_simd_set). */
#if Q4_X86 && Q4_HAVE_AVX512VNNI_CC
#define Q4_HAVE_PACK_VBMI 1
#define Q4_VBMI_TARGET __attribute__((target("avx512f,avx512bw,avx512vbmi")))
#else
#define Q4_HAVE_PACK_VBMI 0
#endif

/* -1: not decided yet; 0: scalar loops; 1: VBMI loops */
static int q4_pack_simd_state = -1;

/* whether the VBMI loops run: CPU + OS allow them and no one turned them off */
static inline int q4_pack_simd(void) {
    if (q4_pack_simd_state < 0) {
        int ok = 0;
#if Q4_HAVE_PACK_VBMI
        q4_cpu_features f;
        q4_detect_cpu(&f);
        ok = f.avx512f && f.avx512bw && f.avx512vbmi && f.os_avx512;
#endif
        q4_pack_simd_state = ok;
    }
    return q4_pack_simd_state;
}

/* turn the VBMI loops off (0) or back to what the CPU allows (1); returns whether they run */
static inline int q4_pack_simd_set(int enabled) {
    q4_pack_simd_state = -1;
    if (!enabled) q4_pack_simd_state = 0;
    return q4_pack_simd();
}

#if Q4_HAVE_PACK_VBMI
typedef struct { __m512i lo, hi; } q4_seen_bits;   /* bit v of byte lanes: value v occurred */

Q4_VBMI_TARGET static inline __m512i q4_vbmi_map(const __m512i *tab, __m512i v) {
    const __m512i lo = _mm512_permutex2var_epi8(tab[0], v, tab[1]);   /* bytes 0..127   */
    const __m512i hi = _mm512_permutex2var_epi8(tab[2], v, tab[3]);   /* bytes 128..255 */
    return _mm512_mask_blend_epi8(_mm512_movepi8_mask(v), lo, hi);
}

Q4_VBMI_TARGET static inline void q4_vbmi_seen(q4_seen_bits *acc, __m512i v, __mmask64 valid,
                                               const uint8_t *bytes, uint8_t *local) {
    if (_mm512_mask_test_epi8_mask(valid, v, _mm512_set1_epi8((char)0xF0))) {
        for (int i = 0; i < 64; i++)           /* a byte >= 16: flag this chunk byte by byte */
            if ((valid >> i) & 1) local[bytes[i]] = 1;
        return;
    }
    const __m512i bit_lo = _mm512_broadcast_i32x4(_mm_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128,
                                                                0, 0, 0, 0, 0, 0, 0, 0));
    const __m512i bit_hi = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0,
                                                                1, 2, 4, 8, 16, 32, 64, -128));
    acc->lo = _mm512_or_si512(acc->lo, _mm512_maskz_shuffle_epi8(valid, bit_lo, v));
    acc->hi = _mm512_or_si512(acc->hi, _mm512_maskz_shuffle_epi8(valid, bit_hi, v));
}

Q4_VBMI_TARGET static inline void q4_vbmi_seen_flush(const q4_seen_bits *acc, uint8_t *local) {
    uint8_t lo[64], hi[64], bl = 0, bh = 0;
    _mm512_storeu_si512(lo, acc->lo);
    _mm512_storeu_si512(hi, acc->hi);
    for (int i = 0; i < 64; i++) { bl |= lo[i]; bh |= hi[i]; }
    for (int v = 0; v < 8; v++) {
        if ((bl >> v) & 1) local[v] = 1;
        if ((bh >> v) & 1) local[8 + v] = 1;
    }
}

static inline __mmask64 q4_first_bytes(int64_t n) {    /* mask of the first min(n, 64) bytes */
    return n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1);
}

/* q4_prep_a's row for a contiguous source row (sk == 1) */
Q4_VBMI_TARGET static void q4_prep_a_row_vbmi(const uint8_t *row, int64_t K, const uint8_t *tables,
                                              int T, uint8_t *dst0, int64_t out_stride,
                                              uint8_t *local /* NULL: no flags */) {
    __m512i tab[Q4_MAX_TABLES][4];
    for (int t = 0; t < T; t++)
        for (int q = 0; q < 4; q++) tab[t][q] = _mm512_loadu_si512(tables + 256 * t + 64 * q);
    q4_seen_bits seen = {_mm512_setzero_si512(), _mm512_setzero_si512()};
    for (int64_t k = 0; k < K; k += 64) {
        const __mmask64 m = q4_first_bytes(K - k);
        const __m512i v = _mm512_maskz_loadu_epi8(m, row + k);
        for (int t = 0; t < T; t++)
            _mm512_mask_storeu_epi8(dst0 + t * out_stride + k, m, q4_vbmi_map(tab[t], v));
        if (local) q4_vbmi_seen(&seen, v, m, row + k, local);
    }
    if (local) q4_vbmi_seen_flush(&seen, local);
}

/* q4_pack_b for the 64 columns [j0, j0 + 64) of a source with contiguous rows (sj == 1):
 * four panels (npan of them exist), every k-group; padding stays zero */
Q4_VBMI_TARGET static void q4_pack_b_block_vbmi(const uint8_t *src, int64_t sk, int64_t K, int64_t N,
                                                int64_t j0, int npan, const int8_t *tables, int T,
                                                int8_t *out, int64_t out_stride, int64_t *sums,
                                                int64_t Kp, int64_t Np, uint8_t *local) {
    __m512i tab[Q4_MAX_TABLES][4];
    for (int t = 0; t < T; t++)
        for (int q = 0; q < 4; q++) tab[t][q] = _mm512_loadu_si512(tables + 256 * t + 64 * q);
    __m512i acc[Q4_MAX_TABLES][4];          /* int32 column sums, one zmm per panel */
    for (int t = 0; t < T; t++)
        for (int p = 0; p < 4; p++) acc[t][p] = _mm512_setzero_si512();
    const __m512i ones8 = _mm512_set1_epi8(1), ones16 = _mm512_set1_epi16(1);
    q4_seen_bits seen = {_mm512_setzero_si512(), _mm512_setzero_si512()};
    const __mmask64 m = q4_first_bytes(N - j0);
    const int64_t groups = (K + Q4_KGROUP - 1) / Q4_KGROUP;
    for (int64_t g = 0; g < groups; g++) {
        __m512i v[Q4_KGROUP];
        __mmask64 rm[Q4_KGROUP];
        for (int q = 0; q < Q4_KGROUP; q++) {
            const int64_t k = Q4_KGROUP * g + q;
            rm[q] = k < K ? m : 0;            /* rows past K are padding: zero */
            v[q] = _mm512_maskz_loadu_epi8(rm[q], src + k * sk + j0);
            if (rm[q]) q4_vbmi_seen(&seen, v[q], rm[q], src + k * sk + j0, local);
        }
        for (int t = 0; t < T; t++) {
            __m512i r[Q4_KGROUP];
            for (int q = 0; q < Q4_KGROUP; q++) r[q] = _mm512_maskz_mov_epi8(rm[q], q4_vbmi_map(tab[t], v[q]));
            /* interleave 4 rows so each column's 4 k-values are one 32-bit lane, then
             * transpose the 128-bit lanes so that each zmm is one panel's 64-byte k-group */
            const __m512i ab_lo = _mm512_unpacklo_epi8(r[0], r[1]), ab_hi = _mm512_unpackhi_epi8(r[0], r[1]);
            const __m512i cd_lo = _mm512_unpacklo_epi8(r[2], r[3]), cd_hi = _mm512_unpackhi_epi8(r[2], r[3]);
            const __m512i q0 = _mm512_unpacklo_epi16(ab_lo, cd_lo), q1 = _mm512_unpackhi_epi16(ab_lo, cd_lo);
            const __m512i q2 = _mm512_unpacklo_epi16(ab_hi, cd_hi), q3 = _mm512_unpackhi_epi16(ab_hi, cd_hi);
            const __m512i t0 = _mm512_shuffle_i64x2(q0, q1, 0x44), t1 = _mm512_shuffle_i64x2(q2, q3, 0x44);
            const __m512i t2 = _mm512_shuffle_i64x2(q0, q1, 0xEE), t3 = _mm512_shuffle_i64x2(q2, q3, 0xEE);
            __m512i pan[4];
            pan[0] = _mm512_shuffle_i64x2(t0, t1, 0x88);
            pan[1] = _mm512_shuffle_i64x2(t0, t1, 0xDD);
            pan[2] = _mm512_shuffle_i64x2(t2, t3, 0x88);
            pan[3] = _mm512_shuffle_i64x2(t2, t3, 0xDD);
            for (int p = 0; p < npan; p++) {
                int8_t *dst = out + t * out_stride + (j0 / Q4_PANEL + p) * Kp * Q4_PANEL + g * Q4_GROUP_BYTES;
                _mm512_storeu_si512(dst, pan[p]);
                acc[t][p] = _mm512_add_epi32(acc[t][p], _mm512_madd_epi16(_mm512_maddubs_epi16(ones8, pan[p]), ones16));
            }
        }
    }
    for (int t = 0; t < T; t++)
        for (int p = 0; p < npan; p++) {
            int32_t col[Q4_PANEL];
            _mm512_storeu_si512(col, acc[t][p]);
            for (int j = 0; j < Q4_PANEL; j++) sums[t * Np + j0 + Q4_PANEL * p + j] = col[j];
        }
    q4_vbmi_seen_flush(&seen, local);
}
#endif

/* OR a thread's byte-presence flags into the shared ones */
static inline void q4_merge_seen(uint8_t *seen, const uint8_t *local) {
    if (seen == NULL) return;
#if Q4CORE_OPENMP
    #pragma omp critical(q4_seen)
#endif
    for (int v = 0; v < 256; v++) seen[v] |= local[v];
}

/* q4_pack_b's scalar loop for panel pj (any strides); padding stays zero */
static inline void q4_pack_b_panel(const uint8_t *src, int64_t sk, int64_t sj, int64_t K, int64_t N,
                                   int64_t pj, const int8_t *tables, int T, int8_t *out,
                                   int64_t out_stride, int64_t *sums, int64_t Kp, int64_t Np,
                                   uint8_t *local) {
    const int64_t j0 = pj * Q4_PANEL, jend = N - j0 < Q4_PANEL ? N - j0 : Q4_PANEL;
    int64_t acc[Q4_MAX_TABLES][Q4_PANEL];
    memset(acc, 0, sizeof(acc));
    for (int64_t k = 0; k < K; k++) {
        const uint8_t *row = src + k * sk + j0 * sj;
        const int64_t off = pj * Kp * Q4_PANEL + (k / Q4_KGROUP) * Q4_GROUP_BYTES + (k % Q4_KGROUP);
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

/* q4_pack_b's work item ``it``: four panels (64 columns) with the VBMI loop, else one panel */
static inline void q4_pack_b_item(const uint8_t *src, int64_t sk, int64_t sj, int64_t K, int64_t N,
                                  int64_t it, int vbmi, const int8_t *tables, int T, int8_t *out,
                                  int64_t out_stride, int64_t *sums, int64_t Kp, int64_t Np,
                                  uint8_t *local) {
#if Q4_HAVE_PACK_VBMI
    if (vbmi) {
        const int64_t npanels = Np / Q4_PANEL;
        const int npan = npanels - 4 * it < 4 ? (int)(npanels - 4 * it) : 4;
        q4_pack_b_block_vbmi(src, sk, K, N, 64 * it, npan, tables, T, out, out_stride,
                             sums, Kp, Np, local);
        return;
    }
#else
    (void)vbmi;
#endif
    q4_pack_b_panel(src, sk, sj, K, N, it, tables, T, out, out_stride, sums, Kp, Np, local);
}

static inline void q4_pack_b(const uint8_t *src, int64_t sk, int64_t sj, int64_t K, int64_t N,
                             const int8_t *tables, int T, int8_t *out, int64_t out_stride,
                             int64_t *sums, int64_t Kp, int64_t Np, uint8_t *seen, int nthreads) {
    const int64_t npanels = Np / Q4_PANEL;
    int vbmi = 0;          /* the VBMI loop packs 64 columns (4 panels) per work item */
#if Q4_HAVE_PACK_VBMI
    vbmi = sj == 1 && q4_pack_simd();
#endif
    const int64_t per_item = vbmi ? 4 : 1;
    const int64_t nitems = (npanels + per_item - 1) / per_item;
    /* clamped (gemm_threads.h), at least Q4_PACK_BYTES_PER_THREAD packed bytes per thread */
    nthreads = q4_threads_for_work(nthreads, nitems, Kp * Np * T, Q4_PACK_BYTES_PER_THREAD);
    if (nthreads <= 1) {
        /* one thread: no OpenMP region; the flags (only ever set to 1) go straight to ``seen`` */
        uint8_t local[256];
        uint8_t *flags = seen;
        if (flags == NULL) { memset(local, 0, sizeof(local)); flags = local; }
        for (int64_t it = 0; it < nitems; it++)
            q4_pack_b_item(src, sk, sj, K, N, it, vbmi, tables, T, out, out_stride, sums, Kp, Np, flags);
        return;
    }
#if Q4CORE_OPENMP
    #pragma omp parallel num_threads(nthreads)
#endif
    {
        uint8_t local[256];
        memset(local, 0, sizeof(local));
#if Q4CORE_OPENMP
        #pragma omp for schedule(static)
#endif
        for (int64_t it = 0; it < nitems; it++)
            q4_pack_b_item(src, sk, sj, K, N, it, vbmi, tables, T, out, out_stride, sums, Kp, Np, local);
        q4_merge_seen(seen, local);
    }
}

/* q4_prep_a's row i; ``flags`` (NULL: none) gets a 1 for every byte value the row holds */
static inline void q4_prep_a_row(const uint8_t *src, int64_t si, int64_t sk, int64_t i, int64_t K,
                                 const uint8_t *tables, int T, uint8_t *out, int64_t out_stride,
                                 int64_t lda, int simd, uint8_t *flags) {
    const uint8_t *row = src + i * si;
#if Q4_HAVE_PACK_VBMI
    if (sk == 1 && simd) {
        q4_prep_a_row_vbmi(row, K, tables, T, out + i * lda, out_stride, flags);
        return;
    }
#else
    (void)simd;
#endif
    if (flags != NULL)
        for (int64_t k = 0; k < K; k++) flags[row[k * sk]] = 1;
    for (int t = 0; t < T; t++) {
        const uint8_t *tab = tables + 256 * t;
        uint8_t *dst = out + t * out_stride + i * lda;
        if (sk == 1)
            for (int64_t k = 0; k < K; k++) dst[k] = tab[row[k]];
        else
            for (int64_t k = 0; k < K; k++) dst[k] = tab[row[k * sk]];
    }
}

static inline void q4_prep_a(const uint8_t *src, int64_t si, int64_t sk, int64_t M, int64_t K,
                             const uint8_t *tables, int T, uint8_t *out, int64_t out_stride,
                             int64_t lda, uint8_t *seen, int nthreads) {
    /* clamped (gemm_threads.h), at least Q4_PACK_BYTES_PER_THREAD prepared bytes per thread */
    nthreads = q4_threads_for_work(nthreads, M, M * K * T, Q4_PACK_BYTES_PER_THREAD);
    const int simd = q4_pack_simd();
    if (nthreads <= 1) {
        /* one thread: no OpenMP region; the flags (only ever set to 1) go straight to ``seen`` */
        for (int64_t i = 0; i < M; i++)
            q4_prep_a_row(src, si, sk, i, K, tables, T, out, out_stride, lda, simd, seen);
        return;
    }
#if Q4CORE_OPENMP
    #pragma omp parallel num_threads(nthreads)
#endif
    {
        uint8_t local[256];
        memset(local, 0, sizeof(local));
#if Q4CORE_OPENMP
        #pragma omp for schedule(static)
#endif
        for (int64_t i = 0; i < M; i++)
            q4_prep_a_row(src, si, sk, i, K, tables, T, out, out_stride, lda, simd, seen ? local : NULL);
        q4_merge_seen(seen, local);
    }
}

#endif /* Q4_GEMM_PACK_H */
