# cython: boundscheck=False, wraparound=False, cdivision=True
"""Compiled 4-bit quantize / encode / pack kernels (see q4core/src/quant_kernels.h).

Private: call it through :mod:`q4core.quant`, which validates input.  The functions here
still check what they rely on (dtype, contiguity, sizes), so a wrong call raises instead of
reading or writing out of bounds.  Work is split into fixed chunks run by an OpenMP
``prange``; every element's result depends only on that element, so any thread count gives
the same bytes.
"""
import numpy as np

from ._gemm import aligned_zeros   # the GEMM's operand alignment (AMX tile rows on one cache line)
cimport numpy as cnp
from cython.parallel cimport prange
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport int32_t, int64_t, uint8_t

cnp.import_array()

cdef extern from "quant_kernels.h" nogil:
    ctypedef struct q4_plan:
        int is_f64
    int Q4CORE_OPENMP
    const char *Q4_CLONES_NAME
    int Q4_OP_QUANTIZE, Q4_OP_ENCODE, Q4_OP_ENCODE_PACK
    unsigned Q4_FLAG_NAN, Q4_FLAG_INF
    int q4_max_threads()
    int q4_num_procs()
    int q4_clamp_threads(int threads)
    int q4_threads_for_elems(int threads, ptrdiff_t n)
    ptrdiff_t Q4_QUANT_ELEMS_PER_THREAD
    int q4_plan_level(q4_plan *p, int is_f64, double scale, int qmin, int qmax)
    int q4_plan_signmag(q4_plan *p, int is_f64, double scale, const double *thr,
                        const double *grid, int nb, int sign_shift)
    unsigned q4_run(const q4_plan *p, int op, const void *x, void *out, ptrdiff_t n)
    void q4_unpack(const uint8_t *inp, uint8_t *out, ptrdiff_t n, int is_signed)

cdef extern from "fused_kernels.h" nogil:
    unsigned q4_minmax_f32(const float *x, ptrdiff_t n, double *hi, double *lo, int threads)
    unsigned q4_minmax_f64(const double *x, ptrdiff_t n, double *hi, double *lo, int threads)
    unsigned q4_moments_f32(const float *x, ptrdiff_t n, double *sq, double *ab, double *top)
    unsigned q4_moments_f64(const double *x, ptrdiff_t n, double *sq, double *ab, double *top)
    unsigned q4_encode_pair(const q4_plan *p0, const q4_plan *p1, const void *x, uint8_t *out0,
                            uint8_t *out1, ptrdiff_t n, double *hi, double *lo, int threads)
    double q4_pact_backward(const float *x, const float *g, float *out, ptrdiff_t n, float clip,
                            int threads)
    void q4_round_f16(const float *x, float *out, ptrdiff_t n)
    unsigned q4_encode_pack_b(const q4_plan *p, const void *x, int64_t K, int64_t N, uint8_t *codes,
                              signed char *packed, int64_t Kp, int64_t *sums)
    int Q4_PANEL, Q4_KPAD
    int64_t q4_round_up(int64_t n, int64_t m)
    void q4_rescale_i32(const int32_t *acc, float *out, ptrdiff_t n, double factor, int exact, int threads)
    void q4_rescale_i64(const int64_t *acc, float *out, ptrdiff_t n, double factor, int exact, int threads)

OP_QUANTIZE = Q4_OP_QUANTIZE
OP_ENCODE = Q4_OP_ENCODE
OP_ENCODE_PACK = Q4_OP_ENCODE_PACK
FLAG_NAN = Q4_FLAG_NAN
FLAG_INF = Q4_FLAG_INF

# elements per parallel work item (even, so a flat stream splits into whole pairs); large
# enough that scheduling costs nothing, small enough that 2^24 values feed many threads
cdef enum:
    CHUNK = 1 << 16


# constants of the build, decoded once (openmp_info runs per engine call)
_OPENMP = bool(Q4CORE_OPENMP)
_CLONES_NAME = Q4_CLONES_NAME.decode()


def openmp_info():
    """``{'openmp': bool, 'max_threads': int, 'simd_clones': str}`` of this build."""
    return {"openmp": _OPENMP, "max_threads": int(q4_max_threads()), "simd_clones": _CLONES_NAME}


#: elements per thread at least: smaller calls run on fewer threads (thread start-up costs more)
ELEMS_PER_THREAD = Q4_QUANT_ELEMS_PER_THREAD


def threads_for_elems(int threads, ptrdiff_t n):
    """The threads a call over ``n`` elements runs on when asked for ``threads``."""
    return int(q4_threads_for_elems(threads, n))


def num_procs():
    """Processors OpenMP may use (``omp_get_num_procs()``; 1 in a serial build): the most threads
    any call here runs, whatever it is asked for."""
    return int(q4_num_procs())


cdef unsigned _run_flat(const q4_plan *p, int op, const char *x, char *out, ptrdiff_t n,
                        ptrdiff_t in_size, ptrdiff_t out_size, int threads) noexcept nogil:
    """``op`` over one contiguous stream of n elements cut into CHUNK-sized pieces."""
    cdef ptrdiff_t nchunks = (n + CHUNK - 1) // CHUNK
    cdef ptrdiff_t c, start, stop
    cdef unsigned flags = 0
    if nchunks <= 1 or threads <= 1:
        return q4_run(p, op, x, out, n)
    for c in prange(nchunks, num_threads=threads, schedule="static"):
        start = c * CHUNK
        stop = start + CHUNK
        if stop > n:
            stop = n
        # packed output: element `start` (even) begins byte start / 2
        flags |= q4_run(p, op, x + start * in_size,
                        out + (start // 2 if op == Q4_OP_ENCODE_PACK else start * out_size),
                        stop - start)
    return flags


cdef unsigned _run_rows(const q4_plan *p, const char *x, char *out, ptrdiff_t nrows,
                        ptrdiff_t row, ptrdiff_t in_size, int threads) noexcept nogil:
    """ENCODE_PACK row by row: an odd row length leaves each row's last high nibble zero."""
    cdef ptrdiff_t out_row = (row + 1) // 2
    cdef ptrdiff_t per_block = CHUNK // row if row < CHUNK else 1
    cdef ptrdiff_t nblocks = (nrows + per_block - 1) // per_block
    cdef ptrdiff_t blk, r, r0, r1
    cdef unsigned flags = 0, f
    if threads <= 1 or nblocks <= 1:     # no parallel region: libgomp costs more than a small call
        for r in range(nrows):
            flags = flags | q4_run(p, Q4_OP_ENCODE_PACK, x + r * row * in_size, out + r * out_row, row)
        return flags
    for blk in prange(nblocks, num_threads=threads, schedule="static"):
        r0 = blk * per_block
        r1 = r0 + per_block
        if r1 > nrows:
            r1 = nrows
        f = 0
        for r in range(r0, r1):
            f = f | q4_run(p, Q4_OP_ENCODE_PACK, x + r * row * in_size, out + r * out_row, row)
        flags |= f
    return flags


cdef _make_plan(q4_plan *plan, fmt_kind, params, double scale, int is_f64):
    """Fill ``plan`` for ``fmt_kind`` / ``params`` (see :func:`run`) at ``scale``."""
    cdef int rc
    cdef cnp.ndarray thr, grid
    if fmt_kind == "level":
        qmin, qmax = params
        rc = q4_plan_level(plan, is_f64, scale, qmin, qmax)
    elif fmt_kind == "signmag":
        thr = np.ascontiguousarray(params[0], dtype=np.float64)
        grid = np.ascontiguousarray(params[1], dtype=np.float64)
        if grid.size != thr.size + 1:
            raise ValueError("grid must have one more entry than thresholds")
        rc = q4_plan_signmag(plan, is_f64, scale, <const double *>cnp.PyArray_DATA(thr),
                             <const double *>cnp.PyArray_DATA(grid), <int>thr.size, params[2])
    else:
        raise ValueError(f"unknown format kind {fmt_kind!r}")
    if rc != 0:
        raise ValueError("format parameters outside the compiled kernels' range")


cdef inline bint _carray(cnp.ndarray a) noexcept:
    """C-contiguous and aligned (C-level flag tests: ``a.flags`` builds an object per look)."""
    return cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISALIGNED(a)


cdef int _float_kind(cnp.ndarray x) except -1:
    """1 for float64, 0 for float32 (aligned, C-contiguous, native), else an error."""
    cdef cnp.npy_intp size = cnp.PyArray_ITEMSIZE(x)
    if not cnp.PyArray_ISFLOAT(x) or cnp.PyArray_ISBYTESWAPPED(x) or (size != 4 and size != 8):
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    if not _carray(x):
        raise ValueError("x must be aligned, C-contiguous and in native byte order")
    return size == 8


def minmax(cnp.ndarray x not None, int threads):
    """``(max, min, flags)`` of float32/float64 ``x`` (NaN skipped and flagged; +-inf if empty)."""
    cdef int is_f64 = _float_kind(x)
    cdef double hi = -np.inf, lo = np.inf
    cdef unsigned flags = 0
    cdef const void *xp = cnp.PyArray_DATA(x)
    cdef ptrdiff_t n = x.size
    if n:
        with nogil:
            if is_f64:
                flags = q4_minmax_f64(<const double *>xp, n, &hi, &lo, threads)
            else:
                flags = q4_minmax_f32(<const float *>xp, n, &hi, &lo, threads)
    return hi, lo, flags


def moments(cnp.ndarray x not None):
    """``(sum(x*x), sum(|x|), max|x|, flags)`` in float64, summed in numpy's pairwise order."""
    cdef int is_f64 = _float_kind(x)
    cdef double sq = 0.0, ab = 0.0, top = 0.0
    cdef unsigned flags = 0
    cdef const void *xp = cnp.PyArray_DATA(x)
    cdef ptrdiff_t n = x.size
    with nogil:
        if is_f64:
            flags = q4_moments_f64(<const double *>xp, n, &sq, &ab, &top)
        else:
            flags = q4_moments_f32(<const float *>xp, n, &sq, &ab, &top)
    return sq, ab, top, flags


cdef inline bint _byte_out(cnp.ndarray out, ptrdiff_t n) noexcept:
    return (cnp.PyArray_IS_C_CONTIGUOUS(out) and cnp.PyArray_ISWRITEABLE(out)
            and cnp.PyArray_ITEMSIZE(out) == 1 and cnp.PyArray_SIZE(out) == n)


def encode_pair(cnp.ndarray x not None, double scale, kind0, params0, cnp.ndarray out0 not None, kind1, params1,
                cnp.ndarray out1 not None, int threads):
    """Codes of ``x`` under format 0 into ``out0`` and (``kind1`` not None) format 1 into ``out1``
    at one ``scale``, with ``x``'s max and min, in one pass: ``(max, min, flags)``."""
    cdef q4_plan plan0, plan1
    cdef int is_f64 = _float_kind(x)
    cdef ptrdiff_t n = x.size
    if not _byte_out(out0, n) or (kind1 is not None and not _byte_out(out1, n)):
        raise ValueError("each out must be a writeable C-contiguous byte array of x's size")
    _make_plan(&plan0, kind0, params0, scale, is_f64)
    cdef q4_plan *p1 = NULL
    cdef uint8_t *o1 = NULL
    if kind1 is not None:
        if kind1 != kind0:
            raise ValueError("both formats of encode_pair must be of one kind (level or signmag)")
        _make_plan(&plan1, kind1, params1, scale, is_f64)
        p1 = &plan1
        o1 = <uint8_t *>cnp.PyArray_DATA(out1)
    cdef double hi = -np.inf, lo = np.inf
    cdef unsigned flags = 0
    cdef const void *xp = cnp.PyArray_DATA(x)
    cdef uint8_t *o0 = <uint8_t *>cnp.PyArray_DATA(out0)
    if n:
        with nogil:
            flags = q4_encode_pair(&plan0, p1, xp, o0, o1, n, &hi, &lo, threads)
    return hi, lo, flags


def pact_backward(cnp.ndarray x not None, cnp.ndarray g not None, float clip, int threads):
    """``(g * ((x >= 0) - (x >= clip)), np.sum(g * (x >= clip), dtype=np.float64))`` for C-contiguous
    float32 ``x`` and ``g`` of one shape, in one pass (see q4_pact_backward in fused_kernels.h)."""
    for name, a in (("x", x), ("g", g)):
        if cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT or cnp.PyArray_ISBYTESWAPPED(a):
            raise TypeError(f"{name} must be native float32, got {a.dtype}")
        if not _carray(a):
            raise ValueError(f"{name} must be aligned and C-contiguous")
    if not cnp.PyArray_SAMESHAPE(x, g):
        raise ValueError(f"x {(<object>x).shape} and g {(<object>g).shape} must have one shape")
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(cnp.PyArray_NDIM(g), cnp.PyArray_DIMS(g), cnp.NPY_FLOAT, 0)
    cdef ptrdiff_t n = x.size
    cdef double total
    cdef const float *xp = <const float *>cnp.PyArray_DATA(x)
    cdef const float *gp = <const float *>cnp.PyArray_DATA(g)
    cdef float *op = <float *>cnp.PyArray_DATA(out)
    with nogil:
        total = q4_pact_backward(xp, gp, op, n, clip, threads)
    return out, total


def round_f16(cnp.ndarray x not None):
    """float32 ``x`` (C-contiguous, aligned, native) rounded to the nearest float16 values, as float32 of
    ``x``'s shape (see q4_round_f16 in fused_kernels.h; equals ``x.astype(float16).astype(float32)``)."""
    if _float_kind(x) != 0:
        raise TypeError(f"x must be float32, got {x.dtype}")
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(cnp.PyArray_NDIM(x), cnp.PyArray_DIMS(x), cnp.NPY_FLOAT, 0)
    cdef const float *xp = <const float *>cnp.PyArray_DATA(x)
    cdef float *op = <float *>cnp.PyArray_DATA(out)
    cdef ptrdiff_t n = x.size
    with nogil:
        q4_round_f16(xp, op, n)
    return out


def encode_pack_b(cnp.ndarray x not None, double scale, fmt_kind, params):
    """A 2-D C-contiguous float (K, N) weight -> ``(codes uint8 (K, N), packed int8 (Kp * Np,), Kp, Np,
    column sums int64 (Np,), flags)``: ``fmt_kind`` must be ``"level"``; the packed layout is
    ``q4core._gemm.pack_b``'s with the identity table (K padded to K_PAD, N to the panel width)."""
    cdef q4_plan plan
    cdef int is_f64 = _float_kind(x)
    if x.ndim != 2 or fmt_kind != "level":
        raise ValueError("encode_pack_b takes a 2-D x and a level (integer) format")
    _make_plan(&plan, fmt_kind, params, scale, is_f64)
    cdef int64_t K = x.shape[0], N = x.shape[1]
    cdef int64_t Kp = q4_round_up(max(K, 1), Q4_KPAD)
    cdef int64_t Np = q4_round_up(max(N, 1), Q4_PANEL)
    cdef cnp.npy_intp np_ = Np
    cdef cnp.ndarray codes = cnp.PyArray_EMPTY(2, cnp.PyArray_DIMS(x), cnp.NPY_UINT8, 0)
    cdef cnp.ndarray packed = aligned_zeros(Kp * Np, np.int8)
    cdef cnp.ndarray sums = cnp.PyArray_ZEROS(1, &np_, cnp.NPY_INT64, 0)
    cdef unsigned flags = 0
    cdef const void *xp = cnp.PyArray_DATA(x)
    cdef uint8_t *cp = <uint8_t *>cnp.PyArray_DATA(codes)
    cdef signed char *pp = <signed char *>cnp.PyArray_DATA(packed)
    cdef int64_t *sp = <int64_t *>cnp.PyArray_DATA(sums)
    with nogil:
        flags = q4_encode_pack_b(&plan, xp, K, N, cp, pp, Kp, sp)
    return codes, packed, Kp, Np, sums, flags


def rescale(cnp.ndarray acc not None, double factor, bint exact, int threads):
    """float32 ``acc * factor`` of a C-contiguous int32/int64 ``acc`` (see q4_rescale in fused_kernels.h)."""
    cdef cnp.npy_intp size = cnp.PyArray_ITEMSIZE(acc)
    if not cnp.PyArray_ISSIGNED(acc) or cnp.PyArray_ISBYTESWAPPED(acc) or (size != 4 and size != 8):
        raise TypeError(f"acc must be native int32 or int64, got {acc.dtype}")
    if not _carray(acc):
        raise ValueError("acc must be aligned and C-contiguous")
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(cnp.PyArray_NDIM(acc), cnp.PyArray_DIMS(acc), cnp.NPY_FLOAT, 0)
    cdef ptrdiff_t n = cnp.PyArray_SIZE(acc)
    cdef const void *ap = cnp.PyArray_DATA(acc)
    cdef float *op = <float *>cnp.PyArray_DATA(out)
    cdef bint wide = size == 8
    with nogil:
        if wide:
            q4_rescale_i64(<const int64_t *>ap, op, n, factor, exact, threads)
        else:
            q4_rescale_i32(<const int32_t *>ap, op, n, factor, exact, threads)
    return out


def run(fmt_kind, int op, cnp.ndarray x not None, cnp.ndarray out not None, double scale, params, int threads):
    """Apply ``op`` to the C-contiguous float32/float64 array ``x``, writing ``out``.

    ``fmt_kind`` is ``"level"`` with ``params = (qmin, qmax)`` or ``"signmag"`` with
    ``params = (thresholds, grid, sign_shift)`` (float64 arrays, ``len(grid) == len(thr) + 1``).
    For ``OP_ENCODE_PACK`` the last axis of ``x`` is packed into ``out``'s last axis.
    Returns the OR of ``FLAG_NAN`` / ``FLAG_INF`` seen in ``x``.  ``threads`` is clamped to
    [1, num_procs()]: a larger team only risks libgomp failing to create it.
    """
    cdef q4_plan plan
    cdef int is_f64 = _float_kind(x)
    cdef ptrdiff_t n = x.size, row = 0, nrows = 0, expected
    if not (_carray(out) and cnp.PyArray_ISWRITEABLE(out)):
        raise ValueError("out must be aligned, C-contiguous and writeable")
    if op == Q4_OP_QUANTIZE:
        if not cnp.PyArray_EquivTypes(out.dtype, x.dtype) or out.size != n:
            raise ValueError("out must match x in dtype and size")
    elif op == Q4_OP_ENCODE:
        if cnp.PyArray_ITEMSIZE(out) != 1 or out.size != n:
            raise ValueError("out must be a byte array of x's size")
    elif op == Q4_OP_ENCODE_PACK:
        if x.ndim == 0:
            raise ValueError("x must have at least one dimension to pack")
        row = x.shape[x.ndim - 1]
        nrows = n // row if row else 0
        expected = nrows * ((row + 1) // 2)
        if out.itemsize != 1 or out.size != expected:
            raise ValueError(f"out must hold {expected} bytes")
    else:
        raise ValueError(f"unknown op {op!r}")
    _make_plan(&plan, fmt_kind, params, scale, is_f64)
    if n == 0:
        return 0
    threads = q4_threads_for_elems(threads, n)
    cdef const char *xp = <const char *>cnp.PyArray_DATA(x)
    cdef char *op_out = <char *>cnp.PyArray_DATA(out)
    cdef ptrdiff_t in_size = cnp.PyArray_ITEMSIZE(x), out_size = cnp.PyArray_ITEMSIZE(out)
    cdef unsigned flags
    with nogil:
        if op == Q4_OP_ENCODE_PACK and row % 2 == 1:
            flags = _run_rows(&plan, xp, op_out, nrows, row, in_size, threads)
        else:
            flags = _run_flat(&plan, op, xp, op_out, n, in_size, out_size, threads)
    return flags


def unpack(cnp.ndarray packed not None, cnp.ndarray out not None, bint is_signed, int threads):
    """Unpack the last axis of C-contiguous uint8 ``packed`` into ``out`` (n codes per row);
    ``threads`` clamped to [1, num_procs()] as in :func:`run`."""
    if cnp.PyArray_TYPE(packed) != cnp.NPY_UINT8 or cnp.PyArray_ITEMSIZE(out) != 1:
        raise TypeError("packed must be uint8 and out a byte array")
    if not (cnp.PyArray_IS_C_CONTIGUOUS(packed) and cnp.PyArray_IS_C_CONTIGUOUS(out)
            and cnp.PyArray_ISWRITEABLE(out)):
        raise ValueError("packed and out must be C-contiguous and out writeable")
    if packed.ndim == 0 or out.ndim != packed.ndim:
        raise ValueError("packed and out must have the same number of dimensions (>= 1)")
    cdef ptrdiff_t row = out.shape[out.ndim - 1], prow = packed.shape[packed.ndim - 1]
    cdef ptrdiff_t nrows = out.size // row if row else 0
    if (row + 1) // 2 != prow or nrows * prow != packed.size:
        raise ValueError("out's shape does not match packed")
    if out.size == 0:
        return
    threads = q4_threads_for_elems(threads, out.size)
    cdef const uint8_t *src = <const uint8_t *>cnp.PyArray_DATA(packed)
    cdef uint8_t *dst = <uint8_t *>cnp.PyArray_DATA(out)
    cdef ptrdiff_t n = out.size, nchunks, c, start, stop, r, r0, r1, per_block, nblocks
    with nogil:
        if row % 2 == 0:
            nchunks = (n + CHUNK - 1) // CHUNK
            if nchunks <= 1 or threads <= 1:    # no parallel region for one thread
                q4_unpack(src, dst, n, is_signed)
            else:
                for c in prange(nchunks, num_threads=threads, schedule="static"):
                    start = c * CHUNK
                    stop = start + CHUNK
                    if stop > n:
                        stop = n
                    q4_unpack(src + start // 2, dst + start, stop - start, is_signed)
        else:
            per_block = CHUNK // row if row < CHUNK else 1
            nblocks = (nrows + per_block - 1) // per_block
            if nblocks <= 1 or threads <= 1:
                for r in range(nrows):
                    q4_unpack(src + r * prow, dst + r * row, row, is_signed)
            else:
                for c in prange(nblocks, num_threads=threads, schedule="static"):
                    r0 = c * per_block
                    r1 = r0 + per_block
                    if r1 > nrows:
                        r1 = nrows
                    for r in range(r0, r1):
                        q4_unpack(src + r * prow, dst + r * row, row, is_signed)
