"""Revision measure (issue 15): symmetric difference over reference, surface beyond tolerance."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_ada.metrics.revision import revision, revision_binary


def _cube(k: int, at: int, size: int = 16) -> torch.Tensor:
    m = torch.zeros((size,) * 3, dtype=torch.bool)
    m[at : at + k, at : at + k, at : at + k] = True
    return m


def test_a_one_voxel_shell_costs_its_volume_and_its_edges_and_corners_beyond_one_voxel():
    ref, pred = _cube(8, 4), _cube(10, 3)  # the prediction adds the one-voxel (chessboard) shell
    # boundaries (mask minus erosion): 10^3 - 8^3 = 488 predicted, 8^3 - 6^3 = 296 reference voxels.
    # Every reference boundary voxel and every predicted face voxel is 1 voxel from the other
    # boundary; the 12 x 8 predicted edge voxels are sqrt(2) away and the 8 corners sqrt(3).
    total = 488 + 296
    for tol, beyond in [(0.5, total), (1.0, 96 + 8), (1.5, 8), (1.8, 0)]:
        r = revision_binary(pred, ref, tolerance_mm=tol)
        assert r["volume"] == pytest.approx(488 / 512)
        assert r["surface"] == pytest.approx(beyond / total)


def test_spacing_scales_the_tolerance():
    ref = _cube(6, 5)
    pred = torch.roll(ref, 1, dims=0)  # shifted by one voxel along axis 0
    assert revision_binary(pred, ref)["volume"] == pytest.approx(2 * 36 / 216)
    assert revision_binary(pred, ref, 1.0)["surface"] == 0.0
    assert revision_binary(pred, ref, 1.0, spacing=(2.0, 1.0, 1.0))["surface"] > 0.0
    assert revision_binary(pred, ref, 2.0, spacing=(2.0, 1.0, 1.0))["surface"] == 0.0


def test_empty_masks_and_identical_masks():
    empty, cube = torch.zeros((8, 8, 8), dtype=torch.bool), _cube(3, 2, 8)
    assert revision_binary(cube, cube, 0.0) == {"volume": 0.0, "surface": 0.0}
    assert revision_binary(empty, empty) == {"volume": 0.0, "surface": 0.0}
    assert revision_binary(empty, cube) == {"volume": 1.0, "surface": 1.0}
    r = revision_binary(cube, empty)
    assert math.isnan(r["volume"]) and r["surface"] == 1.0
    with pytest.raises(ValueError, match="tolerance_mm"):
        revision_binary(cube, cube, -1.0)
    with pytest.raises(ValueError, match="one shape"):
        revision_binary(cube, _cube(3, 2, 9))


def test_per_region_revision_of_class_index_volumes():
    target = torch.zeros((16, 16, 16), dtype=torch.long)
    target[4:12, 4:12, 4:12] = 2
    target[6:10, 6:10, 6:10] = 1
    pred = target.clone()
    pred[pred == 2] = 0  # the prediction misses the oedema entirely
    out = revision(pred, target, {"core": [1], "whole": [1, 2]}, tolerance_mm=1.0)
    assert out["core"] == {"volume": 0.0, "surface": 0.0}
    assert out["whole"]["volume"] == pytest.approx((512 - 64) / 512)
    assert out["whole"]["surface"] == 1.0  # every boundary voxel is 2 voxels from the other
