"""The MONAI Label app's parts without a server: region requests, merging deliveries into a
partial label, the unit options, and the datastore's one-write update of many image infos."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("monailabel", reason="the MONAI Label extra: pip install -e .[label]")

from fastapi import HTTPException  # noqa: E402

from lightning_ada.cases import NOT_ANNOTATED  # noqa: E402
from lightning_ada.errors import DataError  # noqa: E402
from lightning_ada.monailabel.datastore import CheckedDatastore  # noqa: E402
from lightning_ada.monailabel.regions import (  # noqa: E402
    RegionRequests,
    annotated_voxels,
    is_partial,
    merge_delivery,
    overlaps,
    unit_options,
)

AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])
SHAPE = (8, 8, 6)


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture
def image(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    return save(tmp_path / "case.nii.gz", rng.normal(size=(*SHAPE, 2)).astype(np.float32))


def slices_request(tmp_path: Path, indices: list[int], name: str = "asked") -> dict:
    asked = np.zeros(SHAPE, np.uint8)
    asked[..., indices] = 1
    return {"case_id": "case", "region": f"slices {indices}",
            "asked_mask": str(save(tmp_path / f"{name}.nii.gz", asked))}


def test_unit_options_are_the_cli_options_of_the_unit() -> None:
    assert unit_options("slices:k=3,axis=2") == [
        "--active.unit", "slices", "--active.unit.k", "3", "--active.unit.axis", "2"]
    assert unit_options("patch") == ["--active.unit", "patch"]
    with pytest.raises(ValueError, match="'k3' is not key=value"):
        unit_options("slices:k3")


def test_deliveries_merge_in_order_and_tumour_outside_is_refused(image: Path, tmp_path: Path) -> None:
    truth = np.zeros(SHAPE, np.uint8)
    truth[2:6, 2:6, 1:5] = 2
    truth[3:5, 3:5, 2:4] = 4
    first = slices_request(tmp_path, [2, 3])
    out = tmp_path / "merged.nii.gz"

    with pytest.raises(DataError, match=r"marks 32 voxels outside the asked region \(slices \[2, 3\]; 128 voxels"):
        merge_delivery(save(tmp_path / "whole.nii.gz", truth), image, first, None, [1, 2, 4], out)
    assert not out.exists()
    blank = save(tmp_path / "blank.nii.gz", np.full(SHAPE, NOT_ANNOTATED, np.uint8))
    with pytest.raises(DataError, match="annotates nothing of the asked region"):
        merge_delivery(blank, image, first, None, [1, 2, 4], out)

    # the asked slices delineated, 0 elsewhere (an editor's unpainted voxels)
    slices = np.zeros(SHAPE, np.uint8)
    slices[..., 2:4] = truth[..., 2:4]
    given = merge_delivery(save(tmp_path / "d1.nii.gz", slices), image, first, None, [1, 2, 4], out)
    assert given == 128
    merged = np.asarray(nib.load(out).dataobj)
    assert np.array_equal(merged[..., 2:4], truth[..., 2:4])
    assert bool((merged[..., [0, 1, 4, 5]] == NOT_ANNOTATED).all())
    assert np.allclose(nib.load(out).affine, nib.load(image).affine)
    assert is_partial(out)

    # a second region, half of it left at 255: merged without touching the first
    second = slices_request(tmp_path, [4, 5], "asked2")
    half = np.full(SHAPE, 0, np.uint8)
    half[..., 4:6] = NOT_ANNOTATED
    half[:4, :, 4:6] = truth[:4, :, 4:6]
    out2 = tmp_path / "merged2.nii.gz"
    assert merge_delivery(save(tmp_path / "d2.nii.gz", half), image, second, out, [1, 2, 4], out2) == 4 * 8 * 2
    merged2 = np.asarray(nib.load(out2).dataobj)
    assert np.array_equal(merged2[..., 2:4], truth[..., 2:4])
    assert np.array_equal(merged2[:4, :, 4:6], truth[:4, :, 4:6])
    assert bool((merged2[4:, :, 4:6] == NOT_ANNOTATED).all())
    annotated = annotated_voxels(out2)
    assert overlaps(second["asked_mask"], annotated) and not overlaps(
        slices_request(tmp_path, [0], "asked3")["asked_mask"], annotated)

    # a whole label (no 255) is not partial; a label of another grid is refused
    assert not is_partial(save(tmp_path / "plain.nii.gz", truth))
    with pytest.raises(DataError, match="shape"):
        merge_delivery(save(tmp_path / "small.nii.gz", truth[:4]), image, first, None, [1, 2, 4], out)


def test_region_requests_are_kept_until_answered(tmp_path: Path) -> None:
    requests = RegionRequests(tmp_path)
    row = {"case_id": "c1", "part": 0, "region": "slices 2-3", "asked_mask": "m.nii.gz",
           "score": 0.5, "elected_modality": "t2", "factors_not_kept": 1}
    kept = requests.ask(row, "entropy_region", "v1")
    assert requests.pending("c1") == kept and "factors_not_kept" not in kept
    assert kept["strategy"] == "entropy_region" and kept["model_version"] == "v1"
    assert requests.pending("c2") is None
    requests.answered("c1", kept, 12)
    assert requests.pending("c1") is None
    assert requests.answers("c1") == [kept | {"annotated_voxels": 12}]
    requests.ask(row, "entropy_region", "v1")
    requests.cancel("c1")
    assert requests.pending("c1") is None and len(requests.answers("c1")) == 1


def test_many_image_infos_are_written_to_the_datastore_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    studies = tmp_path / "studies"
    studies.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        save(studies / f"case_{i}.nii.gz", rng.normal(size=(*SHAPE, 2)).astype(np.float32))
    store = CheckedDatastore(str(studies), [1, 2, 4], extensions=["*.nii.gz"], auto_reload=False)
    writes: list[int] = []
    original = store._update_datastore_file
    monkeypatch.setattr(store, "_update_datastore_file", lambda *a, **k: (writes.append(1), original(*a, **k)))
    store.update_image_infos({f"case_{i}": {"lightning_ada": {"rank": i}} for i in range(5)})
    assert writes == [1]
    reread = CheckedDatastore(str(studies), [1, 2, 4], extensions=["*.nii.gz"], auto_reload=False)
    assert [reread.get_image_info(f"case_{i}")["lightning_ada"]["rank"] for i in range(5)] == list(range(5))
    with pytest.raises(HTTPException) as unknown:
        store.update_image_infos({"case_0": {}, "nope": {}})
    assert unknown.value.status_code == 404 and "nope" in unknown.value.detail
