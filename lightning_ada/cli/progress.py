"""Progress bars that say how far a run is and how long the rest takes.

Lightning's bar shows ``Epoch 5:`` and the time left in that epoch only. :class:`RunProgressBar`
shows ``Epoch 6/24`` (1-based, out of ``max_epochs``) and the time the rest of the fit should take
at the pace measured so far (scoring rounds and validation included, since they fall between
epochs): ``Epoch 6/24 (fit: 1:02 done, ~3:05 left)``.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as L
from jsonargparse import Namespace
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf

_PROGRESS_BARS = ("TQDMProgressBar", "RichProgressBar", "RunProgressBar")


def format_seconds(seconds: float) -> str:
    """``h:mm:ss`` or ``m:ss``."""
    s = int(round(max(seconds, 0.0)))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def fit_eta(elapsed: float, epochs_done: int, epochs_left: int) -> float | None:
    """Seconds the remaining epochs take at the mean pace so far (None before one epoch ends)."""
    if epochs_done <= 0:
        return None
    return elapsed / epochs_done * max(epochs_left, 0)


class RunProgressBar(TQDMProgressBar):
    """TQDM bar whose epoch bar reads ``Epoch e/E (fit: done, ~left)``.

    Args:
        refresh_rate: batches between two refreshes (as :class:`TQDMProgressBar`).
        leave: keep one finished bar per epoch on screen.
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self._fit_start: float | None = None
        self._first_epoch = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._fit_start, self._first_epoch = time.perf_counter(), trainer.current_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        # TQDMProgressBar's own, with our description (no flash of the plain "Epoch 5")
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset(total=convert_inf(self.total_train_batches))
        self.train_progress_bar.initial = 0
        self.train_progress_bar.set_description(self.describe(trainer))

    def describe(self, trainer: L.Trainer) -> str:
        """``Epoch e/E`` plus the fit's elapsed and remaining time once one epoch has ended."""
        epoch, total = trainer.current_epoch, trainer.max_epochs
        if total is None or total < 0:
            return f"Epoch {epoch + 1}"
        text = f"Epoch {epoch + 1}/{total}"
        if self._fit_start is None:
            return text
        elapsed = time.perf_counter() - self._fit_start
        left = fit_eta(elapsed, epoch - self._first_epoch, total - epoch)
        if left is None:
            return text
        return f"{text} (fit: {format_seconds(elapsed)} done, ~{format_seconds(left)} left)"


def add_progress_bar(trainer: Namespace) -> None:
    """Put a :class:`RunProgressBar` in a trainer config's callbacks (in place).

    Nothing changes when the bar is disabled (``enable_progress_bar: false``) or the config
    already names a progress bar.
    """
    if trainer is None or trainer.get("enable_progress_bar") is False:
        return
    callbacks = trainer.get("callbacks") or []
    if not isinstance(callbacks, list):
        callbacks = [callbacks]
    for cb in callbacks:
        name = cb.get("class_path", "") if isinstance(cb, Namespace) else type(cb).__name__
        if str(name).endswith(_PROGRESS_BARS):
            return
    bar = Namespace(
        class_path=f"{__name__}.RunProgressBar", init_args=Namespace(refresh_rate=1, leave=False)
    )
    trainer.callbacks = [*callbacks, bar]
