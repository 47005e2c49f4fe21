/* 16 x 16 float transpose for the NCHW <-> channels-innermost layout changes of
 * winograd.pyx and pooling.pyx:  dst[j * dst_stride + i] = src[i * src_stride + j],
 * i, j < 16.
 *
 * Compilers turn the plain loop into 256 scalar loads and stores (gathers are
 * not profitable to them).  With the compiler's portable vector extension the
 * 16 rows are loaded as half rows straight into the registers' halves, which
 * swaps the off-diagonal 8x8 blocks, then transposed in registers by three
 * rounds of two-input shuffles that swap the 4x4, 2x2 and 1x1 blocks (48
 * shuffles, AVX-512: one vpermt2ps each; the fourth round as shuffles made
 * Winograd's 64 @56 and 128 @28 convs 7-8 % slower).  No ISA intrinsics: the
 * caller's multiversioned clone picks the instructions. */
#ifndef PYCONV_TRANSPOSE16_H
#define PYCONV_TRANSPOSE16_H
#include <stddef.h>
#include <string.h>

#include "simd.h"

#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define PYCONV_HAVE_SHUFFLEVECTOR 1
#endif
#endif

#if defined(__GNUC__)
#define PYCONV_LAYOUT_INLINE static inline __attribute__((always_inline))
#else
#define PYCONV_LAYOUT_INLINE static inline
#endif

#ifdef PYCONV_HAVE_SHUFFLEVECTOR

/* rows i and i + b (bit b of i clear) exchange their off-diagonal b x b blocks */
#define PYCONV_SWAP_BLOCKS(VEC, r, i, b, LO, HI) do { \
        VEC lo_ = __builtin_shufflevector(r[i], r[i + b], LO); \
        VEC hi_ = __builtin_shufflevector(r[i], r[i + b], HI); \
        r[i] = lo_; r[i + b] = hi_; } while (0)
#define PYCONV_LO4 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27
#define PYCONV_HI4 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define PYCONV_LO2 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define PYCONV_HI2 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define PYCONV_LO1 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30
#define PYCONV_HI1 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31

/* The last three rounds of the transpose, in registers: afterwards r[j] holds column j
 * of the 16 x 16 block whose row i was loaded as r[i] = (row i, cols 0-7 | row i + 8,
 * cols 0-7) and r[i + 8] = (row i, cols 8-15 | row i + 8, cols 8-15), i < 8. */
PYCONV_LAYOUT_INLINE void pyconv_transpose16_rounds(pyconv_f32x16 r[16])
{
    for (int i = 0; i < 16; i++)
        if (!(i & 4)) PYCONV_SWAP_BLOCKS(pyconv_f32x16, r, i, 4, PYCONV_LO4, PYCONV_HI4);
    for (int i = 0; i < 16; i++)
        if (!(i & 2)) PYCONV_SWAP_BLOCKS(pyconv_f32x16, r, i, 2, PYCONV_LO2, PYCONV_HI2);
    for (int i = 0; i < 16; i += 2)
        PYCONV_SWAP_BLOCKS(pyconv_f32x16, r, i, 1, PYCONV_LO1, PYCONV_HI1);
}

/* *lo = (a[c0 .. c0 + 8) | a[step + c0 .. + 8)), *hi the same at c1: the half rows of
 * two rows going straight into a register's halves (the transpose's first round) */
PYCONV_LAYOUT_INLINE void pyconv_load_half_rows(const float* a, ptrdiff_t step, ptrdiff_t c0, ptrdiff_t c1,
                                                pyconv_f32x16* lo, pyconv_f32x16* hi)
{
    pyconv_f32x8 a0, a1, b0, b1;
    memcpy(&a0, a + c0, sizeof(a0));
    memcpy(&b0, a + step + c0, sizeof(b0));
    memcpy(&a1, a + c1, sizeof(a1));
    memcpy(&b1, a + step + c1, sizeof(b1));
    *lo = __builtin_shufflevector(a0, b0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    *hi = __builtin_shufflevector(a1, b1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

#define PYCONV_LO2_8 0, 1, 8, 9, 4, 5, 12, 13
#define PYCONV_HI2_8 2, 3, 10, 11, 6, 7, 14, 15
#define PYCONV_LO1_8 0, 8, 2, 10, 4, 12, 6, 14
#define PYCONV_HI1_8 1, 9, 3, 11, 5, 13, 7, 15

/* The 8 x 8 transpose in 256-bit vectors, the same way: rows i and i + 4 loaded as
 * halves (the 4 x 4 round), then the 2 x 2 and 1 x 1 rounds, 16 shuffles. */
PYCONV_LAYOUT_INLINE void pyconv_transpose8(const float* src, ptrdiff_t src_stride, float* dst,
                                            ptrdiff_t dst_stride)
{
    typedef float f32x4 __attribute__((vector_size(16)));
    pyconv_f32x8 r[8];
    f32x4 a0, a1, b0, b1;
    for (int i = 0; i < 4; i++) {
        memcpy(&a0, src + i * src_stride, sizeof a0);
        memcpy(&a1, src + i * src_stride + 4, sizeof a1);
        memcpy(&b0, src + (i + 4) * src_stride, sizeof b0);
        memcpy(&b1, src + (i + 4) * src_stride + 4, sizeof b1);
        r[i] = __builtin_shufflevector(a0, b0, 0, 1, 2, 3, 4, 5, 6, 7);
        r[i + 4] = __builtin_shufflevector(a1, b1, 0, 1, 2, 3, 4, 5, 6, 7);
    }
    for (int i = 0; i < 8; i++)
        if (!(i & 2)) PYCONV_SWAP_BLOCKS(pyconv_f32x8, r, i, 2, PYCONV_LO2_8, PYCONV_HI2_8);
    for (int i = 0; i < 8; i += 2)
        PYCONV_SWAP_BLOCKS(pyconv_f32x8, r, i, 1, PYCONV_LO1_8, PYCONV_HI1_8);
    for (int j = 0; j < 8; j++)
        memcpy(dst + j * dst_stride, &r[j], sizeof(r[j]));
}

/* With 512-bit vectors (PYCONV_WIDE_VECTORS()) in 16 registers; else as four 8 x 8
 * blocks, whose 8 registers fit where 16 x 16 would spill (AVX2, NEON). */
PYCONV_LAYOUT_INLINE void pyconv_transpose16(const float* src, ptrdiff_t src_stride,
                                             float* dst, ptrdiff_t dst_stride)
{
    if (!PYCONV_WIDE_VECTORS()) {
        for (int bi = 0; bi < 16; bi += 8)
            for (int bj = 0; bj < 16; bj += 8)
                pyconv_transpose8(src + bi * src_stride + bj, src_stride, dst + bj * dst_stride + bi, dst_stride);
        return;
    }
    pyconv_f32x16 r[16];
    /* the first round (8 x 8 blocks) is done by the loads, so shuffles are left for three rounds only */
    for (int i = 0; i < 8; i++)
        pyconv_load_half_rows(src + i * src_stride, 8 * src_stride, 0, 8, &r[i], &r[i + 8]);
    pyconv_transpose16_rounds(r);
    for (int j = 0; j < 16; j++)
        memcpy(dst + j * dst_stride, &r[j], sizeof(r[j]));
}
#else
PYCONV_LAYOUT_INLINE void pyconv_transpose16(const float* src, ptrdiff_t src_stride,
                                             float* dst, ptrdiff_t dst_stride)
{
    for (int j = 0; j < 16; j++)
        for (int i = 0; i < 16; i++)
            dst[j * dst_stride + i] = src[i * src_stride + j];
}
#endif

#endif
