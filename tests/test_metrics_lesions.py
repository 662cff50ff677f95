"""Lesion-wise Dice / HD95 (BraTS 2023, lightning_ada.metrics.lesions): answers worked by hand.

Conventions of the fixtures: 24^3 volumes at 1 mm unless a test says otherwise; a box
``[a:b, c:d, e:f]`` is numpy's half-open slice; the defaults are BraTS-GLI (dilation: 3
iterations of the 18-connected element, lesions of <= 50 mm^3 dropped, penalty 374 mm). A 4^3
cube has 64 voxels (kept) and 56 surface voxels. Three 18-connected dilation steps reach the
offsets d with max|d_i| <= 3 and |d|_1 <= 6, so a lesion's dilation spans 3 voxels beyond its
faces but only (2, 2, 2) beyond a corner along the diagonal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_ada.metrics import region_masks
from lightning_ada.metrics.lesions import (
    DILATION_ITERATIONS,
    HD95_PENALTY,
    MIN_LESION_VOLUME,
    LesionMetrics,
    brats_regions,
    case_lesion_metrics,
    lesion_scores,
)

N = 24
CONF = Path(__file__).parent / "conf"


def mask(*boxes: tuple[slice, slice, slice], size: int = N) -> np.ndarray:
    m = np.zeros((size,) * 3, dtype=bool)
    for b in boxes:
        m[b] = True
    return m


def cube(x: int, y: int = 2, z: int = 2, side: int = 4) -> tuple[slice, slice, slice]:
    return np.s_[x:x + side, y:y + side, z:z + side]


A = cube(2)  # [2:6]^3
B_FAR = cube(14, 14, 14)  # [14:18]^3: dilations reach 8 and 11, far apart


def test_defaults_are_the_official_brats_gli_parameters() -> None:
    assert (HD95_PENALTY, MIN_LESION_VOLUME, DILATION_ITERATIONS) == (374.0, 50.0, 3)


def test_perfect_prediction_of_two_lesions() -> None:
    # two separate lesions, both found exactly: each Dice 1 and HD95 0
    g = mask(A, B_FAR)
    s = lesion_scores(g, g)
    assert (s.dice, s.hd95) == (1.0, 0.0)
    assert s.lesion_dice == (1.0, 1.0) and s.lesion_hd95 == (0.0, 0.0)
    assert (s.missed, s.false_positives, s.dropped) == (0, 0, 0)


def test_missed_lesion_scores_zero_and_the_penalty() -> None:
    # lesion A found exactly (1, 0 mm), lesion B missed (0, 374 mm), no false positive:
    # Dice (1 + 0) / 2 = 0.5, HD95 (0 + 374) / 2 = 187 mm
    s = lesion_scores(mask(A), mask(A, B_FAR))
    assert s.dice == pytest.approx(0.5) and s.hd95 == pytest.approx(187.0)
    assert s.lesion_hd95 == (0.0, 374.0) and s.missed == 1


def test_false_positive_counts_as_a_lesion_whatever_its_size() -> None:
    # G = A, found exactly; P also has a 2^3 = 8-voxel component at [18:20]^3, far from A's
    # dilation (<= 8): a false positive, NOT dropped by the 50 mm^3 threshold (official: the
    # threshold applies to GT lesions only): Dice (1 + 0) / 2 = 0.5, HD95 (0 + 374) / 2 = 187
    fp = np.s_[18:20, 18:20, 18:20]
    s = lesion_scores(mask(A, fp), mask(A))
    assert s.false_positives == 1 and s.lesion_dice == (1.0,)
    assert s.dice == pytest.approx(0.5) and s.hd95 == pytest.approx(187.0)
    # two false positives: Dice 1 / 3, HD95 (0 + 2 * 374) / 3
    s2 = lesion_scores(mask(A, fp, np.s_[18:20, 2:4, 18:20]), mask(A))
    assert s2.false_positives == 2
    assert s2.dice == pytest.approx(1 / 3) and s2.hd95 == pytest.approx(2 * 374 / 3)
    # two voxels touching at a corner only are ONE component (26-connectivity): Dice 1/2
    corner = mask(A)
    corner[18, 18, 18] = corner[19, 19, 19] = True
    assert lesion_scores(corner, mask(A)).false_positives == 1


def test_component_inside_the_dilation_is_matched_not_a_false_positive() -> None:
    # one extra predicted voxel at (8, 3, 3), 3 voxels beyond A's face x = 5 (inside A's
    # dilation, not touching A): matched to A. Dice = 2*64 / (65 + 64) = 128/129. HD95: the
    # P->G distances are 56 zeros and one 3 mm, their 95th percentile (index 0.95 * 56 = 53.2
    # of the sorted 57) is 0; G->P all 0: HD95 0
    g = mask(A)
    p = g.copy()
    p[8, 3, 3] = True
    s = lesion_scores(p, g)
    assert s.false_positives == 0
    assert s.dice == pytest.approx(128 / 129) and s.hd95 == 0.0
    # one voxel further (x = 9: 4 beyond the face) it is outside the dilation: a false positive
    p2 = g.copy()
    p2[9, 3, 3] = True
    s2 = lesion_scores(p2, g)
    assert s2.false_positives == 1 and s2.dice == pytest.approx(0.5)


def test_matched_components_count_whole_not_cut_to_the_dilation() -> None:
    # P = A plus a bar [6:20, 3:5, 3:5] (56 voxels) attached to A's face: one component that
    # leaves A's dilation at x = 9. Whole: Dice = 2*64 / (120 + 64) = 16/23. Cut to the
    # dilation (bar x = 6..8, 12 voxels) it would be 128/140.
    p = mask(A, np.s_[6:20, 3:5, 3:5])
    s = lesion_scores(p, mask(A))
    assert s.false_positives == 0
    assert s.dice == pytest.approx(16 / 23)


@pytest.mark.parametrize(("x", "merged"), [(10, True), (12, True), (13, False)])
def test_lesions_whose_dilations_touch_or_overlap_are_one_lesion(x: int, merged: bool) -> None:
    # A = [2:6]^3 reaches x = 8 after dilation; B = A shifted to start at x reaches x - 3.
    # x = 10: the dilations overlap (7..8); x = 12: they touch (8 | 9); x = 13: 8 and 10, apart.
    # P = A only.
    # merged: one lesion of 128 voxels, Dice = 2*64 / (64 + 128) = 2/3. HD95: G->P, the 56
    # surface voxels of A are at 0, those of B at x - 5 mm (16 on its near face), x - 4, x - 3
    # (12 each) and x - 2 (16 on its far face); the 95th percentile of the 112 (index
    # 0.95 * 111 = 105.45, within the last 16) is x - 2; P->G all 0: HD95 = x - 2 mm.
    # apart: A (1, 0) and B missed (0, 374): Dice 0.5, HD95 187.
    g = mask(A, cube(x))
    s = lesion_scores(mask(A), g)
    if merged:
        assert len(s.lesion_dice) == 1 and s.missed == 0
        assert s.dice == pytest.approx(2 / 3) and s.hd95 == pytest.approx(x - 2)
    else:
        assert len(s.lesion_dice) == 2 and s.missed == 1
        assert s.dice == pytest.approx(0.5) and s.hd95 == pytest.approx(187.0)


def test_the_dilation_element_is_18_connected_not_the_cube() -> None:
    # A = [2:6]^3 and B = [12:16]^3 along the diagonal. With the 26-connected cube 3 times the
    # dilations are the boxes [-1, 8]^3 and [9, 18]^3, touching at (8,8,8)-(9,9,9): one lesion.
    # With the official 18-connected element (|d|_1 <= 6 from A's corner (5,5,5)) the corner
    # (8,8,8) is not reached (|d|_1 = 9) and no voxel of A's dilation touches B's: two lesions.
    # P = A only: A (1, 0) and B missed (0, 374).
    s = lesion_scores(mask(A), mask(A, cube(12, 12, 12)))
    assert len(s.lesion_dice) == 2 and s.missed == 1
    assert s.dice == pytest.approx(0.5) and s.hd95 == pytest.approx(187.0)


def test_dilations_touching_at_a_corner_merge_26_connected() -> None:
    # A = [2:6]^3 and B = [10:14]^3 along the diagonal: A's dilation reaches (7,7,7) (offset
    # (2,2,2) from A's corner), B's (8,8,8); no two voxels of them share a face or an edge (the
    # coordinate sums reach 21 and 24), they touch at a corner: one 26-connected component, one
    # lesion (official: cc3d connectivity 26 on the dilated GT). P = A: Dice 2*64 / 192 = 2/3.
    # HD95, G->P: A's 56 surface voxels at 0; a surface voxel of B at offset c from A's corner
    # (5,5,5), c_i in 5..8, at |c|. The largest of the 112: (8,8,8) 13.86, the 3 permutations of
    # (8,8,7) 13.30, of (8,8,6) sqrt(164) = 12.81, then (8,7,7) 12.73; the 95th percentile
    # (index 105.45, between the 7th and 6th largest) is sqrt(164). P->G all 0.
    s = lesion_scores(mask(A), mask(A, cube(10, 10, 10)))
    assert len(s.lesion_dice) == 1 and s.missed == 0
    assert s.dice == pytest.approx(2 / 3) and s.hd95 == pytest.approx(164 ** 0.5)


def test_lesion_at_or_under_the_threshold_is_dropped() -> None:
    # G = A (64 voxels) + a far 5x5x2 = 50-voxel lesion (50 mm^3 <= 50: dropped); P = A.
    small = np.s_[14:19, 14:19, 14:16]
    s = lesion_scores(mask(A), mask(A, small))
    assert (s.dice, s.hd95, s.dropped, s.missed) == (1.0, 0.0, 1, 0)
    # 51 voxels (> 50) are kept: missed, Dice (1 + 0) / 2, HD95 (0 + 374) / 2
    g51 = mask(A, small)
    g51[14, 14, 16] = True
    s51 = lesion_scores(mask(A), g51)
    assert (s51.dropped, s51.missed) == (0, 1)
    assert s51.dice == pytest.approx(0.5) and s51.hd95 == pytest.approx(187.0)
    # a prediction of the dropped lesion is matched to it: neither scored nor a false positive
    s_found = lesion_scores(mask(A, small), mask(A, small))
    assert (s_found.dice, s_found.hd95, s_found.false_positives) == (1.0, 0.0, 0)
    # the threshold is a parameter: at 40 mm^3 the 50-voxel lesion is scored (missed)
    s40 = lesion_scores(mask(A), mask(A, small), min_volume=40)
    assert s40.dice == pytest.approx(0.5) and s40.dropped == 0


def test_the_threshold_is_a_volume_in_mm3() -> None:
    # a lone 30-voxel lesion [4:7, 4:9, 4:6] missed by an empty prediction: 30 mm^3 at 1 mm
    # (dropped: Dice 1, HD95 0); 60 mm^3 at 2 x 1 x 1 mm (kept and missed: Dice 0, HD95 374)
    g = mask(np.s_[4:7, 4:9, 4:6])
    empty = np.zeros_like(g)
    assert (lesion_scores(empty, g).dice, lesion_scores(empty, g).hd95) == (1.0, 0.0)
    s = lesion_scores(empty, g, spacing=(2.0, 1.0, 1.0))
    assert (s.dice, s.hd95, s.missed) == (0.0, 374.0, 1)


def test_empty_ground_truth_and_empty_prediction() -> None:
    empty = np.zeros((N,) * 3, dtype=bool)
    s = lesion_scores(empty, empty)
    assert (s.dice, s.hd95, s.lesion_dice, s.false_positives) == (1.0, 0.0, (), 0)


def test_empty_ground_truth_with_a_prediction() -> None:
    # every predicted component is a false positive: Dice 0 / n = 0, HD95 374 n / n = 374
    empty = np.zeros((N,) * 3, dtype=bool)
    for p in (mask(A), mask(A, B_FAR)):
        s = lesion_scores(p, empty)
        assert (s.dice, s.hd95) == (0.0, 374.0)
    assert lesion_scores(mask(A, B_FAR), empty).false_positives == 2
    # the same when the GT only has a dropped lesion and the prediction is elsewhere
    s = lesion_scores(mask(B_FAR), mask(np.s_[2:4, 2:4, 2:4]))
    assert (s.dice, s.hd95, s.dropped, s.false_positives) == (0.0, 374.0, 1, 1)


def test_spacing_gives_hd95_in_mm_and_leaves_the_penalty() -> None:
    # spacing 2 x 1 x 1 mm. G = slab [4:6, 4:12, 4:12], P = the slab one voxel further along x
    # [5:7, 4:12, 4:12]; 2 voxels thick, so every voxel is a surface voxel. Overlap x = 5:
    # Dice 2*64 / 256 = 0.5. Distances both ways: 64 at 0 mm (x = 5) and 64 at one step along
    # x = 2 mm (no other voxel is closer): 95th percentile 2 mm.
    sp = (2.0, 1.0, 1.0)
    g, p = mask(np.s_[4:6, 4:12, 4:12]), mask(np.s_[5:7, 4:12, 4:12])
    s = lesion_scores(p, g, spacing=sp)
    assert s.dice == pytest.approx(0.5) and s.hd95 == pytest.approx(2.0)
    assert lesion_scores(p, g).hd95 == pytest.approx(1.0)  # 1 mm at 1 mm spacing
    # plus a far false positive: Dice 0.5 / 2, HD95 (2 + 374) / 2 = 188 (374 mm, not scaled)
    p_fp = p | mask(np.s_[20:22, 18:20, 18:20])
    s_fp = lesion_scores(p_fp, g, spacing=sp)
    assert s_fp.dice == pytest.approx(0.25) and s_fp.hd95 == pytest.approx(188.0)


def test_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="differ"):
        lesion_scores(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match="H, W, D"):
        lesion_scores(np.zeros((1, 4, 4, 4)), np.zeros((1, 4, 4, 4)))
    with pytest.raises(ValueError, match="classes"):
        brats_regions("values")  # type: ignore[arg-type]


def test_brats_regions_from_label_values_and_class_indices() -> None:
    assert brats_regions("labels") == {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}
    assert brats_regions() == {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}
    # one voxel of each: NCR, ED, ET on disk (1, 2, 4) and as classes (1, 2, 3)
    disk = torch.zeros(4, 4, 4, dtype=torch.long)
    disk[0, 0, 0], disk[1, 0, 0], disk[2, 0, 0] = 1, 2, 4
    classes = disk.clone()
    classes[disk == 4] = 3
    m = region_masks(disk, brats_regions("labels"))
    assert torch.equal(m, region_masks(classes, brats_regions("classes")))
    assert m[0].flatten(1).sum(1).tolist() == [3, 2, 1]  # WT all three, TC NCR + ET, ET


def class_volume() -> torch.Tensor:
    """NCR [2:6]^3 (64) in ED [1:7]^3; ET [10:14, 2:6, 2:6] (64) in ED [9:15, 1:7, 1:7]."""
    v = torch.zeros(N, N, N, dtype=torch.long)
    v[1:7, 1:7, 1:7] = 2
    v[2:6, 2:6, 2:6] = 1
    v[9:15, 1:7, 1:7] = 2
    v[10:14, 2:6, 2:6] = 3
    return v


def test_case_lesion_metrics_of_the_brats_regions() -> None:
    # the prediction calls the ET block NCR: WT and TC unchanged (perfect), ET missed (0, 374)
    target = class_volume()
    pred = target.clone()
    pred[pred == 3] = 1
    r = case_lesion_metrics(pred, target, brats_regions())
    assert r["WT"] == r["TC"] == {"lesion_dice": 1.0, "lesion_hd95": 0.0}
    assert r["ET"] == {"lesion_dice": 0.0, "lesion_hd95": 374.0}


def test_lesion_metrics_means_rows_and_merge() -> None:
    target = class_volume()
    pred = target.clone()
    pred[pred == 3] = 1  # case "a": ET missed (0, 374), WT and TC perfect
    regions = brats_regions()
    m = LesionMetrics(regions, keep_per_case=True)
    m.update(torch.stack([pred, target])[:, None], torch.stack([target, target])[:, None],
             case_ids=["a", "b"])
    out = m.compute()
    assert set(out) == {f"{k}_{r}" for k in ("lesion_dice", "lesion_hd95")
                        for r in [*regions, "mean"]}
    # ET over the two cases: Dice (0 + 1) / 2, HD95 (374 + 0) / 2; means over WT, TC, ET
    assert out["lesion_dice_ET"].item() == pytest.approx(0.5)
    assert out["lesion_hd95_ET"].item() == pytest.approx(187.0)
    assert out["lesion_dice_mean"].item() == pytest.approx((1 + 1 + 0.5) / 3)
    assert out["lesion_hd95_mean"].item() == pytest.approx(187 / 3)
    rows = m.per_case()
    assert [r["case_id"] for r in rows] == ["a", "b"]
    assert rows[0]["lesion_dice_ET"] == 0.0 and rows[0]["lesion_hd95_ET"] == 374.0
    assert rows[1]["lesion_dice_WT"] == 1.0
    # merge_state (what DDP sync does) of one case each gives the two-case means
    m1, m2 = LesionMetrics(regions), LesionMetrics(regions)
    m1.update(pred[None], target[None])
    m2.update(target[None], target[None])
    m1.merge_state(m2)
    assert m1.compute()["lesion_hd95_ET"].item() == pytest.approx(187.0)
    m.reset()
    assert m.per_case() == [] and float(m.case_count) == 0


def test_lesion_metrics_per_case_spacing() -> None:
    # the slab pair of the spacing test: HD95 2 mm at 2 x 1 x 1 mm, 1 mm at the default 1 mm
    g = torch.from_numpy(mask(np.s_[4:6, 4:12, 4:12])).long()
    p = torch.from_numpy(mask(np.s_[5:7, 4:12, 4:12])).long()
    m = LesionMetrics({"FG": [1]}, keep_per_case=True)
    m.update(torch.stack([p, p]), torch.stack([g, g]), spacing=[(2.0, 1.0, 1.0), (1.0, 1.0, 1.0)])
    assert [r["lesion_hd95_FG"] for r in m.per_case()] == pytest.approx([2.0, 1.0])


# ------------------------------------------------------------------ the module option
BRATS_EVAL = "{WT: [NCR, ED, ET], TC: [NCR, ET]}"


def test_lesion_regions_of_the_module() -> None:
    from lightning_ada.models.module import SegmentationModule

    tiny = {"filters": [4, 8, 16]}
    wt_tc = {"WT": ["NCR", "ED", "ET"], "TC": ["NCR", "ET"]}
    brats = SegmentationModule(eval_regions=wt_tc, lesion_wise=True, **tiny)
    assert brats.lesion_regions == brats_regions()  # WT, TC from eval_regions, ET a label
    # without WT and TC, the BraTS regions that exist: ET
    assert SegmentationModule(**tiny).lesion_regions == {"ET": [3]}
    # none of WT, TC, ET (NPC): every label region
    npc = SegmentationModule(labels={"GTV": 1}, lesion_wise=True, **tiny)
    assert npc.lesion_regions == {"GTV": [1]}
    # off: no lesion-wise metric is built; on or off, the weights are the same
    assert not hasattr(SegmentationModule(**tiny), "test_lesion_metrics")
    off = SegmentationModule(eval_regions=wt_tc, **tiny)
    assert set(brats.state_dict()) == set(off.state_dict())


@pytest.mark.slow
def test_cli_test_logs_lesion_wise_metrics_next_to_unchanged_voxel_metrics(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    """``--model.lesion_wise true``: test and extra-split keys in range, per-case rows carry them,
    and every voxel metric is the one of the same run without the option."""
    from lightning_ada.main import main

    common = [
        "test", "-c", str(CONF / "random_tiny.yaml"), "--data.root", str(phantom_root),
        "--model.source_checkpoint", str(source_ckpt), "--model.eval_regions", BRATS_EVAL,
        "--data.extra_test_splits", "[source_test]",
    ]
    off = main([*common, "--trainer.default_root_dir", str(tmp_path / "off")])
    on = main([*common, "--model.lesion_wise", "true",
               "--trainer.default_root_dir", str(tmp_path / "on")])
    m_off, m_on = off.trainer.callback_metrics, on.trainer.callback_metrics
    lesion_keys = {f"{split}/lesion_{k}_{r}" for split in ("test", "source_test")
                   for k in ("dice", "hd95") for r in ("WT", "TC", "ET", "mean")}
    assert not any("lesion" in k for k in m_off)
    assert set(m_on) == set(m_off) | lesion_keys
    for k, v in m_off.items():  # the voxel metrics are unchanged
        assert float(m_on[k]) == pytest.approx(float(v), nan_ok=True), k
    for k in lesion_keys:
        value = float(m_on[k])
        assert (0.0 <= value <= 1.0) if "_dice_" in k else (0.0 <= value <= HD95_PENALTY), k

    for rows, split in [(on.model.last_test_per_case, "test"),
                        (on.model.last_extra_per_case["source_test"], "source_test")]:
        assert sorted(r["case_id"] for r in rows) == sorted(on.datamodule.split_ids[split])
        for r in ("WT", "TC", "ET"):
            for k in ("dice", "hd95"):
                mean = np.mean([row[f"lesion_{k}_{r}"] for row in rows])
                assert float(m_on[f"{split}/lesion_{k}_{r}"]) == pytest.approx(mean, rel=1e-5)
    # the per-case voxel values are those of the run without the option
    drop = [{k: v for k, v in row.items() if not k.startswith("lesion_")}
            for row in on.model.last_test_per_case]
    assert len(drop) == len(off.model.last_test_per_case) == len(on.datamodule.split_ids["test"])
    for a, b in zip(drop, off.model.last_test_per_case):
        assert a == pytest.approx(b, nan_ok=True)
