"""What a region-level scoring round costs next to a case-level round of the same pool.

One query round of each setting on the power profile's pool (the model and pool of one
calibration seed: 30 cases at 24^3), each in a fresh process so that its peak RSS is its own:
a case-level rule (``entropy``, ``mmacts``, ``random``, ``fg_random``) and its region-level
forms on the ``slices`` and ``patch`` units (``entropy_region``, ``mmacts_region``,
``random_region``; ``clasp_pe`` beside ``entropy``, ``fg_random_region`` beside ``fg_random``,
on boxes). Both kinds run the same inference (one sliding-window pass per case); the region rule adds the
cutting of every case into candidate regions and their scores. Settings alternate for
``--repeats`` rounds, so a drift of the machine's speed hits both; the ratio is the median of the
paired ratios.

    python scripts/bench_region_round.py --source runs/calibrate/glioma/seed100/source_<tag>/\\
        checkpoints/last.ckpt --root data/phantom/power_glioma_24_seed100_t50 \\
        --out benchmarks/region_round.md

Timing is only meaningful with one torch thread and at most one other single-thread job running.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SLICES = (["--active.unit", "slices", "--active.unit.k", "3"], "slices (k=3)")
PATCH = (["--active.unit", "patch", "--active.unit.size", "8"], "patch (8^3)")
#: (case-level rule, its region-level form, the units the region form is timed on): each region
#: rule of the equal-cost protocol beside the case rule whose inference it shares
PAIRS = (("entropy", "entropy_region", (SLICES, PATCH)), ("mmacts", "mmacts_region", (SLICES, PATCH)),
         ("random", "random_region", (SLICES, PATCH)), ("entropy", "clasp_pe", (PATCH,)),
         ("fg_random", "fg_random_region", (PATCH,)))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source", required=True, help="a power-profile source checkpoint")
    p.add_argument("--root", required=True, help="the phantom folder of that seed")
    p.add_argument("--task", default="glioma")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="markdown table (default: stdout only)")
    p.add_argument("--one", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def one_round(args: argparse.Namespace, strategy: str, unit: list[str]) -> dict[str, float]:
    """Time one scoring round of ``strategy`` (this process); returns seconds, candidates, RSS."""
    from lightning_ada.active.query_round import query_context
    from lightning_ada.main import main

    cfg = REPO / "configs" / "power" / args.task / "target.yaml"
    cli = main(["-c", str(cfg), "--data.root", args.root, "--data.phantom", "null",
                "--model.source_checkpoint", args.source, "--active.strategy", strategy,
                "--active.budget", "1", "--trainer.logger", "false",
                "--trainer.enable_progress_bar", "false", *unit], run=False)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    trainer.limit_val_batches = 0  # validate only connects the model and the data
    trainer.validate(model, datamodule=dm, verbose=False)
    callback = next(c for c in trainer.callbacks if type(c).__name__ == "ActiveQueryCallback")
    callback.prepare(trainer, model)
    pool = callback.pool
    region = callback.strategy.region_level
    with tempfile.TemporaryDirectory() as cache:
        ctx = query_context(pool, model, 0, 0, Path(cache), True,
                            unit=callback.unit if region else None)
        return _time(callback, ctx, trainer, pool, region)


def _time(callback, ctx, trainer, pool, region) -> dict[str, float]:  # noqa: ANN001
    from lightning_ada.active.query_round import query_round

    scan = callback._scan_voxels
    t0 = time.perf_counter()
    result = query_round(callback.strategy, ctx, 1, trainer, pool,
                         allowance=int(scan) if region and callback.by_scans else None)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "candidates": float(len(result.ranked)),
            "inference": float(callback.strategy.timings.get("inference", float("nan"))),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.one:
        strategy, *unit = args.one
        print(json.dumps(one_round(args, strategy, unit)))
        return 0
    cases = list(dict.fromkeys(case for case, _, _ in PAIRS))
    settings = [(case, []) for case in cases] + [
        (region, unit) for _, region, units in PAIRS for unit, _ in units]
    times: dict[tuple[str, str], list[dict[str, float]]] = {}
    base = [sys.executable, __file__, "--source", args.source, "--root", args.root,
            "--task", args.task, "--one"]
    for _ in range(args.repeats):
        for strategy, unit in settings:
            done = subprocess.run([*base, strategy, *unit], capture_output=True, text=True,
                                  check=True)
            key = (strategy, " ".join(unit))
            times.setdefault(key, []).append(json.loads(done.stdout.strip().splitlines()[-1]))
    lines = [
        "# A region-level scoring round vs a case-level round of the same pool",
        "",
        f"Power profile ({args.task}, 30 pool cases at 24^3), one round each, every round in a "
        f"fresh process, {args.repeats} alternating repeats; median seconds; ratio = median of "
        "the paired ratios (region / case, same inference); peak RSS of the round's process.",
        "",
        "| case rule | region rule | unit | case s | region s | ratio | candidates | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, region, units in PAIRS:
        c = times[(case, "")]
        for unit, name in units:
            r = times[(region, " ".join(unit))]
            ratio = statistics.median(b["seconds"] / a["seconds"] for a, b in zip(c, r))
            lines.append(
                f"| {case} | {region} | {name} | {statistics.median(x['seconds'] for x in c):.2f} | "
                f"{statistics.median(x['seconds'] for x in r):.2f} | {ratio:.2f} | "
                f"{int(r[0]['candidates'])} | {max(x['peak_rss_mb'] for x in r):.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
