"""The annotation unit: how much of a case one query asks an annotator for.

A query asks for one :class:`Region` of one case: the whole case (``case``), ``k`` slices along
an axis (``slices``), or a 3-D box (``patch``). Regions live on the network's voxel grid of the
case (the preprocessed image ``(C, H, W, D)`` the strategies score), so a rule ranks them from
the same voxel score maps it computes for the whole case; the oracle's request maps the picked
region back to the image's own grid.

A unit (:class:`AnnotationUnit`) declares everything a run needs of it: how a case splits into
candidate regions given a voxel score map and what is already annotated (:meth:`candidates`),
what a region costs in voxels (:meth:`~lightning_ada.data.regions.Region.voxels`), and how the run's budget is counted
(:attr:`AnnotationUnit.budget_in`). A new unit is one file: a subclass with a ``name``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from torch import Tensor

from lightning_ada.data.regions import Region, Shape

#: short name -> unit class (``--active.unit slices``)
UNITS: dict[str, type[AnnotationUnit]] = {}


@dataclass(frozen=True)
class Candidate:
    """A region of a case offered for ranking, with the unit's own score of it.

    Attributes:
        case_id: the case.
        region: the region.
        score: the mean of the voxel score map over the region (higher = query first).
        factors: what went into the score.
    """

    case_id: str
    region: Region
    score: float
    factors: dict[str, float] = field(default_factory=dict)


class AnnotationUnit:
    """How a query's region is cut out of a case (subclasses set ``name``; one file each).

    Attributes:
        budget_in: what ``active.budget`` counts: ``cases`` (the case unit: one query, one
            case) or ``scans`` (whole-scan equivalents: annotated voxels / the mean voxels of a
            pool case, spent one scan's worth per query round).
    """

    name: ClassVar[str] = ""
    budget_in: ClassVar[Literal["cases", "scans"]] = "scans"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            UNITS[cls.name] = cls

    def candidates(
        self,
        case_id: str,
        shape: Shape,
        score_map: Tensor | None,
        annotated: Tensor | None,
        rng: np.random.Generator,
        axis: int | None = None,
    ) -> list[Candidate]:
        """The case's candidate regions, none overlapping what is annotated already.

        Args:
            case_id: the case.
            shape: its network grid ``(H, W, D)``.
            score_map: a voxel score map ``(H, W, D)`` (higher = more worth asking), or None
                (model-free rules): regions then come in a random order drawn from ``rng``.
            annotated: boolean ``(H, W, D)`` of the voxels already annotated, or None.
            rng: the round's generator (random orders, ties).
            axis: the slice axis to use instead of the unit's (e.g. the elected modality's
                plane); units without an axis ignore it.
        """
        raise NotImplementedError

    def describe(self) -> str:
        """The unit in a few words, for logs and requests."""
        return self.name
