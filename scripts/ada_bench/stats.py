"""Every statistical computation of the benchmark harness; rendering is elsewhere.

The table and figure modules (:mod:`ada_bench.tables`, :mod:`ada_bench.power`,
:mod:`ada_bench.centres`, :mod:`ada_bench.forgetting`, :mod:`ada_bench.collapse`,
:mod:`ada_bench.plots`) call the functions here and only format what they return; the cell
formats (``format_p``, ``format_mean_std``) are in :mod:`ada_bench.markdown`.

Aggregation of result rows, averaging over repeated draws of one method (``random@0``,
``random@1``) first:

* run level: one value per ``(fold, seed)``, the mean over that run's test cases (what the
  tables report as mean ± std over runs);
* case level: one value per ``(fold, seed, case_id)``, the pairing unit of the Wilcoxon
  signed-rank tests (two methods are compared on the same test cases of the same fold and seed);
* seed level (the power profile, :func:`seed_values`): one value per seed (its folds averaged) or
  per ``(fold, seed)`` run, at each budget.

A metric is named ``<metric>_<region>`` (``dice_ET``); region ``mean`` is the per-case mean over
the regions of the task (NaN-ignoring, as ``RegionMetrics``'s ``*_mean``).

Paired summaries over seeds (:func:`paired`, the power tables): for per-seed differences
``d_s = strategy_s - baseline_s``

* their mean and a 95 % bootstrap confidence interval of it (``scipy.stats.bootstrap``, BCa,
  9,999 resamples, fixed seed; the percentile interval when BCa is undefined; none below
  :data:`MIN_CI_N` = 5 values);
* the two-sided Wilcoxon signed-rank p (``scipy.stats.wilcoxon``, exact for small n);
* the minimum detectable difference ``MDD = (t_{0.975, n-1} + t_{0.80, n-1}) * sd(d) / sqrt(n)``:
  the true mean difference a two-sided paired t-test at alpha = 0.05 would detect with 80 %
  power, given the observed spread of the paired differences (t quantiles, not z: n is small).

The same is done for the normalised area under the budget curve (:func:`aubc`): the trapezoid
of the mean Dice over the measured budgets divided by the budget range, i.e. the average Dice
over that range.

Multiplicity: :func:`holm` (Holm-Bonferroni adjusted p-values) and :func:`penalty_matrix` (the
pairwise penalty matrix of nnActive / BADGE over budgets, Holm-corrected).

Annotation cost: :func:`foreground_efficiency` (nnActive's foreground efficiency: how fast the
Dice closes its gap to the upper bound per share of the pool's foreground annotated).
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, TypeVar

import numpy as np

from ada_bench.results import budgetless, expand_curves, normalise, regions_of

# ---------------------------------------------------------------------------------- aggregation
RunId = tuple[int, int]  # (fold, seed)
CaseId = tuple[int, int, str]  # (fold, seed, case_id)


def select(
    rows: Iterable[Mapping[str, Any]],
    task: str,
    method: str,
    budget: int | None = None,
    train_input: str | None = "all",
) -> list[dict[str, Any]]:
    """Normalised rows of ``method`` on ``task``.

    Args:
        rows: result rows (raw or normalised).
        task: task name.
        method: method (run name without ``@draw``).
        budget: keep only this budget (ignored for the budget-independent lower / upper bound).
        train_input: keep only this training input (None: any).
    """
    out = []
    for raw in rows:
        r = normalise(raw)
        if r["task"] != task or r["method"] != method:
            continue
        if budget is not None and not budgetless(method) and r["budget"] != budget:
            continue
        if train_input is not None and r["train_input"] != train_input:
            continue
        out.append(r)
    return out


def case_value(case: Mapping[str, Any], metric: str, regions: Sequence[str]) -> float:
    """``metric`` of one per-case row; ``<m>_mean`` averages ``<m>_<region>`` over ``regions``."""
    name, _, region = metric.rpartition("_")
    if region == "mean":
        vals = [float(case.get(f"{name}_{g}", math.nan)) for g in regions]
        vals = [v for v in vals if not math.isnan(v)]
        return statistics.fmean(vals) if vals else math.nan
    return float(case.get(metric, math.nan))


def per_case(
    rows: Iterable[Mapping[str, Any]], metric: str, regions: Sequence[str]
) -> dict[CaseId, float]:
    """Case-level values ``{(fold, seed, case_id): value}``, averaged over repeated draws."""
    acc: dict[CaseId, list[float]] = defaultdict(list)
    for r in rows:
        for i, c in enumerate(r.get("per_case", [])):
            v = case_value(c, metric, regions)
            if not math.isnan(v):
                acc[(r["fold"], r["seed"], str(c.get("case_id", i)))].append(v)
    return {k: statistics.fmean(v) for k, v in acc.items()}


def per_run(
    rows: Iterable[Mapping[str, Any]], metric: str, regions: Sequence[str]
) -> dict[RunId, float]:
    """Run-level values ``{(fold, seed): value}``, averaged over repeated draws.

    The run value is the mean of the case-level values (NaN cases excluded); a row without
    per-case values falls back to its ``test`` summary.
    """
    acc: dict[RunId, list[float]] = defaultdict(list)
    for r in rows:
        vals = [case_value(c, metric, regions) for c in r.get("per_case", [])]
        vals = [v for v in vals if not math.isnan(v)]
        if vals:
            v = statistics.fmean(vals)
        else:
            v = float(r.get("test", {}).get(metric, math.nan))
        if not math.isnan(v):
            acc[(r["fold"], r["seed"])].append(v)
    return {k: statistics.fmean(v) for k, v in acc.items()}


def per_seed_case(
    rows: Sequence[Mapping[str, Any]], metric: str, regions: Sequence[str]
) -> dict[tuple[int, str], float]:
    """``{(seed, case_id): value}`` over ``rows`` (repeated draws of one key averaged): the
    pairing unit of the group protocols (:mod:`ada_bench.centres`), whose folds are groups."""
    acc: dict[tuple[int, str], list[float]] = {}
    for r in rows:
        for i, c in enumerate(r.get("per_case", [])):
            v = case_value(c, metric, regions)
            if not math.isnan(v):
                acc.setdefault((int(r["seed"]), str(c.get("case_id", i))), []).append(v)
    # numpy's mean, as the published centre tables were computed
    return {k: float(np.mean(v)) for k, v in acc.items()}


# ---------------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class MeanStd:
    """Mean ± sample std over ``n`` values (std NaN when n < 2; all NaN when n = 0); written as
    a cell by :func:`ada_bench.markdown.format_mean_std`."""

    mean: float
    std: float
    n: int


def mean_std(values: Iterable[float]) -> MeanStd:
    """:class:`MeanStd` of the finite values."""
    # statistics.fmean / stdev, not numpy: numpy's mean and std round differently in the last
    # digits, and the CSV files publish full-precision numbers
    v = [float(x) for x in values if not math.isnan(float(x))]
    if not v:
        return MeanStd(math.nan, math.nan, 0)
    return MeanStd(statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else math.nan, len(v))


@dataclass(frozen=True)
class PairedTest:
    """A paired Wilcoxon signed-rank test of ``a - b`` over common keys.

    Attributes:
        p: two-sided p-value (1.0 when every difference is 0, NaN when there are no pairs).
        n: number of pairs.
        statistic: the Wilcoxon statistic (NaN if not computed).
        mean_diff: mean of ``a - b``.
        median_diff: median of ``a - b``.
    """

    p: float
    n: int
    statistic: float
    mean_diff: float
    median_diff: float


def wilcoxon_paired(a: Mapping[Any, float], b: Mapping[Any, float]) -> PairedTest:
    """Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, two-sided) on the keys both share.

    Pairs with a NaN on either side are dropped; zero differences follow SciPy's default
    (``zero_method="wilcox"``: discarded).
    """
    from scipy.stats import wilcoxon

    keys = sorted(k for k in a.keys() & b.keys() if not (math.isnan(a[k]) or math.isnan(b[k])))
    if not keys:
        return PairedTest(math.nan, 0, math.nan, math.nan, math.nan)
    d = [a[k] - b[k] for k in keys]
    mean_d, med_d = statistics.fmean(d), statistics.median(d)
    if all(x == 0 for x in d):
        return PairedTest(1.0, len(d), math.nan, mean_d, med_d)
    res = wilcoxon([a[k] for k in keys], [b[k] for k in keys])
    return PairedTest(float(res.pvalue), len(d), float(res.statistic), mean_d, med_d)


def mean_or_nan(values: Sequence[float]) -> float:
    """The mean of ``values`` (``statistics.fmean``), NaN when there are none."""
    return statistics.fmean(values) if values else math.nan


def mean_std_of_differences(a: Mapping[Any, float], b: Mapping[Any, float]) -> MeanStd:
    """:func:`mean_std` of ``a - b`` over the keys both have (e.g. a run minus the lower bound of
    the same fold and seed)."""
    keys = sorted(a.keys() & b.keys())
    return mean_std([a[k] - b[k] for k in keys])


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """``(median, first quartile, third quartile)`` of the finite values (``numpy.percentile``,
    linear interpolation); NaN when there are none."""
    v = np.asarray([x for x in values if not math.isnan(x)], float)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return float(med), float(q1), float(q3)


def paired_vs(
    a: Mapping[Any, float], b: Mapping[Any, float]
) -> tuple[int, float, float, float, float]:
    """(n pairs, mean of a - b, 95 % CI low, CI high (:func:`bootstrap_ci`), Wilcoxon p
    (:func:`wilcoxon_paired`)) over the keys both have."""
    keys = sorted(a.keys() & b.keys())
    d = [a[k] - b[k] for k in keys]
    if not d:
        return 0, math.nan, math.nan, math.nan, math.nan
    lo, hi = bootstrap_ci(d)
    # numpy's mean, as the published centre tables were computed
    return len(d), float(np.mean(d)), lo, hi, wilcoxon_paired(a, b).p

# ---------------------------------------------------------------------------------- power profile
BASELINE = "random"
#: the baseline of strategies that ran once per budget, when present: random with the whole budget
#: at epoch 0 and the full schedule, as they did (the sequential random's budget curve gives the
#: model of budget k only k strides of training, which would favour them at small budgets)
ONE_OFF_BASELINE = "random_one_off"
CONFIDENCE = 0.95
POWER = 0.80
N_RESAMPLES = 9999
#: no bootstrap CI below this many values: resampling 2-4 values only restates their range
#: (with 2, the interval is the segment between them), which reads like evidence and is not
MIN_CI_N = 5


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


def bootstrap_ci(
    values: Sequence[float], seed: int = 0, min_n: int = MIN_CI_N
) -> tuple[float, float]:
    """95 % bootstrap CI of the mean of ``values`` (``scipy.stats.bootstrap``: BCa, 9,999
    resamples, ``numpy.random.default_rng(seed)``; percentile when BCa is undefined, e.g. for
    identical values; NaN for fewer than ``min_n`` values, :data:`MIN_CI_N` by default)."""
    from scipy.stats import bootstrap

    x = np.asarray(values, float)
    if len(x) < max(2, min_n):
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
    """:class:`Paired` of per-seed differences (NaN differences dropped)."""
    from scipy.stats import wilcoxon

    d = [float(x) for x in diffs if not math.isnan(float(x))]
    n = len(d)
    if n == 0:
        return Paired(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    # statistics.fmean / stdev rather than numpy: the published CSV numbers are theirs (numpy
    # rounds differently in the last digits)
    mean = statistics.fmean(d)
    sd = statistics.stdev(d) if n > 1 else math.nan
    lo, hi = bootstrap_ci(d)
    p = 1.0 if all(x == 0 for x in d) else float(wilcoxon(d).pvalue)
    return Paired(n, mean, lo, hi, p, sd, mdd(sd, n))


def aubc(curve: Mapping[int, float], budgets: Sequence[int]) -> float:
    """Normalised area under the budget curve over ``budgets`` (trapezoid / budget range).

    The trapezoid is ``numpy.trapezoid``. The published AUBCs (4 or 5 budgets) came from a
    hand-written left-to-right sum that gives the same floats for up to 8 budgets; from 9 on,
    numpy's pairwise summation can differ from it in the last bit.
    NaN when a budget is missing from ``curve`` or fewer than two budgets are given.
    """
    b = sorted(budgets)
    if len(b) < 2 or any(k not in curve or math.isnan(curve[k]) for k in b):
        return math.nan
    area = np.trapezoid([curve[k] for k in b], b)
    return float(area) / (b[-1] - b[0])


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


def source_of(rows: Sequence[Mapping[str, Any]], task: str, method: str) -> str:
    """Where the budget points of ``method`` come from: ``"curve"`` (one sequential run tested
    after each query's stride) or ``"per budget"`` (one run per budget)."""
    sel = [r for r in rows if r["task"] == task and r["method"] == method]
    return "curve" if any(r.get("from_curve") for r in sel) else "per budget"


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


def compare_gap(
    rows: Sequence[Mapping[str, Any]],
    task: str,
    method: str,
    baseline_with: str,
    rule: str,
    baseline: str,
    budgets: Sequence[int],
    pair_by: str = "seed",
) -> list[tuple[str, Paired, float, float]]:
    """``(measure, paired summary of the per-unit difference of differences
    (method - baseline_with) - (rule - baseline) in points, gap without (rule - baseline, points),
    gap with (method - baseline_with, points))`` over the units all four runs share, at each
    budget and of the AUBC (the gap table of :mod:`ada_bench.power`: ``method`` = ``rule+X``,
    ``baseline_with`` = ``random+X``)."""
    vals = {
        m: seed_values(rows, task, m, pair_by=pair_by)
        for m in (method, baseline_with, rule, baseline)
    }
    with_ = measures(vals[method], vals[baseline_with], budgets)
    without = measures(vals[rule], vals[baseline], budgets)
    out = []
    for (label, a, ra), (_, b, rb) in zip(with_, without):
        units = sorted(
            u for u in a.keys() & ra.keys() & b.keys() & rb.keys()
            if not any(math.isnan(d[u]) for d in (a, ra, b, rb))
        )
        if not units:
            continue
        res = paired([100 * ((a[u] - ra[u]) - (b[u] - rb[u])) for u in units])
        gap_with = 100 * statistics.fmean(a[u] - ra[u] for u in units)
        gap_without = 100 * statistics.fmean(b[u] - rb[u] for u in units)
        out.append((label, res, gap_without, gap_with))
    return out


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
    one_off = schedule == "one_off" if schedule else source_of(rows, task, method) == "per budget"
    if not one_off:
        return baseline
    mine = seed_values(rows, task, method, pair_by=pair_by)
    theirs = seed_values(rows, task, ONE_OFF_BASELINE, pair_by=pair_by)
    return ONE_OFF_BASELINE if mine.keys() <= theirs.keys() else baseline


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


def bound_point(
    rows: Iterable[Mapping[str, Any]], task: str, method: str
) -> tuple[float, float, float, int] | None:
    """``(mean, ci_low, ci_high, n)`` over seeds of a bound's Dice (fraction; the 95 % bootstrap
    CI of :func:`bootstrap_ci`); None when it has no value."""
    x = [v[None] for v in seed_values(rows, task, method).values() if None in v]
    if not x:
        return None
    lo, hi = bootstrap_ci(x)
    return statistics.fmean(x), lo, hi, len(x)


# ---------------------------------------------------------------------------------- multiplicity
K = TypeVar("K")
#: the family-wise level of the penalty matrix
ALPHA = 0.05


def holm(pvalues: Mapping[K, float]) -> dict[K, float]:
    """Holm-Bonferroni adjusted p-values (Holm 1979), keyed and ordered as ``pvalues``.

    With the m finite p-values sorted, ``p_(1) <= ... <= p_(m)``, the adjusted value of ``p_(i)``
    is ``min(1, max_{j <= i} (m - j + 1) p_(j))``: step-down, monotone in p (a smaller p never
    gets a larger adjusted value), capped at 1; ties get the same value. Rejecting where the
    adjusted p <= alpha is Holm's procedure, which keeps the family-wise error rate <= alpha
    under any dependence between the tests.

    NaN passes through as NaN and does not count toward m: a NaN p is a comparison that could not
    be made (fewer than two pairs, every difference 0), not a hypothesis of the family; counting
    it (as p = 1) would make the correction of the real tests stricter with no test behind it.

    Raises:
        ValueError: a p-value outside [0, 1].
    """
    finite = [(k, float(p)) for k, p in pvalues.items() if not math.isnan(p)]
    for k, p in finite:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-value of {k!r} is {p}, not in [0, 1]")
    m = len(finite)
    adjusted: dict[K, float] = {}
    running = 0.0
    for rank, (k, p) in enumerate(sorted(finite, key=lambda kp: kp[1])):  # stable for ties
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[k] = running
    return {k: adjusted.get(k, math.nan) for k in pvalues}


#: the paired tests of :func:`penalty_matrix`
PENALTY_TESTS = ("t", "wilcoxon")
#: the Holm families of :func:`penalty_matrix`
PENALTY_FAMILIES = ("budgets", "all", "none")


@dataclass(frozen=True)
class PenaltyTest:
    """One paired test of two methods at one budget (:func:`penalty_matrix`).

    Attributes:
        first: a method.
        second: the other (after ``first`` in the method order).
        budget: the budget.
        n: number of units (seeds) both have a value at that budget.
        mean_diff: mean of ``first - second`` over those units.
        p: two-sided p of the paired test (NaN: no test, fewer than 2 units or every difference 0).
        p_adjusted: ``p`` Holm-adjusted within its family (``p`` itself with family ``"none"``).
    """

    first: str
    second: str
    budget: Any
    n: int
    mean_diff: float
    p: float
    p_adjusted: float


@dataclass(frozen=True)
class Penalty:
    """A pairwise penalty matrix (:func:`penalty_matrix`, :func:`combine_penalties`).

    Attributes:
        methods: the row and column order.
        budgets: the L budgets of a setting (each significant win at one adds 1/L).
        matrix: ``matrix[i][j]``: the share of budgets at which ``i`` is significantly better
            than ``j``, summed over the settings (at most ``settings``).
        tests: every paired test made.
        test: ``"t"`` or ``"wilcoxon"``.
        alpha: the family-wise level.
        family: the Holm family (:func:`penalty_matrix`).
        settings: how many settings (tasks) were summed.
    """

    methods: tuple[str, ...]
    budgets: tuple[Any, ...]
    matrix: dict[str, dict[str, float]]
    tests: tuple[PenaltyTest, ...]
    test: str
    alpha: float
    family: str
    settings: int = 1

    @property
    def wins(self) -> dict[str, float]:
        """Row sums: how often each method is significantly better than another (at most
        ``(k - 1) x settings`` for k methods)."""
        return {i: sum(self.matrix[i][j] for j in self.methods) for i in self.methods}

    @property
    def losses(self) -> dict[str, float]:
        """Column sums: how often each method is significantly worse than another (BADGE and
        nnActive rank by these: lower is better)."""
        return {j: sum(self.matrix[i][j] for i in self.methods) for j in self.methods}

    @property
    def n_range(self) -> tuple[int, int]:
        """Smallest and largest number of paired units over the tests made ((0, 0) if none)."""
        ns = [t.n for t in self.tests if not math.isnan(t.p)]
        return (min(ns), max(ns)) if ns else (0, 0)


def _paired_p(d: Sequence[float], test: str) -> float:
    """Two-sided p of the paired test of the differences ``d`` (NaN: n < 2 or all zero)."""
    from scipy.stats import ttest_1samp, wilcoxon

    if len(d) < 2 or all(x == 0 for x in d):
        return math.nan
    with warnings.catch_warnings():
        # identical differences: scipy warns of precision loss and returns t = ±inf, p = 0
        warnings.simplefilter("ignore", RuntimeWarning)
        if test == "t":
            return float(ttest_1samp(d, 0.0).pvalue)
        return float(wilcoxon(d).pvalue)


def penalty_matrix(
    values: Mapping[str, Mapping[Any, Mapping[Any, float]]],
    budgets: Sequence[Any] | None = None,
    alpha: float = ALPHA,
    test: str = "t",
    family: str = "budgets",
) -> Penalty:
    """The pairwise penalty matrix (PPM) of one setting (one task), Holm-corrected.

    Definition (Lüth et al., "nnActive", TMLR 2025, code ``nnactive/analyze/metrics.py``,
    ``PairwisePenaltyMatrix_holms``; after Ash et al., "BADGE", ICLR 2020, and Beck et al. 2021):
    for every pair of methods ``{i, j}`` and every budget ``b`` of the L budgets, the paired
    two-sided test of the per-unit differences ``d_u = v_i(u, b) - v_j(u, b)`` over the units
    (seeds) both have; its p is Holm-adjusted (:func:`holm`) within its family, and where the
    adjusted p <= ``alpha`` the method with the larger mean gets ``P[winner, loser] += 1 / L``.
    So ``P[i, j]`` is the share of budgets at which ``i`` is significantly better than ``j``
    (``P[i, j] + P[j, i] <= 1``), a row sum (:attr:`Penalty.wins`) how often ``i`` wins, a column
    sum (:attr:`Penalty.losses`) how often ``j`` loses. A pair with fewer than 2 shared units
    or identical values at a budget has no test there (NaN p, no entry, not counted in the
    family).

    Where this differs from nnActive's code: the units are paired by their key (the seed), not by
    row order cut to the shorter list; the default Holm family is each pair's L budgets (the
    issue's "Holm correction over budgets"), nnActive's is every pair and budget of a setting
    (``family="all"``); BADGE corrects nothing (``family="none"``). nnActive's and BADGE's code
    store the entry as ``matrix[loser][winner]`` and plot it transposed; the matrix here is the
    plotted one (row = winner).

    The default test is the paired t-test, the one of the definition (comparable with nnActive's
    and BADGE's matrices), and one that can reject with few seeds: the exact Wilcoxon
    signed-rank p is at least ``2 / 2^n``, so with n <= 5 seeds it never reaches 0.05, and after
    Holm over L budgets it needs ``2^(n-1) >= L / alpha`` (n >= 8 for L = 5; with
    ``family="all"`` and many pairs, far more). ``test="wilcoxon"`` drops the normality of the
    differences where there are seeds enough.

    Args:
        values: ``{method: {budget: {unit: value}}}``, higher is better (Dice).
        budgets: the L budgets (default: every budget in ``values``, sorted).
        alpha: family-wise level.
        test: ``"t"`` (``scipy.stats.ttest_1samp`` of the differences, two-sided) or
            ``"wilcoxon"`` (``scipy.stats.wilcoxon``, two-sided, exact for small n).
        family: ``"budgets"`` (Holm over the budgets of each pair), ``"all"`` (over every pair
            and budget), ``"none"`` (no correction).

    Raises:
        ValueError: an unknown test or family, or no budget.
    """
    if test not in PENALTY_TESTS:
        raise ValueError(f"test must be one of {PENALTY_TESTS}, not {test!r}")
    if family not in PENALTY_FAMILIES:
        raise ValueError(f"family must be one of {PENALTY_FAMILIES}, not {family!r}")
    methods = tuple(values)
    budgets = tuple(budgets) if budgets is not None else tuple(
        sorted({b for v in values.values() for b in v})
    )
    if not budgets:
        raise ValueError("penalty_matrix needs at least one budget")
    raw: dict[tuple[str, str, Any], tuple[int, float, float]] = {}
    for i, j in combinations(methods, 2):
        for b in budgets:
            a, c = values[i].get(b, {}), values[j].get(b, {})
            units = sorted(
                u for u in a.keys() & c.keys() if not (math.isnan(a[u]) or math.isnan(c[u]))
            )
            d = [a[u] - c[u] for u in units]
            raw[(i, j, b)] = (len(d), statistics.fmean(d) if d else math.nan, _paired_p(d, test))
    if family == "all":
        adjusted = holm({k: p for k, (_, _, p) in raw.items()})
    elif family == "budgets":
        adjusted = {}
        for i, j in combinations(methods, 2):
            adjusted |= holm({(i, j, b): raw[(i, j, b)][2] for b in budgets})
    else:
        adjusted = {k: p for k, (_, _, p) in raw.items()}
    wins = {i: {j: 0 for j in methods} for i in methods}
    tests = []
    for (i, j, b), (n, mean, p) in raw.items():
        q = adjusted[(i, j, b)]
        tests.append(PenaltyTest(i, j, b, n, mean, p, q))
        if q <= alpha and mean != 0:
            winner, loser = (i, j) if mean > 0 else (j, i)
            wins[winner][loser] += 1
    matrix = {i: {j: wins[i][j] / len(budgets) for j in methods} for i in methods}
    return Penalty(methods, budgets, matrix, tuple(tests), test, alpha, family)


def combine_penalties(penalties: Sequence[Penalty]) -> Penalty:
    """The sum of the matrices of several settings (tasks), as nnActive merges them: an entry is
    then at most the number of settings. Methods missing from a setting count 0 there.

    Raises:
        ValueError: no matrix, or matrices of another test, level or family.
    """
    if not penalties:
        raise ValueError("combine_penalties needs at least one matrix")
    first = penalties[0]
    for pen in penalties[1:]:
        if (pen.test, pen.alpha, pen.family) != (first.test, first.alpha, first.family):
            raise ValueError(
                f"cannot sum a {pen.test}/{pen.alpha}/{pen.family} matrix with a "
                f"{first.test}/{first.alpha}/{first.family} one"
            )
    methods = tuple(dict.fromkeys(m for pen in penalties for m in pen.methods))
    budgets = tuple(dict.fromkeys(b for pen in penalties for b in pen.budgets))
    matrix = {i: {j: 0.0 for j in methods} for i in methods}
    for pen in penalties:
        for i in pen.methods:
            for j in pen.methods:
                matrix[i][j] += pen.matrix[i][j]
    return Penalty(
        methods, budgets, matrix, tuple(t for pen in penalties for t in pen.tests), first.test,
        first.alpha, first.family, sum(pen.settings for pen in penalties),
    )


def budget_values(
    rows: Sequence[Mapping[str, Any]],
    task: str,
    methods: Sequence[str],
    budgets: Sequence[int],
    pair_by: str = "seed",
) -> dict[str, dict[int, dict[Any, float]]]:
    """``{method: {budget: {unit: Dice}}}`` of ``methods`` on ``task`` (:func:`seed_values`),
    the input of :func:`penalty_matrix`."""
    out: dict[str, dict[int, dict[Any, float]]] = {}
    for m in methods:
        per_unit = seed_values(rows, task, m, pair_by=pair_by)
        out[m] = {
            b: {u: v[b] for u, v in per_unit.items() if b in v and not math.isnan(v[b])}
            for b in budgets
        }
    return out


# ---------------------------------------------------------------------------------- annotation cost
@dataclass(frozen=True)
class FgEfficiency:
    """A fit of :func:`foreground_efficiency`.

    Attributes:
        beta: the fitted rate (per unit of foreground share; NaN when it cannot be fitted).
        se: its standard error from the fit's covariance (NaN when undefined).
        n: the points fitted.
        rmse: root mean squared residual of the fit (Dice, fraction).
        upper: the curve's limit (the Dice with every pool case labelled).
        lower: its value at share 0 (the Dice with nothing annotated).
    """

    beta: float
    se: float
    n: int
    rmse: float
    upper: float
    lower: float


def efficiency_curve(share: Any, beta: float, upper: float, lower: float) -> Any:
    """``upper - (upper - lower) * exp(-beta * share)``: the curve of :func:`foreground_efficiency`
    (``share`` a number or an array)."""
    return upper - (upper - lower) * np.exp(-beta * np.asarray(share, float))


def foreground_efficiency(
    shares: Sequence[float], dice: Sequence[float], upper: float, lower: float
) -> FgEfficiency:
    """nnActive's foreground efficiency (FG-Eff) of one method: the rate ``beta`` of the least
    squares fit of ``Dice(x) = upper - (upper - lower) * exp(-beta * x)`` to the points
    ``(x, Dice)``, ``x`` the share (0-1) of the pool's foreground voxels annotated.

    Definition read in nnActive's code (MIC-DKFZ/nnActive, ``nnactive/analyze/metrics.py``,
    ``DatasetBeta``: ``y = c - a exp(-b (x - x_offset))`` fitted per query method with
    ``scipy.optimize.curve_fit``, ``c`` the Dice of the model trained on the whole data set,
    ``x_offset`` the smallest ``x`` of the setting and ``a = c -`` the mean Dice there; ``x`` =
    ``percentage_of_voxels_foreground`` of ``analyze/experiment_statistics.py``: annotated
    foreground voxels over those of the whole training set, a fraction), the metric the paper
    (Lüth et al., TMLR 2025, arXiv 2511.19183) calls FG-Eff. Here ``c`` is the upper bound (every
    pool case labelled), and the common starting point, where nnActive's runs share their
    starting budget, is the source model with nothing annotated: ``x_offset = 0`` and ``a =
    upper - lower``. A larger ``beta`` closes the gap to the upper bound with less annotated
    foreground; it says nothing of the background a rule also had annotated (the point of the
    metric: background is cheap to annotate).

    ``scipy.optimize.curve_fit`` (Levenberg-Marquardt, start ``beta = 1`` as nnActive's default);
    NaN when there is no point, ``upper == lower``, or the fit does not converge.
    """
    from scipy.optimize import OptimizeWarning, curve_fit

    pts = [(float(x), float(y)) for x, y in zip(shares, dice)
           if not (math.isnan(float(x)) or math.isnan(float(y)))]
    n = len(pts)
    nan = FgEfficiency(math.nan, math.nan, n, math.nan, upper, lower)
    if n == 0 or math.isnan(upper) or math.isnan(lower) or upper == lower:
        return nan
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            popt, pcov = curve_fit(
                lambda s, b: efficiency_curve(s, b, upper, lower), x, y, p0=[1.0]
            )
    except (RuntimeError, ValueError):
        return nan
    beta = float(popt[0])
    var = float(pcov[0, 0]) if np.size(pcov) else math.nan
    se = math.sqrt(var) if math.isfinite(var) and var >= 0 else math.nan
    rmse = float(np.sqrt(np.mean((efficiency_curve(x, beta, upper, lower) - y) ** 2)))
    return FgEfficiency(beta, se, n, rmse, upper, lower)
