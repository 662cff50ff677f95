"""Analytic fixtures for lightning_ada.metrics (answers known exactly)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from lightning_ada.metrics import RegionMetrics, case_metrics, region_masks

FG = {"FG": [1]}
BRATS = {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}


def vol(*boxes: tuple[tuple[int, int], tuple[int, int], tuple[int, int], int], size: int = 12):
    """(size,)*3 class-index volume with boxes ((x0,x1),(y0,y1),(z0,z1),label)."""
    v = torch.zeros(size, size, size, dtype=torch.long)
    for (x0, x1), (y0, y1), (z0, z1), lab in boxes:
        v[x0:x1, y0:y1, z0:z1] = lab
    return v


def points(*pts: tuple[int, int, int], size: int = 12) -> torch.Tensor:
    v = torch.zeros(size, size, size, dtype=torch.long)
    for p in pts:
        v[p] = 1
    return v


CUBE = ((2, 6), (2, 6), (2, 6), 1)
PERFECT = {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "assd": 0.0}


def test_region_masks_shapes_and_union():
    v = vol(((0, 2), (0, 2), (0, 2), 1), ((2, 4), (0, 2), (0, 2), 2), ((4, 6), (0, 2), (0, 2), 3))
    m = region_masks(v, BRATS)
    assert m.shape == (1, 3, 12, 12, 12) and m.dtype == torch.bool
    assert m[0].flatten(1).sum(1).tolist() == [24, 16, 8]
    batched = v[None, None].repeat(2, 1, 1, 1, 1)
    assert torch.equal(region_masks(batched, BRATS), m.repeat(2, 1, 1, 1, 1))
    assert torch.equal(region_masks(v[None], BRATS), m)
    with pytest.raises(ValueError):
        region_masks(v[None, None].repeat(1, 2, 1, 1, 1), BRATS)


def test_dice_iou_half_overlap():
    # two 4x4x4 cubes overlapping in 2x4x4: Dice = 2*32/128 = 0.5, IoU = 32/96 = 1/3
    r = case_metrics(vol(CUBE), vol(((4, 8), (2, 6), (2, 6), 1)), FG, distances=False)["FG"]
    assert set(r) == {"dice", "iou"}
    assert r["dice"] == pytest.approx(0.5) and r["iou"] == pytest.approx(1 / 3)


def test_multi_region_composition_and_one_empty():
    yz = ((0, 4), (0, 4))
    target = vol(((0, 2), *yz, 1), ((2, 4), *yz, 2), ((4, 6), *yz, 3))  # NCR | ED | ET slabs
    pred = target.clone()
    pred[pred == 3] = 1  # ET called NCR: WT and TC unchanged, ET missed entirely
    r = case_metrics(pred, target, BRATS)
    for reg in ("WT", "TC"):
        assert r[reg] == PERFECT
    assert r["ET"]["dice"] == 0.0 and r["ET"]["iou"] == 0.0
    assert math.isnan(r["ET"]["hd95"]) and math.isnan(r["ET"]["assd"])
    # the other way round (prediction only) is also "exactly one empty"
    r2 = case_metrics(target, pred, {"ET": [3]})["ET"]
    assert r2["dice"] == 0.0 and math.isnan(r2["hd95"]) and math.isnan(r2["assd"])


def test_both_empty_policy():
    empty = torch.zeros(8, 8, 8, dtype=torch.long)
    assert case_metrics(empty, empty, FG)["FG"] == PERFECT


def test_identical_masks_zero_distance():
    v = vol(CUBE, ((6, 9), (6, 9), (6, 9), 2))
    r = case_metrics(v, v, {"A": [1], "B": [2]}, spacing=(2.0, 0.5, 3.0))
    assert all(x == PERFECT for x in r.values())


@pytest.mark.parametrize("k", [1, 2, 3])
def test_parallel_planes_offset_anisotropic(k):
    # one-voxel-thick planes (every voxel is surface) k voxels apart along an axis of 2 mm
    a = vol(((2, 3), (0, 12), (0, 12), 1))
    b = vol(((2 + k, 3 + k), (0, 12), (0, 12), 1))
    r = case_metrics(a, b, FG, spacing=(2.0, 1.0, 1.0))["FG"]
    assert r["hd95"] == pytest.approx(2 * k) and r["assd"] == pytest.approx(2 * k)
    assert r["dice"] == 0.0


@pytest.mark.parametrize(
    ("spacing", "hd95", "assd"), [((1, 1, 1), 1.0, 20 / 56), ((2, 1, 1), 2.0, 36 / 56)]
)
def test_cube_vs_shifted_cube(spacing, hd95, assd):
    # 4^3 cube (56 surface voxels) vs the same cube shifted by one voxel along axis 0. In each
    # direction 16 voxels of the trailing face are one step (sx mm) away, the 4 inner voxels of
    # the leading face are min(sx, sy) away, the other 36 lie on the other surface (0 mm).
    r = case_metrics(vol(CUBE), vol(((3, 7), (2, 6), (2, 6), 1)), FG, spacing=spacing)["FG"]
    assert r["hd95"] == pytest.approx(hd95) and r["assd"] == pytest.approx(assd)
    assert r["dice"] == pytest.approx(2 * 48 / 128)


def test_asymmetric_surfaces_pooled_assd_and_max_directed_hd95():
    # P = one voxel, G = two voxels at distance 3 and 5 from it.
    # d(P->G) = {3}, d(G->P) = {3, 5}.
    # pooled ASSD = (3+3+5)/3 = 11/3; mean of directed means = (3+4)/2 = 3.5.
    # HD95 MONAI = max(q95{3}, q95{3,5}) = max(3, 4.9) = 4.9; pooled q95{3,3,5} = 4.8.
    p = points((2, 2, 2))
    g = points((5, 2, 2), (5, 6, 2))
    r = case_metrics(p, g, FG)["FG"]
    assert r["assd"] == pytest.approx(11 / 3) and r["assd"] != pytest.approx(3.5)
    assert r["hd95"] == pytest.approx(4.9)
    assert case_metrics(g, p, FG)["FG"] == r  # symmetric


def _batch(*vols):
    return torch.stack(vols)


def test_region_metrics_accumulates_means_and_nans():
    regions = {"TC": [1, 3], "ET": [3]}
    t1 = vol(((2, 6), (2, 6), (2, 6), 1), ((3, 5), (3, 5), (3, 5), 3))
    p1 = vol(((2, 6), (2, 6), (3, 7), 1), ((3, 5), (3, 5), (4, 6), 3))
    t2 = vol(((4, 8), (4, 8), (4, 8), 3))
    p2 = vol(((5, 8), (4, 8), (4, 8), 1))  # ET missed -> NaN distances
    t3, p3 = vol(CUBE), vol(CUBE)  # no ET anywhere -> both empty
    t4, p4 = vol(((1, 9), (1, 9), (1, 5), 3)), vol(((1, 9), (1, 9), (2, 6), 3))
    preds, targets = [p1, p2, p3, p4], [t1, t2, t3, t4]

    m = RegionMetrics(regions, distances=True, keep_per_case=True)
    m.update(_batch(p1, p2)[:, None], _batch(t1, t2)[:, None], case_ids=["a", "b"])
    m.update(_batch(p3, p4), _batch(t3, t4), case_ids=["c", "d"])
    out = m.compute()
    metrics = ("dice", "iou", "hd95", "assd")
    assert set(out) == (
        {f"{k}_{r}" for k in metrics for r in regions}
        | {f"{k}_mean" for k in metrics}
        | {f"nan_{k}_{r}" for k in ("hd95", "assd") for r in regions}
    )
    cases = [case_metrics(p, t, regions) for p, t in zip(preds, targets)]
    for r in regions:
        for k in metrics:
            vals = torch.tensor([c[r][k] for c in cases], dtype=torch.float64)
            assert out[f"{k}_{r}"].item() == pytest.approx(vals.nanmean().item(), rel=1e-6)
    assert out["nan_hd95_ET"] == 1 and out["nan_assd_TC"] == 0
    assert out["dice_mean"].item() == pytest.approx((out["dice_TC"] + out["dice_ET"]).item() / 2)

    rows = m.per_case()
    assert [row["case_id"] for row in rows] == ["a", "b", "c", "d"]
    assert rows[2]["dice_ET"] == 1.0 and rows[2]["hd95_ET"] == 0.0
    assert math.isnan(rows[1]["hd95_ET"])

    m.reset()
    assert m.per_case() == [] and float(m.value_count.sum()) == 0


def test_region_metrics_merge_state_and_forward():
    # merge_state applies the dist_reduce_fx="sum" reductions, i.e. what DDP sync does
    a, b = vol(CUBE), vol(((4, 8), (2, 6), (2, 6), 1))
    m1, m2, both = (RegionMetrics(FG, keep_per_case=True) for _ in range(3))
    m1.update(a[None], b[None])
    m2.update(a[None], a[None])
    both.update(_batch(a, a), _batch(b, a))
    m1.merge_state(m2)
    assert m1.compute() == both.compute()
    assert both.compute()["dice_FG"].item() == pytest.approx(0.75)
    assert set(both.compute()) == {"dice_FG", "iou_FG", "dice_mean", "iou_mean"}

    f = RegionMetrics(FG, keep_per_case=True)
    batch_val = f(a[None], b[None])
    assert batch_val["dice_FG"].item() == pytest.approx(0.5)
    f(a[None], a[None])
    assert f.compute()["dice_FG"].item() == pytest.approx(0.75)
    assert len(f.per_case()) == 2


def test_region_metrics_no_values_is_nan():
    m = RegionMetrics(FG, distances=True)
    empty, cube = torch.zeros(1, 8, 8, 8, dtype=torch.long), vol(CUBE, size=8)[None]
    m.update(empty, cube)
    out = m.compute()
    assert out["dice_FG"] == 0 and math.isnan(out["hd95_FG"]) and math.isnan(out["hd95_mean"])
    assert out["nan_assd_FG"] == 1


def test_no_monai_warnings_leak():
    # empty-mask UserWarnings are avoided, the always_return_as_numpy FutureWarning is silenced
    empty, cube = torch.zeros(12, 12, 12, dtype=torch.long), vol(CUBE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for p, t in [(empty, empty), (empty, cube), (cube, empty), (cube, cube)]:
            case_metrics(p, t, FG)


def test_region_metrics_per_case_spacing():
    a = vol(((2, 3), (0, 12), (0, 12), 1))
    b = vol(((4, 5), (0, 12), (0, 12), 1))  # planes 2 voxels apart along axis 0
    m = RegionMetrics(FG, distances=True, spacing=(3.0, 1.0, 1.0), keep_per_case=True)
    m.update(_batch(a, a), _batch(b, b), spacing=[(2.0, 1.0, 1.0), (0.5, 1.0, 1.0)])
    m.update(a[None], b[None])  # default spacing
    assert [row["hd95_FG"] for row in m.per_case()] == pytest.approx([4.0, 1.0, 6.0])
    assert m.compute()["assd_FG"].item() == pytest.approx(11 / 3)
