"""The training loss: Dice + cross-entropy that ignores unannotated voxels (partial labels)."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from lightning_ada.cases import NOT_ANNOTATED


class PartialDiceCELoss(nn.Module):
    """MONAI's ``DiceCELoss``, whose Dice and cross-entropy skip ``NOT_ANNOTATED`` voxels.

    On a batch with unannotated voxels, the Dice part is MONAI's
    ``DiceLoss(ignore_index=NOT_ANNOTATED)`` (the ignored voxels are masked out of prediction and
    target before the overlap is counted) and the cross-entropy part torch's
    ``CrossEntropyLoss(ignore_index=NOT_ANNOTATED)`` (the mean over annotated voxels): neither
    the loss nor its gradients depend on the reference of an ignored voxel. A batch without
    unannotated voxels goes through ``DiceCELoss`` itself, so whole-case training is bit for bit
    what it was (the masked path's gradients can differ in the last bits).

    Args:
        include_background: Dice over the background class too.
        batch: Dice over the whole batch (nnU-Net's batch Dice) instead of per case.
    """

    def __init__(self, include_background: bool = False, batch: bool = True) -> None:
        super().__init__()
        options = dict(to_onehot_y=True, softmax=True, include_background=include_background,
                       batch=batch)
        self.whole = DiceCELoss(**options)
        self.partial = DiceCELoss(**options)
        self.partial.dice = DiceLoss(**options, ignore_index=NOT_ANNOTATED)
        self.partial.cross_entropy = nn.CrossEntropyLoss(ignore_index=NOT_ANNOTATED)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of logits ``(B, K, H, W, D)`` against class indices ``(B, 1, H, W, D)``."""
        if bool((target == NOT_ANNOTATED).any()):
            return self.partial(input, target)
        return self.whole(input, target)
