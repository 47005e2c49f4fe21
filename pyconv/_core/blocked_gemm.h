/* The multiply loop of blocked_gemm.pxd's register blocks, in C because it needs
 * a loop pragma Cython cannot write: unrolled four k at a time, the per-k pointer
 * increments and loop test no longer compete with the FMAs for the ALU ports
 * (with 12-row blocks: 150 -> 170 GF/s on 64->128 3x3 s2 @56, AVX-512).
 *
 * nrows is a constant at each call site: inlined into it, the block's rows x 32
 * sums stay in registers (24 of AVX-512's 32 for 12 rows), and the products are
 * plain loops the caller's multiversioned clone vectorizes. */
#ifndef PYCONV_BLOCKED_GEMM_H
#define PYCONV_BLOCKED_GEMM_H
#include <stddef.h>

#include "simd.h"

enum {
    PYCONV_BLOCK_COLS = 32,   /* columns of c per register block */
    PYCONV_WIDE_ROWS = 12,    /* rows of a wide register block */
    PYCONV_NARROW_ROWS = 8    /* rows of a narrow one: the least a blocked GEMM needs */
};

#if defined(__GNUC__) || defined(__clang__)
#define PYCONV_UNROLL4 _Pragma("GCC unroll 4")
#else
#define PYCONV_UNROLL4
#endif

/* out[r * ld_out + j] = clip(init[r][j] + sum over k of w[r * ldw + k'] * b[k * b_step + j]
 * + bias[r], lo, hi) for r < nrows, j < 32 (init NULL: 0; bias NULL: 0; lo, hi = -inf,
 * inf: no clip; NaN passes through either way).  k runs over ntaps taps of tap_lens[t]
 * steps each (tap_lens NULL: tap_k), step i of tap t reading k' = taps[t] + i * w_kstep
 * (taps NULL: one tap at offset 0); b advances b_step floats per k.  prefetch_next, when
 * not NULL, is the next column block of b (32 floats per k, b_step apart), fetched into
 * cache a k at a time while this one is read; prefetch_far likewise, into the outer
 * caches only (PYCONV_PREFETCH_FAR), far_lines (1 or 2) lines per k from far_step
 * floats apart.  The sums leave the registers once, as the final values. */
static PYCONV_ALWAYS_INLINE inline void pyconv_block_products(
    float* out, ptrdiff_t ld_out, const float* init, const int nrows, const float* w, ptrdiff_t ldw,
    ptrdiff_t w_kstep, const ptrdiff_t* taps, const ptrdiff_t* tap_lens, ptrdiff_t ntaps, ptrdiff_t tap_k,
    const float* b, ptrdiff_t b_step, const float* prefetch_next, const float* prefetch_far,
    ptrdiff_t far_step, const int far_lines, const float* bias, float lo, float hi)
{
    const float* next = prefetch_next;
    const float* far = prefetch_far;
    float acc[PYCONV_WIDE_ROWS][PYCONV_BLOCK_COLS];
    for (int r = 0; r < nrows; r++)
        for (int j = 0; j < PYCONV_BLOCK_COLS; j++)
            acc[r][j] = init != NULL ? init[r * PYCONV_BLOCK_COLS + j] : 0.0f;
    for (ptrdiff_t t = 0; t < ntaps; t++) {
        const float* wk = w + (taps != NULL ? taps[t] : 0);
        const ptrdiff_t len = tap_lens != NULL ? tap_lens[t] : tap_k;
        PYCONV_UNROLL4
        for (ptrdiff_t k = 0; k < len; k++) {
            if (next != NULL) {
                PYCONV_PREFETCH(next + k * b_step);
                PYCONV_PREFETCH(next + k * b_step + 16);
            }
            if (far != NULL) {
                const float* line = far + k * far_step;
                PYCONV_PREFETCH_FAR(line);
                if (far_lines == 2)
                    PYCONV_PREFETCH_FAR(line + 16);
            }
            for (int r = 0; r < nrows; r++) {
                const float wr = wk[r * ldw + k * w_kstep];
                for (int j = 0; j < PYCONV_BLOCK_COLS; j++)
                    acc[r][j] += wr * b[k * b_step + j];
            }
        }
        b += len * b_step;
        if (next != NULL)
            next += len * b_step;
        if (far != NULL)
            far += len * far_step;
    }
    for (int r = 0; r < nrows; r++) {
        const float add = bias != NULL ? bias[r] : 0.0f;
        for (int j = 0; j < PYCONV_BLOCK_COLS; j++) {
            float v = acc[r][j] + add;
            if (v < lo) v = lo;
            if (v > hi) v = hi;
            out[r * ld_out + j] = v;
        }
    }
}

#endif
