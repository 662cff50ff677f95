"""The demo: adapt a source model to a new "hospital" with 3 actively chosen labels.

Generates the glioma phantom, pre-trains on the source centre, measures the target lower bound
(no adaptation), adapts with a budget of 3 queried cases once per strategy, measures the upper
bound (every pool case labeled) and prints one table of Dice per region, what each strategy asked
the annotator and which mask it got. Run from anywhere:

    python scripts/demo.py [--task glioma|npc] [--strategies random mmacts ...] [--seed 0]
    python scripts/demo.py --strategies entropy ugtst --reuse-source
    python scripts/demo.py --configs DIR --out DIR -- --trainer.max_epochs 2   # other configs

Every stage writes into its own folder ``<out>/<stage>`` (``source``, ``lower_bound``, one per
strategy, ``upper_bound``); re-testing a reused source model writes into
``<out>/source/test/<timestamp>``, so no stage touches another one's records.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Wall seconds of each stage of the default demo (glioma, configs/phantom/glioma, no overrides)
#: on an idle 2-core CPU with the library's default of one torch thread per process, used for the
#: printed expectations: ``stage_seconds`` of ``demo_results.json`` from ``make demo`` on
#: 2026-11-30 (total 9:41 incl. set-up). A strategy without its own entry is expected to take as
#: long as ``mmacts``.
IDLE_STAGE_SECONDS: dict[str, dict[str, float]] = {
    "glioma": {
        "source": 282.0,
        "lower_bound": 3.0,
        "random": 96.0,
        "mmacts": 105.0,
        "upper_bound": 95.0,
    },
}
#: the configuration the table was measured with (estimates are printed only for it)
MEASURED_WITH = "default configs, no overrides"


def fmt(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``)."""
    s = int(round(max(seconds, 0.0)))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class Stage:
    """One step of the demo: a name, what it does, its expected idle seconds (0: not measured)
    and, once done, its wall seconds."""

    name: str
    title: str
    expected: float = 0.0
    seconds: float = 0.0


class Plan:
    """The stages with their expected times; prints headers with the demo's progress and ETA.

    The time left is the expected time of the remaining stages scaled by the pace measured so
    far (wall time / expected time of the finished stages), so a busy machine's estimate grows
    after the first stage instead of staying at the idle figure.
    """

    def __init__(self, stages: list[Stage]) -> None:
        self.stages = stages
        self.t0 = time.perf_counter()
        self.known = all(s.expected > 0 for s in stages)
        self.done = 0

    def pace(self) -> float:
        """Wall time / expected time of the finished stages (1.0 before the first ends)."""
        done = self.stages[: self.done]
        expected = sum(s.expected for s in done)
        return sum(s.seconds for s in done) / expected if expected else 1.0

    def announce(self) -> None:
        if not self.known:
            print(f"expected times: not measured for this setting ({MEASURED_WITH} only)")
            return
        total = sum(s.expected for s in self.stages)
        parts = ", ".join(f"{s.name} {fmt(s.expected)}" for s in self.stages)
        print(f"expected on an idle 2-core CPU: {fmt(total)} ({parts}); a busy machine is "
              "slower, the estimate is updated after each stage", flush=True)

    def start(self, i: int) -> float:
        """Print the header of stage ``i``; returns its start time."""
        s = self.stages[i]
        head = f"== [{i + 1}/{len(self.stages)}] {s.title}"
        if self.known:
            pace = self.pace()
            left = pace * sum(t.expected for t in self.stages[i:])
            elapsed = time.perf_counter() - self.t0
            head += (f"  (stage ~{fmt(pace * s.expected)}; demo {fmt(elapsed)} so far, "
                     f"~{fmt(left)} left")
            head += f", machine at {1 / pace:.2f}x the idle speed)" if i else ")"
        print(head, flush=True)
        return time.perf_counter()

    def finish(self, i: int, t0: float) -> None:
        self.stages[i].seconds = time.perf_counter() - t0
        self.done = i + 1

    def table(self) -> str:
        rows = ["| stage | wall time | expected (idle) |", "|---|---|---|"]
        for s in self.stages:
            rows.append(f"| {s.name} | {fmt(s.seconds)} | {fmt(s.expected) if s.expected else '-'} |")
        return "\n".join(rows)


def strategy_choices(cfg: Path) -> tuple[list[str], list[str]]:
    """(registered strategy names, strategies with their own config file in ``cfg``)."""
    from lightning_ada.active.strategies import REGISTRY

    files = sorted(p.stem for p in cfg.glob("*.yaml") if p.stem not in ("source", "upper_bound"))
    return sorted(REGISTRY), files


def check_strategies(parser: argparse.ArgumentParser, args: argparse.Namespace, cfg: Path) -> None:
    """Refuse unknown strategies and missing configs before anything trains (one message)."""
    registered, files = strategy_choices(cfg)
    for name in ("source", "upper_bound"):
        if not (cfg / f"{name}.yaml").is_file():
            parser.error(f"{cfg / (name + '.yaml')} does not exist (--configs needs source.yaml, "
                         "upper_bound.yaml and random.yaml or mmacts.yaml)")
    unknown = [s for s in args.strategies if s not in registered and s not in files]
    if unknown:
        parser.error(f"unknown strategy {', '.join(unknown)}; choose from: "
                     f"{' '.join(sorted(set(registered) | set(files)))}")
    if len(set(args.strategies)) != len(args.strategies):
        parser.error(f"--strategies lists a name twice: {' '.join(args.strategies)}")
    base = "mmacts" if (cfg / "mmacts.yaml").is_file() else "random"
    if any(s not in files for s in args.strategies) and not (cfg / f"{base}.yaml").is_file():
        parser.error(f"{cfg} has neither mmacts.yaml nor random.yaml to run the strategies with")


def strategy_run(cfg: Path, name: str) -> tuple[Path, list[str]]:
    """Config and overrides of one strategy: its own file, else the mmActS config with
    ``--active.strategy <name>`` (same schedule, stride, training and election as the benchmark)."""
    own = cfg / f"{name}.yaml"
    if own.is_file():
        return own, []
    base = cfg / "mmacts.yaml" if (cfg / "mmacts.yaml").is_file() else cfg / "random.yaml"
    return base, ["--active.strategy", name]


def mask_drawn_on(q: dict, modalities: list[str]) -> str | None:
    """The modality whose delineation the oracle returned (None: the reference mask).

    The phantom stores the mask drawn on one modality as ``<case>_seg_<modality>.nii.gz``.
    """
    name = Path(str(q.get("label_path", ""))).name
    return next((m for m in modalities if name.endswith(f"_seg_{m}.nii.gz")), None)


def describe_query(q: dict, modalities: list[str]) -> str:
    """What the annotator was asked for one query and which mask the (simulated) oracle gave."""
    when = "before training" if q.get("epoch", -1) < 0 else f"after epoch {q['epoch'] + 1}"
    m = q.get("modality")
    if m:
        dice = q.get("election_dice") or {}
        scores = ", ".join(f"{k} {v:.2f}" for k, v in dice.items())
        asked = f"delineate on {m.upper()} (elected; Dice vs the all-modality prediction: {scores})"
    else:
        asked = "delineate the tumour (no modality elected)"
    drawn_on = mask_drawn_on(q, modalities)
    used = f"the mask drawn on {drawn_on.upper()}" if drawn_on else "the reference mask"
    label = Path(str(q.get("label_path", ""))).name
    return f"  {q['case_id']} ({when}): asked to {asked}; mask used: {used} ({label})"


def parse_args() -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", default="glioma", choices=["glioma", "npc"])
    p.add_argument("--strategies", nargs="+", default=["random", "mmacts"],
                   help="registered strategies (random, entropy, mmacts, aada, mhpl, cup, stdr, "
                        "lamda, ugtst) or config names under the config folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reuse-source", action="store_true",
                   help="reuse <out>/source/checkpoints/last.ckpt if it exists (re-tested into "
                        "<out>/source/test/<timestamp>)")
    p.add_argument("--configs", type=Path, default=None,
                   help="config folder (default configs/phantom/<task>)")
    p.add_argument("--out", type=Path, default=None,
                   help="run folder (default runs/demo_<task>, apart from the runs/phantom_<task> "
                        "folders of the README's commands, so neither overwrites the other)")
    p.add_argument("overrides", nargs="*", help="after --: extra --key value for every stage")
    return p, p.parse_args()


def make_plan(args: argparse.Namespace, reuse: bool) -> Plan:
    """The demo's stages with their expected idle times (only for the measured setting)."""
    measured = not (args.configs or args.overrides)
    idle = {k: v for k, v in IDLE_STAGE_SECONDS.get(args.task, {}).items() if v and measured}

    def expected(name: str) -> float:
        """Idle seconds of a stage; a strategy without its own figure is assumed like mmacts."""
        if name in ("source", "lower_bound", "upper_bound"):
            return idle.get(name, 0.0)
        return idle.get(name, idle.get("mmacts", 0.0))

    source = (f"source model on centre A ({args.task} phantom): "
              + ("reused, re-tested" if reuse else "generate the phantom, pre-train"))
    return Plan([
        # a re-test costs about what the lower bound (also a test) costs
        Stage("source", source, expected("lower_bound" if reuse else "source")),
        Stage("lower_bound", "target lower bound: the source model on the target test cases",
              expected("lower_bound")),
        *[Stage(s, f"active adaptation with {s}: 3 labels, one every stride", expected(s))
          for s in args.strategies],
        Stage("upper_bound", "upper bound: every pool case labeled", expected("upper_bound")),
    ])


def main() -> None:
    p, args = parse_args()
    os.chdir(REPO)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    cfg = args.configs or Path("configs/phantom") / args.task
    # the base config every run overlay of cfg composes with (configs/phantom/base.yaml)
    shared = [f for f in (cfg / "base.yaml", cfg.parent / "base.yaml") if f.is_file()][:1]
    out = args.out or Path(f"runs/demo_{args.task}")
    check_strategies(p, args, cfg)

    from ada_bench.runner import run_configs as run_experiment  # the harness's runner

    from lightning_ada.cli.eval_dirs import evaluation_dir, logger_overrides

    ckpt = out / "source" / "checkpoints" / "last.ckpt"
    reuse = args.reuse_source and ckpt.is_file()
    if "stdr" in args.strategies and reuse:
        import torch

        if "stdr_anchors" not in torch.load(ckpt, map_location="cpu", weights_only=True):
            p.error(f"stdr needs the source anchors, which {ckpt} lacks: drop --reuse-source")
    common = ["--seed_everything", str(args.seed), *args.overrides]
    from_source = ["--model.source_checkpoint", str(ckpt)]
    plan = make_plan(args, reuse)
    plan.announce()
    rows: dict[str, dict[str, float]] = {}
    queried: dict[str, list[dict]] = {}

    t = plan.start(0)
    if reuse:
        where = evaluation_dir(out / "source", "test")
        src = run_experiment([*shared, cfg / "source.yaml"],
                             [*common, *from_source, *logger_overrides(where)], fit=False)
    else:
        src = run_experiment([*shared, cfg / "source.yaml"], [*common, *logger_overrides(out / "source")])
    rows["source domain (centre A)"] = src["test"]
    plan.finish(0, t)

    t = plan.start(1)
    base, _ = strategy_run(cfg, "random")
    low = run_experiment([*shared, base], [*common, *from_source, "--active.budget", "0",
                                  *logger_overrides(out / "lower_bound")], fit=False)
    rows["target lower bound (0 labels)"] = low["test"]
    plan.finish(1, t)

    for i, strat in enumerate(args.strategies, start=2):
        t = plan.start(i)
        config, extra = strategy_run(cfg, strat)
        res = run_experiment([*shared, config],
                             [*common, *from_source, *extra, *logger_overrides(out / strat)])
        rows[f"target after 3 labels ({strat})"] = res["test"]
        queried[strat] = res["query_log"]
        plan.finish(i, t)

    last = len(plan.stages) - 1
    t = plan.start(last)
    up = run_experiment([*shared, cfg / "upper_bound.yaml"],
                        [*common, *from_source, *logger_overrides(out / "upper_bound")])
    rows["target upper bound (all pool labels)"] = up["test"]
    plan.finish(last, t)
    report(args, out, plan, rows, queried)


def report(args: argparse.Namespace, out: Path, plan: Plan, rows: dict[str, dict[str, float]],
           queried: dict[str, list[dict]]) -> None:
    """Print the Dice table, the queries, the stage times; write demo_results.{json,md,png}."""
    first = next(iter(rows.values()))
    regions = [k.removeprefix("dice_") for k in first if k.startswith("dice_") and k != "dice_mean"]
    header = "| run | " + " | ".join(f"Dice {r}" for r in regions) + " | Dice mean |"
    lines = [header, "|" + "---|" * (len(regions) + 2)]
    for name, m in rows.items():
        cells = " | ".join(f"{m[f'dice_{r}']:.3f}" for r in regions)
        lines.append(f"| {name} | {cells} | {m['dice_mean']:.3f} |")
    wall = time.perf_counter() - plan.t0
    table = "\n".join(lines)
    print("\n" + table)
    modalities = _modalities(queried)
    for strat, log in queried.items():
        print(f"\nqueried by {strat}:")
        for q in log:
            print(describe_query(q, modalities))
        if any(q.get("modality") and not mask_drawn_on(q, modalities) for q in log):
            print("  (the simulated annotator returns the reference (ground-truth) mask, "
                  "not a delineation on the elected one: active.oracle.use_modality_masks is false)")
    print("\n" + plan.table())
    expected = sum(s.expected for s in plan.stages)
    print(f"\nwall time: {fmt(wall)}"
          + (f" (expected on an idle machine: {fmt(expected)})" if plan.known else ""))
    out.mkdir(parents=True, exist_ok=True)
    result = out / "demo_results.json"
    result.write_text(json.dumps({
        "rows": rows,
        "queried": {k: [(q["case_id"], q.get("modality")) for q in v] for k, v in queried.items()},
        "wall_seconds": wall,
        "stage_seconds": {s.name: s.seconds for s in plan.stages},
        "command": sys.argv,
    }, indent=2))
    result.with_suffix(".md").write_text(table + "\n")
    plot(rows, regions, result.with_suffix(".png"), f"{args.task} phantom, seed {args.seed}")
    print(f"results: {result} (.md, .png)")


def _modalities(queried: dict[str, list[dict]]) -> list[str]:
    """Modality names seen in the election Dice of the query logs (for naming masks)."""
    names: list[str] = []
    for log in queried.values():
        for q in log:
            for m in q.get("election_dice") or {}:
                if m not in names:
                    names.append(m)
    return names or ["flair", "t1", "t1ce", "t2"]


def plot(rows: dict[str, dict[str, float]], regions: list[str], path: Path, subtitle: str) -> None:
    """Grouped bars: Dice per region for every row of the table (legend below the axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [*regions, "mean"]
    x = np.arange(len(keys))
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (name, m) in enumerate(rows.items()):
        ax.bar(x + i * width, [m[f"dice_{k}"] for k in keys], width, label=name)
    ax.set_xticks(x + 0.4 - width / 2, [f"{k}" for k in keys])
    ax.set_xlabel("tumour region (mean = average over the regions)")
    ax.set_ylabel("Dice on the test cases")
    ax.set_ylim(0, 1)
    ax.set_title(f"Demo: Dice per region, source to target ({subtitle})")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
