"""The phantom's ``open_set`` option: each out-of-distribution kind generated as flagged."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lightning_ada.phantom.open_set import OOD_KINDS, field_of_view, no_tumour, purity
from lightning_ada.phantom.simulator import (
    folder_suffix,
    generate_phantom,
    load_phantom,
    open_set_options,
)

BASE = dict(task="glioma", size=16, n_source=1, n_source_test=0, n_pool=10, n_test=2, seed=4,
            regime="power", progress=False)
OPEN = {"fraction": 0.5, "kinds": list(OOD_KINDS)}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """The same draw without and with the option: case id -> Case."""
    plain = generate_phantom(tmp_path_factory.mktemp("plain"), **BASE)
    open_ = generate_phantom(tmp_path_factory.mktemp("open"), open_set=OPEN, **BASE)
    return ({c.case_id: c for c in load_phantom(plain)},
            {c.case_id: c for c in load_phantom(open_)})


def _arr(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def _images(case) -> np.ndarray:
    return np.stack([_arr(p) for p in case.images])


def test_every_kind_once_in_the_pool_only_and_flagged(pair: tuple[dict, dict]) -> None:
    plain, open_ = pair
    kinds = {cid: c.meta["ood"] for cid, c in open_.items()}
    ood = {cid: k for cid, k in kinds.items() if k is not None}
    assert sorted(ood.values()) == sorted(OOD_KINDS)  # 5 of 10 pool cases, one of each kind
    assert all(open_[cid].split == "pool" for cid in ood)
    assert all("ood" in c.meta for c in open_.values())  # every case of the phantom is flagged
    assert all("ood" not in c.meta for c in plain.values())  # the plain phantom is not
    pool = [c.meta for c in open_.values() if c.split == "pool"]
    assert purity(pool) == 0.5
    for cid, c in open_.items():  # in-distribution cases: the plain phantom's arrays
        if cid in ood:
            assert "ood_detail" in c.meta
            continue
        assert np.array_equal(_images(c), _images(plain[cid]))
        assert np.array_equal(_arr(c.label), _arr(plain[cid].label))
        assert {k: v for k, v in c.meta.items() if k != "ood"} == plain[cid].meta


def test_each_kind_does_what_its_flag_says(pair: tuple[dict, dict]) -> None:
    plain, open_ = pair
    by_kind = {c.meta["ood"]: c for c in open_.values() if c.meta.get("ood")}
    assert set(by_kind) == set(OOD_KINDS)
    for kind, case in by_kind.items():
        base = plain[case.case_id]
        img, lab = _images(case), _arr(case.label)
        img0, lab0 = _images(base), _arr(base.label)
        body, body0 = (img != 0).any(0), (img0 != 0).any(0)
        assert case.meta["tumour_voxels"]["total"] == int((lab > 0).sum())
        masks = {m: _arr(p) for m, p in case.modality_labels.items()}
        if kind == "other_anatomy":
            assert not lab.any() and not any(m.any() for m in masks.values())
            # a body through both end faces of the last axis: no head does that
            assert body[..., 0].any() and body[..., -1].any()
            assert not (body0[..., 0].any() and body0[..., -1].any())
        elif kind == "no_tumour":
            assert lab0.any() and not lab.any() and not any(m.any() for m in masks.values())
            outside = lab0 == 0
            assert np.array_equal(img[:, outside], img0[:, outside])
            assert not np.array_equal(img[:, ~outside], img0[:, ~outside])
            assert np.array_equal(img, no_tumour(img0, lab0).image)
        elif kind == "field_of_view":
            detail = case.meta["ood_detail"]
            ratio = body.sum() / body0.sum()
            assert (ratio < 0.5) if detail["scale"] < 1 else (ratio > 1.2), (detail, ratio)
            # the flag describes the case exactly: image, label and every per-modality mask
            rng = np.random.default_rng(0)  # unused: scale and shift given
            redo = field_of_view(img0, lab0, rng, detail["scale"], detail["shift"])
            assert np.allclose(img, redo.image) and np.array_equal(lab, redo.label)
            empty = np.zeros((1, *lab.shape), np.float32)
            for m, mask in masks.items():
                moved = field_of_view(empty, _arr(base.modality_labels[m]), rng, detail["scale"],
                                      detail["shift"]).label
                assert np.array_equal(mask, moved), m
        elif kind == "corrupted":
            assert np.array_equal(lab, lab0)
            assert case.meta["ood_detail"]["corruption"] in ("spike", "dropout", "noise")
            assert np.abs(img - img0).max() > 0.1 * np.abs(img0).max()
        else:
            order = case.meta["ood_detail"]["order"]
            assert sorted(order) == list(range(4)) and all(o != k for k, o in enumerate(order))
            assert np.array_equal(img, img0[order]) and np.array_equal(lab, lab0)


def test_record_cache_key_and_folder(tmp_path: Path, pair: tuple[dict, dict]) -> None:
    root = tmp_path / "p"
    out = generate_phantom(root, open_set=0.2, **BASE)
    gen = json.loads(out.read_text())["generator"]
    assert gen["open_set"] == {"fraction": 0.2, "kinds": list(OOD_KINDS)}
    with pytest.raises(FileExistsError):  # another option set never reuses the folder
        generate_phantom(root, open_set=0.4, **BASE)
    with pytest.raises(FileExistsError):
        generate_phantom(root, **BASE)
    assert generate_phantom(root, open_set={"fraction": 0.2}, **BASE) == out  # same options
    assert folder_suffix() == "" and folder_suffix(open_set=0) == ""
    options = (0.2, 0.4, {"fraction": 0.2, "kinds": ["corrupted"]})
    names = {folder_suffix(open_set=f) for f in options}
    assert len(names) == 3 and all(n.startswith("_ood") for n in names)


def test_bad_options() -> None:
    assert open_set_options(None) is None and open_set_options(0.0) is None
    for bad in ({"fraction": 1.0}, {"fraction": -0.1}, {"fraction": 0.2, "kinds": ["liver"]},
                {"fraction": 0.2, "kind": ["no_tumour"]}, {"kinds": ["no_tumour"]},
                {"fraction": 0.2, "kinds": ["no_tumour", "no_tumour"]}, "lots"):
        with pytest.raises(ValueError):
            open_set_options(bad)


def test_an_open_set_phantom_loads_in_the_datamodule(tmp_path: Path) -> None:
    """Every OOD file passes the input checks and preprocessing (spikes, empty labels...)."""
    from lightning_ada.data.datamodule import ActiveDataModule

    phantom = {**BASE, "open_set": OPEN}
    dm = ActiveDataModule(root=str(tmp_path / "dm"), phantom=phantom, patch_size=[16, 16, 16])
    dm.setup()
    assert len(dm.split_ids["pool"]) == 10
    flags = [dm.case(cid).meta["ood"] for cid in dm.split_ids["pool"]]
    assert sum(f is not None for f in flags) == 5


def test_the_example_overlays_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/openset/*.yaml on the power recipe: the phantom options, the rater and the filter
    reach the datamodule and the callback as the generator and the filter take them."""
    from lightning_ada import main as cli
    from lightning_ada.phantom.raters import DEFAULT_RATERS
    from lightning_ada.phantom.simulator import rater_styles

    monkeypatch.setattr(cli.ADACLI, "instantiate_classes", lambda self: None)
    repo = Path(__file__).resolve().parents[1]
    recipe = repo / "configs/power/glioma/target.yaml"
    overlay = repo / "configs/openset/glioma_open_set.yaml"
    open_cfg = cli.main(["-c", str(recipe), "-c", str(overlay)], run=False).config
    assert open_set_options(open_cfg.data.phantom["open_set"]) == OPEN | {"fraction": 0.2}
    assert open_cfg.active.open_set_filter.class_path.endswith("open_set_filter.PrototypeFilter")
    overlay = repo / "configs/openset/glioma_raters.yaml"
    rater_cfg = cli.main(["-c", str(recipe), "-c", str(overlay)], run=False).config
    assert rater_cfg.data.rater == "generous"
    assert rater_styles(rater_cfg.data.phantom["raters"]) == DEFAULT_RATERS
