"""CUP: cascade uncertainty -> predominance, case level (ALGORITHMS.md section 5)."""

from __future__ import annotations

import math

from lightning_ada.active.stats import stream_pool_stats
from lightning_ada.active.strategies.base import QueryContext, Scored, Strategy


class CUPStrategy(Strategy):
    """Two-step lexicographic filter on the source model's posteriors (§5, case-level 3-D).

    Step 1 (uncertainty): ``C1`` = the ``max(B, ceil(r1 * |U|))`` unlabeled cases with the largest
    mean voxel entropy ``Ū_i`` (B2; the mean is the size-invariant version of the original's
    per-patch sum). Step 2 (predominance): the top ``B`` of ``C1`` by predicted foreground volume
    ``A_i`` (B3). Unlike mmActS's product, a large but confident case never passes step 1.
    One-off (§13): the callback takes ``rank(ctx)[:budget]``.

    The returned ranking is ``C1`` by decreasing volume, then the other cases by decreasing
    entropy (ties: higher entropy, then case id); scores are strictly decreasing positions
    (``n - i``), the raw criteria are in ``factors``. The step-2 ratio ``r2 = 0.5`` of the
    original is not applied: the budget counts cases (§5: "take the top B of that order").

    The patch-level variant (3-D blocks, partial annotation, enhanced pseudo-labels; §5
    "Patch-level option") is not implemented yet; it is off in the seed-000 comparison.

    Args:
        uncertainty_ratio: r1, the fraction of the pool kept by step 1.
    """

    name = "cup"
    display_name = "CUP (MICCAI'24)"
    table_order = 40
    schedule = "one_off"

    def __init__(self, uncertainty_ratio: float = 0.10) -> None:
        if not 0.0 < uncertainty_ratio <= 1.0:
            raise ValueError(f"cup uncertainty_ratio must be in (0, 1], got {uncertainty_ratio}")
        self.uncertainty_ratio = float(uncertainty_ratio)

    def score(self, ctx: QueryContext) -> list[Scored]:
        self.timings = {}
        stats = stream_pool_stats(
            ((cid, ctx.image(cid)) for cid in ctx.unlabeled), ctx.predict, ctx.regions,
            self.progress, timings=self.timings, total=len(ctx.unlabeled),
        )
        n = len(stats)
        b = min(self.budget, n)
        # 1e-9: 0.1 * 80 must give 8, not 9, whatever the float rounding
        n1 = min(n, max(b, math.ceil(self.uncertainty_ratio * n - 1e-9)))
        by_entropy = sorted(stats, key=lambda s: (-s.mean_entropy, s.case_id))
        step1 = sorted(by_entropy[:n1], key=lambda s: (-s.volume, -s.mean_entropy, s.case_id))
        order = step1 + by_entropy[n1:]
        return [
            Scored(
                s.case_id,
                float(n - i),
                {
                    "entropy": s.mean_entropy,
                    "volume": float(s.volume),
                    "step1": float(i < n1),
                    "n_step1": float(n1),
                },
            )
            for i, s in enumerate(order)
        ]
