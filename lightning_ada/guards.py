"""Run guards: stop a run that has gone wrong, or would, with one clear line.

- :class:`RunGuard` (a callback the CLI always installs, section ``guard``) holds the run-folder
  lock for the life of ``fit``, stops at the first non-finite loss or weight naming the cases of
  the batch (before the broken weights can reach a checkpoint), and records the run definition in
  every checkpoint.
- :func:`check_schedule` refuses, at setup, a query schedule that cannot spend the budget;
  :func:`shortfall_notes` reports a run that still ended short (e.g. stopped early).
- :func:`check_resume` refuses to resume a checkpoint under a changed run definition (strategy,
  self-training, budget, pool, modalities, labels, model shape) unless
  ``--guard.resume_changed true``, which is then recorded in the query log (:func:`resume_notes`).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn


class RunError(Exception):
    """A run that cannot go on safely; the message says what is wrong and what to do."""


class NonFiniteError(RunError):
    """A loss or weight became NaN or infinite."""


class ScheduleError(RunError):
    """The query schedule cannot spend the budget within the run."""


class ChangedRunError(RunError):
    """A checkpoint is resumed under another run definition."""


# ---------------------------------------------------------------------------------- schedule
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


# ---------------------------------------------------------------------------------- resume
def _active(trainer: L.Trainer) -> Any:
    from lightning_ada.active.callback import ActiveQueryCallback

    return next((c for c in trainer.callbacks if isinstance(c, ActiveQueryCallback)), None)


def _guard(trainer: L.Trainer) -> RunGuard | None:
    return next((c for c in trainer.callbacks if isinstance(c, RunGuard)), None)


def run_definition(trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any]:
    """What a run is, as recorded in its checkpoints and compared on resume."""
    definition: dict[str, Any] = {}
    active = _active(trainer)
    if active is not None:
        strategy = getattr(active, "strategy", None)
        definition["strategy"] = getattr(strategy, "name", None) or type(strategy).__name__
        definition["budget"] = int(active.budget)
        st = getattr(active, "self_training", None)
        definition["self_training"] = None if st is None else repr(st)
    dm = trainer.datamodule
    pool = getattr(dm, "pool", None)
    if pool is not None:
        definition["pool"] = sorted(pool.case_ids)
    hparams = getattr(dm, "hparams", {})
    for key in ("stage", "modalities", "labels"):
        if key in hparams:
            value = hparams[key]
            definition[key] = dict(value) if isinstance(value, dict) else (
                list(value) if isinstance(value, (list, tuple)) else value
            )
    hp = module.hparams
    definition["model"] = {k: (list(hp[k]) if isinstance(hp[k], (list, tuple)) else hp[k])
                           for k in ("net", "in_channels", "filters") if k in hp}
    return definition


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def definition_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (old, new)}`` for every key recorded in both definitions that differs."""
    return {k: (old[k], new[k]) for k in old if k in new and old[k] != new[k]}


def _describe_change(key: str, old: Any, new: Any) -> str:
    if key == "pool":
        gone, added = sorted(set(old) - set(new)), sorted(set(new) - set(old))
        parts = [f"pool {len(old)} -> {len(new)} cases"]
        if gone:
            parts.append(f"without {gone[:3]}{'...' if len(gone) > 3 else ''}")
        if added:
            parts.append(f"with new {added[:3]}{'...' if len(added) > 3 else ''}")
        return " ".join(parts)
    if key == "model":
        return "model " + ", ".join(
            f"{k} {_short(old.get(k))} -> {_short(new.get(k))}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
        )
    return f"{key} {_short(old)} -> {_short(new)}"


def _shape_changes(checkpoint: dict[str, Any], module: L.LightningModule) -> list[str]:
    saved = checkpoint.get("state_dict", {})
    own = module.state_dict()
    changed = [k for k in saved if k in own and tuple(saved[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in saved]
    extra = [k for k in saved if k not in own]
    out = [f"{k} {tuple(saved[k].shape)} -> {tuple(own[k].shape)}" for k in changed[:2]]
    if missing or extra:
        out.append(
            f"{len(extra)} weights only in the checkpoint, {len(missing)} only in this model"
        )
    return out


def check_resume(module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
    """Compare a checkpoint being resumed with the run about to continue from it.

    Called from the module's ``on_load_checkpoint`` (before any weight is loaded). A changed
    network shape is always refused (the weights cannot load); under ``fit``, a changed strategy,
    self-training, budget, pool, stage, modalities or labels is refused unless the
    :class:`RunGuard` has ``resume_changed=True``, in which case the changes are recorded in the
    query log.

    Raises:
        ChangedRunError: with a one-line diff (old -> new) and the checkpoint's path.
    """
    from lightning.pytorch.trainer.states import TrainerFn

    trainer = module._trainer
    if trainer is None:
        return
    path = trainer.ckpt_path or "the checkpoint"
    shapes = _shape_changes(checkpoint, module)
    if shapes:
        saved = checkpoint.get("hyper_parameters", {})
        keys = ("net", "in_channels", "filters")
        trained = ", ".join(f"{k}={saved[k]}" for k in keys if k in saved)
        raise ChangedRunError(
            f"{path} holds a network of another shape ({'; '.join(shapes)}); resume it with the "
            f"model it was trained with ({trained or 'see its hyper_parameters'})"
        )
    old = checkpoint.get("run_definition")
    if trainer.state.fn != TrainerFn.FITTING or not old:
        return
    changes = definition_changes(old, run_definition(trainer, module))
    if not changes:
        return
    diff = "; ".join(_describe_change(k, *v) for k, v in changes.items())
    guard = _guard(trainer)
    if guard is None or not guard.resume_changed:
        raise ChangedRunError(
            f"{path} was written by another run definition: {diff}; resume with the run's own "
            "config, or pass --guard.resume_changed true to continue under the new one "
            "(recorded in the query log)"
        )
    rank_zero_warn(f"resuming {path} under a changed run definition: {diff}")
    guard.notes.append({"event": "resumed_changed", "checkpoint": str(path), "changes": diff})


def resume_notes(trainer: L.Trainer) -> list[dict[str, Any]]:
    """Query-log entries recording a resume under a changed definition (each returned once)."""
    guard = _guard(trainer)
    if guard is None:
        return []
    notes, guard.notes = guard.notes, []
    return notes


# ---------------------------------------------------------------------------------- callback
class RunGuard(L.Callback):
    """Always-on guards of ``fit`` (installed by the CLI as the ``guard`` section).

    Args:
        check_finite: stop at the first non-finite training loss (before its backward pass, so
            the weights are untouched) or weight (after an optimiser step), naming the case ids
            of the batch; no checkpoint of the broken state is written.
        lock_run_folder: hold ``<run folder>/run.lock`` while ``fit`` runs (refuses a second
            live run in the same folder; a killed run's lock does not block its resume) and,
            once held, delete the temporary files a killed checkpoint write left there.
        resume_changed: allow resuming a checkpoint under a changed strategy, budget, pool,
            stage, modalities or labels; the change is recorded in the query log.
    """

    def __init__(
        self, check_finite: bool = True, lock_run_folder: bool = True, resume_changed: bool = False
    ) -> None:
        self.check_finite = check_finite
        self.lock_run_folder = lock_run_folder
        self.resume_changed = resume_changed
        self.notes: list[dict[str, Any]] = []
        self._lock: Any = None
        self._case_ids: list[str] = []

    # -------------------------------------------------------------- run folder lock
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.lock_run_folder:
            return
        from lightning_ada.run_folder import RunFolderLock, run_folder

        folder = run_folder(trainer)  # collective under DDP
        if trainer.is_global_zero:
            from lightning_ada.checkpoint_io import remove_stale_temporaries

            lock = RunFolderLock(folder)
            lock.acquire()
            self._lock = lock
            remove_stale_temporaries(folder)  # a killed writer's; nobody else writes here now

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._release()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._release()

    # -------------------------------------------------------------- run definition
    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["run_definition"] = run_definition(trainer, pl_module)

    # -------------------------------------------------------------- non-finite values
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        ids = batch.get("case_id", []) if isinstance(batch, dict) else []
        self._case_ids = [str(i) for i in ids]

    def _stop(self, trainer: L.Trainer, bad: bool, what: str) -> None:
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        cases = self._case_ids if bad else "on another rank"
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or getattr(
            trainer.checkpoint_callback, "best_model_path", ""
        )
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise NonFiniteError(
            f"{what} at epoch {trainer.current_epoch}, step {trainer.global_step}, batch of cases "
            f"{cases}: run stopped and {kept} (check these cases' images as the network sees "
            "them, or lower model.lr)"
        )

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        if self.check_finite:
            value = loss.detach().float()
            bad = not bool(torch.isfinite(value).all())
            what = f"non-finite training loss ({value.mean().item()}) before the optimiser step"
            self._stop(trainer, bad, what)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self.check_finite:
            return
        params = list(pl_module.named_parameters())
        finite = [torch.isfinite(p.detach()).all() for _, p in params]
        broken = None  # one device sync per step; the name is looked up only when it failed
        if finite and not bool(torch.stack(finite).all()):
            broken = next(n for (n, _), ok in zip(params, finite) if not bool(ok))
        what = f"non-finite weight {broken} after the optimiser step"
        self._stop(trainer, broken is not None, what)
