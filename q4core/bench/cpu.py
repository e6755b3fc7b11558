"""What this CPU offers 4-bit arithmetic: the GEMM kernels it can run, and its vector/matrix units' MACs.

* :func:`cpu_summary` - CPU features found, kernel paths compiled and usable, the default, OpenMP.
* :func:`instruction_macs` - multiply-accumulates per instruction of today's x86 vector/matrix units, from the
  instruction definitions (what integer hardware can give over FP16 at most, per instruction).
"""
from __future__ import annotations

__all__ = ["cpu_summary", "instruction_macs", "INSTRUCTIONS"]


def cpu_summary():
    """What this machine offers the GEMM kernels: features found, kernels usable, the default, OpenMP."""
    from .. import build_info, kernel_info
    info = kernel_info()
    cpu = info["cpu"]
    return {
        "features": [k for k, v in cpu.items() if v is True],
        "missing": [k for k, v in cpu.items() if v is False],
        "compiled_kernels": list(cpu.get("compiled_kernels", [])),
        "available_kernels": info["available_kernels"],
        "chosen_kernel": info["chosen_kernel"],
        "openmp": info["openmp"], "threads": info["threads"],
        "build": build_info(),
        "kernel_info": info,
    }


#: multiply-accumulates one instruction performs, from the x86 instruction definitions
#: (Intel 64 and IA-32 Architectures Software Developer's Manual; AMX: Intel ISA extensions reference).
#: (instruction, unit, operand type, MACs per instruction, which CPUs have it)
INSTRUCTIONS = (
    ("vfmadd231ps zmm", "AVX-512", "FP32", 16, "avx512f"),
    ("vfmadd231ph zmm", "AVX-512 FP16", "FP16", 32, "avx512_fp16"),
    ("vdpbf16ps zmm", "AVX-512 BF16", "BF16", 32, "avx512_bf16"),
    ("vpdpbusd zmm", "AVX-512 VNNI", "INT8 (holds INT4)", 64, "avx512_vnni"),
    ("vpdpbusd ymm", "AVX-VNNI", "INT8 (holds INT4)", 32, "avx_vnni"),
    ("tdpbf16ps", "AMX", "BF16", 16 * 16 * 32, "amx_bf16"),
    ("tdpbssd", "AMX", "INT8 (holds INT4)", 16 * 16 * 64, "amx_int8"),
)


def instruction_macs(cpu_features=None):
    """MACs per instruction of today's x86 FP and integer vector/matrix units, and which this CPU has.

    No x86 unit multiplies 4-bit numbers natively: INT4 runs on the INT8 units, so per instruction integer
    hardware does at most twice the MACs of the same-width FP16/BF16 unit.  ``cpu_features``: the dict of
    :func:`q4core.kernel_info` ``["cpu"]`` (default: this machine's).  ``present`` is ``None`` for a
    feature q4core does not probe (unknown, not absent).
    """
    if cpu_features is None:
        from .. import kernel_info
        cpu_features = kernel_info()["cpu"]
    return [{"instruction": ins, "unit": unit, "type": typ, "macs": macs,
             "present": cpu_features.get(flag)} for ins, unit, typ, macs, flag in INSTRUCTIONS]
