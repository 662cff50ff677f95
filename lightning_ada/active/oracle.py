"""Oracles: who delivers the mask of a queried case."""

from __future__ import annotations

from typing import Protocol

from lightning_ada.data.cases import Case, DataError


class Oracle(Protocol):
    """Something that returns the path of a mask for a queried case."""

    def annotate(self, case: Case, modality: str | None) -> str:
        """Path of the mask delineated on ``modality`` (None: on the annotator's own choice)."""
        ...


class SimulatedOracle:
    """Reveals stored masks: the delineation made on the elected modality when the dataset has
    per-modality masks (the phantom), else the reference mask.

    Args:
        use_modality_masks: return the mask drawn on the requested modality when one exists.
    """

    def __init__(self, use_modality_masks: bool = True) -> None:
        self.use_modality_masks = use_modality_masks

    def annotate(self, case: Case, modality: str | None) -> str:
        """Path of the mask for ``case``.

        Raises:
            DataError: if the case has no mask at all.
        """
        if self.use_modality_masks and modality is not None and modality in case.modality_labels:
            return case.modality_labels[modality]
        if case.label is None:
            raise DataError(f"case {case.case_id}: the simulated oracle needs a reference label")
        return case.label
