"""Exact resume: kill -9 at any point, resume with ``--ckpt_path last``, same labeled set and log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CONF = Path(__file__).parent / "conf"

# A driver that runs the real CLI and SIGKILLs itself at a chosen point (the ``KILL_AT`` env var).
DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    import lightning.pytorch as L
    from lightning_ada.active.strategies.mmacts import MMActSStrategy
    from lightning_ada.data.datamodule import ActiveDataModule
    from lightning_ada.main import main

    where = os.environ.get("KILL_AT", "")

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if where in ("mid-scoring", "first-scoring"):
        orig_score = MMActSStrategy.score
        calls = []
        def score(self, ctx):
            calls.append(1)
            if len(calls) == (1 if where == "first-scoring" else 3):  # round 0, or after epoch 1
                die()
            return orig_score(self, ctx)
        MMActSStrategy.score = score
    elif where == "after-label":
        orig_label = ActiveDataModule.label
        def label(self, *a, **k):
            added = orig_label(self, *a, **k)
            if self.pool.n_labeled == 3:
                die()
            return added
        ActiveDataModule.label = label
    elif where == "mid-checkpoint-write":
        # the CLI's atomic checkpoint writer, killed half-way through overwriting last.ckpt
        import io
        import lightning_ada.run.checkpoint_io as checkpoint_io
        orig_write = checkpoint_io.write_atomic
        saves = []
        def write_atomic(path, write):
            saves.append(1)
            if len(saves) != 4:  # epoch 1: top-k file, then last.ckpt (overwrite) is killed
                return orig_write(path, write)
            def half_then_die(f):
                buf = io.BytesIO()
                write(buf)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                die()
            return orig_write(path, half_then_die)
        checkpoint_io.write_atomic = write_atomic

    class MidEpoch(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if where == "mid-epoch" and trainer.current_epoch == 1 and trainer.global_step % 2 == 1:
                die()

    cli = main(sys.argv[1:], run=False)
    cli.trainer.callbacks.append(MidEpoch())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=os.environ.get("CKPT") or None)
    """
)


def cli_args(root: Path, ckpt: Path, out: Path) -> list[str]:
    return [
        "-c", str(CONF / "random_tiny.yaml"),
        "--data.root", str(root),
        "--model.source_checkpoint", str(ckpt),
        "--trainer.default_root_dir", str(out),
        "--trainer.max_epochs", "4", "--trainer.limit_val_batches", "0",
        "--active.budget", "3", "--active.stride", "1",
        "--active.strategy", "mmacts",
    ]


def run(
    root: Path, ckpt: Path, out: Path, driver: Path, kill_at: str = "", resume: bool = False
) -> subprocess.CompletedProcess[str]:
    """The run in a subprocess through the driver (needed where it is killed)."""
    env = dict(os.environ, KILL_AT=kill_at, CKPT="last" if resume else "", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, str(driver), *cli_args(root, ckpt, out)], env=env,
                          cwd=out.parent, capture_output=True, text=True, timeout=600)


def run_here(root: Path, ckpt: Path, out: Path, resume: bool = False) -> None:
    """The same run in this process (the real CLI: ``lightning-ada fit``)."""
    from lightning_ada.main import main

    main(["fit", *cli_args(root, ckpt, out), *(["--ckpt_path", "last"] if resume else [])])


@pytest.fixture(scope="module")
def reference(phantom_root: Path, source_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list, dict]:
    out = tmp_path_factory.mktemp("resume_ref") / "run"
    run_here(phantom_root, source_ckpt, out)
    return json.loads((out / "query_log.json").read_text()), _pool(out)


def _pool(out: Path) -> dict:
    import torch

    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["ActiveDataModule"]["pool"]["labeled"]


def _comparable(log: list[dict]) -> list[tuple]:
    return [(q["round"], q["epoch"], q["case_id"], round(q["score"], 6)) for q in log]


# every kill point is a long end-to-end run (a kill, then a resume): all with the `slow` mark
@pytest.mark.parametrize(
    "kill_at",
    [
        pytest.param(k, marks=pytest.mark.slow)  # each a kill and a resume: about 30 s
        for k in ("mid-epoch", "first-scoring", "mid-scoring", "after-label", "mid-checkpoint-write")
    ],
)
def test_killed_run_resumes_to_the_same_labeled_set_and_log(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path, reference: tuple[list, dict], kill_at: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lightning_ada.data.datamodule import ActiveDataModule

    restored: list[dict] = []  # the pool states the resume loaded from the killed run's checkpoint
    load = ActiveDataModule.load_state_dict
    monkeypatch.setattr(ActiveDataModule, "load_state_dict",
                        lambda self, state: (restored.append(state), load(self, state))[1])
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "run"
    killed = run(phantom_root, source_ckpt, out, driver, kill_at=kill_at)
    assert killed.returncode == -9, f"the run was not killed at {kill_at}"
    # killed before any checkpoint (round 0 scoring) the run starts over; else it resumes
    first = kill_at == "first-scoring"
    assert (out / "checkpoints" / "last.ckpt").is_file() != first
    assert bool(list(out.rglob(".*.tmp"))) == (kill_at == "mid-checkpoint-write")  # half-written temp
    resumed = run(phantom_root, source_ckpt, out, driver, resume=True) if first else None
    if resumed is not None:  # nothing to restore: the driver starts over, as the CLI would
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "Restoring states from the checkpoint" not in resumed.stderr
    else:  # resumed in this process from the killed run's last checkpoint
        run_here(phantom_root, source_ckpt, out, resume=True)
        assert len(restored) == 1  # restored, not started over
    log = json.loads((out / "query_log.json").read_text())
    ref_log, ref_pool = reference
    assert _comparable(log) == _comparable(ref_log)
    assert len({q["case_id"] for q in log}) == len(log) == 3  # no query logged twice
    assert _pool(out) == ref_pool
    assert not list(out.rglob(".*.tmp"))  # a killed writer's temporary file was cleaned up
