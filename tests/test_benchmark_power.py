"""The power profile: paired statistics over seeds on constructed results with known answers,
budget curves from one sequential run, and a tiny ``--power`` run end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import statistics
from pathlib import Path
from typing import Any

import pytest
import yaml
from ada_bench import power, stats
from ada_bench.seeds import seed_ranges
from ada_bench.curve import labels_at
from ada_bench.results import expand_curves, normalise, read_rows

REPO = Path(__file__).resolve().parents[1]
CONF = Path(__file__).parent / "conf"
REGIONS = ["ET", "NCR", "ED"]
#: Student t quantiles for 9 degrees of freedom (tables): 97.5 % and 80 %
T975_9, T80_9 = 2.2621571628, 0.8834038597


def cases(value: float) -> list[dict[str, Any]]:
    """Two test cases whose mean Dice (every region) is ``value``."""
    return [
        {"case_id": f"glioma_test_{i:03d}", **{f"dice_{g}": value + d for g in REGIONS}}
        for i, d in enumerate((-0.1, 0.1))
    ]


def constructed() -> list[dict[str, Any]]:
    """10 seeds. random (a curve run): 0.5 + 0.02 b at budget b; mmacts (a curve run): random +
    0.01 (s + 1) at every budget; stdr (one run per budget): random - 0.02; bounds 0.4 / 0.9."""
    rows = []
    for s in range(10):
        base = {"task": "glioma", "seed": s, "fold": 0}
        rows.append({**base, "run": "lower", "budget": 0, "per_case": cases(0.4)})
        rows.append({**base, "run": "upper", "per_case": cases(0.9)})
        for run, extra in (("random", 0.0), ("mmacts", 0.01 * (s + 1))):
            curve = [
                {"labels": b, "epoch": 2 * b - 1, "per_case": cases(0.5 + 0.02 * b + extra)}
                for b in range(1, 6)
            ]
            rows.append({**base, "run": run, "budget": 5, "per_case": cases(0.0), "curve": curve})
        for b in (1, 2, 3, 5):
            rows.append({**base, "run": "stdr", "budget": b,
                         "per_case": cases(0.5 + 0.02 * b - 0.02)})
    return rows


def test_curve_rows_expand_into_one_row_per_budget() -> None:
    rows = expand_curves(constructed())
    rnd = sorted(
        (r["budget"], r["from_curve"], r["curve_epoch"])
        for r in rows
        if r["run"] == "random" and r["seed"] == 0
    )
    # the curve replaces the run's final test (its budget-5 point is the curve's)
    assert rnd == [(b, True, 2 * b - 1) for b in range(1, 6)]
    values = stats.seed_values(rows, "glioma", "random")
    assert values[3] == pytest.approx({b: 0.5 + 0.02 * b for b in range(1, 6)})
    assert stats.seed_values(rows, "glioma", "upper")[0] == {None: pytest.approx(0.9)}
    # a run stopped before its last point keeps its final test for that budget
    short = expand_curves([{**constructed()[2], "curve": [{"labels": 1, "per_case": []}]}])
    assert [(r["budget"], r.get("from_curve", False)) for r in short] == [(1, True), (5, False)]


def test_labels_a_model_trained_with() -> None:
    queries = [-1, 1, 3]  # at fit start, after epochs 1 and 3 (stride 2)
    assert [labels_at(queries, e) for e in range(6)] == [1, 1, 2, 2, 3, 3]


def test_aubc_is_the_normalised_trapezoid() -> None:
    assert stats.aubc({1: 0.5, 2: 0.5, 3: 0.5, 5: 0.5}, [1, 2, 3, 5]) == pytest.approx(0.5)
    # trapezoid: (0.1+0.2)/2 + (0.2+0.4)/2 + 2 * (0.4+0.6)/2 = 1.45, over a range of 4
    assert stats.aubc({1: 0.1, 2: 0.2, 3: 0.4, 5: 0.6}, [1, 2, 3, 5]) == pytest.approx(1.45 / 4)
    assert math.isnan(stats.aubc({1: 0.1, 2: 0.2}, [1, 2, 3]))


def test_paired_summary_known_answers() -> None:
    d = [float(k) for k in range(1, 11)]  # 1..10 points
    res = stats.paired(d)
    sd = statistics.stdev(d)  # sqrt(55 / 6)
    assert (res.n, res.mean, res.sd) == (10, pytest.approx(5.5), pytest.approx(math.sqrt(55 / 6)))
    assert res.p == pytest.approx(2 / 2**10)  # exact: all ten differences positive
    assert res.mdd == pytest.approx((T975_9 + T80_9) * sd / math.sqrt(10), rel=1e-6)
    assert 1.0 <= res.ci_low < 5.5 < res.ci_high <= 10.0
    assert res.ci_high - res.ci_low < 9.0  # narrower than the range
    same = stats.paired([-2.0] * 10)
    assert (same.mean, same.ci_low, same.ci_high, same.sd, same.mdd) == (-2.0, -2.0, -2.0, 0.0, 0.0)
    assert same.p == pytest.approx(2 / 2**10)
    zero = stats.paired([0.0] * 4)
    assert zero.p == 1.0 and zero.mean == 0.0
    one = stats.paired([3.0])
    assert one.n == 1 and math.isnan(one.ci_low) and math.isnan(one.mdd)


@pytest.fixture
def named(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_ada.active.strategies import REGISTRY

    for name, shown, order in (("random", "Random", 10), ("stdr", "STDR", 50),
                               ("mmacts", "mmActS", 90)):
        monkeypatch.setattr(REGISTRY[name], "display_name", shown, raising=False)
        monkeypatch.setattr(REGISTRY[name], "table_order", order, raising=False)


def test_power_table_on_constructed_results(named: None, tmp_path: Path) -> None:
    assert power.budgets_of(constructed()) == [1, 2, 3, 5]  # STDR's, made per budget
    curves_only = [r for r in constructed() if r["run"] != "stdr"]
    assert power.budgets_of(curves_only) == [1, 2, 3, 4, 5]
    table, figures = power.write_power(constructed(), tmp_path)
    rows = {(r[1], r[3]): r for r in table.csv_rows}
    assert [k for k in rows if k[0] == "stdr"] == [
        ("stdr", "Dice at 1"), ("stdr", "Dice at 2"), ("stdr", "Dice at 3"),
        ("stdr", "Dice at 5"), ("stdr", "AUBC 1-5"),
    ]
    header = table.csv_header
    for measure in ("Dice at 1", "Dice at 5", "AUBC 1-5"):
        mm = dict(zip(header, rows[("mmacts", measure)]))
        assert (mm["n_seeds"], mm["diff_mean"]) == (10, pytest.approx(5.5))
        assert mm["p"] == pytest.approx(2 / 2**10)
        assert mm["mdd"] == pytest.approx((T975_9 + T80_9) * math.sqrt(55 / 6) / math.sqrt(10))
        st = dict(zip(header, rows[("stdr", measure)]))
        assert (st["diff_mean"], st["ci_low"], st["ci_high"]) == (
            pytest.approx(-2.0), pytest.approx(-2.0), pytest.approx(-2.0)
        )
    assert dict(zip(header, rows[("mmacts", "AUBC 1-5")]))["baseline_mean"] == pytest.approx(56.0)
    assert dict(zip(header, rows[("stdr", "Dice at 3")]))["strategy_mean"] == pytest.approx(54.0)
    assert {r[-2] for r in table.csv_rows if r[1] == "stdr"} == {"per budget"}
    assert {r[-1] for r in table.csv_rows} == {"curve"}
    md = (tmp_path / "power.md").read_text()
    row = (
        "| glioma | STDR | Random | Dice at 2 | 10 | 52.00 | 54.00 | -2.00 | [-2.00, -2.00] "
        "| 0.00195 |"
    )
    assert row in md
    assert "ONE sequential run" in md and "glioma Random" in md and "(t_{0.975,n−1}" in md
    # the figure: one band per strategy, drawn over 10 seeds
    assert [p.name for p in figures] == ["power_curve_glioma.png"]
    pts = stats.curve_points(constructed(), "glioma", "mmacts")
    assert [p[0] for p in pts] == [1, 2, 3, 4, 5] and pts[0][4] == 10
    assert pts[0][1] == pytest.approx(0.52 + 0.055) and pts[0][2] < pts[0][1] < pts[0][3]


@pytest.mark.slow
def test_one_off_strategies_are_paired_with_the_one_off_random(
    named: None, tmp_path: Path
) -> None:
    """With ``random_one_off`` rows (random picks, whole budget at epoch 0, the full schedule),
    a strategy run once per budget is compared with them, a curve strategy still with random's
    curve; random_one_off itself against random (the size of the schedule effect)."""
    rows = constructed()
    for s in range(10):  # the one-off random: 0.03 above the curve random at every budget
        rows += [
            {"task": "glioma", "seed": s, "fold": 0, "run": "random_one_off", "budget": b,
             "per_case": cases(0.5 + 0.02 * b + 0.03)}
            for b in (1, 2, 3, 5)
        ]
    table = power.power_table(rows)
    by = {(r[1], r[3]): dict(zip(table.csv_header, r)) for r in table.csv_rows}
    stdr = by[("stdr", "Dice at 2")]
    assert stdr["baseline"] == "random_one_off" and stdr["baseline_source"] == "per budget"
    assert stdr["diff_mean"] == pytest.approx(-5.0)  # -2 vs random, -5 vs the one-off random
    mm = by[("mmacts", "Dice at 2")]
    assert mm["baseline"] == "random" and mm["diff_mean"] == pytest.approx(0.01 * 5.5 * 100)
    own = by[("random_one_off", "Dice at 3")]
    assert own["baseline"] == "random" and own["diff_mean"] == pytest.approx(3.0)
    assert "Random (one-off)" in "\n".join(table.notes)


def real_rows() -> list[dict[str, Any]]:
    """Real-data shape: 3 folds x 2 seeds at one budget (3). random: 0.5 + 0.1 f; ugtst: random +
    0.01 (f + 3 s) (Δ in points: 0, 1, 2, 3, 4, 5 over the six runs); bounds 0.4 / 0.9."""
    rows = []
    for s in range(2):
        for f in range(3):
            base = {"task": "brats18", "seed": s, "fold": f}
            rows.append({**base, "run": "lower", "strategy": "lower", "budget": 0,
                         "per_case": cases(0.4)})
            rows.append({**base, "run": "upper", "strategy": "upper", "per_case": cases(0.9)})
            rows.append({**base, "run": "random", "strategy": "random", "budget": 3,
                         "per_case": cases(0.5 + 0.1 * f)})
            rows.append({**base, "run": "ugtst", "strategy": "ugtst", "budget": 3,
                         "per_case": cases(0.5 + 0.1 * f + 0.01 * (f + 3 * s))})
    return rows


def test_paired_over_runs_pairs_each_fold_of_each_seed(named: None) -> None:
    """Real data: folds are different test cases, so each (fold, seed) run is one pair (n = 6);
    pairing by seed would average the folds first (n = 2)."""
    rows = real_rows()
    runs = stats.seed_values(rows, "brats18", "ugtst", pair_by="run")
    assert sorted(runs) == [(f, s) for f in range(3) for s in range(2)]
    assert runs[(2, 1)] == {3: pytest.approx(0.5 + 0.2 + 0.05)}
    table = power.power_table(rows, pair_by="run")
    by = {(r[1], r[3]): dict(zip(table.csv_header, r)) for r in table.csv_rows}
    d = by[("ugtst", "Dice at 3")]
    assert d["n_seeds"] == 6 and d["diff_mean"] == pytest.approx(2.5)
    assert d["sd"] == pytest.approx(statistics.stdev([0, 1, 2, 3, 4, 5]))
    assert not any(m.startswith("AUBC") for _, m in by)  # one budget: no area
    assert table.header[4] == "Runs" and "fold x seed" in table.title
    by_seed = power.power_table(rows)
    assert {r[4] for r in by_seed.csv_rows} == {2}
    with pytest.raises(ValueError, match="pair_by"):
        stats.seed_values(rows, "brats18", "ugtst", pair_by="fold")


def test_the_one_off_baseline_is_used_by_schedule_and_only_where_it_ran(named: None) -> None:
    """Real data: every strategy runs once per budget, so the schedule recorded in the rows
    decides; a one-off strategy gets the one-off random only where that ran on all its units."""
    rows = real_rows()
    for r in rows:
        r["schedule"] = "one_off" if r["run"] == "ugtst" else "sequential"
    maxh = [
        {**r, "run": "maxherding", "strategy": "maxherding"} for r in rows if r["run"] == "random"
    ]
    one_off = [{**r, "run": "random_one_off", "strategy": "random", "schedule": "one_off"}
               for r in rows if r["run"] == "random"]
    methods = ["random", "random_one_off", "ugtst", "maxherding"]
    full = [normalise(r) for r in rows + maxh + one_off]
    assert stats.matched_baseline(full, "brats18", "ugtst", methods, pair_by="run") == (
        "random_one_off")
    assert stats.matched_baseline(full, "brats18", "maxherding", methods, pair_by="run") == "random"
    partial = [normalise(r) for r in rows + maxh + one_off[:1]]  # one run of one-off random
    assert stats.matched_baseline(partial, "brats18", "ugtst", methods, pair_by="run") == "random"


def test_report_writes_the_paired_table_for_folds_and_seeds(named: None, tmp_path: Path) -> None:
    """A benchmark without budget curves but with several (fold, seed) runs of random gets
    ``paired.md``/``.csv`` (and the summary shows it); one run of random gets none."""
    import json

    from ada_bench.report import paired_runs, write_report

    rows = real_rows()
    assert paired_runs(rows) and not paired_runs(rows[:4])
    for r in rows:
        r["test"] = {}
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_report(tmp_path, figure_methods=())
    assert (tmp_path / "paired.md").exists() and (tmp_path / "paired.csv").exists()
    assert "paired over runs (fold x seed)" in text


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("bench_script", REPO / "scripts" / "benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_power_profile_plan() -> None:
    mod = load_script()
    args = mod.parser().parse_args(["--power", "--strategies", "mmacts", "stdr", "--dry-run"])
    cfg = mod.build_config(args, {})
    assert cfg.seeds == seed_ranges()["evaluation"] == list(range(10, 20))
    assert cfg.folds == [0] and cfg.curve
    task = cfg.task("glioma")
    assert task.scheme.n_test == 50 and task.scheme.n_folds == 1
    # sequential strategies once at the largest budget (their curve), one-off ones per budget
    # a one-off strategy brings the one-off random (its baseline), run per budget as well
    assert cfg.runs["glioma"] == [
        ("lower", None), ("upper", None), ("random", 5),
        ("random_one_off", 1), ("random_one_off", 2), ("random_one_off", 3),
        ("random_one_off", 5), ("mmacts", 5),
        ("stdr", 1), ("stdr", 2), ("stdr", 3), ("stdr", 5),
    ]
    args = mod.parser().parse_args(["--power", "--strategies", "mmacts", "--dry-run"])
    assert [n for n, _ in mod.build_config(args, {}).runs["glioma"]] == [
        "lower", "upper", "random", "mmacts"
    ]


def power_configs(folder: Path) -> Path:
    """configs/power/glioma/ in miniature: the tiny test configs, an upper bound made of them."""
    task = folder / "glioma"
    task.mkdir(parents=True)
    shutil.copy(CONF / "source_tiny.yaml", task / "source.yaml")
    shutil.copy(CONF / "random_tiny.yaml", task / "random.yaml")
    shutil.copy(CONF / "random_tiny.yaml", task / "mmacts.yaml")
    upper = yaml.safe_load((CONF / "random_tiny.yaml").read_text())
    upper["data"]["label_all"] = True
    upper["active"] = {"budget": 0}
    (task / "upper_bound.yaml").write_text(yaml.safe_dump(upper))
    return folder


@pytest.mark.slow
def test_tiny_power_run_end_to_end(tmp_path: Path, named: None) -> None:
    """2 seeds x (source, bounds, random's curve, STDR per budget and the one-off random of its
    schedule per budget) on 16^3 phantoms."""
    mod = load_script()
    out = tmp_path / "power"
    conf = power_configs(tmp_path / "conf")
    code = mod.main(
        ["--power", "--tasks", "glioma", "--seeds", "0", "1", "--strategies", "stdr",
         "--budgets", "1", "2", "--n-test", "4", "--n-pool", "4", "--workers", "1",
         "--config-dir", str(conf / "{task}"), "--data-base", str(tmp_path / "data"),
         "--out", str(out), "--figures", "none"]
    )
    assert code == 0, read_rows(out / "errors.jsonl")
    rows = read_rows(out / "results.jsonl")
    made = sorted((r["run"], r["seed"], r["budget"] or 0) for r in rows if r["run"] != "source")
    assert made == sorted(
        (run, s, b) for run, b in (("lower", 0), ("random", 2), ("random_one_off", 1),
                                   ("random_one_off", 2), ("stdr", 1), ("stdr", 2), ("upper", 0))
        for s in (0, 1)
    )
    rnd = next(r for r in rows if r["run"] == "random" and r["seed"] == 1)
    # stride 1, queries at fit start and after epoch 0: 1 label in epoch 0, 2 from epoch 1 on
    assert [(p["labels"], p["epoch"]) for p in rnd["curve"]] == [(1, 0), (2, 1)]
    test_ids = {c["case_id"] for c in rnd["per_case"]}
    assert len(test_ids) == 4 and all({c["case_id"] for c in p["per_case"]} == test_ids
                                      for p in rnd["curve"])
    # a fresh phantom draw per seed (4 pool + 4 test target cases), shared by the seed's runs
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "glioma_16_seed0_t8", "glioma_16_seed1_t8"
    ]

    # the table's difference is the per-seed mean Dice difference to the random of STDR's own
    # (one-off) schedule at the same budget, recomputed here
    def mean_dice(per_case: list[dict[str, Any]]) -> float:
        return statistics.fmean(statistics.fmean(c[f"dice_{g}"] for g in REGIONS) for c in per_case)

    csv = (out / "power.csv").read_text().splitlines()
    header = csv[0].split(",")
    stdr2 = dict(zip(header, next(line for line in csv if ",stdr,random_one_off,Dice at 2," in line).split(",")))
    diffs = []
    for s in (0, 1):
        st = next(r for r in rows if r["run"] == "stdr" and r["budget"] == 2 and r["seed"] == s)
        rd = next(r for r in rows
                  if r["run"] == "random_one_off" and r["budget"] == 2 and r["seed"] == s)
        diffs.append(100 * (mean_dice(st["per_case"]) - mean_dice(rd["per_case"])))
    assert float(stdr2["diff_mean"]) == pytest.approx(statistics.fmean(diffs), abs=1e-9)
    assert int(stdr2["n_seeds"]) == 2 and stdr2["baseline"] == "random_one_off"
    assert stdr2["baseline_source"] == "per budget"
    assert [line.split(",")[3] for line in csv[1:] if line.split(",")[1] == "stdr"] == [
        "Dice at 1", "Dice at 2", "AUBC 1-2"]
    assert stdr2["ci_low"] == stdr2["ci_high"] == ""  # 2 seeds: no CI (MIN_CI_N)
    assert (out / "power_curve_glioma.png").is_file()
    summary = (out / "summary.md").read_text()
    # the default protocol (configs/power/protocol.yaml) was recorded at the start and its
    # primary table opens power.md; the rest is secondary
    assert "## Primary endpoint (" in summary
    assert "## Secondary / exploratory (unadjusted p): every strategy vs random" in summary
    start = json.loads((out / "invocations.jsonl").read_text().splitlines()[0])
    assert start["protocol"]["file"] == "configs/power/protocol.yaml"
    assert (out / "protocol.yaml").read_text() == start["protocol"]["text"]


def test_gap_table_gives_the_change_of_a_rules_lead_over_random_with_an_addition() -> None:
    """random+st = random + 0.02; mmacts+st = random+st + 0.005 (s + 1), so mmActS's lead over
    random, 1 (s + 1) points, falls to 0.5 (s + 1) with self-training: Δ gap = -0.5 (s + 1).
    mmacts+gba has no random+gba to compare with and gives no row."""
    rows = constructed()
    for s in range(10):
        base = {"task": "glioma", "seed": s, "fold": 0}
        for run, extra in (
            ("random+st", 0.02), ("mmacts+st", 0.02 + 0.005 * (s + 1)), ("mmacts+gba", 0.0)
        ):
            curve = [
                {"labels": b, "epoch": 2 * b - 1, "per_case": cases(0.5 + 0.02 * b + extra)}
                for b in range(1, 6)
            ]
            rows.append({**base, "run": run, "budget": 5, "per_case": cases(0.0), "curve": curve})
    gaps = power.gap_table(rows, budgets=[1, 2, 3, 5])
    by = {(r[1], r[2], r[4]): dict(zip(gaps.csv_header, r)) for r in gaps.csv_rows}
    assert {k[:2] for k in by} == {("mmacts", "st")}
    for measure in ("Dice at 1", "Dice at 3", "AUBC 1-5"):
        row = by[("mmacts", "st", measure)]
        assert row["baseline"] == "random" and row["n_seeds"] == 10
        assert row["gap_without"] == pytest.approx(5.5)
        assert row["gap_with"] == pytest.approx(2.75)
        assert row["diff_mean"] == pytest.approx(-2.75)
        assert row["p"] == pytest.approx(2 / 2**10)  # every seed narrows: exact Wilcoxon
        assert row["ci_high"] < 0


def test_penalty_matrix_of_the_constructed_power_run(named: None, tmp_path: Path) -> None:
    """mmActS beats random by 0.01 (s + 1) and STDR by that + 0.02, random beats STDR by 0.02
    at every budget (10 seeds): each winner gets 1 per loser (4 budgets x 1/4)."""
    pen = power.task_penalty(constructed(), "glioma")
    assert pen.methods == ("random", "stdr", "mmacts") and pen.budgets == (1, 2, 3, 5)
    assert pen.matrix == {"random": {"random": 0.0, "stdr": 1.0, "mmacts": 0.0},
                          "stdr": {"random": 0.0, "stdr": 0.0, "mmacts": 0.0},
                          "mmacts": {"random": 1.0, "stdr": 1.0, "mmacts": 0.0}}
    table = power.penalty_table(pen, "glioma")
    md = table.markdown()
    assert md.startswith("## Pairwise penalty matrix, glioma: Dice at 4 budgets, 3 methods\n")
    assert "| Better ↓ than → | Random | STDR | mmActS | Wins (row sum) |" in md
    assert "| mmActS | 1.00 | 1.00 | – | 2.00 |" in md
    assert "| Losses (column sum) | 1.00 | 2.00 | 0.00 |  |" in md
    assert "share of the 4 budgets (1, 2, 3, 5)" in md
    assert "paired two-sided t-test of the per-seed differences over the 10 seeds" in md
    assert "Holm-corrected over the 4 budgets of each pair, α = 0.05" in md
    assert "3 methods: a row sum counts wins (at most 2)" in md and "had no test" not in md
    power.write_power(constructed(), tmp_path)
    assert (tmp_path / "power_penalty.md").read_text() == md
    entries = (tmp_path / "power_penalty.csv").read_text().splitlines()
    assert entries[0] == "task,method,compared_with,share_better"
    assert "glioma,mmacts,stdr,1.0" in entries and len(entries) == 1 + 6
    tests = (tmp_path / "power_penalty_tests.csv").read_text().splitlines()
    assert len(tests) == 1 + 3 * 4 and tests[1].startswith("glioma,random,stdr,1,10,2.0")
    bounds_only = [r for r in constructed() if r["run"] in ("lower", "upper")]
    assert power.write_penalties(bounds_only, tmp_path / "none") == []
    one = [r for r in constructed() if r["run"] in ("lower", "upper", "random")]
    assert power.write_penalties(one, tmp_path / "one") == []  # one strategy: nothing to rank


# ------------------------------------------------------------------------------ primary endpoint
PROTOCOL = """\
primary:
  measure: AUBC
  budgets: [1, 2, 3, 5]
  baseline: random of the same schedule
  methods: [mmacts, stdr, coverage, maxherding, typiclust, ugtst]
  correction: holm
  alpha: 0.05
"""


def primary_rows() -> list[dict[str, Any]]:
    """:func:`constructed` plus three curve rules whose per-seed AUBC difference to random (in
    points) has a known exact Wilcoxon p over 10 seeds: coverage +(s + 1) but -1 at seed 0
    (W- = 1: p = 4 / 2^10), maxherding +(s + 1) but -2 at seed 1 (W- = 2: p = 6 / 2^10),
    typiclust +(s + 1) at even and -(s + 1) at odd seeds (a large p). mmActS (+(s + 1) at every
    seed) and STDR (-2 at every seed) have p = 2 / 2^10. Every run started at 10:00 of
    2026-01-02 and ran 60 s."""
    rows = constructed()
    shift = {
        "coverage": [-1 if s == 0 else s + 1 for s in range(10)],
        "maxherding": [-2 if s == 1 else s + 1 for s in range(10)],
        "typiclust": [(s + 1) * (1 if s % 2 == 0 else -1) for s in range(10)],
    }
    for run, points in shift.items():
        for s in range(10):
            curve = [
                {"labels": b, "epoch": 2 * b - 1,
                 "per_case": cases(0.5 + 0.02 * b + 0.01 * points[s])}
                for b in range(1, 6)
            ]
            rows.append({"task": "glioma", "seed": s, "fold": 0, "run": run, "budget": 5,
                         "per_case": cases(0.0), "curve": curve})
    for r in rows:
        r.update(time="2026-01-02 10:01:00", seconds=60.0)
    return rows


@pytest.fixture
def rule_names(named: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_ada.active.strategies import REGISTRY

    for name, shown, order in (("coverage", "ProbCover", 95), ("maxherding", "MaxHerding", 96),
                               ("typiclust", "TypiClust", 97), ("ugtst", "UGTST", 70)):
        monkeypatch.setattr(REGISTRY[name], "display_name", shown, raising=False)
        monkeypatch.setattr(REGISTRY[name], "table_order", order, raising=False)


def write_protocol(folder: Path, text: str = PROTOCOL) -> Any:
    from ada_bench.endpoint import load_protocol

    path = folder / "protocol_in.yaml"
    path.write_text(text)
    return load_protocol(path)


def test_primary_table_holm_adjusts_over_its_rows_by_hand(rule_names: None, tmp_path: Path) -> None:
    """Raw p (sorted): mmActS 2, STDR 2, ProbCover 4, MaxHerding 6 (/ 2^10), TypiClust p_t.
    Holm over the m = 5 rows: 5 x 2 = 10, max(10, 4 x 2) = 10, 3 x 4 = 12, max(12, 2 x 6) = 12
    (/ 2^10), max(12 / 2^10, 1 x p_t) = p_t."""
    from ada_bench import endpoint
    from scipy.stats import wilcoxon

    protocol = write_protocol(tmp_path)
    table = endpoint.primary_table(primary_rows(), protocol, tmp_path, "power_penalty.md")
    by = {r[1]: dict(zip(table.csv_header, r)) for r in table.csv_rows}
    assert list(by) == ["mmacts", "stdr", "coverage", "maxherding", "typiclust"]  # declared order
    assert {r["measure"] for r in by.values()} == {"AUBC 1-5"}
    assert by["stdr"]["baseline"] == "random" and by["mmacts"]["n"] == 10
    p_t = float(wilcoxon([(s + 1) * (1 if s % 2 == 0 else -1) for s in range(10)]).pvalue)
    raw = {"mmacts": 2, "stdr": 2, "coverage": 4, "maxherding": 6}
    for m, k in raw.items():
        assert by[m]["p"] == pytest.approx(k / 2**10)
    assert by["typiclust"]["p"] == pytest.approx(p_t)
    holm = {"mmacts": 10 / 2**10, "stdr": 10 / 2**10, "coverage": 12 / 2**10,
            "maxherding": 12 / 2**10, "typiclust": p_t}
    for m, q in holm.items():
        assert by[m]["p_holm"] == pytest.approx(q), m
    assert [by[m]["rejected"] for m in by] == [1, 1, 1, 1, 0]
    assert by["coverage"]["diff_mean"] == pytest.approx(statistics.fmean(
        [-1] + [s + 1 for s in range(1, 10)]))
    md = table.markdown()
    assert md.startswith("## Primary endpoint (post hoc: declared after the runs): AUBC 1-5, ")
    assert "| Wilcoxon p | Holm p | MDD points |" in md
    assert "| glioma | ProbCover | Random | AUBC 1-5 | 10 |" in md
    assert "| 0.00391 | 0.0117 |" in md  # ProbCover: raw 4 / 2^10, Holm 12 / 2^10
    assert ("Holm-Bonferroni adjusted over the 5 comparisons of this table (5 methods x 1 task)"
            in md)
    assert "rejected (Holm p ≤ 0.05): glioma mmActS, glioma STDR, glioma ProbCover, glioma " \
        "MaxHerding." in md
    assert "Declared but without a comparison in these results: glioma UGTST." in md
    assert "[pairwise penalty matrix](power_penalty.md)" in md
    assert f"SHA-256 `{protocol.sha256[:12]}…`" in md
    assert "No invocation in invocations.jsonl recorded this protocol" in md
    assert "the 90 runs of this table" in md  # random + 4 curve rules x 10 seeds, STDR x 4 budgets
    # Holm is what changes: the same rows without correction keep the raw p
    plain = write_protocol(tmp_path, PROTOCOL.replace("holm", "none"))
    flat = endpoint.primary_table(primary_rows(), plain, tmp_path)
    assert [r[11] for r in flat.csv_rows] == [r[10] for r in flat.csv_rows]


@pytest.mark.slow
def test_the_declaration_is_the_first_invocation_that_recorded_the_protocols_hash(
    rule_names: None, tmp_path: Path
) -> None:
    """Runs started at 10:00 (10:01 minus 60 s): a protocol recorded at 09:00 was declared
    before them; one recorded at 10:30 after all of them; an edited protocol (another hash) is
    not declared by the old record."""
    import json

    from ada_bench import endpoint
    from ada_bench.publish import record_start

    protocol = write_protocol(tmp_path)
    rows = primary_rows()
    log = tmp_path / "invocations.jsonl"

    def start(stamp: str, proto: Any) -> None:
        with log.open("a") as f:
            f.write(json.dumps({"id": stamp, "event": "start", "argv": [], "start": stamp,
                                "protocol": endpoint.protocol_record(proto)}) + "\n")

    start("2026-01-02 10:30:00", protocol)
    late = endpoint.declaration(rows, protocol, tmp_path)
    assert (late.recorded, late.runs, late.before, late.prospective) == (
        "2026-01-02 10:30:00", 90, 90, False)
    assert (late.first, late.last) == ("2026-01-02 10:00", "2026-01-02 10:01")
    md = endpoint.primary_table(rows, protocol, tmp_path).markdown()
    assert "first recorded at 2026-01-02 10:30, after 90 of the 90 runs" in md
    start("2026-01-02 09:00:00", protocol)
    early = endpoint.declaration(rows, protocol, tmp_path)
    assert early.recorded == "2026-01-02 09:00:00" and early.prospective
    md = endpoint.primary_table(rows, protocol, tmp_path).markdown()
    assert md.startswith("## Primary endpoint (declared before the runs): ")
    assert ("recorded in invocations.jsonl at 2026-01-02 09:00, before every one of the 90 runs"
            in md)
    # whole-second stamps: a declaration 1 s after a run's estimated start is not after it
    close = tmp_path / "close"
    close.mkdir()
    log, kept_log = close / "invocations.jsonl", log
    start("2026-01-02 10:00:01", protocol)
    assert endpoint.declaration(rows, protocol, close).prospective
    log = kept_log
    edited = write_protocol(tmp_path, PROTOCOL.replace("alpha: 0.05", "alpha: 0.01"))
    assert endpoint.declaration(rows, edited, tmp_path).recorded is None
    # the harness's own start line records the protocol (file, hash, text)
    out = tmp_path / "run"
    out.mkdir()
    record_start(out, ["--power"], 0.0, endpoint.protocol_record(protocol))
    line = json.loads((out / "invocations.jsonl").read_text())
    assert line["protocol"]["sha256"] == protocol.sha256
    assert line["protocol"]["text"] == PROTOCOL
    assert endpoint.declared_at(out, protocol.sha256) == line["start"]


@pytest.mark.slow
def test_power_md_opens_with_the_primary_table_and_heads_the_rest_secondary(
    rule_names: None, tmp_path: Path
) -> None:
    protocol = write_protocol(tmp_path)
    made = power.power_report(primary_rows(), tmp_path / "out", protocol=protocol)
    md = (tmp_path / "out" / "power.md").read_text()
    assert md == made.markdown and md.startswith("## Primary endpoint")
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings[0].startswith("## Primary endpoint")
    assert all(h.startswith("## Secondary / exploratory (unadjusted p): ")
               for h in headings[1:-1]), headings
    assert headings[-1] == "## Budget curves (descriptive, no test)"
    assert (tmp_path / "out" / "protocol.yaml").read_text() == PROTOCOL
    assert (tmp_path / "out" / "power_penalty.md").is_file()
    csv = (tmp_path / "out" / "power_primary.csv").read_text().splitlines()
    assert csv[0].startswith("task,strategy,baseline,measure,n,") and len(csv) == 1 + 5
    without = power.power_report(primary_rows(), tmp_path / "plain")
    assert without.primary is None and "Secondary" not in without.markdown


def test_protocol_files_are_checked(tmp_path: Path) -> None:
    from ada_bench import endpoint

    good = endpoint.load_protocol(REPO / "configs" / "power" / "protocol.yaml")
    assert (good.measure, good.label, good.budgets, good.correction, good.alpha) == (
        "AUBC", "AUBC 1-5", (1, 2, 3, 5), "holm", 0.05)
    assert good.baseline == endpoint.SCHEDULE_MATCHED and good.tasks == ("glioma", "npc")
    assert good.shown_path == "configs/power/protocol.yaml"
    one = write_protocol(tmp_path, "primary: {measure: Dice at 3, methods: [mmacts]}\n")
    assert (one.label, one.budgets, one.correction) == ("Dice at 3", (3,), "holm")
    for text, error in (
        ("other: 1\n", "no 'primary:'"),
        ("primary: {measure: mean, methods: [a]}\n", "measure must be"),
        ("primary: {measure: AUBC, budgets: [3], methods: [a]}\n", "at least two budgets"),
        ("primary: {measure: AUBC, budgets: [1, 3]}\n", "methods is empty"),
        ("primary: {measure: AUBC, budgets: [1, 3], methods: [a], correction: bonf}\n",
         "correction"),
        ("primary: {measure: AUBC, budgets: [1, 3], methods: [a], alpha: 5}\n", "alpha"),
    ):
        with pytest.raises(ValueError, match=error):
            write_protocol(tmp_path, text)
    mod = load_script()
    assert mod.protocol_file(mod.parser().parse_args(["--power"])) == endpoint.POWER_PROTOCOL
    assert mod.protocol_file(mod.parser().parse_args([])) is None
    assert mod.protocol_file(mod.parser().parse_args(["--power", "--protocol", "none"])) is None
    assert mod.protocol_file(mod.parser().parse_args(["--protocol", "x.yaml"])) == Path("x.yaml")


def test_power_figures_are_small_multiples_with_captions_from_the_data(
    rule_names: None, tmp_path: Path
) -> None:
    """Rules: one panel each with random in every one (and the one-off random with the one-off
    STDR); additions: one panel per run they are added to; at most 6 curves a panel, one colour
    per method, distinct within a panel; the captions state seeds, budgets, baselines, bounds."""
    rows = primary_rows()
    for s in range(10):
        base = {"task": "glioma", "seed": s, "fold": 0}
        rows += [{**base, "run": "random_one_off", "budget": b,
                  "per_case": cases(0.5 + 0.02 * b + 0.03)} for b in (1, 2, 3, 5)]
        for add in ("st", "gba", "dgst", "all", "gba_singan", "x1", "x2"):
            curve = [{"labels": b, "epoch": 2 * b - 1, "per_case": cases(0.5 + 0.02 * b)}
                     for b in range(1, 6)]
            rows.append({**base, "run": f"random+{add}", "budget": 5, "per_case": cases(0.0),
                         "curve": curve})
        rows.append({**rows[-1], "run": "mmacts+st"})
    norm = [normalise(r) for r in expand_curves(rows)]
    rules = power.rule_panels(norm, "glioma")
    assert [p.methods for p in rules] == [
        ("random", "random_one_off"), ("random", "random_one_off", "stdr"),
        ("random", "mmacts"), ("random", "coverage"), ("random", "maxherding"),
        ("random", "typiclust"),
    ]
    adds = power.addition_panels(norm, "glioma")
    assert [p.methods[0] for p in adds] == ["random", "random", "mmacts"]
    assert all(len(p.methods) <= power.MAX_CURVES for p in rules + adds)
    assert sum(len(p.methods) - 1 for p in adds[:2]) == 7  # random's 7 additions in 2 panels
    assert power._chunks(["a"], ["b", "c"]) == [("a", "b", "c")]
    assert len(power._chunks(["a", "b"], list("cdefgh"))) == 2  # 6 more: 4 + 2
    colours = power.method_colours(norm)
    assert colours["random"] == "#000000" and colours["random_one_off"] == "#7f7f7f"
    for panel in rules + adds:
        assert len({colours[m] for m in panel.methods}) == len(panel.methods), panel
    assert len({colours[m] for m in ("stdr", "mmacts", "coverage", "maxherding",
                                      "typiclust")}) == 5
    assert colours["random+st"] == colours["mmacts+st"]  # an addition's colour (module doc)
    made = power.power_figures(rows, tmp_path)
    assert [p.name for p, _ in made] == ["power_curve_glioma.png",
                                         "power_curve_additions_glioma.png"]
    assert all(p.stat().st_size > 10_000 for p, _ in made)
    rule_caption, add_caption = (c for _, c in made)
    assert rule_caption.startswith("**glioma: selection rules vs random.** Mean Dice (%; per "
                                   "case the mean over ET, NCR, ED) over 10 seeds")
    assert "First panel: Random (one-off) vs Random" in rule_caption
    assert "one panel per selection rule (5;" in rule_caption
    assert "for the one-off STDR, Random (one-off) (grey)" in rule_caption
    assert ("one run per seed tested after each query's stride (budgets 1, 2, 3, 4, 5): Random, "
            "mmActS, ProbCover, MaxHerding, TypiClust") in rule_caption
    assert ("one run per seed and budget (budgets 1, 2, 3, 5): Random (one-off), STDR"
            in rule_caption)
    assert ("the lower bound (source model, 0 labels: mean Dice 40.0 %) and the upper bound "
            "(every pool case labelled: mean Dice 90.0 %)") in rule_caption
    assert "One panel per run that additions were added to (3)" in add_caption
    md = power.figures_markdown(made)
    assert "![power_curve_glioma](power_curve_glioma.png)\n\n**glioma: selection" in md


def test_a_row_whose_baseline_is_not_of_its_schedule_is_flagged(named: None) -> None:
    """Real data: UGTST queried one-off and no one-off random ran, so its row compares with the
    sequential random: flagged †, and the caption says which baseline every row uses."""
    rows = real_rows()
    for r in rows:
        r["schedule"] = "one_off" if r["run"] == "ugtst" else "sequential"
    rows += [{**r, "run": "stdr", "strategy": "stdr"} for r in rows if r["run"] == "random"]
    table = power.power_table(rows, pair_by="run")
    assert [(r[1], r[2]) for r in table.rows] == [
        ("STDR", "Random"), ("UGTST (MICCAI'24)", "Random †")]
    assert table.title.startswith(
        "Every strategy vs random (the baseline of the same schedule where one ran, † where not)")
    text = "\n".join(table.notes)
    assert "Baseline of each row, of the same query schedule: Random for STDR." in text
    assert ("† Not the same schedule: UGTST (MICCAI'24) queried the whole budget at once "
            "(one-off) but no Random (one-off) ran on the same units, so the row compares with "
            "Random") in text
    matched = power.power_table(real_rows(), pair_by="run")  # no schedules recorded: no flag
    assert "†" not in matched.markdown()
    assert "(the baseline of the same schedule)" in matched.title


def test_the_primary_table_flags_a_baseline_of_another_schedule(
    rule_names: None, tmp_path: Path
) -> None:
    """A one-off STDR without a one-off random: its primary row compares with the sequential
    random, flagged †, and not listed as schedule-matched."""
    from ada_bench import endpoint

    rows = primary_rows()
    for r in rows:
        r["schedule"] = "one_off" if r["run"] == "stdr" else "sequential"
    table = endpoint.primary_table(rows, write_protocol(tmp_path), tmp_path)
    cells = {r[1]: r[2] for r in table.rows}
    assert cells["STDR"] == "Random †" and cells["mmActS"] == "Random"
    text = "\n".join(table.notes)
    assert "Baselines: Random for MaxHerding, ProbCover, TypiClust, mmActS." in text
    assert "† Not the same schedule: STDR and its baseline recorded different query" in text
