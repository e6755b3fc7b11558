/* Scalar emulation of the AMX instructions used by q4_tile_amx (gemm_amx.h), for TESTS
 * ONLY: tests/test_gemm.py compiles gemm_driver.h with -DQ4_AMX_EMULATE into a small
 * shared library so the AMX kernel's tiling, strides and remainders are checked bit for
 * bit on machines without AMX.  It follows the documented semantics (Intel SDM, TDPBUSD):
 * tiles hold `rows` rows of `colsb` bytes set by LDTILECFG;
 * C[m][n] += sum_k sum_{q<4} u8(A[m][4k+q]) * s8(B[k][4n+q]).  It also checks the shape
 * rules the hardware enforces (#UD on mismatch) and aborts on a violation. */
#ifndef Q4_GEMM_AMX_EMU_H
#define Q4_GEMM_AMX_EMU_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { int rows, colsb; uint8_t data[16][64]; } q4_emu_tile;
static _Thread_local q4_emu_tile q4_emu_tmm[8];
static _Thread_local int q4_emu_configured;

static void q4_emu_fail(const char *what) {
    fprintf(stderr, "AMX emulation: %s\n", what);
    abort();
}

static void q4_emu_ldtilecfg(const q4_tilecfg *cfg) {
    if (cfg->palette_id != 1) q4_emu_fail("palette must be 1");
    for (int t = 0; t < 8; t++) {
        if (cfg->rows[t] > 16 || cfg->colsb[t] > 64) q4_emu_fail("tile larger than 16 x 64");
        q4_emu_tmm[t].rows = cfg->rows[t];
        q4_emu_tmm[t].colsb = cfg->colsb[t];
    }
    q4_emu_configured = 1;
}

static q4_emu_tile *q4_emu_get(int t) {
    if (!q4_emu_configured) q4_emu_fail("tile used before LDTILECFG");
    if (t < 0 || t > 7 || q4_emu_tmm[t].rows == 0) q4_emu_fail("unconfigured tile");
    return &q4_emu_tmm[t];
}

static void q4_emu_loadd(int t, const void *base, long stride) {
    q4_emu_tile *x = q4_emu_get(t);
    for (int r = 0; r < x->rows; r++) memcpy(x->data[r], (const uint8_t *)base + r * stride, x->colsb);
}

static void q4_emu_stored(int t, void *base, long stride) {
    q4_emu_tile *x = q4_emu_get(t);
    for (int r = 0; r < x->rows; r++) memcpy((uint8_t *)base + r * stride, x->data[r], x->colsb);
}

static void q4_emu_zero(int t) {
    q4_emu_tile *x = q4_emu_get(t);
    memset(x->data, 0, sizeof(x->data));
}

static void q4_emu_dpbusd(int d, int a, int b) {
    q4_emu_tile *C = q4_emu_get(d), *A = q4_emu_get(a), *B = q4_emu_get(b);
    if (A->rows != C->rows || B->colsb != C->colsb || A->colsb != 4 * B->rows || C->colsb % 4)
        q4_emu_fail("tdpbusd shape mismatch");
    for (int m = 0; m < C->rows; m++)
        for (int n = 0; n < C->colsb / 4; n++) {
            int32_t acc;
            memcpy(&acc, &C->data[m][4 * n], 4);
            for (int k = 0; k < B->rows; k++)
                for (int q = 0; q < 4; q++)
                    acc += (int32_t)A->data[m][4 * k + q] * (int32_t)(int8_t)B->data[k][4 * n + q];
            memcpy(&C->data[m][4 * n], &acc, 4);
        }
}

static void q4_emu_release(void) {
    memset(q4_emu_tmm, 0, sizeof(q4_emu_tmm));
    q4_emu_configured = 0;
}

#undef _tile_loadd
#undef _tile_stored
#undef _tile_zero
#undef _tile_dpbusd
#undef _tile_release
#define _tile_loadd(t, base, stride) q4_emu_loadd(t, base, stride)
#define _tile_stored(t, base, stride) q4_emu_stored(t, base, stride)
#define _tile_zero(t) q4_emu_zero(t)
#define _tile_dpbusd(d, a, b) q4_emu_dpbusd(d, a, b)
#define _tile_release() q4_emu_release()

#endif /* Q4_GEMM_AMX_EMU_H */
