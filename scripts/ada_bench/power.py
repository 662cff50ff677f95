"""The power profile's tables and figures: every strategy against ``random``, paired over seeds.

Per seed (one phantom draw, one training seed, one fold), a method's value at a budget is its mean
Dice (``dice_mean``: per case the mean over the task's regions, then the mean over the test
cases). For every strategy and budget the per-seed paired difference ``d_s = strategy_s -
random_s`` is summarised by its mean, a 95 % bootstrap CI (BCa), the two-sided Wilcoxon
signed-rank p and the minimum detectable difference (MDD), at each budget and of the normalised
area under the budget curve (AUBC: the average Dice over the measured budgets); the definitions and
every computation are in :mod:`ada_bench.stats` (:func:`~ada_bench.stats.compare`), this module
only lays them out. Budget curves of sequential strategies may come from one run tested after
each query's stride (:mod:`ada_bench.curve`); the table says which.

A run with additions (``X+add``, :mod:`ada_bench.names`) is compared with ``random`` like every
strategy and, in a second table, with ``X`` (the gain of the addition; also with ``X`` stripped of
every addition when that is another run): the same paired summaries over seeds. For a bound
(``upper+dgst`` vs ``upper``) the measure is the Dice with every pool case labelled.

The pairwise penalty matrix of every task (:func:`penalty_table`, ``power_penalty.md``) ranks all
strategies against each other over the budgets (:func:`ada_bench.stats.penalty_matrix`).

With a protocol file (:mod:`ada_bench.endpoint`) ``power.md`` opens with the declared primary
comparison, Holm-adjusted over its rows, and heads every other table "secondary / exploratory
(unadjusted p)".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ada_bench.markdown import format_p
from ada_bench.names import compose_name, parse_run_name
from ada_bench.results import budgetless, expand_curves, normalise
from ada_bench.stats import (
    ALPHA,
    BASELINE,
    ONE_OFF_BASELINE,
    Paired,
    Penalty,
    bound_point,
    budget_values,
    compare,
    compare_gap,
    curve_points,
    matched_baseline,
    penalty_matrix,
    seed_values,
    source_of,
)
from ada_bench.tables import Table, display_name, present_methods, tasks_of
from lightning_ada.io import write_text_atomic


def _fmt(x: float, digits: int = 2) -> str:
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def budgets_of(rows: Iterable[Mapping[str, Any]]) -> list[int]:
    """The budgets a power run planned: those of the runs made per budget, else (only curves)
    every budget of the curves."""
    norm = [normalise(r) for r in expand_curves(rows) if not budgetless(r["run"])]
    own = sorted({r["budget"] for r in norm if not r.get("from_curve")})
    return own or sorted({r["budget"] for r in norm})


def _paired_cells(res: Paired, ma: float, mb: float) -> list[str]:
    return [
        str(res.n), _fmt(ma), _fmt(mb), _fmt(res.mean),
        f"[{_fmt(res.ci_low)}, {_fmt(res.ci_high)}]", format_p(res.p), _fmt(res.mdd),
    ]


def _paired_values(res: Paired, ma: float, mb: float) -> list[Any]:
    return [res.n, ma, mb, res.mean, res.ci_low, res.ci_high, res.p, res.sd, res.mdd]


def _unit_words(pair_by: str) -> tuple[str, str]:
    """(column header, phrase) of the paired unit."""
    return ("Seeds", "seeds") if pair_by == "seed" else ("Runs", "runs (fold x seed)")


def power_table(
    rows: Iterable[Mapping[str, Any]],
    budgets: Sequence[int] | None = None,
    baseline: str = BASELINE,
    pair_by: str = "seed",
) -> Table:
    """Every strategy vs ``baseline``: paired differences over seeds at each budget and of AUBC.

    Rows with a budget curve are expanded first (:func:`ada_bench.results.expand_curves`).
    Differences are in Dice points (%). ``budgets`` defaults to :func:`budgets_of`.
    """
    rows = [normalise(r) for r in expand_curves(rows) if r["run"] != "source"]
    budgets = list(budgets or budgets_of(rows))
    unit, units = _unit_words(pair_by)
    header = [
        "Task", "Strategy", "Baseline", "Measure", unit, "Strategy %", "Baseline %",
        "Δ points", "95 % CI", "Wilcoxon p", "MDD points",
    ]
    csv_header = [
        "task", "strategy", "baseline", "measure", "n_seeds", "strategy_mean", "baseline_mean",
        "diff_mean", "ci_low", "ci_high", "p", "sd", "mdd", "strategy_source", "baseline_source",
    ]
    md, csv_rows = [], []
    for task in tasks_of(rows):
        methods = present_methods([r for r in rows if r["task"] == task])
        if not seed_values(rows, task, baseline, pair_by=pair_by):
            continue
        for method in methods:
            if budgetless(method) or method == baseline:
                continue
            src = source_of(rows, task, method)
            matched = matched_baseline(rows, task, method, methods, baseline, pair_by)
            base_src = source_of(rows, task, matched)
            for label, res, ma, mb in compare(rows, task, method, matched, budgets, pair_by):
                md.append(
                    [task, display_name(method), display_name(matched), label,
                     *_paired_cells(res, ma, mb)]
                )
                csv_rows.append(
                    [task, method, matched, label, *_paired_values(res, ma, mb), src, base_src]
                )
    sources = sorted({(r["task"], r["method"]) for r in rows if r.get("from_curve")})
    curve_note = (
        "Budget curves from ONE sequential run tested after each query's stride (the model of "
        "budget k trained k x stride epochs): "
        + ", ".join(f"{t} {display_name(m)}" for t, m in sources)
        + "; every other strategy ran once per budget (trained the full schedule)."
        if sources
        else "Every strategy ran once per budget."
    )
    if any(r["method"] == ONE_OFF_BASELINE for r in rows):
        curve_note += (
            f" Strategies that query their whole budget at once are compared with "
            f"{display_name(ONE_OFF_BASELINE)} (random picks, the whole budget at epoch 0, the "
            "same full schedule) where it ran on the same units; the others with "
            f"{display_name(baseline)}."
        )
    unit_one = "seed" if pair_by == "seed" else "run"
    same = (
        "same phantom draw, source model and test cases"
        if pair_by == "seed"
        else "same fold, seed, source model and test cases"
    )
    unit_note = (
        []
        if pair_by == "seed"
        else [
            "Paired unit: one run = one fold of one seed (the folds hold different test cases); "
            "the runs of one seed share its source model, so they are not fully independent."
        ]
    )
    return Table(
        ("Power: every" if pair_by == "seed" else "Every")
        + " strategy vs random (the baseline of the same schedule), paired over "
        f"{units} (Dice in %)",
        header,
        md,
        csv_header,
        csv_rows,
        [
            f"Per {unit_one}: mean Dice over the test cases (per case the mean over the task's "
            f"regions); Δ = strategy − baseline of the same {unit_one} ({same}), in Dice "
            "points.",
            f"95 % CI: bootstrap (BCa, 9,999 resamples) of the mean Δ over {units}. Wilcoxon p: "
            f"two-sided signed-rank test of the per-{unit_one} Δ.",
            "MDD: (t_{0.975,n−1} + t_{0.80,n−1}) · sd(Δ) / √n, the mean difference a "
            "two-sided "
            "paired test at α = 0.05 detects with 80 % power given the observed spread.",
            *(
                [f"AUBC: trapezoid of Dice over budgets {', '.join(map(str, budgets))} divided "
                 f"by {max(budgets)} − {min(budgets)} (the mean Dice over that budget range)."]
                if len(budgets) > 1
                else []
            ),
            curve_note,
            *unit_note,
        ],
    )


def addition_references(method: str) -> list[str]:
    """The methods a run with additions is compared with: itself without its last addition, and
    without any addition (when that differs); [] for a run without additions."""
    try:
        parsed = parse_run_name(method)
    except ValueError:
        return []
    last = parsed.without_last_addition()
    if last is None:
        return []
    return list(dict.fromkeys([last, parsed.without_additions()]))


def additions_table(
    rows: Iterable[Mapping[str, Any]],
    budgets: Sequence[int] | None = None,
    pair_by: str = "seed",
) -> Table:
    """The gain of every addition: ``X+add`` vs ``X`` (and vs ``X`` without any addition),
    paired over seeds (or runs) as :func:`power_table` (bounds: the Dice with every label)."""
    rows = [normalise(r) for r in expand_curves(rows) if r["run"] != "source"]
    budgets = list(budgets or budgets_of(rows) or [1])
    unit, units = _unit_words(pair_by)
    header = [
        "Task", "Run", "Compared with", "Measure", unit, "Run %", "Reference %", "Δ points",
        "95 % CI", "Wilcoxon p", "MDD points",
    ]
    csv_header = [
        "task", "run", "reference", "measure", "n_seeds", "run_mean", "reference_mean",
        "diff_mean", "ci_low", "ci_high", "p", "sd", "mdd",
    ]
    md, csv_rows = [], []
    for task in tasks_of(rows):
        present = present_methods([r for r in rows if r["task"] == task])
        for method in present:
            for ref in addition_references(method):
                if ref not in present:
                    continue
                for label, res, ma, mb in compare(rows, task, method, ref, budgets, pair_by):
                    md.append(
                        [task, display_name(method), display_name(ref), label,
                         *_paired_cells(res, ma, mb)]
                    )
                    csv_rows.append([task, method, ref, label, *_paired_values(res, ma, mb)])
    return Table(
        f"Gain of each addition: the run vs the same run without it, paired over {units} "
        "(Dice in %)",
        header,
        md,
        csv_header,
        csv_rows,
        [
            "Δ = run − reference of the same seed, in Dice points; CI, p and MDD as above. The "
            "reference is the run without its last addition and, for several additions, also "
            "the run without any; bounds compare the Dice with every pool case labelled.",
        ],
    )


def gap_table(
    rows: Iterable[Mapping[str, Any]],
    budgets: Sequence[int] | None = None,
    pair_by: str = "seed",
) -> Table:
    """Does an addition widen or narrow a selection rule's gap to random?

    For every run ``S+X`` of a selection rule ``S`` (not random, not a bound) with additions
    ``X`` whose random counterpart ``R+X`` ran too (``R``: the baseline :func:`matched_baseline`
    pairs ``S`` with), the per-unit difference of differences
    ``(S+X − R+X) − (S − R)`` in Dice points, at each budget and of the AUBC, paired over the
    units all four runs share. Positive: the addition widens the rule's lead over random.
    """
    rows = [normalise(r) for r in expand_curves(rows) if r["run"] != "source"]
    budgets = list(budgets or budgets_of(rows) or [1])
    unit, units = _unit_words(pair_by)
    header = [
        "Task", "Rule", "With", "Measure", unit, "Gap without (points)", "Gap with (points)",
        "Δ gap points", "95 % CI", "Wilcoxon p", "MDD points",
    ]
    csv_header = [
        "task", "rule", "with", "baseline", "measure", "n_seeds", "gap_without", "gap_with",
        "diff_mean", "ci_low", "ci_high", "p", "sd", "mdd",
    ]
    md, csv_rows = [], []
    for task in tasks_of(rows):
        present = present_methods([r for r in rows if r["task"] == task])
        for method in present:
            try:
                parsed = parse_run_name(method)
            except ValueError:
                continue
            rule = parsed.without_additions()
            if not parsed.additions or budgetless(rule) or parsed.base_method.startswith(BASELINE):
                continue
            baseline = matched_baseline(rows, task, rule, present, pair_by=pair_by)
            baseline_with = compose_name(baseline, "", parsed.additions)
            if not {rule, baseline, baseline_with} <= set(present):
                continue
            added = "+".join(parsed.additions)
            for label, res, gap_without, gap_with in compare_gap(
                rows, task, method, baseline_with, rule, baseline, budgets, pair_by
            ):
                md.append([task, display_name(rule), added, label,
                           *_paired_cells(res, gap_without, gap_with)])
                csv_rows.append([task, rule, added, baseline, label,
                                 *_paired_values(res, gap_without, gap_with)])
    return Table(
        f"Does an addition widen a selection rule's gap to random? Paired over {units} "
        "(Dice in %)",
        header,
        md,
        csv_header,
        csv_rows,
        [
            "Gap without = rule − random; gap with = (rule + addition) − (random + the same "
            "addition), both in Dice points and averaged over the units all four runs share. "
            "Δ gap = gap with − gap without of the same unit (positive: the addition widens "
            "the rule's lead); CI, p and MDD as above.",
        ],
    )


def power_figure(rows: Sequence[Mapping[str, Any]], task: str, path: str | Path) -> Path | None:
    """Budget curves (mean Dice over seeds, %) with 95 % bootstrap bands; bounds as lines.

    Returns None when ``task`` has no strategy rows.
    """
    from ada_bench.plots import _pyplot, _save

    rows = [normalise(r) for r in expand_curves(rows) if r["task"] == task and r["run"] != "source"]
    methods = [m for m in present_methods(rows) if not budgetless(m)]
    if not methods:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    low = bound_point(rows, task, "lower")
    for i, m in enumerate(methods):
        pts = curve_points(rows, task, m)
        if low:
            pts = [(0, *low), *pts]
        x = np.array([p[0] for p in pts], float)
        y = np.array([p[1] for p in pts]) * 100
        band_lo = np.array([p[2] for p in pts]) * 100
        band_hi = np.array([p[3] for p in pts]) * 100
        (line,) = ax.plot(
            x, y, marker="o", ms=3.5, label=display_name(m), color=f"C{i % 10}",
            lw=2.5 if m == BASELINE else 1.3,
        )
        ok = ~(np.isnan(band_lo) | np.isnan(band_hi))
        ax.fill_between(x[ok], band_lo[ok], band_hi[ok], color=line.get_color(), alpha=0.15, lw=0)
    upper = bound_point(rows, task, "upper")
    if upper:
        mean, lo, hi, _ = upper
        ax.axhline(mean * 100, color="k", ls="--", lw=1, label="Upper bound")
        if not math.isnan(lo):
            ax.axhspan(lo * 100, hi * 100, color="k", alpha=0.06)
    n = len({r["seed"] for r in rows})
    ax.set_xticks(sorted({0, *(r["budget"] for r in rows if not budgetless(r["run"]))}))
    ax.set_xlabel("number of labelled target cases (0 = lower bound)")
    ax.set_ylabel("mean Dice (%)")
    ax.set_title(f"{task}: mean over {n} seeds, 95 % bootstrap bands")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    return _save(fig, path)


def task_penalty(
    rows: Iterable[Mapping[str, Any]],
    task: str,
    budgets: Sequence[int] | None = None,
    pair_by: str = "seed",
    alpha: float = ALPHA,
    test: str = "t",
    family: str = "budgets",
) -> Penalty:
    """The pairwise penalty matrix (:func:`ada_bench.stats.penalty_matrix`) of every strategy of
    ``task`` (the bounds left out, in table order) on the Dice at each budget, paired over seeds
    (or ``(fold, seed)`` runs). ``budgets`` defaults to :func:`budgets_of`."""
    rows = [normalise(r) for r in expand_curves(rows) if r["run"] != "source"]
    budgets = list(budgets or budgets_of(rows))
    methods = [
        m for m in present_methods([r for r in rows if r["task"] == task]) if not budgetless(m)
    ]
    return penalty_matrix(
        budget_values(rows, task, methods, budgets, pair_by), budgets, alpha, test, family
    )


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def penalty_table(pen: Penalty, task: str, pair_by: str = "seed") -> Table:
    """A penalty matrix of one task as a table: row = the method that is better, column = the
    one it beats; the wins (row sums) in the last column, the losses (column sums) in the last
    row; the caption says how it was computed, from the matrix itself."""
    methods, budgets = list(pen.methods), list(pen.budgets)
    k, n_budgets = len(methods), len(budgets)
    wins, losses = pen.wins, pen.losses
    names = [display_name(m) for m in methods]
    header = ["Better ↓ than →", *names, "Wins (row sum)"]
    md = [
        [name, *("–" if i == j else f"{pen.matrix[i][j]:.2f}" for j in methods),
         f"{wins[i]:.2f}"]
        for i, name in zip(methods, names)
    ]
    md.append(["Losses (column sum)", *(f"{losses[j]:.2f}" for j in methods), ""])
    csv_rows = [
        [task, i, j, pen.matrix[i][j]] for i in methods for j in methods if i != j
    ]
    _, units = _unit_words(pair_by)
    unit = "seed" if pair_by == "seed" else "run"
    lo, hi = pen.n_range
    n_text = f"{lo}" if lo == hi else f"{lo}-{hi}"
    test = (
        "paired two-sided t-test"
        if pen.test == "t"
        else "two-sided Wilcoxon signed-rank test (exact for small n)"
    )
    made = [t for t in pen.tests if not math.isnan(t.p)]
    correction = {
        "budgets": f"Holm-corrected over the {n_budgets} budgets of each pair",
        "all": f"Holm-corrected over all {len(made)} tests of the task ({k * (k - 1) // 2} "
        f"pairs x {n_budgets} budgets)",
        "none": "not corrected for multiplicity",
    }[pen.family]
    untested = len(pen.tests) - len(made)
    notes = [
        f"P[row, column] = share of the {n_budgets} budgets ({', '.join(map(str, budgets))}) at "
        f"which the row method has a significantly higher Dice than the column method (per "
        f"{unit}: the mean over the test cases of the per-case mean over the task's regions).",
        f"Test: {test} of the per-{unit} differences over the {n_text} {units} both methods "
        f"have, {correction}, α = {pen.alpha:g}; each significant "
        f"budget adds 1/{n_budgets} to the winner's row (the larger mean wins).",
        f"{k} methods: a row sum counts wins (at most {k - 1}), a column sum losses (lower is "
        "better; BADGE and nnActive rank by it). Methods are compared as they ran: budget "
        "curves of sequential strategies and one-off strategies' runs per budget alike.",
        "Definition: the pairwise penalty matrix of nnActive (Lüth et al., TMLR 2025) after "
        "BADGE (Ash et al., ICLR 2020); scripts/ada_bench/stats.py penalty_matrix."
        + (
            f" {_count(untested, 'comparison')} had no test (fewer than 2 shared {units} or "
            "identical values)."
            if untested
            else ""
        ),
    ]
    return Table(
        f"Pairwise penalty matrix, {task}: Dice at {_count(n_budgets, 'budget')}, "
        f"{_count(k, 'method')}",
        header,
        md,
        ["task", "method", "compared_with", "share_better"],
        csv_rows,
        notes,
    )


def penalty_tests_table(pen: Penalty, task: str) -> Table:
    """Every paired test behind a penalty matrix (CSV: p, adjusted p, mean difference)."""
    rows = [
        [task, t.first, t.second, t.budget, t.n, 100 * t.mean_diff, t.p, t.p_adjusted,
         int(t.p_adjusted <= pen.alpha)]
        for t in pen.tests
    ]
    return Table(
        f"Paired tests of the penalty matrix, {task}", [], [],
        ["task", "method", "compared_with", "budget", "n", "diff_mean_points", "p",
         "p_adjusted", "significant"],
        rows,
    )


def write_penalties(
    rows: Sequence[Mapping[str, Any]], out: str | Path, pair_by: str = "seed"
) -> list[Path]:
    """Write ``power_penalty.md`` (one matrix per task with at least two strategies),
    ``power_penalty.csv`` (the entries) and ``power_penalty_tests.csv`` (every paired test)
    into ``out``; nothing when no task has two strategies. Returns the paths written."""
    out = Path(out)
    rows = [normalise(r) for r in expand_curves(rows) if r["run"] != "source"]
    budgets = budgets_of(rows)
    tables, tests = [], []
    for task in tasks_of(rows) if budgets else []:
        pen = task_penalty(rows, task, budgets, pair_by)
        if len(pen.methods) < 2:
            continue
        tables.append(penalty_table(pen, task, pair_by))
        tests.append(penalty_tests_table(pen, task))
    if not tables:
        return []
    out.mkdir(parents=True, exist_ok=True)
    texts = {
        "power_penalty.md": "\n".join(t.markdown() for t in tables),
        "power_penalty.csv": Table(
            "", [], [], tables[0].csv_header, [r for t in tables for r in t.csv_rows]
        ).csv(),
        "power_penalty_tests.csv": Table(
            "", [], [], tests[0].csv_header, [r for t in tests for r in t.csv_rows]
        ).csv(),
    }
    for name, text in texts.items():
        write_text_atomic(out / name, text)
    return [out / name for name in texts]


@dataclass
class PowerReport:
    """What :func:`power_report` wrote.

    Attributes:
        table: every strategy vs random (secondary when there is a primary table; its notes end
            with the additions' and the gaps' tables in markdown, if any).
        primary: the declared primary comparison (:mod:`ada_bench.endpoint`), if a protocol was
            given.
        figures: the PNG files.
        markdown: the text of ``power.md``.
    """

    table: Table
    primary: Table | None = None
    figures: list[Path] = field(default_factory=list)
    markdown: str = ""


def power_report(
    rows: Sequence[Mapping[str, Any]],
    out: str | Path,
    pair_by: str = "seed",
    protocol: Any = None,
) -> PowerReport:
    """Write ``power.md`` / ``power.csv`` (the additions' gains and the gaps, when there are
    any, appended to ``power.md`` and in ``power_additions.csv`` / ``power_gaps.csv``), the
    penalty matrices (:func:`write_penalties`: ``power_penalty.md``, its CSVs) and
    ``power_curve_<task>.png`` into ``out``.

    With a ``protocol`` (:class:`ada_bench.endpoint.Protocol`) ``power.md`` opens with its
    primary table (also ``power_primary.md/.csv``; the protocol's copy as ``protocol.yaml``;
    its declaration read from ``out/invocations.jsonl``) and every other table is headed
    secondary / exploratory.
    """
    from ada_bench.endpoint import SECONDARY, copy_protocol, primary_table

    out = Path(out)
    table = power_table(rows, pair_by=pair_by)
    gains = additions_table(rows, pair_by=pair_by)
    gaps = gap_table(rows, pair_by=pair_by)
    if protocol is not None:
        for t in (table, gains, gaps):
            t.title = SECONDARY + t.title.removeprefix("Power: ")
    if gains.rows:
        gains.write(out, "power_additions")
        table.notes = [*table.notes, "", gains.markdown()]
    if gaps.rows:
        gaps.write(out, "power_gaps")
        table.notes = [*table.notes, "", gaps.markdown()]
    table.write(out, "power")
    penalties = write_penalties(rows, out, pair_by)
    figures = [
        p
        for task in tasks_of(rows)
        if (p := power_figure(rows, task, out / f"power_curve_{task}.png")) is not None
    ]
    primary = None
    parts = []
    if protocol is not None:
        link = "power_penalty.md" if penalties else None
        primary = primary_table(rows, protocol, out, link, pair_by)
        primary.write(out, "power_primary")
        copy_protocol(protocol, out)
        parts.append(primary.markdown())
    parts.append(table.markdown())
    text = "\n".join(parts)
    write_text_atomic(out / "power.md", text)
    return PowerReport(table, primary, figures, text)


def write_power(
    rows: Sequence[Mapping[str, Any]], out: str | Path, pair_by: str = "seed",
    protocol: Any = None,
) -> tuple[Table, list[Path]]:
    """:func:`power_report`; returns its table (every strategy vs random) and figures."""
    report = power_report(rows, out, pair_by, protocol)
    return report.table, report.figures
