"""The core's per-ISA ceiling: the rate of independent chains of the instruction each GEMM kernel is built on.

A GEMM cannot beat its inner instruction issued back to back from registers; :func:`measure_ceilings` measures
that rate on this machine with a small C probe (below, compiled at first use with the system C compiler into a
temporary folder and loaded with :mod:`ctypes`).  Each probe runs independent chains of one instruction (or
pair), enough of them to cover its latency, on register operands only:

==========================  =============================  ==========  =========================
probe                        instruction(s)                 MACs each   the ceiling of
==========================  =============================  ==========  =========================
``avx2 vpmaddubsw+vpaddw``   vpmaddubsw ymm + vpaddw ymm    32          kernel ``avx2`` (int16 sums)
``avx512 vpdpbusd zmm``      vpdpbusd zmm                   64          kernel ``vnni``
``avx-vnni vpdpbusd ymm``    {vex} vpdpbusd ymm             32          kernel ``avxvnni``
``amx tdpbssd``              tdpbssd (16 x 16 x 64)         16384       kernel ``amx``
``fma ymm``, ``fma zmm``     vfmadd231ps ymm / zmm          8 / 16      numpy float32 (BLAS)
==========================  =============================  ==========  =========================

Rates are in GOP/s with 2 ops per MAC, the unit of the GEMM benchmark.  With ``threads`` > 1 that many probes
run at once (ctypes releases the GIL), one per thread.  Interference from other processes only slows a
register-only loop, so the ceiling is the fastest of ``repeat`` short runs, taken round-robin over the probes
(many short runs catch a quiet moment of a shared machine; the kernels' times are medians: their fractions of
the ceiling are, if anything, low).  On a loaded virtual machine single probes were seen at 1/3 to 1/15 of
their usual rate for a whole run while the others ran at theirs: compare ceilings across runs before trusting
a fraction.  Without a C compiler :class:`CeilingUnavailable` says so.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import threading
import time

from ._timing import positive_int, positive_ints

__all__ = ["PROBES", "KERNEL_PROBE", "CeilingUnavailable", "available_probes", "measure_ceilings", "probe_for"]

#: name -> (probe id in the C source, MACs per loop iteration, CPU feature flags of q4core.kernel_info()["cpu"])
PROBES = {
    "avx2 vpmaddubsw+vpaddw": (0, 6 * 4 * 32, ("avx2",)),
    "avx512 vpdpbusd zmm": (1, 10 * 4 * 64, ("avx512f", "avx512_vnni", "os_avx512")),
    "avx-vnni vpdpbusd ymm": (2, 10 * 4 * 32, ("avx_vnni",)),
    "amx tdpbssd": (3, 4 * 4 * 16 * 16 * 64, ("amx_int8", "os_amx", "amx_xtiledata_permission")),
    "fma ymm": (4, 12 * 4 * 8, ("avx2", "fma")),
    "fma zmm": (5, 12 * 4 * 16, ("avx512f", "os_avx512")),
}
#: GEMM kernel path -> the probe whose rate bounds it
KERNEL_PROBE = {"avx2": "avx2 vpmaddubsw+vpaddw", "vnni": "avx512 vpdpbusd zmm",
                "avxvnni": "avx-vnni vpdpbusd ymm", "amx": "amx tdpbssd"}

_SOURCE = r"""
/* Peak-rate probes: independent chains of one instruction (or pair), nothing but registers. */
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

#define REP4(x) x x x x

/* Every register a probe touches starts at zero: whatever a register held before could be a denormal float,
   and an FMA on a denormal takes a microcode assist (a 30x slower "ceiling" was seen without this). */
#define ZERO12_YMM __asm__ volatile( \
    "vpxor %%ymm0, %%ymm0, %%ymm0\n\t" "vpxor %%ymm1, %%ymm1, %%ymm1\n\t" "vpxor %%ymm2, %%ymm2, %%ymm2\n\t" \
    "vpxor %%ymm3, %%ymm3, %%ymm3\n\t" "vpxor %%ymm4, %%ymm4, %%ymm4\n\t" "vpxor %%ymm5, %%ymm5, %%ymm5\n\t" \
    "vpxor %%ymm6, %%ymm6, %%ymm6\n\t" "vpxor %%ymm7, %%ymm7, %%ymm7\n\t" "vpxor %%ymm8, %%ymm8, %%ymm8\n\t" \
    "vpxor %%ymm9, %%ymm9, %%ymm9\n\t" "vpxor %%ymm10, %%ymm10, %%ymm10\n\t" "vpxor %%ymm11, %%ymm11, %%ymm11\n\t" \
    "vpxor %%ymm14, %%ymm14, %%ymm14\n\t" "vpxor %%ymm15, %%ymm15, %%ymm15" \
    ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", \
        "xmm14", "xmm15")
#define ZERO12_ZMM __asm__ volatile( \
    "vpxord %%zmm0, %%zmm0, %%zmm0\n\t" "vpxord %%zmm1, %%zmm1, %%zmm1\n\t" "vpxord %%zmm2, %%zmm2, %%zmm2\n\t" \
    "vpxord %%zmm3, %%zmm3, %%zmm3\n\t" "vpxord %%zmm4, %%zmm4, %%zmm4\n\t" "vpxord %%zmm5, %%zmm5, %%zmm5\n\t" \
    "vpxord %%zmm6, %%zmm6, %%zmm6\n\t" "vpxord %%zmm7, %%zmm7, %%zmm7\n\t" "vpxord %%zmm8, %%zmm8, %%zmm8\n\t" \
    "vpxord %%zmm9, %%zmm9, %%zmm9\n\t" "vpxord %%zmm10, %%zmm10, %%zmm10\n\t" "vpxord %%zmm11, %%zmm11, %%zmm11\n\t" \
    "vpxord %%zmm30, %%zmm30, %%zmm30\n\t" "vpxord %%zmm31, %%zmm31, %%zmm31" \
    ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", \
        "xmm30", "xmm31")

/* AVX2: vpmaddubsw (32 u8 x s8 products, pairwise sums to int16) + vpaddw (int16 accumulate); 6 chains x 4 */
__attribute__((target("avx2"))) static void avx2_pairs(long iters) {
    ZERO12_YMM;
    for (long i = 0; i < iters; i++)
        __asm__ volatile(REP4(
            "vpmaddubsw %%ymm15, %%ymm14, %%ymm0\n\t" "vpaddw %%ymm0, %%ymm6, %%ymm6\n\t"
            "vpmaddubsw %%ymm15, %%ymm14, %%ymm1\n\t" "vpaddw %%ymm1, %%ymm7, %%ymm7\n\t"
            "vpmaddubsw %%ymm15, %%ymm14, %%ymm2\n\t" "vpaddw %%ymm2, %%ymm8, %%ymm8\n\t"
            "vpmaddubsw %%ymm15, %%ymm14, %%ymm3\n\t" "vpaddw %%ymm3, %%ymm9, %%ymm9\n\t"
            "vpmaddubsw %%ymm15, %%ymm14, %%ymm4\n\t" "vpaddw %%ymm4, %%ymm10, %%ymm10\n\t"
            "vpmaddubsw %%ymm15, %%ymm14, %%ymm5\n\t" "vpaddw %%ymm5, %%ymm11, %%ymm11\n\t")
            ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11");
    __asm__ volatile("vzeroupper");
}

/* AVX-512 VNNI: vpdpbusd zmm (64 u8 x s8 MACs into int32); 10 chains x 4 */
__attribute__((target("avx512f"))) static void vnni_zmm(long iters) {
    ZERO12_ZMM;
    for (long i = 0; i < iters; i++)
        __asm__ volatile(REP4(
            "vpdpbusd %%zmm31, %%zmm30, %%zmm0\n\t" "vpdpbusd %%zmm31, %%zmm30, %%zmm1\n\t"
            "vpdpbusd %%zmm31, %%zmm30, %%zmm2\n\t" "vpdpbusd %%zmm31, %%zmm30, %%zmm3\n\t"
            "vpdpbusd %%zmm31, %%zmm30, %%zmm4\n\t" "vpdpbusd %%zmm31, %%zmm30, %%zmm5\n\t"
            "vpdpbusd %%zmm31, %%zmm30, %%zmm6\n\t" "vpdpbusd %%zmm31, %%zmm30, %%zmm7\n\t"
            "vpdpbusd %%zmm31, %%zmm30, %%zmm8\n\t" "vpdpbusd %%zmm31, %%zmm30, %%zmm9\n\t")
            ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9");
    __asm__ volatile("vzeroupper");
}

/* AVX-VNNI: VEX-encoded vpdpbusd ymm (32 MACs); 10 chains x 4 */
__attribute__((target("avx2"))) static void vnni_ymm(long iters) {
    ZERO12_YMM;
    for (long i = 0; i < iters; i++)
        __asm__ volatile(REP4(
            "%{vex%} vpdpbusd %%ymm15, %%ymm14, %%ymm0\n\t" "%{vex%} vpdpbusd %%ymm15, %%ymm14, %%ymm1\n\t"
            "%{vex%} vpdpbusd %%ymm15, %%ymm14, %%ymm2\n\t" "%{vex%} vpdpbusd %%ymm15, %%ymm14, %%ymm3\n\t"
            "%{vex%} vpdpbusd %%ymm15, %%ymm14, %%ymm4\n\t" "%{vex%} vpdpbusd %%ymm15, %%ymm14, %%ymm5\n\t"
            "%{vex%} vpdpbusd %%ymm15, %%ymm14, %%ymm6\n\t" "%{vex%} vpdpbusd %%ymm15, %%ymm14, %%ymm7\n\t"
            "%{vex%} vpdpbusd %%ymm15, %%ymm14, %%ymm8\n\t" "%{vex%} vpdpbusd %%ymm15, %%ymm14, %%ymm9\n\t")
            ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9");
    __asm__ volatile("vzeroupper");
}

/* FP32 FMA ymm (8 MACs); 12 chains x 4 */
__attribute__((target("avx2,fma"))) static void fma_ymm(long iters) {
    ZERO12_YMM;
    for (long i = 0; i < iters; i++)
        __asm__ volatile(REP4(
            "vfmadd231ps %%ymm15, %%ymm14, %%ymm0\n\t" "vfmadd231ps %%ymm15, %%ymm14, %%ymm1\n\t"
            "vfmadd231ps %%ymm15, %%ymm14, %%ymm2\n\t" "vfmadd231ps %%ymm15, %%ymm14, %%ymm3\n\t"
            "vfmadd231ps %%ymm15, %%ymm14, %%ymm4\n\t" "vfmadd231ps %%ymm15, %%ymm14, %%ymm5\n\t"
            "vfmadd231ps %%ymm15, %%ymm14, %%ymm6\n\t" "vfmadd231ps %%ymm15, %%ymm14, %%ymm7\n\t"
            "vfmadd231ps %%ymm15, %%ymm14, %%ymm8\n\t" "vfmadd231ps %%ymm15, %%ymm14, %%ymm9\n\t"
            "vfmadd231ps %%ymm15, %%ymm14, %%ymm10\n\t" "vfmadd231ps %%ymm15, %%ymm14, %%ymm11\n\t")
            ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11");
    __asm__ volatile("vzeroupper");
}

/* FP32 FMA zmm (16 MACs); 12 chains x 4 */
__attribute__((target("avx512f"))) static void fma_zmm(long iters) {
    ZERO12_ZMM;
    for (long i = 0; i < iters; i++)
        __asm__ volatile(REP4(
            "vfmadd231ps %%zmm31, %%zmm30, %%zmm0\n\t" "vfmadd231ps %%zmm31, %%zmm30, %%zmm1\n\t"
            "vfmadd231ps %%zmm31, %%zmm30, %%zmm2\n\t" "vfmadd231ps %%zmm31, %%zmm30, %%zmm3\n\t"
            "vfmadd231ps %%zmm31, %%zmm30, %%zmm4\n\t" "vfmadd231ps %%zmm31, %%zmm30, %%zmm5\n\t"
            "vfmadd231ps %%zmm31, %%zmm30, %%zmm6\n\t" "vfmadd231ps %%zmm31, %%zmm30, %%zmm7\n\t"
            "vfmadd231ps %%zmm31, %%zmm30, %%zmm8\n\t" "vfmadd231ps %%zmm31, %%zmm30, %%zmm9\n\t"
            "vfmadd231ps %%zmm31, %%zmm30, %%zmm10\n\t" "vfmadd231ps %%zmm31, %%zmm30, %%zmm11\n\t")
            ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11");
    __asm__ volatile("vzeroupper");
}

/* AMX: tdpbssd (16 x 16 int32 += 16 x 64 s8 . 64 x 16 s8, 16384 MACs); 4 accumulator tiles x 4.
   Linux hands out the tile data state only on request (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA = 18). */
static int amx_tiles(long iters) {
    if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) return -1;
    unsigned char cfg[64];
    memset(cfg, 0, sizeof cfg);
    cfg[0] = 1;                                   /* palette 1 */
    for (int t = 0; t < 6; t++) {                 /* tmm0-3 accumulators, tmm4-5 sources: 16 rows x 64 bytes */
        cfg[16 + 2 * t] = 64;
        cfg[48 + t] = 16;
    }
    __asm__ volatile("ldtilecfg %0" :: "m"(cfg));
    __asm__ volatile("tilezero %%tmm0\n\ttilezero %%tmm1\n\ttilezero %%tmm2\n\ttilezero %%tmm3\n\t"
                     "tilezero %%tmm4\n\ttilezero %%tmm5" ::: "memory");
    for (long i = 0; i < iters; i++)
        __asm__ volatile(REP4(
            "tdpbssd %%tmm5, %%tmm4, %%tmm0\n\t" "tdpbssd %%tmm5, %%tmm4, %%tmm1\n\t"
            "tdpbssd %%tmm5, %%tmm4, %%tmm2\n\t" "tdpbssd %%tmm5, %%tmm4, %%tmm3\n\t") ::: "memory");
    __asm__ volatile("tilerelease");
    return 0;
}

/* Run ``iters`` iterations of probe ``kind``; 0 on success, -1 if the OS refused (AMX), -2 unknown kind.
   The caller checks the CPU has the instructions before calling. */
int q4_ceiling_probe(int kind, long iters) {
    switch (kind) {
    case 0: avx2_pairs(iters); return 0;
    case 1: vnni_zmm(iters); return 0;
    case 2: vnni_ymm(iters); return 0;
    case 3: return amx_tiles(iters);
    case 4: fma_ymm(iters); return 0;
    case 5: fma_zmm(iters); return 0;
    default: return -2;
    }
}
"""


class CeilingUnavailable(RuntimeError):
    """The probe cannot run here: no C compiler, a compiler or assembler that does not know the instructions,
    or a CPU without any of them."""


_lib = None
_lock = threading.Lock()


def _compiler():
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return shutil.which(cc)
    raise CeilingUnavailable("no C compiler found (set CC, or install gcc or clang) to build the ceiling probe; "
                             "the benchmark runs without ceilings")


def _library():
    """The compiled probe, built once per process in a temporary folder (removed once loaded)."""
    global _lib
    with _lock:
        if _lib is None:
            cc = _compiler()
            with tempfile.TemporaryDirectory(prefix="q4core-ceiling-") as tmp:
                c_path, so_path = os.path.join(tmp, "probe.c"), os.path.join(tmp, "probe.so")
                with open(c_path, "w") as fh:
                    fh.write(_SOURCE)
                proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", so_path, c_path],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    raise CeilingUnavailable(f"{cc} could not build the ceiling probe (an assembler too old for "
                                             f"AMX or AVX-VNNI?):\n{proc.stderr.strip()[-2000:]}")
                lib = ctypes.CDLL(so_path)
            lib.q4_ceiling_probe.argtypes = [ctypes.c_int, ctypes.c_long]
            lib.q4_ceiling_probe.restype = ctypes.c_int
            _lib = lib
    return _lib


def available_probes(cpu=None):
    """The probes this CPU can run, in :data:`PROBES` order (``cpu``: ``q4core.kernel_info()["cpu"]``)."""
    if cpu is None:
        from .. import kernel_info
        cpu = kernel_info()["cpu"]
    return [name for name, (_, _, flags) in PROBES.items() if all(cpu.get(f) is True for f in flags)]


def _run(name, iters, threads):
    """Wall seconds of ``threads`` concurrent runs of ``iters`` iterations of probe ``name``."""
    lib, kind = _library(), PROBES[name][0]
    status = [0] * threads
    start = threading.Barrier(threads + 1)

    def work(i):
        start.wait()
        status[i] = lib.q4_ceiling_probe(kind, iters)
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - t0
    if any(s != 0 for s in status):
        raise CeilingUnavailable(f"probe {name!r} failed (status {status}): the OS refused the AMX tile state")
    return seconds


def measure_ceilings(threads=(1, 2), repeat=40, seconds=0.005, probes=None):
    """GOP/s (2 ops per MAC) of every probe this CPU runs, at each thread count.

    ``seconds``: the target length of one run (the iteration count is calibrated on a short run first);
    ``probes``: names from :data:`PROBES` (default: every one the CPU has).  Returns ``{"records":
    [{"probe", "threads", "gops", "samples_gops"}], "skipped": [probe names the CPU lacks], "note"}``;
    ``gops`` is the fastest of ``repeat`` runs.  :class:`CeilingUnavailable` when the probe cannot be built
    or run.
    """
    threads = positive_ints(threads, "threads")
    repeat = positive_int(repeat, "repeat")
    if not (isinstance(seconds, (int, float)) and 0 < seconds <= 10):
        raise ValueError(f"seconds must be a number in (0, 10], got {seconds!r}")
    usable = available_probes()
    if probes is None:
        probes = usable
    else:
        probes = [probes] if isinstance(probes, str) else list(probes)
        bad = [p for p in probes if p not in PROBES]
        if bad or not probes:
            raise ValueError(f"probes must be a non-empty list of {list(PROBES)}, got {probes!r}")
        missing = [p for p in probes if p not in usable]
        if missing:
            raise ValueError(f"probes {missing} need CPU features this machine lacks")
    iters = {}
    for name in probes:
        calib = 200
        elapsed = _run(name, calib, 1)
        while elapsed < 2e-3:
            calib *= 8
            elapsed = _run(name, calib, 1)
        iters[name] = max(1, int(calib * seconds / elapsed))
    # round-robin, one run of each probe per round: a slow phase of a shared machine (or of its hypervisor)
    # then costs every probe a sample or two, not one probe all of its samples
    samples = {(name, t): [] for name in probes for t in threads}
    for _ in range(repeat):
        for (name, t), out in samples.items():
            out.append(2.0 * PROBES[name][1] * iters[name] * t / _run(name, iters[name], t) / 1e9)
    records = [{"probe": name, "threads": t, "gops": max(out), "samples_gops": out}
               for (name, t), out in samples.items()]
    return {"records": records, "skipped": [p for p in PROBES if p not in usable],
            "note": "fastest of repeat runs of independent instruction chains on registers; GOP/s = 2 ops per MAC"}


def probe_for(op, kernel, cpu=None):
    """The probe bounding a GEMM record (``op``, ``kernel``) of :func:`q4core.bench.gemm.measure_gemm`, or
    ``None`` (the numpy paths of fake quantization, the portable C kernel).  numpy float32 is bounded by the
    widest FMA this CPU has; a peer's u8 x s8 GEMM (kernel ``mlas``) by the widest int8 instruction the CPU
    has, AMX included (MLAS dispatches its u8 x s8 GEMM to AMX where the CPU has it)."""
    usable = set(available_probes(cpu))
    if op == "fp32":
        return next((p for p in ("fma zmm", "fma ymm") if p in usable), None)
    if kernel in KERNEL_PROBE:
        return KERNEL_PROBE[kernel] if KERNEL_PROBE[kernel] in usable else None
    if kernel == "mlas":
        return next((p for p in ("amx tdpbssd", "avx512 vpdpbusd zmm", "avx-vnni vpdpbusd ymm",
                                 "avx2 vpmaddubsw+vpaddw") if p in usable), None)
    return None
