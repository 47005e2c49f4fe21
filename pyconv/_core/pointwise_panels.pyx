# GEMM convolutions (groups 1) computed transposed on weights packed once in
# column panels:
#
#     M (P x Co) = A (P x K) @ W^T (K x Co),   then   out (Co x P) = epilogue(M^T)
#
# for each image's P output pixels, by blocked_gemm, whose broadcast operand A
# is read in place:
#  - PanelConv1x1 (1x1, stride 1, unpadded): A = X^T, the NCHW input itself
#    (a register block's consecutive pixels of one input channel per k);
#  - PanelConv (any kernel, stride, padding, dilation): an implicit GEMM over the
#    input's phase planes (phase_planes.pxd) made channels-innermost, on the wide
#    Ho x Wq grid: for tap t, A's row of wide pixel p is the Ci channels of pixel
#    p + tap_offset(t) of the tap's phase plane, contiguous (and so are the taps of
#    a run, tap_runs), so a register block's rows are as many short sequential
#    streams and no im2col matrix is written.  The blocked loop (8-row blocks) ran
#    146 GF/s on 64->128 3x3 s2 @56 with A channels-innermost against 106 with A as
#    im2col rows (one cache line per k), and 121 against 79 on ResNet's 7x7 conv1
#    (alone, warm, 1 thread).
# The weights are the other operand (pack_panels: W^T in panels of BLOCK_COLS
# output channels, each K x BLOCK_COLS contiguous), streamed once per call: sgemm
# would re-pack them on every call, and for small planes (7x7 .. 14x14) they are
# the big operand (up to megabytes).  M is gathered back to NCHW channel rows 16
# at a time (channel_rows.pxd) and the fused epilogue runs on each row while it
# is in L1.
#
# Threads split the output channels (groups of whole panels) and the images.
from cython.parallel cimport prange
from libc.string cimport memcpy, memset

import numpy as np

from pyconv._core.aligned import aligned_empty

from pyconv._core.blocked_gemm cimport BLOCK_COLS, BLOCK_ROWS, blocked_gemm, panel_start
from pyconv._core.channel_rows cimport gather_channel_rows, scatter_channel_rows
from pyconv._core.epilogue cimport ACT_NONE, Epilogue, epilogue_from_spec, epilogue_row
from pyconv._core.ndarrays cimport check_array, check_conv_arrays, check_floats, data_of
from pyconv._core.parallel cimport pyconv_omp_thread_id, thread_stride
from pyconv._core.phase_planes cimport PhaseGeom, phase_geometry, phase_split, phase_used, tap_offset
from pyconv._core.simd cimport multiversion_void

cimport numpy as cnp

cnp.import_array()   # the NumPy C API behind ndarrays.pxd

__all__ = ["tap_order", "tap_runs", "pack_panels", "PanelConv1x1", "PanelConv", "MIN_PIXELS", "MIN_OUT_CHANNELS"]

cdef enum:
    LINE_FLOATS = 16            # floats per cache line
    M_BLOCK_FLOATS = 1 << 16    # floats of M computed before they are gathered out (256 KiB)

MIN_PIXELS = BLOCK_ROWS         # pixels per image the register block needs
MIN_OUT_CHANNELS = BLOCK_COLS   # output channels the panels need


def tap_order(kernel, stride, dilation) -> list:
    """PanelConv's order of a kernel's taps ``(ki, kj)``: by phase plane, then by position in
    it, so that taps one pixel apart in a plane follow each other (tap_runs)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    return sorted(((ki, kj) for ki in range(kh) for kj in range(kw)),
                  key=lambda t: (t[0] * dh % sh, t[1] * dw % sw, t[0] * dh // sh, t[1] * dw // sw))


def tap_runs(kernel, stride, dilation) -> list:
    """tap_order's taps grouped into runs ``(ki, kj, taps)`` of consecutive taps one pixel
    apart in their phase plane, which PanelConv reads as one stretch of channels-innermost
    pixels (stride 2, 7x7: a kernel row is two runs, of four and of three taps; stride 1:
    one run of kw taps; dilation 2 at stride 1: every tap alone)."""
    (sh, sw), (dh, dw) = stride, dilation
    runs = []
    last = None   # (phase row, phase column, row in the phase, column in the phase) of the run's last tap
    for ki, kj in tap_order(kernel, stride, dilation):
        at = (ki * dh % sh, kj * dw % sw, ki * dh // sh, kj * dw // sw)
        if last is not None and at[:3] == last[:3] and at[3] == last[3] + 1:
            ki0, kj0, n = runs.pop()
            runs.append((ki0, kj0, n + 1))
        else:
            runs.append((ki, kj, 1))
        last = at
    return runs


def pack_panels(weight: np.ndarray, taps=None) -> np.ndarray:
    """W^T of a float32 weight in panels, ``(ceil(Co / 32), K, 32)``: panel j holds output
    channels ``min(32 j, Co - 32) ...`` (the last panel ends at Co, overlapping the one
    before), cache-line aligned.  A ``[Co, Ci]`` matrix gives K = Ci; a ``[Co, Ci, kh, kw]``
    kernel gives K = kh*kw*Ci, tap by tap in the order of ``taps`` (``(ki, kj)`` pairs,
    PanelConv's ``tap_order``; None: row by row) with the input channels inside.  Built
    panel by panel: no whole-weight temporary.  Needs Co >= 32."""
    if not isinstance(weight, np.ndarray) or weight.ndim not in (2, 4) or weight.dtype != np.float32:
        raise ValueError("weight must be a float32 [Co, Ci] or [Co, Ci, kh, kw] array, "
                         f"got {getattr(weight, 'shape', weight)!r}")
    co, k = weight.shape[0], int(np.prod(weight.shape[1:]))
    if co < BLOCK_COLS or k < 1:
        raise ValueError(f"panels need at least {BLOCK_COLS} output channels and one input, got {weight.shape}")
    order = slice(None)
    if weight.ndim == 2:
        rows = weight[:, None, :]
    else:
        ntaps, kw = weight.shape[2] * weight.shape[3], weight.shape[3]
        if taps is not None:
            order = [ki * kw + kj for ki, kj in taps]
            if sorted(order) != list(range(ntaps)):
                raise ValueError(f"taps must order the kernel's {weight.shape[2]}x{kw} taps, got {taps!r}")
        rows = weight.reshape(co, weight.shape[1], ntaps).transpose(0, 2, 1)   # [Co, taps, Ci], a view
    starts = [panel_start(j, co) for j in range((co + BLOCK_COLS - 1) // BLOCK_COLS)]
    panels = aligned_empty((len(starts), k, BLOCK_COLS))
    for j, c in enumerate(starts):
        panels[j] = rows[c:c + BLOCK_COLS][:, order].reshape(BLOCK_COLS, k).T
    return panels


cdef struct PanelCall:
    const float* panels
    const float* bias
    const float* residual
    float* out
    Epilogue ep
    Py_ssize_t Co, groups
    # A: w[r, k] of blocked_gemm at a + taps[t] + r * ldw + i * kstep for the tap_lens[t]
    # steps i of tap t (blocked_gemm.pxd)
    Py_ssize_t ldw, kstep, K, ntaps
    const Py_ssize_t* taps
    const Py_ssize_t* tap_lens
    Py_ssize_t Ho, Wo, Wq   # M's rows: the output pixels on the wide Ho x Wq grid
    Py_ssize_t chunk        # output rows per M block (chunk_rows)


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


cdef inline Py_ssize_t chunk_end(Py_ssize_t oh0, Py_ssize_t chunk, Py_ssize_t Ho, Py_ssize_t Wq) noexcept nogil:
    """End of the M block of output rows from oh0: ``chunk`` rows, or all the rest when
    fewer than a register block's pixels would be left after them."""
    cdef Py_ssize_t oh1 = min(Ho, oh0 + chunk)
    return Ho if (Ho - oh1) * Wq < BLOCK_ROWS else oh1


cdef Py_ssize_t chunk_rows(Py_ssize_t Ho, Py_ssize_t Wq, Py_ssize_t K, Py_ssize_t ncols):
    """Output rows per M block: about M_BLOCK_FLOATS of M, which then stays in L2 until it
    is gathered out, but at least 2 K pixels (each block streams all of the group's
    weights: small planes with large weights take one block) and a register block."""
    cdef Py_ssize_t pixels = max(M_BLOCK_FLOATS // ncols, 2 * K)
    return min(Ho, max(pixels // Wq, (BLOCK_ROWS + Wq - 1) // Wq, 1))


cdef inline Py_ssize_t m_block_rows(Py_ssize_t Ho, Py_ssize_t Wq, Py_ssize_t chunk) noexcept nogil:
    """The most output rows chunk_end gives a block (the last one takes a short rest)."""
    return min(Ho, chunk + (BLOCK_ROWS + Wq - 1) // Wq)


cdef multiversion_void panel_task(const PanelCall* c, Py_ssize_t n, Py_ssize_t group, const float* a,
                                  float* m, float* wide_rows) noexcept nogil:
    """Panel group ``group`` of image n, a block of output rows at a time (chunk_end):
    M = A @ panels into ``m`` (block pixels x ncols), then its channel rows into the output
    with the epilogue (when the wide grid has columns to drop: row by row for rows of
    at least 16 pixels, else through ``wide_rows``, 16 x block pixels floats)."""
    cdef Py_ssize_t c0, j0, ncols, r0, r, co, i, oh, oh0 = 0, oh1, rows, P = c.Ho * c.Wo
    panel_group(group, c.groups, c.Co, &c0, &j0, &ncols)
    cdef float* plane = c.out + n * c.Co * P
    cdef const float* residual = c.residual + n * c.Co * P if c.residual != NULL else NULL
    while oh0 < c.Ho:
        oh1 = chunk_end(oh0, c.chunk, c.Ho, c.Wq)
        rows = (oh1 - oh0) * c.Wq
        blocked_gemm(a + oh0 * c.Wq * c.ldw, c.ldw, c.kstep, c.K, c.taps, c.tap_lens, c.ntaps,
                     c.panels + j0 * c.K * BLOCK_COLS,
                     0, m, ncols, rows, ncols, NULL, NULL, Epilogue(ACT_NONE, 0.0, 0.0, 0.0))
        r0 = 0
        while r0 < ncols:
            r = min(16, ncols - r0)
            if c.Wq == c.Wo:
                gather_channel_rows(m + r0, ncols, plane + (c0 + r0) * P + oh0 * c.Wo, P, rows, r)
            elif c.Wo >= 16:   # whole 16x16 transposes per output row: straight into the output
                for oh in range(oh0, oh1):
                    gather_channel_rows(m + (oh - oh0) * c.Wq * ncols + r0, ncols, plane + (c0 + r0) * P + oh * c.Wo,
                                        P, c.Wo, r)
            else:
                gather_channel_rows(m + r0, ncols, wide_rows, rows, rows, r)
                for i in range(r):
                    for oh in range(oh0, oh1):
                        memcpy(plane + (c0 + r0 + i) * P + oh * c.Wo, wide_rows + i * rows + (oh - oh0) * c.Wq,
                               c.Wo * sizeof(float))
            for co in range(c0 + r0, c0 + r0 + r):
                epilogue_row(plane + co * P + oh0 * c.Wo, (oh1 - oh0) * c.Wo, c.bias[co] if c.bias != NULL else 0.0,
                             residual + co * P + oh0 * c.Wo if residual != NULL else NULL, c.ep)
            r0 += r
        oh0 = oh1


cdef inline Py_ssize_t widest_group(Py_ssize_t groups, Py_ssize_t Co) noexcept nogil:
    """Output channels of the widest of ``groups`` panel groups."""
    cdef Py_ssize_t c0, j0, ncols, widest = 0, g
    for g in range(groups):
        panel_group(g, groups, Co, &c0, &j0, &ncols)
        widest = max(widest, ncols)
    return widest


cdef inline float* line_aligned(float* p) noexcept nogil:
    """p moved up to the next cache line (NumPy aligns arrays to 16 bytes only)."""
    return p + (-(<Py_ssize_t>p) // sizeof(float)) % LINE_FLOATS


cdef class PanelConv1x1:
    """out = epilogue(conv1x1(x, W)) for one input shape, W given as ``pack_panels(wmat)``.

    Built once per input shape, called per run as ``conv(x, residual, out, scratch)``
    (arrays checked by dtype, contiguity and shape only, as conv_gemm.GemmConv).
    bias float32[Co] or None; residual float32 like out, or None; scratch
    float32[scratch_floats()].  Needs H * W >= MIN_PIXELS and Co >= MIN_OUT_CHANNELS."""
    cdef tuple x_shape, out_shape
    cdef object panels, bias
    cdef Epilogue ep
    cdef Py_ssize_t groups, chunk, per_thread
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
        cdef Py_ssize_t widest = widest_group(self.groups, Co)
        self.chunk = chunk_rows(H, W, Ci, widest)
        self.per_thread = thread_stride(m_block_rows(H, W, self.chunk) * W * widest)

    def scratch_floats(self) -> int:
        """Floats of the scratch array: one M block per thread, from the first cache line
        of the array (M is stored in whole vectors; NumPy aligns to 16 bytes only)."""
        return self.nthreads * self.per_thread + LINE_FLOATS

    def __call__(self, x, residual, out, scratch):
        check_conv_arrays(x, residual, out, self.x_shape, self.out_shape)
        check_floats(scratch, "scratch", self.nthreads * self.per_thread + LINE_FLOATS)
        cdef PanelCall call
        cdef Py_ssize_t Ci = self.x_shape[1], P = self.x_shape[2] * self.x_shape[3]
        call.panels, call.out = data_of(self.panels), data_of(out)
        call.bias = data_of(self.bias) if self.bias is not None else NULL
        call.residual = data_of(residual) if residual is not None else NULL
        call.ep = self.ep
        call.Co, call.groups = self.out_shape[1], self.groups
        call.ldw, call.kstep, call.K, call.ntaps, call.taps, call.tap_lens = 1, P, Ci, 1, NULL, NULL  # A = X^T
        call.Ho, call.Wo, call.Wq, call.chunk = self.x_shape[2], self.x_shape[3], self.x_shape[3], self.chunk
        cdef const float* x0 = data_of(x)
        cdef float* m = line_aligned(data_of(scratch))
        cdef Py_ssize_t ntasks = self.x_shape[0] * self.groups, task, per_thread = self.per_thread
        if self.nthreads == 1:   # no OpenMP region to enter
            for task in range(ntasks):
                panel_task(&call, task // self.groups, task % self.groups, x0 + task // self.groups * Ci * P, m,
                           NULL)
        else:
            for task in prange(ntasks, nogil=True, num_threads=self.nthreads, schedule="static"):
                panel_task(&call, task // call.groups, task % call.groups, x0 + task // call.groups * Ci * P,
                           m + pyconv_omp_thread_id() * per_thread, NULL)


cdef multiversion_void split_channel(const float* src, float* dst, const PhaseGeom* g) noexcept nogil:
    """phase_split (phase_planes.pxd) in this module's ISA clones."""
    phase_split(src, dst, g)


cdef multiversion_void channels_innermost(const float* split, const PhaseGeom* g, float* nhwc,
                                          Py_ssize_t phase_stride, Py_ssize_t Ci, Py_ssize_t c0) noexcept nogil:
    """nhwc[q * phase_stride + p * Ci + c] = split[c * g.channel + q * g.plane + p] for the
    used phase planes q and channels c0 .. c0 + 16 (channel_rows.pxd's 16x16 transposes)."""
    cdef Py_ssize_t q
    for q in range(g.sh * g.sw):
        if phase_used(q // g.sw, g.sh, g.kh, g.dh) and phase_used(q % g.sw, g.sw, g.kw, g.dw):
            scatter_channel_rows(split + c0 * g.channel + q * g.plane, g.channel, nhwc + q * phase_stride + c0, Ci,
                                 g.plane, min(16, Ci - c0))


cdef class PanelConv:
    """out = epilogue(conv2d(x, W)) for one input shape, groups 1, any kernel, stride,
    padding (top, left, bottom, right) and dilation, W given as
    ``pack_panels(weight, tap_order(kernel, stride, dilation))``: an implicit GEMM over the
    input's phase planes made channels-innermost (see the top of this module), reading
    taps one pixel apart in a plane as one run.

    Built once per input shape, called per run as ``conv(x, residual, out, scratch)``
    (arrays checked by dtype, contiguity and shape only); bias float32[Co] or None;
    residual float32 like out, or None; scratch float32[scratch_floats()] (any content).
    Needs Ho * Wq >= MIN_PIXELS (Wq: the wide grid's row, phase_planes.pxd) and
    Co >= MIN_OUT_CHANNELS."""
    cdef tuple x_shape, out_shape
    cdef object panels, bias, taps, tap_lens
    cdef Epilogue ep
    cdef PhaseGeom ph
    cdef Py_ssize_t groups, chunk, phase_stride, split_floats, nhwc_floats, m_floats, per_thread
    cdef int nthreads

    def __init__(self, tuple x_shape, panels, bias, tuple epilogue, tuple out_shape, kernel, stride, pads,
                 dilation, int nthreads):
        self.x_shape, self.out_shape = tuple(int(d) for d in x_shape), tuple(int(d) for d in out_shape)
        if len(self.x_shape) != 4 or len(self.out_shape) != 4 or self.x_shape[0] != self.out_shape[0]:
            raise ValueError(f"x {x_shape} and out {out_shape} must be NCHW shapes of one batch")
        N, Ci, H, W = self.x_shape
        Co, Ho, Wo = self.out_shape[1:]
        kh, kw = kernel
        self.ph = phase_geometry(H, W, Ho, Wo, kh, kw, stride, pads, dilation)
        if Ho * self.ph.Wq < MIN_PIXELS or Co < MIN_OUT_CHANNELS or nthreads < 1:
            raise ValueError(f"PanelConv needs >= {MIN_PIXELS} wide-grid pixels, >= {MIN_OUT_CHANNELS} output "
                             f"channels and nthreads >= 1, got x {x_shape}, out {out_shape}, nthreads={nthreads}")
        check_array(panels, "panels", ((Co + BLOCK_COLS - 1) // BLOCK_COLS, kh * kw * Ci, BLOCK_COLS))
        if bias is not None:
            check_array(bias, "bias", (Co,))
        self.panels, self.bias = panels, bias
        self.ep = epilogue_from_spec(epilogue)
        # each phase plane channels-innermost, with a tail of Wq pixels for the overhang
        # of the wide grid's dropped columns (phase_planes.pxd)
        self.phase_stride = (self.ph.plane + self.ph.Wq) * Ci
        cdef PhaseGeom* g = &self.ph
        # one offset per run of taps (tap_runs): tap_offset counts floats of channel-major
        # planes; its phase (the quotient) and pixel (the remainder; always inside the
        # plane) move to this layout
        runs = tap_runs((kh, kw), (g.sh, g.sw), (g.dh, g.dw))
        offsets = [tap_offset(g, ki, kj) for ki, kj, _ in runs]
        self.taps = np.array([off // g.plane * self.phase_stride + off % g.plane * Ci for off in offsets],
                             dtype=np.intp)
        self.tap_lens = np.array([n * Ci for _, _, n in runs], dtype=np.intp)
        self.split_floats = thread_stride(Ci * g.channel + g.Wq)
        self.nhwc_floats = thread_stride(g.sh * g.sw * self.phase_stride)
        self.groups = max(1, min(nthreads, Co // BLOCK_COLS))
        self.nthreads = max(1, min(nthreads, self.groups))
        cdef Py_ssize_t widest = widest_group(self.groups, Co)
        self.chunk = chunk_rows(Ho, g.Wq, kh * kw * Ci, widest)
        cdef Py_ssize_t block_pixels = m_block_rows(Ho, g.Wq, self.chunk) * g.Wq
        self.m_floats = block_pixels * widest
        self.per_thread = thread_stride(self.m_floats + 16 * block_pixels)

    def scratch_floats(self) -> int:
        """Floats of the scratch array: the phase planes, both layouts, then an M block (some
        output rows' worth, chunk_rows) and 16 wide rows of it per thread, from the first
        cache line of the array."""
        return self.split_floats + self.nhwc_floats + self.nthreads * self.per_thread + LINE_FLOATS

    def __call__(self, x, residual, out, scratch):
        check_conv_arrays(x, residual, out, self.x_shape, self.out_shape)
        check_floats(scratch, "scratch", self.scratch_floats())
        cdef PanelCall call
        cdef Py_ssize_t N = self.x_shape[0], Ci = self.x_shape[1], HW = self.x_shape[2] * self.x_shape[3]
        call.panels, call.out = data_of(self.panels), data_of(out)
        call.bias = data_of(self.bias) if self.bias is not None else NULL
        call.residual = data_of(residual) if residual is not None else NULL
        call.ep = self.ep
        call.Co, call.groups = self.out_shape[1], self.groups
        call.ldw, call.kstep, call.K = Ci, 1, self.ph.kh * self.ph.kw * Ci
        call.ntaps, call.taps = len(self.taps), <const Py_ssize_t*>cnp.PyArray_DATA(self.taps)
        call.tap_lens = <const Py_ssize_t*>cnp.PyArray_DATA(self.tap_lens)
        call.Ho, call.Wo, call.Wq, call.chunk = self.out_shape[2], self.out_shape[3], self.ph.Wq, self.chunk
        cdef const float* x0 = data_of(x)
        cdef float* split = line_aligned(data_of(scratch))
        cdef float* nhwc = split + self.split_floats
        cdef float* work = nhwc + self.nhwc_floats
        cdef Py_ssize_t n, c, q, group, per_thread = self.per_thread, m_floats = self.m_floats
        cdef Py_ssize_t phase_stride = self.phase_stride
        cdef PhaseGeom* g = &self.ph
        cdef int nthreads = self.nthreads
        for q in range(g.sh * g.sw):   # the tails (read only for dropped columns; no garbage NaN in them)
            memset(nhwc + q * self.phase_stride + g.plane * Ci, 0, g.Wq * Ci * sizeof(float))
        for n in range(N):
            with nogil:
                if nthreads == 1:   # no OpenMP region to enter
                    for c in range(Ci):
                        split_channel(x0 + (n * Ci + c) * HW, split + c * g.channel, g)
                else:
                    for c in prange(Ci, num_threads=nthreads, schedule="static"):
                        split_channel(x0 + (n * Ci + c) * HW, split + c * g.channel, g)
                if nthreads == 1:
                    for c in range(0, Ci, 16):
                        channels_innermost(split, g, nhwc, phase_stride, Ci, c)
                else:
                    for c in prange(0, Ci, 16, num_threads=nthreads, schedule="static"):
                        channels_innermost(split, g, nhwc, phase_stride, Ci, c)
                if nthreads == 1:
                    for group in range(self.groups):
                        panel_task(&call, n, group, nhwc, work, work + m_floats)
                else:
                    for group in prange(self.groups, num_threads=nthreads, schedule="static"):
                        panel_task(&call, n, group, nhwc, work + pyconv_omp_thread_id() * per_thread,
                                   work + pyconv_omp_thread_id() * per_thread + m_floats)
