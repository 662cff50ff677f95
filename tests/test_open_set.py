"""Out-of-distribution case generators (issue 15): each kind is flagged and differs as it says."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lightning_ada.phantom.open_set import (
    OOD_KINDS,
    channel_order,
    corrupted,
    field_of_view,
    in_distribution_flag,
    make_ood,
    no_tumour,
    ood_kind,
    other_anatomy,
    plan_ood,
    purity,
)

N = 20


def _head(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 4-channel 20^3 'head' (closed ellipsoid) with a ball tumour of label 2 around a core 1."""
    rng = np.random.default_rng(seed)
    g = (np.arange(N) + 0.5) / N * 2 - 1
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    head = (x / 0.8) ** 2 + (y / 0.7) ** 2 + (z / 0.75) ** 2 <= 1
    r = np.sqrt((x - 0.2) ** 2 + y**2 + z**2)
    label = np.zeros(head.shape, np.uint8)
    label[(r <= 0.35) & head] = 2
    label[(r <= 0.15) & head] = 1
    healthy = np.array([0.5, 0.6, 0.55, 0.4])
    tumour = np.array([0.95, 0.4, 0.9, 0.9])
    image = np.zeros((4, N, N, N), np.float32)
    for c in range(4):
        v = np.where(label > 0, tumour[c], healthy[c]) + 0.02 * rng.standard_normal(head.shape)
        image[c] = np.where(head, 100.0 * v, 0.0)
    return image, label


def _check_flag(flag: dict, kind: str) -> None:
    assert flag["ood"] == kind and ood_kind(flag) == kind
    json.dumps(flag)  # dataset.json-ready


def test_every_kind_is_flagged_and_shaped_like_the_input():
    image, label = _head()
    for kind in OOD_KINDS:
        case = make_ood(kind, image, label, np.random.default_rng(1))
        _check_flag(case.flag, kind)
        assert case.image.shape == image.shape and case.image.dtype == np.float32
        assert case.label.shape == label.shape and case.label.dtype == label.dtype
        assert not np.allclose(case.image, image)
    assert in_distribution_flag() == {"ood": None} and ood_kind(in_distribution_flag()) is None
    with pytest.raises(ValueError, match="unknown OOD kind"):
        make_ood("alien", image, label, np.random.default_rng(0))


def test_other_anatomy_is_an_open_body_of_the_same_scanner_without_tumour():
    image, label = _head()
    case = other_anatomy(image, label, np.random.default_rng(2))
    body, head = (case.image != 0).any(0), (image != 0).any(0)
    assert not case.label.any()
    assert body[..., 0].any() and body[..., -1].any()  # crosses both end faces
    assert not head[..., 0].any() and not head[..., -1].any()  # a head does not
    dice = 2 * (body & head).sum() / (body.sum() + head.sum())
    assert dice < 0.85
    for c in range(4):  # intensities within the case's own in-body range
        lo, hi = np.quantile(image[c][head], [0.0, 1.0])
        med = np.median(case.image[c][body])
        assert lo <= med <= hi


def test_field_of_view_zoom_out_shrinks_the_head_by_scale_cubed_and_moves_the_label_with_it():
    image, label = _head()
    case = field_of_view(image, label, np.random.default_rng(0), scale=0.5, shift=(0, 0, 0))
    # voxels above half the darkest tissue (linear interpolation blurs the edge by one voxel)
    before, after = (image[3] > 20).sum(), (case.image[3] > 20).sum()
    assert after / before == pytest.approx(0.5**3, rel=0.2)
    assert (case.label > 0).sum() / (label > 0).sum() == pytest.approx(0.5**3, rel=0.35)
    assert ((case.label > 0) <= (case.image != 0).any(0)).all()  # the label stays in the body
    assert case.flag["ood_detail"]["scale"] == 0.5


def test_field_of_view_zoom_in_cuts_the_head_at_every_face():
    image, label = _head()
    case = field_of_view(image, label, np.random.default_rng(0), scale=2.0, shift=(0, 0, 0))
    body = (case.image != 0).any(0)
    faces = [body[0], body[-1], body[:, 0], body[:, -1], body[:, :, 0], body[:, :, -1]]
    assert all(f.any() for f in faces)
    head = (image != 0).any(0)
    assert not any(f.any() for f in [head[0], head[-1], head[:, 0], head[:, -1]])
    drawn = field_of_view(image, label, np.random.default_rng(5))  # scale drawn from the rng
    s = drawn.flag["ood_detail"]["scale"]
    assert 0.45 <= s <= 0.6 or 1.8 <= s <= 2.2


def test_no_tumour_fills_the_tumour_with_healthy_tissue_and_keeps_the_rest():
    image, label = _head()
    case = no_tumour(image, label)
    tumour = label > 0
    assert not case.label.any() and case.flag["ood_detail"]["removed_voxels"] == int(tumour.sum())
    np.testing.assert_array_equal(case.image[:, ~tumour], image[:, ~tumour])
    healthy = (image != 0).any(0) & ~tumour
    for c in range(4):
        h = image[c][healthy]
        filled = case.image[c][tumour]
        assert h.min() <= filled.min() and filled.max() <= h.max()
    assert abs(case.image[0][tumour].mean() - image[0][healthy].mean()) < 5  # was 45 apart


@pytest.mark.parametrize("kind", ["spike", "dropout", "noise"])
def test_corrupted_scans_keep_the_label_and_break_the_image(kind):
    image, label = _head()
    case = corrupted(image, label, np.random.default_rng(3), corruption=kind)
    np.testing.assert_array_equal(case.label, label)
    detail = case.flag["ood_detail"]
    assert detail["corruption"] == kind
    diff = case.image - image
    if kind == "spike":  # one extra k-space frequency per channel, stripes everywhere
        k = np.abs(np.fft.fftn(diff[0]))
        loc = tuple(detail["frequency"])
        assert k[loc] == pytest.approx(0.5 * np.abs(np.fft.fftn(image[0])).max(), rel=1e-3)
        assert (k > 1e-3 * k[loc]).sum() == 2  # the spike and its Hermitian twin
        assert (np.abs(diff[0]) > 1e-3).mean() > 0.5
    elif kind == "dropout":
        a, b = detail["slices"]
        sl = [slice(None)] * 4
        sl[detail["axis"] + 1] = slice(a, b)
        assert b - a == round(0.4 * N) and not case.image[tuple(sl)].any()
        keep = np.ones(N, bool)
        keep[a:b] = False
        np.testing.assert_array_equal(
            np.compress(keep, case.image, detail["axis"] + 1),
            np.compress(keep, image, detail["axis"] + 1),
        )
    else:
        body = (image != 0).any(0)
        for c in range(4):
            med = np.median(image[c][body])
            assert diff[c][body].std() == pytest.approx(med, rel=0.1)
            assert not diff[c][~body].any()


def test_channel_order_is_a_derangement_of_the_channels():
    image, label = _head()
    for seed in range(5):
        case = channel_order(image, label, np.random.default_rng(seed))
        order = case.flag["ood_detail"]["order"]
        assert sorted(order) == [0, 1, 2, 3] and all(o != k for k, o in enumerate(order))
        for k, o in enumerate(order):
            np.testing.assert_array_equal(case.image[k], image[o])
        np.testing.assert_array_equal(case.label, label)
    with pytest.raises(ValueError, match="non-identity"):
        channel_order(image, label, np.random.default_rng(0), order=[0, 1, 2, 3])


def test_plan_is_exact_balanced_and_seeded_and_purity_reads_the_flags():
    plan = plan_ood(30, 0.2, seed=7)
    assert sum(k is not None for k in plan) == 6
    kinds = [k for k in plan if k is not None]
    assert sorted(set(kinds)) == sorted(OOD_KINDS) and max(map(kinds.count, OOD_KINDS)) == 2
    assert plan == plan_ood(30, 0.2, seed=7) and plan != plan_ood(30, 0.2, seed=8)
    assert plan_ood(10, 0.0, seed=0) == [None] * 10
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        plan_ood(10, 1.0, seed=0)
    metas = [{"ood": None}, {"ood": "corrupted"}, {}, {"ood": None, "centre": "B"}]
    assert purity(metas) == 0.75
    assert np.isnan(purity([]))
