"""Hostile runtime conditions through ``lightning-ada fit`` (``cli_main``): each one stops with one
``error:`` line and exit code 2, leaving the run folder and its last good checkpoint as they were.

Classes covered (issue 16): non-finite loss or weight (1), a schedule that cannot spend the budget
and a run that ends short (3), two runs in one folder (4), a full disk at the checkpoint and at
the query-log write, an unreadable checkpoint (6), a resume under a changed definition (8).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_ada.active.callback import ActiveQueryCallback
from lightning_ada.models.module import SegmentationModule
from cli_helpers import run_cli, one_error, snapshot

CONF = Path(__file__).parent / "conf"


# ---------------------------------------------------------------------------------- helpers


def fit_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "fit", "-c", str(CONF / "random_tiny.yaml"), "--data.root", str(root),
        "--trainer.default_root_dir", str(out), "--trainer.limit_val_batches", "0", *extra,
    ]


def queries(out: Path) -> list[tuple[Any, ...]]:
    log = json.loads((out / "query_log.json").read_text())
    return [(q["round"], q["epoch"], q["case_id"], round(q["score"], 6)) for q in log if "case_id" in q]


def weights_finite(ckpt: Path) -> bool:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


@pytest.fixture(scope="module")
def finished_master(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished 2-epoch run (random, budget 2) and a pristine copy of it."""
    from lightning_ada.main import main

    out = tmp_path_factory.mktemp("finished") / "run"
    main(fit_args(phantom_root, out, "--trainer.max_epochs", "2"))
    assert (out / "checkpoints" / "last.ckpt").is_file() and not (out / "run.lock").exists()
    pristine = out.with_name("pristine")
    shutil.copytree(out, pristine)
    return out, pristine


@pytest.fixture
def finished_run(finished_master: tuple[Path, Path]) -> Path:
    """The finished run, as it was when it ended, at its own path (checkpoints name their folder)."""
    out, pristine = finished_master
    shutil.rmtree(out)
    shutil.copytree(pristine, out)
    return out


# ---------------------------------------------------------------------------------- 1: non-finite
@pytest.mark.parametrize("poison", ["loss", "weight"])
def test_non_finite_loss_or_weight_stops_naming_the_cases_and_keeps_the_last_good_checkpoint(
    phantom_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], poison: str,
) -> None:
    out = tmp_path / "run"
    seen: dict[str, Any] = {}
    train, step = SegmentationModule.training_step, SegmentationModule.optimizer_step

    def training_step(self: SegmentationModule, batch: dict[str, Any], idx: int) -> torch.Tensor:
        if self.current_epoch == 1 and "cases" not in seen:  # epoch 0 ran and was checkpointed
            seen["before"], seen["cases"] = snapshot(out), list(batch["case_id"])
            if poison == "loss":
                batch["image"][0, 0, 2, 2, 2] = float("nan")  # one voxel the network sees
        return train(self, batch, idx)

    def optimizer_step(self: SegmentationModule, *args: Any, **kwargs: Any) -> None:
        step(self, *args, **kwargs)
        if poison == "weight" and self.current_epoch == 1:
            with torch.no_grad():
                next(self.net.parameters()).view(-1)[0] = float("inf")

    monkeypatch.setattr(SegmentationModule, "training_step", training_step)
    monkeypatch.setattr(SegmentationModule, "optimizer_step", optimizer_step)
    # weights are checked every few steps (a broken weight breaks the next loss anyway): at every
    # step here, so that the weight check, not the next loss, finds the poisoned weight
    every = ["--guard.check_weights_every", "1"] if poison == "weight" else []
    code, err = run_cli(fit_args(phantom_root, out, *every), monkeypatch, capsys)
    line = one_error(err)
    assert code == 2
    assert ("non-finite training loss" if poison == "loss" else "non-finite weight net.") in line
    assert f"of cases {seen['cases']}" in line and "at epoch 1" in line
    last = out / "checkpoints" / "last.ckpt"
    assert f"the last good checkpoint is {last}" in line
    assert snapshot(out) == seen["before"]  # nothing written after the fault
    assert weights_finite(last) and not (out / "run.lock").exists()


# ---------------------------------------------------------------------------------- 3: schedule
@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--active.budget", "5"], ["active.budget=5", "active.stride=1", "trainer.max_epochs=3",
                                    "room for 3 queries", "at least 5 epochs"]),
        (["--active.stride", "10"], ["active.budget=2", "active.stride=10", "room for 1 query;",
                                     "at least 11 epochs", "active.stride=2"]),
        (["--active.budget", "3", "--trainer.max_steps", "3"],
         ["active.budget=3", "trainer.max_steps=3 at 2 optimiser steps per epoch (2 epochs)",
          "room for 2 queries"]),
    ],
    ids=["epochs", "stride", "max_steps"],
)
def test_schedule_that_cannot_spend_the_budget_is_refused_at_setup(
    phantom_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], extra: list[str], words: list[str],
) -> None:
    out = tmp_path / "run"
    code, err = run_cli(fit_args(phantom_root, out, *extra), monkeypatch, capsys)
    line = one_error(err)
    assert code == 2
    for w in words:
        assert w in line, line
    assert not out.exists()  # the run folder was never written (its lock folder removed again)


def test_run_stopped_early_says_so_and_records_it_in_the_query_log(
    phantom_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    stop_after_epoch_0 = [  # stops at the end of epoch 0: train/loss < 1e9 always
        "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=train/loss",
        "--trainer.callbacks.stopping_threshold=1e9", "--trainer.callbacks.check_on_train_epoch_end=true",
    ]
    code, err = run_cli(fit_args(phantom_root, out, "--active.budget", "3", *stop_after_epoch_0), monkeypatch, capsys)
    assert code == 0, err[-2000:]
    assert "the run ended with 1 of active.budget=3 labels: stopped early (trainer.should_stop) after 1 epochs" in err
    log = json.loads((out / "query_log.json").read_text())
    # Lightning runs monitoring callbacks (EarlyStopping) after the others at an epoch's end; the
    # query due after epoch 0 asks EarlyStopping first (issue 28) and is not made: the run stops
    # there, so no epoch would train on its label
    assert [q["epoch"] for q in log if "case_id" in q] == [-1]
    assert log[-1] == {
        "event": "ended_short", "budget": 3, "n_queried": 1, "epochs_trained": 1, "global_step": 2,
        "reason": "stopped early (trainer.should_stop)",
    }


# ---------------------------------------------------------------------------------- 4: one run per folder
# another run holding the folder, by the lock's protocol (flock on run.lock + its owner record),
# without the cost of importing lightning in a second process
HOLDER = """
import fcntl, json, os, socket, sys
fd = os.open(os.path.join(sys.argv[1], "run.lock"), os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now",
                         "command": "lightning-ada fit (the other run)"}).encode())
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
def test_second_live_run_is_refused_and_a_killed_owner_does_not_block_the_resume(
    finished_run: Path, phantom_root: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    out = finished_run
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = snapshot(out, skip=())
        resume = fit_args(phantom_root, out, "--trainer.max_epochs", "3", "--ckpt_path", "last")
        code, err = run_cli(resume, monkeypatch, capsys)
        line = one_error(err)
        assert code == 2
        assert f"run folder {out} is in use by another run (pid {holder.pid} on host {socket.gethostname()}" in line
        assert snapshot(out, skip=()) == before  # its lock, checkpoints, log and config untouched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads((out / "run.lock").read_text())["pid"] == holder.pid  # a stale lock is left
    steps = []
    train = SegmentationModule.training_step
    monkeypatch.setattr(SegmentationModule, "training_step", lambda self, *a: steps.append(1) or train(self, *a))
    code, err = run_cli(resume, monkeypatch, capsys)
    assert code == 0, err[-2000:]
    assert 0 < len(steps) <= 2  # resumed: only epoch 2 trained (a fresh run would train 3 epochs, 6 steps)
    assert len(queries(out)) == 2 and not (out / "run.lock").exists()
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2


def test_lock_without_flock_decides_from_the_recorded_owner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_ada.run import folder as run_folder
    from lightning_ada.errors import RunFolderBusy
    from lightning_ada.run.folder import RunFolderLock

    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_folder.fcntl, "flock", no_flock)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here = socket.gethostname()
    for owner, refused in [
        ({"pid": int(dead.stdout), "host": here}, False),  # a killed run on this host: stale
        ({"pid": os.getppid(), "host": here}, True),  # a live process on this host
        ({"pid": 1, "host": "another-host"}, True),  # cannot tell: trusted alive
    ]:
        (tmp_path / "run.lock").write_text(json.dumps(owner))
        lock = RunFolderLock(tmp_path)
        if refused:
            with pytest.raises(RunFolderBusy, match=f"pid {owner['pid']} on host {owner['host']}"):
                lock.acquire()
            assert json.loads((tmp_path / "run.lock").read_text()) == owner
        else:
            lock.acquire()
            assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
            lock.release()
            assert not (tmp_path / "run.lock").exists()


# ---------------------------------------------------------------------------------- 6: full disk
def test_failed_write_names_the_file_and_leaves_the_previous_one(tmp_path: Path) -> None:
    from lightning_ada.errors import NonFiniteError, StorageError
    from lightning_ada.run.checkpoint_io import AtomicCheckpointIO, write_atomic

    target = tmp_path / "last.ckpt"
    target.write_bytes(b"previous")

    def half_then_full(f: Any) -> None:
        f.write(b"new, half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageError, match=f"cannot write {target}: No space left on device; .* free in {tmp_path}"):
        write_atomic(target, half_then_full)
    assert target.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    with pytest.raises(NonFiniteError, match="refused to write .*last.ckpt: weights \\['w'\\]"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("nan")])}}, target)
    assert target.read_bytes() == b"previous"


def test_storage_errors_of_other_writers_are_one_line_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_ada import main as cli

    config = tmp_path / "config.yaml"

    def full_disk(*args: Any, **kwargs: Any) -> None:  # e.g. LightningCLI writing config.yaml
        raise OSError(errno.ENOSPC, "No space left on device", str(config))

    monkeypatch.setattr(cli, "main", full_disk)
    monkeypatch.setattr(sys, "argv", ["lightning-ada", "fit"])
    with pytest.raises(SystemExit) as exit_:
        cli.cli_main()
    assert exit_.value.code == 2
    line = one_error(capsys.readouterr().err)
    assert line.startswith(f"error: cannot write {config}: No space left on device; ") and f"free in {tmp_path}" in line

    def bug(*args: Any, **kwargs: Any) -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file", "x")

    monkeypatch.setattr(cli, "main", bug)  # not a storage fault: the traceback is kept
    with pytest.raises(FileNotFoundError):
        cli.cli_main()


def test_source_checkpoint_with_non_finite_weights_is_refused(source_ckpt: Path, tmp_path: Path) -> None:
    from lightning_ada.errors import CheckpointError

    ckpt = torch.load(source_ckpt, map_location="cpu", weights_only=True)
    name = next(k for k in ckpt["state_dict"] if k.startswith("net."))
    ckpt["state_dict"][name].view(-1)[0] = float("nan")
    diverged = tmp_path / "diverged.ckpt"
    torch.save(ckpt, diverged)
    with pytest.raises(CheckpointError, match=re.escape(f"{diverged}: weights ['{name}'")) as err:
        SegmentationModule(filters=[4, 8, 16], source_checkpoint=str(diverged))
    assert "hold NaN or infinity" in str(err.value)


def test_unreadable_checkpoint_is_refused_naming_it(
    finished_run: Path, phantom_root: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    out = finished_run
    last = out / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated by a full disk
    before = snapshot(out)
    code, err = run_cli(fit_args(phantom_root, out, "--trainer.max_epochs", "3", "--ckpt_path", str(last)), monkeypatch, capsys)
    assert code == 2 and one_error(err).startswith(f"error: {last}: not a readable checkpoint")
    assert snapshot(out) == before


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs (root only; skipped where it cannot be mounted)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> None:
    with (disk / "filler").open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC


@pytest.fixture(scope="module")
def reference_log(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, ...]]:
    from lightning_ada.main import main

    out = tmp_path_factory.mktemp("reference") / "run"
    main(fit_args(phantom_root, out, "--active.budget", "3"))
    return queries(out)


@pytest.mark.parametrize("where", ["checkpoint", "query log"])
@pytest.mark.slow
def test_full_disk_stops_with_one_line_and_the_run_resumes_to_the_same_query_log(
    phantom_root: Path, small_disk: Path, reference_log: list[tuple[Any, ...]],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], where: str,
) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    out = small_disk / "run"
    owner, hook = (ModelCheckpoint, "on_train_epoch_end") if where == "checkpoint" else (
        ActiveQueryCallback, "on_train_epoch_end")
    original = getattr(owner, hook)
    seen: dict[str, Any] = {}

    def fill_then_run(self: Any, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == 1 and "before" not in seen:  # epoch 0 is checkpointed
            seen["before"] = snapshot(out)
            _fill(small_disk)
        original(self, trainer, pl_module)

    monkeypatch.setattr(owner, hook, fill_then_run)
    args = fit_args(phantom_root, out, "--active.budget", "3")
    code, err = run_cli(args, monkeypatch, capsys)
    line = one_error(err)
    assert code == 2
    name = "epoch=1-step=4.ckpt" if where == "checkpoint" else "query_log.json"
    assert line.startswith(f"error: cannot write {out}") and f"{name}: No space left on device" in line
    assert " free in " in line
    assert snapshot(out, skip=("run.lock", "filler")) == seen["before"]  # no partial or temp file
    assert weights_finite(out / "checkpoints" / "last.ckpt")

    monkeypatch.setattr(owner, hook, original)
    (small_disk / "filler").unlink()  # space freed
    code, err = run_cli([*args, "--ckpt_path", "last"], monkeypatch, capsys)
    assert code == 0, err[-2000:]
    assert queries(out) == reference_log


# ---------------------------------------------------------------------------------- 8: changed definition
@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--active.strategy", "entropy"], "strategy 'random' -> 'entropy'"),
        (["--active.budget", "3"], "budget 2 -> 3"),
        (["--model.filters", "[4, 8, 32]"], "holds a network of another shape (net."),
        ("pool", "pool 6 -> 5 cases without ["),
        (["--active.self_training", "lightning_ada.active.self_training.SelfTraining"],
         'self_training None -> "SelfTraining(warmup_epochs=2'),
    ],
    ids=["strategy", "budget", "filters", "pool", "self_training"],
)
@pytest.mark.slow
def test_resume_under_a_changed_definition_is_refused_with_a_diff(
    finished_run: Path, phantom_root: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], extra: Any, words: str,
) -> None:
    out = finished_run
    if extra == "pool":
        labeled = {q["case_id"] for q in json.loads((out / "query_log.json").read_text())}
        pool = sorted(c["case_id"] for c in json.loads((phantom_root / "dataset.json").read_text())["cases"]
                      if c["split"] == "pool")
        kept = pool[:]
        kept.remove(next(c for c in pool if c not in labeled))
        extra = ["--data.splits", json.dumps({"pool": kept})]
    before = snapshot(out)
    args = fit_args(phantom_root, out, "--trainer.max_epochs", "3", "--ckpt_path", "last", *extra)
    code, err = run_cli(args, monkeypatch, capsys)
    line = one_error(err)
    assert code == 2
    assert line.startswith(f"error: {out / 'checkpoints' / 'last.ckpt'} ")
    assert words in line, line
    assert snapshot(out) == before


def test_resume_changed_flag_continues_and_records_the_change(
    finished_run: Path, phantom_root: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    out = finished_run
    args = fit_args(phantom_root, out, "--trainer.max_epochs", "4", "--ckpt_path", "last",
                    "--active.budget", "3", "--guard.resume_changed", "true")
    code, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err[-2000:]
    log = json.loads((out / "query_log.json").read_text())
    notes = [q for q in log if q.get("event") == "resumed_changed"]
    assert len(notes) == 1 and notes[0]["changes"] == "budget 2 -> 3"
    assert notes[0]["checkpoint"] == str(out / "checkpoints" / "last.ckpt")
    assert [q["epoch"] for q in log if "case_id" in q] == [-1, 0, 2]  # epochs 2, 3 follow the resume


def test_a_weight_broken_by_an_epochs_last_step_is_found_before_its_checkpoint(
    phantom_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Weights are checked every ``check_weights_every`` steps and at each epoch's end: a weight
    broken by the last step of an epoch (no later loss to show it) is found before the epoch's
    checkpoint is written, naming the cases of every batch since the last check."""
    out = tmp_path / "run"
    seen: dict[str, Any] = {"cases": []}
    train, step = SegmentationModule.training_step, SegmentationModule.optimizer_step

    def training_step(self: SegmentationModule, batch: dict[str, Any], idx: int) -> torch.Tensor:
        if self.current_epoch == 1:
            seen.setdefault("before", snapshot(out))
            seen["cases"] += list(batch["case_id"])
        return train(self, batch, idx)

    def optimizer_step(self: SegmentationModule, epoch: int, batch_idx: int, *args: Any,
                       **kwargs: Any) -> None:
        step(self, epoch, batch_idx, *args, **kwargs)
        if epoch == 1 and batch_idx == self.trainer.num_training_batches - 1:
            with torch.no_grad():
                next(self.net.parameters()).view(-1)[0] = float("inf")

    monkeypatch.setattr(SegmentationModule, "training_step", training_step)
    monkeypatch.setattr(SegmentationModule, "optimizer_step", optimizer_step)
    code, err = run_cli(fit_args(phantom_root, out), monkeypatch, capsys)
    line = one_error(err)
    assert code == 2 and "non-finite weight net." in line and "at epoch 1, found after step 4" in line
    assert "checked every 25 optimiser steps and at each epoch's end" in line
    assert f"batches of cases {seen['cases']}" in line  # both batches of epoch 1
    assert snapshot(out) == seen["before"]  # the epoch's checkpoint was never written
