"""Checkpoints written atomically in their own folder, and write failures named in one line.

Lightning's own save goes through an ``fsspec`` transaction whose temporary file lives in the
system's temporary folder; when that is another filesystem, the final move is a copy, and a full
disk leaves a truncated checkpoint under its final name. :class:`AtomicCheckpointIO` writes the
serialised checkpoint to a temporary file *next to* its destination, ``fsync`` s it and renames
it over the destination (``os.replace``, atomic on POSIX within one filesystem): an interruption
or a full disk leaves the previous file, never a partial one. The CLI installs it by default.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lightning_ada.errors import CheckpointError, NonFiniteError, StorageError
from lightning_ada.io import atomic_path
from lightning_ada.weights import non_finite_weights

#: names of :func:`lightning_ada.io.atomic_path`'s temporary files (``.<name>.<pid>.<hex>.tmp...``)
_TEMPORARY = re.compile(r"^\..+\.\d+\.[0-9a-f]{12}\.tmp[^/]*$")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed atomic write (:func:`lightning_ada.io.atomic_path`)
    left under ``folder``.

    Only safe while no other process writes there (the run-folder lock is held).

    Returns:
        The files removed.
    """
    stale = [p for p in Path(folder).rglob(".*.tmp*") if p.is_file() and _TEMPORARY.match(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def free_space(folder: str | Path) -> str:
    """Free space of the filesystem holding ``folder`` (or its nearest existing parent).

    Returns:
        e.g. ``1.4 MB``, or ``unknown``.
    """
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if free < 1024 or unit == "GB":
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1024
    return "unknown"  # pragma: no cover


def storage_error(path: str | Path, error: OSError) -> StorageError:
    """One-line :class:`StorageError` for a failed write of ``path``."""
    path = Path(path)
    reason = error.strerror or str(error)
    return StorageError(
        error.errno,
        f"cannot write {path}: {reason}; {free_space(path.parent)} free in {path.parent}; "
        "the previous file there is unchanged (free some space, then resume with --ckpt_path)",
    )


#: errno values of a storage that refused a write (full disk, quota, read-only, failing device)
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


def as_storage_error(error: OSError) -> StorageError | None:
    """The one-line :class:`StorageError` for an :class:`OSError` of the storage, else None.

    For writers outside this module (LightningCLI's ``config.yaml``, loggers): names the file
    when the system did (``error.filename``).
    """
    if error.errno not in STORAGE_ERRNOS:
        return None
    if error.filename:
        return storage_error(error.filename, error)
    reason = error.strerror or str(error)
    here = Path.cwd()
    return StorageError(error.errno, f"a write failed: {reason}; {free_space(here)} free in {here}")


@contextmanager
def write_errors_named(path: str | Path) -> Iterator[None]:
    """Turn an :class:`OSError` raised while writing ``path`` into a :class:`StorageError`."""
    try:
        yield
    except StorageError:
        raise
    except OSError as e:
        raise storage_error(path, e) from e


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through a temporary file in its folder and an atomic rename.

    :func:`lightning_ada.io.atomic_path` does the temporary file, ``fsync`` and rename; this
    adds the one-line error.

    Args:
        path: the destination (its folder is created if needed).
        write: writes the content into the open binary file it is given.

    Raises:
        StorageError: the write failed (full disk, quota, read-only...); the temporary file is
            removed and ``path`` is left as it was.
    """
    path = Path(path)
    # the temporary name ends in .tmp, never in .ckpt: Lightning's ``last`` lookup must not see it
    with write_errors_named(path), atomic_path(path, suffix="") as tmp:
        with tmp.open("wb") as f:
            write(f)
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes local checkpoints atomically and refuses broken ones.

    Every local checkpoint (``ModelCheckpoint``'s files, ``last.ckpt``, the file oracle's
    ``pending.ckpt``) is serialised in memory, written to a temporary file in the destination's
    folder and renamed over it (:func:`write_atomic`). Remote paths (``s3://``...) keep
    Lightning's own transaction. A checkpoint whose weights are not finite is never written, so
    the last good one survives a diverged run. Loading names the file of an unreadable checkpoint.

    Raises:
        StorageError: a write failed (the message names the file and the free space).
        NonFiniteError: the weights to save hold NaN or infinity.
        CheckpointError: a checkpoint to load is missing or unreadable.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        bad = non_finite_weights(checkpoint.get("state_dict", {}))
        if bad:
            raise NonFiniteError(
                f"refused to write {path}: weights {bad[:3]} hold NaN or infinity; the previous "
                "checkpoints are unchanged"
            )
        checkpoint = {**checkpoint, SAVED_AS: {"path": str(path), "resolved": str(Path(path).resolve())}}
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomic(path, lambda f: f.write(buffer.getbuffer()))

    def load_checkpoint(
        self, path: str | Path, map_location: Any | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if "://" not in str(path) and not Path(path).is_file():
            raise CheckpointError(f"{path}: checkpoint file not found")
        try:
            checkpoint = super().load_checkpoint(path, map_location, weights_only)
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
            raise CheckpointError(
                f"{path}: not a readable checkpoint ({type(e).__name__}: {e})"
            ) from e
        return moved_run_folder(checkpoint, path) if "://" not in str(path) else checkpoint


#: the key of a checkpoint recording where it was written (``path`` as given, ``resolved``)
SAVED_AS = "lightning_ada_saved_as"


def _run_folder_of(path: str | Path) -> Path | None:
    """The run folder of a checkpoint ``<run>/checkpoints/<name>.ckpt`` (None otherwise)."""
    path = Path(path)
    return path.parent.parent if path.parent.name == "checkpoints" else None


def moved_run_folder(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """A checkpoint loaded from another run folder than the one it was written in (a run folder
    copied to another path or machine), its paths into the old folder moved to the new one.

    Every string of the checkpoint that names a file under the folder it was written in (labels
    the annotator delivered there, the reoriented copies, pseudo-label files, the checkpoint
    folder of ``ModelCheckpoint``) is rewritten to the same file under the folder it is loaded
    from, so that the resumed run reads its own copies; their contents are checked as ever (the
    pool state's fingerprints). A path whose new place does not exist while its old one still
    does (only the checkpoint file was copied) is left as it is. A checkpoint written before
    this was recorded is left as it is.
    """
    saved = checkpoint.get(SAVED_AS)
    if not isinstance(saved, dict):
        return checkpoint
    pairs = []
    for old, new in ((saved.get("resolved"), Path(path).resolve()), (saved.get("path"), Path(path))):
        old_run, new_run = (_run_folder_of(old) if old else None), _run_folder_of(new)
        if old_run is not None and new_run is not None and str(old_run) != str(new_run):
            pairs.append((str(old_run), str(new_run)))
    if not pairs:
        return checkpoint

    def move(value: Any) -> Any:
        if isinstance(value, str):
            for old, new in pairs:
                if value == old or value.startswith(old + "/"):
                    moved = new + value[len(old):]
                    if os.path.exists(moved) or not os.path.exists(value):
                        return moved
            return value
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v) for v in value]
        if isinstance(value, tuple):
            return tuple(move(v) for v in value)
        return value

    return {k: (v if k == "state_dict" else move(v)) for k, v in checkpoint.items()}


def check_ckpt_path(config: Any) -> None:
    """Refuse an unreadable ``--ckpt_path`` file naming it (LightningCLI reads it unguarded).

    Args:
        config: the parsed config of the subcommand (``ckpt_path`` may be absent, ``last``...).

    Raises:
        CheckpointError: the file exists but is not a readable checkpoint.
    """
    path = config.get("ckpt_path") if config is not None else None
    if not path or not Path(path).is_file():
        return
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any failure means "not a readable checkpoint"
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
