"""Parallel benchmark runs as ``submitit`` jobs: subprocesses here, Slurm jobs on a cluster.

A *unit* is one job's share of the plan: a task and seed (its source model), or a task, seed and
fold (its target runs; cut into shards when there are fewer units than workers). Two phases, so
that no two jobs train the same source model: first the missing source models, then the target
runs. Each job runs :class:`~ada_bench.loop.BenchmarkLoop` restricted to its unit with ``threads``
torch threads and appends its rows to the one ``results.jsonl`` (one ``O_APPEND`` write per row),
so a restart skips whatever any job finished.

``cluster="local"`` uses submitit's ``LocalExecutor`` (one subprocess per job, at most
``workers`` at once; what the tests exercise); ``cluster="slurm"`` submits the same jobs with
``AutoExecutor`` (``slurm_array_parallelism = workers``). Job logs and pickles go to
``<out>/jobs/``. Interrupting the benchmark cancels its jobs; a job that outlives a killed
benchmark keeps an exclusive lock on its unit (``<out>/locks/<unit>.lock``), so the job of a
restarted benchmark for the same unit waits for it and then skips what it finished.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ada_bench.loop import BenchConfig, BenchmarkLoop, stop_on_signals
from ada_bench.results import read_rows

#: folder holding the ``ada_bench`` package; jobs need it on their ``PYTHONPATH``
PACKAGE_PARENT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Unit:
    """One job's share: a task and seed, and a fold (None: the source model only).

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

    def restrict(self, cfg: BenchConfig) -> BenchConfig:
        """``cfg`` restricted to this unit."""
        return replace(
            cfg,
            tasks=[self.task],
            seeds=[self.seed],
            folds=cfg.folds if self.fold is None else [self.fold],
            source_only=self.fold is None,
            shard=self.shard,
            dry_run=False,
        )


def split_units(units: list[Unit], workers: int) -> list[Unit]:
    """``units`` cut into ``workers`` shards each when they do not keep every worker busy
    (their number is not a multiple of ``workers``)."""
    if workers <= 1 or len(units) % workers == 0:
        return units
    return [Unit(u.task, u.seed, u.fold, (k, workers)) for u in units for k in range(workers)]


def units_of(cfg: BenchConfig, workers: int) -> tuple[list[Unit], list[Unit]]:
    """The source units and the target units of ``cfg``'s pending runs."""
    pending = BenchmarkLoop(cfg).pending()
    sources = [Unit(k[0], k[4]) for k in pending if k[1] == "source"]
    targets = list(dict.fromkeys(Unit(k[0], k[4], k[3]) for k in pending if k[1] != "source"))
    return sources, split_units(targets, workers)


def run_unit(
    cfg: BenchConfig, unit: Unit, threads: int, runner: Callable[..., dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The job: ``cfg``'s runs of ``unit`` with ``threads`` torch threads (in the job's process).

    Returns:
        ``{"unit", "ran", "skipped", "failed"}`` counts.
    """
    import torch

    torch.set_num_threads(threads)
    stop_on_signals()  # submitit's own handler would ignore the SIGTERM of a cancelled job
    lock_path = cfg.out / "locks" / f"{unit.name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a job of a killed invocation may still hold it
        report = BenchmarkLoop(unit.restrict(cfg), runner).run()
    return {
        "unit": unit.name,
        "ran": len(report.ran),
        "skipped": len(report.skipped),
        "failed": len(report.failed),
    }


@dataclass(frozen=True)
class Cluster:
    """Where the jobs run.

    Attributes:
        kind: ``local`` (subprocesses of this machine) or ``slurm``.
        workers: jobs at once (local) / Slurm array parallelism.
        timeout_min: a job's time limit in minutes.
        slurm: extra ``AutoExecutor`` parameters (e.g. ``{"slurm_partition": "cpu"}``).
    """

    kind: str = "local"
    workers: int = 2
    timeout_min: int = 24 * 60
    slurm: tuple[tuple[str, Any], ...] = ()

    def executor(self, folder: Path, threads: int) -> Any:
        """A submitit executor writing its job files under ``folder``."""
        import submitit

        if self.kind == "local":
            ex = submitit.LocalExecutor(folder=folder)
            ex.update_parameters(timeout_min=self.timeout_min)
            return ex
        if self.kind == "slurm":
            ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
            ex.update_parameters(
                timeout_min=self.timeout_min,
                cpus_per_task=threads,
                slurm_array_parallelism=self.workers,
                **dict(self.slurm),
            )
            return ex
        raise ValueError(f"cluster must be local or slurm, got {self.kind!r}")


def _job_environment(threads: int) -> None:
    """Environment the jobs inherit: the harness importable, ``threads`` OpenMP threads."""
    path = os.environ.get("PYTHONPATH", "")
    if str(PACKAGE_PARENT) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_PARENT), path) if p)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)


def run_units(
    cfg: BenchConfig,
    phases: Sequence[Sequence[Unit]],
    cluster: Cluster,
    total: int,
    runner: Callable[..., dict[str, Any]] | None = None,
    poll_seconds: float = 1.0,
) -> int:
    """Run every unit of each phase as a job, at most ``cluster.workers`` at once.

    Args:
        cfg: the whole benchmark (each job runs its unit's part).
        phases: unit lists; a phase starts when the previous one has finished.
        cluster: where and how many at once.
        total: runs planned (for the progress bar).
        runner: replaces :func:`ada_bench.runner.run_experiment` in the jobs (tests); must
            pickle.
        poll_seconds: seconds between two looks at the jobs.

    Returns:
        The number of failed jobs plus failed runs.
    """
    from tqdm.auto import tqdm

    results = cfg.out / "results.jsonl"
    folder = cfg.out / "jobs"
    failed = 0
    start = len(read_rows(results))
    seen = results.stat().st_size if results.exists() else 0
    bar = tqdm(total=total, desc="benchmark runs", unit="run", dynamic_ncols=True)
    running: dict[Any, Unit] = {}
    try:
        for units in phases:
            queue = list(units)
            threads = max(1, cluster.workers // max(len(units), 1))  # idle workers lend cores
            _job_environment(threads)
            executor = cluster.executor(folder, threads)
            while queue or running:
                while queue and len(running) < cluster.workers:
                    unit = queue.pop(0)
                    job = executor.submit(run_unit, cfg, unit, threads, runner)
                    running[job] = unit
                    bar.write(f"started {unit.name} (job {job.job_id}, log {job.paths.stdout})")
                time.sleep(poll_seconds)
                for job in [j for j in running if j.done()]:
                    unit = running.pop(job)
                    try:
                        counts = job.result()
                    except Exception as e:  # noqa: BLE001 - the job's own exception, re-raised
                        failed += 1
                        bar.write(f"{unit.name} failed: {type(e).__name__}: {str(e)[-500:]}")
                    else:
                        failed += counts["failed"]
                        bar.write(
                            f"finished {unit.name}: {counts['ran']} ran, "
                            f"{counts['skipped']} done before, {counts['failed']} failed"
                        )
                size = results.stat().st_size if results.exists() else 0
                if size != seen:  # re-read the rows only when a job appended one
                    seen = size
                    bar.n = len(read_rows(results)) - start
                    bar.refresh()
    finally:
        bar.close()
        for job in running:  # interrupted (e.g. Ctrl-C, kill): stop the jobs
            _cancel(job)
    return failed


def _cancel(job: Any) -> None:
    """Stop ``job``: SIGTERM to a local job's controller (which forwards it to the job; its
    ``job.cancel`` sends SIGINT, which a controller started in the background ignores), else
    the cluster's cancel."""
    process = getattr(job, "_process", None)  # submitit.local.local.LocalJob
    if process is not None:
        process.send_signal(signal.SIGTERM)
    else:
        job.cancel(check=False)
