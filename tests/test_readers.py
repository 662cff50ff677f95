"""Tests of the dataset readers (lightning_ada.data.readers) and the NIfTI validation
(lightning_ada.data.validation)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lightning_ada.cases import Case
from lightning_ada.data.datamodule import ActiveDataModule
from lightning_ada.data.readers import (
    read_brats,
    read_brats2023,
    read_cases,
    read_datalist,
    read_msd,
    read_nnunet_raw,
)
from lightning_ada.data.validation import validate_case, validate_label_file
from lightning_ada.errors import DataError

SHAPE = (8, 8, 6)
BRATS_MODS = ("flair", "t1", "t1ce", "t2")
REAL_BRATS18 = Path(__file__).resolve().parents[2] / "shared/data/brats18"


def save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``data`` as NIfTI at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def image(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def label(values: tuple[int, ...] = (1, 2, 4), shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    for i, v in enumerate(values):
        lab[i + 1, 1:3, 1:3] = v
    return lab


def write_brats(
    root: Path, cid: str, sep: str = "_", mods=BRATS_MODS, ext: str = ".nii.gz", seg: bool = True
) -> Path:
    folder = root / cid
    for i, m in enumerate(mods):
        save(folder / f"{cid}{sep}{m}{ext}", image(i))
    if seg:
        save(folder / f"{cid}{sep}seg{ext}", label())
    return folder


def brats_case(tmp_path: Path, cid: str = "Brats18_CBICA_AAA_1") -> Case:
    write_brats(tmp_path, cid)
    return read_brats(tmp_path)[0]


# ------------------------------------------------------------------------------------------ readers
def test_read_brats_ids_paths_groups_and_order(tmp_path: Path) -> None:
    for cid in ["Brats18_TCIA10_628_1", "Brats18_CBICA_ABM_1", "Brats18_2013_2_1", "other_case"]:
        write_brats(tmp_path, cid, ext=".nii" if cid == "other_case" else ".nii.gz")
    (tmp_path / "README.md").write_text("not a case")
    cases = read_cases(tmp_path, "brats")
    assert [c.case_id for c in cases] == sorted(
        ["Brats18_TCIA10_628_1", "Brats18_CBICA_ABM_1", "Brats18_2013_2_1", "other_case"]
    )
    by_id = {c.case_id: c for c in cases}
    assert by_id["Brats18_TCIA10_628_1"].meta == {"group": "TCIA10"}
    assert by_id["Brats18_CBICA_ABM_1"].meta == {"group": "CBICA"}
    assert by_id["Brats18_2013_2_1"].meta == {"group": "2013"}
    assert by_id["other_case"].meta == {}
    c = by_id["Brats18_CBICA_ABM_1"]
    assert c.modalities == BRATS_MODS
    names = [Path(p).name for p in c.images]
    assert names == [f"Brats18_CBICA_ABM_1_{m}.nii.gz" for m in BRATS_MODS]
    assert Path(c.label).name == "Brats18_CBICA_ABM_1_seg.nii.gz"
    assert Path(by_id["other_case"].images[0]).name == "other_case_flair.nii"
    validate_case(c, label_values=[1, 2, 4])


def test_read_brats_subset_of_modalities_and_unlabeled(tmp_path: Path) -> None:
    write_brats(tmp_path, "A", seg=False)
    write_brats(tmp_path, "B", seg=False)
    cases = read_brats(tmp_path, modalities=("t1ce", "flair"))
    assert [c.modalities for c in cases] == [("t1ce", "flair")] * 2
    assert all(c.label is None for c in cases)


def test_read_brats_label_for_only_some_cases_is_error(tmp_path: Path) -> None:
    write_brats(tmp_path, "A")
    write_brats(tmp_path, "B", seg=False)
    with pytest.raises(DataError, match=r"seg.*\['B'\]"):
        read_brats(tmp_path)


def test_read_brats2023(tmp_path: Path) -> None:
    mods = ("t2f", "t1n", "t1c", "t2w")
    for cid in ["BraTS-GLI-00002-000", "BraTS-GLI-00000-000"]:
        write_brats(tmp_path, cid, sep="-", mods=mods)
    cases = read_cases(tmp_path, "brats2023")
    assert [c.case_id for c in cases] == ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000"]
    assert cases[0].modalities == mods
    assert Path(cases[0].images[2]).name == "BraTS-GLI-00000-000-t1c.nii.gz"
    assert Path(cases[0].label).name == "BraTS-GLI-00000-000-seg.nii.gz"


def write_msd(root: Path, ids=("BRATS_001", "BRATS_002")) -> None:
    for i, cid in enumerate(ids):
        save(root / "imagesTr" / f"{cid}.nii.gz", image(i, SHAPE + (4,)))
        save(root / "labelsTr" / f"{cid}.nii.gz", label((1, 2, 3)))
    save(root / "imagesTs" / "BRATS_900.nii.gz", image(9, SHAPE + (4,)))
    meta = {
        "name": "BRATS",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing", "3": "enhancing"},
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ids
        ],
        "test": ["./imagesTs/BRATS_900.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(meta))


def test_read_msd(tmp_path: Path) -> None:
    write_msd(tmp_path)
    cases = read_cases(tmp_path, "msd")
    assert [c.case_id for c in cases] == ["BRATS_001", "BRATS_002", "BRATS_900"]
    c = cases[0]
    assert c.modalities == ("FLAIR", "T1w", "t1gd", "T2w")
    assert len(c.images) == 1 and Path(c.images[0]).name == "BRATS_001.nii.gz"
    assert Path(c.label).name == "BRATS_001.nii.gz" and Path(c.label).parent.name == "labelsTr"
    assert cases[2].label is None and cases[2].meta["subset"] == "test"
    validate_case(c, label_values=[1, 2, 3])
    validate_case(cases[2])


def test_msd_wrong_modality_count_in_4d_image(tmp_path: Path) -> None:
    write_msd(tmp_path)
    save(tmp_path / "imagesTr" / "BRATS_001.nii.gz", image(0, SHAPE + (3,)))
    with pytest.raises(DataError, match=r"BRATS_001\.nii\.gz.*4 modalities"):
        validate_case(read_msd(tmp_path)[0])


def test_msd_missing_listed_file(tmp_path: Path) -> None:
    write_msd(tmp_path)
    (tmp_path / "labelsTr" / "BRATS_002.nii.gz").unlink()
    with pytest.raises(DataError, match=r"BRATS_002.*missing file .*labelsTr/BRATS_002\.nii\.gz"):
        read_msd(tmp_path)


def write_nnunet(root: Path, ids=("BRATS_002", "BRATS_001")) -> None:
    for i, cid in enumerate(ids):
        for ch in range(4):
            save(root / "imagesTr" / f"{cid}_{ch:04d}.nii.gz", image(10 * i + ch))
        save(root / "labelsTr" / f"{cid}.nii.gz", label((1, 2, 3)))
    for ch in range(4):
        save(root / "imagesTs" / f"BRATS_900_{ch:04d}.nii.gz", image(ch))
    meta = {
        "channel_names": {"0": "FLAIR", "1": "T1w", "2": "T1gd", "3": "T2w"},
        "labels": {"background": 0, "edema": 1, "non-enhancing": 2, "enhancing": 3},
        "numTraining": len(ids),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))


def test_read_nnunet_raw(tmp_path: Path) -> None:
    write_nnunet(tmp_path)
    cases = read_cases(tmp_path, "nnunet")
    assert [c.case_id for c in cases] == ["BRATS_001", "BRATS_002", "BRATS_900"]
    c = cases[0]
    assert c.modalities == ("FLAIR", "T1w", "T1gd", "T2w")
    assert [Path(p).name for p in c.images] == [f"BRATS_001_{i:04d}.nii.gz" for i in range(4)]
    assert Path(c.label).name == "BRATS_001.nii.gz"
    assert cases[2].label is None and cases[2].meta["subset"] == "test"
    validate_case(c, label_values=[1, 2, 3])


def test_nnunet_missing_channel_and_label(tmp_path: Path) -> None:
    write_nnunet(tmp_path)
    (tmp_path / "imagesTr" / "BRATS_002_0003.nii.gz").unlink()
    with pytest.raises(DataError, match=r"imagesTr.*BRATS_002.*BRATS_002_0003\.nii\.gz"):
        read_nnunet_raw(tmp_path)
    save(tmp_path / "imagesTr" / "BRATS_002_0003.nii.gz", image(1))
    (tmp_path / "labelsTr" / "BRATS_001.nii.gz").unlink()
    with pytest.raises(DataError, match=r"labelsTr.*BRATS_001\.nii\.gz"):
        read_nnunet_raw(tmp_path)


def write_datalist(root: Path, ids=("p1", "p0")) -> Path:
    cases = []
    for i, cid in enumerate(ids):
        folder = root / "cases" / cid
        imgs = [save(folder / f"{m}.nii.gz", image(i * 4 + k)) for k, m in enumerate(("t1", "t2"))]
        lab = save(root / "cases" / cid / "seg.nii.gz", label((1, 2)))
        mlab = save(root / "cases" / cid / "seg_t2.nii.gz", label((1,)))
        c = Case(
            case_id=cid,
            images=tuple(str(p.relative_to(root)) for p in imgs),
            modalities=("t1", "t2"),
            label=str(lab.relative_to(root)),
            modality_labels={"t2": str(mlab.relative_to(root))},
            split="pool",
            meta={"centre": i},
        )
        cases.append(c.to_json())
    path = root / "datalist.json"
    d = {"name": "phantom", "modalities": ["t1", "t2"], "labels": {"A": 1, "B": 2}, "cases": cases}
    path.write_text(json.dumps(d))
    return path


def test_read_datalist(tmp_path: Path) -> None:
    path = write_datalist(tmp_path)
    cases = read_cases(path, "datalist")
    assert [c.case_id for c in cases] == ["p1", "p0"]  # file order kept
    c = cases[0]
    assert c.images == (str(tmp_path / "cases/p1/t1.nii.gz"), str(tmp_path / "cases/p1/t2.nii.gz"))
    assert c.label == str(tmp_path / "cases/p1/seg.nii.gz")
    assert c.modality_labels == {"t2": str(tmp_path / "cases/p1/seg_t2.nii.gz")}
    assert c.split == "pool" and c.meta == {"centre": 0}
    assert read_datalist(tmp_path) == cases  # a folder holding datalist.json works too
    validate_case(c, label_values=[1, 2], allow_empty_label=False)


def test_datalist_duplicate_ids(tmp_path: Path) -> None:
    path = write_datalist(tmp_path)
    d = json.loads(path.read_text())
    d["cases"].append(d["cases"][0])
    path.write_text(json.dumps(d))
    with pytest.raises(DataError, match=r"datalist\.json.*duplicate case ids \['p1'\]"):
        read_datalist(path)


def test_datalist_missing_file_and_bad_modalities(tmp_path: Path) -> None:
    path = write_datalist(tmp_path)
    (tmp_path / "cases/p0/t2.nii.gz").unlink()
    with pytest.raises(DataError, match=r"'p0'.*missing file .*p0/t2\.nii\.gz"):
        read_datalist(path)
    d = json.loads(path.read_text())
    d["modalities"] = ["flair", "t2"]
    path.write_text(json.dumps(d))
    with pytest.raises(DataError, match=r"modalities"):
        read_datalist(path)


# ---------------------------------------------------------------------------------- reader failures
@pytest.mark.parametrize("layout", ["brats", "brats2023", "msd", "nnunet", "datalist"])
def test_missing_root(tmp_path: Path, layout: str) -> None:
    with pytest.raises(DataError, match="nowhere"):
        read_cases(tmp_path / "nowhere", layout)  # type: ignore[arg-type]


def test_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown layout"):
        read_cases(tmp_path, "kits")  # type: ignore[arg-type]


def test_missing_modality_names_folder_and_file(tmp_path: Path) -> None:
    write_brats(tmp_path, "Brats18_CBICA_AAA_1")
    folder = write_brats(tmp_path, "Brats18_CBICA_AAB_1")
    (folder / "Brats18_CBICA_AAB_1_t1ce.nii.gz").unlink()
    msg = r"Brats18_CBICA_AAB_1: missing modality file Brats18_CBICA_AAB_1_t1ce\.nii\.gz"
    with pytest.raises(DataError, match=msg):
        read_brats(tmp_path)


def test_empty_case_folder(tmp_path: Path) -> None:
    write_brats(tmp_path, "A")
    (tmp_path / "B").mkdir()
    with pytest.raises(DataError, match=r"B: case folder holds no files"):
        read_brats(tmp_path)


def test_no_case_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no case folders"):
        read_brats(tmp_path)


# ------------------------------------------------------------------------------------- validation
def test_shape_mismatch_between_modalities(tmp_path: Path) -> None:
    c = brats_case(tmp_path)
    save(Path(c.images[2]), image(2, (8, 8, 5)))
    msg = r"_t1ce\.nii\.gz: shape \(8, 8, 5\) disagrees with \(8, 8, 6\)"
    with pytest.raises(DataError, match=msg):
        validate_case(c)


def test_label_shape_mismatch(tmp_path: Path) -> None:
    c = brats_case(tmp_path)
    save(Path(c.label), label(shape=(8, 7, 6)))
    with pytest.raises(DataError, match=r"_seg\.nii\.gz: shape"):
        validate_case(c)


def test_affine_mismatch(tmp_path: Path) -> None:
    c = brats_case(tmp_path)
    aff = np.eye(4)
    aff[0, 3] = 0.5
    save(Path(c.images[1]), image(1), aff)
    with pytest.raises(DataError, match=r"_t1\.nii\.gz: affine differs"):
        validate_case(c)
    aff[0, 3] = 1e-4  # within tolerance
    save(Path(c.images[1]), image(1), aff)
    validate_case(c)


@pytest.mark.parametrize("bad, what", [(np.nan, r"1 NaN, 0 inf"), (np.inf, r"0 NaN, 1 inf")])
def test_non_finite_voxels(tmp_path: Path, bad: float, what: str) -> None:
    c = brats_case(tmp_path)
    data = image(3)
    data[2, 2, 2] = bad
    save(Path(c.images[3]), data)
    with pytest.raises(DataError, match=rf"_t2\.nii\.gz: non-finite voxels \({what}\)"):
        validate_case(c)


def test_label_values_outside_set(tmp_path: Path) -> None:
    c = brats_case(tmp_path)
    save(Path(c.label), label((1, 3, 7)))
    msg = r"_seg\.nii\.gz: label values \[3, 7\] outside the declared set \[0, 1, 2, 4\]"
    with pytest.raises(DataError, match=msg):
        validate_case(c, label_values=[1, 2, 4])
    validate_case(c)  # no declared set -> no value check


def test_float_label_with_fractions(tmp_path: Path) -> None:
    c = brats_case(tmp_path)
    save(Path(c.label), label().astype(np.float32) * 0.5)
    with pytest.raises(DataError, match=r"_seg\.nii\.gz: label holds non-integer"):
        validate_case(c, label_values=[1, 2, 4])


def test_truncated_gzip(tmp_path: Path) -> None:
    c = brats_case(tmp_path)
    p = Path(c.images[0])
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"_flair\.nii\.gz: unreadable or truncated"):
        validate_case(c)
    p.write_bytes(b"")
    with pytest.raises(DataError, match=r"_flair\.nii\.gz: unreadable or truncated"):
        validate_case(c)


def test_missing_file_in_validation(tmp_path: Path) -> None:
    c = brats_case(tmp_path)
    Path(c.images[1]).unlink()
    with pytest.raises(DataError, match=r"_t1\.nii\.gz: missing file"):
        validate_case(c)


@pytest.mark.parametrize(
    "value, what", [(0.0, "all zeros"), (3.0, r"constant \(every voxel = 3\)")]
)
def test_constant_channel(tmp_path: Path, value: float, what: str) -> None:
    c = brats_case(tmp_path)
    save(Path(c.images[2]), np.full(SHAPE, value, np.float32))
    with pytest.raises(DataError, match=rf"_t1ce\.nii\.gz: modality 't1ce' is {what}"):
        validate_case(c)


def test_constant_channel_in_4d_image(tmp_path: Path) -> None:
    write_msd(tmp_path)
    data = image(0, SHAPE + (4,))
    data[..., 1] = 0
    save(tmp_path / "imagesTr" / "BRATS_001.nii.gz", data)
    with pytest.raises(DataError, match=r"BRATS_001\.nii\.gz: modality 'T1w' is all zeros"):
        validate_case(read_msd(tmp_path)[0])


def test_non_3d_image(tmp_path: Path) -> None:
    c = brats_case(tmp_path)
    save(Path(c.images[0]), image(0, (8, 8)))
    with pytest.raises(DataError, match=r"_flair\.nii\.gz: expected a 3-D image"):
        validate_case(c)


def test_empty_label(tmp_path: Path) -> None:
    c = brats_case(tmp_path)
    save(Path(c.label), np.zeros(SHAPE, np.uint8))
    validate_case(c, label_values=[1, 2, 4])
    with pytest.raises(DataError, match=r"_seg\.nii\.gz: label is empty"):
        validate_case(c, allow_empty_label=False)


def test_modality_labels_are_validated(tmp_path: Path) -> None:
    path = write_datalist(tmp_path)
    c = read_datalist(path)[0]
    save(Path(c.modality_labels["t2"]), label((5,)))
    with pytest.raises(DataError, match=r"seg_t2\.nii\.gz: label values \[5\]"):
        validate_case(c, label_values=[1, 2])


def test_validate_label_file(tmp_path: Path) -> None:
    c = brats_case(tmp_path)
    ref = c.images[0]
    validate_label_file(c.label, ref, [1, 2, 4])
    other = save(tmp_path / "other" / "seg.nii.gz", label(shape=(10, 10, 6)))  # another case's size
    with pytest.raises(DataError, match=r"other/seg\.nii\.gz: shape \(10, 10, 6\) disagrees"):
        validate_label_file(other, ref, [1, 2, 4])
    aff = np.diag([2.0, 1.0, 1.0, 1.0])
    moved = save(tmp_path / "moved_seg.nii.gz", label(), aff)
    with pytest.raises(DataError, match=r"moved_seg\.nii\.gz: affine differs"):
        validate_label_file(moved, ref, [1, 2, 4])
    empty = save(tmp_path / "empty_seg.nii.gz", np.zeros(SHAPE, np.uint8))
    with pytest.raises(DataError, match=r"empty_seg\.nii\.gz: label is empty"):
        validate_label_file(empty, ref, [1, 2, 4])
    validate_label_file(empty, ref, [1, 2, 4], allow_empty=True)
    with pytest.raises(DataError, match=r"outside the declared set"):
        validate_label_file(c.label, ref, [1, 2])
    with pytest.raises(DataError, match=r"nothere\.nii\.gz: missing file"):
        validate_label_file(tmp_path / "nothere.nii.gz", ref, [1, 2, 4])


def test_validate_label_file_against_4d_reference(tmp_path: Path) -> None:
    write_msd(tmp_path)
    c = read_msd(tmp_path)[0]
    validate_label_file(c.label, c.images[0], [1, 2, 3])


def test_image_count_mismatch(tmp_path: Path) -> None:
    c = brats_case(tmp_path)
    c = replace(c, images=c.images[:2])
    with pytest.raises(DataError, match=r"'Brats18_CBICA_AAA_1': 2 image files for 4 modalities"):
        validate_case(c)


# -------------------------------------------------------------------------------------- real data
@pytest.mark.realdata
@pytest.mark.skipif(not REAL_BRATS18.exists(), reason=f"no BraTS 2018 sample at {REAL_BRATS18}")
def test_real_brats18() -> None:
    cases = read_cases(REAL_BRATS18, "brats")
    assert len(cases) == 17
    assert [c.case_id for c in cases] == sorted(c.case_id for c in cases)
    groups = {c.meta["group"] for c in cases}
    assert groups == {"CBICA", "TCIA01", "TCIA02", "TCIA03", "TCIA10", "TCIA13"}
    by_id = {c.case_id: c for c in cases}
    assert by_id["Brats18_TCIA10_628_1"].meta["group"] == "TCIA10"
    assert by_id["Brats18_CBICA_ABM_1"].meta["group"] == "CBICA"
    assert all(c.label is not None for c in cases)
    validate_case(by_id["Brats18_CBICA_ABM_1"], label_values=[1, 2, 4], allow_empty_label=False)


# --------------------------------------------------------------- official layouts (issue 18)
def test_brats_grade_folders_as_downloaded(tmp_path: Path) -> None:
    for grade, cid in [("HGG", "Brats18_TCIA02_300_1"), ("HGG", "Brats18_CBICA_AAB_1"),
                       ("LGG", "Brats18_TCIA10_130_1")]:
        write_brats(tmp_path / grade, cid)
    (tmp_path / "survival_data.csv").write_text("not a case\n")
    cases = read_cases(tmp_path, "brats")
    assert [c.case_id for c in cases] == [
        "Brats18_CBICA_AAB_1", "Brats18_TCIA02_300_1", "Brats18_TCIA10_130_1",
    ]
    assert [c.meta for c in cases] == [
        {"group": "CBICA", "grade": "HGG"}, {"group": "TCIA02", "grade": "HGG"},
        {"group": "TCIA10", "grade": "LGG"},
    ]
    assert Path(cases[2].label).parent == tmp_path / "LGG" / "Brats18_TCIA10_130_1"


def test_brats_grade_folders_mixed_with_cases_say_what_was_expected(tmp_path: Path) -> None:
    write_brats(tmp_path / "HGG", "Brats18_TCIA02_300_1")
    write_brats(tmp_path, "Brats18_CBICA_AAB_1")
    with pytest.raises(DataError, match=r"mixes grade folders \['HGG'\].*expected <root>/<case>/"):
        read_brats(tmp_path)
    (tmp_path / "LGG").mkdir()
    expected = "expected <root>/<case>/<case>_<modality>.nii.gz, optionally under HGG/ and LGG/"
    with pytest.raises(DataError, match=expected):
        read_brats(tmp_path / "LGG")


def test_brats2023_names_read_with_the_brats_layout_get_a_hint(tmp_path: Path) -> None:
    write_brats(tmp_path, "BraTS-GLI-00000-000", sep="-", mods=("t2f", "t1n", "t1c", "t2w"))
    with pytest.raises(DataError, match="BraTS 2023 names: use data.layout brats2023"):
        read_brats(tmp_path)
    write_brats(tmp_path / "old", "BraTS2021_00000")
    with pytest.raises(DataError, match="BraTS 2018-2021 names: use data.layout brats"):
        read_brats2023(tmp_path / "old")


def _dm(root: Path, ids: list[str], **kw: object) -> ActiveDataModule:
    dm = ActiveDataModule(
        root=str(root), stage="target", splits={"pool": ids[:-1], "test": ids[-1:]},
        divisible_by=2, **kw,  # type: ignore[arg-type]
    )
    dm.setup("fit")
    return dm


def test_datamodule_reads_grade_folders_and_2023_layout(tmp_path: Path) -> None:
    ids = ["Brats18_CBICA_AAB_1", "Brats18_TCIA02_300_1", "Brats18_TCIA10_130_1"]
    for grade, cid in zip(["HGG", "HGG", "LGG"], ids):
        write_brats(tmp_path / "2018" / grade, cid)
    dm = _dm(tmp_path / "2018", ids, layout="brats")
    assert dm.image(ids[2]).shape == (4, 8, 8, 6) and dm.case(ids[2]).meta["grade"] == "LGG"

    ids23 = ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000", "BraTS-GLI-00003-001"]
    mods = ["t2f", "t1n", "t1c", "t2w"]
    for cid in ids23:
        folder = write_brats(tmp_path / "2023", cid, sep="-", mods=tuple(mods), seg=False)
        save(folder / f"{cid}-seg.nii.gz", label((1, 2, 3)))
    dm = _dm(tmp_path / "2023", ids23, layout="brats2023", modalities=mods,
             labels={"NCR": 1, "ED": 2, "ET": 3})
    assert dm.item(ids23[0])["image"].shape == (4, 8, 8, 6)
    assert set(dm.item(ids23[0])["label"].unique().tolist()) == {0, 1, 2, 3}


def test_datamodule_modality_subset_with_the_brats_layout(tmp_path: Path) -> None:
    ids = ["A1", "A2", "A3"]
    for cid in ids:
        write_brats(tmp_path / "full", cid)
        write_brats(tmp_path / "two", cid, mods=("flair", "t1ce"))
    for root in (tmp_path / "full", tmp_path / "two"):
        dm = _dm(root, ids, layout="brats", modalities=["flair", "t1ce"])
        image = dm.image("A1")
        assert image.shape == (2, 8, 8, 6)
        assert Path(dm.case("A1").images[1]).name == "A1_t1ce.nii.gz"
    with pytest.raises(DataError, match=r"missing modality file A1_t1\.nii\.gz"):
        _dm(tmp_path / "two", ids, layout="brats")


@pytest.mark.parametrize(
    "names", [("datalist.json",), ("dataset.json",), ("datalist.json", "dataset.json")]
)
def test_datalist_accepted_under_both_names(tmp_path: Path, names: tuple[str, ...]) -> None:
    written = write_datalist(tmp_path, ids=("p1", "p0", "p2")).rename(tmp_path / "list.tmp")
    for name in names:
        shutil.copy(written, tmp_path / name)
    written.unlink()
    if len(names) == 2:
        with pytest.raises(DataError, match="holds both dataset.json and datalist.json; keep one"):
            _dm(tmp_path, ["p1", "p0", "p2"], modalities=["t1", "t2"], labels={"A": 1, "B": 2})
        return
    dm = _dm(tmp_path, ["p1", "p0", "p2"], modalities=["t1", "t2"], labels={"A": 1, "B": 2})
    assert dm.image("p2").shape == (2, 8, 8, 6)
    assert read_datalist(tmp_path) == read_datalist(tmp_path / names[0])


def test_datalist_folder_without_a_datalist(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no dataset.json or datalist.json datalist"):
        read_datalist(tmp_path)


def test_nifti_is_read_by_nibabel_whatever_else_is_installed() -> None:
    """MONAI tries the last registered reader that accepts a suffix first; with ITK and pydicom
    installed (the MONAI Label extra) a NIfTI must still go to nibabel, or every preprocessed
    case (and every published number) could change."""
    from monai.transforms import LoadImaged

    from lightning_ada.data.transforms import preprocessing

    load = preprocessing([1, 2, 4]).transforms[0]
    assert isinstance(load, LoadImaged)
    first = next(r for r in load._loader.readers[::-1] if r.verify_suffix("case.nii.gz"))
    assert type(first).__name__ == "NibabelReader"
