"""A budget curve from one sequential run: the test set evaluated after each query's stride.

A sequential strategy queries one case at the start and one after every ``stride`` epochs, so the
model at the end of the stride that follows the ``k``-th query has been trained with ``k``
labels. :class:`StrideSnapshots` keeps a copy of the weights at the end of every stride (in
memory; a killed run is made again from the start anyway) and, after the fit, tests each copy
whose label count is new: point ``k`` of the curve is the FIRST stride end with ``k`` labels.
The model of point ``k`` has trained ``k * stride`` epochs, fewer than a run made with budget
``k`` (which trains ``max_epochs``); the tables say so. With ``active.stride_steps`` the same holds
in optimiser steps: copies after every ``stride_steps``-th step, queries placed by their ``step``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch


def labels_at(query_positions: list[int], position: int) -> int:
    """Labels the model trained with up to ``position``: the queries made before it.

    Epochs: a query made at fit start has epoch -1, one made after epoch ``e`` has epoch ``e``,
    and the model at the end of epoch ``e`` trained with the queries of epochs ``< e``. Steps
    (``active.stride_steps``): a query at fit start has step 0, one made after step ``s`` has
    step ``s``, and the model after step ``S`` trained with the queries of steps ``< S``.
    """
    return sum(1 for q in query_positions if q < position)


class StrideSnapshots(L.Callback):
    """Copies of the weights at the end of every stride (and of the last epoch).

    Args:
        stride: epochs between two queries (the run's ``active.stride``).
        stride_steps: optimiser steps between two queries instead (``active.stride_steps``):
            copies after every ``stride_steps``-th step, keyed by step.
    """

    def __init__(self, stride: int | None = None, stride_steps: int | None = None) -> None:
        if (stride is None) == (stride_steps is None):
            raise ValueError(
                f"give the stride in epochs or in steps, not both or neither (stride={stride}, "
                f"stride_steps={stride_steps})"
            )
        if (stride or stride_steps or 0) < 1:
            raise ValueError(f"stride must be >= 1, got {stride or stride_steps}")
        self.stride, self.stride_steps = stride, stride_steps
        #: epoch (or step) -> state dict (CPU)
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def unit(self) -> str:
        """``epoch`` or ``step``: what the snapshots and the queries are keyed by."""
        return "epoch" if self.stride_steps is None else "step"

    def _keep(self, key: int, pl_module: L.LightningModule) -> None:
        self.weights[key] = {
            k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()
        }

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        step = trainer.global_step
        if self.stride_steps is not None and step and step % self.stride_steps == 0:
            if step not in self.weights:
                self._keep(step, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        last = epoch + 1 == trainer.max_epochs
        if self.stride_steps is not None:
            if last and trainer.global_step not in self.weights:
                self._keep(trainer.global_step, pl_module)
            return
        if (epoch + 1) % self.stride == 0 or last:
            self._keep(epoch, pl_module)

    @staticmethod
    def query_positions(trainer: L.Trainer, unit: str = "epoch") -> list[int]:
        """Epochs (or steps) of the run's queries, from the ``query_log.json`` the active
        callback wrote (notes without a case are skipped)."""
        log = Path(trainer.log_dir or trainer.default_root_dir) / "query_log.json"
        if not log.is_file():
            return []
        return [int(q[unit]) for q in json.loads(log.read_text()) if q.get("case_id")]

    @staticmethod
    def query_epochs(trainer: L.Trainer) -> list[int]:
        """Epochs of the run's queries (:meth:`query_positions`)."""
        return StrideSnapshots.query_positions(trainer, "epoch")

    def evaluate(self, trainer: L.Trainer, model: Any, dm: Any) -> list[dict[str, Any]]:
        """Test the first snapshot of every label count; restore the final weights after.

        Returns:
            ``[{"labels", "epoch" (or "step"), "test", "per_case", "extra_splits"}, ...]`` by
            increasing label count.
        """
        from ada_bench.runner import test_model

        queries = self.query_positions(trainer, self.unit)
        first: dict[int, int] = {}
        for key in sorted(self.weights):
            first.setdefault(labels_at(queries, key), key)
        final = copy.deepcopy(model.state_dict())
        points = []
        try:
            for labels, key in sorted(first.items()):
                model.load_state_dict(self.weights[key])
                points.append({"labels": labels, self.unit: key, **test_model(trainer, model, dm)})
        finally:
            model.load_state_dict(final)
        return points


def snapshot_factory(config: Mapping[str, Any]) -> StrideSnapshots:
    """A :class:`StrideSnapshots` with the stride of a run config (``active.stride``, or
    ``active.stride_steps``; the callback's default of 5 epochs when neither is set)."""
    active = config.get("active") or {}
    steps = active.get("stride_steps")
    if steps is not None:
        return StrideSnapshots(stride_steps=int(steps))
    return StrideSnapshots(int(active.get("stride") or 5))
