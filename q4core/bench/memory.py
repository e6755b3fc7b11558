"""Bytes per stored value, per parameter and per activation, counted on real arrays.

* :func:`memory_per_value` - bytes per stored value of each number format (:data:`STORAGE`), counted on the
  arrays the library really produces (the packed 4-bit arrays of :func:`q4core.quant.encode_packed`, the GEMM
  operand of :func:`q4core.gemm.pack_int4`), next to the nominal ``bits / 8``.
* :func:`memory_per_parameter` and :func:`memory_per_activation` - what one parameter and one activation cost
  during training under fp32, fp16 (mixed precision), HFP8 and the 4-bit recipe.
"""
from __future__ import annotations

import numpy as np

from .. import formats
from ..efficiency import bytes_per_value
from ._timing import positive_ints

__all__ = ["STORAGE", "PARAMETER_RECIPES", "ACTIVATION_RECIPES", "memory_per_value", "memory_per_parameter",
           "memory_per_activation"]


def _sample(shape, seed, nonnegative=False):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return np.abs(x) if nonnegative else x


def _stored(kind, x):
    """The array a format really stores for float32 ``x`` (scales chosen so nothing saturates much)."""
    from .. import quant
    amax = float(np.abs(x).max()) or 1.0
    if kind == "fp32":
        return np.ascontiguousarray(x, dtype=np.float32)
    if kind == "fp16":
        return formats.FP16.encode(x)
    if kind == "fp8_e4m3":
        return formats.FP8_E4M3.encode(x, amax / formats.FP8_E4M3.max)
    if kind == "fp8_e5m2":
        return formats.FP8_E5M2.encode(x, amax / formats.FP8_E5M2.max)
    if kind == "int4":
        return quant.encode_packed(formats.INT4, x, amax / 7.0)
    if kind == "uint4":
        return quant.encode_packed(formats.UINT4, np.abs(x), amax / 15.0)
    if kind == "fp4":
        return quant.encode_packed(formats.RADIX4_FP4, x, amax)
    if kind == "int4_gemm_operand":
        from .. import gemm
        packed = gemm.pack_int4(formats.INT4.encode(x, amax / 7.0))
        layout = gemm._kernel_operand(packed)   # (kernel bytes, Kp, Np, column sums) - what the kernels read
        return np.concatenate([layout[0].view(np.uint8).ravel(), layout[3].view(np.uint8).ravel()])
    raise ValueError(f"unknown storage kind {kind!r}")


#: storage kinds: key -> (label, bits of the format, role in the 4-bit recipe)
STORAGE = {
    "fp32": ("FP32", 32, "master weights; fp32 training"),
    "fp16": ("FP16", formats.FP16.bits, "16-bit training"),
    "fp8_e4m3": ("FP8 1-4-3", formats.FP8_E4M3.bits, "HFP8 forward"),
    "fp8_e5m2": ("FP8 1-5-2", formats.FP8_E5M2.bits, "HFP8 backward"),
    "int4": ("INT4 packed", formats.INT4.bits, "weights (SAWB)"),
    "uint4": ("UINT4 packed", formats.UINT4.bits, "activations (PACT)"),
    "fp4": ("radix-4 FP4 packed", formats.RADIX4_FP4.bits, "gradients"),
    "int4_gemm_operand": ("INT4 GEMM operand", formats.INT4.bits, "weights as our kernels read them"),
}


def memory_per_value(shape=(256, 255), seed=0, kinds=None):
    """Bytes per value of each storage kind, counted on a real array of ``shape`` (float32 normal samples).

    Each row: ``{"kind", "label", "role", "bits", "nominal_bytes" (bits / 8), "nbytes" (of the stored
    array), "values", "bytes_per_value" (nbytes / values)}``.  An odd last axis shows the packing's
    padding (one spare nibble per row); ``int4_gemm_operand`` is the kernel layout of
    :func:`q4core.gemm.pack_int4` (one int8 lane per value, K padded to 4, N to 16, plus int64 column
    sums), i.e. what the integer SIMD kernels actually stream.
    """
    shape = tuple(positive_ints(shape, "shape"))
    kinds = list(STORAGE) if kinds is None else list(kinds)
    x = _sample(shape, seed)
    rows = []
    for kind in kinds:
        if kind not in STORAGE:
            raise ValueError(f"kind must be one of {list(STORAGE)}, got {kind!r}")
        label, bits, role = STORAGE[kind]
        if kind == "int4_gemm_operand" and len(shape) != 2:
            raise ValueError(f"int4_gemm_operand needs a 2-D shape, got {shape}")
        arr = _stored(kind, x)
        rows.append({"kind": kind, "label": label, "role": role, "bits": bits,
                     "nominal_bytes": bytes_per_value(bits), "nbytes": int(arr.nbytes), "values": int(x.size),
                     "bytes_per_value": arr.nbytes / x.size})
    return rows


#: what each training recipe keeps per parameter: (component, storage kind)
PARAMETER_RECIPES = {
    "fp32": (("weights", "fp32"), ("weight gradient", "fp32")),
    "fp16 (mixed precision)": (("FP32 master weights", "fp32"), ("FP16 GEMM copy", "fp16"),
                               ("weight gradient", "fp16")),
    "HFP8": (("FP32 master weights", "fp32"), ("FP8 1-4-3 GEMM copy", "fp8_e4m3"),
             ("weight gradient (FP16)", "fp16")),
    "q4 (paper)": (("FP32 master weights", "fp32"), ("INT4 packed GEMM copy", "int4"),
                   ("weight gradient (FP16 accumulated)", "fp16")),
}
#: what each recipe keeps per activation element between forward and backward, and its output gradient
ACTIVATION_RECIPES = {
    "fp32": (("saved activation", "fp32"), ("output gradient", "fp32")),
    "fp16 (mixed precision)": (("saved activation", "fp16"), ("output gradient", "fp16")),
    "HFP8": (("saved activation", "fp8_e4m3"), ("output gradient", "fp8_e5m2")),
    "q4 (paper)": (("saved activation (UINT4 packed)", "uint4"),
                   ("output gradient, even grid (FP4)", "fp4"), ("output gradient, odd grid (FP4, TPR)", "fp4")),
}


def _recipe_bytes(recipes, shape, seed):
    per_kind = {r["kind"]: r for r in memory_per_value(shape, seed, kinds=sorted(
        {kind for parts in recipes.values() for _, kind in parts}))}
    rows = []
    for name, parts in recipes.items():
        comps = [{"component": c, "kind": kind, "bytes_per_value": per_kind[kind]["bytes_per_value"],
                  "nominal_bytes": per_kind[kind]["nominal_bytes"]} for c, kind in parts]
        rows.append({"recipe": name, "components": comps,
                     "bytes": sum(c["bytes_per_value"] for c in comps),
                     "nominal_bytes": sum(c["nominal_bytes"] for c in comps)})
    return rows


def memory_per_parameter(shape=(256, 256), seed=0):
    """Bytes one parameter costs during training under each recipe (:data:`PARAMETER_RECIPES`).

    Optimizer state (e.g. momentum, FP32 in every recipe) is left out: it is the same for all.  Each
    component's bytes are counted on a real array of ``shape`` (see :func:`memory_per_value`).
    """
    return _recipe_bytes(PARAMETER_RECIPES, shape, seed)


def memory_per_activation(shape=(256, 256), seed=0):
    """Bytes one activation element costs between forward and backward (:data:`ACTIVATION_RECIPES`).

    The 4-bit recipe keeps the activation packed as UINT4 and, with two-phase rounding, the output gradient
    twice (once on each radix-4 grid) while the two backward GEMMs run.
    """
    return _recipe_bytes(ACTIVATION_RECIPES, shape, seed)
