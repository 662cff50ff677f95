"""A budget curve from one sequential run: the test set evaluated after each query's stride.

A sequential strategy queries one case at the start and one after every ``stride`` epochs, so the
model at the end of the stride that follows the ``k``-th query has been trained with ``k``
labels. :class:`StrideSnapshots` keeps a copy of the weights at the end of every stride (in
memory; a killed run is made again from the start anyway) and, after the fit, tests each copy
whose label count is new: point ``k`` of the curve is the FIRST stride end with ``k`` labels.
The model of point ``k`` has trained ``k * stride`` epochs, fewer than a run made with budget
``k`` (which trains ``max_epochs``); the tables say so.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch


def labels_at(query_epochs: list[int], epoch: int) -> int:
    """Labels the model trained with during ``epoch``: the queries made before it.

    A query made at fit start has epoch -1; one made after epoch ``e`` has epoch ``e``.
    """
    return sum(1 for q in query_epochs if q < epoch)


class StrideSnapshots(L.Callback):
    """Copies of the weights at the end of every stride (and of the last epoch).

    Args:
        stride: epochs between two queries (the run's ``active.stride``).
    """

    def __init__(self, stride: int) -> None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1 epoch, got {stride}")
        self.stride = stride
        self.weights: dict[int, dict[str, torch.Tensor]] = {}  # epoch -> state dict (CPU)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.stride == 0 or epoch + 1 == trainer.max_epochs:
            self.weights[epoch] = {
                k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()
            }

    @staticmethod
    def query_epochs(trainer: L.Trainer) -> list[int]:
        """Epochs of the run's queries, from the ``query_log.json`` the active callback wrote."""
        log = Path(trainer.log_dir or trainer.default_root_dir) / "query_log.json"
        return [int(q["epoch"]) for q in json.loads(log.read_text())] if log.is_file() else []

    def evaluate(self, trainer: L.Trainer, model: Any, dm: Any) -> list[dict[str, Any]]:
        """Test the first snapshot of every label count; restore the final weights after.

        Returns:
            ``[{"labels", "epoch", "test", "per_case"}, ...]`` by increasing label count.
        """
        from ada_bench.runner import test_model

        queries = self.query_epochs(trainer)
        first: dict[int, int] = {}
        for epoch in sorted(self.weights):
            first.setdefault(labels_at(queries, epoch), epoch)
        final = copy.deepcopy(model.state_dict())
        points = []
        try:
            for labels, epoch in sorted(first.items()):
                model.load_state_dict(self.weights[epoch])
                points.append({"labels": labels, "epoch": epoch, **test_model(trainer, model, dm)})
        finally:
            model.load_state_dict(final)
        return points


def snapshot_factory(config: Mapping[str, Any]) -> StrideSnapshots:
    """A :class:`StrideSnapshots` with the stride of a run config (``active.stride``)."""
    return StrideSnapshots(int(config["active"]["stride"]))
