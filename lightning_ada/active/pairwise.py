"""Pairwise distances over a pool of descriptors with a bounded memory (issue 29, item 2).

The descriptor rules used to build dense ``(N, N)`` matrices: 800 MB of float64 at N = 10,000,
several copies of it at once, and sorts of every row. What they need of the distances is less:

* a rule that needs only neighbours (ProbCover's balls, TypiClust's typicality, MHPL's
  neighbourhoods) gets them from :func:`knn` / :func:`radius_graph`: the distances are computed
  in blocks of rows, a block is screened with the fast matrix-product form
  ``|a|^2 + |b|^2 - 2 a.b`` and every pair whose decision that form cannot settle within a
  generous rounding bound (1000x the worst case of a dot product) is recomputed with ``scipy.spatial.distance.cdist`` - so the
  neighbours and their distances are exactly those of the dense ``cdist`` matrix (bit for bit),
  at any pool size;
* a rule that needs every pair (the density's quantile radius, the median bandwidth of
  MaxHerding) gets the ``N (N - 1) / 2`` distances of the upper triangle (:func:`condensed`,
  ``scipy.spatial.distance.pdist`` order), half the work and an eighth of the memory of the
  dense matrix and its index arrays, and reads rows of it back with :func:`condensed_rows`.

``method="exact"`` computes with ``cdist`` (each value bit for bit the dense matrix's entry,
whatever the blocks); ``method="blas"`` (Euclidean only) with the matrix-product form, about
10x faster on 4,096-long descriptors and equal to ``cdist`` within ~1e-12 relative, so a pick
that depends on an exact tie may differ. :func:`resolve_method` turns ``auto`` into ``exact``
for pools up to :data:`EXACT_MAX` cases (every pool the library has run) and ``blas`` above.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
from scipy.spatial.distance import cdist

__all__ = [
    "BLOCK",
    "EXACT_MAX",
    "condensed",
    "condensed_rows",
    "knn",
    "radius_graph",
    "resolve_method",
    "row_blocks",
]

Metric = Literal["euclidean", "cityblock"]
Method = Literal["auto", "exact", "blas"]

#: rows per block: the working memory of a block is ``BLOCK x N`` float64 (160 MB at N = 10,000)
BLOCK = 2048
#: ``auto`` computes exactly (``cdist``) up to this many cases, with BLAS above
EXACT_MAX = 2000
#: relative rounding bound of the matrix-product form, per unit of ``d * eps`` (generous: the
#: worst case of a ``d``-term dot product is ``d * eps``; this screens with 1000x that)
_SAFETY = 1000.0


def resolve_method(method: Method, n: int, metric: Metric = "euclidean") -> Literal["exact", "blas"]:
    """``auto`` -> ``exact`` up to :data:`EXACT_MAX` cases (and always for ``cityblock``), else
    ``blas``; ``exact`` / ``blas`` unchanged."""
    if method not in ("auto", "exact", "blas"):
        raise ValueError(f"distance method must be auto, exact or blas; got {method!r}")
    if metric != "euclidean":
        if method == "blas":
            raise ValueError(f"the blas method computes Euclidean distances only, not {metric}")
        return "exact"
    if method == "auto":
        return "exact" if n <= EXACT_MAX else "blas"
    return method


def row_blocks(n: int, block: int | None = None) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive blocks of rows (``block`` None: :data:`BLOCK`)."""
    block = block or BLOCK
    for a in range(0, n, block):
        yield a, min(n, a + block)


def _as_2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(len(x), -1)


def _sq_blas(x: np.ndarray, y: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances by the matrix-product form (not clipped)."""
    d2 = x @ y.T
    d2 *= -2.0
    d2 += xx[:, None]
    d2 += yy[None, :]
    return d2


def _tolerance(x: np.ndarray) -> float:
    """Per-unit-norm bound on ``|blas - exact|`` of a squared distance (times ``|a|^2 + |b|^2``)."""
    return _SAFETY * max(1, x.shape[1]) * np.finfo(np.float64).eps


def condensed(
    x: np.ndarray, metric: Metric = "euclidean", method: Method = "exact", block: int | None = None
) -> np.ndarray:
    """The ``N (N - 1) / 2`` distances ``d(i, j)``, ``i < j``, in ``pdist`` order.

    Args:
        x: ``(N, ...)`` descriptors (flattened per row).
        metric: ``euclidean`` or ``cityblock``.
        method: ``exact`` (``cdist``: every value equals the dense matrix's entry), ``blas``
            (Euclidean by matrix products) or ``auto`` (:func:`resolve_method`).
        block: rows per block (None: :data:`BLOCK`).

    Returns:
        float64 array; memory ``4 N^2`` bytes (400 MB at N = 10,000).
    """
    z = _as_2d(x)
    n = len(z)
    kind = resolve_method(method, n, metric)
    out = np.empty(n * (n - 1) // 2, dtype=np.float64)
    sq = np.einsum("ij,ij->i", z, z) if kind == "blas" else None
    for a, b in row_blocks(n, block):
        if kind == "exact":
            d = cdist(z[a:b], z[a:], metric=metric)
        else:
            d = _sq_blas(z[a:b], z[a:], sq[a:b], sq[a:])
            np.maximum(d, 0.0, out=d)
            np.sqrt(d, out=d)
        for i in range(a, b):
            start = i * n - i * (i + 1) // 2
            out[start:start + n - i - 1] = d[i - a, i - a + 1:]
    return out


def _offsets(n: int) -> np.ndarray:
    i = np.arange(n, dtype=np.int64)
    return i * n - i * (i + 1) // 2


def condensed_rows(cond: np.ndarray, n: int, rows: np.ndarray | range) -> np.ndarray:
    """Rows of the dense matrix of ``cond`` (``(len(rows), N)``, zero diagonal), in index order."""
    rows = np.asarray(rows, dtype=np.int64)
    if cond.size == 0:  # one case: its own distance only
        return np.zeros((len(rows), n))
    off = _offsets(n)
    j = np.arange(n, dtype=np.int64)
    i = rows[:, None]
    lo, hi = np.minimum(i, j[None, :]), np.maximum(i, j[None, :])
    idx = off[lo] + hi - lo - 1
    out = cond[np.where(i == j[None, :], 0, idx)]
    out[i == j[None, :]] = 0.0
    return out


def _exact_pairs(z: np.ndarray, rows: np.ndarray, cols: np.ndarray, metric: Metric) -> np.ndarray:
    """``cdist`` values of the pairs ``(rows[k], cols[k])`` (grouped by row: one call per row)."""
    out = np.empty(len(rows), dtype=np.float64)
    if not len(rows):
        return out
    order = np.argsort(rows, kind="stable")
    r_sorted = rows[order]
    bounds = np.flatnonzero(np.diff(r_sorted)) + 1
    for part in np.split(order, bounds):
        i = int(rows[part[0]])
        out[part] = cdist(z[i:i + 1], z[cols[part]], metric=metric)[0]
    return out


def knn(
    x: np.ndarray, k: int, metric: Metric = "euclidean", block: int | None = None, margin: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest OTHER rows of every row, with their exact ``cdist`` distances.

    Euclidean: each block is screened by matrix products; the ``k + margin`` closest candidates
    of a row are recomputed with ``cdist``, and a row whose screening cannot certify that no
    other row is closer than its ``k``-th (a near tie within the rounding bound) is recomputed
    whole. Cityblock: blocks of ``cdist``. Either way the distances equal the dense matrix's.

    Returns:
        ``(index (N, k), distance (N, k))``, each row sorted by increasing distance (among
        equal distances the order is unspecified); ``k`` is clipped to ``N - 1``.
    """
    z = _as_2d(x)
    n = len(z)
    k = max(0, min(int(k), n - 1))
    index = np.zeros((n, k), dtype=np.int64)
    dist = np.zeros((n, k), dtype=np.float64)
    if k == 0:
        return index, dist
    m = min(n - 1, k + margin)
    sq = np.einsum("ij,ij->i", z, z)
    tol = _tolerance(z)
    sq_max = float(sq.max())
    for a, b in row_blocks(n, block):
        rows = np.arange(a, b)
        if metric == "euclidean":
            d2 = _sq_blas(z[a:b], z, sq[a:b], sq)
        else:
            d2 = cdist(z[a:b], z, metric=metric)
        d2[rows - a, rows] = np.inf
        cand = np.argpartition(d2, m - 1, axis=1)[:, :m] if m < n else np.argsort(d2, axis=1)[:, :m]
        if metric == "euclidean":
            rr = np.repeat(rows, m)
            exact = _exact_pairs(z, rr, cand.ravel(), metric).reshape(len(rows), m)
            # excluded rows have a screened value >= the largest candidate's
            floor = np.take_along_axis(d2, cand, axis=1).max(axis=1) if m < n - 1 else None
        else:
            exact = np.take_along_axis(d2, cand, axis=1)
            floor = None
        order = np.argsort(exact, axis=1, kind="stable")[:, :k]
        index[a:b] = np.take_along_axis(cand, order, axis=1)
        dist[a:b] = np.take_along_axis(exact, order, axis=1)
        if floor is None:
            continue
        # certified when every excluded row is farther (squared, minus the rounding bound)
        kth = dist[a:b, -1] ** 2
        doubtful = np.flatnonzero(floor - tol * (sq[a:b] + sq_max) <= kth)
        for r in doubtful:
            i = a + int(r)
            full = cdist(z[i:i + 1], z, metric=metric)[0]
            full[i] = np.inf
            o = np.argsort(full, kind="stable")[:k]
            index[i], dist[i] = o, full[o]
    return index, dist


def radius_graph(
    x: np.ndarray, radius: float, metric: Metric = "euclidean", block: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Every pair within ``radius`` (``d <= radius``, a row with itself included), as CSR.

    The decision ``cdist(i, j) <= radius`` is the dense matrix's, exactly: Euclidean blocks are
    screened by matrix products and the pairs within the rounding bound of the radius are
    recomputed with ``cdist``.

    Returns:
        ``(indptr (N + 1,), indices)``: the neighbours of row ``i`` are
        ``indices[indptr[i]:indptr[i + 1]]``, increasing. The graph is symmetric.
    """
    z = _as_2d(x)
    n = len(z)
    sq = np.einsum("ij,ij->i", z, z)
    tol = _tolerance(z)
    r2 = float(radius) * float(radius)
    parts: list[np.ndarray] = []
    counts = np.zeros(n, dtype=np.int64)
    for a, b in row_blocks(n, block):
        rows = np.arange(a, b)
        if metric == "euclidean":
            d2 = _sq_blas(z[a:b], z, sq[a:b], sq)
            slack = tol * (sq[a:b, None] + sq[None, :])
            sure = d2 < r2 - slack
            maybe = np.nonzero(~sure & (d2 <= r2 + slack))
            sure[rows - a, rows] = True  # d(i, i) = 0 <= radius
            if len(maybe[0]):
                ri, cj = maybe[0] + a, maybe[1]
                keep = _exact_pairs(z, ri, cj, metric) <= radius
                sure[maybe[0][keep], cj[keep]] = True
            inside = sure
        else:
            inside = cdist(z[a:b], z, metric=metric) <= radius
        rr, cc = np.nonzero(inside)
        counts[a:b] = np.bincount(rr, minlength=b - a)
        parts.append(cc.astype(np.int32 if n < 2**31 else np.int64))
    indptr = np.concatenate([[0], np.cumsum(counts)])
    indices = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    return indptr, indices
