# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled block-scaled FP4 GEMM (private; use :mod:`q4core.bsgemm`, which validates everything first).

The C driver is ``q4core/src/bsgemm_kernels.h``; the operands are packed with the INT4 GEMM's
``prep_a`` / ``pack_b`` (q4core._gemm) into the layout its tile kernels read.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport uint8_t, int8_t, int32_t, int64_t

from q4core import _gemm

cnp.import_array()

cdef extern from "bsgemm_kernels.h" nogil:
    int Q4_BS_OFFSET, Q4_KALIGN, Q4_PANEL, Q4_NKERNELS
    int64_t q4_round_up(int64_t n, int64_t m)
    int q4_bsgemm(int kernel, const uint8_t *A, int64_t lda, int64_t M, int64_t Mp,
                  const int8_t *B, int64_t Kp, int64_t N, int64_t Np, int64_t K, int blk,
                  const int32_t *corr, const double *sa, const double *sb, double denom,
                  double *out, int64_t ldo, int nthreads)

#: added to A's 2x-elements to make them unsigned for vpdpbusd / tdpbusd
OFFSET = Q4_BS_OFFSET
#: the byte -> element table of int8 operands: each byte is its own value
INT8_VALUES = np.arange(256).astype(np.uint8).view(np.int8)


def _tables(values):
    """prep_a's / pack_b's byte tables for operand bytes whose element values are ``values`` (int8, 256):
    A gets value + OFFSET (unsigned), B the value itself."""
    a_table = ((values.astype(np.int32) + Q4_BS_OFFSET) % 256).astype(np.uint8)[None, :]
    return a_table, np.ascontiguousarray(values, np.int8)[None, :]


def operands(a_src, b_src, sa, sb, int blk, int row_multiple, int nthreads=0, values=INT8_VALUES):
    """The driver's operands (bsgemm_kernels.h): (A buffer uint8 (Mp, lda), packed B int8 (Kp * Np,), Kp, Np,
    offset correction int32 (nkb, Np), A's block scales / 4 float64 (Mp, nkb), B's (nkb, Np), both zero-padded).

    ``a_src`` (M, K) / ``b_src`` (K, N) are bytes whose element values (2x, in [-12, 12]) are ``values[byte]``:
    int8 elements themselves (the default table) or E2M1 codes, which the packing maps in the same pass."""
    cdef Py_ssize_t K = a_src.shape[1], N = b_src.shape[1]
    cdef Py_ssize_t nkb = (K + blk - 1) // blk
    cdef Py_ssize_t Kp = q4_round_up(max(K, 1), Q4_KALIGN)
    a_table, b_table = _tables(values)
    # K padded to K_ALIGN (64), as q4_bsgemm requires: its kernels multiply whole blocks of blk (16 or 32) k,
    # so the last block must lie inside Kp (a multiple of 4 would not do: K = 20 has two 16-k blocks)
    packs, Kp_b, Np, _, _ = _gemm.pack_b(b_src.view(np.uint8), b_table, nthreads, Q4_KALIGN)
    a_bufs, _ = _gemm.prep_a(a_src.view(np.uint8), a_table, Kp, row_multiple, nthreads, want_seen=False)
    if Kp_b != Kp:
        raise ValueError("internal error: packed K differs between the operands")
    # the offset's correction per K-block and column: OFFSET * the block's column sums of B
    corr = np.zeros((nkb, Np), np.int32)
    if K and N:
        b_int = b_src if values is INT8_VALUES else np.take(values, b_src.view(np.uint8))
        # whole blocks with a zero-padded last one, summed as a reshape (np.add.reduceat took 24 ms at 1024^2)
        full = b_int if K % blk == 0 else np.concatenate([b_int, np.zeros((nkb * blk - K, N), np.int8)])
        corr[:, :N] = full.reshape(nkb, blk, N).sum(axis=1, dtype=np.int32) * Q4_BS_OFFSET
    sb_p = np.zeros((nkb, Np), np.float64)
    sb_p[:, :N] = sb
    sa_p = np.zeros((a_bufs.shape[1], nkb), np.float64)
    sa_p[:a_src.shape[0]] = sa * 0.25     # exact for the scales q4core.bsgemm admits (bsgemm_kernels.h)
    return a_bufs[0], packs[0], Kp, Np, corr, sa_p, sb_p


def bsgemm(a_src, b_src, sa, sb, int blk, double denom, int kernel, int nthreads, values=INT8_VALUES):
    """``C[i, j] = (sum_kb P_kb[i, j] * ((sa[i, kb] * sb[kb, j]) * 0.25)) / denom`` (bsgemm_kernels.h).

    ``a_src`` (M, K) and ``b_src`` (K, N) bytes of elements ``values[byte]`` in [-12, 12] (see :func:`operands`);
    ``sa`` (M, nkb), ``sb`` (nkb, N) float64 with
    nkb = ceil(K / blk); blk 16 or 32.  The caller has checked all of that (q4core.bsgemm)."""
    cdef Py_ssize_t M = a_src.shape[0], K = a_src.shape[1], N = b_src.shape[1]
    cdef Py_ssize_t nkb = (K + blk - 1) // blk
    if kernel < 0 or kernel >= Q4_NKERNELS:
        raise ValueError(f"unknown kernel id {kernel}")
    out = np.empty((M, N), np.float64)
    if M == 0 or N == 0:
        return out
    if K == 0:
        out[...] = 0.0 / denom
        return out
    a_buf, packed, Kp, Np, corr, sa_c, sb_p = operands(a_src, b_src, sa, sb, blk, _gemm.ROW_MULTIPLES[kernel],
                                                        nthreads, values)
    cdef const uint8_t[:, ::1] av = a_buf
    cdef const int8_t[::1] bv = packed
    cdef const int32_t[:, ::1] cv = corr
    cdef const double[:, ::1] sav = sa_c
    cdef const double[:, ::1] sbv = sb_p
    cdef double[:, ::1] ov = out
    cdef Py_ssize_t Kp_c = Kp, Np_c = Np
    cdef Py_ssize_t Mp = av.shape[0], lda = av.shape[1]
    cdef int rc
    with nogil:
        rc = q4_bsgemm(kernel, &av[0, 0], lda, M, Mp, &bv[0], Kp_c, N, Np_c, K, blk, &cv[0, 0],
                       &sav[0, 0], &sbv[0, 0], denom, &ov[0, 0], N, nthreads)
    if rc == -1:
        raise RuntimeError(f"kernel {_gemm.KERNELS[kernel]!r} is not usable on this CPU/OS")
    if rc == -2:
        raise MemoryError("q4core block-scaled GEMM could not allocate its per-thread scratch tiles")
    if rc == -4:
        raise ValueError("internal error: block length or operand padding does not fit the kernel")
    return out
