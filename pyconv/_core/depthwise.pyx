# Depthwise convolution (groups == input channels, channel multiplier >= 1),
# any kernel size, stride, padding (asymmetric) and dilation.
#
# Three paths, each one multi-versioned call per block of channels (so small
# planes do not pay a call's set-up per channel).  Helpers are force-inlined so
# every loop gets the caller's ISA: a helper left out of line is compiled for
# SSE2 only and, called from AVX-512 code, also pays the SSE/AVX transition.
#
# Channel lanes (depthwise_tasks_lanes; 3x3, multiplier 1, at most LANES_MAX_OUT
# outputs per plane): 16 consecutive planes (a block may span two images) are
# transposed to pixel-major [row][col][16], so a vector holds one pixel of 16
# channels and an output pixel is nine vector FMAs, whatever the plane's width or
# stride.  The transposes are 16x16 in-register blocks (channel_rows.pxd).  When
# N * C is not a multiple of 16 the last planes take one of the paths below.
#
# Row ring (depthwise_channel; outputs at least PLANE_MAX_WO wide, any kernel):
#  - BAND output rows at a time: the input rows they need go into a small ring
#    of padded rows in L1 (each input row once, rows PREFETCH_ROWS ahead
#    prefetched; rows in the vertical padding are zeroed slots), then the rows
#    are computed with the filter in registers.  A padded row is stored as its
#    sw column phases, phase q holding padded columns j*sw + q, so every tap
#    (ki, kj) reads one contiguous run: for stride 2 a row is deinterleaved into
#    its even and odd columns once (one vectorized loop), not gathered per tap.
#    The ring's zero padding columns are written once per call: the columns a
#    row fills are the same for every row of one geometry.
#  - each output row is computed straight into the output with the bias and a
#    clip activation (relu, relu6, none) fused into the tap loop.  Other
#    activations and a residual run as the shared epilogue on the row.
#  - runs are rounded up to whole vectors (VEC floats): a row's surplus lands in
#    the next rows of the same plane, which are written after it; a run that
#    would leave the plane goes through a scratch row and is copied out.
#
# Phase planes (depthwise_channel_plane; narrower 3x3 outputs, 7-28 wide, when
# the lanes do not apply): per-row work does not pay on short rows, so the
# channel is split into its phase planes (phase_planes.pxd) by the ring's row
# splitter, each output plane is one run over the wide Ho x Wq grid with the
# clip fused, and its rows are copied out as whole vectors.
from cython.parallel cimport prange
from libc.math cimport INFINITY
from libc.string cimport memset

from pyconv._core.epilogue cimport Epilogue, clip, clip_bounds, epilogue_from_spec, epilogue_row
from pyconv._core.ndarrays cimport check_array, check_conv_arrays, check_floats, data_of
from pyconv._core.parallel cimport pyconv_omp_thread_id, thread_stride
from pyconv._core.phase_planes cimport PhaseGeom, phase_geometry, phase_used, tap_offset
from pyconv._core.channel_rows cimport gather_channel_rows, scatter_channel_rows
from pyconv._core.simd cimport inlined_void, multiversion_void, prefetch, prefetch_write, wide_vectors

cimport numpy as cnp

cnp.import_array()   # the NumPy C API behind ndarrays.pxd


cdef extern from *:
    # restrict-qualified pointers: the row loops' outputs never alias their inputs,
    # so the compiler vectorizes them without run-time overlap checks
    ctypedef float* float_out "float * __restrict__"
    ctypedef const float* float_in "const float * __restrict__"


cdef enum:
    LANES = 16        # channels per vector in the channel-lane path
    VEC = 16          # floats a row's run is rounded up to (one AVX-512 vector, two AVX2)
    PREFETCH_ROWS = 8  # input rows the ring prefetches ahead
    BAND = 8          # output rows per pass of the row ring: their input rows, then the rows
    ACC_CHUNK = 2048  # floats of the wide grid accumulated at a time by the general-kernel loop
    TASK_BLOCK = 8    # input channels per task of the threads' split
    # the lane path runs on outputs of at most LANES_MAX_OUT pixels from inputs of at most
    # LANES_MAX_IN (transposing a plane costs about as much as its nine taps per output:
    # it pays for stride 2 and small planes; measured, docs/kernels.md)
    LANES_MAX_OUT = 256
    LANES_MAX_IN = 1024
    PLANE_MAX_WO = 32  # narrower 3x3 outputs run on whole phase planes (measured: docs/kernels.md)


cdef struct RowGeom:
    int H, W, Ho, Wo, kh, kw, sh, sw, pt, pl, dh, dw, mult
    int ring          # padded rows one output row spans: (kh - 1) * dh + 1
    int ring_mask     # ring slots - 1: a power of two >= the padded rows of BAND output rows,
                      # so padded row pr's slot is pr & ring_mask (a division per row costs
                      # as much as a 7-wide row's taps)
    int lo0, hi0, lo1, hi1  # columns [lo, hi) of row phases 0 and 1 that hold input (phase_span)
    # per-call constants of the 3x3 loops (divisions per channel cost more than a 7x7 plane's taps):
    Py_ssize_t ring_col[3]   # tap_shift(kj)
    Py_ssize_t plane_row[3]  # phase_planes.tap_offset(ki, 0) and (0, kj), when depthwise_channel_plane runs
    Py_ssize_t plane_col[3]
    float zero  # 0.0 the compiler cannot see: a loop storing it is not turned into a memset call
    int filled        # columns of a row phase that hold input or padding: Wo + ((kw-1)*dw) // sw
    int run           # Wo rounded up to VEC
    Py_ssize_t phase  # floats per row phase (>= run + largest tap shift)
    Py_ssize_t slot   # floats per padded row: sw phases


cdef inline inlined_void phase_span(const RowGeom* g, int q, int* lo, int* hi) noexcept nogil:
    """Columns [lo, hi) of row phase q that hold input pixels (the rest stays zero)."""
    lo[0] = (g.pl - q + g.sw - 1) // g.sw if g.pl > q else 0
    hi[0] = (g.W - 1 + g.pl - q) // g.sw + 1 if g.W - 1 + g.pl - q >= 0 else 0
    if hi[0] > g.filled:
        hi[0] = g.filled
    if lo[0] > hi[0]:
        lo[0] = hi[0]


cdef inline Py_ssize_t tap_shift(const RowGeom* g, int kj) noexcept nogil:
    """Where tap column kj's run starts within a padded row (its phase, then its shift)."""
    return ((kj * g.dw) % g.sw) * g.phase + (kj * g.dw) // g.sw


cdef RowGeom row_geometry(int H, int W, int Ho, int Wo, int kh, int kw, stride, pads, dilation, int mult):
    """Ring geometry of an H x W input for an Ho x Wo output (call with the GIL)."""
    cdef RowGeom g
    g.H = H; g.W = W; g.Ho = Ho; g.Wo = Wo; g.kh = kh; g.kw = kw; g.mult = mult
    g.sh, g.sw = stride
    g.pt, g.pl = pads[0], pads[1]
    g.dh, g.dw = dilation
    g.ring = (kh - 1) * g.dh + 1
    g.filled = Wo + ((kw - 1) * g.dw) // g.sw
    g.run = (Wo + VEC - 1) // VEC * VEC
    g.phase = (g.run + ((kw - 1) * g.dw) // g.sw + VEC - 1) // VEC * VEC
    g.slot = g.sw * g.phase
    g.ring_mask = 1
    while g.ring_mask < (BAND - 1) * g.sh + g.ring:
        g.ring_mask *= 2
    g.ring_mask -= 1
    phase_span(&g, 0, &g.lo0, &g.hi0)
    phase_span(&g, 1, &g.lo1, &g.hi1)
    cdef PhaseGeom pg = phase_geometry(H, W, Ho, Wo, kh, kw, stride, pads, dilation)
    cdef int k
    for k in range(3):
        g.ring_col[k] = tap_shift(&g, k)
        g.plane_row[k] = tap_offset(&pg, k, 0) if k < kh else 0
        g.plane_col[k] = tap_offset(&pg, 0, k) if k < kw else 0
    g.zero = 0.0
    return g


cdef inline Py_ssize_t ring_floats(const RowGeom* g) noexcept nogil:
    """Scratch floats of the ring path: the ring, one output row."""
    return (g.ring_mask + 1) * g.slot + g.run


cdef inline const float* ring_row(const RowGeom* g, const float* ring, int oh, int ki) noexcept nogil:
    """Kernel row ki's padded input row for output row oh: its ring slot."""
    return ring + ((oh * g.sh + ki * g.dh) & g.ring_mask) * g.slot


cdef inline inlined_void copy_phase(float_out dst, float_in s, int sw, int lo, int hi) noexcept nogil:
    """dst[j] = s[j * sw] for j in [lo, hi)."""
    cdef Py_ssize_t j  # (an int index hides the access pattern from the vectorizer)
    if sw == 1:  # a unit-stride loop of its own: vectorized as plain loads
        for j in range(lo, hi):
            # + 0 keeps GCC from making this short copy a memcpy call (a call per
            # row cost 10 % at 56 wide); it only turns an input -0.0 into +0.0
            dst[j] = s[j] + 0.0
    else:
        for j in range(lo, hi):
            dst[j] = s[j * sw]


cdef inline inlined_void deinterleave(float_out even, float_out odd, float_in s, int lo, int hi) noexcept nogil:
    """even[j] = s[2j], odd[j] = s[2j + 1] for j in [lo, hi): one loop, which compilers
    vectorize (a lone stride-2 gather they do not)."""
    cdef Py_ssize_t j
    for j in range(lo, hi):
        even[j] = s[2 * j]
        odd[j] = s[2 * j + 1]


cdef inline inlined_void fill_row(const RowGeom* g, const float* src, float* dst) noexcept nogil:
    """Split input row src into the column phases of padded row dst (input pixels only)."""
    cdef int q, lo, hi, a, z
    cdef int lo0 = g.lo0, hi0 = g.hi0, lo1 = g.lo1, hi1 = g.hi1
    cdef const float* s = src - g.pl  # s[c] = padded column c; read only where it is an input pixel
    cdef float* d1 = dst + g.phase
    if g.sw == 2 and phase_used(0, 2, g.kw, g.dw) and phase_used(1, 2, g.kw, g.dw):
        # both phases in one loop over the columns where both hold input, then
        # each phase's edge columns (at most one at either end)
        a = lo0 if lo0 > lo1 else lo1
        z = hi0 if hi0 < hi1 else hi1
        if z < a:
            z = a
        deinterleave(dst, d1, s, a, z)
        copy_phase(dst, s, 2, lo0, a if a < hi0 else hi0)
        copy_phase(dst, s, 2, z if z > lo0 else lo0, hi0)
        copy_phase(d1, s + 1, 2, lo1, a if a < hi1 else hi1)
        copy_phase(d1, s + 1, 2, z if z > lo1 else lo1, hi1)
        return
    if g.sw == 1:
        copy_phase(dst, s, 1, lo0, hi0)
        return
    for q in range(g.sw):
        if phase_used(q, g.sw, g.kw, g.dw):
            phase_span(g, q, &lo, &hi)
            copy_phase(dst + q * g.phase, s + q, g.sw, lo, hi)


cdef inline inlined_void row_3x3(float_out o, float_in a, float_in b, float_in c, Py_ssize_t s0, Py_ssize_t s1,
                         Py_ssize_t s2, const float* w, float bias, float lo, float hi, int n) noexcept nogil:
    """o[p] = clip(bias + 3x3 taps, lo, hi) for p < n: kernel rows a, b, c, tap column shifts s0..s2."""
    cdef float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4], w5 = w[5], w6 = w[6], w7 = w[7], w8 = w[8]
    cdef float v
    cdef int p
    for p in range(n):
        v = (bias + w0 * a[p + s0] + w1 * a[p + s1] + w2 * a[p + s2]
             + w3 * b[p + s0] + w4 * b[p + s1] + w5 * b[p + s2]
             + w6 * c[p + s0] + w7 * c[p + s1] + w8 * c[p + s2])
        o[p] = clip(v, lo, hi)


cdef inline inlined_void rows_3x3(const RowGeom* g, float* out, const float* ring, int oh0, int n,
                                  const float* w, float bias, float lo, float hi, float* row_out) noexcept nogil:
    """Output rows oh0..oh0+n-1 of one plane (3x3 filter w) from the ring, in one loop
    with the filter in registers.  A row's run goes straight to the output when it ends
    inside the plane (its surplus is overwritten by the rows after it), else via row_out."""
    cdef float wk[9]
    cdef int oh, k, j
    cdef Py_ssize_t plane = <Py_ssize_t>g.Ho * g.Wo, o_off
    cdef const float* a
    for k in range(9):  # (a local copy: stores to the output cannot change it, so it is hoisted)
        wk[k] = w[k]
    for oh in range(oh0, oh0 + n):
        a = ring + ((oh * g.sh) & g.ring_mask) * g.slot
        o_off = <Py_ssize_t>oh * g.Wo
        for j in range(0, g.Wo, 16):
            prefetch_write(out + o_off + PREFETCH_ROWS * g.Wo + j)
        if o_off + g.run <= plane:
            row_3x3(out + o_off, a, ring + ((oh * g.sh + g.dh) & g.ring_mask) * g.slot,
                    ring + ((oh * g.sh + 2 * g.dh) & g.ring_mask) * g.slot,
                    g.ring_col[0], g.ring_col[1], g.ring_col[2], wk, bias, lo, hi, g.run)
        else:
            row_3x3(row_out, a, ring + ((oh * g.sh + g.dh) & g.ring_mask) * g.slot,
                    ring + ((oh * g.sh + 2 * g.dh) & g.ring_mask) * g.slot,
                    g.ring_col[0], g.ring_col[1], g.ring_col[2], wk, bias, lo, hi, g.run)
            for j in range(g.Wo):
                out[o_off + j] = row_out[j]


cdef inline inlined_void depthwise_channel(const RowGeom* g, const float* src, const float* w, const float* bias,
                                           float* out, const float* residual, Epilogue ep,
                                           float* ring) noexcept nogil:
    """The g.mult output planes of one input channel (plane src) into out (and residual),
    BAND output rows at a time: their input rows into the ring, then the rows.

    w: their mult x kh x kw filters; bias: their mult biases or NULL; ring:
    this thread's scratch (ring_floats)."""
    cdef Py_ssize_t plane = <Py_ssize_t>g.Ho * g.Wo, o_off
    cdef int oh, oh0, n, pr, next_row = 0, end, m, j
    cdef float lo, hi
    cdef bint fused = clip_bounds(ep, residual != NULL, &lo, &hi)
    cdef float b
    cdef float* row_out = ring + (g.ring_mask + 1) * g.slot  # a plane's last rows, before their copy out
    cdef float* slot
    oh0 = 0
    while oh0 < g.Ho:
        n = BAND if g.Ho - oh0 > BAND else g.Ho - oh0
        end = (oh0 + n - 1) * g.sh + g.ring  # after the last padded row these outputs read
        for pr in range(next_row if next_row > oh0 * g.sh else oh0 * g.sh, end):
            slot = ring + (pr & g.ring_mask) * g.slot
            if 0 <= pr - g.pt < g.H:
                fill_row(g, src + <Py_ssize_t>(pr - g.pt) * g.W, slot)
                # the input row PREFETCH_ROWS ahead, into the next channel's plane at the end
                # (a prefetch never faults): in a network the input is not in L2 and the
                # hardware prefetcher alone left the loop waiting on it
                for j in range(0, g.W, 16):
                    prefetch(src + <Py_ssize_t>(pr - g.pt + PREFETCH_ROWS) * g.W + j)
            else:  # vertical padding (the slot may hold an earlier row)
                memset(slot, 0, g.slot * sizeof(float))
        next_row = end
        for m in range(g.mult):
            b = bias[m] if bias != NULL else 0.0
            rows_3x3(g, out + m * plane, ring, oh0, n, w + 9 * m, b, lo, hi, row_out)
            if not fused:
                for oh in range(oh0, oh0 + n):
                    o_off = m * plane + <Py_ssize_t>oh * g.Wo
                    epilogue_row(out + o_off, g.Wo, 0.0, residual + o_off if residual != NULL else NULL, ep)
        oh0 += n


cdef struct LaneGeom:
    int rows                  # rows of the transposed input: pt zero rows, the input, zero rows
    Py_ssize_t tap[9]         # floats from a window's origin to tap (ki, kj), inside the input
    Py_ssize_t inputs         # floats of the transposed input [rows][W][LANES]
    Py_ssize_t outputs        # floats of the transposed output [Ho][Wo][LANES]


cdef LaneGeom lane_geometry(int H, int W, int Ho, int Wo, int pt, stride, dilation):
    """Lane-path geometry (3x3 filters); H = W = 0: the largest input these outputs allow."""
    cdef LaneGeom lg
    cdef int sh, sw, dh, dw, ki, kj, Hp
    sh, sw = stride
    dh, dw = dilation
    Hp = (Ho - 1) * sh + 2 * dh + 1  # padded rows the outputs read
    if H == 0:  # an input reaches at most stride - 1 rows (columns) past what the outputs read
        lg.rows, W = Hp + sh, (Wo - 1) * sw + 2 * dw + sw
    else:
        lg.rows = Hp if Hp > pt + H else pt + H
    for ki in range(3):
        for kj in range(3):
            lg.tap[3 * ki + kj] = (<Py_ssize_t>ki * dh * W + kj * dw) * LANES
    lg.inputs = <Py_ssize_t>lg.rows * W * LANES
    lg.outputs = <Py_ssize_t>Ho * Wo * LANES
    return lg


cdef struct DepthwiseCall:
    const RowGeom* g
    const LaneGeom* lg   # not NULL: the channel-lane path
    const PhaseGeom* pg  # NULL: the row ring
    const float* x
    const float* w
    float* out
    const float* bias
    const float* residual
    Epilogue ep
    int C


cdef inline inlined_void copy_run(float_out dst, float_in src, int n) noexcept nogil:
    """Copy n floats, a multiple of VEC: fixed-size blocks, which compile to a vector load
    and store each (a variable-size copy becomes a memcpy call, whose cost per row of
    7-28 floats is most of a small plane's)."""
    cdef int j, v
    for v in range(n // VEC):
        for j in range(VEC):
            dst[v * VEC + j] = src[v * VEC + j]


cdef multiversion_void plane_general(float* acc, const float* planes, const PhaseGeom* pg, const float* w,
                                     float bias, float lo, float hi, Py_ssize_t n) noexcept nogil:
    """row_3x3 over the wide grid for any kernel: chunks that stay in L1, four taps per
    pass over a chunk (each load and store of acc then carries four FMAs).  A call of
    its own: inlined into depthwise_channel_plane, its weights were spilled to memory."""
    cdef Py_ssize_t p, p0 = 0, p1
    cdef int t, ntaps = pg.kh * pg.kw
    cdef const float* t0
    cdef const float* t1
    cdef const float* t2
    cdef const float* t3
    cdef float w0, w1, w2
    while p0 < n:
        p1 = n if n - p0 < ACC_CHUNK else p0 + ACC_CHUNK
        for p in range(p0, p1):
            acc[p] = bias
        for t in range(0, ntaps - 3, 4):
            t0 = planes + tap_offset(pg, t // pg.kw, t % pg.kw)
            t1 = planes + tap_offset(pg, (t + 1) // pg.kw, (t + 1) % pg.kw)
            t2 = planes + tap_offset(pg, (t + 2) // pg.kw, (t + 2) % pg.kw)
            t3 = planes + tap_offset(pg, (t + 3) // pg.kw, (t + 3) % pg.kw)
            for p in range(p0, p1):
                acc[p] += w[t] * t0[p] + w[t + 1] * t1[p] + w[t + 2] * t2[p] + w[t + 3] * t3[p]
        # the last ntaps % 4 taps in the clip's pass, one loop per count (a loop per tap
        # was fused by GCC into one scalar loop)
        t = ntaps - ntaps % 4
        t0 = planes + tap_offset(pg, t // pg.kw, t % pg.kw) if t < ntaps else planes
        t1 = planes + tap_offset(pg, (t + 1) // pg.kw, (t + 1) % pg.kw) if t + 1 < ntaps else t0
        t2 = planes + tap_offset(pg, (t + 2) // pg.kw, (t + 2) % pg.kw) if t + 2 < ntaps else t0
        w0 = w[t] if t < ntaps else 0.0
        w1 = w[t + 1] if t + 1 < ntaps else 0.0
        w2 = w[t + 2] if t + 2 < ntaps else 0.0
        if ntaps % 4 == 3:
            for p in range(p0, p1):
                acc[p] = clip(acc[p] + w0 * t0[p] + w1 * t1[p] + w2 * t2[p], lo, hi)
        elif ntaps % 4 == 2:
            for p in range(p0, p1):
                acc[p] = clip(acc[p] + w0 * t0[p] + w1 * t1[p], lo, hi)
        elif ntaps % 4 == 1:
            for p in range(p0, p1):
                acc[p] = clip(acc[p] + w0 * t0[p], lo, hi)
        elif lo > -INFINITY or hi < INFINITY:
            for p in range(p0, p1):
                acc[p] = clip(acc[p], lo, hi)
        p0 = p1


cdef inline inlined_void depthwise_channel_plane(const RowGeom* g, const RowGeom* split, const PhaseGeom* pg,
                                                const float* src, const float* w, const float* bias, float* out,
                                                const float* residual, Epilogue ep, float* planes) noexcept nogil:
    """depthwise_channel for 3x3 filters on narrow planes (Wo < PLANE_MAX_WO), whose rows are
    too short for a row at a time: the channel's phase planes (phase_planes.pxd), then
    one run over the whole wide Ho x Wq output grid per output plane (with the clip),
    then its rows copied out (and the epilogue run on them).

    Rows are copied in and out as whole vectors where the surplus stays inside the
    source and destination planes: it lands in later rows, which overwrite it, and
    the padding columns it clobbers in the phase planes are zeroed again after.

    planes: this thread's scratch, zeroed for this geometry (plane_floats)."""
    cdef Py_ssize_t plane = <Py_ssize_t>g.Ho * g.Wo, wide = <Py_ssize_t>g.Ho * pg.Wq, o_off, a_off
    cdef Py_ssize_t in_end = <Py_ssize_t>g.H * g.W  # input floats of the channel
    cdef int r, r_end, qh, ih, m, oh, j, n_in = (g.hi0 - g.lo0 + VEC - 1) // VEC * VEC
    cdef float lo, hi
    cdef bint fused = clip_bounds(ep, residual != NULL, &lo, &hi)
    cdef bint fast_in = g.sw == 1
    cdef float* acc = planes + pg.channel + pg.Wq + VEC
    cdef float* row
    for qh in range(g.sh):
        if phase_used(qh, g.sh, g.kh, g.dh):
            # after this phase's last input row in the plane (a row past the plane's Hq
            # rows would be the next phase's first: a surplus there clobbered its padding)
            r_end = (g.H - 1 + g.pt - qh) // g.sh + 1
            if r_end > pg.Hq:
                r_end = pg.Hq
            for r in range(pg.Hq):
                ih = r * g.sh + qh - g.pt
                row = planes + qh * g.sw * pg.plane + r * pg.Wq
                if not 0 <= ih < g.H:
                    continue
                # whole vectors while the surplus stays in this channel's input and
                # in rows that are copied later (their padding is zeroed below)
                if (fast_in and <Py_ssize_t>ih * g.W + g.lo0 - g.pl + n_in <= in_end
                        and (r_end - r) * pg.Wq >= g.lo0 + n_in):
                    copy_run(row + g.lo0, src + <Py_ssize_t>ih * g.W + g.lo0 - g.pl, n_in)
                else:
                    fill_row(split, src + <Py_ssize_t>ih * g.W, row)
    if fast_in:  # the padding the whole-vector copies ran over
        for qh in range(g.sh):
            if phase_used(qh, g.sh, g.kh, g.dh):
                for r in range(pg.Hq):
                    ih = r * g.sh + qh - g.pt
                    if 0 <= ih < g.H:
                        row = planes + qh * pg.plane + r * pg.Wq
                        for j in range(g.lo0):
                            row[j] = g.zero
                        for j in range(g.hi0, pg.Wq):
                            row[j] = g.zero
    for m in range(g.mult):
        if g.kh == 3 and g.kw == 3:
            row_3x3(acc, planes + g.plane_row[0], planes + g.plane_row[1], planes + g.plane_row[2],
                    g.plane_col[0], g.plane_col[1], g.plane_col[2], w + 9 * m, bias[m] if bias != NULL else 0.0,
                    lo, hi, (wide + VEC - 1) // VEC * VEC)
        else:
            plane_general(acc, planes, pg, w + m * g.kh * g.kw, bias[m] if bias != NULL else 0.0, lo, hi, wide)
        for oh in range(g.Ho):
            o_off = m * plane + <Py_ssize_t>oh * g.Wo
            a_off = <Py_ssize_t>oh * pg.Wq
            if <Py_ssize_t>oh * g.Wo + g.run <= plane:
                copy_run(out + o_off, acc + a_off, g.run)
            else:
                for j in range(g.Wo):
                    out[o_off + j] = acc[a_off + j]
            if not fused:
                epilogue_row(out + o_off, g.Wo, 0.0, residual + o_off if residual != NULL else NULL, ep)


cdef inline Py_ssize_t plane_floats(const PhaseGeom* pg, int Ho) noexcept nogil:
    """Scratch floats of depthwise_channel_plane: phase planes, tail, wide output grid."""
    return pg.channel + pg.Wq + VEC + (<Py_ssize_t>Ho * pg.Wq + VEC - 1) // VEC * VEC


cdef multiversion_void depthwise_tasks_ring(const DepthwiseCall* c, int t0, int t1, float* ring) noexcept nogil:
    """Input channels t0..t1-1 (task t: channel t % C of image t // C), each with its mult
    output planes, by the row ring.  ring: this thread's scratch, zeroed for this geometry."""
    cdef const RowGeom* g = c.g
    cdef int task, co
    cdef Py_ssize_t o_off
    for task in range(t0, t1):
        co = (task % c.C) * g.mult
        o_off = (<Py_ssize_t>task * g.mult) * g.Ho * g.Wo
        depthwise_channel(g, c.x + <Py_ssize_t>task * g.H * g.W, c.w + <Py_ssize_t>co * g.kh * g.kw,
                          c.bias + co if c.bias != NULL else NULL, c.out + o_off,
                          c.residual + o_off if c.residual != NULL else NULL, c.ep, ring)


cdef multiversion_void depthwise_tasks_plane(const DepthwiseCall* c, int t0, int t1, float* planes) noexcept nogil:
    """depthwise_tasks_ring by phase planes (3x3, narrow outputs)."""
    cdef const RowGeom* g = c.g
    cdef RowGeom split = g[0]  # fill_row's geometry for phase planes: row phases a plane apart
    cdef int task, co
    cdef Py_ssize_t o_off
    split.phase = c.pg.plane
    for task in range(t0, t1):
        co = (task % c.C) * g.mult
        o_off = (<Py_ssize_t>task * g.mult) * g.Ho * g.Wo
        depthwise_channel_plane(g, &split, c.pg, c.x + <Py_ssize_t>task * g.H * g.W, c.w + <Py_ssize_t>co * g.kh * g.kw,
                                c.bias + co if c.bias != NULL else NULL, c.out + o_off,
                                c.residual + o_off if c.residual != NULL else NULL, c.ep, planes)


# ----------------------------------------------------------------------------- channel lanes
# 3x3 filters, multiplier 1: LANES consecutive planes at a time (channel
# (ch0 + ci) % C of the batch), transposed to pixel-major [pixel][LANES] so that a vector holds one pixel of
# LANES channels.  Then every output pixel is nine vector FMAs with the filters in
# registers, with no rows, borders or remainders at all: the padding is a zero
# frame of the transposed plane.  The transposes are channel_rows.pxd's 16x16
# in-register blocks (5-10 % faster than the plain loops they replaced, which the
# compiler turned into permutes of its own).

cdef inline Py_ssize_t lane_floats(const LaneGeom* lg) noexcept nogil:
    """Scratch floats of the lane path: compact and padded inputs, outputs, filters and bias."""
    return lg.inputs + lg.outputs + 19 * LANES


cdef inline inlined_void lanes_part(float_out o, Py_ssize_t o_step, float_in win, Py_ssize_t win_step,
                                    const Py_ssize_t* tap, int n, float_in w, float_in b, float lo, float hi,
                                    const int width) noexcept nogil:
    """lanes_run for ``width`` of the lanes (a constant in each call: one vector's worth)."""
    cdef int i, c
    cdef float v
    cdef Py_ssize_t t0 = tap[0], t1 = tap[1], t2 = tap[2], t3 = tap[3], t4 = tap[4]
    cdef Py_ssize_t t5 = tap[5], t6 = tap[6], t7 = tap[7], t8 = tap[8]
    for i in range(n):
        for c in range(width):
            v = (b[c] + w[c] * win[t0 + c] + w[LANES + c] * win[t1 + c] + w[2 * LANES + c] * win[t2 + c]
                 + w[3 * LANES + c] * win[t3 + c] + w[4 * LANES + c] * win[t4 + c]
                 + w[5 * LANES + c] * win[t5 + c] + w[6 * LANES + c] * win[t6 + c]
                 + w[7 * LANES + c] * win[t7 + c] + w[8 * LANES + c] * win[t8 + c])
            o[c] = clip(v, lo, hi)
        o += o_step
        win += win_step


cdef inline inlined_void lanes_run(float_out o, Py_ssize_t o_step, float_in win, Py_ssize_t win_step,
                                   const Py_ssize_t* tap, int n, float_in w, float_in b, float lo,
                                   float hi) noexcept nogil:
    """n output pixels o + i * o_step, windows at win + i * win_step:
    o[c] = clip(b[c] + sum over taps k of w[k][c] * window[tap[k] + c], lo, hi).

    All LANES lanes at once with 512-bit vectors; else half the lanes at a time, whose
    nine filter vectors then stay in registers (AVX2, 1 thread: 384 @14 0.068 -> 0.064 ms,
    960 @7 0.057 -> 0.054)."""
    if wide_vectors():
        lanes_part(o, o_step, win, win_step, tap, n, w, b, lo, hi, LANES)
    else:
        lanes_part(o, o_step, win, win_step, tap, n, w, b, lo, hi, LANES // 2)
        lanes_part(o + LANES // 2, o_step, win + LANES // 2, win_step, tap, n, w + LANES // 2, b + LANES // 2,
                   lo, hi, LANES // 2)


cdef multiversion_void depthwise_tasks_lanes(const DepthwiseCall* c, const LaneGeom* lg, int b0, int b1,
                                             float* scratch) noexcept nogil:
    """Blocks b0..b1-1 of LANES input channels (block b: channels b * LANES.. over the batch).

    The transposed input has zero rows for the vertical padding (scratch is zeroed
    for this geometry; only input rows are written) but no padding columns, so one
    transpose covers the plane.  Columns whose windows leave the input run down the
    plane with the filter taps outside zeroed and their reads clamped inside."""
    cdef const RowGeom* g = c.g
    cdef Py_ssize_t plane_in = <Py_ssize_t>g.H * g.W, plane_out = <Py_ssize_t>g.Ho * g.Wo, off
    cdef Py_ssize_t row = <Py_ssize_t>g.W * LANES  # floats of a transposed input row
    cdef Py_ssize_t btap[9]
    cdef float* tin = scratch
    cdef float* tout = tin + lg.inputs
    cdef float* wl = tout + lg.outputs  # [9][LANES] filters
    cdef float* wb = wl + 9 * LANES  # [9][LANES] filters of a border column
    cdef float* bl = wb + 9 * LANES  # [LANES] biases
    cdef int blk, ch0, oh, ow, ow_lo, ow_hi, iw, ki, kj, k, ci
    cdef float lo, hi
    cdef bint fused = clip_bounds(c.ep, c.residual != NULL, &lo, &hi)
    # columns whose windows lie inside the input: ow*sw - pl >= 0, ow*sw - pl + 2*dw < W
    ow_lo = (g.pl + g.sw - 1) // g.sw
    ow_hi = (g.W - 1 - 2 * g.dw + g.pl) // g.sw + 1 if g.W - 1 - 2 * g.dw + g.pl >= 0 else 0
    ow_hi = min(ow_hi, g.Wo)
    ow_lo = min(ow_lo, ow_hi)
    for blk in range(b0, b1):
        ch0 = blk * LANES  # first channel of the block, counted over the batch
        for ci in range(LANES):
            for k in range(9):
                wl[k * LANES + ci] = c.w[((ch0 + ci) % c.C) * 9 + k]
            bl[ci] = c.bias[(ch0 + ci) % c.C] if c.bias != NULL else 0.0
        scatter_channel_rows(c.x + ch0 * plane_in, plane_in, tin + g.pt * row, LANES, plane_in, LANES)
        if ow_hi > ow_lo:
            for oh in range(g.Ho):
                lanes_run(tout + (<Py_ssize_t>oh * g.Wo + ow_lo) * LANES, LANES,
                          tin + (<Py_ssize_t>oh * g.sh) * row + (ow_lo * g.sw - g.pl) * LANES, g.sw * LANES,
                          lg.tap, ow_hi - ow_lo, wl, bl, lo, hi)
        for ow in range(g.Wo):
            if ow == ow_lo and ow_hi > ow_lo:
                continue
            if ow_lo < ow < ow_hi:
                continue
            for kj in range(3):
                iw = ow * g.sw + kj * g.dw - g.pl
                for ki in range(3):
                    btap[3 * ki + kj] = <Py_ssize_t>ki * g.dh * row + min(max(iw, 0), g.W - 1) * LANES
                    for ci in range(LANES):
                        wb[(3 * ki + kj) * LANES + ci] = wl[(3 * ki + kj) * LANES + ci] if 0 <= iw < g.W else 0.0
            lanes_run(tout + ow * LANES, g.Wo * LANES, tin, g.sh * row, btap, g.Ho, wb, bl, lo, hi)
        off = <Py_ssize_t>ch0 * plane_out
        gather_channel_rows(tout, LANES, c.out + off, plane_out, plane_out, LANES)
        if not fused:
            for ci in range(LANES):
                epilogue_row(c.out + off + ci * plane_out, plane_out, 0.0,
                             c.residual + off + ci * plane_out if c.residual != NULL else NULL, c.ep)


cdef inline void depthwise_tasks(const DepthwiseCall* c, int t0, int t1, float* scratch) noexcept nogil:
    """Input channels t0..t1-1 by the path c chose (for the lane path: channel blocks);
    one call per block of channels, as small planes take less time than a call's set-up."""
    if c.lg != NULL:
        depthwise_tasks_lanes(c, c.lg, t0, t1, scratch)
    elif c.pg != NULL:
        depthwise_tasks_plane(c, t0, t1, scratch)
    else:
        depthwise_tasks_ring(c, t0, t1, scratch)


cdef inline bint use_planes(const RowGeom* g) noexcept nogil:
    """Whether depthwise_channel_plane runs (else the row ring, which is for 3x3 filters)."""
    return g.kh != 3 or g.kw != 3 or g.Wo < PLANE_MAX_WO


cdef inline bint lanes_apply(int kh, int kw, int Ho, int Wo) noexcept nogil:
    """Whether the lane path may run for these outputs (it also needs multiplier 1,
    N * C >= LANES and an input of at most LANES_MAX_IN pixels)."""
    return kh == 3 and kw == 3 and Ho * Wo <= LANES_MAX_OUT


def scratch_floats(int Ho, int Wo, int kh, int kw, stride, dilation) -> int:
    """Floats of scratch one thread needs (for any path: the size does not depend on the
    input size, padding or channels)."""
    cdef RowGeom g = row_geometry(0, 0, Ho, Wo, kh, kw, stride, (0, 0, 0, 0), dilation, 1)
    cdef PhaseGeom pg = phase_geometry(0, 0, Ho, Wo, kh, kw, stride, (0, 0, 0, 0), dilation)
    cdef Py_ssize_t n = plane_floats(&pg, Ho) if use_planes(&g) else ring_floats(&g)
    cdef LaneGeom lg
    if lanes_apply(kh, kw, Ho, Wo):
        lg = lane_geometry(0, 0, Ho, Wo, 0, stride, dilation)
        n = max(n, lane_floats(&lg))
    return thread_stride(n)   # whole cache lines between threads' buffers


cdef class DepthwiseConv:
    """out = epilogue(depthwise conv2d(x, weight)) for one input shape; weight [C*mult, 1, kh, kw].

    The geometry of the three paths is worked out here, once; per run the call
    ``conv(x, residual, out, scratch)`` only checks its arrays' dtype, contiguity and
    shape (ndarrays.pxd).  pads = (top, left, bottom, right); bias float32[C*mult] or
    None; residual float32 like out, or None; scratch float32[nthreads,
    scratch_floats(...)]: the part a path keeps zero padding in is zeroed per call."""
    cdef RowGeom g
    cdef PhaseGeom pg
    cdef LaneGeom lg
    cdef Epilogue ep
    cdef bint planes
    cdef int lane_planes  # the first N * C planes, a multiple of LANES, that the lane path runs
    cdef object weight, bias
    cdef tuple x_shape, out_shape
    cdef Py_ssize_t need, zeroed, lane_zeroed
    cdef int nthreads

    def __init__(self, tuple x_shape, weight, bias, stride, pads, dilation, tuple epilogue, tuple out_shape,
                 int nthreads):
        self.x_shape, self.out_shape = tuple(int(d) for d in x_shape), tuple(int(d) for d in out_shape)
        if len(self.x_shape) != 4 or len(self.out_shape) != 4 or self.x_shape[0] != self.out_shape[0]:
            raise ValueError(f"x {x_shape} and out {out_shape} must be NCHW shapes of one batch")
        cdef int C = self.x_shape[1], Ho = self.out_shape[2], Wo = self.out_shape[3]
        if nthreads < 1 or C < 1 or self.out_shape[1] % C:
            raise ValueError(f"{self.out_shape[1]} output channels are not a multiple of {C} inputs")
        kh, kw = weight.shape[2], weight.shape[3]
        check_array(weight, "weight", (self.out_shape[1], 1, kh, kw))
        if bias is not None:
            check_array(bias, "bias", (self.out_shape[1],))
        self.weight, self.bias, self.nthreads = weight, bias, nthreads
        self.ep = epilogue_from_spec(epilogue)
        self.g = row_geometry(self.x_shape[2], self.x_shape[3], Ho, Wo, kh, kw, stride, pads, dilation,
                              self.out_shape[1] // C)
        self.pg = phase_geometry(self.x_shape[2], self.x_shape[3], Ho, Wo, kh, kw, stride, pads, dilation)
        self.planes = use_planes(&self.g)
        self.need = plane_floats(&self.pg, Ho) if self.planes else ring_floats(&self.g)
        self.zeroed = self.need  # floats of scratch holding padding to zero
        self.lane_planes = 0
        if (lanes_apply(self.g.kh, self.g.kw, Ho, Wo) and self.g.mult == 1
                and self.g.H * self.g.W <= LANES_MAX_IN):
            # whole blocks of LANES planes (ShuffleNet's 116 or 232 channels: all but the
            # last 4 or 8, which cost 1.5-3x more per plane on the other paths, measured)
            self.lane_planes = self.x_shape[0] * C // LANES * LANES
        if self.lane_planes:
            self.lg = lane_geometry(self.g.H, self.g.W, Ho, Wo, self.g.pt, stride, dilation)
            self.need = max(self.need, lane_floats(&self.lg))
            self.lane_zeroed = self.lg.inputs

    def __call__(self, x, residual, out, scratch):
        check_conv_arrays(x, residual, out, self.x_shape, self.out_shape)
        check_floats(scratch, "scratch", self.nthreads * self.need)
        cdef int nthreads = self.nthreads, N = self.x_shape[0], C = self.x_shape[1]
        cdef Py_ssize_t row = cnp.PyArray_SIZE(scratch) // nthreads   # a thread's share (>= need)
        cdef float* work = data_of(scratch)
        cdef DepthwiseCall call
        call.g = &self.g
        call.pg = &self.pg if self.planes else NULL
        call.lg = NULL
        call.x = data_of(x)
        call.w = data_of(self.weight)
        call.out = data_of(out)
        call.bias = data_of(self.bias) if self.bias is not None else NULL
        call.residual = data_of(residual) if residual is not None else NULL
        call.ep = self.ep
        call.C = C
        cdef DepthwiseCall lanes = call
        lanes.lg = &self.lg
        if self.lane_planes:       # blocks of LANES planes
            run_tasks(&lanes, 0, self.lane_planes // LANES, 1, work, row, self.lane_zeroed, nthreads)
        if self.lane_planes < N * C:    # the other planes, by the row ring or phase planes
            run_tasks(&call, self.lane_planes, N * C, TASK_BLOCK, work, row, self.zeroed, nthreads)


cdef void run_tasks(const DepthwiseCall* c, int t0, int t1, int per_block, float* work, Py_ssize_t row,
                    Py_ssize_t zeroed, int nthreads) noexcept nogil:
    """Tasks t0 .. t1-1 of c's path (lane blocks or planes), per_block per thread task; each
    thread's scratch (row floats apart) has its first ``zeroed`` floats zeroed first."""
    cdef int t, block, nblocks = (t1 - t0 + per_block - 1) // per_block
    for t in range(nthreads):
        memset(work + t * row, 0, zeroed * sizeof(float))
    if nthreads == 1:  # one call, no OpenMP region to enter (small layers)
        depthwise_tasks(c, t0, t1, work)
    else:
        for block in prange(nblocks, num_threads=nthreads, schedule="static"):
            depthwise_tasks(c, t0 + block * per_block, min(t1, t0 + (block + 1) * per_block),
                            work + pyconv_omp_thread_id() * row)
