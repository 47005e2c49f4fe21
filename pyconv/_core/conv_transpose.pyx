# Transposed convolution (the adjoint of conv2d) as GEMM + col2im:
#     cols[g] (Co/g*kh*kw x H*W) = W[g]^T (Co/g*kh*kw x Ci/g) @ x[g] (Ci/g x H*W)
# then every column is scattered into the output window it belongs to.  The
# GEMM of one (image, group) is split by input-pixel columns over the OpenMP
# threads, each calling a single-threaded sgemm; the scatter is parallel over
# output channels, each of which owns its plane, and the fused epilogue runs
# on a plane right after its scatter.
from cython.parallel cimport prange
from libc.string cimport memset

from pyconv._core.blas cimport gemm_rowmajor
from pyconv._core.epilogue cimport Epilogue, epilogue_from_spec, epilogue_row
from pyconv._core.simd cimport multiversion_void


cdef struct TGeom:
    int H, W, Ho, Wo, kh, kw, sh, sw, pt, pl, dh, dw


cdef multiversion_void col2im_plane(const float* cols, float* out, const TGeom* g) noexcept nogil:
    """Scatter-add the kh*kw rows (H*W each) of one output channel into its Ho x Wo plane."""
    cdef int ki, kj, ih, oh, iw, off, iw_lo, iw_hi
    cdef const float* src
    cdef float* dst
    memset(out, 0, <size_t>g.Ho * g.Wo * sizeof(float))
    for ki in range(g.kh):
        for kj in range(g.kw):
            off = kj * g.dw - g.pl
            # output column iw*sw + off must lie in [0, Wo)
            iw_lo = (-off + g.sw - 1) // g.sw if off < 0 else 0
            iw_hi = (g.Wo - 1 - off) // g.sw + 1 if g.Wo - 1 - off >= 0 else 0
            if iw_hi > g.W:
                iw_hi = g.W
            for ih in range(g.H):
                oh = ih * g.sh - g.pt + ki * g.dh
                if oh < 0 or oh >= g.Ho:
                    continue
                src = cols + (<Py_ssize_t>(ki * g.kw + kj) * g.H + ih) * g.W + iw_lo
                dst = out + <Py_ssize_t>oh * g.Wo + iw_lo * g.sw + off
                if g.sw == 1:
                    for iw in range(iw_hi - iw_lo):
                        dst[iw] += src[iw]
                else:
                    for iw in range(iw_hi - iw_lo):
                        dst[iw * g.sw] += src[iw]


def conv_transpose2d_gemm(const float[:, :, :, ::1] x, const float[:, :, :, ::1] weight, bias,
                          stride, pads, dilation, int groups, tuple epilogue,
                          float[:, :, :, ::1] out, float[:, ::1] cols, int nthreads):
    """out = epilogue(conv_transpose2d(x, weight)); weight [Ci, Co/groups, kh, kw].

    pads = (top, left) offsets of the output window; cols float32[Co/groups*kh*kw, H*W].
    Call with the BLAS single-threaded when nthreads > 1."""
    cdef TGeom g
    cdef int N = x.shape[0], Ci = x.shape[1], Co = out.shape[1]
    g.H = x.shape[2]; g.W = x.shape[3]
    g.Ho = out.shape[2]; g.Wo = out.shape[3]
    g.kh = weight.shape[2]; g.kw = weight.shape[3]
    g.sh, g.sw = stride
    g.pt, g.pl = pads[0], pads[1]
    g.dh, g.dw = dilation
    cdef int cig = Ci // groups, cog = Co // groups
    cdef int rows = cog * g.kh * g.kw
    cdef int HW = g.H * g.W
    if cols.shape[0] < rows or cols.shape[1] < HW:
        raise ValueError("cols buffer too small")
    cdef Epilogue ep = epilogue_from_spec(epilogue)
    cdef const float[::1] bias_v
    cdef const float* bias_p = NULL
    if bias is not None:
        bias_v = bias
        bias_p = &bias_v[0]
    cdef const float* xp = &x[0, 0, 0, 0]
    cdef const float* wp = &weight[0, 0, 0, 0]
    cdef float* op = &out[0, 0, 0, 0]
    cdef float* cp = &cols[0, 0]
    cdef Py_ssize_t plane = <Py_ssize_t>g.Ho * g.Wo
    cdef int n, grp, c, co, t, c0
    cdef int chunk = ((HW + nthreads - 1) // nthreads + 15) // 16 * 16
    cdef int nchunks = (HW + chunk - 1) // chunk
    for n in range(N):
        for grp in range(groups):
            for t in prange(nchunks, nogil=True, num_threads=nthreads, schedule="static"):
                c0 = t * chunk
                gemm_rowmajor(True, False, rows, HW - c0 if HW - c0 < chunk else chunk, cig, 1.0,
                              wp + <Py_ssize_t>grp * cig * rows, rows,
                              xp + (<Py_ssize_t>n * Ci + grp * cig) * HW + c0, HW, 0.0, cp + c0, HW)
            for c in prange(cog, nogil=True, num_threads=nthreads, schedule="static"):
                co = grp * cog + c
                col2im_plane(cp + <Py_ssize_t>c * g.kh * g.kw * HW, op + (<Py_ssize_t>n * Co + co) * plane, &g)
                epilogue_row(op + (<Py_ssize_t>n * Co + co) * plane, plane,
                             bias_p[co] if bias_p != NULL else 0.0, NULL, ep)
