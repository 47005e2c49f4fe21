# 1x1 convolution (stride 1, unpadded, groups 1) of small planes with the
# weights packed in column panels, computed transposed (any other GEMM conv of a
# small output runs as this on its im2col matrix, conv_gemm.Im2col):
#
#     M (P x Co) = X^T (P x Ci) @ W^T (Ci x Co),   then   out (Co x P) = epilogue(M^T)
#
# for each image's P pixels.  On small planes (7x7 .. 14x14) the weights are
# the big operand (up to megabytes): sgemm re-packs them on every call, and in
# the NCHW orientation of conv_gemm the pixels are too few for wide register
# blocks.  Here the weights are packed once (pack_panels: W^T in panels of
# BLOCK_COLS output channels, each Ci x BLOCK_COLS contiguous) and streamed
# once per call through blocked_gemm, whose broadcast operand reads the input
# in place (X^T: 8 consecutive pixels of one input channel per k).  M is then
# gathered back to NCHW channel rows 16 at a time (channel_rows.pxd) and the
# fused epilogue runs on each row while it is in L1.
#
# Threads split the output channels (groups of whole panels) and the images.
from cython.parallel cimport prange

import numpy as np

from pyconv._core.aligned import aligned_copy

from pyconv._core.blocked_gemm cimport BLOCK_COLS, BLOCK_ROWS, blocked_gemm, panel_start
from pyconv._core.channel_rows cimport gather_channel_rows
from pyconv._core.epilogue cimport ACT_NONE, Epilogue, epilogue_from_spec, epilogue_row
from pyconv._core.ndarrays cimport check_array, check_floats, data_of
from pyconv._core.parallel cimport pyconv_omp_thread_id, thread_stride
from pyconv._core.simd cimport multiversion_void

cimport numpy as cnp

cnp.import_array()   # the NumPy C API behind ndarrays.pxd

__all__ = ["pack_panels", "PanelConv1x1", "MIN_PIXELS", "MIN_OUT_CHANNELS"]

cdef enum:
    LINE_FLOATS = 16            # floats per cache line

MIN_PIXELS = BLOCK_ROWS         # pixels per image the register block needs
MIN_OUT_CHANNELS = BLOCK_COLS   # output channels the panels need


def pack_panels(wmat: np.ndarray) -> np.ndarray:
    """W^T of a ``[Co, Ci]`` float32 weight matrix in panels: ``(ceil(Co / 32), Ci, 32)``,
    panel j holding output channels ``min(32 j, Co - 32) ...`` (the last panel ends at
    Co, overlapping the one before), cache-line aligned.  Needs Co >= 32."""
    if not isinstance(wmat, np.ndarray) or wmat.ndim != 2 or wmat.dtype != np.float32:
        raise ValueError(f"wmat must be a float32 [Co, Ci] array, got {getattr(wmat, 'shape', wmat)!r}")
    co = wmat.shape[0]
    if co < BLOCK_COLS or wmat.shape[1] < 1:
        raise ValueError(f"panels need at least {BLOCK_COLS} output channels and one input, got {wmat.shape}")
    starts = [panel_start(j, co) for j in range((co + BLOCK_COLS - 1) // BLOCK_COLS)]
    return aligned_copy(np.stack([wmat[c:c + BLOCK_COLS].T for c in starts]))


cdef struct PanelCall:
    const float* x
    const float* panels
    const float* bias
    const float* residual
    float* out
    Epilogue ep
    Py_ssize_t Ci, Co, P, groups


cdef inline void panel_group(Py_ssize_t g, Py_ssize_t ngroups, Py_ssize_t Co, Py_ssize_t* c0,
                             Py_ssize_t* j0, Py_ssize_t* ncols) noexcept nogil:
    """Output channels c0 .. c0 + ncols of panel group g (panels j0 ...) out of ngroups.
    With ngroups <= Co // 32 every group but the last spans whole panels and the last
    at least two when Co % 32 != 0, so every group is >= 32 channels wide."""
    cdef Py_ssize_t npanels = (Co + BLOCK_COLS - 1) // BLOCK_COLS
    cdef Py_ssize_t j1 = (g + 1) * npanels // ngroups
    j0[0] = g * npanels // ngroups
    c0[0] = j0[0] * BLOCK_COLS
    ncols[0] = (j1 * BLOCK_COLS if j1 < npanels else Co) - c0[0]


cdef multiversion_void panel_task(const PanelCall* c, Py_ssize_t task, float* m) noexcept nogil:
    """One (image, panel group): M = X^T @ panels into ``m`` (P x ncols), then its
    channel rows into the output with the epilogue."""
    cdef Py_ssize_t n = task // c.groups, c0, j0, ncols, r0, r, co
    panel_group(task % c.groups, c.groups, c.Co, &c0, &j0, &ncols)
    cdef const float* x = c.x + n * c.Ci * c.P
    cdef Py_ssize_t plane = n * c.Co * c.P
    blocked_gemm(x, 1, c.P, c.Ci, c.panels + j0 * c.Ci * BLOCK_COLS, 0, m, ncols, c.P, ncols, NULL, NULL,
                 Epilogue(ACT_NONE, 0.0, 0.0, 0.0))
    r0 = 0
    while r0 < ncols:
        r = min(16, ncols - r0)
        gather_channel_rows(m + r0, ncols, c.out + plane + (c0 + r0) * c.P, c.P, c.P, r)
        for co in range(c0 + r0, c0 + r0 + r):
            epilogue_row(c.out + plane + co * c.P, c.P, c.bias[co] if c.bias != NULL else 0.0,
                         c.residual + plane + co * c.P if c.residual != NULL else NULL, c.ep)
        r0 += r


cdef class PanelConv1x1:
    """out = epilogue(conv1x1(x, W)) for one input shape, W given as ``pack_panels(wmat)``.

    Built once per input shape, called per run as ``conv(x, residual, out, scratch)``
    (arrays checked by dtype, contiguity and shape only, as conv_gemm.GemmConv).
    bias float32[Co] or None; residual float32 like out, or None; scratch
    float32[scratch_floats()].  Needs H * W >= MIN_PIXELS and Co >= MIN_OUT_CHANNELS."""
    cdef tuple x_shape, out_shape
    cdef object panels, bias
    cdef Epilogue ep
    cdef Py_ssize_t groups, per_thread
    cdef int nthreads

    def __init__(self, tuple x_shape, panels, bias, tuple epilogue, tuple out_shape, int nthreads):
        self.x_shape, self.out_shape = tuple(int(d) for d in x_shape), tuple(int(d) for d in out_shape)
        if (len(self.x_shape) != 4 or len(self.out_shape) != 4 or self.x_shape[0] != self.out_shape[0]
                or self.x_shape[2:] != self.out_shape[2:]):
            raise ValueError(f"x {x_shape} and out {out_shape} must be NCHW shapes of one batch and plane size")
        N, Ci, H, W = self.x_shape
        Co = self.out_shape[1]
        if H * W < MIN_PIXELS or Co < MIN_OUT_CHANNELS or nthreads < 1:
            raise ValueError(f"PanelConv1x1 needs >= {MIN_PIXELS} pixels, >= {MIN_OUT_CHANNELS} output "
                             f"channels and nthreads >= 1, got x {x_shape}, out {out_shape}, nthreads={nthreads}")
        check_array(panels, "panels", ((Co + BLOCK_COLS - 1) // BLOCK_COLS, Ci, BLOCK_COLS))
        if bias is not None:
            check_array(bias, "bias", (Co,))
        self.panels, self.bias = panels, bias
        self.ep = epilogue_from_spec(epilogue)
        # enough tasks for the threads: split the channels of each image into groups of panels
        self.groups = max(1, min(-(-nthreads // N), Co // BLOCK_COLS))
        self.nthreads = max(1, min(nthreads, N * self.groups))
        cdef Py_ssize_t c0, j0, ncols, widest = 0, g
        for g in range(self.groups):
            panel_group(g, self.groups, Co, &c0, &j0, &ncols)
            widest = max(widest, ncols)
        self.per_thread = thread_stride(H * W * widest)

    def scratch_floats(self) -> int:
        """Floats of the scratch array: one M block per thread, from the first cache line
        of the array (M is stored in whole vectors; NumPy aligns to 16 bytes only)."""
        return self.nthreads * self.per_thread + LINE_FLOATS

    def __call__(self, x, residual, out, scratch):
        check_array(x, "x", self.x_shape)
        check_array(out, "out", self.out_shape)
        if residual is not None:
            check_array(residual, "residual", self.out_shape)
        check_floats(scratch, "scratch", self.nthreads * self.per_thread + LINE_FLOATS)
        cdef PanelCall call
        call.x, call.panels, call.out = data_of(x), data_of(self.panels), data_of(out)
        call.bias = data_of(self.bias) if self.bias is not None else NULL
        call.residual = data_of(residual) if residual is not None else NULL
        call.ep = self.ep
        call.Ci, call.Co = self.x_shape[1], self.out_shape[1]
        call.P = self.x_shape[2] * self.x_shape[3]
        call.groups = self.groups
        cdef float* m = data_of(scratch)
        m += (-(<Py_ssize_t>m) // sizeof(float)) % LINE_FLOATS
        cdef Py_ssize_t ntasks = self.x_shape[0] * self.groups, task, per_thread = self.per_thread
        if self.nthreads == 1:   # no OpenMP region to enter
            for task in range(ntasks):
                panel_task(&call, task, m)
        else:
            for task in prange(ntasks, nogil=True, num_threads=self.nthreads, schedule="static"):
                panel_task(&call, task, m + pyconv_omp_thread_id() * per_thread)
