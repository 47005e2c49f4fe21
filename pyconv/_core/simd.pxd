# Return types that mark a cdef function as a multi-versioned micro-kernel
# (see simd.h).  Use for leaf loops called from inside prange bodies; the
# function cannot be inlined into its caller, so give it a whole tile of work.
cdef extern from "simd.h":
    ctypedef void multiversion_void "PYCONV_MULTIVERSION void"
    # return type of helpers that must be inlined into each clone of their caller
    ctypedef void inlined_void "PYCONV_ALWAYS_INLINE void"
    bint wide_vectors "PYCONV_WIDE_VECTORS"() noexcept nogil
    bint fma_vectors "PYCONV_FMA_VECTORS"() noexcept nogil
    void prefetch "PYCONV_PREFETCH"(const void* p) noexcept nogil
    void prefetch_write "PYCONV_PREFETCH_WRITE"(const void* p) noexcept nogil
