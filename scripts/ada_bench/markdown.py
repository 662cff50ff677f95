"""The one markdown table renderer of the benchmark, speed and demo scripts."""

from __future__ import annotations

from collections.abc import Sequence


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
