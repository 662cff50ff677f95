"""SourceAnchors: the Lightning callback that makes STDR's source anchors (ALGORITHMS.md 6)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_ada.active.anchors import (
    CHECKPOINT_KEY,
    META_KEY,
    Features,
    Weight,
    as_anchor_array,
    compute_source_anchors,
    write_anchors_npy,
)


class SourceAnchors(L.Callback):
    """Compute the STDR anchors at the end of the SOURCE training (ALGORITHMS §6).

    In the final epoch (``trainer.current_epoch == trainer.max_epochs - 1``) the callback
    runs ``pl_module.case_features`` over every case of the split ``every_case_of`` in
    ``on_train_epoch_end``; Lightning runs ``ModelCheckpoint`` after the other callbacks
    there (with ``save_on_train_epoch_end: true``), so the last checkpoint carries the
    anchors under ``checkpoint["stdr_anchors"]`` (a float32 ``(k, grid**2)`` tensor, plus
    the settings under ``checkpoint["stdr_anchors_meta"]``). The anchors are also written
    to ``<trainer.log_dir or default_root_dir>/anchors.npy`` (atomically). If training
    stops before that epoch (``max_steps``, early stopping), ``on_train_end`` computes them
    and writes the ``.npy`` (checkpoints saved before then lack them).

    Runs only when the datamodule is in the ``source`` stage (a no-op in target fits), and
    on the global-zero process only (the process that writes checkpoints).

    Args:
        k: number of anchors (ALGORITHMS §6 uses 40 on 2-D NPC slices; small pools need
            fewer). Reduced to the number of distinct descriptors if needed.
        every_case_of: datamodule split whose cases describe the source domain.
        weight, grid, axis, min_positive: descriptor settings (see
            :func:`slice_descriptors`); the ``stdr`` strategy must use the same.
        seed: k-means random state.
        filename: name of the ``.npy`` file in the log dir.
    """

    def __init__(
        self,
        k: int = 8,
        every_case_of: str = "source",
        weight: Weight = "background",
        grid: int = 16,
        axis: int = -1,
        min_positive: int = 10,
        seed: int = 0,
        filename: str = "anchors.npy",
    ) -> None:
        if k < 1:
            raise ValueError(f"SourceAnchors k must be >= 1, got {k}")
        self.k, self.every_case_of, self.seed = k, every_case_of, seed
        self.descriptor_args: dict[str, Any] = {
            "weight": weight,
            "grid": grid,
            "axis": axis,
            "min_positive": min_positive,
        }
        self.filename = filename
        self.anchors: np.ndarray | None = None
        self.meta: dict[str, Any] = {}
        self.path: Path | None = None
        self._done_this_fit = False

    # ------------------------------------------------------------ trainer-free parts
    def compute(self, features: Features, images: Iterable[Tensor]) -> np.ndarray:
        """Compute (and keep) the anchors of ``images`` with the model pass ``features``."""
        self.anchors, self.meta = compute_source_anchors(
            features, images, k=self.k, seed=self.seed, **self.descriptor_args
        )
        return self.anchors

    def write(self, directory: str | Path) -> Path:
        """Write the kept anchors to ``directory / filename`` (atomic)."""
        if self.anchors is None:
            raise RuntimeError("SourceAnchors.write before compute")
        self.path = write_anchors_npy(self.anchors, Path(directory) / self.filename)
        return self.path

    # ------------------------------------------------------------ hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._done_this_fit = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs > 0:
            if trainer.current_epoch == max_epochs - 1:
                self._run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._done_this_fit:
            self._run(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.anchors is not None:
            checkpoint[CHECKPOINT_KEY] = torch.from_numpy(
                np.ascontiguousarray(self.anchors, dtype=np.float32)
            )
            checkpoint[META_KEY] = dict(self.meta)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if CHECKPOINT_KEY in checkpoint:
            self.anchors = as_anchor_array(checkpoint[CHECKPOINT_KEY]).astype(np.float32)
            self.meta = dict(checkpoint.get(META_KEY) or {})

    # ------------------------------------------------------------ internals
    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._done_this_fit = True
        dm = trainer.datamodule
        stage = getattr(getattr(dm, "hparams", None), "stage", "source")
        if stage != "source":
            rank_zero_info(f"[stdr anchors] skipped: datamodule stage is {stage!r}")
            return
        if not trainer.is_global_zero:
            return
        ids = list(getattr(dm, "split_ids", {}).get(self.every_case_of) or [])
        if not ids:
            raise ValueError(
                f"SourceAnchors: the datamodule has no {self.every_case_of!r} cases"
            )
        features = getattr(pl_module, "case_features", None)
        if features is None:
            raise ValueError("SourceAnchors needs pl_module.case_features(image)")
        self.compute(features, (dm.image(cid) for cid in ids))
        self.meta["case_ids"] = ",".join(ids)
        self.meta["epoch"] = int(trainer.current_epoch)
        path = self.write(trainer.log_dir or trainer.default_root_dir)
        rank_zero_info(
            f"[stdr anchors] {self.meta['k']} anchors from {self.meta['n_descriptors']} "
            f"slices of {len(ids)} {self.every_case_of} cases -> {path} and checkpoint "
            f"key {CHECKPOINT_KEY!r}"
        )

