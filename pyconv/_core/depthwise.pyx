# Depthwise convolution (groups == input channels, channel multiplier >= 1),
# any kernel size, stride, padding (asymmetric) and dilation.
#
# Each (image, input channel) is copied once into its phase planes
# (pyconv/_core/phase_planes.pxd).  On the wide Ho x Wq output grid every tap
# is then one contiguous run, so a whole output plane is one long unit-stride
# loop per tap with no border tests, for any stride: the compiler vectorizes
# it and the loop is long enough that remainders do not matter.  A 3x3 kernel
# keeps all nine taps in registers (one pass, one store per output); other
# sizes accumulate tap by tap into the wide plane, which stays in L1/L2.  Rows
# are then copied out without the wide grid's extra columns, and the fused
# epilogue runs on each while it is hot.
from cython.parallel cimport prange
from libc.string cimport memset

from pyconv._core.epilogue cimport Epilogue, epilogue_from_spec, epilogue_row
from pyconv._core.parallel cimport pyconv_omp_thread_id
from pyconv._core.phase_planes cimport PhaseGeom, phase_geometry, phase_split, tap_offset
from pyconv._core.simd cimport multiversion_void


cdef enum:
    ACC_CHUNK = 2048  # floats (8 KiB) of the wide plane accumulated at a time
    # the 3x3 pass runs over the wide plane rounded up to this many floats, so small
    # planes (7x7: 63 floats) end on a whole vector instead of a scalar remainder;
    # the scratch has this much slack after the phase planes' tail and after acc
    VEC_PAD = 16


cdef multiversion_void phase_split_channel(const float* src, float* dst, const PhaseGeom* g) noexcept nogil:
    phase_split(src, dst, g, True)


cdef multiversion_void depthwise_plane(const float* phases, const float* w, float* acc, float* out,
                                       int Ho, int Wo, float bias, const float* residual, Epilogue ep,
                                       const PhaseGeom* g) noexcept nogil:
    """One Ho x Wo output plane from one channel's phase planes and a kh x kw filter.

    acc: scratch for the wide Ho x Wq plane."""
    cdef Py_ssize_t p, p0, n, wide = <Py_ssize_t>Ho * g.Wq
    cdef int oh, ow, t, ntaps
    cdef const float* t0
    cdef const float* t1
    cdef const float* t2
    cdef const float* t3
    cdef const float* t4
    cdef const float* t5
    cdef const float* t6
    cdef const float* t7
    cdef const float* t8
    cdef const float* src
    if g.kh == 3 and g.kw == 3:
        t0 = phases + tap_offset(g, 0, 0); t1 = phases + tap_offset(g, 0, 1); t2 = phases + tap_offset(g, 0, 2)
        t3 = phases + tap_offset(g, 1, 0); t4 = phases + tap_offset(g, 1, 1); t5 = phases + tap_offset(g, 1, 2)
        t6 = phases + tap_offset(g, 2, 0); t7 = phases + tap_offset(g, 2, 1); t8 = phases + tap_offset(g, 2, 2)
        for p in range((wide + VEC_PAD - 1) // VEC_PAD * VEC_PAD):
            acc[p] = (bias + w[0] * t0[p] + w[1] * t1[p] + w[2] * t2[p]
                      + w[3] * t3[p] + w[4] * t4[p] + w[5] * t5[p]
                      + w[6] * t6[p] + w[7] * t7[p] + w[8] * t8[p])
    else:
        # chunks of the wide plane small enough that acc stays in L1 across all
        # taps; taps four at a time, so each acc load/store carries four FMAs
        ntaps = g.kh * g.kw
        p0 = 0
        while p0 < wide:
            n = wide - p0 if wide - p0 < ACC_CHUNK else ACC_CHUNK
            for p in range(p0, p0 + n):
                acc[p] = bias
            for t in range(0, ntaps - 3, 4):
                t0 = phases + tap_offset(g, t // g.kw, t % g.kw)
                t1 = phases + tap_offset(g, (t + 1) // g.kw, (t + 1) % g.kw)
                t2 = phases + tap_offset(g, (t + 2) // g.kw, (t + 2) % g.kw)
                t3 = phases + tap_offset(g, (t + 3) // g.kw, (t + 3) % g.kw)
                for p in range(p0, p0 + n):
                    acc[p] += w[t] * t0[p] + w[t + 1] * t1[p] + w[t + 2] * t2[p] + w[t + 3] * t3[p]
            for t in range(ntaps - ntaps % 4, ntaps):
                src = phases + tap_offset(g, t // g.kw, t % g.kw)
                for p in range(p0, p0 + n):
                    acc[p] += w[t] * src[p]
            p0 += ACC_CHUNK
    # the bias is in acc already (one pass less)
    if residual == NULL:  # one epilogue pass over the wide plane: short rows make per-row calls costly
        epilogue_row(acc, wide, 0.0, NULL, ep)
    for oh in range(Ho):
        for ow in range(Wo):
            out[<Py_ssize_t>oh * Wo + ow] = acc[<Py_ssize_t>oh * g.Wq + ow]
        if residual != NULL:
            epilogue_row(out + <Py_ssize_t>oh * Wo, Wo, 0.0, residual + <Py_ssize_t>oh * Wo, ep)


cdef struct DepthwiseCall:
    const PhaseGeom* g
    const float* x
    const float* w
    float* out
    const float* bias
    const float* residual
    Epilogue ep
    int C, mult, Ho, Wo


cdef inline void depthwise_task(const DepthwiseCall* c, int task, float* phases) noexcept nogil:
    """Input channel task % C of image task // C: its phase planes, then its mult output planes.

    phases: this thread's scratch (phase planes, then the wide accumulator)."""
    cdef const PhaseGeom* g = c.g
    cdef int n = task // c.C, ch = task % c.C, m, co
    cdef Py_ssize_t plane_out = <Py_ssize_t>c.Ho * c.Wo, o_off
    phase_split_channel(c.x + <Py_ssize_t>task * g.H * g.W, phases, g)
    for m in range(c.mult):
        co = ch * c.mult + m
        o_off = (<Py_ssize_t>n * c.C * c.mult + co) * plane_out
        depthwise_plane(phases, c.w + <Py_ssize_t>co * g.kh * g.kw, phases + g.channel + g.Wq + VEC_PAD,
                        c.out + o_off, c.Ho, c.Wo, c.bias[co] if c.bias != NULL else 0.0,
                        c.residual + o_off if c.residual != NULL else NULL, c.ep, g)


def scratch_floats(int Ho, int Wo, int kh, int kw, stride, dilation) -> int:
    """Floats of scratch one thread needs: a channel's phase planes (+ tail) and a wide output plane."""
    cdef PhaseGeom g = phase_geometry(0, 0, Ho, Wo, kh, kw, stride, (0, 0, 0, 0), dilation)
    return g.channel + g.Wq + VEC_PAD + <Py_ssize_t>Ho * g.Wq + VEC_PAD


def depthwise_conv2d(const float[:, :, :, ::1] x, const float[:, :, :, ::1] weight, bias,
                     stride, pads, dilation, tuple epilogue, residual,
                     float[:, :, :, ::1] out, float[:, ::1] scratch, int nthreads):
    """out = epilogue(depthwise conv2d(x, weight)); weight [C*mult, 1, kh, kw].

    pads = (top, left, bottom, right); scratch float32[nthreads, scratch_floats(...)],
    its phase-plane part is zeroed here (the padding), the tail is read for dropped columns only."""
    cdef int N = x.shape[0], C = x.shape[1], Ho = out.shape[2], Wo = out.shape[3]
    cdef int mult = out.shape[1] // C
    cdef PhaseGeom g = phase_geometry(x.shape[2], x.shape[3], Ho, Wo, weight.shape[2], weight.shape[3],
                                      stride, pads, dilation)
    if scratch.shape[0] < nthreads or scratch.shape[1] < scratch_floats(Ho, Wo, g.kh, g.kw, stride, dilation):
        raise ValueError("scratch too small for the phase planes")
    cdef Epilogue ep = epilogue_from_spec(epilogue)
    cdef const float[::1] bias_v = bias
    cdef const float[:, :, :, ::1] res_v = residual
    cdef DepthwiseCall call
    call.g = &g
    call.x = &x[0, 0, 0, 0]
    call.w = &weight[0, 0, 0, 0]
    call.out = &out[0, 0, 0, 0]
    call.bias = &bias_v[0] if bias is not None else NULL
    call.residual = &res_v[0, 0, 0, 0] if residual is not None else NULL
    call.ep = ep
    call.C = C; call.mult = mult; call.Ho = Ho; call.Wo = Wo
    cdef Py_ssize_t acc_off = g.channel + g.Wq + VEC_PAD
    cdef int t, task
    for t in range(nthreads):  # this geometry's zero padding, written once per thread's planes
        memset(&scratch[t, 0], 0, acc_off * sizeof(float))
    if nthreads == 1:  # plain loop, no OpenMP region to enter (small layers)
        for task in range(N * C):
            depthwise_task(&call, task, &scratch[0, 0])
    else:
        for task in prange(N * C, nogil=True, num_threads=nthreads, schedule="static"):
            depthwise_task(&call, task, &scratch[pyconv_omp_thread_id(), 0])
