"""Partial labels: what a case annotated in parts (slices, boxes) teaches, on the network grid.

A delivery annotates the voxels its file gives a value other than ``NOT_ANNOTATED`` to, within
the region it was asked for (a region is a boolean mask of the network grid; None: the whole
case). A case's deliveries merge in order (a later one wins where two overlap) into one label
``(1, H, W, D)`` whose unannotated voxels hold ``NOT_ANNOTATED``, which the loss ignores, and a
sampling map that tells the training crop where labels are.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from lightning_ada.cases import NOT_ANNOTATED

#: sampling map values: where a training crop may be centred (``RandCropByLabelClassesd``)
UNANNOTATED, ANNOTATED_BACKGROUND, ANNOTATED_FOREGROUND = 0, 1, 2


def delivered(label: Tensor, region: Tensor | None = None) -> Tensor:
    """Boolean ``(1, H, W, D)``: the voxels a delivery annotates (``label`` is its preprocessed
    class-index label, ``region`` the asked region's mask ``(H, W, D)`` or None)."""
    valid = label != NOT_ANNOTATED
    if region is not None:
        valid = valid & region.to(valid.device)[None]
    return valid


def merge(deliveries: Iterable[tuple[Tensor, Tensor]], like: Tensor) -> tuple[Tensor, Tensor]:
    """Merge ``(label, annotated)`` deliveries in order into one partial label.

    Args:
        deliveries: each delivery's preprocessed label ``(1, H, W, D)`` and its annotated mask
            (:func:`delivered`).
        like: a label of the case's grid (its values are not used; its metadata is kept).

    Returns:
        ``(label, annotated)``: the merged label (``NOT_ANNOTATED`` where no delivery annotates)
        and the union of the annotated masks.
    """
    merged = like.clone()  # a MetaTensor keeps the case's metadata; every value is replaced
    merged.fill_(NOT_ANNOTATED)
    annotated = torch.zeros(like.shape, dtype=torch.bool)
    for label, valid in deliveries:
        merged[valid] = label[valid].to(merged.dtype)
        annotated |= valid
    return merged, annotated


def sampling_map(label: Tensor, annotated: Tensor) -> Tensor:
    """``(1, H, W, D)`` of :data:`UNANNOTATED`, :data:`ANNOTATED_BACKGROUND` and
    :data:`ANNOTATED_FOREGROUND`: training crops are centred on annotated voxels only."""
    out = torch.full(label.shape, UNANNOTATED, dtype=torch.uint8)
    out[annotated] = ANNOTATED_BACKGROUND
    out[annotated & (label > 0)] = ANNOTATED_FOREGROUND
    return out
