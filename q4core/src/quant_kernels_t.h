/* Element loops of quant_kernels.h for one input type; included once per type with
 * Q4_T (float type), Q4_SUF (name suffix), Q4_U (same-width unsigned), Q4_I (same-width
 * signed, so masks and counters share the vector lane width), Q4_BOUNDS / Q4_VALUES (plan
 * fields), Q4_ABS and Q4_COPYSIGN defined.  Every loop body is branch-free straight-line code
 * over a fixed number of comparisons so that it vectorizes. */

#define Q4_CAT_(a, b) a##_##b
#define Q4_CAT(a, b) Q4_CAT_(a, b)
#define Q4_FN(name) Q4_CAT(name, Q4_SUF)
#define Q4_SIGN_SHIFT_BITS (8 * (int)sizeof(Q4_T) - 1)

/* level count of x: qmin + #{j : x >= b_j}  (NaN bounds never count) */
static inline Q4_I Q4_FN(q4_level_of)(Q4_T xi, const Q4_T *b, Q4_I offset) {
    Q4_I c = offset;
#pragma GCC unroll 16
    for (int j = 0; j < Q4_MAX_BOUNDS; j++) c += (Q4_I)(xi >= b[j]);
    return c;
}

/* sign-magnitude code of x: signbit << shift | #{k : |x| >= b_k} */
static inline Q4_I Q4_FN(q4_signmag_of)(Q4_T xi, const Q4_T *b, int shift) {
    Q4_T a = Q4_ABS(xi);
    Q4_U u;
    memcpy(&u, &xi, sizeof u);
    Q4_I c = (Q4_I)(u >> Q4_SIGN_SHIFT_BITS) << shift;
#pragma GCC unroll 8
    for (int k = 0; k < Q4_RADIX_BOUNDS; k++) c += (Q4_I)(a >= b[k]);
    return c;
}

/* r, or the canonical quiet NaN with x's sign when x is NaN - in integer bit operations,
 * because a floating select here stops GCC's if-conversion (and so vectorization) */
static inline Q4_T Q4_FN(q4_nan_fix)(Q4_T r, Q4_T xi) {
    Q4_U rb, xb;
    memcpy(&rb, &r, sizeof rb);
    memcpy(&xb, &xi, sizeof xb);
    const Q4_U sign = (Q4_U)1 << Q4_SIGN_SHIFT_BITS;
    const Q4_U mask = (Q4_U)0 - (Q4_U)(xi != xi);
    rb = (rb & ~mask) | ((Q4_QNAN_BITS | (xb & sign)) & mask);
    memcpy(&r, &rb, sizeof r);
    return r;
}

static inline unsigned Q4_FN(q4_flags)(Q4_I nan, Q4_I inf) {
    return (nan ? Q4_FLAG_NAN : 0u) | (inf ? Q4_FLAG_INF : 0u);
}

/* The value of a level is computed as the plan computes it, (T)((double)q * scale), not looked
 * up: the arithmetic vectorizes where a chain of selects does not. */
Q4_CLONES static unsigned Q4_FN(q4_level_quantize)(const Q4_T *restrict x, Q4_T *restrict out,
                                                   ptrdiff_t n, const q4_plan *restrict p) {
    Q4_T b[Q4_MAX_BOUNDS];
    memcpy(b, Q4_BOUNDS(p), sizeof b);
    const Q4_I offset = p->offset;
    const double scale = p->scale;
    Q4_I nan = 0, inf = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        Q4_T xi = x[i];
        Q4_T r = (Q4_T)((double)Q4_FN(q4_level_of)(xi, b, offset) * scale);
        out[i] = Q4_FN(q4_nan_fix)(r, xi);
        nan |= (Q4_I)(xi != xi);
        inf |= (Q4_I)(Q4_ABS(xi) == (Q4_T)INFINITY);
    }
    return Q4_FN(q4_flags)(nan, inf);
}

Q4_CLONES static unsigned Q4_FN(q4_level_encode)(const Q4_T *restrict x, uint8_t *restrict out,
                                                 ptrdiff_t n, const q4_plan *restrict p) {
    Q4_T b[Q4_MAX_BOUNDS];
    memcpy(b, Q4_BOUNDS(p), sizeof b);
    const Q4_I offset = p->offset;
    Q4_I nan = 0, inf = 0;
    ptrdiff_t start = 0;
#if Q4_LEVEL_SEARCH
    /* 16 values at a time, the count by a 4-step binary search over the bounds held in one
     * 16-lane table (a register permute per step): the bounds ascend (NaN ones, never reached by
     * a comparison that holds, only at the end), so x >= b[j] holds exactly for j < count and the
     * search finds the same count as the 15 comparisons - in a quarter of the steps */
    {
        q4_v16f table;
        for (int j = 0; j < Q4_MAX_BOUNDS; j++) table[j] = b[j];
        table[Q4_MAX_BOUNDS] = (float)NAN;                   /* never an index: at most 14 */
        const q4_v16i zero = {0};
        const q4_v16i absm = zero + 0x7fffffff, infb = zero + 0x7f800000;
        q4_v16i vnan = zero, vinf = zero;
        for (; start + 16 <= n; start += 16) {
            q4_v16f xv;
            memcpy(&xv, x + start, sizeof xv);
            q4_v16i c = zero;
            c += (xv >= __builtin_shuffle(table, c + 7)) & 8;
            c += (xv >= __builtin_shuffle(table, c + 3)) & 4;
            c += (xv >= __builtin_shuffle(table, c + 1)) & 2;
            c += (xv >= __builtin_shuffle(table, c)) & 1;
            c += offset;
            const q4_v16i ai = (q4_v16i)xv & absm;
            vnan |= ai > infb;
            vinf |= ai == infb;
            const q4_v16u8 bytes = __builtin_convertvector(c, q4_v16u8);
            memcpy(out + start, &bytes, sizeof bytes);
        }
        for (int j = 0; j < 16; j++) { nan |= vnan[j] != 0; inf |= vinf[j] != 0; }
    }
#endif
    /* counts in full-width lanes, then narrowed to bytes in a second loop: counting straight into
     * bytes makes GCC narrow every comparison's mask (two shuffles per bound), ~3x slower */
    Q4_I counts[Q4_ENCODE_BLOCK];
    for (ptrdiff_t i0 = start; i0 < n; i0 += Q4_ENCODE_BLOCK) {
        const ptrdiff_t len = n - i0 < Q4_ENCODE_BLOCK ? n - i0 : Q4_ENCODE_BLOCK;
        const Q4_T *restrict xb = x + i0;
        for (ptrdiff_t i = 0; i < len; i++) {
            Q4_T xi = xb[i];
            counts[i] = Q4_FN(q4_level_of)(xi, b, offset);
            nan |= (Q4_I)(xi != xi);
            inf |= (Q4_I)(Q4_ABS(xi) == (Q4_T)INFINITY);
        }
        for (ptrdiff_t i = 0; i < len; i++) out[i0 + i] = (uint8_t)counts[i];
    }
    return Q4_FN(q4_flags)(nan, inf);
}

Q4_CLONES static unsigned Q4_FN(q4_level_pack)(const Q4_T *restrict x, uint8_t *restrict out,
                                               ptrdiff_t n, const q4_plan *restrict p) {
    Q4_T b[Q4_MAX_BOUNDS];
    memcpy(b, Q4_BOUNDS(p), sizeof b);
    const Q4_I offset = p->offset;
    const ptrdiff_t pairs = n / 2;
    Q4_I nan = 0, inf = 0;
    for (ptrdiff_t i = 0; i < pairs; i++) {
        Q4_T x0 = x[2 * i], x1 = x[2 * i + 1];
        Q4_I c0 = Q4_FN(q4_level_of)(x0, b, offset), c1 = Q4_FN(q4_level_of)(x1, b, offset);
        out[i] = (uint8_t)((c0 & 15) | ((c1 & 15) << 4));
        nan |= (Q4_I)(x0 != x0) | (Q4_I)(x1 != x1);
        inf |= (Q4_I)(Q4_ABS(x0) == (Q4_T)INFINITY) | (Q4_I)(Q4_ABS(x1) == (Q4_T)INFINITY);
    }
    if (n & 1) {
        Q4_T xl = x[n - 1];
        out[pairs] = (uint8_t)(Q4_FN(q4_level_of)(xl, b, offset) & 15);
        nan |= (Q4_I)(xl != xl);
        inf |= (Q4_I)(Q4_ABS(xl) == (Q4_T)INFINITY);
    }
    return Q4_FN(q4_flags)(nan, inf);
}

/* magnitude looked up by its count (a gather), sign copied from the input */
Q4_CLONES static unsigned Q4_FN(q4_signmag_quantize)(const Q4_T *restrict x, Q4_T *restrict out,
                                                     ptrdiff_t n, const q4_plan *restrict p) {
    Q4_T b[Q4_MAX_BOUNDS], v[Q4_MAX_BOUNDS + 1];
    memcpy(b, Q4_BOUNDS(p), sizeof b);
    memcpy(v, Q4_VALUES(p), sizeof v);
    Q4_I nan = 0, inf = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        Q4_T xi = x[i], a = Q4_ABS(xi);
        Q4_I c = 0;
#pragma GCC unroll 8
        for (int k = 0; k < Q4_RADIX_BOUNDS; k++) c += (Q4_I)(a >= b[k]);
        out[i] = Q4_FN(q4_nan_fix)(Q4_COPYSIGN(v[c], xi), xi);   /* zero keeps x's sign */
        nan |= (Q4_I)(a != a);
        inf |= (Q4_I)(a == (Q4_T)INFINITY);
    }
    return Q4_FN(q4_flags)(nan, inf);
}

Q4_CLONES static unsigned Q4_FN(q4_signmag_encode)(const Q4_T *restrict x, uint8_t *restrict out,
                                                   ptrdiff_t n, const q4_plan *restrict p) {
    Q4_T b[Q4_MAX_BOUNDS];
    memcpy(b, Q4_BOUNDS(p), sizeof b);
    const int shift = p->sign_shift;
    Q4_I nan = 0, inf = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        Q4_T xi = x[i];
        out[i] = (uint8_t)Q4_FN(q4_signmag_of)(xi, b, shift);
        nan |= (Q4_I)(xi != xi);
        inf |= (Q4_I)(Q4_ABS(xi) == (Q4_T)INFINITY);
    }
    return Q4_FN(q4_flags)(nan, inf);
}

Q4_CLONES static unsigned Q4_FN(q4_signmag_pack)(const Q4_T *restrict x, uint8_t *restrict out,
                                                 ptrdiff_t n, const q4_plan *restrict p) {
    Q4_T b[Q4_MAX_BOUNDS];
    memcpy(b, Q4_BOUNDS(p), sizeof b);
    const int shift = p->sign_shift;
    const ptrdiff_t pairs = n / 2;
    Q4_I nan = 0, inf = 0;
    for (ptrdiff_t i = 0; i < pairs; i++) {
        Q4_T x0 = x[2 * i], x1 = x[2 * i + 1];
        Q4_I c0 = Q4_FN(q4_signmag_of)(x0, b, shift), c1 = Q4_FN(q4_signmag_of)(x1, b, shift);
        out[i] = (uint8_t)((c0 & 15) | ((c1 & 15) << 4));
        nan |= (Q4_I)(x0 != x0) | (Q4_I)(x1 != x1);
        inf |= (Q4_I)(Q4_ABS(x0) == (Q4_T)INFINITY) | (Q4_I)(Q4_ABS(x1) == (Q4_T)INFINITY);
    }
    if (n & 1) {
        Q4_T xl = x[n - 1];
        out[pairs] = (uint8_t)(Q4_FN(q4_signmag_of)(xl, b, shift) & 15);
        nan |= (Q4_I)(xl != xl);
        inf |= (Q4_I)(Q4_ABS(xl) == (Q4_T)INFINITY);
    }
    return Q4_FN(q4_flags)(nan, inf);
}

#undef Q4_SIGN_SHIFT_BITS
#undef Q4_FN
#undef Q4_CAT
#undef Q4_CAT_
#undef Q4_T
#undef Q4_SUF
#undef Q4_U
#undef Q4_I
#undef Q4_BOUNDS
#undef Q4_VALUES
#undef Q4_ABS
#undef Q4_COPYSIGN
#undef Q4_QNAN_BITS
#undef Q4_LEVEL_SEARCH
