"""Preprocessing, disk cache, resampling and inversion on tiny generated BraTS-layout folders.

The same code path as the real-data tests (``layout=brats``, ``crop_foreground``, ``pixdim``,
``cache_dir``) without the real data: three 20 x 18 x 16 cases in LPS orientation with
anisotropic voxels, a head that does not fill the field of view and a 3-class tumour.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import PersistentDataset

from lightning_ada.cases import Case
from lightning_ada.data import validation
from lightning_ada.data.datamodule import ActiveDataModule

MODS = ("flair", "t1", "t1ce", "t2")
SHAPE = (20, 18, 16)
SPACING = (1.0, 1.5, 2.0)
IDS = ["Brats18_TCIA01_100_1", "Brats18_TCIA01_101_1", "Brats18_CBICA_AAB_1"]


def lps_affine(spacing: tuple[float, float, float] = SPACING) -> np.ndarray:
    """BraTS-like affine: axes pointing left, posterior, superior (LPS), with an offset."""
    return np.diag([-spacing[0], -spacing[1], spacing[2], 1.0]) + np.array(
        [[0, 0, 0, 12.0], [0, 0, 0, 20.0], [0, 0, 0, -7.0], [0, 0, 0, 0]]
    )


def make_case(folder: Path, case_id: str, seed: int, shape: tuple[int, int, int] = SHAPE) -> None:
    """Write ``folder/<case_id>/<case_id>_{flair,t1,t1ce,t2,seg}.nii.gz``."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    head = ((grid / np.array([0.8, 0.7, 0.75])[:, None, None, None]) ** 2).sum(0) < 1
    centre = np.array([0.1, -0.1, 0.05]) + rng.uniform(-0.1, 0.1, 3)
    r = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
    seg = np.zeros(shape, np.uint8)
    seg[(r < 0.45) & head] = 2
    seg[(r < 0.3) & head] = 4
    seg[(r < 0.15) & head] = 1
    out = folder / case_id
    out.mkdir(parents=True, exist_ok=True)
    for k, m in enumerate(MODS):
        img = np.where(head, 100 + 20 * k + 30 * (seg > 0) + rng.normal(0, 5, shape), 0)
        path = out / f"{case_id}_{m}.nii.gz"
        nib.save(nib.Nifti1Image(img.astype(np.float32), lps_affine()), path)
    nib.save(nib.Nifti1Image(seg, lps_affine()), out / f"{case_id}_seg.nii.gz")


@pytest.fixture
def brats_root(tmp_path: Path) -> Path:
    root = tmp_path / "brats"
    for i, cid in enumerate(IDS):
        make_case(root, cid, seed=i)
    return root


def make_dm(root: Path, **kw: object) -> ActiveDataModule:
    args: dict[str, object] = dict(
        root=str(root), layout="brats", stage="target",
        splits={"pool": IDS[:2], "test": IDS[2:]}, crop_foreground=True, divisible_by=4,
    )
    dm = ActiveDataModule(**(args | kw))  # type: ignore[arg-type]
    dm.setup("fit")
    return dm


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_inversion_restores_grid_affine_and_labels_exactly(brats_root: Path) -> None:
    dm = make_dm(brats_root)
    cid = IDS[2]
    item = dm.item(cid)
    image, label = item["image"], item["label"]
    # cropped to the head, reoriented to RAS, padded to a multiple of 4
    assert image.shape[0] == 4 and all(n % 4 == 0 for n in image.shape[1:])
    assert tuple(image.shape[1:]) != SHAPE
    assert nib.aff2axcodes(image.affine.numpy()) == ("R", "A", "S")
    assert set(label.unique().tolist()) == {0, 1, 2, 3}
    seg = np.asarray(nib.load(brats_root / cid / f"{cid}_seg.nii.gz").dataobj)
    back = dm.invert(label, cid)
    assert tuple(back.shape) == (1, *SHAPE)
    np.testing.assert_allclose(back.affine.numpy(), lps_affine(), atol=1e-5)
    np.testing.assert_array_equal(back[0].numpy().astype(np.uint8), seg)  # 1/2/4 on disk


def test_resampling_to_pixdim_and_back(brats_root: Path) -> None:
    dm = make_dm(brats_root, pixdim=[2.0, 2.0, 2.0])
    cid = IDS[2]
    image, label = dm.item(cid)["image"], dm.item(cid)["label"]
    spacing = np.linalg.norm(image.affine.numpy()[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, [2.0, 2.0, 2.0], atol=1e-5)
    seg = np.asarray(nib.load(brats_root / cid / f"{cid}_seg.nii.gz").dataobj)
    # fewer voxels along the finer axes (1 and 1.5 mm -> 2 mm), not more
    head_extent = [int(n) for n in np.ptp(np.argwhere(seg > 0), axis=0) + 1]
    assert label.shape[1] < head_extent[0] + 8
    back = dm.invert(label, cid)[0].numpy()
    assert back.shape == SHAPE
    np.testing.assert_allclose(dm.invert(label, cid).affine.numpy(), lps_affine(), atol=1e-5)
    assert set(np.unique(back).tolist()) <= {0, 1, 2, 4}
    assert _dice(back > 0, seg > 0) > 0.8  # whole tumour survives the 2 mm round trip


def _counting(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[str]:
    """Record the case id of every call of ``owner.name`` (and still run it)."""
    real: Callable[..., object] = getattr(owner, name)
    seen: list[str] = []

    def spy(*args: object, **kwargs: object) -> object:
        for a in (*args, *kwargs.values()):
            if isinstance(a, dict) and "case_id" in a:
                seen.append(str(a["case_id"]))
            elif isinstance(a, Case):
                seen.append(a.case_id)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return seen


def test_disk_cache_hit_and_one_touched_file_recomputes_one_case(
    brats_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = make_dm(brats_root, cache_dir=str(cache))
    assert len(list(cache.glob("*.pt"))) == 3
    assert len(list(cache.glob("validated/*.ok"))) == 3
    images = {c: first.image(c).clone() for c in IDS}

    prep = _counting(monkeypatch, PersistentDataset, "_pre_transform")
    checked = _counting(monkeypatch, validation, "validate_case")
    again = make_dm(brats_root, cache_dir=str(cache))
    assert prep == [] and checked == []  # everything from the disk cache and the markers
    for c in IDS:
        torch.testing.assert_close(again.image(c), images[c])
    # inversion works on items read back from the disk cache
    seg = np.asarray(nib.load(brats_root / IDS[2] / f"{IDS[2]}_seg.nii.gz").dataobj)
    back = again.invert(again.item(IDS[2])["label"], IDS[2])
    np.testing.assert_array_equal(back[0].numpy().astype(np.uint8), seg)

    # rewrite one modality of one case with other content: that case alone is recomputed
    f = brats_root / IDS[1] / f"{IDS[1]}_t2.nii.gz"
    img = nib.load(f)
    # (not an affine change: z-scoring would cancel it, and 2x+1 is a constant background)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) ** 2, img.affine), f)
    third = make_dm(brats_root, cache_dir=str(cache))
    assert prep == [IDS[1]] and checked == [IDS[1]]
    torch.testing.assert_close(third.image(IDS[0]), images[IDS[0]])
    assert not torch.equal(third.image(IDS[1])[3], images[IDS[1]][3])
    assert len(list(cache.glob("*.pt"))) == 4  # the stale entry is left, a new one added

    # another preprocessing setting is another key: every case is recomputed
    make_dm(brats_root, cache_dir=str(cache), pixdim=[2.0, 2.0, 2.0])
    assert sorted(prep[1:]) == sorted(IDS)
