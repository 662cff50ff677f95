"""Run one configured experiment in-process (fit and/or test) and collect its numbers.

Used by the demo and the benchmark scripts; the same configs run from the command line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_ada.main import main


def run_experiment(
    configs: Sequence[str | Path], overrides: Sequence[str] = (), fit: bool = True, test: bool = True
) -> dict[str, Any]:
    """Build the CLI objects from ``configs`` (+ ``--key value`` overrides), then fit and/or test.

    Returns:
        ``{"test": {metric: value}, "per_case": [...], "query_log": [...], "seconds": float,
        "log_dir": str}``; test metrics are keyed like ``dice_ET`` (no ``test/`` prefix).
    """
    args: list[str] = []
    for c in configs:
        args += ["-c", str(c)]
    argv, sys.argv = sys.argv, sys.argv[:1]  # the CLI reads ``args`` only, not our caller's argv
    try:
        cli = main([*args, *overrides], run=False)
    finally:
        sys.argv = argv
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    t0 = time.perf_counter()
    if fit:
        trainer.fit(model, datamodule=dm)
    fit_seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"fit_seconds": fit_seconds, "log_dir": trainer.log_dir}
    if test:
        model.test_metrics.keep_per_case = True
        trainer.test(model, datamodule=dm, verbose=False)
        out["test"] = {
            k.removeprefix("test/"): float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("test/")
        }
        out["per_case"] = getattr(model, "last_test_per_case", [])
    log = Path(trainer.log_dir or trainer.default_root_dir) / "query_log.json"
    out["query_log"] = json.loads(log.read_text()) if fit and log.exists() else []
    out["seconds"] = time.perf_counter() - t0
    return out
