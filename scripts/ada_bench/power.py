"""The power profile's tables: every strategy against ``random``, paired over seeds.

Per seed (one phantom draw, one training seed, one fold), a method's value at a budget is its mean
Dice (``dice_mean``: per case the mean over the task's regions, then the mean over the test
cases). For every strategy and budget the per-seed paired difference ``d_s = strategy_s -
random_s`` is summarised by

* its mean and a 95 % bootstrap confidence interval over seeds (``scipy.stats.bootstrap``, BCa,
  9,999 resamples, fixed seed; the percentile interval when BCa is undefined);
* the two-sided Wilcoxon signed-rank p over seeds (``scipy.stats.wilcoxon``, exact for small n);
* the minimum detectable difference ``MDD = (t_{0.975, n-1} + t_{0.80, n-1}) * sd(d) / sqrt(n)``:
  the true mean difference a two-sided paired t-test at alpha = 0.05 would detect with 80 %
  power, given the observed spread of the paired differences (t quantiles, not z: n is small).

The same is done for the normalised area under the budget curve (AUBC): the trapezoid of the
mean Dice over the measured budgets (1, 2, 3, 5) divided by the budget range (5 - 1), i.e. the
average Dice over budgets 1 to 5. Budget curves of sequential strategies may come from one run
tested after each query's stride (:mod:`ada_bench.curve`); the table says which.

A run with additions (``X+add``, :mod:`ada_bench.names`) is compared with ``random`` like every
strategy and, in a second table, with ``X`` (the gain of the addition; also with ``X`` stripped of
every addition when that is another run): the same paired summaries over seeds. For a bound
(``upper+dgst`` vs ``upper``) the measure is the Dice with every pool case labelled.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ada_bench.names import compose_name, parse_run_name
from ada_bench.results import budgetless, expand_curves, normalise
from ada_bench.stats import per_run
from ada_bench.tables import Table, display_name, present_methods, regions_of, tasks_of

BASELINE = "random"
#: the baseline of strategies that ran once per budget, when present: random with the whole budget
#: at epoch 0 and the full schedule, as they did (the sequential random's budget curve gives the
#: model of budget k only k strides of training, which would favour them at small budgets)
ONE_OFF_BASELINE = "random_one_off"
CONFIDENCE = 0.95
POWER = 0.80
N_RESAMPLES = 9999


@dataclass(frozen=True)
class Paired:
    """Summary of per-seed paired differences.

    Attributes:
        n: number of seeds with both values.
        mean: mean difference.
        ci_low: lower end of the 95 % bootstrap CI of the mean.
        ci_high: upper end.
        p: two-sided Wilcoxon signed-rank p (1.0 when every difference is 0).
        sd: sample standard deviation of the differences.
        mdd: minimum detectable difference (module doc).
    """

    n: int
    mean: float
    ci_low: float
    ci_high: float
    p: float
    sd: float
    mdd: float


def mdd(sd: float, n: int, confidence: float = CONFIDENCE, power: float = POWER) -> float:
    """``(t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)`` (NaN for n < 2)."""
    from scipy.stats import t

    if n < 2 or math.isnan(sd):
        return math.nan
    alpha = 1 - confidence
    return float((t.ppf(1 - alpha / 2, n - 1) + t.ppf(power, n - 1)) * sd / math.sqrt(n))


def bootstrap_ci(values: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap CI of the mean of ``values`` (BCa; percentile when BCa is undefined, e.g.
    for identical values; NaN for fewer than 2 values)."""
    from scipy.stats import bootstrap

    x = np.asarray(values, float)
    if len(x) < 2:
        return math.nan, math.nan
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    for method in ("BCa", "percentile"):
        res = bootstrap(
            (x,),
            np.mean,
            confidence_level=CONFIDENCE,
            n_resamples=N_RESAMPLES,
            method=method,
            rng=np.random.default_rng(seed),
        )
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (math.isnan(lo) or math.isnan(hi)):
            return lo, hi
    return math.nan, math.nan


def paired(diffs: Sequence[float]) -> Paired:
    """:class:`Paired` of per-seed differences."""
    from scipy.stats import wilcoxon

    d = [float(x) for x in diffs if not math.isnan(float(x))]
    n = len(d)
    if n == 0:
        return Paired(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    mean = statistics.fmean(d)
    sd = statistics.stdev(d) if n > 1 else math.nan
    lo, hi = bootstrap_ci(d)
    p = 1.0 if all(x == 0 for x in d) else float(wilcoxon(d).pvalue)
    return Paired(n, mean, lo, hi, p, sd, mdd(sd, n))


def aubc(curve: Mapping[int, float], budgets: Sequence[int]) -> float:
    """Normalised area under the budget curve over ``budgets`` (trapezoid / budget range).

    NaN when a budget is missing from ``curve`` or fewer than two budgets are given.
    """
    b = sorted(budgets)
    if len(b) < 2 or any(k not in curve or math.isnan(curve[k]) for k in b):
        return math.nan
    y = [curve[k] for k in b]
    area = sum((b[i + 1] - b[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(b) - 1))
    return area / (b[-1] - b[0])


#: what one paired unit is: ``"seed"`` (the power profile: one phantom draw, source model and fold
#: per seed; folds of a seed averaged) or ``"run"`` (a fold of a seed: real data, whose folds are
#: different test cases)
PAIR_BY = ("seed", "run")


def seed_values(
    rows: Iterable[Mapping[str, Any]],
    task: str,
    method: str,
    metric: str = "dice_mean",
    pair_by: str = "seed",
) -> dict[Any, dict[int | None, float]]:
    """``{unit: {budget: value}}`` of ``method`` on ``task`` (the bounds under budget None).

    ``pair_by="seed"``: the unit is the seed, its folds averaged; ``"run"``: the unit is the
    ``(fold, seed)`` pair.
    """
    if pair_by not in PAIR_BY:
        raise ValueError(f"pair_by must be one of {PAIR_BY}, not {pair_by!r}")
    norm = [
        r
        for r in (normalise(x) for x in rows)
        if r["task"] == task and r["method"] == method and r["train_input"] == "all"
    ]
    regions = regions_of(norm, task)
    acc: dict[tuple[Any, int | None], list[float]] = defaultdict(list)
    budgets = {None if budgetless(method) else r["budget"] for r in norm}
    for b in budgets:
        sel = [r for r in norm if b is None or r["budget"] == b]
        for (fold, seed), v in per_run(sel, metric, regions).items():
            acc[(seed if pair_by == "seed" else (fold, seed), b)].append(v)
    out: dict[Any, dict[int | None, float]] = defaultdict(dict)
    for (unit, b), vals in acc.items():
        out[unit][b] = statistics.fmean(vals)
    return dict(out)


def _fmt(x: float, digits: int = 2) -> str:
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def _fmt_p(p: float) -> str:
    if math.isnan(p):
        return "–"
    return "<0.001" if p < 1e-3 else f"{p:.3g}"


def _source(rows: Sequence[Mapping[str, Any]], task: str, method: str) -> str:
    sel = [r for r in rows if r["task"] == task and r["method"] == method]
    return "curve" if any(r.get("from_curve") for r in sel) else "per budget"


def budgets_of(rows: Iterable[Mapping[str, Any]]) -> list[int]:
    """The budgets a power run planned: those of the runs made per budget, else (only curves)
    every budget of the curves."""
    norm = [normalise(r) for r in expand_curves(rows) if not budgetless(r["run"])]
    own = sorted({r["budget"] for r in norm if not r.get("from_curve")})
    return own or sorted({r["budget"] for r in norm})


Measure = tuple[str, dict[int, float], dict[int, float]]


def measures(
    mine: Mapping[int, Mapping[int | None, float]],
    base: Mapping[int, Mapping[int | None, float]],
    budgets: Sequence[int],
    bound: bool = False,
) -> list[Measure]:
    """``(label, {seed: value}, {seed: baseline value})`` of every compared measure: the Dice at
    each budget and the AUBC; for two bounds (``bound``) the Dice with every label."""
    if bound:
        return [
            (
                "Dice (all labels)",
                {s: v[None] for s, v in mine.items() if None in v},
                {s: v[None] for s, v in base.items() if None in v},
            )
        ]
    out: list[Measure] = [
        (
            f"Dice at {b}",
            {s: v[b] for s, v in mine.items() if b in v},
            {s: v[b] for s, v in base.items() if b in v},
        )
        for b in budgets
    ]
    out.append(
        (
            f"AUBC {min(budgets)}-{max(budgets)}",
            {s: aubc(v, budgets) for s, v in mine.items()},  # type: ignore[arg-type]
            {s: aubc(v, budgets) for s, v in base.items()},  # type: ignore[arg-type]
        )
    )
    return out


def compare(
    rows: Sequence[Mapping[str, Any]],
    task: str,
    method: str,
    baseline: str,
    budgets: Sequence[int],
    pair_by: str = "seed",
) -> list[tuple[str, Paired, float, float]]:
    """``(measure, paired summary of the per-unit differences in points, method mean %,
    baseline mean %)`` of ``method`` vs ``baseline`` on ``task`` over the units (seeds, or
    ``(fold, seed)`` runs with ``pair_by="run"``) both have."""
    mine = seed_values(rows, task, method, pair_by=pair_by)
    base = seed_values(rows, task, baseline, pair_by=pair_by)
    out = []
    for label, a, b_ in measures(mine, base, budgets, budgetless(method) and budgetless(baseline)):
        seeds = sorted(
            s for s in a.keys() & b_.keys() if not (math.isnan(a[s]) or math.isnan(b_[s]))
        )
        if not seeds:
            continue
        res = paired([100 * (a[s] - b_[s]) for s in seeds])
        ma = statistics.fmean(a[s] for s in seeds) * 100
        mb = statistics.fmean(b_[s] for s in seeds) * 100
        out.append((label, res, ma, mb))
    return out


def _paired_cells(res: Paired, ma: float, mb: float) -> list[str]:
    return [
        str(res.n), _fmt(ma), _fmt(mb), _fmt(res.mean),
        f"[{_fmt(res.ci_low)}, {_fmt(res.ci_high)}]", _fmt_p(res.p), _fmt(res.mdd),
    ]


def _paired_values(res: Paired, ma: float, mb: float) -> list[Any]:
    return [res.n, ma, mb, res.mean, res.ci_low, res.ci_high, res.p, res.sd, res.mdd]


def _schedule(rows: Sequence[Mapping[str, Any]], task: str, method: str) -> str | None:
    """The query schedule the rows of ``method`` record (``one_off``, ``sequential``), if any."""
    found = {r.get("schedule") for r in rows if r["task"] == task and r["method"] == method}
    found.discard(None)
    return found.pop() if len(found) == 1 else None


def matched_baseline(
    rows: Sequence[Mapping[str, Any]],
    task: str,
    method: str,
    methods: Sequence[str],
    baseline: str = BASELINE,
    pair_by: str = "seed",
) -> str:
    """The random baseline ``method`` is paired with: :data:`ONE_OFF_BASELINE` for a strategy
    that queries its whole budget at once (its rows' ``schedule``; without one, a strategy run
    once per budget rather than as a budget curve), when that baseline ran on every unit the
    strategy did; else ``baseline`` (random on the same schedule as the curves)."""
    if method == ONE_OFF_BASELINE or ONE_OFF_BASELINE not in methods:
        return baseline
    schedule = _schedule(rows, task, method)
    one_off = schedule == "one_off" if schedule else _source(rows, task, method) == "per budget"
    if not one_off:
        return baseline
    mine = seed_values(rows, task, method, pair_by=pair_by)
    theirs = seed_values(rows, task, ONE_OFF_BASELINE, pair_by=pair_by)
    return ONE_OFF_BASELINE if mine.keys() <= theirs.keys() else baseline


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
            src = _source(rows, task, method)
            matched = matched_baseline(rows, task, method, methods, baseline, pair_by)
            base_src = _source(rows, task, matched)
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
            vals = {
                m: seed_values(rows, task, m, pair_by=pair_by)
                for m in (method, baseline_with, rule, baseline)
            }
            with_ = measures(vals[method], vals[baseline_with], budgets)
            without = measures(vals[rule], vals[baseline], budgets)
            for (label, a, ra), (_, b, rb) in zip(with_, without):
                units_ = sorted(
                    u for u in a.keys() & ra.keys() & b.keys() & rb.keys()
                    if not any(math.isnan(d[u]) for d in (a, ra, b, rb))
                )
                if not units_:
                    continue
                res = paired([100 * ((a[u] - ra[u]) - (b[u] - rb[u])) for u in units_])
                gap_with = 100 * statistics.fmean(a[u] - ra[u] for u in units_)
                gap_without = 100 * statistics.fmean(b[u] - rb[u] for u in units_)
                added = "+".join(parsed.additions)
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


def curve_points(
    rows: Iterable[Mapping[str, Any]], task: str, method: str
) -> list[tuple[int, float, float, float, int]]:
    """``(budget, mean, ci_low, ci_high, n)`` over seeds of ``method`` (Dice, fraction)."""
    vals = seed_values(expand_curves(rows), task, method)
    budgets = sorted({b for v in vals.values() for b in v if b is not None})
    out = []
    for b in budgets:
        x = [v[b] for v in vals.values() if b in v and not math.isnan(v[b])]
        if x:
            lo, hi = bootstrap_ci(x)
            out.append((b, statistics.fmean(x), lo, hi, len(x)))
    return out


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
    lower = seed_values(rows, task, "lower")
    low = [v[None] for v in lower.values() if None in v]
    for i, m in enumerate(methods):
        pts = curve_points(rows, task, m)
        if low:
            lo, hi = bootstrap_ci(low)
            pts = [(0, statistics.fmean(low), lo, hi, len(low)), *pts]
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
    upper = [v[None] for v in seed_values(rows, task, "upper").values() if None in v]
    if upper:
        mean = statistics.fmean(upper) * 100
        ax.axhline(mean, color="k", ls="--", lw=1, label="Upper bound")
        lo, hi = bootstrap_ci(upper)
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


def write_power(
    rows: Sequence[Mapping[str, Any]], out: str | Path, pair_by: str = "seed"
) -> tuple[Table, list[Path]]:
    """Write ``power.md`` / ``power.csv`` (the additions' gains, when there are any, appended to
    ``power.md`` and in ``power_additions.csv``) and ``power_curve_<task>.png`` into ``out``.

    Returns:
        The power table (its notes end with the additions' table in markdown, if any) and the
        figures.
    """
    out = Path(out)
    table = power_table(rows, pair_by=pair_by)
    gains = additions_table(rows, pair_by=pair_by)
    if gains.rows:
        gains.write(out, "power_additions")
        table.notes = [*table.notes, "", gains.markdown()]
    gaps = gap_table(rows, pair_by=pair_by)
    if gaps.rows:
        gaps.write(out, "power_gaps")
        table.notes = [*table.notes, "", gaps.markdown()]
    table.write(out, "power")
    figures = [
        p
        for task in tasks_of(rows)
        if (p := power_figure(rows, task, out / f"power_curve_{task}.png")) is not None
    ]
    return table, figures
