"""One adaptation per centre (issue 15 item 2, seed 002), and the per-group protocol it shares.

A *group protocol* adapts the same source model to one part of the target at a time: a centre
(this module), a rater (:mod:`ada_bench.raters_protocol`) or an open-set variant of the pool
(:mod:`ada_bench.open_set_protocol`). The benchmark loop (:mod:`ada_bench.loop`) is reused as it
is: the groups are its *folds* (fold ``k`` = group ``k``, so one source model per seed serves
every group), and the protocol is run one seed at a time because a group's cases (a centre's
pool and test cases) depend on the seed's phantom draw. ``groups.json`` in the results folder
names the groups in fold order; a resumed protocol with other groups is refused.

Per centre (phantom scanners ``B``, ``C``, ``D``; :func:`lightning_ada.phantom.simulator.case_centres`):
the pool is that centre's cases of the phantom's ``pool`` split, the test set its cases of the
``test`` split; the upper bound is trained on the whole of that pool. Sequential strategies run
once at the largest budget and are tested after every query's stride (the budget curve,
:mod:`ada_bench.curve`); the 20 % budget of seed 002 (``round(0.2 * pool)``, at least 1) is the
curve's point at that label count, per centre and seed.

Tables (:func:`group_table`): per group, method and budget, the median and inter-quartile range
of the per-case DSC (mean over the task's regions) and HD95 (mm), and the paired comparison with
the group's upper bound over the same test cases (seed, case): mean difference with its 95 %
bootstrap CI (BCa, :func:`ada_bench.stats.bootstrap_ci`) and the two-sided Wilcoxon signed-rank p
(:func:`ada_bench.stats.wilcoxon_paired`), both computed in :func:`ada_bench.stats.paired_vs`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ada_bench.loop import BenchConfig, BenchmarkLoop, LoopReport, Runner
from ada_bench.markdown import format_p
from ada_bench.results import BUDGETLESS, expand_curves, normalise
from ada_bench.runner import compose
from ada_bench.stats import paired_vs, per_seed_case, quartiles
from ada_bench.tables import Table, display_name, regions_of, table_order
from ada_bench.tasks import Fold, PhantomTask, base_files

#: share of a group's pool labelled in seed 002's setting
SHARE = 0.20
#: the budgets of the issue besides the 20 % share
BUDGETS = (1, 2, 3, 4, 5)
#: what ``budget`` a table row of the 20 % share carries (a label, not a label count)
SHARE_ROW = "20 %"
NOT_EQUIVALENCE = (
    "A p > 0.05 means no difference was detected with this many cases, not that the two models "
    "are equivalent: read the confidence interval of the difference (it shows how large a "
    "difference the data still allow)."
)


@dataclass(frozen=True)
class Group:
    """One part of the target adapted to separately (a fold of the loop).

    Attributes:
        name: group name in the tables (``B``, ``generous``, ``ood20_filter``).
        overrides: dotted config overrides of the group's target runs.
        splits: ``{"pool": [...], "test": [...]}``; None: fold 0 of the task's scheme.
    """

    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    splits: Mapping[str, Sequence[str]] | None = None


@dataclass(frozen=True)
class GroupTask(PhantomTask):
    """A phantom task whose folds are :class:`Group` s.

    Attributes:
        groups: the groups, in fold order.
        phantom_options: generator options of every run of the task (``raters``...): they join
            ``data.phantom`` and name the folder (:func:`lightning_ada.phantom.simulator.folder_suffix`).
    """

    groups: tuple[Group, ...] = ()
    phantom_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n_folds(self) -> int:
        return len(self.groups)

    def data_overrides(self, seed: int, config: Mapping[str, Any]) -> dict[str, Any]:
        from lightning_ada.phantom.simulator import folder_suffix

        out = super().data_overrides(seed, config)
        if self.phantom_options:
            out["data.phantom"] = {**out["data.phantom"], **self.phantom_options}
            out["data.root"] += folder_suffix(**self.phantom_options)
        return out

    def fold(self, fold: int) -> Fold:
        if not 0 <= fold < len(self.groups):
            raise ValueError(f"group index must be in 0..{len(self.groups) - 1}, got {fold}")
        g = self.groups[fold]
        splits = dict(g.splits) if g.splits is not None else self.scheme.splits(self.name, 0)
        splits = {k: list(v) for k, v in splits.items()}
        return Fold(
            (),
            {"data.splits": splits, **self.target_overrides, **g.overrides},
            len(splits["pool"]),
            len(splits["test"]),
        )


def seed_base(task: PhantomTask, seed: int) -> dict[str, Any]:
    """``data.root`` and ``data.phantom`` of ``task``'s runs of ``seed`` (before group options)."""
    config = compose([*base_files(task.folder), task.config_file("source.yaml")])
    return PhantomTask.data_overrides(task, seed, config)


# ---------------------------------------------------------------------------------- running
def write_groups(out: Path, protocol: str, groups: Mapping[int, Sequence[Group]]) -> None:
    """Record (or check) the protocol and its groups' names in ``out/groups.json``.

    Raises:
        SystemExit: ``out`` holds results of another protocol or other groups.
    """
    names = sorted({tuple(g.name for g in gs) for gs in groups.values()})
    if len(names) != 1:
        raise ValueError(f"every seed must have the same groups, got {names}")
    record = {"protocol": protocol, "groups": list(names[0])}
    path = out / "groups.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != record:
            raise SystemExit(
                f"{path}: this folder holds the {old.get('protocol')} protocol with groups "
                f"{old.get('groups')}, not {record['groups']}: choose another --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


def read_groups(out: Path) -> dict[str, Any]:
    """``groups.json`` of a results folder (``{"protocol", "groups"}``)."""
    path = out / "groups.json"
    if not path.is_file():
        raise SystemExit(f"{path}: missing (not a protocol results folder?)")
    return json.loads(path.read_text())


def run_groups(
    cfg: BenchConfig, tasks: Mapping[int, GroupTask], runner: Runner | None = None
) -> LoopReport:
    """Run ``cfg``'s plan seed by seed, each seed with its own :class:`GroupTask`.

    Args:
        cfg: the protocol's config (one task; its ``task_specs`` are replaced per seed).
        tasks: seed -> the task of that seed's groups.
        runner: the loop's runner (None: the harness's).
    """
    total = LoopReport()
    (task_name,) = cfg.tasks
    for seed in cfg.seeds:
        one = replace(
            cfg,
            seeds=[seed],
            folds=list(range(tasks[seed].n_folds)),
            task_specs={task_name: tasks[seed]},
        )
        report = BenchmarkLoop(one, runner).run()
        total.ran += report.ran
        total.skipped += report.skipped
        total.failed += report.failed
    return total


def share_budget(n_pool: int, share: float = SHARE) -> int:
    """Labels of ``share`` of a pool of ``n_pool`` cases: ``round(share * n)``, at least 1."""
    return max(1, int(round(share * n_pool)))


def plan_runs(
    strategies: Sequence[str], budgets: Sequence[int], bounds: Sequence[str] = ("lower", "upper")
) -> list[tuple[str, int | None]]:
    """Bounds, then each strategy: a sequential one once at the largest budget (its curve gives
    the others), a one-off one once per budget."""
    from ada_bench.protocol import run_spec

    out: list[tuple[str, int | None]] = [(b, None) for b in bounds]
    for name in dict.fromkeys(strategies):
        if name in BUDGETLESS:
            continue
        if run_spec(name, []).schedule == "sequential":
            out.append((name, max(budgets)))
        else:
            out += [(name, b) for b in sorted(set(budgets))]
    return out


def centre_groups(
    task: PhantomTask, seed: int, centres: Sequence[str] | None = None
) -> list[Group]:
    """One group per target centre of ``seed``'s phantom: that centre's pool and test cases.

    Raises:
        ValueError: a centre with no pool or no test case (say which).
    """
    from lightning_ada.phantom.simulator import case_centres

    drawn = seed_base(task, seed)["data.phantom"]
    regime = drawn.get("regime", "phantom-1")
    s = task.scheme
    splits = s.splits(task.name, 0)
    pool_c = case_centres(task.name, "pool", s.n_pool_generated, seed, regime)
    test_c = case_centres(task.name, "test", s.n_test, seed, regime)
    centre_of = {f"{task.name}_pool_{i:03d}": c for i, c in enumerate(pool_c)}
    centre_of |= {f"{task.name}_test_{i:03d}": c for i, c in enumerate(test_c)}
    names = list(centres) if centres else sorted(set(pool_c) | set(test_c))
    groups = []
    for c in names:
        pool = [i for i in splits["pool"] if centre_of[i] == c]
        test = [i for i in splits["test"] if centre_of[i] == c]
        if not pool or not test:
            raise ValueError(
                f"seed {seed}: centre {c} has {len(pool)} pool and {len(test)} test cases; "
                "use more pool/test cases (--n-pool, --n-test)"
            )
        groups.append(Group(c, {}, {"pool": pool, "test": test}))
    return groups


# ---------------------------------------------------------------------------------- tables
def _fmt_iqr(med: float, q1: float, q3: float, scale: float = 1.0, digits: int = 1) -> str:
    if math.isnan(med):
        return "–"
    return f"{med * scale:.{digits}f} [{q1 * scale:.{digits}f}, {q3 * scale:.{digits}f}]"


def _fmt_ci(mean: float, lo: float, hi: float, scale: float = 1.0, digits: int = 1) -> str:
    if math.isnan(mean):
        return "–"
    if math.isnan(lo):
        return f"{mean * scale:+.{digits}f}"
    return f"{mean * scale:+.{digits}f} [{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]"


def expanded(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Normalised rows, budget curves expanded to one row per label count."""
    return [normalise(r) for r in expand_curves(rows)]


def select_budget(
    rows: Sequence[dict[str, Any]], fold: int, method: str, budget: int | str | None
) -> list[dict[str, Any]]:
    """Rows of ``method`` in group ``fold`` at ``budget`` (:data:`SHARE_ROW`: each seed's 20 %
    of its pool; None: any, for the bounds)."""
    out = []
    for r in rows:
        if r["fold"] != fold or r["method"] != method:
            continue
        if budget is None or method in BUDGETLESS:
            out.append(r)
        elif budget == SHARE_ROW:
            if r.get("n_pool") is not None and r["budget"] == share_budget(int(r["n_pool"])):
                out.append(r)
        elif r["budget"] == budget:
            out.append(r)
    return out


def _names(methods: Sequence[str]) -> str:
    return ", ".join(display_name(m) for m in methods)


def group_table(
    rows: Sequence[Mapping[str, Any]],
    groups: Sequence[str],
    title: str,
    group_label: str,
    budgets: Sequence[int | str] = (SHARE_ROW, *BUDGETS),
    extra: Callable[[list[dict[str, Any]], list[str]], dict[str, str]] | None = None,
    extra_header: Sequence[str] = (),
    real: bool = False,
) -> Table:
    """Per group, method and budget: DSC and HD95 median [IQR], paired difference to the upper
    bound of the group (module doc).

    The markdown shows a 20 % row only where it differs from every budget row (where each seed's
    20 % is the same label count k, the row of budget k is marked ``k (= 20 %)``); the CSV keeps
    every budget's row. Each row gives its seeds and n (the (seed, case) pairs); the notes are
    written from the rows: the schedule of each method, the 20 % rule where it is shown, the
    cells with fewer seeds than the group's upper bound and why.

    Args:
        rows: result rows of one task (raw).
        groups: group names in fold order (``groups.json``).
        title: the table's heading.
        group_label: column name of the group (``centre``, ``rater``).
        budgets: budgets shown for every strategy (:data:`SHARE_ROW`: each seed's 20 %).
        extra: optional ``(selected rows, regions) -> {column: cell}`` for ``extra_header``.
        extra_header: the extra columns.
        real: real scans (folds pooled into one group), not a phantom draw per seed.
    """
    norm = expanded(rows)
    # the runs as planned (a curve run: at its largest budget)
    planned_rows = [normalise(r) for r in rows if r["run"] != "source"]
    tasks = sorted({r["task"] for r in norm})
    if len(tasks) > 1:
        raise ValueError(f"group_table expects one task, got {tasks}")
    regions = regions_of(norm, tasks[0]) if tasks else []
    methods = sorted({r["method"] for r in norm if r["method"] != "source"}, key=table_order)
    header = [group_label, "method", "budget", "labels", "seeds", "n", "DSC % median [IQR]",
              "HD95 mm median [IQR]", "ΔDSC vs upper (95 % CI)", "p DSC",
              "ΔHD95 vs upper (95 % CI)", "p HD95", *extra_header]
    csv_header = [group_label, "method", "budget", "labels", "n", "dsc_median", "dsc_q1",
                  "dsc_q3", "hd95_median", "hd95_q1", "hd95_q3", "dsc_diff", "dsc_diff_low",
                  "dsc_diff_high", "dsc_p", "hd95_diff", "hd95_diff_low", "hd95_diff_high",
                  "hd95_p", "seeds", "share_20", *extra_header]
    cells, numbers = [], []
    merged: dict[str, int] = {}  # group -> the budget its 20 % row is
    fewer: list[str] = []
    for fold, gname in enumerate(groups):
        upper = select_budget(norm, fold, "upper", None)
        up = {m: per_seed_case(upper, f"{m}_mean", regions) for m in ("dice", "hd95")}
        upper_seeds = sorted({int(r["seed"]) for r in upper})
        short: dict[tuple[int, ...], list[str]] = {}
        for method in methods:
            chosen = {b: select_budget(norm, fold, method, b)
                      for b in ([None] if method in BUDGETLESS else budgets)}
            same_as = {}  # budget -> the 20 % row is this budget's row
            share = chosen.get(SHARE_ROW)
            for b, sel in chosen.items():
                if share and b != SHARE_ROW and sel and _keys(sel) == _keys(share):
                    same_as[b] = SHARE_ROW
            for budget, sel in chosen.items():
                if not sel:
                    continue
                dsc = per_seed_case(sel, "dice_mean", regions)
                hd = per_seed_case(sel, "hd95_mean", regions)
                dq, hq = quartiles(list(dsc.values())), quartiles(list(hd.values()))
                labels = sorted({int(r["labels"]) for r in sel if r.get("labels") is not None})
                lab = "/".join(map(str, labels)) if labels else "–"
                seeds = sorted({int(r["seed"]) for r in sel})
                shown = "upper" if method == "upper" else (
                    "lower" if method == "lower" else str(budget))
                is_share = budget == SHARE_ROW or budget in same_as
                if method in ("lower", "upper") or not upper:
                    pd = ph = (0, math.nan, math.nan, math.nan, math.nan)
                else:
                    pd, ph = paired_vs(dsc, up["dice"]), paired_vs(hd, up["hd95"])
                ext = extra(sel, regions) if extra else {}
                numbers.append([
                    gname, method, shown, lab, len(dsc), *dq, *hq, *pd[1:5], *ph[1:5],
                    len(seeds), int(is_share), *(ext.get(h, "") for h in extra_header),
                ])
                if budget == SHARE_ROW and same_as:
                    continue  # shown once, as the row of its budget
                if budget in same_as:
                    merged[gname] = int(budget)
                budget_cell = (
                    "–" if method in BUDGETLESS
                    else f"{budget} (= {SHARE_ROW})" if budget in same_as else str(budget)
                )
                cells.append([
                    gname, display_name(method), budget_cell, lab, str(len(seeds)),
                    str(len(dsc)), _fmt_iqr(*dq, scale=100), _fmt_iqr(*hq),
                    _fmt_ci(*pd[1:4], scale=100), format_p(pd[4]),
                    _fmt_ci(*ph[1:4]), format_p(ph[4]),
                    *(ext.get(h, "–") for h in extra_header),
                ])
                if upper_seeds and method not in BUDGETLESS and seeds != upper_seeds:
                    short.setdefault(tuple(seeds), [])
                    if method not in short[tuple(seeds)]:
                        short[tuple(seeds)].append(method)
        for seeds, ms in short.items():
            missing = [s for s in upper_seeds if s not in seeds]
            pools = sorted({int(r["n_pool"]) for r in upper if int(r["seed"]) in missing
                            and r.get("n_pool") is not None})
            planned = max((int(r["budget"]) for r in planned_rows if r["fold"] == fold
                           and r["method"] in ms), default=None)
            why = (
                f": the pool has {'/'.join(map(str, pools))} cases there, fewer than the budget "
                f"{planned} the run was planned at"
                if pools and planned is not None and max(pools) < planned
                else ""
            )
            plural = "s" if len(missing) != 1 else ""
            fewer.append(
                f"{gname} {_names(ms)}: seed{'s' if len(seeds) != 1 else ''} "
                f"{', '.join(map(str, seeds))} only, no run for seed{plural} "
                f"{', '.join(map(str, missing))}{why}"
            )
    notes = _group_notes(norm, group_label, regions, budgets, merged, fewer, real, len(groups))
    return Table(title, header, cells, csv_header, numbers, notes)


def _keys(rows: Sequence[Mapping[str, Any]]) -> set[tuple[Any, ...]]:
    """Which runs (and which budget point of each) ``rows`` are."""
    return {(r["run"], r["seed"], r["budget"], r.get("from_curve", False)) for r in rows}


def _group_notes(
    norm: Sequence[Mapping[str, Any]],
    group_label: str,
    regions: Sequence[str],
    budgets: Sequence[int | str],
    merged: Mapping[str, int],
    fewer: Sequence[str],
    real: bool,
    n_groups: int,
) -> list[str]:
    """The notes of :func:`group_table`, from its rows."""
    strategies = sorted({r["method"] for r in norm if r["method"] not in BUDGETLESS},
                        key=table_order)
    curves = [m for m in strategies if any(r.get("from_curve") for r in norm if r["method"] == m)]
    once = [m for m in strategies if m not in curves]
    shared = (
        "The cases of one run share its model and the runs of one seed their source model"
        if real
        else "The cases of one seed share a model and a phantom draw"
    )
    notes = [
        f"Per {group_label}: medians and inter-quartile ranges over the test cases of every "
        f"{'fold and seed' if real else 'seed'}; n = the (seed, test case) pairs of the row, "
        f"seeds = how many seeds they come from (DSC = per-case mean over the regions "
        f"{', '.join(regions)}; HD95 in mm, cases "
        "with an empty prediction or reference left out).",
        "Δ = method − upper bound of the same group, paired over the same test cases (seed, "
        "case) both have: mean difference with its 95 % bootstrap CI (BCa over the case pairs) "
        f"and the two-sided Wilcoxon signed-rank p over those pairs. {shared}, so pairs are not "
        "independent and the CIs and p-values are optimistic with few seeds.",
        NOT_EQUIVALENCE,
    ]
    schedule = []
    if curves:
        points = sorted({int(r["budget"]) for r in norm if r.get("from_curve")})
        schedule.append(
            f"{_names(curves)}: one sequential run per seed at the largest budget, tested after "
            f"each query's stride (labels {', '.join(map(str, points))}; a point with k labels "
            "trained k x stride epochs, fewer than the upper bound)"
        )
    if once:
        shown = sorted({int(r["budget"]) for r in norm if r["method"] in once})
        schedule.append(
            f"{_names(once)}: one run per seed and budget "
            f"({', '.join(map(str, shown))} label{'s' if shown != [1] else ''}), tested once at "
            "the end of its schedule"
        )
    if schedule:
        notes.append("; ".join(schedule) + ".")
    if SHARE_ROW in budgets:
        text = (
            f"Budget '{SHARE_ROW}': round(0.2 x the group's pool), at least 1, per seed; labels "
            "column: the label counts that gives."
        )
        if merged:
            text += (
                " Where every seed's 20 % is the same label count k, the 20 % point is the row "
                f"of budget k, marked 'k (= {SHARE_ROW})' ("
                + (
                    f"every {group_label}: {next(iter(merged.values()))}"
                    if len(merged) == n_groups and len(set(merged.values())) == 1
                    else ", ".join(f"{g}: {k}" for g, k in merged.items())
                )
                + "), not a second row (the CSV keeps both)."
            )
        notes.append(text)
    if fewer:
        notes.append(
            "Fewer seeds than the group's upper bound (their Δ pairs only those seeds' cases): "
            + "; ".join(fewer)
            + "."
        )
    return notes
