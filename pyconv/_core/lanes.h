/* Window reductions over 16 small planes held as the lanes of one vector, for
 * pooling.pyx's window_pool_lanes: planes transposed to pixel-major, lane c of
 * pixel i at lanes[i * 16 + c], so each tap of a window is one vector load and
 * one add or max, whatever the window's shape.
 *
 * GCC/Clang vector extension, no ISA intrinsics: the caller's multiversioned
 * clone picks the instructions (one AVX-512 register, two AVX2 or four NEON).
 * Written as plain lane loops, GCC kept the 16 partial results in scalar
 * registers. */
#ifndef PYCONV_LANES_H
#define PYCONV_LANES_H
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "transpose16.h"

#if defined(__GNUC__)
#define PYCONV_LANES_INLINE static inline __attribute__((always_inline))
typedef pyconv_f32x16 pyconv_lanes_f32;   /* simd.h's 16-float vectors */
typedef pyconv_i32x16 pyconv_lanes_i32;
#define PYCONV_HAVE_LANE_VECTORS 1
#else
#define PYCONV_LANES_INLINE static inline
#endif

enum { PYCONV_LANES_SUM = 0, PYCONV_LANES_MAX = 1, PYCONV_LANES_MAX_NAN = 2 };

#ifdef PYCONV_HAVE_LANE_VECTORS
/* *acc + *v, or max(*acc, *v) lane by lane (NaN propagating for PYCONV_LANES_MAX_NAN), into
 * *acc.  (Vectors through pointers: a vector argument or result by value makes GCC warn
 * that the ABI differs between the ISA clones, although this is always inlined.) */
PYCONV_LANES_INLINE void pyconv_lanes_op(pyconv_lanes_f32* acc, const pyconv_lanes_f32* v, int op)
{
    pyconv_lanes_i32 take;
    if (op == PYCONV_LANES_SUM) {
        *acc += *v;
        return;
    }
    take = *v > *acc;   /* v where it is larger (or NaN, when NaN propagates), else acc */
    if (op == PYCONV_LANES_MAX_NAN)
        take |= *v != *v;
    *acc = (pyconv_lanes_f32)(((pyconv_lanes_i32)*acc & ~take) | ((pyconv_lanes_i32)*v & take));
}
#endif

/* dst[c] = scale * sum, or max, over the window's taps of lane c, c < 16.  The taps
 * are rows h0, h0 + dh, ... < h1 by columns w0, w0 + dw, ... < w1 of a W-wide plane;
 * a window with no tap gives 0 (sum) or -inf (max).  op: PYCONV_LANES_SUM, _MAX
 * (NaN-free input) or _MAX_NAN (NaN propagates). */
PYCONV_LANES_INLINE void pyconv_reduce_lanes(const float* lanes, ptrdiff_t W, ptrdiff_t h0, ptrdiff_t h1,
                                             ptrdiff_t dh, ptrdiff_t w0, ptrdiff_t w1, ptrdiff_t dw,
                                             int op, float scale, float* dst)
{
#ifdef PYCONV_HAVE_LANE_VECTORS
    /* starting from the op's identity, so a window with no tap needs no case of its own */
    const float identity = op == PYCONV_LANES_SUM ? 0.0f : -INFINITY;
    pyconv_lanes_f32 acc = {identity, identity, identity, identity, identity, identity, identity, identity,
                            identity, identity, identity, identity, identity, identity, identity, identity};
    pyconv_lanes_f32 v;
    for (ptrdiff_t h = h0; h < h1; h += dh)
        for (ptrdiff_t w = w0; w < w1; w += dw) {
            memcpy(&v, lanes + (h * W + w) * 16, sizeof(v));
            pyconv_lanes_op(&acc, &v, op);
        }
    if (op == PYCONV_LANES_SUM)
        acc *= scale;
    memcpy(dst, &acc, sizeof(acc));
#else
    for (int c = 0; c < 16; c++) {
        float acc = op == PYCONV_LANES_SUM ? 0.0f : -INFINITY;
        int nan = 0;
        for (ptrdiff_t h = h0; h < h1; h += dh)
            for (ptrdiff_t w = w0; w < w1; w += dw) {
                float x = lanes[(h * W + w) * 16 + c];
                if (op == PYCONV_LANES_SUM)
                    acc += x;
                else {
                    nan |= x != x;
                    acc = x > acc ? x : acc;
                }
            }
        dst[c] = op == PYCONV_LANES_SUM ? acc * scale : nan && op == PYCONV_LANES_MAX_NAN ? NAN : acc;
    }
#endif
}

#if defined(__clang__)
#define PYCONV_UNROLL8 _Pragma("clang loop unroll_count(8)")
#elif defined(__GNUC__)
#define PYCONV_UNROLL8 _Pragma("GCC unroll 8")
#else
#define PYCONV_UNROLL8
#endif

/* One row of windows' rows, reduced and transposed to lanes in one pass:
 * dst[w * 16 + c] = sum or max over t < taps of src[c * plane_stride + t * tap_step + w],
 * w < W, c < 16 (W >= 8).  The rows are read in 8-pixel halves, the last one ending at
 * the row's end (overlapping the half before it, whose lanes it rewrites with the same
 * values), so nothing past a row is read and no reduced row goes through memory. */
PYCONV_LANES_INLINE void pyconv_reduce_rows_to_lanes(const float* src, ptrdiff_t plane_stride, ptrdiff_t W,
                                                     ptrdiff_t taps, ptrdiff_t tap_step, int op, float* dst)
{
    for (ptrdiff_t x0 = 0; x0 < W; x0 += 16) {
        const ptrdiff_t c0 = x0 < W - 8 ? x0 : W - 8, c1 = x0 + 8 < W - 8 ? x0 + 8 : W - 8;
#if defined(PYCONV_HAVE_LANE_VECTORS) && defined(PYCONV_HAVE_SHUFFLEVECTOR)
        pyconv_f32x16 r[16];
        /* unrolled, so that r stays in registers (a runtime loop inside keeps GCC from it) */
        PYCONV_UNROLL8
        for (int i = 0; i < 8; i++) {   /* planes i and i + 8, loaded as pyconv_transpose16 does */
            pyconv_f32x16 lo, hi;
            pyconv_load_half_rows(src + i * plane_stride, 8 * plane_stride, c0, c1, &lo, &hi);
            for (ptrdiff_t t = 1; t < taps; t++) {
                pyconv_f32x16 lo_t, hi_t;
                pyconv_load_half_rows(src + i * plane_stride + t * tap_step, 8 * plane_stride, c0, c1, &lo_t, &hi_t);
                pyconv_lanes_op(&lo, &lo_t, op);
                pyconv_lanes_op(&hi, &hi_t, op);
            }
            r[i] = lo;
            r[i + 8] = hi;
        }
        pyconv_transpose16_rounds(r);
        for (int j = 0; j < 8; j++) {
            memcpy(dst + (c0 + j) * 16, &r[j], sizeof(r[j]));
            memcpy(dst + (c1 + j) * 16, &r[j + 8], sizeof(r[j + 8]));
        }
#else
        for (ptrdiff_t w = c0; w < c1 + 8; w++)
            for (int c = 0; c < 16; c++) {
                const float* p = src + c * plane_stride + w;
                float acc = p[0];
                int nan = acc != acc;
                for (ptrdiff_t t = 1; t < taps; t++) {
                    float x = p[t * tap_step];
                    if (op == PYCONV_LANES_SUM)
                        acc += x;
                    else {
                        nan |= x != x;
                        acc = x > acc ? x : acc;
                    }
                }
                dst[w * 16 + c] = nan && op == PYCONV_LANES_MAX_NAN ? NAN : acc;
            }
#endif
    }
}

/* result[(oh * Wo + ow) * 16 + c] = the pool of output (oh, ow) of lane c: rows
 * rows[2 oh] .. < rows[2 oh + 1] step dh, columns cols[2 ow] .. < cols[2 ow + 1]
 * step dw (the taps inside the plane); scale: Ho x Wo factors (sums) or NULL. */
PYCONV_LANES_INLINE void pyconv_pool_lanes(const float* lanes, ptrdiff_t W, const ptrdiff_t* rows, ptrdiff_t Ho,
                                           ptrdiff_t dh, const ptrdiff_t* cols, ptrdiff_t Wo, ptrdiff_t dw,
                                           int op, const float* scale, float* result)
{
    for (ptrdiff_t oh = 0; oh < Ho; oh++)
        for (ptrdiff_t ow = 0; ow < Wo; ow++, result += 16)
            pyconv_reduce_lanes(lanes, W, rows[2 * oh], rows[2 * oh + 1], dh, cols[2 * ow], cols[2 * ow + 1], dw,
                                op, scale ? scale[oh * Wo + ow] : 1.0f, result);
}

#endif
