/* Function multi-versioning for hot micro-kernels.
 *
 * A portable x86-64 build targets the baseline ISA (SSE2).  Micro-kernels whose
 * return type is declared PYCONV_MULTIVERSION void are compiled three times
 * (x86-64-v4 = AVX-512, v3 = AVX2/FMA, baseline) and the loader picks the best
 * one for the running CPU (GCC/Clang target_clones, an ELF ifunc).  Elsewhere
 * (ARM64, macOS, -march=native builds) the macro is empty and the compiler's
 * own target flags apply.  No intrinsics: the loops stay plain C.
 *
 * PYCONV_WIDE_VECTORS() says whether those kernels run with 512-bit vectors (32
 * registers): the AVX-512 clone was picked, or the build targets AVX-512.  Kernels
 * that keep a block of results in registers size the block by it.
 * PYCONV_FMA_VECTORS() says whether they run with at least 256-bit vectors and FMA
 * (the AVX2 clone or the AVX-512 one, or a build for either). */
#ifndef PYCONV_SIMD_H
#define PYCONV_SIMD_H

#if defined(__x86_64__) && defined(__linux__) && !defined(PYCONV_NATIVE) && \
    ((defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11) || \
     (defined(__clang__) && __clang_major__ >= 14))
#define PYCONV_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
/* the CPU features the x86-64-v4 clone needs (the loader's own test) */
#define PYCONV_WIDE_VECTORS() (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && \
                               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
/* the features of the x86-64-v3 clone that matter here (the loader tests a few more) */
#define PYCONV_FMA_VECTORS() (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
#else
#define PYCONV_MULTIVERSION
#if defined(__AVX512F__)
#define PYCONV_WIDE_VECTORS() 1
#else
#define PYCONV_WIDE_VECTORS() 0
#endif
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define PYCONV_FMA_VECTORS() 1
#else
#define PYCONV_FMA_VECTORS() 0
#endif
#endif

/* Vectors of the GCC/Clang vector extension (no ISA intrinsics: each clone picks the
 * instructions): 16 floats, one AVX-512 register; 8 floats, one AVX2 register. */
#if defined(__GNUC__) || defined(__clang__)
typedef float pyconv_f32x16 __attribute__((vector_size(64)));
typedef int pyconv_i32x16 __attribute__((vector_size(64)));
typedef float pyconv_f32x8 __attribute__((vector_size(32)));
typedef int pyconv_i32x8 __attribute__((vector_size(32)));
#endif

/* Helpers of a multi-versioned kernel must be inlined into each of its clones: one
 * left out of line is compiled for the baseline ISA only (and SSE code called from
 * AVX-512 code pays a transition penalty). */
#if defined(__GNUC__) || defined(__clang__)
#define PYCONV_ALWAYS_INLINE __attribute__((always_inline))
#else
#define PYCONV_ALWAYS_INLINE
#endif

/* Ask for the cache line at p ahead of its use, to read or to write (a hint:
 * GCC/Clang's portable builtin, nothing elsewhere).  PYCONV_PREFETCH_FAR asks for it
 * into the outer caches only (low temporal locality: prefetcht1 on x86-64): for
 * lines needed thousands of cycles later, without taking L1 from the lines in use. */
#if defined(__GNUC__) || defined(__clang__)
#define PYCONV_PREFETCH(p) __builtin_prefetch(p)
#define PYCONV_PREFETCH_WRITE(p) __builtin_prefetch((p), 1)
#define PYCONV_PREFETCH_FAR(p) __builtin_prefetch((p), 0, 2)
#else
#define PYCONV_PREFETCH(p) ((void)(p))
#define PYCONV_PREFETCH_WRITE(p) ((void)(p))
#define PYCONV_PREFETCH_FAR(p) ((void)(p))
#endif

#endif
