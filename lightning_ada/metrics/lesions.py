"""Lesion-wise Dice and HD95 of one case and one region: the BraTS 2023 ranking metrics.

BraTS ranks since 2023 by the *lesion-wise* Dice and HD95 of WT, TC and ET: every ground-truth
lesion (connected component) is scored on its own and every missed lesion and false-positive
component costs a whole lesion, so a small metastasis weighs as much as a large glioma. The
definitions followed are the organisers' description (Synapse discussion thread 10357 of
syn51156910, "BraTS 2023 lesion-wise performance metrics") and the official code
(github.com/rachitsaluja/BraTS-2023-Metrics, ``eval.py``: ``get_LesionWiseScores`` and
``get_LesionWiseResults``; the same in ``brats_2023_metrics/surface_distance/brats_metrics.py``).
This is our implementation (scipy + MONAI), not theirs. For a binary ground truth G and
prediction P of one region:

1. **Components.** Connected components of G and of P with 26-connectivity (official:
   ``cc3d.connected_components(..., connectivity=26)``).
2. **Matching region.** G is dilated by ``dilation_iterations`` = 3 iterations (GLI, SSA, PED;
   MEN and MET use 1) of the **18-connected** 3x3x3 structuring element (official:
   ``scipy.ndimage.generate_binary_structure(3, 2)``, *not* the 26-connected cube; 3 iterations
   reach the voxels at offset ``d`` with ``max|d_i| <= 3`` and ``|d|_1 <= 6``). The dilation is
   in voxels whatever the spacing, as in the official code (BraTS data are 1 mm isotropic; on
   this project's 3 mm grid it reaches 9 mm).
3. **Merging by dilation.** GT components whose dilated regions touch or overlap (one
   26-connected component of the dilated G) are **one lesion**: the union of their voxels
   (official: ``get_GTseg_combinedByDilation``). A lesion's matching region is its dilation,
   i.e. that dilated component.
4. **Matching.** A predicted component is matched to a GT lesion when it intersects the
   lesion's matching region. The lesion's Dice and HD95 are taken between the GT lesion and the
   union of its matched components **whole** (not cut to the matching region; official: the
   matched labels are selected with ``np.isin`` on the full component map). A component that
   reaches two lesions' regions counts, whole, in both.
5. **Size threshold.** A GT lesion of volume ``<= min_volume`` is dropped from the score
   (official: ``metric_df['gt_lesion_vol'] > lesion_volume_thresh`` is kept; 50 for GLI, SSA,
   MEN, PED, 2 for MET). The volume is the voxel count times the voxel volume in mm^3, as the
   official code computes it (``np.sum(gt_tmp)*sx*sy*sz``): "50 voxels" on the 1 mm BraTS
   grid, 50 mm^3 (about 1.9 voxels) on a 3 mm grid. Predicted components matched to a dropped
   lesion are neither scored nor false positives.
6. **Misses and false positives.** A kept lesion with no matched component scores Dice 0 and
   HD95 = ``penalty`` = 374 mm (official: the infinite HD95 replaced by 374, about the diagonal
   of the 240 x 240 x 155 mm BraTS volume, 373.1 mm). A predicted component matched to no GT
   lesion (dropped ones included) is a false positive and adds one lesion with Dice 0 and HD95
   374; **the size threshold does not apply to false positives** (official: ``fp`` counts every
   unmatched component, whatever its size).
7. **Case score.** With L the kept lesions and F the false positives::

       lesion_dice = sum_{l in L} Dice_l / (|L| + |F|)
       lesion_hd95 = (sum_{l in L} HD95_l + 374 |F|) / (|L| + |F|)

   ``|L| + |F| = 0`` (G empty or with dropped lesions only, and no false positive) gives Dice 1
   and HD95 0 (official: the NaN of 0/0 replaced by 1 and 0).
   An empty G with a non-empty P has every component a false positive: Dice 0, HD95 374.

**HD95 (a difference from the official code).** Per lesion the HD95 is the package's
(:func:`lightning_ada.metrics.regions.case_metrics`): MONAI ``compute_hausdorff_distance``
(``percentile=95, directed=False``), the larger of the two directed 95th percentiles of the
distances between the masks' surface voxels, in mm. The official code uses DeepMind's
``surface_distance.compute_robust_hausdorff(..., 95)`` (surface elements between voxel corners,
percentiles weighted by surface area, no interpolation); the two agree on 0 for identical masks
and on the penalty. On 60 pairs of smooth random 40^3 blobs (1 mm, 3 mm and 1 x 1 x 2 mm) they
differed by at most 0.61 voxel (median 0, 90 % within [-0.29, 0.39] voxel).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage
from torch import Tensor
from torchmetrics import Metric

from lightning_ada.metrics.regions import Regions, region_masks

__all__ = [
    "DILATION_ITERATIONS",
    "HD95_PENALTY",
    "LESION_METRICS",
    "MIN_LESION_VOLUME",
    "LesionMetrics",
    "LesionScore",
    "brats_regions",
    "case_lesion_metrics",
    "lesion_scores",
]

#: BraTS-GLI (also SSA, PED) dilation of the ground truth, iterations of the 18-connected element
DILATION_ITERATIONS = 3
#: BraTS-GLI (also SSA, MEN, PED) threshold: GT lesions of at most this volume (mm^3) are dropped
MIN_LESION_VOLUME = 50.0
#: HD95 of a missed lesion or a false positive (mm)
HD95_PENALTY = 374.0
#: the per-region values (keys ``lesion_dice_<region>``, ``lesion_hd95_<region>``)
LESION_METRICS = ("lesion_dice", "lesion_hd95")

#: 26-connectivity of the connected components (official: cc3d ``connectivity=26``)
_COMPONENTS = ndimage.generate_binary_structure(3, 3)
#: the dilation's element: 3x3x3 without its 8 corners (official: generate_binary_structure(3, 2))
_DILATION = ndimage.generate_binary_structure(3, 2)


@dataclass(frozen=True)
class LesionScore:
    """Lesion-wise result of one case and one region.

    Attributes:
        dice: lesion-wise Dice, ``sum(lesion Dice) / (#lesions + #false positives)``.
        hd95: lesion-wise HD95 in mm, ``(sum(lesion HD95) + penalty * #fp) / (#lesions + #fp)``.
        lesion_dice: Dice of each scored GT lesion (after merging and the size threshold).
        lesion_hd95: HD95 of each scored GT lesion (``penalty`` when missed), mm.
        missed: scored GT lesions no predicted component reaches.
        false_positives: predicted components matched to no GT lesion.
        dropped: GT lesions at or under the size threshold (not scored).
    """

    dice: float
    hd95: float
    lesion_dice: tuple[float, ...]
    lesion_hd95: tuple[float, ...]
    missed: int
    false_positives: int
    dropped: int


def _binary(mask: Any) -> np.ndarray:
    m = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if m.ndim != 3:
        raise ValueError(f"one binary mask (H, W, D) expected; got shape {m.shape}")
    return m.astype(bool)


def _hd95(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> float:
    """MONAI HD95 (mm) of two non-empty masks, as :func:`.regions.case_metrics` computes it."""
    p = torch.from_numpy(pred)[None, None].double()
    g = torch.from_numpy(target)[None, None].double()
    with warnings.catch_warnings():  # monai 1.6 get_mask_edges(always_return_as_numpy=)
        warnings.filterwarnings("ignore", ".*always_return_as_numpy.*", FutureWarning)
        hd = compute_hausdorff_distance(
            p, g, include_background=True, percentile=95, directed=False,
            spacing=[float(s) for s in spacing],
        )
    return float(hd[0, 0])


def lesion_scores(
    pred: Any,
    target: Any,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    min_volume: float = MIN_LESION_VOLUME,
    dilation_iterations: int = DILATION_ITERATIONS,
    penalty: float = HD95_PENALTY,
) -> LesionScore:
    """Lesion-wise Dice and HD95 of one case and one region (BraTS 2023, see the module doc).

    Args:
        pred: predicted binary mask ``(H, W, D)`` (numpy or torch; non-zero is foreground).
        target: ground-truth binary mask, same shape.
        spacing: voxel size in mm along (H, W, D), for the HD95 and the lesion volumes.
        min_volume: GT lesions of volume ``<= min_volume`` mm^3 are dropped (BraTS-GLI: 50;
            BraTS-MET: 2).
        dilation_iterations: iterations of the 18-connected dilation that defines a lesion's
            matching region and merges close lesions (BraTS-GLI: 3; MEN, MET: 1).
        penalty: HD95 (mm) of a missed lesion and of a false positive (BraTS: 374).

    Returns:
        The case's :class:`LesionScore`.
    """
    p, g = _binary(pred), _binary(target)
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and target {g.shape} differ")
    if dilation_iterations < 1:
        raise ValueError(f"dilation_iterations must be >= 1; got {dilation_iterations}")
    voxel_volume = math.prod(float(s) for s in spacing)
    pred_cc, n_pred = ndimage.label(p, structure=_COMPONENTS)
    # one lesion per 26-connected component of the dilated GT: GT components whose dilations
    # touch or overlap are merged, and the component is the merged lesion's matching region
    regions_cc, n_lesions = ndimage.label(
        ndimage.binary_dilation(g, structure=_DILATION, iterations=dilation_iterations),
        structure=_COMPONENTS,
    )
    matched = np.zeros(n_pred + 1, dtype=bool)
    dice: list[float] = []
    hd95: list[float] = []
    missed = dropped = 0
    for k in range(1, n_lesions + 1):
        region = regions_cc == k
        lesion = g & region
        hits = np.unique(pred_cc[region])
        hits = hits[hits > 0]
        matched[hits] = True  # matched even when the lesion is dropped: then no false positive
        if lesion.sum() * voxel_volume <= min_volume:
            dropped += 1
            continue
        if hits.size == 0:
            missed += 1
            dice.append(0.0)
            hd95.append(float(penalty))
            continue
        found = np.isin(pred_cc, hits)  # the matched components whole
        dice.append(2.0 * float((found & lesion).sum()) / float(found.sum() + lesion.sum()))
        hd95.append(_hd95(found, lesion, spacing))
    false_positives = int(n_pred - matched[1:].sum())
    n = len(dice) + false_positives
    if n == 0:
        case_dice, case_hd95 = 1.0, 0.0
    else:
        case_dice = sum(dice) / n
        case_hd95 = (sum(hd95) + false_positives * float(penalty)) / n
    return LesionScore(
        dice=case_dice, hd95=case_hd95, lesion_dice=tuple(dice), lesion_hd95=tuple(hd95),
        missed=missed, false_positives=false_positives, dropped=dropped,
    )


def brats_regions(values: Literal["classes", "labels"] = "classes") -> dict[str, list[int]]:
    """The BraTS evaluation regions WT (whole tumour), TC (tumour core) and ET.

    WT = NCR/NET + ED + ET, TC = NCR/NET + ET, ET = ET, as unions of

    * ``values="labels"``: the BraTS 2018 label values on disk (NCR/NET = 1, ED = 2, ET = 4);
    * ``values="classes"``: the class indices of the ``SegmentationModule`` with the label order
      NCR, ED, ET (1, 2, 3; also the BraTS 2023 glioma labels NETC = 1, SNFH = 2, ET = 3 of the
      official lesion-wise code).

    Returns:
        ``{"WT": [...], "TC": [...], "ET": [...]}`` for :func:`.regions.region_masks`.
    """
    if values not in ("classes", "labels"):
        raise ValueError(f"values must be 'classes' or 'labels'; got {values!r}")
    ncr, ed, et = (1, 2, 4) if values == "labels" else (1, 2, 3)
    return {"WT": [ncr, ed, et], "TC": [ncr, et], "ET": [et]}


def case_lesion_metrics(
    pred: Tensor,
    target: Tensor,
    regions: Regions,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    **params: Any,
) -> dict[str, dict[str, float]]:
    """Lesion-wise Dice and HD95 of ONE case for each region of class-index volumes.

    Args:
        pred: predicted class indices ``(H, W, D)``, ``(1, H, W, D)`` or ``(1, 1, H, W, D)``.
        target: ground-truth class indices, same shape.
        regions: region name -> class indices (e.g. :func:`brats_regions`).
        spacing: voxel size in mm along (H, W, D).
        **params: ``min_volume``, ``dilation_iterations``, ``penalty`` of :func:`lesion_scores`.

    Returns:
        ``{region: {"lesion_dice": ., "lesion_hd95": .}}``.
    """
    p, g = region_masks(pred, regions).cpu(), region_masks(target, regions).cpu()
    if p.shape != g.shape or p.shape[0] != 1:
        raise ValueError(f"one case expected, same shapes; got {pred.shape}, {target.shape}")
    out = {}
    for i, r in enumerate(regions):
        s = lesion_scores(p[0, i], g[0, i], spacing, **params)
        out[r] = {"lesion_dice": s.dice, "lesion_hd95": s.hd95}
    return out


class LesionMetrics(Metric):
    """DDP-safe running means of per-case lesion-wise Dice and HD95 (:func:`lesion_scores`).

    Same interface as :class:`~lightning_ada.metrics.regions.RegionMetrics`. Lesion-wise values
    are defined for every case (no NaN). States (``dist_reduce_fx="sum"``): the ``(R, 2)`` sums of
    the per-case values and the case count. Per-case rows are not synced under DDP.

    Args:
        regions: region name -> class indices.
        spacing: default voxel size in mm along (H, W, D); None means 1 mm isotropic.
        keep_per_case: store one flat row per case for :meth:`per_case`.
        min_volume, dilation_iterations, penalty: the parameters of :func:`lesion_scores`
            (defaults: BraTS-GLI).
        **kwargs: forwarded to :class:`torchmetrics.Metric`.
    """

    full_state_update = False

    def __init__(
        self,
        regions: Regions,
        spacing: Sequence[float] | None = None,
        keep_per_case: bool = False,
        min_volume: float = MIN_LESION_VOLUME,
        dilation_iterations: int = DILATION_ITERATIONS,
        penalty: float = HD95_PENALTY,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.regions = {str(k): [int(i) for i in v] for k, v in regions.items()}
        self.spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * 3
        self.keep_per_case = keep_per_case
        self.params = {"min_volume": float(min_volume),
                       "dilation_iterations": int(dilation_iterations), "penalty": float(penalty)}
        shape = (len(self.regions), len(LESION_METRICS))
        self.add_state("value_sum", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("case_count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
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
        p, g = region_masks(pred, self.regions).cpu(), region_masks(target, self.regions).cpu()
        if p.shape != g.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        sp = torch.as_tensor(self.spacing if spacing is None else spacing, dtype=torch.float64)
        sp = sp.expand(p.shape[0], -1) if sp.ndim == 1 else sp
        for b in range(p.shape[0]):
            scores = [lesion_scores(p[b, i], g[b, i], sp[b].tolist(), **self.params)
                      for i in range(len(self.regions))]
            vals = torch.tensor([[s.dice, s.hd95] for s in scores], dtype=torch.float64,
                                device=self.value_sum.device)
            self.value_sum += vals
            self.case_count += 1.0
            if self.keep_per_case:
                row: dict[str, Any] = {} if case_ids is None else {"case_id": case_ids[b]}
                for r, s in zip(self.regions, scores):
                    row[f"lesion_dice_{r}"] = s.dice
                    row[f"lesion_hd95_{r}"] = s.hd95
                self._rows.append(row)

    def compute(self) -> dict[str, Tensor]:
        """Means over cases (NaN before any case).

        Returns:
            ``{"lesion_dice_<region>", "lesion_hd95_<region>", "lesion_dice_mean",
            "lesion_hd95_mean"}`` (the means are over regions of the per-region means).
        """
        mean = self.value_sum / self.case_count  # 0/0 -> NaN
        out: dict[str, Tensor] = {}
        for j, m in enumerate(LESION_METRICS):
            for i, r in enumerate(self.regions):
                out[f"{m}_{r}"] = mean[i, j].float()
            out[f"{m}_mean"] = mean[:, j].mean().float()
        return out

    def per_case(self) -> list[dict[str, Any]]:
        """Per-case rows ``{"case_id"?, "lesion_dice_<region>", "lesion_hd95_<region>"}`` (this
        rank's)."""
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
