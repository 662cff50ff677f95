"""UGTST selection: GAUA uncertainty, top C*B, k-means representatives (ALGORITHMS.md section 8)."""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np
import torch

from lightning_ada.active.stats import gaua
from lightning_ada.active.strategies.base import QueryContext, Scored, Strategy, in_order


class UGTSTStrategy(Strategy):
    """GAUA top ``C*B`` cases, k-means (k = B) on their embeddings, nearest to each centroid (§8).

    3-D adaptation of the slice-level original (§8 "3D adaptation"): GAUA per case over all
    voxels (:func:`gaua`, one plain forward pass; the original's 8-fold intensity TTA only makes
    pseudo-labels, which the seed-000 comparison does not train on), candidates = the top
    ``C * B`` unlabeled cases by GAUA (C = 4), k-means (k = B, k-means++, ``n_init=10``, seeded by
    ``ctx.rng()``) on their B4 embeddings (``ctx.predict``'s pooled bottleneck), and in each
    cluster the member nearest its centroid (members = candidates whose nearest centroid it is).
    A cluster left empty (duplicate embeddings) is filled by the most uncertain unpicked
    candidate. One-off (§13): the callback takes ``rank(ctx)[:budget]``.

    The returned ranking is the B representatives by decreasing GAUA, then every other case by
    decreasing GAUA; scores are strictly decreasing positions (``n - i``), the raw criteria are
    in ``factors``.

    Args:
        capacity: C, candidates per budget unit.
        bins: bins of the entropy histogram.
    """

    name = "ugtst"
    display_name = "UGTST (MICCAI'24)"
    table_order = 70
    schedule = "one_off"
    needs = frozenset({"embedding"})

    def __init__(self, capacity: int = 4, bins: int = 100) -> None:
        if capacity < 1 or bins < 2:
            raise ValueError(f"ugtst needs capacity >= 1 and bins >= 2; got {capacity}, {bins}")
        self.capacity, self.bins = int(capacity), int(bins)

    def score(self, ctx: QueryContext) -> list[Scored]:
        inference, statistics = 0.0, 0.0
        unc: dict[str, float] = {}
        tau: dict[str, float] = {}
        emb: dict[str, np.ndarray] = {}
        ids: Any = ctx.unlabeled
        if self.progress:
            from tqdm.auto import tqdm

            ids = tqdm(ctx.unlabeled, desc="ugtst gaua", unit="case")
        with torch.no_grad():
            for cid in ids:
                t0 = time.perf_counter()
                probs, e = ctx.predict(ctx.image(cid))
                t1 = time.perf_counter()
                if e is None or e.numel() == 0:
                    raise ValueError("ugtst needs case embeddings (ctx.predict must return one)")
                unc[cid], tau[cid] = gaua(probs, self.bins)
                emb[cid] = e.detach().double().cpu().numpy().reshape(-1)
                del probs
                inference += t1 - t0
                statistics += time.perf_counter() - t1

        by_unc = sorted(unc, key=lambda c: (-unc[c], c))
        b = min(self.budget, len(by_unc))
        candidates = by_unc[: min(len(by_unc), self.capacity * b)]
        t0 = time.perf_counter()
        picks, cluster, dist = self._representatives(candidates, emb, b, ctx)
        self.timings = {
            "inference": inference,
            "statistics": statistics,
            "kmeans": time.perf_counter() - t0,
        }
        chosen = sorted(picks, key=lambda c: (-unc[c], c))
        picked = set(picks)
        order = chosen + [c for c in by_unc if c not in picked]
        cand = set(candidates)
        return in_order(
            order,
            lambda cid: {
                "gaua": unc[cid],
                "tau": tau[cid],
                "candidate": float(cid in cand),
                "cluster": float(cluster.get(cid, -1)),
                "centroid_distance": float(dist.get(cid, math.nan)),
            },
        )

    @staticmethod
    def _representatives(
        candidates: list[str], emb: dict[str, np.ndarray], k: int, ctx: QueryContext
    ) -> tuple[list[str], dict[str, int], dict[str, float]]:
        """k-means on the candidates' embeddings; the member nearest each centroid."""
        if k == 0:
            return [], {}, {}
        from sklearn.cluster import KMeans

        x = np.stack([emb[c] for c in candidates])
        seed = int(ctx.rng().integers(2**31 - 1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate points -> fewer distinct clusters
            km = KMeans(n_clusters=k, init="k-means++", n_init=10, random_state=seed).fit(x)
        d = km.transform(x)  # (n, k) distances to the centroids
        nearest = d.argmin(1)
        cluster = {c: int(nearest[i]) for i, c in enumerate(candidates)}
        dist = {c: float(d[i, nearest[i]]) for i, c in enumerate(candidates)}
        picks: list[str] = []
        for j in range(k):
            members = [i for i in range(len(candidates)) if nearest[i] == j]
            if members:
                best = min(members, key=lambda i: (d[i, j], candidates[i]))
                picks.append(candidates[best])
        for c in candidates:  # candidates are in decreasing GAUA: fill empty clusters
            if len(picks) >= k:
                break
            if c not in picks:
                picks.append(c)
        return picks, cluster, dist
