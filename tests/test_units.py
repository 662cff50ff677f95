"""Annotation units, regions, partial labels and the loss that ignores what nobody annotated."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from lightning_ada.active.cost import AnnotationTime, mean_case_voxels, query_cost, total_cost
from lightning_ada.active.units import UNITS, Region
from lightning_ada.active.units.patch import PatchUnit
from lightning_ada.active.units.slices import SlicesUnit
from lightning_ada.cases import NOT_ANNOTATED
from lightning_ada.data import partial_labels
from lightning_ada.models.losses import PartialDiceCELoss

SHAPE = (12, 10, 8)


def test_the_three_units_are_registered() -> None:
    assert {"case", "slices", "patch"} <= set(UNITS)
    assert UNITS["case"].budget_in == "cases" and UNITS["slices"].budget_in == "scans"


@pytest.mark.parametrize(
    ("region", "voxels"),
    [
        (Region(), 12 * 10 * 8),
        (Region("slices", 0, (1, 5)), 2 * 10 * 8),
        (Region("slices", 2, (0, 3, 7)), 3 * 12 * 10),
        (Region("patch", start=(0, 0, 0), size=(4, 4, 4)), 64),
        (Region("patch", start=(10, 8, 6), size=(4, 4, 4)), 2 * 2 * 2),  # clipped to the grid
    ],
)
def test_region_voxels_count_its_mask(region: Region, voxels: int) -> None:
    assert region.voxels(SHAPE) == voxels == int(region.mask(SHAPE).sum())
    assert Region.from_json(region.to_json()) == region


def test_bad_regions_are_refused() -> None:
    with pytest.raises(ValueError, match="axis in 0-2"):
        Region("slices", 3, (1,))
    with pytest.raises(ValueError, match="3-d start"):
        Region("patch", start=(0, 0), size=(4, 4, 4))


def test_slices_are_grouped_best_first_and_skip_annotated_slices() -> None:
    score = torch.zeros(SHAPE)
    for i, value in {2: 0.9, 5: 0.8, 6: 0.7, 7: 0.6, 1: 0.5}.items():
        score[:, :, i] = value
    annotated = torch.zeros(SHAPE, dtype=torch.bool)
    annotated[3, 4, 5] = True  # one voxel of slice 5: the slice is not offered again
    got = SlicesUnit(k=2, axis=2).candidates("a", SHAPE, score, annotated, np.random.default_rng(0))
    assert [c.region.indices for c in got] == [(2, 6), (1, 7), (0, 3), (4,)]
    assert got[0].score == pytest.approx(0.8) and got[1].score == pytest.approx(0.55)
    assert sum(c.region.voxels(SHAPE) for c in got) == 7 * 12 * 10


def test_random_slices_are_seeded_and_cover_each_slice_once() -> None:
    unit = SlicesUnit(k=3, axis=0)
    a = unit.candidates("a", SHAPE, None, None, np.random.default_rng(5))
    b = unit.candidates("a", SHAPE, None, None, np.random.default_rng(5))
    assert [c.region for c in a] == [c.region for c in b]
    assert sorted(i for c in a for i in c.region.indices) == list(range(12))
    assert SlicesUnit(axis=1).axis_for("t1") == 1
    assert SlicesUnit(axis=2, modality_axes={"t1": 0}).axis_for("t1") == 0


def test_patch_grid_covers_the_case_and_skips_annotated_boxes() -> None:
    unit = PatchUnit(size=[4, 4, 4])
    starts = unit.starts(SHAPE)
    assert {s[0] for s in starts} == {0, 4, 8} and {s[1] for s in starts} == {0, 4, 6}
    covered = torch.zeros(SHAPE, dtype=torch.bool)
    for s in starts:
        covered |= Region("patch", start=s, size=(4, 4, 4)).mask(SHAPE)
    assert bool(covered.all())
    score = torch.zeros(SHAPE)
    score[8:, 6:, 4:] = 1.0
    annotated = torch.zeros(SHAPE, dtype=torch.bool)
    annotated[0, 0, 0] = True
    got = unit.candidates("a", SHAPE, score, annotated, np.random.default_rng(0))
    assert len(got) == len(starts) - 1  # the box holding (0, 0, 0) is not offered again
    best = max(got, key=lambda c: c.score)
    assert best.region.start == (8, 6, 4) and best.score == 1.0


@pytest.mark.parametrize("shape,size", [((24, 24, 24), 8), ((20, 17, 13), 6), ((12, 30, 9), 4)])
def test_patch_scores_in_one_gather_equal_box_by_box(shape: tuple[int, int, int], size: int) -> None:
    """The gathered boxes give every box's own float64 mean and sum (bit for bit), skip the same
    annotated boxes and draw the same random order as slicing box by box."""
    from lightning_ada.active.strategies.region_rule import region_sum, region_sums

    g = torch.Generator().manual_seed(sum(shape) + size)
    score = torch.rand(shape, generator=g) ** 3
    annotated = torch.zeros(shape, dtype=torch.bool)
    annotated[2:5, 3, :4] = True
    unit = PatchUnit(size)
    for ann in (None, annotated):
        got = unit.candidates("a", shape, score, ann, np.random.default_rng(0))
        want = []
        for start in unit.starts(shape):
            box = tuple(slice(a, a + size) for a in start)
            if ann is None or not bool(ann[box].any()):
                want.append((start, float(score[box].double().mean())))
        assert [(c.region.start, c.score) for c in got] == want
        drawn = unit.candidates("a", shape, None, ann, np.random.default_rng(5))
        rng = np.random.default_rng(5)
        assert [c.score for c in drawn] == [float(rng.random()) for _ in want]
        regions = [c.region for c in got]
        assert region_sums(regions, score) == [region_sum(r, score) for r in regions]
    mixed = [Region("slices", 2, (1, 4)), *regions[:2], Region("patch", start=(0, 0, 0), size=(3, 3, 3))]
    assert region_sums(mixed, score) == [region_sum(r, score) for r in mixed]


def test_partial_deliveries_merge_in_order_and_sample_only_annotated_voxels() -> None:
    like = torch.zeros(1, *SHAPE, dtype=torch.int64)
    first = torch.full((1, *SHAPE), 1)
    second = torch.full((1, *SHAPE), 2)
    second[0, 0] = NOT_ANNOTATED  # the annotator left slice 0 along axis 0 unannotated
    a = Region("slices", 0, (0, 1)).mask(SHAPE)
    b = Region("slices", 0, (0, 2)).mask(SHAPE)
    parts = [(first, partial_labels.delivered(first, a)), (second, partial_labels.delivered(second, b))]
    label, annotated = partial_labels.merge(parts, like)
    assert label[0, 0].unique().tolist() == [1]  # the second delivery did not annotate slice 0
    assert label[0, 1].unique().tolist() == [1] and label[0, 2].unique().tolist() == [2]
    assert label[0, 3:].unique().tolist() == [NOT_ANNOTATED]
    assert int(annotated.sum()) == 3 * 10 * 8
    sampling = partial_labels.sampling_map(label, annotated)
    assert set(sampling[0, 3:].unique().tolist()) == {partial_labels.UNANNOTATED}
    assert set(sampling[0, :3].unique().tolist()) == {partial_labels.ANNOTATED_FOREGROUND}


@pytest.mark.parametrize("classes", [2, 3, 4])
def test_the_loss_on_a_whole_label_is_dice_ce_bit_for_bit(classes: int) -> None:
    expected = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    for seed in range(4):  # the masked path differed in the last bits of a 2-class gradient
        torch.manual_seed(seed)
        logits = torch.randn(4, classes, 16, 16, 16, requires_grad=True)
        target = torch.randint(0, classes, (4, 1, 16, 16, 16))
        a, b = expected(logits, target), PartialDiceCELoss()(logits, target)
        assert torch.equal(a, b)
        assert torch.equal(*(torch.autograd.grad(x, logits)[0] for x in (a, b)))


def test_the_loss_and_its_gradients_ignore_what_nobody_annotated() -> None:
    """Changing the reference of unannotated voxels changes neither the loss nor a gradient."""
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 8, 8, 8, requires_grad=True)
    reference = torch.randint(0, 4, (2, 1, 8, 8, 8))
    annotated = torch.zeros_like(reference, dtype=torch.bool)
    annotated[:, :, 2:4] = True  # two slices of each case
    partial = torch.where(annotated, reference, torch.full_like(reference, NOT_ANNOTATED))
    loss = PartialDiceCELoss()
    value = loss(logits, partial)
    grad = torch.autograd.grad(value, logits)[0]
    other = torch.where(annotated, reference, torch.randint(0, 4, reference.shape))
    changed = torch.where(annotated, other, torch.full_like(other, NOT_ANNOTATED))
    assert torch.equal(changed, partial)  # only unannotated references were changed ...
    value2 = loss(logits, changed)
    assert torch.equal(value, value2)
    assert torch.equal(grad, torch.autograd.grad(value2, logits)[0])
    assert bool((grad.narrow(2, 4, 4) == 0).all()) and bool((grad.narrow(2, 0, 2) == 0).all())
    assert bool((grad.narrow(2, 2, 2) != 0).any())
    # ... and a loss that saw the whole reference differs: the ignoring is real
    assert not torch.equal(value, loss(logits, reference))


def test_query_cost_in_scans_and_seconds() -> None:
    scan = mean_case_voxels([(10, 10, 10), (10, 10, 30)])
    assert scan == 2000
    cost = query_cost({"voxels": 500, "slices": 5, "foreground_voxels": 40, "new_case": True,
                       "slices_with_tumour": 2}, scan, AnnotationTime(60.0, 3.0))
    assert cost == {"voxels": 500.0, "slices": 5.0, "slices_with_tumour": 2.0,
                    "foreground_voxels": 40.0, "new_case": 1.0,
                    "scans": 0.25, "seconds": 2 * 60.0 + 3 * 3.0}
    assert total_cost([cost, cost])["scans"] == 0.5
