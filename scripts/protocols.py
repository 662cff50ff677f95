"""Protocols of messy targets: one adaptation per centre, per rater, open-set pools.

Each protocol adapts one source model per seed (the task's power configs, configs/power/<task>/,
on the embedded phantom) to several *groups* of the target in turn and writes its tables:

* ``centres`` (seed 002): the target is one phantom scanner/centre at a time (B, C, D): that
  centre's pool and test cases, the upper bound trained on all of that centre's pool; budgets
  1-5 and 20 % of the centre's pool; per-centre median and IQR of DSC and HD95, each adapted model
  against the upper bound (paired Wilcoxon over the test cases, 95 % CI of the difference);
* ``raters`` (seed 002): the same target scans delineated by several raters (phantom option
  ``raters``); each group adapts to one rater's labels and is tested against that rater;
  per-rater medians, the inter-rater agreement as the ceiling, the revision measure
  (lightning_ada.metrics.revision) of the test predictions;
* ``open_set`` (seed 003): 20 % and 40 % of the pool out of distribution (phantom option
  ``open_set``), every strategy with and without OpenPath's prototype filter; purity and Dice.

The runs go through the benchmark harness (scripts/ada_bench: the loop, its runner and
results.jsonl): one JSON line per finished run in ``<out>/results.jsonl``, a restarted protocol
skips the finished runs; ``groups.json`` names the groups (the loop's folds). Tables (markdown
and csv) and ``summary.md`` (with the commands that made the results) go to ``--out``.

    python scripts/protocols.py open_set --seeds 0 1 2 --strategies random mmacts coverage \
        --ood 0.2 0.4 --budget 3 --out runs/open_set --threads 1
    python scripts/protocols.py centres --seeds 0 1 2 --strategies random mmacts --out runs/centres
    python scripts/protocols.py raters --seeds 0 1 2 --strategies random mmacts --out runs/raters
    python scripts/protocols.py centres --summary --out runs/centres   # tables only
    python scripts/protocols.py open_set --quick --seeds 0 --strategies random --out /tmp/os
    # overrides (dotted config keys) and config files for every run go after "--"
    python scripts/protocols.py centres --dry-run -- --trainer.max_epochs 4

``--quick`` is a reduced size for tests and smoke runs (16^3 phantoms, 12 pool / 8 test cases, a
few training steps): its numbers mean nothing and its tables say so.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from ada_bench.centres import (
    BUDGETS,
    GroupTask,
    centre_groups,
    group_table,
    plan_runs,
    read_groups,
    run_groups,
    seed_base,
    share_budget,
    write_groups,
)
from ada_bench.folds import FoldScheme
from ada_bench.loop import BenchConfig, last_rows
from ada_bench.open_set_protocol import open_set_groups, open_set_table
from ada_bench.raters_protocol import (
    inter_rater_agreement,
    rater_groups,
    revision_columns,
    revision_runner,
)
from ada_bench.runner import compose, read_arguments
from ada_bench.tasks import base_files

from lightning_ada.io import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
PROTOCOLS = ("centres", "raters", "open_set")
#: the reduced size of ``--quick`` (module doc)
QUICK = {
    "size": 16,
    "n_pool": 12,
    "n_test": 8,
    "n_source": 4,
    "n_source_test": 2,
    "budgets": [1, 2],
    "source": {"trainer.max_epochs": 8, "data.iterations_per_epoch": 1},  # saves at epoch 8
    "target": {"trainer.max_epochs": 3, "data.iterations_per_epoch": 2, "active.stride": 1},
    "both": {"data.patch_size": [16, 16, 16], "model.roi_size": [16, 16, 16]},
}
DEFAULT_STRATEGIES = {"centres": ["random", "mmacts"], "raters": ["random", "mmacts"],
                      "open_set": ["random", "mmacts", "coverage"]}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("protocol", choices=PROTOCOLS)
    p.add_argument("--task", default="glioma", choices=["glioma", "npc"])
    p.add_argument("--out", help="results folder (default runs/protocol_<protocol>)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--strategies", nargs="+",
                   help="strategies (default: centres, raters: random mmacts; open_set: random "
                        "mmacts coverage)")
    p.add_argument("--budgets", type=int, nargs="+",
                   help="centres, raters: budgets besides the 20 %% share (default 1 2 3 4 5)")
    p.add_argument("--budget", type=int, default=3, help="open_set: the query budget (default 3)")
    p.add_argument("--ood", type=float, nargs="+", default=[0.2, 0.4],
                   help="open_set: shares of out-of-distribution pool cases (default 0.2 0.4)")
    p.add_argument("--centres", nargs="+", help="centres: the centres (default every target one)")
    p.add_argument("--raters", default="default",
                   help="raters: 'default' (lightning_ada.phantom.raters.DEFAULT_RATERS) or a JSON "
                        "list of RaterStyle fields")
    p.add_argument("--quick", action="store_true", help="reduced size for tests (module doc)")
    p.add_argument("--config-dir", default="configs/power/{task}")
    p.add_argument("--data-base", default="data/phantom")
    p.add_argument("--n-pool", type=int,
                   help="pool cases (default: the config's phantom's; raters: 25, so that 20 %% "
                        "of the pool fits the recipe's 5 query slots)")
    p.add_argument("--n-test", type=int, help="test cases (default: the config's phantom's)")
    p.add_argument("--size", type=int, help="phantom edge in voxels (default: the config's)")
    p.add_argument("--threads", type=int, help="torch threads (1 on a shared CPU)")
    p.add_argument("--summary", action="store_true", help="only write the tables of --out")
    p.add_argument("--real-centre", metavar="NAME",
                   help="centres --summary of a real-data benchmark folder (--out, e.g. "
                        "runs/bench_cbica, one target institution NAME in every fold): its folds "
                        "pooled as one centre, written to centre_<NAME>.md/.csv")
    p.add_argument("--dry-run", action="store_true", help="print the runs, run nothing")
    return p


def scheme_of(args: argparse.Namespace, folder: Path) -> FoldScheme:
    """One fold; sizes from the task's ``source.yaml`` ``data.phantom`` unless given."""
    drawn = (compose([*base_files(folder), folder / "source.yaml"]).get("data") or {})
    drawn = drawn.get("phantom") or {}
    base = FoldScheme()
    quick = QUICK if args.quick else {}

    # per rater 20 % of the pool must fit the power recipe's 5 query slots: 25 pool cases
    own = {"n_pool": 25} if args.protocol == "raters" else {}

    def pick(key: str, arg: int | None) -> int:
        return arg or quick.get(key) or own.get(key) or int(drawn.get(key, getattr(base, key)))

    return FoldScheme(
        n_folds=1,
        n_pool=pick("n_pool", args.n_pool),
        n_test=pick("n_test", args.n_test),
        size=pick("size", args.size),
        n_source=pick("n_source", None),
        n_source_test=pick("n_source_test", None),
    )


def base_task(args: argparse.Namespace) -> GroupTask:
    """The protocol's task without groups (configs, sizes, quick overrides)."""
    folder = Path(args.config_dir.format(task=args.task))
    if not (folder / "source.yaml").is_file() or not (folder / "target.yaml").is_file():
        raise SystemExit(f"{folder}: needs source.yaml and target.yaml (the power configs)")
    quick_source = {**QUICK["both"], **QUICK["source"]} if args.quick else {}
    quick_target = {**QUICK["both"], **QUICK["target"]} if args.quick else {}
    return GroupTask(
        args.task, scheme_of(args, folder), args.data_base, args.config_dir,
        source_overrides=quick_source, target_overrides=quick_target,
        target_config="target.yaml",
    )


def styles_of(args: argparse.Namespace) -> tuple[Any, ...]:
    from lightning_ada.phantom.simulator import rater_styles

    value = args.raters if args.raters == "default" else json.loads(args.raters)
    return rater_styles(value)


def plan(args: argparse.Namespace) -> tuple[dict[int, GroupTask], list[tuple[str, int | None]]]:
    """Per seed the task with its groups, and the run list (the same for every seed)."""
    from dataclasses import replace

    task = base_task(args)
    strategies = args.strategies or DEFAULT_STRATEGIES[args.protocol]
    budgets = args.budgets or (QUICK["budgets"] if args.quick else list(BUDGETS))
    tasks: dict[int, GroupTask] = {}
    if args.protocol == "open_set":
        for seed in args.seeds:
            groups = open_set_groups(seed_base(task, seed), args.ood)
            tasks[seed] = replace(task, groups=tuple(groups))
        return tasks, plan_runs(strategies, [args.budget], bounds=("lower",))
    if args.protocol == "raters":
        styles = styles_of(args)
        options = {"raters": [s.to_json() for s in styles]}
        for seed in args.seeds:
            tasks[seed] = replace(task, groups=tuple(rater_groups(styles)), phantom_options=options)
        shares = {share_budget(task.scheme.n_pool)}
    else:
        shares = set()
        for seed in args.seeds:
            groups = centre_groups(task, seed, args.centres)
            tasks[seed] = replace(task, groups=tuple(groups))
            shares |= {share_budget(len(g.splits["pool"])) for g in groups}
    return tasks, plan_runs(strategies, sorted(set(budgets) | shares))


def run(args: argparse.Namespace, extra: dict[str, Any], extra_configs: list[str]) -> int:
    tasks, runs = plan(args)
    out = Path(args.out)
    if not args.dry_run:
        write_groups(out, args.protocol, {s: t.groups for s, t in tasks.items()})
    cfg = BenchConfig(
        out=out, tasks=[args.task], seeds=list(args.seeds), folds=[0], runs={args.task: runs},
        extra=extra, extra_configs=extra_configs, dry_run=args.dry_run,
        curve=args.protocol != "open_set",
    )
    runner = revision_runner if args.protocol == "raters" else None
    report = run_groups(cfg, tasks, runner)
    print(f"ran {len(report.ran)}, skipped {len(report.skipped)} finished, "
          f"failed {len(report.failed)}", flush=True)
    if args.protocol == "raters" and not args.dry_run:
        write_inter_rater(out, tasks)
    return len(report.failed)


def write_inter_rater(out: Path, tasks: dict[int, GroupTask]) -> None:
    """``inter_rater.json``: per seed, the raters' agreement on that seed's test cases."""
    path = out / "inter_rater.json"
    record: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    for seed, task in tasks.items():
        config = compose([*base_files(task.folder), task.config_file("source.yaml")])
        root = Path(task.data_overrides(seed, config)["data.root"])
        if (root / "dataset.json").is_file():
            test = task.scheme.splits(task.name, 0)["test"]
            record[str(seed)] = inter_rater_agreement(root, test)
    write_text_atomic(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


def mean_ceiling(out: Path) -> dict[str, Any]:
    """Inter-rater agreement averaged over the seeds of ``inter_rater.json`` (cases weighted)."""
    path = out / "inter_rater.json"
    if not path.is_file():
        return {}
    per_seed = json.loads(path.read_text())
    if not per_seed:
        return {}
    acc: dict[str, dict[str, list[tuple[float, int]]]] = {}
    for rec in per_seed.values():
        for key in ("pairs", "per_rater", "vs_consensus"):
            for name, v in rec[key].items():
                acc.setdefault(key, {}).setdefault(name, []).append((v, rec["n_cases"]))
    out_: dict[str, Any] = {
        key: {k: sum(v * n for v, n in vals) / sum(n for _, n in vals) for k, vals in d.items()}
        for key, d in acc.items()
    }
    out_["n_cases"] = sum(rec["n_cases"] for rec in per_seed.values())
    out_["seeds"] = sorted(per_seed, key=int)
    return out_


def ceiling_markdown(ceiling: dict[str, Any]) -> str:
    from ada_bench.markdown import markdown_table

    if not ceiling:
        return ""
    raters = sorted(ceiling.get("per_rater", {}))
    rows = [[r, f"{100 * ceiling['per_rater'][r]:.1f}", f"{100 * ceiling['vs_consensus'][r]:.1f}"]
            for r in raters]
    pairs = [[k, f"{100 * v:.1f}"] for k, v in sorted(ceiling.get("pairs", {}).items())]
    return "\n".join([
        "## Inter-rater agreement (the ceiling)", "",
        markdown_table(["rater", "WT Dice % vs the other raters", "WT Dice % vs consensus"], rows),
        "", markdown_table(["raters", "WT Dice %"], pairs), "",
        f"Whole-tumour Dice of the raters' masks on the test cases of seeds "
        f"{', '.join(ceiling['seeds'])} ({ceiling['n_cases']} case-seeds), averaged over cases.",
        "",
    ])


def real_centre_summary(out: Path, name: str, budgets: list[int] | None) -> str:
    """``centre_<name>.md/.csv`` of a real-data benchmark whose every fold adapts to the one
    institution ``name``: the folds pooled as one centre (their test cases differ, so the
    (seed, case) pairs stay distinct); every budget present unless ``budgets``."""
    rows = [r for r in last_rows(out / "results.jsonl") if r["run"] != "source"]
    if not rows:
        raise SystemExit(f"{out}/results.jsonl: no target runs")
    present = sorted({int(r["budget"]) for r in rows if r.get("budget") and r["run"] != "lower"})
    pooled = [{**r, "fold": 0} for r in rows]
    table = group_table(
        pooled, [name], f"One adaptation to {name} (real data, folds pooled)", "centre",
        budgets=budgets or present, real=True,
    )
    folds = sorted({int(r["fold"]) for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})
    runs = sorted({len({(r["fold"], r["seed"]) for r in rows if r["run"] == run})
                   for run in {r["run"] for r in rows}})
    tests = sorted({int(r["n_test"]) for r in rows if r.get("n_test") is not None})
    pools = sorted({int(r["n_pool"]) for r in rows if r.get("n_pool") is not None})

    def counts(values: list[int]) -> str:
        return "/".join(map(str, values))

    table.notes.append(
        f"Real scans, folds pooled: {len(folds)} fold{'s' if len(folds) != 1 else ''} x "
        f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} = {counts(runs)} runs per method, "
        f"{counts(tests)} {name} test cases and a pool of {counts(pools)} per fold; each run "
        "paired with the upper bound of its own fold and seed (all of that fold's pool "
        "labelled)."
    )
    table.write(out, f"centre_{name}")
    return table.markdown()


def made_with(previous: Path) -> str:
    """The commands of the "Made with:" block of a ``summary.md`` ("" if none): a committed
    folder summarised again keeps them (its ``commands.txt`` stayed in the runs folder)."""
    if not previous.is_file():
        return ""
    text = previous.read_text()
    if "\nMade with:\n\n```\n" not in text:
        return ""
    return text.split("\nMade with:\n\n```\n", 1)[1].split("\n```", 1)[0].strip()


def summary(args: argparse.Namespace) -> str:
    """Write the protocol's tables and ``summary.md`` into ``--out``; return the summary text."""
    out = Path(args.out)
    if args.real_centre:
        if args.protocol != "centres":
            raise SystemExit("--real-centre is a summary of the centres protocol")
        return real_centre_summary(out, args.real_centre, args.budgets)
    rec = read_groups(out)
    rows = [r for r in last_rows(out / "results.jsonl") if r["task"] == args.task]
    if not rows:
        raise SystemExit(f"{out}/results.jsonl: no results of task {args.task}")
    groups = rec["groups"]
    seeds = sorted({int(r["seed"]) for r in rows})
    parts = []
    if rec["protocol"] == "open_set":
        table = open_set_table(rows, groups)
        table.write(out, "open_set")
        parts.append(table.markdown())
    elif rec["protocol"] == "centres":
        table = group_table(rows, groups, "One adaptation per centre", "centre")
        table.write(out, "centres")
        parts.append(table.markdown())
    else:
        ceiling = mean_ceiling(out)
        header, extra = revision_columns(ceiling, dict(enumerate(groups)))
        table = group_table(rows, groups, "One adaptation per rater", "rater", extra=extra,
                            extra_header=header)
        table.write(out, "raters")
        parts += [table.markdown(), ceiling_markdown(ceiling)]
    n_tests = sorted({int(r.get("n_test") or 0) for r in rows if r["run"] != "source"})
    n_pools = sorted({int(r.get("n_pool") or 0) for r in rows if r["run"] != "source"})
    record = out / "commands.txt"
    commands = record.read_text().strip() if record.is_file() else made_with(out / "summary.md")
    quick = any(str(r.get("quick")) == "True" for r in rows) or "--quick" in commands
    head = [
        f"# Protocol: {rec['protocol']} ({args.task})", "",
        f"Seeds {', '.join(map(str, seeds))} ({len(seeds)}); groups {', '.join(groups)}; "
        f"pool sizes per group {n_pools}; test cases per group {n_tests}.",
    ]
    if quick:
        head += ["", "**--quick: a reduced size for tests; these numbers mean nothing.**"]
    if commands:
        head += ["", "Made with:", "", "```", commands, "```"]
    text = "\n".join(head) + "\n\n" + "\n".join(parts)
    write_text_atomic(out / "summary.md", text)
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra_configs, extra = read_arguments(parser(), argv)
    args.out = args.out or f"runs/protocol_{args.protocol}"
    if not Path(args.out).is_absolute():
        args.out = str(Path.cwd() / args.out)
    os.chdir(REPO)
    if args.threads:
        os.environ["LIGHTNING_ADA_THREADS"] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    failed = 0
    if not args.summary:
        if not args.dry_run:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            line = "python scripts/protocols.py " + shlex.join(argv)
            with open(Path(args.out) / "commands.txt", "a") as f:
                stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                f.write(f"{line}   # started {stamp}\n")
        failed = run(args, extra, extra_configs)
        if args.dry_run:
            return 0
    print(summary(args))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
