"""Coverage selection: ProbCover greedy maximum coverage and its soft version, MaxHerding.

ALGORITHMS.md section 17. Sources:

* ProbCover: O. Yehuda, A. Dekel, G. Hacohen, D. Weinshall, "Active Learning Through a Covering
  Lens", NeurIPS 2022 (arXiv 2205.11320; reference code ``avihu111/TypiClust``,
  ``deep-al/pycls/al/prob_cover.py``, read for understanding only). Graph with an edge
  ``i -> j`` when ``||z_i - z_j|| <= delta``; edges into a case already covered by a labelled
  case are removed; repeatedly take the case with the most remaining out-edges and remove the
  edges into its ball. Their ``delta`` is the largest radius keeping k-means cluster purity
  >= 0.95; here (ALGORITHMS §17 decision) ``delta = radius_scale x`` the median
  nearest-neighbour distance of the pool (default 2), or an absolute ``radius``.
* MaxHerding: W. Bae, J. Noh, D. J. Sutherland, "Generalized Coverage for More Robust
  Low-Budget Active Learning", ECCV 2024 (arXiv 2407.12212). Kernel
  ``k(i, j) = exp(-||z_i - z_j||^2 / (2 sigma^2))``, ``sigma`` = the median pairwise distance;
  gain of x = ``sum_j max(0, k(x, j) - max_{l in L} k(l, j))``; take the argmax, add it to L,
  repeat. No hard radius, so the gain is never zero for every case.

Both rank the whole unlabelled pool greedily (the first ``B`` of the order are the batch), so
``sequential`` (one pick per stride, the default) and ``one_off`` give the same picks whenever
the descriptor is static (``density``, or the source model's embedding as kept here).

Scaling (issue 29): the dense forms :func:`probcover_order` and :func:`herding_order` (an
``(N, N)`` matrix, and every greedy step touching all of it: ``O(N^3)`` for a full ranking) are
kept as the reference; the strategies run :func:`probcover_order_graph` (the ``delta``-balls as
a sparse graph from :func:`~lightning_ada.active.pairwise.radius_graph`, gains updated as cases
get covered: ``O(edges)``) and :func:`herding_order_lazy` (the same greedy with lazy gain
evaluation, exact because the gains only fall as the coverage grows; kernel rows rebuilt from
the ``N (N - 1) / 2`` distances), which give the same order. ProbCover's distances are exactly
the dense ``cdist`` ones at any pool size. MaxHerding is quadratic by definition (its bandwidth
is the median of every pairwise distance and a gain sums over the whole pool); its distances
are ``cdist``'s up to :data:`~lightning_ada.active.pairwise.EXACT_MAX` cases and matrix products
above (``distances: auto``; ``exact`` keeps ``cdist`` at any size).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from lightning_ada.active.descriptors import DescriptorKind, PoolDescriptors
from lightning_ada.active.pairwise import Method, condensed, condensed_rows, knn, radius_graph
from lightning_ada.active.strategies.base import QueryContext, Scored, Strategy, in_order

__all__ = [
    "CoverageStrategy",
    "MaxHerdingStrategy",
    "herding_gains",
    "herding_order",
    "herding_order_lazy",
    "probcover_order",
    "probcover_order_graph",
]


def median_nn_distance(dist: np.ndarray) -> float:
    """Median over cases of the distance to the nearest other case (0.0 when N < 2)."""
    if len(dist) < 2:
        return 0.0
    d = np.array(dist, dtype=np.float64)
    np.fill_diagonal(d, np.inf)
    return float(np.median(d.min(axis=1)))


def median_nn_of(z: np.ndarray) -> float:
    """:func:`median_nn_distance` of the Euclidean distances between the rows of ``z``, from
    the exact nearest neighbours (:func:`~lightning_ada.active.pairwise.knn`), no ``(N, N)``."""
    if len(z) < 2:
        return 0.0
    return float(np.median(knn(z, 1)[1][:, 0]))


def probcover_order(
    dist: np.ndarray, labelled: np.ndarray, delta: float, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """Greedy maximum coverage over the ``delta``-balls (ProbCover).

    Args:
        dist: ``(N, N)`` case distances.
        labelled: ``(N,)`` bool, the labelled cases (their balls are covered from the start).
        delta: ball radius (``d <= delta``; a case is in its own ball).
        rng: draws the order of the cases left once nothing uncovered remains.

    Returns:
        ``(order, gains)``: every unlabelled index, best first, and the number of newly covered
        cases each one added when it was taken (0 for the random tail).
    """
    ball = np.asarray(dist) <= delta  # ball[i, j]: i covers j
    covered = ball[labelled].any(axis=0)
    left = [i for i in range(len(ball)) if not labelled[i]]
    order, gains = [], []
    while left:
        gain = ball[left][:, ~covered].sum(axis=1)
        best = int(np.argmax(gain))  # first of the ties: indices are in case-id order
        if gain[best] == 0:
            break
        i = left.pop(best)
        order.append(i)
        gains.append(int(gain[best]))
        covered |= ball[i]
    tail = [left[k] for k in rng.permutation(len(left))]
    return order + tail, gains + [0] * len(tail)


def kernel_matrix(dist: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian kernel ``exp(-d^2 / (2 sigma^2))``; ``sigma <= 0`` gives the identity."""
    d = np.asarray(dist, dtype=np.float64)
    if sigma <= 0:
        return (d == 0).astype(np.float64)
    return np.exp(-(d**2) / (2.0 * sigma**2))


def herding_gains(kernel: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Soft-coverage gain of every case: ``sum_j max(0, k(x, j) - coverage_j)``.

    Args:
        kernel: ``(N, N)`` kernel matrix.
        coverage: ``(N,)`` current coverage ``max_{l in L} k(l, j)`` (0 with no labelled case).
    """
    return np.clip(kernel - coverage[None, :], 0.0, None).sum(axis=1)


def herding_order(kernel: np.ndarray, labelled: np.ndarray) -> tuple[list[int], list[float]]:
    """Greedy MaxHerding over the whole unlabelled pool.

    Returns:
        ``(order, gains)``: every unlabelled index, best first, and its gain when taken.
    """
    k = np.asarray(kernel, dtype=np.float64)
    coverage = k[labelled].max(axis=0) if labelled.any() else np.zeros(len(k))
    left = [i for i in range(len(k)) if not labelled[i]]
    order, gains = [], []
    while left:
        gain = herding_gains(k[left], coverage)
        best = int(np.argmax(gain))
        i = left.pop(best)
        order.append(i)
        gains.append(float(gain[best]))
        coverage = np.maximum(coverage, k[i])
    return order, gains


def probcover_order_graph(
    indptr: np.ndarray, indices: np.ndarray, labelled: np.ndarray, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """:func:`probcover_order` on the ``delta``-balls given as a symmetric CSR graph.

    The same order and gains (first of the ties = lowest index; the same random tail): the gain
    of a case is kept up to date by subtracting one from every ball that holds a newly covered
    case, so the work is the number of edges, not ``N^2`` per step.
    """
    n = len(labelled)
    degree = np.diff(indptr)

    def ball(i: int) -> np.ndarray:
        return indices[indptr[i]:indptr[i + 1]]

    covered = np.zeros(n, dtype=bool)
    for i in np.flatnonzero(labelled):
        covered[ball(int(i))] = True
    gain = degree.astype(np.int64)
    done = np.flatnonzero(covered)
    if done.size:
        gain -= _ball_counts(indptr, indices, done, n)
    gain[labelled] = -1
    order, gains = [], []
    while True:
        best = int(np.argmax(gain))
        if gain[best] <= 0:
            break
        order.append(best)
        gains.append(int(gain[best]))
        new = ball(best)
        new = new[~covered[new]]
        covered[new] = True
        gain -= _ball_counts(indptr, indices, new, n)
        gain[best] = -1  # taken (and labelled) cases stay below 0 whatever is subtracted
    taken = np.zeros(n, dtype=bool)
    taken[order] = True
    left = [i for i in range(n) if not labelled[i] and not taken[i]]
    tail = [left[k] for k in rng.permutation(len(left))]
    return order + tail, gains + [0] * len(tail)


def _ball_counts(indptr: np.ndarray, indices: np.ndarray, cases: np.ndarray, n: int) -> np.ndarray:
    """How many of ``cases`` each ball holds (the graph is symmetric: the balls holding ``j``
    are the neighbours of ``j``)."""
    if not len(cases):
        return np.zeros(n, dtype=np.int64)
    parts = [indices[indptr[j]:indptr[j + 1]] for j in cases]
    return np.bincount(np.concatenate(parts), minlength=n)


#: :func:`herding_order_lazy` keeps the whole kernel in memory up to this many bytes (N = 11,585
#: in float64) and rebuilds its rows from the condensed distances above
KERNEL_BYTES = 2**30


def herding_order_lazy(
    cond: np.ndarray, n: int, sigma: float, labelled: np.ndarray, block: int = 512,
    batch: int = 16,
) -> tuple[list[int], list[float]]:
    """:func:`herding_order` of ``kernel_matrix(squareform(cond), sigma)``, lazily.

    Every gain is first computed once; then each step recomputes the stale gains at the top of
    a heap (up to ``batch`` of them at once) until a fresh gain leads, and takes that case
    (ties: lowest index, as ``argmax``). Exact: the coverage only grows, so a gain computed
    earlier is an upper bound of the current one, in floating point too (``max(0, k - c)`` and a
    sum in a fixed order are monotone), and a recomputed gain is the very number the dense
    greedy computes (the same row sum). A gain of 0 stays 0. The kernel is kept whole up to
    :data:`KERNEL_BYTES` (800 MB at N = 10,000), else its rows are rebuilt from ``cond``.

    Args:
        cond: the ``N (N - 1) / 2`` distances (``pdist`` order).
        n: ``N``.
        sigma: kernel width (:func:`kernel_matrix`).
        labelled: ``(N,)`` bool.
        block: rows built at once (memory ``block x N`` float64).
        batch: stale gains recomputed together.
    """
    dense: np.ndarray | None = None
    if 8 * n * n <= KERNEL_BYTES:
        dense = np.empty((n, n))
        for a in range(0, n, block):
            b = min(n, a + block)
            dense[a:b] = kernel_matrix(condensed_rows(cond, n, range(a, b)), sigma)

    def rows(idx: np.ndarray | range | list[int]) -> np.ndarray:
        if dense is not None:
            return dense[np.asarray(idx, dtype=np.int64)]
        return kernel_matrix(condensed_rows(cond, n, idx), sigma)

    coverage = np.zeros(n)
    lab = np.flatnonzero(labelled)
    for a in range(0, lab.size, block):
        coverage = np.maximum(coverage, rows(lab[a:a + block]).max(axis=0))
    left = np.flatnonzero(~labelled)
    bound = np.empty(n)
    for a in range(0, left.size, block):
        part = left[a:a + block]
        bound[part] = herding_gains(rows(part), coverage)
    step = 0
    stamp = np.zeros(n, dtype=np.int64)  # the step a gain was computed at
    heap = [(-float(bound[i]), int(i)) for i in left]
    heapq.heapify(heap)
    order, gains = [], []
    while heap:
        neg, i = heap[0]
        if stamp[i] != step and neg != 0.0:  # stale and possibly positive: recompute a batch
            stale = [heapq.heappop(heap)[1]]
            while heap and len(stale) < batch and stamp[heap[0][1]] != step and heap[0][0] != 0.0:
                stale.append(heapq.heappop(heap)[1])
            fresh = herding_gains(rows(stale), coverage)
            for j, g in zip(stale, fresh.tolist()):
                stamp[j] = step
                heapq.heappush(heap, (-g, j))
            continue
        heapq.heappop(heap)
        order.append(i)
        gains.append(-neg + 0.0)
        coverage = np.maximum(coverage, rows([i])[0])
        step += 1
    return order, gains


class _CoverageBase(Strategy):
    """Shared plumbing: descriptors of the whole pool, labelled mask, greedy order -> scores."""

    per_case = False

    def __init__(
        self,
        descriptor: DescriptorKind,
        schedule: Literal["sequential", "one_off"],
        density_resize: int | None,
        n_quantiles: int,
        density_input: Literal["network", "raw"] = "network",
    ) -> None:
        self.schedule = schedule
        self.descriptors = PoolDescriptors(
            descriptor, {"resize": density_resize, "n_quantiles": n_quantiles}, density_input
        )
        self.needs = frozenset({"embedding"}) if self.descriptors.needs_embedding else frozenset()

    def _pool(self, ctx: QueryContext) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``(ids sorted, (N, d) descriptors, (N,) labelled mask)`` over the whole pool."""
        ids = sorted(set(ctx.pool) | set(ctx.unlabeled))
        cache = ctx.run_dir / "cache" if ctx.run_dir is not None else None
        t0 = time.perf_counter()
        self.descriptors.ensure(ids, ctx.image, ctx.predict, cache, self.progress, ctx.raw_image)
        self.timings = {"descriptors": time.perf_counter() - t0}
        return ids, self.descriptors.matrix(ids), labelled_mask(ids, ctx.unlabeled)

    def state_dict(self) -> dict[str, Any]:
        return {"descriptors": self.descriptors.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "descriptors" in state:
            self.descriptors.load_state_dict(state["descriptors"])


class CoverageStrategy(_CoverageBase):
    """ProbCover: greedy maximum coverage of ``delta``-balls on the case graph (module doc).

    Args:
        descriptor: case descriptor: ``density`` (image-only, sees scanner intensity),
            ``embedding`` (source model's pooled bottleneck) or ``both``.
        radius: absolute ball radius ``delta`` (in descriptor units); None: the scale rule.
        radius_scale: ``delta = radius_scale x`` median nearest-neighbour distance of the pool.
        schedule: ``sequential`` (one pick per stride) or ``one_off`` (the budget at epoch 0).
        density_resize: cube side images are resized to for the density descriptor (None:
            native up to 64).
        n_quantiles: quantiles summarising each PCA score distribution (density descriptor).
        density_input: the density descriptor reads the ``network`` input (z-scored) or the
            ``raw`` images as stored (sees scanner intensity shifts).
    """

    name = "coverage"
    display_name = "ProbCover (coverage)"
    table_order = 95

    def __init__(
        self,
        descriptor: DescriptorKind = "density",
        radius: float | None = None,
        radius_scale: float = 2.0,
        schedule: Literal["sequential", "one_off"] = "sequential",
        density_resize: int | None = None,
        n_quantiles: int = 1024,
        density_input: Literal["network", "raw"] = "network",
    ) -> None:
        if (radius is not None and radius < 0) or radius_scale <= 0:
            raise ValueError(
                f"coverage needs radius >= 0 and radius_scale > 0; got {radius}, {radius_scale}"
            )
        super().__init__(descriptor, schedule, density_resize, n_quantiles, density_input)
        self.radius, self.radius_scale = radius, float(radius_scale)

    def score(self, ctx: QueryContext) -> list[Scored]:
        ids, z, labelled = self._pool(ctx)
        t0 = time.perf_counter()
        delta = self.radius
        if delta is None:
            delta = self.radius_scale * median_nn_of(z)
        indptr, indices = radius_graph(z, delta)
        order, gains = probcover_order_graph(indptr, indices, labelled, ctx.rng())
        self.timings["selection"] = time.perf_counter() - t0
        info = {ids[i]: {"coverage_gain": float(g), "radius": float(delta)}
                for i, g in zip(order, gains)}
        return in_order([ids[i] for i in order], info.__getitem__)


class MaxHerdingStrategy(_CoverageBase):
    """MaxHerding: greedy soft coverage with a Gaussian kernel, no hard radius (module doc).

    Args:
        descriptor: case descriptor: ``density`` (image-only), ``embedding`` (the source
            model's pooled bottleneck) or ``both`` (blocks scaled to median distance 1).
        bandwidth: absolute kernel width ``sigma``; None: ``bandwidth_scale x`` the median
            pairwise distance of the pool.
        bandwidth_scale: see ``bandwidth``.
        schedule: ``sequential`` (one pick per stride) or ``one_off`` (the budget at epoch 0).
        density_resize: cube side images are resized to for the density descriptor (None:
            native up to 64).
        n_quantiles: quantiles summarising each PCA score distribution (density descriptor).
        density_input: the density descriptor reads the ``network`` input (z-scored) or the
            ``raw`` images as stored (sees scanner intensity shifts).
        distances: ``exact`` (``cdist``), ``blas`` (matrix products, ~10x faster on long
            descriptors, equal within rounding) or ``auto`` (exact up to 2,000 cases).
    """

    name = "maxherding"
    display_name = "MaxHerding (soft coverage)"
    table_order = 96

    def __init__(
        self,
        descriptor: DescriptorKind = "density",
        bandwidth: float | None = None,
        bandwidth_scale: float = 1.0,
        schedule: Literal["sequential", "one_off"] = "sequential",
        density_resize: int | None = None,
        n_quantiles: int = 1024,
        density_input: Literal["network", "raw"] = "network",
        distances: Method = "auto",
    ) -> None:
        if (bandwidth is not None and bandwidth <= 0) or bandwidth_scale <= 0:
            raise ValueError(
                f"maxherding needs a positive bandwidth; got {bandwidth}, {bandwidth_scale}"
            )
        if distances not in ("auto", "exact", "blas"):
            raise ValueError(f"distances must be auto, exact or blas; got {distances!r}")
        super().__init__(descriptor, schedule, density_resize, n_quantiles, density_input)
        self.bandwidth, self.bandwidth_scale = bandwidth, float(bandwidth_scale)
        self.distances = distances

    def sigma(self, cond: np.ndarray) -> float:
        """The kernel width used for the condensed distances ``cond`` (``pdist`` order)."""
        if self.bandwidth is not None:
            return self.bandwidth
        return self.bandwidth_scale * (float(np.median(cond)) if cond.size else 0.0)

    def _condensed(self, z: np.ndarray) -> np.ndarray:
        return condensed(z, "euclidean", self.distances)

    def score(self, ctx: QueryContext) -> list[Scored]:
        ids, z, labelled = self._pool(ctx)
        t0 = time.perf_counter()
        cond = self._condensed(z)
        sigma = self.sigma(cond)
        order, gains = herding_order_lazy(cond, len(ids), sigma, labelled)
        self.timings["selection"] = time.perf_counter() - t0
        info = {ids[i]: {"coverage_gain": g, "bandwidth": sigma} for i, g in zip(order, gains)}
        return in_order([ids[i] for i in order], info.__getitem__)


def labelled_mask(ids: Sequence[str], unlabeled: Sequence[str]) -> np.ndarray:
    """``(N,)`` bool: the cases of ``ids`` that are not in ``unlabeled``."""
    unl = set(unlabeled)
    return np.array([c not in unl for c in ids])
