# cython: annotation_typing=False
# Winograd F(m x m, 3 x 3) convolution, m in {2, 4, 6}: stride 1, dilation 1,
# groups 1, any padding.  With n = m + 2 and P = n * n transform positions:
#
#   filters (once, winograd_pack):  U[p, ci, co]   = (G g[co, ci] G^T)[p]
#   per block of output tile rows:
#     1. pack    the block's padded input rows to NHWC   Xb[row, x, ci]
#     2. input   transform, one tile per call            V[p, t, ci]  = (B^T d_t B)[p]
#     3. GEMM    one per position (sgemm, or blocked_gemm) M[p] (T x Co) = V[p] (T x Ci) @ U[p] (Ci x Co)
#                (blocked_gemm reads U[p] packed in column panels: winograd_pack(..., panels=True))
#     4. output  transform, one tile per call            Y[row, a, x, co] = (A^T M_t A)[a, b]
#     5. unpack  Y to the NCHW output rows + fused epilogue (bias, residual, activation),
#                or first a 2x2 max pool of Y's rows (``max_pool``: only the pooled
#                quarter of the output reaches memory)
#
# Channels are the innermost (unit-stride) axis of every transform, so the
# micro-kernels are long vectorizable loops for any tile count; the two layout
# changes (steps 1 and 5) are the only strided passes.  A block holds as many
# tile rows as keep Xb + V + M + Y near L2-sized (``block_bytes``), while the
# GEMM still sees tens of tiles.  Several threads either run whole blocks each
# or share each block's stages (GEMM split by position); see WinogradConv.
# Either way sgemm is called from our threads and must be single-threaded.
# docs/winograd.md has the matrices, error measurements and timings.
from cython.parallel cimport prange
from libc.string cimport memset

import threading

import numpy as np

from pyconv._core.blas cimport gemm_rowmajor
from pyconv._core.blocked_gemm cimport BLOCK_COLS, BLOCK_ROWS, blocked_gemm, panel_start
from pyconv._core.channel_rows cimport gather_channel_rows, scatter_channel_rows
from pyconv._core.epilogue cimport ACT_LEAKY, ACT_NONE, Epilogue, epilogue_from_spec, epilogue_row
from pyconv._core.max_pool_rows cimport max_pool_2x2_pixels
from pyconv._core.ndarrays cimport check_conv_arrays, data_of, overlaps
from pyconv._core.parallel cimport pyconv_omp_thread_id, thread_stride
from pyconv._core.simd cimport multiversion_void

from pyconv._core.aligned import aligned_copy, aligned_empty
from pyconv._core.winograd_transforms import TILE_SIZES, transform_matrices

cimport numpy as cnp

cnp.import_array()   # the NumPy C API behind ndarrays.pxd

__all__ = ["winograd_pack", "winograd_conv", "WinogradConv", "TILE_SIZES"]

# Working-set target of one block (packed input + V + M + Y), bytes, unless U is larger.
DEFAULT_BLOCK_BYTES = 1 << 20
# Transformed filters up to this size are read by every thread (see WinogradConv).
PER_THREAD_WEIGHT_BYTES = 1 << 20


cdef struct Geometry:
    Py_ssize_t N, Ci, H, W, Co, Ho, Wo
    Py_ssize_t m, n, P
    Py_ssize_t top, left
    Py_ssize_t TY, TX          # tile rows / columns per image
    Py_ssize_t Wp              # padded input width (TX * m + 2)
    Py_ssize_t Xw              # output-tile buffer width (TX * m)
    bint panels                # U in column panels: step 3 by blocked_gemm rather than sgemm
    Py_ssize_t panel_floats    # floats of one position's U in panels
    bint pool                  # out is the conv's output max-pooled over 2x2 windows, stride 2
    Py_ssize_t Hout, Wout      # out's plane: Ho x Wo, or Ho // 2 x Wo // 2 pooled


cdef multiversion_void pack_padded_row(const float* x, float* dst, Py_ssize_t image,
                                       Py_ssize_t yp, const Geometry* g) noexcept nogil:
    """Padded input row ``yp`` of one image as NHWC (Wp x Ci floats), zeros outside the input."""
    cdef Py_ssize_t y = yp - g.top
    cdef Py_ssize_t c0 = 0, Ci = g.Ci, W = g.W, plane = g.H * g.W
    cdef const float* src
    if y < 0 or y >= g.H:
        memset(dst, 0, g.Wp * Ci * sizeof(float))
        return
    memset(dst, 0, g.left * Ci * sizeof(float))
    memset(dst + (g.left + W) * Ci, 0, (g.Wp - g.left - W) * Ci * sizeof(float))
    src = x + (image * Ci * g.H + y) * W
    dst += g.left * Ci
    # 16 channels x 16 pixels per in-register transpose (transpose16.h)
    while c0 < Ci:
        scatter_channel_rows(src + c0 * plane, plane, dst + c0, Ci, W, min(16, Ci - c0))
        c0 += 16


# Generated straight-line transforms (see winograd_transforms.kernels_source):
# the matrices are compile-time literals, so zero terms vanish and the loop
# over channels vectorizes.  The multiversion wrappers below compile them per ISA.
cdef extern from "winograd_kernels.h" nogil:
    void winograd_f2_input_tile(const float* src, Py_ssize_t row_stride, Py_ssize_t C,
                                float* dst, Py_ssize_t pos_stride)
    void winograd_f4_input_tile(const float* src, Py_ssize_t row_stride, Py_ssize_t C,
                                float* dst, Py_ssize_t pos_stride)
    void winograd_f6_input_tile(const float* src, Py_ssize_t row_stride, Py_ssize_t C,
                                float* dst, Py_ssize_t pos_stride)
    void winograd_f2_output_tile(const float* src, Py_ssize_t pos_stride, Py_ssize_t C,
                                 float* dst, Py_ssize_t row_stride)
    void winograd_f4_output_tile(const float* src, Py_ssize_t pos_stride, Py_ssize_t C,
                                 float* dst, Py_ssize_t row_stride)
    void winograd_f6_output_tile(const float* src, Py_ssize_t pos_stride, Py_ssize_t C,
                                 float* dst, Py_ssize_t row_stride)


cdef multiversion_void input_tile_f2(const float* src, Py_ssize_t row_stride, Py_ssize_t C,
                                     float* dst, Py_ssize_t pos_stride) noexcept nogil:
    winograd_f2_input_tile(src, row_stride, C, dst, pos_stride)


cdef multiversion_void input_tile_f4(const float* src, Py_ssize_t row_stride, Py_ssize_t C,
                                     float* dst, Py_ssize_t pos_stride) noexcept nogil:
    winograd_f4_input_tile(src, row_stride, C, dst, pos_stride)


cdef multiversion_void input_tile_f6(const float* src, Py_ssize_t row_stride, Py_ssize_t C,
                                     float* dst, Py_ssize_t pos_stride) noexcept nogil:
    winograd_f6_input_tile(src, row_stride, C, dst, pos_stride)


cdef multiversion_void output_tile_f2(const float* src, Py_ssize_t pos_stride, Py_ssize_t C,
                                      float* dst, Py_ssize_t row_stride) noexcept nogil:
    winograd_f2_output_tile(src, pos_stride, C, dst, row_stride)


cdef multiversion_void output_tile_f4(const float* src, Py_ssize_t pos_stride, Py_ssize_t C,
                                      float* dst, Py_ssize_t row_stride) noexcept nogil:
    winograd_f4_output_tile(src, pos_stride, C, dst, row_stride)


cdef multiversion_void output_tile_f6(const float* src, Py_ssize_t pos_stride, Py_ssize_t C,
                                      float* dst, Py_ssize_t row_stride) noexcept nogil:
    winograd_f6_output_tile(src, pos_stride, C, dst, row_stride)


cdef multiversion_void unpack_rows(const float* top, Py_ssize_t row_floats, Py_ssize_t C, float* pooled,
                                   float* dst, Py_ssize_t dst_stride, Py_ssize_t width, Py_ssize_t rows,
                                   const float* bias, const float* residual, Epilogue ep) noexcept nogil:
    """Step 5 for ``rows`` (<= 16) channels of one output row: Y's row ``top`` (C floats
    per pixel) gathered into ``rows`` NCHW rows of ``dst`` (``dst_stride`` apart; the
    residual laid out alike), then the epilogue on each; with ``pooled`` (width x 16
    floats of scratch) Y's rows ``top`` and ``top + row_floats`` are first max-pooled 2x2
    into it.  The epilogue runs here, in the ISA clones, not in the caller's loop."""
    cdef Py_ssize_t r
    if pooled != NULL:
        max_pool_2x2_pixels(top, top + row_floats, C, pooled, 16, width, rows)
        gather_channel_rows(pooled, 16, dst, dst_stride, width, rows)
    else:
        gather_channel_rows(top, C, dst, dst_stride, width, rows)
    for r in range(rows):
        epilogue_row(dst + r * dst_stride, width, bias[r] if bias != NULL else 0.0,
                     residual + r * dst_stride if residual != NULL else NULL, ep)


cdef multiversion_void position_gemm(const float* v, const float* u, float* mp, Py_ssize_t T,
                                     Py_ssize_t Ci, Py_ssize_t Co) noexcept nogil:
    """M[p] = V[p] @ U[p] of one position, U[p] in column panels, by blocked_gemm
    (blocked_gemm.pxd), which reads U[p] in place where sgemm copies it into packed panels
    on every call: megabytes per conv for deep layers, whose few tiles make that copy as
    long as the multiplies.  Fewer than BLOCK_ROWS tiles: sgemm per panel."""
    cdef Py_ssize_t j
    if T >= BLOCK_ROWS:
        blocked_gemm(v, Ci, 1, Ci, NULL, NULL, 1, u, 0, mp, Co, T, Co, NULL, NULL, Epilogue(ACT_NONE, 0.0, 0.0, 0.0))
        return
    for j in range((Co + BLOCK_COLS - 1) // BLOCK_COLS):
        gemm_rowmajor(False, False, <int>T, BLOCK_COLS, <int>Ci, 1.0, v, <int>Ci, u + j * Ci * BLOCK_COLS,
                      BLOCK_COLS, 0.0, mp + panel_start(j, Co), <int>Co)


cdef void run_block(const float* x, const float* u, const float* bias, const float* residual,
                    float* out, Epilogue ep, const Geometry* g, Py_ssize_t r0, Py_ssize_t nrows,
                    float* xb, float* v, float* mbuf, float* ybuf,
                    Py_ssize_t* row_base, Py_ssize_t* pack_image, Py_ssize_t* pack_row,
                    int nthreads) noexcept nogil:
    """Steps 1-5 for the tile rows r0 .. r0+nrows-1 (rows counted over all images)."""
    cdef Py_ssize_t m = g.m, n = g.n, P = g.P, Ci = g.Ci, Co = g.Co, TX = g.TX
    cdef Py_ssize_t T = nrows * TX
    cdef Py_ssize_t row_floats = g.Wp * Ci
    cdef Py_ssize_t npacked = 0, rr, r, image, ty, prev_image = -1, prev_ty = 0, j
    cdef Py_ssize_t k, t, p, idx, c0, a, y, o
    cdef Py_ssize_t co_blocks = (Co + 15) // 16
    cdef Py_ssize_t i, step = 2 if g.pool else 1   # Y rows per output row
    cdef float* tile_in
    cdef float* tile_out

    # Which padded rows the block needs: per image, one contiguous run
    # ty0*m .. ty1*m+1; row_base[rr] = packed index of tile row rr's first row.
    for rr in range(nrows):
        r = r0 + rr
        image = r // g.TY
        ty = r - image * g.TY
        if image == prev_image and ty == prev_ty + 1:
            row_base[rr] = row_base[rr - 1] + m
            for j in range(m):
                pack_image[npacked] = image
                pack_row[npacked] = ty * m + 2 + j
                npacked += 1
        else:
            row_base[rr] = npacked
            for j in range(n):
                pack_image[npacked] = image
                pack_row[npacked] = ty * m + j
                npacked += 1
        prev_image = image
        prev_ty = ty

    for k in prange(npacked, num_threads=nthreads, schedule="static"):
        pack_padded_row(x, xb + k * row_floats, pack_image[k], pack_row[k], g)

    for t in prange(T, num_threads=nthreads, schedule="static"):
        rr = t // TX
        tile_in = xb + row_base[rr] * row_floats + (t - rr * TX) * m * Ci
        if m == 2:
            input_tile_f2(tile_in, row_floats, Ci, v + t * Ci, T * Ci)
        elif m == 4:
            input_tile_f4(tile_in, row_floats, Ci, v + t * Ci, T * Ci)
        else:
            input_tile_f6(tile_in, row_floats, Ci, v + t * Ci, T * Ci)

    if g.panels:
        for p in prange(P, num_threads=nthreads, schedule="static"):
            position_gemm(v + p * T * Ci, u + p * g.panel_floats, mbuf + p * T * Co, T, Ci, Co)
    else:
        for p in prange(P, num_threads=nthreads, schedule="static"):
            gemm_rowmajor(False, False, <int>T, <int>Co, <int>Ci, 1.0, v + p * T * Ci, <int>Ci,
                          u + p * Ci * Co, <int>Co, 0.0, mbuf + p * T * Co, <int>Co)

    for t in prange(T, num_threads=nthreads, schedule="static"):
        rr = t // TX
        tile_out = ybuf + (rr * m * g.Xw + (t - rr * TX) * m) * Co
        if m == 2:
            output_tile_f2(mbuf + t * Co, T * Co, Co, tile_out, g.Xw * Co)
        elif m == 4:
            output_tile_f4(mbuf + t * Co, T * Co, Co, tile_out, g.Xw * Co)
        else:
            output_tile_f6(mbuf + t * Co, T * Co, Co, tile_out, g.Xw * Co)

    # 16 output channels per task: their slice of a Y row (one cache line per
    # pixel) stays in L1 while the 16 rows are gathered out of it.
    for idx in prange(nrows * co_blocks, num_threads=nthreads, schedule="static"):
        rr = idx // co_blocks
        c0 = (idx - rr * co_blocks) * 16
        r = r0 + rr
        image = r // g.TY
        ty = r - image * g.TY
        # tile rows start at even y (m is even), so a 2x2 window never spans two of them;
        # a last odd row or column has no window (floor mode)
        for i in range(m // step):
            a = i * step
            y = ty * m + a
            if y + g.pool >= g.Ho:
                break
            o = ((image * Co + c0) * g.Hout + y // step) * g.Wout
            # pooled: M is spent, and each task pools into its own 16-channel stretch of it
            unpack_rows(ybuf + ((rr * m + a) * g.Xw) * Co + c0, g.Xw * Co, Co,
                        mbuf + idx * g.Wout * 16 if g.pool else NULL, out + o, g.Hout * g.Wout, g.Wout,
                        min(16, Co - c0), bias + c0 if bias != NULL else NULL,
                        residual + o if residual != NULL else NULL, ep)


cdef inline Py_ssize_t ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


_workspaces = threading.local()


def _workspace(size: int) -> np.ndarray:
    """A float32 scratch array of at least ``size`` floats, reused per Python thread."""
    buf = getattr(_workspaces, "buf", None)
    if buf is None or buf.size < size:
        buf = np.empty(max(size, 1), dtype=np.float32)
        _workspaces.buf = buf
    return buf


def _require_array(arr, name: str, shape: tuple) -> None:
    if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be a C-contiguous float32 ndarray, got "
                         f"{type(arr).__name__} {getattr(arr, 'dtype', '')}")
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")


def _check_tile(tile) -> int:
    if tile not in TILE_SIZES:
        raise ValueError(f"tile must be one of {TILE_SIZES}, got {tile!r}")
    return int(tile)


cdef multiversion_void transform_filters(const float* by_input, const double* kron, Py_ssize_t P,
                                         Py_ssize_t Ci, Py_ssize_t Co, float* packed) noexcept nogil:
    """packed[p, ci, co] = sum_k kron[p, k] * by_input[ci, k, co], in float64, rounded once."""
    cdef Py_ssize_t ci, p, co
    cdef const float* g
    cdef float* dst
    cdef double k0, k1, k2, k3, k4, k5, k6, k7, k8
    for ci in range(Ci):
        g = by_input + ci * 9 * Co
        for p in range(P):
            k0, k1, k2 = kron[p * 9], kron[p * 9 + 1], kron[p * 9 + 2]
            k3, k4, k5 = kron[p * 9 + 3], kron[p * 9 + 4], kron[p * 9 + 5]
            k6, k7, k8 = kron[p * 9 + 6], kron[p * 9 + 7], kron[p * 9 + 8]
            dst = packed + (p * Ci + ci) * Co
            for co in range(Co):  # unit stride over output channels: vectorized
                dst[co] = <float>(k0 * g[co] + k1 * g[Co + co] + k2 * g[2 * Co + co]
                                  + k3 * g[3 * Co + co] + k4 * g[4 * Co + co] + k5 * g[5 * Co + co]
                                  + k6 * g[6 * Co + co] + k7 * g[7 * Co + co] + k8 * g[8 * Co + co])


def winograd_pack(weight: np.ndarray, tile: int, panels: bool = False) -> np.ndarray:
    """Transformed filters ``U = G g G^T`` for F(tile x tile, 3 x 3), shape ``(P, Ci, Co)``.

    ``weight`` is float32 C-contiguous ``[Co, Ci, 3, 3]``; ``P = (tile + 2) ** 2``.
    Computed in float64 and rounded once.  The layout is the GEMM's B operand:
    ``U[p]`` is the row-major ``Ci x Co`` matrix of position p.

    ``panels``: instead ``(P, ceil(Co / 32), Ci, 32)``, each position's columns in
    panels of 32 (the last one ending at Co, overlapping the one before), for
    WinogradConv to run its GEMMs by the blocked loop.  Needs Co >= 32.  Either
    layout is cache-line aligned (aligned.py)."""
    m = _check_tile(tile)
    if not isinstance(weight, np.ndarray) or weight.ndim != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"weight must be a [Co, Ci, 3, 3] ndarray, got {getattr(weight, 'shape', weight)!r}")
    co, ci = weight.shape[:2]
    _require_array(weight, "weight", (co, ci, 3, 3))
    if co < 1 or ci < 1:
        raise ValueError(f"weight must have at least one input and output channel, got {weight.shape}")
    if panels and co < BLOCK_COLS:
        raise ValueError(f"panels need at least {BLOCK_COLS} output channels, got weight {weight.shape}")
    _, g, _ = transform_matrices(m)
    n = m + 2
    # (G g G^T)[k, l] = sum_rs G[k, r] G[l, s] g[r, s]: one (P x 9) matrix for all
    # filters, applied by our own loop (NumPy's threaded BLAS made this 10-40x
    # slower at times on a busy machine); extra memory: one copy of the weights.
    cdef const double[:, ::1] kron = np.ascontiguousarray(np.kron(g, g))
    cdef const float[:, :, ::1] by_input = np.ascontiguousarray(weight.reshape(co, ci * 9).T).reshape(ci, 9, co)
    packed = aligned_empty((n * n, ci, co))
    cdef float[:, :, ::1] packed_v = packed
    cdef Py_ssize_t positions = n * n, inputs = ci, outputs = co
    with nogil:
        transform_filters(&by_input[0, 0, 0], &kron[0, 0], positions, inputs, outputs, &packed_v[0, 0, 0])
    if not panels:
        return packed
    starts = [panel_start(j, co) for j in range((co + BLOCK_COLS - 1) // BLOCK_COLS)]
    return aligned_copy(np.stack([packed[:, :, c:c + BLOCK_COLS] for c in starts], axis=1))


cdef class WinogradConv:
    """``out = act(conv3x3(x) + bias [+ residual])`` with Winograd F(tile x tile, 3 x 3), for
    one input shape.

    Built once per input shape (geometry and schedule worked out here), then called per
    run as ``conv(x, residual, out)`` with the arrays checked by dtype, contiguity and
    shape only (ndarrays.pxd): in a network the checks of a per-call entry point cost
    8-10 us a layer, as much as a small layer's transforms.

    x_shape: ``[N, Ci, H, W]``; packed: ``winograd_pack(weight, tile)`` (in panels: the
    per-position GEMMs run by blocked_gemm instead of sgemm); bias: float32 ``[Co]`` or
    None; pads: ``(top, left, bottom, right)``; epilogue: ``(kind, lo, hi, slope)`` from
    ``parse_activation``; out_shape: ``[N, Co, Ho, Wo]``, ``Ho = H + top + bottom - 2``.
    Per call, x float32 like x_shape, residual like out or None, out preallocated; ``x``
    or ``residual`` sharing memory with ``out`` is copied first.

    ``max_pool``: ``out`` is instead the output max-pooled over 2x2 windows with stride 2
    (``[N, Co, Ho // 2, Wo // 2]``, PyTorch's floor mode), pooled while it is in cache.
    The epilogue then runs on the pooled values, which equals pooling its result only for
    a non-decreasing activation: a leaky ReLU with a negative slope, or a residual, is
    refused.

    ``block_bytes`` (working set of one block of tile rows) and
    ``per_thread_weight_bytes`` (largest ``packed`` that every thread reads on its
    own) tune the schedule; the defaults suit 1-2 MB of L2 per core.  With
    ``nthreads > 1`` the kernel's own threads call sgemm concurrently (the BLAS
    itself stays on one thread: pyconv._threads).  The work buffers are one per Python
    thread, shared by every WinogradConv (``_workspace``)."""
    cdef Geometry g
    cdef Epilogue ep
    cdef object packed, bias
    cdef tuple x_shape, out_shape
    cdef int threads, copies
    cdef bint thread_per_block
    cdef Py_ssize_t rows_total, nblocks, max_packed, xb_size, v_size, m_size, block_floats

    def __init__(self, tuple x_shape, packed, tile, bias, pads, epilogue, tuple out_shape, nthreads,
                 block_bytes=DEFAULT_BLOCK_BYTES, per_thread_weight_bytes=PER_THREAD_WEIGHT_BYTES,
                 bint max_pool=False):
        m = _check_tile(tile)
        n = m + 2
        if len(x_shape) != 4 or len(out_shape) != 4:
            raise ValueError(f"x {x_shape} and out {out_shape} must be 4-D [N, C, H, W] shapes")
        N, Ci, H, W = (int(d) for d in x_shape)
        if not isinstance(packed, np.ndarray) or packed.ndim not in (3, 4):
            raise ValueError(f"packed must come from winograd_pack, got {getattr(packed, 'shape', packed)!r}")
        panels = packed.ndim == 4
        Co = int(out_shape[1]) if panels else packed.shape[2]
        if panels:
            if Co < BLOCK_COLS:
                raise ValueError(f"packed panels need out with at least {BLOCK_COLS} channels, got {out_shape}")
            _require_array(packed, "packed", (n * n, ceil_div(Co, BLOCK_COLS), Ci, BLOCK_COLS))
        else:
            _require_array(packed, "packed", (n * n, Ci, Co))
        if N < 1 or Ci < 1 or Co < 1:
            raise ValueError(f"x {x_shape} and packed {packed.shape} must not be empty")
        try:
            top, left, bottom, right = (int(v) for v in pads)
        except (TypeError, ValueError):
            raise ValueError(f"pads must be (top, left, bottom, right), got {pads!r}") from None
        if min(top, left, bottom, right) < 0:
            raise ValueError(f"pads must not be negative, got {pads!r}")
        Ho, Wo = H + top + bottom - 2, W + left + right - 2
        if Ho < 1 or Wo < 1:
            raise ValueError(f"output size {Ho}x{Wo} of x {x_shape} with pads {pads!r} must be positive")
        Hout, Wout = (Ho // 2, Wo // 2) if max_pool else (Ho, Wo)
        if Hout < 1 or Wout < 1:
            raise ValueError(f"a 2x2 max pool needs an output of at least 2x2, got {Ho}x{Wo}")
        if tuple(out_shape) != (N, Co, Hout, Wout):
            raise ValueError(f"out must have shape {(N, Co, Hout, Wout)}, got {out_shape}")
        if bias is not None:
            _require_array(bias, "bias", (Co,))
        if not isinstance(epilogue, tuple) or len(epilogue) != 4:
            raise ValueError(f"epilogue must be a (kind, lo, hi, slope) tuple, got {epilogue!r}")
        if max_pool and epilogue[0] == ACT_LEAKY and epilogue[3] < 0:
            raise ValueError(f"a fused max pool needs a non-decreasing activation, got epilogue {epilogue!r}")
        if int(nthreads) < 1:
            raise ValueError(f"nthreads must be >= 1, got {nthreads!r}")
        self.x_shape, self.out_shape = (N, Ci, H, W), (N, Co, Hout, Wout)
        self.packed, self.bias = packed, bias
        self.ep = epilogue_from_spec(epilogue)
        cdef Geometry* g = &self.g
        g.N, g.Ci, g.H, g.W, g.Co, g.Ho, g.Wo = N, Ci, H, W, Co, Ho, Wo
        g.m, g.n, g.P = m, n, n * n
        g.top, g.left = top, left
        g.TY, g.TX = (Ho + m - 1) // m, (Wo + m - 1) // m
        g.Wp, g.Xw = g.TX * m + 2, g.TX * m
        g.panels = panels
        g.panel_floats = packed[0].size
        g.pool, g.Hout, g.Wout = max_pool, Hout, Wout

        self.threads = int(nthreads)
        self.rows_total = N * g.TY
        cdef Py_ssize_t row_bytes = 4 * (g.TX * g.P * (Ci + Co) + m * g.Xw * Co + m * g.Wp * Ci)
        # Every block re-reads all of U: blocks may grow to U's size, so that streaming
        # U (megabytes for deep layers) costs no more than the working set spilling L2.
        cdef Py_ssize_t budget = max(block_bytes, packed.nbytes)
        self.nblocks = ceil_div(self.rows_total, max(1, budget // row_bytes))
        # Several threads either each run whole blocks (no barriers, nothing shared
        # between cores, but every thread reads all of U: for U that fits in L2),
        # or share every block's stages with the GEMM split by position (U read
        # once: for the large U of deep layers, where streaming U dominates).
        self.thread_per_block = (self.threads > 1 and packed.nbytes <= per_thread_weight_bytes
                                 and self.rows_total >= self.threads)
        if self.thread_per_block:
            self.nblocks = ceil_div(self.nblocks, self.threads) * self.threads
        self.nblocks = min(self.nblocks, self.rows_total)
        cdef Py_ssize_t rows_per_block = ceil_div(self.rows_total, self.nblocks)
        self.max_packed = rows_per_block * m + 2 * min(rows_per_block, N)
        cdef Py_ssize_t tiles = rows_per_block * g.TX
        self.xb_size = self.max_packed * g.Wp * Ci
        self.v_size = g.P * tiles * Ci
        self.m_size = g.P * tiles * Co
        cdef Py_ssize_t y_size = rows_per_block * m * g.Xw * Co
        self.block_floats = thread_stride(self.xb_size + self.v_size + self.m_size + y_size)
        self.copies = self.threads if self.thread_per_block else 1

    def __call__(self, x, residual, out):
        check_conv_arrays(x, residual, out, self.x_shape, self.out_shape, self.g.pool)
        # out rows of one block are written before later blocks read x and residual
        if overlaps(x, out):
            x = x.copy()
        if residual is not None and overlaps(residual, out):
            residual = residual.copy()
        # per copy: its block buffers, then its three index tables of max_packed entries
        cdef Py_ssize_t index_floats = 3 * self.max_packed * sizeof(Py_ssize_t) // sizeof(float)
        work = _workspace(self.copies * (self.block_floats + index_floats))
        cdef float* work0 = data_of(work)
        cdef Py_ssize_t* index0 = <Py_ssize_t*>(work0 + self.copies * self.block_floats)
        cdef const float* x_p = data_of(x)
        cdef const float* u_p = data_of(self.packed)
        cdef float* out_p = data_of(out)
        cdef const float* bias_p = data_of(self.bias) if self.bias is not None else NULL
        cdef const float* res_p = data_of(residual) if residual is not None else NULL
        cdef Geometry* g = &self.g
        cdef Epilogue ep = self.ep
        cdef Py_ssize_t b, r0, tid, nblocks = self.nblocks, rows_total = self.rows_total
        cdef Py_ssize_t block_floats = self.block_floats, max_packed = self.max_packed
        cdef Py_ssize_t xb_size = self.xb_size, v_size = self.v_size, m_size = self.m_size
        cdef float* base
        cdef Py_ssize_t* index
        with nogil:
            if self.thread_per_block:
                # dynamic: a thread descheduled on a busy machine leaves its
                # remaining blocks to the others instead of holding them
                for b in prange(nblocks, num_threads=self.threads, schedule="dynamic", chunksize=1):
                    tid = pyconv_omp_thread_id()
                    base = work0 + tid * block_floats
                    index = index0 + tid * 3 * max_packed
                    r0 = b * rows_total // nblocks
                    run_block(x_p, u_p, bias_p, res_p, out_p, ep, g, r0, (b + 1) * rows_total // nblocks - r0,
                              base, base + xb_size, base + xb_size + v_size, base + xb_size + v_size + m_size,
                              index, index + max_packed, index + 2 * max_packed, 1)
            else:
                for b in range(nblocks):
                    r0 = b * rows_total // nblocks
                    run_block(x_p, u_p, bias_p, res_p, out_p, ep, g, r0, (b + 1) * rows_total // nblocks - r0,
                              work0, work0 + xb_size, work0 + xb_size + v_size, work0 + xb_size + v_size + m_size,
                              index0, index0 + max_packed, index0 + 2 * max_packed, self.threads)


def winograd_conv(x: np.ndarray, packed: np.ndarray, tile: int, bias, pads, epilogue,
                  residual, out: np.ndarray, nthreads: int, block_bytes: int = DEFAULT_BLOCK_BYTES,
                  per_thread_weight_bytes: int = PER_THREAD_WEIGHT_BYTES) -> None:
    """One call of a :class:`WinogradConv` built for ``x`` and ``out`` (see it for the
    arguments): ``out = act(conv3x3(x) + bias [+ residual])``."""
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        raise ValueError(f"x must be a 4-D [N, Ci, H, W] ndarray, got {getattr(x, 'shape', x)!r}")
    if not isinstance(out, np.ndarray) or out.ndim != 4:
        raise ValueError(f"out must be a 4-D [N, Co, Ho, Wo] ndarray, got {getattr(out, 'shape', out)!r}")
    WinogradConv(x.shape, packed, tile, bias, pads, epilogue, out.shape, nthreads, block_bytes,
                 per_thread_weight_bytes)(x, residual, out)
