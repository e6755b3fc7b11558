/* CPU feature detection for q4core's GEMM dispatch: CPUID says what the core can do,
 * XGETBV says which register state the OS saves (a CPU with AVX-512 under an OS that does
 * not save zmm state must not run AVX-512 code), and on Linux AMX tile data additionally
 * needs a per-process permission request (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA). */
#ifndef Q4_GEMM_CPU_H
#define Q4_GEMM_CPU_H

#include <stdint.h>
#include <string.h>

#if (defined(__x86_64__) || defined(_M_X64) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define Q4_X86 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define Q4_X86 0
#endif

#if Q4_X86 && defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
/* glibc declares syscall() only under _DEFAULT_SOURCE; declare it ourselves so a strict
 * -std=c11 build sees the prototype too (same signature as glibc's) */
extern long syscall(long number, ...);
#define Q4_LINUX_X86_64 1
#else
#define Q4_LINUX_X86_64 0
#endif

/* which ISA-specific kernels this compiler can build (target attribute names) */
#if Q4_X86 && ((defined(__clang__) && __clang_major__ >= 6) || (!defined(__clang__) && __GNUC__ >= 8))
#define Q4_HAVE_AVX512VNNI_CC 1
#else
#define Q4_HAVE_AVX512VNNI_CC 0
#endif
#if Q4_X86 && ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define Q4_HAVE_AVXVNNI_CC 1
#else
#define Q4_HAVE_AVXVNNI_CC 0
#endif
#if Q4_X86 && defined(__x86_64__) && ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define Q4_HAVE_AMX_CC 1
#else
#define Q4_HAVE_AMX_CC 0
#endif

typedef struct {
    int x86;
    int sse2, avx, avx2, fma;                      /* CPUID leaf 1 / leaf 7 */
    int avx512f, avx512bw, avx512vl, avx512vnni;   /* leaf 7 subleaf 0 */
    int avx512vbmi;                                /* leaf 7 subleaf 0, ECX bit 1 (byte permutes) */
    int avxvnni;                                   /* leaf 7 subleaf 1, EAX bit 4 */
    int amx_tile, amx_int8, amx_bf16;              /* leaf 7 subleaf 0, EDX bits 24, 25, 22 */
    int os_avx;                                    /* XCR0: SSE + AVX state (bits 1, 2) */
    int os_avx512;                                 /* XCR0: opmask + zmm state (bits 5, 6, 7) */
    int os_amx;                                    /* XCR0: XTILECFG + XTILEDATA (bits 17, 18) */
    int amx_permission;                            /* Linux granted XTILEDATA (1), refused (0), not asked (-1) */
} q4_cpu_features;

#if Q4_X86
static uint64_t q4_xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

/* Ask Linux once per process for permission to use AMX tile data; returns 1 if granted. */
static inline int q4_amx_request_permission(void) {
#if Q4_LINUX_X86_64
    static int state = -1;                 /* cached: the request is process-wide */
    if (state < 0) {
        long rc = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */);
        if (rc == 0) {
            unsigned long bitmask = 0;     /* confirm with ARCH_GET_XCOMP_PERM */
            rc = syscall(SYS_arch_prctl, 0x1022, &bitmask);
            state = (rc == 0 && (bitmask & (1UL << 18))) ? 1 : 0;
        } else {
            state = 0;
        }
    }
    return state;
#else
    return 0;
#endif
}

static inline void q4_detect_cpu(q4_cpu_features *f) {
    memset(f, 0, sizeof(*f));
    f->amx_permission = -1;
#if Q4_X86
    unsigned a, b, c, d, maxleaf;
    f->x86 = 1;
    maxleaf = __get_cpuid_max(0, 0);
    if (maxleaf < 1) return;
    __cpuid_count(1, 0, a, b, c, d);
    f->sse2 = (d >> 26) & 1;
    f->fma = (c >> 12) & 1;
    int osxsave = (c >> 27) & 1;
    f->avx = (c >> 28) & 1;
    uint64_t xcr0 = osxsave ? q4_xgetbv0() : 0;
    f->os_avx = f->avx && ((xcr0 & 0x6) == 0x6);
    f->os_avx512 = f->os_avx && ((xcr0 & 0xE0) == 0xE0);
    f->os_amx = ((xcr0 >> 17) & 3) == 3;
    if (maxleaf >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        unsigned subleaves = a;
        f->avx2 = (b >> 5) & 1;
        f->avx512f = (b >> 16) & 1;
        f->avx512bw = (b >> 30) & 1;
        f->avx512vl = (b >> 31) & 1;
        f->avx512vnni = (c >> 11) & 1;
        f->avx512vbmi = (c >> 1) & 1;
        f->amx_bf16 = (d >> 22) & 1;
        f->amx_tile = (d >> 24) & 1;
        f->amx_int8 = (d >> 25) & 1;
        if (subleaves >= 1) {
            __cpuid_count(7, 1, a, b, c, d);
            f->avxvnni = (a >> 4) & 1;
        }
    }
    if (f->amx_tile && f->amx_int8 && f->os_amx)
        f->amx_permission = q4_amx_request_permission();
#endif
}

#endif /* Q4_GEMM_CPU_H */
