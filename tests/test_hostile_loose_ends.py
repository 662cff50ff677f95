"""Hostile inputs, round three (issue 28): the loose ends left by round two, each through the
real command line with the tiny configs.

- ``--ckpt_path <file>`` with another network on the command line: refused in one line, for
  fit and for validate/test/predict (LightningCLI silently used the checkpoint's), and the
  config's evaluation options are no longer replaced by the checkpoint's;
- ``configs/logger/wandb.yaml`` follows ``--trainer.default_root_dir``;
- ``lightning-ada query`` applies the open-set pre-filter ``fit`` applies;
- a query due at the end of the epoch where EarlyStopping stops the run is not made.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# cli_helpers imports the CLI before any test captures stderr (why: see there)
from cli_helpers import run_cli, one_error, snapshot

ROOT = Path(__file__).resolve().parents[1]
CONF = Path(__file__).parent / "conf"


def tiny(sub: str, root: Path, *extra: str) -> list[str]:
    return [sub, "-c", str(CONF / "random_tiny.yaml"), "--data.root", str(root),
            "--data.phantom", "null", *extra]


# ------------------------------------------------------------------ --ckpt_path and the network
@pytest.mark.parametrize(
    ("sub", "extra", "words"),
    [
        ("test", ["--model.filters", "[4, 8, 32]"],
         "model.filters=[4, 8, 32] (the checkpoint's network: [4, 8, 16])"),
        ("predict", ["--model.net", "segresnet"], "model.net=segresnet (the checkpoint's network: dynunet)"),
        ("validate", ["--data.labels", "{ED: 2, NCR: 1, ET: 4}"],
         "data.labels {ED=2, NCR=1, ET=4} (the checkpoint's classes, in order: {NCR=1, ED=2, ET=4})"),
        ("test", ["--data.modalities", "[t2, flair, t1, t1ce]"],
         ("data.modalities ['t2', 'flair', 't1', 't1ce'] (the checkpoint's, in channel order: "
         "['flair', 't1', 't1ce', 't2'])")),
        ("fit", ["--model.filters", "[4, 8, 32]"], "model.filters=[4, 8, 32]"),
    ],
    ids=["test-filters", "predict-net", "validate-labels", "test-modality-order", "fit-filters"],
)
@pytest.mark.slow
def test_checkpoint_file_with_another_network_on_the_command_line_is_refused(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path, sub: str, extra: list[str], words: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    run = source_ckpt.parent.parent
    before = snapshot(run, skip=())
    out = tmp_path / "run"
    args = tiny(sub, phantom_root, "--trainer.default_root_dir", str(out),
                "--ckpt_path", str(source_ckpt), *extra)
    code, err = run_cli(args, monkeypatch, capsys)
    line = one_error(err)
    assert code == 2
    assert line.startswith(f"error: {source_ckpt}: the config does not fit this checkpoint: ")
    assert words in line, line
    assert snapshot(run, skip=()) == before  # no test/, predict/ or validate/ folder, nothing rewritten
    assert not out.exists()


def test_evaluation_options_of_the_config_win_over_the_checkpoints(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    from lightning_ada.main import main

    cli = main(tiny("test", phantom_root, "--ckpt_path", str(source_ckpt),
                    "--model.mirror_tta", "true", "--eval_dir", str(tmp_path / "eval")))
    assert cli.model.hparams.mirror_tta is True  # LightningCLI replaced it by the checkpoint's False
    assert list(cli.model.hparams.filters) == [4, 8, 16]


# ------------------------------------------------------------------ W&B follows the run folder
def test_wandb_logger_writes_into_the_run_folder(phantom_root: Path, tmp_path: Path) -> None:
    from lightning_ada.main import main

    out = tmp_path / "run"
    wandb = str(ROOT / "configs" / "logger" / "wandb.yaml")
    # parsed and instantiated as `fit` does (run=False: no subcommand, nothing trained)
    cli = main(["-c", str(CONF / "random_tiny.yaml"), "-c", wandb, "--data.root", str(phantom_root),
                "--trainer.default_root_dir", str(out)], run=False)
    assert Path(cli.trainer.logger.save_dir) == out
    assert Path(cli.trainer.log_dir) == out
    explicit = tmp_path / "elsewhere"
    cli = main(["-c", str(CONF / "random_tiny.yaml"), "-c", wandb, "--data.root", str(phantom_root),
                "--trainer.default_root_dir", str(out),
                "--trainer.logger.init_args.save_dir", str(explicit)], run=False)
    assert Path(cli.trainer.logger.save_dir) == explicit  # an explicit save_dir is kept


# ------------------------------------------------------------------ query and the open-set filter
@pytest.mark.slow
def test_query_applies_the_open_set_prefilter_fit_applies(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    from lightning_ada.main import main

    prefilter = ["--active.open_set_filter", "PrototypeFilter",
                 "--active.open_set_filter.id_ratio", "0.5", "--active.budget", "1"]
    main(tiny("query", phantom_root, "--trainer.default_root_dir", str(tmp_path / "q"),
              "--ckpt_path", str(source_ckpt), "--out", str(tmp_path / "ranking"), *prefilter))
    rows = json.loads((tmp_path / "ranking.json").read_text())
    ranked = [r for r in rows if r["rank"] is not None]
    left_out = [r for r in rows if r["rank"] is None]
    assert len(rows) == 6 and len(ranked) == 3  # id_ratio 0.5 of 6 pool cases
    assert all(r["open_set_candidate"] for r in ranked) and not any(r["open_set_candidate"] for r in left_out)
    assert max(r["prototype_distance"] for r in ranked) <= min(r["prototype_distance"] for r in left_out)
    # fit's first round, from the same model, picks the first of that ranking among the same 3
    out = tmp_path / "fit"
    main(tiny("fit", phantom_root, "--model.source_checkpoint", str(source_ckpt),
              "--trainer.default_root_dir", str(out), "--trainer.max_epochs", "1",
              "--trainer.limit_val_batches", "0", *prefilter))
    [first] = [q for q in json.loads((out / "query_log.json").read_text()) if "case_id" in q]
    assert (first["case_id"], first["candidates"]) == (ranked[0]["case_id"], 3)


# ------------------------------------------------------------------ EarlyStopping and the last query
def test_no_query_in_the_epoch_early_stopping_ends_and_its_patience_is_untouched(
    phantom_root: Path, tmp_path: Path
) -> None:
    """Stop at epoch 1's end (patience 1; after epoch 0 nothing improves by min_delta): the query
    due there is not made; the one due at epoch 0's end, where EarlyStopping went on, is."""
    from lightning.pytorch.callbacks import EarlyStopping

    from lightning_ada.main import main

    out = tmp_path / "run"
    cli = main(tiny("fit", phantom_root, "--trainer.default_root_dir", str(out),
                    "--trainer.limit_val_batches", "0", "--active.budget", "3",
                    "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=train/loss",
                    "--trainer.callbacks.patience=1", "--trainer.callbacks.min_delta=1e9",
                    "--trainer.callbacks.check_on_train_epoch_end=true"))
    log = json.loads((out / "query_log.json").read_text())
    assert [q["epoch"] for q in log if "case_id" in q] == [-1, 0]
    assert cli.trainer.current_epoch == 2  # epochs 0 and 1 trained, then stopped
    [stopper] = [c for c in cli.trainer.callbacks if isinstance(c, EarlyStopping)]
    assert stopper.stopped_epoch == 1 and stopper.wait_count == 1  # counted once, not twice
    assert log[-1]["event"] == "ended_short" and log[-1]["n_queried"] == 2
