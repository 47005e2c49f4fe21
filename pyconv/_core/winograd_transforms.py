"""Transform matrices of the Winograd minimal filtering algorithms F(m, 3).

One output tile of ``m`` values of a 3-tap correlation ``y[i] = sum_k g[k] d[i+k]``
(``n = m + 2`` inputs) is computed as

    y = A^T [ (G g) * (B^T d) ]            (2-D: Y = A^T [ (G g G^T) * (B^T d B) ] A)

with ``n`` multiplications instead of ``3 m``.  The matrices come from Toom-Cook
evaluation at ``n - 1`` finite points ``p_j`` plus the point at infinity:

* ``A^T[i, j] = p_j ** i``            (``m x n``; column ``n-1`` is ``e_{m-1}``)
* ``G[j, k]   = s_j * p_j ** k``      (``n x 3``; row ``n-1`` is ``e_2``)
* ``B^T = diag(1/s) V^{-T}``          where ``V[j, l] = p_j ** l`` (row ``n-1`` = ``e_{n-1}``)

``y = A^T[(G g) * (B^T d)]`` is the transpose (correlation) of the Toom-Cook
convolution ``s = V^{-1}[(G g) * (A h)]``.  The row scales ``s_j`` move each
row's largest coefficient of ``V^{-T}`` into ``G`` so that ``B^T`` has entries of
magnitude at most 1 (slightly lower float32 error for F(6,3)).

Points (chosen by measured float32 error, see docs/winograd.md):

* F(2,3): 0, +-1                          (exact small integers)
* F(4,3): 0, +-sqrt(2)/2, +-sqrt(2)       (ncnn's choice; ~3x lower max error than
  Lavin's 0, +-1, +-2, because the Vandermonde system is better conditioned)
* F(6,3): 0, +-1, +-2, +-1/2              (the best of the sets tried; +-1/4 or
  sqrt(2)-scaled points are worse)

The matrices are computed in float64 at import (exact up to rounding: the
construction is verified against a direct correlation in ``verify``).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Dict, Tuple

import numpy as np

_SQRT2 = math.sqrt(2.0)

INTERPOLATION_POINTS: Dict[int, Tuple[float, ...]] = {
    2: (0.0, 1.0, -1.0),
    4: (0.0, _SQRT2 / 2, -_SQRT2 / 2, _SQRT2, -_SQRT2),
    6: (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5),
}

TILE_SIZES = tuple(sorted(INTERPOLATION_POINTS))


@lru_cache(maxsize=None)
def transform_matrices(m: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(AT, G, BT)`` in float64 for F(m, 3): shapes (m, n), (n, 3), (n, n), n = m + 2."""
    if m not in INTERPOLATION_POINTS:
        raise ValueError(f"Winograd tile must be one of {TILE_SIZES}, got {m!r}")
    p = np.array(INTERPOLATION_POINTS[m])
    n = m + 2
    at = np.zeros((m, n))
    at[:, : n - 1] = p[None, :] ** np.arange(m)[:, None]
    at[m - 1, n - 1] = 1.0
    g = np.zeros((n, 3))
    g[: n - 1] = p[:, None] ** np.arange(3)[None, :]
    g[n - 1, 2] = 1.0
    vandermonde = np.zeros((n, n))
    vandermonde[: n - 1] = p[:, None] ** np.arange(n)[None, :]
    vandermonde[n - 1, n - 1] = 1.0
    bt = np.linalg.inv(vandermonde).T
    scale = np.abs(bt).max(axis=1)
    bt /= scale[:, None]
    g *= scale[:, None]
    bt[np.abs(bt) < 1e-13] = 0.0  # exact zeros let the kernels skip terms
    for arr in (at, g, bt):
        arr.setflags(write=False)
    return at, g, bt


def verify(m: int) -> float:
    """Max error of the 1-D algorithm against a direct correlation (float64, random data)."""
    at, g_mat, bt = transform_matrices(m)
    rng = np.random.default_rng(m)
    g = rng.standard_normal(3)
    d = rng.standard_normal(m + 2)
    y = at @ ((g_mat @ g) * (bt @ d))
    direct = np.array([g @ d[i : i + 3] for i in range(m)])
    return float(np.abs(y - direct).max())


# ---------------------------------------------------------------------------
# C code generation: the transforms as straight-line code with the matrices as
# literals (zero terms dropped, +-1 as add/subtract), one loop over channels
# that the compiler vectorizes.  Cython cannot express constant-folded,
# fully unrolled loops, so the kernels are generated once from the matrices
# above and committed as winograd_kernels.h (a test checks it is current).
# Regenerate with:  python -m pyconv._core.winograd_transforms

KERNELS_HEADER = "winograd_kernels.h"


def _c_float(value: float) -> str:
    text = "%.9g" % np.float32(value)
    if "." not in text and "e" not in text and "inf" not in text:
        text += ".0"
    return text + "f"


def _c_sum(coefs, names) -> str:
    """``sum coefs[i] * names[i]`` as C, skipping zeros (at least one term is nonzero)."""
    parts = []
    for c, name in zip(coefs, names):
        if c == 0.0:
            continue
        c32 = float(np.float32(c))
        if c32 == 1.0:
            term, sign = name, "+"
        elif c32 == -1.0:
            term, sign = name, "-"
        else:
            term, sign = f"{_c_float(abs(c32))} * {name}", "-" if c32 < 0 else "+"
        parts.append((sign, term))
    first_sign, first = parts[0]
    text = ("-" if first_sign == "-" else "") + first
    for sign, term in parts[1:]:
        text += f" {sign} {term}"
    return text


def _input_kernel(m: int) -> list:
    _, _, bt = transform_matrices(m)
    n = m + 2
    out = [
        f"/* V[k*{n}+q] = (B^T d B)[k, q] of one F({m}x{m},3x3) tile for C channels:",
        " * d[j, l] at src[j*row_stride + l*C + c], V[p] at dst[p*pos_stride + c]. */",
        f"PYCONV_WINOGRAD_KERNEL void winograd_f{m}_input_tile(const float* restrict src, ptrdiff_t row_stride,",
        "        ptrdiff_t C, float* restrict dst, ptrdiff_t pos_stride)",
        "{",
    ]
    # one pointer per input / output stream, computed once outside the channel loop
    for j in range(n):
        bases = ", ".join(f"*const in{j}_{l} = src + {j} * row_stride + {l} * C" for l in range(n))
        out.append(f"    const float {bases};")
    for p in range(n * n):
        out.append(f"    float* const out{p} = dst + {p} * pos_stride;")
    out.append("    PYCONV_WINOGRAD_IVDEP")
    out.append("    for (ptrdiff_t c = 0; c < C; c++) {")
    for j in range(n):
        loads = ", ".join(f"d{j}_{l} = in{j}_{l}[c]" for l in range(n))
        out.append(f"        const float {loads};")
    for k in range(n):
        for l in range(n):
            out.append(f"        const float t{k}_{l} = {_c_sum(bt[k], [f'd{j}_{l}' for j in range(n)])};")
        for q in range(n):
            out.append(f"        out{k * n + q}[c] = "
                       f"{_c_sum(bt[q], [f't{k}_{l}' for l in range(n)])};")
    out += ["    }", "}", ""]
    return out


def _output_kernel(m: int) -> list:
    at, _, _ = transform_matrices(m)
    n = m + 2
    out = [
        f"/* Y[a, b] = (A^T M A)[a, b] of one F({m}x{m},3x3) tile for C channels:",
        " * M[i, j] at src[(i*n+j)*pos_stride + c], Y[a, b] at dst[a*row_stride + b*C + c]. */",
        f"PYCONV_WINOGRAD_KERNEL void winograd_f{m}_output_tile(const float* restrict src, ptrdiff_t pos_stride,",
        "        ptrdiff_t C, float* restrict dst, ptrdiff_t row_stride)",
        "{",
    ]
    for p in range(n * n):
        out.append(f"    const float* const in{p} = src + {p} * pos_stride;")
    for a in range(m):
        bases = ", ".join(f"*const out{a}_{b} = dst + {a} * row_stride + {b} * C" for b in range(m))
        out.append(f"    float {bases};")
    out.append("    PYCONV_WINOGRAD_IVDEP")
    out.append("    for (ptrdiff_t c = 0; c < C; c++) {")
    for i in range(n):
        loads = ", ".join(f"s{i}_{j} = in{i * n + j}[c]" for j in range(n))
        out.append(f"        const float {loads};")
    for a in range(m):
        for j in range(n):
            out.append(f"        const float t{a}_{j} = {_c_sum(at[a], [f's{i}_{j}' for i in range(n)])};")
        for b in range(m):
            out.append(f"        out{a}_{b}[c] = "
                       f"{_c_sum(at[b], [f't{a}_{j}' for j in range(n)])};")
    out += ["    }", "}", ""]
    return out


def kernels_source() -> str:
    """Text of winograd_kernels.h."""
    lines = [
        "/* Winograd F(m x m, 3 x 3) input and output tile transforms, m = 2, 4, 6.",
        " * Generated by pyconv/_core/winograd_transforms.py from its matrices; do not edit. */",
        "#ifndef PYCONV_WINOGRAD_KERNELS_H",
        "#define PYCONV_WINOGRAD_KERNELS_H",
        "#include <stddef.h>",
        "",
        "/* The n*n streams never overlap (distinct positions / pixels); without this",
        " * the compiler would need more run-time alias checks than it allows. */",
        "#if defined(__clang__)",
        '#define PYCONV_WINOGRAD_IVDEP _Pragma("clang loop vectorize(assume_safety)")',
        "#elif defined(__GNUC__)",
        '#define PYCONV_WINOGRAD_IVDEP _Pragma("GCC ivdep")',
        "#else",
        "#define PYCONV_WINOGRAD_IVDEP",
        "#endif",
        "",
        "/* Always inlined into the caller, a multi-versioned wrapper (simd.h), so each",
        " * ISA clone gets its own vectorized copy. */",
        "#if defined(__GNUC__)",
        "#define PYCONV_WINOGRAD_KERNEL static inline __attribute__((always_inline))",
        "#else",
        "#define PYCONV_WINOGRAD_KERNEL static inline",
        "#endif",
        "",
    ]
    for m in TILE_SIZES:
        lines += _input_kernel(m) + _output_kernel(m)
    lines.append("#endif")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import pathlib

    target = pathlib.Path(__file__).with_name(KERNELS_HEADER)
    target.write_text(kernels_source())
    print(f"wrote {target}")
