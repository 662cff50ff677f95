"""The patch unit: a query asks for one 3-D box of one case (nnActive's query unit)."""

from __future__ import annotations

import itertools

import numpy as np
from torch import Tensor

from lightning_ada.active.units.base import AnnotationUnit, Candidate, Region, Shape
from lightning_ada.data.regions import gather_boxes


class PatchUnit(AnnotationUnit):
    """A box of ``size`` voxels; ``active.budget`` counts whole-scan equivalents.

    Each case is tiled by a fixed grid of non-overlapping boxes (starts at multiples of
    ``size``; the last box of an axis is shifted back to end at the grid's edge, so every box
    has the full size when the grid is at least that large, and may then overlap its
    neighbour). Boxes that overlap an annotated voxel are not offered again. A box's score is
    the mean of the voxel score map over it (a uniform draw for model-free rules).

    Args:
        size: the box in voxels ``(H, W, D)`` (one number: a cube).
    """

    name = "patch"

    def __init__(self, size: list[int] | int = 8) -> None:
        size = [size] * 3 if isinstance(size, int) else list(size)
        if len(size) != 3 or min(size) < 1:
            raise ValueError(f"the patch unit needs 3 positive sizes, got {size}")
        self.size = tuple(int(s) for s in size)

    def starts(self, shape: Shape) -> list[tuple[int, int, int]]:
        """The grid's box starts on a grid of ``shape``."""
        per_axis = []
        for g, s in zip(shape, self.size):
            first = list(range(0, max(1, g - s + 1), s))
            if first[-1] + s < g:
                first.append(g - s)
            per_axis.append(first)
        return [tuple(p) for p in itertools.product(*per_axis)]  # type: ignore[misc]

    def candidates(
        self, case_id: str, shape: Shape, score_map: Tensor | None, annotated: Tensor | None,
        rng: np.random.Generator, axis: int | None = None,
    ) -> list[Candidate]:
        starts = self.starts(shape)
        boxes = [tuple(slice(a, a + s) for a, s in zip(start, self.size)) for start in starts]
        whole = all(g >= s for g, s in zip(shape, self.size))  # else boxes are cut at the edge
        if annotated is None:
            free = [True] * len(starts)
        elif whole:
            free = (~gather_boxes(annotated, starts, self.size).flatten(1).any(1)).tolist()
        else:
            free = [not bool(annotated[box].any()) for box in boxes]
        kept = [i for i, f in enumerate(free) if f]
        if score_map is None:
            scores = [float(rng.random()) for _ in kept]
        elif whole:  # the same float64 means as box by box (each box reduced on its own)
            picked = [starts[i] for i in kept]
            boxed = gather_boxes(score_map, picked, self.size) if kept else None
            scores = boxed.double().mean(dim=(1, 2, 3)).tolist() if boxed is not None else []
        else:
            scores = [float(score_map[boxes[i]].double().mean()) for i in kept]
        return [Candidate(case_id, Region("patch", start=starts[i], size=self.size), score,
                          {"region_mean": score}) for i, score in zip(kept, scores)]

    def describe(self) -> str:
        return f"{'x'.join(map(str, self.size))} boxes"
