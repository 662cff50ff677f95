"""MHPL: neighbour ambient uncertainty + neighbour-diversity relaxation (ALGORITHMS.md section 4).

Wang et al., CVPR'23 ("Minimum Happy Points Learning"), adapted to 3D case-level segmentation:
``NAU_i = NU_i * NA_i`` on cosine similarities of L2-normalised case embeddings, a greedy walk down
the NAU order that skips candidates whose nearest neighbours are already selected (NDR), and the
whole budget chosen once at epoch 0 (``one_off``). Source-free.

Scaling (issue 29): only the ``max(k, n_diversity - 1)`` most similar cases of each case are
used, so the similarities are computed in blocks of rows and each block keeps its top
neighbours (:meth:`MHPLStrategy.neighbourhoods`): memory ``O(block x N)`` instead of the
``(N, N)`` similarity matrix, its copy and an ``(N, N)`` argsort. Pools up to one block
(2,048 cases) compute the similarities in one call, exactly as before.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy.stats import entropy as histogram_entropy
from sklearn.metrics.pairwise import cosine_similarity
from sklearn.preprocessing import normalize

from lightning_ada.active import pairwise
from lightning_ada.active.stats import CaseStats, stream_pool_stats
from lightning_ada.active.strategies.base import QueryContext, Scored, Strategy


def _dominant_class(stats: CaseStats) -> tuple[int, int]:
    """``(dominant predicted foreground class or 0 if none, number of classes)`` of a case."""
    counts = {int(k): v for k, v in stats.volume_per_region.items() if k.isdigit()}
    n_classes = max(counts, default=1) + 1
    if not counts or max(counts.values()) == 0:
        return 0, n_classes
    return max(sorted(counts), key=lambda c: counts[c]), n_classes


class MHPLStrategy(Strategy):
    """MHPL, ALGORITHMS.md section 4 (decision: neighbourhood-averaged uncertainty), one-off.

    With ``f_i`` the L2-normalised B4 embeddings of the target pool, ``sim = cosine_similarity``,
    ``N_k(i)`` the ``k`` most similar *other* cases (``k = min(k, N - 1)``, ties by case id):

    - neighbour uncertainty ``NU_i = mean_{j in {i} + N_k(i)} U_j`` (mean voxel entropy, B2) — the
      §4 decision replacing the label-histogram purity, which is degenerate for binary masks;
      ``purity="label"`` restores the histogram entropy of the dominant predicted classes
      (only meaningful for C > 2; warns otherwise);
    - neighbour affinity ``NA_i = mean_{j in N_k(i)} sim(i, j)``;
    - ``NAU_i = NU_i * NA_i``;
    - NDR: walk down the NAU order (ties by case id) and skip a candidate if one of its
      ``n_diversity - 1`` nearest other cases is already selected (labeled cases count as selected).

    The returned ranking is the greedy selection order (accepted cases, then the skipped ones in
    NAU order), with score ``N - position``, so ``rank(ctx)[:B]`` is the NDR batch for any
    ``B <= #accepted``; the raw NAU, NU, NA and the NDR outcome are in ``factors``. Neighbourhoods
    run over the whole target pool (labeled and unlabeled); only unlabeled cases are ranked.

    Args:
        k: neighbourhood size ``K`` (other cases); 10 (LADA) by default, 20 is the official value.
        n_diversity: ``e_n`` of the NDR, self included (5: four neighbours are checked); 1 turns
            the relaxation off.
        purity: ``uncertainty`` (the §4 decision) or ``label`` (histogram entropy, C > 2).
    """

    name = "mhpl"
    display_name = "MHPL (CVPR'23)"
    table_order = 30
    schedule = "one_off"
    needs = frozenset({"embedding"})

    def __init__(
        self,
        k: int = 10,
        n_diversity: int = 5,
        purity: Literal["uncertainty", "label"] = "uncertainty",
    ) -> None:
        if k < 1 or n_diversity < 1:
            raise ValueError(f"mhpl needs k >= 1 and n_diversity >= 1, got {k}, {n_diversity}")
        if purity not in ("uncertainty", "label"):
            raise ValueError(f"mhpl purity must be 'uncertainty' or 'label', got {purity!r}")
        self.k = int(k)
        self.n_diversity = int(n_diversity)
        self.purity = purity

    @staticmethod
    def _neighbours(sim: np.ndarray, n: int) -> np.ndarray:
        """``(N, n)`` indices of the ``n`` most similar other rows (stable: ties by index); the
        dense reference of :meth:`neighbourhoods`."""
        s = sim.copy()
        np.fill_diagonal(s, -np.inf)
        return np.argsort(-s, axis=1, kind="stable")[:, :n]

    @staticmethod
    def neighbourhoods(
        f: np.ndarray, n: int, block: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most similar other cases of every case (cosine), in blocks of rows.

        Args:
            f: ``(N, d)`` L2-normalised embeddings.
            n: neighbours wanted (clipped to ``N - 1``).
            block: rows per block (None: :data:`~lightning_ada.active.pairwise.BLOCK`); a pool
                of at most ``block`` cases is one ``cosine_similarity(f)`` call, as the dense
                form.

        Returns:
            ``(index (N, n'), similarity (N, n'))``: the first ``n'`` columns of the dense
            form's stable argsort (ties by index) and their similarities.
        """
        total = len(f)
        m = max(0, min(n, total - 1))
        index = np.zeros((total, m), dtype=np.int64)
        value = np.zeros((total, m), dtype=np.float64)
        if m == 0:
            return index, value
        for a, b in pairwise.row_blocks(total, block):
            sim = cosine_similarity(f) if b - a == total else cosine_similarity(f[a:b], f)
            rows = np.arange(b - a)
            s = -sim
            s[rows, rows + a] = np.inf  # self last
            part = np.argpartition(s, m - 1, axis=1)[:, :m]
            kth = np.take_along_axis(s, part, axis=1).max(axis=1)
            ties = (s <= kth[:, None]).sum(axis=1) > m  # more than m at the boundary value
            key = np.take_along_axis(s, part, axis=1)
            order = np.lexsort((part, key), axis=1)
            idx = np.take_along_axis(part, order, axis=1)
            for r in np.flatnonzero(ties):  # the stable argsort of that row
                idx[r] = np.argsort(s[r], kind="stable")[:m]
            index[a:b] = idx
            value[a:b] = np.take_along_axis(sim, idx, axis=1)
        return index, value

    def _purity(self, stats: Sequence[CaseStats], hood: np.ndarray) -> np.ndarray:
        """Per-case neighbourhood purity ``NU`` (or ``NP`` with ``purity="label"``)."""
        if self.purity == "uncertainty":
            u = np.array([s.mean_entropy for s in stats], dtype=np.float64)
            return u[hood].mean(axis=1)
        labels_and_k = [_dominant_class(s) for s in stats]
        labels = np.array([lab for lab, _ in labels_and_k])
        n_classes = max(k for _, k in labels_and_k)
        if n_classes <= 2:
            warnings.warn(
                "mhpl purity='label' on a binary task: every case has the same dominant class, "
                "the purity is degenerate (ALGORITHMS.md section 4)",
                stacklevel=3,
            )
        hist = np.stack([np.bincount(labels[row], minlength=n_classes) for row in hood])
        return np.asarray(histogram_entropy(hist.T), dtype=np.float64)

    def score(self, ctx: QueryContext) -> list[Scored]:
        ids = sorted(set(ctx.pool) | set(ctx.unlabeled))
        t0 = time.perf_counter()
        stats = stream_pool_stats(
            ((cid, ctx.image(cid)) for cid in ids), ctx.predict, ctx.regions, self.progress,
            total=len(ids),
        )
        if any(s.embedding is None for s in stats):
            raise ValueError("mhpl needs case embeddings (B4): predict gave None")
        t1 = time.perf_counter()
        f = normalize(np.stack([np.asarray(s.embedding, dtype=np.float64) for s in stats]))
        n = len(ids)
        k = min(self.k, n - 1)
        others, near = self.neighbourhoods(f, max(k, self.n_diversity - 1, 0))
        hood = np.concatenate([np.arange(n)[:, None], others[:, :k]], axis=1)  # self first
        purity = self._purity(stats, hood)
        affinity = np.ascontiguousarray(near[:, :k]).mean(axis=1) if k else np.ones(n)
        nau = purity * affinity

        unlabeled = set(ctx.unlabeled)
        candidates = [i for i in range(n) if ids[i] in unlabeled]
        order = sorted(candidates, key=lambda i: (-nau[i], ids[i]))
        selected = {i for i in range(n) if ids[i] not in unlabeled}  # labeled = already selected
        n_check = min(self.n_diversity - 1, n - 1)
        accepted, skipped = [], []
        for i in order:
            if any(j in selected for j in others[i, :n_check]):
                skipped.append(i)
            else:
                accepted.append(i)
                selected.add(i)
        self.timings = {"inference": t1 - t0, "neighbourhood": time.perf_counter() - t1}

        key = "nu" if self.purity == "uncertainty" else "np"
        greedy = accepted + skipped
        return [
            Scored(
                ids[i],
                float(len(greedy) - pos),
                {
                    "nau": float(nau[i]),
                    key: float(purity[i]),
                    "na": float(affinity[i]),
                    "entropy": stats[i].mean_entropy,
                    "ndr_skipped": float(pos >= len(accepted)),
                    "position": float(pos),
                },
            )
            for pos, i in enumerate(greedy)
        ]
