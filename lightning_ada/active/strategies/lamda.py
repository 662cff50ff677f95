"""LAMDA: greedy MMD kernel herding with pseudo-label slots (Hwang et al., ECCV'22; ALGORITHMS §7).

Each round the target pool is summarised by prototypes chosen greedily to minimise the MMD
between the prototypes and the pool (RBF kernel on case embeddings). Confident cases and cases
labeled earlier may fill a prototype slot without spending budget. Multi-round (``sequential``):
the first real query of the herd is this round's pick.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np
import torch
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.preprocessing import normalize as l2_normalize
from torch import Tensor

from lightning_ada.active.stats import class_map, stream_pool_stats
from lightning_ada.active.strategies.base import QueryContext, Scored, Strategy


def confidence_gap(probs: Tensor) -> float:
    """Mean of ``p_(1) - p_(2)`` over the predicted-foreground voxels (0 if none), ALGORITHMS §7.

    Args:
        probs: ``(K, H, W, D)`` softmax probabilities, ``K >= 2``.
    """
    p = probs.detach().float()
    top2 = torch.topk(p, 2, dim=0).values
    fg = class_map(p) != 0
    if not bool(fg.any()):
        return 0.0
    return float((top2[0] - top2[1])[fg].double().mean())


class LAMDAStrategy(Strategy):
    """LAMDA selection, ALGORITHMS.md section 7, sequential (one case per stride).

    On the whole target pool ``D_T`` (N cases, labeled ones included) with the RBF kernel
    ``K_ij = exp(-gamma ||z_i - z_j||^2)`` on the B4 embeddings (``gamma = 1/d`` by default), the
    herd starts empty and repeatedly adds the case ``x`` not yet in ``S`` that maximises
    ``J(x) = (2/N) sum_j K(x, x_j) - (2 sum_{s in S} K(x, s) + K(x, x)) / (|S| + 1)``
    (the largest decrease of ``MMD^2(S + {x}, D_T)``; ties by case id). The added case is

    - *free* if labeled earlier (the official code re-herds from scratch each round and lets the
      previously selected samples occupy slots without budget);
    - a *pseudo slot* if unlabeled and confident (confidence gap > ``gap_threshold``; gap = mean
      ``p_(1) - p_(2)`` over its predicted-foreground voxels, 0 if none), while fewer than
      ``cap = int(pseudo_ratio * r * b_r)`` pseudo slots are held (``r`` = 1-based round, as the
      official ``2 * round``; ``b_r = 1`` case per round). Beyond the cap the new case takes a
      pseudo slot and the *oldest* pseudo-slot case is converted into a real query;
    - otherwise a real query.

    Decision (our adaptation): previously labeled cases never count against the cap and are never
    converted (the official code counts them and could re-query a labeled sample). The herd goes on
    until every unlabeled case is a real query or holds a pseudo slot; the ranking is the real
    queries in order, then the remaining pseudo-slot cases (oldest first), with score
    ``n - position``; ``rank(ctx)[0]`` is this round's pick. The herding gain ``J`` when the case
    entered the herd, its step, its confidence gap and its slot type are in ``factors``.
    Label-distribution estimation and source re-weighting are training-time parts of LAMDA and are
    not done here (off in the source-free benchmark, §7).

    Args:
        gamma: RBF width; None = ``1/d``.
        gap_threshold: a case with a larger confidence gap may take a pseudo slot.
        pseudo_ratio: the cap factor (official 2).
        normalize: L2-normalise the embeddings before the kernel (off: the official raw features).
    """

    name = "lamda"
    display_name = "LAMDA (ECCV'22)"
    table_order = 60
    schedule = "sequential"
    needs = frozenset({"embedding"})

    def __init__(
        self,
        gamma: float | None = None,
        gap_threshold: float = 0.8,
        pseudo_ratio: float = 2.0,
        normalize: bool = False,
    ) -> None:
        if pseudo_ratio < 0:
            raise ValueError(f"lamda pseudo_ratio must be >= 0, got {pseudo_ratio}")
        self.gamma = gamma
        self.gap_threshold = float(gap_threshold)
        self.pseudo_ratio = float(pseudo_ratio)
        self.normalize = normalize

    def score(self, ctx: QueryContext) -> list[Scored]:
        ids = sorted(set(ctx.pool) | set(ctx.unlabeled))
        gaps: list[float] = []

        def predict(image: Tensor) -> tuple[Tensor, Tensor | None]:
            probs, emb = ctx.predict(image)
            gaps.append(confidence_gap(probs))
            return probs, emb

        t0 = time.perf_counter()
        stats = stream_pool_stats(
            ((cid, ctx.image(cid)) for cid in ids), predict, ctx.regions, self.progress,
            total=len(ids),
        )
        if any(s.embedding is None for s in stats):
            raise ValueError("lamda needs case embeddings (B4): predict gave None")
        t1 = time.perf_counter()
        z = np.stack([np.asarray(s.embedding, dtype=np.float64) for s in stats])
        if self.normalize:
            z = l2_normalize(z)
        kern = rbf_kernel(z, gamma=self.gamma if self.gamma is not None else 1.0 / z.shape[1])

        n = len(ids)
        unlabeled = set(ctx.unlabeled)
        is_unlabeled = np.array([c in unlabeled for c in ids])
        confident = np.array(gaps) > self.gap_threshold
        cap = int(self.pseudo_ratio * (ctx.round + 1) * 1)
        coverage = 2.0 * kern.sum(axis=0) / n  # (2/N) sum_j K(x, x_j)
        diag = np.diag(kern).copy()
        in_herd = np.zeros(n, dtype=bool)
        herd_sum = np.zeros(n)  # sum_{s in S} K(x, s)
        gain, step = np.zeros(n), np.zeros(n, dtype=int)
        queries: list[int] = []
        pseudo: deque[int] = deque()
        converted: set[int] = set()
        n_unlabeled = int(is_unlabeled.sum())
        t = 0
        while len(queries) + len(pseudo) < n_unlabeled:
            j = coverage - (2.0 * herd_sum + diag) / (t + 1)
            j[in_herd] = -np.inf
            best = int(np.argmax(j))  # first maximum = lowest case id
            gain[best], step[best] = j[best], t
            in_herd[best] = True
            herd_sum += kern[:, best]
            t += 1
            if not is_unlabeled[best]:
                continue  # labeled earlier: a free slot
            if not confident[best]:
                queries.append(best)
                continue
            pseudo.append(best)
            if len(pseudo) > cap:  # over the cap: the oldest pseudo slot becomes a real query
                oldest = pseudo.popleft()
                queries.append(oldest)
                converted.add(oldest)
        self.timings = {"inference": t1 - t0, "herding": time.perf_counter() - t1}

        order = queries + list(pseudo)
        held = set(pseudo)
        return [
            Scored(
                ids[i],
                float(len(order) - pos),
                {
                    "herding_gain": float(gain[i]),
                    "herding_step": float(step[i]),
                    "kernel_mean": float(kern[i].mean()),
                    "confidence_gap": float(gaps[i]),
                    "entropy": stats[i].mean_entropy,
                    "pseudo_slot": float(i in held),
                    "converted": float(i in converted),
                },
            )
            for pos, i in enumerate(order)
        ]
