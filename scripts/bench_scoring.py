"""Cost of one mmActS scoring round vs pool size: time split and memory.

Each pool size runs in its own process (so peak memory is not shared between sizes). In that
process the phantom pool is generated and cached first; then one ``MMActSStrategy.rank`` round
(sliding-window inference, streamed statistics, density) runs while a sampler thread records the
resident set size. Reported: seconds of inference / statistics / density, and the RSS rise
during scoring above the level after the data were cached (should not grow with the pool:
probability maps are streamed, one case at a time).

    python scripts/bench_scoring.py --pools 20 40 --ckpt runs/phantom_glioma/source/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one(pool: int, ckpt: str, size: int, out: Path) -> dict[str, float]:
    from lightning_ada.active.strategies import QueryContext, build_strategy
    from lightning_ada.data.datamodule import ActiveDataModule
    from lightning_ada.models.module import SegmentationModule

    root = out / f"phantom_pool{pool}"
    dm = ActiveDataModule(
        root=str(root),
        phantom={"task": "glioma", "size": size, "n_source": 1, "n_source_test": 1,
                 "n_pool": pool, "n_test": 1, "seed": 7, "progress": False},
    )
    dm.setup("fit")
    model = SegmentationModule(source_checkpoint=ckpt, roi_size=[size] * 3)
    strategy = build_strategy("mmacts", progress=False)
    ctx = QueryContext(
        unlabeled=dm.unlabeled_ids(), pool=dm.pool.case_ids, labeled=[], image=dm.image,
        predict=lambda img: model.predict_case(img, with_embedding=True),
        modalities=list(dm.hparams.modalities), regions=model.regions,
        run_dir=None,  # no density cache: measure the computation
    )
    import gc

    gc.collect()
    base = rss_mb()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    strategy.rank(ctx)
    total = time.perf_counter() - t0
    stop.set()
    thread.join()
    return {"pool": pool, "total_s": total, **{f"{k}_s": v for k, v in strategy.timings.items()},
            "rss_before_mb": base, "rss_peak_mb": peak[0], "rss_rise_mb": peak[0] - base}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pools", type=int, nargs="+", default=[20, 40])
    p.add_argument("--ckpt", default="runs/phantom_glioma/source/checkpoints/last.ckpt")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--out", default="runs/bench_scoring")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.one is not None:
        print(json.dumps(one(args.one, str(REPO / args.ckpt), args.size, out)))
        return
    rows = []
    for n in args.pools:
        res = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--ckpt", args.ckpt, "--size", str(args.size),
             "--out", args.out],
            check=True, capture_output=True, text=True, cwd=REPO,
        )
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    lines = ["| pool | total s | inference s | statistics s | density s | RSS before MB | RSS peak MB | rise MB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['pool']} | {r['total_s']:.2f} | {r['inference_s']:.2f} | {r['statistics_s']:.2f} | "
            f"{r['density_s']:.2f} | {r['rss_before_mb']:.0f} | {r['rss_peak_mb']:.0f} | {r['rss_rise_mb']:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    (out / "scoring.md").write_text(
        f"`python scripts/bench_scoring.py --pools {' '.join(map(str, args.pools))}`\n\n{table}\n"
    )


if __name__ == "__main__":
    main()
