"""PoolView: the narrow, typed view of the data that the active-learning side uses.

The callback, the oracles, the STDR source callback and ``lightning-ada query`` read and grow the
pool only through this interface (never the datamodule's internals). The datamodule gives one
with ``datamodule.pool_view()`` (:class:`lightning_ada.data.datamodule.DataModulePoolView`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from lightning_ada.cases import Case


@runtime_checkable
class PoolView(Protocol):
    """Cases by stable id: splits, the target pool's labeled/unlabeled parts, images, labels.

    Attributes:
        stage: ``source`` (pre-training) or ``target`` (adaptation).
        modalities: modality names in channel order.
        label_values: on-disk foreground label values, in class order.
    """

    stage: str
    modalities: list[str]
    label_values: list[int]

    def ids(self, split: str) -> list[str]:
        """Case ids of ``split`` (``source``, ``source_test``, ``pool``, ``test``; [] if absent)."""
        ...

    def labeled(self) -> list[str]:
        """Ids of the labeled target-pool cases, in labelling order."""
        ...

    def unlabeled(self) -> list[str]:
        """Ids of the unlabeled target-pool cases, in pool order."""
        ...

    def image(self, case_id: str) -> torch.Tensor:
        """Preprocessed image ``(C, H, W, D)`` (network input space)."""
        ...

    def case(self, case_id: str) -> Case:
        """The case record (file paths, per-modality masks, metadata)."""
        ...

    def label(
        self, case_id: str, label_path: str, modality: str | None, round: int, epoch: int,
        region: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record the mask at ``label_path`` for ``case_id`` (within ``region``, a
        ``Region.to_json()``; None: wherever the file annotates); return what it added
        (``voxels``, ``foreground_voxels``, ``slices``, ``new_case``, ``partial``,
        ``case_voxels``, on the network grid)."""
        ...

    def annotated(self, case_id: str) -> torch.Tensor | None:
        """Boolean ``(H, W, D)`` of the voxels of ``case_id`` annotated so far (None: none)."""
        ...

    def reference(self, case_id: str) -> torch.Tensor:
        """The reference label ``(H, W, D)`` (class indices) on the network grid (simulation)."""
        ...

    def invert(self, prediction: torch.Tensor, case_id: str) -> torch.Tensor:
        """Class-index prediction ``(1, H, W, D)`` -> original geometry, on-disk label values."""
        ...

    def validate_label(
        self, path: str, case_id: str, allow_empty: bool = False, allow_not_annotated: bool = False,
        **options: bool,
    ) -> str | None:
        """Check a delivered mask against the case's image (shape, affine, label values, gzip
        integrity; ``NOT_ANNOTATED`` voxels of a partial label when allowed). ``reorient=True``
        (an option, passed only when wanted) accepts a mask stored in another axis order of the
        image's grid and returns the change (e.g. ``"LPS -> RAS"``).

        Raises:
            DataError: naming ``path`` and the fault.
        """
        ...
