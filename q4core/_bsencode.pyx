# cython: boundscheck=False, wraparound=False, cdivision=True, language_level=3
"""Compiled loops of the block-scaled FP4 encoder (:mod:`q4core.blockscaled_encode`): block maxima and E2M1 codes.

Private: :mod:`q4core.blockscaled_encode` calls it on arrays it has checked; the functions still check shapes and
contiguity, so a wrong call raises instead of reading out of bounds.  Single-threaded; every element's code depends
only on that element, its block scale and its uniform draw.  The arithmetic is the numpy encoder's, operation for
operation in IEEE double (division, a power-of-two multiply, rint or floor): the tests compare the codes bit for bit.
"""
import numpy as np
cimport numpy as cnp
from cython cimport floating
from libc.math cimport fabs, floor, frexp, ldexp, rint, signbit
from libc.stdint cimport uint8_t

cnp.import_array()


def block_amax(const floating[:, ::1] x, Py_ssize_t br, Py_ssize_t bc):
    """max |x| of every (br, bc) tile of the 2-D ``x`` (the last tiles shorter), float64 (nbr, nbc)."""
    cdef Py_ssize_t m = x.shape[0], k = x.shape[1], i, j
    if br < 1 or bc < 1:
        raise ValueError("block sides must be positive")
    out_arr = np.zeros(((m + br - 1) // br, (k + bc - 1) // bc))
    cdef double[:, ::1] out = out_arr
    cdef double a, top
    cdef Py_ssize_t jb, j0, j1, nbc = out.shape[1]
    with nogil:
        for i in range(m):
            for jb in range(nbc):
                j0 = jb * bc
                j1 = j0 + bc if j0 + bc < k else k
                top = out[i // br, jb]
                for j in range(j0, j1):
                    a = fabs(<double>x[i, j])
                    if a > top or a != a:               # a NaN stays (a > NaN is false), as numpy's max
                        top = a
                out[i // br, jb] = top
    return out_arr


def e2m1_codes(const floating[:, ::1] x, const double[:, ::1] scale, Py_ssize_t br, Py_ssize_t bc, u=None):
    """E2M1 codes (uint8, sign in bit 3) of ``y = x / scale[tile]`` (+0 where the tile's scale is not positive):
    nearest (ties to even) without ``u``, else ``floor(|y| / quantum + u)`` with ``u`` float64 of x's shape."""
    cdef Py_ssize_t m = x.shape[0], k = x.shape[1], i, j
    if br < 1 or bc < 1:
        raise ValueError("block sides must be positive")
    if scale.shape[0] != (m + br - 1) // br or scale.shape[1] != (k + bc - 1) // bc:
        raise ValueError(f"scale has shape {(scale.shape[0], scale.shape[1])}, the tiles of x are "
                         f"{((m + br - 1) // br, (k + bc - 1) // bc)}")
    cdef const double[:, ::1] uu
    cdef bint stochastic = u is not None
    if stochastic:
        uu = u
        if uu.shape[0] != m or uu.shape[1] != k:
            raise ValueError("u must have the shape of x")
    out_arr = np.empty((m, k), np.uint8)
    cdef uint8_t[:, ::1] out = out_arr
    cdef double s, y, a, inv, units
    cdef int code
    cdef Py_ssize_t jb, j0, j1, nbc = scale.shape[1]
    with nogil:
        for i in range(m):
            for jb in range(nbc):
                s = scale[i // br, jb]
                j0 = jb * bc
                j1 = j0 + bc if j0 + bc < k else k
                for j in range(j0, j1):
                    y = <double>x[i, j] / s if s > 0 else 0.0
                    a = fabs(y)
                    if a >= 4.0:
                        inv = 0.5
                        code = 4
                    elif a >= 2.0:
                        inv = 1.0
                        code = 2
                    else:
                        inv = 2.0
                        code = 0
                    units = a * inv                     # exact: a power-of-two scaling
                    if stochastic:
                        units = floor(units + uu[i, j])
                    else:
                        units = rint(units)
                    if units > 7.0:
                        units = 7.0
                    code = code + <int>units
                    if code > 7:
                        code = 7
                    out[i, j] = <uint8_t>(code | (8 if signbit(y) else 0))
    return out_arr


def e4m3_block_scales(const double[:, ::1] amax, double tensor_scale):
    """NVFP4's block scales from the block maxima: ``codes = FP8_E4M3.encode(amax / 6 * tensor_scale)`` (E4M3FN,
    round half to even, saturating at 448; the values are non-negative) and ``values = decode(codes) /
    tensor_scale`` (float64), the reference's arithmetic: frexp's exponent, a power-of-two scaling, rint."""
    cdef Py_ssize_t r = amax.shape[0], c = amax.shape[1], i, j
    codes_arr = np.empty((r, c), np.uint8)
    values_arr = np.empty((r, c))
    cdef uint8_t[:, ::1] codes = codes_arr
    cdef double[:, ::1] values = values_arr
    cdef double v, q
    cdef int ex, e, man, field
    with nogil:
        for i in range(r):
            for j in range(c):
                v = amax[i, j] / 6.0 * tensor_scale
                frexp(v, &ex)                       # v = m * 2**ex, m in [0.5, 1)
                e = ex - 1 if ex - 1 > -6 else -6       # E4M3's exponent, at least emin = -6
                q = ldexp(rint(ldexp(v, -(e - 3))), e - 3)
                if q > 448.0:
                    q = 448.0
                frexp(q, &ex)
                e = ex - 1 if ex - 1 > -6 else -6
                man = <int>ldexp(q, -(e - 3))           # 8 + mantissa (normal) or the mantissa (subnormal)
                if q >= 0.015625:                       # 2**-6: normal
                    field = e + 7
                    man = man - 8
                else:
                    field = 0
                codes[i, j] = <uint8_t>((field << 3) | man)
                values[i, j] = q / tensor_scale
    return codes_arr, values_arr
