"""Sparse slices: a few random slices in many scans (ALGORITHMS.md section 18.7).

Zhang, Kramer, Mazurowski, "How to Select Slices for Annotation to Train Best-performing Deep
Learning Segmentation Models for Cross-sectional Medical Images?", MIDL 2025 (PMLR 301),
arXiv 2412.08081: at an equal annotation budget (in slices), annotating fewer slices per volume
in more volumes is almost always better than full masks of fewer volumes, and choosing the
slices of a volume randomly or at fixed intervals is as good as unsupervised active learning,
provided every volume gets the same number of slices. This rule is that protocol as a query
rule: model-free, each visit of a scan asks ``per_scan`` slices of it, and the scans with the
fewest annotated slices are visited first.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from lightning_ada.active.strategies.base import QueryContext, Scored
from lightning_ada.active.strategies.region_rule import RegionRule, case_rng, slice_map
from lightning_ada.active.units import AnnotationUnit


class SparseSlicesStrategy(RegionRule):
    """``per_scan`` slices per scan visit, the least annotated scans first; ties random.

    The candidates of a case are the slices unit's groups of ``k`` unannotated slices: a random
    order of its free slices cut into groups (``within: random``, as ``random_region``), or
    first ``per_scan`` free slices at evenly spaced ranks (``within: interval``, the paper's
    fixed-interval selection: the ``i``-th of ``per_scan`` is the free slice of rank
    ``floor((i + 1/2) n / per_scan)``, ``n`` free slices), split at random into groups, then
    the others at random. A scan with ``a`` annotated slices (slices along the axis holding any
    annotated voxel) offers its ``g``-th group at level ``(a + g k) // per_scan``: a visit of
    ``per_scan / k`` groups. With ``spread`` the round ranks by (level, a draw of the case,
    ``g``), so every scan gets ``per_scan`` slices before any gets more and a round's regions go
    to as many scans as it has places; without, by (``g // (per_scan / k)``, the draw, ``g``):
    scans in random order whatever they hold. The draws come from a generator of ``(seed,
    round, case id)``. Scores are the positions (``N - i``). Source: arXiv 2412.08081
    (protocol, §18.7 for what we could and could not read of it).

    Args:
        per_scan: slices a scan gets per visit, a multiple of the unit's ``k`` (None: ``k``,
            one query per visit).
        spread: visit the least annotated scans first (True) or scans at random (False).
        within: ``random`` or ``interval`` slices of a scan.
        schedule: ``sequential`` (one scan's worth per round) or ``one_off`` (the whole
            budget before training, as the paper's static protocol).
    """

    name = "sparse_slices"
    display_name = "Sparse slices (MIDL'25)"
    table_order = 260
    units = frozenset({"slices"})

    def __init__(
        self,
        per_scan: int | None = None,
        spread: bool = True,
        within: Literal["random", "interval"] = "random",
        schedule: Literal["sequential", "one_off"] = "sequential",
    ) -> None:
        if per_scan is not None and per_scan < 1:
            raise ValueError(f"sparse_slices per_scan must be >= 1 or null, got {per_scan}")
        if within not in ("random", "interval"):
            raise ValueError(f"sparse_slices within must be random or interval, got {within!r}")
        if schedule not in ("sequential", "one_off"):
            raise ValueError(
                f"sparse_slices schedule must be sequential or one_off, got {schedule!r}"
            )
        super().__init__()
        self.per_scan, self.spread, self.within = per_scan, bool(spread), within
        self.schedule = schedule  # type: ignore[misc]

    def visit(self, unit: AnnotationUnit) -> tuple[int, int]:
        """``(k, per_scan)`` for the run's unit.

        Raises:
            ValueError: not a slices unit, or ``per_scan`` not a multiple of its ``k``.
        """
        k = getattr(unit, "k", None)
        if k is None:
            raise ValueError(f"sparse_slices needs the slices unit, not {unit.name!r}")
        per_scan = self.per_scan or int(k)
        if per_scan % int(k):
            raise ValueError(
                f"sparse_slices per_scan={per_scan} must be a multiple of the unit's k={k}"
            )
        return int(k), per_scan

    def prepare_round(self, ctx: QueryContext) -> None:
        super().prepare_round(ctx)
        if ctx.unit is not None:
            self.visit(ctx.unit)

    def case_regions(
        self, ctx: QueryContext, unit: AnnotationUnit, case_id: str, axis: int | None = None
    ) -> list[Scored]:
        k, per_scan = self.visit(unit)
        with self.scoring():
            _, shape, annotated = self.case_inputs(ctx, case_id)
            ax = int(axis if axis is not None else unit.axis)  # type: ignore[attr-defined]
            others = tuple(a for a in range(3) if a != ax)
            done = (annotated.bool().any(dim=others).numpy() if annotated is not None
                    else np.zeros(shape[ax], dtype=bool))
            count = int(done.sum())
            rng = case_rng(ctx, case_id)
            score_map = None
            if self.within == "interval":
                free = np.flatnonzero(~done)
                per_slice = rng.random(shape[ax])
                if free.size:
                    m = min(per_scan, free.size)
                    chosen = free[np.floor((np.arange(m) + 0.5) * free.size / m).astype(int)]
                    per_slice[chosen] += 2.0
                score_map = slice_map(per_slice, shape, ax)
            candidates = unit.candidates(case_id, shape, score_map, annotated, rng, axis)
            tie = float(case_rng(ctx, case_id, stream=1).random())
            visit = per_scan // k
            out = []
            for g, c in enumerate(candidates):
                level = (count + g * k) // per_scan if self.spread else g // visit
                out.append(Scored.of(c, tie - level, annotated_slices=float(count),
                                     level=float(level), tie=tie, group=float(g)))
            return out

    def order(self, ctx: QueryContext, unit: AnnotationUnit, scored: list[Scored]) -> list[Scored]:
        ranked = sorted(scored, key=lambda s: (s.factors["level"], s.factors["tie"], s.case_id,
                                               s.factors["group"]))
        total = len(ranked)
        return [Scored(s.case_id, float(total - i), s.factors, s.region)
                for i, s in enumerate(ranked)]

