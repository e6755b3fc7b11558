"""The data layout of the engine's GEMM operands: im2col, its adjoint col2im, the channel-layout copies of a
convolution's GEMM, and the transposed operands of the backward GEMMs.

A convolution runs as one GEMM of the (N*Ho*Wo, C*kh*kw) patch matrix with the (C*kh*kw, out) weight; its
result has channels last, rows (n, ho, wo), and the layers hold images channels first.  Each
function here has a numpy reference (``*_reference``) and a compiled twin (:mod:`q4core._layout`) that gives the
same bits (tested over random geometries and values); the public functions take the compiled path when
``compiled`` is true and the input suits it (C-contiguous; float32 for col2im and the layout copies; 1-, 4- or
8-byte numeric items for im2col), else the reference.  The layers pass
``compiled=False`` under ``recipe.simulate``, which stays the numpy reference path throughout.

Why they agree bit for bit: im2col and the layout copies move values only; col2im adds each pixel's terms in
the reference's order (see the :mod:`q4core._layout` docstring); a bias is one float32 addition per element.
"""
from __future__ import annotations

import numpy as np

try:
    from .. import _layout
except ImportError:  # pragma: no cover - only without a built extension
    _layout = None

__all__ = ["im2col2d", "col2im2d", "channels_first", "channels_last", "transposed", "im2col2d_reference",
           "col2im2d_reference", "channels_first_reference", "channels_last_reference", "AVAILABLE"]

#: whether the compiled kernels are built
AVAILABLE = _layout is not None


def _threads(threads):
    return 1 if threads is None else int(threads)


def im2col2d_reference(x, kh, kw, stride, padding):
    """(N, C, H, W) -> patches (N*Ho*Wo, C*kh*kw), rows ordered (n, ho, wo), columns (c, i, j)."""
    N, C, H, W = x.shape
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    Ho = (H + 2 * padding - kh) // stride + 1
    Wo = (W + 2 * padding - kw) // stride + 1
    cols = np.empty((N, Ho, Wo, C, kh, kw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, :, i, j] = x[:, :, i:i + stride * Ho:stride, j:j + stride * Wo:stride].transpose(0, 2, 3, 1)
    return cols.reshape(N * Ho * Wo, C * kh * kw), Ho, Wo


def col2im2d_reference(cols, shape, kh, kw, stride, padding, Ho, Wo):
    """Adjoint of :func:`im2col2d`: sum the patch gradients back into an (N, C, H, W) array."""
    N, C, H, W = shape
    g = np.zeros((N, C, H + 2 * padding, W + 2 * padding), dtype=cols.dtype)
    c6 = cols.reshape(N, Ho, Wo, C, kh, kw)
    for i in range(kh):
        for j in range(kw):
            g[:, :, i:i + stride * Ho:stride, j:j + stride * Wo:stride] += c6[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    if padding:
        g = g[:, :, padding:padding + H, padding:padding + W]
    return g


def channels_first_reference(y, N, Ho, Wo, bias=None):
    """The GEMM result ``y`` (N*Ho*Wo, O) [+ ``bias`` (O,)] as a C-contiguous (N, O, Ho, Wo) array."""
    if bias is not None:
        y = y + bias
    return np.ascontiguousarray(y.reshape(N, Ho, Wo, y.shape[1]).transpose(0, 3, 1, 2))


def channels_last_reference(g):
    """An (N, O, Ho, Wo) gradient as the C-contiguous (N*Ho*Wo, O) matrix of the GEMM's rows."""
    g = np.asarray(g)
    N, C, Ho, Wo = g.shape
    return np.ascontiguousarray(g.transpose(0, 2, 3, 1)).reshape(N * Ho * Wo, C)


def _compiled(a, compiled, dtypes=(np.float32,)):
    return (compiled and _layout is not None and isinstance(a, np.ndarray) and a.dtype.type in dtypes
            and a.flags.c_contiguous and a.flags.aligned and a.dtype.isnative)


_IM2COL_TYPES = (np.int8, np.uint8, np.float32, np.int32, np.float64, np.int64)


def im2col2d(x, kh, kw, stride, padding, compiled=True, threads=None):
    """:func:`im2col2d_reference` (compiled for C-contiguous int8/uint8/float32/int32/float64/int64 ``x``)."""
    if _compiled(x, compiled, _IM2COL_TYPES) and x.ndim == 4:
        return _layout.im2col(x, kh, kw, stride, padding, _threads(threads))
    return im2col2d_reference(x, kh, kw, stride, padding)


def col2im2d(cols, shape, kh, kw, stride, padding, Ho, Wo, compiled=True, threads=None):
    """:func:`col2im2d_reference` (compiled for C-contiguous float32 ``cols``)."""
    if _compiled(cols, compiled):
        N, C, H, W = shape
        return _layout.col2im(cols, N, C, H, W, kh, kw, stride, padding, _threads(threads))
    return col2im2d_reference(cols, shape, kh, kw, stride, padding, Ho, Wo)


def channels_first(y, N, Ho, Wo, bias=None, compiled=True, threads=None):
    """:func:`channels_first_reference` (compiled for C-contiguous float32 ``y`` and ``bias``)."""
    if _compiled(y, compiled) and y.ndim == 2 and (bias is None or _compiled(bias, compiled)):
        return _layout.channels_first(y, N, Ho, Wo, bias, _threads(threads))
    return channels_first_reference(y, N, Ho, Wo, bias)


def channels_last(g, compiled=True, threads=None):
    """:func:`channels_last_reference` (compiled for C-contiguous float32 ``g``)."""
    if _compiled(g, compiled) and g.ndim == 4:
        return _layout.channels_last(g, _threads(threads))
    return channels_last_reference(g)


def transposed(a, compiled=True, threads=None):
    """``np.ascontiguousarray(a.T)`` of a 2-D array (compiled for C-contiguous 1- and 4-byte items: the
    INT4 levels and FP4 codes of the backward GEMMs' operands)."""
    if _compiled(a, compiled, (np.int8, np.uint8, np.float32, np.int32, np.uint32)) and a.ndim == 2:
        return _layout.transpose(a, _threads(threads))
    return np.ascontiguousarray(a.T)
