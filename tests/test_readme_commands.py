"""The README's command sequence (fit -> test -> predict -> query) leaves a training run intact.

A training run's records (metrics, configs, hyper-parameters, checkpoints, query log) must be
byte-identical after evaluating, predicting and ranking with its checkpoint; those commands write
into their own folders (``lightning_ada/cli/eval_dirs.py``).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from jsonargparse import Namespace

from lightning_ada.cli.eval_dirs import configured_run_dir, evaluation_dir, redirect_evaluation
from lightning_ada.main import main

CONF = Path(__file__).parent / "conf"


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_args(phantom_root: Path, source_ckpt: Path, runs: Path) -> list[str]:
    """The tiny target config with a CSV logger laid out like the README's configs."""
    logger = json.dumps(
        {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(runs), "name": "target", "version": ""},
        }
    )
    return [
        "-c", str(CONF / "random_tiny.yaml"),
        "--data.root", str(phantom_root),
        "--model.source_checkpoint", str(source_ckpt),
        "--trainer.default_root_dir", str(runs / "target"),
        "--trainer.logger", logger,
        "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "0",
        "--active.budget", "2", "--active.stride", "1",
    ]


@pytest.mark.slow  # a long end-to-end run: `make test-all` runs it
def test_fit_then_test_predict_query_leave_the_training_run_byte_identical(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    args = run_args(phantom_root, source_ckpt, runs)
    main(["fit", *args])
    run = runs / "target"
    ckpt = run / "checkpoints" / "last.ckpt"
    before = snapshot(run)
    # the records the README promises are there, so the comparison below means something
    records = ("metrics.csv", "config.yaml", "hparams.yaml", "query_log.json", "checkpoints/last.ckpt")
    for name in records:
        assert name in before, f"the training run has no {name}: {sorted(before)}"

    main(["test", *args, "--ckpt_path", str(ckpt)])
    preds = tmp_path / "preds"
    main(["predict", *args, "--ckpt_path", str(ckpt), "--writer.output_dir", str(preds)])
    main(["query", *args, "--ckpt_path", str(ckpt)])  # as the README: no --out
    rows = json.loads((run / "query_ranking.json").read_text())

    after = snapshot(run)
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not changed, f"test/predict/query changed or deleted the training run's {changed}"
    new = sorted(set(after) - set(before))
    # new files only in the evaluations' own folders (and query's ranking table)
    assert all(
        k.split("/")[0] in ("test", "predict", "query") or k.startswith("query_ranking.")
        for k in new
    ), new

    # the evaluation went somewhere findable: <run>/test/<timestamp>/metrics.csv
    (test_dir,) = (run / "test").iterdir()
    with (test_dir / "metrics.csv").open() as f:
        header = next(csv.reader(f))
    assert "test/dice_mean" in header
    assert (test_dir / "config.yaml").is_file()
    assert len(list(preds.glob("*_pred.nii.gz"))) == 2  # the two tiny test cases
    assert len(rows) == 6 - 2  # the unlabeled rest of the pool after two queries


def test_a_second_test_gets_its_own_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = evaluation_dir(run, "test", stamp="20260101-000000")
    first.mkdir(parents=True)
    second = evaluation_dir(run, "test", stamp="20260101-000000")
    assert second != first and second.name == "20260101-000000-1"


def test_eval_dir_is_used_and_must_not_hold_files(tmp_path: Path) -> None:
    def config(eval_dir: Path | None) -> Namespace:
        logger = Namespace(
            class_path="lightning.pytorch.loggers.CSVLogger",
            init_args=Namespace(save_dir=str(tmp_path), name="run", version=""),
        )
        return Namespace(
            eval_dir=None if eval_dir is None else str(eval_dir), ckpt_path=None,
            trainer=Namespace(default_root_dir=str(tmp_path / "run"), logger=logger),
        )

    assert configured_run_dir(config(None).trainer) == tmp_path / "run"
    chosen = tmp_path / "evaluation"
    c = config(chosen)
    assert redirect_evaluation(c, "test") == chosen
    assert Path(c.trainer.logger.init_args.save_dir) / c.trainer.logger.init_args.name == chosen
    assert c.trainer.default_root_dir == str(chosen)
    fit = config(None)
    assert redirect_evaluation(fit, "fit") is None
    assert fit.trainer.default_root_dir == str(tmp_path / "run")  # fit is never redirected

    chosen.mkdir()
    (chosen / "metrics.csv").write_text("kept\n")
    with pytest.raises(ValueError, match="already holds files"):
        redirect_evaluation(config(chosen), "predict")
    assert (chosen / "metrics.csv").read_text() == "kept\n"


def test_ckpt_path_last_still_means_the_training_runs_last_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    config = Namespace(
        eval_dir=None, ckpt_path="last",
        trainer=Namespace(default_root_dir=str(run), logger=False, callbacks=[]),
    )
    folder = redirect_evaluation(config, "test")
    assert folder is not None and folder.parent == run / "test"
    assert config.ckpt_path == str(run / "checkpoints" / "last.ckpt")


# ---------------------------------------------------------------------------------- the demo
REPO = Path(__file__).resolve().parents[1]


def load_demo():  # noqa: ANN201 - the script as a module
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("demo_script", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["demo_script"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_demo_refuses_an_unknown_strategy_before_training(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    demo = load_demo()
    monkeypatch.setattr("sys.argv", ["demo.py", "--strategies", "entropy", "nonsense",
                                     "--out", str(tmp_path / "out")])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as err:
        demo.main()
    assert err.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()
    assert len(message) < 8  # a short usage line and the reason, not the CLI's full help
    assert "unknown strategy nonsense" in message[-1]
    for name in ("random", "entropy", "mmacts", "aada", "mhpl", "cup", "stdr", "lamda", "ugtst"):
        assert name in message[-1]
    assert not (tmp_path / "out").exists()  # nothing ran


@pytest.mark.slow
def test_demo_runs_one_draw_of_the_power_protocol_and_compares_it_with_committed_seeds(
    tmp_path: Path,
) -> None:
    """The demo on tiny power-like configs: one seed's runs through the harness, its table next
    to the mean and CI of the same rows over the seeds of a results file (here: two seeds the
    harness made just before, standing in for the committed ones)."""
    import subprocess
    import sys

    from test_benchmark_power import power_configs

    conf = power_configs(tmp_path / "conf")
    tiny = ["--config-dir", str(conf / "{task}"), "--data-base", str(tmp_path / "data"),
            "--budgets", "1", "3", "--n-test", "4", "--n-pool", "4"]
    committed = tmp_path / "committed"
    bench = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--power", "--tasks", "glioma",
             "--seeds", "0", "1", "--strategies", "random", "--workers", "1", "--no-report",
             "--out", str(committed), *tiny]
    done = subprocess.run(bench, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "demo"
    cmd = [sys.executable, str(REPO / "scripts" / "demo.py"), "--seed", "0", "--strategies",
           "random", "--out", str(out), "--results", str(committed / "results.jsonl"), *tiny]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (out / "demo_results.md").read_text()
    for row in ("source model", "target lower bound", "target, 3 labels by random",
                "target upper bound"):
        line = next(x for x in table.splitlines() if x.startswith(f"| {row}"))
        assert ", 2 seeds |" in line  # the committed mean [CI] over both seeds
    assert "What one run can show" in table and "wall time:" in table
    # the demo's run of seed 0 is the committed run of seed 0 made again: the same Dice
    mine = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    theirs = [json.loads(x) for x in (committed / "results.jsonl").read_text().splitlines()]
    pick = lambda rows: {(r["run"], r.get("budget")): r["test"]["dice_mean"]  # noqa: E731
                         for r in rows if r["seed"] == 0}
    assert pick(mine) == pytest.approx(pick(theirs), abs=1e-6)
