"""Figures of the benchmark (matplotlib, Agg backend, PNG written atomically).

* :func:`budget_curve`: Dice vs number of labels, one line per strategy with a ±std band;
* :func:`box_plot`: per-case Dice of every method at one budget;
* :func:`queried_cases`: the queried cases, one axial slice per modality, elected modality
  framed, prediction before / after adaptation outlined.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ada_bench.results import normalise
from ada_bench.stats import MeanStd, mean_std, per_case, per_run
from ada_bench.tables import (
    MODALITY_DISPLAY,
    REFERENCE,
    display_name,
    is_bound,
    present_methods,
    regions_of,
)
from lightning_ada.io import atomic_path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


def curve_series(
    rows: Sequence[Mapping[str, Any]],
    task: str,
    metric: str = "dice_mean",
    methods: Sequence[str] | None = None,
) -> tuple[dict[str, list[tuple[int, MeanStd]]], MeanStd, MeanStd]:
    """What :func:`budget_curve` draws: per strategy ``[(labels, mean ± std over runs)]`` starting
    at the lower bound (0 labels), and the lower and upper bound."""
    norm = [
        r for r in (normalise(x) for x in rows) if r["task"] == task and r["train_input"] == "all"
    ]
    regions = regions_of(norm, task)
    methods = [m for m in (methods or present_methods(norm)) if not is_bound(m)]

    def stat(method: str, budget: int | None) -> MeanStd:
        sel = [
            r for r in norm if r["method"] == method and (budget is None or r["budget"] == budget)
        ]
        return mean_std(per_run(sel, metric, regions).values())

    lower, upper = stat("lower", None), stat("upper", None)
    curves = {}
    for m in methods:
        budgets = sorted({r["budget"] for r in norm if r["method"] == m})
        pts = [(b, stat(m, b)) for b in budgets]
        pts = [(b, s) for b, s in pts if s.n]
        if lower.n:
            pts = [(0, lower), *pts]
        if len(pts) > (1 if lower.n else 0):
            curves[m] = pts
    return curves, lower, upper


def budget_curve(
    rows: Sequence[Mapping[str, Any]],
    task: str,
    path: str | Path,
    metric: str = "dice_mean",
    methods: Sequence[str] | None = None,
) -> Path | None:
    """Mean ``metric`` (%) vs number of labels per strategy, band = ±1 std over runs.

    Every curve starts at the lower bound (0 labels); the upper bound is a dashed line with its
    band. ``methods`` defaults to Table 1's strategies (ablations are left to the tables).
    Returns the PNG path, or None when ``task`` has no strategy rows.
    """
    curves, lower, upper = curve_series(rows, task, metric, methods)
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (m, pts) in enumerate(curves.items()):
        x = np.array([b for b, _ in pts], float)
        y = np.array([s.mean for _, s in pts]) * 100
        sd = np.nan_to_num(np.array([s.std for _, s in pts]) * 100)
        style = {"lw": 2.5, "zorder": 5} if m == REFERENCE else {"lw": 1.3}
        (line,) = ax.plot(
            x, y, marker="o", ms=3.5, label=display_name(m), color=f"C{i % 10}", **style
        )
        ax.fill_between(x, y - sd, y + sd, color=line.get_color(), alpha=0.12, lw=0)
    if upper.n:
        ax.axhline(upper.mean * 100, color="k", ls="--", lw=1, label="Upper bound")
        if upper.n > 1:
            ax.axhspan(
                (upper.mean - upper.std) * 100,
                (upper.mean + upper.std) * 100,
                color="k",
                alpha=0.06,
            )
    ax.set_xlabel("number of labelled target cases")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
    ax.set_title(f"{task}: {metric} vs labels (mean ± std over runs)")
    ax.set_xticks(sorted({b for pts in curves.values() for b, _ in pts}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    return _save(fig, path)


def box_plot(
    rows: Sequence[Mapping[str, Any]],
    task: str,
    path: str | Path,
    budget: int = 3,
    metric: str = "dice_mean",
) -> Path | None:
    """Box plot of the per-case ``metric`` (%) per method at ``budget`` (bounds included).

    Each box pools the test cases of every run (fold x seed). Returns None without data.
    """
    norm = [
        r for r in (normalise(x) for x in rows) if r["task"] == task and r["train_input"] == "all"
    ]
    regions = regions_of(norm, task)
    data, labels = [], []
    for m in present_methods(norm):
        sel = [r for r in norm if r["method"] == m and (is_bound(m) or r["budget"] == budget)]
        vals = [v * 100 for v in per_case(sel, metric, regions).values()]
        if vals:
            data.append(vals)
            labels.append(display_name(m).split(" (")[0])
    if not data:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.75 * len(data) + 1.5), 4.2))
    box = ax.boxplot(data, showmeans=True, patch_artist=True)
    ax.set_xticks(range(1, len(labels) + 1), labels)
    for patch, lab in zip(box["boxes"], labels):
        patch.set_facecolor("#f4c542" if lab == display_name(REFERENCE) else "#dddddd")
    ax.set_ylabel(f"per-case {metric.replace('_', ' ')} (%)")
    ax.set_title(f"{task}: budget {budget}, test cases of all runs")
    ax.tick_params(axis="x", rotation=30)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


@dataclass
class QueriedCase:
    """One queried case to draw.

    Attributes:
        image: ``(C, H, W, D)`` network-space image.
        before: ``(H, W, D)`` class indices predicted by the source model.
        after: ``(H, W, D)`` class indices predicted by the adapted model.
        label: ``(H, W, D)`` reference class indices, or None.
        elected: the elected modality (framed), or None.
        title: row title (case id, round, scanner...).
    """

    image: np.ndarray
    before: np.ndarray
    after: np.ndarray
    label: np.ndarray | None = None
    elected: str | None = None
    title: str = ""


def _axial_index(case: QueriedCase) -> int:
    """Axial slice (last axis) with the most tumour: reference, else either prediction."""
    for mask in (case.label, case.after, case.before):
        if mask is not None and (mask > 0).any():
            return int(np.argmax((mask > 0).sum(axis=(0, 1))))
    return case.image.shape[-1] // 2


def queried_cases(
    path: str | Path, cases: Sequence[QueriedCase], modalities: Sequence[str], title: str = ""
) -> Path:
    """One row per queried case, one column per modality (axial slice through the tumour).

    Outlines: reference in white (dashed), source-model prediction in red ("before"), adapted
    prediction in green ("after"); the elected modality's panel is framed in gold.
    """
    plt = _pyplot()
    n, m = max(1, len(cases)), len(modalities)
    fig, axes = plt.subplots(n, m, figsize=(2.2 * m, 2.3 * n), squeeze=False)
    for r, case in enumerate(cases):
        z = _axial_index(case)
        for c, name in enumerate(modalities):
            ax = axes[r][c]
            ax.imshow(case.image[c, :, :, z].T, cmap="gray", origin="lower")
            for mask, colour, ls in (
                (case.label, "white", "--"),
                (case.before, "red", "-"),
                (case.after, "lime", "-"),
            ):
                if mask is not None and (mask[:, :, z] > 0).any():
                    ax.contour(
                        (mask[:, :, z] > 0).T.astype(float),
                        levels=[0.5],
                        colors=colour,
                        linewidths=0.9,
                        linestyles=ls,
                    )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(MODALITY_DISPLAY.get(name, name), fontsize=9)
            if c == 0:
                ax.set_ylabel(case.title, fontsize=7)
            if name == case.elected:
                for spine in ax.spines.values():
                    spine.set_edgecolor("gold")
                    spine.set_linewidth(3.5)
    fig.suptitle(
        (title + "\n" if title else "") + "white dashed: reference, red: source model, "
        "green: adapted model, gold frame: elected modality",
        fontsize=8,
    )
    fig.tight_layout()
    return _save(fig, path, dpi=90)
