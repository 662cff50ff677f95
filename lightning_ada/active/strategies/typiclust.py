"""TypiClust: the most typical case of the largest cluster that holds no labelled case.

ALGORITHMS.md section 17. Source: G. Hacohen, A. Dekel, D. Weinshall, "Active Learning on a
Budget: Opposite Strategies Suit High and Low Budgets", ICML 2022 (arXiv 2202.02794; reference
code ``avihu111/TypiClust``, read for understanding only).

Rule: k-means of the pool descriptors into ``|L| + B`` clusters (``B`` = the cases this round
selects: the whole budget for ``one_off``, 1 for ``sequential``); then, B times, take the
cluster with the fewest labelled (or already picked) cases, the largest among those, and in it
the case of highest typicality ``1 / mean distance to its K nearest cluster members``,
``K = min(20, |cluster| // 2)`` (at least 1; a cluster of one case is its own most typical).
Clusters smaller than ``min_cluster_size`` come after every larger one (the reference code
uses 5 on pools of thousands; default 1 here, where pools hold 6-80 cases). After the B picks,
the other unlabelled cases follow by pool typicality (K over the whole pool) so that every case
is ranked.

Scaling (issue 29): the typicality needs only the ``K`` nearest neighbours of a case, taken
from :func:`~lightning_ada.active.pairwise.knn` (exactly the dense ``cdist`` distances, no
``(N, N)`` matrix; :func:`typicality` keeps the dense form). k-means is the published
``KMeans(n_init=10)`` up to 2,000 cases and ``MiniBatchKMeans`` above (``kmeans: auto``; its
clusters, hence its picks, may differ: ``kmeans: full`` keeps the published one at any size).
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans

from lightning_ada.active.descriptors import DescriptorKind
from lightning_ada.active.pairwise import EXACT_MAX, knn
from lightning_ada.active.strategies.base import QueryContext, Scored, in_order
from lightning_ada.active.strategies.coverage import _CoverageBase

__all__ = ["TypiClustStrategy", "typicality", "typicality_of", "typiclust_picks"]

KMeansKind = Literal["auto", "full", "minibatch"]


def typicality(dist: np.ndarray, k_max: int = 20) -> np.ndarray:
    """Typicality of every row of a ``(n, n)`` distance matrix (module doc).

    Returns:
        ``(n,)`` values ``1 / mean distance to the K nearest others`` (``inf`` for a zero
        mean distance, ``1.0`` for a single case).
    """
    n = len(dist)
    if n == 1:
        return np.ones(1)
    k = max(1, min(k_max, n // 2))
    d = np.sort(np.asarray(dist, dtype=np.float64), axis=1)[:, 1 : k + 1]  # skip self
    mean = d.mean(axis=1)
    with np.errstate(divide="ignore"):
        return np.where(mean > 0, 1.0 / mean, np.inf)


def typicality_of(z: np.ndarray, k_max: int = 20) -> np.ndarray:
    """:func:`typicality` of the Euclidean distances between the rows of ``z``, from the exact
    ``K`` nearest neighbours (the same values, sorted as the dense form sorts them)."""
    n = len(z)
    if n == 1:
        return np.ones(1)
    k = max(1, min(k_max, n // 2))
    mean = knn(z, k)[1].mean(axis=1)
    with np.errstate(divide="ignore"):
        return np.where(mean > 0, 1.0 / mean, np.inf)


def kmeans_labels(z: np.ndarray, n_clusters: int, seed: int, kind: KMeansKind = "auto") -> np.ndarray:
    """Cluster labels: ``KMeans(n_init=10)`` (``full``; ``auto`` up to 2,000 cases) or
    ``MiniBatchKMeans(n_init=3, batch_size=1024)`` (``minibatch``; ``auto`` above)."""
    if kind not in ("auto", "full", "minibatch"):
        raise ValueError(f"kmeans must be auto, full or minibatch; got {kind!r}")
    if kind == "full" or (kind == "auto" and len(z) <= EXACT_MAX):
        return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit(z).labels_
    mb = MiniBatchKMeans(n_clusters=n_clusters, n_init=3, batch_size=1024, random_state=seed)
    return mb.fit(z).labels_


def typiclust_picks(
    z: np.ndarray,
    labelled: np.ndarray,
    n_picks: int,
    seed: int,
    k_max: int = 20,
    min_cluster_size: int = 1,
    kmeans: KMeansKind = "full",
) -> tuple[list[int], dict[int, dict[str, float]]]:
    """The TypiClust picks.

    Args:
        z: ``(N, d)`` descriptors.
        labelled: ``(N,)`` bool.
        n_picks: ``B``.
        seed: k-means seed.
        k_max: cap of ``K``.
        min_cluster_size: smaller clusters are taken only when no larger one is left.
        kmeans: the clustering (:func:`kmeans_labels`).

    Returns:
        ``(picks, info)``: indices in pick order and, per pick, its cluster size and typicality.
    """
    n = len(z)
    n_clusters = min(n, int(labelled.sum()) + n_picks)
    cluster = kmeans_labels(z, n_clusters, seed, kmeans)
    taken = labelled.copy()
    picks: list[int] = []
    info: dict[int, dict[str, float]] = {}
    for _ in range(min(n_picks, int((~labelled).sum()))):
        cands = []
        for c in range(n_clusters):
            members = np.flatnonzero(cluster == c)
            if (~taken[members]).any():
                small = len(members) < min_cluster_size
                cands.append((small, int(taken[members].sum()), -len(members), c))
        _, _, neg_size, c = min(cands)
        members = np.flatnonzero(cluster == c)
        typ = typicality_of(z[members], k_max)
        typ[taken[members]] = -np.inf
        best = int(members[int(np.argmax(typ))])
        picks.append(best)
        info[best] = {"cluster_size": float(-neg_size), "typicality": float(typ.max())}
        taken[best] = True
    return picks, info


class TypiClustStrategy(_CoverageBase):
    """TypiClust (module doc).

    Args:
        descriptor: case descriptor: ``density`` (image-only), ``embedding`` (the source
            model's pooled bottleneck) or ``both`` (blocks scaled to median distance 1).
        k_max: cap of the typicality neighbourhood ``K`` (paper: 20).
        min_cluster_size: clusters smaller than this are taken last (reference code: 5).
        schedule: ``sequential`` (one pick per stride, ``k = |L| + 1``) or ``one_off``
            (``k = B``, the whole budget at epoch 0).
        density_resize: cube side images are resized to for the density descriptor (None:
            native up to 64).
        n_quantiles: quantiles summarising each PCA score distribution (density descriptor).
        density_input: the density descriptor reads the ``network`` input (z-scored) or the
            ``raw`` images as stored (sees scanner intensity shifts).
        kmeans: ``full`` (the published ``KMeans(n_init=10)``), ``minibatch`` or ``auto`` (full
            up to 2,000 cases, minibatch above).
    """

    name = "typiclust"
    display_name = "TypiClust"
    table_order = 97

    def __init__(
        self,
        descriptor: DescriptorKind = "density",
        k_max: int = 20,
        min_cluster_size: int = 1,
        schedule: Literal["sequential", "one_off"] = "sequential",
        density_resize: int | None = None,
        n_quantiles: int = 1024,
        density_input: Literal["network", "raw"] = "network",
        kmeans: KMeansKind = "auto",
    ) -> None:
        if k_max < 1:
            raise ValueError(f"typiclust needs k_max >= 1, got {k_max}")
        if kmeans not in ("auto", "full", "minibatch"):
            raise ValueError(f"typiclust kmeans must be auto, full or minibatch; got {kmeans!r}")
        super().__init__(descriptor, schedule, density_resize, n_quantiles, density_input)
        self.k_max, self.min_cluster_size = int(k_max), int(min_cluster_size)
        self.kmeans = kmeans

    def score(self, ctx: QueryContext) -> list[Scored]:
        ids, z, labelled = self._pool(ctx)
        t0 = time.perf_counter()
        n_picks = self.budget if self.schedule == "one_off" else 1
        picks, info = typiclust_picks(
            z, labelled, n_picks, ctx.seed, self.k_max, self.min_cluster_size, self.kmeans
        )
        pool_typ = typicality_of(z, self.k_max)
        rest = sorted(
            (i for i in np.flatnonzero(~labelled) if i not in picks),
            key=lambda i: (-pool_typ[i], ids[i]),
        )
        order = picks + [int(i) for i in rest]
        factors = {ids[i]: info.get(i, {}) | {"pool_typicality": float(pool_typ[i])} for i in order}
        self.timings["selection"] = time.perf_counter() - t0
        return in_order([ids[i] for i in order], factors.__getitem__)
