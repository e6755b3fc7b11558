/* Loops of fused_kernels.h for one input type; included once per type with Q4_T (float type),
 * Q4_SUF (name suffix), Q4_ABS, Q4_FINITE_MAX and Q4_BOUNDS (plan field) defined.  The element code functions
 * q4_level_of_* / q4_signmag_of_* come from quant_kernels_t.h. */

#define Q4_CAT_(a, b) a##_##b
#define Q4_CAT(a, b) Q4_CAT_(a, b)
#define Q4_FN(name) Q4_CAT(name, Q4_SUF)

/* x*x and |x| summed in float64 must round exactly as numpy's separate multiply and add: no FMA */
#if defined(__GNUC__) && !defined(__clang__)
#define Q4_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define Q4_NO_CONTRACT
#endif

/* max and min over x[0, n) ignoring NaN (x > hi is false for NaN), flags of NaN / Inf seen */
static unsigned Q4_FN(q4_minmax)(const Q4_T *restrict x, ptrdiff_t n, double *hi_out, double *lo_out,
                                 int threads) {
    const ptrdiff_t nchunks = (n + Q4_FUSED_CHUNK - 1) / Q4_FUSED_CHUNK;
    Q4_T hi = -(Q4_T)INFINITY, lo = (Q4_T)INFINITY;
    int nan = 0, inf = 0;
    threads = q4_threads_for_elems(threads, n);
    (void)threads;
#if Q4CORE_OPENMP
    #pragma omp parallel for num_threads(threads) schedule(static) if(threads > 1) \
        reduction(max:hi) reduction(min:lo) reduction(|:nan, inf)
#endif
    for (ptrdiff_t c = 0; c < nchunks; c++) {
        const ptrdiff_t i0 = c * Q4_FUSED_CHUNK, i1 = n - i0 < Q4_FUSED_CHUNK ? n : i0 + Q4_FUSED_CHUNK;
        Q4_T h = -(Q4_T)INFINITY, l = (Q4_T)INFINITY;
        int cn = 0, ci = 0;
        for (ptrdiff_t i = i0; i < i1; i++) {
            const Q4_T xi = x[i];
            h = xi > h ? xi : h;
            l = xi < l ? xi : l;
            cn |= xi != xi;
            ci |= Q4_ABS(xi) == (Q4_T)INFINITY;
        }
        hi = h > hi ? h : hi;
        lo = l < lo ? l : lo;
        nan |= cn;
        inf |= ci;
    }
    *hi_out = (double)hi;
    *lo_out = (double)lo;
    return (nan ? Q4_FLAG_NAN : 0u) | (inf ? Q4_FLAG_INF : 0u);
}

/* numpy's pairwise sums of x*x (sq) and |x| (ab) over x[0, n), n >= 1, both in float64; max |x|
 * and a non-finite flag on the way (order-free) */
Q4_NO_CONTRACT static void Q4_FN(q4_pairwise_moments)(const Q4_T *restrict x, ptrdiff_t n, double *sq,
                                                       double *ab, Q4_T *maxabs, int *bad) {
    Q4_T m = *maxabs;
    int b = 0;
    if (n < Q4_PW_UNROLL) {
        double s = 0.0, a = 0.0;
        for (ptrdiff_t i = 0; i < n; i++) {
            const double v = (double)x[i], av = __builtin_fabs(v);
            const Q4_T ax = Q4_ABS(x[i]);
            s += v * v;
            a += av;
            m = ax > m ? ax : m;
            b |= !(ax <= Q4_FINITE_MAX);
        }
        *sq = s;
        *ab = a;
    } else if (n <= Q4_PW_BLOCK) {
        double rs[Q4_PW_UNROLL], ra[Q4_PW_UNROLL];
        for (int j = 0; j < Q4_PW_UNROLL; j++) {
            const double v = (double)x[j];
            rs[j] = v * v;
            ra[j] = __builtin_fabs(v);
        }
        ptrdiff_t i = Q4_PW_UNROLL;
        for (; i < n - (n % Q4_PW_UNROLL); i += Q4_PW_UNROLL)
            for (int j = 0; j < Q4_PW_UNROLL; j++) {
                const double v = (double)x[i + j];
                rs[j] += v * v;
                ra[j] += __builtin_fabs(v);
            }
        double s = ((rs[0] + rs[1]) + (rs[2] + rs[3])) + ((rs[4] + rs[5]) + (rs[6] + rs[7]));
        double a = ((ra[0] + ra[1]) + (ra[2] + ra[3])) + ((ra[4] + ra[5]) + (ra[6] + ra[7]));
        for (; i < n; i++) {
            const double v = (double)x[i];
            s += v * v;
            a += __builtin_fabs(v);
        }
        for (ptrdiff_t k = 0; k < n; k++) {
            const Q4_T ax = Q4_ABS(x[k]);
            m = ax > m ? ax : m;
            b |= !(ax <= Q4_FINITE_MAX);
        }
        *sq = s;
        *ab = a;
    } else {
        ptrdiff_t n2 = n / 2;
        n2 -= n2 % Q4_PW_UNROLL;
        double s1, a1, s2, a2;
        int b1 = 0, b2 = 0;
        Q4_FN(q4_pairwise_moments)(x, n2, &s1, &a1, &m, &b1);
        Q4_FN(q4_pairwise_moments)(x + n2, n - n2, &s2, &a2, &m, &b2);
        *sq = s1 + s2;
        *ab = a1 + a2;
        b = b1 | b2;
    }
    *maxabs = m;
    *bad |= b;
}

/* SAWB's statistics of x[0, n): sum(x*x), sum(|x|) as numpy sums them, max |x|; flags NaN / Inf
 * (both as Q4_FLAG_INF | Q4_FLAG_NAN: the caller refuses either) */
static unsigned Q4_FN(q4_moments)(const Q4_T *restrict x, ptrdiff_t n, double *sq, double *ab,
                                  double *maxabs) {
    Q4_T m = 0;
    int bad = 0;
    *sq = *ab = 0.0;
    if (n > 0) Q4_FN(q4_pairwise_moments)(x, n, sq, ab, &m, &bad);
    *sq = 0.0 + *sq;        /* numpy adds the sum to its initial 0.0 */
    *ab = 0.0 + *ab;
    *maxabs = (double)m;
    return bad ? (Q4_FLAG_NAN | Q4_FLAG_INF) : 0u;
}

/* code of one element under a plan (level or sign-magnitude) */
static inline uint8_t Q4_FN(q4_code_of)(const q4_plan *p, const Q4_T *b, Q4_T xi) {
    if (p->kind == Q4_KIND_LEVEL) return (uint8_t)Q4_FN(q4_level_of)(xi, b, p->offset);
    return (uint8_t)Q4_FN(q4_signmag_of)(xi, b, p->sign_shift);
}

/* out0 = codes of x under p0, out1 under p1 (if p1), max / min of x - one read of x */
static unsigned Q4_FN(q4_encode_pair)(const q4_plan *p0, const q4_plan *p1, const Q4_T *restrict x,
                                      uint8_t *restrict out0, uint8_t *restrict out1, ptrdiff_t n,
                                      double *hi_out, double *lo_out, int threads) {
    const ptrdiff_t nchunks = (n + Q4_FUSED_CHUNK - 1) / Q4_FUSED_CHUNK;
    Q4_T hi = -(Q4_T)INFINITY, lo = (Q4_T)INFINITY;
    int nan = 0, inf = 0;
    threads = q4_threads_for_elems(threads, n);
    (void)threads;
#if Q4CORE_OPENMP
    #pragma omp parallel for num_threads(threads) schedule(static) if(threads > 1) \
        reduction(max:hi) reduction(min:lo) reduction(|:nan, inf)
#endif
    for (ptrdiff_t c = 0; c < nchunks; c++) {
        const ptrdiff_t i0 = c * Q4_FUSED_CHUNK, i1 = n - i0 < Q4_FUSED_CHUNK ? n : i0 + Q4_FUSED_CHUNK;
        Q4_T b0[Q4_MAX_BOUNDS], b1[Q4_MAX_BOUNDS];
        memcpy(b0, Q4_BOUNDS(p0), sizeof b0);
        memcpy(b1, Q4_BOUNDS(p1 ? p1 : p0), sizeof b1);   /* b0 again: unused without p1 */
        Q4_T h = -(Q4_T)INFINITY, l = (Q4_T)INFINITY;
        int cn = 0, ci = 0;
        for (ptrdiff_t i = i0; i < i1; i++) {
            const Q4_T xi = x[i];
            out0[i] = Q4_FN(q4_code_of)(p0, b0, xi);
            if (p1) out1[i] = Q4_FN(q4_code_of)(p1, b1, xi);
            h = xi > h ? xi : h;
            l = xi < l ? xi : l;
            cn |= xi != xi;
            ci |= Q4_ABS(xi) == (Q4_T)INFINITY;
        }
        hi = h > hi ? h : hi;
        lo = l < lo ? l : lo;
        nan |= cn;
        inf |= ci;
    }
    *hi_out = (double)hi;
    *lo_out = (double)lo;
    return (nan ? Q4_FLAG_NAN : 0u) | (inf ? Q4_FLAG_INF : 0u);
}

#undef Q4_NO_CONTRACT
#undef Q4_FN
#undef Q4_CAT
#undef Q4_CAT_
#undef Q4_T
#undef Q4_SUF
#undef Q4_ABS
#undef Q4_FINITE_MAX
#undef Q4_BOUNDS
