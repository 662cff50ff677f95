"""Random query: a uniform, seeded draw from the unlabeled pool (ALGORITHMS.md section 2)."""

from __future__ import annotations

import zlib

import numpy as np

from lightning_ada.active.strategies.base import QueryContext, Scored, Strategy


class RandomStrategy(Strategy):
    """Uniform draw without replacement, one case per stride; model-independent.

    Each case's draw depends only on ``(seed, round, case id)``, so it is the same on every DDP
    rank, in any shard, and after a resume.
    """

    name = "random"
    display_name = "Random"
    table_order = 10
    schedule = "sequential"
    per_case = True

    def score(self, ctx: QueryContext) -> list[Scored]:
        out = []
        for cid in ctx.unlabeled:
            u = float(np.random.default_rng([ctx.seed, ctx.round, zlib.crc32(cid.encode())]).random())
            out.append(Scored(cid, u, {"uniform": u}))
        return out
