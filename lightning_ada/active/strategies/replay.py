"""Replay: query the cases of a given order (another run's picks), whatever the model says.

For measuring the noise of training alone: the same picks, in the same rounds, retrained under
another training seed (``seed_everything``), so the spread of the results is the noise floor
of a comparison between strategies (``scripts/noise_floor.py``).
"""

from __future__ import annotations

from typing import Literal

from lightning_ada.active.strategies.base import QueryContext, Scored, Strategy


class ReplayStrategy(Strategy):
    """The unlabelled cases of ``order`` first, in that order; any others after, by id.

    Args:
        order: case ids in the order to query them (e.g. a run's query log; empty: by id).
        schedule: ``sequential`` (one case per round) or ``one_off`` (the whole budget before
            training): the schedule of the run whose picks are replayed.
    """

    name = "replay"
    display_name = "Replayed picks"
    table_order = 900

    def __init__(
        self, order: list[str] | None = None,
        schedule: Literal["sequential", "one_off"] = "sequential",
    ) -> None:
        if schedule not in ("sequential", "one_off"):
            raise ValueError(f"schedule must be 'sequential' or 'one_off', got {schedule!r}")
        order = list(order or [])
        if len(set(order)) != len(order):
            raise ValueError(f"replay order names a case twice: {order}")
        super().__init__()
        self.order, self.schedule = list(order), schedule  # type: ignore[misc]

    def score(self, ctx: QueryContext) -> list[Scored]:
        position = {cid: i for i, cid in enumerate(self.order)}
        n = len(ctx.unlabeled)
        rest = sorted(c for c in ctx.unlabeled if c not in position)
        ranked = sorted((c for c in ctx.unlabeled if c in position), key=position.__getitem__)
        return [Scored(c, float(n - i), {"replayed": float(c in position)})
                for i, c in enumerate([*ranked, *rest])]
