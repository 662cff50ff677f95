"""Hostile inputs through the real loading path: each one refused with a clear error."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lightning_ada.data.datamodule import ActiveDataModule
from lightning_ada.errors import CheckpointError, DataError
from lightning_ada.models.module import SegmentationModule


def _edit(path: Path, change: Callable[[np.ndarray], np.ndarray], affine: np.ndarray | None = None) -> None:
    img = nib.load(path)
    data = change(np.asarray(img.dataobj).copy())
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), path)


def _nan(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    a[3, 3, 3] = np.nan
    return a


def _shifted_affine(path: Path) -> None:
    aff = nib.load(path).affine.copy()
    aff[0, 3] += 7.0
    _edit(path, lambda a: a, aff)


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


CORRUPTIONS: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "nan voxels": ("t2", lambda p: _edit(p, _nan), "NaN"),
    "blank channel": ("t1", lambda p: _edit(p, np.zeros_like), "zero"),
    "constant channel": ("t1ce", lambda p: _edit(p, lambda a: np.full_like(a, 5)), "constant"),
    "other affine": ("flair", _shifted_affine, "affine"),
    "truncated gzip": ("t2", _truncate, "unreadable or truncated NIfTI"),
    "wrong shape": ("flair", lambda p: _edit(p, lambda a: a[:-2]), "shape"),
    "label outside set": ("seg", lambda p: _edit(p, lambda a: np.where(a == 4, 3, a).astype(np.uint8)), "3"),
    "missing modality": ("t1", lambda p: p.unlink(), "t1"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupted_case_is_refused_naming_the_file(phantom_root: Path, tmp_path: Path, name: str) -> None:
    root = tmp_path / "data"
    shutil.copytree(phantom_root, root)
    case = "glioma_pool_002"
    suffix, corrupt, words = CORRUPTIONS[name]
    target = root / case / f"{case}_{suffix}.nii.gz"
    corrupt(target)
    dm = ActiveDataModule(root=str(root), divisible_by=4)
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert case in message
    assert words.lower() in message.lower()


def test_duplicate_case_ids_are_refused(phantom_root: Path, tmp_path: Path) -> None:
    import json

    root = tmp_path / "data"
    shutil.copytree(phantom_root, root)
    ds = json.loads((root / "dataset.json").read_text())
    ds["cases"].append(ds["cases"][0])
    (root / "dataset.json").write_text(json.dumps(ds))
    with pytest.raises(DataError, match="duplicate case ids"):
        ActiveDataModule(root=str(root), divisible_by=4).setup("fit")


def test_unknown_region_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown labels \\['XX'\\]"):
        SegmentationModule(eval_regions={"WT": ["NCR", "XX"]}, filters=[4, 8, 16])


def test_checkpoint_with_other_channel_count_is_refused(source_ckpt: Path) -> None:
    with pytest.raises(CheckpointError, match="in_channels=3"):
        SegmentationModule(in_channels=3, filters=[4, 8, 16], source_checkpoint=str(source_ckpt))


def test_file_that_is_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        SegmentationModule(filters=[4, 8, 16], source_checkpoint=str(junk))


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))  # type: ignore[return-value]


def test_pickled_code_in_a_checkpoint_is_never_executed(tmp_path: Path) -> None:
    import torch

    marker = tmp_path / "executed"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": _Payload(marker)}, evil)
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        SegmentationModule(filters=[4, 8, 16], source_checkpoint=str(evil))
    assert not marker.exists()


def test_missing_checkpoint_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nowhere.ckpt: checkpoint file not found"):
        SegmentationModule(filters=[4, 8, 16], source_checkpoint=str(tmp_path / "nowhere.ckpt"))
