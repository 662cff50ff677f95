"""The benchmark at equal annotation cost: run names with a unit and their refusals, planning
``random`` unchanged, budget curves against whole-scan equivalents, the equal-cost tables (paired
differences, the Holm-adjusted primary p), the cost derived for whole-case runs and nnActive's
foreground efficiency, on constructed results with known answers; one tiny run end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from ada_bench import equal_cost, stats
from ada_bench.curve import cost_totals, labels_at, scan_points, spent_at
from ada_bench.loop import QUERY_FIELDS, BenchConfig, BenchmarkLoop, make_row
from ada_bench.names import compose_name, folder_name, parse_run_name
from ada_bench.protocol import ANNOTATION_TIME, RunSpec, run_spec
from ada_bench.results import expand_curves, read_rows
from ada_bench.tables import display_name

REPO = Path(__file__).resolve().parents[1]
REGIONS = ["ET", "NCR", "ED"]
MODS = ["flair", "t1", "t1ce", "t2"]
#: 6 pool cases of 1,000 voxels and 10 slices; foreground 100, 200, ... 600 (2,100 in all);
#: slices with tumour 2, 3, ... 7
POOL = {f"c{i}": [1000, 10, 100 * (i + 1), i + 2] for i in range(6)}
SLICES = {"k": 3, "axis": 2, "modality_axes": None}
TIME = dict(ANNOTATION_TIME)


def class_path(kind: str, name: str) -> str:
    from lightning_ada.active.strategies import REGISTRY
    from lightning_ada.active.units import UNITS

    cls = (REGISTRY if kind == "strategy" else UNITS)[name]
    return f"{cls.__module__}.{cls.__qualname__}"


# ------------------------------------------------------------------------------ run names
def test_run_names_with_a_unit_parse_compose_and_show() -> None:
    p = parse_run_name("entropy_region@slices:k=3,power=2+st")
    assert (p.base, p.unit, p.options, p.additions) == (
        "entropy_region", "slices", {"k": 3, "power": 2}, ("st",))
    assert p.method == "entropy_region@slices:k=3,power=2+st" and p.is_variant
    assert p.without_additions() == "entropy_region@slices:k=3,power=2"
    assert compose_name("clasp_pe", "size=8", (), "patch") == "clasp_pe@patch:size=8"
    assert parse_run_name("random_region@patch:unit.size=8").options == {"unit.size": 8}
    draw = parse_run_name("random@1")  # a draw, as before units
    assert (draw.base, draw.unit, draw.draw, draw.method) == ("random@1", None, 1, "random")
    for bad in ("random@1@slices", "random_region@slices@patch", "random_region@3d"):
        with pytest.raises(ValueError, match="'@' takes a draw number"):
            parse_run_name(bad)
    # no strategy name holds '-': a unit's folder never meets a strategy named <rule>_<unit>
    assert folder_name("random_region@slices") == "random_region-slices"
    assert folder_name("random@1") == "random_1"
    assert display_name("random_region@slices:k=3") == "Random region @ slices (k=3)"


def test_a_unit_run_passes_active_unit_with_its_options() -> None:
    spec = run_spec("random_region@slices:k=3", MODS)
    assert (spec.unit, dict(spec.unit_options), spec.schedule) == ("slices", {"k": 3}, "sequential")
    assert dict(spec.overrides) == {
        "active.strategy": {"class_path": class_path("strategy", "random_region"), "init_args": {}},
        "active.unit": {"class_path": class_path("unit", "slices"), "init_args": {"k": 3}},
        "active.annotation_time": TIME,
    }
    patch = run_spec("random_region@patch:size=8,schedule=one_off", MODS)
    assert patch.overrides["active.unit"]["init_args"] == {"size": 8}
    assert patch.overrides["active.strategy"]["init_args"] == {"schedule": "one_off"}
    assert patch.schedule == "one_off"
    # the case unit named explicitly for a region rule is a run of its own
    assert run_spec("random_region@case", MODS).unit == "case"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("random@slices", "strategy 'random' ranks case queries, not the 'slices' unit; rules "
                          "that rank it: .*random_region"),
        ("random_region@voxels", "unknown annotation unit 'voxels'; units: case, patch, slices"),
        ("upper@slices", "a unit needs a registered strategy or a preset before '@'"),
        ("random@case", "'case' is the default unit of 'random': name the run 'random'"),
        ("random_region@slices:size=8", "no option 'size' for the 'slices' unit or strategy "
                                        "'random_region'"),
        ("random_region@slices:k=0", "k >= 1"),
    ],
)
def test_a_bad_unit_or_rule_unit_pair_is_refused_at_plan_time(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_spec(name, MODS)


def test_the_benchmark_refuses_a_bad_pair_before_anything_runs(tmp_path: Path) -> None:
    from test_benchmark_power import load_script

    mod = load_script()
    with pytest.raises(SystemExit) as stop:
        mod.main(["--power", "--strategies", "random@slices", "--dry-run", "--out",
                  str(tmp_path / "out")])
    text = str(stop.value)
    assert text.startswith("error: run 'random@slices': strategy 'random' ranks case queries")
    assert "\n" not in text and not (tmp_path / "out").exists()


def test_planning_random_is_unchanged_and_only_unit_runs_record_costs(tmp_path: Path) -> None:
    # the planned override dict of `random`, as before units existed
    assert run_spec("random", MODS) == RunSpec(
        "random", "mmacts.yaml",
        {"active.strategy": {"class_path": class_path("strategy", "random"), "init_args": {}}},
        strategy="random", schedule="sequential",
    )
    calls: list[dict[str, Any]] = []

    def runner(config: dict[str, Any], fit: bool = True, curve: bool = False) -> dict[str, Any]:
        calls.append(config)
        ckpt = Path(config["trainer"]["default_root_dir"]) / "checkpoints"
        ckpt.mkdir(parents=True, exist_ok=True)
        (ckpt / "last.ckpt").write_bytes(b"x")
        log = [{"case_id": "glioma_pool_001", "round": 0, "modality": None, "region": {
            "kind": "slices", "axis": 2, "indices": [1, 2, 3]}, "part": 0, "cost": {
            "voxels": 768.0, "slices": 3.0, "foreground_voxels": 10.0, "new_case": 1.0,
            "scans": 0.25, "seconds": 69.0}}]
        return {"test": {}, "per_case": [], "query_log": log,
                **({"pool_cases": POOL} if (config["active"] or {}).get("unit") else {})}

    cfg = BenchConfig(out=tmp_path / "b", tasks=["glioma"], seeds=[0], folds=[0],
                      runs={"glioma": [("random", 3), ("random_region@slices:k=3", 3)]})
    BenchmarkLoop(cfg, runner=runner).run()
    _, rnd, region = calls  # the source model, then the two runs
    assert not {"unit", "annotation_time"} & set(rnd["active"])
    assert rnd["active"]["strategy"] == {"class_path": class_path("strategy", "random"),
                                         "init_args": {}}
    assert region["active"]["unit"] == {"class_path": class_path("unit", "slices"),
                                        "init_args": {"k": 3}}
    assert region["active"]["annotation_time"] == TIME
    rows = {r["run"]: r for r in read_rows(cfg.out / "results.jsonl")}
    # random's row: today's fields, each query's today's keys (no region, no cost)
    assert not {"unit", "unit_options", "annotation_time", "cost", "pool_cases"} & set(rows["random"])
    assert [list(q) for q in rows["random"]["queries"]] == [list(QUERY_FIELDS)]
    unit_row = rows["random_region@slices:k=3"]
    assert (unit_row["unit"], unit_row["unit_options"]) == ("slices", SLICES)
    assert unit_row["annotation_time"] == TIME and unit_row["pool_cases"] == POOL
    assert unit_row["queries"][0]["cost"]["scans"] == 0.25
    assert unit_row["cost"] == {"voxels": 768.0, "slices": 3.0, "foreground_voxels": 10.0,
                                "scans": 0.25, "seconds": 69.0, "cases": 1.0}
    # make_row of a run without a unit keeps nothing of the query log's region and cost
    plain = make_row("glioma", "random", 0, {"query_log": [{"case_id": "x", "cost": {}}]})
    assert list(plain["queries"][0]) == list(QUERY_FIELDS)


# ------------------------------------------------------------------------------ the cost axis
def test_curve_points_on_the_cost_axis() -> None:
    # stride 2 epochs: rounds at fit start (-1) and after epochs 1, 3; snapshots after 1, 3, 5
    keys = [1, 3, 5]
    whole = [(e, 0.25) for e in (-1, 1, 3) for _ in range(4)]  # one scan per round, 4 regions
    assert [spent_at(whole, k) for k in keys] == [1.0, 2.0, 3.0]
    assert scan_points(whole, keys) == {1: 1, 2: 3, 3: 5}
    thirds = [(e, 1 / 3) for e in (-1, 1, 3) for _ in range(3)]  # float sums just under 1, 2, 3
    assert scan_points(thirds, keys) == {1: 1, 2: 3, 3: 5}
    short = [(e, 0.9375) for e in (-1, 1, 3)]  # 15 of 16 slices a round: point b comes late
    assert scan_points(short, keys) == {1: 3, 2: 5}  # 3 scans never reached: no point
    assert scan_points(whole, keys, budget=2) == {1: 1, 2: 3}
    # the case unit keeps counting queries (one case = one scan on the phantom)
    assert [labels_at([-1, 1, 3], k) for k in keys] == [1, 2, 3]
    totals = cost_totals([{"voxels": 10, "slices": 1, "foreground_voxels": 2, "new_case": 1,
                           "scans": 0.5, "seconds": 60.0},
                          {"voxels": 10, "slices": 1, "foreground_voxels": 0, "new_case": 0,
                           "scans": 0.5, "seconds": 3.0}])
    assert totals == {"voxels": 20.0, "slices": 2.0, "foreground_voxels": 2.0, "scans": 1.0,
                      "cases": 1.0, "seconds": 63.0}
    assert "seconds" not in cost_totals([{"voxels": 1, "scans": 0.1}])


def test_unit_curves_expand_by_scans_with_their_costs() -> None:
    queries = [{"case_id": f"c{i}"} for i in range(12)]
    curve = [{"labels": 4 * b, "scans": b, "spent": float(b), "epoch": 2 * b - 1,
              "cost": {"scans": float(b), "voxels": 1000.0 * b}, "per_case": []}
             for b in (1, 2)]
    row = {"task": "glioma", "run": "random_region@slices", "seed": 0, "fold": 0, "budget": 3,
           "queries": queries, "curve": curve, "cost": {"scans": 2.0}}
    got = expand_curves([row])
    # budget 3 was never reached: no point, and the run's final test is not one either
    assert [(r["budget"], r["labels"], len(r["queries"]), r["cost"]["voxels"], r["spent"])
            for r in got] == [(1, 1, 4, 1000.0, 1.0), (2, 2, 8, 2000.0, 2.0)]


# ------------------------------------------------------------------------------ constructed results
def cases(value: float) -> list[dict[str, Any]]:
    """Two test cases whose mean Dice (every region) is ``value``."""
    return [{"case_id": f"glioma_test_{i:03d}", **{f"dice_{g}": value + d for g in REGIONS}}
            for i, d in enumerate((-0.1, 0.1))]


def unit_point(b: int, value: float, fg_per_scan: float) -> dict[str, Any]:
    return {"labels": 4 * b, "scans": b, "spent": float(b), "epoch": 2 * b - 1,
            "cost": {"voxels": 1000.0 * b, "slices": 10.0 * b, "foreground_voxels": fg_per_scan * b,
                     "cases": float(min(6, 2 * b)), "scans": float(b), "seconds": 100.0 * b},
            "per_case": cases(value)}


#: per-seed shifts (Dice points) of three rules over random with known exact Wilcoxon p (10 seeds)
SHIFT = {
    "entropy_region@slices:k=3": [s + 1 for s in range(10)],  # p = 2 / 2^10
    "clasp_pe@patch:size=8": [-1 if s == 0 else s + 1 for s in range(10)],  # W- = 1: 4 / 2^10
    "mmacts_region@slices:k=3": [(s + 1) * (1 if s % 2 == 0 else -1) for s in range(10)],
}


def constructed() -> list[dict[str, Any]]:
    """10 seeds. random (whole cases, a curve): 0.5 + 0.02 b at b cases, queries c_s, c_s+1, ...
    random_region@slices:k=3: random + 0.005; random_region@patch:size=8: random - 0.01; the rules
    of :data:`SHIFT`: random + 0.01 x shift. Bounds 0.4 / 0.9. Every run at 10:00 of 2026-01-02."""
    rows = []
    slices = {"unit": "slices", "unit_options": SLICES, "annotation_time": TIME,
              "pool_cases": POOL, "variant": True, "schedule": "sequential"}
    patch = {**slices, "unit": "patch", "unit_options": {"size": [8, 8, 8]}}
    for s in range(10):
        base = {"task": "glioma", "seed": s, "fold": 0, "time": "2026-01-02 10:01:00",
                "seconds": 60.0}
        rows.append({**base, "run": "lower", "budget": 0, "per_case": cases(0.4)})
        rows.append({**base, "run": "upper", "per_case": cases(0.9)})
        curve = [{"labels": b, "epoch": 2 * b - 1, "per_case": cases(0.5 + 0.02 * b)}
                 for b in range(1, 6)]
        rows.append({**base, "run": "random", "budget": 5, "schedule": "sequential",
                     "queries": [{"case_id": f"c{(s + i) % 6}"} for i in range(5)],
                     "per_case": cases(0.0), "curve": curve})
        runs = [("random_region@slices:k=3", slices, 0.005, 300.0),
                ("random_region@patch:size=8", patch, -0.01, 200.0),
                *((run, patch if "patch" in run else slices, 0.01 * shift[s], 500.0)
                  for run, shift in SHIFT.items())]
        for run, unit, extra, fg in runs:
            curve = [unit_point(b, 0.5 + 0.02 * b + extra, fg) for b in range(1, 6)]
            rows.append({**base, "run": run, "budget": 5, "per_case": cases(0.0), "curve": curve,
                         **unit, "queries": [{"case_id": "c0"}] * 20})
    return rows


@pytest.mark.slow
def test_equal_cost_table_pairs_each_unit_run_with_whole_scan_and_same_unit_random() -> None:
    table = equal_cost.equal_cost_table(constructed(), [1, 2, 3, 5])
    got = {(r[1], r[4], r[6]): r for r in table.csv_rows}  # (run, baseline, measure)
    entropy = got[("entropy_region@slices:k=3", "random", "Dice at 3")]
    assert entropy[7] == 10 and entropy[10] == pytest.approx(5.5)  # mean of 1..10 points
    assert entropy[13] == pytest.approx(2 / 2**10) and entropy[5] == "whole-scan"
    same = got[("entropy_region@slices:k=3", "random_region@slices:k=3", "AUBC 1-5")]
    assert same[10] == pytest.approx(5.0) and same[5] == "same unit"  # 5.5 - 0.5
    patch = got[("random_region@patch:size=8", "random", "AUBC 1-5")]
    assert patch[10] == pytest.approx(-1.0) and patch[2] == "patch"
    # ClaSP PE at patch has no random_region@patch:size=8 twin with other settings: it is paired
    # with the one of the same settings; random regions have no same-unit row of their own
    assert ("clasp_pe@patch:size=8", "random_region@patch:size=8", "Dice at 1") in got
    assert not any(k[0].startswith("random_region") and k[1].startswith("random_region")
                   for k in got)
    assert "every pool case has 1,000 voxels" in "\n".join(table.notes)
    assert "Units: patch = 8x8x8 boxes" in "\n".join(table.notes)


PROTOCOL = """\
primary:
  measure: AUBC
  budgets: [1, 2, 3, 5]
  baseline: random of the same schedule
  methods: [entropy_region@slices:k=3, clasp_pe@patch:size=8, mmacts_region@slices:k=3,
            random_region@patch:size=8]
  correction: holm
  alpha: 0.05
"""


def test_the_primary_endpoint_is_holm_adjusted_over_its_rules_by_hand(tmp_path: Path) -> None:
    from ada_bench.endpoint import load_protocol
    from scipy.stats import wilcoxon

    path = tmp_path / "protocol_equal_cost.yaml"
    path.write_text(PROTOCOL)
    protocol = load_protocol(path)
    table = equal_cost.equal_cost_primary(constructed(), protocol, None)
    got = {r[1]: r for r in table.csv_rows}
    assert list(got) == [*SHIFT, "random_region@patch:size=8"]
    # the AUBC difference per seed is the shift itself (every budget moves by it)
    raw = {m: float(wilcoxon(SHIFT[m]).pvalue) for m in SHIFT} | {
        "random_region@patch:size=8": 2 / 2**10}
    assert raw["entropy_region@slices:k=3"] == pytest.approx(2 / 2**10)
    assert raw["clasp_pe@patch:size=8"] == pytest.approx(4 / 2**10)
    for m, p in raw.items():
        assert got[m][10] == pytest.approx(p)
    # Holm over m = 4: sorted 2, 2, 4 (/ 2^10), p_t -> 4 x 2, max(., 3 x 2), 2 x 4, max(., p_t)
    order = sorted(raw, key=raw.get)
    expected, running = {}, 0.0
    for i, m in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * raw[m]))
        expected[m] = running
    assert expected["entropy_region@slices:k=3"] == pytest.approx(8 / 2**10)
    assert expected["clasp_pe@patch:size=8"] == pytest.approx(8 / 2**10)
    for m in raw:
        assert got[m][11] == pytest.approx(expected[m])
    assert got["entropy_region@slices:k=3"][7] == pytest.approx(5.5)
    assert table.title.startswith("Primary endpoint at equal annotation cost (post hoc")
    assert "Budgets are whole-scan equivalents" in table.notes[1]


def test_a_protocol_naming_a_run_the_planner_does_not_know_is_refused(tmp_path: Path) -> None:
    from ada_bench.endpoint import check_runs, load_protocol

    known = "[random_region@patch:size=8, random_region@slices:k=3, mmacts]"
    listed = ("[entropy_region@slices:k=3, clasp_pe@patch:size=8, mmacts_region@slices:k=3,\n"
              "            random_region@patch:size=8]")
    path = tmp_path / "p.yaml"
    path.write_text(PROTOCOL.replace(listed, known))
    check_runs(load_protocol(path), MODS)  # every run known: nothing to say
    for bad, why in (("random@slices", "ranks case queries"), ("no_such_rule@patch", "a unit "
                     "needs a registered strategy"), ("random_region@voxels", "unknown annotation "
                     "unit")):
        path.write_text(PROTOCOL.replace(listed, known.replace("mmacts", bad)))
        with pytest.raises(ValueError, match=f"p.yaml: {bad!r} is not a run the planner knows"
                                             f".*{why}"):
            check_runs(load_protocol(path), MODS)


def test_the_whole_scan_randoms_cost_is_derived_from_the_pool() -> None:
    values, sources = equal_cost.cost_values(constructed(), "glioma", "random")
    assert sources == {"derived"}
    # seed 0 queried c0, c1 first: 2 cases of 1,000 voxels, 10 slices, 100 + 200 foreground
    # voxels, 2 + 3 slices with tumour: 5 x 60 s + 15 x 3 s
    two = values[0][2]
    assert {k: two[k] for k in ("voxels", "slices", "foreground_voxels", "cases", "scans",
                                "seconds")} == {"voxels": 2000.0, "slices": 20.0,
                                                "foreground_voxels": 300.0, "cases": 2.0,
                                                "scans": 2.0, "seconds": 345.0}
    assert two["fg_share"] == pytest.approx(300 / 2100) and two["fg_per_scan"] == 150.0
    recorded, how = equal_cost.cost_values(constructed(), "glioma", "random_region@slices:k=3")
    assert how == {"recorded"} and recorded[3][2]["fg_share"] == pytest.approx(600 / 2100)
    table = equal_cost.cost_table(constructed(), [1, 2, 3, 5])
    assert any("ASSUMPTIONS" in n for n in table.notes)
    assert any(n.startswith("Cost derived (not recorded) for glioma Random") for n in table.notes)


# ------------------------------------------------------------------------------ foreground efficiency
def test_foreground_efficiency_recovers_a_known_rate() -> None:
    shares = [0.05, 0.1, 0.2, 0.4, 0.8]
    dice = [0.9 - 0.5 * math.exp(-3.0 * x) for x in shares]
    fit = stats.foreground_efficiency(shares, dice, upper=0.9, lower=0.4)
    assert (fit.beta, fit.n) == (pytest.approx(3.0), 5) and fit.rmse == pytest.approx(0, abs=1e-9)
    assert stats.efficiency_curve(0.0, 3.0, 0.9, 0.4) == pytest.approx(0.4)
    assert math.isnan(stats.foreground_efficiency([], [], 0.9, 0.4).beta)
    assert math.isnan(stats.foreground_efficiency(shares, dice, 0.9, 0.9).beta)  # no gap


def test_the_efficiency_table_fits_each_run_on_constructed_values() -> None:
    """random's Dice lies on beta = 2 at its derived foreground shares, the slices rule's on
    beta = 5 at its recorded ones (every seed): pooled and per-seed beta 2 and 5, delta 3."""
    rows = []
    for r in constructed():
        if r["run"] not in ("lower", "upper", "random", "random_region@slices:k=3"):
            continue
        r = json.loads(json.dumps(r))
        if r["run"] == "random":
            ids = [q["case_id"] for q in r["queries"]]
            for p in r["curve"]:
                fg = sum(POOL[c][2] for c in ids[:p["labels"]])
                p["per_case"] = cases(0.9 - 0.5 * math.exp(-2.0 * fg / 2100))
        elif r["run"] != "lower" and r["run"] != "upper":
            for p in r["curve"]:
                share = p["cost"]["foreground_voxels"] / 2100
                p["per_case"] = cases(0.9 - 0.5 * math.exp(-5.0 * share))
        rows.append(r)
    table, fits = equal_cost.efficiency_table(rows, [1, 2, 3, 5])
    by = {f.method: f for f in fits}
    assert by["random"].pooled.beta == pytest.approx(2.0)
    assert by["random_region@slices:k=3"].pooled.beta == pytest.approx(5.0)
    assert by["random_region@slices:k=3"].pooled.n == 40  # 10 seeds x 4 budgets
    assert all(b == pytest.approx(5.0) for b in by["random_region@slices:k=3"].per_unit.values())
    row = next(r for r in table.csv_rows if r[1] == "random_region@slices:k=3")
    assert row[13] == "random" and row[14] == pytest.approx(3.0)
    assert row[17] == pytest.approx(2 / 2**10)  # all ten seeds +3: exact Wilcoxon
    assert "nnactive/analyze/metrics.py" in table.notes[0]


@pytest.mark.slow  # the whole report with its figures (~10 s); the tables are tested above
def test_the_report_writes_every_table_and_figure_with_captions(tmp_path: Path) -> None:
    from ada_bench.endpoint import load_protocol

    path = tmp_path / "protocol_equal_cost.yaml"
    path.write_text(PROTOCOL)
    made = equal_cost.equal_cost_report(constructed(), tmp_path / "out",
                                        protocol=load_protocol(path))
    out = tmp_path / "out"
    for name in ("equal_cost", "equal_cost_primary", "equal_cost_costs",
                 "equal_cost_fg_efficiency", "equal_cost_penalty"):
        assert (out / f"{name}.md").is_file() and (out / f"{name}.csv").is_file()
    assert (out / "protocol_equal_cost.yaml").read_text() == PROTOCOL
    assert [p.name for p in made.figures] == ["equal_cost_curves_glioma.png",
                                              "equal_cost_fg_glioma.png"]
    text = made.markdown
    assert text.index("## Primary endpoint at equal annotation cost") < text.index(
        "## Secondary / exploratory (unadjusted p): At equal annotation cost: each unit")
    # the curves: one panel per unit setting, whole-scan and same-unit random in each
    panels, bases = equal_cost.curve_panels(expand_curves(constructed()), "glioma")
    assert [p.title for p in panels] == ["patch: 8x8x8 boxes", "slices: 3 slices along axis 2"]
    assert all(p.methods[0] == "random" and len(p.methods) <= 6 for p in panels)
    assert set(bases) == {"random_region@patch:size=8", "random_region@slices:k=3"}
    assert "10 seeds" in text and "budgets 1, 2, 3, 4, 5" in text


# ------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_tiny_equal_cost_run_end_to_end(tmp_path: Path) -> None:
    """2 seeds x (source, bounds, random's curve over cases, random slices' curve over scans) on
    16^3 phantoms, with a protocol declaring random slices vs random."""
    from test_benchmark_power import load_script, power_configs

    mod = load_script()
    out = tmp_path / "ec"
    conf = power_configs(tmp_path / "conf")
    protocol = tmp_path / "protocol_equal_cost.yaml"
    protocol.write_text(PROTOCOL.replace(
        "[entropy_region@slices:k=3, clasp_pe@patch:size=8, mmacts_region@slices:k=3,\n"
        "            random_region@patch:size=8]", "[random_region@slices:k=4]").replace(
        "[1, 2, 3, 5]", "[1, 2]"))
    code = mod.main(
        ["--power", "--tasks", "glioma", "--seeds", "0", "1", "--strategies",
         "random_region@slices:k=4", "--budgets", "1", "2", "--n-test", "4", "--n-pool", "4",
         "--workers", "1", "--config-dir", str(conf / "{task}"), "--data-base",
         str(tmp_path / "data"), "--out", str(out), "--figures", "none",
         "--equal-cost-protocol", str(protocol)]
    )
    assert code == 0, read_rows(out / "errors.jsonl")
    rows = read_rows(out / "results.jsonl")
    unit_row = next(r for r in rows if r["run"] == "random_region@slices:k=4" and r["seed"] == 1)
    # 16 slices of 16 x 16 a case: 4 regions of 4 slices are one scan, one round per stride
    assert [(p["scans"], p["labels"], p["cost"]["voxels"]) for p in unit_row["curve"]] == [
        (1, 4, 4096.0), (2, 8, 8192.0)]
    assert all(p["spent"] == pytest.approx(p["scans"]) for p in unit_row["curve"])
    assert all(q["region"]["kind"] == "slices" for q in unit_row["queries"])
    assert "seconds" in unit_row["cost"] and len(unit_row["pool_cases"]) == 4
    assert {v[0] for v in unit_row["pool_cases"].values()} == {16**3}  # one grid: case = scan
    rnd = next(r for r in rows if r["run"] == "random" and r["seed"] == 1)
    assert not {"unit", "cost", "pool_cases"} & set(rnd)
    assert [(p["labels"], p["epoch"]) for p in rnd["curve"]] == [(1, 0), (2, 1)]
    # the case unit counts queries, and on the phantom each whole case costs one scan
    log = json.loads((Path(rnd["run_dir"]) / "query_log.json").read_text())
    assert [q["cost"]["scans"] for q in log if q.get("case_id")] == [1.0, 1.0]
    start = json.loads((out / "invocations.jsonl").read_text().splitlines()[0])
    assert start["protocols"][0]["text"] == protocol.read_text()
    text = (out / "equal_cost.md").read_text()
    assert "## Primary endpoint at equal annotation cost (declared before the runs)" in text
    assert (out / "equal_cost_curves_glioma.png").is_file()
    assert "## Primary endpoint at equal annotation cost" in (out / "summary.md").read_text()
