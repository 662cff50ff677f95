"""Missing modality: Dice of a model trained with and without modality dropout, tested on the
phantom's target test cases with one modality removed.

For every seed and every dropout rate (0, and ``--dropout``) a source model is trained through
``lightning-ada fit`` (``--config``, by default the power benchmark's glioma source recipe:
24^3, 600 steps, 50 target test cases) with ``--data.modality_dropout`` and that seed (the
phantom draw and the training seed alike). Each model is then tested (``lightning-ada test``,
target stage) on the target test cases as they are and with each modality removed in turn: a
datalist whose test cases list no file for that modality (``null``), read with
``--data.missing_modality zero_fill`` (the channel zero-filled, as a clinical series without
that sequence would be).

    python scripts/missing_modality.py --out runs/missing_modality --seeds 0 1 2 3 4 5 6 7 8 9

Each finished test is one JSON line in ``<out>/results.jsonl`` (a restarted invocation skips
what is done; a model whose ``last.ckpt`` exists is not trained again); the table (per removed
modality: Dice without and with dropout, mean ± SD over seeds, and the paired difference with
its 95 % t interval) goes to stdout and ``<out>/missing_modality.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "power" / "glioma" / "source.yaml"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="folder of the models, datalists and results")
    p.add_argument("--config", nargs="+", default=[str(DEFAULT_CONFIG)],
                   help="the source training's config files (composed in order; default: "
                        "configs/power/glioma/source.yaml); the last one setting data.phantom "
                        "gives the phantom")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(10)),
                   help="phantom draw and training seed of each model pair (default 0-9)")
    p.add_argument("--dropout", type=float, default=0.5,
                   help="modality dropout of the second model of each pair (default 0.5)")
    p.add_argument("--remove", nargs="+", default=None,
                   help="modalities to remove in turn (default: every one of the config's)")
    p.add_argument("--data-root", default="data/phantom/missing_modality_seed{seed}",
                   help="where the phantom of seed {seed} is generated (default: %(default)s)")
    p.add_argument("--summary-only", action="store_true", help="only print the table")
    return p


def _compose(files: list[str]) -> dict[str, Any]:
    """The data section (phantom, modalities) of the composed config files."""
    data: dict[str, Any] = {}
    for f in files:
        loaded = yaml.safe_load(Path(f).read_text()) or {}
        data.update(loaded.get("data") or {})
    return data


def without(dataset: Path, modality: str | None, out: Path) -> Path:
    """A datalist of ``dataset`` (absolute paths) whose target test cases have no file of
    ``modality`` (``null``); None: as it is."""
    d = json.loads(dataset.read_text())
    base = dataset.parent
    for case in d["cases"]:
        case["images"] = [str((base / p).resolve()) if p else None for p in case["images"]]
        if case.get("label"):
            case["label"] = str((base / case["label"]).resolve())
        case["modality_labels"] = {k: str((base / v).resolve())
                                   for k, v in (case.get("modality_labels") or {}).items()}
        if modality is not None and case.get("split") == "test":
            case["images"][list(case["modalities"]).index(modality)] = None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(d, indent=1))
    return out


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _seed_overlay(args: argparse.Namespace, data: dict[str, Any], seed: int, out: Path) -> Path:
    """The config overlay of seed ``seed``: its phantom draw, in its own folder."""
    phantom = dict(data.get("phantom") or {})
    if not phantom:
        raise SystemExit("error: --config sets no data.phantom: this measurement needs the phantom")
    phantom.update(seed=seed, progress=False)
    overlay = {"seed_everything": seed,
               "data": {"root": args.data_root.format(seed=seed), "phantom": phantom,
                        # preprocessed once, read back by the model pair's ten tests
                        "cache_dir": str((out / "cache").resolve())}}
    path = out / "configs" / f"seed{seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(overlay, sort_keys=False))
    return path


def train(args: argparse.Namespace, overlay: Path, dropout: float, folder: Path) -> Path:
    """The source model of one seed and dropout rate (trained unless its last.ckpt exists)."""
    from lightning_ada.main import main

    ckpt = folder / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        cfg = [a for f in args.config for a in ("-c", f)]
        main(["fit", *cfg, "-c", str(overlay), "--data.modality_dropout", str(dropout),
              "--trainer.default_root_dir", str(folder), "--trainer.enable_progress_bar", "false",
              "--trainer.logger", "false"])
    return ckpt


def test(args: argparse.Namespace, overlay: Path, ckpt: Path, datalist: Path, folder: Path) -> dict[str, float]:
    """Test metrics of ``ckpt`` on the target test cases of ``datalist``."""
    from lightning_ada.main import main

    shutil.rmtree(folder, ignore_errors=True)  # an interrupted earlier test of the same pair
    cfg = [a for f in args.config for a in ("-c", f)]
    cli = main(["test", *cfg, "-c", str(overlay), "--data.root", str(datalist),
                "--data.phantom", "null", "--data.stage", "target",
                "--data.missing_modality", "zero_fill", "--ckpt_path", str(ckpt),
                "--eval_dir", str(folder), "--trainer.enable_progress_bar", "false"])
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test/")}


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = _compose(args.config)
    modalities = list(data.get("modalities") or ["flair", "t1", "t1ce", "t2"])
    removals: list[str | None] = [None, *(args.remove or modalities)]
    done_file = out / "results.jsonl"
    done = {(r["seed"], r["dropout"], r["removed"]) for r in _rows(done_file)}
    for seed in args.seeds:
        overlay = _seed_overlay(args, data, seed, out)
        for dropout in (0.0, float(args.dropout)):
            folder = out / "models" / f"dropout{dropout:g}" / f"seed{seed}"
            todo = [m for m in removals if (seed, dropout, m or "none") not in done]
            if not todo:
                continue
            print(f"[seed {seed}] modality dropout {dropout:g}: training", flush=True)
            ckpt = train(args, overlay, dropout, folder)
            dataset = Path(args.data_root.format(seed=seed)) / "dataset.json"
            for removed in todo:
                name = removed or "none"
                datalist = without(dataset, removed, out / "datalists" / f"seed{seed}" / f"without_{name}.json")
                metrics = test(args, overlay, ckpt, datalist, folder / "eval" / f"without_{name}")
                row = {"seed": seed, "dropout": dropout, "removed": name,
                       "dice_mean": metrics.get("test/dice_mean"), "metrics": metrics}
                print(f"[seed {seed}] dropout {dropout:g}, without {name}: "
                      f"Dice {100 * row['dice_mean']:.1f}", flush=True)
                with done_file.open("a") as f:
                    f.write(json.dumps(row) + "\n")


def _t95(n: int) -> float:
    try:
        from scipy import stats

        return float(stats.t.ppf(0.975, n - 1))
    except ImportError:  # pragma: no cover - scipy is installed with the project
        return 1.96


def summary(args: argparse.Namespace) -> str:
    """Per removed modality: Dice (points) without and with dropout, and their paired difference."""
    by: dict[tuple[str, float], dict[int, float]] = defaultdict(dict)
    for r in _rows(Path(args.out) / "results.jsonl"):
        if r.get("dice_mean") is not None:
            by[(r["removed"], float(r["dropout"]))][int(r["seed"])] = 100 * float(r["dice_mean"])
    drop = float(args.dropout)
    lines = [
        "# Missing modality: a model trained with and without modality dropout",
        "",
        (f"Dice (%, per case the mean over the task's regions, mean over the target test cases) of "
        f"the source model trained without (0) and with modality dropout ({drop:g}), tested with "
        "the removed modality's channel zero-filled (`--data.missing_modality zero_fill`); mean ± "
        "SD over seeds (each seed: its own phantom draw and training seed). Δ = with − without, "
        "paired by seed, with its 95 % t interval."),
        "",
        "| removed | seeds | without dropout | with dropout | Δ (points) | 95 % CI |",
        "|---|---|---|---|---|---|",
    ]
    removed_names = sorted({k[0] for k in by}, key=lambda m: (m != "none", m))
    for name in removed_names:
        a, b = by.get((name, 0.0), {}), by.get((name, drop), {})
        seeds = sorted(set(a) & set(b))
        if not seeds:
            continue
        diffs = [b[s] - a[s] for s in seeds]
        mean = statistics.fmean(diffs)
        if len(seeds) > 1:
            half = _t95(len(seeds)) * statistics.stdev(diffs) / math.sqrt(len(seeds))
            ci = f"[{mean - half:+.1f}, {mean + half:+.1f}]"
        else:
            ci = "–"

        def ms(values: list[float]) -> str:
            sd = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
            return f"{statistics.fmean(values):.1f}{sd}"

        lines.append(f"| {name} | {len(seeds)} | {ms([a[s] for s in seeds])} | "
                     f"{ms([b[s] for s in seeds])} | {mean:+.1f} | {ci} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    sys.path.insert(0, str(REPO))
    if not args.summary_only:
        run(args)
    text = summary(args)
    (Path(args.out) / "missing_modality.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
