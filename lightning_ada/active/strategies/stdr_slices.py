"""STDR at slice level: slice groups scored by their distance to the source anchors
(ALGORITHMS.md section 18.6).

STDR (Wang et al., TMI 2024; ALGORITHMS section 6) describes every slice of a case by the last
decoder features weighted by the background probability and measures its distance to k-means
anchors of the source slices; the case-level rule averages over the case's slices. Its
descriptors are slices already, so at slice level the candidate groups of ``k`` slices are
scored by their own slices' distances, and the dual reference rule (half farthest from the
anchors, half nearest) picks among the groups.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Literal

import numpy as np
import torch

from lightning_ada.active.strategies.base import QueryContext, Scored
from lightning_ada.active.strategies.region_rule import RegionRule, Taken, case_rng, slice_map
from lightning_ada.active.strategies.stdr import (
    STDRStrategy,
    Weight,
    anchor_distances,
    body_slices,
    slice_descriptors,
)
from lightning_ada.active.units import AnnotationUnit

#: the ``stream`` factor: groups cut along decreasing distance (far) or increasing (near)
FAR, NEAR = 1.0, 0.0


class STDRSlicesStrategy(RegionRule, STDRStrategy):
    """Groups of ``k`` slices, farthest and nearest to the source anchors in turn.

    Per case, one pass of the current model with decoder features (``ctx.features``): the
    descriptor ``z_s`` of every slice along the unit's axis
    (:func:`~lightning_ada.active.strategies.stdr.slice_descriptors`, the settings of the
    anchors) and its distance ``delta_s = min_j mean((z_s - c_j)**2)`` to the source anchors
    ``c_j``. Slices outside the body (no non-zero voxel in any channel) are never offered (all
    are, if the case has none inside). The unit cuts the case along ``delta`` twice: decreasing
    (``far`` groups: the ``k`` most distant slices first) and increasing (``near`` groups); a
    group's ``delta`` is the mean over its slices. With ``dual`` (STDR's dual reference) the
    ranking alternates the farthest remaining far group and the nearest remaining near group,
    never a group overlapping one placed before, so the first ``n`` regions a round takes are
    the ``ceil(n/2)`` farthest and the ``floor(n/2)`` nearest (STDR's ``ceil(B/2)`` +
    ``floor(B/2)``); without, the far groups by decreasing ``delta``. One-off by default, as
    STDR. Source: Wang et al., TMI 2024 (ALGORITHMS §6); the slice-group form is ours (§18.6).

    Args:
        weight, grid, axis, min_positive: the descriptor settings (must match the anchors';
            ``axis`` must be the unit's slice axis).
        dual: alternate far and near groups (STDR's rule); False: farthest first only.
        schedule: ``one_off`` (the whole budget at epoch 0, as STDR) or ``sequential``.
    """

    name = "stdr_slices"
    display_name = "STDR slices"
    table_order = 250
    units = frozenset({"slices"})

    def __init__(
        self,
        weight: Weight = "background",
        grid: int = 16,
        axis: int = -1,
        min_positive: int = 10,
        dual: bool = True,
        schedule: Literal["one_off", "sequential"] = "one_off",
    ) -> None:
        if schedule not in ("sequential", "one_off"):
            raise ValueError(
                f"stdr_slices schedule must be one_off or sequential, got {schedule!r}"
            )
        STDRStrategy.__init__(self, weight=weight, grid=grid, axis=axis, min_positive=min_positive)
        self.dual = bool(dual)
        self.schedule = schedule  # type: ignore[misc]

    def prepare_round(self, ctx: QueryContext) -> None:
        super().prepare_round(ctx)
        self._anchors()
        if ctx.features is None:
            raise ValueError("stdr_slices needs ctx.features (decoder features and probabilities)")
        unit_axis = getattr(ctx.unit, "axis", None)
        if unit_axis is not None and unit_axis != self.descriptor_args["axis"] % 3:
            raise ValueError(
                f"stdr_slices describes slices along axis {self.descriptor_args['axis']} (its "
                f"anchors' axis) but the unit cuts along axis {unit_axis}: set "
                "--active.strategy.axis (and the SourceAnchors axis) to the unit's axis"
            )

    def case_regions(
        self, ctx: QueryContext, unit: AnnotationUnit, case_id: str, axis: int | None = None
    ) -> list[Scored]:
        anchors = self._anchors()
        if ctx.features is None:
            raise ValueError("stdr_slices needs ctx.features (decoder features and probabilities)")
        image, shape, annotated = self.case_inputs(ctx, case_id)
        ax = axis if axis is not None else getattr(unit, "axis", self.descriptor_args["axis"] % 3)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = ctx.features(image)
        self._add("inference", time.perf_counter() - t0)
        with self.scoring():
            args = self.descriptor_args | {"axis": ax}
            desc = slice_descriptors(out["decoder"], out["probs"], args["weight"], args["grid"],
                                     ax, args["min_positive"])
            del out
            delta = anchor_distances(desc, anchors)
            body = body_slices(image, ax)
            if not body.any():
                body[:] = True
            outside = slice_map((~body).astype(np.float64), shape, ax) > 0
            blocked = outside if annotated is None else (annotated.bool() | outside)
            extra = {} if ax == self.descriptor_args["axis"] % 3 else {"axis_differs": 1.0}
            scored = []
            streams = (FAR, NEAR) if self.dual else (FAR,)
            for stream in streams:
                sign = 1.0 if stream == FAR else -1.0
                score_map = slice_map(sign * delta, shape, ax)
                rng = case_rng(ctx, case_id)
                for c in unit.candidates(case_id, shape, score_map, blocked, rng, axis):
                    d = sign * c.score
                    scored.append(Scored.of(c, d, region_mean=d, delta=d, stream=stream,
                                            n_anchors=float(len(anchors)), **extra))
            return scored

    def order(self, ctx: QueryContext, unit: AnnotationUnit, scored: list[Scored]) -> list[Scored]:
        key = {FAR: lambda s: (-s.score, s.case_id, repr(s.region)),
               NEAR: lambda s: (s.score, s.case_id, repr(s.region))}
        queues = {k: deque(sorted((s for s in scored if s.factors["stream"] == k), key=key[k]))
                  for k in ((FAR, NEAR) if self.dual else (FAR,))}
        taken = Taken(scored)
        out: list[Scored] = []
        while any(queues.values()):
            for queue in queues.values():
                while queue:
                    s = queue.popleft()
                    assert s.region is not None
                    if not taken.overlaps(s.case_id, s.region):
                        taken.add(s.case_id, s.region)
                        out.append(s)
                        break
        total = len(out)
        return [Scored(s.case_id, float(total - i), s.factors, s.region) for i, s in enumerate(out)]
