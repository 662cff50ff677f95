"""The primary endpoint of a benchmark: declared in a protocol file before it runs, tested with a
multiplicity correction, printed first; everything else is secondary.

A protocol file (YAML; the power benchmark's is ``configs/power/protocol.yaml``) declares one
primary comparison::

    primary:
      measure: AUBC              # or "Dice at <budget>"
      budgets: [1, 2, 3, 5]      # the budgets of the AUBC (or the one of "Dice at <budget>")
      baseline: random of the same schedule   # or a method name, e.g. random
      tasks: [glioma, npc]       # optional: every task of the results
      methods: [mmacts, ugtst, stdr, coverage, maxherding, typiclust, mmacts_coverage]
      correction: holm           # or none
      alpha: 0.05

``baseline: random of the same schedule`` pairs each method with the random baseline
:func:`ada_bench.stats.matched_baseline` gives it (``random_one_off`` for a strategy that queries
its whole budget at once, where that ran on every seed; else ``random``).

The primary table (:func:`primary_table`) has one row per declared task and method: the paired
mean difference to its baseline over seeds, its 95 % BCa bootstrap CI, the two-sided Wilcoxon
signed-rank p, the Holm-adjusted p over the rows of that table (:func:`ada_bench.stats.holm`;
one family: every declared method on every declared task), the MDD and n; all computed by
:func:`ada_bench.stats.compare`, as the secondary tables.

Declaration (:func:`declaration`): ``scripts/benchmark.py`` records the protocol file's path,
SHA-256 and text in the ``start`` line of every invocation (``invocations.jsonl``, next to
``results.jsonl``; published with it); a second declared endpoint of the same invocation (the
equal-cost one, :data:`EQUAL_COST_PROTOCOL`) goes to the line's ``protocols`` list. The
protocol counts as declared at the start of the earliest invocation that recorded a file with
the same hash. A run started at its row's
``time`` minus its ``seconds`` (both stamps are whole seconds, so a run counts as started
before the declaration only when it started more than one second before it); every run that
feeds the primary table and started before that declaration (or with no declaration recorded at
all) makes the table *post hoc*. The harness
still builds it, and its title and caption say so, with the counts and dates: editing the
protocol after seeing results changes its hash, so it becomes a new, later declaration.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ada_bench.markdown import format_p
from ada_bench.results import budgetless, expand_curves, normalise, schedule_of
from ada_bench.stats import (
    ALPHA,
    BASELINE,
    ONE_OFF_BASELINE,
    compare,
    holm,
    matched_baseline,
)
from ada_bench.tables import Table, display_name, present_methods, tasks_of

#: the repository root (the protocol's path is shown relative to it)
REPO = Path(__file__).resolve().parents[2]
#: the power benchmark's protocol, relative to the repository root
POWER_PROTOCOL = Path("configs/power/protocol.yaml")
#: the protocol of the equal-cost comparison (runs with an annotation unit,
#: :mod:`ada_bench.equal_cost`), relative to the repository root
EQUAL_COST_PROTOCOL = Path("configs/power/protocol_equal_cost.yaml")
#: the ``baseline`` value that pairs each method with the random of its own schedule
SCHEDULE_MATCHED = "random of the same schedule"
CORRECTIONS = ("holm", "none")
#: the name of the protocol's copy in a results folder (and the published one)
COPY_NAME = "protocol.yaml"
#: the name of the equal-cost protocol's copy
EQUAL_COST_COPY_NAME = "protocol_equal_cost.yaml"
#: the resolution of the start and end stamps (``YYYY-MM-DD HH:MM:SS``), seconds
STAMP_RESOLUTION = 1.0
#: the heading prefix of every table that is not the primary one
SECONDARY = "Secondary / exploratory (unadjusted p): "


@dataclass(frozen=True)
class Protocol:
    """A declared primary comparison (module doc).

    Attributes:
        path: the file it was read from.
        text: the file's text (its copy in a results folder is this, byte for byte).
        sha256: hex SHA-256 of the file's bytes.
        measure: ``"AUBC"`` or ``"Dice at <budget>"``.
        budgets: the AUBC's budgets (for ``Dice at b``: ``(b,)``).
        baseline: :data:`SCHEDULE_MATCHED` or a method name.
        methods: the compared methods, in the file's order.
        tasks: the tasks (empty: every task of the results).
        correction: ``"holm"`` or ``"none"``.
        alpha: the family-wise level.
    """

    path: Path
    text: str
    sha256: str
    measure: str
    budgets: tuple[int, ...]
    baseline: str
    methods: tuple[str, ...]
    tasks: tuple[str, ...]
    correction: str
    alpha: float

    @property
    def label(self) -> str:
        """The measure as :func:`ada_bench.stats.measures` labels it (``AUBC 1-5``,
        ``Dice at 3``)."""
        if self.measure == "AUBC":
            return f"AUBC {min(self.budgets)}-{max(self.budgets)}"
        return self.measure

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]

    @property
    def shown_path(self) -> str:
        """The file's path relative to the repository (its name when outside)."""
        try:
            return self.path.resolve().relative_to(REPO).as_posix()
        except ValueError:
            return self.path.name


def load_protocol(path: str | Path) -> Protocol:
    """Read and check a protocol file.

    Raises:
        ValueError: a missing or malformed ``primary`` entry (says which).
    """
    path = Path(path)
    raw = path.read_bytes()
    doc = yaml.safe_load(raw) or {}
    p = doc.get("primary") if isinstance(doc, Mapping) else None
    if not isinstance(p, Mapping):
        raise ValueError(f"{path}: no 'primary:' mapping")
    measure = str(p.get("measure", "")).strip()
    budgets = tuple(int(b) for b in p.get("budgets") or ())
    if measure == "AUBC":
        if len(budgets) < 2:
            raise ValueError(f"{path}: measure AUBC needs at least two budgets, got {budgets}")
    elif measure.startswith("Dice at "):
        b = int(measure.removeprefix("Dice at "))
        if budgets and budgets != (b,):
            raise ValueError(f"{path}: measure {measure!r} with budgets {list(budgets)}")
        budgets = (b,)
    else:
        raise ValueError(f"{path}: measure must be 'AUBC' or 'Dice at <budget>', not {measure!r}")
    methods = tuple(str(m) for m in p.get("methods") or ())
    if not methods:
        raise ValueError(f"{path}: primary.methods is empty")
    correction = str(p.get("correction", "holm")).lower()
    if correction not in CORRECTIONS:
        raise ValueError(f"{path}: correction must be one of {CORRECTIONS}, not {correction!r}")
    alpha = float(p.get("alpha", ALPHA))
    if not 0 < alpha < 1:
        raise ValueError(f"{path}: alpha must be in (0, 1), got {alpha}")
    return Protocol(
        path=path,
        text=raw.decode(),
        sha256=hashlib.sha256(raw).hexdigest(),
        measure=measure,
        budgets=tuple(sorted(budgets)),
        baseline=str(p.get("baseline", SCHEDULE_MATCHED)).strip(),
        methods=methods,
        tasks=tuple(str(t) for t in p.get("tasks") or ()),
        correction=correction,
        alpha=alpha,
    )


def check_runs(
    protocol: Protocol, modalities: Sequence[str], additions_dir: str | Path | None = None
) -> None:
    """Refuse a protocol that names a run the planner does not know (its methods, and its
    baseline unless it is :data:`SCHEDULE_MATCHED`): checked before anything runs.

    Raises:
        ValueError: one line naming the file, the run and why
            (:func:`ada_bench.protocol.run_spec`'s message).
    """
    from ada_bench.protocol import run_spec

    names = list(protocol.methods)
    if protocol.baseline != SCHEDULE_MATCHED:
        names.append(protocol.baseline)
    for name in names:
        try:
            run_spec(name, list(modalities), additions_dir)
        except ValueError as e:
            raise ValueError(
                f"{protocol.shown_path}: {name!r} is not a run the planner knows ({e})"
            ) from None


def protocol_record(protocol: Protocol) -> dict[str, Any]:
    """What an invocation's ``start`` line records of the protocol: file, SHA-256, text."""
    return {"file": protocol.shown_path, "sha256": protocol.sha256, "text": protocol.text}


# ---------------------------------------------------------------------------------- declaration
def _parse(stamp: str) -> float:
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


@dataclass(frozen=True)
class Declaration:
    """When the protocol was declared, against when the runs of the primary table started.

    Attributes:
        recorded: start of the earliest invocation that recorded this protocol (None: none did).
        runs: how many runs feed the primary table.
        before: of them, how many started before ``recorded`` (all of them when None; a row
            without ``time`` counts as before).
        first: start of the earliest of those runs (``YYYY-MM-DD HH:MM``; None without times).
        last: end of the latest one.
    """

    recorded: str | None
    runs: int
    before: int
    first: str | None
    last: str | None

    @property
    def prospective(self) -> bool:
        """Declared before every run of the table started."""
        return self.recorded is not None and self.runs > 0 and self.before == 0


def declared_at(out: str | Path | None, sha256: str) -> str | None:
    """``start`` of the earliest invocation of ``out/invocations.jsonl`` that recorded a protocol
    with this hash (as its ``protocol`` or in its ``protocols``; ``YYYY-MM-DD HH:MM:SS``), None
    if none did."""
    path = Path(out) / "invocations.jsonl" if out is not None else None
    if path is None or not path.is_file():
        return None
    found = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        protos = [rec.get("protocol") or {}, *(rec.get("protocols") or [])]
        hit = any(isinstance(p, Mapping) and p.get("sha256") == sha256 for p in protos)
        if rec.get("event") == "start" and hit and rec.get("start"):
            found.append(rec["start"])
    return min(found, key=_parse) if found else None


def primary_methods(
    rows: Sequence[Mapping[str, Any]], protocol: Protocol
) -> list[tuple[str, str, str]]:
    """``(task, method, baseline)`` of every declared comparison that has runs, in table order
    (tasks as :func:`ada_bench.tables.tasks_of`, methods as declared)."""
    norm = [normalise(r) for r in expand_curves(rows) if r["run"] != "source"]
    tasks = [t for t in tasks_of(norm) if not protocol.tasks or t in protocol.tasks]
    out = []
    for task in tasks:
        present = present_methods([r for r in norm if r["task"] == task])
        for method in protocol.methods:
            if method not in present:
                continue
            if protocol.baseline == SCHEDULE_MATCHED:
                base = matched_baseline(norm, task, method, present)
            else:
                base = protocol.baseline
            if base in present:
                out.append((task, method, base))
    return out


def declaration(
    rows: Sequence[Mapping[str, Any]], protocol: Protocol, out: str | Path | None
) -> Declaration:
    """The :class:`Declaration` of ``protocol`` for the runs of its primary table."""
    recorded = declared_at(out, protocol.sha256)
    pairs = primary_methods(rows, protocol)
    used = {(t, m) for t, m, _ in pairs} | {(t, b) for t, _, b in pairs}
    spans: dict[tuple[Any, ...], tuple[float, float]] = {}
    for raw in rows:
        r = normalise(raw)
        if r["run"] == "source" or (r["task"], r["method"]) not in used or budgetless(r["method"]):
            continue
        # one run, however many budget rows its curve was expanded into
        key = (r["task"], r["run"], r["fold"], r["seed"], str(r.get("run_dir")), r.get("time"),
               r.get("seconds"), None if r.get("from_curve") else r["budget"])
        if r.get("time"):
            end = _parse(str(r["time"]))
            spans[key] = (end - float(r.get("seconds") or 0.0), end)
        else:
            spans[key] = (math.nan, math.nan)
    n = len(spans)
    spans_ = list(spans.values())
    # both stamps are whole seconds: a run counts as before only if it started before the
    # declaration by more than that resolution
    t0 = _parse(recorded) - STAMP_RESOLUTION if recorded else math.inf
    before = sum(1 for s, _ in spans_ if math.isnan(s) or s < t0)
    timed = [s for s in spans_ if not math.isnan(s[0])]
    return Declaration(
        recorded,
        n,
        before,
        _stamp(min(s for s, _ in timed)) if timed else None,
        _stamp(max(e for _, e in timed)) if timed else None,
    )


# ---------------------------------------------------------------------------------- the table
def _fmt(x: float, digits: int = 2) -> str:
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def primary_table(
    rows: Sequence[Mapping[str, Any]],
    protocol: Protocol,
    out: str | Path | None = None,
    penalty_link: str | None = None,
    pair_by: str = "seed",
    copy_name: str = COPY_NAME,
) -> Table:
    """The declared comparison, Holm-adjusted over its rows (module doc).

    Args:
        rows: result rows (raw; curves are expanded).
        protocol: the declared comparison.
        out: the results folder whose ``invocations.jsonl`` records the declaration (None: no
            record, the table is post hoc).
        penalty_link: a link target of the pairwise penalty matrix, named in the caption.
        pair_by: ``"seed"`` (the power profile) or ``"run"``.
        copy_name: the name of the protocol's copy in ``out`` (linked in the caption).
    """
    norm = [normalise(r) for r in expand_curves(rows) if r["run"] != "source"]
    unit = "Seeds" if pair_by == "seed" else "Runs"
    units = "seeds" if pair_by == "seed" else "runs (fold x seed)"
    header = [
        "Task", "Strategy", "Baseline", "Measure", unit, "Strategy %", "Baseline %", "Δ points",
        "95 % CI", "Wilcoxon p", "Holm p", "MDD points",
    ]
    csv_header = [
        "task", "strategy", "baseline", "measure", "n", "strategy_mean", "baseline_mean",
        "diff_mean", "ci_low", "ci_high", "p", "p_holm", "sd", "mdd", "rejected",
    ]
    found = []
    for task, method, base in primary_methods(norm, protocol):
        res = next(
            (c for c in compare(norm, task, method, base, list(protocol.budgets), pair_by)
             if c[0] == protocol.label),
            None,
        )
        if res is not None:
            found.append((task, method, base, *res))
    pvalues = {i: f[4].p for i, f in enumerate(found)}
    adjusted = holm(pvalues) if protocol.correction == "holm" else dict(pvalues)
    md, csv_rows, rejected = [], [], []
    for i, (task, method, base, label, res, ma, mb) in enumerate(found):
        q = adjusted[i]
        hit = not math.isnan(q) and q <= protocol.alpha
        if hit:
            rejected.append(f"{task} {display_name(method)}")
        mark = " †" if _other_schedule(norm, task, method, base) else ""
        md.append([
            task, display_name(method), display_name(base) + mark, label, str(res.n), _fmt(ma),
            _fmt(mb),
            _fmt(res.mean), f"[{_fmt(res.ci_low)}, {_fmt(res.ci_high)}]", format_p(res.p),
            format_p(q), _fmt(res.mdd),
        ])
        csv_rows.append([task, method, base, label, res.n, ma, mb, res.mean, res.ci_low,
                         res.ci_high, res.p, q, res.sd, res.mdd, int(hit)])
    decl = declaration(rows, protocol, out)
    when = "declared before the runs" if decl.prospective else "post hoc: declared after the runs"
    title = (
        f"Primary endpoint ({when}): {protocol.label}, each declared strategy vs "
        f"{_baseline_words(protocol)}, paired over {units} (Dice in %)"
    )
    return Table(
        title, header, md, csv_header, csv_rows,
        _notes(norm, protocol, found, adjusted, rejected, decl, penalty_link, units, copy_name),
    )


def _other_schedule(norm: Sequence[Mapping[str, Any]], task: str, method: str, base: str) -> bool:
    """Whether ``method`` and its baseline recorded different query schedules."""
    mine, theirs = schedule_of(norm, task, method), schedule_of(norm, task, base)
    return bool(mine and theirs and mine != theirs)


def _baseline_words(protocol: Protocol) -> str:
    if protocol.baseline == SCHEDULE_MATCHED:
        return "random of the same schedule"
    return display_name(protocol.baseline)


def _notes(
    norm: Sequence[Mapping[str, Any]],
    protocol: Protocol,
    found: Sequence[tuple[Any, ...]],
    adjusted: Mapping[int, float],
    rejected: Sequence[str],
    decl: Declaration,
    penalty_link: str | None,
    units: str,
    copy_name: str = COPY_NAME,
) -> list[str]:
    tasks = sorted({f[0] for f in found}, key=lambda t: tasks_of(norm).index(t))
    budgets = ", ".join(map(str, protocol.budgets))
    measure = (
        f"the AUBC over budgets {budgets} (trapezoid of the mean Dice over the budgets divided by "
        f"{max(protocol.budgets)} − {min(protocol.budgets)})"
        if protocol.measure == "AUBC"
        else f"the mean Dice at budget {budgets}"
    )
    n_tests = sum(1 for q in adjusted.values() if not math.isnan(q))
    notes = [
        f"Declared in [{copy_name}]({copy_name}) (SHA-256 `{protocol.short_hash}…`, copied from "
        f"`{protocol.shown_path}`): measure {measure}; methods "
        f"{', '.join(display_name(m) for m in protocol.methods)}; tasks "
        f"{', '.join(protocol.tasks) if protocol.tasks else 'every task of the results'}; "
        f"baseline: {_baseline_words(protocol)}.",
    ]
    other = sorted({display_name(f[1]) for f in found if _other_schedule(norm, *f[:3])})
    if protocol.baseline == SCHEDULE_MATCHED:
        one_off = sorted({display_name(f[1]) for f in found if f[2] == ONE_OFF_BASELINE})
        seq = sorted({display_name(f[1]) for f in found if f[2] == BASELINE
                      and display_name(f[1]) not in other})
        parts = []
        if seq:
            parts.append(f"{display_name(BASELINE)} for {', '.join(seq)}")
        if one_off:
            parts.append(
                f"{display_name(ONE_OFF_BASELINE)} (random picks, the whole budget at epoch 0, "
                f"the full schedule) for the one-off {', '.join(one_off)}"
            )
        if parts:
            notes.append("Baselines: " + "; ".join(parts) + ".")
    if other:
        notes.append(
            f"† Not the same schedule: {', '.join(other)} and its baseline recorded different "
            "query schedules (no random of its own schedule ran on its units): its Δ mixes the "
            "selection rule with the query schedule."
        )
    if protocol.correction == "holm":
        notes.append(
            f"Holm p: Holm-Bonferroni adjusted over the {n_tests} comparisons of this table "
            f"({len({f[1] for f in found})} methods x {len(tasks)} "
            f"task{'s' if len(tasks) != 1 else ''}), family-wise error ≤ α = "
            f"{protocol.alpha:g}; rejected (Holm p ≤ {protocol.alpha:g}): "
            + (", ".join(rejected) if rejected else "none")
            + "."
        )
    else:
        notes.append("Holm p: not adjusted (the protocol declares correction: none).")
    notes.append(
        f"Per unit: mean Dice over the test cases (per case the mean over the task's regions); "
        f"Δ = strategy − baseline of the same unit in Dice points, n = the {units} both have; "
        "95 % CI: bootstrap (BCa, 9,999 resamples) of the mean Δ, none below 5 seeds; "
        "Wilcoxon p: two-sided signed-rank test (exact for small n), unadjusted; MDD as in the "
        "secondary table."
    )
    span = f" between {decl.first} and {decl.last}" if decl.first else ""
    if decl.prospective:
        notes.append(
            f"Declaration: this protocol (same SHA-256) was recorded in invocations.jsonl at "
            f"{decl.recorded[:16]}, before every one of the {decl.runs} runs of this table "
            f"(they ran{span})."
        )
    elif decl.recorded is None:
        notes.append(
            f"Declaration: POST HOC. No invocation in invocations.jsonl recorded this protocol "
            f"(SHA-256 `{protocol.short_hash}…`); the {decl.runs} runs of this table ran{span}, "
            "before any recorded declaration: the endpoint was chosen with the results "
            "available, so read this table as a post-hoc summary, not a confirmatory test."
        )
    else:
        notes.append(
            f"Declaration: POST HOC. This protocol was first recorded at {decl.recorded[:16]}, "
            f"after {decl.before} of the {decl.runs} runs of this table had started (they "
            f"ran{span}): read this table as a post-hoc summary, not a confirmatory test."
        )
    missing = [
        (t, m) for t in (protocol.tasks or tasks) for m in protocol.methods
        if not any(f[0] == t and f[1] == m for f in found)
    ]
    if missing:
        notes.append(
            "Declared but without a comparison in these results: "
            + ", ".join(f"{t} {display_name(m)}" for t, m in missing)
            + "."
        )
    notes.append(
        "Everything after this table is secondary or exploratory: its p-values are not "
        "adjusted for multiplicity."
        + (
            f" Ranking of every strategy against every other over the budgets: the "
            f"[pairwise penalty matrix]({penalty_link})."
            if penalty_link
            else ""
        )
    )
    return notes


def copy_protocol(protocol: Protocol, out: str | Path, name: str = COPY_NAME) -> Path:
    """Write the protocol's text to ``out/<name>`` (``protocol.yaml``; unless it is that file);
    return it."""
    from lightning_ada.io import write_text_atomic

    dest = Path(out) / name
    if not (dest.exists() and dest.resolve() == protocol.path.resolve()):
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(dest, protocol.text)
    return dest
