# A register-blocked GEMM for small matrices, shared by the GEMM-shaped kernels
# (conv_gemm's 1x1 and im2col tiles, winograd's per-position products), which
# call it from their own multi-versioned functions: inlined there, it is
# compiled for each ISA clone.  Which GEMMs take it instead of sgemm is policy,
# decided in pyconv/ops/conv.py (it needs AVX2 or AVX-512: see conv_gemm.blocked_loop_pays).
from libc.math cimport INFINITY

from pyconv._core.epilogue cimport Epilogue, clip_bounds, epilogue_row
from pyconv._core.simd cimport inlined_void, wide_vectors


cdef extern from "blocked_gemm.h" nogil:
    enum:
        BLOCK_COLS "PYCONV_BLOCK_COLS"     # columns of c per register block
        WIDE_ROWS "PYCONV_WIDE_ROWS"       # rows of c per wide register block
        BLOCK_ROWS "PYCONV_NARROW_ROWS"    # rows per narrow block: the least blocked_gemm needs
    void block_products "pyconv_block_products"(const int tiles512, float* out, Py_ssize_t ld_out, const float* init, const int nrows,
                                                const float* w, Py_ssize_t ldw, Py_ssize_t w_kstep,
                                                const Py_ssize_t* taps, const Py_ssize_t* tap_lens,
                                                Py_ssize_t ntaps, Py_ssize_t tap_k,
                                                const float* b, Py_ssize_t b_step, const float* prefetch_next,
                                                const float* prefetch_far, Py_ssize_t far_step, const int far_lines,
                                                const float* bias, float lo, float hi)

cdef enum:
    K_CHUNK = 64             # k per pass of chunked_column
    FAR_AHEAD = 1 << 14      # floats (64 KiB) of panels chunked_column fetches ahead into L2
    CHUNKED_MAX_ROWS = 16    # rows (whole narrow blocks) up to which blocked_gemm chunks K on panels


cdef inline Py_ssize_t panel_start(Py_ssize_t block, Py_ssize_t ncols) noexcept nogil:
    """First column of column block ``block`` of an ncols-wide c (ncols >= BLOCK_COLS):
    the last block ends at ncols, overlapping the one before it."""
    return min(block * BLOCK_COLS, ncols - BLOCK_COLS)


cdef inline Py_ssize_t row_blocks(Py_ssize_t rows, Py_ssize_t* wide) noexcept nogil:
    """How many register blocks cover rows (>= BLOCK_ROWS): the first ``wide[0]`` of
    WIDE_ROWS rows, the rest of BLOCK_ROWS (row_block_start).  A wide block costs
    about 12 % less per row; a remainder of 1-4 rows after wide blocks is cheaper as
    two narrow blocks (16 rows) in place of one wide one plus a narrow one (20)."""
    cdef Py_ssize_t full = rows // WIDE_ROWS, rest = rows % WIDE_ROWS
    if rest == 0:
        wide[0] = full
        return full
    if full == 0:   # 8 .. 11 rows
        wide[0] = 0
        return (rows + BLOCK_ROWS - 1) // BLOCK_ROWS
    if rest <= 4:
        wide[0] = full - 1
        return full + 1
    if rest <= BLOCK_ROWS:
        wide[0] = full
        return full + 1
    wide[0] = full + 1
    return full + 1


cdef inline Py_ssize_t row_block_start(Py_ssize_t block, Py_ssize_t wide, Py_ssize_t rows) noexcept nogil:
    """First row of register block ``block`` (row_blocks): the last wide or narrow block
    ends at rows, overlapping the one before it instead of running a remainder loop."""
    if block < wide:
        return min(block * WIDE_ROWS, rows - WIDE_ROWS)
    return min(wide * WIDE_ROWS + (block - wide) * BLOCK_ROWS, rows - BLOCK_ROWS)


cdef inline inlined_void register_block(bint tiles512, bint wide_block, float* out, Py_ssize_t ld_out, const float* w,
                                       Py_ssize_t ldw, Py_ssize_t w_kstep, const Py_ssize_t* taps,
                                       const Py_ssize_t* tap_lens, Py_ssize_t ntaps, Py_ssize_t tap_k,
                                       const float* b, Py_ssize_t b_step, const float* prefetch_next,
                                       const float* prefetch_far, Py_ssize_t far_step, int far_lines,
                                       const float* bias, float lo, float hi) noexcept nogil:
    """block_products (512-bit tiles where ``tiles512``) for a wide or a narrow register block,
    its row count a constant in each call (so each is compiled for its own size, its sums
    in registers); so are the prefetch pointers where a caller passes NULL."""
    if wide_block:
        block_products(tiles512, out, ld_out, NULL, WIDE_ROWS, w, ldw, w_kstep, taps, tap_lens, ntaps, tap_k, b, b_step,
                       prefetch_next, prefetch_far, far_step, far_lines, bias, lo, hi)
    else:
        block_products(tiles512, out, ld_out, NULL, BLOCK_ROWS, w, ldw, w_kstep, taps, tap_lens, ntaps, tap_k, b, b_step,
                       prefetch_next, prefetch_far, far_step, far_lines, bias, lo, hi)


cdef inline inlined_void chunked_column(bint tiles512, float* sums, Py_ssize_t nrow_blocks, const float* w, Py_ssize_t ldw,
                                       Py_ssize_t w_kstep, Py_ssize_t K, const float* panel, float* c,
                                       Py_ssize_t ldc, const float* bias, float lo, float hi) noexcept nogil:
    """c's nrow_blocks * BLOCK_ROWS x BLOCK_COLS column = clip(w @ panel + bias, lo, hi),
    every narrow register block over K_CHUNK k of the panel at a time, the partial sums of
    all rows in ``sums`` between chunks.

    The panels stream from memory (megabytes of Winograd filters, which a network's
    other layers evict from L3) at the rate the few rows consume them: the first block
    fetches the next chunk into L1, the second one the chunk FAR_AHEAD floats on into
    L2, which keeps more lines in flight than L1's fill buffers allow (ResNet-18's 512
    @7 layers, 16.8 MB of filters each, 6-10 % faster in the network)."""
    cdef Py_ssize_t k0 = 0, kn, rb, r0, ld
    cdef const float* ahead
    cdef const float* far
    cdef float* dst
    cdef bint last
    while k0 < K:
        kn = min(<Py_ssize_t>K_CHUNK, K - k0)
        last = k0 + kn == K
        for rb in range(nrow_blocks):
            r0 = rb * BLOCK_ROWS
            # the first block fetches the next chunk (past the panel's end: the next panel; past
            # the last one a prefetch is a hint, which never faults)
            ahead = panel + (k0 + kn) * BLOCK_COLS if rb == 0 else NULL
            far = panel + (k0 + kn) * BLOCK_COLS + FAR_AHEAD if rb == 1 else NULL
            dst, ld = (c + r0 * ldc, ldc) if last else (sums + r0 * BLOCK_COLS, <Py_ssize_t>BLOCK_COLS)
            block_products(tiles512, dst, ld, sums + r0 * BLOCK_COLS if k0 else NULL, BLOCK_ROWS, w + r0 * ldw + k0 * w_kstep,
                           ldw, w_kstep, NULL, NULL, 1, kn, panel + k0 * BLOCK_COLS, BLOCK_COLS, ahead, far, BLOCK_COLS, 2,
                           bias + r0 if last and bias != NULL else NULL, lo if last else -INFINITY,
                           hi if last else INFINITY)
        k0 += kn


cdef inline inlined_void blocked_gemm(const float* w, Py_ssize_t ldw, Py_ssize_t w_kstep, Py_ssize_t K,
                                     const Py_ssize_t* taps, const Py_ssize_t* tap_lens, Py_ssize_t ntaps,
                                     const float* b,
                                     Py_ssize_t ldb, float* c, Py_ssize_t ldc, Py_ssize_t rows,
                                     Py_ssize_t ncols, const float* bias, const float* residual,
                                     Epilogue ep) noexcept nogil:
    """c[rows x ncols] = epilogue(w[rows x K] @ b[K x ncols]) without BLAS, c and b row-major,
    w[r, k] at w[r * ldw + k * w_kstep] (row-major: w_kstep 1; ldw 1 reads w transposed).
    bias: rows floats or NULL; residual: laid out like c, or NULL.  The epilogue runs on
    each block's rows as they are stored (no second pass over c).

    taps (ntaps offsets, or NULL with ntaps 1) makes it an implicit GEMM: tap t covers
    tap_lens[t] consecutive k (tap_lens NULL: K / ntaps each), its step i reading
    w[taps[t] + r * ldw + i * w_kstep], so a convolution reads its input in place, one
    offset per run of kernel taps, instead of an im2col copy.

    ldb == 0 says b is packed in panels instead: column block j (columns
    panel_start(j, ncols) ...) is the row-major K x BLOCK_COLS matrix at b + j * K *
    BLOCK_COLS, read sequentially where a row-major b of many columns is read in short
    strided pieces (one per k, each on its own cache lines; slow for large K and ncols).

    sgemm packs both operands and zeroes C in a pass of its own, which for small
    weight matrices costs as much as the multiplies.  Here each register block of c
    (WIDE_ROWS or BLOCK_ROWS x BLOCK_COLS: row_blocks) is accumulated over all of K
    (blocked_gemm.h) and stored once.  Needs rows >= BLOCK_ROWS and ncols >=
    BLOCK_COLS: the last blocks overlap the previous ones (recomputing a few values,
    so also the epilogue) instead of running a remainder loop.  Indices are
    Py_ssize_t: with C ints, sign extensions of the weight addresses per k
    outnumbered the FMAs."""
    cdef float sums[CHUNKED_MAX_ROWS * BLOCK_COLS]
    cdef Py_ssize_t r, r0, nrows, block, rb, jb, p0, wide
    cdef Py_ssize_t nrow_blocks = row_blocks(rows, &wide)
    cdef bint tiles512 = wide_vectors()   # 512-bit tiles, or 256-bit ones (blocked_gemm.h)
    # Few rows on long panels (Winograd's 7x7 layers: 16 tiles x 512 channels): a panel
    # streams from memory while the first row block reads it, faster than the loop takes
    # it, and the others find it in L2.  There every row block runs over K_CHUNK k of the
    # panel at a time, read from L1 (chunked_column; 16 x 512 x 512 alone: 15 % faster).
    # Narrow blocks only: wide ones ran 2-2.5x slower chunked (20 or 24 rows x 512 x 512).
    cdef bint chunked = (ldb == 0 and taps == NULL and K > K_CHUNK and rows <= CHUNKED_MAX_ROWS
                         and wide == 0 and nrow_blocks * BLOCK_ROWS == rows)
    cdef Py_ssize_t col_blocks = (ncols + BLOCK_COLS - 1) // BLOCK_COLS
    # Block order: with K >= rows (projections: 144 -> 24) the K x BLOCK_COLS panel of b is
    # the big operand, so the row blocks go inside and reuse it from L1 (3-7 % faster on
    # MobileNetV2's projections); with few inputs and many rows (expansions: 16 -> 96)
    # the column blocks go inside, writing each block of rows sequentially (that order
    # is 1-6 % faster there).
    cdef bint rows_inside = K >= rows or ldb == 0
    cdef Py_ssize_t b_step = ldb if ldb else BLOCK_COLS
    cdef float lo, hi
    # without a residual, bias and a clip activation are applied as the block leaves the
    # registers (one store per output); else plain sums are stored, then epilogue_row
    cdef bint in_registers = clip_bounds(ep, residual != NULL, &lo, &hi)
    cdef const float* block_bias
    cdef const float* brow
    cdef const float* next_panel
    cdef const float* far_panel
    cdef Py_ssize_t far_step
    cdef int far_lines
    cdef const float* wr
    cdef float* crow
    for block in range(nrow_blocks * col_blocks):
        if rows_inside:
            rb, jb = block % nrow_blocks, block // nrow_blocks
        else:
            rb, jb = block // col_blocks, block % col_blocks
        r0 = row_block_start(rb, wide, rows)
        p0 = panel_start(jb, ncols)
        brow = b + p0 if ldb else b + jb * K * BLOCK_COLS
        nrows = WIDE_ROWS if rb < wide else BLOCK_ROWS
        if chunked:
            if rb == 0:   # the whole column, every block
                chunked_column(tiles512, sums, nrow_blocks, w, ldw, w_kstep, K, brow, c + p0, ldc,
                               bias if in_registers else NULL, lo, hi)
        else:
            # A column block of b streams from memory on its first row block, faster than
            # the prefetchers ramp up (panels: megabytes of weights; a row-major b: a page
            # per k): the second row block, which reads it from cache, fetches the next
            # column block (its k-th row per k), and the one after that is fetched into
            # L2 (see chunked_column) so that the second one finds it there: with panels
            # by the first four row blocks, when there are that many, a quarter each at a
            # line per two k, a demand DRAM keeps up with (in a network, VGG-11's
            # 512-channel Winograd layers and ResNet-18's 256->512 stride-2 conv 5-10 %
            # faster than without; a line per k from the third and fourth blocks alone was
            # 5-10 % slower than this on VGG-11's 512-channel layers); with a row-major b
            # by the first, a row per k (MobileNetV2's 144->24 and 96->24 projections @56
            # 19-23 % faster in the network, SqueezeNet's squeeze layers 8-14 %).  Panels
            # are fetched past the last one too: what follows is usually the next GEMM's
            # (Winograd's next position), and a prefetch never faults (VGG-11's Winograd
            # layers 2-3 % faster in the network).
            next_panel = NULL
            far_panel = NULL
            if rows_inside and rb == 1 and (jb + 1 < col_blocks or ldb == 0):
                next_panel = b + panel_start(jb + 1, ncols) if ldb else brow + K * BLOCK_COLS
            far_step, far_lines = BLOCK_COLS // 4, 1
            if ldb == 0 and nrow_blocks >= 4 and rb < 4:
                far_panel = brow + 2 * K * BLOCK_COLS + rb * K * (BLOCK_COLS // 4)
            elif ldb != 0 and rows_inside and rb == 0 and jb + 2 < col_blocks:
                far_panel, far_step, far_lines = b + panel_start(jb + 2, ncols), ldb, 2
            wr = w + r0 * ldw
            block_bias = bias + r0 if in_registers and bias != NULL else NULL
            # the blocks that fetch nothing (most of them) get a loop without the prefetch tests
            if next_panel == NULL and far_panel == NULL:
                register_block(tiles512, rb < wide, c + r0 * ldc + p0, ldc, wr, ldw, w_kstep, taps, tap_lens, ntaps, K // ntaps,
                               brow, b_step, NULL, NULL, far_step, far_lines, block_bias, lo, hi)
            else:
                register_block(tiles512, rb < wide, c + r0 * ldc + p0, ldc, wr, ldw, w_kstep, taps, tap_lens, ntaps, K // ntaps,
                               brow, b_step, next_panel, far_panel, far_step, far_lines, block_bias, lo, hi)
        if not in_registers:
            for r in range(r0, r0 + nrows):
                crow = c + r * ldc + p0
                epilogue_row(crow, BLOCK_COLS, bias[r] if bias != NULL else 0.0,
                             residual + r * ldc + p0 if residual != NULL else NULL, ep)
