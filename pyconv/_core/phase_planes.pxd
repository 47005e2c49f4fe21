# Phase planes: the input layout shared by the GEMM and depthwise convolutions.
#
# A zero-padded input channel is split into sh * sw phase planes of Hq x Wq;
# phase (qh, qw) holds the padded pixels (r*sh + qh, j*sw + qw).  Tap (ki, kj)
# of output pixel (oh, ow) then reads phase ((ki*dh) % sh, (kj*dw) % sw) at
# (oh + ki*dh // sh, ow + kj*dw // sw).  Numbering outputs on a "wide" Ho x Wq
# grid (Wq >= Wo; the extra columns are computed and dropped), every tap reads
# one contiguous run of a phase plane, ``tap_offset`` + p for wide pixel p, for
# any stride and dilation: inner loops are unit-stride, long (a whole plane,
# not a row) and free of border tests.  A run may read up to Wq - Wo floats
# past its plane, so a buffer of planes ends with a tail of Wq floats.  The split
# is always inlined into each ISA clone of its callers (simd.h): left out of line, as
# GCC chose for it, it ran as baseline SSE2 code (PanelConv 64->128 s2 @56 and a
# depthwise s2 @112 5-7 % faster inlined, alone).
from libc.string cimport memcpy, memset

from pyconv._core.simd cimport inlined_void


cdef struct PhaseGeom:
    int H, W             # input plane
    int kh, kw, sh, sw, pt, pl, dh, dw
    int Hq, Wq           # phase plane height, width (= wide-grid row length)
    Py_ssize_t plane     # Hq * Wq
    Py_ssize_t channel   # sh * sw * plane: floats of one channel's phase planes


cdef inline PhaseGeom phase_geometry(int H, int W, int Ho, int Wo, int kh, int kw, stride, pads,
                                     dilation):
    """Phase-plane geometry of an H x W input for an Ho x Wo output (call with the GIL)."""
    cdef PhaseGeom g
    g.H = H; g.W = W; g.kh = kh; g.kw = kw
    g.sh, g.sw = stride
    g.pt, g.pl = pads[0], pads[1]
    g.dh, g.dw = dilation
    g.Hq = Ho + ((kh - 1) * g.dh) // g.sh
    g.Wq = Wo + ((kw - 1) * g.dw) // g.sw
    g.plane = <Py_ssize_t>g.Hq * g.Wq
    g.channel = <Py_ssize_t>g.sh * g.sw * g.plane
    return g


cdef inline Py_ssize_t tap_offset(const PhaseGeom* g, int ki, int kj) noexcept nogil:
    """Where tap (ki, kj)'s run starts within one channel's phase planes."""
    return ((((ki * g.dh) % g.sh) * g.sw + (kj * g.dw) % g.sw) * g.plane
            + <Py_ssize_t>((ki * g.dh) // g.sh) * g.Wq + (kj * g.dw) // g.sw)


cdef inline bint phase_used(int q, int s, int k, int d) noexcept nogil:
    """Whether some tap i < k falls on phase q: (i*d) % s == q."""
    cdef int i
    for i in range(k):
        if (i * d) % s == q:
            return True
    return False


cdef enum:
    PADDED_ROW_MAX = 4096  # floats: stack row for the stride-2 path


cdef inline inlined_void phase_split_stride2(const float* src, float* dst, const PhaseGeom* g) noexcept nogil:
    """phase_split for sw == 2: each padded row is built in L1, then split into both
    column phases by one interleaved loop (which compilers vectorize; a lone
    stride-2 gather per phase they do not), or into the even one alone when no tap
    reads the odd one (1x1 and other one-column kernels: half the writes)."""
    cdef float padded[PADDED_ROW_MAX]
    cdef int qh, r, j, ih, lo, hi, wp = 2 * g.Wq
    cdef bint odd_used = phase_used(1, 2, g.kw, g.dw)
    cdef float* row0
    cdef float* row1
    lo = g.pl if g.pl < wp else wp
    hi = g.pl + g.W if g.pl + g.W < wp else wp
    for qh in range(g.sh):
        if not phase_used(qh, g.sh, g.kh, g.dh):
            continue
        for r in range(g.Hq):
            row0 = dst + (qh * 2) * g.plane + <Py_ssize_t>r * g.Wq
            row1 = row0 + g.plane
            ih = r * g.sh + qh - g.pt
            if ih < 0 or ih >= g.H:
                memset(row0, 0, g.Wq * sizeof(float))
                if odd_used:
                    memset(row1, 0, g.Wq * sizeof(float))
                continue
            memset(padded, 0, lo * sizeof(float))
            memcpy(padded + lo, src + <Py_ssize_t>ih * g.W + lo - g.pl, (hi - lo) * sizeof(float))
            memset(padded + hi, 0, (wp - hi) * sizeof(float))
            if odd_used:
                for j in range(g.Wq):
                    row0[j] = padded[2 * j]
                    row1[j] = padded[2 * j + 1]
            else:
                for j in range(g.Wq):
                    row0[j] = padded[2 * j]


cdef inline inlined_void phase_split(const float* src, float* dst, const PhaseGeom* g,
                                     bint zeroed=False) noexcept nogil:
    """Phase planes [sh][sw][Hq][Wq] of one H x W channel; phases no tap reads are skipped.

    zeroed: dst already holds this geometry's zero padding (a buffer zeroed once and
    reused for channels of one geometry), so only input pixels are written.  Small
    planes spend most of their split on the padding's memsets otherwise."""
    cdef int qh, qw, r, j, ih, j_lo, j_hi
    cdef float* row
    cdef const float* srow
    if g.sw == 2 and 2 * g.Wq <= PADDED_ROW_MAX:
        phase_split_stride2(src, dst, g)
        return
    for qh in range(g.sh):
        if not phase_used(qh, g.sh, g.kh, g.dh):
            continue
        for qw in range(g.sw):
            if not phase_used(qw, g.sw, g.kw, g.dw):
                continue
            # phase column j holds input column j*sw + qw - pl
            j_lo = (g.pl - qw + g.sw - 1) // g.sw if g.pl > qw else 0
            j_hi = (g.W - 1 + g.pl - qw) // g.sw + 1 if g.W - 1 + g.pl - qw >= 0 else 0
            if j_hi > g.Wq:
                j_hi = g.Wq
            if j_lo > j_hi:
                j_lo = j_hi
            for r in range(g.Hq):
                row = dst + (qh * g.sw + qw) * g.plane + <Py_ssize_t>r * g.Wq
                ih = r * g.sh + qh - g.pt
                if ih < 0 or ih >= g.H:
                    if not zeroed:
                        memset(row, 0, g.Wq * sizeof(float))
                    continue
                srow = src + <Py_ssize_t>ih * g.W + qw - g.pl
                if not zeroed:
                    memset(row, 0, j_lo * sizeof(float))
                    memset(row + j_hi, 0, (g.Wq - j_hi) * sizeof(float))
                if g.sw == 1:
                    memcpy(row + j_lo, srow + j_lo, (j_hi - j_lo) * sizeof(float))
                else:
                    for j in range(j_lo, j_hi):
                        row[j] = srow[j * g.sw]
