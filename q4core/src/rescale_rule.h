/* The engine's rescale of an exact integer GEMM result: y = acc * factor as float32, rounded as the
 * engine's numpy expression rounds it (q4core.nn.qgemm._rescale).  ``exact`` (every |acc| < 2**24, so
 * float32 holds it) multiplies in float32 by the factor rounded to float32; else in float64, rounded
 * once to float32.  One multiply per element: no contraction can change it.
 *
 * One definition for both places that apply it - the separate pass over an int32 / int64 result
 * (q4_rescale_*, fused_kernels.h) and the GEMM's store (q4_scale_row, gemm_driver.h) - so that they
 * cannot drift apart.  A macro: each caller keeps its own element type and SIMD clones. */
#ifndef Q4_RESCALE_RULE_H
#define Q4_RESCALE_RULE_H

#include <stddef.h>

#define Q4_RESCALE_LOOP(out, acc, n, factor, exact) do {                                          \
        if (exact) {                                                                              \
            const float q4_f_ = (float)(factor);                                                  \
            for (ptrdiff_t q4_i_ = 0; q4_i_ < (ptrdiff_t)(n); q4_i_++)                            \
                (out)[q4_i_] = (float)(acc)[q4_i_] * q4_f_;                                       \
        } else {                                                                                  \
            for (ptrdiff_t q4_i_ = 0; q4_i_ < (ptrdiff_t)(n); q4_i_++)                            \
                (out)[q4_i_] = (float)((double)(acc)[q4_i_] * (factor));                          \
        }                                                                                         \
    } while (0)

#endif /* Q4_RESCALE_RULE_H */
