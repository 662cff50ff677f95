"""Aggregation of result rows and paired statistics.

Two levels, both averaging over repeated draws of one method (``random@0``, ``random@1``) first:

* run level: one value per ``(fold, seed)``, the mean over that run's test cases (what the
  tables report as mean ± std over runs);
* case level: one value per ``(fold, seed, case_id)``, the pairing unit of the Wilcoxon
  signed-rank tests (two methods are compared on the same test cases of the same fold and seed).

A metric is named ``<metric>_<region>`` (``dice_ET``); region ``mean`` is the per-case mean over
the regions of the task (NaN-ignoring, as ``RegionMetrics``'s ``*_mean``).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ada_bench.results import budgetless, normalise

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


@dataclass(frozen=True)
class MeanStd:
    """Mean ± sample std over ``n`` values (std NaN when n < 2; all NaN when n = 0); written as
    a cell by :func:`ada_bench.markdown.format_mean_std`."""

    mean: float
    std: float
    n: int


def mean_std(values: Iterable[float]) -> MeanStd:
    """:class:`MeanStd` of the finite values."""
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
