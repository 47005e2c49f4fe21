# Winograd F(m x m, 3 x 3) convolution, m in {2, 4, 6}: stride 1, dilation 1,
# groups 1, any padding.  With n = m + 2 and P = n * n transform positions:
#
#   filters (once, winograd_pack):  U[p, ci, co]   = (G g[co, ci] G^T)[p]
#   per block of output tile rows:
#     1. pack    the block's padded input rows to NHWC   Xb[row, x, ci]
#     2. input   transform, one tile per call            V[p, t, ci]  = (B^T d_t B)[p]
#     3. GEMM    one sgemm per position                  M[p] (T x Co) = V[p] (T x Ci) @ U[p] (Ci x Co)
#     4. output  transform, one tile per call            Y[row, a, x, co] = (A^T M_t A)[a, b]
#     5. unpack  Y to the NCHW output rows + fused epilogue (bias, residual, activation)
#
# Channels are the innermost (unit-stride) axis of every transform, so the
# micro-kernels are long vectorizable loops for any tile count; the two layout
# changes (steps 1 and 5) are the only strided passes.  A block holds as many
# tile rows as keep Xb + V + M + Y near L2-sized (``block_bytes``), while the
# GEMM still sees tens of tiles.  Threads split steps 1, 2 and 4 by rows/tiles
# and step 3 by position: each thread multiplies with its own slice of U, so
# weights are never streamed twice.  The sgemm calls must then be
# single-threaded (see winograd_conv).
from cython.parallel cimport prange
from libc.string cimport memset

import threading

import numpy as np

from pyconv._core.blas cimport gemm_rowmajor
from pyconv._core.epilogue cimport Epilogue, epilogue_from_spec, epilogue_row
from pyconv._core.parallel cimport pyconv_omp_thread_id
from pyconv._core.simd cimport multiversion_void

from pyconv._core.winograd_transforms import TILE_SIZES, transform_matrices

__all__ = ["winograd_pack", "winograd_conv", "TILE_SIZES"]

# Working-set target of one block (packed input + V + M + Y), bytes.
DEFAULT_BLOCK_BYTES = 1 << 21


cdef struct Geometry:
    Py_ssize_t N, Ci, H, W, Co, Ho, Wo
    Py_ssize_t m, n, P
    Py_ssize_t top, left
    Py_ssize_t TY, TX          # tile rows / columns per image
    Py_ssize_t Wp              # padded input width (TX * m + 2)
    Py_ssize_t Xw              # output-tile buffer width (TX * m)


cdef multiversion_void pack_padded_row(const float* x, float* dst, Py_ssize_t image,
                                       Py_ssize_t yp, const Geometry* g) noexcept nogil:
    """Padded input row ``yp`` of one image as NHWC (Wp x Ci floats), zeros outside the input."""
    cdef Py_ssize_t y = yp - g.top
    cdef Py_ssize_t c, i, Ci = g.Ci, W = g.W
    cdef const float* src
    cdef float* d
    if y < 0 or y >= g.H:
        memset(dst, 0, g.Wp * Ci * sizeof(float))
        return
    memset(dst, 0, g.left * Ci * sizeof(float))
    memset(dst + (g.left + W) * Ci, 0, (g.Wp - g.left - W) * Ci * sizeof(float))
    for c in range(Ci):
        src = x + ((image * Ci + c) * g.H + y) * W
        d = dst + g.left * Ci + c
        for i in range(W):
            d[i * Ci] = src[i]


cdef multiversion_void input_tile(const float* src, Py_ssize_t row_stride, Py_ssize_t C,
                                  const float* bt, Py_ssize_t n, float* tmp,
                                  float* dst, Py_ssize_t pos_stride) noexcept nogil:
    """dst[(k*n+q)*pos_stride + c] = (B^T d B)[k, q] for one tile, all C channels.

    ``src[j*row_stride + l*C + c]`` is the tile's input d[j, l] of channel c;
    ``tmp`` holds n*C floats.  Zero coefficients of B^T are skipped."""
    cdef Py_ssize_t k, q, j, l, i
    cdef float coef
    cdef bint first
    cdef const float* s
    cdef float* t
    cdef float* d
    for k in range(n):
        # tmp[l] = sum_j BT[k, j] d[j, l]   (column transform of row k)
        for l in range(n):
            t = tmp + l * C
            first = True
            for j in range(n):
                coef = bt[k * n + j]
                if coef == 0.0:
                    continue
                s = src + j * row_stride + l * C
                if first:
                    for i in range(C):
                        t[i] = coef * s[i]
                    first = False
                else:
                    for i in range(C):
                        t[i] += coef * s[i]
        # V[k, q] = sum_l tmp[l] BT[q, l]
        for q in range(n):
            d = dst + (k * n + q) * pos_stride
            first = True
            for l in range(n):
                coef = bt[q * n + l]
                if coef == 0.0:
                    continue
                t = tmp + l * C
                if first:
                    for i in range(C):
                        d[i] = coef * t[i]
                    first = False
                else:
                    for i in range(C):
                        d[i] += coef * t[i]


cdef multiversion_void output_tile(const float* src, Py_ssize_t pos_stride, Py_ssize_t C,
                                   const float* at, Py_ssize_t m, Py_ssize_t n, float* tmp,
                                   float* dst, Py_ssize_t row_stride) noexcept nogil:
    """dst[a*row_stride + b*C + c] = (A^T M A)[a, b] for one tile, all C channels.

    ``src[(i*n+j)*pos_stride + c]`` is the tile's GEMM result M[i, j] of channel c;
    ``tmp`` holds n*C floats."""
    cdef Py_ssize_t a, b, i, j, k
    cdef float coef
    cdef bint first
    cdef const float* s
    cdef float* t
    cdef float* d
    for a in range(m):
        # tmp[j] = sum_i AT[a, i] M[i, j]
        for j in range(n):
            t = tmp + j * C
            first = True
            for i in range(n):
                coef = at[a * n + i]
                if coef == 0.0:
                    continue
                s = src + (i * n + j) * pos_stride
                if first:
                    for k in range(C):
                        t[k] = coef * s[k]
                    first = False
                else:
                    for k in range(C):
                        t[k] += coef * s[k]
        # Y[a, b] = sum_j tmp[j] AT[b, j]
        for b in range(m):
            d = dst + a * row_stride + b * C
            first = True
            for j in range(n):
                coef = at[b * n + j]
                if coef == 0.0:
                    continue
                t = tmp + j * C
                if first:
                    for k in range(C):
                        d[k] = coef * t[k]
                    first = False
                else:
                    for k in range(C):
                        d[k] += coef * t[k]


cdef multiversion_void unpack_output_row(const float* src, Py_ssize_t C, float* dst,
                                         Py_ssize_t width) noexcept nogil:
    """dst[x] = src[x*C]: one channel's output row out of the NHWC tile buffer."""
    cdef Py_ssize_t x
    for x in range(width):
        dst[x] = src[x * C]


cdef void run_block(const float* x, const float* u, const float* bias, const float* residual,
                    float* out, const float* at, const float* bt, Epilogue ep,
                    const Geometry* g, Py_ssize_t r0, Py_ssize_t nrows,
                    float* xb, float* v, float* mbuf, float* ybuf, float* tmp,
                    Py_ssize_t* row_base, Py_ssize_t* pack_image, Py_ssize_t* pack_row,
                    int nthreads) noexcept nogil:
    """Steps 1-5 for the tile rows r0 .. r0+nrows-1 (rows counted over all images)."""
    cdef Py_ssize_t m = g.m, n = g.n, P = g.P, Ci = g.Ci, Co = g.Co, TX = g.TX
    cdef Py_ssize_t T = nrows * TX
    cdef Py_ssize_t row_floats = g.Wp * Ci
    cdef Py_ssize_t tmp_floats = n * (Ci if Ci > Co else Co)
    cdef Py_ssize_t npacked = 0, rr, r, image, ty, prev_image = -1, prev_ty = 0, j
    cdef Py_ssize_t k, t, p, tx, idx, co, a, y
    cdef float* my_tmp
    cdef float* orow
    cdef const float* res_row

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
        tx = t - rr * TX
        my_tmp = tmp + pyconv_omp_thread_id() * tmp_floats
        input_tile(xb + row_base[rr] * row_floats + tx * m * Ci, row_floats, Ci,
                   bt, n, my_tmp, v + t * Ci, T * Ci)

    for p in prange(P, num_threads=nthreads, schedule="static"):
        gemm_rowmajor(False, False, <int>T, <int>Co, <int>Ci, 1.0, v + p * T * Ci, <int>Ci,
                      u + p * Ci * Co, <int>Co, 0.0, mbuf + p * T * Co, <int>Co)

    for t in prange(T, num_threads=nthreads, schedule="static"):
        rr = t // TX
        tx = t - rr * TX
        my_tmp = tmp + pyconv_omp_thread_id() * tmp_floats
        output_tile(mbuf + t * Co, T * Co, Co, at, m, n, my_tmp,
                    ybuf + (rr * m * g.Xw + tx * m) * Co, g.Xw * Co)

    for idx in prange(nrows * Co, num_threads=nthreads, schedule="static"):
        rr = idx // Co
        co = idx - rr * Co
        r = r0 + rr
        image = r // g.TY
        ty = r - image * g.TY
        for a in range(m):
            y = ty * m + a
            if y >= g.Ho:
                break
            orow = out + ((image * Co + co) * g.Ho + y) * g.Wo
            res_row = NULL
            if residual != NULL:
                res_row = residual + ((image * Co + co) * g.Ho + y) * g.Wo
            unpack_output_row(ybuf + ((rr * m + a) * g.Xw) * Co + co, Co, orow, g.Wo)
            epilogue_row(orow, g.Wo, bias[co] if bias != NULL else 0.0, res_row, ep)


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


def winograd_pack(weight: np.ndarray, tile: int) -> np.ndarray:
    """Transformed filters ``U = G g G^T`` for F(tile x tile, 3 x 3), shape ``(P, Ci, Co)``.

    ``weight`` is float32 C-contiguous ``[Co, Ci, 3, 3]``; ``P = (tile + 2) ** 2``.
    Computed in float64 and rounded once.  The layout is the GEMM's B operand:
    ``U[p]`` is the row-major ``Ci x Co`` matrix of position p."""
    m = _check_tile(tile)
    if not isinstance(weight, np.ndarray) or weight.ndim != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"weight must be a [Co, Ci, 3, 3] ndarray, got {getattr(weight, 'shape', weight)!r}")
    co, ci = weight.shape[:2]
    _require_array(weight, "weight", (co, ci, 3, 3))
    if co < 1 or ci < 1:
        raise ValueError(f"weight must have at least one input and output channel, got {weight.shape}")
    _, g, _ = transform_matrices(m)
    n = m + 2
    u = np.einsum("kr,oirs,ls->klio", g, weight.astype(np.float64), g, optimize=True)
    return np.ascontiguousarray(u.reshape(n * n, ci, co), dtype=np.float32)


def winograd_conv(x: np.ndarray, packed: np.ndarray, tile: int, bias, pads, epilogue,
                  residual, out: np.ndarray, nthreads: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
    """``out = act(conv3x3(x) + bias [+ residual])`` with Winograd F(tile x tile, 3 x 3).

    x: float32 C-contiguous ``[N, Ci, H, W]``; packed: ``winograd_pack(weight, tile)``;
    bias: ``[Co]`` or None; pads: ``(top, left, bottom, right)``; epilogue:
    ``(kind, lo, hi, slope)`` from ``parse_activation``; residual: like ``out`` or
    None; out: preallocated ``[N, Co, Ho, Wo]``, ``Ho = H + top + bottom - 2``.

    With ``nthreads > 1`` the kernel's own threads call sgemm concurrently, so the
    BLAS is switched to one thread for the call and restored afterwards."""
    m = _check_tile(tile)
    n = m + 2
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        raise ValueError(f"x must be a 4-D [N, Ci, H, W] ndarray, got {getattr(x, 'shape', x)!r}")
    N, Ci, H, W = x.shape
    _require_array(x, "x", (N, Ci, H, W))
    if not isinstance(packed, np.ndarray) or packed.ndim != 3:
        raise ValueError(f"packed must come from winograd_pack, got {getattr(packed, 'shape', packed)!r}")
    Co = packed.shape[2]
    _require_array(packed, "packed", (n * n, Ci, Co))
    if N < 1 or Ci < 1 or Co < 1:
        raise ValueError(f"x {x.shape} and packed {packed.shape} must not be empty")
    try:
        top, left, bottom, right = (int(v) for v in pads)
    except (TypeError, ValueError):
        raise ValueError(f"pads must be (top, left, bottom, right), got {pads!r}") from None
    if min(top, left, bottom, right) < 0:
        raise ValueError(f"pads must not be negative, got {pads!r}")
    Ho, Wo = H + top + bottom - 2, W + left + right - 2
    if Ho < 1 or Wo < 1:
        raise ValueError(f"output size {Ho}x{Wo} of x {x.shape} with pads {pads!r} must be positive")
    _require_array(out, "out", (N, Co, Ho, Wo))
    if bias is not None:
        _require_array(bias, "bias", (Co,))
    if residual is not None:
        _require_array(residual, "residual", (N, Co, Ho, Wo))
        if np.may_share_memory(residual, out):
            residual = residual.copy()  # out rows are written before their residual is read
    if not isinstance(epilogue, tuple) or len(epilogue) != 4:
        raise ValueError(f"epilogue must be a (kind, lo, hi, slope) tuple, got {epilogue!r}")
    if int(nthreads) < 1:
        raise ValueError(f"nthreads must be >= 1, got {nthreads!r}")

    cdef Epilogue ep = epilogue_from_spec(epilogue)
    cdef Geometry g
    g.N, g.Ci, g.H, g.W, g.Co, g.Ho, g.Wo = N, Ci, H, W, Co, Ho, Wo
    g.m, g.n, g.P = m, n, n * n
    g.top, g.left = top, left
    g.TY, g.TX = (Ho + m - 1) // m, (Wo + m - 1) // m
    g.Wp, g.Xw = g.TX * m + 2, g.TX * m

    cdef int threads = int(nthreads)
    cdef Py_ssize_t rows_total = N * g.TY
    cdef Py_ssize_t row_bytes = 4 * (g.TX * g.P * (Ci + Co) + m * g.Xw * Co + m * g.Wp * Ci)
    cdef Py_ssize_t rows_per_block = max(1, min(rows_total, block_bytes // row_bytes))
    cdef Py_ssize_t max_packed = rows_per_block * m + 2 * min(rows_per_block, N + 1)
    cdef Py_ssize_t tiles = rows_per_block * g.TX
    cdef Py_ssize_t xb_size = max_packed * g.Wp * Ci
    cdef Py_ssize_t v_size = g.P * tiles * Ci
    cdef Py_ssize_t m_size = g.P * tiles * Co
    cdef Py_ssize_t y_size = rows_per_block * m * g.Xw * Co
    cdef Py_ssize_t tmp_size = threads * n * max(Ci, Co)
    work = _workspace(xb_size + v_size + m_size + y_size + tmp_size)
    index = np.empty((3, max_packed), dtype=np.intp)

    at32 = np.ascontiguousarray(transform_matrices(m)[0], dtype=np.float32)
    bt32 = np.ascontiguousarray(transform_matrices(m)[2], dtype=np.float32)
    cdef float[::1] work_v = work
    cdef Py_ssize_t[:, ::1] index_v = index
    cdef const float[::1] at_v = at32.ravel()
    cdef const float[::1] bt_v = bt32.ravel()
    cdef const float[:, :, :, ::1] x_v = x
    cdef const float[:, :, ::1] u_v = packed
    cdef float[:, :, :, ::1] out_v = out
    cdef const float[::1] bias_v = bias
    cdef const float[:, :, :, ::1] res_v = residual
    cdef const float* bias_p = &bias_v[0] if bias is not None else NULL
    cdef const float* res_p = &res_v[0, 0, 0, 0] if residual is not None else NULL
    cdef float* base = &work_v[0]
    cdef Py_ssize_t r0, nrows

    from pyconv import _blas
    from pyconv._threads import get_num_threads
    if threads > 1:
        _blas.set_threads(1)
    try:
        with nogil:
            r0 = 0
            while r0 < rows_total:
                nrows = min(rows_per_block, rows_total - r0)
                run_block(&x_v[0, 0, 0, 0], &u_v[0, 0, 0], bias_p, res_p, &out_v[0, 0, 0, 0],
                          &at_v[0], &bt_v[0], ep, &g, r0, nrows,
                          base, base + xb_size, base + xb_size + v_size,
                          base + xb_size + v_size + m_size,
                          base + xb_size + v_size + m_size + y_size,
                          &index_v[0, 0], &index_v[1, 0], &index_v[2, 0], threads)
                r0 += nrows
    finally:
        if threads > 1:
            _blas.set_threads(get_num_threads())
