"""Rater styles (issue 15): each style differs from the consensus by the configured amount."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from lightning_ada.phantom.raters import (
    DEFAULT_RATERS,
    RaterStyle,
    apply_style,
    inter_rater_dice,
    rater_masks,
)


def _cube(k: int = 6, size: int = 16, value: int = 1, at: int = 5) -> np.ndarray:
    lab = np.zeros((size,) * 3, np.uint8)
    lab[at : at + k, at : at + k, at : at + k] = value
    return lab


def _nested(size: int = 16) -> np.ndarray:
    """A 8^3 oedema cube (label 2) around a 4^3 core (label 1)."""
    lab = _cube(8, size, 2, 4)
    lab[6:10, 6:10, 6:10] = 1
    return lab


def test_chessboard_dilation_of_a_cube_adds_exactly_its_shell():
    cube = _cube(6)
    out = apply_style(cube, RaterStyle("r", margin=1, metric="chessboard"))
    np.testing.assert_array_equal(out, _cube(8, at=4))  # (k+2)^3: the one-voxel shell
    assert (out > 0).sum() - (cube > 0).sum() == 8**3 - 6**3
    out2 = apply_style(cube, RaterStyle("r", margin=2, metric="chessboard"))
    np.testing.assert_array_equal(out2, _cube(10, at=3))


def test_euclidean_margin_adds_the_faces_only_and_erosion_peels_one_layer():
    cube = _cube(6)
    out = apply_style(cube, RaterStyle("r", margin=1))
    assert (out > 0).sum() == 6**3 + 6 * 6**2  # six faces, no edges or corners
    assert out[4, 4, 5] == 0 and out[4, 5, 5] == 1  # an edge voxel out, a face voxel in
    for metric in ("euclidean", "chessboard"):
        np.testing.assert_array_equal(
            apply_style(cube, RaterStyle("t", margin=-1, metric=metric)), _cube(4, at=6)
        )
    # the volume border counts as background when eroding
    full = np.ones((6, 6, 6), np.uint8)
    assert (apply_style(full, RaterStyle("t", margin=-1)) > 0).sum() == 4**3


def test_margin_moves_only_the_outer_boundary_of_a_multi_label_mask():
    lab = _nested()
    grown = apply_style(lab, RaterStyle("g", margin=1, metric="chessboard"))
    np.testing.assert_array_equal(grown == 1, lab == 1)  # the core is untouched
    assert (grown == 2).sum() == 10**3 - 4**3  # new voxels take the outer (oedema) label
    tight = apply_style(lab, RaterStyle("t", margin=-1))
    np.testing.assert_array_equal(tight == 1, lab == 1)
    assert (tight == 2).sum() == 6**3 - 4**3


def test_omitting_oedema_removes_exactly_the_oedema_voxels():
    lab = _nested()
    out = apply_style(lab, RaterStyle("core", omit_labels=(2,)))
    np.testing.assert_array_equal(out, np.where(lab == 2, 0, lab))
    assert (out > 0).sum() == 4**3


def test_missed_small_components_are_those_below_the_threshold():
    lab = _cube(5, 20, 1, 2)  # 125 voxels
    lab[14:16, 14:16, 14:16] = 1  # 8 voxels
    lab[14:17, 2:5, 14:17] = 1  # 27 voxels
    out = apply_style(lab, RaterStyle("m", min_component_voxels=27))
    assert (out > 0).sum() == 125 + 27 and not out[14:16, 14:16, 14:16].any()
    assert (apply_style(lab, RaterStyle("m", min_component_voxels=28)) > 0).sum() == 125


def test_smoothing_removes_a_thin_spike_and_keeps_a_smooth_body():
    lab = _cube(8, 20, 1, 4)
    lab[8, 8, 12:17] = 1  # a 1-voxel-thin spike of 5 voxels
    out = apply_style(lab, RaterStyle("s", smoothing=1.0))
    assert not out[8, 8, 13:17].any()  # the spike is gone
    assert (out[5:11, 5:11, 5:11] == 1).all()  # the cube's interior stays
    np.testing.assert_array_equal(apply_style(lab, RaterStyle("s0", smoothing=0.0)), lab)
    changed = [
        int((apply_style(lab, RaterStyle("s", smoothing=s)) != lab).sum()) for s in (0.5, 1.0, 2.0)
    ]
    assert changed[0] <= changed[1] <= changed[2] and changed[2] > changed[0]


def test_rater_masks_of_the_same_scan_differ_by_style_and_serialise():
    lab = _nested(20)
    masks = rater_masks(lab)
    assert list(masks) == [s.name for s in DEFAULT_RATERS]
    vol = {k: int((m > 0).sum()) for k, m in masks.items()}
    consensus = int((lab > 0).sum())
    assert vol["generous"] > consensus > vol["tight"] and vol["core_only"] == 4**3
    agreement = inter_rater_dice(masks)
    assert len(agreement) == 6 and all(0.0 <= d < 1.0 for d in agreement.values())
    json.dumps([s.to_json() for s in DEFAULT_RATERS])
    with pytest.raises(ValueError, match="unique"):
        rater_masks(lab, [RaterStyle("a"), RaterStyle("a", margin=1)])
    with pytest.raises(ValueError, match="rater name"):
        RaterStyle("a/b")


def test_a_partial_margin_moves_exactly_its_share_of_the_boundary_in_one_stretch():
    cube = _cube(6)
    full = 8**3 - 6**3
    out = apply_style(
        cube,
        RaterStyle("g", margin=1, metric="chessboard", margin_fraction=0.5),
        np.random.default_rng(0),
    )
    added = (out > 0) & (cube == 0)
    assert added.sum() == round(0.5 * full) and ((out > 0) >= (cube > 0)).all()
    _, n_parts = ndimage.label(added)
    assert n_parts <= 4  # contiguous stretches, not salt and pepper
    tight = apply_style(
        cube, RaterStyle("t", margin=-1, margin_fraction=0.25), np.random.default_rng(0)
    )
    assert (cube > 0).sum() - (tight > 0).sum() == round(0.25 * (6**3 - 4**3))
    with pytest.raises(ValueError, match="needs an rng"):
        apply_style(cube, RaterStyle("g", margin=1, margin_fraction=0.5))
    a = rater_masks(cube, seed=[0, 1])
    np.testing.assert_array_equal(a["generous"], rater_masks(cube, seed=[0, 1])["generous"])
    assert (a["generous"] != rater_masks(cube, seed=[0, 2])["generous"]).any()
