"""Entropy query: mean voxel entropy of the current model (ALGORITHMS.md section 2)."""

from __future__ import annotations

from lightning_ada.active.stats import stream_pool_stats
from lightning_ada.active.strategies.base import QueryContext, Scored, Strategy


class EntropyStrategy(Strategy):
    """``s_i = mean_v H(p_iv)``, sequential like mmActS (AADA without its domain weight)."""

    name = "entropy"
    display_name = "Entropy"
    table_order = 80
    per_case = True

    def score(self, ctx: QueryContext) -> list[Scored]:
        stats = stream_pool_stats(
            ((cid, ctx.image(cid)) for cid in ctx.unlabeled), ctx.predict, ctx.regions, self.progress,
            total=len(ctx.unlabeled),
        )
        return [Scored(s.case_id, s.mean_entropy, {"entropy": s.mean_entropy}) for s in stats]
