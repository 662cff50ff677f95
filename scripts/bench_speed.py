"""Speed and memory benchmarks, measured side by side in one invocation on one machine.

Parts (``--parts``, default all):

* ``query``   (a, d) one mmActS scoring round over pools of ``--pools`` phantom cases: seconds
  of inference / statistics / density and the RSS rise during the round (should stay flat with
  the pool: probability maps are streamed);
* ``density`` (a) the density's pairwise case distances by quantile summaries vs POT's exact
  1-D W1 on the same PCA scores (``--density-pools``): time ratio and max relative error;
* ``export``  (b) the official pipeline's way (every probability map to ``.npz``, then all read
  back and scored) vs ours (streamed): time and RSS rise (``--export-pools``);
* ``lightning`` (c) training voxels/s of ``SegmentationModule`` under ``Trainer`` vs a plain
  PyTorch loop with the same net, data and batch (target ratio >= 0.95);
* ``threads`` one scoring round (first of ``--pools``) with 1 torch thread and with one per CPU:
  on a CPU shared with other jobs, more threads can be much slower.

Every measurement that reports memory runs in its own process (peak RSS is not shared). Each
part writes ``benchmarks/<part>.md`` (table, the command, the machine) and the raw numbers to
``benchmarks/speed.json``.

    python scripts/bench_speed.py                                  # defaults, small for a CPU
    python scripts/bench_speed.py --parts query --pools 20 40 80 160 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

PARTS = ("query", "density", "export", "lightning", "threads")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument(
        "--pools", type=int, nargs="+", default=[20, 40, 80, 160], help="query: pool sizes"
    )
    p.add_argument(
        "--density-pools", type=int, nargs="+", default=[20, 40, 80], help="density: pool sizes"
    )
    p.add_argument(
        "--export-pools", type=int, nargs="+", default=[20, 40, 80], help="export: pool sizes"
    )
    p.add_argument("--size", type=int, default=32, help="phantom edge length in voxels")
    p.add_argument(
        "--ckpt",
        default=None,
        help="model weights (default: random; timing does not depend on them)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads per measurement")
    p.add_argument("--steps", type=int, default=30, help="lightning: training steps per repeat")
    p.add_argument("--batch", type=int, default=2, help="lightning: batch size")
    p.add_argument("--repeats", type=int, default=3, help="lightning: interleaved repeats")
    p.add_argument("--work", default="runs/bench_speed", help="phantom and scratch folder")
    p.add_argument("--out", default="benchmarks", help="where the .md files go")
    p.add_argument("--child", nargs=2, metavar=("PART", "POOL"), help=argparse.SUPPRESS)
    return p


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this process (``--child PART POOL``)."""
    import torch

    torch.set_num_threads(args.threads)
    part, pool = args.child[0], int(args.child[1])
    work = REPO / args.work
    n_generated = max(args.pools + args.density_pools + args.export_pools)
    root = work / f"phantom_glioma_{args.size}_n{n_generated}"
    if part == "query":
        from ada_bench.speed_query import scoring_round

        return scoring_round(root, pool, args.size, n_generated, args.ckpt)
    if part == "density":
        from ada_bench.speed_query import density_w1

        return density_w1(root, pool, args.size, n_generated)
    if part in ("export-streamed", "export-official"):
        from ada_bench.speed_export import exported, streamed

        if part == "export-streamed":
            return streamed(root, pool, args.size, n_generated)
        return exported(root, pool, args.size, n_generated, work / "npz_export")
    if part == "lightning":
        from ada_bench.speed_lightning import compare

        return compare(args.size, args.batch, args.steps, repeats=args.repeats)
    raise SystemExit(f"unknown part {part}")


def spawn(
    args: argparse.Namespace, part: str, pool: int, threads: int | None = None
) -> dict[str, Any]:
    threads = threads or args.threads
    cmd = [
        sys.executable,
        __file__,
        "--child",
        part,
        str(pool),
        "--size",
        str(args.size),
        "--threads",
        str(threads),
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--repeats",
        str(args.repeats),
        "--work",
        args.work,
        "--pools",
        *map(str, args.pools),
        "--density-pools",
        *map(str, args.density_pools),
        "--export-pools",
        *map(str, args.export_pools),
    ]
    if args.ckpt:
        cmd += ["--ckpt", args.ckpt]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{part} (pool {pool}) failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def machine() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    import torch

    return (
        f"{platform.node()}: {os.cpu_count()} CPU(s), "
        f"{platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}; load average at start "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (shared machine: other jobs were running)"
    )


def table(header: list[str], rows: list[list[str]]) -> str:
    from ada_bench.markdown import markdown_table

    return markdown_table(header, rows)


def write(out: Path, name: str, title: str, body: str, command: str, context: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.md"
    path.write_text(
        f"# {title}\n\n```\n{command}\n```\n\n{context}, {time.strftime('%Y-%m-%d %H:%M')}.\n\n"
        f"{body}\n"
    )
    return path


def run_query(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    rows = [spawn(args, "query", n) for n in args.pools]
    body = table(
        [
            "pool",
            "total s",
            "inference s",
            "statistics s",
            "density s",
            "s / case",
            "RSS before MiB",
            "RSS peak MiB",
            "RSS rise MiB",
        ],
        [
            [
                str(r["pool"]),
                f"{r['total_s']:.2f}",
                f"{r['inference_s']:.2f}",
                f"{r['statistics_s']:.3f}",
                f"{r['density_s']:.2f}",
                f"{r['total_s'] / r['pool']:.3f}",
                f"{r['rss_before_mb']:.0f}",
                f"{r['rss_peak_mb']:.0f}",
                f"{r['rss_rise_mb']:.1f}",
            ]
            for r in rows
        ],
    )
    rises = [r["rss_rise_mb"] for r in rows]
    body += (
        "\n\n(d) RSS rise during the round vs pool size: "
        f"{', '.join(f'{x:.1f}' for x in rises)} MiB "
        f"for pools {', '.join(map(str, args.pools))} (the data themselves are cached before the "
        "round and counted in 'RSS before')."
    )
    return body, rows


def run_density(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    rows = [spawn(args, "density", n) for n in args.density_pools]
    body = table(
        [
            "pool",
            "pairs",
            "scores / modality",
            "PCA s (shared)",
            "quantile + cdist s",
            "POT exact s",
            "distance time ratio (exact / ours)",
            "max rel. error",
            "mean rel. error",
        ],
        [
            [
                str(r["pool"]),
                str(r["pairs"]),
                str(r["n_scores"]),
                f"{r['pca_s']:.2f}",
                f"{r['quantile_s']:.3f}",
                f"{r['exact_s']:.2f}",
                f"{r['distance_ratio']:.0f}x",
                f"{r['max_rel_err']:.2e}",
                f"{r['mean_rel_err']:.2e}",
            ]
            for r in rows
        ],
    )
    return body, rows


def run_export(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    rows = []
    for n in args.export_pools:
        s, o = spawn(args, "export-streamed", n), spawn(args, "export-official", n)
        rows.append({"pool": n, "streamed": s, "official": o})
    body = table(
        [
            "pool",
            "streamed s",
            "official s (export + read/score)",
            "time ratio (official / ours)",
            "streamed RSS rise MiB",
            "official RSS rise MiB",
            "npz on disk MiB",
            "same scores",
        ],
        [
            [
                str(r["pool"]),
                f"{r['streamed']['total_s']:.2f}",
                (
                    f"{r['official']['total_s']:.2f} ({r['official']['export_s']:.2f} + "
                    f"{r['official']['read_score_s']:.2f})"
                ),
                f"{r['official']['total_s'] / r['streamed']['total_s']:.2f}x",
                f"{r['streamed']['rss_rise_mb']:.1f}",
                f"{r['official']['rss_rise_mb']:.1f}",
                f"{r['official']['disk_mb']:.1f}",
                str(
                    abs(r["official"]["entropy_sum"] - r["streamed"]["entropy_sum"])
                    < 1e-6 * r["pool"]
                ),
            ]
            for r in rows
        ],
    )
    body += (
        "\n\nBoth include the sliding-window inference of every case; 'official' writes each "
        "float32 probability map with np.savez_compressed and reads them all back before "
        "reducing them (mean entropy, foreground volume), as policy/sort.py does after an "
        "nnU-Net export."
    )
    return body, rows


def run_lightning(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    r = spawn(args, "lightning", 0)
    body = table(
        [
            "patch",
            "batch",
            "steps (warm-up)",
            "plain loop voxels/s",
            "Trainer voxels/s",
            "ratio Trainer / plain",
            "Trainer time outside the measured steps s",
        ],
        [
            [
                f"{r['size']}^3",
                str(r["batch"]),
                f"{r['steps']} ({r['warmup']})",
                f"{r['plain_vox_s']:.3g}",
                f"{r['trainer_vox_s']:.3g}",
                f"{r['ratio']:.3f}",
                f"{r['trainer_startup_s']:.2f}",
            ]
        ],
    )
    body += (
        "\n\nMedians of "
        + str(r["repeats"])
        + " interleaved repeats (plain: "
        + ", ".join(f"{x:.3g}" for x in r["plain_all"])
        + "; Trainer: "
        + ", ".join(f"{x:.3g}" for x in r["trainer_all"])
        + " voxels/s). Target: ratio >= 0.95 "
        + ("(met)." if r["ratio"] >= 0.95 else "(NOT met on this run).")
    )
    return body, [r]


def run_threads(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    n = args.pools[0]
    counts = sorted({1, os.cpu_count() or 1})
    rows = [spawn(args, "query", n, threads=t) | {"threads": t} for t in counts]
    body = table(
        ["torch threads", "pool", "total s", "inference s", "density s", "slowdown vs 1 thread"],
        [
            [
                str(r["threads"]),
                str(r["pool"]),
                f"{r['total_s']:.2f}",
                f"{r['inference_s']:.2f}",
                f"{r['density_s']:.2f}",
                f"{r['total_s'] / rows[0]['total_s']:.2f}x",
            ]
            for r in rows
        ],
    )
    body += (
        "\n\nThe same scoring round with 1 thread and with one thread per CPU, measured while "
        "other jobs share the CPUs (see the load average above): OpenMP threads that wait for a "
        "busy core make every parallel region slow. On a shared machine run the benchmark with "
        "`--threads 1`."
    )
    return body, rows


TITLES = {
    "query": "Query overhead: one mmActS scoring round vs pool size (a, d)",
    "density": "Density distances: quantile summaries vs exact POT W1 (a)",
    "export": "Scoring I/O: official export-then-read vs streamed (b)",
    "lightning": "Lightning overhead: Trainer vs plain PyTorch loop (c)",
    "threads": "Torch threads on a shared CPU: one scoring round",
}
RUNNERS = {
    "query": run_query,
    "density": run_density,
    "export": run_export,
    "lightning": run_lightning,
    "threads": run_threads,
}


def main() -> None:
    args = parser().parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    os.chdir(REPO)
    command = " ".join(["python scripts/bench_speed.py", shlex.join(sys.argv[1:])]).strip()
    context = (
        machine() + f"; {args.threads} torch thread(s) per measurement; settings: size "
        f"{args.size}^3, pools {args.pools}, density pools {args.density_pools}, export pools "
        f"{args.export_pools}, lightning {args.steps} steps x batch {args.batch} x "
        f"{args.repeats} repeats, weights {args.ckpt or 'random (seed 0)'}"
    )
    out = REPO / args.out
    raw_path = out / "speed.json"  # one entry per part, the latest measurement of each
    raw: dict[str, Any] = json.loads(raw_path.read_text()) if raw_path.is_file() else {}
    for part in args.parts:
        t0 = time.perf_counter()
        body, rows = RUNNERS[part](args)
        raw[part] = {"command": command, "machine": context, "rows": rows}
        path = write(out, part, TITLES[part], body, command, context)
        print(
            f"\n## {TITLES[part]} ({time.perf_counter() - t0:.0f} s) -> {path}\n\n{body}",
            flush=True,
        )
        raw_path.write_text(json.dumps(raw, indent=1) + "\n")


if __name__ == "__main__":
    main()
