"""q4core: exact, fast 4-bit arithmetic and the notebooks of 4-bit training (Sun et al., NeurIPS 2020)."""
__version__ = "0.1.0"

import os as _os

# OpenMP threads of the compiled core sleep, rather than spin, while they wait (unless the user chose
# otherwise).  libgomp reads this once, when the first extension that links it loads, so it is set
# before any import below.  Why: on a machine whose cores other processes also use, a spinning thread
# can hold the core its partner was queued on; two-thread GEMMs then ran 0.01-0.6x the speed of one
# thread (2048^3 and 512^3, load average 2 on 2 cores), and with sleeping threads 0.9-1.2x; on idle
# cores two threads still reach 1.8x.  No result depends on it.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The same for numpy's OpenBLAS, whose idle workers spin for about 2^28 cycles (~0.1 s) after each float
# GEMM and so take the core our next 4-bit GEMM's second thread needs: a two-thread INT4 2048^3 GEMM right
# after a numpy matmul took 43-46 ms instead of 22-23 ms (AMD EPYC Zen 4, 2 cores; several runs).  4 (2^4
# cycles, OpenBLAS's minimum) lets them sleep at once; numpy's own float32 GEMMs of 64-2048 ran at the
# same speed either way.  OpenBLAS reads it when numpy loads, so it only acts where q4core is imported before
# numpy (the bench; the kernels and workers q4-reproduce starts inherit it).  No result depends on it.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .formats import (  # noqa: F401, E402
    E2M1,
    FP8_E4M3,
    FP8_E5M2,
    FP16,
    INT4,
    INT8,
    LOG10_4BIT,
    RADIX2_FP4,
    RADIX4_FP4,
    RADIX4_FP4_ODD,
    UINT4,
    IntFormat,
    MiniFloat,
    RadixFP,
    image_to_levels,
    levels_to_image,
    pack_nibbles,
    unpack_nibbles,
)


def build_info():
    """How the compiled core was built: OpenMP on/off, thread count, SIMD clones (see ``q4core.quant``)."""
    from .quant import openmp_info
    return openmp_info()


def kernel_info():
    """CPU features detected, GEMM kernel paths available and chosen, OpenMP threads (see ``q4core.gemm``)."""
    from .gemm import kernel_info as _kernel_info
    return _kernel_info()
