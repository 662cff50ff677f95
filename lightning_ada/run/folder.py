"""One run per run folder: a lock held for the run's life, recording its owner.

Two runs writing one folder would silently mix their checkpoints, query log and config. A run
takes :class:`RunFolderLock` on its folder when ``fit`` starts (the
:class:`~lightning_ada.run.guard.RunGuard` callback does it) and releases it when ``fit`` ends or
fails. The lock is an advisory ``flock`` on ``<run>/run.lock``, a file that records the owner's
pid, host, start time and command. The operating system drops the ``flock`` of a killed process,
so a run killed by ``kill -9`` or a power cut never blocks its resume; a live run is refused
with its owner named. Where the filesystem has no ``flock`` the owner's record decides: a dead
pid on this host is a stale lock; an owner on another host is trusted to be alive (delete the
file if you know it is not).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as L

from lightning_ada.errors import RunFolderBusy

#: name of the lock file inside the run folder
LOCK_NAME = "run.lock"


def run_folder(trainer: L.Trainer) -> Path:
    """The folder a run writes into: the trainer's log dir, else its ``default_root_dir``.

    A collective call under DDP (``trainer.log_dir`` broadcasts): every rank must reach it.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _describe(owner: dict[str, Any]) -> str:
    return (
        f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} since "
        f"{owner.get('started', '?')} ({owner.get('command', '?')})"
    )


class RunFolderLock:
    """Exclusive lock of a run folder for the life of one run.

    Args:
        folder: the run folder (created if needed; removed again on release if this lock created
            it and it is still empty).

    Raises:
        RunFolderBusy: from :meth:`acquire`, if another live run holds the folder.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._created_folder = False

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def owner(self) -> dict[str, Any]:
        """The owner recorded in the lock file ({} if none or unreadable)."""
        try:
            return dict(json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError):
            return {}

    def acquire(self) -> None:
        """Take the lock, replacing the record of a dead owner; refuse a live one."""
        if self.held:
            return
        self._created_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # retried only if the file is replaced between open and lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                locked = self._flock(fd)
            except BaseException:
                os.close(fd)
                raise
            if not locked:
                os.close(fd)
                self._refuse(self.owner())
            if not self._same_file(fd):
                os.close(fd)
                continue
            self._fd = fd
            self._write_owner()
            return
        raise RunFolderBusy(f"{self.path}: could not take the run-folder lock (it keeps changing)")

    def _flock(self, fd: int) -> bool:
        """``flock`` the file; where unsupported, decide from the recorded owner."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError:  # no flock on this filesystem: trust the record
            owner, here = self.owner(), socket.gethostname()
            if not owner or owner.get("pid") == os.getpid() and owner.get("host") == here:
                return True
            if owner.get("host") == here:
                return not _process_alive(int(owner.get("pid", -1)))
            return False

    def _same_file(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def _refuse(self, owner: dict[str, Any]) -> None:
        raise RunFolderBusy(
            f"run folder {self.folder} is in use by another run ({_describe(owner)}); wait for it "
            f"to end or give this run another folder (--trainer.default_root_dir); if that run is "
            f"no longer running, delete {self.path}"
        )

    def _write_owner(self) -> None:
        assert self._fd is not None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500],
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(self._fd)

    def release(self) -> None:
        """Drop the lock and its file (and the folder, if this lock made it and it is empty)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)  # closing drops the flock
        self._fd = None
        if self._created_folder:
            with contextlib.suppress(OSError):
                self.folder.rmdir()

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
