"""Weights & Biases glue: the logger of a run, closing runs, the report run.

Runs log through Lightning's ``WandbLogger`` set in the run's config
(``trainer.logger: {"class_path": ..., "init_args": {...}}``); every ``init_args`` key that is
not a ``WandbLogger`` parameter (``group``, ``tags``, ``job_type``, ``mode``) is forwarded to
``wandb.init``. The mode is passed explicitly (default ``offline``) instead of ``offline=True``,
which would set ``WANDB_MODE`` for the whole process (ECOSYSTEM.md 2.5).

One process makes many runs, and ``WandbLogger`` reuses ``wandb.run`` when one is active, so
:func:`finish_run` must close each run before the next one starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOGGER_CLASS = "lightning.pytorch.loggers.WandbLogger"


@dataclass(frozen=True)
class WandbSettings:
    """Where and how runs are tracked.

    Attributes:
        project: W&B project.
        group: group of every run of one benchmark (the benchmark id).
        mode: ``offline`` (files only; ``wandb sync`` later), ``online`` or ``disabled``.
    """

    project: str = "lightning_ada"
    group: str = "benchmark"
    mode: str = "offline"

    def logger_override(
        self, save_dir: str | Path, name: str, tags: Sequence[str], job_type: str = "adapt"
    ) -> dict[str, Any]:
        """``{"trainer.logger": <WandbLogger class_path / init_args>}`` for one run writing under
        ``save_dir``."""
        init = {
            "project": self.project,
            "save_dir": str(save_dir),
            "name": name,
            "group": self.group,
            "tags": [str(t) for t in tags],
            "job_type": job_type,
            "mode": self.mode,
        }
        return {"trainer.logger": {"class_path": LOGGER_CLASS, "init_args": init}}


def finish_run() -> dict[str, str] | None:
    """Finish the active W&B run (if any); returns its ``id`` and local ``dir``."""
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a dependency
        return None
    run = wandb.run
    if run is None:
        return None
    info = {"id": str(run.id), "dir": str(Path(run.dir).parent)}
    wandb.finish()
    return info


# ------------------------------------------------------------------ the report run
def log_report(
    settings: WandbSettings,
    save_dir: str | Path,
    tables: Mapping[str, Any],
    images: Sequence[str | Path] = (),
    name: str = "report",
) -> dict[str, str] | None:
    """One ``summary`` run of the benchmark group holding every table (``wandb.Table``) and figure.

    Args:
        settings: project / group / mode.
        save_dir: folder of the W&B files of this run.
        tables: name -> :class:`ada_bench.tables.Table`.
        images: PNG files logged as ``wandb.Image`` under their file stem.
        name: run name.

    Returns:
        The run's ``id`` and ``dir`` (see :func:`finish_run`).
    """
    import wandb

    finish_run()
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    wandb.init(
        project=settings.project,
        group=settings.group,
        job_type="summary",
        name=name,
        dir=str(save_dir),
        mode=settings.mode,
        tags=["summary"],
    )
    payload: dict[str, Any] = {}
    for key, table in tables.items():
        columns = list(table.csv_header)
        data = [[_cell(v) for v in row] for row in table.csv_rows]
        payload[f"tables/{key}"] = wandb.Table(columns=columns, data=data)
    for img in images:
        payload[f"figures/{Path(img).stem}"] = wandb.Image(str(img))
    wandb.log(payload)
    return finish_run()


def _cell(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    return v
