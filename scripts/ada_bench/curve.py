"""A budget curve from one sequential run: the test set evaluated after each query's stride.

A sequential strategy queries one case at the start and one after every ``stride`` epochs, so the
model at the end of the stride that follows the ``k``-th query has been trained with ``k``
labels. :class:`StrideSnapshots` keeps a copy of the weights at the end of every stride (in
memory; a killed run is made again from the start anyway) and, after the fit, tests each copy
whose label count is new: point ``k`` of the curve is the FIRST stride end with ``k`` labels.
The model of point ``k`` has trained ``k * stride`` epochs, fewer than a run made with budget
``k`` (which trains ``max_epochs``); the tables say so. With ``active.stride_steps`` the same holds
in optimiser steps: copies after every ``stride_steps``-th step, queries placed by their ``step``.

The cost axis (a run with a sub-volume unit, ``active.unit slices`` or ``patch``, whose budget
counts whole-scan equivalents): one query round asks for several regions, each query of the log
records its ``cost`` (:mod:`lightning_ada.active.cost`), and point ``b`` (``b`` scans) is the
FIRST stride end after which the queries' ``cost.scans`` sum to at least ``b - 1e-6``
(:func:`spent_at`, :func:`scan_points`); a budget the run never reaches (its rounds spent less
than a whole scan each, e.g. regions that do not tile the allowance) has no point. Each point
carries the cost totals of the queries before it (:func:`cost_totals`). The case unit keeps
counting queries (:func:`labels_at`): one case is one whole-scan equivalent only when every
pool case has the same size, as on the phantom (every case of a phantom has the same grid, so
there ``k`` cases are exactly ``k`` scans; on real scans of different sizes only on average).
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


#: a curve point at ``b`` scans needs the queries' scans to sum to at least ``b - SCANS_EPS``
SCANS_EPS = 1e-6
#: the cost totals a curve point carries (``seconds`` only when the run recorded it)
COST_KEYS = ("voxels", "slices", "foreground_voxels", "new_case", "scans", "seconds")


def spent_at(queries: list[tuple[int, float]], position: int) -> float:
    """Whole-scan equivalents the model trained with up to ``position``: the ``cost.scans`` of
    the queries ``(position, scans)`` made before it (the rule of :func:`labels_at`)."""
    return sum(scans for q, scans in queries if q < position)


def cost_totals(costs: list[dict[str, float]]) -> dict[str, float]:
    """The sums of :data:`COST_KEYS` over ``costs`` (each a query's ``cost``); ``cases`` is the
    number of cases touched (the sum of ``new_case``); ``seconds`` only when the run recorded
    an annotation time (a refused query, which delivered nothing, records none and adds 0)."""
    out = {k: float(sum(float(c.get(k, 0.0)) for c in costs)) for k in COST_KEYS
           if k != "seconds"}
    if any("seconds" in c for c in costs):
        out["seconds"] = float(sum(float(c.get("seconds", 0.0)) for c in costs))
    out["cases"] = out.pop("new_case")
    return out


def scan_points(
    queries: list[tuple[int, float]], keys: list[int], budget: float | None = None
) -> dict[int, int]:
    """``{b: snapshot key}``: for every whole number ``b >= 1`` of scans (up to ``budget``
    when given), the first snapshot ``key`` (epoch or step, ascending) after which the queries
    ``(position, scans)`` made before it sum to at least ``b - SCANS_EPS``; budgets never
    reached are left out."""
    out: dict[int, int] = {}
    for key in sorted(keys):
        spent = spent_at(queries, key)
        b = 1
        while spent >= b - SCANS_EPS and (budget is None or b <= budget + SCANS_EPS):
            out.setdefault(b, key)
            b += 1
    return out


class StrideSnapshots(L.Callback):
    """Copies of the weights at the end of every stride (and of the last epoch).

    Args:
        stride: epochs between two queries (the run's ``active.stride``).
        stride_steps: optimiser steps between two queries instead (``active.stride_steps``):
            copies after every ``stride_steps``-th step, keyed by step.
        by_scans: the points are whole-scan equivalents (a sub-volume unit: module doc), not
            query counts.
    """

    def __init__(
        self, stride: int | None = None, stride_steps: int | None = None, by_scans: bool = False
    ) -> None:
        if (stride is None) == (stride_steps is None):
            raise ValueError(
                f"give the stride in epochs or in steps, not both or neither (stride={stride}, "
                f"stride_steps={stride_steps})"
            )
        if (stride or stride_steps or 0) < 1:
            raise ValueError(f"stride must be >= 1, got {stride or stride_steps}")
        self.stride, self.stride_steps, self.by_scans = stride, stride_steps, by_scans
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
    def query_costs(trainer: L.Trainer, unit: str = "epoch") -> list[tuple[int, dict[str, float]]]:
        """``(epoch or step, cost)`` of every query of the run's ``query_log.json`` (notes
        without a case are skipped; a query without a cost counts as none)."""
        log = Path(trainer.log_dir or trainer.default_root_dir) / "query_log.json"
        if not log.is_file():
            return []
        return [(int(q[unit]), dict(q.get("cost") or {}))
                for q in json.loads(log.read_text()) if q.get("case_id")]

    @staticmethod
    def query_epochs(trainer: L.Trainer) -> list[int]:
        """Epochs of the run's queries (:meth:`query_positions`)."""
        return StrideSnapshots.query_positions(trainer, "epoch")

    def evaluate(self, trainer: L.Trainer, model: Any, dm: Any) -> list[dict[str, Any]]:
        """Test the first snapshot of every label count; restore the final weights after.

        Returns:
            ``[{"labels", "epoch" (or "step"), "test", "per_case", "extra_splits"}, ...]`` by
            increasing label count; on the cost axis (``by_scans``, :meth:`evaluate_scans`)
            each point also has ``scans`` (the budget ``b``), ``spent`` and ``cost``.
        """
        if self.by_scans:
            return self.evaluate_scans(trainer, model, dm)
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

    def evaluate_scans(self, trainer: L.Trainer, model: Any, dm: Any) -> list[dict[str, Any]]:
        """The cost axis (module doc): point ``b`` is the first snapshot after which the queries
        spent ``b`` whole-scan equivalents; each snapshot is tested once (two budgets reached
        at the same snapshot share its test). ``labels`` is the number of queries before it."""
        from ada_bench.runner import test_model

        costs = self.query_costs(trainer, self.unit)
        queries = [(q, float(c.get("scans", 0.0))) for q, c in costs]
        chosen = scan_points(queries, list(self.weights))
        final = copy.deepcopy(model.state_dict())
        tested: dict[int, dict[str, Any]] = {}
        points = []
        try:
            for b, key in sorted(chosen.items()):
                if key not in tested:
                    model.load_state_dict(self.weights[key])
                    tested[key] = test_model(trainer, model, dm)
                before = [c for q, c in costs if q < key]
                points.append({
                    "labels": len(before), "scans": b, "spent": spent_at(queries, key),
                    "cost": cost_totals(before), self.unit: key, **copy.deepcopy(tested[key]),
                })
        finally:
            model.load_state_dict(final)
        return points


def sub_volume_unit(config: Mapping[str, Any]) -> bool:
    """Whether a run config asks for less than a whole case per query: its ``active.unit`` is a
    unit whose budget counts whole-scan equivalents (``slices``, ``patch``)."""
    from lightning_ada.active.units import UNITS

    unit = (config.get("active") or {}).get("unit")
    if unit is None:
        return False
    path = unit.get("class_path") if isinstance(unit, Mapping) else str(unit)
    for name, cls in UNITS.items():
        if path in (name, f"{cls.__module__}.{cls.__qualname__}", cls.__qualname__):
            return cls.budget_in == "scans"
    return False


def snapshot_factory(config: Mapping[str, Any]) -> StrideSnapshots:
    """A :class:`StrideSnapshots` with the stride of a run config (``active.stride``, or
    ``active.stride_steps``; the callback's default of 5 epochs when neither is set), on the
    cost axis when the config's unit is a sub-volume one (:func:`sub_volume_unit`)."""
    active = config.get("active") or {}
    steps = active.get("stride_steps")
    by_scans = sub_volume_unit(config)
    if steps is not None:
        return StrideSnapshots(stride_steps=int(steps), by_scans=by_scans)
    return StrideSnapshots(int(active.get("stride") or 5), by_scans=by_scans)
