"""Where evaluation and prediction write: never into the records of a training run.

A training run owns its folder (``metrics.csv``, ``config.yaml``, ``hparams.yaml``,
``checkpoints/``, ``query_log.json``). ``lightning-ada validate|test|predict`` on that run's
config would, left to Lightning, log into the same folder: the CSV logger deletes the existing
``metrics.csv`` and the config is overwritten. Here every evaluation gets a fresh folder instead::

    <run>/<subcommand>/<YYYYmmdd-HHMMSS>[-<n>]/   metrics.csv, hparams.yaml, config.yaml,
                                                  predictions/ (unless --writer.output_dir)

where ``<run>`` is the run folder of ``--ckpt_path`` (the folder that holds its ``checkpoints/``)
or, without a checkpoint, the log folder the config names. ``--eval_dir DIR`` chooses the folder
instead (it must not be a folder that already holds files).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

#: subcommands that read a model and must not write into a training run's folder
EVALUATION_SUBCOMMANDS = ("validate", "test", "predict")
#: set by the first process to the folder it chose, so DDP processes started from it agree
ENV_VAR = "LIGHTNING_ADA_EVAL_DIR"
#: loggers whose log folder is ``save_dir/name/version``
_FOLDER_LOGGERS = ("CSVLogger", "TensorBoardLogger")


def add_evaluation_arguments(parser: Any) -> None:
    """Add ``--eval_dir`` (the folder of a validate / test / predict run) to a CLI parser."""
    parser.add_argument(
        "--eval_dir",
        type=str | None,
        default=None,
        help="validate/test/predict: folder for the metrics, config and predictions "
        "(default: <run>/<subcommand>/<timestamp>, never the training run's own files)",
    )


def evaluation_dir(run_dir: str | Path, kind: str, stamp: str | None = None) -> Path:
    """A new, not yet existing folder ``<run_dir>/<kind>/<timestamp>`` (``-1``, ``-2``... if taken).

    Args:
        run_dir: the training run's folder.
        kind: ``test``, ``predict``, ``validate`` or another evaluation name.
        stamp: the timestamp (default: the local time as ``YYYYmmdd-HHMMSS``).
    """
    base = Path(run_dir) / kind / (stamp or time.strftime("%Y%m%d-%H%M%S"))
    out, n = base, 0
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def logger_overrides(folder: str | Path) -> list[str]:
    """CLI arguments that make a run log exactly into ``folder`` (a CSV logger, no version dir)."""
    folder = Path(folder)
    logger = (
        '{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": '
        f'{{"save_dir": "{folder.parent.as_posix()}", "name": "{folder.name}", "version": ""}}}}'
    )
    return ["--trainer.default_root_dir", str(folder), "--trainer.logger", logger]


def configured_run_dir(trainer: Namespace) -> Path:
    """The log folder a ``trainer`` config section names (where a fit with it writes)."""
    root = Path(trainer.get("default_root_dir") or "lightning_logs")
    logger = trainer.get("logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    class_path = str(logger.get("class_path", "")) if isinstance(logger, Namespace) else ""
    if isinstance(logger, Namespace) and class_path.endswith(_FOLDER_LOGGERS):
        args = logger.get("init_args") or Namespace()
        save_dir = args.get("save_dir") or root
        name, version = args.get("name"), args.get("version")
        path = Path(save_dir) / (name or "")
        if isinstance(version, str) and version:
            path = path / version
        return path
    return root


def checkpoint_run_dir(ckpt_path: str | None) -> Path | None:
    """The run folder of a checkpoint file ``<run>/checkpoints/<name>.ckpt`` (None otherwise)."""
    if not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry"):
        return None
    path = Path(ckpt_path)
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def _resolve_last(config: Namespace, run: Path) -> None:
    """Turn ``--ckpt_path last`` into the run's newest ``last*.ckpt`` (in place).

    Lightning looks for ``last`` in the checkpoint folder under the *current* log folder, which
    for an evaluation is its new folder; the training run's checkpoints are where it must look.
    """
    folders = [run / "checkpoints"]
    callbacks = config.trainer.get("callbacks") or []
    for cb in callbacks if isinstance(callbacks, list) else [callbacks]:
        if isinstance(cb, Namespace) and str(cb.get("class_path", "")).endswith("ModelCheckpoint"):
            dirpath = (cb.get("init_args") or Namespace()).get("dirpath")
            if dirpath:
                folders.insert(0, Path(dirpath))
    found = [p for folder in folders if folder.is_dir() for p in folder.glob("last*.ckpt")]
    if found:
        config.ckpt_path = str(max(found, key=lambda p: p.stat().st_mtime))


def _inherited_folder() -> str | None:
    """The folder chosen by the process that launched this DDP worker (None in the first one)."""
    value = os.environ.get(ENV_VAR, "")
    pid, _, folder = value.partition(":")
    if folder and pid != str(os.getpid()) and os.environ.get("LOCAL_RANK", "0") != "0":
        return folder
    return None


def redirect_evaluation(config: Namespace, subcommand: str | None) -> Path | None:
    """Point a validate / test / predict config at its own folder (in place); fit is untouched.

    Sets ``trainer.default_root_dir`` and the logger's folder to the evaluation folder (module
    doc), so the metrics, ``hparams.yaml``, the saved ``config.yaml`` and default prediction
    folder go there. Call it from ``LightningCLI.before_instantiate_classes`` with
    ``self.config.get(self.subcommand)`` and ``self.subcommand``.

    Returns:
        The evaluation folder, or None when nothing was redirected (fit, or no subcommand).

    Raises:
        ValueError: ``--eval_dir`` names a folder that already holds files.
    """
    if subcommand not in EVALUATION_SUBCOMMANDS or config is None:
        return None
    if config.get("ckpt_path") == "last":
        _resolve_last(config, configured_run_dir(config.trainer))
    run = checkpoint_run_dir(config.get("ckpt_path")) or configured_run_dir(config.trainer)
    chosen, inherited = config.get("eval_dir"), _inherited_folder()
    if inherited:  # a process launched by the first one (DDP): the same folder
        folder = Path(inherited)
    elif chosen:
        folder = Path(chosen)
        if folder.is_dir() and any(folder.iterdir()):
            raise ValueError(
                f"--eval_dir {folder}: the folder already holds files; give a new or empty folder "
                "(evaluations never write over existing results)"
            )
    else:
        folder = evaluation_dir(run, subcommand)
    # the checkpoint's ModelCheckpoint state names the training run's folder, not this one;
    # nothing is saved outside fit, so Lightning's "dirpath has changed" note is only noise
    warnings.filterwarnings("ignore", message="The dirpath has changed from")
    trainer = config.trainer
    trainer.default_root_dir = str(folder)
    logger = trainer.get("logger")
    loggers = logger if isinstance(logger, list) else [logger]
    for one in loggers:
        if not isinstance(one, Namespace) or not one.get("init_args"):
            continue  # True / None: Lightning's default logger under default_root_dir
        args = one.init_args
        if str(one.get("class_path", "")).endswith(_FOLDER_LOGGERS):
            args.save_dir, args.name, args.version = str(folder.parent), folder.name, ""
        elif "save_dir" in args:
            args.save_dir = str(folder)
    if not inherited:
        os.environ[ENV_VAR] = f"{os.getpid()}:{folder}"
        print(f"{subcommand}: writing into {folder} (the training run's files are not touched)")
    return folder


def follow_root_dir(trainer: Namespace | None) -> None:
    """Point a configured logger that names no folder of its own at ``trainer.default_root_dir``
    (in place): a logger whose ``save_dir`` is unset or the current folder (``.``, W&B's
    default) writes into the run folder, so ``--trainer.default_root_dir`` moves everything a
    run writes; an explicit ``save_dir`` is kept."""
    if trainer is None:
        return
    logger = trainer.get("logger")
    root = trainer.get("default_root_dir") or os.getcwd()
    for one in logger if isinstance(logger, list) else [logger]:
        if not isinstance(one, Namespace) or not one.get("init_args"):
            continue
        args = one.init_args
        if "save_dir" in args and args.get("save_dir") in (None, "", "."):
            args.save_dir = str(root)
