/* AMX-INT8 tile kernel (tdpbusd: u8 x s8 -> int32).  Compiled everywhere the compiler knows
 * AMX and dispatched only when CPUID reports AMX-TILE + AMX-INT8, XCR0 enables tile state and
 * Linux granted the XTILEDATA permission (gemm_cpu.h).  Run and checked on an AMX Xeon (KVM,
 * family 6 model 167) as well as against the scalar emulation (gemm_amx_emu.h).
 *
 * Where the time goes (that Xeon, 2048^3, one thread; the tdpbssd ceiling of isa_peak.c is
 * 7520 GOP/s): operands must start on a 64-byte line - numpy's large arrays start 16 bytes
 * past one, which split every tile row over two lines and halved the speed, so prep_a /
 * pack_b return aligned buffers and _gemm.gemm aligns any other.  With every operand in L1
 * (32 x 32 x 512 repeated) this 2 x 2 block runs at 6200 GOP/s (82 %); on the full product,
 * where one operand streams from L2, the kernel alone reaches ~3100 GOP/s (42 %) and the
 * driver with its int32 store ~2500.  A 2 x 2 block needs one 1 KB tile load per tdpbusd
 * (16 cycles), i.e. 64 B/cycle, and with all 8 tiles in use no load can be double-buffered,
 * so (our reading, not measured: the VM exposes no performance counters) each k-step waits
 * for its L2 lines.  Tried without a gain beyond the machine's noise: B-outer vs A-outer loop
 * order, A in a tile-contiguous layout, software prefetch 1-4 k-steps ahead or of the next
 * row strip, huge pages, other MC / NC / KC (128 x 256 x 512 stays).
 *
 * Tiles: tmm0..3 hold a 32 x 32 int32 block of C (2 x 2 tiles of 16 x 16), tmm4/5 two
 * 16-row x 64-byte slices of A, tmm6/7 two B tiles of 16 k-groups x 64 bytes - which is
 * exactly one 16-column panel of our packed B for 64 consecutive k (gemm_portable.h), so
 * B tiles load with stride 64 straight from the packing.  Each thread must load the tile
 * configuration before its first tile instruction (q4_amx_thread_begin) and release it
 * after (q4_amx_thread_end). */
#ifndef Q4_GEMM_AMX_H
#define Q4_GEMM_AMX_H

#include "gemm_cpu.h"
#include "gemm_portable.h"

#define Q4_AMX_ROWS 16      /* rows of one A / C tile: A is padded to a multiple (gemm_kernels.h) */
#define Q4_AMX_COLS 16      /* int32 columns of one C tile = one packed B panel */
#define Q4_AMX_TILE_BYTES 64  /* bytes per tile row: 64 k of A, one k-group of a B panel */

#if Q4_HAVE_AMX_CC || defined(Q4_AMX_EMULATE)
#define Q4_HAVE_AMX 1

typedef struct {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) q4_tilecfg;

#if defined(Q4_AMX_EMULATE)
/* test-only build: scalar stand-ins for the tile instructions (gemm_amx_emu.h) */
#include "gemm_amx_emu.h"
#define Q4_AMX_TARGET
#define Q4_LDTILECFG(cfg) q4_emu_ldtilecfg(&(cfg))
#else
#define Q4_AMX_TARGET __attribute__((target("amx-tile,amx-int8")))
/* not _tile_loadconfig: GCC 12's version tells the compiler it reads only 8 bytes,
 * which lets it drop our stores of rows/colsb (seen in the disassembly).  The "m"
 * operand of the whole 64-byte struct keeps every store alive. */
#define Q4_LDTILECFG(cfg) __asm__ volatile("ldtilecfg %0" : : "m"(cfg) : "memory")
#endif

/* op (_tile_loadd or _tile_stored) on the up-to-2 x 2 block of accumulator tiles at c: tile 0 at c, 1 to its right,
 * 2 below, 3 diagonal (row stride ldc int32s, cstride bytes).  A macro: tile numbers must be constants. */
#define Q4_AMX_BLOCK(op, c, ldc, cstride, two_m, two_n) do {                                    \
        op(0, (c), (cstride));                                                                  \
        if (two_n) op(1, (c) + Q4_AMX_COLS, (cstride));                                         \
        if (two_m) op(2, (c) + Q4_AMX_ROWS * (ldc), (cstride));                                 \
        if ((two_m) && (two_n)) op(3, (c) + Q4_AMX_ROWS * (ldc) + Q4_AMX_COLS, (cstride));      \
    } while (0)

Q4_AMX_TARGET
static void q4_amx_thread_begin(void) {
    q4_tilecfg cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.palette_id = 1;
    for (int t = 0; t < 8; t++) {   /* every tile is 16 rows x 64 bytes */
        cfg.rows[t] = Q4_AMX_ROWS;
        cfg.colsb[t] = Q4_AMX_TILE_BYTES;
    }
    Q4_LDTILECFG(cfg);
}

Q4_AMX_TARGET
static void q4_amx_thread_end(void) {
    _tile_release();
}

Q4_AMX_TARGET
static void q4_tile_amx(const uint8_t *A, int64_t lda, const int8_t *B, int64_t Kp,
                        int64_t k0, int64_t k1, int32_t *C, int64_t ldc,
                        int64_t mrows, int64_t ncols, int accumulate) {
    /* mrows is a multiple of 16 and ncols of 16: a last 16-row or 16-column strip uses
     * only the first A / B tile (tile numbers must be constants, hence the branches) */
    const long cstride = (long)(ldc * (int64_t)sizeof(int32_t));
    /* the tile intrinsics are asm statements that do not declare the memory they touch:
     * fence the compiler so no access to A, B or C moves across this function's edges */
    __asm__ volatile("" : : : "memory");
    for (int64_t jp = 0; jp < ncols; jp += 2 * Q4_AMX_COLS) {
        const int8_t *p0 = B + (jp / Q4_PANEL) * Kp * Q4_PANEL;
        const int8_t *p1 = p0 + Kp * Q4_PANEL;
        const int two_n = ncols - jp >= 2 * Q4_AMX_COLS;
        for (int64_t i = 0; i < mrows; i += 2 * Q4_AMX_ROWS) {
            const int two_m = mrows - i >= 2 * Q4_AMX_ROWS;
            int32_t *c = C + i * ldc + jp;
            if (accumulate) {
                Q4_AMX_BLOCK(_tile_loadd, c, ldc, cstride, two_m, two_n);
            } else {
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
            }
            const uint8_t *a0 = A + i * lda;
            const uint8_t *a1 = a0 + Q4_AMX_ROWS * lda;
            if (two_m && two_n) {
                for (int64_t k = k0; k < k1; k += Q4_AMX_TILE_BYTES) {
                    _tile_loadd(4, a0 + k, (long)lda);
                    _tile_loadd(5, a1 + k, (long)lda);
                    _tile_loadd(6, p0 + k * Q4_PANEL, Q4_GROUP_BYTES);   /* k-group k/4 starts at byte (k/4)*64 */
                    _tile_loadd(7, p1 + k * Q4_PANEL, Q4_GROUP_BYTES);
                    _tile_dpbusd(0, 4, 6);
                    _tile_dpbusd(1, 4, 7);
                    _tile_dpbusd(2, 5, 6);
                    _tile_dpbusd(3, 5, 7);
                }
            } else {
                for (int64_t k = k0; k < k1; k += Q4_AMX_TILE_BYTES) {
                    _tile_loadd(4, a0 + k, (long)lda);
                    _tile_loadd(6, p0 + k * Q4_PANEL, Q4_GROUP_BYTES);
                    _tile_dpbusd(0, 4, 6);
                    if (two_n) {
                        _tile_loadd(7, p1 + k * Q4_PANEL, Q4_GROUP_BYTES);
                        _tile_dpbusd(1, 4, 7);
                    }
                    if (two_m) {
                        _tile_loadd(5, a1 + k, (long)lda);
                        _tile_dpbusd(2, 5, 6);
                    }
                }
            }
            Q4_AMX_BLOCK(_tile_stored, c, ldc, cstride, two_m, two_n);
        }
    }
    __asm__ volatile("" : : : "memory");
}
#else
#define Q4_HAVE_AMX 0
#define q4_tile_amx ((q4_tile_fn)0)   /* not compiled: a null entry in the kernel table */
#endif

#endif /* Q4_GEMM_AMX_H */
