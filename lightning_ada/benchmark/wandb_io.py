"""Weights & Biases glue: the logger override of a run, closing runs, reading offline runs.

Runs log through Lightning's ``WandbLogger`` given on the command line
(``--trainer.logger {"class_path": ..., "init_args": {...}}``); every ``init_args`` key that is
not a ``WandbLogger`` parameter (``group``, ``tags``, ``job_type``, ``mode``) is forwarded to
``wandb.init``. The mode is passed explicitly (default ``offline``) instead of ``offline=True``,
which would set ``WANDB_MODE`` for the whole process (ECOSYSTEM.md 2.5).

One process makes many runs, and ``WandbLogger`` reuses ``wandb.run`` when one is active, so
:func:`finish_run` must close each run before the next one starts.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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
    ) -> list[str]:
        """``["--trainer.logger", <json>]`` for one run writing under ``save_dir``."""
        init = {
            "project": self.project,
            "save_dir": str(save_dir),
            "name": name,
            "group": self.group,
            "tags": [str(t) for t in tags],
            "job_type": job_type,
            "mode": self.mode,
        }
        return ["--trainer.logger", json.dumps({"class_path": LOGGER_CLASS, "init_args": init})]


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


# ------------------------------------------------------------------ offline run files
_BLOCK = 32768
_HEADER = 7  # ":W&B" + magic (2 bytes) + version (1 byte)


def _records(path: Path) -> Iterator[bytes]:
    """Raw records of a ``.wandb`` file (LevelDB log format: 32 KiB blocks, 7-byte chunk headers).

    Checksums are not verified: this reads W&B's own files for inspection only.
    """
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log")
    pos, pending = _HEADER, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zero padding up to the block end
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            yield chunk
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            yield pending + chunk
            pending = b""


@dataclass
class OfflineRun:
    """What an offline run recorded.

    Attributes:
        path: the ``.wandb`` file.
        name, group, tags, job_type: run attributes.
        summary: final summary values (JSON-decoded).
        history: the logged history rows.
        config: the run config (top-level keys, JSON-decoded values).
        finished: the file holds the run's exit record.
    """

    path: Path
    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    job_type: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    finished: bool = False


def _item_key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(path: str | Path, timeout: float = 30.0) -> OfflineRun:
    """Parse an offline run: a ``run-*.wandb`` file, its run folder, or a folder holding runs
    (the newest ``offline-run-*`` under it is read). Nested keys are joined with ``/``.

    W&B's service may still be writing the file when ``wandb.finish()`` returns; the file is
    re-read until it holds the exit record or ``timeout`` seconds have passed.

    Raises:
        FileNotFoundError: no ``.wandb`` file found.
    """
    import time

    p = Path(path)
    if p.is_dir():
        files = sorted(p.rglob("run-*.wandb"), key=lambda f: f.stat().st_mtime)
        if not files:
            raise FileNotFoundError(f"no run-*.wandb under {p}")
        p = files[-1]
    deadline = time.monotonic() + timeout
    while True:
        out = _parse(p)
        if out.finished or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _parse(p: Path) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2 as pb

    out = OfflineRun(p)
    for raw in _records(p):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out.name, out.group = rec.run.display_name, rec.run.run_group
            out.tags, out.job_type = list(rec.run.tags), rec.run.job_type
        elif kind == "summary":
            for it in rec.summary.update:
                out.summary[_item_key(it)] = json.loads(it.value_json)
        elif kind == "history":
            out.history.append(
                {_item_key(it): json.loads(it.value_json) for it in rec.history.item}
            )
        elif kind == "config":
            for it in rec.config.update:
                out.config[_item_key(it)] = json.loads(it.value_json)
        elif kind == "exit":
            out.finished = True
    return out


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
        tables: name -> :class:`lightning_ada.benchmark.tables.Table`.
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
