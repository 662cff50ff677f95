"""ActiveDataModule on a tiny phantom: splits, shapes, pool moves, state round trip, ablations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_ada.data.datamodule import ActiveDataModule
from lightning_ada.errors import DataError


def make_dm(root: Path, **kw: object) -> ActiveDataModule:
    dm = ActiveDataModule(
        root=str(root), batch_size=2, iterations_per_epoch=2, patch_size=[16, 16, 16],
        divisible_by=4, **kw,  # type: ignore[arg-type]
    )
    dm.setup("fit")
    return dm


def test_splits_shapes_and_labels(phantom_root: Path) -> None:
    dm = make_dm(phantom_root)
    assert {k: len(v) for k, v in dm.split_ids.items()} == {
        "source": 4, "source_test": 2, "pool": 6, "test": 2,
    }
    item = dm.item(dm.split_ids["test"][0])
    assert item["image"].shape == (4, 16, 16, 16) and item["image"].dtype == torch.float32
    assert item["label"].shape == (1, 16, 16, 16)
    assert set(item["label"].unique().tolist()) <= {0, 1, 2, 3}  # BraTS 1/2/4 -> classes 1/2/3
    # z-scored inside the head, per channel
    head = item["image"][0] != 0
    assert abs(float(item["image"][0][head].mean())) < 0.1


def test_label_moves_case_and_loader_follows(phantom_root: Path) -> None:
    dm = make_dm(phantom_root)
    loader = dm.train_dataloader()
    assert dm.pool.n_labeled == 0
    first = dm.unlabeled_ids()[3]
    dm.label(first, dm.case(first).label, "t1ce", round=0, epoch=-1)
    batch = next(iter(loader))  # the same loader object sees the new labeled case
    assert set(batch["case_id"]) == {first}
    assert batch["image"].shape == (2, 4, 16, 16, 16)


def test_state_round_trip_restores_labeled_set(phantom_root: Path) -> None:
    dm = make_dm(phantom_root)
    ids = dm.unlabeled_ids()
    dm.label(ids[1], dm.case(ids[1]).label, "flair", round=0, epoch=-1)
    dm.label(ids[4], dm.case(ids[4]).label, "t2", round=1, epoch=3)
    state = dm.state_dict()
    fresh = ActiveDataModule(root=str(phantom_root), divisible_by=4)
    fresh.load_state_dict(state)  # before setup, as Lightning does on resume
    fresh.setup("fit")
    assert fresh.pool.labeled == [ids[1], ids[4]]
    assert fresh.pool.annotation(ids[4]).modality == "t2"


def test_source_stage_trains_on_every_source_case(phantom_root: Path) -> None:
    dm = make_dm(phantom_root, stage="source")
    assert dm.train_pool.labeled == dm.split_ids["source"]
    assert dm.test_split() == "source_test"
    assert dm.pool.n_labeled == 0


def test_label_all_is_the_upper_bound(phantom_root: Path) -> None:
    dm = make_dm(phantom_root, label_all=True)
    assert dm.pool.n_unlabeled == 0 and dm.pool.n_labeled == 6


def test_dominant_only_zeroes_the_other_modalities(phantom_root: Path) -> None:
    dm = make_dm(phantom_root, train_input="dominant_only")
    cid = dm.unlabeled_ids()[0]
    dm.label(cid, dm.case(cid).label, "t1ce", round=0, epoch=-1)
    image = dm.training_item(cid)["image"]
    assert image[2].abs().sum() > 0
    assert all(float(image[m].abs().sum()) == 0 for m in (0, 1, 3))
    assert dm.item(cid)["image"][0].abs().sum() > 0  # the cached item is untouched


def test_modality_mask_annotation_is_loaded(phantom_root: Path) -> None:
    dm = make_dm(phantom_root)
    cid = dm.unlabeled_ids()[0]
    path = dm.case(cid).modality_labels["t1"]
    dm.label(cid, path, "t1", round=0, epoch=-1)
    item = dm.training_item(cid)
    assert item["label"].shape == (1, 16, 16, 16)


def test_wrong_modalities_and_splits_are_refused(phantom_root: Path) -> None:
    with pytest.raises(DataError, match="modalities"):
        make_dm(phantom_root, modalities=["t1", "t1ce", "t2"])
    with pytest.raises(DataError, match="unknown case ids"):
        make_dm(phantom_root, splits={"pool": ["no_such_case"]})


def test_single_modality_input_everywhere(phantom_root: Path) -> None:
    dm = make_dm(phantom_root, train_input="modality:t1ce")
    test_id = dm.split_ids["test"][0]
    image = dm.image(test_id)  # evaluation and scoring see t1ce only
    assert image[2].abs().sum() > 0 and all(float(image[m].abs().sum()) == 0 for m in (0, 1, 3))
    cid = dm.unlabeled_ids()[0]
    dm.label(cid, dm.case(cid).modality_labels["flair"], "flair", round=0, epoch=-1)
    train = dm.training_item(cid)["image"]  # whatever modality the annotation was drawn on
    assert all(float(train[m].abs().sum()) == 0 for m in (0, 1, 3))
    with pytest.raises(ValueError, match="train_input must be one of"):
        ActiveDataModule(root=str(phantom_root), train_input="modality:pet")


def unlabelled_pool_datalist(phantom_root: Path, out: Path, drop_test_labels: bool = False) -> Path:
    """The phantom's datalist with no label on the pool cases (real target data before any
    annotation), paths made absolute."""
    import json

    d = json.loads((phantom_root / "dataset.json").read_text())
    for c in d["cases"]:
        c["images"] = [str(phantom_root / p) for p in c["images"]]
        c["label"] = str(phantom_root / c["label"])
        c.pop("modality_labels", None)
        if c["split"] == "pool" or (drop_test_labels and c["split"] == "test"):
            del c["label"]
    path = out / "datalist.json"
    path.write_text(json.dumps(d))
    return path


def test_an_unlabelled_pool_is_read_and_labelled_by_deliveries(phantom_root: Path, tmp_path: Path) -> None:
    dm = make_dm(unlabelled_pool_datalist(phantom_root, tmp_path))
    pool = dm.unlabeled_ids()
    assert len(pool) == 6
    item = dm.item(pool[0])
    assert "label" not in item and item["image"].shape == (4, 16, 16, 16)
    delivered = str(phantom_root / pool[2] / f"{pool[2]}_seg.nii.gz")
    dm.label(pool[2], delivered, "flair", round=0, epoch=-1)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["case_id"]) == {pool[2]} and batch["label"].shape == (2, 1, 16, 16, 16)
    with pytest.raises(DataError, match=f"case {pool[0]} has no reference label"):
        make_dm(unlabelled_pool_datalist(phantom_root, tmp_path), initial_labeled=[pool[0]])


def test_an_unlabelled_test_case_is_refused_and_an_empty_test_split_only_by_test(
    phantom_root: Path, tmp_path: Path
) -> None:
    datalist = unlabelled_pool_datalist(phantom_root, tmp_path, drop_test_labels=True)
    with pytest.raises(DataError, match=r"without a reference label: \['glioma_test_000', 'glioma_test_001'\]"):
        make_dm(datalist)
    with pytest.raises(DataError, match="split 'pool' is empty or missing"):  # only test: declared
        make_dm(phantom_root, splits={"pool": []})
    dm = make_dm(datalist, splits={"test": []})  # declared: no evaluation set (an app's datastore)
    assert dm.split_ids["test"] == [] and len(dm.unlabeled_ids()) == 6
    with pytest.raises(DataError, match="split 'test' is empty"):
        dm.test_dataloader()


def test_an_initially_partial_label_trains_only_where_it_was_annotated(phantom_root: Path, tmp_path: Path) -> None:
    """``data.initial_partial``: a label file whose 255 voxels were not annotated (what a MONAI
    Label client's slice deliveries merge into) is a partial label from the start."""
    import json

    import nibabel as nib
    import numpy as np

    from lightning_ada.cases import NOT_ANNOTATED
    from lightning_ada.data.partial_labels import ANNOTATED_BACKGROUND, ANNOTATED_FOREGROUND, UNANNOTATED

    datalist = unlabelled_pool_datalist(phantom_root, tmp_path)
    d = json.loads(datalist.read_text())
    pool = sorted(c["case_id"] for c in d["cases"] if c["split"] == "pool")
    reference = nib.load(phantom_root / pool[1] / f"{pool[1]}_seg.nii.gz")
    values = np.asarray(reference.dataobj).astype(np.uint8)
    tumour = int(np.flatnonzero(values.any(axis=(0, 1)))[0])  # an axial slice with tumour
    partial = np.full_like(values, NOT_ANNOTATED)
    partial[..., tumour:tumour + 3] = values[..., tumour:tumour + 3]
    path = tmp_path / "partial.nii.gz"
    nib.save(nib.Nifti1Image(partial, reference.affine), path)
    for c in d["cases"]:
        if c["case_id"] == pool[1]:
            c["label"] = str(path)
    datalist.write_text(json.dumps(d))

    with pytest.raises(DataError, match="255"):  # a partial file is refused unless declared
        make_dm(datalist, initial_labeled=[pool[1]])
    with pytest.raises(ValueError, match=r"not in data.initial_labeled: \['" + pool[2]):
        make_dm(datalist, initial_labeled=[pool[1]], initial_partial=[pool[2]])
    dm = make_dm(datalist, initial_labeled=[pool[1]], initial_partial=[pool[1]])
    item = dm.training_item(pool[1])
    annotated = dm.annotated(pool[1])
    assert annotated is not None and 0 < int(annotated.sum()) < annotated.numel()
    label, sampling = item["label"][0], item["sampling"][0]
    assert bool((label[~annotated] == NOT_ANNOTATED).all())
    assert bool((label[annotated] != NOT_ANNOTATED).all())
    assert bool((sampling[~annotated] == UNANNOTATED).all())
    assert set(sampling[annotated].unique().tolist()) == {ANNOTATED_BACKGROUND, ANNOTATED_FOREGROUND}
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["case_id"]) == {pool[1]}
