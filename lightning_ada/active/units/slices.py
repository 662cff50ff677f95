"""The slices unit: a query asks for ``k`` whole slices of one case along one axis."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from lightning_ada.active.units.base import AnnotationUnit, Candidate, Region, Shape


class SlicesUnit(AnnotationUnit):
    """``k`` slices of one case along ``axis``; ``active.budget`` counts whole-scan equivalents.

    A case's unannotated slices (no voxel annotated yet) are ordered by the mean of the voxel
    score map over each slice (best first, ties by index; a random order for model-free rules)
    and cut into groups of ``k``: the first group is the case's best candidate, the next its
    second best, and so on (the last group may hold fewer slices). A candidate's score is the
    mean over its slices, so candidates of any case compare at equal size. The slices of a
    candidate need not be neighbours: the best ``k`` of the case, wherever they are.

    Args:
        k: slices per query.
        axis: the slice axis of the network grid (2: axial in RAS).
        modality_axes: the slice axis to use when the query's elected modality is one of these
            (e.g. ``{t1: 0}`` for a sagittally acquired T1): the plane the annotator reads that
            modality in; other modalities, and runs without the election, use ``axis``.
    """

    name = "slices"

    def __init__(self, k: int = 3, axis: int = 2, modality_axes: dict[str, int] | None = None) -> None:
        if k < 1:
            raise ValueError(f"the slices unit needs k >= 1 slices per query, got {k}")
        if axis not in (0, 1, 2) or any(a not in (0, 1, 2) for a in (modality_axes or {}).values()):
            raise ValueError(f"slice axes must be 0, 1 or 2, got {axis} and {modality_axes}")
        self.k, self.axis, self.modality_axes = int(k), int(axis), dict(modality_axes or {})

    def axis_for(self, modality: str | None) -> int:
        """The slice axis of a query whose elected modality is ``modality``."""
        return self.modality_axes.get(modality or "", self.axis)

    def candidates(
        self, case_id: str, shape: Shape, score_map: Tensor | None, annotated: Tensor | None,
        rng: np.random.Generator, axis: int | None = None,
    ) -> list[Candidate]:
        axis = self.axis if axis is None else axis
        others = tuple(a for a in range(3) if a != axis)
        n = int(shape[axis])
        free = np.ones(n, dtype=bool)
        if annotated is not None:
            free = ~annotated.any(dim=others).numpy()
        index = np.flatnonzero(free)
        if index.size == 0:
            return []
        if score_map is None:
            per_slice = np.zeros(n)
            order = index[rng.permutation(index.size)]
        else:
            per_slice = score_map.double().mean(dim=others).numpy()
            order = index[np.lexsort((index, -per_slice[index]))]  # best first, ties by index
        out = []
        for g in range(0, order.size, self.k):
            group = np.sort(order[g:g + self.k])
            score = float(rng.random()) if score_map is None else float(per_slice[group].mean())
            out.append(Candidate(case_id, Region("slices", axis, tuple(int(i) for i in group)),
                                 score, {"region_mean": score, "group": float(g // self.k)}))
        return out

    def describe(self) -> str:
        return f"{self.k} slices along axis {self.axis}"
