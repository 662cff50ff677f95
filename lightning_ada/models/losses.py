"""The training loss: Dice + cross-entropy that ignores unannotated voxels (partial labels)."""

from __future__ import annotations

from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from lightning_ada.cases import NOT_ANNOTATED


class PartialDiceCELoss(DiceCELoss):
    """MONAI's ``DiceCELoss`` whose Dice and cross-entropy both skip ``NOT_ANNOTATED`` voxels.

    The Dice part is MONAI's ``DiceLoss(ignore_index=NOT_ANNOTATED)`` (the ignored voxels are
    masked out of prediction and target before the overlap is counted), the cross-entropy part
    torch's ``CrossEntropyLoss(ignore_index=NOT_ANNOTATED)`` (the mean over annotated voxels).
    On a label without unannotated voxels both are exactly ``DiceCELoss``'s terms (the mask is
    all ones), so a run of whole cases trains as before.

    Args:
        include_background: Dice over the background class too.
        batch: Dice over the whole batch (nnU-Net's batch Dice) instead of per case.
    """

    def __init__(self, include_background: bool = False, batch: bool = True) -> None:
        super().__init__(to_onehot_y=True, softmax=True, include_background=include_background,
                         batch=batch)
        self.dice = DiceLoss(to_onehot_y=True, softmax=True, include_background=include_background,
                             batch=batch, ignore_index=NOT_ANNOTATED)
        self.cross_entropy = nn.CrossEntropyLoss(ignore_index=NOT_ANNOTATED)
