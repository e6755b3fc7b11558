/* How many OpenMP threads a GEMM-side parallel region (packing, operand preparation, the
 * driver) may use.
 *
 * The request - ``threads=`` from Python, or 0 for OpenMP's default, which follows
 * OMP_NUM_THREADS - is clamped to the processors this process may run on
 * (omp_get_num_procs(), which honours the affinity mask) and to OMP_THREAD_LIMIT, then to
 * the number of independent work items.  Why: libgomp tries to create every requested
 * thread, each with its own stack, and ``threads=100000`` or ``OMP_NUM_THREADS=100000``
 * crashed the process (segfault) while creating them.  More threads than processors only
 * add contention, and no integer result depends on the thread count, so the clamp changes
 * no number.  The limit is read once (the first call comes from the module import, under
 * the GIL) so that a call costs no extra system call. */
#ifndef Q4_GEMM_THREADS_H
#define Q4_GEMM_THREADS_H

#include <stdint.h>
#if Q4CORE_OPENMP
#include <omp.h>
#endif

/* the most threads any GEMM-side region will start */
static inline int q4_thread_limit(void) {
    static int limit = 0;
    if (limit <= 0) {
        int n = 1;
#if Q4CORE_OPENMP
        n = omp_get_num_procs();
        int cap = omp_get_thread_limit();
        if (cap > 0 && cap < n) n = cap;
#endif
        limit = n > 0 ? n : 1;
    }
    return limit;
}

/* threads for a region with ``work`` independent items; ``requested`` <= 0: the default */
static inline int q4_threads(int requested, int64_t work) {
#if Q4CORE_OPENMP
    int n = requested > 0 ? requested : omp_get_max_threads();
#else
    int n = 1;
    (void)requested;
#endif
    const int limit = q4_thread_limit();
    if (n > limit) n = limit;
    if (work < n) n = work > 1 ? (int)work : 1;
    return n > 0 ? n : 1;
}

/* Minimum work per thread of each kind of region: below it a thread costs more to start and
 * join (several microseconds each; quant_kernels.h has the quantizers' threshold) than it saves, so small engine calls run on one thread.
 * The thresholds only choose how many threads run; no result depends on that. */
#define Q4_GEMM_MACS_PER_THREAD ((int64_t)1 << 24)   /* GEMM: multiply-accumulates */
#define Q4_PACK_BYTES_PER_THREAD ((int64_t)1 << 18)  /* packing / operand preparation: bytes */

/* threads for a region of ``items`` independent work items and ``work`` units in all: as
 * q4_threads, and at most one thread per ``per_thread`` units of work (at least one) */
static inline int q4_threads_for_work(int requested, int64_t items, int64_t work, int64_t per_thread) {
    int n = q4_threads(requested, items);
    const int64_t by_work = per_thread > 0 ? work / per_thread : n;
    if (by_work < n) n = by_work > 1 ? (int)by_work : 1;
    return n;
}

/* the default thread count after the clamp (what kernel_info() reports) */
static inline int q4_default_threads(void) { return q4_threads(0, INT64_MAX); }

#endif /* Q4_GEMM_THREADS_H */
