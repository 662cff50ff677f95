"""Compare query strategies on the embedded phantom, paired by seed, resumable.

For every seed: generate the phantom with that seed, pre-train the source model once, then run
each requested *run* (a strategy config with overrides) from the same source weights and test it
on the same target test cases. One JSON line per finished run is appended to
``<out>/results.jsonl`` (never rewritten); a restarted benchmark skips finished runs.

    python scripts/benchmark.py --task glioma --seeds 0 1 2 \
        --runs lower upper random@0 random@1 mmacts entropy_only volume_only density_only \
               entropy_x_volume --out runs/bench_glioma

Then ``--summary`` prints the tables (mean +- std over seeds, paired differences, what the picks
were) from ``results.jsonl`` without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def run_specs(task: str) -> dict[str, tuple[str, list[str], bool]]:
    """Run name -> (config file, extra overrides, whether to fit)."""
    cfg = f"configs/phantom/{task}"
    ablation = {
        "entropy_only": [1, 0, 0],
        "volume_only": [0, 1, 0],
        "density_only": [0, 0, 1],
        "entropy_x_volume": [1, 1, 0],
    }
    specs: dict[str, tuple[str, list[str], bool]] = {
        "lower": (f"{cfg}/random.yaml", ["--active.budget", "0"], False),
        "upper": (f"{cfg}/upper_bound.yaml", [], True),
        "mmacts": (f"{cfg}/mmacts.yaml", [], True),
        "mmacts_one_off": (
            f"{cfg}/mmacts.yaml", ["--active.strategy_args", '{"schedule": "one_off"}'], True
        ),
        "mmacts_modality_masks": (f"{cfg}/mmacts.yaml", ["--active.use_modality_masks", "true"], True),
        "entropy": (f"{cfg}/mmacts.yaml", ["--active.strategy", "entropy", "--active.strategy_args", "{}"], True),
    }
    for name, exps in ablation.items():
        specs[name] = (f"{cfg}/mmacts.yaml", ["--active.strategy_args", json.dumps({"exponents": exps})], True)
    return specs


def parse_run(name: str, specs: dict[str, tuple[str, list[str], bool]], task: str) -> tuple[str, list[str], bool]:
    if name.startswith("random@"):
        draw = int(name.split("@")[1])
        return f"configs/phantom/{task}/random.yaml", ["--active.seed", str(1000 + draw)], True
    if name not in specs:
        raise SystemExit(f"unknown run {name!r}; known: {sorted(specs)} and random@<draw>")
    return specs[name]


def finished(path: Path) -> set[tuple[str, str, int]]:
    if not path.exists():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["task"], r["run"], r["seed"]) for r in rows}


def append_line(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line in a single write (a killed run leaves no partial line behind)."""
    with path.open("a") as f:
        f.write(json.dumps(row, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_all(args: argparse.Namespace) -> None:
    from lightning_ada.runner import run_experiment

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = finished(results)
    specs = run_specs(args.task)
    for seed in args.seeds:
        sdir = out / f"seed{seed}"
        data = [
            "--seed_everything", str(seed),
            "--data.root", f"data/phantom/{args.task}_32_seed{seed}",
            "--data.phantom", json.dumps({"task": args.task, "size": 32, "seed": seed, "progress": False}),
            "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false",
        ]
        ckpt = sdir / "source" / "checkpoints" / "last.ckpt"
        if (args.task, "source", seed) not in done or not ckpt.exists():
            print(f"[seed {seed}] source pre-training", flush=True)
            res = run_experiment(
                [f"configs/phantom/{args.task}/source.yaml"],
                [*data, "--trainer.default_root_dir", str(sdir / "source")],
            )
            append_line(results, row(args.task, "source", seed, res))
        for name in args.runs:
            if (args.task, name, seed) in done:
                continue
            config, extra, fit = parse_run(name, specs, args.task)
            print(f"[seed {seed}] {name}", flush=True)
            res = run_experiment(
                [config],
                [
                    *data, *extra,
                    "--model.source_checkpoint", str(ckpt),
                    "--trainer.default_root_dir", str(sdir / name.replace("@", "_")),
                ],
                fit=fit,
            )
            append_line(results, row(args.task, name, seed, res))


def row(task: str, run: str, seed: int, res: dict[str, Any]) -> dict[str, Any]:
    return {
        "task": task,
        "run": run,
        "seed": seed,
        "test": res.get("test", {}),
        "per_case": res.get("per_case", []),
        "queries": [
            {k: q.get(k) for k in ("round", "epoch", "case_id", "score", "factors", "modality",
                                   "election_dice", "case_meta", "timings", "scoring_seconds")}
            for q in res.get("query_log", [])
        ],
        "fit_seconds": res.get("fit_seconds"),
        "seconds": res.get("seconds"),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def summary(out: Path) -> str:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    by: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        key = "random" if r["run"].startswith("random@") else r["run"]
        by[key][r["seed"]].append(r)
    regions = sorted({k[5:] for r in rows for k in r["test"] if k.startswith("dice_") and k != "dice_mean"})
    lines = ["| run | n | " + " | ".join(f"Dice {g}" for g in regions) + " | Dice mean | per seed |",
             "|" + "---|" * (len(regions) + 4)]

    def seed_mean(runs: list[dict[str, Any]], key: str) -> float:
        return statistics.fmean(r["test"][key] for r in runs)

    order = ["source", "lower", "random", "mmacts", "upper"]
    for name in sorted(by, key=lambda n: (order.index(n) if n in order else 3.5, n)):
        seeds = by[name]
        cells = []
        for key in [f"dice_{g}" for g in regions] + ["dice_mean"]:
            vals = [seed_mean(v, key) for v in seeds.values()]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.fmean(vals):.3f} ± {sd:.3f}")
        per_seed = ", ".join(
            f"s{s}: " + "/".join(f"{r['test']['dice_mean']:.3f}" for r in v) for s, v in sorted(seeds.items())
        )
        n = sum(len(v) for v in seeds.values())
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + f" | {per_seed} |")

    text = "\n".join(lines)
    if "random" in by:
        diffs = ["", "Paired by seed (run minus the mean of the random draws of that seed), Dice mean:", ""]
        for name in sorted(by):
            if name in ("random", "source"):
                continue
            d = [seed_mean(by[name][s], "dice_mean") - seed_mean(by["random"][s], "dice_mean")
                 for s in by[name] if s in by["random"]]
            if d:
                diffs.append(f"- {name}: mean {statistics.fmean(d):+.3f}; per seed "
                             + ", ".join(f"{x:+.3f}" for x in d))
        text += "\n" + "\n".join(diffs)
    picks = ["", "What the picks were (all seeds): scanner counts, true tumour voxels, predicted "
             "foreground voxels, degraded modality, elected modality:", ""]
    for name, seeds in sorted(by.items()):
        qs = [q for runs in seeds.values() for r in runs for q in r["queries"]]
        if not qs:
            continue
        scanners: dict[str, int] = defaultdict(int)
        for q in qs:
            scanners[str((q.get("case_meta") or {}).get("centre"))] += 1
        true_v = [((q.get("case_meta") or {}).get("tumour_voxels") or {}).get("total", float("nan")) for q in qs]
        pred_v = [(q.get("factors") or {}).get("volume") for q in qs]
        degraded = sum(1 for q in qs if (q.get("case_meta") or {}).get("degraded_modality"))
        mods: dict[str, int] = defaultdict(int)
        for q in qs:
            mods[str(q.get("modality"))] += 1
        pv = [v for v in pred_v if v is not None]
        picks.append(
            f"- {name}: {len(qs)} picks; scanners {dict(scanners)}; true voxels median "
            f"{statistics.median(true_v):.0f}"
            + (f"; predicted voxels median {statistics.median(pv):.0f}" if pv else "")
            + f"; degraded {degraded}; elected {dict(mods)}"
        )
    return text + "\n" + "\n".join(picks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", default="glioma", choices=["glioma", "npc"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", nargs="+", default=["lower", "upper", "random@0", "random@1", "mmacts"])
    p.add_argument("--out", default="runs/bench_glioma")
    p.add_argument("--summary", action="store_true", help="only print the tables of --out")
    args = p.parse_args()
    os.chdir(REPO)
    if not args.summary:
        run_all(args)
    text = summary(Path(args.out))
    print(text)
    (Path(args.out) / "summary.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
