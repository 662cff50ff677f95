"""The results file: one JSON line per finished run, appended atomically, never rewritten.

A row is a dict with at least ``task``, ``run``, ``seed``, ``fold`` (None for the source run),
``budget`` (None for the budget-independent runs), ``test`` (metric -> value) and ``per_case``
(one dict per test case).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ada_bench.names import BUDGETLESS, bound_of, budgetless, method_of

#: runs that do not depend on the fold (trained on the source split only)
FOLDLESS = frozenset({"source"})

RunKey = tuple[str, str, int | None, int | None, int]

__all__ = [
    "BUDGETLESS", "FOLDLESS", "append_row", "bound_of", "budgetless", "expand_curves",
    "finished", "method_of", "normalise", "read_rows", "run_key",
]


def normalise(row: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``row`` with its derived fields.

    Adds ``method``, ``strategy`` (the method if absent), ``budget`` (0 for ``lower``, None for
    the source and upper bound, with or without additions: ``upper+dgst``), ``train_input``
    (``all`` if absent), ``labels`` (number of labelled target cases: the budget, 0 for the lower
    bound, the pool size for the upper bound when known) and ``extra_splits`` (the extra test
    splits: ``{split: {"test": ..., "per_case": [...]}}``, empty if absent).

    Raises:
        ValueError: a target run without ``fold``, or a budgeted run without ``budget``.
    """
    r = dict(row)
    run = str(r["run"])
    r["method"] = r.get("method") or method_of(run)
    r["strategy"] = r.get("strategy") or r["method"]
    r["seed"] = int(r["seed"])
    if run in FOLDLESS:
        r["fold"] = None
    elif r.get("fold") is None:
        raise ValueError(f"result row of run {run!r} (seed {r['seed']}) has no fold")
    else:
        r["fold"] = int(r["fold"])
    bound = bound_of(run)
    if bound == "lower":
        r["budget"] = 0
    elif bound is not None:
        r["budget"] = None
    elif r.get("budget") is None:
        raise ValueError(f"result row of run {run!r} (seed {r['seed']}) has no budget")
    else:
        r["budget"] = int(r["budget"])
    r["train_input"] = r.get("train_input") or "all"
    if r.get("labels") is None:
        r["labels"] = r.get("n_pool") if bound == "upper" else r["budget"]
    r.setdefault("test", {})
    r.setdefault("extra_splits", {})
    r.setdefault("per_case", [])
    r.setdefault("queries", [])
    return r


def run_key(row: Mapping[str, Any]) -> RunKey:
    """Identity of a run for the resume logic: ``(task, run, budget, fold, seed)``.

    Budget is None for budget-independent runs (source, lower and upper bound) and fold is None
    for the source run.
    """
    r = normalise(row)
    run = str(r["run"])
    budget = None if budgetless(run) else int(r["budget"])
    return (str(r["task"]), run, budget, r["fold"], int(r["seed"]))


def round_seconds(queries: Iterable[Mapping[str, Any]]) -> dict[Any, float]:
    """Scoring seconds per query round of a run's query log (round -> seconds).

    Every entry of a round carries the round's seconds (a round that picks several cases or
    regions logs one entry each), so the run's scoring time is the sum over rounds, not over
    entries. Entries without a round count as rounds of their own.
    """
    out: dict[Any, float] = {}
    for i, q in enumerate(queries):
        key = q.get("round", ("entry", i))
        out[key] = max(out.get(key, 0.0), float(q.get("scoring_seconds") or 0.0))
    return out


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a results file (raw, not normalised); unreadable lines are skipped with a warning.

    A run killed while appending can leave a truncated last line; it is ignored (the run counts
    as not finished and is repeated).
    """
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{i}: unreadable line skipped (interrupted write?)", stacklevel=2)
            continue
        if isinstance(row, dict) and {"task", "run", "seed"} <= row.keys():
            rows.append(row)
    return rows


def finished(rows: Iterable[Mapping[str, Any]]) -> set[RunKey]:
    """Keys of the finished runs (:func:`run_key`)."""
    return {run_key(r) for r in rows}


def append_row(path: str | Path, row: Mapping[str, Any]) -> None:
    """Append one JSON line with a single ``write`` on an ``O_APPEND`` descriptor, then fsync.

    If the file does not end with a newline (a write cut short), a newline is written first so
    the new row stays on a line of its own.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(row, default=_json_default) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with path.open("rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    data = b"\n" + data
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(x: Any) -> Any:
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def expand_curves(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows with a budget curve (:mod:`ada_bench.curve`) replaced by one row per curve point.

    A point with ``k`` labels becomes a row of budget ``k`` holding that point's test results
    (``from_curve``: True, ``curve_epoch``: the epoch it was taken after, ``queries``: the first
    ``k``); the run's final test is kept only when the curve has no point at the run's budget.
    A point on the cost axis (a run with a sub-volume unit: its points have ``scans``) becomes a
    row of budget ``b`` = its ``scans`` (whole-scan equivalents; ``labels`` is ``b`` too), with
    the queries made before it and their ``cost`` totals (and ``spent``, the exact scans); such
    a run's final test is never a budget point of its own (its rounds may have spent less than
    its budget, and its last point is already the final model when they did not).
    Other rows are returned unchanged.
    """
    out: list[dict[str, Any]] = []
    for raw in rows:
        row = dict(raw)
        curve = row.pop("curve", None)
        if not curve:
            out.append(row)
            continue
        by_scans = any("scans" in p for p in curve)
        key = "scans" if by_scans else "labels"
        points = {int(p[key]): p for p in curve if int(p[key]) > 0}
        for k, p in sorted(points.items()):
            n_queries = int(p["labels"]) if by_scans else k
            out.append(
                {
                    **row,
                    "budget": k,
                    "labels": k,
                    "test": p.get("test", {}),
                    "per_case": p.get("per_case", []),
                    "extra_splits": p.get("extra_splits", {}),
                    "queries": list(row.get("queries", []))[:n_queries],
                    "from_curve": True,
                    "curve_epoch": p.get("epoch"),
                    **({"curve_step": p["step"]} if "step" in p else {}),
                    **({"cost": dict(p.get("cost") or {}), "spent": p.get("spent")}
                       if by_scans else {}),
                }
            )
        if row.get("budget") is not None and int(row["budget"]) not in points and not by_scans:
            out.append(row)
    return out


#: each task's regions in the paper's order (tables, statistics)
TASK_REGIONS: dict[str, list[str]] = {
    "glioma": ["ET", "NCR", "ED"],
    "npc": ["GTV"],
    "brats18": ["ET", "NCR", "ED"],
}


def regions_of(rows: Iterable[Mapping[str, Any]], task: str) -> list[str]:
    """Regions of ``task``: the paper's order when known, else those found in the rows."""
    if task in TASK_REGIONS:
        return list(TASK_REGIONS[task])
    found: dict[str, None] = {}
    for r in rows:
        if r["task"] != task:
            continue
        for c in r.get("per_case", []):
            for k in c:
                if k.startswith("dice_") and k != "dice_mean":
                    found[k[5:]] = None
    return list(found)


def schedule_of(rows: Sequence[Mapping[str, Any]], task: str, method: str) -> str | None:
    """How ``method`` queried on ``task``: the ``schedule`` its rows record (``one_off``: the
    whole budget at once; ``sequential``: one query per stride), None when unrecorded or mixed."""
    found = {r.get("schedule") for r in rows if r["task"] == task and r["method"] == method}
    found.discard(None)
    return found.pop() if len(found) == 1 else None
