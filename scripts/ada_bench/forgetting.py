"""Forgetting: the adapted models on the datamodule's extra test splits.

A run whose config lists ``data.extra_test_splits`` (e.g. ``source_test``: the source domain's
test cases; ``other_institutions``: cases of institutions outside the target pool) records, next
to its target test results, each extra split's metrics and per-case values under ``extra_splits``
(:func:`ada_bench.runner.test_model`). For every method and budget this table gives the mean Dice
on each extra split (per case the mean over the task's regions, per run the mean over the split's
cases, then mean ± std over runs) and its change vs the lower bound (the source model) of the same
fold and seed: a negative change is what adaptation cost outside the target pool.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ada_bench.markdown import format_mean_std
from ada_bench.results import normalise
from ada_bench.stats import MeanStd, mean_std, mean_std_of_differences, per_run
from ada_bench.tables import Table, display_name, is_bound, present_methods, regions_of, tasks_of

#: the splits in this order first (the source domain, then other institutions), others after
SPLIT_ORDER = ("source_test", "other_institutions")
SPLIT_DISPLAY = {"source_test": "Source test", "other_institutions": "Other institutions"}


def extra_splits(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The extra test splits the rows hold (known ones first, then by first appearance)."""
    found: dict[str, None] = {}
    for r in rows:
        for name in r.get("extra_splits") or {}:
            found[name] = None
    return [s for s in SPLIT_ORDER if s in found] + [s for s in found if s not in SPLIT_ORDER]


def on_split(rows: Iterable[Mapping[str, Any]], split: str) -> list[dict[str, Any]]:
    """The rows that scored ``split``, with ``test`` / ``per_case`` replaced by that split's."""
    out = []
    for r in rows:
        part = (r.get("extra_splits") or {}).get(split)
        if part:
            out.append({**r, "test": part.get("test", {}), "per_case": part.get("per_case", [])})
    return out


def forgetting_table(rows: Iterable[Mapping[str, Any]], metric: str = "dice_mean") -> Table:
    """Per task, method and budget: Dice on every extra test split and its change vs the lower
    bound (points), mean ± std over runs. Rows are taken as given (expand budget curves first).
    Empty (no rows) when no run scored an extra split."""
    norm = [normalise(r) for r in rows if r["run"] != "source"]
    splits = extra_splits(norm)
    header = ["Task", "Method", "Labels"]
    csv_header = ["task", "method", "labels"]
    for s in splits:
        name = SPLIT_DISPLAY.get(s, s)
        header += [f"{name} Dice %", f"{name} Δ vs lower"]
        csv_header += [f"{s}_mean", f"{s}_std", f"{s}_delta_mean", f"{s}_delta_std", f"{s}_runs"]
    md_rows: list[list[str]] = []
    csv_rows: list[list[Any]] = []
    for task in tasks_of(norm) if splits else []:
        mine_rows = [r for r in norm if r["task"] == task and r["train_input"] == "all"]
        regions = regions_of(norm, task)
        lower = {
            s: per_run(on_split([r for r in mine_rows if r["method"] == "lower"], s), metric,
                       regions)
            for s in splits
        }
        for method in present_methods(mine_rows):
            sel = [r for r in mine_rows if r["method"] == method]
            budgets: Sequence[int | None] = (
                [None] if is_bound(method) else sorted({r["budget"] for r in sel})
            )
            for b in budgets:
                at = [r for r in sel if b is None or r["budget"] == b]
                values = {s: per_run(on_split(at, s), metric, regions) for s in splits}
                if not any(values.values()):
                    continue
                labels = _labels(at, method, b)
                md = [task, display_name(method), labels]
                row: list[Any] = [task, method, labels]
                for s in splits:
                    v = mean_std(values[s].values())
                    d = (
                        mean_std_of_differences(values[s], lower[s])
                        if method != "lower"
                        else MeanStd(0.0, 0.0, 0)
                    )
                    md += [format_mean_std(v, 100), "–" if method == "lower" else _signed(d)]
                    row += [v.mean * 100, v.std * 100, d.mean * 100, d.std * 100, v.n]
                md_rows.append(md)
                csv_rows.append(row)
    return Table(
        "Forgetting: Dice on the extra test splits after adaptation (%), change vs the lower bound",
        header,
        md_rows,
        csv_header,
        csv_rows,
        [
            "Extra test splits (data.extra_test_splits): the source domain's test cases and cases "
            "of institutions outside the target pool. Per run: mean over the split's cases of the "
            "per-case Dice averaged over the task's regions; mean ± std over runs (fold x seed).",
            "Δ vs lower: the run minus the lower bound (source model) of the same fold and seed, "
            "in Dice points, mean ± std over runs; negative = forgotten by adapting.",
        ],
    )


def _labels(rows: Sequence[Mapping[str, Any]], method: str, budget: int | None) -> str:
    if budget is not None:
        return str(budget)
    sizes = sorted({int(r["labels"]) for r in rows if r.get("labels") is not None})
    return "/".join(map(str, sizes)) if sizes else "all"


def _signed(s: MeanStd) -> str:
    if not s.n:
        return "–"
    std = "" if s.n < 2 else f" ± {100 * s.std:.2f}"
    return f"{100 * s.mean:+.2f}{std}"

