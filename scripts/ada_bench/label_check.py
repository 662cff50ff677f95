"""Suspect annotations: a delivered label the adapted model still cannot fit after training on it.

After a target run's fit, every labelled case's training loss (the module's own loss, Dice + CE,
on the whole preprocessed volume with the label the oracle delivered, no augmentation) is measured
with the final model. A case whose loss is at least ``RATIO`` times the median loss of the other
labelled cases and at least ``MARGIN`` above it is flagged: the model fits the other labels but
not this one, as with a wrong or misaligned mask (issue 18: one pool case's label collapsed the
runs that used it). Needs 3 labelled cases (2 others to compare with); the losses are recorded
either way, in the results row (``label_fit``) and next to each query (``fit_loss``,
``suspect_label``). A flag is a prompt to look at the case, not a verdict: a hard but correct case
can be flagged too.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

#: flag when the loss is >= RATIO x the others' median ...
RATIO = 2.0
#: ... and >= MARGIN above it (loss units: Dice + CE)
MARGIN = 0.1
#: fewest labelled cases the rule compares
MIN_CASES = 3


def label_losses(model: Any, dm: Any) -> dict[str, float]:
    """The module's loss of every labelled target case under the current model.

    Args:
        model: the fitted :class:`~lightning_ada.models.module.SegmentationModule`.
        dm: its :class:`~lightning_ada.data.datamodule.ActiveDataModule` (target stage).

    Returns:
        ``{case_id: loss}`` (empty outside the target stage).
    """
    import torch

    if getattr(dm, "hparams", {}).get("stage") != "target" or getattr(dm, "pool", None) is None:
        return {}
    out: dict[str, float] = {}
    with torch.no_grad():
        for cid in dm.train_pool.labeled:
            # the delivered annotation as training sees it (the library keeps it private)
            item = dm.training_item(cid)
            probs = model.predict_case(item["image"])
            logits = probs.clamp_min(1e-8).log()[None]  # softmax(log p) = p: the loss's input
            label = torch.as_tensor(item["label"]).to(logits.device)[None]
            out[cid] = float(model.loss(logits, label))
    return out


def suspect_labels(
    losses: Mapping[str, float], ratio: float = RATIO, margin: float = MARGIN
) -> list[str]:
    """The cases whose loss is far above the other labelled cases' median (module doc)."""
    finite = {c: v for c, v in losses.items() if not math.isnan(v)}
    if len(finite) < MIN_CASES:
        return []
    out = []
    for cid, v in finite.items():
        median = statistics.median(w for c, w in finite.items() if c != cid)
        if v >= ratio * median and v - median >= margin:
            out.append(cid)
    return sorted(out)


def label_fit(model: Any, dm: Any) -> dict[str, Any]:
    """``{"losses": {case: loss}, "suspect": [case...], "rule": text}`` of a fitted run."""
    losses = label_losses(model, dm)
    return {
        "losses": losses,
        "suspect": suspect_labels(losses),
        "rule": f"loss >= {RATIO} x median of the other labelled cases and >= {MARGIN} above it "
        f"(final model, whole volume, delivered label; needs {MIN_CASES} labelled cases)",
    }


def annotate_queries(queries: list[dict[str, Any]], fit: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Query entries with their case's ``fit_loss`` and ``suspect_label`` (when measured)."""
    losses, suspect = fit.get("losses") or {}, set(fit.get("suspect") or [])
    return [
        q | {"fit_loss": losses[q["case_id"]], "suspect_label": q["case_id"] in suspect}
        if q.get("case_id") in losses
        else q
        for q in queries
    ]


def suspect_summary(rows: Any) -> str:
    """Markdown: per task, every case flagged as a suspect label, in how many of the runs that
    labelled it (a budget curve's points count as one run); empty when no run measured it."""
    from collections import defaultdict

    seen: set[tuple[Any, ...]] = set()
    labelled: dict[tuple[str, str], int] = defaultdict(int)
    flagged: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in rows:
        fit = r.get("label_fit")
        key = (r.get("task"), r.get("run"), r.get("fold"), r.get("seed"), r.get("run_dir"))
        if not fit or key in seen:
            continue
        seen.add(key)
        for cid in fit.get("losses") or {}:
            labelled[(str(r["task"]), cid)] += 1
        for cid in fit.get("suspect") or []:
            flagged[(str(r["task"]), cid)].append(str(r["run"]))
    if not seen:
        return ""
    lines = [
        "## Suspect labels",
        "",
        f"A delivered label is flagged when its loss under the run's final model is >= {RATIO} x "
        f"the median of the other labelled cases' and >= {MARGIN} above it (runs with >= "
        f"{MIN_CASES} labels; scripts/ada_bench/label_check.py). {len(seen)} runs measured.",
        "",
    ]
    if not flagged:
        return "\n".join([*lines, "No label was flagged.", ""])
    for (task, cid), runs in sorted(flagged.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        lines.append(
            f"- {task} {cid}: flagged in {len(runs)} of the {labelled[(task, cid)]} runs that "
            f"labelled it ({', '.join(sorted(set(runs)))})"
        )
    return "\n".join(lines) + "\n"
