"""mmActS with coverage: informativeness x soft-coverage gain (our variant, ALGORITHMS §17).

``S_t(x) = U_t(x)^a * A_t(x)^b * gain_t(x)^c``: mmActS' informativeness (mean entropy x
predicted foreground volume, ALGORITHMS §1, under the current model) times the MaxHerding
soft-coverage gain of x given the labelled set (:func:`~.coverage.herding_gains`; W. Bae et al.,
"Generalized Coverage for More Robust Low-Budget Active Learning", ECCV 2024, arXiv 2407.12212),
recomputed every round. mmActS' static neighbour count rewards the commonest scanner cluster
again and again; the gain of a case whose neighbourhood a labelled case already covers is small,
so the next pick moves to an uncovered cluster.

Optional budget-dependent weighting (``budget_weighting``; typical first, uncertain later, as in
TCM and CSCS): with ``lam = round / (budget - 1)`` (0 in the first round, 1 in the last), the
exponents become ``(lam a, lam b, (1 - lam) c)`` - the first pick is pure coverage, the last pure
informativeness.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np

from lightning_ada.active.descriptors import DescriptorKind
from lightning_ada.active.pairwise import Method, condensed_rows, row_blocks
from lightning_ada.active.stats import stream_pool_stats
from lightning_ada.active.strategies.base import QueryContext, Scored
from lightning_ada.active.strategies.coverage import (
    MaxHerdingStrategy,
    herding_gains,
    kernel_matrix,
)


class MMActSCoverageStrategy(MaxHerdingStrategy):
    """Informativeness x coverage gain (module doc).

    Args:
        exponents: ``(a, b, c)`` of entropy, predicted volume and coverage gain.
        budget_weighting: move the weight from coverage (first round) to informativeness (last).
        descriptor: case descriptor: ``density`` (image-only), ``embedding`` (the source
            model's pooled bottleneck) or ``both`` (blocks scaled to median distance 1).
        bandwidth: absolute kernel width ``sigma``; None: ``bandwidth_scale x`` the median
            pairwise distance of the pool.
        bandwidth_scale: see ``bandwidth``.
        schedule: ``sequential`` (default) or ``one_off`` (the one-off ranking uses the gain
            given the labelled set at epoch 0 only).
        density_resize: cube side images are resized to for the density descriptor (None:
            native up to 64).
        n_quantiles: quantiles summarising each PCA score distribution (density descriptor).
        density_input: the density descriptor reads the ``network`` input (z-scored) or the
            ``raw`` images as stored (sees scanner intensity shifts).
        distances: ``exact``, ``blas`` or ``auto`` (as ``maxherding``).
    """

    name = "mmacts_coverage"
    display_name = "mmActS x coverage"
    table_order = 91

    def __init__(
        self,
        exponents: tuple[float, float, float] = (1.0, 1.0, 1.0),
        budget_weighting: bool = False,
        descriptor: DescriptorKind = "density",
        bandwidth: float | None = None,
        bandwidth_scale: float = 1.0,
        schedule: Literal["sequential", "one_off"] = "sequential",
        density_resize: int | None = None,
        n_quantiles: int = 1024,
        density_input: Literal["network", "raw"] = "network",
        distances: Method = "auto",
    ) -> None:
        self.exponents = tuple(float(e) for e in exponents)
        if len(self.exponents) != 3 or min(self.exponents) < 0:
            raise ValueError(
                f"mmacts_coverage exponents must be 3 non-negative numbers, got {exponents}"
            )
        super().__init__(
            descriptor, bandwidth, bandwidth_scale, schedule, density_resize, n_quantiles,
            density_input, distances,
        )
        self.budget_weighting = bool(budget_weighting)

    def round_exponents(self, round: int) -> tuple[float, float, float]:
        """The exponents used in ``round`` (module doc)."""
        a, b, c = self.exponents
        if not self.budget_weighting:
            return a, b, c
        lam = min(1.0, round / (self.budget - 1)) if self.budget > 1 else 0.0
        return lam * a, lam * b, (1.0 - lam) * c

    def score(self, ctx: QueryContext) -> list[Scored]:
        a, b, c = self.used_exponents = self.round_exponents(ctx.round)
        ids, z, labelled = self._pool(ctx)
        t0 = time.perf_counter()
        n = len(ids)
        cond = self._condensed(z)
        sigma = self.sigma(cond)

        def rows(idx: np.ndarray | range) -> np.ndarray:  # kernel rows, rebuilt in blocks
            return kernel_matrix(condensed_rows(cond, n, idx), sigma)

        coverage = np.zeros(n)
        lab = np.flatnonzero(labelled)
        for start in range(0, lab.size, 512):  # (a, b, c are the exponents)
            coverage = np.maximum(coverage, rows(lab[start:start + 512]).max(axis=0))
        gains = np.concatenate([herding_gains(rows(range(lo, hi)), coverage)
                                for lo, hi in row_blocks(n, 512)]) if n else np.zeros(0)
        gain = dict(zip(ids, gains.tolist()))
        self.timings["coverage"] = time.perf_counter() - t0
        stats = stream_pool_stats(
            ((cid, ctx.image(cid)) for cid in ctx.unlabeled), ctx.predict, ctx.regions,
            self.progress, timings=self.timings, total=len(ctx.unlabeled),
        )
        scored = []
        for s in stats:
            g, vol = gain[s.case_id], float(s.volume)
            score = (s.mean_entropy**a) * (vol**b) * (g**c)
            factors = {
                "entropy": s.mean_entropy, "volume": vol, "coverage_gain": g, "product": score
            }
            scored.append(Scored(s.case_id, score, factors))
        return scored

    def finalize(self, scored: list[Scored]) -> list[Scored]:
        """No case has foreground (every product 0): rank by entropy x coverage gain."""
        a, _, c = getattr(self, "used_exponents", self.exponents)
        if scored and all(s.score == 0 for s in scored):
            return [
                Scored(s.case_id, (s.factors["entropy"] ** a) * (s.factors["coverage_gain"] ** c),
                       s.factors | {"fallback": 1.0})
                for s in scored
            ]
        return scored
