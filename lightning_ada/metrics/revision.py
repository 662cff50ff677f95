"""How much of a predicted delineation a clinician would have to revise (seed 002's revision ratio).

Two measures per region, on binary masks P (prediction) and G (the rater's reference):

* ``volume``: voxels of the symmetric difference over the reference volume,
  ``#(P xor G) / #G`` (voxels to add plus voxels to erase, relative to what the rater drew; can
  exceed 1 for a prediction far too large);
* ``surface``: the fraction of the two boundaries further than ``tolerance_mm`` from the other,
  ``1 - NSD`` with MONAI's ``compute_surface_dice`` (normalised surface Dice: boundary voxels =
  mask minus its erosion, Euclidean distances between voxel centres scaled by the spacing; a
  boundary voxel within the tolerance, ``d <= tolerance``, needs no revision).

Empty masks: P = G = empty -> both 0 (nothing to revise); G empty and P not -> ``volume`` NaN
(undefined: no reference volume) and ``surface`` 1; P empty and G not -> ``volume`` 1 and
``surface`` 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from monai.metrics import compute_surface_dice
from torch import Tensor

from lightning_ada.metrics.regions import region_masks

__all__ = ["revision", "revision_binary"]


def revision_binary(
    pred: Tensor,
    reference: Tensor,
    tolerance_mm: float = 1.0,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> dict[str, float]:
    """Revision of one binary prediction against one binary reference.

    Args:
        pred: ``(H, W, D)`` bool (or 0/1) predicted mask.
        reference: ``(H, W, D)`` bool (or 0/1) reference mask.
        tolerance_mm: boundary deviation (mm) that needs no revision, >= 0.
        spacing: voxel size (mm) per axis.

    Returns:
        ``{"volume": #(P xor G) / #G, "surface": 1 - NSD(tolerance_mm)}``.
    """
    p, g = torch.as_tensor(pred).bool(), torch.as_tensor(reference).bool()
    if p.shape != g.shape or p.ndim != 3:
        raise ValueError(
            f"pred and reference must be (H, W, D) of one shape, got {tuple(p.shape)} "
            f"and {tuple(g.shape)}"
        )
    if not math.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm}")
    n_ref, n_pred = int(g.sum()), int(p.sum())
    if n_ref == 0 and n_pred == 0:
        return {"volume": 0.0, "surface": 0.0}
    volume = float((p ^ g).sum()) / n_ref if n_ref else float("nan")
    if n_ref == 0 or n_pred == 0:
        return {"volume": volume, "surface": 1.0}
    nsd = compute_surface_dice(
        p[None, None].float(),
        g[None, None].float(),
        class_thresholds=[float(tolerance_mm)],
        include_background=True,
        spacing=[float(s) for s in spacing],
    )
    return {"volume": volume, "surface": 1.0 - float(nsd[0, 0])}


def revision(
    pred: Tensor,
    target: Tensor,
    regions: Mapping[str, Sequence[int]],
    tolerance_mm: float = 1.0,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> dict[str, dict[str, float]]:
    """Per-region revision of one case (class-index volumes; regions as in ``metrics``).

    Args:
        pred: ``(H, W, D)`` integer class indices predicted.
        target: ``(H, W, D)`` integer class indices of the rater's reference.
        regions: region name -> class indices whose union forms the region.
        tolerance_mm: boundary deviation (mm) that needs no revision.
        spacing: voxel size (mm) per axis.

    Returns:
        region -> ``{"volume": ..., "surface": ...}`` (see :func:`revision_binary`).
    """
    p, g = region_masks(pred, regions)[0], region_masks(target, regions)[0]
    return {
        name: revision_binary(p[r], g[r], tolerance_mm, spacing) for r, name in enumerate(regions)
    }
