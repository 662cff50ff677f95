"""Random region: a uniform, seeded draw of regions (slices or boxes) over the pool.

The region-level random baseline of the sub-volume units (ALGORITHMS.md section 18): every
candidate region of every case (:meth:`~lightning_ada.active.units.AnnotationUnit.candidates`
with no score map: a random order of a case's slices, cut into groups of ``k``; every box of
its grid) gets a uniform score, and a round takes the best ones until its voxels are spent, so
regions are drawn uniformly without regard to the model.
"""

from __future__ import annotations

import zlib

import numpy as np

from lightning_ada.active.strategies.base import QueryContext, Scored, Strategy
from lightning_ada.active.units import AnnotationUnit


class RandomRegionStrategy(Strategy):
    """Uniform draw of regions; model-free. Each case's draw depends only on ``(seed, round,
    case id)``: the same on every rank and after a resume.

    Args:
        schedule: ``sequential`` (one scan's worth of regions per round, the default) or
            ``one_off`` (the whole budget before training).
    """

    name = "random_region"
    display_name = "Random region"
    table_order = 200
    units = frozenset({"case", "slices", "patch"})

    def __init__(self, schedule: str = "sequential") -> None:
        if schedule not in ("sequential", "one_off"):
            raise ValueError(f"schedule must be 'sequential' or 'one_off', got {schedule!r}")
        super().__init__()
        self.schedule = schedule  # type: ignore[misc]

    def case_regions(
        self, ctx: QueryContext, unit: AnnotationUnit, case_id: str, axis: int | None = None
    ) -> list[Scored]:
        rng = np.random.default_rng([ctx.seed, ctx.round, zlib.crc32(case_id.encode())])
        shape = tuple(ctx.image(case_id).shape[1:])
        annotated = ctx.annotated(case_id) if ctx.annotated is not None else None
        candidates = unit.candidates(case_id, shape, None, annotated, rng, axis)  # type: ignore[arg-type]
        return [Scored.of(c, uniform=c.score) for c in candidates]
