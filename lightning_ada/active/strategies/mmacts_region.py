"""mmActS at region level: region entropy x the region's predicted tumour x the case's density
(ALGORITHMS.md section 18.5).

The criterion of :mod:`~lightning_ada.active.strategies.mmacts` (Yang et al., 2025; ALGORITHMS
section 1) with its informativeness taken over a region instead of the whole case; the density
stays a property of the case (an image-level PCA-Wasserstein neighbour count over the pool,
:func:`~lightning_ada.active.density.compute_density`, computed as ``mmacts`` computes it and
cached across rounds), and the modality election stays per picked case (the callback's).
"""

from __future__ import annotations

import time
from typing import Literal

from lightning_ada.active.density import DensityRule
from lightning_ada.active.strategies.base import QueryContext, Scored
from lightning_ada.active.strategies.mmacts import MMActSStrategy, entropy_and_foreground
from lightning_ada.active.strategies.region_rule import RegionRule, case_rng, region_sums
from lightning_ada.active.units import AnnotationUnit


class MMActSRegionStrategy(RegionRule, MMActSStrategy):
    """``S(r) = U(r)^a * A(r)^b * rho(case)^c`` over the candidate regions of the pool.

    ``U(r) = (1/|r|) sum_{v in r} H(p_v)``, the region's mean voxel entropy (nats; the unit cuts
    each case along the entropy map, so slice groups are the case's most uncertain slices);
    ``A(r) = #{v in r : argmax p_v != 0}``, the voxels predicted tumour inside the region
    (``volume: share``: that count / ``|r|``); ``rho`` the case's density (ALGORITHMS §1.2-1.3,
    over the whole pool as ``mmacts``, computed once in :meth:`prepare_round` and reused while
    the pool is unchanged). ``ranking: per_region`` takes entropy and volume of one region's
    binary posterior, cycling the regions round by round, as ``mmacts``. When every candidate
    scores 0 with ``c > 0`` (every case isolated under the exclusive rule), the round ranks by
    ``U^a * A^b`` (mmActS' fallback, §1.3). Source: Yang et al. 2025 (mmActS), ALGORITHMS §1;
    the region form is ours (§18.5).

    Args:
        exponents: ``(a, b, c)``.
        schedule: ``sequential`` (one scan's worth of regions per round) or ``one_off``.
        density_quantile, density_delta, density_resize, n_quantiles, density_rule,
            density_input: the density, as ``mmacts``.
        ranking, ranking_regions: as ``mmacts``.
        volume: ``voxels`` (default: ``A`` a voxel count, the paper's ``A``) or ``share``
            (the predicted tumour's share of the region's voxels).
    """

    name = "mmacts_region"
    display_name = "mmActS region"
    table_order = 240
    units = frozenset({"case", "slices", "patch"})
    per_case = False

    def __init__(
        self,
        exponents: tuple[float, float, float] = (1.0, 1.0, 1.0),
        schedule: Literal["sequential", "one_off"] = "sequential",
        density_quantile: float = 0.10,
        density_delta: float | None = None,
        density_resize: int | None = None,
        n_quantiles: int = 1024,
        density_rule: DensityRule = "exclusive",
        ranking: Literal["multiclass", "per_region"] = "multiclass",
        ranking_regions: list[str] | None = None,
        density_input: Literal["network", "raw"] = "network",
        volume: Literal["voxels", "share"] = "voxels",
    ) -> None:
        if schedule not in ("sequential", "one_off"):
            raise ValueError(
                f"mmacts_region schedule must be sequential or one_off, got {schedule!r}"
            )
        if volume not in ("voxels", "share"):
            raise ValueError(f"mmacts_region volume must be voxels or share, got {volume!r}")
        MMActSStrategy.__init__(
            self, exponents=exponents, schedule=schedule, density_quantile=density_quantile,
            density_delta=density_delta, density_resize=density_resize, n_quantiles=n_quantiles,
            density_rule=density_rule, ranking=ranking, ranking_regions=ranking_regions,
            density_input=density_input,
        )
        self.volume = volume
        self._rho: dict[str, float] = {}

    def prepare_round(self, ctx: QueryContext) -> None:
        super().prepare_round(ctx)
        t0 = time.perf_counter()
        self._rho = self._density(ctx).density if self.exponents[2] else {}
        self.timings["density"] = time.perf_counter() - t0

    def case_regions(
        self, ctx: QueryContext, unit: AnnotationUnit, case_id: str, axis: int | None = None
    ) -> list[Scored]:
        a, b, c = self.exponents
        region = self.round_region(ctx)
        classes = None if region is None else ctx.regions[region]
        extra = {} if region is None else {f"region:{region}": 1.0}
        image, shape, annotated = self.case_inputs(ctx, case_id)
        probs = self.predict(ctx, image)
        with self.scoring():
            h, fg = entropy_and_foreground(probs, classes)
            del probs
            density = self._rho.get(case_id, 1.0)
            out = []
            cands = unit.candidates(case_id, shape, h, annotated, case_rng(ctx, case_id), axis)
            for cand, voxels in zip(cands, region_sums([c.region for c in cands], fg)):
                size = cand.region.voxels(shape)
                vol = voxels / size if self.volume == "share" else voxels
                score = (cand.score**a) * (vol**b) * (density**c)
                out.append(Scored.of(cand, score, entropy=cand.score, volume=vol,
                                     foreground_voxels=voxels, density=density, product=score,
                                     **extra))
            return out

    def order(self, ctx: QueryContext, unit: AnnotationUnit, scored: list[Scored]) -> list[Scored]:
        """By score; every candidate at 0 with ``c > 0``: by ``U^a * A^b`` (the fallback)."""
        a, b, c = self.exponents
        if c and scored and all(s.score == 0 for s in scored):
            scored = [Scored(s.case_id, (s.factors["entropy"] ** a) * (s.factors["volume"] ** b),
                             s.factors | {"fallback": 1.0}, s.region) for s in scored]
        return super().order(ctx, unit, scored)
