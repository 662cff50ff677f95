"""The demo: adapt a source model to a new "hospital" with 3 actively chosen labels.

Generates the glioma phantom, pre-trains on the source centre, measures the target lower bound
(no adaptation), adapts with a budget of 3 queried cases, measures the upper bound (every pool
case labeled) and prints one table of Dice per region. Run from anywhere:

    python scripts/demo.py [--task glioma|npc] [--strategies random mmacts] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", default="glioma", choices=["glioma", "npc"])
    p.add_argument("--strategies", nargs="+", default=["random", "mmacts"],
                   help="configs under configs/phantom/<task>/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reuse-source", action="store_true", help="reuse an existing source checkpoint")
    args = p.parse_args()
    os.chdir(REPO)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")

    from lightning_ada.runner import run_experiment

    cfg = Path("configs/phantom") / args.task
    seed = ["--seed_everything", str(args.seed)]
    t0 = time.perf_counter()
    rows: dict[str, dict[str, float]] = {}
    ckpt = Path(f"runs/phantom_{args.task}/source/checkpoints/last.ckpt")

    print(f"== 1/4 source pre-training on centre A ({args.task} phantom)", flush=True)
    src = run_experiment([cfg / "source.yaml"], seed, fit=not (args.reuse_source and ckpt.exists()))
    rows["source domain (centre A)"] = src["test"]

    print("== 2/4 target lower bound: source model, no adaptation", flush=True)
    low = run_experiment([cfg / f"{args.strategies[0]}.yaml"], [*seed, "--active.budget", "0"], fit=False)
    rows["target lower bound (0 labels)"] = low["test"]

    queried: dict[str, list] = {}
    for i, strat in enumerate(args.strategies):
        print(f"== 3/4 active adaptation: {strat}, 3 labels", flush=True)
        res = run_experiment([cfg / f"{strat}.yaml"], seed)
        rows[f"target after 3 labels ({strat})"] = res["test"]
        queried[strat] = [(q["case_id"], q["modality"]) for q in res["query_log"]]

    print("== 4/4 upper bound: every pool case labeled", flush=True)
    up = run_experiment([cfg / "upper_bound.yaml"], seed)
    rows["target upper bound (all pool labels)"] = up["test"]

    regions = [k.removeprefix("dice_") for k in src["test"] if k.startswith("dice_") and k != "dice_mean"]
    header = "| run | " + " | ".join(f"Dice {r}" for r in regions) + " | Dice mean |"
    lines = [header, "|" + "---|" * (len(regions) + 2)]
    for name, m in rows.items():
        cells = " | ".join(f"{m[f'dice_{r}']:.3f}" for r in regions)
        lines.append(f"| {name} | {cells} | {m['dice_mean']:.3f} |")
    wall = time.perf_counter() - t0
    table = "\n".join(lines)
    print("\n" + table)
    for strat, q in queried.items():
        print(f"\nqueried by {strat}: " + ", ".join(f"{c} ({m or 'reference mask'})" for c, m in q))
    print(f"\nwall time: {wall / 60:.1f} min")
    out = Path(f"runs/phantom_{args.task}/demo_results.json")
    out.write_text(json.dumps({"rows": rows, "queried": queried, "wall_seconds": wall}, indent=2))
    Path(out.with_suffix(".md")).write_text(table + "\n")
    plot(rows, regions, out.with_suffix(".png"))
    print(f"results: {out} (.md, .png)")


def plot(rows: dict[str, dict[str, float]], regions: list[str], path: Path) -> None:
    """Grouped bars: Dice per region for every row of the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [*regions, "mean"]
    x = np.arange(len(keys))
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for i, (name, m) in enumerate(rows.items()):
        ax.bar(x + i * width, [m[f"dice_{k}"] for k in keys], width, label=name)
    ax.set_xticks(x + 0.4 - width / 2, [f"Dice {k}" for k in keys])
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
