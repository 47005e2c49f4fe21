# Depthwise convolution (groups == input channels, channel multiplier >= 1),
# any kernel size, stride, padding (asymmetric) and dilation.
#
# Each (image, input channel) plane is copied once into a zero-padded scratch
# plane whose columns are split into ``sw`` phases (phase q holds padded
# columns q, q + sw, q + 2 sw, ...).  Tap (ki, kj) of output column ow then
# reads phase (kj*dw) % sw at index ow + (kj*dw) // sw: every inner loop runs
# with unit stride over output columns, without border tests, for any stride,
# so the compiler vectorizes it.  Borders cost only the zero padding of the
# copy.  A 3x3 kernel keeps all nine taps in registers per output column; other
# sizes accumulate tap by tap on an output row that stays in L1.  The fused
# epilogue runs on each output row right after it is computed.
from cython.parallel cimport prange

from pyconv._core.epilogue cimport Epilogue, epilogue_from_spec, epilogue_row
from pyconv._core.parallel cimport pyconv_omp_thread_id
from pyconv._core.simd cimport multiversion_void


cdef struct DwGeom:
    int H, W, Ho, Wo, kh, kw, sh, sw, pt, pl, dh, dw
    int Hp, Wq          # padded rows, columns per phase
    int mult            # output channels per input channel


cdef multiversion_void pad_split_plane(const float* src, float* dst, const DwGeom* g) noexcept nogil:
    """Zero-padded copy of one H x W plane, columns split into sw phases [sw][Hp][Wq]."""
    cdef int q, r, j, ih, iw, j_lo, j_hi
    cdef float* row
    for q in range(g.sw):
        for r in range(g.Hp):
            row = dst + (<Py_ssize_t>q * g.Hp + r) * g.Wq
            ih = r - g.pt
            # padded column j*sw + q holds input column iw = j*sw + q - pl
            j_lo = (g.pl - q + g.sw - 1) // g.sw if g.pl > q else 0
            j_hi = (g.W - 1 + g.pl - q) // g.sw + 1 if g.W - 1 + g.pl - q >= 0 else 0
            if j_hi > g.Wq:
                j_hi = g.Wq
            if j_lo > j_hi:
                j_lo = j_hi
            if ih < 0 or ih >= g.H:
                j_lo = j_hi = g.Wq
            for j in range(j_lo):
                row[j] = 0.0
            if g.sw == 1:
                for j in range(j_lo, j_hi):
                    row[j] = src[<Py_ssize_t>ih * g.W + j - g.pl]
            else:
                for j in range(j_lo, j_hi):
                    row[j] = src[<Py_ssize_t>ih * g.W + j * g.sw + q - g.pl]
            for j in range(j_hi, g.Wq):
                row[j] = 0.0


cdef inline const float* tap_row(const float* plane, const DwGeom* g, int oh, int ki, int kj) noexcept nogil:
    """Start of the phase row that tap (ki, kj) reads for output row oh (index by ow)."""
    cdef int col = kj * g.dw
    return plane + (<Py_ssize_t>(col % g.sw) * g.Hp + oh * g.sh + ki * g.dh) * g.Wq + col // g.sw


cdef multiversion_void depthwise_plane(const float* plane, const float* w, float* out,
                                       float bias, const float* residual, Epilogue ep,
                                       const DwGeom* g) noexcept nogil:
    """One output plane from one padded, phase-split input plane and a kh x kw filter."""
    cdef int oh, ow, ki, kj
    cdef float* orow
    cdef const float* r0
    cdef const float* r1
    cdef const float* r2
    cdef const float* r3
    cdef const float* r4
    cdef const float* r5
    cdef const float* r6
    cdef const float* r7
    cdef const float* r8
    cdef const float* src
    cdef float wt
    for oh in range(g.Ho):
        orow = out + <Py_ssize_t>oh * g.Wo
        if g.kh == 3 and g.kw == 3:
            r0 = tap_row(plane, g, oh, 0, 0); r1 = tap_row(plane, g, oh, 0, 1); r2 = tap_row(plane, g, oh, 0, 2)
            r3 = tap_row(plane, g, oh, 1, 0); r4 = tap_row(plane, g, oh, 1, 1); r5 = tap_row(plane, g, oh, 1, 2)
            r6 = tap_row(plane, g, oh, 2, 0); r7 = tap_row(plane, g, oh, 2, 1); r8 = tap_row(plane, g, oh, 2, 2)
            for ow in range(g.Wo):
                orow[ow] = (w[0] * r0[ow] + w[1] * r1[ow] + w[2] * r2[ow]
                            + w[3] * r3[ow] + w[4] * r4[ow] + w[5] * r5[ow]
                            + w[6] * r6[ow] + w[7] * r7[ow] + w[8] * r8[ow])
        else:
            for ow in range(g.Wo):
                orow[ow] = 0.0
            for ki in range(g.kh):
                for kj in range(g.kw):
                    src = tap_row(plane, g, oh, ki, kj)
                    wt = w[ki * g.kw + kj]
                    for ow in range(g.Wo):
                        orow[ow] += wt * src[ow]
        epilogue_row(orow, g.Wo, bias, residual + <Py_ssize_t>oh * g.Wo if residual != NULL else NULL, ep)


def depthwise_conv2d(const float[:, :, :, ::1] x, const float[:, :, :, ::1] weight, bias,
                     stride, pads, dilation, tuple epilogue, residual,
                     float[:, :, :, ::1] out, float[:, ::1] scratch, int nthreads):
    """out = epilogue(depthwise conv2d(x, weight)); weight [C*mult, 1, kh, kw].

    pads = (top, left, bottom, right); scratch float32[nthreads, >= scratch_size(...)]."""
    cdef DwGeom g
    cdef int N = x.shape[0], C = x.shape[1]
    g.H = x.shape[2]; g.W = x.shape[3]
    g.Ho = out.shape[2]; g.Wo = out.shape[3]
    g.kh = weight.shape[2]; g.kw = weight.shape[3]
    g.sh, g.sw = stride
    g.pt, g.pl = pads[0], pads[1]
    g.dh, g.dw = dilation
    g.mult = out.shape[1] // C
    g.Hp, g.Wq = _padded_dims(g.Ho, g.Wo, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw)
    if scratch.shape[0] < nthreads or scratch.shape[1] < <Py_ssize_t>g.sw * g.Hp * g.Wq:
        raise ValueError("scratch too small for the padded planes")
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
    cdef const float* wp = &weight[0, 0, 0, 0]
    cdef float* op = &out[0, 0, 0, 0]
    cdef Py_ssize_t plane_out = <Py_ssize_t>g.Ho * g.Wo
    cdef Py_ssize_t o_off
    cdef int task, n, c, m, co
    cdef float* plane
    for task in prange(N * C, nogil=True, num_threads=nthreads, schedule="static"):
        n = task // C
        c = task % C
        plane = &scratch[pyconv_omp_thread_id(), 0]
        pad_split_plane(xp + <Py_ssize_t>task * g.H * g.W, plane, &g)
        for m in range(g.mult):
            co = c * g.mult + m
            o_off = (<Py_ssize_t>n * C * g.mult + co) * plane_out
            depthwise_plane(plane, wp + <Py_ssize_t>co * g.kh * g.kw, op + o_off,
                            bias_p[co] if bias_p != NULL else 0.0,
                            res_p + o_off if res_p != NULL else NULL, ep, &g)


cdef (int, int) _padded_dims(int Ho, int Wo, int kh, int kw, int sh, int sw, int dh, int dw) noexcept nogil:
    # rows read: up to (Ho-1)*sh + (kh-1)*dh; per-phase columns: up to Wo-1 + (kw-1)*dw // sw
    return (Ho - 1) * sh + (kh - 1) * dh + 1, Wo + ((kw - 1) * dw) // sw


def scratch_size(int Ho, int Wo, int kh, int kw, int sh, int sw, int dh, int dw) -> int:
    """Floats of scratch one thread needs for a padded, phase-split input plane."""
    cdef int Hp, Wq
    Hp, Wq = _padded_dims(Ho, Wo, kh, kw, sh, sw, dh, dw)
    return sw * Hp * Wq
