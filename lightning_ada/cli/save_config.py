"""The CLI's ``config.yaml`` writer: a resume's config is written only once the resume is accepted."""

from __future__ import annotations

import lightning.pytorch as L
from lightning.pytorch.cli import SaveConfigCallback


class SaveConfigWhenAccepted(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` writer, holding back a resume's config until it is accepted.

    LightningCLI writes ``config.yaml`` in ``setup``, before the checkpoint is read: a resume that
    is then refused (changed run definition, unreadable checkpoint) would already have replaced
    the run's config. A fresh ``fit`` still writes it in ``setup`` (after the run-folder lock was
    taken); a resume (``ckpt_path`` given) writes it in ``on_fit_start``, once the checkpoint
    was restored and accepted.
    """

    def _resuming(self, stage: str) -> bool:
        return stage == "fit" and bool(self.config.get("ckpt_path"))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self._resuming(stage):
            super().setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._resuming("fit"):
            super().setup(trainer, pl_module, "fit")
