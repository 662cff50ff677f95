"""Splits from several roots, the validation split, extra test splits, pre-normalised scans.

Tiny generated BraTS-layout folders (``make_case`` of ``test_data_cache``) and the tiny phantom.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from test_data_cache import IDS, MODS, make_case

from lightning_ada.data.datamodule import ActiveDataModule
from lightning_ada.data.roots import CaseRoot
from lightning_ada.data.transforms import constant_background
from lightning_ada.errors import DataError

CONF = Path(__file__).parent / "conf"
MINE = ["Brats18_CBICA_MY1_1", "Brats18_CBICA_MY2_1"]


def dm_of(root: Path, **kw: object) -> ActiveDataModule:
    args: dict[str, object] = dict(
        root=str(root), layout="brats", stage="target", crop_foreground=True, divisible_by=4,
    )
    dm = ActiveDataModule(**(args | kw))  # type: ignore[arg-type]
    dm.setup("fit")
    return dm


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    """A pool folder (BraTS layout), a user's test folder elsewhere, and a datalist folder."""
    pool, mine = tmp_path / "shared" / "pool", tmp_path / "hospital" / "test"
    for i, cid in enumerate(IDS):
        make_case(pool, cid, seed=i)
    for i, cid in enumerate(MINE):
        make_case(mine, cid, seed=10 + i)
    # a datalist in its own folder whose relative paths point into the user's test folder
    listing = tmp_path / "lists"
    listing.mkdir()
    entry = {
        "case_id": "other_1",
        "images": [f"../hospital/test/{MINE[0]}/{MINE[0]}_{m}.nii.gz" for m in MODS],
        "modalities": list(MODS), "label": f"../hospital/test/{MINE[0]}/{MINE[0]}_seg.nii.gz",
    }
    (listing / "datalist.json").write_text(json.dumps({"modalities": list(MODS), "cases": [entry]}))
    return {"pool": pool, "mine": mine, "list": listing}


def test_test_cases_from_another_folder_and_a_datalist(folders: dict[str, Path]) -> None:
    dm = dm_of(
        folders["pool"], splits={"pool": IDS},
        extra_roots=[CaseRoot(str(folders["mine"]), split="test"),
                     CaseRoot(str(folders["list"]), layout="datalist", split="other")],
        extra_test_splits=["other"],
    )
    assert dm.split_ids == {"pool": IDS, "test": MINE, "other": ["other_1"]}
    assert dm.case(MINE[1]).images[0].startswith(str(folders["mine"]))
    assert Path(dm.case("other_1").label).resolve().parent == (folders["mine"] / MINE[0]).resolve()
    # the same file read under two ids gives the same network input
    assert torch.equal(dm.image("other_1"), dm.image(MINE[0]))
    assert dm.test_split_names() == ["test", "other"]
    loaders = dm.test_dataloader()
    assert [[b["case_id"][0] for b in loader] for loader in loaders] == [MINE, ["other_1"]]


def test_same_case_id_under_two_roots_names_both(folders: dict[str, Path], tmp_path: Path) -> None:
    again = tmp_path / "again"
    make_case(again, IDS[0], seed=5)
    with pytest.raises(DataError, match=rf"{IDS[0]}.*both in .*pool and in .*again"):
        dm_of(folders["pool"], splits={"pool": IDS[1:], "test": IDS[:1]},
              extra_roots=[CaseRoot(str(again))])


def test_explicit_splits_win_over_a_root_split(folders: dict[str, Path]) -> None:
    dm = dm_of(
        folders["pool"], splits={"pool": IDS[:2], "test": [IDS[2], MINE[0]]},
        extra_roots=[{"root": str(folders["mine"]), "split": "test"}],  # a plain dict works too
    )
    assert dm.split_ids["test"] == [IDS[2], MINE[0]]


def test_a_case_in_two_of_pool_val_test_is_refused(folders: dict[str, Path]) -> None:
    with pytest.raises(DataError, match=rf"both split 'pool' and split 'test': \['{MINE[0]}'\]"):
        dm_of(folders["pool"], splits={"pool": [*IDS, MINE[0]]},
              extra_roots=[CaseRoot(str(folders["mine"]), split="test")])
    with pytest.raises(DataError, match="both split 'val' and split 'test'"):
        dm_of(folders["pool"], splits={"pool": IDS[:2], "test": IDS[2:], "val": IDS[2:]},
              val_split="val")


def test_validation_none_by_default_and_never_the_test_split(folders: dict[str, Path]) -> None:
    splits = {"pool": IDS[:2], "test": IDS[2:]}
    dm = dm_of(folders["pool"], splits=splits)
    assert dm.validation_split() is None and dm.val_dataloader() == []
    assert "val" not in dm.split_ids
    for bad in ("test", "nope"):
        with pytest.raises(DataError, match="data.val_split"):
            dm_of(folders["pool"], splits=splits, val_split=bad)
    with pytest.raises(DataError, match="source_test stage|test split of the source"):
        dm_of(folders["pool"], stage="source", val_split="source_test",
              splits={"source": IDS[:2], "source_test": IDS[2:]})
    named = dm_of(folders["pool"], splits=splits | {"val": MINE[:1]}, val_split="val",
                  extra_roots=[CaseRoot(str(folders["mine"]))])
    assert [b["case_id"][0] for b in named.val_dataloader()] == MINE[:1]
    assert dm_of(folders["pool"], splits=splits, val_split="none").validation_split() is None


def test_validation_fraction_holds_out_pool_cases_deterministically(phantom_root: Path) -> None:
    def make(**kw: object) -> ActiveDataModule:
        dm = ActiveDataModule(root=str(phantom_root), divisible_by=4, **kw)  # type: ignore[arg-type]
        dm.setup("fit")
        return dm

    base, held = make(), make(val_split=0.34)
    pool = base.split_ids["pool"]
    assert len(held.split_ids["val"]) == 2 and len(held.split_ids["pool"]) == 4
    assert sorted(held.split_ids["val"] + held.split_ids["pool"]) == sorted(pool)
    assert held.split_ids["test"] == base.split_ids["test"]
    assert held.pool.case_ids == held.split_ids["pool"]
    assert make(val_split="0.34").split_ids["val"] == held.split_ids["val"]  # CLI string form
    source = make(stage="source", val_split=0.25)
    assert len(source.split_ids["val"]) == 1 and len(source.train_pool.labeled) == 3
    for bad in (1.0, 0.99):
        with pytest.raises(DataError, match="held-out fraction"):
            make(val_split=bad)


def test_extra_test_split_names_are_checked(phantom_root: Path) -> None:
    for name, what in (("test", "not allowed"), ("val", "not allowed"), ("nope", "empty or missing")):
        dm = ActiveDataModule(root=str(phantom_root), divisible_by=4, extra_test_splits=[name])
        with pytest.raises(DataError, match=what):
            dm.setup("fit")


@pytest.mark.slow
def test_cli_fit_without_validation_then_test_with_an_extra_split(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    """``lightning-ada`` parses the new keys; ``test`` scores the extra split under its prefix."""
    from lightning_ada.main import main

    common = [
        "-c", str(CONF / "random_tiny.yaml"), "--data.root", str(phantom_root),
        "--model.source_checkpoint", str(source_ckpt), "--trainer.max_epochs", "1",
        "--active.budget", "1",
    ]
    cli = main(["fit", *common, "--trainer.default_root_dir", str(tmp_path / "a")])
    assert not any(k.startswith("val/") for k in cli.trainer.callback_metrics)  # no validation
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    alone = main(["test", *common, "--ckpt_path", str(ckpt),
                  "--trainer.default_root_dir", str(tmp_path / "b")]).trainer.callback_metrics
    both = main(["test", *common, "--ckpt_path", str(ckpt), "--data.extra_test_splits",
                 "[source_test]", "--trainer.default_root_dir", str(tmp_path / "c")])
    metrics = both.trainer.callback_metrics
    assert {k for k in metrics if k.startswith("test/")} == {k for k in alone if k.startswith("test/")}
    for k, v in alone.items():
        if k.startswith("test/"):
            assert float(metrics[k]) == pytest.approx(float(v), nan_ok=True)
    assert "source_test/dice_mean" in metrics and not any("dataloader_idx" in k for k in metrics)
    rows = both.model.last_extra_per_case["source_test"]
    assert sorted(r["case_id"] for r in rows) == sorted(both.datamodule.split_ids["source_test"])
    assert np.mean([r["dice_ET"] for r in rows]) == pytest.approx(
        float(metrics["source_test/dice_ET"]), abs=1e-6
    )


# ------------------------------------------------------------------ pre-normalised scans
def _prenormalise(src: Path, dst: Path, cid: str, new_id: str) -> None:
    """Copy a zero-background case as a public release would: z-scored, background -mean/std."""
    out = dst / new_id
    out.mkdir(parents=True)
    for m in [*MODS, "seg"]:
        img = nib.load(src / cid / f"{cid}_{m}.nii.gz")
        data = np.asarray(img.dataobj)
        if m != "seg":
            brain = data[data != 0]
            data = ((data - brain.mean()) / brain.std()).astype(np.float32)
            assert len(np.unique(data[img.get_fdata() == 0])) == 1 and data.min() < 0
        nib.save(nib.Nifti1Image(data, img.affine), out / f"{new_id}_{m}.nii.gz")


def test_prenormalised_case_with_negative_background_is_handled_and_warned(tmp_path: Path) -> None:
    """Handled (background set to 0 before crop and z-score) and warned once for that case.

    The network input of the pre-normalised copy equals that of the zero-background original.
    """
    root = tmp_path / "brats"
    make_case(root, IDS[0], seed=0)
    _prenormalise(root, root, IDS[0], IDS[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = dm_of(root, splits={"pool": [IDS[0]], "test": [IDS[1]]})
    told = [str(w.message) for w in caught if "constant non-zero background" in str(w.message)]
    assert len(told) == 1 and IDS[1] in told[0] and IDS[0] not in told[0]
    raw, pre = dm.item(IDS[0]), dm.item(IDS[1])
    assert pre["image"].shape == raw["image"].shape  # the same crop box
    brain = raw["image"][0] != 0
    assert brain.float().mean() > 0.3
    np.testing.assert_allclose(pre["image"][:, brain], raw["image"][:, brain], atol=1e-4)
    assert torch.equal(pre["image"][:, ~brain], torch.zeros_like(pre["image"][:, ~brain]))
    assert torch.equal(pre["label"], raw["label"])
    for c in range(len(MODS)):  # z-scored over the brain, not over brain + background
        assert abs(float(pre["image"][c][brain].mean())) < 1e-3


def test_constant_background_detection() -> None:
    rng = np.random.default_rng(0)
    vol = torch.full((12, 12, 12), -0.7)
    vol[3:9, 3:9, 3:9] = torch.as_tensor(rng.normal(size=(6, 6, 6)), dtype=torch.float32)
    assert constant_background(vol) == pytest.approx(-0.7)
    assert constant_background(torch.where(vol == -0.7, 0.0, vol)) == 0.0
    noisy = torch.as_tensor(rng.normal(size=(12, 12, 12)), dtype=torch.float32)
    assert constant_background(noisy) is None  # raw scan with a noisy background
    tight = vol[2:10, 2:10, 2:10]  # tightly cropped: the constant holds few voxels
    assert constant_background(tight, min_fraction=0.9) is None


def test_cli_types_the_new_keys(phantom_root: Path, source_ckpt: Path, tmp_path: Path) -> None:
    from lightning_ada.main import main

    args = ["-c", str(CONF / "random_tiny.yaml"), "--data.root", str(phantom_root),
            "--model.source_checkpoint", str(source_ckpt), "--trainer.default_root_dir",
            str(tmp_path)]
    cli = main([*args, "--data.val_split", "0.5",
                "--data.extra_roots", f"[{{root: {tmp_path}, layout: brats, split: test}}]"],
               run=False)
    assert cli.datamodule.hparams.val_split == 0.5
    root = cli.datamodule.hparams.extra_roots[0]
    root = root if isinstance(root, dict) else dataclasses.asdict(root)
    assert root == {"root": str(tmp_path), "layout": "brats", "split": "test"}
    for bad in ("[{folder: x}]", "[{root: x, layout: png}]"):  # unknown key, unknown layout
        with pytest.raises(SystemExit):
            main([*args, "--data.extra_roots", bad], run=False)
