"""The file oracle: requests, a checkpoint-and-exit when no label exists, validation, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lightning_ada.active.callback import AnnotationPending
from lightning_ada.main import main, query

CONF = Path(__file__).parent / "conf"


def fit_args(root: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [
        "fit", "-c", str(CONF / "random_tiny.yaml"),
        "--data.root", str(root),
        "--model.source_checkpoint", str(ckpt),
        "--trainer.default_root_dir", str(out),
        "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "0",
        "--active.budget", "1", "--active.oracle", "files",
        "--active.oracle_args", '{"wait": false}',
        "--active.elect_modality", "true",
        *extra,
    ]


def test_file_oracle_round_trip(phantom_root: Path, source_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(AnnotationPending) as pending:
        main(fit_args(phantom_root, source_ckpt, out))
    ckpt = pending.value.checkpoint
    assert ckpt.is_file() and "--ckpt_path" in str(pending.value)
    [label] = pending.value.labels
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
    rows = query(
        [
            "-c", str(CONF / "random_tiny.yaml"),
            "--data.root", str(phantom_root),
            "--ckpt_path", str(source_ckpt),
            "--active.strategy", "mmacts", "--active.strategy_args", '{"progress": false}',
            "--out", str(tmp_path / "ranking"),
        ]
    )
    assert len(rows) == 6  # every pool case, none labeled in a source checkpoint
    assert [r["rank"] for r in rows] == list(range(1, 7))
    assert all(rows[i]["score"] >= rows[i + 1]["score"] for i in range(5))
    assert {"entropy", "volume", "density", "elected_modality"} <= set(rows[0])
    assert json.loads((tmp_path / "ranking.json").read_text()) == rows
    assert (tmp_path / "ranking.csv").read_text().startswith("rank,case_id,score")
    assert rows[0]["case_id"] in capsys.readouterr().out
