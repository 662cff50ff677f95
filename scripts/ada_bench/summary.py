"""Plain-text summary of what the strategies picked."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from ada_bench.results import normalise


def picks_summary(rows: Iterable[Mapping[str, Any]]) -> str:
    """Per task, method and budget: scanners, tumour sizes, degraded cases, elected modalities."""
    groups: dict[tuple[str, str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for raw in rows:
        r = normalise(raw)
        for q in r.get("queries", []):
            groups[(r["task"], r["method"], r["budget"], r["train_input"])].append(q)
    lines = [
        "## What the picks were",
        "",
        (
            "Over all folds and seeds: scanner (phantom) or institution (BraTS) counts, true tumour voxels (median), predicted "
            "foreground voxels (median), picks with a degraded modality, elected modalities."
        ),
        "",
    ]
    for (task, method, budget, train_input), qs in sorted(groups.items()):
        scanners: dict[str, int] = defaultdict(int)
        mods: dict[str, int] = defaultdict(int)
        true_v, pred_v, degraded = [], [], 0
        for q in qs:
            meta = q.get("case_meta") or {}
            scanners[str(meta.get("centre") or meta.get("group"))] += 1  # phantom / BraTS site
            mods[str(q.get("modality"))] += 1
            tv = (meta.get("tumour_voxels") or {}).get("total")
            if tv is not None:
                true_v.append(tv)
            pv = (q.get("factors") or {}).get("volume")
            if pv is not None:
                pred_v.append(pv)
            degraded += bool(meta.get("degraded_modality"))
        name = method + ("" if train_input == "all" else f" [{train_input}]")
        lines.append(
            f"- {task} {name} budget {budget}: {len(qs)} picks; "
            f"scanners {dict(sorted(scanners.items()))}"
            + (f"; true voxels {statistics.median(true_v):.0f}" if true_v else "")
            + (f"; predicted voxels {statistics.median(pred_v):.0f}" if pred_v else "")
            + f"; degraded {degraded}; elected {dict(sorted(mods.items()))}"
        )
    return "\n".join(lines) + "\n"
