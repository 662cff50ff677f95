"""Collapse outside the target pool: which labelled pool cases go with models that forget.

Issue 18 saw adapted BraTS models collapse on cases outside their target pool (whole-tumour Dice
0.08-0.30) in the runs that had labelled one particular pool case. This module looks for that in
a benchmark's ``results.jsonl`` whose runs scored extra test splits (:mod:`ada_bench.forgetting`:
``source_test``, ``other_institutions``).

For every adapted run (a strategy at a budget) and every case of an extra split, the *change* is
the case's Dice (mean over the task's regions) after adaptation minus the lower bound's (the
source model) on the same case, fold and seed, in points. A case *collapses* in a run when its
change is <= ``-COLLAPSE_POINTS``.

Per pool case (:func:`pool_case_table`): the runs that labelled it, the mean change of their
out-of-pool cases, the same for the runs of the same folds and seeds that did not label it, and
how many collapses each group had. This is an association over runs, not a causal estimate: the
labelled sets of a run are chosen together (by a strategy), so a case that is often picked with
another shares its runs' outcome. The suspect-label check (:mod:`ada_bench.label_check`) is
reported beside it. Per method (:func:`collapse_table`): how many case-runs collapsed, e.g. to
see whether a regularised recipe (``random+dgst``) collapses less than plain fine-tuning.
:func:`case_figure` draws a case's modalities and label on the axial slice of largest tumour area.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ada_bench.forgetting import SPLIT_DISPLAY, extra_splits
from ada_bench.results import budgetless, normalise
from ada_bench.stats import case_value, mean_or_nan
from ada_bench.tables import Table, display_name, regions_of, table_order, tasks_of

#: a case collapses in a run when its Dice falls by at least this many points below the source
#: model's on the same case (issue 18's collapses were 15-37 points of whole-tumour Dice)
COLLAPSE_POINTS = 20.0


@dataclass
class RunChange:
    """One adapted run's per-case Dice changes on one extra split.

    Attributes:
        task, method, fold, seed, budget: the run.
        labelled: the pool cases it labelled (its queried cases).
        changes: ``{case_id: Dice after - Dice of the lower bound}`` in points.
        suspect: the labelled cases the suspect-label check flagged.
    """

    task: str
    method: str
    fold: int
    seed: int
    budget: int
    labelled: list[str]
    changes: dict[str, float]
    suspect: list[str] = field(default_factory=list)

    @property
    def collapsed(self) -> list[str]:
        """The split's cases that collapsed in this run."""
        return sorted(c for c, d in self.changes.items() if d <= -COLLAPSE_POINTS)


def _case_dice(row: Mapping[str, Any], split: str, regions: Sequence[str]) -> dict[str, float]:
    part = (row.get("extra_splits") or {}).get(split) or {}
    out = {}
    for c in part.get("per_case") or []:
        v = case_value(c, "dice_mean", regions)
        if not math.isnan(v):
            out[str(c["case_id"])] = 100 * v
    return out


def run_changes(
    rows: Iterable[Mapping[str, Any]], split: str, upper: bool = False
) -> list[RunChange]:
    """Every adapted run's per-case changes on ``split`` vs the lower bound of its fold and seed
    (runs without a lower bound and runs without labelled cases are left out; the upper bound,
    with or without additions, only with ``upper``: its ``labelled`` is then empty, as which
    pool cases it labelled is all of them)."""
    norm = [normalise(r) for r in rows if r["run"] != "source"]
    out = []
    for task in tasks_of(norm):
        mine = [r for r in norm if r["task"] == task]
        regions = regions_of(mine, task)
        lower = {
            (r["fold"], r["seed"]): _case_dice(r, split, regions)
            for r in mine
            if r["method"] == "lower"
        }
        for r in mine:
            ref = lower.get((r["fold"], r["seed"]))
            is_upper = budgetless(r["method"]) and r["method"] != "lower"
            if not ref or r["method"] == "lower":
                continue
            if not (upper and is_upper) and (is_upper or not r.get("queried_cases")):
                continue
            after = _case_dice(r, split, regions)
            changes = {c: after[c] - ref[c] for c in after.keys() & ref.keys()}
            if changes:
                fit = r.get("label_fit") or {}
                out.append(
                    RunChange(
                        task, r["method"], r["fold"], r["seed"], r["budget"] or 0,
                        list(r.get("queried_cases") or []), changes,
                        list(fit.get("suspect") or []),
                    )
                )
    return out


def _fmt(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:+.2f}"


def pool_case_table(rows: Iterable[Mapping[str, Any]], split: str) -> Table:
    """Per task and pool case: out-of-pool change (points) of the runs that labelled it vs the
    runs of the same folds and seeds that did not, and their collapses (module doc)."""
    changes = run_changes(rows, split)
    header = [
        "Task", "Pool case", "Runs that labelled it", "Mean change with it", "Runs without it",
        "Mean change without it", "Difference", "Collapses with / without", "Flagged as suspect",
    ]
    csv_header = [
        "task", "case_id", "runs_with", "change_with", "runs_without", "change_without",
        "difference", "collapses_with", "collapses_without", "suspect_flags",
    ]
    md, csv_rows = [], []
    for task in sorted({c.task for c in changes}):
        mine = [c for c in changes if c.task == task]
        cases = sorted({p for c in mine for p in c.labelled})
        entries = []
        for case in cases:
            with_ = [c for c in mine if case in c.labelled]
            units = {(c.fold, c.seed) for c in with_}
            without = [c for c in mine if (c.fold, c.seed) in units and case not in c.labelled]
            cw = mean_or_nan([d for c in with_ for d in c.changes.values()])
            co = mean_or_nan([d for c in without for d in c.changes.values()])
            collapses = (
                sum(len(c.collapsed) for c in with_), sum(len(c.collapsed) for c in without)
            )
            flags = sum(case in c.suspect for c in with_)
            entries.append((case, with_, cw, without, co, collapses, flags))
        entries.sort(key=lambda e: (math.inf if math.isnan(e[2] - e[4]) else e[2] - e[4], e[0]))
        for case, with_, cw, without, co, (kw, ko), flags in entries:
            md.append([
                task, case, str(len(with_)), _fmt(cw), str(len(without)), _fmt(co),
                _fmt(cw - co), f"{kw} / {ko}", f"{flags} of {len(with_)}",
            ])
            csv_rows.append([task, case, len(with_), cw, len(without), co, cw - co, kw, ko, flags])
    name = SPLIT_DISPLAY.get(split, split)
    return Table(
        f"Pool cases and the change of Dice on {name.lower()} after adaptation (points)",
        header,
        md,
        csv_header,
        csv_rows,
        [
            f"Change: per {name.lower()} case, Dice (mean over the task's regions) of the adapted "
            "model minus the source model's (lower bound) on the same case, fold and seed; "
            "averaged over the case-runs of each group. 'Without it': the runs of the same folds "
            "and seeds that did not label the case. Sorted by the difference (most harmful first).",
            f"Collapse: a case-run whose change is <= -{COLLAPSE_POINTS:g} points. An association "
            "over runs, not a causal estimate (a run's labelled cases are chosen together).",
            "Flagged as suspect: runs whose suspect-label check (scripts/ada_bench/label_check.py) "
            "flagged the case among those that labelled it.",
        ],
    )


def collapse_table(rows: Iterable[Mapping[str, Any]], splits: Sequence[str]) -> Table:
    """Per task, method (the upper bound included) and split: runs, mean change (points),
    collapsed case-runs of all."""
    by_split = {s: run_changes(rows, s, upper=True) for s in splits}
    header = ["Task", "Method", "Split", "Runs", "Mean change", "Worst case change", "Collapses"]
    csv_header = ["task", "method", "split", "runs", "change_mean", "change_min", "collapses",
                  "case_runs"]
    md, csv_rows = [], []
    tasks = sorted({c.task for v in by_split.values() for c in v})
    for task in tasks:
        methods = sorted(
            {c.method for v in by_split.values() for c in v if c.task == task}, key=table_order
        )
        for method in methods:
            for split in splits:
                mine = [c for c in by_split[split] if c.task == task and c.method == method]
                if not mine:
                    continue
                d = [x for c in mine for x in c.changes.values()]
                k = sum(len(c.collapsed) for c in mine)
                md.append([
                    task, display_name(method), SPLIT_DISPLAY.get(split, split), str(len(mine)),
                    _fmt(mean_or_nan(d)), _fmt(min(d)), f"{k} of {len(d)}",
                ])
                csv_rows.append([task, method, split, len(mine), mean_or_nan(d), min(d), k, len(d)])
    return Table(
        "Collapses per method: out-of-pool cases whose Dice fell >= "
        f"{COLLAPSE_POINTS:g} points below the source model's",
        header,
        md,
        csv_header,
        csv_rows,
        ["Change in points vs the lower bound of the same fold and seed (module doc); "
         "'Collapses': collapsed case-runs of all case-runs of the method on that split."],
    )


def find_case_files(case_id: str, roots: Sequence[str | Path]) -> dict[str, Path]:
    """``{suffix: path}`` of a BraTS-layout case's NIfTI files (``flair``, ``t1``, ``t1ce``,
    ``t2``, ``seg``) in the first root holding a folder named ``case_id`` (any depth)."""
    for root in roots:
        for folder in sorted(Path(root).glob(f"**/{case_id}")):
            files = {}
            for f in folder.glob("*.nii*"):
                stem = f.name.split(".nii")[0]
                files[stem[len(case_id) + 1:] if stem.startswith(case_id + "_") else stem] = f
            if files:
                return files
    raise FileNotFoundError(f"no folder {case_id!r} with NIfTI files under {list(map(str, roots))}")


def case_figure(
    case_id: str,
    roots: Sequence[str | Path],
    path: str | Path,
    title: str = "",
    modalities: Sequence[str] = ("flair", "t1", "t1ce", "t2"),
) -> Path:
    """The case's modalities on the axial slice of largest labelled area, each with the label's
    outline, and the label itself (BraTS classes 1/2/4 in colour). Intensities are shown as read
    (per-image 1-99 % window), so a scanner's scale or a mis-registered label is visible."""
    import nibabel as nib
    import numpy as np

    from ada_bench.plots import _pyplot, _save

    files = find_case_files(case_id, roots)
    seg = np.asarray(nib.load(files["seg"]).dataobj)
    area = (seg > 0).sum(axis=(0, 1))
    z = int(np.argmax(area)) if area.max() > 0 else seg.shape[2] // 2
    plt = _pyplot()
    shown = [m for m in modalities if m in files]
    fig, axes = plt.subplots(1, len(shown) + 1, figsize=(2.6 * (len(shown) + 1), 3.0))
    lab = np.rot90(seg[:, :, z])
    for ax, m in zip(axes, shown):
        img = np.rot90(np.asarray(nib.load(files[m]).dataobj)[:, :, z].astype(float))
        nz = img[img != 0]
        lo, hi = np.percentile(nz, [1, 99]) if nz.size else (0.0, 1.0)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        ax.contour(lab > 0, levels=[0.5], colors="yellow", linewidths=0.6)
        ax.set_title(f"{m} (1-99 %: {lo:.0f}-{hi:.0f})", fontsize=7)
        ax.axis("off")
    cmap = plt.get_cmap("viridis", 5)
    axes[-1].imshow(np.where(lab > 0, lab, np.nan), cmap=cmap, vmin=0, vmax=4)
    counts = {int(k): int((seg == k).sum()) for k in (1, 2, 4)}
    axes[-1].set_title("label: " + ", ".join(f"{k}: {v} vox" for k, v in counts.items()),
                       fontsize=7)
    axes[-1].axis("off")
    fig.suptitle(title or f"{case_id}, axial slice {z} (largest tumour area)", fontsize=9)
    return _save(fig, path)


def change_figure(rows: Iterable[Mapping[str, Any]], split: str, path: str | Path) -> Path | None:
    """Per pool case, the out-of-pool changes (points) of the case-runs with it labelled (dots)
    and their mean vs the mean without it (bars); None when nothing to draw."""
    import numpy as np

    from ada_bench.plots import _pyplot, _save

    table = pool_case_table(rows, split)
    if not table.csv_rows:
        return None
    changes = run_changes(rows, split)
    plt = _pyplot()
    cases = [r[1] for r in table.csv_rows]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(cases) + 2), 3.8))
    x = np.arange(len(cases))
    ax.bar(x - 0.2, [r[3] for r in table.csv_rows], 0.4, label="mean, runs with it", color="C3")
    ax.bar(x + 0.2, [r[5] for r in table.csv_rows], 0.4, label="mean, runs without it",
           color="C0")
    for i, case in enumerate(cases):
        d = [v for c in changes if case in c.labelled for v in c.changes.values()]
        ax.scatter(np.full(len(d), i - 0.2), d, s=6, color="k", alpha=0.5, zorder=3)
    ax.axhline(-COLLAPSE_POINTS, color="k", ls=":", lw=1, label=f"collapse (-{COLLAPSE_POINTS:g})")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, [c.replace("Brats18_", "") for c in cases], rotation=60, fontsize=7)
    ax.set_ylabel(f"Dice change on {SPLIT_DISPLAY.get(split, split).lower()} (points)")
    ax.set_title("Out-of-pool Dice change vs the source model, by labelled pool case", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def write_collapse(
    rows: Sequence[Mapping[str, Any]], out: str | Path, roots: Sequence[str | Path] = ()
) -> tuple[str, list[Path]]:
    """Write ``collapse.md`` / ``collapse_*.csv``, the change figure per split and, with
    ``roots``, the figure of the most harmful pool case (and of the least, for contrast).

    Returns:
        The markdown and the figures written.
    """
    out = Path(out)
    splits = extra_splits(normalise(r) for r in rows if r["run"] != "source")
    parts = ["# Collapse outside the target pool", ""]
    figures: list[Path] = []
    overall = collapse_table(rows, splits)
    overall.write(out, "collapse_methods")
    parts.append(overall.markdown())
    for split in splits:
        table = pool_case_table(rows, split)
        table.write(out, f"collapse_{split}")
        parts.append(table.markdown())
        if (p := change_figure(rows, split, out / f"collapse_{split}.png")) is not None:
            figures.append(p)
        if roots and table.csv_rows:
            for label, row in (("most harmful", table.csv_rows[0]),
                               ("least harmful", table.csv_rows[-1])):
                case = row[1]
                try:
                    figures.append(case_figure(
                        case, roots, out / f"collapse_case_{case}.png",
                        f"{case}: {label} pool case for {split} "
                        f"({row[6]:+.1f} points with vs without it)",
                    ))
                except FileNotFoundError as e:
                    parts.append(f"(no figure: {e})")
    if figures:
        parts.append("Figures: " + ", ".join(p.name for p in figures))
    text = "\n\n".join(parts) + "\n"
    (out / "collapse.md").write_text(text)
    return text, figures
