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
        self._lock: RunFolderLock | None = None
        self._case_ids: list[str] = []

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
