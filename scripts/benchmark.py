"""Benchmark the query strategies on the embedded phantom: the paper's Tables 1 and 2, ablations.

Protocol (ALGORITHMS.md section 13, on the phantom): for every task (glioma: ET, NCR, ED; npc:
GTV) and seed, the phantom of that seed is generated and the source model trained once; then,
per fold (scripts/ada_bench/folds.py: fold f tests on the f-th block of target cases and draws
its pool from the next ones), the lower bound (source model tested), the upper bound (every pool
case labelled), every registered strategy at every budget (``active.budget``, the config's
stride), and the ablations at budget 3 (one-off vs sequential mmActS; mmActS trained on one
modality, on the elected one, on all). Every run is the task's YAML configs plus overrides,
composed into one config dict and run through ``lightning_ada.main.main(args=<dict>)``
(scripts/ada_bench/runner.py). One JSON line per finished run is appended to
``<out>/results.jsonl``; a restarted benchmark skips the finished runs.

    # full protocol: 2 tasks x 5 folds x 3 seeds x (9 strategies x 4 budgets + 2 bounds + ablations)
    python scripts/benchmark.py --out runs/bench --threads 1   # 1 thread on a shared CPU
    # reduced protocol (1 fold x 2 seeds), or any subset
    python scripts/benchmark.py --quick --tasks glioma --strategies lower upper random mmacts \
        --budgets 3 --out runs/bench_quick
    # named runs (repeated random draws, ablations) at budget 3 on fold 0
    python scripts/benchmark.py --tasks glioma --seeds 0 1 2 --folds 0 --budgets 3 --ablations \
        --strategies lower upper random@0 random@1 mmacts entropy_only --out runs/bench_glioma
    # the power profile: >= 10 seeds, 50 test cases per seed, budgets 1 2 3 5, paired tables
    python scripts/benchmark.py --power --strategies random mmacts ugtst stdr
    # at equal annotation cost: units in the run names (budgets in whole-scan equivalents)
    python scripts/benchmark.py --power --tasks glioma npc --strategies random_region@slices:k=3 \
        random_region@patch:size=8 'clasp_pe@patch:size=8' --out runs/bench_equal_cost
    # strategy options, presets and additions as run names (quote them in the shell)
    python scripts/benchmark.py --power --strategies mmacts_paper \
        'mmacts:density_rule=inclusive,ranking=per_region' random+st upper+dgst \
        'mmacts_paper+st+gba'
    # the real BraTS 2018 cases (configs/brats18, 3 folds, budgets 1 2 3), 2 parallel jobs
    python scripts/benchmark.py --tasks brats18 --seeds 0 --workers 2 --out runs/bench_brats18
    # CBICA as the only target institution; source test and other institutions scored after adapting
    python scripts/benchmark.py --tasks brats18 --real-config-dir configs/brats18/cbica --seeds 0 1
    # the same jobs on a Slurm cluster
    python scripts/benchmark.py --quick --cluster slurm --workers 16 --slurm slurm_partition=cpu
    # tables, plots and figures only, from results.jsonl
    python scripts/benchmark.py --summary --out runs/bench
    # extra overrides (dotted config keys) and config files for every run go after "--"
    python scripts/benchmark.py --quick --dry-run -- --trainer.max_epochs 8
    python scripts/benchmark.py --quick -- -c configs/trainer/gpu.yaml
    # a query every 20 optimiser steps instead of every stride epochs (the configs' stride cleared)
    python scripts/benchmark.py --power --strategies mmacts -- --active.stride_steps 20

Run names (``--strategies``; scripts/ada_bench/names.py, protocol.py):

* ``lower``, ``upper``, every registered strategy, ``random@<k>`` (another random draw), the
  ablations (``mmacts_one_off``, ``mmacts_input_<modality>``, ...);
* presets: ``mmacts_paper`` (mmActS as the authors ran it: density on the raw images at 128^3,
  per-region binary ranking, whole-volume entropy, self-counting neighbourhoods);
* ``<strategy or preset>:<key>=<value>[,<key>=<value>...]``: the strategy's options
  (``--active.strategy.help <name>`` lists them; values read as YAML, ``exponents=[1, 0, 1]``);
  an unknown option or a bad value stops the benchmark before anything runs; a ``schedule``
  option decides whether the run is one budget curve (sequential) or one run per budget
  (one_off);
* ``<run>+<addition>[+<addition>...]``: the overlay ``configs/additions/<addition>.yaml``
  (``--additions-dir``) composed onto the run: ``random+st`` (self-training), ``mmacts+gba``
  (tumour-contrast augmentation), ``upper+dgst`` (sparse fine-tuning), ``random+st+gba+dgst``;
* ``<rule>@<unit>[:<options>]``: the annotation unit, less than a whole scan per query
  (``random_region@slices``, ``random_region@slices:k=3``, ``random_region@patch:size=8``,
  ``clasp_pe@patch:size=8``, ``entropy_region@slices:k=3,power=2``): the run passes
  ``--active.unit <unit>`` with the options the unit accepts (the rest go to the rule;
  ``unit.<key>`` / ``strategy.<key>`` when both accept a key) and records every query's cost
  under the annotation-time model (``active.annotation_time``, assumed constants); its budget
  counts whole-scan equivalents. The rule must rank that unit (its ``units``): ``random@slices``
  is refused (``random_region@slices`` is random regions), as is an unknown unit, before
  anything runs. ``random`` (no ``@``) is the whole-scan baseline, planned exactly as before.

The result row's ``run`` is the full name; the tables show it readably (``mmActS
(ranking=per_region) + self-training``); power.md compares every run with ``random`` and each
``X+addition`` with ``X`` (the addition's gain, also in power_additions.csv).

Outputs in ``--out``: results.jsonl (one row per run: task, run, strategy, budget, fold, seed,
test metrics per region, per-case values, queried cases and elected modalities, timings, and
with ``--power`` the budget curve of sequential runs), table1.md/.csv, table2.md/.csv,
ablation_schedule.md/.csv, budget_curve.md/.csv, all_runs.md/.csv, forgetting.md/.csv (runs that
scored extra test splits: source test cases, other institutions), budget_curve_<task>.png,
boxplot_<task>_b3.png, queried_<task>_*.png, summary.md (``--power``: power.md/.csv,
power_curve_<task>.png, power_penalty.md/.csv: the pairwise penalty matrix of every task, and
power_penalty_tests.csv); errors.jsonl for failed runs; jobs/ (one log per parallel job);
invocations.jsonl (a start and an end line per invocation).

The primary endpoint (scripts/ada_bench/endpoint.py): ``--protocol FILE`` (with ``--power`` by
default configs/power/protocol.yaml) declares one comparison, e.g. the AUBC of each selection rule
vs the random of its own schedule, Holm-corrected over those rules. Its path, SHA-256 and text
are recorded in the start line of the invocation before any run starts; power.md opens with its
table (power_primary.csv; the file copied as protocol.yaml), titled "declared before the runs"
only when every run of the table started after the first invocation that recorded that hash,
else "post hoc"; every other table is headed secondary / exploratory (unadjusted p).

At equal annotation cost (scripts/ada_bench/equal_cost.py, docs/benchmarks.md "At equal
annotation cost"): a run with a unit is a budget curve against whole-scan equivalents (point b:
the first stride end after its queries' ``cost.scans`` sum to b; the rows carry the cost totals
of each point and the pool's per-case sizes), compared with ``random`` on whole cases at the
same b (b cases = b scans on the phantom, whose cases all have one grid). When such runs are
present the summary also writes equal_cost.md/.csv (each unit and rule vs whole-scan random and
vs ``random_region`` at the same unit, paired over seeds, per budget and AUBC),
equal_cost_primary.md/.csv (the primary endpoint declared in ``--equal-cost-protocol``, by
default with ``--power`` configs/power/protocol_equal_cost.yaml, recorded in invocations.jsonl
at the start like the other one, its copy protocol_equal_cost.yaml), equal_cost_penalty.md/.csv,
equal_cost_costs.md/.csv (cases touched, slices, foreground per scan, minutes under the assumed
annotation-time model), equal_cost_fg_efficiency.md/.csv (nnActive's foreground efficiency) and
the figures equal_cost_curves_<task>.png and equal_cost_fg_<task>.png.

``--quick`` is the reduced protocol that fits in an hour on 2 CPU cores: fold 0, seeds 0 and 1,
phantoms at 24^3 with 20 pool / 10 test cases, source training 24 epochs, target runs 12 epochs
with a query every 2 epochs (budget 5 fits), 2 parallel jobs of 1 thread each.

``--power`` is the headline comparison (scripts/ada_bench/power.py) on glioma (``--tasks glioma
npc`` for both): seeds 0-9 (each a fresh phantom draw, ``data.phantom.seed``, and training
seed), one fold with 50 target test cases,
budgets 1 2 3 5, lower and upper bound, ``random`` and every strategy of ``--strategies``; every
target run also scores the seed's source test cases (``data.extra_test_splits: [source_test]``,
the forgetting table; 10 more cases per test pass beside the 50 target ones, ``--no-forgetting``
to skip); the
task configs come from configs/power/<task>/ (configs/phantom/<task>/ while that folder is
missing), the phantom's draw parameters from their ``data.phantom``; a folder with one
``target.yaml`` recipe uses it for every target run (strategy, budget and bound set by the
harness), else each run's own file (``mmacts.yaml``, ``random.yaml``, ``upper_bound.yaml``). A
sequential strategy runs
ONCE at the largest budget and is tested after each query's stride (its budget curve); a one-off
strategy runs once per budget. Tables: every strategy vs random, per-seed paired differences of
mean Dice at each budget and of the normalised AUBC, 95 % bootstrap CI, Wilcoxon p, MDD
(computed in scripts/ada_bench/stats.py).

With ``--wandb`` every run is tracked by W&B (offline unless ``--wandb-mode online``), grouped by
the benchmark id and tagged by task, run, strategy, budget, fold and seed; the tables and figures
go to one extra ``summary`` run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ada_bench.endpoint import Protocol, load_protocol, protocol_record
from ada_bench.folds import FoldScheme
from ada_bench.jobs import Cluster, run_units, units_of
from ada_bench.loop import BenchConfig, BenchmarkLoop, stop_on_signals
from ada_bench.protocol import BUDGETS, plan
from ada_bench.publish import fill_readme, publish, record_end, record_start
from ada_bench.report import write_report
from ada_bench.results import read_rows
from ada_bench.runner import parse_overrides
from ada_bench.seeds import check_seeds, seed_ranges
from ada_bench.tasks import BenchTask, ConfigTask, PhantomTask
from ada_bench.wandb_io import WandbSettings

REPO = Path(__file__).resolve().parents[1]

PHANTOM_TASKS = ("glioma", "npc")
TASKS = (*PHANTOM_TASKS, "brats18")
#: the reduced protocol of ``--quick`` (module doc)
QUICK = {
    "size": 24,
    "n_pool": 20,
    "n_test": 10,
    "source": {"trainer.max_epochs": 24},
    "target": {"trainer.max_epochs": 12, "active.stride": 2},
    "workers": 2,
}
#: the power profile of ``--power`` (module doc)
POWER = {
    "seeds": "evaluation",  # configs/power/seeds.yaml (scripts/ada_bench/seeds.py)
    "n_test": 50,
    "budgets": [1, 2, 3, 5],
    "config_dir": "configs/power/{task}",
    "fallback_config_dir": "configs/phantom/{task}",
    "out": "runs/bench_power",
    "workers": 2,
}
#: what ``--power`` adds to every target run: the source test cases scored as an extra split
#: (forgetting; about n_source_test / n_test = 10 / 50 more test inference per test pass)
FORGETTING = {"data.extra_test_splits": ["source_test"]}
#: budgets of the real-data tasks (9-case target: pools of 6)
REAL_BUDGETS = (1, 2, 3)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--tasks",
        nargs="+",
        choices=TASKS,
        help="tasks (default: the phantoms glioma npc; --power: glioma; brats18 = the real "
        "cases of configs/brats18)",
    )
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2; --quick: 0 1; "
                   "--power: 0-9)")
    p.add_argument("--folds", type=int, nargs="+", help="folds (default 0..n_folds-1; --quick, "
                   "--power: 0)")
    p.add_argument(
        "--budgets",
        type=int,
        nargs="+",
        help=f"query budgets (default {' '.join(map(str, BUDGETS))}; brats18: 1 2 3)",
    )
    p.add_argument(
        "--strategies",
        nargs="+",
        help="strategies or run names (random@1, mmacts_one_off, mmacts_paper, "
        "'mmacts:density_rule=inclusive,ranking=per_region', random+st, upper+dgst; see "
        "'Run names' above) plus lower / upper (default: every registered one and both bounds; "
        "--power: random, both bounds and these)",
    )
    p.add_argument(
        "--ablations",
        nargs="*",
        default=None,
        help="ablation groups at budget 3: schedule modality factors masks "
        "(default: schedule modality; --power: none; no value: none)",
    )
    profile = p.add_mutually_exclusive_group()
    profile.add_argument(
        "--quick", action="store_true", help="reduced protocol, under 1 h on 2 cores (module doc)"
    )
    profile.add_argument(
        "--power", action="store_true",
        help="the power profile: 10 seeds, 50 test cases, paired tables vs random (module doc)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="parallel jobs, 1 torch thread each (default 1; --quick, --power: 2)",
    )
    p.add_argument(
        "--cluster",
        choices=["local", "slurm"],
        default="local",
        help="where parallel jobs run: local subprocesses (submitit LocalExecutor) or Slurm "
        "(submitit AutoExecutor); slurm implies parallel jobs even with --workers 1",
    )
    p.add_argument("--timeout-min", type=int, default=24 * 60, help="time limit of one job")
    p.add_argument(
        "--slurm",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="AutoExecutor parameters, e.g. slurm_partition=cpu slurm_mem_gb=8",
    )
    p.add_argument(
        "--no-forgetting",
        action="store_true",
        help="--power: do not score the source test cases after adaptation (by default every "
        "target run also tests them, data.extra_test_splits [source_test]: the forgetting table)",
    )
    p.add_argument(
        "--additions-dir",
        help="folder of the <addition>.yaml overlays of '<run>+<addition>' names "
        "(default: configs/additions)",
    )
    p.add_argument(
        "--protocol",
        help="the protocol file declaring the primary endpoint (scripts/ada_bench/endpoint.py): "
        "recorded with its SHA-256 in invocations.jsonl when the benchmark starts, its primary "
        "table printed first in power.md (default with --power: configs/power/protocol.yaml; "
        "'none': no primary table)",
    )
    p.add_argument(
        "--equal-cost-protocol",
        help="the protocol file declaring the primary endpoint at equal annotation cost (runs "
        "with an annotation unit, scripts/ada_bench/equal_cost.py): recorded with the other one "
        "when the benchmark starts, its primary table first in equal_cost.md (default with "
        "--power when a run with a unit is planned or, with --summary, in the results: "
        "configs/power/protocol_equal_cost.yaml; 'none': no primary table there). Every run it "
        "names must be one the planner knows",
    )
    p.add_argument("--no-report", action="store_true", help="skip the tables and plots")
    p.add_argument(
        "--publish",
        help="copy the tables and plots to this (committed) folder and write its README.md",
    )
    p.add_argument(
        "--readme",
        default="benchmarks/README.md",
        help="with --publish: fill this file's <!-- results:<folder name>:start/end --> block, "
        "links rewritten to resolve from its folder (default: benchmarks/README.md; 'none': "
        "fill nothing)",
    )
    p.add_argument("--out", help="results folder (default runs/bench; --power: runs/bench_power)")
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
    g = p.add_argument_group("phantom fold scheme (scripts/ada_bench/folds.py)")
    g.add_argument("--n-folds", type=int, help="default 5 (--power: 1)")
    g.add_argument("--n-pool", type=int, help="default 30 (--quick: 20; --power: the config's)")
    g.add_argument("--n-test", type=int, help="default 12 (--quick: 10; --power: 50)")
    g.add_argument("--size", type=int, help="phantom edge in voxels, default 32 (--quick: 24; "
                   "--power: the config's)")
    g.add_argument("--config-dir", help="default configs/phantom/{task} (--power: configs/power/"
                   "{task})")
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


def power_config_dir(task: str, given: str | None) -> str:
    """Config folder of a power task: ``given``, else configs/power/<task> when it exists, else
    configs/phantom/<task> (said on stdout)."""
    if given:
        return given
    if Path(POWER["config_dir"].format(task=task)).is_dir():
        return POWER["config_dir"]
    print(
        f"--power: {POWER['config_dir'].format(task=task)} missing, using "
        f"{POWER['fallback_config_dir'].format(task=task)}",
        flush=True,
    )
    return POWER["fallback_config_dir"]


def power_scheme(args: argparse.Namespace, config_dir: str, task: str) -> FoldScheme:
    """One fold of the power profile, sizes from the task's ``source.yaml`` ``data.phantom``."""
    from ada_bench.runner import compose
    from ada_bench.tasks import base_files

    folder = Path(config_dir.format(task=task))
    drawn = (compose([*base_files(folder), folder / "source.yaml"]).get("data") or {})
    drawn = drawn.get("phantom") or {}
    base = FoldScheme()
    n_test = args.n_test or POWER["n_test"]
    if n_test < POWER["n_test"]:
        print(f"--power with {n_test} test cases per seed (the profile asks for >= 50)")
    return FoldScheme(
        n_folds=args.n_folds or 1,
        n_pool=args.n_pool or int(drawn.get("n_pool", base.n_pool)),
        n_test=n_test,
        size=args.size or int(drawn.get("size", base.size)),
        n_source=int(drawn.get("n_source", base.n_source)),
        n_source_test=int(drawn.get("n_source_test", base.n_source_test)),
    )


def power_plan(
    strategies: list[str], budgets: list[int], additions_dir: str | None = None
) -> list[tuple[str, int | None]]:
    """Bounds, then each strategy: sequential ones once at the largest budget (their curve gives
    the others), one-off ones once per budget. ``random`` is always included, and
    ``random_one_off`` (once per budget) when a one-off strategy is: the baseline trained on
    the same schedule as they are."""
    from ada_bench.protocol import run_spec
    from ada_bench.results import budgetless

    names = list(dict.fromkeys(["lower", "upper", "random", *strategies]))
    if any(not budgetless(n) and run_spec(n, [], additions_dir).schedule == "one_off" for n in names):
        names.insert(names.index("random") + 1, "random_one_off")
        names = list(dict.fromkeys(names))
    out: list[tuple[str, int | None]] = [(n, None) for n in names if budgetless(n)]
    for name in names:
        if budgetless(name):
            continue
        if run_spec(name, [], additions_dir).schedule == "sequential":
            out.append((name, max(budgets)))
        else:
            out += [(name, b) for b in budgets]
    return out


def build_config(
    args: argparse.Namespace, extra: dict, extra_configs: list[str] | None = None
) -> BenchConfig:
    """The :class:`BenchConfig` of parsed arguments (defaults resolved as documented)."""
    from lightning_ada.active.strategies import REGISTRY, Strategy

    quick, power = args.quick, args.power
    tasks = args.tasks or (["glioma"] if power else list(PHANTOM_TASKS))
    specs: dict[str, BenchTask] = {}
    config_dir = args.config_dir or "configs/phantom/{task}"
    scheme = FoldScheme(
        n_folds=args.n_folds or 5,
        n_pool=args.n_pool or (QUICK["n_pool"] if quick else 30),
        n_test=args.n_test or (QUICK["n_test"] if quick else 12),
        size=args.size or (QUICK["size"] if quick else 32),
    )
    for task in tasks:
        if task in PHANTOM_TASKS and power:
            folder = power_config_dir(task, args.config_dir)
            single = Path(folder.format(task=task), "target.yaml").is_file()
            specs[task] = PhantomTask(
                task, power_scheme(args, folder, task), args.data_base, folder,
                target_overrides={} if args.no_forgetting else FORGETTING,
                target_config="target.yaml" if single else None,
            )
        elif task in PHANTOM_TASKS:
            specs[task] = PhantomTask(
                task,
                scheme,
                args.data_base,
                config_dir,
                source_overrides=QUICK["source"] if quick else {},
                target_overrides=QUICK["target"] if quick else {},
            )
        else:
            specs[task] = ConfigTask(
                task, args.real_config_dir, args.real_root, tuple(args.real_configs)
            )
    seeds = args.seeds or (seed_ranges()["evaluation"] if power else [0, 1] if quick else [0, 1, 2])
    if power:
        check_seeds(seeds, "evaluation")  # never the seeds the recipe was calibrated on
    n_folds = min(specs[t].n_folds for t in tasks)
    folds = args.folds or ([0] if quick or power else list(range(n_folds)))
    ablations = args.ablations if args.ablations is not None else (
        [] if power else ["schedule", "modality"]
    )
    runs = {}
    for task in tasks:
        mods = specs[task].modalities
        if power:
            runs[task] = power_plan(
                args.strategies or [], args.budgets or POWER["budgets"], args.additions_dir
            )
            continue
        default = BUDGETS if task in PHANTOM_TASKS else REAL_BUDGETS
        budgets = args.budgets or list(default)
        # every whole-case strategy by default; region rules are named (they need a unit)
        strategies = args.strategies or ["lower", "upper", *(
            n for n, c in REGISTRY.items() if c.case_regions is Strategy.case_regions)]
        runs[task] = plan(strategies, budgets, ablations, mods)
    out = Path(args.out or (POWER["out"] if power else "runs/bench"))
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
        config_dir=config_dir,
        data_base=args.data_base,
        extra=extra,
        extra_configs=list(extra_configs or []),
        wandb=wandb,
        dry_run=args.dry_run,
        task_specs=specs,
        curve=power,
        additions_dir=args.additions_dir,
    )


def protocol_file(args: argparse.Namespace) -> Path | None:
    """The protocol file of the primary endpoint: ``--protocol`` (``none``: None), else with
    ``--power`` the power one (:data:`ada_bench.endpoint.POWER_PROTOCOL`), else None."""
    from ada_bench.endpoint import POWER_PROTOCOL

    if args.protocol:
        return None if args.protocol.lower() == "none" else Path(args.protocol)
    return POWER_PROTOCOL if args.power else None


def planned_units(cfg: BenchConfig) -> bool:
    """Whether a planned run has an annotation unit (``<rule>@<unit>``)."""
    from ada_bench.names import parse_run_name

    return any(parse_run_name(name).unit for runs in cfg.runs.values() for name, _ in runs)


def equal_cost_protocol_file(args: argparse.Namespace, cfg: BenchConfig) -> Path | None:
    """The protocol of the primary endpoint at equal annotation cost: ``--equal-cost-protocol``
    (``none``: None), else with ``--power`` :data:`ada_bench.endpoint.EQUAL_COST_PROTOCOL` when a
    run with a unit is planned (or, with ``--summary``, in the results), else None."""
    from ada_bench.endpoint import EQUAL_COST_PROTOCOL
    from ada_bench.equal_cost import has_unit_runs

    if args.equal_cost_protocol:
        given = args.equal_cost_protocol
        return None if given.lower() == "none" else Path(given)
    if not args.power:
        return None
    if planned_units(cfg):
        return EQUAL_COST_PROTOCOL
    if args.summary and has_unit_runs(read_rows(cfg.out / "results.jsonl")):
        return EQUAL_COST_PROTOCOL
    return None


def check_protocol_runs(protocol: Protocol, cfg: BenchConfig) -> None:
    """Refuse a protocol naming a run the planner does not know, for every task of ``cfg``
    (:func:`ada_bench.endpoint.check_runs`)."""
    from ada_bench.endpoint import check_runs

    for task in cfg.tasks:
        check_runs(protocol, cfg.task(task).modalities, cfg.additions_dir)


def cluster_of(args: argparse.Namespace, workers: int) -> Cluster:
    """Where parallel jobs run (``--cluster``, ``--workers``, ``--timeout-min``, ``--slurm``)."""
    slurm = []
    for item in args.slurm:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--slurm {item!r}: expected KEY=VALUE")
        slurm.append((key, parse_overrides([f"--{key}", value])[key]))
    return Cluster(args.cluster, workers, args.timeout_min, tuple(slurm))


def run_parallel(cfg: BenchConfig, cluster: Cluster) -> int:
    """Run ``cfg``'s pending runs as jobs (:mod:`ada_bench.jobs`); the failed count."""
    BenchmarkLoop(cfg).validate()
    pending = BenchmarkLoop(cfg).pending()
    sources, targets = units_of(cfg, cluster.workers)
    print(
        f"{len(pending)} runs to make ({len(sources)} source models, then {len(targets)} "
        f"task x seed x fold units) as {cluster.kind} jobs, {cluster.workers} at once; logs in "
        f"{cfg.out / 'jobs'}",
        flush=True,
    )
    return run_units(cfg, [sources, targets], cluster, len(pending))


def main(argv: list[str] | None = None) -> int:
    from ada_bench.runner import read_arguments

    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra_configs, extra = read_arguments(parser(), argv)
    os.chdir(REPO)
    stop_on_signals()  # Ctrl-C and `kill` stop the runs (and the parallel jobs) after a clean shutdown
    if args.threads:
        os.environ["LIGHTNING_ADA_THREADS"] = str(args.threads)  # else each run's CLI picks 1
        import torch

        torch.set_num_threads(args.threads)
    try:  # a bad run name, option, addition or protocol: one line, before anything runs
        cfg = build_config(args, extra, extra_configs)
        BenchmarkLoop(cfg).validate()
        path = protocol_file(args)
        protocol = load_protocol(path) if path is not None else None
        ec_path = equal_cost_protocol_file(args, cfg)
        equal_cost = load_protocol(ec_path) if ec_path is not None else None
        if equal_cost is not None and not args.summary:
            check_protocol_runs(equal_cost, cfg)
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    workers = args.workers or (QUICK["workers"] if args.quick or args.power else 1)
    failed = 0
    if not args.summary:
        n = sum(len(r) for r in cfg.runs.values()) * len(cfg.seeds) * len(cfg.folds)
        print(
            f"benchmark: {len(cfg.tasks)} task(s) x {len(cfg.seeds)} seed(s) x {len(cfg.folds)} "
            f"fold(s): {n} runs planned plus the source models (finished ones are skipped) "
            f"-> {cfg.out}",
            flush=True,
        )
        t0, start = time.perf_counter(), time.time()
        before = len(read_rows(cfg.out / "results.jsonl"))
        invocation = None
        if not args.dry_run:
            cfg.out.mkdir(parents=True, exist_ok=True)
            more = [protocol_record(equal_cost)] if equal_cost is not None and (
                protocol is None or equal_cost.sha256 != protocol.sha256) else []
            invocation = record_start(
                cfg.out, argv, start, protocol_record(protocol) if protocol else None, more
            )
        if (workers > 1 or args.cluster != "local") and not args.dry_run:
            failed = run_parallel(cfg, cluster_of(args, workers))
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
    print(write_report(cfg.out, figures, cfg.wandb, protocol=protocol,
                       equal_cost_protocol=equal_cost))
    if args.publish:
        dest = Path(args.publish)
        text = publish(cfg.out, dest, f"Results: {dest.name}")
        readme = args.readme if args.readme and args.readme.lower() != "none" else None
        if readme:
            fill_readme(Path(readme), dest.name, text)
        print(f"published to {dest}" + (f" and {readme}" if readme else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
