# GEMM convolution on NCHW: 1x1 and general kxk (any stride, padding,
# dilation, groups) as   out[g] (Co/g x P) = W[g] (Co/g x K) @ B (K x P),
# K = Ci/g * kh * kw, P = Ho * Wo.
#
# The output columns are cut into tiles of ``tile_cols`` pixels.  For each
# (image, group, tile) the B operand is either read straight from the input
# (1x1, stride 1, no padding: the NCHW plane already is a K x P matrix) or
# gathered for that tile only (im2col of one tile, sized by the caller to stay
# in L2), multiplied by one single-threaded sgemm, and the fused epilogue runs
# on the tile's output rows while they are still in cache.  Tiles are spread
# over the OpenMP threads, so the BLAS must run single-threaded meanwhile
# (arranged by pyconv.ops.conv).
from cython.parallel cimport prange
from libc.string cimport memset

from pyconv._core.blas cimport gemm_rowmajor
from pyconv._core.parallel cimport pyconv_omp_thread_id
from pyconv._core.epilogue cimport Epilogue, epilogue_from_spec, epilogue_row
from pyconv._core.simd cimport multiversion_void


cdef struct ConvGeom:
    int C, H, W          # input channels (all groups), height, width
    int Co, Ho, Wo       # output channels, height, width
    int groups, kh, kw
    int sh, sw, pt, pl, dh, dw


cdef multiversion_void im2col_tile(const float* x_group, float* cols, int col0, int ncols,
                                   const ConvGeom* g) noexcept nogil:
    """Gather B[K, ncols] (row stride ncols) for output pixels col0 .. col0+ncols-1.

    x_group points at the group's first input channel plane."""
    cdef int cig = g.C // g.groups
    cdef int c, ki, kj, p, oh, ow, ow_end, ow_lo, ow_hi, lo, hi, ih, off, n, i
    cdef float* dst
    cdef const float* src
    for c in range(cig):
        for ki in range(g.kh):
            for kj in range(g.kw):
                dst = cols + ((c * g.kh + ki) * g.kw + kj) * ncols
                # valid output columns: 0 <= ow*sw - pl + kj*dw < W
                off = kj * g.dw - g.pl
                ow_lo = 0 if off >= 0 else (-off + g.sw - 1) // g.sw
                ow_hi = (g.W - 1 - off) // g.sw + 1 if g.W - 1 - off >= 0 else 0
                if ow_lo > g.Wo:
                    ow_lo = g.Wo
                if ow_hi > g.Wo:
                    ow_hi = g.Wo
                p = col0
                while p < col0 + ncols:
                    oh = p // g.Wo
                    ow = p - oh * g.Wo
                    ow_end = g.Wo if g.Wo - ow <= col0 + ncols - p else ow + (col0 + ncols - p)
                    n = ow_end - ow
                    ih = oh * g.sh - g.pt + ki * g.dh
                    if ih < 0 or ih >= g.H:
                        memset(dst, 0, n * sizeof(float))
                    else:
                        src = x_group + (c * g.H + ih) * g.W + off
                        lo = ow_lo if ow_lo < ow_end else ow_end
                        if lo < ow:
                            lo = ow
                        hi = ow_hi if ow_hi < ow_end else ow_end
                        if hi < lo:
                            hi = lo
                        for i in range(ow, lo):
                            dst[i - ow] = 0.0
                        if g.sw == 1:
                            for i in range(lo, hi):
                                dst[i - ow] = src[i]
                        else:
                            for i in range(lo, hi):
                                dst[i - ow] = src[i * g.sw]
                        for i in range(hi, ow_end):
                            dst[i - ow] = 0.0
                    dst += n
                    p += n


cdef multiversion_void epilogue_tile(float* out, int rows, int ncols, int ld,
                                     const float* bias, const float* residual,
                                     Epilogue ep) noexcept nogil:
    """Fused bias/residual/activation on a rows x ncols tile (row stride ld)."""
    cdef int r
    for r in range(rows):
        epilogue_row(out + <Py_ssize_t>r * ld, ncols, bias[r] if bias != NULL else 0.0,
                     residual + <Py_ssize_t>r * ld if residual != NULL else NULL, ep)


def conv2d_gemm(const float[:, :, :, ::1] x, const float[:, ::1] wmat, bias,
                stride, pads, dilation, int groups, int kh, int kw,
                tuple epilogue, residual, float[:, :, :, ::1] out,
                int tile_cols, float[:, ::1] scratch, int nthreads):
    """out = epilogue(conv2d(x, W)) with W given as wmat[Co, Ci/groups*kh*kw].

    pads = (top, left, bottom, right); bias float32[Co] or None; residual
    float32[N, Co, Ho, Wo] or None; scratch float32[nthreads, K * tile_cols]
    (unused for a 1x1 stride-1 unpadded conv).  Call with the BLAS single-threaded."""
    cdef ConvGeom g
    g.C = x.shape[1]; g.H = x.shape[2]; g.W = x.shape[3]
    g.Co = out.shape[1]; g.Ho = out.shape[2]; g.Wo = out.shape[3]
    g.groups = groups; g.kh = kh; g.kw = kw
    g.sh, g.sw = stride
    g.pt, g.pl = pads[0], pads[1]
    g.dh, g.dw = dilation
    cdef int N = x.shape[0]
    cdef int cig = g.C // groups, cog = g.Co // groups
    cdef int K = cig * kh * kw
    cdef int P = g.Ho * g.Wo
    cdef int ntiles = (P + tile_cols - 1) // tile_cols
    cdef int ntasks = N * groups * ntiles
    cdef bint direct = kh == 1 and kw == 1 and g.sh == 1 and g.sw == 1 and \
        pads[0] == 0 and pads[1] == 0 and pads[2] == 0 and pads[3] == 0
    cdef Epilogue ep = epilogue_from_spec(epilogue)
    cdef const float[::1] bias_v
    cdef const float[:, :, :, ::1] res_v
    cdef const float* bias_p = NULL
    cdef const float* res_p = NULL
    if bias is not None:
        bias_v = bias
        bias_p = &bias_v[0]
    if residual is not None:
        res_v = residual
        res_p = &res_v[0, 0, 0, 0]
    cdef const float* xp = &x[0, 0, 0, 0]
    cdef const float* wp = &wmat[0, 0]
    cdef float* op = &out[0, 0, 0, 0]
    cdef int task, n, grp, t, col0, ncols, ldb
    cdef Py_ssize_t out_off
    cdef float* cols
    cdef const float* b
    if not direct and (scratch.shape[0] < nthreads or scratch.shape[1] < K * tile_cols):
        raise ValueError("scratch too small for the im2col tiles")
    for task in prange(ntasks, nogil=True, num_threads=nthreads, schedule="static"):
        t = task % ntiles
        grp = (task // ntiles) % groups
        n = task // (ntiles * groups)
        col0 = t * tile_cols
        ncols = P - col0 if P - col0 < tile_cols else tile_cols
        if direct:
            b = xp + (<Py_ssize_t>n * g.C + grp * cig) * P + col0
            ldb = P
        else:
            cols = &scratch[pyconv_omp_thread_id(), 0]
            im2col_tile(xp + (<Py_ssize_t>n * g.C + grp * cig) * g.H * g.W, cols, col0, ncols, &g)
            b = cols
            ldb = ncols
        out_off = (<Py_ssize_t>n * g.Co + grp * cog) * P + col0
        gemm_rowmajor(False, False, cog, ncols, K, 1.0, wp + <Py_ssize_t>grp * cog * K, K,
                      b, ldb, 0.0, op + out_off, P)
        epilogue_tile(op + out_off, cog, ncols, P,
                      bias_p + grp * cog if bias_p != NULL else NULL,
                      res_p + out_off if res_p != NULL else NULL, ep)
