/* The multiply loop of blocked_gemm.pxd's register blocks, in C because it needs
 * a loop pragma Cython cannot write: unrolled four k at a time, the per-k pointer
 * increments and loop test no longer compete with the FMAs for the ALU ports
 * (with 12-row blocks: 150 -> 170 GF/s on 64->128 3x3 s2 @56, AVX-512).
 *
 * A register block is nrows (12 or 8) x 32 sums of c.  With 512-bit vectors (32
 * registers) it is one tile, 24 registers for 12 rows.  With 256-bit vectors (16
 * registers: AVX2, NEON pairs) it runs as tiles of at most 6 rows x 16 columns, 12
 * registers each (BLIS's Haswell shape): 12 x 32 sums would need the 16 registers
 * three times over and spill (30 GF/s on AVX2 against 96 tiled).  The tiles use the
 * GCC/Clang vector extension, not ISA intrinsics: the caller's multiversioned clone
 * picks the instructions.  Written as plain loops over 16 columns, GCC 12 compiled
 * them to scalar shuffles.
 *
 * nrows is a constant at each call site: inlined into it, the sums stay in registers. */
#ifndef PYCONV_BLOCKED_GEMM_H
#define PYCONV_BLOCKED_GEMM_H
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "simd.h"

enum {
    PYCONV_BLOCK_COLS = 32,   /* columns of c per register block */
    PYCONV_WIDE_ROWS = 12,    /* rows of a wide register block */
    PYCONV_NARROW_ROWS = 8,   /* rows of a narrow one: the least a blocked GEMM needs */
    PYCONV_HALF_COLS = 16,    /* columns of a 256-bit tile */
    PYCONV_HALF_MAX_ROWS = 6  /* rows of a 256-bit tile at most */
};

#if defined(__GNUC__) || defined(__clang__)
#define PYCONV_UNROLL4 _Pragma("GCC unroll 4")
/* the compiler must assume x changed here (nothing is emitted): what is computed from it
 * after this point stays after it */
#define PYCONV_OPAQUE(x) __asm__("" : "+m"(x))
#else
#define PYCONV_UNROLL4
#define PYCONV_OPAQUE(x) ((void)0)
#endif
/* A tile's products, for a vector type VEC of LANES floats (and IVEC, its int
 * twin): out[r * ld_out + j] = clip(init[r * ld_init + j] + sum over k of
 * w[r * ldw + k'] * b[k * b_step + j] + bias[r], lo, hi) for r < nrows <= MAX_ROWS,
 * j < 2 * LANES (init NULL: 0; bias NULL: 0; lo, hi = -inf, inf: no clip; NaN passes
 * through either way).  k runs over ntaps taps of tap_lens[t] steps each (tap_lens
 * NULL: tap_k), step i of tap t reading k' = taps[t] + i * w_kstep (taps NULL: one tap
 * at offset 0); b advances b_step floats per k.  prefetch_next, when not NULL, is the
 * next column block of b (32 floats per k, b_step apart), fetched into cache a k at a
 * time while this one is read; prefetch_far likewise, into the outer caches only
 * (PYCONV_PREFETCH_FAR), far_lines (1 or 2) lines per k from far_step floats apart.
 * The sums leave the registers once, as the final values.  One body, written once,
 * for both tile shapes. */
#define PYCONV_DEFINE_TILE(NAME, VEC, IVEC, LANES, MAX_ROWS)                                                  \
static PYCONV_ALWAYS_INLINE inline void NAME(                                                               \
    float* out, ptrdiff_t ld_out, const float* init, ptrdiff_t ld_init, const int nrows, const float* w,    \
    ptrdiff_t ldw, ptrdiff_t w_kstep, const ptrdiff_t* taps, const ptrdiff_t* tap_lens, ptrdiff_t ntaps,    \
    ptrdiff_t tap_k, const float* b, ptrdiff_t b_step, const float* prefetch_next, const float* prefetch_far,\
    ptrdiff_t far_step, const int far_lines, const float* bias, float lo, float hi)                         \
{                                                                                                            \
    const float* next = prefetch_next;                                                                       \
    const float* far = prefetch_far;                                                                         \
    /* (loads and stores by memcpy into named vectors: an address taken of acc kept it in memory) */        \
    VEC acc[MAX_ROWS][2], b0, b1;                                                                            \
    for (int r = 0; r < nrows; r++)                                                                          \
        for (int h = 0; h < 2; h++) {                                                                        \
            VEC start = {0};                                                                                 \
            if (init != NULL)                                                                                \
                memcpy(&start, init + r * ld_init + h * LANES, sizeof start);                                \
            acc[r][h] = start;                                                                               \
        }                                                                                                    \
    for (ptrdiff_t t = 0; t < ntaps; t++) {                                                                  \
        const float* wk = w + (taps != NULL ? taps[t] : 0);                                                  \
        const ptrdiff_t len = tap_lens != NULL ? tap_lens[t] : tap_k;                                        \
        PYCONV_UNROLL4                                                                                       \
        for (ptrdiff_t k = 0; k < len; k++) {                                                                \
            if (next != NULL) {                                                                              \
                PYCONV_PREFETCH(next + k * b_step);                                                          \
                PYCONV_PREFETCH(next + k * b_step + 16);                                                     \
            }                                                                                                \
            if (far != NULL) {                                                                               \
                const float* line = far + k * far_step;                                                      \
                PYCONV_PREFETCH_FAR(line);                                                                   \
                if (far_lines == 2)                                                                          \
                    PYCONV_PREFETCH_FAR(line + 16);                                                          \
            }                                                                                                \
            memcpy(&b0, b + k * b_step, sizeof b0);                                                          \
            memcpy(&b1, b + k * b_step + LANES, sizeof b1);                                                  \
            for (int r = 0; r < nrows; r++) {                                                                \
                const float wr = wk[r * ldw + k * w_kstep];                                                  \
                acc[r][0] += wr * b0;                                                                        \
                acc[r][1] += wr * b1;                                                                        \
            }                                                                                                \
        }                                                                                                    \
        b += len * b_step;                                                                                   \
        if (next != NULL)                                                                                    \
            next += len * b_step;                                                                            \
        if (far != NULL)                                                                                     \
            far += len * far_step;                                                                           \
    }                                                                                                        \
    /* lo and hi made opaque here: else their vectors are hoisted out of the caller's loops and    \
     * held in registers through the products (256-bit tiles: 3 sums spilled, 2.5x slower) */       \
    PYCONV_OPAQUE(lo);                                                                                       \
    PYCONV_OPAQUE(hi);                                                                                       \
    const VEC lo_v = (VEC){0} + lo, hi_v = (VEC){0} + hi;                                                    \
    for (int r = 0; r < nrows; r++)                                                                          \
        for (int h = 0; h < 2; h++) {                                                                        \
            VEC v = acc[r][h] + (bias != NULL ? bias[r] : 0.0f);                                             \
            /* clip by selecting bits (a NaN compares false and stays) */                                    \
            IVEC below = v < lo_v, above = v > hi_v;                                                         \
            v = (VEC)(((IVEC)v & ~below) | ((IVEC)lo_v & below));                                           \
            v = (VEC)(((IVEC)v & ~above) | ((IVEC)hi_v & above));                                           \
            memcpy(out + r * ld_out + h * LANES, &v, sizeof v);                                              \
        }                                                                                                    \
}

#if defined(__GNUC__) || defined(__clang__)
PYCONV_DEFINE_TILE(pyconv_tile_512, pyconv_f32x16, pyconv_i32x16, 16, PYCONV_WIDE_ROWS)
PYCONV_DEFINE_TILE(pyconv_tile_256, pyconv_f32x8, pyconv_i32x8, 8, PYCONV_HALF_MAX_ROWS)
#else
#error "blocked_gemm.h needs the GCC/Clang vector extension"
#endif

/* The products of an nrows x 32 register block (pyconv_tile_512's arguments, init
 * nrows x 32 and row-major).  tiles512: as one 512-bit tile (PYCONV_WIDE_VECTORS());
 * else as 256-bit tiles of 6 (12 rows) or 4 (8 rows) rows by 16 columns, each half
 * of the columns by every row group in turn, so the half of b's rows a tile reads is
 * still in L1 for the next.  The first tile fetches what the block was asked to.
 *
 * A w read across k (w_kstep > 1, one cache line per k: PanelConv1x1's NCHW input)
 * would be streamed from L2 by each of the block's tiles; over PYCONV_KSTEP_CHUNK k
 * at a time (the partial sums in out between chunks) they share its lines in L1
 * (AVX2, 1 thread, 960 -> 320 @7: 0.57 -> 0.46 ms; 128 k: 0.46, 256 k: 0.56). */
enum { PYCONV_KSTEP_CHUNK = 64 };

static PYCONV_ALWAYS_INLINE inline void pyconv_block_products(
    const int tiles512, float* out, ptrdiff_t ld_out, const float* init, const int nrows, const float* w,
    ptrdiff_t ldw, ptrdiff_t w_kstep, const ptrdiff_t* taps, const ptrdiff_t* tap_lens, ptrdiff_t ntaps,
    ptrdiff_t tap_k, const float* b, ptrdiff_t b_step, const float* prefetch_next, const float* prefetch_far,
    ptrdiff_t far_step, const int far_lines, const float* bias, float lo, float hi)
{
    if (tiles512) {
        pyconv_tile_512(out, ld_out, init, PYCONV_BLOCK_COLS, nrows, w, ldw, w_kstep, taps, tap_lens, ntaps,
                        tap_k, b, b_step, prefetch_next, prefetch_far, far_step, far_lines, bias, lo, hi);
        return;
    }
    const int group = nrows % PYCONV_HALF_MAX_ROWS == 0 ? PYCONV_HALF_MAX_ROWS : 4, ntiles = 2 * (nrows / group);
    const int chunked = taps == NULL && tap_lens == NULL && w_kstep != 1 && tap_k > PYCONV_KSTEP_CHUNK;
    const ptrdiff_t chunk = chunked ? PYCONV_KSTEP_CHUNK : tap_k;
    ptrdiff_t k0 = 0;
    do {
        const ptrdiff_t kn = chunked && tap_k - k0 < chunk ? tap_k - k0 : chunk;
        const int last = k0 + kn >= tap_k;
        /* the first chunk adds init, later ones the partial sums in out; the last one finishes */
        const float* start = k0 == 0 ? init : out;
        const ptrdiff_t ld_start = k0 == 0 ? PYCONV_BLOCK_COLS : ld_out;
        const float* wk = w + k0 * w_kstep;
        const float* bk = b + k0 * b_step;
        const float* tile_bias = last ? bias : NULL;
        const float tile_lo = last ? lo : -INFINITY, tile_hi = last ? hi : INFINITY;
        /* the first tile fetches; the others run a loop without the prefetch tests */
        pyconv_tile_256(out, ld_out, start, ld_start, group, wk, ldw, w_kstep, taps, tap_lens, ntaps, kn, bk, b_step,
                        prefetch_next != NULL ? prefetch_next + k0 * b_step : NULL,
                        prefetch_far != NULL ? prefetch_far + k0 * far_step : NULL, far_step, far_lines, tile_bias,
                        tile_lo, tile_hi);
        for (int t = 1; t < ntiles; t++) {
            const int h = t / (ntiles / 2) * PYCONV_HALF_COLS, g = t % (ntiles / 2) * group;
            pyconv_tile_256(out + g * ld_out + h, ld_out, start != NULL ? start + g * ld_start + h : NULL, ld_start,
                            group, wk + g * ldw, ldw, w_kstep, taps, tap_lens, ntaps, kn, bk + h, b_step, NULL, NULL,
                            far_step, far_lines, tile_bias != NULL ? tile_bias + g : NULL, tile_lo, tile_hi);
        }
        k0 += kn;
    } while (chunked && k0 < tap_k);
}

#endif
