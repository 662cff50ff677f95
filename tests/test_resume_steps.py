"""Exact resume with the stride in optimiser steps (``active.stride_steps``): a run killed between
two step queries, or right after a label, resumes to the same query log and labeled set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_resume import DRIVER, _pool

CONF = Path(__file__).parent / "conf"


def run(
    root: Path, ckpt: Path, out: Path, driver: Path, kill_at: str = "", resume: bool = False
) -> subprocess.CompletedProcess[str]:
    """4 epochs x 2 steps, budget 3, a query every 2 steps (at steps 0, 2 and 4), mmActS."""
    env = dict(os.environ, KILL_AT=kill_at, CKPT="last" if resume else "", PYTHONWARNINGS="ignore")
    args = [
        sys.executable, str(driver),
        "-c", str(CONF / "random_tiny.yaml"),
        "--data.root", str(root),
        "--model.source_checkpoint", str(ckpt),
        "--trainer.default_root_dir", str(out),
        "--trainer.max_epochs", "4", "--trainer.limit_val_batches", "0",
        "--active.budget", "3", "--active.stride", "null", "--active.stride_steps", "2",
        "--active.strategy", "mmacts",
    ]
    return subprocess.run(
        args, env=env, cwd=out.parent, capture_output=True, text=True, timeout=600
    )


def _comparable(log: list[dict]) -> list[tuple]:
    return [(q["round"], q["epoch"], q["step"], q["case_id"], round(q["score"], 6)) for q in log]


@pytest.fixture(scope="module")
def reference(
    phantom_root: Path, source_ckpt: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list, dict]:
    base = tmp_path_factory.mktemp("resume_steps_ref")
    driver = base / "driver.py"
    driver.write_text(DRIVER)
    out = base / "run"
    done = run(phantom_root, source_ckpt, out, driver)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((out / "query_log.json").read_text()), _pool(out)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["mid-epoch", "after-label"])
def test_killed_step_strided_run_resumes_to_the_same_log(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path, reference: tuple[list, dict],
    kill_at: str,
) -> None:
    ref_log, ref_pool = reference
    assert [(q["epoch"], q["step"]) for q in ref_log] == [(-1, 0), (0, 2), (1, 4)]
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "run"
    killed = run(phantom_root, source_ckpt, out, driver, kill_at=kill_at)
    assert killed.returncode == -9, f"the run was not killed at {kill_at}"
    assert (out / "checkpoints" / "last.ckpt").is_file()  # the end of epoch 0
    resumed = run(phantom_root, source_ckpt, out, driver, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Restoring states from the checkpoint" in resumed.stderr
    log = json.loads((out / "query_log.json").read_text())
    assert _comparable(log) == _comparable(ref_log)
    assert _pool(out) == ref_pool
