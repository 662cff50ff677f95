"""End to end through ``lightning-ada``: fit from YAML, one active round, predict to NIfTI."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import nibabel as nib
import numpy as np
import pytest

from lightning_ada.active.strategies import REGISTRY
from lightning_ada.errors import ConfigError
from lightning_ada.main import cli_main, main

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


@pytest.mark.slow
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
        (["--active.strategy", "nonsense"],
         "active.strategy: unknown strategy 'nonsense'; known: "
         + ", ".join(sorted(REGISTRY)) + " (or a class path)"),
        (["--active.stride", "0"], 'key "active.stride": Not of type PositiveInt: 0'),
        (["--active.budget", "-1"], 'key "active.budget": Not of type NonNegativeInt: -1'),
        (["--active.strategy", "mmacts", "--active.strategy.exponent", "[1,0,0]"],
         "active.strategy: MMActSStrategy has no option 'exponent'; accepted: exponents, schedule"),
        (["--active.oracle", "files", "--active.oracle.wiat", "false"],
         "active.oracle: FileOracle has no option 'wiat'; accepted: wait, timeout, poll, allow_empty"),
        (["--active.strategy", "cup", "--active.strategy.uncertainty_ratio", "2"],
         "cup uncertainty_ratio must be in (0, 1], got 2.0"),
    ],
)
def test_bad_active_option_is_one_line_error_and_exit_2(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    override: list[str], message: str,
) -> None:
    with pytest.raises(SystemExit) as err:
        main(
            [
                "fit", "-c", str(CONF / "random_tiny.yaml"),
                "--data.root", str(phantom_root),
                "--trainer.default_root_dir", str(tmp_path / "run"), *override,
            ]
        )
    assert err.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert errors[-1].startswith("error: ") and message in errors[-1]
    assert not any(line.startswith(("usage:", "tip:")) for line in errors)  # no usage dump
    assert not (tmp_path / "run").exists()


def test_budget_larger_than_the_pool_is_one_line_error_on_the_console(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The console entry point itself (``cli_main``: exit status and stderr), in-process."""
    monkeypatch.setattr(sys, "argv", [
        "lightning-ada", "fit", "-c", str(CONF / "random_tiny.yaml"),
        "--data.root", str(phantom_root),
        "--trainer.default_root_dir", str(tmp_path / "run"), "--active.budget", "99",
    ])
    with pytest.raises(SystemExit) as done:
        cli_main()
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "error: active.budget=99 exceeds the target pool (6 cases)"
    assert "Traceback" not in err
    assert not list((tmp_path / "run").rglob("*.ckpt"))


PLUGIN = '''
"""A strategy in one file, outside the package."""

from lightning_ada.active.strategies import QueryContext, Scored, Strategy


class SmallestIdFirst(Strategy):
    """Query the unlabeled case with the smallest id first.

    Args:
        reverse: the largest id first instead.
    """

    name = "smallest_id"
    display_name = "Smallest id (test)"
    table_order = 5
    per_case = False

    def __init__(self, reverse: bool = False) -> None:
        self.reverse = reverse

    def score(self, ctx: QueryContext) -> list[Scored]:
        ids = sorted(ctx.unlabeled, reverse=self.reverse)
        return [Scored(c, float(len(ids) - i), {"position": float(i)}) for i, c in enumerate(ids)]
'''


def test_a_strategy_in_one_file_is_registered_shown_and_runs(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "plugin_strategy.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("plugin_strategy")
    try:
        cls = REGISTRY["smallest_id"]
        assert cls is module.SmallestIdFirst
        assert (cls.display_name, cls.table_order) == ("Smallest id (test)", 5)

        with pytest.raises(SystemExit) as done:
            main(["fit", "--help"])
        assert done.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "plugin_strategy.SmallestIdFirst" in text
        short = text[text.index("Short names:"):].split(".")[0]
        assert "smallest_id" in short and all(name in short for name in REGISTRY)

        with pytest.raises(SystemExit):
            main(["fit", "--active.strategy.help", "smallest_id"])
        assert "the largest id first instead" in " ".join(capsys.readouterr().out.split())

        out = tmp_path / "run"
        main(
            [
                "fit", "-c", str(CONF / "random_tiny.yaml"),
                "--data.root", str(phantom_root),
                "--model.source_checkpoint", str(source_ckpt),
                "--trainer.default_root_dir", str(out),
                "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0",
                "--active.budget", "1",
                "--active.strategy", "smallest_id", "--active.strategy.reverse", "true",
            ]
        )
        [query] = json.loads((out / "query_log.json").read_text())
        assert query["strategy"] == "smallest_id"
        assert query["case_id"] == "glioma_pool_005"  # the largest of glioma_pool_000..005
        assert query["factors"] == {"position": 0.0}
    finally:  # the plug-in leaves no trace for the other tests
        sys.modules.pop("plugin_strategy", None)
        REGISTRY.pop("smallest_id", None)


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
            "--active.strategy", "mmacts",
            "--active.elect_modality", "true", "--active.oracle.use_modality_masks", "true",
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


#: strategies whose one round through fit stays in the default suite (a case rule, mmActS with
#: its election, a one-off rule, a region rule); the others run with the slow tests (time)
ROUND_IN_DEFAULT_SUITE = frozenset({"random", "mmacts", "ugtst", "clasp_pe"})


@pytest.mark.parametrize("strategy", [
    pytest.param(name, marks=() if name in ROUND_IN_DEFAULT_SUITE else pytest.mark.slow)
    for name in sorted(REGISTRY)
])
def test_every_strategy_runs_one_round_through_fit(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path, strategy: str
) -> None:
    # a rule that ranks no whole cases runs on 4-slice queries: one scan's worth of them
    sub_volume = "case" not in REGISTRY[strategy].units
    unit = ["--active.unit", "slices", "--active.unit.k", "4"] if sub_volume else []
    main(
        [
            "fit", "-c", str(CONF / "random_tiny.yaml"),
            "--data.root", str(phantom_root),
            "--model.source_checkpoint", str(source_ckpt),  # carries STDR's source anchors
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0",
            "--active.budget", "1", "--active.strategy", strategy, *unit,
        ]
    )
    log = json.loads((tmp_path / "query_log.json").read_text())
    assert log and all(q["strategy"] == strategy for q in log)
    assert all(q["case_id"].startswith("glioma_pool_") for q in log)
    if sub_volume:
        assert sum(q["cost"]["scans"] for q in log) == pytest.approx(1.0)
    else:
        assert len(log) == 1


@pytest.mark.slow
def test_default_root_dir_moves_everything_a_run_writes(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    common = ["--data.root", str(phantom_root), "--trainer.logger", "null",  # the default logger
              "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0",
              "--trainer.log_every_n_steps", "1"]
    source, target = tmp_path / "source", tmp_path / "target"
    main(["fit", "-c", str(CONF / "source_tiny.yaml"), *common,
          "--trainer.default_root_dir", str(source)])
    main(["fit", "-c", str(CONF / "random_tiny.yaml"), *common, "--active.budget", "1",
          "--model.source_checkpoint", str(source_ckpt), "--trainer.default_root_dir", str(target)])

    def written(run: Path) -> set[str]:
        return {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}

    everything = {"config.yaml", "hparams.yaml", "metrics.csv", "checkpoints/last.ckpt"}
    assert everything | {"anchors.npy"} <= written(source)
    assert everything | {"query_log.json"} <= written(target)
    assert not list(cwd.iterdir())  # nothing lands in the working directory


def test_a_source_run_gets_the_source_callback_of_every_strategy(
    phantom_root: Path, tmp_path: Path
) -> None:
    from lightning.pytorch.callbacks import Checkpoint

    from lightning_ada.active.strategies.stdr import SourceAnchors

    # a source config without STDR's callback: the run adds it, before the checkpoint callback
    args = ["-c", str(CONF / "source_tiny.yaml"), "--data.root", str(phantom_root),
            "--trainer.default_root_dir", str(tmp_path)]
    plain = main([*args, "--trainer.callbacks", "[]"], run=False).trainer.callbacks
    [added] = [c for c in plain if isinstance(c, SourceAnchors)]
    assert added.k == 8  # its defaults
    first_checkpoint = next(i for i, c in enumerate(plain) if isinstance(c, Checkpoint))
    assert plain.index(added) < first_checkpoint
    # the config's own one (k=4) is kept, not doubled; a target run gets none
    own = [c for c in main(args, run=False).trainer.callbacks if isinstance(c, SourceAnchors)]
    assert [c.k for c in own] == [4]
    target = main(["-c", str(CONF / "random_tiny.yaml"), "--data.root", str(phantom_root),
                   "--trainer.default_root_dir", str(tmp_path)], run=False).trainer.callbacks
    assert not any(isinstance(c, SourceAnchors) for c in target)


def test_a_strategy_needing_decoder_features_is_refused_for_a_net_without_them(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"strategy 'stdr' needs \['features'\].*net: dynunet"):
        main(
            [
                "fit", "-c", str(CONF / "random_tiny.yaml"),
                "--data.root", str(phantom_root),
                "--model.net", "unet",
                "--trainer.default_root_dir", str(tmp_path),
                "--active.budget", "1", "--active.strategy", "stdr",
            ]
        )
    assert not list(tmp_path.rglob("*.ckpt"))
