"""Query-schedule checks: refuse at setup a schedule that cannot spend the budget, and record a
run that still ended short of it.

- :func:`check_schedule` / :func:`check_step_schedule` refuse, at setup, a query schedule (by
  epochs or by optimiser steps) that cannot spend ``active.budget`` within the run;
- :func:`shortfall_notes` reports a run that still ended short (e.g. stopped early);
- :func:`nothing_to_train_note` stops a fit whose every query was refused.

They read the trainer's length (epochs, steps, early stopping) and nothing of the callback: the
callback hands them its budget, stride and schedule.
"""

from __future__ import annotations

import copy
import math
import sys
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.utilities import rank_zero_only

from lightning_ada.errors import ScheduleError


def steps_per_epoch(trainer: L.Trainer) -> int | None:
    """Optimiser steps per training epoch from the datamodule's loader length, or None if unknown.

    Accounts for ``limit_train_batches`` and ``accumulate_grad_batches``; builds the training
    loader object (no batch is fetched).
    """
    dm = trainer.datamodule
    try:
        batches = len(dm.train_dataloader())  # type: ignore[union-attr]
    except (AttributeError, TypeError, NotImplementedError, RuntimeError):
        return None
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        batches = min(batches, limit)
    elif limit is not None:
        batches = int(batches * limit)
    return math.ceil(batches / max(1, trainer.accumulate_grad_batches)) if batches else 0


def epochs_in_run(trainer: L.Trainer) -> float:
    """How many epochs the fit will start (``inf`` if unbounded), ``max_steps`` included.

    With ``max_steps`` the run ends inside epoch ``ceil(max_steps / steps_per_epoch) - 1``; once
    a callback has asked the trainer to stop (early stopping), the current epoch is the last. A
    query after the last epoch would label a case no epoch trains on.
    """
    epochs: float = trainer.max_epochs if trainer.max_epochs not in (None, -1) else math.inf
    if trainer.max_steps not in (None, -1):
        per_epoch = steps_per_epoch(trainer)
        if per_epoch:
            epochs = min(epochs, math.ceil(trainer.max_steps / per_epoch))
        elif per_epoch == 0:
            epochs = 0
    min_epochs = trainer.fit_loop.min_epochs or 0
    if trainer.should_stop and trainer.current_epoch + 1 >= min_epochs:  # e.g. early stopping
        epochs = min(epochs, trainer.current_epoch + 1)
    return epochs


def early_stopping_now(trainer: L.Trainer) -> bool:
    """Whether an ``EarlyStopping`` callback that checks at the end of the training epoch will
    stop the fit at the end of the current one.

    Lightning calls ``EarlyStopping.on_train_epoch_end`` after every other callback's (the
    monitoring callbacks last): a query made in the active callback's own hook would be made
    in the epoch the run then stops at, and no epoch would train on it. Each such callback is
    asked on a copy (its patience counters untouched, ``trainer.should_stop`` restored) with the
    metrics it will see; a callback that checks after validation instead has decided already
    (``trainer.should_stop``, read by :func:`epochs_in_run`). Call it from
    ``on_train_epoch_end`` on every rank (the decision is reduced over ranks).
    """
    loop = trainer.fit_loop
    if (loop.min_epochs or 0) > trainer.current_epoch + 1 or (loop.min_steps or 0) > trainer.global_step:
        return False  # Lightning does not stop before min_epochs / min_steps
    metrics = trainer.callback_metrics
    for callback in trainer.early_stopping_callbacks:
        if not getattr(callback, "_check_on_train_epoch_end", False) or callback.monitor not in metrics:
            continue
        probe = copy.deepcopy(callback)
        probe.verbose = False
        before = trainer.should_stop
        try:
            probe._run_early_stopping_check(trainer)
            stops = bool(trainer.should_stop)
        finally:
            trainer.should_stop = before
        if stops:
            return True
    return False


def query_slots(trainer: L.Trainer, stride: int, schedule: str) -> float:
    """Query rounds the schedule makes: one before epoch 0, then after every ``stride`` epochs
    while another epoch follows (``inf`` for ``one_off`` strategies, which spend the whole budget
    before epoch 0)."""
    if schedule == "one_off":
        return math.inf
    epochs = epochs_in_run(trainer)
    if epochs == math.inf:
        return math.inf
    return 1 + max(0, int(epochs) - 1) // stride


def check_schedule(trainer: L.Trainer, budget: int, stride: int, schedule: str) -> None:
    """Refuse a run whose query schedule cannot spend ``budget`` (one case per round).

    Raises:
        ScheduleError: naming the budget, the stride and the epochs (or ``max_steps``) and the
            smallest change that fits.
    """
    if budget <= 0 or trainer.fast_dev_run:  # a smoke test of the config, not a run
        return
    slots = query_slots(trainer, stride, schedule)
    if slots >= budget:
        return
    epochs = int(epochs_in_run(trainer))
    length = f"trainer.max_epochs={trainer.max_epochs}"
    if trainer.max_steps not in (None, -1) and epochs < (trainer.max_epochs or math.inf):
        length = (
            f"trainer.max_steps={trainer.max_steps} at {steps_per_epoch(trainer)} optimiser steps "
            f"per epoch ({epochs} epochs)"
        )
    need_epochs = (budget - 1) * stride + 1
    fits_stride = (epochs - 1) // (budget - 1) if budget > 1 and epochs > 1 else 0
    fixes = [f"at least {need_epochs} epochs"]
    if fits_stride >= 1:
        fixes.append(f"active.stride={fits_stride}")
    fixes.append(f"active.budget={int(slots)}")
    raise ScheduleError(
        f"the query schedule cannot spend active.budget={budget}: one case is queried before "
        f"epoch 0 and then after every active.stride={stride} epochs while another epoch follows, "
        f"and {length} leaves room for {int(slots)} {'query' if slots == 1 else 'queries'}; use "
        f"{' or '.join(fixes)}"
    )


def steps_in_run(trainer: L.Trainer) -> float:
    """How many optimiser steps the fit will make: ``max_steps`` and ``max_epochs`` x
    :func:`steps_per_epoch`, whichever ends it first (``inf`` if unbounded or unknown)."""
    total: float = math.inf
    if trainer.max_steps not in (None, -1):
        total = trainer.max_steps
    if trainer.max_epochs not in (None, -1):
        per_epoch = steps_per_epoch(trainer)
        if per_epoch is not None:
            total = min(total, trainer.max_epochs * per_epoch)
    return total


def check_step_schedule(trainer: L.Trainer, budget: int, stride_steps: int, schedule: str) -> None:
    """Refuse a run whose step schedule (``active.stride_steps``) cannot spend ``budget``: one
    case before the first step, then one after every ``stride_steps``-th step while another
    step follows.

    Raises:
        ScheduleError: naming the budget, the stride and the run's steps, and the smallest change
            that fits.
    """
    if budget <= 0 or trainer.fast_dev_run or schedule == "one_off":
        return
    total = steps_in_run(trainer)
    if total == math.inf:
        return
    steps = int(total)
    slots = 1 + max(0, steps - 1) // stride_steps
    if slots >= budget:
        return
    fits = (steps - 1) // (budget - 1) if budget > 1 and steps > 1 else 0
    fixes = [f"at least {(budget - 1) * stride_steps + 1} optimiser steps"]
    if fits >= 1:
        fixes.append(f"active.stride_steps={fits}")
    fixes.append(f"active.budget={slots}")
    raise ScheduleError(
        f"the query schedule cannot spend active.budget={budget}: one case is queried before the "
        f"first step and then after every active.stride_steps={stride_steps} optimiser steps while "
        f"another step follows, and the run makes {steps} steps (trainer.max_epochs="
        f"{trainer.max_epochs}, trainer.max_steps={trainer.max_steps}), room for {slots} "
        f"{'query' if slots == 1 else 'queries'}; use {' or '.join(fixes)}"
    )


@rank_zero_only
def _say(line: str) -> None:
    """Print one line on stderr (rank 0 only)."""
    print(line, file=sys.stderr, flush=True)


def shortfall_notes(trainer: L.Trainer, budget: int, n_queried: int) -> list[dict[str, Any]]:
    """At the end of ``fit``: if fewer than ``budget`` cases were labeled, warn and return the
    query-log entry that records it (else ``[]``)."""
    if budget <= 0 or n_queried >= budget or trainer.fast_dev_run:
        return []
    reason = "stopped early (trainer.should_stop)" if trainer.should_stop else "the schedule ended"
    note = {
        "event": "ended_short",
        "budget": budget,
        "n_queried": n_queried,
        "epochs_trained": trainer.current_epoch,
        "global_step": trainer.global_step,
        "reason": reason,
    }
    # a plain line on stderr, not a Python warning: warnings are shown once per place and can be
    # filtered away, and a user must see every run that ended short of its budget
    _say(
        f"warning: the run ended with {n_queried} of active.budget={budget} labels: {reason} after "
        f"{trainer.current_epoch} epochs ({trainer.global_step} steps); recorded in the query log "
        "(resume with --ckpt_path last and more epochs to spend the rest)"
    )
    return [note]


def nothing_to_train_note(trainer: L.Trainer, refused: list[str]) -> dict[str, Any]:
    """Stop a fit whose every query was refused (out of distribution) before any label arrived:
    warn on stderr, set ``trainer.should_stop`` (no epoch runs: the model stays the source
    model, and is tested as it is; the caller saves it as ``last.ckpt``) and return the
    query-log entry that records it."""
    trainer.should_stop = True
    _say(
        f"warning: the oracle refused every query ({len(refused)}: {', '.join(refused)}), so "
        "there is no labelled case to train on: training skipped, the model stays the source "
        "model; recorded in the query log"
    )
    return {"event": "nothing_to_train", "refused": list(refused),
            "reason": "every query refused, budget spent"}


