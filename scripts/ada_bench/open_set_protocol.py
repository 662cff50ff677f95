"""Open-set pools (issue 15 item 1, seed 003): purity and Dice with and without OpenPath's filter.

Per seed the source model is trained once (on the source centre, which the open-set option does
not touch); each group (a fold of the loop, :mod:`ada_bench.centres`) is one open-set variant of
that seed's pool: ``ood<p>`` makes ``p`` % of the pool out of distribution
(:func:`lightning_ada.phantom.simulator.generate_phantom` ``open_set``, every kind dealt in turn; the
in-distribution cases and the test cases are those of the plain phantom), ``ood<p>_filter`` adds
OpenPath's prototype pre-filter in front of the strategy (``active.open_set_filter``,
:class:`lightning_ada.active.open_set_filter.PrototypeFilter` with its defaults). The simulated
oracle refuses an out-of-distribution case: the label is spent, nothing is trained on.

Purity (:func:`lightning_ada.phantom.open_set.purity`) is the share of a run's queries that were
in distribution, from the ``ood`` flag of each queried case in the query log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ada_bench.centres import Group, expanded
from ada_bench.markdown import format_mean_std
from ada_bench.results import BUDGETLESS
from ada_bench.stats import case_value, mean_std
from ada_bench.tables import Table, display_name, regions_of, table_order

FILTER_PATH = "lightning_ada.active.open_set_filter.PrototypeFilter"


def group_name(fraction: float, filtered: bool) -> str:
    """``ood20`` / ``ood20_filter``."""
    return f"ood{round(100 * fraction)}" + ("_filter" if filtered else "")


def open_set_groups(base: Mapping[str, Any], fractions: Sequence[float]) -> list[Group]:
    """The groups of one seed: per fraction, without and with the filter.

    Args:
        base: ``data.root`` and ``data.phantom`` of the seed's plain phantom
            (:func:`ada_bench.centres.seed_base`).
        fractions: shares of out-of-distribution pool cases, each in (0, 1).
    """
    from lightning_ada.phantom.simulator import folder_suffix

    groups = []
    for f in fractions:
        if not 0.0 < f < 1.0:
            raise ValueError(f"an open-set fraction must be in (0, 1), got {f}")
        option = {"fraction": float(f)}
        data = {
            "data.root": base["data.root"] + folder_suffix(open_set=option),
            "data.phantom": {**base["data.phantom"], "open_set": option},
        }
        groups.append(Group(group_name(f, False), data))
        groups.append(
            Group(
                group_name(f, True),
                {**data, "active.open_set_filter": {"class_path": FILTER_PATH}},
            )
        )
    return groups


def query_flags(row: Mapping[str, Any]) -> list[str | None]:
    """The ``ood`` kind (None: in distribution) of each query of a result row (log events
    without a case, e.g. ``nothing_to_train`` in rows written before they were kept apart, are
    not queries)."""
    return [
        (q.get("case_meta") or {}).get("ood")
        for q in row.get("queries", [])
        if q.get("case_id") is not None
    ]


def open_set_table(rows: Sequence[Mapping[str, Any]], groups: Sequence[str]) -> Table:
    """Purity and Dice per open-set group and strategy (mean ± std over seeds).

    Args:
        rows: result rows of one task (raw).
        groups: group names in fold order (``groups.json``).
    """
    norm = expanded(rows)
    tasks = sorted({r["task"] for r in norm})
    regions = regions_of(norm, tasks[0]) if tasks else []
    methods = sorted({r["method"] for r in norm if r["method"] != "source"}, key=table_order)
    header = ["OOD share", "filter", "method", "budget", "seeds", "purity % (mean ± std)",
              "OOD queries / all", "OOD kinds queried", "Dice % (mean ± std over seeds)"]
    csv_header = ["ood_share", "filter", "method", "budget", "seeds", "purity_mean", "purity_std",
                  "ood_queries", "queries", "ood_kinds", "dice_mean", "dice_std"]
    cells, numbers = [], []
    for fold, gname in enumerate(groups):
        share = gname.removeprefix("ood").removesuffix("_filter")
        filtered = gname.endswith("_filter")
        for method in methods:
            sel = [r for r in norm if r["fold"] == fold and r["method"] == method]
            if not sel or (filtered and method in BUDGETLESS):
                continue
            for budget in sorted({r["budget"] for r in sel}, key=lambda b: -1 if b is None else b):
                runs = [r for r in sel if r["budget"] == budget]
                flags = [query_flags(r) for r in runs]
                pur = mean_std(
                    [sum(f is None for f in fl) / len(fl) for fl in flags if fl]
                )
                n_q = sum(len(fl) for fl in flags)
                n_ood = sum(f is not None for fl in flags for f in fl)
                kinds = Counter(f for fl in flags for f in fl if f is not None)
                kind_text = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "–"
                dice = mean_std(
                    [
                        float(np.nanmean([case_value(c, "dice_mean", regions)
                                          for c in r["per_case"]]))
                        for r in runs
                        if r.get("per_case")
                    ]
                )
                label = "–" if budget is None else str(budget)
                cells.append([
                    f"{share} %", "yes" if filtered else "no", display_name(method), label,
                    str(len(runs)),
                    format_mean_std(pur, 100, 1) if method not in BUDGETLESS else "–",
                    f"{n_ood} / {n_q}" if method not in BUDGETLESS else "–", kind_text,
                    format_mean_std(dice, 100, 1),
                ])
                numbers.append([
                    int(share), int(filtered), method, label, len(runs), pur.mean, pur.std,
                    n_ood, n_q, kind_text, dice.mean, dice.std,
                ])
    notes = [
        "Purity: share of a run's queries that were in distribution (the ood flag of each "
        "queried case in the query log), mean ± std over seeds. A refused (out-of-distribution) "
        "query costs its label and is replaced from the remaining budget, so a run may end "
        "with fewer labels than its budget.",
        "Dice: per test case the mean over the regions "
        f"{', '.join(regions)}; per run the mean over the test cases (all in distribution); mean "
        "± std over seeds. Lower bound: the source model, identical with and without the filter.",
        "Filter: OpenPath's prototype pre-filter (PrototypeFilter defaults: the 25 % of the "
        "unlabelled cases nearest a prototype are the candidates; round-0 prototype from the "
        "cases the source model predicts tumour in), the strategy ranks the candidates.",
    ]
    return Table("Open-set pools: purity and Dice", header, cells, csv_header, numbers, notes)
