"""Tables of the benchmark from result rows: the paper's Table 1 and 2, ablations, budget curve.

Every cell of a metric is ``mean ± std`` over runs (one run = one fold x seed; repeated draws of
a method are averaged first), in % for Dice and IoU ("mIoU" = mean over test cases of the
per-case IoU, as in the paper). p-values are paired Wilcoxon signed-rank tests over the same test
cases (fold, seed, case) on the per-case Dice averaged over the task's regions, reference method
versus the row (:mod:`ada_bench.stats`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ada_bench.markdown import format_mean_std, format_p, markdown_table
from ada_bench.names import bound_of, budgetless, parse_run_name, split_top_level
from ada_bench.results import TASK_REGIONS, normalise, regions_of  # noqa: F401 - re-exported
from ada_bench.stats import MeanStd, mean_std, per_case, per_run, wilcoxon_paired
from lightning_ada.io import write_text_atomic

#: regions in the order of the paper's tables
#: regions shown in the comparison tables but not averaged into the mean (BraTS evaluation regions)
EXTRA_REGIONS: dict[str, list[str]] = {"brats18": ["WT", "TC"]}
#: metrics where lower is better (distances, mm)
LOWER_IS_BETTER = ("hd95", "assd")
TASK_ORDER = ["glioma", "npc", "brats18"]
#: the bounds: display name and table position (before every strategy)
BOUND_DISPLAY = {"lower": "Lower bound", "upper": "Upper bound"}
BOUND_ORDER = {"lower": -2, "upper": -1}
#: names of the ablation runs of the tables (not strategies)
ABLATION_DISPLAY = {"mmacts_one_off": "mmActS one-off", "random_one_off": "Random (one-off)"}
MODALITY_DISPLAY = {"flair": "FLAIR", "t1": "T1", "t1ce": "T1c", "t2": "T2"}
REFERENCE = "mmacts"
BOUNDS = ("lower", "upper")


def is_bound(method: str) -> bool:
    """The lower or upper bound, with or without additions (``upper+dgst``)."""
    return bound_of(method) in BOUNDS


def is_variant(method: str) -> bool:
    """A run name with strategy options, additions or a preset (or ``random_one_off``): a method
    of its own, although its strategy is another's (:func:`ada_bench.protocol.own_method`)."""
    from ada_bench.protocol import own_method

    try:
        parsed = parse_run_name(method)
    except ValueError:
        return False
    return parsed.is_variant or own_method(parsed.base_method)


def _base_display(base: str) -> str:
    from ada_bench.protocol import PRESETS
    from lightning_ada.active.strategies import REGISTRY

    if base in BOUND_DISPLAY:
        return BOUND_DISPLAY[base]
    if base in PRESETS:
        return PRESETS[base].display
    if base in REGISTRY:
        return getattr(REGISTRY[base], "display_name", "") or base
    return ABLATION_DISPLAY.get(base, base)


def display_name(method: str) -> str:
    """Name of a method in the tables: the bound's, the preset's, the strategy class's
    ``display_name``, the ablation's, else the method itself; the annotation unit after ``@``,
    strategy (and unit) options in parentheses and additions after ``+`` (``mmActS
    (ranking=per_region) + self-training``, ``Random region @ slices (k=3)``)."""
    from ada_bench.protocol import ADDITION_DISPLAY

    try:
        parsed = parse_run_name(method)
    except ValueError:
        return method
    text = _base_display(parsed.base_method)
    if parsed.unit:
        text = f"{text} @ {parsed.unit}"
    if parsed.option_text:
        options = ", ".join(item.strip() for item in split_top_level(parsed.option_text, ","))
        text = f"{text[:-1]}; {options})" if text.endswith(")") else f"{text} ({options})"
    for addition in parsed.additions:
        text += " + " + ADDITION_DISPLAY.get(addition, addition)
    return text


def table_order(method: str) -> tuple[int, int, str]:
    """Sort key of a method: bounds first, then the strategy classes by ``table_order`` (a
    variant, preset or addition right after its strategy), then every name the registry does not
    know (alphabetically)."""
    from ada_bench.protocol import PRESETS
    from lightning_ada.active.strategies import REGISTRY

    try:
        base = parse_run_name(method).base_method
    except ValueError:
        base = method
    if base in BOUND_ORDER:
        return (0, BOUND_ORDER[base], method)
    strategy = PRESETS[base].strategy if base in PRESETS else base
    strategy = "random" if base == "random_one_off" else strategy
    if strategy in REGISTRY:
        return (1, int(getattr(REGISTRY[strategy], "table_order", 100)), method)
    return (2, 0, method)


@dataclass
class Table:
    """A table in two renderings: markdown cells (formatted, bold) and numeric CSV rows.

    Attributes:
        title: heading of the markdown file.
        header: markdown column names.
        rows: markdown cells.
        csv_header: CSV column names.
        csv_rows: CSV values (numbers or strings).
        notes: lines printed under the markdown table.
    """

    title: str
    header: list[str]
    rows: list[list[str]]
    csv_header: list[str]
    csv_rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        """The table as GitHub markdown, with its title and notes."""
        lines = [f"## {self.title}", "", markdown_table(self.header, self.rows)]
        if self.notes:
            lines += [""] + self.notes
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """The numeric table as CSV text."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.csv_header)
        for r in self.csv_rows:
            w.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in r])
        return buf.getvalue()

    def write(self, folder: str | Path, name: str) -> list[Path]:
        """Write ``<name>.md`` and ``<name>.csv`` into ``folder`` (atomically); return the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for suffix, text in ((".md", self.markdown()), (".csv", self.csv())):
            path = folder / f"{name}{suffix}"
            write_text_atomic(path, text)
            out.append(path)
        return out


# ---------------------------------------------------------------------------------- helpers
def tasks_of(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Tasks present in ``rows``, known ones first in the paper's order."""
    found = {str(r["task"]) for r in rows}
    return [t for t in TASK_ORDER if t in found] + sorted(found - set(TASK_ORDER))


def extra_regions(rows: Iterable[Mapping[str, Any]], task: str) -> list[str]:
    """:data:`EXTRA_REGIONS` of ``task`` that the rows' per-case values hold."""
    found = {k for r in rows if r["task"] == task for c in r.get("per_case", []) for k in c}
    return [g for g in EXTRA_REGIONS.get(task, []) if f"dice_{g}" in found]


@dataclass(frozen=True)
class Entry:
    """A table row: label and which rows feed it.

    Attributes:
        label: displayed name.
        methods: method names accepted (the run name without ``@draw``).
        train_input: training input accepted (``all``, ``dominant_only``, ``modality:<name>``).
        key: identifier used in the CSV and for the p-value reference.
    """

    label: str
    methods: tuple[str, ...]
    train_input: str = "all"
    key: str = ""

    def rows(self, rows: Iterable[dict[str, Any]], task: str, budget: int) -> list[dict[str, Any]]:
        """The normalised rows of this entry on ``task`` at ``budget``."""
        return [
            r
            for r in rows
            if r["task"] == task
            and r["method"] in self.methods
            and r["train_input"] == self.train_input
            and (budgetless(r["method"]) or r["budget"] == budget)
        ]


def _bold(text: str) -> str:
    return f"**{text}**" if text != "–" else text


def comparison_table(
    rows: Iterable[Mapping[str, Any]],
    entries: Sequence[Entry],
    budget: int,
    reference: str,
    title: str,
    metrics: Sequence[tuple[str, str]] = (("dice", "Dice"), ("iou", "mIoU")),
    bold_best: bool = True,
    labels_column: bool = True,
    notes: Sequence[str] = (),
    first_column: str = "Method",
    mean_column: bool = True,
) -> Table:
    """Rows = entries; per task: ``metric x region`` cells, the mean Dice over regions (tasks with
    several regions), the p-value of ``reference`` vs the row, and the number of runs.

    Args:
        rows: result rows.
        entries: table rows (entries without any run are left out).
        budget: the budget of the compared strategies (bounds ignore it).
        reference: ``Entry.key`` of the row every p-value compares against.
        title: table title.
        metrics: ``(metric, column label)``; Dice and IoU shown in %, distances (``hd95``,
            ``assd``) in mm.
        bold_best: bold the best mean per column among the rows that are not bounds (the lowest
            for distances).
        labels_column: add the number of labels.
        notes: lines under the table.
        first_column: name of the first column.
        mean_column: add the mean Dice over the task's regions (tasks with several regions).
    """
    norm = [normalise(r) for r in rows]
    tasks = tasks_of(norm)
    ref = next((e for e in entries if e.key == reference), None)
    header = [first_column] + (["Labels"] if labels_column else [])
    csv_header = ["method"] + (["labels"] if labels_column else [])
    columns: list[tuple[str, str, list[str]]] = []  # (task, metric name, regions)
    for task in tasks:
        regions = regions_of(norm, task)
        for g in regions + extra_regions(norm, task):
            for m, label in metrics:
                columns.append((task, f"{m}_{g}", regions))
                header.append(f"{g} {label}")
                csv_header += [f"{task}_{g}_{m}_mean", f"{task}_{g}_{m}_std"]
        if len(regions) > 1 and mean_column:
            columns.append((task, "dice_mean", regions))
            header.append(f"{task} mean Dice")
            csv_header += [f"{task}_dice_mean_mean", f"{task}_dice_mean_std"]
    for task in tasks:
        header += [f"p {task}", f"runs {task}"]
        csv_header += [f"{task}_p", f"{task}_n_pairs", f"{task}_runs"]

    cells: list[tuple[Entry, dict[tuple[str, str], MeanStd], list[Any]]] = []
    for e in entries:
        stats: dict[tuple[str, str], MeanStd] = {}
        extra: list[Any] = []
        any_run = False
        for task, metric, regions in columns:
            stats[(task, metric)] = mean_std(
                per_run(e.rows(norm, task, budget), metric, regions).values()
            )
        for task in tasks:
            mine = e.rows(norm, task, budget)
            any_run |= bool(mine)
            runs = len({(r["fold"], r["seed"]) for r in mine})
            regions = regions_of(norm, task)
            if ref is not None and e.key != ref.key and mine:
                test = wilcoxon_paired(
                    per_case(ref.rows(norm, task, budget), "dice_mean", regions),
                    per_case(mine, "dice_mean", regions),
                )
                extra.append((test.p, test.n, runs))
            else:
                extra.append((math.nan, 0, runs))
        if any_run:
            cells.append((e, stats, extra))

    best: dict[tuple[str, str], float] = {}
    if bold_best:
        for task, metric, _ in columns:
            vals = [
                s[(task, metric)].mean
                for e, s, _ in cells
                if not all(is_bound(m) for m in e.methods) and s[(task, metric)].n
            ]
            if vals:
                lower = metric.split("_")[0] in LOWER_IS_BETTER
                best[(task, metric)] = min(vals) if lower else max(vals)

    md_rows, csv_rows = [], []
    for e, stats, extra in cells:
        labels = _labels(norm, e, budget)
        md = [_bold(e.label) if e.key == reference and bold_best else e.label]
        row: list[Any] = [e.key or e.label]
        if labels_column:
            md.append(labels)
            row.append(labels)
        for task, metric, _ in columns:
            s = stats[(task, metric)]
            scale = 1.0 if metric.split("_")[0] in LOWER_IS_BETTER else 100.0
            text = format_mean_std(s, scale)
            is_best = (
                not all(is_bound(m) for m in e.methods)
                and (task, metric) in best
                and s.n
                and math.isclose(s.mean, best[(task, metric)], abs_tol=1e-12)
            )
            md.append(_bold(text) if is_best else text)
            row += [s.mean * scale, s.std * scale]
        for p, n, runs in extra:
            md += ["ref." if e.key == reference else format_p(p), str(runs) if runs else "–"]
            row += [p, n, runs]
        md_rows.append(md)
        csv_rows.append(row)
    return Table(title, header, md_rows, csv_header, csv_rows, list(notes))


def _labels(norm: Sequence[dict[str, Any]], e: Entry, budget: int) -> str:
    """Number of labels of an entry (``all`` when the pool size is unknown)."""
    if all(bound_of(m) == "lower" for m in e.methods):
        return "0"
    if all(bound_of(m) == "upper" for m in e.methods):
        sizes = sorted({r["labels"] for r in norm if r["method"] in e.methods and r["labels"]})
        return "/".join(str(s) for s in sizes) if sizes else "all"
    return str(budget)


# ---------------------------------------------------------------------------------- the tables
def present_methods(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The bounds and strategies with results (every input modality, not an ablation run of a
    strategy: ``run`` is the strategy's name or a repeated draw of it, or a variant: strategy
    options, a preset or additions), in table order."""
    found = set()
    for raw in rows:
        r = normalise(raw)
        if r["train_input"] != "all" or r["run"] == "source":
            continue
        if r["method"] == r["strategy"] or r.get("variant") or is_variant(r["method"]):
            found.add(r["method"])
    return sorted(found, key=table_order)


#: the p note of a table whose reference strategy has no run (names no absent method)
NO_REFERENCE = (
    "p: not computed: the strategy these p-values take as reference did not run in this "
    "benchmark."
)


def has_runs(rows: Iterable[Mapping[str, Any]], entry: Entry, budget: int) -> bool:
    """Whether ``entry`` has a run at ``budget`` on any task of ``rows``."""
    norm = [normalise(r) for r in rows]
    return any(entry.rows(norm, t, budget) for t in tasks_of(norm))


def method_entries(rows: Sequence[Mapping[str, Any]]) -> list[Entry]:
    """One table row per method present (all modalities as input), in table order."""
    return [Entry(display_name(m), (m,), "all", m) for m in present_methods(rows)]


def table1(rows: Iterable[Mapping[str, Any]], budget: int = 3) -> Table:
    """The paper's Table 1: lower / upper bound and every strategy at ``budget`` labels."""
    rows = list(rows)
    entries = method_entries(rows)
    with_ref = any(e.key == REFERENCE and has_runs(rows, e, budget) for e in entries)
    return comparison_table(
        rows,
        entries,
        budget,
        REFERENCE,
        f"Table 1: adaptation results at budget {budget} (Dice / mIoU in %, mean ± std over runs)",
        notes=[
            (
                "Runs = fold x seed; each run's value is the mean over its test cases. Bold: best "
                "mean among the strategies (bounds excluded)."
            ),
            (
                f"p: paired Wilcoxon signed-rank test (two-sided) of {display_name(REFERENCE)} "
                "vs the row, over the same test cases (fold, seed, case), on the per-case Dice "
                "averaged over the task's regions."
                if with_ref
                else NO_REFERENCE
            ),
        ],
    )


def table1_distances(rows: Iterable[Mapping[str, Any]], budget: int = 3) -> Table:
    """Table 1's runs in surface distances: HD95 and ASSD per region (mm, lower is better)."""
    rows = list(rows)
    entries = method_entries(rows)
    with_ref = any(e.key == REFERENCE and has_runs(rows, e, budget) for e in entries)
    return comparison_table(
        rows,
        entries,
        budget,
        REFERENCE,
        f"Table 1 (distances): HD95 / ASSD in mm at budget {budget}, mean ± std over runs",
        metrics=(("hd95", "HD95"), ("assd", "ASSD")),
        mean_column=False,
        notes=[
            (
                "Bold: lowest mean among the strategies. A case whose region is empty in exactly "
                "one of reference and prediction has no distance (ALGORITHMS.md 12) and is left "
                "out of that cell (both empty: 0 mm); "
                + ("p as in Table 1 (per-case Dice)." if with_ref else NO_REFERENCE)
            ),
        ],
    )


def parse_train_input(value: str) -> str | None:
    """The modality of a ``modality:<name>`` training input, else None."""
    return value.split(":", 1)[1] if value.startswith("modality:") else None


def table2(rows: Iterable[Mapping[str, Any]], budget: int = 3) -> Table:
    """The paper's Table 2: mmActS trained on one modality (``train_input: modality:<m>``), on
    the elected modality of each case (``dominant_only``), and on all modalities."""
    norm = [normalise(r) for r in rows]
    inputs = {r["train_input"] for r in norm if r["method"].startswith("mmacts")}
    mods = [m for m in MODALITY_DISPLAY if f"modality:{m}" in inputs]
    mods += sorted({parse_train_input(i) for i in inputs if parse_train_input(i)} - set(mods))
    entries = [
        Entry(
            MODALITY_DISPLAY.get(m, m),
            ("mmacts", f"mmacts_input_{m}"),
            f"modality:{m}",
            f"input_{m}",
        )
        for m in mods
    ]
    entries.append(
        Entry("Elected only", ("mmacts", "mmacts_dominant_only"), "dominant_only", "dominant_only")
    )
    entries.append(Entry("Multiple (all)", ("mmacts",), "all", "all"))
    if not any(has_runs(norm, e, budget) for e in entries):
        title = f"Table 2: modality ablation at budget {budget}: no runs in this benchmark"
        notes = [
            "No run trained on one modality (train_input modality:<name>), on the elected "
            "modality of each case (dominant_only) or on all of them at this budget is in "
            "results.jsonl (scripts/benchmark.py --ablations modality makes them)."
        ]
    else:
        title = f"Table 2: modality ablation, mmActS at budget {budget} (Dice / mIoU in %)"
        notes = [
            "p: paired Wilcoxon test of all modalities vs the row (per-case Dice, region mean).",
            (
                "Needs the datamodule's train_input: modality:<name> (single-modality training) "
                "and dominant_only (the elected modality of each case)."
            ),
        ]
    return comparison_table(
        norm,
        entries,
        budget,
        "all",
        title,
        bold_best=False,
        labels_column=False,
        first_column="Training input",
        notes=notes,
    )


def schedule_table(rows: Iterable[Mapping[str, Any]], budget: int = 3) -> Table:
    """One-off vs sequential mmActS (with LAMDA and STDR, as the paper's text compares them)."""
    entries = [
        Entry("mmActS one-off", ("mmacts_one_off",), "all", "mmacts_one_off"),
        Entry("mmActS sequential", ("mmacts",), "all", "mmacts"),
        Entry(display_name("lamda"), ("lamda",), "all", "lamda"),
        Entry(display_name("stdr"), ("stdr",), "all", "stdr"),
    ]
    rows = list(rows)
    title = f"Ablation: one-off vs sequential querying at budget {budget} (Dice in %)"
    if not any(has_runs(rows, e, budget) for e in entries):
        title = f"Ablation: one-off vs sequential querying at budget {budget}: no runs in this " \
            "benchmark"
        notes = ["No run of this ablation at this budget is in results.jsonl "
                 "(scripts/benchmark.py --ablations schedule makes them)."]
    elif has_runs(rows, entries[1], budget):
        notes = ["p: paired Wilcoxon test of sequential mmActS vs the row."]
    else:
        notes = [NO_REFERENCE]
    return comparison_table(
        rows,
        entries,
        budget,
        "mmacts",
        title,
        metrics=(("dice", "Dice"),),
        bold_best=False,
        labels_column=False,
        notes=notes,
    )


def budget_table(rows: Iterable[Mapping[str, Any]], metric: str = "dice_mean") -> Table:
    """Mean Dice (over regions) vs number of labels: one line per task and strategy."""
    norm = [normalise(r) for r in rows if r["run"] != "source"]
    budgets = sorted(
        {r["budget"] for r in norm if not is_bound(r["method"]) and r["train_input"] == "all"}
    )
    header = ["Task", "Method", "0 (lower)"] + [str(b) for b in budgets] + ["upper"]
    csv_header = ["task", "method", "0_mean", "0_std"]
    for b in budgets:
        csv_header += [f"{b}_mean", f"{b}_std"]
    csv_header += ["upper_mean", "upper_std"]
    md_rows, csv_rows = [], []
    for task in tasks_of(norm):
        regions = regions_of(norm, task)

        def value(
            method: str, budget: int | None, task: str = task, regions: list[str] = regions
        ) -> MeanStd:
            sel = [
                r
                for r in norm
                if r["task"] == task
                and r["method"] == method
                and r["train_input"] == "all"
                and (budget is None or r["budget"] == budget)
            ]
            return mean_std(per_run(sel, metric, regions).values())

        lower, upper = value("lower", None), value("upper", None)
        for m in present_methods(norm):
            if is_bound(m):
                continue
            vals = [value(m, b) for b in budgets]
            if not any(v.n for v in vals):
                continue
            md_rows.append(
                [task, display_name(m), format_mean_std(lower, 100)]
                + [format_mean_std(v, 100) for v in vals]
                + [format_mean_std(upper, 100)]
            )
            row: list[Any] = [task, m, lower.mean * 100, lower.std * 100]
            for v in vals:
                row += [v.mean * 100, v.std * 100]
            csv_rows.append(row + [upper.mean * 100, upper.std * 100])
    return Table(
        f"Budget curve: {metric} (%) vs number of labels",
        header,
        md_rows,
        csv_header,
        csv_rows,
        ["Mean ± std over runs (fold x seed); 0 labels = the lower bound (source model)."],
    )


def all_runs_table(rows: Iterable[Mapping[str, Any]], reference: str = REFERENCE) -> Table:
    """Every (task, method, budget, training input) present, with all metrics and p vs mmActS."""
    norm = [normalise(r) for r in rows if r["run"] != "source"]
    groups = sorted(
        {(r["task"], r["method"], r["budget"], r["train_input"]) for r in norm},
        key=lambda g: (
            TASK_ORDER.index(g[0]) if g[0] in TASK_ORDER else 9,
            g[0],
            -1 if g[2] is None else g[2],
            table_order(g[1]),
            g[3],
        ),
    )
    metric_names = ["dice_mean", "iou_mean", "hd95_mean", "assd_mean"]
    header = ["Task", "Method", "Budget", "Input", "Runs"]
    csv_header = ["task", "method", "budget", "train_input", "runs"]
    regions_by_task = {t: regions_of(norm, t) for t in tasks_of(norm)}
    region_cols = [(t, g) for t, gs in regions_by_task.items() for g in gs]
    with_ref = any(r["method"] == reference and r["train_input"] == "all" for r in norm)
    header += [f"Dice {g}" for _, g in region_cols] + [
        "Dice mean",
        "IoU mean",
        "HD95 mean (mm)",
        "ASSD mean (mm)",
        f"p vs {display_name(reference)}" if with_ref else "p",
    ]
    csv_header += [f"{t}_dice_{g}" for t, g in region_cols] + metric_names + ["p", "n_pairs"]
    md_rows, csv_rows = [], []
    for task, method, budget, train_input in groups:
        regions = regions_by_task[task]
        sel = [
            r
            for r in norm
            if (r["task"], r["method"], r["budget"], r["train_input"])
            == (task, method, budget, train_input)
        ]
        runs = len({(r["fold"], r["seed"]) for r in sel})
        shown = "all" if bound_of(method) == "upper" else str(budget)  # bounds ignore the budget
        md = [task, method, shown, train_input, str(runs)]
        row: list[Any] = [task, method, budget, train_input, runs]
        for t, g in region_cols:
            s = (
                mean_std(per_run(sel, f"dice_{g}", regions).values())
                if t == task
                else MeanStd(math.nan, math.nan, 0)
            )
            md.append(format_mean_std(s, 100))
            row.append(s.mean * 100)
        for m in metric_names:
            s = mean_std(per_run(sel, m, regions).values())
            scale = 100.0 if m.split("_")[0] in ("dice", "iou") else 1.0
            md.append(format_mean_std(s, scale))
            row.append(s.mean * scale)
        ref = [
            r
            for r in norm
            if r["task"] == task
            and r["method"] == reference
            and r["train_input"] == "all"
            and r["budget"] == (3 if is_bound(method) else budget)
        ]
        if (method == reference and train_input == "all") or not ref:
            p, n = math.nan, 0
        else:
            test = wilcoxon_paired(
                per_case(ref, "dice_mean", regions), per_case(sel, "dice_mean", regions)
            )
            p, n = test.p, test.n
        md.append(format_p(p))
        csv_rows.append(row + [p, n])
        md_rows.append(md)
    return Table(
        "Every run group (mean ± std over runs; Dice / IoU in %, distances in mm)",
        header,
        md_rows,
        csv_header,
        csv_rows,
        [
            f"p: paired Wilcoxon test of {display_name(reference)} (same budget; budget 3 for the "
            "bounds) vs the group."
            if with_ref
            else NO_REFERENCE
        ],
    )


#: name -> builder of every table written by :func:`write_tables`
TABLES: dict[str, Callable[[list[dict[str, Any]]], Table]] = {
    "table1": table1,
    "table1_distances": table1_distances,
    "table2": table2,
    "ablation_schedule": schedule_table,
    "budget_curve": budget_table,
    "all_runs": all_runs_table,
}


def write_tables(rows: Sequence[Mapping[str, Any]], folder: str | Path) -> dict[str, Table]:
    """Build every table of :data:`TABLES`; write ``<name>.md`` / ``<name>.csv`` into ``folder``."""
    rows = [dict(r) for r in rows]
    out = {}
    for name, build in TABLES.items():
        table = build(rows)
        table.write(folder, name)
        out[name] = table
    return out
