"""Do two benchmark results files hold the same runs: the same picks and the same metrics?

For checking that a change of the code leaves results alone: make the same runs with the old
commit (e.g. in a ``git worktree``) and the new one, on one machine, with the same seeds and
threads, then

    python scripts/compare_results.py OLD/results.jsonl NEW/results.jsonl [--tol 1e-6]

Runs are matched by (task, run, seed, fold, budget). For every pair: the queried cases (in
order), the test metrics (every ``test`` value, the curve points' too) and the per-case Dice.
Prints one line per run and the largest absolute difference; exit status 1 if any pick differs
or any metric differs by more than ``--tol``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def rows(path: Path) -> dict[tuple[Any, ...], dict[str, Any]]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out[(r["task"], r["run"], r["seed"], r.get("fold"), r.get("budget"))] = r
    return out


def metrics(r: dict[str, Any]) -> dict[str, float]:
    """Every number of a row's test results: ``test``, curve points, per-case Dice."""
    out = {f"test/{k}": float(v) for k, v in (r.get("test") or {}).items()}
    for p in r.get("curve") or []:
        out |= {f"curve{p['labels']}/{k}": float(v) for k, v in p["test"].items()}
    for c in r.get("per_case") or []:
        out |= {f"case/{c['case_id']}/{k}": float(v) for k, v in c.items() if k.startswith("dice")}
    return out


def difference(a: float, b: float) -> float:
    if math.isnan(a) and math.isnan(b):
        return 0.0
    return abs(a - b) if not (math.isnan(a) or math.isnan(b)) else math.inf


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--tol", type=float, default=1e-6)
    args = p.parse_args(argv)
    old, new = rows(args.old), rows(args.new)
    bad = 0
    for key in sorted(old.keys() & new.keys(), key=str):
        a, b = old[key], new[key]
        picks = a.get("queried_cases") == b.get("queried_cases")
        ma, mb = metrics(a), metrics(b)
        worst = max((difference(ma[k], mb[k]) for k in ma.keys() & mb.keys()), default=0.0)
        missing = sorted(ma.keys() ^ mb.keys())
        ok = picks and worst <= args.tol and not missing
        bad += not ok
        print(f"{'same' if ok else 'DIFF'}  {' '.join(map(str, key))}: picks "
              f"{'identical' if picks else 'differ'}, {len(ma)} metrics, largest difference "
              f"{worst:.2e}" + (f", {len(missing)} metrics in one file only" if missing else ""))
    for key in sorted(old.keys() ^ new.keys(), key=str):
        print(f"only in {'old' if key in old else 'new'}: {' '.join(map(str, key))}")
    print(f"{len(old.keys() & new.keys())} runs compared, {bad} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
