/* Loops of fused_kernels.h for one input type; included once per type with Q4_T (float type),
 * Q4_SUF (name suffix), Q4_I (same-width signed integer), Q4_ABS, Q4_FINITE_MAX, Q4_BOUNDS (plan
 * field) and Q4_MOMENTS_ATTRS (attributes of the moments) defined. */

#define Q4_CAT_(a, b) a##_##b
#define Q4_CAT(a, b) Q4_CAT_(a, b)
#define Q4_FN(name) Q4_CAT(name, Q4_SUF)

/* max and min of x[i0, i1) ignoring NaN (x > h is false for NaN) in Q4_LANES independent running
 * max / min (one dependency chain each, so they vectorize; max and min are exact in any order),
 * merged into *h_out / *l_out; NaN / Inf seen are ORed into *nan_out / *inf_out */
Q4_CLONES static void Q4_FN(q4_minmax_block)(const Q4_T *restrict x, ptrdiff_t i0, ptrdiff_t i1,
                                             Q4_T *h_out, Q4_T *l_out, int *nan_out, int *inf_out) {
    Q4_T hl[Q4_LANES], ll[Q4_LANES];
    Q4_I cl[Q4_LANES];
    for (int j = 0; j < Q4_LANES; j++) { hl[j] = -(Q4_T)INFINITY; ll[j] = (Q4_T)INFINITY; cl[j] = 0; }
    ptrdiff_t i = i0;
    for (; i + Q4_LANES <= i1; i += Q4_LANES)
        for (int j = 0; j < Q4_LANES; j++) {
            const Q4_T xi = x[i + j];
            hl[j] = xi > hl[j] ? xi : hl[j];
            ll[j] = xi < ll[j] ? xi : ll[j];
            cl[j] |= (Q4_I)(xi != xi) | ((Q4_I)(Q4_ABS(xi) == (Q4_T)INFINITY) << 1);
        }
    for (; i < i1; i++) {
        const Q4_T xi = x[i];
        hl[0] = xi > hl[0] ? xi : hl[0];
        ll[0] = xi < ll[0] ? xi : ll[0];
        cl[0] |= (Q4_I)(xi != xi) | ((Q4_I)(Q4_ABS(xi) == (Q4_T)INFINITY) << 1);
    }
    Q4_T h = *h_out, l = *l_out;
    Q4_I c = 0;
    for (int j = 0; j < Q4_LANES; j++) {
        h = hl[j] > h ? hl[j] : h;
        l = ll[j] < l ? ll[j] : l;
        c |= cl[j];
    }
    *h_out = h;
    *l_out = l;
    *nan_out |= (int)(c & 1);
    *inf_out |= (int)((c >> 1) & 1);
}

/* numpy's pairwise sums of x*x (sq) and |x| (ab) over x[0, n), n >= 1, both in float64; max |x|
 * and a non-finite flag on the way (order-free) */
Q4_MOMENTS_ATTRS
static void Q4_FN(q4_pairwise_moments)(const Q4_T *restrict x, ptrdiff_t n, double *sq,
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
#if Q4_MOMENTS_VECTOR
    } else if (n <= Q4_PW_BLOCK) {
        /* numpy's 8 accumulators r[0..7] as the 8 lanes of one vector: lane j adds x[j], x[j + 8],
         * ... in numpy's order (lane-wise IEEE adds, the very same roundings), max |x| and the
         * non-finite test in the same pass */
        Q4_FN(q4_v8) xv;
        memcpy(&xv, x, sizeof xv);
        q4_v8d d = __builtin_convertvector(xv, q4_v8d);
        q4_v8d vs = d * d;
        q4_v8d va = (q4_v8d)((q4_v8u64)d & Q4_ABS_MASK64);
        const Q4_FN(q4_v8i) zero = {0};
        const Q4_FN(q4_v8i) absm = zero + Q4_ABS_BITS, infb = zero + Q4_INF_BITS;
        /* |x| as integer bits orders as |x| (sign cleared); above Inf's bits: NaN, not a max */
        Q4_FN(q4_v8i) ai = (Q4_FN(q4_v8i))xv & absm;
        Q4_FN(q4_v8i) bl = ai >= infb;                         /* NaN or Inf */
        Q4_FN(q4_v8i) ml = ai & ~(ai > infb);                  /* running max |x| (bits), NaN as +0 */
        ptrdiff_t i = Q4_PW_UNROLL;
        for (; i < n - (n % Q4_PW_UNROLL); i += Q4_PW_UNROLL) {
            memcpy(&xv, x + i, sizeof xv);
            d = __builtin_convertvector(xv, q4_v8d);
            vs += d * d;
            va += (q4_v8d)((q4_v8u64)d & Q4_ABS_MASK64);
            ai = (Q4_FN(q4_v8i))xv & absm;
            bl |= ai >= infb;
            const Q4_FN(q4_v8i) gt = (ai > ml) & ~(ai > infb);
            ml = (ai & gt) | (ml & ~gt);
        }
        double s = ((vs[0] + vs[1]) + (vs[2] + vs[3])) + ((vs[4] + vs[5]) + (vs[6] + vs[7]));
        double a = ((va[0] + va[1]) + (va[2] + va[3])) + ((va[4] + va[5]) + (va[6] + va[7]));
        for (; i < n; i++) {
            const double v = (double)x[i];
            const Q4_T ax = Q4_ABS(x[i]);
            s += v * v;
            a += __builtin_fabs(v);
            m = ax > m ? ax : m;
            b |= !(ax <= Q4_FINITE_MAX);
        }
        for (int j = 0; j < Q4_PW_UNROLL; j++) {
            Q4_T mj;
            const Q4_I bits = ml[j];
            memcpy(&mj, &bits, sizeof mj);
            m = mj > m ? mj : m;
            b |= bl[j] != 0;
        }
        *sq = s;
        *ab = a;
#else
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
        Q4_T ml[Q4_PW_UNROLL];          /* lane-wise running max: independent chains */
        int bl[Q4_PW_UNROLL];
        for (int j = 0; j < Q4_PW_UNROLL; j++) { ml[j] = m; bl[j] = 0; }
        ptrdiff_t k = 0;
        for (; k + Q4_PW_UNROLL <= n; k += Q4_PW_UNROLL)
            for (int j = 0; j < Q4_PW_UNROLL; j++) {
                const Q4_T ax = Q4_ABS(x[k + j]);
                ml[j] = ax > ml[j] ? ax : ml[j];
                bl[j] |= !(ax <= Q4_FINITE_MAX);
            }
        for (; k < n; k++) {
            const Q4_T ax = Q4_ABS(x[k]);
            ml[0] = ax > ml[0] ? ax : ml[0];
            bl[0] |= !(ax <= Q4_FINITE_MAX);
        }
        for (int j = 0; j < Q4_PW_UNROLL; j++) {
            m = ml[j] > m ? ml[j] : m;
            b |= bl[j];
        }
        *sq = s;
        *ab = a;
#endif
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

/* one chunk [i0, i1) of q4_encode_pair in cache blocks: each block of x is encoded under p0 and p1
 * (each if not NULL) by the vectorized loops of quant_kernels.h and scanned for max / min while it
 * is in L1, so x is read from memory once (one loop doing all three did not vectorize: 4x slower) */
static void Q4_FN(q4_encode_chunk)(const q4_plan *p0, const q4_plan *p1, const Q4_T *restrict x,
                                   uint8_t *restrict out0, uint8_t *restrict out1, ptrdiff_t i0,
                                   ptrdiff_t i1, Q4_T *h_out, Q4_T *l_out, int *nan_out, int *inf_out) {
    for (ptrdiff_t b = i0; b < i1; b += Q4_L1_BLOCK) {
        const ptrdiff_t e = i1 - b < Q4_L1_BLOCK ? i1 : b + Q4_L1_BLOCK;
        if (p0) q4_run(p0, Q4_OP_ENCODE, x + b, out0 + b, e - b);
        if (p1) q4_run(p1, Q4_OP_ENCODE, x + b, out1 + b, e - b);
        Q4_FN(q4_minmax_block)(x, b, e, h_out, l_out, nan_out, inf_out);
    }
}

/* out0 = codes of x under p0 (if p0), out1 under p1 (if p1), max / min of x ignoring NaN and flags
 * of NaN / Inf seen - one read of x from memory, chunks over threads */
static unsigned Q4_FN(q4_encode_pair)(const q4_plan *p0, const q4_plan *p1, const Q4_T *restrict x,
                                      uint8_t *restrict out0, uint8_t *restrict out1, ptrdiff_t n,
                                      double *hi_out, double *lo_out, int threads) {
    const ptrdiff_t nchunks = (n + Q4_FUSED_CHUNK - 1) / Q4_FUSED_CHUNK;
    Q4_T hi = -(Q4_T)INFINITY, lo = (Q4_T)INFINITY;
    int nan = 0, inf = 0;
    threads = q4_threads_for_elems(threads, n);
    if (threads <= 1) {     /* no parallel region at all: libgomp costs more than a small call */
        for (ptrdiff_t c = 0; c < nchunks; c++) {
            const ptrdiff_t i0 = c * Q4_FUSED_CHUNK, i1 = n - i0 < Q4_FUSED_CHUNK ? n : i0 + Q4_FUSED_CHUNK;
            Q4_FN(q4_encode_chunk)(p0, p1, x, out0, out1, i0, i1, &hi, &lo, &nan, &inf);
        }
        *hi_out = (double)hi;
        *lo_out = (double)lo;
        return (nan ? Q4_FLAG_NAN : 0u) | (inf ? Q4_FLAG_INF : 0u);
    }
#if Q4CORE_OPENMP
    #pragma omp parallel for num_threads(threads) schedule(static) \
        reduction(max:hi) reduction(min:lo) reduction(|:nan, inf)
#endif
    for (ptrdiff_t c = 0; c < nchunks; c++) {
        const ptrdiff_t i0 = c * Q4_FUSED_CHUNK, i1 = n - i0 < Q4_FUSED_CHUNK ? n : i0 + Q4_FUSED_CHUNK;
        Q4_FN(q4_encode_chunk)(p0, p1, x, out0, out1, i0, i1, &hi, &lo, &nan, &inf);
    }
    *hi_out = (double)hi;
    *lo_out = (double)lo;
    return (nan ? Q4_FLAG_NAN : 0u) | (inf ? Q4_FLAG_INF : 0u);
}

/* max and min over x[0, n) ignoring NaN, flags of NaN / Inf seen: the encoder's scan alone */
static unsigned Q4_FN(q4_minmax)(const Q4_T *restrict x, ptrdiff_t n, double *hi_out, double *lo_out,
                                 int threads) {
    return Q4_FN(q4_encode_pair)(NULL, NULL, x, NULL, NULL, n, hi_out, lo_out, threads);
}

#undef Q4_FN
#undef Q4_CAT
#undef Q4_CAT_
#undef Q4_T
#undef Q4_SUF
#undef Q4_ABS
#undef Q4_FINITE_MAX
#undef Q4_BOUNDS
#undef Q4_MOMENTS_ATTRS
#undef Q4_I
#undef Q4_ABS_BITS
#undef Q4_MOMENTS_VECTOR
#undef Q4_INF_BITS
