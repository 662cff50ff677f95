"""Entropy region: the regions of highest mean voxel entropy (ALGORITHMS.md section 18.3).

Predictive entropy (PE) at region level, nnActive's strongest single query method (Lüth et al.,
"nnActive: A Framework for Evaluation of Active Learning in 3D Biomedical Segmentation", TMLR
2025, arXiv 2511.19183; MIC-DKFZ/nnActive ``pred_entropy``: the voxel entropy averaged over
each candidate patch), and its power variant (``power_pe``: the region scores perturbed by
Gumbel noise so that a round's picks are drawn with probability proportional to
``score ** power`` instead of taken greedily, which spreads them).
"""

from __future__ import annotations

from lightning_ada.active.stats import entropy_map
from lightning_ada.active.strategies.base import QueryContext, Scored
from lightning_ada.active.strategies.region_rule import RegionRule, case_rng, power_key
from lightning_ada.active.units import AnnotationUnit


class EntropyRegionStrategy(RegionRule):
    """Rank regions by their mean voxel entropy, greedily or by a seeded power draw.

    ``s(r) = (1/|r|) sum_{v in r} H(p_v)`` with ``H(p) = -sum_k p_k log p_k`` (nats;
    :func:`~lightning_ada.active.stats.entropy_map`): the unit cuts each case along the entropy
    map (slices: the case's unannotated slices by mean entropy, in groups of ``k``; patch: every
    box of its grid) and each candidate's score is the unit's region mean. With ``power``, the
    ranking key is ``power * log s(r) + g_r``, ``g_r ~ Gumbel(0, 1)`` drawn from a generator
    seeded by ``(seed, round, case id)``: sorting by the key samples regions without
    replacement with probability proportional to ``s(r) ** power`` (the Gumbel-top-k trick;
    nnActive's ``power_pe`` with ``beta = power``, noise added to the region scores). Source:
    nnActive (arXiv 2511.19183), MIC-DKFZ/nnActive ``strategies/entropy_pred.py``.

    Args:
        power: None (default): greedy, highest mean entropy first. A positive number: the
            power draw (nnActive's PowerPE uses 1; larger is greedier).
    """

    name = "entropy_region"
    display_name = "Entropy region"
    table_order = 220
    units = frozenset({"case", "slices", "patch"})

    def __init__(self, power: float | None = None) -> None:
        if power is not None and not power > 0:
            raise ValueError(f"entropy_region power must be positive or null, got {power}")
        super().__init__()
        self.power = None if power is None else float(power)

    def case_regions(
        self, ctx: QueryContext, unit: AnnotationUnit, case_id: str, axis: int | None = None
    ) -> list[Scored]:
        image, shape, annotated = self.case_inputs(ctx, case_id)
        probs = self.predict(ctx, image)
        with self.scoring():
            h = entropy_map(probs)
            del probs
            candidates = unit.candidates(case_id, shape, h, annotated, case_rng(ctx, case_id), axis)
            if self.power is None:
                return [Scored.of(c, entropy=c.score) for c in candidates]
            noise = case_rng(ctx, case_id, stream=1).gumbel(size=len(candidates))
            return [Scored.of(c, power_key(c.score, self.power, g), entropy=c.score,
                              gumbel=float(g), power=self.power)
                    for c, g in zip(candidates, noise)]
