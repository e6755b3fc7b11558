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

/* the default thread count after the clamp (what kernel_info() reports) */
static inline int q4_default_threads(void) { return q4_threads(0, INT64_MAX); }

#endif /* Q4_GEMM_THREADS_H */
