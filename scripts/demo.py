"""The demo: adapt a source model to a new "hospital" with a few actively chosen labels.

Runs one draw of the power benchmark's protocol on the embedded phantom, with the recipe
calibrated on seeds no evaluation uses (``configs/power/<task>``, ``benchmarks/calibration.md``):
generate the phantom of the seed, pre-train on the source centre, measure the target lower
bound (no adaptation), adapt once per strategy (labels added one every stride; the model is
tested after 1, 2, 3 and 5 labels), measure the upper bound (every pool case labelled). Then it
prints, next to its own single run, the mean and 95 % CI over the evaluation seeds of the very
same rows in the committed power results (``benchmarks/power/results.jsonl``), and what one run
can and cannot show. Run from anywhere:

    python scripts/demo.py [--task glioma|npc] [--strategies random mmacts ...] [--seed 10]

The default seed is the first evaluation seed, so the demo's run is one of the committed runs
made again (equal up to floating-point differences between machines). Every run writes into
``<out>`` (default ``runs/demo_<task>``) through the benchmark harness (``scripts/benchmark.py
--power``); a second invocation reuses the finished runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
#: the labels at which the demo's table compares runs
LABELS = 3
#: the committed results of the power benchmark (the evaluation seeds)
COMMITTED = REPO / "benchmarks" / "power" / "results.jsonl"


def fmt(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``)."""
    s = int(round(max(seconds, 0.0)))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def parse_args() -> argparse.Namespace:
    from ada_bench.seeds import seed_ranges

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", default="glioma", choices=["glioma", "npc"])
    p.add_argument("--strategies", nargs="+", default=["random", "mmacts"],
                   help="registered whole-case strategies (run names of the benchmark)")
    p.add_argument("--seed", type=int, default=seed_ranges()["evaluation"][0],
                   help="the phantom seed (default: the first evaluation seed)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/demo_<task>)")
    p.add_argument("--results", type=Path, default=COMMITTED,
                   help="the committed results to compare with")
    harness = p.add_argument_group("passed to the benchmark harness (scripts/benchmark.py)")
    harness.add_argument("--config-dir", help="configs of the task (default configs/power/<task>)")
    harness.add_argument("--data-base", help="where the phantoms go (default data/phantom)")
    harness.add_argument("--budgets", nargs="+", help="labels the model is tested at (1 2 3 5)")
    harness.add_argument("--n-test", help="target test cases (default the config's)")
    harness.add_argument("--n-pool", help="target pool cases (default the config's)")
    p.add_argument("overrides", nargs="*", help="after --: extra --key value for every run")
    args = p.parse_args()
    from lightning_ada.active.strategies import REGISTRY, Strategy

    known = sorted(n for n, c in REGISTRY.items() if c.case_regions is Strategy.case_regions)
    unknown = [s for s in args.strategies if s not in known]
    if unknown:
        p.error(f"unknown strategy {', '.join(unknown)}; choose from: {' '.join(known)}")
    return args


def rows_of(path: Path, task: str) -> list[dict[str, Any]]:
    """The power benchmark's rows of ``task`` in ``path``, curves expanded to one row a budget."""
    from ada_bench.results import expand_curves, read_rows

    return [r for r in expand_curves(read_rows(path)) if r["task"] == task] if path.is_file() else []


def values(rows: list[dict[str, Any]], task: str, run: str, budget: int | None) -> dict[int, float]:
    """``{seed: mean Dice (%)}`` of ``run`` at ``budget`` (None: a bound)."""
    from ada_bench.stats import seed_values

    out = {}
    for seed, by_budget in seed_values(rows, task, run).items():
        v = by_budget.get(budget, by_budget.get(None))
        if v is not None:
            out[seed] = 100 * v
    return out


def source_values(rows: list[dict[str, Any]]) -> dict[int, float]:
    """``{seed: mean Dice (%)}`` of the source model on its own test cases."""
    out = {}
    for r in rows:
        if r.get("run") == "source" and r.get("test"):
            out[int(r["seed"])] = 100 * float(r["test"]["dice_mean"])
    return out


def committed_cell(by_seed: dict[int, float]) -> str:
    """``mean [95 % CI], n seeds`` over the committed seeds (BCa bootstrap)."""
    from ada_bench.stats import bootstrap_ci

    if len(by_seed) < 2:
        return "not committed" if not by_seed else f"{next(iter(by_seed.values())):.1f} (1 seed)"
    vals = list(by_seed.values())
    lo, hi = bootstrap_ci(vals)
    if math.isnan(lo):  # too few seeds for an interval (ada_bench.stats.MIN_CI_N)
        return f"{statistics.fmean(vals):.1f} (no CI), {len(vals)} seeds"
    return f"{statistics.fmean(vals):.1f} [{lo:.1f}, {hi:.1f}], {len(vals)} seeds"


def report(args: argparse.Namespace, out: Path, wall: float) -> str:
    """The table: this run vs the committed seeds, the queries, what one run shows."""
    mine, committed = rows_of(out / "results.jsonl", args.task), rows_of(args.results, args.task)
    table = [
        ("source model, source test cases", source_values(mine), source_values(committed)),
        ("target lower bound (no labels)", values(mine, args.task, "lower", None),
         values(committed, args.task, "lower", None)),
        *[(f"target, {LABELS} labels by {s}", values(mine, args.task, s, LABELS),
           values(committed, args.task, s, LABELS)) for s in args.strategies],
        ("target upper bound (every pool case)", values(mine, args.task, "upper", None),
         values(committed, args.task, "upper", None)),
    ]
    lines = [f"| run | this run (seed {args.seed}) | committed: mean [95 % CI] |", "|---|---|---|"]
    for name, this, them in table:
        here = f"{this[args.seed]:.1f}" if args.seed in this else "–"
        lines.append(f"| {name} | {here} | {committed_cell(them)} |")
    text = [f"Mean Dice (%) over the task's regions ({args.task} phantom, power recipe).", "",
            *lines, ""]
    lower = values(committed, args.task, "lower", None)
    for s in args.strategies:
        adapted = values(committed, args.task, s, LABELS)
        both = sorted(lower.keys() & adapted.keys())
        if both:
            gain = statistics.fmean(adapted[k] - lower[k] for k in both)
            text.append(f"committed: {s} at {LABELS} labels vs the lower bound, mean over "
                        f"{len(both)} seeds: {gain:+.1f} points")
    text += [
        "",
        "What one run can show: that the pipeline runs end to end and roughly where each row "
        "falls. What it cannot show: which strategy is better. One run is one phantom draw and "
        "one training run; the committed differences between strategies have 95 % CIs of "
        "several points over 10 seeds (benchmarks/archive/power_seeds_0-9/power.md), larger than "
        "most of them.",
        "",
        f"wall time: {fmt(wall)} on this machine ({os.cpu_count()} CPUs, 1 torch thread a run)",
    ]
    for r in (x for x in mine if x.get("run") in args.strategies and x.get("queries")):
        if r.get("budget") not in (None, 5):
            continue
        text.append(f"\nqueried by {r['run']}:")
        for q in r["queries"][:LABELS]:
            when = "before training" if q.get("epoch", -1) < 0 else f"after epoch {q['epoch'] + 1}"
            text.append(f"  {q['case_id']} ({when}), score {q.get('score', float('nan')):.3g}")
    return "\n".join(text)


def main() -> int:
    args = parse_args()
    os.chdir(REPO)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    out = args.out or Path(f"runs/demo_{args.task}")
    import benchmark  # scripts/benchmark.py: the harness's command line

    t0 = time.perf_counter()
    passed = [item for key in ("config_dir", "data_base", "n_test", "n_pool")
              if getattr(args, key) for item in (f"--{key.replace('_', '-')}", str(getattr(args, key)))]
    if args.budgets:
        passed += ["--budgets", *args.budgets]
    code = benchmark.main([
        "--power", "--tasks", args.task, "--seeds", str(args.seed),
        "--strategies", *args.strategies, "--out", str(out), "--no-report", "--threads", "1",
        *passed, *(["--", *args.overrides] if args.overrides else []),
    ])
    if code:
        print(f"error: some runs failed (see {out}/jobs)", file=sys.stderr)
        return code
    wall = time.perf_counter() - t0
    text = report(args, out, wall)
    print("\n" + text)
    (out / "demo_results.md").write_text(text + "\n")
    (out / "demo_results.json").write_text(json.dumps(
        {"wall_seconds": wall, "command": sys.argv, "seed": args.seed, "task": args.task,
         "table": text.split("\n\n")[1]}, indent=2))
    print(f"\nresults: {out / 'demo_results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
