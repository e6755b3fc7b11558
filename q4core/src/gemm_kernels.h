/* THE kernel table: the one place that lists q4core's compiled GEMM kernels.
 *
 * Everything else is generated from it: the C enum (Q4_AMX, ...), the driver's dispatch
 * (which tile function, whether it was compiled, whether CPU + OS allow it, how many rows it
 * steps over - gemm_driver.h), and, through q4core/_gemm.pyx at import, the Python names
 * (q4core.gemm.KERNEL_NAMES, available_kernels(), kernel_info()["kernels"]).  The numpy
 * "reference" oracle is not a C kernel; q4core.gemm appends it as the last name.
 *
 *   X(ID, name, row multiple, CPU/OS requirement, requirement in words)
 *
 * ID         enum constant Q4_<ID>; the compiled flag is Q4_HAVE_<ID> and the tile function
 *            q4_tile_<name>, both defined by the kernel's header (a kernel the compiler cannot
 *            build defines Q4_HAVE_<ID> 0 and q4_tile_<name> as a null q4_tile_fn);
 * name       the user-facing name (kernel=, Q4CORE_KERNEL);
 * rows       rows of A the kernel's register block steps over: A (and the output tile) is
 *            padded to a multiple of it;
 * requirement an expression in ``const q4_cpu_features *f`` (gemm_cpu.h) that is true when
 *            the CPU and OS allow the kernel;
 * words      the same requirement for error messages.
 *
 * Rows are in preference order, fastest first: the default kernel is the first available. */
#ifndef Q4_GEMM_KERNELS_H
#define Q4_GEMM_KERNELS_H

/* AMX is usable only when Linux granted the XTILEDATA permission; the test-only emulation
 * build (gemm_amx_emu.h) runs the kernel on any CPU */
#if defined(Q4_AMX_EMULATE)
#define Q4_AMX_ALLOWED(f) ((void)(f), 1)
#else
#define Q4_AMX_ALLOWED(f) ((f)->amx_tile && (f)->amx_int8 && (f)->os_amx && (f)->amx_permission == 1)
#endif

#define Q4_KERNEL_TABLE(X)                                                                    \
    X(AMX, amx, Q4_AMX_ROWS, Q4_AMX_ALLOWED(f),                                               \
      "CPUID AMX-TILE + AMX-INT8, OS tile state (XCR0 bits 17, 18) and Linux XTILEDATA permission") \
    X(VNNI, vnni, Q4_VNNI_ROWS, (f->avx512f && f->avx512bw && f->avx512vnni && f->os_avx512), \
      "CPUID AVX-512 F + BW + VNNI and OS zmm state (XCR0 bits 5-7)")                        \
    X(AVXVNNI, avxvnni, Q4_AVXVNNI_ROWS, (f->avx2 && f->avxvnni && f->os_avx),                \
      "CPUID AVX2 + AVX-VNNI and OS ymm state")                                              \
    X(AVX2, avx2, Q4_AVX2_ROWS, (f->avx2 && f->os_avx),                                       \
      "CPUID AVX2 and OS ymm state")                                                         \
    X(PORTABLE, portable, Q4_PORTABLE_ROWS, ((void)f, 1),                                     \
      "nothing")

/* kernel ids, in table order (the index of the name in q4core.gemm.KERNEL_NAMES) */
#define Q4_X_ENUM(ID, name, rows, ok, words) Q4_##ID,
enum { Q4_KERNEL_TABLE(Q4_X_ENUM) Q4_NKERNELS };
#undef Q4_X_ENUM

#endif /* Q4_GEMM_KERNELS_H */
