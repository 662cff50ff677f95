"""Known answers for every statistic of scripts/ada_bench/stats.py: values worked out by hand or
from a closed form (t quantiles from tables, the exact signed-rank distribution by enumeration,
the trapezoid rule, Holm's formula), and the bootstrap against scipy.stats.bootstrap itself."""

from __future__ import annotations

import itertools
import math
import statistics
from typing import Any

import numpy as np
import pytest
import scipy.stats

from ada_bench import stats
from ada_bench.results import expand_curves, normalise

REGIONS = ["ET", "NCR", "ED"]
#: Student t quantiles (tables): 97.5 % and 80 % for 9 and for 4 degrees of freedom
T975_9, T80_9 = 2.2621571628, 0.8834038597
T975_4, T80_4 = 2.7764451052, 0.9409645772


def cases(value: float) -> list[dict[str, Any]]:
    """Two test cases whose mean Dice (every region) is ``value``."""
    return [
        {"case_id": f"glioma_test_{i:03d}", **{f"dice_{g}": value + d for g in REGIONS}}
        for i, d in enumerate((-0.1, 0.1))
    ]


def exact_signed_rank_p(d: list[float]) -> float:
    """Two-sided exact Wilcoxon signed-rank p of differences without ties or zeros, by
    enumerating all 2^n sign patterns: p = min(1, 2 min(P(W+ <= w), P(W+ >= w)))."""
    ranks = scipy.stats.rankdata([abs(x) for x in d])
    w = sum(r for r, x in zip(ranks, d) if x > 0)
    sums = [sum(r for r, s in zip(ranks, signs) if s) for signs in
            itertools.product((0, 1), repeat=len(d))]
    lower = sum(s <= w for s in sums) / len(sums)
    upper = sum(s >= w for s in sums) / len(sums)
    return min(1.0, 2 * min(lower, upper))


# ---------------------------------------------------------------------------------- aggregation
def test_case_value_averages_the_regions_ignoring_nan() -> None:
    case = {"dice_ET": 0.2, "dice_NCR": math.nan, "dice_ED": 0.6}
    assert stats.case_value(case, "dice_mean", REGIONS) == pytest.approx(0.4)
    assert stats.case_value(case, "dice_ET", REGIONS) == 0.2
    assert math.isnan(stats.case_value({"dice_ET": math.nan}, "dice_mean", ["ET"]))


def test_per_run_and_per_case_average_draws_and_fall_back_to_the_test_summary() -> None:
    rows = [
        {"fold": 0, "seed": 1, "per_case": [{"case_id": "a", "dice_ET": 0.2},
                                            {"case_id": "b", "dice_ET": 0.4}]},
        {"fold": 0, "seed": 1, "per_case": [{"case_id": "a", "dice_ET": 0.6}]},  # second draw
        {"fold": 1, "seed": 1, "per_case": [], "test": {"dice_ET": 0.9}},
    ]
    runs = stats.per_run(rows, "dice_ET", ["ET"])
    # run (0, 1): draws 0.3 and 0.6 averaged; run (1, 1): its test summary
    assert runs == {(0, 1): pytest.approx(0.45), (1, 1): pytest.approx(0.9)}
    assert stats.per_case(rows, "dice_ET", ["ET"]) == {
        (0, 1, "a"): pytest.approx(0.4), (0, 1, "b"): pytest.approx(0.4)
    }
    by_seed_case = stats.per_seed_case(rows, "dice_ET", ["ET"])
    assert by_seed_case == {(1, "a"): pytest.approx(0.4), (1, "b"): pytest.approx(0.4)}


def test_mean_std_and_its_variants() -> None:
    s = stats.mean_std([1.0, 2.0, 3.0, 4.0, math.nan])
    # sample variance of 1..4: (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5 / 3
    assert (s.mean, s.std, s.n) == (2.5, pytest.approx(math.sqrt(5 / 3)), 4)
    one = stats.mean_std([2.0])
    assert one.n == 1 and one.mean == 2.0 and math.isnan(one.std)
    assert stats.mean_std([]).n == 0 and math.isnan(stats.mean_std([]).mean)
    d = stats.mean_std_of_differences({"a": 3.0, "b": 5.0, "c": 9.0}, {"a": 1.0, "b": 1.0})
    assert (d.mean, d.std, d.n) == (3.0, pytest.approx(math.sqrt(2)), 2)  # diffs 2 and 4
    assert stats.mean_or_nan([1.0, 2.0, 6.0]) == 3.0
    assert math.isnan(stats.mean_or_nan([]))


def test_quartiles_interpolate_linearly() -> None:
    assert stats.quartiles([5.0, 1.0, 3.0, 2.0, 4.0]) == (3.0, 2.0, 4.0)
    # n = 4: positions 0.75, 1.5, 2.25 between the sorted values 1 2 3 4
    assert stats.quartiles([4.0, 1.0, math.nan, 3.0, 2.0]) == (2.5, 1.75, 3.25)
    assert all(math.isnan(x) for x in stats.quartiles([math.nan]))


# ---------------------------------------------------------------------------------- paired tests
def test_wilcoxon_is_the_exact_signed_rank_distribution() -> None:
    d = [1.0, 2.0, 3.0, -4.0, 5.0]
    # W+ = 1 + 2 + 3 + 5 = 11, W- = 4; of the 32 sign patterns, 7 have W- <= 4
    # ({}, {1}, {2}, {3}, {4}, {1,2}, {1,3}): p = 2 x 7 / 32
    assert exact_signed_rank_p(d) == 14 / 32
    res = stats.wilcoxon_paired(dict(enumerate(d)), {i: 0.0 for i in range(5)})
    assert res.p == pytest.approx(14 / 32) and res.n == 5 and res.statistic == 4.0
    assert (res.mean_diff, res.median_diff) == (pytest.approx(1.4), 2.0)
    rng = np.random.default_rng(3)
    x = list(rng.normal(0.3, 1.0, size=9))
    assert stats.wilcoxon_paired(dict(enumerate(x)), {i: 0.0 for i in range(9)}).p == (
        pytest.approx(exact_signed_rank_p(x))
    )


def test_mdd_closed_form() -> None:
    assert stats.mdd(2.0, 10) == pytest.approx((T975_9 + T80_9) * 2.0 / math.sqrt(10), rel=1e-9)
    assert stats.mdd(1.0, 5) == pytest.approx((T975_4 + T80_4) / math.sqrt(5), rel=1e-9)
    assert stats.mdd(0.0, 5) == 0.0
    assert math.isnan(stats.mdd(1.0, 1)) and math.isnan(stats.mdd(math.nan, 5))


def test_bootstrap_ci_is_scipys_bca_with_the_fixed_seed() -> None:
    x = [0.1, 0.4, 0.35, 0.8, 0.2, 1.9, 0.15, 0.3, 0.05, 0.6]  # skewed: BCa != percentile
    got = stats.bootstrap_ci(x, seed=7)
    ref = scipy.stats.bootstrap(
        (np.asarray(x),), np.mean, confidence_level=0.95, n_resamples=9999, method="BCa",
        rng=np.random.default_rng(7),
    ).confidence_interval
    assert got == (ref.low, ref.high)
    percentile = scipy.stats.bootstrap(
        (np.asarray(x),), np.mean, confidence_level=0.95, n_resamples=9999,
        method="percentile", rng=np.random.default_rng(7),
    ).confidence_interval
    assert abs(got[0] - percentile.low) > 1e-3  # the method matters on this sample
    assert got[0] < statistics.fmean(x) < got[1]
    assert stats.bootstrap_ci([0.3] * 5) == (0.3, 0.3)  # no spread: the value itself
    # fewer than 5 values: no interval (a bootstrap of 2-4 values restates their range)
    for few in ([0.3], [0.3] * 4, [0.1, 0.5], [0.1, 0.2, 0.4, 0.9]):
        assert all(math.isnan(v) for v in stats.bootstrap_ci(few)), few
    assert stats.bootstrap_ci([0.1, 0.5], min_n=2)[0] >= 0.1  # the old behaviour, on request


def test_paired_summary_of_a_small_sample() -> None:
    d = [1.0, 2.0, 3.0, -4.0, 5.0, math.nan]
    res = stats.paired(d)
    # mean 1.4; squared deviations 0.16 + 0.36 + 2.56 + 29.16 + 12.96 = 45.2, / 4 = 11.3
    assert (res.n, res.mean, res.sd) == (5, pytest.approx(1.4), pytest.approx(math.sqrt(11.3)))
    assert res.p == pytest.approx(14 / 32)
    assert res.mdd == pytest.approx((T975_4 + T80_4) * math.sqrt(11.3) / math.sqrt(5), rel=1e-9)
    assert (res.ci_low, res.ci_high) == stats.bootstrap_ci(d[:5])
    assert stats.paired([0.0, 0.0]).p == 1.0
    assert stats.paired([]).n == 0 and math.isnan(stats.paired([]).mean)


def test_paired_vs_pairs_on_shared_keys() -> None:
    a = {(0, "x"): 0.5, (0, "y"): 0.7, (1, "x"): 0.9, (1, "z"): 0.1, (2, "x"): 0.8, (2, "y"): 0.6}
    b = {(0, "x"): 0.4, (0, "y"): 0.4, (1, "x"): 0.4, (2, "x"): 0.4, (2, "y"): 0.4}
    n, mean, lo, hi, p = stats.paired_vs(a, b)
    assert (n, mean) == (5, pytest.approx(0.3))  # differences 0.1, 0.3, 0.5, 0.4, 0.2
    assert (lo, hi) == stats.bootstrap_ci([a[k] - b[k] for k in sorted(b)]) and lo < 0.3 < hi
    assert p == pytest.approx(2 / 2**5)  # exact: all five positive
    assert stats.paired_vs({}, b)[0] == 0


# ---------------------------------------------------------------------------------- budget curves
def test_aubc_is_the_trapezoid_over_the_budget_range() -> None:
    # (2 - 1)(0.1 + 0.2)/2 + (3 - 2)(0.2 + 0.4)/2 + (5 - 3)(0.4 + 0.6)/2 = 0.15 + 0.3 + 1.0
    assert stats.aubc({1: 0.1, 2: 0.2, 3: 0.4, 5: 0.6}, [5, 1, 3, 2]) == pytest.approx(1.45 / 4)
    assert stats.aubc({0: 0.0, 10: 1.0}, [0, 10]) == pytest.approx(0.5)  # a line: its midpoint
    assert stats.aubc({1: 0.3, 2: 0.3, 7: 0.3}, [1, 2, 7]) == pytest.approx(0.3)
    assert math.isnan(stats.aubc({1: 0.1, 2: 0.2}, [1, 2, 3]))  # a budget missing
    assert math.isnan(stats.aubc({1: 0.1, 2: math.nan}, [1, 2]))
    assert math.isnan(stats.aubc({1: 0.1}, [1]))


def curve_rows() -> list[dict[str, Any]]:
    """10 seeds, 2 folds each. random: 0.5 + 0.02 b at budgets 1, 2, 3 (one run per budget);
    maxherding: random + 0.01 (s + 1); random+st: random + 0.02; maxherding+st: random+st +
    0.005 (s + 1); lower 0.4; upper 0.8 on fold 0 and 0.9 on fold 1; upper+dgst: upper + 0.01."""
    rows = []
    for s in range(10):
        for f in (0, 1):
            base = {"task": "glioma", "seed": s, "fold": f}
            rows.append({**base, "run": "lower", "per_case": cases(0.4)})
            rows.append({**base, "run": "upper", "per_case": cases(0.8 + 0.1 * f)})
            rows.append({**base, "run": "upper+dgst", "per_case": cases(0.81 + 0.1 * f)})
            for run, extra in (("random", 0.0), ("maxherding", 0.01 * (s + 1)),
                               ("random+st", 0.02), ("maxherding+st", 0.02 + 0.005 * (s + 1))):
                for b in (1, 2, 3):
                    rows.append({**base, "run": run, "budget": b,
                                 "per_case": cases(0.5 + 0.02 * b + extra)})
    return rows


def test_seed_values_average_the_folds_or_pair_each_run() -> None:
    rows = curve_rows()
    by_seed = stats.seed_values(rows, "glioma", "upper")
    assert len(by_seed) == 10 and by_seed[4] == {None: pytest.approx(0.85)}  # folds averaged
    by_run = stats.seed_values(rows, "glioma", "upper", pair_by="run")
    assert by_run[(1, 4)] == {None: pytest.approx(0.9)}
    assert stats.seed_values(rows, "glioma", "maxherding")[2] == {
        b: pytest.approx(0.5 + 0.02 * b + 0.03) for b in (1, 2, 3)
    }


def test_compare_gives_the_paired_differences_in_points() -> None:
    rows = curve_rows()
    out = {label: (res, ma, mb) for label, res, ma, mb in
           stats.compare(rows, "glioma", "maxherding", "random", [1, 2, 3])}
    assert list(out) == ["Dice at 1", "Dice at 2", "Dice at 3", "AUBC 1-3"]
    res, ma, mb = out["Dice at 2"]
    assert (res.n, res.mean, res.p) == (10, pytest.approx(5.5), pytest.approx(2 / 2**10))
    assert (ma, mb) == (pytest.approx(54 + 5.5), pytest.approx(54.0))
    assert out["AUBC 1-3"][2] == pytest.approx(54.0)  # mean of 52, 54, 56 (a straight line)
    bound = stats.compare(rows, "glioma", "upper+dgst", "upper", [1, 2, 3])
    assert [(label, r.mean, r.sd) for label, r, _, _ in bound] == [
        ("Dice (all labels)", pytest.approx(1.0), pytest.approx(0.0, abs=1e-9))
    ]


def test_compare_gap_is_the_difference_of_the_gaps() -> None:
    gap = {label: (res, without, with_) for label, res, without, with_ in stats.compare_gap(
        curve_rows(), "glioma", "maxherding+st", "random+st", "maxherding", "random", [1, 2, 3]
    )}
    res, without, with_ = gap["Dice at 1"]
    # gap without: 1 (s + 1) points, with: 0.5 (s + 1); mean over s = 0..9 of 5.5 and 2.75
    assert (without, with_, res.mean) == (
        pytest.approx(5.5), pytest.approx(2.75), pytest.approx(-2.75)
    )
    assert res.p == pytest.approx(2 / 2**10) and res.ci_high < 0


def test_source_baseline_and_points_of_the_curves() -> None:
    raw = curve_rows()
    rows = [normalise(r) for r in raw]
    assert stats.source_of(rows, "glioma", "random") == "per budget"
    curve = [{"task": "glioma", "seed": s, "fold": 0, "run": "mmacts", "budget": 2,
              "per_case": cases(0.0),
              "curve": [{"labels": b, "per_case": cases(0.6 + 0.1 * b)} for b in (1, 2)]}
             for s in range(3)]
    assert stats.source_of([normalise(r) for r in expand_curves(curve)], "glioma", "mmacts") == (
        "curve")
    methods = ["random", "random_one_off", "maxherding"]
    one_off = [normalise({**r, "run": "random_one_off"}) for r in raw if r["run"] == "random"]
    assert stats.matched_baseline(rows + one_off, "glioma", "maxherding", methods) == (
        "random_one_off")  # run per budget, no schedule recorded: the one-off random
    assert stats.matched_baseline(rows, "glioma", "maxherding", ["random", "maxherding"]) == (
        "random")
    pts = stats.curve_points(curve, "glioma", "mmacts")
    assert [(b, m, n) for b, m, _, _, n in pts] == [
        (1, pytest.approx(0.7), 3), (2, pytest.approx(0.8), 3)]
    assert all(math.isnan(lo) and math.isnan(hi) for _, _, lo, hi, _ in pts)  # 3 seeds: no band
    assert stats.bound_point(rows, "glioma", "lower") == (
        pytest.approx(0.4), pytest.approx(0.4), pytest.approx(0.4), 10
    )
    mean, _, _, n = stats.bound_point(rows, "glioma", "upper")
    assert (mean, n) == (pytest.approx(0.85), 10)
    assert stats.bound_point(rows, "glioma", "nothing") is None


# ---------------------------------------------------------------------------------- multiplicity
def holm_closed_form(p: dict[str, float]) -> dict[str, float]:
    """Holm's adjusted p by its formula, min(1, max_{j <= i} (m - j + 1) p_(j)), rank by rank."""
    keys = sorted(p, key=p.get)
    m = len(keys)
    return {k: min(1.0, max((m - j) * p[keys[j]] for j in range(i + 1)))
            for i, k in enumerate(keys)}


def test_holm_by_hand() -> None:
    # sorted: d 0.005 x 4 = 0.02; a 0.01 x 3 = 0.03; c 0.03 x 2 = 0.06; b 0.04 x 1 = 0.04,
    # raised to the running maximum 0.06
    got = stats.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    assert list(got) == ["a", "b", "c", "d"]
    assert got == {"a": pytest.approx(0.03), "b": pytest.approx(0.06), "c": pytest.approx(0.06),
                   "d": pytest.approx(0.02)}
    # pingouin's documented example: [.5, .003, .32, .054, .0003] -> [.64, .012, .64, .162, .0015]
    five = stats.holm(dict(enumerate([0.5, 0.003, 0.32, 0.054, 0.0003])))
    assert list(five.values()) == pytest.approx([0.64, 0.012, 0.64, 0.162, 0.0015])
    assert stats.holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}  # capped
    assert stats.holm({"a": 0.01, "b": 0.01, "c": 0.5}) == pytest.approx(
        {"a": 0.03, "b": 0.03, "c": 0.5}  # ties share a value
    )
    nan = stats.holm({"a": 0.01, "b": math.nan, "c": 0.04})
    assert nan["a"] == pytest.approx(0.02) and nan["c"] == pytest.approx(0.04)  # m = 2
    assert math.isnan(nan["b"])
    assert stats.holm({}) == {}
    with pytest.raises(ValueError, match="not in"):
        stats.holm({"a": 1.2})


def test_holm_matches_its_closed_form_and_is_monotone() -> None:
    rng = np.random.default_rng(11)
    for m in (1, 2, 5, 17):
        p = {f"h{i}": float(x) for i, x in enumerate(rng.uniform(0, 0.2, size=m))}
        got = stats.holm(p)
        assert got == pytest.approx(holm_closed_form(p))
        order = sorted(p, key=p.get)
        assert all(got[a] <= got[b] for a, b in itertools.pairwise(order))
        assert all(p[k] <= got[k] <= 1 for k in p)


def values_of(diffs: dict[str, dict[int, list[float]]], base: float = 0.5) -> dict[str, Any]:
    """``{method: {budget: {seed: base + diff}}}`` from per-seed offsets."""
    return {m: {b: {s: base + x for s, x in enumerate(d)} for b, d in by_b.items()}
            for m, by_b in diffs.items()}


#: zero mean, sample sd 1 over 10 seeds
PATTERN = [(k - 4.5) / math.sqrt(55 / 6) for k in range(10)]


def with_p(p: float, sd: float = 0.01) -> list[float]:
    """10 differences whose paired t-test has two-sided p = ``p``: sample sd ``sd`` (PATTERN)
    and mean t_{1-p/2, 9} sd / sqrt(10)."""
    c = scipy.stats.t.isf(p / 2, 9) * sd / math.sqrt(10)
    return [c + sd * z for z in PATTERN]


def test_budget_values_are_the_penalty_input() -> None:
    assert stats.budget_values(curve_rows(), "glioma", ["random", "maxherding"], [1, 3]) == {
        "random": {1: {s: pytest.approx(0.52) for s in range(10)},
                   3: {s: pytest.approx(0.56) for s in range(10)}},
        "maxherding": {1: {s: pytest.approx(0.52 + 0.01 * (s + 1)) for s in range(10)},
                       3: {s: pytest.approx(0.56 + 0.01 * (s + 1)) for s in range(10)}},
    }


def test_penalty_matrix_of_a_clear_winner_and_of_identical_methods() -> None:
    noise = [0.001 * z for z in PATTERN]
    budgets = (1, 2, 3, 5)
    values = values_of({
        "A": {b: [0.1 + e for e in noise] for b in budgets},
        "B": {b: [0.0] * 10 for b in budgets},
        "C": {b: [0.0] * 10 for b in budgets},  # identical to B
    })
    pen = stats.penalty_matrix(values)
    assert pen.budgets == budgets and pen.methods == ("A", "B", "C")
    assert pen.matrix == {"A": {"A": 0.0, "B": 1.0, "C": 1.0},
                          "B": {"A": 0.0, "B": 0.0, "C": 0.0},
                          "C": {"A": 0.0, "B": 0.0, "C": 0.0}}
    assert pen.wins == {"A": 2.0, "B": 0.0, "C": 0.0}
    assert pen.losses == {"A": 0.0, "B": 1.0, "C": 1.0}
    bc = [t for t in pen.tests if (t.first, t.second) == ("B", "C")]
    assert len(bc) == 4 and all(math.isnan(t.p) and t.n == 10 for t in bc)  # no test
    ab = next(t for t in pen.tests if (t.first, t.second, t.budget) == ("A", "B", 3))
    # t = 0.1 / (0.001 / sqrt(10)): p far below anything
    assert ab.mean_diff == pytest.approx(0.1) and ab.p < 1e-10 and pen.n_range == (10, 10)
    assert stats.penalty_matrix(values_of({"A": {1: [0.0] * 3}, "B": {1: [0.0] * 3}})).matrix == {
        "A": {"A": 0.0, "B": 0.0}, "B": {"A": 0.0, "B": 0.0}
    }


def test_penalty_matrix_counts_budgets_and_direction() -> None:
    sig = with_p(1e-4)
    flat = [0.05 * z for z in PATTERN]  # mean 0: t = 0, p = 1
    values = values_of({
        "A": {1: [0.0] * 10, 2: [0.0] * 10, 3: [0.0] * 10, 4: [0.0] * 10},
        "B": {1: [-x for x in sig], 2: [-x for x in sig], 3: flat, 4: sig},  # B wins at 4 only
    })
    pen = stats.penalty_matrix(values)
    assert pen.matrix["A"]["B"] == 0.5 and pen.matrix["B"]["A"] == 0.25
    t1 = next(t for t in pen.tests if t.budget == 1)
    # m = 4: the three p = 1e-4 tie at 4 x 1e-4, the p = 1 stays 1
    assert t1.p == pytest.approx(1e-4) and t1.p_adjusted == pytest.approx(4e-4)
    t3 = next(t for t in pen.tests if t.budget == 3)
    assert t3.p == pytest.approx(1.0) and t3.p_adjusted == pytest.approx(1.0)


def test_holm_over_budgets_or_over_everything_or_not_at_all() -> None:
    # A vs B: p = 0.02 at both budgets. C - B = 0.05 z: mean 0, p = 1; C - A = 0.04 z - mean of
    # A - B: t = -t_{0.99, 9} / 4 = -0.7, p about 0.5
    flat = [0.05 * z for z in PATTERN]
    values = values_of({
        "A": {1: with_p(0.02), 2: with_p(0.02)},
        "B": {1: [0.0] * 10, 2: [0.0] * 10},
        "C": {1: flat, 2: flat},
    })
    # per pair over its 2 budgets: 2 x 0.02 = 0.04 <= 0.05, both budgets count
    assert stats.penalty_matrix(values).matrix["A"]["B"] == 1.0
    # over the 3 pairs x 2 budgets: 6 x 0.02 = 0.12, nothing counts
    everything = stats.penalty_matrix(values, family="all")
    assert everything.matrix["A"]["B"] == 0.0
    ab = [t.p_adjusted for t in everything.tests if (t.first, t.second) == ("A", "B")]
    assert ab == [pytest.approx(0.12)] * 2
    # 4 budgets at p = 0.03: uncorrected (BADGE) all count; Holm: 4 x 0.03 = 0.12, none
    four = values_of({"A": {b: with_p(0.03) for b in range(4)},
                      "B": {b: [0.0] * 10 for b in range(4)}})
    assert stats.penalty_matrix(four, family="none").matrix["A"]["B"] == 1.0
    assert stats.penalty_matrix(four).matrix["A"]["B"] == 0.0
    assert stats.penalty_matrix(four, alpha=0.15).matrix["A"]["B"] == 1.0


def test_penalty_matrix_with_the_wilcoxon_test() -> None:
    ten = values_of({"A": {b: [0.01 * (s + 1) for s in range(10)] for b in (1, 2)},
                     "B": {b: [0.0] * 10 for b in (1, 2)}})
    pen = stats.penalty_matrix(ten, test="wilcoxon")
    assert [t.p for t in pen.tests] == [pytest.approx(2 / 2**10)] * 2  # exact: all positive
    assert pen.matrix["A"]["B"] == 1.0  # Holm: 2 x 2 / 1024 < 0.05
    five = values_of({"A": {1: [0.01 * (s + 1) for s in range(5)]}, "B": {1: [0.0] * 5}})
    # the smallest exact two-sided p of 5 pairs is 2 / 32 = 0.0625: never significant
    assert stats.penalty_matrix(five, test="wilcoxon", family="none").matrix["A"]["B"] == 0.0
    assert stats.penalty_matrix(five, family="none").matrix["A"]["B"] == 1.0  # the t-test can
    same = stats.penalty_matrix(values_of({"A": {1: [0.1] * 6}, "B": {1: [0.1] * 6}}),
                                test="wilcoxon")
    assert same.matrix["A"]["B"] == 0.0 and math.isnan(same.tests[0].p)  # no test, no error
    with pytest.raises(ValueError, match="test"):
        stats.penalty_matrix(ten, test="sign")
    with pytest.raises(ValueError, match="family"):
        stats.penalty_matrix(ten, family="bonferroni")


def test_penalty_matrices_of_settings_add_up() -> None:
    noise = [0.001 * z for z in PATTERN]
    one = stats.penalty_matrix(values_of({"A": {1: [0.1 + e for e in noise]},
                                          "B": {1: [0.0] * 10}}))
    other = stats.penalty_matrix(values_of({"A": {2: [0.1 + e for e in noise]},
                                            "B": {2: [0.0] * 10}, "C": {2: [0.0] * 10}}))
    both = stats.combine_penalties([one, other])
    assert both.settings == 2 and both.methods == ("A", "B", "C") and both.budgets == (1, 2)
    assert both.matrix["A"] == {"A": 0.0, "B": 2.0, "C": 1.0}
    assert both.wins["A"] == 3.0 and both.losses["B"] == 2.0
    with pytest.raises(ValueError, match="cannot sum"):
        stats.combine_penalties([one, stats.penalty_matrix(values_of({"A": {1: [0.0] * 3}}),
                                                           family="all")])
