"""Labeled / unlabeled bookkeeping of a target pool, addressed by stable case ids.

The pool is plain serialisable state: a :class:`ActivePool` round-trips through
``state_dict()`` / ``load_state_dict()`` so that a resumed run has the same labeled set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Annotation:
    """How a case became labeled.

    Args:
        round: the query round (0-based) in which the case was labeled; -1 = labeled from the start.
        modality: the modality the annotator delineated on (None = not recorded / reference mask).
        label_path: the mask file the oracle delivered (label values as on disk).
        epoch: the training epoch at which the query happened (-1 = before training).
        label_sha256: content fingerprint of the label file when it was accepted (None: not
            recorded: a reference mask labeled at set-up, or a state from an older version).
        images_sha256: content fingerprint of the case's image files at that moment.
        region: the part of the case the delivery covers (``Region.to_json()`` of
            :mod:`lightning_ada.active.units`), None: every voxel the file annotates.
        partial: the delivery annotates part of the case (a region, or a file with
            ``NOT_ANNOTATED`` voxels); training ignores the rest.
    """

    round: int
    modality: str | None
    label_path: str
    epoch: int = -1
    label_sha256: str | None = None
    images_sha256: str | None = None
    region: dict[str, Any] | None = None
    partial: bool = False


class ActivePool:
    """A pool of case ids split into labeled and unlabeled.

    Args:
        case_ids: every case of the pool, in a stable order.

    Raises:
        ValueError: if ``case_ids`` holds duplicates.
    """

    def __init__(self, case_ids: Iterable[str]) -> None:
        self._ids = list(case_ids)
        self._id_set = set(self._ids)
        if len(self._id_set) != len(self._ids):
            dups = sorted({i for i in self._ids if self._ids.count(i) > 1})
            raise ValueError(f"duplicate case ids in the pool: {dups}")
        self._annotations: dict[str, Annotation] = {}

    @property
    def case_ids(self) -> list[str]:
        """Every case id of the pool, in pool order."""
        return list(self._ids)

    @property
    def labeled(self) -> list[str]:
        """Labeled case ids, in the order they were labeled."""
        return list(self._annotations)

    @property
    def unlabeled(self) -> list[str]:
        """Unlabeled case ids, in pool order."""
        return [i for i in self._ids if i not in self._annotations]

    @property
    def n_labeled(self) -> int:
        """Number of labeled cases."""
        return len(self._annotations)

    @property
    def n_unlabeled(self) -> int:
        """Number of unlabeled cases."""
        return len(self._ids) - len(self._annotations)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, case_id: object) -> bool:
        return case_id in self._id_set

    def annotation(self, case_id: str) -> Annotation:
        """The annotation record of a labeled case."""
        if case_id not in self._annotations:
            raise KeyError(f"case {case_id!r} is not labeled")
        return self._annotations[case_id]

    def label(
        self,
        case_id: str,
        label_path: str,
        modality: str | None = None,
        round: int = -1,
        epoch: int = -1,
        label_sha256: str | None = None,
        images_sha256: str | None = None,
        region: dict[str, Any] | None = None,
        partial: bool = False,
    ) -> None:
        """Move ``case_id`` from unlabeled to labeled (with the content fingerprints, if given).

        Raises:
            KeyError: if the id is not in the pool.
            ValueError: if the case is already labeled.
        """
        if case_id not in self:
            raise KeyError(f"case {case_id!r} is not in the pool")
        if case_id in self._annotations:
            raise ValueError(f"case {case_id!r} is already labeled")
        self._annotations[case_id] = Annotation(
            round, modality, str(label_path), epoch, label_sha256, images_sha256, region, partial
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain, JSON-friendly state: pool ids and the annotation of every labeled case."""
        return {
            "case_ids": list(self._ids),
            "labeled": {k: asdict(v) for k, v in self._annotations.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the labeled set saved by :meth:`state_dict`.

        Raises:
            ValueError: if the saved pool holds ids that this pool does not know.
        """
        unknown = sorted(set(state["labeled"]) - self._id_set)
        if unknown:
            raise ValueError(f"checkpoint pool labels cases unknown to this pool: {unknown}")
        self._annotations = {k: Annotation(**v) for k, v in state["labeled"].items()}
