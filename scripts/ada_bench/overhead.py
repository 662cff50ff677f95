"""Query overhead of each strategy, measured inside the benchmark's own runs.

For every finished run with queries: scoring seconds per round (the strategy's ranking of the
unlabeled pool, as timed by the callback) against the training seconds of one stride (the run's
fit time minus its scoring time, per epoch, times the stride). Epochs and stride come from the
``config.yaml`` the CLI saved in the run folder.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ada_bench.results import normalise, round_seconds
from ada_bench.tables import Table, display_name, table_order, tasks_of


def _schedule(row: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(max_epochs, stride)`` of a run, from its saved config; None when unknown."""
    cfg = Path(str(row.get("run_dir", ""))) / "config.yaml"
    if not row.get("run_dir") or not cfg.is_file():
        return None
    c = yaml.safe_load(cfg.read_text())
    try:
        return int(c["trainer"]["max_epochs"]), int(c["active"]["stride"])
    except (KeyError, TypeError, ValueError):
        return None


def overhead_table(rows: Iterable[Mapping[str, Any]]) -> Table:
    """Median over runs, per task and method: seconds per scoring round, training seconds per
    stride, and their ratio (%)."""
    acc: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for raw in rows:
        r = normalise(raw)
        rounds = {q.get("round") for q in r.get("queries", [])}
        sched = _schedule(r) if rounds and r.get("fit_seconds") else None
        if sched is None or r["train_input"] != "all":
            continue
        epochs, stride = sched
        per_round = round_seconds(r.get("queries", []))
        # rows written before the per-round sum carry only the total
        scoring = (sum(per_round.values()) if any(per_round.values())
                   else float(r.get("scoring_seconds") or 0.0))
        per_stride = (float(r["fit_seconds"]) - scoring) / epochs * stride
        acc[(r["task"], r["method"])].append((scoring / len(rounds), per_stride))
    header = ["Task", "Method", "Runs", "Scoring s / round", "Training s / stride", "Ratio %"]
    md, csv_rows = [], []
    for task in tasks_of([{"task": t} for t, _ in acc]):
        for method in sorted({m for t, m in acc if t == task}, key=table_order):
            vals = acc[(task, method)]
            s = statistics.median(v[0] for v in vals)
            t = statistics.median(v[1] for v in vals)
            ratio = 100.0 * s / t if t > 0 else float("nan")
            md.append([task, display_name(method), str(len(vals)), f"{s:.2f}", f"{t:.1f}",
                       f"{ratio:.1f}"])
            csv_rows.append([task, method, len(vals), s, t, ratio])
    return Table(
        "Query overhead: one scoring round vs the training of one stride (medians over runs)",
        header,
        md,
        ["task", "method", "runs", "scoring_s_per_round", "training_s_per_stride", "ratio_pct"],
        csv_rows,
        [
            "Scoring = the strategy ranking the whole unlabeled pool (inference included), timed "
            "by the callback; training per stride = (fit time - scoring time) / epochs x stride. "
            "One-off strategies score once for the whole budget."
        ],
    )
