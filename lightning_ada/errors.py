"""Every error type of lightning_ada, on the ground floor: any module may raise or catch them.

Each error's message is one line that names the file, case or setting and what is wrong with
it; the CLI prints it as ``error: <message>`` and exits with status 2 (an
:class:`AnnotationPending` exits with status 3: the run is waiting, not broken).

Families:

- :class:`DataError`: bad input data (a file, a case, a label).
- :class:`CheckpointError`: a checkpoint that cannot be used here.
- :class:`ConfigError`: options that do not fit this run.
- :class:`RunError`: a run that cannot go on safely (non-finite values, a schedule that cannot
  spend its budget, a resume under another run definition, a busy run folder, a failed write).
- :class:`AnnotationPending`: not a fault: a queried case waits for its annotation.
"""

from __future__ import annotations

from collections.abc import Sequence


class DataError(ValueError):
    """Bad input data; the message names the file (or case) and what is wrong with it."""


class UnsafePathError(DataError):
    """A file name built from input data would resolve outside the folder it belongs to."""


class NoTrainingCase(ValueError):
    """No case to train the SinGAN harmoniser on yet (nothing labelled and no ``case_id`` configured)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here; the message names the file and the fault."""


class ConfigError(ValueError):
    """The options do not fit this run (budget, stage, a strategy's needs); one line."""


class RunError(Exception):
    """A run that cannot go on safely; the message says what is wrong and what to do."""


class NonFiniteError(RunError):
    """A loss or weight became NaN or infinite."""


class ScheduleError(RunError):
    """The query schedule cannot spend the budget within the run."""


class ChangedRunError(RunError):
    """A checkpoint is resumed under another run definition."""


class RunFolderBusy(RunError):
    """Another live run holds the run folder."""


class StorageError(RunError):
    """A file could not be written; the message names it and the free space of its folder.

    Attributes:
        errno: the ``errno`` of the underlying :class:`OSError` (e.g. ``errno.ENOSPC``).
    """

    def __init__(self, errno_: int | None, message: str) -> None:
        super().__init__(message)
        self.errno = errno_


class AnnotationPending(Exception):
    """Queried cases wait for their annotation; the run was checkpointed and stopped.

    Attributes:
        checkpoint: the checkpoint to resume from once the annotations are delivered.
        awaiting: what the oracle waits for, one line each (e.g. the label files to create).
        reason: what the oracle's last look found wrong (a delivered file it did not take, a
            labels folder it could not read), or ``""``.
    """

    def __init__(
        self, checkpoint: object, awaiting: Sequence[str], where: str = "", reason: str = ""
    ) -> None:
        self.checkpoint, self.awaiting, self.reason = checkpoint, list(awaiting), reason
        lines = "\n".join(f"  {a}" for a in self.awaiting)
        see = f"\n({where})" if where else ""
        last = f"\nnot taken yet: {reason}" if reason else ""
        super().__init__(
            f"annotation needed:\n{lines}{see}{last}\nthen continue the run with the same "
            f"command plus\n  --ckpt_path {checkpoint}"
        )
