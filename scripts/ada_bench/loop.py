"""The benchmark loop: per task and seed one source model, then every planned run per fold.

Every run is a config dict (:func:`ada_bench.runner.compose`: the task's YAML files, then its
overrides) made by :func:`ada_bench.runner.run_experiment` in this process. Resumable: a run
whose key (:func:`ada_bench.results.run_key`) is already in ``results.jsonl`` is skipped;
finished runs are appended one line each. A failed run is recorded in ``errors.jsonl`` and the
loop goes on (it is retried at the next invocation).

Folder layout under ``out``::

    results.jsonl, errors.jsonl
    <task>/seed<s>/source/                         source training (one per task and seed)
    <task>/seed<s>/fold<f>/<run>[_b<budget>]/      one folder per run (checkpoints/last.ckpt,
                                                   query_log.json, config.yaml, wandb/); a run
                                                   name with options gets a safe folder name
                                                   (:func:`ada_bench.names.folder_name`)
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import re
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ada_bench.folds import FoldScheme
from ada_bench.label_check import annotate_queries
from ada_bench.names import bound_of, budgetless, folder_name, parse_run_name
from ada_bench.protocol import RunSpec, own_method, run_spec
from ada_bench.results import (
    append_row,
    finished,
    normalise,
    read_rows,
    round_seconds,
    run_key,
)
from ada_bench.runner import compose
from ada_bench.tasks import BenchTask, PhantomTask, base_files
from ada_bench.wandb_io import WandbSettings, finish_run

#: set when the benchmark (or one of its jobs) was told to stop (Ctrl-C, ``kill``): a run that
#: ends with Lightning's ``SystemExit`` after its graceful shutdown is then an interruption to
#: pass on, not a failed run to record before going on with the next one
INTERRUPTED = threading.Event()


def _interrupt(signum: int, frame: object) -> None:
    INTERRUPTED.set()
    raise KeyboardInterrupt(f"signal {signum}")


def stop_on_signals() -> None:
    """SIGINT and SIGTERM stop the benchmark loop of this process after the current run's
    graceful shutdown (a background process starts with SIGINT ignored; submitit's jobs ignore
    SIGTERM: both would keep running). Only the main thread can install handlers: elsewhere
    (a job run in a thread, as in the tests) nothing is changed."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)


@contextlib.contextmanager
def run_lock(out: Path, key: tuple[Any, ...]):
    """Exclusive lock on one run of ``out`` (``<out>/locks/runs/<key>.lock``), held while it runs.

    Two jobs never make the same run at once, whatever units or shards they were given (e.g. a
    job of a killed benchmark still running, and a restarted benchmark that cut its units
    differently): the second waits, then finds the run finished in ``results.jsonl``.
    """
    name = re.sub(r"[^A-Za-z0-9_.@+=-]+", "_", "_".join(str(k) for k in key))
    path = out / "locks" / "runs" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"  waiting for another job making this run ({path})", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

#: ``runner(config, fit=..., curve=...)`` -> the results of one run (:func:`_default_runner`)
Runner = Callable[..., dict[str, Any]]


@dataclass
class BenchConfig:
    """Everything one benchmark invocation does.

    Attributes:
        out: results folder.
        tasks: tasks (``glioma``, ``npc``, ``brats18``).
        seeds: seeds (phantom draw, source model, training).
        folds: folds (:mod:`ada_bench.folds`).
        runs: per task, the ``(run name, budget or None)`` list (:func:`protocol.plan`).
        scheme: fold and phantom sizes.
        config_dir: config folder, ``{task}`` is replaced by the task.
        data_base: folder of the generated phantoms.
        extra: overrides of every run (dotted keys, e.g. ``{"trainer.max_epochs": 2}``).
        extra_configs: config files merged into every run after its own (e.g.
            ``configs/trainer/gpu.yaml``).
        wandb: W&B settings, None for no tracking.
        dry_run: print the runs, run nothing.
        task_specs: per task, what it runs on (:mod:`ada_bench.tasks`); a task not in it is a
            :class:`PhantomTask` of ``scheme``, ``data_base`` and ``config_dir``.
        source_only: train the missing source models, nothing else (parallel jobs' first phase).
        shard: ``(k, n)``: only the planned runs at positions ``k, k + n, ...`` of each task,
            seed and fold (a parallel job's share).
        curve: sequential strategy runs also test the model after every query's stride
            (:mod:`ada_bench.curve`): one run gives the whole budget curve.
        additions_dir: folder of the addition overlays of ``<run>+<addition>`` names (None:
            ``configs/additions``).
    """

    out: Path
    tasks: list[str]
    seeds: list[int]
    folds: list[int]
    runs: dict[str, list[tuple[str, int | None]]]
    scheme: FoldScheme = field(default_factory=FoldScheme)
    config_dir: str = "configs/phantom/{task}"
    data_base: str = "data/phantom"
    extra: dict[str, Any] = field(default_factory=dict)
    extra_configs: list[str] = field(default_factory=list)
    wandb: WandbSettings | None = None
    dry_run: bool = False
    task_specs: dict[str, BenchTask] = field(default_factory=dict)
    source_only: bool = False
    shard: tuple[int, int] | None = None
    curve: bool = False
    additions_dir: str | None = None

    def task(self, name: str) -> BenchTask:
        """What task ``name`` runs on."""
        if name in self.task_specs:
            return self.task_specs[name]
        return PhantomTask(name, self.scheme, self.data_base, self.config_dir)


@dataclass
class LoopReport:
    """What an invocation did: keys run, skipped and failed."""

    ran: list[tuple[Any, ...]] = field(default_factory=list)
    skipped: list[tuple[Any, ...]] = field(default_factory=list)
    failed: list[tuple[Any, ...]] = field(default_factory=list)


class _Tail(io.TextIOBase):
    """A text stream passing writes through to ``stream`` and keeping the last ``keep`` chars."""

    def __init__(self, stream: Any, keep: int = 4000) -> None:
        self.stream, self.keep, self.buf = stream, keep, ""

    def write(self, s: str) -> int:
        self.stream.write(s)
        self.buf = (self.buf + s)[-self.keep :]
        return len(s)

    def flush(self) -> None:
        self.stream.flush()

    def text(self) -> str:
        """The kept tail."""
        return self.buf


def _default_runner(
    config: Mapping[str, Any], fit: bool = True, curve: bool = False
) -> dict[str, Any]:
    from ada_bench.curve import snapshot_factory
    from ada_bench.runner import run_experiment

    return run_experiment(
        config, fit=fit, snapshots=snapshot_factory if curve else None, label_check=True
    )


def run_dir(
    out: Path, task: str, seed: int, fold: int | None, run: str, budget: int | None
) -> Path:
    """Folder of one run (module doc)."""
    base = out / task / f"seed{seed}"
    if run == "source":
        return base / "source"
    name = folder_name(run) + ("" if budget is None else f"_b{budget}")
    return base / f"fold{fold}" / name


def find_checkpoint(folder: Path) -> Path | None:
    """Newest ``last.ckpt`` under ``folder`` (W&B runs put it in ``<project>/<id>/checkpoints``)."""
    found = (
        sorted(folder.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
        if folder.exists()
        else []
    )
    return found[-1] if found else None


def _source_checkpoint(rows: list[dict[str, Any]], task: str, seed: int) -> Path | None:
    """Checkpoint of the finished source run of ``task`` and ``seed`` (as its row records it)."""
    for r in reversed(rows):
        if r["task"] == task and r["run"] == "source" and int(r["seed"]) == seed:
            ck = r.get("checkpoint")
            if ck and Path(ck).is_file():
                return Path(ck)
    return None


#: what a result row keeps of each query of the log
QUERY_FIELDS = (
    "round", "epoch", "case_id", "score", "factors", "modality", "election_dice", "case_meta",
    "timings", "scoring_seconds", "step",
)
#: what it also keeps of each query of a run with a unit (``fields["unit"]``): the region asked
#: for, its place among the round's regions of that case, and its cost
UNIT_QUERY_FIELDS = ("region", "part", "cost")


def make_row(task: str, run: str, seed: int, res: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """The result row of a finished run (``res`` from ``run_experiment``).

    A run with a unit (``fields["unit"]``, :func:`ada_bench.protocol.unit_spec`) also keeps each
    query's ``region``, ``part`` and ``cost``, the run's ``cost`` totals
    (:func:`ada_bench.curve.cost_totals`) and, when measured, ``pool_cases`` (the pool's cases
    on the network grid: ``[voxels, slices along axis 2, foreground voxels, slices with
    tumour]``, what a whole-case query of each would cost: :func:`ada_bench.runner.pool_costs`);
    a run without one gives the same row as before units existed.
    """
    from ada_bench.curve import cost_totals

    keep = QUERY_FIELDS + (UNIT_QUERY_FIELDS if fields.get("unit") else ())
    queries = [
        {k: q.get(k) for k in keep}
        for q in res.get("query_log", [])
        if q.get("case_id") is not None  # events (ended_short, nothing_to_train, ...) go below
    ]
    if fields.get("unit"):
        fields = {**fields, "cost": cost_totals([q.get("cost") or {} for q in queries])}
        if res.get("pool_cases"):
            fields["pool_cases"] = res["pool_cases"]
    events = [q for q in res.get("query_log", []) if q.get("case_id") is None]
    label_fit = res.get("label_fit")
    if label_fit:  # each labelled case's loss under the final model, suspect labels flagged
        queries = annotate_queries(queries, label_fit)
    return {
        "task": task,
        "run": run,
        "seed": seed,
        **fields,
        "test": res.get("test", {}),
        "per_case": res.get("per_case", []),
        # the extra test splits (source test cases, other institutions): forgetting
        **({"extra_splits": res["extra_splits"]} if res.get("extra_splits") else {}),
        "queries": queries,
        **({"events": events} if events else {}),
        "queried_cases": [q["case_id"] for q in queries],
        "elected_modalities": [q["modality"] for q in queries],
        "fit_seconds": res.get("fit_seconds"),
        "seconds": res.get("seconds"),
        "scoring_seconds": sum(round_seconds(queries).values()),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        **({"curve": res["curve"]} if res.get("curve") else {}),
        **({"label_fit": label_fit} if label_fit else {}),
    }


class BenchmarkLoop:
    """Runs the plan of a :class:`BenchConfig` (see the module doc)."""

    def __init__(self, cfg: BenchConfig, runner: Runner | None = None) -> None:
        self.cfg = cfg
        self.runner = runner or _default_runner
        self.results = cfg.out / "results.jsonl"
        self.report = LoopReport()

    # ------------------------------------------------------------------ overrides
    def _logger(
        self,
        folder: Path,
        task: str,
        run: str,
        strategy: str,
        budget: int | None,
        fold: int | None,
        seed: int,
        job_type: str,
    ) -> dict[str, Any]:
        if self.cfg.wandb is None:
            return {"trainer.logger": False}
        tags = [task, run[:64], strategy, f"seed{seed}"]  # W&B refuses tags over 64 characters
        tags += [f"budget{budget}"] if budget is not None else []
        tags += [f"fold{fold}"] if fold is not None else []
        name = "/".join(
            [task, run]
            + ([f"b{budget}"] if budget is not None else [])
            + ([f"f{fold}"] if fold is not None else [])
            + [f"s{seed}"]
        )
        return self.cfg.wandb.logger_override(folder, name, list(dict.fromkeys(tags)), job_type)

    def _config(
        self, task: str, seed: int, files: list[str], overrides: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The run's config: ``files`` merged, then the task's data overrides of ``seed``, no
        progress bar, ``overrides`` and the invocation's ``extra`` (later keys win).

        ``extra`` setting ``active.stride_steps`` (not ``active.stride``) also clears the configs'
        epoch stride: the two are exclusive, and the invocation's choice wins.
        """
        bench_task = self.cfg.task(task)
        data = bench_task.data_overrides(seed, compose(files))
        extra = dict(self.cfg.extra)
        if extra.get("active.stride_steps") is not None and "active.stride" not in extra:
            extra = {"active.stride": None, **extra}
        return compose(
            files,
            {**data, "trainer.enable_progress_bar": False, **overrides, **extra},
        )

    def _bases(self, task: str) -> list[str]:
        """The base config the run overlays compose with (task folder or its parent)."""
        folder = self.cfg.task(task).folder
        found = [f for f in (folder / "base.yaml", folder.parent / "base.yaml") if f.is_file()]
        return [str(f) for f in found[:1]]

    # ------------------------------------------------------------------ one run
    def _execute(
        self,
        key: tuple[Any, ...],
        config: dict[str, Any],
        fit: bool,
        row_fields: dict[str, Any],
        folder: Path,
        curve: bool = False,
    ) -> dict[str, Any] | None:
        task, run, _budget, _fold, seed = key
        if self.cfg.dry_run:
            data = config.get("data", {})
            active = config.get("active", {})
            unit = active.get("unit")
            print(
                "would run:", task, run, f"seed {seed}",
                f"fold {key[3]}" if key[3] is not None else "",
                f"budget {active.get('budget')}" if fit and key[2] is not None else "",
                f"strategy {active.get('strategy')}" if key[2] is not None else "",
                f"unit {unit}" if unit is not None else "",
                f"root {data.get('root')}", "" if fit else "(test only)",
                "(budget curve)" if curve else "",
            )
            self.report.ran.append(key)
            return None
        before = self._rows_of(key)
        with run_lock(self.cfg.out, key):
            after = self._rows_of(key)
            if len(after) > len(before):  # another job finished it while we waited
                self.report.skipped.append(key)
                return after[-1]
            return self._execute_unlocked(key, config, fit, row_fields, folder, curve)

    def _rows_of(self, key: tuple[Any, ...]) -> list[dict[str, Any]]:
        """The rows of ``results.jsonl`` with this run key (a re-made run adds one)."""
        return [row for row in read_rows(self.results) if run_key(row) == key]

    def _execute_unlocked(
        self,
        key: tuple[Any, ...],
        config: dict[str, Any],
        fit: bool,
        row_fields: dict[str, Any],
        folder: Path,
        curve: bool,
    ) -> dict[str, Any] | None:
        task, run, _budget, _fold, seed = key
        where = f"{task} seed {seed}" + (f" fold {key[3]}" if key[3] is not None else "")
        print(f"[{where}] {run}" + (f" budget {key[2]}" if key[2] is not None else ""), flush=True)
        if folder.exists():  # an interrupted attempt: its files would be mistaken for this run's
            print(f"  removing the unfinished attempt in {folder}", flush=True)
            shutil.rmtree(folder)
        stderr = _Tail(sys.stderr)
        try:
            with contextlib.redirect_stderr(stderr):  # keeps the CLI's own error message
                res = self.runner(config, fit=fit, curve=curve)
        except KeyboardInterrupt:
            finish_run()
            raise
        except BaseException as e:  # noqa: BLE001 - includes the CLI's SystemExit on bad arguments
            if INTERRUPTED.is_set():  # Lightning's exit after a graceful shutdown on a signal
                finish_run()
                raise KeyboardInterrupt("interrupted") from e
            info = finish_run() if self.cfg.wandb is not None else None
            append_row(
                self.cfg.out / "errors.jsonl",
                {
                    "task": task,
                    "run": run,
                    "seed": seed,
                    **row_fields,
                    "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc()[-4000:],
                    "stderr": stderr.text(),
                    "wandb": info,
                    "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                },
            )
            print(f"  FAILED: {type(e).__name__}: {e} (see errors.jsonl)", flush=True)
            self.report.failed.append(key)
            return None
        info = finish_run() if self.cfg.wandb is not None else None
        ckpt = find_checkpoint(folder) if fit else None
        row = make_row(
            task,
            run,
            seed,
            res,
            **row_fields,
            run_dir=str(folder),
            checkpoint=str(ckpt) if ckpt else None,
            wandb=info,
        )
        append_row(self.results, row)
        self.report.ran.append(key)
        return row

    def _files(self, task: str, name: str, *more: str) -> list[str]:
        bench_task = self.cfg.task(task)
        return [
            *map(str, base_files(bench_task.folder)), str(bench_task.config_file(name)),
            *bench_task.extra_configs, *more, *self.cfg.extra_configs,
        ]

    def _source(
        self, task: str, seed: int, rows: list[dict[str, Any]], done: set[Any]
    ) -> Path | None:
        key = (task, "source", None, None, seed)
        ckpt = _source_checkpoint(rows, task, seed)
        if key in done and ckpt is not None:
            self.report.skipped.append(key)
            return ckpt
        folder = run_dir(self.cfg.out, task, seed, None, "source", None)
        overrides = {
            **self.cfg.task(task).source_stage(),  # source cases only
            "trainer.default_root_dir": str(folder),
            **self._logger(folder, task, "source", "source", None, None, seed, "source"),
        }
        config = self._config(task, seed, self._files(task, "source.yaml"), overrides)
        row = self._execute(
            key, config, True, {"fold": None, "budget": None, "strategy": "source"}, folder
        )
        if self.cfg.dry_run:
            return folder / "checkpoints" / "last.ckpt"
        return Path(row["checkpoint"]) if row and row.get("checkpoint") else None

    def _target(
        self, task: str, seed: int, fold: int, name: str, budget: int | None, source: Path
    ) -> None:
        bench_task = self.cfg.task(task)
        spec: RunSpec = run_spec(name, bench_task.modalities, self.cfg.additions_dir)
        budget = None if budgetless(name) else budget
        bound, parsed = bound_of(name), parse_run_name(name)
        folder = run_dir(self.cfg.out, task, seed, fold, name, budget)
        split = bench_task.fold(fold)
        curve = self.cfg.curve and spec.schedule == "sequential" and spec.budgeted
        overrides = {
            **split.overrides,
            "active.seed": seed + 1000 * fold,
            **spec.overrides,
            **({"active.budget": budget} if spec.budgeted and budget is not None else {}),
            "model.source_checkpoint": str(source),
            "trainer.default_root_dir": str(folder),
            **self._logger(
                folder,
                task,
                name,
                spec.strategy,
                budget,
                fold,
                seed,
                "bound" if bound else "adapt",
            ),
        }
        fields = {
            "fold": fold,
            "budget": budget if budget is not None else (0 if bound == "lower" else None),
            "strategy": spec.strategy,
            "schedule": spec.schedule,
            "train_input": spec.train_input,
            "n_pool": split.n_pool,
            "n_test": split.n_test,
            "labels": 0 if bound == "lower" else split.n_pool if bound == "upper" else budget,
            # a method of its own in the tables (strategy options, additions or a preset)
            "variant": parsed.is_variant or own_method(parsed.base),
            "additions": list(parsed.additions),
            "config": spec.config,
            "configs": list(spec.configs),
            "overrides": dict(spec.overrides),
            "extra": dict(self.cfg.extra),
            "source_checkpoint": str(source),
        }
        config = self._config(
            task, seed, self._files(task, spec.config, *split.configs, *spec.configs), overrides
        )
        if spec.unit:  # what the run's unit is and the annotation-time model it recorded
            from ada_bench.protocol import unit_settings

            fields |= {
                "unit": spec.unit,
                "unit_options": unit_settings(spec.unit, spec.unit_options),
                "annotation_time": (config.get("active") or {}).get("annotation_time"),
            }
        self._execute(
            (task, name, budget, fold, seed), config, spec.fit, fields, folder, curve=curve
        )

    # ------------------------------------------------------------------ the loop
    def validate(self) -> None:
        """Check every planned run name and fold before anything runs.

        Raises:
            ValueError: an unknown run name or a fold outside the scheme.
        """
        for task, runs in self.cfg.runs.items():
            modalities = self.cfg.task(task).modalities
            for name, _ in runs:
                run_spec(name, modalities, self.cfg.additions_dir)
        for task in self.cfg.tasks:
            for fold in self.cfg.folds:
                self.cfg.task(task).fold(fold)

    def _planned(self, task: str, seed: int) -> list[tuple[Any, ...]]:
        """Keys of the target runs planned for ``task`` and ``seed`` (this shard's), in order."""
        k, n = self.cfg.shard or (0, 1)
        return [
            (task, name, None if budgetless(name) else budget, fold, seed)
            for fold in self.cfg.folds
            for i, (name, budget) in enumerate(self.cfg.runs[task])
            if i % n == k
        ]

    def pending(self) -> list[tuple[Any, ...]]:
        """Keys of the planned runs not in ``results.jsonl`` yet (source runs included)."""
        done = finished(read_rows(self.results))
        out: list[tuple[Any, ...]] = []
        for task in self.cfg.tasks:
            for seed in self.cfg.seeds:
                todo = [k for k in self._planned(task, seed) if k not in done]
                source = (task, "source", None, None, seed)
                if todo and source not in done:
                    out.append(source)
                out += [] if self.cfg.source_only else todo
        return out

    def run(self) -> LoopReport:
        """Run every planned run not yet in ``results.jsonl``."""
        self.validate()
        self.cfg.out.mkdir(parents=True, exist_ok=True)
        for task in self.cfg.tasks:
            for seed in self.cfg.seeds:
                rows = read_rows(self.results)
                done = finished(rows)
                planned = self._planned(task, seed)
                pending = [k for k in planned if k not in done]
                self.report.skipped += [k for k in planned if k in done]
                if not pending:
                    continue
                source = self._source(task, seed, rows, done)
                if self.cfg.source_only:
                    continue
                if source is None:
                    print(
                        f"[{task} seed {seed}] no source checkpoint: skipping its runs", flush=True
                    )
                    continue
                for _, name, budget, fold, _ in pending:
                    self._target(task, seed, fold, name, budget, source)
        return self.report


def last_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of ``path``, the last one per run key (a repeated run supersedes the earlier)."""
    by_key: dict[Any, dict[str, Any]] = {}
    for r in read_rows(path):
        by_key[run_key(r)] = r
    return [normalise(r) for r in by_key.values()]
