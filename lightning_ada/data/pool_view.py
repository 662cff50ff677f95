"""The datamodule's implementation of :class:`lightning_ada.active.pool_view.PoolView`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lightning_ada.data.cases import Case

if TYPE_CHECKING:
    from lightning_ada.data.datamodule import ActiveDataModule


class DataModulePoolView:
    """The active-learning view of an :class:`ActiveDataModule` (after ``setup``).

    Args:
        dm: the datamodule.
    """

    def __init__(self, dm: ActiveDataModule) -> None:
        self._dm = dm
        self.stage: str = dm.hparams.stage
        self.modalities: list[str] = list(dm.hparams.modalities)
        self.label_values: list[int] = list(dm.hparams.labels.values())

    def _pool(self):  # noqa: ANN202 - ActivePool
        if self._dm.pool is None:
            raise RuntimeError("the datamodule is not set up: call setup() first")
        return self._dm.pool

    def ids(self, split: str) -> list[str]:
        return list(self._dm.split_ids.get(split, []))

    def labeled(self) -> list[str]:
        return list(self._pool().labeled)

    def unlabeled(self) -> list[str]:
        return list(self._pool().unlabeled)

    def image(self, case_id: str) -> torch.Tensor:
        return self._dm.image(case_id)

    def case(self, case_id: str) -> Case:
        return self._dm.case(case_id)

    def label(self, case_id: str, label_path: str, modality: str | None, round: int, epoch: int) -> None:
        self._dm.label(case_id, label_path, modality, round=round, epoch=epoch)

    def invert(self, prediction: torch.Tensor, case_id: str) -> torch.Tensor:
        return self._dm.invert(prediction, case_id)

    def validate_label(self, path: str, case_id: str, allow_empty: bool = False) -> None:
        from lightning_ada.data.validation import validate_label_file

        validate_label_file(path, self._dm.case(case_id).images[0], self.label_values, allow_empty)
