"""Random query: a uniform, seeded draw from the unlabeled pool (ALGORITHMS.md section 2)."""

from __future__ import annotations

import zlib
from typing import Literal

import numpy as np

from lightning_ada.active.strategies.base import QueryContext, Scored, Strategy


class RandomStrategy(Strategy):
    """Uniform draw without replacement, one case per stride; model-independent.

    Each case's draw depends only on ``(seed, round, case id)``, so it is the same on every DDP
    rank, in any shard, and after a resume.

    Args:
        schedule: ``sequential`` (one case per stride, the default) or ``one_off`` (the whole
            budget at epoch 0): the random baseline of a one-off strategy, so that both train the
            same steps on the same number of labels.
    """

    name = "random"
    display_name = "Random"
    table_order = 10
    per_case = True

    def __init__(self, schedule: Literal["sequential", "one_off"] = "sequential") -> None:
        if schedule not in ("sequential", "one_off"):
            raise ValueError(f"schedule must be 'sequential' or 'one_off', got {schedule!r}")
        super().__init__()
        self.schedule = schedule

    def score(self, ctx: QueryContext) -> list[Scored]:
        out = []
        for cid in ctx.unlabeled:
            u = float(np.random.default_rng([ctx.seed, ctx.round, zlib.crc32(cid.encode())]).random())
            out.append(Scored(cid, u, {"uniform": u}))
        return out
