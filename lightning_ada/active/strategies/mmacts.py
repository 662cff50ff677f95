"""mmActS: informativeness (mean entropy x predicted volume) x representativeness (density).

ALGORITHMS.md section 1: ``S_t(x) = U_t(x)^a * A_t(x)^b * rho(x)^c`` (default a = b = c = 1),
argmax over the unlabeled pool, one case per stride (``sequential``), ties by case id.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from lightning_ada.active.density import DensityResult, compute_density
from lightning_ada.active.stats import stream_pool_stats
from lightning_ada.active.strategies.base import QueryContext, Scored, Strategy


class MMActSStrategy(Strategy):
    """The paper's criterion (eq. 1-6).

    Args:
        exponents: ``(a, b, c)`` of entropy, predicted foreground volume and density; 0 drops a
            factor (the factor ablation), e.g. ``[1, 0, 0]`` is entropy alone.
        schedule: ``sequential`` (the paper) or ``one_off`` (all the budget at epoch 0).
        density_quantile: neighbourhood radius as a quantile of the pairwise distances (§1.3).
        density_delta: absolute radius (overrides the quantile).
        density_resize: cube side the images are resized to before PCA (None: native up to 64).
        n_quantiles: quantiles summarising each PCA score distribution.
    """

    name = "mmacts"
    display_name = "mmActS"
    table_order = 90
    per_case = True

    def __init__(
        self,
        exponents: tuple[float, float, float] = (1.0, 1.0, 1.0),
        schedule: Literal["sequential", "one_off"] = "sequential",
        density_quantile: float = 0.10,
        density_delta: float | None = None,
        density_resize: int | None = None,
        n_quantiles: int = 1024,
    ) -> None:
        self.exponents = tuple(float(e) for e in exponents)
        if len(self.exponents) != 3 or min(self.exponents) < 0:
            raise ValueError(f"mmacts exponents must be 3 non-negative numbers, got {exponents}")
        self.schedule = schedule
        self.density_args: dict[str, Any] = {
            "quantile": density_quantile,
            "delta": density_delta,
            "resize": density_resize,
            "n_quantiles": n_quantiles,
        }
        self.density: DensityResult | None = None

    def _density(self, ctx: QueryContext) -> DensityResult:
        """Image-only density over the whole pool, computed once (and cached in the run dir)."""
        if self.density is None or self.density.case_ids != sorted(ctx.pool):
            ids = sorted(ctx.pool)
            cache = ctx.run_dir / "cache" if ctx.run_dir is not None else None
            self.density = compute_density(
                ids, (ctx.image(c) for c in ids), cache_dir=cache, **self.density_args
            )
        return self.density

    def score(self, ctx: QueryContext) -> list[Scored]:
        a, b, c = self.exponents
        t0 = time.perf_counter()
        rho = self._density(ctx).density if c else {}
        self.timings = {"density": time.perf_counter() - t0}
        stats = stream_pool_stats(
            ((cid, ctx.image(cid)) for cid in ctx.unlabeled), ctx.predict, ctx.regions,
            self.progress, timings=self.timings, total=len(ctx.unlabeled),
        )
        scored = []
        for s in stats:
            density = rho.get(s.case_id, 1.0)
            factors = {"entropy": s.mean_entropy, "volume": float(s.volume), "density": density}
            score = (s.mean_entropy**a) * (float(s.volume) ** b) * (density**c)
            scored.append(Scored(s.case_id, score, factors | {"product": score}))
        return scored

    def finalize(self, scored: list[Scored]) -> list[Scored]:
        """Every case of the WHOLE pool isolated (rho = 0): rank by informativeness (§1.3).

        Decided on all the scores of a round (after the DDP gather), never on one shard.
        """
        a, b, c = self.exponents
        if c and scored and all(s.score == 0 for s in scored):
            return [
                Scored(s.case_id, (s.factors["entropy"] ** a) * (s.factors["volume"] ** b),
                       s.factors | {"fallback": 1.0})
                for s in scored
            ]
        return scored
