"""RunGuard: stop a run that has gone wrong, or would, with one clear line.

:class:`RunGuard` (a callback the CLI always installs, section ``guard``) holds the run-folder
lock for the life of ``fit``, stops at the first non-finite loss or weight naming the cases of
the batch (before the broken weights can reach a checkpoint), records the run definition
(:mod:`lightning_ada.run.definition`) in every checkpoint, and refuses to resume a checkpoint
under a changed run definition (strategy, self-training, budget, pool, modalities, labels)
unless ``--guard.resume_changed true``, which is then recorded in the query log
(:func:`resume_notes`). A changed network shape is the model's own refusal
(``SegmentationModule.on_load_checkpoint``): its weights could not load.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from lightning_ada.errors import ChangedRunError, NonFiniteError
from lightning_ada.run import definition
from lightning_ada.run.checkpoint_io import remove_stale_temporaries
from lightning_ada.run.folder import RunFolderLock, run_folder


def _guard(trainer: L.Trainer) -> RunGuard | None:
    return next((c for c in trainer.callbacks if isinstance(c, RunGuard)), None)


def resume_notes(trainer: L.Trainer) -> list[dict[str, Any]]:
    """Query-log entries recording a resume under a changed definition (each returned once)."""
    guard = _guard(trainer)
    if guard is None:
        return []
    notes, guard.notes = guard.notes, []
    return notes


class RunGuard(L.Callback):
    """Always-on guards of ``fit`` (installed by the CLI as the ``guard`` section).

    Args:
        check_finite: stop at the first non-finite training loss (checked at every step, before
            its backward pass, so the weights are untouched; the message names the batch's case
            ids) or weight (checked every ``check_weights_every`` optimiser steps and at each
            epoch's end, before any checkpoint is written; the message names the steps and the
            cases of the batches since the last check that passed); no checkpoint of the broken
            state is written (the checkpoint writer also refuses non-finite weights).
        check_weights_every: optimiser steps between two checks of the weights (each check
            reads every weight once: per step it cost the 2-core CPU about a tenth of a step).
        lock_run_folder: hold ``<run folder>/run.lock`` while ``fit`` runs (refuses a second
            live run in the same folder; a killed run's lock does not block its resume) and,
            once held, delete the temporary files a killed checkpoint write left there.
        resume_changed: allow resuming a checkpoint under a changed strategy, budget, pool,
            stage, modalities or labels; the change is recorded in the query log.
    """

    def __init__(
        self, check_finite: bool = True, lock_run_folder: bool = True, resume_changed: bool = False,
        check_weights_every: int = 25,
    ) -> None:
        if check_weights_every < 1:
            raise ValueError(
                f"guard.check_weights_every must be >= 1 step, got {check_weights_every}")
        self.check_finite = check_finite
        self.check_weights_every = check_weights_every
        self.lock_run_folder = lock_run_folder
        self.resume_changed = resume_changed
        self.notes: list[dict[str, Any]] = []
        self._lock: RunFolderLock | None = None
        self._case_ids: list[str] = []
        #: cases of the batches since the last weight check that passed, and its step
        self._since_check: list[str] = []
        self._checked_at = 0

    # -------------------------------------------------------------- run folder lock
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.lock_run_folder:
            return
        folder = run_folder(trainer)  # collective under DDP
        if trainer.is_global_zero:
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
        checkpoint["run_definition"] = definition.collect(trainer)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Compare the checkpoint's run definition with this run's before any callback state
        is restored (the model and the pool are restored already; nothing was written).

        Raises:
            ChangedRunError: under ``fit``, a changed definition without ``resume_changed``:
                one line with the diff (old -> new) and the checkpoint's path.
        """
        old = checkpoint.get("run_definition")
        if trainer.state.fn != TrainerFn.FITTING or not old:
            return
        diff = definition.changes(old, definition.collect(trainer))
        if not diff:
            return
        path = trainer.ckpt_path or "the checkpoint"
        text = definition.describe(diff)
        if not self.resume_changed:
            raise ChangedRunError(
                f"{path} was written by another run definition: {text}; resume with the run's own "
                "config, or pass --guard.resume_changed true to continue under the new one "
                "(recorded in the query log)"
            )
        rank_zero_warn(f"resuming {path} under a changed run definition: {text}")
        self.notes.append({"event": "resumed_changed", "checkpoint": str(path), "changes": text})

    # -------------------------------------------------------------- non-finite values
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        ids = batch.get("case_id", []) if isinstance(batch, dict) else []
        self._case_ids = [str(i) for i in ids]
        self._since_check += self._case_ids

    def _stop(self, trainer: L.Trainer, bad: bool, what: str) -> None:
        """Raise (on every rank, if one rank found ``bad``) naming ``what`` and the last good
        checkpoint."""
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        if not bad:
            what = f"a non-finite value on another rank at epoch {trainer.current_epoch}"
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or getattr(
            trainer.checkpoint_callback, "best_model_path", ""
        )
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise NonFiniteError(
            f"{what}: run stopped and {kept} (check these cases' images as the network sees "
            "them, or lower model.lr)"
        )

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        if not self.check_finite:
            return
        value = loss.detach()
        bad = not bool(torch.isfinite(value).all())
        what = ""
        if bad:  # the message (another host sync) only when it is needed
            what = (f"non-finite training loss ({value.float().mean().item()}) before the "
                    f"optimiser step at epoch {trainer.current_epoch}, step "
                    f"{trainer.global_step}, batch of cases {self._case_ids}")
        self._stop(trainer, bad, what)

    def _check_weights(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Stop if a weight is not finite, naming it, the steps and the cases of the batches
        since the last check that passed."""
        params = list(pl_module.parameters())
        bad = bool(params) and not bool(
            torch.stack([torch.isfinite(p).all() for p in params]).all())
        what = ""
        if bad:  # the name is looked up only when a check failed
            broken = next(n for n, p in pl_module.named_parameters()
                          if not bool(torch.isfinite(p).all()))
            what = (f"non-finite weight {broken} at epoch {trainer.current_epoch}, found after "
                    f"step {trainer.global_step} (weights are checked every "
                    f"{self.check_weights_every} optimiser steps and at each epoch's end; the "
                    f"last check that passed was after step {self._checked_at}), batches of "
                    f"cases {self._since_check}")
        self._stop(trainer, bad, what)
        self._since_check, self._checked_at = [], trainer.global_step

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        due = step and step % self.check_weights_every == 0 and step != self._checked_at
        if self.check_finite and due:
            with torch.no_grad():
                self._check_weights(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # before the checkpoint callbacks, which Lightning runs after every other callback
        if self.check_finite and trainer.global_step != self._checked_at:
            with torch.no_grad():
                self._check_weights(trainer, pl_module)
