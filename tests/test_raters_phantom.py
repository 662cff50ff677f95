"""The phantom's ``raters`` option: each rater's masks differ from the consensus as configured,
one datalist per rater, and ``data.rater`` reads it."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from lightning_ada.data.readers import read_datalist
from lightning_ada.errors import DataError
from lightning_ada.phantom.raters import DEFAULT_RATERS
from lightning_ada.phantom.simulator import (
    folder_suffix,
    generate_phantom,
    load_phantom,
    rater_datalist,
    rater_styles,
)

BASE = dict(task="glioma", size=16, n_source=2, n_source_test=0, n_pool=5, n_test=3, seed=2,
            regime="power", progress=False)
RATERS = [
    {"name": "wide", "margin": 1, "metric": "chessboard"},
    {"name": "tight", "margin": -1},
    {"name": "core", "omit_labels": [2]},
    {"name": "half", "margin": 1, "margin_fraction": 0.5},
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_phantom(tmp_path_factory.mktemp("raters"), raters=RATERS, **BASE).parent


def _arr(path: str | Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_styles_differ_from_the_consensus_by_the_configured_amounts(root: Path) -> None:
    cases = load_phantom(root)
    target = [c for c in cases if c.split in ("pool", "test")]
    assert len(target) == 8
    cube = np.ones((3, 3, 3), bool)
    ball = ndimage.generate_binary_structure(3, 1)
    for c in target:
        ref = _arr(c.label)
        fg = ref > 0
        masks = {r: _arr(root / p) for r, p in c.meta["rater_labels"].items()}
        assert sorted(masks) == sorted(r["name"] for r in RATERS)
        # one voxel out along the 26 neighbours: exactly the cube dilation, labels kept inside
        assert np.array_equal(masks["wide"] > 0, ndimage.binary_dilation(fg, cube))
        assert np.array_equal(masks["wide"][fg], ref[fg])
        # one voxel in (Euclidean, the 6 face neighbours; the volume border is background)
        assert np.array_equal(masks["tight"] > 0, ndimage.binary_erosion(fg, ball, border_value=0))
        # no oedema drawn, everything else as the consensus
        assert np.array_equal(masks["core"], np.where(ref == 2, 0, ref))
        # half of the one-voxel shell (rounded), nothing removed
        shell = ndimage.binary_dilation(fg, ball) & ~fg
        grown = (masks["half"] > 0) & ~fg
        assert grown.sum() == round(0.5 * shell.sum()) and not (grown & ~shell).any()
        assert np.array_equal(masks["half"][fg], ref[fg])
    for c in cases:  # source cases have no rater masks
        assert (c.split in ("pool", "test")) == ("rater_labels" in c.meta)


def test_one_datalist_per_rater(root: Path) -> None:
    d = json.loads((root / "dataset.json").read_text())
    assert d["raters"] == {r["name"]: f"dataset_rater-{r['name']}.json" for r in RATERS}
    assert [r["name"] for r in d["generator"]["raters"]] == [r["name"] for r in RATERS]
    consensus = {c.case_id: c for c in load_phantom(root)}
    for r in RATERS:
        cases = read_datalist(rater_datalist(root, r["name"]))
        assert [c.case_id for c in cases] == list(consensus)
        for c in cases:
            ref = consensus[c.case_id]
            assert c.images == ref.images
            if c.split in ("pool", "test"):
                assert c.label.endswith(f"_seg_rater-{r['name']}.nii.gz")
                assert c.modality_labels == {} and c.meta["rater"] == r["name"]
            else:
                assert c.label == ref.label and c.modality_labels == ref.modality_labels
    with pytest.raises(DataError, match="wide"):  # an unknown rater names the known ones
        rater_datalist(root, "nobody")


def test_data_rater_reads_the_raters_labels(root: Path) -> None:
    from lightning_ada.data.datamodule import ActiveDataModule

    phantom = {**BASE, "raters": RATERS}
    dm = ActiveDataModule(root=str(root), phantom=phantom, rater="core", patch_size=[16, 16, 16])
    dm.setup()
    for cid in dm.split_ids["test"]:
        assert dm.case(cid).label.endswith("_seg_rater-core.nii.gz")
        # the oedema class (index 2 of NCR, ED, ET) is never in this rater's references
        assert not (dm.item(cid)["label"] == 2).any()
    pool = dm.split_ids["pool"]
    assert all(dm.case(cid).label.endswith("_seg_rater-core.nii.gz") for cid in pool)
    plain = ActiveDataModule(root=str(root), phantom=phantom, patch_size=[16, 16, 16])
    plain.setup()
    assert plain.case(dm.split_ids["test"][0]).label.endswith("_seg.nii.gz")


def test_options_record_and_folder(tmp_path: Path, root: Path) -> None:
    plain = generate_phantom(tmp_path / "plain", **BASE)
    a, b = load_phantom(plain), load_phantom(root)
    for x, y in zip(a, b):  # the option adds masks, changes no array
        assert np.array_equal(_arr(x.images[0]), _arr(y.images[0]))
        assert np.array_equal(_arr(x.label), _arr(y.label))
    assert not list((tmp_path / "plain").glob("dataset_rater-*.json"))
    with pytest.raises(FileExistsError):
        generate_phantom(tmp_path / "plain", raters=RATERS, **BASE)
    assert folder_suffix(raters=RATERS) != folder_suffix(raters="default") != ""
    assert rater_styles("default") == DEFAULT_RATERS and rater_styles(None) == ()
    for bad in ("everyone", [{"name": "x"}, {"name": "x"}], [{"name": "x", "margn": 1}],
                [{"name": "a b"}]):
        with pytest.raises(ValueError):
            rater_styles(bad)
