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
