"""STDR: dual reference selection against source anchors (ALGORITHMS.md section 6)."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from lightning_ada.active.anchors import (
    CHECKPOINT_KEY,
    META_KEY,
    Weight,
    anchor_distances,
    as_anchor_array,
    case_descriptors,
)
from lightning_ada.active.strategies.base import (
    QueryContext,
    Scored,
    Strategy,
    in_order,
    register,
)


@register
class STDRStrategy(Strategy):
    """Farthest ``ceil(B/2)`` + nearest ``floor(B/2)`` cases to the source anchors (§6, §14).

    Per case (one ``ctx.features`` pass of the source model): slice descriptors of the body
    slices (:func:`~lightning_ada.active.anchors.slice_descriptors`: last decoder features
    weighted by the background probability, max-pooled to ``grid x grid``, divided by the mean
    weight), slice score ``delta = min_k mean((z - c_k)**2)`` against the source anchors ``c_k``,
    case score ``delta_i`` = mean over its body slices. Selection (§6 "Dual reference", 3-D
    adaptation): the ``ceil(B/2)`` cases with the largest ``delta`` (domain-specific) then the
    ``floor(B/2)`` with the smallest (domain-invariant) among the rest; B = 3 -> 2 + 1. One-off
    (§13): the callback takes ``rank(ctx)[:budget]``.

    Source-free: the anchors come from ``ctx.source_artifacts["stdr_anchors"]`` (made by
    :class:`lightning_ada.active.source_anchors.SourceAnchors` at the end of the source training and
    saved with the source checkpoint); there is no fallback to source data.

    The returned ranking is the selection (farthest first, then nearest), followed by the other
    cases by decreasing ``delta``; scores are strictly decreasing positions (``n - i``), the raw
    criteria are in ``factors``.

    Args:
        budget: B, the number of cases the one-off query takes (must equal ``active.budget``).
        weight: descriptor weight map, ``background`` (official code) or ``foreground``.
        grid: pooled in-plane side (descriptor length ``grid**2``); must match the anchors.
        axis: slice axis (``-1`` = D, axial).
        min_positive: voxels with ``w > 0`` a slice needs for a non-zero descriptor.
        progress: show a progress bar while scoring the pool.
    """

    name = "stdr"
    schedule = "one_off"
    needs = frozenset({"source_anchors"})

    def __init__(
        self,
        budget: int = 3,
        weight: Weight = "background",
        grid: int = 16,
        axis: int = -1,
        min_positive: int = 10,
        progress: bool = True,
    ) -> None:
        if budget < 1:
            raise ValueError(f"stdr budget must be >= 1, got {budget}")
        self.budget = int(budget)
        self.descriptor_args: dict[str, Any] = {
            "weight": weight,
            "grid": int(grid),
            "axis": int(axis),
            "min_positive": int(min_positive),
        }
        self.progress = progress

    def _anchors(self, ctx: QueryContext) -> np.ndarray:
        raw = ctx.source_artifacts.get(CHECKPOINT_KEY)
        if raw is None:
            raise ValueError(
                f"stdr needs the source anchors: ctx.source_artifacts[{CHECKPOINT_KEY!r}] is "
                "missing. They are made by the SourceAnchors callback "
                "(lightning_ada.active.anchors) during the source training and saved in the "
                f"source checkpoint under {CHECKPOINT_KEY!r} and as anchors.npy; STDR is "
                "source-free and does not fall back to source data."
            )
        anchors = as_anchor_array(raw)
        g2 = self.descriptor_args["grid"] ** 2
        if anchors.shape[1] != g2:
            raise ValueError(
                f"stdr anchors have {anchors.shape[1]} features but grid="
                f"{self.descriptor_args['grid']} gives {g2}: use the grid of the source anchors"
            )
        meta = ctx.source_artifacts.get(META_KEY) or {}
        for key in ("weight", "grid", "axis", "min_positive"):
            if key in meta and meta[key] != self.descriptor_args[key]:
                raise ValueError(
                    f"stdr {key}={self.descriptor_args[key]!r} differs from the source anchors' "
                    f"{key}={meta[key]!r}"
                )
        return anchors

    def score(self, ctx: QueryContext) -> list[Scored]:
        anchors = self._anchors(ctx)
        if ctx.features is None:
            raise ValueError("stdr needs ctx.features (decoder features and probabilities)")
        inference, statistics = 0.0, 0.0
        delta: dict[str, float] = {}
        n_slices: dict[str, int] = {}
        ids: Any = ctx.unlabeled
        if self.progress:
            from tqdm.auto import tqdm

            ids = tqdm(ctx.unlabeled, desc="stdr descriptors", unit="case")
        with torch.no_grad():
            for cid in ids:
                image = ctx.image(cid)
                t0 = time.perf_counter()
                out = ctx.features(image)
                t1 = time.perf_counter()
                desc = case_descriptors(out, image, **self.descriptor_args)
                del out
                d = anchor_distances(desc, anchors)
                delta[cid] = float(d.mean()) if len(d) else 0.0
                n_slices[cid] = int(len(d))
                inference += t1 - t0
                statistics += time.perf_counter() - t1
        self.timings = {"inference": inference, "statistics": statistics}

        b = min(self.budget, len(delta))
        by_far = sorted(delta, key=lambda c: (-delta[c], c))
        far = by_far[: math.ceil(b / 2)]
        rest = [c for c in by_far if c not in far]
        near = sorted(rest, key=lambda c: (delta[c], c))[: b // 2]
        chosen = set(far) | set(near)
        order = far + near + [c for c in by_far if c not in chosen]
        return in_order(
            order,
            lambda cid: {
                "delta": delta[cid],
                "far": float(cid in far),
                "near": float(cid in near),
                "n_slices": float(n_slices[cid]),
                "n_anchors": float(len(anchors)),
            },
        )
