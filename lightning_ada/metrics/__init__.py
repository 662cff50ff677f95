"""Segmentation metrics: per-region Dice / IoU / HD95 / ASSD (:mod:`.regions`), the BraTS 2023
lesion-wise Dice and HD95 (:mod:`.lesions`) and the revision an annotator made to a mask
(:mod:`.revision`)."""

from lightning_ada.metrics.lesions import LesionMetrics, brats_regions, lesion_scores
from lightning_ada.metrics.regions import RegionMetrics, Regions, case_metrics, region_masks

__all__ = [
    "LesionMetrics",
    "RegionMetrics",
    "Regions",
    "brats_regions",
    "case_metrics",
    "lesion_scores",
    "region_masks",
]
