# Adder convolution (Chen et al., AdderNet, CVPR 2020): y = -sum |x - w| over
# each window of the zero-padded input.  Arguments are checked by
# pyconv.ops.adder; these loops trust them.
#
# Layout, per (image, group, block of output pixels) task:
#   panel  [K x ldp]   im2col of the zero-padded input, K = Cin/groups * kh * kw,
#                      ldp = block rounded up to ADDER_NR (extra columns are 0)
#   wpack  [K x MR]    per block of ADDER_MR output channels, k-major (packed once)
#   stage  [MR x ldp]  the block's outputs before bias/activation/store
# The micro-kernel keeps an MR x NR accumulator tile in registers and streams
# the panel; its innermost loop runs over NR adjacent pixels (unit stride).
from cython.parallel cimport prange, threadid
from libc.math cimport fabsf
from libc.string cimport memcpy, memset

from pyconv._core.epilogue cimport Epilogue, epilogue_from_spec, epilogue_row
from pyconv._core.shifted_rows cimport gather_shifted_pixels
from pyconv._core.simd cimport multiversion_void

cdef enum:
    ADDER_MR = 4   # output channels per register tile
    ADDER_NR = 16  # output pixels per register tile (one AVX-512 or two AVX2 vectors;
                   # 4 x 16 keeps the AVX2 clone's 8 accumulators in its 16 registers)

MR = ADDER_MR
NR = ADDER_NR


cdef multiversion_void adder_tile_rows(const float* wpack, Py_ssize_t depth,
                                       const float* panel, Py_ssize_t ldp, Py_ssize_t ntiles,
                                       float* stage) noexcept nogil:
    """stage[i, p] = -sum_k |panel[k, p] - wpack[k, i]| for i < MR, p < ntiles*NR."""
    cdef float acc[ADDER_MR][ADDER_NR]
    cdef const float* a
    cdef float w[ADDER_MR]
    cdef float v
    cdef Py_ssize_t t, k, i, j
    for t in range(ntiles):
        for i in range(ADDER_MR):
            for j in range(ADDER_NR):
                acc[i][j] = 0.0
        a = panel + t * ADDER_NR
        for k in range(depth):
            for i in range(ADDER_MR):
                w[i] = wpack[k * ADDER_MR + i]
            for j in range(ADDER_NR):
                v = a[j]
                for i in range(ADDER_MR):
                    acc[i][j] += fabsf(v - w[i])
            a += ldp
        for i in range(ADDER_MR):
            for j in range(ADDER_NR):
                stage[i * ldp + t * ADDER_NR + j] = -acc[i][j]


def adder2d_forward(const float[:, :, :, ::1] x, const float[:, :, :, ::1] wpack,
                    const float[::1] bias, const float[::1] scale, float[:, :, :, ::1] out,
                    int kernel_h, int kernel_w, int stride_h, int stride_w,
                    int pad_top, int pad_left, tuple activation,
                    float[:, ::1] workspace, int block, int nthreads):
    """Adder convolution of ``x`` into ``out`` with weights packed by ``pack_weights``.

    ``workspace`` holds one row per thread of (K + MR) * ldp floats, ldp = block
    rounded up to NR.  ``bias`` and ``scale`` (per output channel, applied before
    the bias) may be empty."""
    cdef Py_ssize_t batch = x.shape[0], in_channels = x.shape[1]
    cdef Py_ssize_t height = x.shape[2], width = x.shape[3]
    cdef Py_ssize_t groups = wpack.shape[0], channel_blocks = wpack.shape[1], depth = wpack.shape[2]
    cdef Py_ssize_t out_channels = out.shape[1], out_width = out.shape[3]
    cdef Py_ssize_t out_pixels = out.shape[2] * out.shape[3]
    cdef Py_ssize_t group_in = in_channels // groups, group_out = out_channels // groups
    cdef Py_ssize_t taps = kernel_h * kernel_w
    cdef Py_ssize_t ldp = (block + ADDER_NR - 1) // ADDER_NR * ADDER_NR
    cdef Py_ssize_t nblocks, task, n, g, p0, count, ntiles, r, c, tap, ob, i, o, rows, j
    cdef bint has_bias = bias.shape[0] > 0
    cdef bint has_scale = scale.shape[0] > 0
    cdef float s
    cdef Epilogue ep = epilogue_from_spec(activation)
    cdef float* panel
    cdef float* stage
    cdef float* y
    if batch * out_channels * out_pixels == 0:
        return
    nblocks = (out_pixels + block - 1) // block
    for task in prange(batch * groups * nblocks, nogil=True, num_threads=nthreads, schedule="static"):
        n = task // (groups * nblocks)
        g = (task // nblocks) % groups
        p0 = (task % nblocks) * block
        count = out_pixels - p0
        if count > block:
            count = block
        ntiles = (count + ADDER_NR - 1) // ADDER_NR
        panel = &workspace[threadid(), 0]
        stage = panel + depth * ldp
        for r in range(depth):
            c = r // taps
            tap = r % taps
            gather_shifted_pixels(&x[n, g * group_in + c, 0, 0], height, width,
                                  tap // kernel_w - pad_top, tap % kernel_w - pad_left,
                                  stride_h, stride_w, out_width, p0, count, panel + r * ldp)
            if count < ntiles * ADDER_NR:
                memset(panel + r * ldp + count, 0, (ntiles * ADDER_NR - count) * sizeof(float))
        for ob in range(channel_blocks):
            adder_tile_rows(&wpack[g, ob, 0, 0], depth, panel, ldp, ntiles, stage)
            rows = group_out - ob * ADDER_MR
            if rows > ADDER_MR:
                rows = ADDER_MR
            for i in range(rows):
                o = g * group_out + ob * ADDER_MR + i
                y = &out[n, o, 0, 0] + p0
                if has_scale:
                    s = scale[o]
                    for j in range(count):
                        y[j] = stage[i * ldp + j] * s
                else:
                    memcpy(y, stage + i * ldp, count * sizeof(float))
                epilogue_row(y, count, bias[o] if has_bias else 0.0, NULL, ep)
