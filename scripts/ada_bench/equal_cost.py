"""At equal annotation cost: which annotation unit and which rule give the best model?

A run with a unit (``<rule>@<unit>``, :func:`ada_bench.protocol.unit_spec`) spends its budget in
whole-scan equivalents (annotated voxels / the mean voxels of a pool case); its budget curve has
point ``b`` at the first stride end after which its queries' ``cost.scans`` sum to ``b``
(:mod:`ada_bench.curve`). The whole-scan baseline is ``random`` (whole cases, budget ``b`` =
``b`` cases; one case is one scan when every pool case has the same grid, as on the phantom:
the tables check the rows' pool sizes and say so). So every budget column compares models
trained with the same number of annotated voxels. Everything below is computed by
:mod:`ada_bench.stats`; this module gathers the values and lays them out.

Written by :func:`equal_cost_report` (``scripts/benchmark.py --summary`` when runs with a unit
are present) into the results folder:

* ``equal_cost.md`` (all of the below, with the figures; the block of the published README)
  and ``equal_cost.csv``: the headline table. Each run with a unit against the whole-scan
  random of its schedule (:func:`ada_bench.stats.matched_baseline`: ``random``, or
  ``random_one_off`` for a one-off rule where that ran) and, for a rule, against ``random_region`` at the SAME unit (same unit
  settings and additions), paired over seeds (``(fold, seed)`` runs on real data): the mean
  difference in Dice points at each budget and of the AUBC over the budgets, its 95 % BCa
  bootstrap CI, the Wilcoxon p, the MDD and n (:func:`ada_bench.stats.compare`);
* ``equal_cost_primary.md/.csv``: the primary endpoint declared in
  ``configs/power/protocol_equal_cost.yaml`` (:mod:`ada_bench.endpoint`; its copy
  ``protocol_equal_cost.yaml``), Holm-adjusted over its rows;
* ``equal_cost_penalty.md/.csv`` and ``equal_cost_penalty_tests.csv``: nnActive's pairwise
  penalty matrix over every run with a unit and the whole-scan random, Holm over the budgets of
  each pair (:func:`ada_bench.stats.penalty_matrix`);
* ``equal_cost_costs.md/.csv``: what each run had annotated at each budget (mean over units):
  scans spent, cases touched, slices, voxels, foreground voxels per scan, the share of the
  pool's foreground, and seconds under the annotation-time model (its constants are
  assumptions: :class:`lightning_ada.active.cost.AnnotationTime`);
* ``equal_cost_fg_efficiency.md/.csv``: nnActive's foreground efficiency of each run
  (:func:`ada_bench.stats.foreground_efficiency`);
* ``equal_cost_curves_<task>.png`` (small multiples of the curves against scans, one panel per
  unit setting) and ``equal_cost_fg_<task>.png`` (Dice against the foreground share), with
  captions written from the rows.

The whole-scan random's rows record no cost (they are today's rows, unchanged); its cost is that
of its queried cases, read from the ``pool_cases`` the runs with a unit record for the same
task, fold and seed (:func:`ada_bench.runner.pool_costs`), and said so in the cost table.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ada_bench.endpoint import EQUAL_COST_COPY_NAME, copy_protocol, primary_table
from ada_bench.markdown import format_p
from ada_bench.names import budgetless, parse_run_name
from ada_bench.power import (
    MAX_CURVES,
    Panel,
    _fmt,
    _paired_cells,
    _paired_values,
    _unit_words,
    budgets_of,
    draw_panels,
    method_colours,
    penalty_table,
    penalty_tests_table,
)
from ada_bench.results import expand_curves, normalise, schedule_of
from ada_bench.stats import (
    BASELINE,
    ONE_OFF_BASELINE,
    FgEfficiency,
    bootstrap_ci,
    bound_point,
    budget_values,
    compare,
    curve_points,
    efficiency_curve,
    foreground_efficiency,
    matched_baseline,
    mean_or_nan,
    paired,
    penalty_matrix,
    seed_values,
)
from ada_bench.tables import Table, display_name, present_methods, regions_of, tasks_of
from lightning_ada.io import write_text_atomic

#: the random rule of the sub-volume units: the same-unit baseline of every region rule
REGION_RANDOM = "random_region"
#: a point is at equal cost when its queries spent at most this many scans over its budget
OVERSPENT = 0.01
#: the cost columns, in the order of the cost table
COST_COLUMNS = ("scans", "cases", "slices", "voxels", "foreground_voxels", "fg_per_scan",
                "fg_share", "seconds")


# ---------------------------------------------------------------------------------- units
@dataclass(frozen=True)
class UnitOf:
    """A run's annotation unit.

    Attributes:
        name: the unit's registered name (``case``, ``slices``, ``patch``).
        settings: its constructor's arguments, defaults filled in
            (:func:`ada_bench.protocol.unit_settings`).
    """

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        """Equal for two runs with the same unit, however their names spell it (``size=8`` and
        ``size=[8, 8, 8]``: the attributes of the unit built from the settings)."""
        from lightning_ada.active.units import UNITS

        try:
            state = vars(UNITS[self.name](**dict(self.settings)))
        except (KeyError, TypeError, ValueError):
            state = dict(self.settings)
        return self.name, json.dumps(state, sort_keys=True, default=str)

    @property
    def words(self) -> str:
        """The unit in a few words (the unit's own ``describe()``: ``3 slices along axis 2``,
        ``8x8x8 boxes``; ``whole cases`` for the case unit)."""
        from lightning_ada.active.units import UNITS

        if self.name == "case":
            return "whole cases"
        try:
            return str(UNITS[self.name](**dict(self.settings)).describe())
        except (KeyError, TypeError, ValueError):
            return self.name


def run_unit(rows: Iterable[Mapping[str, Any]], task: str, method: str) -> UnitOf | None:
    """The unit of ``method`` on ``task``: what its rows record (``unit``, ``unit_options``),
    else what its name says (None: no ``@<unit>``, whole cases)."""
    for r in rows:
        if r["task"] == task and r.get("method", r["run"]) == method and r.get("unit"):
            return UnitOf(str(r["unit"]), dict(r.get("unit_options") or {}))
    try:
        parsed = parse_run_name(method)
    except ValueError:
        return None
    if parsed.unit is None:
        return None
    from ada_bench.protocol import run_spec, unit_settings

    try:
        spec = run_spec(method, [])
        return UnitOf(parsed.unit, unit_settings(parsed.unit, spec.unit_options))
    except (ValueError, KeyError):
        return UnitOf(parsed.unit, {})


def unit_methods(rows: Sequence[Mapping[str, Any]], task: str) -> list[str]:
    """The runs of ``task`` with a unit (not bounds), in table order."""
    present = present_methods([r for r in rows if r["task"] == task])
    return [m for m in present if not budgetless(m) and run_unit(rows, task, m) is not None]


def has_unit_runs(rows: Iterable[Mapping[str, Any]]) -> bool:
    """Whether any row is of a run with a unit (the equal-cost report has something to say)."""
    norm = [normalise(r) for r in rows if r["run"] != "source"]
    return any(unit_methods(norm, t) for t in tasks_of(norm))


def same_unit_random(
    rows: Sequence[Mapping[str, Any]], task: str, method: str, methods: Sequence[str]
) -> str | None:
    """The ``random_region`` run with the same unit settings, additions and (when recorded)
    schedule as ``method``: the baseline that isolates the rule from the unit (None for
    ``random_region`` itself, or when none ran)."""
    mine = run_unit(rows, task, method)
    parsed = parse_run_name(method)
    if mine is None or parsed.base_method == REGION_RANDOM:
        return None
    schedule = schedule_of(rows, task, method)
    for m in methods:
        p = parse_run_name(m)
        if p.base_method != REGION_RANDOM or p.additions != parsed.additions:
            continue
        theirs = run_unit(rows, task, m)
        other = schedule_of(rows, task, m)
        if theirs is not None and theirs.key == mine.key and (
            not schedule or not other or schedule == other
        ):
            return m
    return None


def whole_scan_methods(rows: Sequence[Mapping[str, Any]], task: str) -> list[str]:
    """The whole-scan random baselines of ``task`` that ran: ``random`` and ``random_one_off``."""
    present = present_methods([r for r in rows if r["task"] == task])
    return [m for m in (BASELINE, ONE_OFF_BASELINE) if m in present]


# ---------------------------------------------------------------------------------- cost values
def pools(rows: Iterable[Mapping[str, Any]], task: str) -> dict[tuple[Any, Any], dict[str, Any]]:
    """``{(fold, seed): {"cases": pool_cases, "time": annotation_time}}`` from the rows of runs
    with a unit that measured their pool (:func:`ada_bench.runner.pool_costs`)."""
    out: dict[tuple[Any, Any], dict[str, Any]] = {}
    for r in rows:
        if r["task"] == task and r.get("pool_cases"):
            out.setdefault((r.get("fold"), r["seed"]), {
                "cases": r["pool_cases"], "time": r.get("annotation_time") or {},
            })
    return out


def whole_case_cost(case_ids: Sequence[str], pool: Mapping[str, Any]) -> dict[str, float] | None:
    """What whole-case queries of ``case_ids`` cost, from a pool record of :func:`pools` (None
    when a case is not in it): the sums of their voxels, slices (axis 2), foreground voxels, the
    cases touched, their scans (voxels / the mean voxels of a pool case) and, with the
    annotation-time model the pool's run recorded, seconds (slices with tumour x
    ``seconds_with_tumour`` + the others x ``seconds_without_tumour``)."""
    cases = pool["cases"]
    if not cases or any(c not in cases for c in case_ids):
        return None
    unique = list(dict.fromkeys(case_ids))
    scan = mean_or_nan([float(v[0]) for v in cases.values()])
    voxels = float(sum(cases[c][0] for c in unique))
    slices = float(sum(cases[c][1] for c in unique))
    tumour = float(sum(cases[c][3] for c in unique))
    out = {
        "voxels": voxels, "slices": slices,
        "foreground_voxels": float(sum(cases[c][2] for c in unique)),
        "cases": float(len(unique)), "scans": voxels / scan,
    }
    time = pool.get("time") or {}
    if "seconds_with_tumour" in time and "seconds_without_tumour" in time:
        out["seconds"] = (tumour * float(time["seconds_with_tumour"])
                          + (slices - tumour) * float(time["seconds_without_tumour"]))
    return out


def row_cost(
    row: Mapping[str, Any], pool: Mapping[str, Any] | None
) -> tuple[dict[str, float], str] | None:
    """The cost of a (normalised, curve-expanded) row: ``(cost, source)``, ``source``
    ``recorded`` (a run with a unit: its point's or run's ``cost``) or ``derived`` (a whole-case
    run: :func:`whole_case_cost` of its queried cases); with the foreground share of the pool
    (``fg_share``) and the foreground voxels per scan (``fg_per_scan``) when known. None when
    nothing is known."""
    own = row.get("pool_cases")
    pool = {"cases": own, "time": row.get("annotation_time") or {}} if own else pool
    if row.get("cost"):
        cost, source = {k: float(v) for k, v in row["cost"].items()}, "recorded"
    elif pool is not None:
        found = whole_case_cost([q["case_id"] for q in row.get("queries", [])], pool)
        if found is None:
            return None
        cost, source = found, "derived"
    else:
        return None
    total = float(sum(v[2] for v in pool["cases"].values())) if pool else math.nan
    cost["fg_share"] = cost.get("foreground_voxels", math.nan) / total if total else math.nan
    scans = cost.get("scans", 0.0)
    cost["fg_per_scan"] = cost.get("foreground_voxels", math.nan) / scans if scans else math.nan
    return cost, source


def cost_values(
    rows: Sequence[Mapping[str, Any]], task: str, method: str, pair_by: str = "seed"
) -> tuple[dict[Any, dict[int, dict[str, float]]], set[str]]:
    """``({unit: {budget: cost}}, sources)`` of ``method`` on ``task``: the cost of each
    (curve-expanded) row, averaged key by key over the rows of a unit and budget (a seed's folds,
    or one ``(fold, seed)`` run with ``pair_by="run"``); ``sources`` says where the costs came
    from (:func:`row_cost`)."""
    norm = [normalise(r) for r in expand_curves(rows) if r["run"] != "source"]
    mine = [r for r in norm if r["task"] == task and r["method"] == method
            and r["train_input"] == "all"]
    pooled = pools(norm, task)
    acc: dict[tuple[Any, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    sources: set[str] = set()
    for r in mine:
        found = row_cost(r, pooled.get((r.get("fold"), r["seed"])))
        if found is None:
            continue
        cost, source = found
        sources.add(source)
        unit = r["seed"] if pair_by == "seed" else (r["fold"], r["seed"])
        for k, v in cost.items():
            acc[(unit, int(r["budget"]))][k].append(v)
    out: dict[Any, dict[int, dict[str, float]]] = defaultdict(dict)
    for (unit, b), values in acc.items():
        out[unit][b] = {k: mean_or_nan(v) for k, v in values.items()}
    return dict(out), sources


def spent_of(rows: Sequence[Mapping[str, Any]], task: str, method: str, budget: int) -> list[float]:
    """The scans each run of ``method`` had spent at its point ``budget`` (runs with a unit)."""
    norm = [normalise(r) for r in expand_curves(rows) if r["run"] != "source"]
    out = []
    for r in norm:
        if r["task"] != task or r["method"] != method or r["budget"] != budget:
            continue
        spent = r.get("spent")
        if spent is None and r.get("cost"):
            spent = r["cost"].get("scans")
        if spent is not None:
            out.append(float(spent))
    return out


def pool_sizes(rows: Iterable[Mapping[str, Any]], task: str) -> list[int]:
    """The distinct voxel counts of the pool cases the rows of ``task`` measured."""
    return sorted({int(v[0]) for r in rows if r["task"] == task and r.get("pool_cases")
                   for v in r["pool_cases"].values()})


def scan_words(rows: Sequence[Mapping[str, Any]], task: str) -> str:
    """Whether the whole-scan random's ``b`` cases are ``b`` scans, from the pool sizes."""
    sizes = pool_sizes(rows, task)
    if not sizes:
        return ("the whole-scan random's budget b is b cases (no run recorded its pool's sizes: "
                "b scans only if every pool case has the same grid)")
    if len(sizes) == 1:
        return (f"every pool case has {sizes[0]:,} voxels on the network grid, so the whole-scan "
                "random's b cases are exactly b scans")
    return (f"the pool cases have {sizes[0]:,} to {sizes[-1]:,} voxels on the network grid, so "
            "the whole-scan random's b cases are b scans only on average (its budget counts "
            "cases)")


# ---------------------------------------------------------------------------------- the tables
def _norm(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [normalise(r) for r in expand_curves(rows) if r["run"] != "source"]


def _units_note(rows: Sequence[Mapping[str, Any]], task_methods: Mapping[str, Sequence[str]]) -> str:
    """``Units: slices = 3 slices along axis 2 (runs...); ...`` over the tasks' methods."""
    groups: dict[tuple[str, str], tuple[UnitOf, list[str]]] = {}
    for task, methods in task_methods.items():
        for m in methods:
            u = run_unit(rows, task, m)
            if u is not None:
                groups.setdefault(u.key, (u, []))[1].append(display_name(m))
    parts = [f"{u.name} = {u.words} ({', '.join(dict.fromkeys(names))})"
             for u, names in groups.values()]
    return "Units: " + "; ".join(parts) + "." if parts else ""


def equal_cost_table(
    rows: Iterable[Mapping[str, Any]], budgets: Sequence[int] | None = None, pair_by: str = "seed"
) -> Table:
    """The headline: each run with a unit vs the whole-scan random and vs ``random_region`` at
    the same unit, paired over seeds (or runs), at each budget (whole-scan equivalents) and of
    the AUBC (module doc)."""
    norm = _norm(rows)
    budgets = list(budgets or budgets_of(norm))
    unit_col, units = _unit_words(pair_by)
    header = ["Task", "Run", "Unit", "Compared with", "Measure", unit_col, "Run %",
              "Baseline %", "Δ points", "95 % CI", "Wilcoxon p", "MDD points"]
    csv_header = ["task", "run", "unit", "unit_settings", "baseline", "baseline_kind", "measure",
                  "n", "run_mean", "baseline_mean", "diff_mean", "ci_low", "ci_high", "p", "sd",
                  "mdd", "max_spent_over_budget"]
    md, csv_rows, shown, over, ns = [], [], {}, [], set()
    for task in tasks_of(norm):
        present = present_methods([r for r in norm if r["task"] == task])
        methods = unit_methods(norm, task)
        shown[task] = methods
        for m in methods:
            u = run_unit(norm, task, m)
            assert u is not None
            refs = [(matched_baseline(norm, task, m, present, pair_by=pair_by), "whole-scan")]
            same = same_unit_random(norm, task, m, present)
            if same is not None:
                refs.append((same, "same unit"))
            for ref, kind in refs:
                if ref not in present:
                    continue
                for label, res, ma, mb in compare(norm, task, m, ref, budgets, pair_by):
                    ns.add(res.n)
                    extra = _overspent(norm, task, m, label, budgets)
                    mark = " ‡" if extra > OVERSPENT else ""
                    if mark:
                        over.append(f"{task} {display_name(m)} {label}")
                    md.append([task, display_name(m) + mark, u.words, display_name(ref), label,
                               *_paired_cells(res, ma, mb)])
                    csv_rows.append([task, m, u.name, json.dumps(dict(u.settings), default=str),
                                     ref, kind, label, *_paired_values(res, ma, mb), extra])
    notes = _headline_notes(norm, shown, budgets, pair_by, units, over, ns)
    return Table(
        f"At equal annotation cost: each unit and rule vs whole-scan random and vs random at "
        f"the same unit, paired over {units} (Dice in %)",
        header, md, csv_header, csv_rows, notes,
    )


def _overspent(
    norm: Sequence[Mapping[str, Any]], task: str, method: str, label: str, budgets: Sequence[int]
) -> float:
    """The most scans a run of ``method`` spent over a budget of the measure ``label`` (``Dice
    at b``: that budget; the AUBC: every budget); 0 when none or unrecorded."""
    measured = [int(label.removeprefix("Dice at "))] if label.startswith("Dice at ") else budgets
    extra = [s - b for b in measured for s in spent_of(norm, task, method, b)]
    return max([0.0, *extra])


def _headline_notes(
    norm: Sequence[Mapping[str, Any]], shown: Mapping[str, Sequence[str]], budgets: Sequence[int],
    pair_by: str, units: str, over: Sequence[str], ns: Iterable[int],
) -> list[str]:
    tasks = [t for t, ms in shown.items() if ms]
    ns = sorted(ns)
    n_text = "no runs" if not ns else (f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}-{ns[-1]}")
    unit_one = "seed" if pair_by == "seed" else "run"
    notes = [
        "Budget b = b whole-scan equivalents (annotated voxels / the mean voxels of a pool "
        "case): a run with a unit at the first stride end after its queries spent b scans; the "
        "whole-scan random with b cases. " + "; ".join(
            f"{t}: {scan_words(norm, t)}" for t in tasks) + ".",
        f"Per {unit_one}: mean Dice over the test cases (per case the mean over "
        + "; ".join(f"{t}: {', '.join(regions_of(norm, t))}" for t in tasks)
        + f"); Δ = run − baseline of the same {unit_one}, in Dice points; {n_text} {units} per "
        "comparison (n).",
        "Baselines: whole-scan random = random with whole cases on the run's query schedule "
        f"({display_name(BASELINE)}; {display_name(ONE_OFF_BASELINE)} for a one-off rule where "
        "it ran); same unit = random regions of the same unit and settings "
        f"({display_name(REGION_RANDOM)} @ <unit>), which isolates the rule from the unit.",
        f"95 % CI: bootstrap (BCa, 9,999 resamples) of the mean Δ over {units}, none below 5; "
        f"Wilcoxon p: two-sided signed-rank test of the per-{unit_one} Δ, not adjusted for "
        "multiplicity "
        "(the declared comparison is the primary table); MDD: (t_{0.975,n−1} + t_{0.80,n−1}) "
        "· sd(Δ) / √n.",
    ]
    if len(budgets) > 1:
        notes.append(
            f"AUBC: trapezoid of Dice over budgets {', '.join(map(str, budgets))} (scans) "
            f"divided by {max(budgets)} − {min(budgets)}."
        )
    units_note = _units_note(norm, shown)
    if units_note:
        notes.append(units_note)
    if over:
        notes.append(
            "‡ Not at equal cost: a run of " + ", ".join(over) + " had spent more than "
            f"{OVERSPENT} scans over the budget at its point (its rounds' regions did not fill "
            "one scan each; see equal_cost_costs.md)."
        )
    return notes


def cost_table(
    rows: Iterable[Mapping[str, Any]], budgets: Sequence[int] | None = None, pair_by: str = "seed"
) -> Table:
    """What each run had annotated at each budget (module doc), mean over units."""
    norm = _norm(rows)
    budgets = list(budgets or budgets_of(norm))
    unit_col, units = _unit_words(pair_by)
    header = ["Task", "Run", "Unit", "Budget", unit_col, "Scans spent", "Cases touched",
              "Slices", "Voxels", "Foreground voxels / scan", "Foreground share %",
              "Minutes (model)", "Cost"]
    csv_header = ["task", "run", "unit", "budget", "n", *COST_COLUMNS, "source"]
    md, csv_rows = [], []
    derived, times = [], set()
    for task in tasks_of(norm):
        methods = [*whole_scan_methods(norm, task), *unit_methods(norm, task)]
        for m in methods:
            values, sources = cost_values(norm, task, m, pair_by)
            if not values:
                continue
            u = run_unit(norm, task, m)
            source = "/".join(sorted(sources))
            if "derived" in sources:
                derived.append(f"{task} {display_name(m)}")
            for b in budgets:
                per = [v[b] for v in values.values() if b in v]
                if not per:
                    continue
                mean = {k: mean_or_nan([p.get(k, math.nan) for p in per]) for k in COST_COLUMNS}
                if not math.isnan(mean["seconds"]):
                    times.add(task)
                md.append([
                    task, display_name(m), u.words if u else "whole cases", str(b), str(len(per)),
                    _fmt(mean["scans"], 3), _fmt(mean["cases"], 1), _fmt(mean["slices"], 1),
                    _fmt(mean["voxels"], 0), _fmt(mean["fg_per_scan"], 1),
                    _fmt(100 * mean["fg_share"], 2), _fmt(mean["seconds"] / 60, 1), source,
                ])
                csv_rows.append([task, m, u.name if u else "case", b, len(per),
                                 *(mean[k] for k in COST_COLUMNS), source])
    time_note = _time_note(norm)
    notes = [
        f"Mean over {units} at each budget b (whole-scan equivalents) of what the run had "
        "annotated before its point: scans spent (annotated voxels / the mean voxels of a pool "
        "case), cases touched (cases with at least one annotated voxel), slices those voxels "
        "touch (along the query's slice axis; axis 2 for boxes and whole cases), voxels, "
        "foreground (tumour) voxels per scan spent, the share of the pool's foreground voxels, "
        "and the annotation time. All on the network grid.",
        time_note,
    ]
    if derived:
        notes.append(
            "Cost derived (not recorded) for " + ", ".join(derived) + ": its result rows are the "
            "whole-case rows of before annotation units and record no cost; its queried cases' "
            "voxels, slices, foreground and time are read from the pool measured by the runs "
            "with a unit of the same task, fold and seed."
        )
    return Table("At equal annotation cost: what each run had annotated", header, md,
                 csv_header, csv_rows, [n for n in notes if n])


def _time_note(norm: Sequence[Mapping[str, Any]]) -> str:
    models = {json.dumps(r.get("annotation_time"), sort_keys=True) for r in norm
              if r.get("annotation_time")}
    if not models:
        return "Minutes: – (no run recorded an annotation-time model)."
    parts = []
    for text in sorted(models):
        t = json.loads(text)
        parts.append(f"{t.get('seconds_with_tumour')} s per slice with tumour and "
                     f"{t.get('seconds_without_tumour')} s per slice without")
    return ("Minutes (model): the annotation-time model of lightning_ada.active.cost."
            "AnnotationTime, " + "; ".join(parts) + ". These constants are ASSUMPTIONS (the "
            "order of magnitude of manual glioma contouring), not measured times: the column "
            "ranks the runs by slices with and without tumour, nothing more.")


@dataclass(frozen=True)
class Efficiency:
    """The foreground efficiency of one run on one task (:func:`efficiency_rows`)."""

    task: str
    method: str
    pooled: FgEfficiency
    per_unit: dict[Any, float]
    points: list[tuple[float, float]]


def efficiency_rows(
    rows: Iterable[Mapping[str, Any]], budgets: Sequence[int] | None = None, pair_by: str = "seed"
) -> list[Efficiency]:
    """:func:`ada_bench.stats.foreground_efficiency` of every run with a unit and of the
    whole-scan random: pooled over units (the mean upper and lower bound; nnActive's fit) and
    per unit (that unit's bounds), on the points ``(foreground share, Dice)`` at the budgets."""
    norm = _norm(rows)
    budgets = list(budgets or budgets_of(norm))
    out = []
    for task in tasks_of(norm):
        up = seed_values(norm, task, "upper", pair_by=pair_by)
        low = seed_values(norm, task, "lower", pair_by=pair_by)
        upper = mean_or_nan([v[None] for v in up.values() if None in v])
        lower = mean_or_nan([v[None] for v in low.values() if None in v])
        for m in [*whole_scan_methods(norm, task), *unit_methods(norm, task)]:
            dice = seed_values(norm, task, m, pair_by=pair_by)
            costs, _ = cost_values(norm, task, m, pair_by)
            points, per_unit = [], {}
            for u, by_budget in costs.items():
                mine = [(by_budget[b]["fg_share"], dice[u][b]) for b in budgets
                        if b in by_budget and b in dice.get(u, {})]
                points += mine
                u_up, u_low = up.get(u, {}).get(None), low.get(u, {}).get(None)
                if mine and u_up is not None and u_low is not None:
                    per_unit[u] = foreground_efficiency(
                        [x for x, _ in mine], [y for _, y in mine], u_up, u_low).beta
            pooled = foreground_efficiency([x for x, _ in points], [y for _, y in points],
                                           upper, lower)
            out.append(Efficiency(task, m, pooled, per_unit, points))
    return out


def efficiency_table(
    rows: Iterable[Mapping[str, Any]], budgets: Sequence[int] | None = None, pair_by: str = "seed"
) -> tuple[Table, list[Efficiency]]:
    """The foreground efficiency table (and the fits it shows)."""
    norm = _norm(rows)
    budgets = list(budgets or budgets_of(norm))
    fits = efficiency_rows(norm, budgets, pair_by)
    unit_col, units = _unit_words(pair_by)
    header = ["Task", "Run", "Unit", "Points", "FG-Eff β (pooled)", "SE", "RMSE (Dice %)",
              unit_col, f"β per {unit_col[:-1].lower()}: mean [95 % CI]",
              "Δβ vs whole-scan random [95 % CI]", "Wilcoxon p"]
    csv_header = ["task", "run", "unit", "points", "beta", "beta_se", "rmse", "upper", "lower",
                  "n", "beta_unit_mean", "beta_unit_ci_low", "beta_unit_ci_high", "baseline",
                  "diff_beta_mean", "diff_ci_low", "diff_ci_high", "p"]
    md, csv_rows = [], []
    by = {(f.task, f.method): f for f in fits}
    for f in fits:
        u = run_unit(norm, f.task, f.method)
        betas = [b for b in f.per_unit.values() if not math.isnan(b)]
        mean = mean_or_nan(betas)
        lo, hi = bootstrap_ci(betas)
        present = present_methods([r for r in norm if r["task"] == f.task])
        base = matched_baseline(norm, f.task, f.method, present, pair_by=pair_by)
        ref = by.get((f.task, base)) if f.method not in (BASELINE, ONE_OFF_BASELINE) else None
        if ref is not None:
            shared = sorted(k for k in f.per_unit.keys() & ref.per_unit.keys()
                            if not (math.isnan(f.per_unit[k]) or math.isnan(ref.per_unit[k])))
            res = paired([f.per_unit[k] - ref.per_unit[k] for k in shared])
            diff = f"{_fmt(res.mean)} [{_fmt(res.ci_low)}, {_fmt(res.ci_high)}]"
            p_text, vals = format_p(res.p), [base, res.mean, res.ci_low, res.ci_high, res.p]
        else:
            diff, p_text, vals = "–", "–", ["", math.nan, math.nan, math.nan, math.nan]
        fit = f.pooled
        md.append([f.task, display_name(f.method), u.words if u else "whole cases",
                   str(fit.n), _fmt(fit.beta), _fmt(fit.se), _fmt(100 * fit.rmse),
                   str(len(betas)), f"{_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}]", diff, p_text])
        csv_rows.append([f.task, f.method, u.name if u else "case", fit.n, fit.beta, fit.se,
                         fit.rmse, fit.upper, fit.lower, len(betas), mean, lo, hi, *vals])
    notes = [
        "FG-Eff (nnActive's foreground efficiency, Lüth et al., TMLR 2025, arXiv 2511.19183; "
        "definition read in MIC-DKFZ/nnActive nnactive/analyze/metrics.py, DatasetBeta, with x "
        "= percentage_of_voxels_foreground of analyze/experiment_statistics.py): β of the least "
        "squares fit of Dice(x) = U − (U − L)·exp(−β·x) to the points (x, Dice), x = the share "
        "(0-1) of the pool's foreground voxels the run had annotated at a budget, U = the upper "
        "bound's Dice (every pool case labelled), L = the lower bound's (the source model, "
        "x = 0: the common start that nnActive's shared starting budget is). A larger β closes "
        "the gap to the upper bound with less annotated foreground (background is cheap to "
        "annotate, so this is the cost the metric counts).",
        f"Pooled: one fit over every {unit_col[:-1].lower()} and budget "
        f"({', '.join(map(str, budgets))}) of the run, U and L the bounds' means (nnActive fits "
        f"the pooled points); SE from the fit's covariance. Per {unit_col[:-1].lower()}: a fit "
        f"on that {unit_col[:-1].lower()}'s points with its own bounds; mean with a 95 % BCa "
        f"bootstrap CI; Δβ vs the whole-scan random of the run's schedule paired over "
        f"{units}, Wilcoxon p unadjusted.",
        "The whole-scan random's foreground share is that of its queried cases (the pool "
        "measured by the runs with a unit; equal_cost_costs.md).",
    ]
    table = Table("Foreground efficiency (nnActive's FG-Eff): Dice against the share of the "
                  "pool's foreground annotated", header, md, csv_header, csv_rows, notes)
    return table, fits


def penalty_tables(
    rows: Iterable[Mapping[str, Any]], budgets: Sequence[int] | None = None, pair_by: str = "seed"
) -> tuple[list[Table], list[Table]]:
    """nnActive's pairwise penalty matrix over the whole-scan random(s) and every run with a
    unit of each task (Holm over the budgets of each pair), and its tests."""
    norm = _norm(rows)
    budgets = list(budgets or budgets_of(norm))
    tables, tests = [], []
    for task in tasks_of(norm):
        methods = [*whole_scan_methods(norm, task), *unit_methods(norm, task)]
        if len(methods) < 2 or not budgets:
            continue
        pen = penalty_matrix(budget_values(norm, task, methods, budgets, pair_by), budgets)
        table = penalty_table(pen, task, pair_by)
        table.title = "At equal annotation cost: " + table.title
        table.notes.insert(1, "Budgets in whole-scan equivalents (scans; whole-scan random: "
                              "cases): every column of a row compares models with the same "
                              "annotated voxels.")
        tables.append(table)
        tests.append(penalty_tests_table(pen, task))
    return tables, tests


# ---------------------------------------------------------------------------------- figures
def curve_panels(rows: Sequence[Mapping[str, Any]], task: str) -> tuple[list[Panel], list[str]]:
    """One panel per unit setting (in table order), each with the whole-scan random, random at
    that unit and at most :data:`~ada_bench.power.MAX_CURVES` curves; returns the panels and
    the same-unit randoms (drawn as baselines)."""
    norm = list(rows)
    present = present_methods([r for r in norm if r["task"] == task])
    groups: dict[tuple[str, str], tuple[UnitOf, list[str]]] = {}
    for m in unit_methods(norm, task):
        u = run_unit(norm, task, m)
        assert u is not None
        groups.setdefault(u.key, (u, []))[1].append(m)
    panels, bases = [], []
    whole = [m for m in whole_scan_methods(norm, task)]
    for u, members in groups.values():
        randoms = [m for m in members if parse_run_name(m).base_method == REGION_RANDOM]
        rules = [m for m in members if m not in randoms]
        matched = {matched_baseline(norm, task, m, present) for m in members}
        fixed = [m for m in whole if m == BASELINE or m in matched] + randoms
        bases += randoms
        room = max(1, MAX_CURVES - len(fixed))
        chunks = [rules[i:i + room] for i in range(0, len(rules), room)] or [[]]
        for i, chunk in enumerate(chunks):
            more = f" ({i + 1}/{len(chunks)})" if len(chunks) > 1 else ""
            panels.append(Panel(f"{u.name}: {u.words}{more}", (*fixed, *chunk)))
    return panels, bases


def _seeds_text(norm: Sequence[Mapping[str, Any]], task: str, methods: Iterable[str]) -> str:
    ns = sorted({p[4] for m in methods for p in curve_points(norm, task, m)})
    if not ns:
        return "no seeds"
    return f"{ns[0]} seeds" if len(ns) == 1 else f"{ns[0]}-{ns[-1]} seeds (per point)"


def curves_caption(norm: Sequence[Mapping[str, Any]], task: str, panels: Sequence[Panel]) -> str:
    """The caption of ``equal_cost_curves_<task>.png``, from the rows it draws."""
    methods = list(dict.fromkeys(m for p in panels for m in p.methods))
    budgets = sorted({p[0] for m in methods for p in curve_points(norm, task, m)})
    low, up = bound_point(norm, task, "lower"), bound_point(norm, task, "upper")
    bounds = [f"{name} ({v[0] * 100:.1f} %)" for name, v in
              (("lower bound: the source model", low), ("upper bound: every pool case", up)) if v]
    return " ".join(filter(None, [
        f"**{task}: Dice at equal annotation cost.** Mean Dice (%; per case the mean over "
        f"{', '.join(regions_of(norm, task))}) over {_seeds_text(norm, task, methods)} against "
        f"the annotated whole-scan equivalents (scans; budgets "
        f"{', '.join(map(str, budgets))}); bands: 95 % bootstrap CI (BCa) of the mean over "
        "seeds.",
        f"One panel per unit setting ({len(panels)}: "
        + "; ".join(p.title for p in panels)
        + f"), each with {display_name(BASELINE)} on whole cases (black, budget = cases; "
        f"{scan_words(norm, task)})"
        + (" and, where they ran, random regions of that unit (thick, squares) as baselines"
           if any(parse_run_name(m).base_method == REGION_RANDOM for m in methods) else "")
        + "; one colour per run, the same in every panel.",
        ("Dashed, the same in every panel: " + " and ".join(bounds) + ".") if bounds else "",
    ]))


def fg_figure(
    norm: Sequence[Mapping[str, Any]], task: str, fits: Sequence[Efficiency],
    colours: Mapping[str, str], path: str | Path,
) -> tuple[Path, str] | None:
    """``equal_cost_fg_<task>.png``: each run's mean Dice (%) against its mean foreground share
    (%) at each budget (points joined in budget order), its fitted FG-Eff curve (thin, dashed),
    the bounds dashed; caption from the data. None without points."""
    from ada_bench.plots import _pyplot, _save

    mine = [f for f in fits if f.task == task and f.points]
    if not mine:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    budgets = budgets_of(norm)
    shown = []
    for f in mine:
        costs, _ = cost_values(norm, task, f.method)
        dice = seed_values(norm, task, f.method)
        xs, ys = [], []
        for b in budgets:
            pts = [(c[b]["fg_share"], dice[u][b]) for u, c in costs.items()
                   if b in c and b in dice.get(u, {}) and not math.isnan(c[b]["fg_share"])]
            if pts:
                xs.append(100 * mean_or_nan([x for x, _ in pts]))
                ys.append(100 * mean_or_nan([y for _, y in pts]))
        if not xs:
            continue
        colour = colours.get(f.method, "#333333")
        is_base = f.method in (BASELINE, ONE_OFF_BASELINE)
        ax.plot(xs, ys, marker="s" if is_base else "o", ms=4, lw=2.0 if is_base else 1.3,
                color=colour, label=display_name(f.method), zorder=4)
        if not math.isnan(f.pooled.beta):
            grid = np.linspace(0, max(xs) * 1.05, 100)
            ax.plot(grid, 100 * efficiency_curve(grid / 100, f.pooled.beta, f.pooled.upper,
                                                 f.pooled.lower),
                    color=colour, lw=0.8, ls=(0, (4, 2)), alpha=0.8, zorder=3)
        shown.append(f)
    if not shown:
        plt.close(fig)
        return None
    for name, style in (("upper", (0, (2, 2))), ("lower", (0, (5, 3)))):
        point = bound_point(norm, task, name)
        if point:
            ax.axhline(100 * point[0], color="#444444", ls=style, lw=1.0,
                       label=f"{name.capitalize()} bound")
    ax.set_xlabel("annotated share of the pool's foreground voxels (%)", fontsize=9)
    ax.set_ylabel("mean Dice (%)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.set_title(f"{task}: Dice against the annotated foreground", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    saved = _save(fig, path)
    betas = "; ".join(f"{display_name(f.method)} {_fmt(f.pooled.beta)}" for f in shown)
    caption = (
        f"**{task}: Dice against the share of the pool's foreground annotated.** Each point: the "
        f"mean over {_seeds_text(norm, task, [f.method for f in shown])} of the foreground share "
        f"and of the mean Dice at one budget ({', '.join(map(str, budgets))} scans), joined in "
        "budget order; thin dashed: the run's pooled FG-Eff fit U − (U − L)·exp(−β·x) "
        f"(β: {betas}); dashed grey: the bounds. The whole-scan random's share is that of its "
        "queried cases."
    )
    return saved, caption


def equal_cost_figures(
    rows: Sequence[Mapping[str, Any]], out: str | Path, fits: Sequence[Efficiency]
) -> list[tuple[Path, str]]:
    """Write ``equal_cost_curves_<task>.png`` and ``equal_cost_fg_<task>.png``; return
    ``(path, caption)`` of each."""
    out = Path(out)
    norm = _norm(rows)
    colours = method_colours(norm)
    made = []
    for task in tasks_of(norm):
        panels, bases = curve_panels(norm, task)
        if panels:
            path = draw_panels(
                norm, task, panels, colours, out / f"equal_cost_curves_{task}.png",
                f"{task}: Dice at equal annotation cost, mean over "
                f"{_seeds_text(norm, task, [m for p in panels for m in p.methods])}, 95 % CI "
                "bands",
                xlabel="annotated whole-scan equivalents (scans)", bases=bases,
            )
            if path is not None:
                made.append((path, curves_caption(norm, task, panels)))
        fg = fg_figure(norm, task, fits, colours, out / f"equal_cost_fg_{task}.png")
        if fg is not None:
            made.append(fg)
    return made


# ---------------------------------------------------------------------------------- the report
@dataclass
class EqualCostReport:
    """What :func:`equal_cost_report` wrote.

    Attributes:
        table: the headline table.
        primary: the declared primary comparison, if a protocol was given.
        costs: the cost breakdown.
        efficiency: the foreground efficiency table.
        penalties: the penalty matrices (one per task).
        figures: the PNG files.
        markdown: the text of ``equal_cost.md``.
    """

    table: Table
    primary: Table | None
    costs: Table
    efficiency: Table
    penalties: list[Table] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    markdown: str = ""


def equal_cost_primary(
    rows: Sequence[Mapping[str, Any]], protocol: Any, out: str | Path | None,
    penalty_link: str | None = None, pair_by: str = "seed",
) -> Table:
    """The primary endpoint of ``configs/power/protocol_equal_cost.yaml``
    (:func:`ada_bench.endpoint.primary_table`, its copy linked as
    ``protocol_equal_cost.yaml``), its budgets read as whole-scan equivalents."""
    table = primary_table(rows, protocol, out, penalty_link, pair_by,
                          copy_name=EQUAL_COST_COPY_NAME)
    table.title = table.title.replace("Primary endpoint (", "Primary endpoint at equal annotation "
                                      "cost (", 1)
    norm = _norm(rows)
    shown = {t: [m for m in protocol.methods if run_unit(norm, t, m) is not None]
             for t in tasks_of(norm)}
    units = _units_note(norm, shown)
    table.notes.insert(1, "Budgets are whole-scan equivalents (scans): a run with a unit is "
                          "measured at the first stride end after its queries spent b scans, "
                          "the whole-scan random with b cases. " + units)
    return table


def equal_cost_report(
    rows: Sequence[Mapping[str, Any]], out: str | Path, pair_by: str = "seed",
    protocol: Any = None,
) -> EqualCostReport:
    """Write every table and figure of the module doc into ``out``; ``equal_cost.md`` holds
    them in order: the primary endpoint (with a ``protocol``), the headline table, the costs,
    the foreground efficiency, the penalty matrices and the figures."""
    out = Path(out)
    norm = _norm(rows)
    budgets = budgets_of(norm)
    table = equal_cost_table(norm, budgets, pair_by)
    costs = cost_table(norm, budgets, pair_by)
    efficiency, fits = efficiency_table(norm, budgets, pair_by)
    penalties, tests = penalty_tables(norm, budgets, pair_by)
    figures = equal_cost_figures(norm, out, fits)
    primary = None
    parts = []
    if protocol is not None:
        primary = equal_cost_primary(rows, protocol, out,
                                     "equal_cost_penalty.md" if penalties else None, pair_by)
        primary.write(out, "equal_cost_primary")
        copy_protocol(protocol, out, EQUAL_COST_COPY_NAME)
        parts.append(primary.markdown())
        for t in (table, costs, efficiency, *penalties):
            t.title = "Secondary / exploratory (unadjusted p): " + t.title
    table.write(out, "equal_cost")
    costs.write(out, "equal_cost_costs")
    efficiency.write(out, "equal_cost_fg_efficiency")
    if penalties:
        write_text_atomic(out / "equal_cost_penalty.md", "\n".join(t.markdown() for t in penalties))
        write_text_atomic(out / "equal_cost_penalty.csv", Table(
            "", [], [], penalties[0].csv_header, [r for t in penalties for r in t.csv_rows]).csv())
        write_text_atomic(out / "equal_cost_penalty_tests.csv", Table(
            "", [], [], tests[0].csv_header, [r for t in tests for r in t.csv_rows]).csv())
    parts += [table.markdown(), costs.markdown(), efficiency.markdown(),
              *(t.markdown() for t in penalties)]
    if figures:
        parts.append("## Figures (descriptive, no test)\n")
        for path, caption in figures:
            parts += [f"![{path.stem}]({path.name})", "", caption, ""]
    text = "\n".join(parts)
    write_text_atomic(out / "equal_cost.md", text)
    return EqualCostReport(table, primary, costs, efficiency, penalties,
                           [p for p, _ in figures], text)
