"""End to end through ``lightning-ada``: fit from YAML, one active round, predict to NIfTI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import nibabel as nib
import numpy as np
import pytest

from lightning_ada.active.strategies import REGISTRY
from lightning_ada.main import main

CONF = Path(__file__).parent / "conf"


class SeenCases(L.Callback):
    """Record which case ids each training epoch drew."""

    def __init__(self) -> None:
        self.per_epoch: dict[int, set[str]] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, idx: int) -> None:
        self.per_epoch.setdefault(trainer.current_epoch, set()).update(batch["case_id"])


def test_fit_source_from_yaml_writes_checkpoint(source_ckpt: Path) -> None:
    import torch

    ckpt = torch.load(source_ckpt, map_location="cpu", weights_only=True)
    assert any(k.startswith("net.") for k in ckpt["state_dict"])
    assert ckpt["epoch"] == 1  # saved at the end of the last epoch (max_epochs 2, 0-based)


def test_active_round_grows_labeled_set_by_one_and_next_epoch_uses_it(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    cli = main(
        [
            "-c", str(CONF / "random_tiny.yaml"),
            "--data.root", str(phantom_root),
            "--model.source_checkpoint", str(source_ckpt),
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.max_epochs", "3",
            "--active.budget", "2",
            "--active.stride", "1",
        ],
        run=False,
    )
    seen = SeenCases()
    cli.trainer.callbacks.append(seen)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)

    log = json.loads((tmp_path / "query_log.json").read_text())
    assert [q["n_labeled"] for q in log] == [1, 2]
    first, second = log[0]["case_id"], log[1]["case_id"]
    assert first != second
    assert (log[0]["epoch"], log[1]["epoch"]) == (-1, 0)
    # epoch 0 trains on the first query only; epoch 1 on both (the labeled set grew by one)
    assert seen.per_epoch[0] == {first}
    assert seen.per_epoch[1] == {first, second}
    assert cli.datamodule.pool.labeled == [first, second]
    assert cli.datamodule.pool.n_unlabeled == 6 - 2


def test_random_strategy_is_reproducible_and_seed_dependent(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    def picks(seed: int, out: Path) -> list[str]:
        main(
            [
                "fit", "-c", str(CONF / "random_tiny.yaml"),
                "--data.root", str(phantom_root),
                "--model.source_checkpoint", str(source_ckpt),
                "--trainer.default_root_dir", str(out),
                "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0",
                "--active.budget", "1", "--active.seed", str(seed),
            ]
        )
        return [q["case_id"] for q in json.loads((out / "query_log.json").read_text())]

    a, b = picks(0, tmp_path / "a"), picks(0, tmp_path / "b")
    assert a == b
    others = {tuple(picks(s, tmp_path / f"s{s}")) for s in (1, 2, 3)}
    assert len(others | {tuple(a)}) > 1


def test_predict_writes_nifti_with_input_affine(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pred"
    main(
        [
            "predict", "-c", str(CONF / "random_tiny.yaml"),
            "--data.root", str(phantom_root),
            "--model.source_checkpoint", str(source_ckpt),
            "--trainer.default_root_dir", str(tmp_path),
            "--writer.output_dir", str(out),
        ]
    )
    dataset = json.loads((phantom_root / "dataset.json").read_text())
    test_cases = [c for c in dataset["cases"] if c["split"] == "test"]
    assert len(list(out.glob("*_pred.nii.gz"))) == len(test_cases)
    for c in test_cases:
        ref = nib.load(phantom_root / c["images"][0])
        pred = nib.load(out / f"{c['case_id']}_pred.nii.gz")
        assert pred.shape == ref.shape
        np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-5)
        values = set(np.unique(np.asarray(pred.dataobj)).tolist())
        assert values <= {0, 1, 2, 4}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--active.strategy", "nonsense"], "unknown strategy 'nonsense'"),
        (["--active.budget", "99"], "exceeds the target pool"),
        (["--active.stride", "0"], "stride must be >= 1"),
    ],
)
def test_bad_active_config_is_refused(
    phantom_root: Path, tmp_path: Path, override: list[str], message: str
) -> None:
    with pytest.raises((ValueError, SystemExit)) as err:
        main(
            [
                "fit", "-c", str(CONF / "random_tiny.yaml"),
                "--data.root", str(phantom_root),
                "--trainer.default_root_dir", str(tmp_path), *override,
            ]
        )
    if err.type is ValueError:
        assert message in str(err.value)


def test_mmacts_round_elects_a_modality_and_logs_every_factor(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    main(
        [
            "fit", "-c", str(CONF / "random_tiny.yaml"),
            "--data.root", str(phantom_root),
            "--model.source_checkpoint", str(source_ckpt),
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "0",
            "--active.budget", "2", "--active.stride", "1",
            "--active.strategy", "mmacts", "--active.strategy_args", '{"progress": false}',
            "--active.elect_modality", "true", "--active.use_modality_masks", "true",
        ]
    )
    log = json.loads((tmp_path / "query_log.json").read_text())
    assert len(log) == 2 and log[0]["case_id"] != log[1]["case_id"]
    for q in log:
        assert set(q["factors"]) >= {"entropy", "volume", "density", "product"}
        f = q["factors"]
        assert q["score"] == pytest.approx(f["entropy"] * f["volume"] * f["density"])
        assert set(q["election_dice"]) == {"flair", "t1", "t1ce", "t2"}
        assert q["modality"] == max(q["election_dice"], key=q["election_dice"].get)
        assert q["label_path"].endswith(f"_seg_{q['modality']}.nii.gz")  # mask drawn on it
        assert set(q["timings"]) == {"inference", "statistics", "density"}
        assert "centre" in q["case_meta"]
    # the density descriptors are cached in the run folder, one per pool case
    assert len(list((tmp_path / "cache").glob("desc_*.npy"))) == 6


@pytest.mark.parametrize("strategy", sorted(REGISTRY))
def test_every_strategy_runs_one_round_through_fit(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path, strategy: str
) -> None:
    main(
        [
            "fit", "-c", str(CONF / "random_tiny.yaml"),
            "--data.root", str(phantom_root),
            "--model.source_checkpoint", str(source_ckpt),  # carries STDR's source anchors
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0",
            "--active.budget", "1", "--active.strategy", strategy,
        ]
    )
    log = json.loads((tmp_path / "query_log.json").read_text())
    assert len(log) == 1 and log[0]["strategy"] == strategy
    assert log[0]["case_id"].startswith("glioma_pool_")
