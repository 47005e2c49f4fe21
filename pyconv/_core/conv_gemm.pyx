# GEMM convolution on NCHW: 1x1 and general kxk (any stride, padding,
# dilation, groups):   out[g] (Co/g x P) = W[g] (Co/g x K) @ B (K x P),
# K = Ci/g * kh * kw.
#
# B comes from the input's phase planes (pyconv/_core/phase_planes.pxd): every
# tap of an output row reads one contiguous run of a phase plane, so the im2col
# of a tile is one memcpy per (B row, output row), a 1x1 conv reads B straight
# from the phase planes, and a 1x1 stride-1 unpadded conv straight from x.
# B holds only real output pixels (not the phase planes' wider rows): at 7x7
# the wide grid would multiply 9 columns per row for 7 outputs.
#
# The output pixels are cut into tiles of ``tile_cols``; each (group, tile)
# task gathers its B rows and runs one single-threaded sgemm that writes the
# NCHW output rows in place; the fused epilogue runs on them right after,
# while they are hot.  With a fused max pool (2x2 or 3x3, stride 2) a tile is
# whole pairs of output rows (and, for 3x3 windows, the row after them, which the
# next tile computes again), multiplied into scratch and pooled from there: only
# the pooled quarter reaches the output.  Tasks are spread over the OpenMP threads (the
# BLAS is always on one thread, see pyconv/_threads.py).
from cython.parallel cimport prange
from libc.string cimport memcpy

from pyconv._core.blas cimport gemm_rowmajor
from pyconv._core.blocked_gemm cimport BLOCK_COLS, BLOCK_ROWS, blocked_gemm
from pyconv._core.epilogue cimport Epilogue, epilogue_from_spec, epilogue_row
from pyconv._core.max_pool_rows cimport max_pool_2x2_row, max_pool_3x3s2_row
from pyconv._core.parallel cimport pyconv_omp_thread_id, thread_stride
from pyconv._core.phase_planes cimport PhaseGeom, phase_geometry, phase_split, tap_offset
from pyconv._core.ndarrays cimport check_array, check_conv_arrays, check_floats, data_of
from pyconv._core.simd cimport fma_vectors, multiversion_void, wide_vectors

cimport numpy as cnp

cnp.import_array()   # the NumPy C API behind ndarrays.pxd


cdef struct ConvGeom:
    PhaseGeom ph
    int C, Co, Ho, Wo, groups
    bint direct          # B is x itself (1x1, stride 1, unpadded)
    int pool             # 0, or out is the output max-pooled over pool x pool windows, stride 2
    int Hp, Wp           # the pooled output's size


def gemm_layout(int kh, int kw, stride, pads, dilation, int Ho, int Wo):
    """(Hq, Wq, direct): phase-plane size (phase_planes.pxd) and whether x is read directly as B."""
    cdef PhaseGeom g = phase_geometry(0, 0, Ho, Wo, kh, kw, stride, pads, dilation)
    return g.Hq, g.Wq, kh == 1 and kw == 1 and tuple(stride) == (1, 1) and not any(pads)


cdef inline Py_ssize_t im2col_floats(int k, int tile_cols, int kh, int kw) noexcept:
    """Floats of a thread's im2col tile (none for 1x1), in whole cache lines."""
    return (<Py_ssize_t>tile_cols * k + 15) // 16 * 16 if kh * kw > 1 else 0


def scratch_floats(int k, int cog, int tile_cols, int kh, int kw, bint max_pool=False) -> int:
    """Floats of scratch per thread: an im2col tile for kxk, then with ``max_pool`` the
    output tile before pooling; padded to whole cache lines between threads
    (parallel.pxd)."""
    cdef Py_ssize_t pooled_tile = <Py_ssize_t>cog * tile_cols if max_pool else 0
    return thread_stride(max(1, im2col_floats(k, tile_cols, kh, kw) + pooled_tile))


def phase_floats(int C, stride, int Hq, int Wq) -> int:
    """Floats of the shared phase-plane buffer of one image (plus the tail phase_planes.pxd asks for)."""
    return C * stride[0] * stride[1] * Hq * Wq + Wq


def blocked_min_rows() -> int:
    """Fewest output channels per group blocked_gemm_tile handles."""
    return BLOCK_ROWS


def blocked_min_cols() -> int:
    """Fewest output pixels per tile blocked_gemm_tile handles."""
    return BLOCK_COLS


def blocked_loop_pays() -> bool:
    """Whether blocked_gemm_tile runs with FMA on vectors of 256 bits or more (AVX2,
    AVX-512), where its register tiles beat sgemm (blocked_gemm.h; AVX2: 96 against
    OpenBLAS's 82-93 GF/s, 1 thread).  Where it does not pay (SSE2, and ARM64, where it
    was not measured), convs take sgemm."""
    return fma_vectors()


def wide_register_tiles() -> bool:
    """Whether the blocked loop runs 512-bit register tiles (AVX-512; else 256-bit ones,
    blocked_gemm.h): the routing rules measured with each differ (pyconv/ops/conv.py)."""
    return wide_vectors()


cdef multiversion_void phase_split_channel(const float* src, float* dst, const PhaseGeom* g) noexcept nogil:
    phase_split(src, dst, g)


cdef void im2col_tile(const float* phases, float* cols, Py_ssize_t col0, int ncols,
                      const ConvGeom* g) noexcept nogil:
    """B rows (cig*kh*kw of output pixels col0 .. col0+ncols) of one group: one
    memcpy per output row each."""
    cdef int c, ki, kj, oh, ow, run
    cdef Py_ssize_t p, end = col0 + ncols
    cdef const float* tap
    cdef float* dst = cols
    for c in range(g.C // g.groups):
        for ki in range(g.ph.kh):
            for kj in range(g.ph.kw):
                tap = phases + c * g.ph.channel + tap_offset(&g.ph, ki, kj)
                p = col0
                while p < end:
                    oh = p // g.Wo
                    ow = p - <Py_ssize_t>oh * g.Wo
                    run = g.Wo - ow if end - p > g.Wo - ow else end - p
                    memcpy(dst, tap + <Py_ssize_t>oh * g.ph.Wq + ow, run * sizeof(float))
                    dst += run
                    p += run


cdef multiversion_void blocked_gemm_tile(const float* w, Py_ssize_t ldw, Py_ssize_t K, const float* b,
                                         Py_ssize_t ldb, float* c, Py_ssize_t ldc, Py_ssize_t rows,
                                         Py_ssize_t ncols, const float* bias, const float* residual,
                                         Epilogue ep) noexcept nogil:
    """blocked_gemm (blocked_gemm.pxd) for one tile, in this module's ISA clones."""
    blocked_gemm(w, ldw, 1, K, NULL, NULL, 1, b, ldb, c, ldc, rows, ncols, bias, residual, ep)


cdef multiversion_void epilogue_tile(float* c, Py_ssize_t ldc, int rows, int ncols, const float* bias,
                                     const float* residual, Py_ssize_t ldr, Epilogue ep) noexcept nogil:
    """Fused epilogue on a tile of ``rows`` output channels the GEMM wrote (ldc, ldr: their
    row strides in c and residual)."""
    cdef int co
    for co in range(rows):
        epilogue_row(c + co * ldc, ncols, bias[co] if bias != NULL else 0.0,
                     residual + co * ldr if residual != NULL else NULL, ep)


cdef multiversion_void pool_tile(float* c, int rows, int ncols, float* out, Py_ssize_t row0,
                                 const ConvGeom* g) noexcept nogil:
    """The fused max pool: a tile of ``rows`` output channels x ``ncols`` pixels (output
    rows from 2 * row0, whole windows) into pooled rows row0 .. of ``out`` (the tile's
    first channel).  A 3x3 pool overwrites the middle row of each window."""
    cdef Py_ssize_t plane = <Py_ssize_t>g.Hp * g.Wp, pair, Wo = g.Wo
    cdef int co
    cdef float* r
    for co in range(rows):
        for pair in range((ncols // g.Wo - (g.pool - 2)) // 2):
            r = c + co * ncols + 2 * pair * Wo
            if g.pool == 2:
                max_pool_2x2_row(r, r + Wo, out + co * plane + (row0 + pair) * g.Wp, g.Wp)
            else:
                max_pool_3x3s2_row(r, r + Wo, r + 2 * Wo, out + co * plane + (row0 + pair) * g.Wp, g.Wp)


cdef struct GemmCall:
    const ConvGeom* g
    const float* x
    const float* w
    float* out
    float* phases
    const float* bias
    const float* residual
    Epilogue ep
    int K, cig, cog, tile_cols, ntiles
    int tile_step        # pixels from one tile's start to the next's (tile_cols less a pooled
                         # tile's overlap)
    int row_blocks       # output channels of a group split into this many tasks
    Py_ssize_t im2col_floats   # of a thread's scratch (the pooled path's output tile follows)
    bint blocked


cdef inline void split_task(const GemmCall* c, int n, int ch) noexcept nogil:
    """Channel ch of image n into the shared phase planes."""
    cdef const ConvGeom* g = c.g
    phase_split_channel(c.x + (<Py_ssize_t>n * g.C + ch) * g.ph.H * g.ph.W, c.phases + ch * g.ph.channel, &g.ph)


cdef inline void gemm_task(const GemmCall* c, int n, int task, float* cols) noexcept nogil:
    """One (group, pixel tile, block of output channels) of image n: gather B, multiply
    into the output (or, pooled, into scratch), epilogue (then pool).

    cols: this thread's scratch: the im2col tile, then the output tile to pool."""
    cdef const ConvGeom* g = c.g
    cdef Py_ssize_t P = <Py_ssize_t>g.Ho * g.Wo
    # the pixels the output needs: all, or the pooled windows' rows
    cdef Py_ssize_t pixels = <Py_ssize_t>(2 * g.Hp + g.pool - 2) * g.Wo if g.pool else P
    cdef int rb = task % c.row_blocks, t = task // c.row_blocks % c.ntiles, grp = task // c.row_blocks // c.ntiles
    cdef Py_ssize_t col0 = <Py_ssize_t>t * c.tile_step
    cdef int ncols = pixels - col0 if pixels - col0 < c.tile_cols else c.tile_cols
    cdef int row0 = rb * c.cog // c.row_blocks, rows = (rb + 1) * c.cog // c.row_blocks - row0
    cdef const float* b
    cdef int ldb
    if g.direct:
        b = c.x + (<Py_ssize_t>n * g.C + grp * c.cig) * P + col0
        ldb = P
    elif g.ph.kh * g.ph.kw == 1:
        b = c.phases + grp * c.cig * g.ph.channel + col0
        ldb = g.ph.channel
    else:
        im2col_tile(c.phases + grp * c.cig * g.ph.channel, cols, col0, ncols, g)
        b = cols
        ldb = ncols
    cdef Py_ssize_t out_off = (<Py_ssize_t>n * g.Co + grp * c.cog + row0) * P
    cdef const float* w = c.w + (<Py_ssize_t>grp * c.cog + row0) * c.K
    cdef const float* bias = c.bias + grp * c.cog + row0 if c.bias != NULL else NULL
    cdef const float* residual = c.residual + out_off + col0 if c.residual != NULL else NULL
    cdef float* tile = c.out + out_off + col0
    cdef Py_ssize_t ldc = P
    if g.pool:
        tile = cols + c.im2col_floats
        ldc = ncols
    # blocked_gemm_tile's last blocks overlap the previous ones inside its tile: a tile
    # narrower than a block (the last of a split) would reach into a tile another thread
    # is writing, so such a tile takes sgemm
    if c.blocked and ncols >= BLOCK_COLS and rows >= BLOCK_ROWS:
        blocked_gemm_tile(w, c.K, c.K, b, ldb, tile, ldc, rows, ncols, bias, residual, c.ep)
    else:
        gemm_rowmajor(False, False, rows, ncols, c.K, 1.0, w, c.K, b, ldb, 0.0, tile, <int>ldc)
        epilogue_tile(tile, ldc, rows, ncols, bias, residual, P, c.ep)
    if g.pool:
        pool_tile(tile, rows, ncols, c.out + (<Py_ssize_t>n * g.Co + grp * c.cog + row0) * g.Hp * g.Wp,
                  col0 // (2 * g.Wo), g)


def conv_output_hw(tuple x_shape, int kh, int kw, stride, pads, dilation) -> tuple:
    """(Ho, Wo) of a conv of an [N, C, H, W] input; pads (top, left, bottom, right)."""
    return tuple((x_shape[2 + a] + pads[a] + pads[2 + a] - dilation[a] * ((kh, kw)[a] - 1) - 1) // stride[a] + 1
                 for a in range(2))


cdef ConvGeom conv_geometry(tuple x_shape, tuple out_shape, int groups, int kh, int kw, stride, pads,
                            dilation) except *:
    """GemmConv's geometry (phase planes, direct or not)."""
    cdef ConvGeom g
    if len(x_shape) != 4 or len(out_shape) != 4 or x_shape[0] != out_shape[0]:
        raise ValueError(f"x {x_shape} and out {out_shape} must be NCHW shapes of one batch")
    if groups < 1:
        raise ValueError("groups must be >= 1")
    g.C, g.Co = x_shape[1], out_shape[1]
    g.Ho, g.Wo = out_shape[2], out_shape[3]
    g.groups = groups
    g.pool = 0
    g.Hp, g.Wp = g.Ho, g.Wo
    g.ph = phase_geometry(x_shape[2], x_shape[3], g.Ho, g.Wo, kh, kw, stride, pads, dilation)
    g.direct = (kh == 1 and kw == 1 and g.ph.sh == 1 and g.ph.sw == 1 and g.ph.pt == 0 and g.ph.pl == 0
                and g.ph.Hq == g.ph.H and g.ph.Wq == g.ph.W)
    return g


cdef class GemmConv:
    """out = epilogue(conv2d(x, W)) for one input shape, W given as wmat[Co, Ci/groups*kh*kw].

    Built once per input shape (geometry, epilogue and weight pointers worked out
    here), then called per run as ``conv(x, residual, out, phases, scratch)`` with
    arrays checked by dtype, contiguity and shape only (ndarrays.pxd): in a network a
    conv's call otherwise spent more time acquiring seven memoryviews than computing a
    small layer.
    pads = (top, left, bottom, right); bias float32[Co] or None; residual float32 like
    out, or None; pool: 0, or out is the output max-pooled over pool x pool windows
    (2 or 3), stride 2 (PyTorch's floor mode; out_shape then the pooled shape;
    tile_cols whole pairs of output rows, and one row more for 3x3 windows, which
    tiles share with the next; no residual); blocked: the GEMMs by blocked_gemm_tile instead of sgemm (needs
    Co/groups >= blocked_min_rows() and tile_cols >= blocked_min_cols());
    row_blocks: tasks per (group, tile), each a block of output channels (threads
    splitting a layer with few pixels by its weights, so each packs only its share);
    phases float32[phase_floats(...)], zeroed when allocated (unused when gemm_layout
    says direct); scratch float32[nthreads, scratch_floats(...)]."""
    cdef ConvGeom g
    cdef Epilogue ep
    cdef object wmat, bias
    cdef tuple x_shape, out_shape
    cdef int K, cig, cog, tile_cols, tile_step, ntiles, nthreads, row_blocks
    cdef Py_ssize_t phase_need, scratch_need, im2col_need
    cdef readonly bint blocked

    def __init__(self, tuple x_shape, wmat, bias, stride, pads, dilation, int groups, int kh, int kw,
                 tuple epilogue, tuple out_shape, int tile_cols, int nthreads, bint blocked=False,
                 int row_blocks=1, int pool=0):
        self.x_shape, self.out_shape = tuple(int(d) for d in x_shape), tuple(int(d) for d in out_shape)
        if tile_cols < 1 or nthreads < 1 or row_blocks < 1:
            raise ValueError("tile_cols, nthreads and row_blocks must be >= 1")
        if pool not in (0, 2, 3):
            raise ValueError(f"pool must be 0 (none), 2 or 3 (the window), got {pool}")
        conv_shape = self.out_shape
        self.tile_step = tile_cols
        if pool:
            conv_shape = self.out_shape[:2] + conv_output_hw(self.x_shape, kh, kw, stride, pads, dilation)
            pooled = tuple((size - pool) // 2 + 1 for size in conv_shape[2:])
            if self.out_shape[2:] != pooled or min(pooled) < 1:
                raise ValueError(f"out {self.out_shape} must be the conv's output {conv_shape} max-pooled "
                                 f"{pool}x{pool}, stride 2")
            self.tile_step = tile_cols - (pool - 2) * conv_shape[3]
            if self.tile_step < 1 or self.tile_step % (2 * conv_shape[3]):
                raise ValueError(f"tile_cols={tile_cols} must be whole pairs of {conv_shape[3]}-pixel rows"
                                 f"{' and one row' if pool == 3 else ''}")
        self.g = conv_geometry(self.x_shape, conv_shape, groups, kh, kw, stride, pads, dilation)
        if pool:
            self.g.pool, self.g.Hp, self.g.Wp = pool, self.out_shape[2], self.out_shape[3]
        self.cig, self.cog = self.g.C // groups, self.g.Co // groups
        self.K = self.cig * kh * kw
        check_array(wmat, "wmat", (self.g.Co, self.K))
        if bias is not None:
            check_array(bias, "bias", (self.g.Co,))
        self.wmat, self.bias = wmat, bias
        self.ep = epilogue_from_spec(epilogue)
        if row_blocks > self.cog or (blocked and self.cog // row_blocks < blocked_min_rows()):
            raise ValueError(f"row_blocks={row_blocks} leaves blocks of fewer than "
                             f"{blocked_min_rows() if blocked else 1} of the {self.cog} output channels")
        self.tile_cols, self.nthreads, self.blocked, self.row_blocks = tile_cols, nthreads, blocked, row_blocks
        # tiles start at every tile_step pixels of the rows that start a window
        cdef Py_ssize_t pixels = <Py_ssize_t>(2 * self.g.Hp if pool else self.g.Ho) * self.g.Wo
        self.ntiles = (pixels + self.tile_step - 1) // self.tile_step
        self.phase_need = 0 if self.g.direct else phase_floats(self.g.C, stride, self.g.ph.Hq, self.g.ph.Wq)
        self.im2col_need = im2col_floats(self.K, tile_cols, kh, kw)
        self.scratch_need = nthreads * scratch_floats(self.K, self.cog, tile_cols, kh, kw, pool != 0)

    def __call__(self, x, residual, out, phases, scratch):
        check_conv_arrays(x, residual, out, self.x_shape, self.out_shape, self.g.pool)
        check_floats(phases, "phases", self.phase_need)
        check_floats(scratch, "scratch", self.scratch_need)
        cdef GemmCall call
        call.g = &self.g
        call.x = data_of(x)
        call.w = data_of(self.wmat)
        call.out = data_of(out)
        call.phases = data_of(phases)
        call.bias = data_of(self.bias) if self.bias is not None else NULL
        call.residual = data_of(residual) if residual is not None else NULL
        call.ep = self.ep
        call.K, call.cig, call.cog = self.K, self.cig, self.cog
        call.tile_cols, call.tile_step, call.ntiles, call.blocked = (self.tile_cols, self.tile_step, self.ntiles,
                                                                     self.blocked)
        call.row_blocks, call.im2col_floats = self.row_blocks, self.im2col_need
        cdef float* cols = data_of(scratch)
        cdef Py_ssize_t per_thread = self.scratch_need // self.nthreads
        cdef int N = self.x_shape[0], ntasks = self.g.groups * self.ntiles * self.row_blocks
        cdef int nthreads = self.nthreads, n, c, task
        for n in range(N):
            # one thread: plain loops, no OpenMP region to enter (most calls of small-layer networks)
            if not self.g.direct:
                if nthreads == 1:
                    for c in range(self.g.C):
                        split_task(&call, n, c)
                else:
                    for c in prange(self.g.C, nogil=True, num_threads=nthreads, schedule="static"):
                        split_task(&call, n, c)
            if nthreads == 1:
                for task in range(ntasks):
                    gemm_task(&call, n, task, cols)
            else:
                for task in prange(ntasks, nogil=True, num_threads=nthreads, schedule="static"):
                    gemm_task(&call, n, task, cols + pyconv_omp_thread_id() * per_thread)
