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
(unadjusted p)". Its figures (:func:`power_figures`) are small multiples: the selection rules
against random, one panel each, and the additions against the run they are added to, the bounds
dashed in every panel, with captions written from the rows they draw.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ada_bench.endpoint import SECONDARY, copy_protocol, primary_table
from ada_bench.markdown import format_p
from ada_bench.names import compose_name, parse_run_name
from ada_bench.results import budgetless, expand_curves, normalise, regions_of, schedule_of
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
from ada_bench.tables import (
    BOUND_DISPLAY,
    Table,
    display_name,
    present_methods,
    table_order,
    tasks_of,
)
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
    #: matched baseline (or "effect", "other") -> [(task, method, baseline)]
    schedules: dict[str, list[tuple[str, str, str]]] = {}
    mixed: list[str] = []  # the schedules of the "other" rows
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
            mine, theirs = schedule_of(rows, task, method), schedule_of(rows, task, matched)
            if method == ONE_OFF_BASELINE:
                schedules.setdefault("effect", []).append((task, method, matched))
            elif mine and theirs and mine != theirs:
                schedules.setdefault("other", []).append((task, method, matched))
                mixed.append(mine)
            else:
                schedules.setdefault(matched, []).append((task, method, matched))
            mark = " †" if mine and theirs and mine != theirs and method != ONE_OFF_BASELINE \
                else ""
            for label, res, ma, mb in compare(rows, task, method, matched, budgets, pair_by):
                md.append(
                    [task, display_name(method), display_name(matched) + mark, label,
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
    baseline_note = _baseline_note(schedules, mixed)
    which = "the baseline of the same schedule" if "other" not in schedules else (
        "the baseline of the same schedule where one ran, † where not"
    )
    return Table(
        ("Power: every" if pair_by == "seed" else "Every")
        + f" strategy vs random ({which}), paired over "
        f"{units} (Dice in %)",
        header,
        md,
        csv_header,
        csv_rows,
        [
            f"Per {unit_one}: mean Dice over the test cases (per case the mean over the task's "
            f"regions); Δ = strategy − baseline of the same {unit_one} ({same}), in Dice "
            "points.",
            f"95 % CI: bootstrap (BCa, 9,999 resamples) of the mean Δ over {units}, none below "
            "5 (a bootstrap of fewer values only restates their range). Wilcoxon p: two-sided "
            f"signed-rank test of the per-{unit_one} Δ.",
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
            *baseline_note,
            *unit_note,
        ],
    )


def _baseline_note(
    schedules: Mapping[str, Sequence[tuple[str, str, str]]], mixed: Sequence[str]
) -> list[str]:
    """Which baseline each row of the power table uses: ``schedules`` maps a baseline to its
    ``(task, method, baseline)`` rows, ``"effect"`` to the one-off random's row, ``"other"`` to
    the rows whose baseline recorded another schedule (``mixed``: theirs; a † row)."""

    every = {t for items in schedules.values() for t, _, _ in items}

    def names(items: Sequence[tuple[str, str, str]]) -> str:
        by: dict[str, list[str]] = {}
        for t, m, _ in items:
            by.setdefault(m, []).append(t)
        return ", ".join(
            display_name(m) + ("" if set(ts) == every else f" ({', '.join(ts)})")
            for m, ts in by.items()
        )

    named = {b: items for b, items in schedules.items() if b not in ("effect", "other")}
    parts = [f"{display_name(b)} for {names(items)}" for b, items in named.items()
             if b != BASELINE]
    if BASELINE in named:
        rest = named[BASELINE]
        parts.append(
            f"{display_name(BASELINE)} for "
            + (names(rest) if len(rest) <= 4 or not parts else "every other row")
        )
    notes = []
    if parts:
        notes.append("Baseline of each row, of the same query schedule: " + "; ".join(parts) + ".")
    if "effect" in schedules:
        notes.append(
            f"{display_name(ONE_OFF_BASELINE)} vs {display_name(BASELINE)}: the two schedules "
            "compared (the schedule effect)."
        )
    if "other" in schedules:
        other = schedules["other"]
        bases = ", ".join(dict.fromkeys(display_name(b) for _, _, b in other))
        one_off = all(mine == "one_off" for mine in mixed)
        notes.append(
            f"† Not the same schedule: {names(other)} "
            + (
                f"queried the whole budget at once (one-off) but no "
                f"{display_name(ONE_OFF_BASELINE)} ran on the same units, so the row compares "
                f"with {bases}, which queried one case per stride (sequential)"
                if one_off
                else f"and {bases} recorded different query schedules"
            )
            + ": its Δ mixes the selection rule with the query schedule."
        )
    return notes


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


#: at most this many curves in one panel of the power figures
MAX_CURVES = 6
#: colours of the baselines (the same in every panel and figure)
BASELINE_COLOURS = {BASELINE: "#000000", ONE_OFF_BASELINE: "#7f7f7f"}
#: qualitative colours of the selection rules, one per rule in table order (tab10 without its
#: grey, then Dark2's and Set1's)
RULE_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
    "#17becf", "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d",
    "#e41a1c", "#377eb8", "#4daf4a", "#984ea3",
)
#: qualitative colours of the additions (Dark2 and Set2): in the additions figure a curve's
#: colour is its addition's, its panel names the run it is added to
ADDITION_COLOURS = (
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#66c2a5", "#fc8d62",
    "#8da0cb", "#e78ac3",
)
#: the bounds: dashed in every panel
BOUND_STYLE = {"lower": ("#555555", (0, (5, 3))), "upper": ("#222222", (0, (2, 2)))}


@dataclass(frozen=True)
class Panel:
    """One panel of a power figure: its title and the methods it draws, in order."""

    title: str
    methods: tuple[str, ...]


def _additions(method: str) -> tuple[str, ...]:
    try:
        return parse_run_name(method).additions
    except ValueError:
        return ()


def _family(method: str) -> str:
    """The strategy a run name belongs to (a preset or options: its strategy's)."""
    from ada_bench.protocol import PRESETS

    try:
        base = parse_run_name(method).base_method
    except ValueError:
        return method
    return PRESETS[base].strategy if base in PRESETS else base


def _chunks(fixed: Sequence[str], members: Sequence[str]) -> list[tuple[str, ...]]:
    """``fixed`` + ``members`` in panels of at most :data:`MAX_CURVES` curves, ``fixed`` in each."""
    room = max(1, MAX_CURVES - len(fixed))
    return [(*fixed, *members[i:i + room]) for i in range(0, len(members), room)] or [
        tuple(fixed)
    ]


def rule_panels(rows: Sequence[Mapping[str, Any]], task: str) -> list[Panel]:
    """Panels of the selection rules of ``task``: random vs one-off random (when both ran), then
    one panel per selection rule (its presets and option variants with it), each with random and,
    for a rule paired with the one-off random, that baseline too. Runs with additions are not
    here (:func:`addition_panels`)."""
    methods = [m for m in present_methods([r for r in rows if r["task"] == task])
               if not budgetless(m)]
    baselines = [m for m in (BASELINE, ONE_OFF_BASELINE) if m in methods]
    panels = []
    if len(baselines) == 2:
        panels.append(Panel(
            f"{display_name(ONE_OFF_BASELINE)} vs {display_name(BASELINE)}", tuple(baselines)
        ))
    families: dict[str, list[str]] = {}
    for m in methods:
        if m in baselines or _additions(m):
            continue
        families.setdefault(_family(m), []).append(m)
    for members in families.values():
        matched = list(dict.fromkeys(
            matched_baseline(rows, task, m, methods) for m in members
        ))
        fixed = [b for b in baselines if b == BASELINE or b in matched]
        for chunk in _chunks(fixed, members):
            shown = [m for m in chunk if m not in fixed]
            panels.append(Panel(", ".join(display_name(m) for m in shown), chunk))
    return panels


def addition_panels(rows: Sequence[Mapping[str, Any]], task: str) -> list[Panel]:
    """One panel per run that additions were added to: that run and every run with additions on
    it (``random``, ``random+st``, ``random+gba`` ...), in table order."""
    methods = [m for m in present_methods([r for r in rows if r["task"] == task])
               if not budgetless(m)]
    groups: dict[str, list[str]] = {}
    for m in methods:
        if _additions(m):
            groups.setdefault(parse_run_name(m).without_additions(), []).append(m)
    panels = []
    for base, members in sorted(groups.items(), key=lambda kv: table_order(kv[0])):
        fixed = [base] if base in methods else []
        for chunk in _chunks(fixed, members):
            panels.append(Panel(f"{display_name(base)} + additions", chunk))
    return panels


def method_colours(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """One colour per method of ``rows`` (every task, so a method has the same colour in every
    figure): the baselines black and grey, the selection rules :data:`RULE_COLOURS` in table
    order, a run with additions its additions' colour (:data:`ADDITION_COLOURS`)."""
    methods = [m for m in present_methods(rows) if not budgetless(m)]
    colours: dict[str, str] = {}
    rules = [m for m in methods if m not in BASELINE_COLOURS and not _additions(m)]
    adds = list(dict.fromkeys("+".join(_additions(m)) for m in methods if _additions(m)))
    for m in methods:
        if m in BASELINE_COLOURS:
            colours[m] = BASELINE_COLOURS[m]
        elif _additions(m):
            k = adds.index("+".join(_additions(m)))
            colours[m] = ADDITION_COLOURS[k % len(ADDITION_COLOURS)]
        else:
            colours[m] = RULE_COLOURS[rules.index(m) % len(RULE_COLOURS)]
    return colours


def _legend_label(method: str, base: str | None) -> str:
    """A curve's legend entry: its name, or ``+ <additions>`` in a panel of additions to
    ``base``."""
    from ada_bench.protocol import ADDITION_DISPLAY

    adds = _additions(method)
    if base is None or not adds or method == base:
        return display_name(method)
    return "+ " + " + ".join(ADDITION_DISPLAY.get(a, a) for a in adds)


def draw_panels(
    rows: Sequence[Mapping[str, Any]],
    task: str,
    panels: Sequence[Panel],
    colours: Mapping[str, str],
    path: str | Path,
    title: str,
    additions: bool = False,
    xlabel: str = "labelled target cases (labels)",
    bases: Sequence[str] = (),
) -> Path | None:
    """Small multiples: each panel's curves (mean Dice over seeds, %, with 95 % bootstrap bands),
    both bounds dashed in every panel, one legend outside the axes. None without panels.

    ``xlabel`` names the budget axis; ``bases`` are more methods drawn as baselines (thick,
    squares, listed first), beside random and the one-off random."""
    from ada_bench.plots import _pyplot, _save

    if not panels:
        return None
    plt = _pyplot()
    n = len(panels)
    ncols = n if n <= 3 else (3 if n <= 9 else 4)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.4 * ncols, 2.8 * nrows), sharex=True, sharey=True,
        squeeze=False,
    )
    points = {m: curve_points(rows, task, m) for p in panels for m in p.methods}
    bounds = {b: bound_point(rows, task, b) for b in ("lower", "upper")}
    # legend: the baselines (and the runs additions are added to) first, the bounds last
    first: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    dashed: dict[str, Any] = {}
    budgets = sorted({b for pts in points.values() for b, *_ in pts})
    for ax, panel in zip(axes.flat, panels):
        base = panel.methods[0] if additions else None
        for m in panel.methods:
            pts = points[m]
            if not pts:
                continue
            x = np.array([p[0] for p in pts], float)
            y = np.array([p[1] for p in pts]) * 100
            lo = np.array([p[2] for p in pts]) * 100
            hi = np.array([p[3] for p in pts]) * 100
            label = _legend_label(m, base)
            is_base = m in BASELINE_COLOURS or m in bases or (additions and m == base)
            (line,) = ax.plot(
                x, y, marker="s" if is_base else "o", ms=3.5 if is_base else 3,
                color=colours[m], lw=2.2 if is_base else 1.4, label=label,
                zorder=3 if is_base else 4,
            )
            ok = ~(np.isnan(lo) | np.isnan(hi))
            if len(x) == 1 and ok.all():  # one point: its CI as an error bar
                ax.errorbar(x, y, yerr=[y - lo, hi - y], color=colours[m], capsize=3, lw=1.2)
            ax.fill_between(x[ok], lo[ok], hi[ok], color=colours[m],
                            alpha=0.10 if is_base else 0.16, lw=0)
            (first if is_base else rest).setdefault(label, line)
        for b, point in bounds.items():
            if point is None:
                continue
            colour, dash = BOUND_STYLE[b]
            line = ax.axhline(point[0] * 100, color=colour, ls=dash, lw=1.0, zorder=1,
                              label=BOUND_DISPLAY[b])
            dashed.setdefault(BOUND_DISPLAY[b], line)
        ax.set_title(panel.title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelbottom=True, labelsize=8)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("mean Dice (%)", fontsize=9)
    for i, ax in enumerate(axes.flat):
        if i < n and i + ncols >= n:  # the lowest panel of its column
            ax.set_xlabel(xlabel, fontsize=9)
    if budgets:
        axes[0, 0].set_xticks(budgets)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    handles = {**first, **{k: v for k, v in rest.items() if k not in first}, **dashed}
    fig.legend(
        list(handles.values()), list(handles), loc="upper left", bbox_to_anchor=(1.0, 0.95),
        fontsize=8, frameon=False,
    )
    return _save(fig, path)


def _seeds_words(rows: Sequence[Mapping[str, Any]], task: str, methods: Iterable[str]) -> str:
    ns = sorted({p[4] for m in methods for p in curve_points(rows, task, m)})
    if not ns:
        return "no seeds"
    return f"{ns[0]} seeds" if len(ns) == 1 else f"{ns[0]}-{ns[-1]} seeds (per point)"


def _bound_words(rows: Sequence[Mapping[str, Any]], task: str) -> str:
    parts = []
    low, up = bound_point(rows, task, "lower"), bound_point(rows, task, "upper")
    if low:
        parts.append(f"the lower bound (source model, 0 labels: mean Dice {low[0] * 100:.1f} %)")
    if up:
        pools = sorted({int(r["labels"]) for r in rows if r["task"] == task
                        and r["method"] == "upper" and r.get("labels")})
        pool = "/".join(map(str, pools))
        every = f"all {pool} pool cases labelled" if pools else "every pool case labelled"
        parts.append(f"the upper bound ({every}: mean Dice {up[0] * 100:.1f} %)")
    return ("Dashed lines, the same in every panel: " + " and ".join(parts) + ".") if parts else ""


def figure_caption(
    rows: Sequence[Mapping[str, Any]], task: str, panels: Sequence[Panel], additions: bool
) -> str:
    """The caption of a power figure, from the rows it draws: measure, seeds, bands, panels,
    baselines, where each curve's points come from, and the bounds."""
    methods = list(dict.fromkeys(m for p in panels for m in p.methods))
    regions = ", ".join(regions_of(rows, task))
    what = "additions vs the run they are added to" if additions else "selection rules vs random"
    head = (
        f"**{task}: {what}.** Mean Dice (%; per case the mean over {regions}) over "
        f"{_seeds_words(rows, task, methods)} against the number of labelled target cases "
        "(labels); bands: 95 % bootstrap CI (BCa) of the mean over seeds."
    )
    if additions:
        layout = (
            f" One panel per run that additions were added to ({len(panels)}): that run (thick, "
            "squares) and each addition on it; in this figure a colour is an addition, the same "
            "in every panel."
        )
    else:
        rules = [p for p in panels if not set(p.methods) <= set(BASELINE_COLOURS)]
        one_off = [m for m in methods if m not in BASELINE_COLOURS
                   and matched_baseline(rows, task, m, methods) == ONE_OFF_BASELINE]
        layout = (
            (f" First panel: {display_name(ONE_OFF_BASELINE)} vs {display_name(BASELINE)} (the "
             "schedule effect)." if len(rules) < len(panels) else "")
            + f" Then one panel per selection rule ({len(rules)}; presets and option variants "
            f"with their rule), each with {display_name(BASELINE)} (black)"
            + (
                f" and, for the one-off {', '.join(display_name(m) for m in one_off)}, "
                f"{display_name(ONE_OFF_BASELINE)} (grey), the baseline they are paired with in "
                "the tables"
                if one_off
                else ""
            )
            + "; one colour per method, the same in every panel."
        )
    groups: dict[tuple[str, str], list[str]] = {}
    for m in methods:
        found = ", ".join(str(p[0]) for p in curve_points(rows, task, m))
        groups.setdefault((source_of(rows, task, m), found), []).append(display_name(m))

    def budget_words(budgets: str) -> str:
        return f"budget{'s' if ',' in budgets else ''} {budgets}"

    sources = [
        (
            f"one run per seed tested after each query's stride ({budget_words(budgets)}): "
            if src == "curve"
            else f"one run per seed and budget ({budget_words(budgets)}): "
        )
        + ", ".join(names)
        for (src, budgets), names in groups.items()
    ]
    return " ".join(
        [head + layout, "Points: " + "; ".join(sources) + ".", _bound_words(rows, task)]
    ).strip()


def power_figures(
    rows: Sequence[Mapping[str, Any]], out: str | Path
) -> list[tuple[Path, str]]:
    """Write ``power_curve_<task>.png`` (:func:`rule_panels`) and, when runs with additions are
    present, ``power_curve_additions_<task>.png`` (:func:`addition_panels`) into ``out``;
    return ``(path, caption)`` of each."""
    out = Path(out)
    rows = [normalise(r) for r in expand_curves(rows) if r["run"] != "source"]
    colours = method_colours(rows)
    made = []
    for task in tasks_of(rows):
        for additions, panels, name, what in (
            (False, rule_panels(rows, task), f"power_curve_{task}.png",
             "selection rules vs random"),
            (True, addition_panels(rows, task), f"power_curve_additions_{task}.png",
             "additions vs the run they are added to"),
        ):
            n = _seeds_words(rows, task, [m for p in panels for m in p.methods])
            path = draw_panels(rows, task, panels, colours, out / name,
                               f"{task}: {what}, mean over {n}, 95 % CI bands", additions)
            if path is not None:
                made.append((path, figure_caption(rows, task, panels, additions)))
    return made


def figures_markdown(figures: Sequence[tuple[Path, str]]) -> str:
    """The figures section of ``power.md``: each figure (linked relative to its folder) and its
    caption."""
    if not figures:
        return ""
    lines = ["## Budget curves (descriptive, no test)", ""]
    for path, caption in figures:
        lines += [f"![{path.stem}]({path.name})", "", caption, ""]
    return "\n".join(lines)


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
    penalty matrices (:func:`write_penalties`: ``power_penalty.md``, its CSVs) and the figures
    (:func:`power_figures`, embedded at the end of ``power.md`` with their captions) into ``out``.

    With a ``protocol`` (:class:`ada_bench.endpoint.Protocol`) ``power.md`` opens with its
    primary table (also ``power_primary.md/.csv``; the protocol's copy as ``protocol.yaml``;
    its declaration read from ``out/invocations.jsonl``) and every other table is headed
    secondary / exploratory.
    """
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
    figures = power_figures(rows, out)
    primary = None
    parts = []
    if protocol is not None:
        link = "power_penalty.md" if penalties else None
        primary = primary_table(rows, protocol, out, link, pair_by)
        primary.write(out, "power_primary")
        copy_protocol(protocol, out)
        parts.append(primary.markdown())
    parts.append(table.markdown())
    if figures:
        parts.append(figures_markdown(figures))
    text = "\n".join(parts)
    write_text_atomic(out / "power.md", text)
    return PowerReport(table, primary, [p for p, _ in figures], text)


def write_power(
    rows: Sequence[Mapping[str, Any]], out: str | Path, pair_by: str = "seed",
    protocol: Any = None,
) -> tuple[Table, list[Path]]:
    """:func:`power_report`; returns its table (every strategy vs random) and figures."""
    report = power_report(rows, out, pair_by, protocol)
    return report.table, report.figures
