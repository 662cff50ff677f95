"""Write predictions as NIfTI masks in each case's original geometry and affine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import BasePredictionWriter

from lightning_ada.io import safe_child, write_json_atomic, write_mask


class NiftiPredictionWriter(BasePredictionWriter):
    """Save ``<output_dir>/<case_id>_pred.nii.gz`` (on-disk label values, the input's affine).

    A case predicted with missing modalities zero-filled (``data.missing_modality zero_fill``)
    is flagged: its mask's header description says ``zero-filled: <modalities>``, and
    ``<output_dir>/zero_filled.json`` lists every such case with its missing modalities.

    Args:
        output_dir: folder for the masks (default: ``<log dir>/predictions``).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self._zero_filled: dict[str, list[str]] = {}

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        out = Path(self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "predictions")
        case_of = getattr(trainer.datamodule, "case", None)
        for case_id, pred in zip(prediction["case_id"], prediction["pred"]):
            path = safe_child(out, f"{case_id}_pred.nii.gz")
            missing = list(case_of(case_id).missing) if case_of is not None else []
            note = f"zero-filled: {', '.join(missing)}" if missing else None
            write_mask(trainer.datamodule.invert(pred, case_id), path, description=note)
            if missing:
                self._zero_filled[case_id] = missing
                write_json_atomic(safe_child(out, "zero_filled.json"), self._zero_filled)
