"""OpenPath's prototype pre-filter for open-set pools (seed 003; ALGORITHMS.md section 9).

An open-set target pool holds out-of-distribution (OOD) cases (another anatomy, no tumour, a
corrupted scan, wrong channel order: :mod:`lightning_ada.phantom.open_set`); a label spent on them
adds nothing. The pre-filter keeps a strategy's query among the cases most likely
in-distribution (ID), in two steps:

1. **PIS** (prototype-based ID candidate selection). Prototypes are case embeddings (B4: the
   bottleneck averaged over sliding windows) of the labelled target cases, each case its own
   prototype (``prototypes="each"``, default: the target mixes scanners, and a mean would sit
   between them) or their mean (``"mean"``, OpenPath's class mean with one ID class). In round 0
   no case is labelled: the prototype is the mean embedding of the unlabelled cases in which the
   current (source) model predicts at least ``min_tumour_voxels`` foreground voxels. A case's
   distance is ``min_k (1 - cos(z_i, c_k))``; the ``id_ratio`` share of the unlabelled cases with
   the smallest distance (at least the ``n`` to query) are the candidates.
2. **Sampling among the candidates** (``sampling``): ``strategy`` (default) lets the configured
   strategy rank the candidates and takes its best ``n``; ``egss`` is OpenPath's entropy-guided
   stochastic sampling as decided in ALGORITHMS.md 9: ``n`` draws without replacement with
   ``P(i) ∝ exp(H_i / τ)``, ``H_i`` the case's mean voxel entropy (B2); ``kmeans`` is what the
   released OpenPath code does instead: k-means (k = ``n``) on the candidates' embeddings, the
   candidate nearest each centroid.

Mean voxel entropy of a segmentation is dominated by background voxels (a few hundredths of a
nat), so ``exp(H / 1)`` would be uniform: with ``relative_entropy`` (default) ``H_i`` is divided
by the candidates' largest before applying ``τ``.

Cost: one forward pass (with embedding) per unlabelled and labelled case, ``O(N·V·F)``, plus
``O(N·P·d)`` distances.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "CaseSignal",
    "FilterResult",
    "PrototypeFilter",
    "case_signal",
    "egss_sample",
    "keep_nearest",
    "kmeans_pick",
    "prototype_distances",
]


@dataclass(frozen=True)
class CaseSignal:
    """What the filter needs of one case, from one forward pass.

    Attributes:
        embedding: ``(d,)`` case embedding.
        entropy: mean voxel entropy of the softmax (nats).
        foreground_voxels: voxels whose argmax is not background.
    """

    embedding: np.ndarray
    entropy: float
    foreground_voxels: int


def case_signal(probs: torch.Tensor, embedding: torch.Tensor | np.ndarray) -> CaseSignal:
    """:class:`CaseSignal` from a softmax ``(K, H, W, D)`` and an embedding ``(d,)``."""
    p = torch.as_tensor(probs).float()
    entropy = float(-(p * torch.log(p.clamp_min(1e-12))).sum(0).mean())
    fg = int((p.argmax(0) != 0).sum())
    emb = np.asarray(torch.as_tensor(embedding).detach().float().cpu().reshape(-1), np.float64)
    return CaseSignal(emb, entropy, fg)


def prototype_distances(embeddings: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Cosine distance of each embedding to its nearest prototype.

    Args:
        embeddings: ``(N, d)``.
        prototypes: ``(P, d)``, P >= 1.

    Returns:
        ``(N,)`` values in [0, 2]: ``min_k (1 - cos(z_i, c_k))``.
    """
    z = np.asarray(embeddings, np.float64)
    c = np.asarray(prototypes, np.float64)
    if z.ndim != 2 or c.ndim != 2 or z.shape[1] != c.shape[1] or len(c) == 0:
        raise ValueError(
            f"embeddings (N, d) and prototypes (P>=1, d) needed, got {z.shape} and {c.shape}"
        )
    zn = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    cn = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    return (1.0 - zn @ cn.T).min(axis=1)


def keep_nearest(distances: Mapping[str, float], id_ratio: float, at_least: int = 1) -> list[str]:
    """Ids of the ``ceil(id_ratio * N)`` (at least ``at_least``) nearest cases, nearest first.

    Ties are broken by case id, so the result does not depend on the order of ``distances``.
    """
    if not 0.0 < id_ratio <= 1.0:
        raise ValueError(f"id_ratio must be in (0, 1], got {id_ratio}")
    order = sorted(distances, key=lambda cid: (distances[cid], cid))
    k = min(len(order), max(at_least, math.ceil(id_ratio * len(order) - 1e-9)))
    return order[:k]


def egss_sample(
    entropies: Mapping[str, float],
    n: int,
    rng: np.random.Generator,
    temperature: float = 1.0,
    relative: bool = True,
) -> list[str]:
    """Entropy-guided stochastic sampling: ``n`` ids without replacement, ``P ∝ exp(H / τ)``.

    Successive draws without replacement are made at once with the Gumbel-top-k trick (the
    ``n`` largest ``H_i / τ + Gumbel`` noise), which has the same law.

    Args:
        entropies: id -> mean voxel entropy.
        n: ids to draw (all if fewer).
        rng: the round's generator.
        temperature: τ > 0; small: near the top-``n`` by entropy, large: near uniform.
        relative: divide the entropies by their maximum first (see the module note).

    Returns:
        The drawn ids, in draw order.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    ids = sorted(entropies)
    h = np.array([entropies[i] for i in ids], np.float64)
    if relative and h.size and h.max() > 0:
        h = h / h.max()
    keys = h / temperature + rng.gumbel(size=h.size)
    return [ids[j] for j in np.argsort(-keys, kind="stable")[:n]]


def kmeans_pick(embeddings: Mapping[str, np.ndarray], n: int, seed: int = 0) -> list[str]:
    """The released OpenPath selection: k-means (k = ``n``), the case nearest each centroid.

    Returns:
        ``min(n, len(embeddings))`` distinct ids (a centroid whose nearest case is taken already
        gets its nearest free one).
    """
    from sklearn.cluster import KMeans

    ids = sorted(embeddings)
    n = min(n, len(ids))
    if n == 0:
        return []
    z = np.stack([np.asarray(embeddings[i], np.float64) for i in ids])
    km = KMeans(n_clusters=n, n_init=10, random_state=seed).fit(z)
    d = ((z[:, None, :] - km.cluster_centers_[None]) ** 2).sum(-1)  # (N, n)
    picked: list[str] = []
    for k in range(n):
        for j in np.argsort(d[:, k], kind="stable"):
            if ids[j] not in picked:
                picked.append(ids[j])
                break
    return picked


@dataclass
class FilterResult:
    """What the pre-filter decided in one round.

    Attributes:
        candidates: ids kept (nearest first); the strategy ranks only these.
        distances: id -> prototype distance, for every unlabelled case.
        signals: id -> :class:`CaseSignal` of every unlabelled case.
        prototype_source: ``labelled`` (labelled cases), ``predicted_tumour`` (round 0: cases with
            predicted tumour) or ``none`` (no prototype: nothing was filtered).
        n_prototypes: number of prototypes.
    """

    candidates: list[str]
    distances: dict[str, float] = field(default_factory=dict)
    signals: dict[str, CaseSignal] = field(default_factory=dict)
    prototype_source: str = "none"
    n_prototypes: int = 0

    def factors(self, case_id: str) -> dict[str, float]:
        """Per-case values for the query log."""
        return {"prototype_distance": self.distances.get(case_id, float("nan"))}


class PrototypeFilter:
    """OpenPath's pre-filter in front of any strategy (options typed for the CLI).

    Args:
        id_ratio: share of the unlabelled cases kept as candidates (OpenPath: 0.25).
        prototypes: ``each`` labelled case is a prototype, or their ``mean``.
        sampling: ``strategy`` (the strategy ranks the candidates), ``egss`` or ``kmeans``.
        temperature: τ of ``egss``.
        relative_entropy: divide entropies by the candidates' largest before ``egss``.
        min_tumour_voxels: round 0: predicted foreground voxels for a case to form the prototype.
    """

    def __init__(
        self,
        id_ratio: float = 0.25,
        prototypes: Literal["each", "mean"] = "each",
        sampling: Literal["strategy", "egss", "kmeans"] = "strategy",
        temperature: float = 1.0,
        relative_entropy: bool = True,
        min_tumour_voxels: int = 1,
    ) -> None:
        if not 0.0 < id_ratio <= 1.0:
            raise ValueError(f"open_set_filter.id_ratio must be in (0, 1], got {id_ratio}")
        if prototypes not in ("each", "mean"):
            raise ValueError(
                f"open_set_filter.prototypes must be 'each' or 'mean', got {prototypes!r}"
            )
        if sampling not in ("strategy", "egss", "kmeans"):
            raise ValueError(
                f"open_set_filter.sampling must be 'strategy', 'egss' or 'kmeans', got {sampling!r}"
            )
        if temperature <= 0:
            raise ValueError(f"open_set_filter.temperature must be > 0, got {temperature}")
        self.id_ratio, self.prototypes, self.sampling = id_ratio, prototypes, sampling
        self.temperature, self.relative_entropy = temperature, relative_entropy
        self.min_tumour_voxels = min_tumour_voxels

    # -------------------------------------------------------------------------------- PIS
    def signals(self, ctx: Any, ids: Sequence[str]) -> dict[str, CaseSignal]:
        """One forward pass per case of ``ids`` with the context's model.

        Raises:
            ValueError: the model gives no embedding.
        """
        out = {}
        for cid in ids:
            probs, emb = ctx.predict(ctx.image(cid))
            if emb is None:
                raise ValueError("the open-set filter needs case embeddings; this model gives none")
            out[cid] = case_signal(probs, emb)
        return out

    def filter_signals(
        self, unlabelled: Mapping[str, CaseSignal], labelled: Mapping[str, CaseSignal], n: int
    ) -> FilterResult:
        """PIS on precomputed signals: the candidates among ``unlabelled`` (at least ``n``)."""
        if labelled:
            protos = np.stack([labelled[c].embedding for c in sorted(labelled)])
            if self.prototypes == "mean":
                protos = protos.mean(0, keepdims=True)
            source = "labelled"
        else:
            tumour = [
                c
                for c in sorted(unlabelled)
                if unlabelled[c].foreground_voxels >= self.min_tumour_voxels
            ]
            if not tumour:
                return FilterResult(sorted(unlabelled), {}, dict(unlabelled), "none", 0)
            protos = np.stack([unlabelled[c].embedding for c in tumour]).mean(0, keepdims=True)
            source = "predicted_tumour"
        ids = sorted(unlabelled)
        if not ids:
            return FilterResult([], {}, {}, source, len(protos))
        d = prototype_distances(np.stack([unlabelled[c].embedding for c in ids]), protos)
        distances = {c: float(v) for c, v in zip(ids, d)}
        kept = keep_nearest(distances, self.id_ratio, at_least=n)
        return FilterResult(kept, distances, dict(unlabelled), source, len(protos))

    def candidates(self, ctx: Any, n: int) -> FilterResult:
        """PIS for a query round: ``ctx`` is a strategy's ``QueryContext``.

        Args:
            ctx: needs ``unlabeled``, ``labeled``, ``image`` and ``predict`` (with embedding).
            n: cases the round will query (the candidates are at least that many).
        """
        return self.filter_signals(
            self.signals(ctx, ctx.unlabeled), self.signals(ctx, ctx.labeled), n
        )

    # --------------------------------------------------------------------------- sampling
    def pick(
        self,
        result: FilterResult,
        ranked_ids: Sequence[str],
        n: int,
        rng: np.random.Generator,
        seed: int = 0,
    ) -> list[str]:
        """The ``n`` cases to query among ``result.candidates``.

        Args:
            result: this round's :meth:`candidates`.
            ranked_ids: the strategy's ranking, best first (used by ``sampling=strategy``).
            n: cases to query.
            rng: the round's generator (``egss``).
            seed: k-means seed (``kmeans``).
        """
        kept = set(result.candidates)
        if self.sampling == "strategy":
            return [c for c in ranked_ids if c in kept][:n]
        if self.sampling == "egss":
            ent = {c: result.signals[c].entropy for c in result.candidates}
            return egss_sample(ent, n, rng, self.temperature, self.relative_entropy)
        return kmeans_pick({c: result.signals[c].embedding for c in result.candidates}, n, seed)
