# Shift (Wu et al., CVPR 2018): per-channel integer translation with zero fill,
# alone and fused into a 1x1 convolution.  Shapes and the per-channel offsets
# are checked by pyconv.ops.shift; these loops trust them.
from cython.parallel cimport prange, threadid

from pyconv._core.blas cimport gemm_rowmajor
from pyconv._core.epilogue cimport Epilogue, epilogue_from_spec, epilogue_row
from pyconv._core.shifted_rows cimport gather_shifted_pixels


def shift2d_forward(const float[:, :, :, ::1] x, float[:, :, :, ::1] out,
                    const int[::1] dy, const int[::1] dx, int nthreads):
    """out[n, c, h, w] = x[n, c, h + dy[c], w + dx[c]] (0 outside the plane)."""
    cdef Py_ssize_t batch = x.shape[0], channels = x.shape[1]
    cdef Py_ssize_t height = x.shape[2], width = x.shape[3]
    cdef Py_ssize_t plane_size = height * width
    cdef Py_ssize_t plane, c
    cdef const float* src = &x[0, 0, 0, 0]
    cdef float* dst = &out[0, 0, 0, 0]
    if batch * channels * plane_size == 0:
        return
    for plane in prange(batch * channels, nogil=True, num_threads=nthreads, schedule="static"):
        c = plane % channels
        gather_shifted_pixels(src + plane * plane_size, height, width, dy[c], dx[c], 1, 1,
                              width, 0, plane_size, dst + plane * plane_size)


def shift_conv1x1_forward(const float[:, :, :, ::1] x, const float[:, ::1] weight,
                          const float[::1] bias, float[:, :, :, ::1] out,
                          const int[::1] dy, const int[::1] dx, int stride_h, int stride_w,
                          tuple activation, float[:, ::1] panels, int nthreads):
    """out[n] = weight @ shifted_strided(x[n]) + bias, then the activation.

    Output pixels are processed in blocks of ``panels.shape[1] // C`` pixels; each
    thread gathers the shifted input of its block into its own row of ``panels``
    (a C x block panel that stays in cache) and multiplies it with sgemm, so the
    shifted tensor is never written out whole.  ``bias`` may be empty (no bias)."""
    cdef Py_ssize_t batch = x.shape[0], channels = x.shape[1]
    cdef Py_ssize_t height = x.shape[2], width = x.shape[3]
    cdef Py_ssize_t out_channels = out.shape[1], out_width = out.shape[3]
    cdef Py_ssize_t out_pixels = out.shape[2] * out.shape[3]
    cdef Py_ssize_t block = panels.shape[1] // channels if channels > 0 else 0  # caller guarantees channels > 0
    cdef Py_ssize_t nblocks, task, n, p0, count, c, o
    cdef bint has_bias = bias.shape[0] > 0
    cdef Epilogue ep = epilogue_from_spec(activation)
    cdef bint need_epilogue = has_bias or ep.kind != 0
    cdef float* panel
    cdef float* y
    cdef const float* image
    if batch * out_channels * out_pixels == 0 or block == 0:
        return
    nblocks = (out_pixels + block - 1) // block
    for task in prange(batch * nblocks, nogil=True, num_threads=nthreads, schedule="static"):
        n = task // nblocks
        p0 = (task % nblocks) * block
        count = out_pixels - p0
        if count > block:
            count = block
        panel = &panels[threadid(), 0]
        image = &x[n, 0, 0, 0]
        for c in range(channels):
            gather_shifted_pixels(image + c * height * width, height, width, dy[c], dx[c], stride_h, stride_w,
                                  out_width, p0, count, panel + c * count)
        y = &out[n, 0, 0, 0] + p0
        gemm_rowmajor(False, False, out_channels, count, channels, 1.0,
                      &weight[0, 0], channels, panel, count, 0.0, y, out_pixels)
        if need_epilogue:
            for o in range(out_channels):
                epilogue_row(y + o * out_pixels, count, bias[o] if has_bias else 0.0, NULL, ep)
