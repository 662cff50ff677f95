"""Per-region segmentation metrics (Dice, IoU, HD95, ASSD) on class-index volumes.

A *region* is a named union of class indices, e.g. ``{"NCR": [1], "ED": [2], "ET": [3]}``, the
BraTS evaluation regions ``{"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}`` or ``{"GTV": [1]}``.
All values come from MONAI 1.6.1 (``compute_dice``, ``compute_iou``,
``compute_hausdorff_distance``, ``compute_average_surface_distance``); this module only builds
the binary masks and applies the empty-mask policy of ALGORITHMS.md section 12:

* prediction and ground truth both empty: Dice = IoU = 1, HD95 = ASSD = 0;
* exactly one empty: Dice = IoU = 0, HD95 = ASSD = NaN (counted, excluded from means).

Surfaces are MONAI's: mask XOR its binary erosion (3-D connectivity 1), exact Euclidean
distances between surface voxel centres scaled by the spacing (mm).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
)
from torch import Tensor
from torchmetrics import Metric

__all__ = ["RegionMetrics", "case_metrics", "region_masks"]

Regions = Mapping[str, Sequence[int]]
OVERLAP = ("dice", "iou")
DISTANCES = ("hd95", "assd")


def _batched(x: Tensor) -> Tensor:
    """``(B, H, W, D)`` or ``(B, 1, H, W, D)`` -> ``(B, H, W, D)``."""
    if x.ndim == 5 and x.shape[1] == 1:
        return x[:, 0]
    if x.ndim != 4:
        raise ValueError(f"expected [B,] H, W, D or B, 1, H, W, D; got {tuple(x.shape)}")
    return x


def region_masks(index_volume: Tensor, regions: Regions) -> Tensor:
    """Binary region masks from a class-index volume.

    Args:
        index_volume: integer class indices, ``(H, W, D)``, ``(B, H, W, D)`` or ``(B, 1, H, W, D)``.
        regions: region name -> class indices whose union forms the region.

    Returns:
        Bool tensor ``(B, R, H, W, D)`` (``B = 1`` for a single ``(H, W, D)`` volume), regions
        in the order of ``regions``.
    """
    v = torch.as_tensor(index_volume).long()
    v = v[None] if v.ndim == 3 else _batched(v)
    masks = [torch.isin(v, torch.as_tensor(list(ids), device=v.device)) for ids in regions.values()]
    return torch.stack(masks, dim=1)


def case_metrics(
    pred: Tensor,
    target: Tensor,
    regions: Regions,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    distances: bool = True,
) -> dict[str, dict[str, float]]:
    """Per-region metrics of ONE case.

    * ``dice`` = 2|P∩G| / (|P|+|G|), ``iou`` = |P∩G| / |P∪G| (MONAI, ``ignore_empty=False``).
    * ``hd95`` (mm): MONAI ``compute_hausdorff_distance(percentile=95, directed=False)`` =
      **max of the two directed 95th percentiles** (``torch.quantile``, linear interpolation) of
      the P->G and G->P surface distances. MedPy / the NPC-group code instead take the 95th
      percentile of the *pooled* set; the two differ on asymmetric surfaces.
    * ``assd`` (mm): MONAI ``compute_average_surface_distance(symmetric=True)`` concatenates both
      directed distance sets, i.e. the **pooled mean**
      ``(Σ_{a∈∂P} d(a,∂G) + Σ_{b∈∂G} d(b,∂P)) / (|∂P| + |∂G|)`` (CrossMoDA definition), not the
      mean of the two directed means (MedPy ``assd``).

    MONAI 1.6.1 returns NaN (HD95: quantile of infs) or inf (ASSD) when exactly one mask is
    empty and NaN when both are; it is only called on regions where both masks are non-empty,
    the empty policy is applied from the masks directly. Masks are moved to CPU (KD-tree path).

    Args:
        pred: predicted class indices ``(H, W, D)``, ``(1, H, W, D)`` or ``(1, 1, H, W, D)``.
        target: ground-truth class indices, same shape as ``pred``.
        regions: region name -> class indices.
        spacing: voxel size in mm along (H, W, D), used for the distances.
        distances: also compute ``hd95`` and ``assd`` (slower: surface extraction + KD-tree).

    Returns:
        ``{region: {"dice": ., "iou": ., ["hd95": ., "assd": .]}}`` as python floats.
    """
    p, g = region_masks(pred, regions).cpu(), region_masks(target, regions).cpu()
    if p.shape != g.shape or p.shape[0] != 1:
        raise ValueError(f"one case expected, same shapes; got {pred.shape}, {target.shape}")
    pd, gd = p.double(), g.double()
    values = {
        "dice": compute_dice(pd, gd, include_background=True, ignore_empty=False)[0],
        "iou": compute_iou(pd, gd, include_background=True, ignore_empty=False)[0],
    }
    if distances:
        p_any, g_any = p.flatten(2).any(-1)[0], g.flatten(2).any(-1)[0]
        for name in DISTANCES:  # both empty -> 0, exactly one empty -> NaN
            values[name] = torch.where(p_any | g_any, math.nan, 0.0).double()
        sel = (p_any & g_any).nonzero()[:, 0]
        if sel.numel():
            sp, ps, gs = [float(s) for s in spacing], pd[:, sel], gd[:, sel]
            with warnings.catch_warnings():  # monai 1.6 get_mask_edges(always_return_as_numpy=)
                warnings.filterwarnings("ignore", ".*always_return_as_numpy.*", FutureWarning)
                values["hd95"][sel] = compute_hausdorff_distance(
                    ps, gs, include_background=True, percentile=95, directed=False, spacing=sp
                )[0].double()
                values["assd"][sel] = compute_average_surface_distance(
                    ps, gs, include_background=True, symmetric=True, spacing=sp
                )[0].double()
    return {r: {k: float(v[i]) for k, v in values.items()} for i, r in enumerate(regions)}


class RegionMetrics(Metric):
    """DDP-safe running means of per-case region metrics.

    States (all ``dist_reduce_fx="sum"``, shape ``(R, M)`` for R regions and M metrics): the sum
    of non-NaN per-case values, their count, and the NaN count. Per-case rows
    (``keep_per_case=True``) are a plain python list that is **not** synced: under DDP each rank
    only sees its own cases.

    Args:
        regions: region name -> class indices.
        distances: also accumulate ``hd95`` and ``assd`` (mm).
        spacing: default voxel size in mm along (H, W, D); None means 1 mm isotropic.
        keep_per_case: store one flat row per case for :meth:`per_case`.
        **kwargs: forwarded to :class:`torchmetrics.Metric`.
    """

    full_state_update = False

    def __init__(
        self,
        regions: Regions,
        distances: bool = False,
        spacing: Sequence[float] | None = None,
        keep_per_case: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.regions = {str(k): [int(i) for i in v] for k, v in regions.items()}
        self.distances = distances
        self.spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * 3
        self.keep_per_case = keep_per_case
        self.metric_names = OVERLAP + DISTANCES if distances else OVERLAP
        shape = (len(self.regions), len(self.metric_names))
        for state in ("value_sum", "value_count", "nan_count"):
            self.add_state(state, torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self._rows: list[dict[str, Any]] = []

    def update(
        self,
        pred: Tensor,
        target: Tensor,
        spacing: Sequence[float] | Sequence[Sequence[float]] | None = None,
        case_ids: Sequence[str] | None = None,
    ) -> None:
        """Accumulate one batch.

        Args:
            pred: predicted class indices ``(B, H, W, D)`` or ``(B, 1, H, W, D)``.
            target: ground-truth class indices, same shape.
            spacing: override of the voxel size in mm, one triple or one triple per case.
            case_ids: optional case ids stored in the per-case rows as ``"case_id"``.
        """
        pred, target = _batched(pred), _batched(target)
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        sp = torch.as_tensor(self.spacing if spacing is None else spacing, dtype=torch.float64)
        sp = sp.expand(pred.shape[0], -1) if sp.ndim == 1 else sp
        for b in range(pred.shape[0]):
            res = case_metrics(pred[b], target[b], self.regions, sp[b].tolist(), self.distances)
            vals = torch.tensor([[res[r][m] for m in self.metric_names] for r in self.regions],
                                dtype=torch.float64, device=self.value_sum.device)
            nan = vals.isnan()
            self.value_sum += vals.nan_to_num(0.0)
            self.value_count += (~nan).double()
            self.nan_count += nan.double()
            if self.keep_per_case:
                row: dict[str, Any] = {} if case_ids is None else {"case_id": case_ids[b]}
                row.update({f"{m}_{r}": res[r][m] for r in self.regions for m in self.metric_names})
                self._rows.append(row)

    def compute(self) -> dict[str, Tensor]:
        """Means over cases (NaN where no valid value).

        Returns:
            ``{"{metric}_{region}": mean, "{metric}_mean": mean over regions}`` plus, for the
            distance metrics, ``"nan_{metric}_{region}"``: the number of one-empty cases.
        """
        mean = self.value_sum / self.value_count  # 0/0 -> NaN
        out: dict[str, Tensor] = {}
        for j, m in enumerate(self.metric_names):
            for i, r in enumerate(self.regions):
                out[f"{m}_{r}"] = mean[i, j].float()
            out[f"{m}_mean"] = mean[:, j].nanmean().float()
        for j, m in enumerate(self.metric_names):
            if m in DISTANCES:
                for i, r in enumerate(self.regions):
                    out[f"nan_{m}_{r}"] = self.nan_count[i, j].float()
        return out

    def per_case(self) -> list[dict[str, Any]]:
        """Per-case rows ``{"case_id"?, "{metric}_{region}": float}`` seen by this rank."""
        return list(self._rows)

    def reset(self) -> None:
        """Reset the states and the per-case rows."""
        super().reset()
        self._rows = []

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Batch value + accumulation; keeps the per-case rows across the internal reset."""
        rows = self._rows
        out = super().forward(*args, **kwargs)
        self._rows = rows + self._rows
        return out
