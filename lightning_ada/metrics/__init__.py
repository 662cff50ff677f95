"""Segmentation metrics: per-region Dice / IoU / HD95 / ASSD (:mod:`.regions`) and the revision
an annotator made to a mask (:mod:`.revision`)."""

from lightning_ada.metrics.regions import RegionMetrics, Regions, case_metrics, region_masks

__all__ = ["RegionMetrics", "Regions", "case_metrics", "region_masks"]
