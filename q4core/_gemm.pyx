# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled INT4 / FP4 x INT4 GEMM kernels (private; use :mod:`q4core.gemm`).

The C kernels live in ``q4core/src/gemm_*.h``.  Every kernel computes the exact product of
an unsigned byte matrix A (row-major, K padded to a multiple of K_PAD = 4) and a signed
byte matrix B packed in PANEL_COLS = 16-column panels (K chunks start on multiples of K_ALIGN = 64);
:mod:`q4core.gemm` maps INT4 and FP4 operands onto that (offsets, exponent groups) and validates
everything before it gets here.
"""
import numpy as np
cimport numpy as cnp
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.stdint cimport uint8_t, int8_t, int32_t, int64_t
from libc.stdlib cimport malloc, calloc, free
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer, PyCapsule_Destructor
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF

cnp.import_array()

cdef extern from "gemm_pack.h" nogil:
    int Q4_MAX_TABLES, Q4_LDA_ALIAS, Q4_LDA_SKEW
    int q4_pack_simd()
    int q4_pack_simd_set(int enabled)
    void q4_pack_b(const uint8_t *src, int64_t sk, int64_t sj, int64_t K, int64_t N,
                   const int8_t *tables, int T, int8_t *out, int64_t out_stride,
                   int64_t *sums, int64_t Kp, int64_t Np, uint8_t *seen, int nthreads)
    void q4_prep_a(const uint8_t *src, int64_t si, int64_t sk, int64_t M, int64_t K,
                   const uint8_t *tables, int T, uint8_t *out, int64_t out_stride,
                   int64_t lda, uint8_t *seen, int nthreads)

cdef extern from "gemm_threads.h" nogil:
    int q4_threads_for_work(int requested, int64_t items, int64_t work, int64_t per_thread)
    int64_t Q4_GEMM_MACS_PER_THREAD, Q4_PACK_BYTES_PER_THREAD

cdef extern from "gemm_driver.h" nogil:
    ctypedef struct q4_cpu_features:
        int x86
        int sse2, avx, avx2, fma
        int avx512f, avx512bw, avx512vl, avx512vnni
        int avxvnni
        int amx_tile, amx_int8, amx_bf16
        int os_avx, os_avx512, os_amx
        int amx_permission
    # layout constants (gemm_portable.h, gemm_driver.h)
    int Q4_NKERNELS, Q4_PANEL, Q4_KGROUP, Q4_GROUP_BYTES, Q4_KPAD, Q4_KALIGN, Q4_KC
    int64_t q4_round_up(int64_t n, int64_t m)
    const q4_cpu_features *q4_features()
    const char *q4_kernel_name(int kernel)
    const char *q4_kernel_requires(int kernel)
    int q4_kernel_compiled(int kernel)
    int q4_kernel_supported(int kernel, const q4_cpu_features *f)
    int q4_openmp_enabled()
    int q4_default_threads()
    int q4_thread_limit()
    int q4_row_multiple(int kernel)
    int q4_gemm_groups(int kernel, int ngroups, const uint8_t *const *A, int64_t lda,
                       int64_t M, int64_t Mp, const int8_t *const *B, int64_t Kp,
                       int64_t N, int64_t Np, int64_t k0, int64_t k1,
                       const int32_t *const *corr, const int *shift, int mode,
                       void *out, int64_t ldo, int nthreads, int64_t max_product,
                       double factor, int exact)

#: columns of B per packed panel: N is padded to a multiple
PANEL_COLS = Q4_PANEL
#: K is padded to a multiple of this: one k-group, the step of every kernel but AMX (whose
#: last k % 64 the driver hands to another kernel, gemm_driver.h)
K_PAD = Q4_KPAD
#: every K chunk of :func:`gemm` but the last is a multiple of this (the driver's K blocks and
#: the AMX tile rows start on it); the last ends at Kp
K_ALIGN = Q4_KALIGN
#: row strides of prep_a's buffers that are a multiple of LDA_ALIAS get LDA_SKEW more bytes
LDA_ALIAS = Q4_LDA_ALIAS
LDA_SKEW = Q4_LDA_SKEW
#: byte alignment of the operand buffers prep_a / pack_b return: one cache line, one AMX
#: tile row.  numpy's own large arrays start 16 bytes past a page boundary, which splits
#: every 64-byte tile row over two cache lines and halved the AMX kernel's speed
cdef enum:
    _ALIGN = 64       # OPERAND_ALIGN as a C constant
OPERAND_ALIGN = _ALIGN

q4_features()       # detect once at import, under the GIL
q4_thread_limit()   # likewise: the processor count the thread clamp uses

#: the C kernel table (gemm_kernels.h), in its order - the kernel id is the index
KERNEL_TABLE = tuple(
    {"id": i, "name": q4_kernel_name(i).decode("ascii"),
     "requires": q4_kernel_requires(i).decode("ascii"),
     "row_multiple": q4_row_multiple(i), "compiled": bool(q4_kernel_compiled(i)),
     "supported": bool(q4_kernel_supported(i, q4_features()))}
    for i in range(Q4_NKERNELS))
#: kernel names in table order (q4core.gemm.KERNEL_NAMES without "reference")
KERNELS = tuple(k["name"] for k in KERNEL_TABLE)
#: row multiple of each kernel id, for the callers that pad A
ROW_MULTIPLES = tuple(k["row_multiple"] for k in KERNEL_TABLE)


def cpu_features():
    """What CPUID / XGETBV / Linux report, as a dict of booleans (amx_permission may be None)."""
    cdef const q4_cpu_features *f = q4_features()
    perm = None if f.amx_permission < 0 else bool(f.amx_permission)
    return {
        "x86": bool(f.x86), "sse2": bool(f.sse2), "avx": bool(f.avx), "avx2": bool(f.avx2),
        "fma": bool(f.fma), "avx512f": bool(f.avx512f), "avx512bw": bool(f.avx512bw),
        "avx512vl": bool(f.avx512vl), "avx512_vnni": bool(f.avx512vnni),
        "avx_vnni": bool(f.avxvnni), "amx_tile": bool(f.amx_tile), "amx_int8": bool(f.amx_int8),
        "amx_bf16": bool(f.amx_bf16), "os_avx": bool(f.os_avx), "os_avx512": bool(f.os_avx512),
        "os_amx": bool(f.os_amx), "amx_xtiledata_permission": perm,
        "compiled_kernels": [k["name"] for k in KERNEL_TABLE if k["compiled"]],
    }


def available_kernels():
    """Compiled kernels that this CPU and OS can run, fastest first."""
    return [k["name"] for k in KERNEL_TABLE if k["compiled"] and k["supported"]]


def unavailable_reason(name):
    i = KERNELS.index(name)
    if not q4_kernel_compiled(i):
        return f"the {name} kernel was not compiled (compiler too old or not x86-64)"
    if not q4_kernel_supported(i, q4_features()):
        return f"this CPU/OS lacks what the {name} kernel needs ({KERNEL_TABLE[i]['requires']})"
    return "it is available"


def openmp_enabled():
    return bool(q4_openmp_enabled())


def default_threads():
    """Threads a call uses by default: OpenMP's default (OMP_NUM_THREADS) after the clamp."""
    return q4_default_threads()


def thread_limit():
    """Most threads any GEMM-side parallel region starts: the processors this process may
    run on (and OMP_THREAD_LIMIT); larger requests are clamped to it (gemm_threads.h)."""
    return q4_thread_limit()


#: work per thread at least (gemm_threads.h): GEMM multiply-accumulates, packed bytes
GEMM_MACS_PER_THREAD = Q4_GEMM_MACS_PER_THREAD
PACK_BYTES_PER_THREAD = Q4_PACK_BYTES_PER_THREAD


def threads_for_work(int requested, int64_t items, int64_t work, int64_t per_thread):
    """Threads a region of ``items`` work items and ``work`` units runs on (gemm_threads.h)."""
    return q4_threads_for_work(requested, items, work, per_thread)


cpdef Py_ssize_t _round_up(Py_ssize_t n, Py_ssize_t m) except? -1:
    """``n`` rounded up to a multiple of ``m`` (> 0): gemm_portable.h's q4_round_up, which the other
    modules' paddings call too; a C call from pack_b and prep_a, and the tests' view of it."""
    return q4_round_up(n, m)


cdef extern from "numpy/arrayobject.h":
    PyTypeObject PyArray_Type
    # steals a reference to descr (numpy's own .pxd leaves it undeclared)
    object _new_from_descr "PyArray_NewFromDescr"(PyTypeObject *subtype, cnp.dtype descr, int nd,
                                                  cnp.npy_intp *dims, cnp.npy_intp *strides,
                                                  void *data, int flags, PyObject *obj)

# The operand helpers below work on the numpy C API: on 64 x 64 operands the Python-level views,
# typed-memoryview acquisitions and temporary arrays they replace cost several times the
# multiply-accumulates (aligned_zeros 1.5 us, prep_a 4.3 us, gemm 5.4 us on Zen 4)


cdef void _free_raw(object capsule) noexcept:
    free(PyCapsule_GetPointer(capsule, NULL))


cdef object _aligned_descr(int nd, const cnp.npy_intp *dims, object descr):
    """Zeros of dtype ``descr`` (a numpy dtype) and C shape ``dims``, data on an OPERAND_ALIGN
    boundary: one calloc'd block, owned by a capsule (the array's base), and one array on its
    first aligned byte."""
    cdef cnp.npy_intp itemsize = (<cnp.dtype>descr).itemsize, count = 1, nbytes, d
    cdef int i
    for i in range(nd):         # the element count is bounded too (a zero itemsize leaves nbytes 0)
        d = dims[i]
        if d < 0:
            raise ValueError("negative dimensions are not allowed")
        if d and count > (<cnp.npy_intp>0x7FFFFFFFFFFFFFFF - _ALIGN) // d:
            raise ValueError("array is too big")
        count *= d
    if itemsize and count > (<cnp.npy_intp>0x7FFFFFFFFFFFFFFF - _ALIGN) // itemsize:
        raise ValueError("array is too big")
    nbytes = count * itemsize
    cdef char *data
    cdef cnp.ndarray out
    cdef char *raw = <char *>calloc(<size_t>nbytes + _ALIGN, 1)
    if raw == NULL:
        raise MemoryError()
    try:
        capsule = PyCapsule_New(raw, NULL, <PyCapsule_Destructor>_free_raw)
    except BaseException:
        free(raw)
        raise
    data = raw + (_ALIGN - (<size_t>raw) % _ALIGN) % _ALIGN      # unsigned: C's % of a negative is negative
    Py_INCREF(descr)                      # PyArray_NewFromDescr steals it
    out = _new_from_descr(&PyArray_Type, <cnp.dtype>descr, nd, <cnp.npy_intp *>dims,
                                           NULL, data, cnp.NPY_ARRAY_CARRAY, NULL)
    cnp.set_array_base(out, capsule)
    return out


cdef cnp.ndarray _aligned_typed(int nd, const cnp.npy_intp *dims, int typenum):
    return _aligned_descr(nd, dims, cnp.PyArray_DescrFromType(typenum))


def aligned_zeros(shape, dtype):
    """``np.zeros(shape, dtype)`` whose data starts on an OPERAND_ALIGN-byte boundary.

    Operand buffers handed to :func:`gemm` should come from here (prep_a and pack_b use it):
    results do not depend on alignment, speed does (AMX tile loads)."""
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise TypeError("aligned_zeros: object dtypes are not supported")
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    cdef cnp.npy_intp dims[32]
    cdef int nd = len(shape), i
    if nd > 32:
        raise ValueError("aligned_zeros: at most 32 dimensions")
    for i in range(nd):
        dims[i] = shape[i]
    return _aligned_descr(nd, dims, dtype)


cdef inline bint _fits(object x, int nd, int typenum, bint contig):
    """``x`` is an ndarray of ``nd`` dimensions and type ``typenum`` (native order, aligned),
    C-contiguous if ``contig``: its data can be handed to C as is."""
    if not isinstance(x, cnp.ndarray):
        return False
    cdef cnp.ndarray a = <cnp.ndarray>x
    return (cnp.PyArray_NDIM(a) == nd and cnp.PyArray_TYPE(a) == typenum and cnp.PyArray_ISNOTSWAPPED(a)
            and cnp.PyArray_ISALIGNED(a) and (not contig or cnp.PyArray_IS_C_CONTIGUOUS(a)))


cdef cnp.ndarray _operand(object x, int nd, int typenum, bint contig):
    """``x`` as an ndarray whose data C may read with the layout asked for: ``x`` itself when it
    is one (the fast path), else through the typed memoryview the entry points used to take, which
    accepts and rejects exactly what it did (any buffer object; the same errors)."""
    if _fits(x, nd, typenum, contig):
        return <cnp.ndarray>x
    if x is None:       # a typed memoryview takes None, and C would then read through it
        raise TypeError("internal error: an operand is None")
    cdef const uint8_t[:, :] u2
    cdef const uint8_t[:, ::1] u2c
    cdef const int8_t[:, ::1] s2c
    cdef const int8_t[::1] s1c
    cdef const int64_t[::1] l1c
    if nd == 2 and typenum == cnp.NPY_UINT8 and not contig:
        u2 = x
        return np.asarray(u2)       # the array keeps the memoryview, and with it the buffer, alive
    # a [:, ::1] view asks the exporter for a C-contiguous buffer: rows are packed
    if nd == 2 and typenum == cnp.NPY_UINT8:
        u2c = x
        return np.asarray(u2c)
    if nd == 2 and typenum == cnp.NPY_INT8 and contig:
        s2c = x
        return np.asarray(s2c)
    if nd == 1 and typenum == cnp.NPY_INT8 and contig:
        s1c = x
        return np.asarray(s1c)
    if nd == 1 and typenum == cnp.NPY_INT64 and contig:
        l1c = x
        return np.asarray(l1c)
    raise TypeError("internal error: unsupported operand layout")


def pack_b(src, tables, int nthreads=0, Py_ssize_t k_multiple=Q4_KPAD):
    """Map B (K x N bytes, any strides) through each row of ``tables`` (T x 256) into the
    kernel layout: 16-column panels, 4 consecutive k per 32-bit lane (gemm_portable.h).

    Returns (packed int8 (T, Kp * Np), Kp, Np, column sums int64 (T, Np), seen bool (256,))
    with Kp = K rounded up to ``k_multiple`` (a multiple of K_PAD: K_PAD itself for :func:`gemm`; the
    block-scaled driver asks for K_ALIGN) and Np = N rounded up to PANEL_COLS (zero padding adds nothing to
    any product); ``seen[v]`` tells whether byte value v occurs in B.  Column panels are
    spread over ``nthreads`` OpenMP threads (0: the default count).
    """
    cdef cnp.ndarray s = _operand(src, 2, cnp.NPY_UINT8, False)
    cdef cnp.ndarray tab = _operand(tables, 2, cnp.NPY_INT8, True)
    cdef Py_ssize_t K = cnp.PyArray_DIMS(s)[0], N = cnp.PyArray_DIMS(s)[1]
    cdef Py_ssize_t T = cnp.PyArray_DIMS(tab)[0]
    if k_multiple <= 0 or k_multiple % Q4_KPAD:
        raise ValueError(f"internal error: k_multiple {k_multiple} must be a positive multiple of {Q4_KPAD}")
    cdef Py_ssize_t Kp = _round_up(max(K, 1), k_multiple), Np = _round_up(max(N, 1), Q4_PANEL)
    if cnp.PyArray_DIMS(tab)[1] != 256 or not 1 <= T <= Q4_MAX_TABLES:
        raise ValueError(f"internal error: tables must be (T, 256) with 1 <= T <= {Q4_MAX_TABLES}")
    cdef cnp.npy_intp dims[2]
    dims[0] = T
    dims[1] = Kp * Np
    packed = _aligned_typed(2, dims, cnp.NPY_INT8)
    dims[1] = Np
    sums = cnp.PyArray_ZEROS(2, dims, cnp.NPY_INT64, 0)
    dims[0] = 256
    seen = cnp.PyArray_ZEROS(1, dims, cnp.NPY_BOOL, 0)     # the C code stores 0 / 1 bytes
    cdef const uint8_t *sp = <const uint8_t *>cnp.PyArray_DATA(s)
    cdef int64_t sk = cnp.PyArray_STRIDES(s)[0], sj = cnp.PyArray_STRIDES(s)[1]
    cdef const int8_t *tp = <const int8_t *>cnp.PyArray_DATA(tab)
    cdef int8_t *pp = <int8_t *>cnp.PyArray_DATA(packed)
    cdef int64_t *cs = <int64_t *>cnp.PyArray_DATA(sums)
    cdef uint8_t *sv = <uint8_t *>cnp.PyArray_DATA(seen)
    if K and N:
        with nogil:
            q4_pack_b(sp, sk, sj, K, N, tp, T, pp, Kp * Np, cs, Kp, Np, sv, nthreads)
    return packed, Kp, Np, sums, seen


cdef cnp.ndarray _kernel_buffer(object x, int nd, int typenum):
    """``x`` as a C-contiguous ndarray of ``nd`` dimensions and type ``typenum`` that C may read as a kernel
    operand.  Operands made elsewhere (not by prep_a / pack_b) may start off a cache line: they are copied
    (:func:`_aligned`) - a copy costs one pass over the operand, a misaligned AMX tile load twice the GEMM."""
    if not (_fits(x, nd, typenum, True) and (<size_t>cnp.PyArray_DATA(<cnp.ndarray>x)) % _ALIGN == 0):
        x = _aligned(x)
    return _operand(x, nd, typenum, True)


def _aligned(x):
    """``x`` itself if its data starts on an OPERAND_ALIGN boundary (or it is empty), else an
    aligned C-contiguous copy."""
    cdef cnp.ndarray arr = np.asarray(x)
    x = arr
    if cnp.PyArray_SIZE(arr) == 0 or ((<size_t>cnp.PyArray_DATA(arr)) % _ALIGN == 0
                                      and cnp.PyArray_IS_C_CONTIGUOUS(arr)):
        return x
    out = aligned_zeros(x.shape, x.dtype)
    out[...] = x
    return out


def set_pack_simd(bint enabled):
    """Let pack_b / prep_a use their AVX-512 VBMI loops (when the CPU and OS allow them) or
    force the scalar loops (``False``; for tests: both give identical results).  Returns
    whether the VBMI loops now run."""
    return bool(q4_pack_simd_set(enabled))


def pack_simd():
    """Whether pack_b / prep_a run their AVX-512 VBMI loops (gemm_pack.h)."""
    return bool(q4_pack_simd())


def row_multiple(int kernel):
    """Rows the kernel steps over: prep_a must pad A to a multiple of this."""
    return q4_row_multiple(kernel)


def prep_a(src, tables, Py_ssize_t Kp, Py_ssize_t rows, int nthreads=0, bint want_seen=True):
    """Map A (M x K bytes, any strides) through each row of ``tables`` (T x 256) into T
    zero-padded row-major buffers, in one pass over A.

    Returns (buffers uint8 (T, Mp, lda), seen bool (256,)): Mp = M rounded up to ``rows``
    (the kernel's row multiple); the row stride lda is Kp when Kp < 64 (several short rows share
    a cache line), else Kp rounded up to 64 (rows start on a cache line, one AMX tile row) plus
    LDA_SKEW bytes when that is a multiple of LDA_ALIAS, so that the rows a micro-kernel reads
    together do not all fall into the same L1 cache set (a power-of-two stride would alias them);
    ``seen[v]`` tells whether byte value v occurs in A (None when ``want_seen`` is false: the scan is skipped).
    """
    cdef cnp.ndarray s = _operand(src, 2, cnp.NPY_UINT8, False)
    cdef cnp.ndarray tab = _operand(tables, 2, cnp.NPY_UINT8, True)
    cdef Py_ssize_t M = cnp.PyArray_DIMS(s)[0], K = cnp.PyArray_DIMS(s)[1]
    cdef Py_ssize_t T = cnp.PyArray_DIMS(tab)[0]
    if cnp.PyArray_DIMS(tab)[1] != 256 or not 1 <= T <= Q4_MAX_TABLES or K > Kp or Kp % Q4_KPAD \
            or rows < 1:
        raise ValueError("internal error: bad tables, Kp or rows in prep_a")
    cdef Py_ssize_t Mp = _round_up(max(M, 1), rows)
    cdef Py_ssize_t lda = Kp if Kp < Q4_KALIGN else _round_up(Kp, Q4_KALIGN)
    if lda % Q4_LDA_ALIAS == 0:
        lda += Q4_LDA_SKEW
    cdef cnp.npy_intp dims[3]
    dims[0] = T
    dims[1] = Mp
    dims[2] = lda
    buf = _aligned_typed(3, dims, cnp.NPY_UINT8)
    seen = None
    cdef uint8_t *sv = NULL
    if want_seen:
        dims[0] = 256
        seen = cnp.PyArray_ZEROS(1, dims, cnp.NPY_BOOL, 0)   # the C code stores 0 / 1 bytes
        sv = <uint8_t *>cnp.PyArray_DATA(seen)
    cdef const uint8_t *sp = <const uint8_t *>cnp.PyArray_DATA(s)
    cdef int64_t si = cnp.PyArray_STRIDES(s)[0], sk = cnp.PyArray_STRIDES(s)[1]
    cdef const uint8_t *tp = <const uint8_t *>cnp.PyArray_DATA(tab)
    cdef uint8_t *bp = <uint8_t *>cnp.PyArray_DATA(buf)
    if M and K:
        with nogil:
            q4_prep_a(sp, si, sk, M, K, tp, T, bp, Mp * lda, lda, sv, nthreads)
    return buf, seen


def column_sums(const int8_t[::1] packed, Py_ssize_t Kp, Py_ssize_t Np):
    """int64 column sums of a packed B over all of K."""
    if Kp < 0 or Np < 0 or (Np and Kp > PY_SSIZE_T_MAX // Np) or packed.shape[0] < Kp * Np \
            or Kp % Q4_KPAD or Np % Q4_PANEL:
        raise ValueError("internal error: packed operand does not match Kp, Np")
    sums = np.zeros(Np, np.int64)
    cdef int64_t[::1] s = sums
    cdef Py_ssize_t j
    if Np:
        with nogil:
            for j in range(Np):
                s[j] = _panel_column_sum(&packed[0], Kp, j, 0, Kp)
    return sums


cdef inline int64_t _panel_column_sum(const int8_t *packed, Py_ssize_t Kp, Py_ssize_t j,
                                      Py_ssize_t k0, Py_ssize_t k1) noexcept nogil:
    """Column j of packed B summed over rows [k0, k1)."""
    cdef const int8_t *panel = &packed[(j // Q4_PANEL) * Kp * Q4_PANEL + (j % Q4_PANEL) * Q4_KGROUP]
    cdef int64_t acc = 0
    cdef Py_ssize_t g, q
    for g in range(k0 // Q4_KGROUP, k1 // Q4_KGROUP):
        for q in range(Q4_KGROUP):
            acc += panel[g * Q4_GROUP_BYTES + q]
    return acc


cdef bint _correction(const int64_t *sums, const int8_t *packed, Py_ssize_t Kp, Py_ssize_t Np,
                      Py_ssize_t k0, Py_ssize_t k1, int64_t offset, int32_t *corr) noexcept nogil:
    """int32 ``offset * sums`` into ``corr`` (Np): the zero-point correction the driver subtracts;
    ``sums`` the column sums of B over all of K, or NULL: summed here from packed B over [k0, k1).

    ``|offset * column sum| <= max_product * kchunk < 2**31`` by the caller's K chunk;
    checked anyway (returns True when one is outside), since a wrapped correction would be a
    silent wrong answer."""
    cdef Py_ssize_t j
    cdef int64_t v
    cdef bint bad = False
    for j in range(Np):
        v = (sums[j] if sums != NULL else _panel_column_sum(packed, Kp, j, k0, k1)) * offset
        if v > 2147483647 or v < -2147483647:
            bad = True
        corr[j] = <int32_t>v
    return bad


def gemm(tuple a_bufs, Py_ssize_t M, tuple packs, Py_ssize_t N, Py_ssize_t Kp, Py_ssize_t Np,
         Py_ssize_t kchunk, tuple a_offsets, tuple shifts, int64_t max_product, int kernel,
         int nthreads, tuple colsums=None, bint narrow=False, tuple scale=None):
    """Exact ``sum_g ((a_bufs[g] - a_offsets[g]) @ B_g) << shifts[g]`` for the first M x N entries.

    One or two groups (the FP4 exponent groups).  K (padded to Kp, a multiple of K_PAD) is processed
    in chunks of ``kchunk`` (a multiple of K_ALIGN; the last chunk ends at Kp) so that no int32
    accumulator can wrap; the chunks are summed in int64.  Returns int32 when there is one group, no shift and one chunk, else int64; with
    ``narrow`` int32 whenever there is one chunk (the chunk bounds every exact entry inside int32:
    half the output bytes of int64).
    ``colsums[g]`` (int64, Np) are B_g's column sums over all of K, if the caller cached them.
    ``scale = (factor, exact)``: when the result would be int32 (one chunk), it comes back as float32
    ``result * factor`` instead, rounded in the store as the engine's rescale rounds it (see q4_scale_row);
    otherwise the integers as without.
    """
    cdef int ngroups = len(a_bufs)
    if kernel < 0 or kernel >= Q4_NKERNELS:
        raise ValueError(f"unknown kernel id {kernel}")
    if ngroups not in (1, 2) or len(packs) != ngroups or len(a_offsets) != ngroups \
            or len(shifts) != ngroups or (colsums is not None and len(colsums) != ngroups):
        raise ValueError("internal error: one or two groups, with matching operand tuples")
    if kchunk <= 0 or kchunk % Q4_KALIGN:
        raise ValueError(f"internal error: K chunk {kchunk} must be a positive multiple of {Q4_KALIGN}")
    if M < 0 or N < 0 or Kp <= 0 or Np <= 0 or N > Np or Kp % Q4_KPAD or Kp > PY_SSIZE_T_MAX // Np:
        raise ValueError("internal error: bad output or padded shapes")
    cdef const uint8_t *a_ptr[2]
    cdef const int8_t *b_ptr[2]
    cdef const int64_t *sums_ptr[2]
    cdef const int32_t *corr_ptr[2]
    cdef int shift_arr[2]
    cdef int64_t offset_arr[2]
    cdef cnp.ndarray av, bv, sv
    cdef Py_ssize_t lda = -1, Mp = -1
    cdef int g
    keep = []        # the operands in use (copies made here included) stay alive until the end
    for g in range(ngroups):
        av = _kernel_buffer(a_bufs[g], 2, cnp.NPY_UINT8)
        bv = _kernel_buffer(packs[g], 1, cnp.NPY_INT8)
        keep.append(av)
        keep.append(bv)
        if g == 0:
            Mp, lda = cnp.PyArray_DIMS(av)[0], cnp.PyArray_DIMS(av)[1]
        if cnp.PyArray_DIMS(av)[0] != Mp or cnp.PyArray_DIMS(av)[1] != lda or lda < Kp \
                or lda % Q4_KPAD or Mp < M or cnp.PyArray_DIMS(bv)[0] != Kp * Np:
            raise ValueError("internal error: operand buffers do not match the packed shapes")
        a_ptr[g] = <const uint8_t *>cnp.PyArray_DATA(av)
        b_ptr[g] = <const int8_t *>cnp.PyArray_DATA(bv)
        shift_arr[g] = shifts[g]
        offset_arr[g] = a_offsets[g]
    cdef Py_ssize_t nchunks = (Kp + kchunk - 1) // kchunk
    # the cached column sums serve a single chunk (they cover all of K)
    for g in range(ngroups):
        sums_ptr[g] = NULL
        if offset_arr[g] != 0 and nchunks == 1 and colsums is not None and colsums[g] is not None:
            sv = _operand(colsums[g], 1, cnp.NPY_INT64, True)
            if cnp.PyArray_DIMS(sv)[0] != Np:
                raise ValueError("internal error: column sums do not match the packed shapes")
            keep.append(sv)
            sums_ptr[g] = <const int64_t *>cnp.PyArray_DATA(sv)
    cdef bint single = ngroups == 1 and shift_arr[0] == 0 and nchunks == 1
    cdef bint narrow32 = narrow and nchunks == 1 and not single
    cdef bint scaled = scale is not None and (single or narrow32)
    cdef double factor = 1.0
    cdef int exact = 0
    if scaled:
        factor, exact = scale[0], bool(scale[1])
    cdef cnp.npy_intp dims[2]
    dims[0] = M
    dims[1] = N
    result = cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT if scaled else
                               (cnp.NPY_INT32 if single or narrow32 else cnp.NPY_INT64), 0)
    cdef void *out_ptr = cnp.PyArray_DATA(result)
    cdef Py_ssize_t k0, k1, c
    cdef int rc = 0, mode
    cdef bint bad = False
    cdef bint need_corr = offset_arr[0] != 0 or (ngroups > 1 and offset_arr[1] != 0)
    cdef int32_t corr_stack[2 * 512]
    cdef int32_t *corr = corr_stack
    if need_corr and Np > 512:
        corr = <int32_t *>malloc(2 * Np * sizeof(int32_t))
        if corr == NULL:
            raise MemoryError()
    try:
        with nogil:
            for c in range(nchunks):
                k0 = c * kchunk
                k1 = min(Kp, k0 + kchunk)
                if scaled:                      # modes 0 and 3, rescaled in the store
                    mode = 4 if single else 5
                else:
                    mode = 0 if single else (3 if narrow32 else (2 if c == 0 else 1))
                for g in range(ngroups):
                    corr_ptr[g] = NULL
                    if offset_arr[g] != 0:
                        if _correction(sums_ptr[g], b_ptr[g], Kp, Np, k0, k1, offset_arr[g], corr + g * Np):
                            bad = True
                            break
                        corr_ptr[g] = corr + g * Np
                if bad:
                    break
                rc = q4_gemm_groups(kernel, ngroups, a_ptr, lda, M, Mp, b_ptr, Kp, N, Np, k0, k1,
                                    corr_ptr, shift_arr, mode, out_ptr, N, nthreads, max_product, factor, exact)
                if rc != 0:
                    break
    finally:
        if corr != corr_stack:
            free(corr)
    if bad:
        raise ValueError("internal error: zero-point correction exceeds int32; K chunk too long")
    if rc == -1:
        raise RuntimeError(f"kernel {KERNELS[kernel]!r} is not usable on this CPU/OS")
    if rc == -2:
        raise MemoryError("q4core GEMM could not allocate its per-thread scratch tile")
    if rc == -3:
        raise ValueError(f"internal error: product bound {max_product} too large for the AVX2 kernel")
    if rc == -4:
        raise ValueError("internal error: operand padding does not fit the kernel's blocking")
    return result
