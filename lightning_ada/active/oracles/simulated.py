"""The simulated oracle: reveals stored masks at once (benchmarks, the phantom, ablations)."""

from __future__ import annotations

from lightning_ada.active.oracles.base import Answer, Oracle, Request
from lightning_ada.errors import DataError
from lightning_ada.phantom.open_set import ood_kind

#: why the simulated oracle refuses a case flagged out of distribution
OUT_OF_DISTRIBUTION = "out of distribution"


class SimulatedOracle(Oracle):
    """Reveals stored masks: the delineation made on the elected modality when the dataset has
    per-modality masks (the phantom), else the reference mask; for a region of a case, that
    mask inside the region only (an annotator who draws exactly what was asked). Never pending.

    Args:
        use_modality_masks: return the mask drawn on the requested modality when one exists.
        refuse_ood: refuse a case flagged out of distribution (``meta["ood"]``, open-set
            phantom): the label is spent and nothing is trained on.
    """

    name = "simulated"

    def __init__(self, use_modality_masks: bool = True, refuse_ood: bool = True) -> None:
        self.use_modality_masks = use_modality_masks
        self.refuse_ood = refuse_ood

    def ask(self, request: Request) -> Answer:
        """The stored mask of the case (or a refusal of an out-of-distribution case).

        Raises:
            DataError: if the case has no mask at all.
        """
        case, modality = request.case, request.modality
        if self.refuse_ood and ood_kind(case.meta) is not None:
            return Answer.refused(OUT_OF_DISTRIBUTION)
        if self.use_modality_masks and modality is not None and modality in case.modality_labels:
            return Answer.delivered(case.modality_labels[modality], request.region)
        if case.label is None:
            raise DataError(f"case {case.case_id}: the simulated oracle needs a reference label")
        return Answer.delivered(case.label, request.region)
