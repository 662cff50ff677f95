"""The case unit: a query asks for the whole case (the library's unit before sub-volume units)."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from lightning_ada.active.units.base import AnnotationUnit, Candidate, Region, Shape


class CaseUnit(AnnotationUnit):
    """One query, one whole case; ``active.budget`` counts cases.

    Case-level strategies rank cases as they always have; a region rule run with this unit
    scores each unannotated case by the mean of its voxel score map.
    """

    name = "case"
    budget_in = "cases"

    def candidates(
        self, case_id: str, shape: Shape, score_map: Tensor | None, annotated: Tensor | None,
        rng: np.random.Generator, axis: int | None = None,
    ) -> list[Candidate]:
        if annotated is not None and bool(annotated.any()):
            return []  # asked once, delivered whole
        score = float(rng.random()) if score_map is None else float(score_map.double().mean())
        return [Candidate(case_id, Region(), score, {"region_mean": score})]
