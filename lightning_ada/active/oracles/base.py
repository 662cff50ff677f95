"""The oracle protocol: who delivers the mask of a queried case, now or later.

An oracle is asked about one query at a time (:class:`Request`) and answers with its state
(:class:`Answer`):

- ``delivered``: the mask is there (``label_path``);
- ``refused``: the case will not be delineated (e.g. out of distribution): the label is spent and
  nothing is trained on (``reason``);
- ``pending``: the request is posted, the mask is not there yet (``awaiting`` says what the
  oracle waits for, e.g. the label file to create);
- ``timed_out``: as ``pending``, after the oracle waited as long as it was allowed to.

Asking again about the same request is how a run polls: an oracle posts a request once (e.g.
writes the request file) and answers from its current state on every later ask, including
after the run was stopped and resumed. On ``pending`` or ``timed_out`` the callback saves a
checkpoint and stops (:class:`~lightning_ada.errors.AnnotationPending`); the same command with
``--ckpt_path`` that checkpoint asks again.

A new oracle is one file: a subclass of :class:`Oracle` with a ``name`` (registered for
``--active.oracle <name>`` when its module is imported; any class path works too) that
implements :meth:`Oracle.ask`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import nibabel as nib
import numpy as np

from lightning_ada.cases import Case
from lightning_ada.data.pool_view import PoolView
from lightning_ada.data.regions import Region

Status = Literal["delivered", "refused", "pending", "timed_out"]

#: short name -> oracle class (``--active.oracle files``)
ORACLES: dict[str, type[Oracle]] = {}


@dataclass
class Request:
    """One query put to an oracle.

    Attributes:
        case: the case record (image files, stored masks, metadata).
        modality: the modality to delineate on (the election's choice), or None.
        query: the query's record: ``round``, ``case_id``, ``score``, ``factors``, ``why``,
            ``election_dice``, ... (JSON-friendly; the same on every ask of this query).
        write_prediction: writes the current model's prediction of the case as a NIfTI mask in
            the case's original geometry to the path given (a starting point to correct).
        write_preview: writes a PNG preview of the case and the prediction to the path given
            (of exactly the asked slices or box when ``region`` is not the whole case).
        region: the part of the case asked for, on the network grid (None: the whole case).
        asked: the asked region as a boolean array on the grid of the case's image files
            (computed on demand; None when ``region`` is None).
        write_asked: writes ``asked`` as a NIfTI mask with the image's affine to the path
            given (an annotator loads it as a guide).
    """

    case: Case
    modality: str | None
    query: dict[str, Any]
    write_prediction: Callable[[Path], None] | None = None
    write_preview: Callable[[Path], None] | None = None
    region: Region | None = None
    asked: Callable[[], Any] | None = None
    write_asked: Callable[[Path], None] | None = None

    @property
    def part(self) -> int:
        """Which of the round's regions of this case the query is (0: the first)."""
        return int(self.query.get("part", 0))

    @property
    def round(self) -> int:
        """The 0-based query round."""
        return int(self.query.get("round", 0))

    def region_record(self) -> dict[str, Any]:
        """What the request says of the asked part: on the network grid and on the grid of the
        image files (voxel indices per axis and, for slices, each slice's position in mm)."""
        region = self.region
        assert region is not None
        record: dict[str, Any] = {"network_grid": region.to_json(), "text": region.describe()}
        if self.asked is None:
            return record
        asked = np.asarray(self.asked(), dtype=bool)
        image = nib.load(self.case.reference_image)
        affine = np.asarray(image.affine, dtype=np.float64)
        support = [np.flatnonzero(asked.any(axis=tuple(a for a in range(3) if a != ax)))
                   for ax in range(3)]
        record["image_grid"] = {
            "shape": list(asked.shape),
            "voxels": int(asked.sum()),
            "index_range": [[int(s.min()), int(s.max())] if s.size else [] for s in support],
        }
        if region.kind == "slices":
            partial_axes = [ax for ax, s in enumerate(support) if 0 < s.size < asked.shape[ax]]
            if len(partial_axes) == 1:
                ax = partial_axes[0]
                centre = [n // 2 for n in asked.shape]
                positions = []
                for i in support[ax]:
                    voxel = list(centre)
                    voxel[ax] = int(i)
                    positions.append([round(float(v), 2) for v in (affine @ [*voxel, 1.0])[:3]])
                record["image_grid"] |= {"slice_axis": ax, "slices": [int(i) for i in support[ax]],
                                         "slice_centres_mm": positions}
        return record


@dataclass(frozen=True)
class Answer:
    """An oracle's answer to one ask.

    Attributes:
        status: ``delivered``, ``refused``, ``pending`` or ``timed_out``.
        label_path: the delivered mask (``delivered`` only).
        region: the region the delivered mask covers (``Region.to_json()``; None: every voxel
            the file annotates, i.e. the whole case unless it holds ``NOT_ANNOTATED`` voxels).
        reason: why a case was refused, or what the last look at a delivery found wrong.
        awaiting: what the oracle waits for (``pending`` / ``timed_out``), e.g. a file to create.
        details: anything the oracle records with the query (JSON-friendly).
    """

    status: Status
    label_path: str | None = None
    region: dict[str, Any] | None = None
    reason: str = ""
    awaiting: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def waiting(self) -> bool:
        """The mask is not there yet (``pending`` or ``timed_out``)."""
        return self.status in ("pending", "timed_out")

    @classmethod
    def delivered(
        cls, label_path: str | Path, region: Region | None = None, **details: Any
    ) -> Answer:
        """The mask at ``label_path`` is delivered (valid inside ``region``; None: everywhere)."""
        covers = None if region is None or region.kind == "case" else region.to_json()
        return cls("delivered", label_path=str(label_path), region=covers, details=details)

    @classmethod
    def refused(cls, reason: str, **details: Any) -> Answer:
        return cls("refused", reason=reason, details=details)


class Oracle:
    """Something that delivers the mask of a queried case, now or later.

    Subclasses set ``name`` (registers the short name) and implement :meth:`ask`.
    """

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            ORACLES[cls.name] = cls

    def configure(self, run_dir: Path, pool: PoolView) -> None:
        """Receive the run folder and the pool (called at setup, before any query)."""

    def ask(self, request: Request) -> Answer:
        """Post ``request`` if it is new, and answer from the current state of the annotation."""
        raise NotImplementedError

    def where(self) -> str:
        """Where an annotator finds the open requests (shown when a run stops to wait); ''."""
        return ""
