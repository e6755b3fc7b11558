/* q4core fast 4-bit quantizers: INT2..INT4 / UINT2..UINT4 and sign + exponent (radix) formats.
 *
 * Exactness by construction.  The numpy reference (q4core/formats.py) computes, in double,
 *     IntFormat:  q = clip(rint(double(x) / scale))            (levels qmin..qmax)
 *     RadixFP:    e = #{k : |double(x)| / scale >= thr[k]}     (exponent field 0..nb)
 * Both are monotone functions of x.  So for every level boundary there is a smallest input
 * value b (in the input's own float type) from which on the predicate holds, and
 *     level = qmin + #{j : x >= b_j},   field = #{k : |x| >= b_k}.
 * The b's are found once per call by a binary search over the ordered float bit patterns,
 * evaluating the very same double arithmetic as the reference (q4_plan_*).  The element loops
 * then only compare - no division, no rounding - and so cannot disagree with the reference;
 * they are branch-free so the compiler vectorizes them (compiled for several ISAs with
 * target_clones where available, the CPU picks at load time).
 *
 * Codes: IntFormat -> q as a byte (int8 two's complement for signed); radix -> sign << shift | e.
 * Packing: element 2i in the low nibble of byte i, element 2i+1 in the high nibble; an odd
 * count leaves the last high nibble zero (as q4core.formats.pack_nibbles).
 * NaN compares false everywhere; the kernels report it (and Inf) in a flag word and write the
 * canonical quiet NaN with the input's sign when quantizing, as the reference does.
 */
#ifndef Q4_QUANT_KERNELS_H
#define Q4_QUANT_KERNELS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifndef Q4CORE_OPENMP
#define Q4CORE_OPENMP 0
#endif
#if Q4CORE_OPENMP
#include <omp.h>
static int q4_max_threads(void) { return omp_get_max_threads(); }
static int q4_num_procs(void) { return omp_get_num_procs(); }
#else
static int q4_max_threads(void) { return 1; }
static int q4_num_procs(void) { return 1; }
#endif

/* The thread count a parallel region here really asks for: at least 1, at most the processors
 * OpenMP may use.  More never helps (every element's result is independent of the split) and a
 * huge request - threads=100000 or OMP_NUM_THREADS=100000 - makes libgomp fail to create its
 * threads (abort) or crash, so every entry point clamps before its region starts. */
static int q4_clamp_threads(int threads) {
    int procs = q4_num_procs();
    if (procs < 1) procs = 1;
    if (threads < 1) return 1;
    return threads < procs ? threads : procs;
}

/* Elements per thread at least (quantize / encode / unpack): a thread costs several microseconds
 * to start and join, more than it saves on a small tensor.  Chooses the thread count only. */
#define Q4_QUANT_ELEMS_PER_THREAD ((ptrdiff_t)1 << 18)

/* q4_clamp_threads, then at most one thread per Q4_QUANT_ELEMS_PER_THREAD of n elements */
static int q4_threads_for_elems(int threads, ptrdiff_t n) {
    const ptrdiff_t by_work = n / Q4_QUANT_ELEMS_PER_THREAD;
    /* one thread whatever the processors: skip omp_get_num_procs (an affinity syscall per call) */
    if (threads <= 1 || by_work <= 1) return 1;
    threads = q4_clamp_threads(threads);
    if (by_work < threads) threads = (int)by_work;
    return threads;
}

/* One clone per ISA level, chosen by the dynamic loader (ifunc) from what the CPU reports.
 * Never -march=native: the default clone is plain x86-64 (or whatever the compiler targets). */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) \
    && defined(__linux__) && !defined(Q4CORE_NO_CLONES)
#define Q4_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#define Q4_CLONES_NAME "default, x86-64-v3 (AVX2), x86-64-v4 (AVX-512)"
#else
#define Q4_CLONES
#define Q4_CLONES_NAME "default only"
#endif

/* elements per block of the encoders' full-width count buffer (on the stack, in L1) */
#define Q4_ENCODE_BLOCK 512
#define Q4_MAX_BOUNDS 15          /* 4-bit codes: at most 15 level boundaries */
#define Q4_RADIX_BOUNDS 7         /* radix formats: at most 3 exponent bits */
#define Q4_FLAG_NAN 1u
#define Q4_FLAG_INF 2u

enum { Q4_OP_QUANTIZE = 0, Q4_OP_ENCODE = 1, Q4_OP_ENCODE_PACK = 2 };
enum { Q4_KIND_LEVEL = 0, Q4_KIND_SIGNMAG = 1 };

/* Everything a kernel needs, for one format, scale and input dtype.  Unused bounds are NaN
 * (x >= NaN is false), so the loops run a fixed number of comparisons. */
typedef struct {
    int kind;                          /* Q4_KIND_LEVEL or Q4_KIND_SIGNMAG */
    int is_f64;                        /* input dtype: 0 float32, 1 float64 */
    int nb;                            /* number of real boundaries */
    int offset;                        /* LEVEL: qmin (code = qmin + count) */
    int sign_shift;                    /* SIGNMAG: code = sign << sign_shift | count */
    double scale;                      /* LEVEL: value of level q is (T)((double)q * scale) */
    float b32[Q4_MAX_BOUNDS];
    double b64[Q4_MAX_BOUNDS];
    float v32[Q4_MAX_BOUNDS + 1];      /* SIGNMAG: magnitude of count c at this scale */
    double v64[Q4_MAX_BOUNDS + 1];
} q4_plan;

/* ---- ordered keys: float bit patterns as integers that sort like the values (-0 == +0) */
static int64_t q4_key_f32(float x) {
    uint32_t u; memcpy(&u, &x, 4);
    return (u >> 31) ? -(int64_t)(u & 0x7fffffffu) : (int64_t)u;
}
static float q4_unkey_f32(int64_t k) {
    uint32_t u = k < 0 ? (0x80000000u | (uint32_t)(-k)) : (uint32_t)k;
    float x; memcpy(&x, &u, 4); return x;
}
static int64_t q4_key_f64(double x) {
    uint64_t u; memcpy(&u, &x, 8);
    return (u >> 63) ? -(int64_t)(u & 0x7fffffffffffffffull) : (int64_t)u;
}
static double q4_unkey_f64(int64_t k) {
    uint64_t u = k < 0 ? (0x8000000000000000ull | (uint64_t)(-k)) : (uint64_t)k;
    double x; memcpy(&x, &u, 8); return x;
}

/* The reference predicates, evaluated in double exactly as formats.py does.  volatile keeps
 * every intermediate a rounded double (matters only on x87; free elsewhere). */
typedef struct { int kind; double scale; double target; } q4_pred;

static int q4_pred_holds(const q4_pred *p, double x) {
    if (p->kind == Q4_KIND_LEVEL) {
        volatile double y = x / p->scale;
        volatile double q = rint(y);                 /* np.rint: half to even */
        return q >= p->target;
    } else {
        volatile double a = fabs(x) / p->scale;
        return a >= p->target;                       /* searchsorted(thr, a, side='right') */
    }
}

/* Smallest value (as key) in (lo, hi] whose predicate holds, given it fails at lo and holds
 * at hi; plain bisection over keys, at most 64 steps. */
#define Q4_DEFINE_SEARCH(SUF, T)                                                         \
static T q4_min_satisfying_##SUF(const q4_pred *p, int64_t lo, int64_t hi) {             \
    if (q4_pred_holds(p, (double)q4_unkey_##SUF(lo))) return q4_unkey_##SUF(lo);        \
    if (!q4_pred_holds(p, (double)q4_unkey_##SUF(hi))) return (T)NAN; /* never holds */  \
    /* the key span of a double line exceeds INT64_MAX: measure it unsigned */            \
    while ((uint64_t)hi - (uint64_t)lo > 1) {                                             \
        int64_t mid = lo + (int64_t)(((uint64_t)hi - (uint64_t)lo) / 2);                  \
        if (q4_pred_holds(p, (double)q4_unkey_##SUF(mid))) hi = mid; else lo = mid;       \
    }                                                                                     \
    return q4_unkey_##SUF(hi);                                                            \
}
Q4_DEFINE_SEARCH(f32, float)
Q4_DEFINE_SEARCH(f64, double)
#undef Q4_DEFINE_SEARCH

static void q4_plan_clear(q4_plan *p, int kind, int is_f64) {
    memset(p, 0, sizeof *p);
    p->kind = kind;
    p->is_f64 = is_f64 ? 1 : 0;
    for (int j = 0; j < Q4_MAX_BOUNDS; j++) { p->b32[j] = NAN; p->b64[j] = NAN; }
}

/* Narrow the bracket [*lo, *hi] of a bisection around ``guess`` (a key near the boundary): gallop
 * from it (1, 2, 4, ... keys) until the predicate changes.  The predicate is monotone, so the
 * bisection on the narrowed bracket finds the same smallest satisfying key as on the whole line;
 * a good guess saves most of its ~32 (float32) or ~64 (float64) steps, which per call is most of
 * the cost of a small tensor. */
static void q4_narrow(const q4_pred *p, int64_t guess, int64_t *lo, int64_t *hi, int is_f64) {
    if (guess <= *lo || guess >= *hi) return;
#define Q4_AT(k) q4_pred_holds(p, is_f64 ? q4_unkey_f64(k) : (double)q4_unkey_f32(k))
    uint64_t step = 1;
    if (Q4_AT(guess)) {
        int64_t top = guess;                              /* holds here: the boundary is at or below */
        while ((uint64_t)top - (uint64_t)*lo > step && Q4_AT(top - (int64_t)step)) {
            top -= (int64_t)step;
            step *= 2;
        }
        if ((uint64_t)top - (uint64_t)*lo > step) *lo = top - (int64_t)step;   /* fails there */
        *hi = top;
    } else {
        int64_t bottom = guess;                           /* fails here: the boundary is above */
        while ((uint64_t)*hi - (uint64_t)bottom > step && !Q4_AT(bottom + (int64_t)step)) {
            bottom += (int64_t)step;
            step *= 2;
        }
        if ((uint64_t)*hi - (uint64_t)bottom > step) *hi = bottom + (int64_t)step;  /* holds there */
        *lo = bottom;
    }
#undef Q4_AT
}

/* ``guess``: a value near the boundary (NaN: none) */
static void q4_plan_bound(q4_plan *p, int j, const q4_pred *pred, int whole_line, double guess) {
    /* LEVEL searches the whole line (-inf, +inf]; SIGNMAG only magnitudes [+0, +inf] */
    if (p->is_f64) {
        int64_t lo = whole_line ? q4_key_f64(-INFINITY) : 0, hi = q4_key_f64(INFINITY);
        if (guess == guess) q4_narrow(pred, q4_key_f64(guess), &lo, &hi, 1);
        p->b64[j] = q4_min_satisfying_f64(pred, lo, hi);
    } else {
        int64_t lo = whole_line ? q4_key_f32(-INFINITY) : 0, hi = q4_key_f32(INFINITY);
        if (guess == guess) q4_narrow(pred, q4_key_f32((float)guess), &lo, &hi, 0);
        p->b32[j] = q4_min_satisfying_f32(pred, lo, hi);
    }
}

/* IntFormat(bits <= 4): levels qmin..qmax, value of level q is (T)(q * scale). Returns 0, or -1
 * for arguments outside the kernels' range. */
static int q4_plan_level(q4_plan *p, int is_f64, double scale, int qmin, int qmax) {
    if (!(scale > 0.0) || qmax <= qmin || qmax - qmin > Q4_MAX_BOUNDS || qmin < -8 || qmax > 15)
        return -1;
    q4_plan_clear(p, Q4_KIND_LEVEL, is_f64);
    p->nb = qmax - qmin;
    p->offset = qmin;
    p->scale = scale;
    for (int j = 0; j < p->nb; j++) {
        q4_pred pred = { Q4_KIND_LEVEL, scale, (double)(qmin + 1 + j) };
        q4_plan_bound(p, j, &pred, 1, (qmin + 0.5 + j) * scale);   /* rint(x / scale) steps there */
    }
    return 0;
}

/* RadixFP(exp_bits <= 3): nb ascending thresholds, grid[0] = 0 < grid[1] < ... < grid[nb]. */
static int q4_plan_signmag(q4_plan *p, int is_f64, double scale, const double *thr,
                           const double *grid, int nb, int sign_shift) {
    if (!(scale > 0.0) || nb < 1 || nb > Q4_RADIX_BOUNDS || sign_shift < 1 || sign_shift > 3)
        return -1;
    q4_plan_clear(p, Q4_KIND_SIGNMAG, is_f64);
    p->nb = nb;
    p->sign_shift = sign_shift;
    for (int c = 0; c <= nb; c++) {
        double v = grid[c] * scale;
        p->v64[c] = v; p->v32[c] = (float)v;
    }
    for (int k = 0; k < nb; k++) {
        q4_pred pred = { Q4_KIND_SIGNMAG, scale, thr[k] };
        q4_plan_bound(p, k, &pred, 0, thr[k] * scale);             /* |x| / scale >= thr[k] there */
    }
    return 0;
}

/* float32 level encode by binary search over a 16-lane bound table (GCC's __builtin_shuffle with
 * a variable index: one permute per step on AVX-512) */
#if defined(__GNUC__) && !defined(__clang__)
typedef float q4_v16f __attribute__((vector_size(64)));
typedef int32_t q4_v16i __attribute__((vector_size(64)));
typedef uint8_t q4_v16u8 __attribute__((vector_size(16)));
#define Q4_LEVEL_SEARCH_F32 1
#else
#define Q4_LEVEL_SEARCH_F32 0
#endif

/* ---- the element loops, once per input type */
#define Q4_T float
#define Q4_LEVEL_SEARCH Q4_LEVEL_SEARCH_F32
#define Q4_SUF f32
#define Q4_U uint32_t
#define Q4_I int32_t
#define Q4_BOUNDS(p) ((p)->b32)
#define Q4_VALUES(p) ((p)->v32)
#define Q4_ABS(x) __builtin_fabsf(x)
#define Q4_COPYSIGN(x, y) __builtin_copysignf((x), (y))
#define Q4_QNAN_BITS 0x7fc00000u
#include "quant_kernels_t.h"

#define Q4_T double
#define Q4_LEVEL_SEARCH 0
#define Q4_SUF f64
#define Q4_U uint64_t
#define Q4_I int64_t
#define Q4_BOUNDS(p) ((p)->b64)
#define Q4_VALUES(p) ((p)->v64)
#define Q4_ABS(x) __builtin_fabs(x)
#define Q4_COPYSIGN(x, y) __builtin_copysign((x), (y))
#define Q4_QNAN_BITS 0x7ff8000000000000ull
#include "quant_kernels_t.h"

/* Run `op` over n contiguous elements at x; out receives n values (QUANTIZE, input dtype),
 * n code bytes (ENCODE) or (n + 1) / 2 packed bytes (ENCODE_PACK).  Returns Q4_FLAG_* bits. */
static unsigned q4_run(const q4_plan *p, int op, const void *x, void *out, ptrdiff_t n) {
    if (n <= 0) return 0;
    if (p->is_f64) {
        if (p->kind == Q4_KIND_LEVEL) {
            if (op == Q4_OP_QUANTIZE) return q4_level_quantize_f64(x, out, n, p);
            if (op == Q4_OP_ENCODE) return q4_level_encode_f64(x, out, n, p);
            return q4_level_pack_f64(x, out, n, p);
        }
        if (op == Q4_OP_QUANTIZE) return q4_signmag_quantize_f64(x, out, n, p);
        if (op == Q4_OP_ENCODE) return q4_signmag_encode_f64(x, out, n, p);
        return q4_signmag_pack_f64(x, out, n, p);
    }
    if (p->kind == Q4_KIND_LEVEL) {
        if (op == Q4_OP_QUANTIZE) return q4_level_quantize_f32(x, out, n, p);
        if (op == Q4_OP_ENCODE) return q4_level_encode_f32(x, out, n, p);
        return q4_level_pack_f32(x, out, n, p);
    }
    if (op == Q4_OP_QUANTIZE) return q4_signmag_quantize_f32(x, out, n, p);
    if (op == Q4_OP_ENCODE) return q4_signmag_encode_f32(x, out, n, p);
    return q4_signmag_pack_f32(x, out, n, p);
}

/* Unpack n 4-bit codes from (n + 1) / 2 bytes; signed sign-extends (-8..7 as int8 bytes). */
Q4_CLONES static void q4_unpack(const uint8_t *restrict in, uint8_t *restrict out, ptrdiff_t n,
                                int is_signed) {
    const ptrdiff_t pairs = n / 2;
    const uint8_t flip = is_signed ? 8 : 0;     /* (v ^ 8) - 8 sign-extends a nibble */
    for (ptrdiff_t i = 0; i < pairs; i++) {
        uint8_t b = in[i];
        out[2 * i] = (uint8_t)(((b & 15) ^ flip) - flip);
        out[2 * i + 1] = (uint8_t)(((b >> 4) ^ flip) - flip);
    }
    if (n & 1) out[n - 1] = (uint8_t)(((in[pairs] & 15) ^ flip) - flip);
}

#endif /* Q4_QUANT_KERNELS_H */
