"""The file oracle: requests, a checkpoint-and-exit when no label exists, validation, resume."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lightning_ada.errors import AnnotationPending
from lightning_ada.main import main

CONF = Path(__file__).parent / "conf"


def fit_args(root: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [
        "fit", "-c", str(CONF / "random_tiny.yaml"),
        "--data.root", str(root),
        "--model.source_checkpoint", str(ckpt),
        "--trainer.default_root_dir", str(out),
        "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "0",
        "--active.budget", "1", "--active.oracle", "files",
        "--active.oracle.wait", "false",
        "--active.elect_modality", "true",
        *extra,
    ]


def test_file_oracle_round_trip(phantom_root: Path, source_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(AnnotationPending) as pending:
        main(fit_args(phantom_root, source_ckpt, out))
    ckpt = pending.value.checkpoint
    assert ckpt.is_file() and "--ckpt_path" in str(pending.value)
    [label] = [Path(p) for p in pending.value.awaiting]
    case_id = label.name.removesuffix(".nii.gz")

    # the request: JSON with the election, a prediction in the image geometry, a preview
    [req] = list((out / "requests").glob(f"round_0_{case_id}.json"))
    request = json.loads(req.read_text())
    assert request["annotate_on_modality"] in {"flair", "t1", "t1ce", "t2"}
    assert set(request["election_dice"]) == {"flair", "t1", "t1ce", "t2"}
    image = nib.load(request["images"]["flair"])
    pred = nib.load(request["prediction"])
    assert pred.shape == image.shape and np.allclose(pred.affine, image.affine)
    assert Path(request["preview"]).stat().st_size > 1000

    # a bad label (wrong shape) is rejected: the run stops again, nothing is applied
    label.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), image.affine), label)
    with pytest.raises(AnnotationPending):
        main(fit_args(phantom_root, source_ckpt, out, "--ckpt_path", str(ckpt)))
    assert not (out / "query_log.json").exists() or json.loads((out / "query_log.json").read_text()) == []

    # the right label: the run continues from the checkpoint and labels exactly that case
    shutil.copy(phantom_root / case_id / f"{case_id}_seg.nii.gz", label)
    cli = main(fit_args(phantom_root, source_ckpt, out, "--ckpt_path", str(ckpt)))
    log = json.loads((out / "query_log.json").read_text())
    assert [q["case_id"] for q in log] == [case_id]
    assert log[0]["label_path"] == str(label)
    assert cli.trainer.current_epoch == 2  # trained to the end after the label arrived


def test_query_subcommand_ranks_without_training(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    main(
        [
            "query", "-c", str(CONF / "random_tiny.yaml"),
            "--data.root", str(phantom_root),
            "--trainer.default_root_dir", str(run_dir),
            "--ckpt_path", str(source_ckpt),
            "--active.strategy", "mmacts",
            "--out", str(tmp_path / "ranking"),
        ]
    )
    rows = json.loads((tmp_path / "ranking.json").read_text())
    assert len(rows) == 6  # every pool case, none labeled in a source checkpoint
    assert [r["rank"] for r in rows] == list(range(1, 7))
    assert all(rows[i]["score"] >= rows[i + 1]["score"] for i in range(5))
    modalities = {"flair", "t1", "t1ce", "t2"}
    assert {"entropy", "volume", "density", "elected_modality"} <= set(rows[0])
    for r in rows:
        dice = {m: r[f"dice_{m}"] for m in modalities}
        assert r["elected_modality"] == max(dice, key=dice.get)
        assert r["score"] == pytest.approx(r["entropy"] * r["volume"] * r["density"])
    with open(tmp_path / "ranking.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [t["case_id"] for t in table] == [r["case_id"] for r in rows]
    assert float(table[0]["dice_t2"]) == pytest.approx(rows[0]["dice_t2"])
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.lstrip().startswith("rank"))
    assert all(k in header for k in ("entropy", "volume", "density", "elected", "dice_flair"))
    assert rows[0]["case_id"] in printed
    # no config.yaml, no logger or checkpoint files: the ranking, plus the strategy's caches
    assert {p.name for p in run_dir.iterdir()} == {"cache"}


def test_query_of_a_region_rule_ranks_regions_and_says_where_they_lie_in_the_files(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main([
        "query", "-c", str(CONF / "random_tiny.yaml"), "--data.root", str(phantom_root),
        "--trainer.default_root_dir", str(tmp_path / "run"), "--ckpt_path", str(source_ckpt),
        "--active.strategy", "entropy_region", "--active.unit", "slices", "--active.unit.k", "2",
        "--active.elect_modality", "true", "--out", str(tmp_path / "ranking"),
        "--image_grid_top", "3",
    ])
    rows = json.loads((tmp_path / "ranking.json").read_text())
    assert len(rows) > 6  # regions, several per case
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(rows[i]["score"] >= rows[i + 1]["score"] for i in range(len(rows) - 1))
    for r in rows[:3]:
        image = nib.load(phantom_root / r["case_id"] / f"{r['case_id']}_flair.nii.gz")
        asked = np.asarray(nib.load(r["asked_mask"]).dataobj) > 0
        assert asked.shape == image.shape
        # two whole slices of the image files along the stated axis, and nothing else
        axis = r["slice_axis"]
        other = tuple(a for a in range(3) if a != axis)
        assert np.flatnonzero(asked.any(axis=other)).tolist() == r["slices"] and len(r["slices"]) == 2
        assert bool(asked.take(r["slices"], axis=axis).all())
        assert r["region_network_grid"]["kind"] == "slices"
    assert all("asked_mask" not in r and "region" in r for r in rows[3:])
    # regions of one case never overlap
    seen: dict[tuple[str, int], set[int]] = {}
    for r in rows:
        g = r["region_network_grid"]
        taken = seen.setdefault((r["case_id"], g["axis"]), set())
        assert not taken & set(g["indices"])
        taken |= set(g["indices"])
    printed = capsys.readouterr().out
    assert rows[0]["region"] in printed


def test_top_level_help_lists_query_and_query_help_documents_its_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    assert "query" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["query", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--ckpt_path CKPT_PATH" in text and "checkpoint of a ``fit`` run" in text
    assert "--out OUT" in text and "query_ranking" in text
