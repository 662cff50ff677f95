"""Random query: a uniform, seeded draw from the unlabeled pool (ALGORITHMS.md section 2)."""

from __future__ import annotations

from lightning_ada.active.strategies.base import QueryContext, Scored, Strategy, register


@register
class RandomStrategy(Strategy):
    """Uniform draw without replacement, one case per stride; model-independent.

    The draw depends only on ``(seed, round)`` and the sorted unlabeled ids, so it is the same
    on every DDP rank and after a resume.
    """

    name = "random"
    schedule = "sequential"

    def score(self, ctx: QueryContext) -> list[Scored]:
        ids = sorted(ctx.unlabeled)
        draws = ctx.rng().random(len(ids))
        return [Scored(cid, float(u), {"uniform": float(u)}) for cid, u in zip(ids, draws)]
