# Return types that mark a cdef function as a multi-versioned micro-kernel
# (see simd.h).  Use for leaf loops called from inside prange bodies; the
# function cannot be inlined into its caller, so give it a whole tile of work.
cdef extern from "simd.h":
    ctypedef void multiversion_void "PYCONV_MULTIVERSION void"
    bint wide_vectors "PYCONV_WIDE_VECTORS"() noexcept nogil
