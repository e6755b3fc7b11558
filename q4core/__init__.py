"""q4core: exact, fast 4-bit arithmetic and the notebooks of 4-bit training (Sun et al., NeurIPS 2020)."""
__version__ = "0.1.0"

from .formats import (  # noqa: F401
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
