"""Benchmark the query strategies on the embedded phantom: the paper's Tables 1 and 2, ablations.

Protocol (ALGORITHMS.md section 13, on the phantom): for every task (glioma: ET, NCR, ED; npc:
GTV) and seed, the phantom of that seed is generated and the source model trained once; then,
per fold (lightning_ada/benchmark/folds.py: fold f tests on the f-th block of target cases and
draws its pool from the next ones), the lower bound (source model tested), the upper bound
(every pool case labelled), every registered strategy at every budget (``--active.budget B``,
the config's stride), and the ablations at budget 3 (one-off vs sequential mmActS; mmActS
trained on one modality, on the elected one, on all). One JSON line per finished run is
appended to ``<out>/results.jsonl``; a restarted benchmark skips the finished runs.

    # full protocol: 2 tasks x 5 folds x 3 seeds x (9 strategies x 4 budgets + 2 bounds + ablations)
    python scripts/benchmark.py --out runs/bench --threads 1   # 1 thread on a shared CPU
    # reduced protocol (1 fold x 2 seeds), or any subset
    python scripts/benchmark.py --quick --tasks glioma --strategies lower upper random mmacts \
        --budgets 3 --out runs/bench_quick
    # the first benchmark's invocation still works (named runs at budget 3, fold 0)
    python scripts/benchmark.py --task glioma --seeds 0 1 2 --runs lower upper random@0 mmacts \
        --out runs/bench_glioma
    # the real BraTS 2018 cases (configs/brats18, 3 folds, budgets 1 2 3), 2 workers
    python scripts/benchmark.py --tasks brats18 --seeds 0 --workers 2 --out runs/bench_brats18
    # tables, plots and figures only, from results.jsonl
    python scripts/benchmark.py --summary --out runs/bench
    # extra overrides for every run go after "--"
    python scripts/benchmark.py --quick --dry-run -- --trainer.max_epochs 8

Outputs in ``--out``: results.jsonl (one row per run: task, run, strategy, budget, fold, seed,
test metrics per region, per-case values, queried cases and elected modalities, timings),
table1.md/.csv, table2.md/.csv, ablation_schedule.md/.csv, budget_curve.md/.csv,
all_runs.md/.csv, budget_curve_<task>.png, boxplot_<task>_b3.png, queried_<task>_*.png,
summary.md; errors.jsonl for failed runs; logs/ (one log per worker with --workers > 1).

``--quick`` is the reduced protocol that fits in an hour on 2 CPU cores: fold 0, seeds 0 and 1,
phantoms at 24^3 with 20 pool / 10 test cases, source training 24 epochs, target runs 12 epochs
with a query every 2 epochs (budget 5 fits), 2 worker processes of 1 thread each. With ``--wandb`` every run is tracked by W&B (offline
unless ``--wandb-mode online``), grouped by the benchmark id and tagged by task, run, strategy,
budget, fold and seed; the tables and figures go to one extra ``summary`` run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from lightning_ada.benchmark.datasets import BenchTask, ConfigTask, PhantomTask
from lightning_ada.benchmark.folds import FoldScheme
from lightning_ada.benchmark.loop import BenchConfig, BenchmarkLoop
from lightning_ada.benchmark.protocol import BUDGETS, HEADLINE_BUDGET, plan
from lightning_ada.benchmark.publish import fill_readme, publish, record_end, record_start
from lightning_ada.benchmark.report import write_report
from lightning_ada.benchmark.results import read_rows
from lightning_ada.benchmark.wandb_io import WandbSettings

REPO = Path(__file__).resolve().parents[1]

PHANTOM_TASKS = ("glioma", "npc")
TASKS = (*PHANTOM_TASKS, "brats18")
#: the reduced protocol of ``--quick`` (module doc)
QUICK = {
    "size": 24,
    "n_pool": 20,
    "n_test": 10,
    "source": ("--trainer.max_epochs", "24"),
    "target": ("--trainer.max_epochs", "12", "--active.stride", "2"),
    "workers": 2,
}
#: budgets of the real-data tasks (9-case target: pools of 6)
REAL_BUDGETS = (1, 2, 3)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--tasks",
        nargs="+",
        choices=TASKS,
        help="tasks (default: the phantoms glioma npc; brats18 = the real cases of configs/brats18)",
    )
    p.add_argument("--task", choices=TASKS, help="one task (the first benchmark's option)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2; --quick: 0 1)")
    p.add_argument("--folds", type=int, nargs="+", help="folds (default 0..n_folds-1; --quick: 0)")
    p.add_argument(
        "--budgets",
        type=int,
        nargs="+",
        help=f"query budgets (default {' '.join(map(str, BUDGETS))}; with --runs: 3)",
    )
    p.add_argument(
        "--strategies",
        nargs="+",
        help="strategies plus lower / upper (default: every registered one and both bounds)",
    )
    p.add_argument(
        "--ablations",
        nargs="*",
        default=None,
        help="ablation groups at budget 3: schedule modality factors masks "
        "(default: schedule modality; none with --runs)",
    )
    p.add_argument(
        "--runs",
        nargs="+",
        help="explicit run names instead of the protocol (e.g. lower upper random@0 "
        "mmacts mmacts_one_off mmacts_input_t1ce), each at every --budgets",
    )
    p.add_argument(
        "--quick", action="store_true", help="reduced protocol, under 1 h on 2 cores (module doc)"
    )
    p.add_argument(
        "--workers",
        type=int,
        help="parallel worker processes, 1 torch thread each (default 1; --quick: 2)",
    )
    p.add_argument("--source-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--shard", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # run by --workers  # "k/n": the worker's share of a fold
    p.add_argument("--no-report", action="store_true", help="skip the tables and plots")
    p.add_argument(
        "--publish",
        help="copy the tables and plots to this (committed) folder and write its README.md",
    )
    p.add_argument(
        "--readme",
        help="with --publish: fill this README's <!-- results:<folder name>:start/end --> block",
    )
    p.add_argument(
        "--out", help="results folder (default runs/bench; runs/bench_glioma with --runs)"
    )
    p.add_argument(
        "--summary", action="store_true", help="only write the tables and plots of --out"
    )
    p.add_argument("--dry-run", action="store_true", help="print the runs that would be made")
    p.add_argument(
        "--figures",
        nargs="*",
        default=["mmacts"],
        help="methods whose picks are drawn (needs checkpoints; none: no figure)",
    )
    p.add_argument("--wandb", action="store_true", help="track every run with W&B")
    p.add_argument("--wandb-project", default="lightning_ada")
    p.add_argument(
        "--wandb-mode",
        default=None,
        choices=["offline", "online", "disabled"],
        help="default: $WANDB_MODE, else offline",
    )
    p.add_argument("--bench-id", help="W&B group of the runs (default: the --out folder name)")
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: torch's). Use 1 on a CPU shared with other jobs: with 2 "
        "threads on 2 busy cores a scoring round was measured 8x slower than with 1",
    )
    g = p.add_argument_group("phantom fold scheme (lightning_ada/benchmark/folds.py)")
    g.add_argument("--n-folds", type=int, default=5)
    g.add_argument("--n-pool", type=int, help="default 30 (--quick: 20)")
    g.add_argument("--n-test", type=int, help="default 12 (--quick: 10)")
    g.add_argument("--size", type=int, help="phantom edge in voxels, default 32 (--quick: 24)")
    g.add_argument("--config-dir", default="configs/phantom/{task}")
    g.add_argument("--data-base", default="data/phantom")
    r = p.add_argument_group("real-data tasks (brats18)")
    r.add_argument("--real-config-dir", default="configs/{task}")
    r.add_argument("--real-root", help="data.root of the real task (default: its configs' value)")
    r.add_argument(
        "--real-configs",
        nargs="*",
        default=[],
        help="config files added to every real run, e.g. configs/brats18/gpu_1mm.yaml",
    )
    return p


def build_config(args: argparse.Namespace, extra: list[str]) -> BenchConfig:
    """The :class:`BenchConfig` of parsed arguments (defaults resolved as documented)."""
    from lightning_ada.active.strategies import REGISTRY

    legacy = args.runs is not None
    tasks = args.tasks or ([args.task] if args.task else (["glioma"] if legacy else list(PHANTOM_TASKS)))
    quick = args.quick
    scheme = FoldScheme(
        n_folds=args.n_folds,
        n_pool=args.n_pool or (QUICK["n_pool"] if quick else 30),
        n_test=args.n_test or (QUICK["n_test"] if quick else 12),
        size=args.size or (QUICK["size"] if quick else 32),
    )
    specs: dict[str, BenchTask] = {}
    for task in tasks:
        if task in PHANTOM_TASKS:
            specs[task] = PhantomTask(
                task,
                scheme,
                args.data_base,
                args.config_dir,
                source_overrides=QUICK["source"] if quick else (),
                target_overrides=QUICK["target"] if quick else (),
            )
        else:
            specs[task] = ConfigTask(
                task, args.real_config_dir, args.real_root, tuple(args.real_configs)
            )
    seeds = args.seeds or ([0, 1] if quick else [0, 1, 2])
    n_folds = min(specs[t].n_folds for t in tasks)
    folds = args.folds or ([0] if quick or legacy else list(range(n_folds)))
    ablations = (
        args.ablations
        if args.ablations is not None
        else ([] if legacy else ["schedule", "modality"])
    )
    runs = {}
    for task in tasks:
        mods = specs[task].modalities
        default = BUDGETS if task in PHANTOM_TASKS else REAL_BUDGETS
        budgets = args.budgets or ([HEADLINE_BUDGET] if legacy else list(default))
        if legacy:
            runs[task] = [(name, b) for b in budgets for name in args.runs]
            runs[task] += plan([], budgets, ablations, mods)
        else:
            strategies = args.strategies or ["lower", "upper", *REGISTRY]
            runs[task] = plan(strategies, budgets, ablations, mods)
    out = Path(args.out or ("runs/bench_glioma" if legacy else "runs/bench"))
    wandb = None
    if args.wandb:
        mode = args.wandb_mode or os.environ.get("WANDB_MODE") or "offline"
        wandb = WandbSettings(
            project=args.wandb_project, group=args.bench_id or out.name, mode=mode
        )
    return BenchConfig(
        out=out,
        tasks=tasks,
        seeds=seeds,
        folds=folds,
        runs=runs,
        scheme=scheme,
        config_dir=args.config_dir,
        data_base=args.data_base,
        extra=extra,
        wandb=wandb,
        dry_run=args.dry_run,
        task_specs=specs,
        source_only=args.source_only,
        shard=tuple(int(x) for x in args.shard.split("/")) if args.shard else None,
    )


def run_parallel(argv: list[str], extra: list[str], cfg: BenchConfig, workers: int) -> int:
    """Run ``cfg``'s pending runs with ``workers`` processes (:mod:`.parallel`); failed count."""
    from lightning_ada.benchmark.parallel import Unit, run_units, split_units

    loop = BenchmarkLoop(cfg)
    loop.validate()
    pending = loop.pending()
    sources = [Unit(k[0], k[4]) for k in pending if k[1] == "source"]
    targets = list(dict.fromkeys(Unit(k[0], k[4], k[3]) for k in pending if k[1] != "source"))
    targets = split_units(targets, workers)
    print(
        f"{len(pending)} runs to make ({len(sources)} source models, then {len(targets)} "
        f"task x seed x fold units) with {workers} workers; logs in {cfg.out / 'logs'}",
        flush=True,
    )
    return run_units(
        Path(__file__).resolve(), argv, extra, [sources, targets], workers, cfg.out, len(pending)
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    args = parser().parse_args(argv)
    os.chdir(REPO)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = build_config(args, extra)
    workers = args.workers or (QUICK["workers"] if args.quick else 1)
    failed = 0
    if not args.summary:
        n = sum(len(r) for r in cfg.runs.values()) * len(cfg.seeds) * len(cfg.folds)
        print(
            f"benchmark: {len(cfg.tasks)} task(s) x {len(cfg.seeds)} seed(s) x {len(cfg.folds)} "
            f"fold(s): {n} runs planned plus the source models (finished ones are skipped) -> {cfg.out}",
            flush=True,
        )
        t0, start = time.perf_counter(), time.time()
        before = len(read_rows(cfg.out / "results.jsonl"))
        invocation = None
        if not (args.worker or args.dry_run):  # a worker's runs are counted by its parent
            cfg.out.mkdir(parents=True, exist_ok=True)
            invocation = record_start(cfg.out, [*argv, *(["--", *extra] if extra else [])], start)
        if workers > 1 and not args.dry_run:
            failed = run_parallel(argv, extra, cfg, workers)
        else:
            report = BenchmarkLoop(cfg).run()
            print(
                f"ran {len(report.ran)}, skipped {len(report.skipped)} finished, "
                f"failed {len(report.failed)}",
                flush=True,
            )
            failed = len(report.failed)
        seconds = time.perf_counter() - t0
        print(f"wall time {seconds:.0f} s", flush=True)
        if args.dry_run:
            return 0
        if invocation is not None:
            ran = len(read_rows(cfg.out / "results.jsonl")) - before
            record_end(cfg.out, invocation, seconds, ran, failed)
    if args.no_report:
        return 1 if failed else 0
    if not (cfg.out / "results.jsonl").exists():
        print(f"no results in {cfg.out}")
        return 1
    figures = [] if args.figures in ([], ["none"]) else args.figures
    print(write_report(cfg.out, figures, cfg.wandb))
    if args.publish:
        dest = Path(args.publish)
        text = publish(cfg.out, dest, f"Results: {dest.name}")
        if args.readme:
            fill_readme(Path(args.readme), dest.name, text)
        print(f"published to {dest}" + (f" and {args.readme}" if args.readme else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
