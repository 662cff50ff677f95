"""The one markdown table renderer of the benchmark, speed and demo scripts, and the cell formats
of the statistics (:mod:`ada_bench.stats` computes, this module writes)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ada_bench.stats import MeanStd


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table (no trailing newline); an empty table shows one ``(none)`` row.

    Raises:
        ValueError: a row whose length differs from the header's.
    """
    for i, r in enumerate(rows):
        if len(r) != len(header):
            raise ValueError(f"row {i} has {len(r)} cells, the header {len(header)}: {list(r)}")
    body = rows or [["(none)"] + [""] * (len(header) - 1)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in body])


def format_p(p: float) -> str:
    """p-value for a table: ``<0.001``, three significant digits, or ``–``."""
    if math.isnan(p):
        return "–"
    if p < 1e-3:
        return "<0.001"
    return f"{p:.3g}"


def format_mean_std(s: MeanStd, scale: float = 1.0, digits: int = 2) -> str:
    """``"mean ± std"`` of a :class:`ada_bench.stats.MeanStd` scaled (e.g. 100 for %); the mean
    alone for one value, ``"–"`` when empty."""
    if s.n == 0:
        return "–"
    if s.n < 2:
        return f"{s.mean * scale:.{digits}f}"
    return f"{s.mean * scale:.{digits}f} ± {s.std * scale:.{digits}f}"
