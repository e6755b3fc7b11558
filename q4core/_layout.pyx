# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled im2col, col2im and the channel-layout copies of a convolution (see :mod:`q4core.nn.layout`).

Private: call it through :mod:`q4core.nn.layout`, whose numpy functions are the reference these kernels equal
bit for bit.  The functions here still check what they rely on (dtype, contiguity, sizes), so a wrong call
raises instead of reading or writing out of bounds.

Why the results are the reference's bits:

* im2col and the layout copies only move values (im2col writes zeros for the padding); a layout copy with a
  bias adds it as one float32 addition per element, as numpy's ``y + bias``;
* col2im sums float32 values into each pixel in the reference's order: the reference adds the (i, j) kernel
  offsets one after another, i-major, each as one float32 ``+=`` on a zeroed image, and so does
  q4_col2im_image (layout_kernels.h), per image, on planes of the transposed patch rows - the same float32
  additions in the same order, no FMA, no reassociation (the build has no -ffast-math).

Work is split over the images by an OpenMP ``prange``; each image's output depends on that image alone, so
every thread count gives the same bytes.
"""
import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange, threadid
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

cnp.import_array()

cdef extern from "layout_kernels.h" nogil:
    void q4_transpose_f32(const float *a, float *out, int64_t rows, int64_t cols, const float *bias)
    void q4_transpose_u8(const uint8_t *a, uint8_t *out, int64_t rows, int64_t cols, int64_t r0, int64_t r1)
    void q4_col2im_image(const float *cols, float *out, float *pad, float *colsT, int64_t C, int64_t H,
                         int64_t W, int64_t kh, int64_t kw, int64_t stride, int64_t padding, int64_t Ho,
                         int64_t Wo)


cdef bint _carray(cnp.ndarray a):
    return cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISALIGNED(a) and not cnp.PyArray_ISBYTESWAPPED(a)


cdef int _check_f32(cnp.ndarray a, str name) except -1:
    if cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT or cnp.PyArray_ISBYTESWAPPED(a):
        raise TypeError(f"{name} must be native float32, got {a.dtype}")
    if not _carray(a):
        raise ValueError(f"{name} must be aligned and C-contiguous")
    return 0


cdef int _check_geometry(int64_t kh, int64_t kw, int64_t stride, int64_t padding) except -1:
    if kh < 1 or kw < 1 or stride < 1 or padding < 0:
        raise ValueError(f"kernel {kh}x{kw}, stride {stride} and padding {padding} must be positive "
                         "(padding non-negative)")
    return 0


cdef inline int64_t _out_size(int64_t size, int64_t k, int64_t stride, int64_t padding):
    return (size + 2 * padding - k) // stride + 1


def im2col(cnp.ndarray x not None, int64_t kh, int64_t kw, int64_t stride, int64_t padding, int threads):
    """(N, C, H, W) C-contiguous array of 1-, 4- or 8-byte items -> ``(cols (N*Ho*Wo, C*kh*kw), Ho, Wo)`` of
    its dtype, rows (n, ho, wo), columns (c, i, j); positions in the zero padding get zero bytes."""
    if cnp.PyArray_NDIM(x) != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {(<object>x).shape}")
    if not _carray(x):
        raise ValueError("x must be aligned, native and C-contiguous")
    cdef int item = cnp.PyArray_ITEMSIZE(x)
    if item not in (1, 4, 8) or cnp.PyArray_TYPE(x) == cnp.NPY_OBJECT:
        raise TypeError(f"x must have 1-, 4- or 8-byte numeric items, got {x.dtype}")
    _check_geometry(kh, kw, stride, padding)
    cdef int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    if H + 2 * padding < kh or W + 2 * padding < kw:
        raise ValueError(f"input {(H, W)} with padding {padding} is smaller than the kernel {(kh, kw)}")
    cdef int64_t Ho = _out_size(H, kh, stride, padding), Wo = _out_size(W, kw, stride, padding)
    cdef int64_t CK = C * kh * kw
    cdef cnp.ndarray out = np.empty((N * Ho * Wo, CK), dtype=x.dtype)
    cdef const char *xp = <const char *>cnp.PyArray_DATA(x)
    cdef char *op = <char *>cnp.PyArray_DATA(out)
    cdef int64_t n, P = C * (H + 2 * padding) * (W + 2 * padding) if padding else 0
    if N == 0 or CK == 0 or Ho * Wo == 0:
        return out, Ho, Wo
    cdef cnp.ndarray scratch = np.zeros((N, P), dtype=x.dtype)   # each image's zero-padded copy
    cdef char *sp = <char *>cnp.PyArray_DATA(scratch)
    with nogil:
        for n in prange(N, num_threads=max(threads, 1), schedule="static"):
            if item == 1:
                _im2col_image[uint8_t](<const uint8_t *>xp + n * C * H * W, <uint8_t *>op + n * Ho * Wo * CK,
                                       <uint8_t *>sp + n * P, C, H, W, kh, kw, stride, padding, Ho, Wo)
            elif item == 4:
                _im2col_image[uint32_t](<const uint32_t *>xp + n * C * H * W, <uint32_t *>op + n * Ho * Wo * CK,
                                        <uint32_t *>sp + n * P, C, H, W, kh, kw, stride, padding, Ho, Wo)
            else:
                _im2col_image[uint64_t](<const uint64_t *>xp + n * C * H * W, <uint64_t *>op + n * Ho * Wo * CK,
                                        <uint64_t *>sp + n * P, C, H, W, kh, kw, stride, padding, Ho, Wo)
    return out, Ho, Wo


ctypedef fused item_t:
    uint8_t
    uint32_t
    uint64_t


cdef void _im2col_image(const item_t *x, item_t *out, item_t *pad, int64_t C, int64_t H, int64_t W, int64_t kh,
                        int64_t kw, int64_t stride, int64_t padding, int64_t Ho, int64_t Wo) noexcept nogil:
    """One image's patch rows (values moved as raw items: bit patterns are kept, zero bytes pad).  With padding
    the image is first copied into ``pad``, its zeroed (C, H + 2 padding, W + 2 padding) scratch, so the copy
    loop has no bounds tests."""
    cdef int64_t Hp = H + 2 * padding, Wp = W + 2 * padding, ho, wo, c, i, j, y
    cdef const item_t *src
    cdef const item_t *xp = x
    cdef item_t *row = out
    if padding:
        for c in range(C):
            for y in range(H):
                memcpy(pad + (c * Hp + y + padding) * Wp + padding, x + (c * H + y) * W, W * sizeof(item_t))
        xp = pad
    for ho in range(Ho):
        for wo in range(Wo):
            for c in range(C):
                src = xp + (c * Hp + ho * stride) * Wp + wo * stride
                if kw == 3:
                    for i in range(kh):
                        row[0] = src[0]
                        row[1] = src[1]
                        row[2] = src[2]
                        row += 3
                        src += Wp
                else:
                    for i in range(kh):
                        for j in range(kw):
                            row[j] = src[j]
                        row += kw
                        src += Wp


def col2im(cnp.ndarray cols not None, int64_t N, int64_t C, int64_t H, int64_t W, int64_t kh, int64_t kw,
           int64_t stride, int64_t padding, int threads):
    """The adjoint of :func:`im2col` for float32 patch gradients (N*Ho*Wo, C*kh*kw) -> (N, C, H, W) float32,
    each pixel's sum formed in the reference's order (see the module docstring)."""
    _check_f32(cols, "cols")
    _check_geometry(kh, kw, stride, padding)
    if N < 0 or C < 0 or H < 0 or W < 0 or H + 2 * padding < kh or W + 2 * padding < kw:
        raise ValueError(f"shape {(N, C, H, W)} with padding {padding} does not fit the kernel {(kh, kw)}")
    cdef int64_t Ho = _out_size(H, kh, stride, padding), Wo = _out_size(W, kw, stride, padding)
    cdef int64_t CK = C * kh * kw
    if cnp.PyArray_NDIM(cols) != 2 or cols.shape[0] != N * Ho * Wo or cols.shape[1] != CK:
        raise ValueError(f"cols must have shape {(N * Ho * Wo, CK)}, got {(<object>cols).shape}")
    cdef cnp.ndarray out = np.empty((N, C, H, W), dtype=np.float32)
    cdef const float *cp = <const float *>cnp.PyArray_DATA(cols)
    cdef float *op = <float *>cnp.PyArray_DATA(out)
    cdef int64_t n, P = C * (H + 2 * padding) * (W + 2 * padding) if padding else 0
    if out.size == 0:
        return out
    cdef int team = max(1, min(threads, N))
    # per thread: the padded image and the transposed patch rows of the image it works on
    cdef cnp.ndarray pads = np.empty((team, max(P, 1)), dtype=np.float32)
    cdef cnp.ndarray trans = np.empty((team, max(Ho * Wo * CK, 1)), dtype=np.float32)
    cdef float *pp = <float *>cnp.PyArray_DATA(pads)
    cdef float *tp = <float *>cnp.PyArray_DATA(trans)
    cdef int64_t pstride = max(P, 1), tstride = max(Ho * Wo * CK, 1)
    cdef int tid
    with nogil:
        if team == 1:
            for n in range(N):
                q4_col2im_image(cp + n * Ho * Wo * CK, op + n * C * H * W, pp, tp, C, H, W, kh, kw, stride,
                                padding, Ho, Wo)
        else:
            for n in prange(N, num_threads=team, schedule="static"):
                tid = threadid()
                q4_col2im_image(cp + n * Ho * Wo * CK, op + n * C * H * W, pp + tid * pstride,
                                tp + tid * tstride, C, H, W, kh, kw, stride, padding, Ho, Wo)
    return out


cdef void _transpose_images(cnp.ndarray src, cnp.ndarray out, int64_t N, int64_t rows, int64_t cols,
                            const float *bias, int threads):
    """Each of the N (rows, cols) float32 images of ``src`` transposed into ``out`` [+ bias[col]], the images
    split over the threads."""
    cdef const float *sp = <const float *>cnp.PyArray_DATA(src)
    cdef float *op = <float *>cnp.PyArray_DATA(out)
    cdef int64_t n, size = rows * cols
    if N * size == 0:
        return
    with nogil:
        for n in prange(N, num_threads=max(threads, 1), schedule="static"):
            q4_transpose_f32(sp + n * size, op + n * size, rows, cols, bias)


def channels_first(cnp.ndarray y not None, int64_t N, int64_t Ho, int64_t Wo, object bias, int threads):
    """float32 ``y`` (N*Ho*Wo, O) [+ float32 ``bias`` (O,)] as a C-contiguous (N, O, Ho, Wo) float32 array
    (see layout_kernels.h: moves, and one float32 addition per element with a bias)."""
    _check_f32(y, "y")
    if cnp.PyArray_NDIM(y) != 2 or N < 0 or Ho < 0 or Wo < 0 or y.shape[0] != N * Ho * Wo:
        raise ValueError(f"y must be 2-D with N*Ho*Wo = {N * Ho * Wo} rows, got shape {(<object>y).shape}")
    cdef int64_t O = y.shape[1], HW = Ho * Wo
    cdef cnp.ndarray b = None
    if bias is not None:
        b = <cnp.ndarray?>bias
        _check_f32(b, "bias")
        if cnp.PyArray_NDIM(b) != 1 or b.shape[0] != O:
            raise ValueError(f"bias must have shape {(O,)}, got {(<object>b).shape}")
    cdef cnp.ndarray out = np.empty((N, O, Ho, Wo), dtype=np.float32)
    _transpose_images(y, out, N, HW, O, NULL if b is None else <const float *>cnp.PyArray_DATA(b), threads)
    return out


def channels_last(cnp.ndarray g not None, int threads):
    """C-contiguous float32 ``g`` (N, O, Ho, Wo) as a C-contiguous (N*Ho*Wo, O) float32 array."""
    _check_f32(g, "g")
    if cnp.PyArray_NDIM(g) != 4:
        raise ValueError(f"g must be 4-D (N, O, Ho, Wo), got shape {(<object>g).shape}")
    cdef int64_t N = g.shape[0], O = g.shape[1], HW = g.shape[2] * g.shape[3]
    cdef cnp.ndarray out = np.empty((N * HW, O), dtype=np.float32)
    _transpose_images(g, out, N, O, HW, NULL, threads)
    return out


def transpose(cnp.ndarray a not None, int threads):
    """A C-contiguous 2-D array of 1- or 4-byte items transposed into a new C-contiguous array (the values'
    bits moved, nothing computed)."""
    if cnp.PyArray_NDIM(a) != 2 or not _carray(a):
        raise ValueError("a must be 2-D, aligned, native and C-contiguous")
    cdef int item = cnp.PyArray_ITEMSIZE(a)
    if item not in (1, 4) or cnp.PyArray_TYPE(a) == cnp.NPY_OBJECT:
        raise TypeError(f"a must have 1- or 4-byte numeric items, got {a.dtype}")
    cdef int64_t rows = a.shape[0], cols = a.shape[1], blocks = (rows + 255) // 256, b
    cdef cnp.ndarray out = np.empty((cols, rows), dtype=a.dtype)
    if out.size == 0:
        return out
    cdef const char *ap = <const char *>cnp.PyArray_DATA(a)
    cdef char *op = <char *>cnp.PyArray_DATA(out)
    with nogil:
        if item == 4:
            q4_transpose_f32(<const float *>ap, <float *>op, rows, cols, NULL)   # moves of 32-bit patterns
        elif threads <= 1 or blocks == 1:
            q4_transpose_u8(<const uint8_t *>ap, <uint8_t *>op, rows, cols, 0, rows)
        else:
            for b in prange(blocks, num_threads=threads, schedule="static"):
                q4_transpose_u8(<const uint8_t *>ap, <uint8_t *>op, rows, cols, b * 256, min(rows, b * 256 + 256))
    return out
