# A register-blocked GEMM for small matrices, shared by the GEMM-shaped kernels
# (conv_gemm's 1x1 and im2col tiles, winograd's per-position products), which
# call it from their own multi-versioned functions: inlined there, it is
# compiled for each ISA clone.  Which GEMMs take it instead of sgemm is policy,
# decided in pyconv/ops/conv.py (it needs AVX-512: see conv_gemm.blocked_loop_pays).
from pyconv._core.epilogue cimport Epilogue, clip, clip_bounds, epilogue_row
from pyconv._core.simd cimport inlined_void, prefetch


cdef enum:
    BLOCK_ROWS = 8    # rows of c per register block of blocked_gemm
    BLOCK_COLS = 32   # columns of c per register block (8 x 32 floats: 16 of AVX-512's 32 registers)


cdef inline Py_ssize_t panel_start(Py_ssize_t block, Py_ssize_t ncols) noexcept nogil:
    """First column of column block ``block`` of an ncols-wide c (ncols >= BLOCK_COLS):
    the last block ends at ncols, overlapping the one before it."""
    return min(block * BLOCK_COLS, ncols - BLOCK_COLS)


cdef inline inlined_void blocked_gemm(const float* w, Py_ssize_t ldw, Py_ssize_t w_kstep, Py_ssize_t K,
                                     const Py_ssize_t* taps, Py_ssize_t ntaps, const float* b,
                                     Py_ssize_t ldb, float* c, Py_ssize_t ldc, Py_ssize_t rows,
                                     Py_ssize_t ncols, const float* bias, const float* residual,
                                     Epilogue ep) noexcept nogil:
    """c[rows x ncols] = epilogue(w[rows x K] @ b[K x ncols]) without BLAS, c and b row-major,
    w[r, k] at w[r * ldw + k * w_kstep] (row-major: w_kstep 1; ldw 1 reads w transposed).
    bias: rows floats or NULL; residual: laid out like c, or NULL.  The epilogue runs on
    each block's rows as they are stored (no second pass over c).

    taps (ntaps offsets, or NULL with ntaps 1) makes it an implicit GEMM: k = t * (K /
    ntaps) + i reads w[taps[t] + r * ldw + i * w_kstep], so a convolution reads its
    input in place, one offset per kernel tap, instead of an im2col copy.

    ldb == 0 says b is packed in panels instead: column block j (columns
    panel_start(j, ncols) ...) is the row-major K x BLOCK_COLS matrix at b + j * K *
    BLOCK_COLS, read sequentially where a row-major b of many columns is read in short
    strided pieces (one per k, each on its own cache lines; slow for large K and ncols).

    sgemm packs both operands and zeroes C in a pass of its own, which for small
    weight matrices costs as much as the multiplies.  Here each BLOCK_ROWS x BLOCK_COLS
    block of c is accumulated over all of K in a local array and stored once.  Needs
    rows >= BLOCK_ROWS and ncols >= BLOCK_COLS: the last blocks overlap the previous
    ones (recomputing a few values from acc, so also the epilogue) instead of running
    a remainder loop.  Indices are Py_ssize_t: with C ints, sign extensions of the eight
    weight addresses per k outnumbered the FMAs."""
    cdef float acc[BLOCK_ROWS][BLOCK_COLS]
    cdef Py_ssize_t r, r0, k, j, block, jb, p0, t, tap_k = K // ntaps
    cdef Py_ssize_t row_blocks = (rows + BLOCK_ROWS - 1) // BLOCK_ROWS
    cdef Py_ssize_t col_blocks = (ncols + BLOCK_COLS - 1) // BLOCK_COLS
    # Block order: with K >= rows (projections: 144 -> 24) the K x BLOCK_COLS panel of b is
    # the big operand, so the row blocks go inside and reuse it from L1 (3-7 % faster on
    # MobileNetV2's projections); with few inputs and many rows (expansions: 16 -> 96)
    # the column blocks go inside, writing each block of rows sequentially (that order
    # is 1-6 % faster there).
    cdef bint rows_inside = K >= rows or ldb == 0
    cdef Py_ssize_t b_step = ldb if ldb else BLOCK_COLS
    cdef float lo, hi, b_r
    cdef bint in_registers = clip_bounds(ep, residual != NULL, &lo, &hi)
    cdef const float* brow
    cdef const float* next_panel
    cdef const float* wk
    cdef float* crow
    for block in range(row_blocks * col_blocks):
        if rows_inside:
            r0, jb = block % row_blocks * BLOCK_ROWS, block // row_blocks
        else:
            r0, jb = block // col_blocks * BLOCK_ROWS, block % col_blocks
        r0 = min(r0, rows - BLOCK_ROWS)
        p0 = panel_start(jb, ncols)
        for r in range(BLOCK_ROWS):
            for j in range(BLOCK_COLS):
                acc[r][j] = 0.0
        brow = b + p0 if ldb else b + jb * K * BLOCK_COLS
        # Panels stream from memory (megabytes of weights), each on its first row block,
        # faster than the prefetchers ramp up: the second row block of a panel, which
        # reads it from cache, fetches the next panel (its k-th row per k).
        next_panel = NULL
        if ldb == 0 and rows_inside and block % row_blocks == 1 and jb + 1 < col_blocks:
            next_panel = brow + K * BLOCK_COLS
        for t in range(ntaps):
            wk = w + r0 * ldw + (taps[t] if taps != NULL else 0)
            for k in range(t * tap_k, (t + 1) * tap_k):
                if next_panel != NULL:
                    prefetch(next_panel + k * BLOCK_COLS)
                    prefetch(next_panel + k * BLOCK_COLS + 16)
                for r in range(BLOCK_ROWS):
                    for j in range(BLOCK_COLS):
                        acc[r][j] += wk[r * ldw] * brow[j]
                brow += b_step
                wk += w_kstep
        for r in range(BLOCK_ROWS):
            crow = c + (r0 + r) * ldc + p0
            b_r = bias[r0 + r] if bias != NULL else 0.0
            if in_registers:
                # bias and clip on the block while it is in registers: one store per output
                for j in range(BLOCK_COLS):
                    crow[j] = clip(acc[r][j] + b_r, lo, hi)
            else:
                for j in range(BLOCK_COLS):
                    crow[j] = acc[r][j]
                epilogue_row(crow, BLOCK_COLS, b_r, residual + (r0 + r) * ldc + p0 if residual != NULL else NULL,
                             ep)
