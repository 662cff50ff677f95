"""The noise floor of a benchmark: the same picks retrained under other training seeds.

For every finished run of ``--methods`` in a benchmark's ``results.jsonl`` (the power profile's
curve runs and one-off runs alike), the run is made again ``--train-seeds`` times with its own
config (``<run_dir>/config.yaml``), its picks replayed in the same rounds
(``--active.strategy replay``, the query log's case order and the run's schedule) and only the
training seed changed (``seed_everything``: the sampling and augmentation of every epoch). The
spread of Dice over these retrainings (the original included) is what training noise alone
moves a result by, with the draw held fixed; a difference between two strategies of that size
is not resolved by one training run per draw.

    python scripts/noise_floor.py --results runs/bench_power/results.jsonl \\
        --methods random maxherding --train-seeds 2 --out runs/noise_power

Each finished retraining is one JSON line in ``<out>/results.jsonl`` (a restarted invocation
skips it); the table (per task, method and budget: the mean over draws of the standard
deviation over training seeds, and its maximum) goes to stdout and ``<out>/noise_floor.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--results", required=True, help="the benchmark's results.jsonl")
    p.add_argument("--methods", nargs="+", required=True, help="run names to retrain")
    p.add_argument("--tasks", nargs="+", default=None, help="default: every task in the results")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: every seed")
    p.add_argument("--train-seeds", type=int, default=2, help="retrainings per run (default 2)")
    p.add_argument("--out", default="runs/noise_floor")
    p.add_argument("--threads", default="1", help="torch threads (LIGHTNING_ADA_THREADS)")
    p.add_argument("--summary", action="store_true", help="only print the table of --out")
    return p


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def points(row: dict[str, Any]) -> list[list[float]]:
    """``[[budget, mean Dice], ...]`` of a results row (its curve points, or its one budget)."""
    if row.get("curve"):
        return [[int(p["labels"]), float(p["test"]["dice_mean"])] for p in row["curve"]]
    return [[int(row["budget"]), float(row["test"]["dice_mean"])]]


def train_seed(seed: int, t: int) -> int:
    """The training seed of retraining ``t`` (1-based) of a run of phantom seed ``seed``."""
    return seed * 100003 + t


def retrain(row: dict[str, Any], t: int, out: Path) -> dict[str, Any]:
    """Make ``row``'s run again with its picks replayed and training seed ``train_seed(., t)``."""
    from ada_bench.curve import snapshot_factory
    from ada_bench.runner import compose, run_experiment

    config_file = Path(row["run_dir"]) / "config.yaml"
    if not config_file.is_file():
        raise SystemExit(f"error: {config_file}: the run's config is missing (was it run here?)")
    folder = out / row["task"] / f"seed{row['seed']}" / f"{row['run']}_b{row['budget']}_t{t}"
    strategy = {"class_path": "lightning_ada.active.strategies.replay.ReplayStrategy",
                "init_args": {"order": list(row["queried_cases"]),
                              "schedule": row.get("schedule") or "sequential"}}
    config = compose([config_file], {
        "seed_everything": train_seed(int(row["seed"]), t),
        "active.strategy": strategy,
        "trainer.default_root_dir": str(folder),
        "trainer.logger": False,
        "ckpt_path": None,
    })
    config.pop("ckpt_path", None)
    curve = bool(row.get("curve"))
    res = run_experiment(config, snapshots=snapshot_factory if curve else None)
    replayed = [q["case_id"] for q in res.get("query_log", []) if q.get("case_id")]
    if replayed != list(row["queried_cases"]):
        raise SystemExit(f"error: {folder}: replayed picks {replayed} differ from "
                         f"{row['queried_cases']}")
    fake = {"budget": row["budget"], "test": res["test"], "curve": res.get("curve")}
    return {"task": row["task"], "seed": row["seed"], "run": row["run"], "budget": row["budget"],
            "train_seed": t, "points": points(fake), "original": points(row),
            "seconds": res.get("seconds")}


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done_file = out / "results.jsonl"
    done = {(r["task"], r["seed"], r["run"], r["budget"], r["train_seed"]) for r in _rows(done_file)}
    rows = [r for r in _rows(Path(args.results))
            if r["run"] in args.methods and r.get("queried_cases")
            and (args.tasks is None or r["task"] in args.tasks)
            and (args.seeds is None or r["seed"] in args.seeds)]
    if not rows:
        raise SystemExit(f"error: no finished run of {args.methods} in {args.results}")
    for row in sorted(rows, key=lambda r: (r["task"], r["seed"], r["run"], r["budget"])):
        for t in range(1, args.train_seeds + 1):
            key = (row["task"], row["seed"], row["run"], row["budget"], t)
            if key in done:
                continue
            print(f"[{row['task']} seed {row['seed']}] {row['run']} b{row['budget']} "
                  f"training seed {t}", flush=True)
            result = retrain(row, t, out)
            with done_file.open("a") as f:
                f.write(json.dumps(result) + "\n")


def summary(args: argparse.Namespace) -> str:
    """Per task, method and budget: SD of Dice (points) over training seeds, per draw."""
    spread: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    per_draw: dict[tuple[str, int, str, int], dict[int, float]] = defaultdict(dict)
    for r in _rows(Path(args.out) / "results.jsonl"):
        original = {int(b): v for b, v in r["original"]}
        for b, v in r["points"]:
            key = (r["task"], int(r["seed"]), r["run"], int(b))
            if int(b) in original:
                per_draw[key][0] = original[int(b)]
            per_draw[key][int(r["train_seed"])] = v
    for (task, _seed, run_name, b), values in per_draw.items():
        if len(values) >= 2:
            spread[(task, run_name, b)].append(100 * statistics.stdev(values.values()))
    lines = [
        "# Noise floor: the same picks retrained under other training seeds",
        "",
        f"Retrainings per run: {args.train_seeds} (plus the original). Dice = mean over the "
        "task's regions, in points (%). SD over training seeds with the picks held fixed, per "
        "draw (phantom seed); its mean and maximum over the draws.",
        "",
        "| task | run | budget | draws | mean SD | max SD |",
        "|---|---|---|---|---|---|",
    ]
    for (task, run_name, b), sds in sorted(spread.items()):
        lines.append(f"| {task} | {run_name} | {b} | {len(sds)} | {statistics.fmean(sds):.2f} | "
                     f"{max(sds):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.chdir(REPO)
    sys.path.insert(0, str(REPO / "scripts"))
    os.environ["LIGHTNING_ADA_THREADS"] = str(args.threads)
    if not args.summary:
        run(args)
    text = summary(args)
    (Path(args.out) / "noise_floor.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
