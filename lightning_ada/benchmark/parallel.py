"""Run a benchmark with several worker processes, one (task, seed[, fold]) unit each.

Two phases, so that no two workers train the same source model: first the missing source models
(one worker per task and seed), then the target runs (one worker per task, seed and fold). Every
worker is the benchmark script itself restricted to its unit (``--tasks T --seeds S [--folds F]``)
with one torch thread (more when a phase has fewer units than workers); all append to the same ``results.jsonl`` (one ``O_APPEND`` write per row),
so a restart skips whatever any worker finished. A worker's output goes to
``<out>/logs/<unit>.log``; a progress bar counts the finished runs. Workers die with the parent
(``PR_SET_PDEATHSIG`` on Linux), so killing the benchmark stops everything.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lightning_ada.benchmark.results import read_rows


@dataclass(frozen=True)
class Unit:
    """One worker's share: a task and seed, and a fold (None: the source model only).

    ``shard = (k, n)`` restricts it to the fold's planned runs at positions ``k, k + n, ...``.
    """

    task: str
    seed: int
    fold: int | None = None
    shard: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        name = f"{self.task}_seed{self.seed}" + (
            "_source" if self.fold is None else f"_fold{self.fold}"
        )
        return name + (f"_shard{self.shard[0]}of{self.shard[1]}" if self.shard else "")

    def args(self) -> list[str]:
        """Arguments restricting the benchmark script to this unit."""
        out = ["--tasks", self.task, "--seeds", str(self.seed)]
        out += ["--source-only"] if self.fold is None else ["--folds", str(self.fold)]
        return out + (["--shard", f"{self.shard[0]}/{self.shard[1]}"] if self.shard else [])


def split_units(units: list[Unit], workers: int) -> list[Unit]:
    """``units`` cut into ``workers`` shards each when they do not keep every worker busy
    (their number is not a multiple of ``workers``)."""
    if workers <= 1 or len(units) % workers == 0:
        return units
    return [
        Unit(u.task, u.seed, u.fold, (k, workers)) for u in units for k in range(workers)
    ]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_units(
    script: Path,
    base_args: Sequence[str],
    extra: Sequence[str],
    phases: Sequence[Sequence[Unit]],
    workers: int,
    out: Path,
    total: int,
) -> int:
    """Run every unit of each phase, at most ``workers`` at once; return the failed count.

    Args:
        script: the benchmark script.
        base_args: its arguments (without ``--``); each unit's restriction is appended (the last
            value of a repeated option wins).
        extra: overrides after ``--``.
        phases: unit lists; a phase starts when the previous one has finished.
        workers: concurrent processes.
        out: results folder (``logs/`` and ``results.jsonl``).
        total: runs planned (for the progress bar).
    """
    from tqdm.auto import tqdm

    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    failed = 0
    env = dict(os.environ)
    start = len(read_rows(results))
    seen = results.stat().st_size if results.exists() else 0
    bar = tqdm(total=total, desc="benchmark runs", unit="run", initial=0, dynamic_ncols=True)
    running: dict[subprocess.Popen[bytes], tuple[Unit, BinaryIO]] = {}
    try:
        for units in phases:
            queue = list(units)
            threads = max(1, workers // max(len(units), 1))  # idle workers lend their cores
            while queue or running:
                while queue and len(running) < workers:
                    unit = queue.pop(0)
                    log = (logs / f"{unit.name}.log").open("ab")
                    cmd = [
                        sys.executable,
                        str(script),
                        *base_args,
                        *unit.args(),
                        "--workers",
                        "1",
                        "--threads",
                        str(threads),
                        "--no-report",
                        "--worker",
                        *(["--", *extra] if extra else []),
                    ]
                    log.write(f"$ {' '.join(cmd)}\n".encode())
                    log.flush()
                    proc = subprocess.Popen(
                        cmd,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env={**env, "OMP_NUM_THREADS": str(threads)},
                        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                    )
                    running[proc] = (unit, log)
                    bar.write(f"started {unit.name} (pid {proc.pid}, log {logs / unit.name}.log)")
                time.sleep(2.0)
                for proc in [p for p in running if p.poll() is not None]:
                    unit, log = running.pop(proc)
                    log.close()
                    if proc.returncode:
                        failed += 1
                        bar.write(f"{unit.name} exited with {proc.returncode} (see its log)")
                    else:
                        bar.write(f"finished {unit.name}")
                size = results.stat().st_size if results.exists() else 0
                if size != seen:  # re-read the rows only when a worker appended one
                    seen = size
                    bar.n = len(read_rows(results)) - start
                    bar.refresh()
    finally:
        bar.close()
        for proc, (_, log) in running.items():  # interrupted (e.g. Ctrl-C): stop the workers
            if proc.poll() is None:
                proc.terminate()
            log.close()
    return failed
