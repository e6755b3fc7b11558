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
