"""Tumour-contrast augmentation (GBA naive rescaling and its blended variant, ALGORITHMS 11)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from lightning_ada.augment.singan import SinGANHarmoniser
from lightning_ada.augment.tumour_contrast import (
    RandBlendedTumourContrastd,
    RandTumourContrastd,
    TumourContrast,
    blend_weights,
    tumour_mask,
)
from lightning_ada.data.transforms import training_augmentation


def _case(size: tuple[int, int, int] = (20, 18, 16), channels: int = 3, seed: int = 0) -> dict:
    """A z-scored-looking image with a two-class tumour ball (class 1 core, class 2 rim)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(channels, *size, generator=g)
    zz = torch.stack(
        torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in size], indexing="ij")
    )
    centre = torch.tensor([9.0, 8.0, 7.0]).view(3, 1, 1, 1)
    dist = ((zz - centre) ** 2).sum(0).sqrt()
    label = torch.zeros(1, *size, dtype=torch.int64)
    label[0][dist <= 4.5] = 2
    label[0][dist <= 2.5] = 1
    affine = torch.diag(torch.tensor([1.0, 1.0, 2.0, 1.0]))
    return {"image": MetaTensor(image, affine=affine), "label": label, "case_id": "c0"}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return (
        t.as_tensor().contiguous().view(torch.int32)
        if isinstance(t, MetaTensor)
        else t.contiguous().view(torch.int32)
    )


def _dilated_per_slice(mask: np.ndarray, radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = (yy**2 + xx**2) <= radius**2
    return np.stack(
        [ndimage.binary_dilation(mask[:, :, k], structure=disk) for k in range(mask.shape[2])], -1
    )


@pytest.mark.parametrize("cls", [RandTumourContrastd, RandBlendedTumourContrastd])
def test_changes_only_inside_the_dilated_mask(cls: type) -> None:
    case = _case()
    before = case["image"].clone()
    kwargs = {"dilation_radius": 3, "sigma": 2.0} if cls is RandBlendedTumourContrastd else {}
    t = cls(prob=1.0, factors=[1.7], **kwargs)
    t.set_random_state(seed=0)
    out = t(case)
    mask = tumour_mask(case["label"])
    dilated = torch.as_tensor(_dilated_per_slice(mask, 3)).expand_as(before)
    changed = _bits(out["image"]) != _bits(before)
    assert changed.any()
    assert not (changed & ~dilated).any()  # nothing outside the dilated mask
    assert torch.equal(_bits(out["image"])[~dilated], _bits(before)[~dilated])  # bit-identical
    assert not (changed & ~torch.as_tensor(mask).expand_as(before)).any()  # x' = x off the tumour
    assert torch.equal(out["label"], case["label"])
    assert torch.equal(_bits(case["image"]), _bits(before))  # the input item is not modified
    assert isinstance(out["image"], MetaTensor)
    assert torch.equal(out["image"].affine, before.affine)


def test_naive_rescales_around_the_modality_minimum() -> None:
    case = _case()
    img = case["image"].as_tensor()
    out = RandTumourContrastd(prob=1.0, factors=[0.5], per_modality=False)(case)[
        "image"
    ].as_tensor()
    mask = torch.as_tensor(tumour_mask(case["label"]))
    for c in range(img.shape[0]):
        ref = img[c].min()
        expected = ref + 0.5 * (img[c][mask] - ref)
        torch.testing.assert_close(out[c][mask], expected)
        assert (out[c][mask] < img[c][mask]).all()  # factor < 1 darkens every tumour voxel


def test_fixed_reference_reproduces_the_minus_one_to_one_formula() -> None:
    case = _case(channels=1)
    x = case["image"].as_tensor().clamp(-1, 1)
    case["image"] = MetaTensor(x.clone())
    out = RandTumourContrastd(prob=1.0, factors=[1.5], reference=-1.0)(case)["image"].as_tensor()
    mask = torch.as_tensor(tumour_mask(case["label"]))
    u = (x[0][mask] + 1) / 2  # ALGORITHMS 11.1
    torch.testing.assert_close(out[0][mask], 2 * (1.5 * u) - 1)


def test_blended_change_is_the_weighted_naive_change() -> None:
    case = _case()
    naive = RandTumourContrastd(prob=1.0, factors=[2.0], per_modality=False)(dict(case))["image"]
    blend_t = RandBlendedTumourContrastd(
        prob=1.0, factors=[2.0], per_modality=False, dilation_radius=1, sigma=3.0
    )
    blended = blend_t(dict(case))["image"]
    x = case["image"].as_tensor()
    mask = tumour_mask(case["label"])
    w = torch.as_tensor(blend_weights(mask, 1, 3.0))
    torch.testing.assert_close(
        blended.as_tensor(), x + w * (naive.as_tensor() - x), atol=1e-5, rtol=1e-5
    )
    m = torch.as_tensor(mask)
    ratio = (blended.as_tensor() - x)[:, m] / (naive.as_tensor() - x)[:, m]
    assert ratio.min() < 0.9 and ratio.max() <= 1.0 + 1e-5  # tapers, never exceeds the naive change


@pytest.mark.parametrize("cls", [RandTumourContrastd, RandBlendedTumourContrastd])
def test_factor_one_is_the_identity(cls: type) -> None:
    for kwargs in ({"factors": [1.0]}, {"factor_range": (1.0, 1.0)}):
        case = _case()
        out = cls(prob=1.0, **kwargs)(dict(case))
        assert torch.equal(_bits(out["image"]), _bits(case["image"]))
        assert torch.equal(out["label"], case["label"])


@pytest.mark.parametrize("cls", [RandTumourContrastd, RandBlendedTumourContrastd])
def test_reproducible_from_a_seed(cls: type) -> None:
    def run(seed: int) -> list[torch.Tensor]:
        t = cls(prob=0.5, factor_range=(0.5, 2.0))
        t.set_random_state(seed=seed)
        return [t(_case(seed=i))["image"].as_tensor() for i in range(6)]

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    originals = [_case(seed=i)["image"].as_tensor() for i in range(6)]
    altered = [not torch.equal(x, o) for x, o in zip(a, originals)]
    assert any(altered) and not all(altered)  # prob 0.5: some cases pass through untouched


def test_factors_drawn_from_the_set_and_per_modality() -> None:
    t = RandTumourContrastd(prob=1.0, factors=[0.5, 2.0])
    t.set_random_state(seed=0)
    seen = set()
    mixed = False
    for i in range(20):
        t(_case(seed=i))
        seen.update(t.drawn.tolist())
        mixed |= len(set(t.drawn.tolist())) > 1
    assert seen == {0.5, 2.0} and mixed
    shared = RandTumourContrastd(prob=1.0, factors=[0.5, 2.0], per_modality=False)
    shared.set_random_state(seed=0)
    for i in range(10):
        shared(_case(seed=i))
        assert len(set(shared.drawn.tolist())) == 1


def test_case_without_tumour_or_selected_class_passes_through() -> None:
    case = _case()
    case["label"] = torch.zeros_like(case["label"])
    assert torch.equal(
        RandBlendedTumourContrastd(prob=1.0, factors=[2.0])(case)["image"], case["image"]
    )
    case = _case()
    out = RandTumourContrastd(prob=1.0, factors=[2.0], classes=[1])(case)["image"]
    core = torch.as_tensor(tumour_mask(case["label"], [1])).expand_as(out)
    changed = _bits(out) != _bits(case["image"])
    assert changed.any() and not (changed & ~core).any()  # the rim (class 2) is untouched


@pytest.mark.parametrize("axis", [0, 2])
def test_blend_weights_equal_whole_slice_computation(axis: int) -> None:
    mask = np.zeros((60, 50, 6), dtype=bool)
    mask[20:24, 30:33, 1:3] = True
    mask[0:2, 0:3, 4] = True  # touches the border
    mask = np.moveaxis(mask, 2, axis)
    got = blend_weights(mask, dilation_radius=3, sigma=2.0, axis=axis)
    m = np.moveaxis(mask, axis, 2)
    ref = np.zeros(m.shape, dtype=np.float64)
    yy, xx = np.mgrid[-3:4, -3:4]
    disk = (yy**2 + xx**2) <= 9
    for k in range(m.shape[2]):
        if m[:, :, k].any():
            s = ndimage.gaussian_filter(
                ndimage.binary_dilation(m[:, :, k], structure=disk).astype(float), 2.0
            )
            ref[:, :, k] = (s - s.min()) / (s.max() - s.min())
    np.testing.assert_allclose(got, np.moveaxis(ref, 2, axis), atol=1e-6)
    assert got.max() == pytest.approx(1.0) and got.min() == 0.0


def test_training_chain_option_off_by_default_and_seeded() -> None:
    default = training_augmentation([16, 16, 16])
    assert not any(isinstance(t, RandTumourContrastd) for t in default.transforms)

    def run() -> torch.Tensor:
        chain = training_augmentation(
            [16, 16, 16],
            tumour_contrast=RandBlendedTumourContrastd(prob=1.0, factor_range=(0.5, 2.0)),
        )
        assert isinstance(chain.transforms[0], RandBlendedTumourContrastd)
        chain.set_random_state(seed=3)
        out = chain(_case())
        out = out[0] if isinstance(out, list) else out
        assert tuple(out["image"].shape) == (3, 16, 16, 16)
        return out["image"].as_tensor()

    assert torch.equal(run(), run())


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="not both"):
        RandTumourContrastd(factors=[0.5], factor_range=(0.5, 1.0))
    with pytest.raises(ValueError, match="positive"):
        RandTumourContrastd(factors=[0.0])
    with pytest.raises(ValueError, match="prob"):
        RandTumourContrastd(prob=1.5)
    with pytest.raises(KeyError, match="label"):
        RandTumourContrastd(prob=1.0)({"image": torch.zeros(1, 4, 4, 4)})
    case = _case()
    case["label"] = case["label"][:, :10]
    with pytest.raises(ValueError, match="spatial shapes"):
        RandTumourContrastd(prob=1.0, factors=[2.0])(case)


def test_on_a_cached_phantom_case_the_cache_is_not_modified(phantom_root: Path) -> None:
    from lightning_ada.data.datamodule import ActiveDataModule

    dm = ActiveDataModule(root=str(phantom_root), patch_size=[16, 16, 16], divisible_by=4)
    dm.setup("fit")
    cid = dm.split_ids["test"][0]
    cached = dm.item(cid)
    before = cached["image"].clone()
    t = RandBlendedTumourContrastd(prob=1.0, factors=[0.5, 2.0], dilation_radius=2, sigma=1.5)
    t.set_random_state(seed=1)
    out = t(cached)
    tumour = torch.as_tensor(tumour_mask(cached["label"])).expand_as(before)
    changed = _bits(out["image"]) != _bits(before)
    assert tumour.any() and changed.any() and not (changed & ~tumour).any()
    assert torch.equal(_bits(dm.item(cid)["image"]), _bits(before))  # the cached item is intact
    assert torch.equal(out["label"], cached["label"])


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("lightning_ada.data.tumour_contrast.TumourContrast", TumourContrast),
        ("lightning_ada.data.singan.SinGANHarmoniser", SinGANHarmoniser),
    ],
)
def test_the_old_class_paths_of_the_augmentations_still_load_with_a_deprecation_message(
    old: str, new: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, _, name = old.rpartition(".")
    monkeypatch.delitem(sys.modules, module, raising=False)  # imported afresh: the message again
    with pytest.warns(FutureWarning, match=rf"{module} moved to lightning_ada\.augment\..*{name}"):
        cls = getattr(importlib.import_module(module), name)
    assert cls is new
