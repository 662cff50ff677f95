"""Collapse outside the target pool: which labelled pool cases go with adapted models
that forget the source domain or other institutions, per method how often it happens, and a
figure of the most (and least) harmful pool case's images and label.

    python scripts/collapse.py --out runs/bench_cbica \
        --roots ../shared/data/brats18 ../shared/data/brats18_cbica

Reads ``<out>/results.jsonl`` (a benchmark whose runs scored extra test splits), writes
``collapse.md``, ``collapse_*.csv`` and ``collapse_*.png`` into ``--out`` (or ``--to``).
Definitions: scripts/ada_bench/collapse.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ada_bench.collapse import write_collapse
from ada_bench.loop import last_rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="benchmark folder holding results.jsonl")
    p.add_argument("--to", help="where to write (default: --out)")
    p.add_argument("--roots", nargs="*", default=[], help="data roots of the pool cases (figures)")
    args = p.parse_args(argv)
    results = Path(args.out) / "results.jsonl"
    if not results.is_file():
        p.error(f"{results}: no such file (run the benchmark first)")
    rows = last_rows(results)
    text, figures = write_collapse(rows, args.to or args.out, args.roots)
    print(text)
    print("wrote", ", ".join(str(f) for f in figures) or "no figure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
