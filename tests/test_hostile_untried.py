"""Hostile inputs, round three (issue 28): what nobody had tried, through ``lightning-ada`` with
the tiny configs.

- a source checkpoint that does not fit the target config (modalities in another order, other
  label classes, another patch size);
- a pool whose cases differ in voxel spacing and orientation from each other and the source;
- a run folder copied to another path (and its data to another root) and resumed there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

# cli_helpers imports the CLI before any test captures stderr (why: see there)
from cli_helpers import run_cli, one_error, snapshot

CONF = Path(__file__).parent / "conf"


def fit_args(root: Path, run: Path, *extra: str) -> list[str]:
    return [
        "fit", "-c", str(CONF / "random_tiny.yaml"), "--data.root", str(root),
        "--data.phantom", "null", "--trainer.default_root_dir", str(run),
        "--trainer.limit_val_batches", "0", *extra,
    ]


# ------------------------------------------------------------------ a source that does not fit
@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--data.modalities", "[t2, flair, t1, t1ce]"],
         ("the source model was trained on modalities ['flair', 't1', 't1ce', 't2'] in this channel "
         "order; data.modalities lists ['t2', 'flair', 't1', 't1ce']: list them in the source's order")),
        (["--data.labels", "{ED: 2, NCR: 1, ET: 4}"],
         ("the source model's classes are {NCR: 1, ED: 2, ET: 4} (class order), the config's "
         "data.labels {ED: 2, NCR: 1, ET: 4}")),
        (["--data.labels", "{NCR: 1, ED: 2}"],
         ("the source model's classes are {NCR: 1, ED: 2, ET: 4} (class order), the config's "
         "data.labels {NCR: 1, ED: 2}")),
    ],
    ids=["modality-order", "class-order", "class-count"],
)
def test_source_checkpoint_that_does_not_fit_the_target_is_refused_naming_it(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path, extra: list[str], words: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    args = fit_args(phantom_root, run, "--model.source_checkpoint", str(source_ckpt), *extra)
    code, err = run_cli(args, monkeypatch, capsys)
    line = one_error(err)
    assert code == 2
    assert line.startswith(f"error: {source_ckpt}: ") and words in line, line
    assert not run.exists()  # refused before the run folder is made


def test_source_trained_on_another_patch_size_is_warned_about(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    from lightning_ada.main import main

    with pytest.warns(UserWarning, match=r"trained with data\.patch_size \[16\.0, 16\.0, 16\.0\], "
                                         r"this run uses \[8\.0, 8\.0, 8\.0\]"):
        main(fit_args(phantom_root, tmp_path / "run", "--model.source_checkpoint", str(source_ckpt),
                      "--data.patch_size", "[8, 8, 8]", "--trainer.max_epochs", "1",
                      "--active.budget", "1"))


def test_what_a_source_checkpoint_records_is_compared_by_meaning() -> None:
    from lightning_ada.cases import classes_differ
    from lightning_ada.errors import CheckpointError
    from lightning_ada.models.module import source_fits

    brats21 = {"NCR": 1, "ED": 2, "ET": 4}
    assert not classes_differ(brats21, {"NCR": 1, "ED": 2, "ET": 3})  # BraTS 2023's values
    assert not classes_differ(brats21, {"necrosis": 1, "edema": 2, "enhancing": 4})  # renamed
    assert classes_differ(brats21, {"ED": 2, "NCR": 1, "ET": 4})
    data = {"modalities": ["flair", "t1", "t1ce", "t2"], "patch_size": [32, 32, 32], "pixdim": None}
    same = source_fits("s.ckpt", {}, data, {}, dict(data, modalities=["t2f", "t1n", "t1c", "t2w"]))
    assert same == []  # BraTS 2023's names of the same sequences, same order
    with pytest.raises(CheckpointError, match="in this channel order"):
        source_fits("s.ckpt", {}, data, {}, dict(data, modalities=["T1c", "T2F", "t1n", "T2w"]))
    [line] = source_fits("s.ckpt", {}, data, {}, dict(data, modalities=["a", "b", "c", "d"]))
    assert "check they are the same sequences in the same order" in line
    [line] = source_fits("s.ckpt", {}, data, {}, dict(data, pixdim=[3, 3, 3]))
    assert "data.pixdim (spacing, mm) None, this run uses [3.0, 3.0, 3.0]" in line
    [line] = source_fits("s.ckpt", {}, data, {}, dict(data, missing_modality="zero_fill"))
    assert "trained without modality dropout and this run adds none" in line
    assert source_fits("s.ckpt", {}, dict(data, modality_dropout=0.5), {},
                       dict(data, missing_modality="zero_fill")) == []


# ------------------------------------------------------------------ a pool of mixed grids
FLIP_XY = np.array([[0, -1], [1, -1], [2, 1]])  # LPS <-> RAS: the same voxels, stored otherwise


def _case_files(root: Path, case: str) -> list[Path]:
    return sorted((root / case).glob("*.nii.gz"))


def _rewrite(path: Path, change: Any) -> None:
    img = nib.load(path)
    out = change(img)
    nib.save(nib.Nifti1Image(np.asarray(out.dataobj), out.affine), path)


def _twice_finer(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """The same scan on a grid of half the spacing (each voxel split in 2 x 2 x 2)."""
    data = np.asarray(img.dataobj)
    finer = data.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    half = np.diag([0.5, 0.5, 0.5, 1.0])
    half[:3, 3] = -0.25
    return nib.Nifti1Image(finer, img.affine @ half)


@pytest.fixture(scope="module")
def mixed_pool(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """The tiny phantom with one pool case stored in another axis order (RAS, the others LPS)
    and one at half the spacing (6 mm, the others 12 mm)."""
    root = tmp_path_factory.mktemp("mixed") / "data"
    shutil.copytree(phantom_root, root)
    reoriented, finer = "glioma_pool_001", "glioma_pool_003"
    for f in _case_files(root, reoriented):
        _rewrite(f, lambda img: img.as_reoriented(FLIP_XY))
    for f in _case_files(root, finer):
        _rewrite(f, _twice_finer)
    return root, reoriented, finer


def test_pool_of_mixed_spacing_and_orientation_is_resampled_to_the_configured_grid(
    phantom_root: Path, mixed_pool: tuple[Path, str, str]
) -> None:
    from lightning_ada.data.datamodule import ActiveDataModule

    root, reoriented, finer = mixed_pool
    assert "".join(nib.aff2axcodes(nib.load(_case_files(root, reoriented)[0]).affine)) == "RAS"
    assert nib.load(_case_files(root, finer)[0]).shape == (32, 32, 32)
    grid = {"pixdim": [12.0, 12.0, 12.0], "divisible_by": 4}
    mixed = ActiveDataModule(root=str(root), **grid)
    mixed.setup("fit")
    original = ActiveDataModule(root=str(phantom_root), **grid)
    original.setup("fit")
    for case in (reoriented, finer):  # what the network sees is the case as the others are stored
        a, b = mixed.item(case), original.item(case)
        assert a["image"].shape == b["image"].shape == (4, 16, 16, 16)
        assert np.allclose(a["image"].numpy(), b["image"].numpy(), atol=1e-4)
        assert np.array_equal(a["label"].numpy(), b["label"].numpy())
    with pytest.warns(UserWarning, match=rf"voxel spacings differ \({finer}: 6, 6, 6 mm; .*: 12, 12, "
                                         r"12 mm\) and data\.pixdim is null"):
        ActiveDataModule(root=str(root), divisible_by=4).setup("fit")


@pytest.mark.slow
def test_mixed_pool_runs_and_predictions_keep_each_cases_own_grid(
    mixed_pool: tuple[Path, str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    root, reoriented, finer = mixed_pool
    run = tmp_path / "run"
    grid = ["--data.pixdim", "[12, 12, 12]"]
    code, err = run_cli(fit_args(root, run, *grid, "--trainer.max_epochs", "1", "--active.budget", "1"),
                        monkeypatch, capsys)
    assert code == 0, err[-3000:]
    out = tmp_path / "predictions"
    code, err = run_cli(["predict", "-c", str(CONF / "random_tiny.yaml"), "--data.root", str(root),
                         "--data.phantom", "null", *grid, "--data.predict_split", "pool",
                         "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
                         "--eval_dir", str(tmp_path / "eval"), "--writer.output_dir", str(out)],
                        monkeypatch, capsys)
    assert code == 0, err[-3000:]
    for case in (reoriented, finer):
        image = nib.load(_case_files(root, case)[0])
        pred = nib.load(out / f"{case}_pred.nii.gz")
        assert pred.shape == image.shape and np.allclose(pred.affine, image.affine)


# ------------------------------------------------------------------ a run folder moved elsewhere
def _last(run: Path) -> dict[str, Any]:
    import torch

    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_run_folder_and_dataset_moved_to_another_place_resume_there(
    phantom_root: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """As on another machine: the run folder and the dataset both at other paths, the old ones
    gone. The labels the simulated oracle took from the dataset are found where it is now."""
    data, run = tmp_path / "old" / "data", tmp_path / "old" / "run"
    shutil.copytree(phantom_root, data)
    code, err = run_cli(fit_args(data, run, "--trainer.max_epochs", "2"), monkeypatch, capsys)
    assert code == 0, err[-3000:]
    new = tmp_path / "elsewhere"
    shutil.move(tmp_path / "old", new)  # the old paths no longer exist
    resume = fit_args(new / "data", new / "run", "--trainer.max_epochs", "3", "--ckpt_path", "last")
    code, err = run_cli(resume, monkeypatch, capsys)
    assert code == 0, err[-3000:]
    state = _last(new / "run")
    assert state["epoch"] == 2  # one more epoch trained
    labeled = state["ActiveDataModule"]["pool"]["labeled"]
    assert len(labeled) == 2 and all(a["label_path"].startswith(str(new / "data")) for a in labeled.values())
    dirpath = next(v["dirpath"] for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert dirpath == str(new / "run" / "checkpoints")


@pytest.mark.slow
def test_run_folder_with_delivered_labels_copied_elsewhere_resumes_or_says_why(
    phantom_root: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """The file oracle's labels live in the run folder: a copy of the folder resumes on its own
    copies of them; a copy without one says which label is gone, and changes nothing."""
    run = tmp_path / "run"
    files = ["--active.oracle", "files", "--active.oracle.wait", "false", "--active.budget", "1",
             "--trainer.max_epochs", "1"]
    code, err = run_cli(fit_args(phantom_root, run, *files), monkeypatch, capsys)
    assert code == 3, err[-3000:]
    [request] = (run / "requests").glob("round_0_*.json")
    case = json.loads(request.read_text())["case_id"]
    (run / "labels").mkdir()
    reference = nib.load(phantom_root / case / f"{case}_seg.nii.gz")  # drawn again: other bytes
    nib.save(nib.Nifti1Image(np.asarray(reference.dataobj), reference.affine), run / "labels" / f"{case}.nii.gz")
    pending = ["--ckpt_path", str(run / "checkpoints" / "pending.ckpt")]
    code, err = run_cli(fit_args(phantom_root, run, *files, *pending), monkeypatch, capsys)
    assert code == 0, err[-3000:]
    copy = tmp_path / "copied" / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(run)  # the original is gone (another machine)
    more = fit_args(phantom_root, copy, *files[:-2], "--trainer.max_epochs", "2", "--ckpt_path", "last")
    broken = tmp_path / "broken" / "run"
    shutil.copytree(copy, broken)
    code, err = run_cli(more, monkeypatch, capsys)
    assert code == 0, err[-3000:]
    [annotation] = _last(copy)["ActiveDataModule"]["pool"]["labeled"].values()
    assert annotation["label_path"] == str(copy / "labels" / f"{case}.nii.gz")
    (broken / "labels" / f"{case}.nii.gz").unlink()
    before = snapshot(broken)
    code, err = run_cli([*fit_args(phantom_root, broken, *files[:-2], "--trainer.max_epochs", "2"),
                         "--ckpt_path", "last"], monkeypatch, capsys)
    line = one_error(err)
    assert code == 2
    assert line.startswith(f"error: {broken / 'labels' / case}.nii.gz: label of case {case} "
                           "accepted earlier is gone")
    assert snapshot(broken) == before
