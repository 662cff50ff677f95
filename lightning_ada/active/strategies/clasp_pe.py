"""ClaSP PE: class-stratified, scheduled power predictive entropy (ALGORITHMS.md section 18.4).

Lüth, Traub et al., "Finally Outshining the Random Baseline: A Simple and Effective Solution for
Active Learning in 3D Biomedical Imaging", TMLR 2026, arXiv 2601.13677; implementation in
MIC-DKFZ/nnActive (``strategies/entropy_balanced.py``: ``class_power_pe66_exp``, which the
authors' analysis scripts name "ClaSP PE"). Two changes to predictive entropy: 66 % of each
query is split evenly over the foreground classes, each class ranking regions by its
class-weighted entropy, and every ranking is perturbed by log-scale power noise whose strength
falls exponentially over the query loops (exploration first, exploitation later).
"""

from __future__ import annotations

import math
import statistics
from collections import deque

import numpy as np

from lightning_ada.active.stats import entropy_map
from lightning_ada.active.strategies.base import QueryContext, Scored
from lightning_ada.active.strategies.region_rule import TINY, RegionRule, Taken, case_rng
from lightning_ada.active.units import AnnotationUnit

#: the ``stratum`` factor of the plain predictive-entropy ranking (classes are 1 .. K-1)
PLAIN = 0


class ClaSPPEStrategy(RegionRule):
    """Per round, ``class_share`` of the regions from per-class rankings, the rest from PE.

    Scores of a candidate region ``r`` (means over its voxels, ``H`` the voxel entropy in nats):
    plain ``u_0(r) = mean_r H(p_v)``; class ``c`` (``1 .. K-1``) ``u_c(r) = mean_r H(p_v) p_{v,c}``
    (nnActive's ``class_pred_entropy``). Each ranking is perturbed by power noise:
    ``key = log u(r) + g / beta_t``, ``g ~ Gumbel(0, 1)`` seeded by ``(seed, round, case id)``
    (sorting samples regions with probability ``~ u(r) ** beta_t``), with the exponential
    schedule ``beta_t = beta_start (beta_end / beta_start) ** (t / (T - 1))`` over the ``T``
    rounds (``t`` = ``ctx.round``, clipped to ``T - 1``; ``T = 1``: ``beta_start``).

    A round of ``n`` regions (``regions_per_round``, or as many of the median candidate's size
    as fit in one whole-scan equivalent, the round's allowance) takes ``n_c = int(n *
    class_share)`` from the class rankings, ``n_c // C`` each (``C = K - 1``; the remainder one
    more each for a seeded random choice of classes) and ``n - n_c`` from the plain ranking; the
    rankings take their regions in a seeded random order of the rankings, each its best regions
    not overlapping a region taken before (a class short of regions leaves its places to the
    plain ranking). The returned order repeats this block of ``n`` until every ranking is
    exhausted, so taking it in rank order until the allowance is the published split.
    Source: arXiv 2601.13677; MIC-DKFZ/nnActive ``strategies/entropy_balanced.py``,
    ``strategies/utils.py`` (``power_noising``, ``exponential_schedule``).

    Args:
        class_share: share of a round's regions split over the classes (the paper: 0.66).
        beta_start, beta_end: the power at the first and at the last round (the code: 1, 100).
        rounds: ``T`` (None: the run's budget in whole-scan equivalents, one per round).
        regions_per_round: ``n`` (None: derived from the candidates' size, see above).
    """

    name = "clasp_pe"
    display_name = "ClaSP PE"
    table_order = 230
    units = frozenset({"slices", "patch"})

    def __init__(
        self,
        class_share: float = 0.66,
        beta_start: float = 1.0,
        beta_end: float = 100.0,
        rounds: int | None = None,
        regions_per_round: int | None = None,
    ) -> None:
        if not 0.0 <= class_share <= 1.0:
            raise ValueError(f"clasp_pe class_share must be in [0, 1], got {class_share}")
        if not (beta_start > 0 and beta_end > 0):
            raise ValueError(
                f"clasp_pe beta_start and beta_end must be positive, got {beta_start}, {beta_end}"
            )
        if any(v is not None and v < 1 for v in (rounds, regions_per_round)):
            raise ValueError(
                f"clasp_pe rounds and regions_per_round must be >= 1 or null, got {rounds}, "
                f"{regions_per_round}"
            )
        super().__init__()
        self.class_share = float(class_share)
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)
        self.rounds, self.regions_per_round = rounds, regions_per_round

    # ------------------------------------------------------------------ schedule
    def total_rounds(self) -> int:
        """``T``: the option, else the budget (whole-scan equivalents, one per round)."""
        return self.rounds or max(1, math.ceil(self.budget))

    def beta(self, round: int) -> float:
        """The power ``beta_t`` of round ``round`` (the exponential schedule)."""
        t_max = self.total_rounds() - 1
        if t_max <= 0:
            return self.beta_start
        t = min(max(int(round), 0), t_max)
        return self.beta_start * (self.beta_end / self.beta_start) ** (t / t_max)

    # ------------------------------------------------------------------ per case
    def case_regions(
        self, ctx: QueryContext, unit: AnnotationUnit, case_id: str, axis: int | None = None
    ) -> list[Scored]:
        image, shape, annotated = self.case_inputs(ctx, case_id)
        probs = self.predict(ctx, image)
        with self.scoring():
            beta = self.beta(ctx.round)
            noise = case_rng(ctx, case_id, stream=1)
            h = entropy_map(probs)
            out = []
            for stratum in range(probs.shape[0]):  # 0: plain PE; c >= 1: class c
                score_map = h if stratum == PLAIN else h * probs[stratum]
                candidates = unit.candidates(case_id, shape, score_map, annotated,
                                             case_rng(ctx, case_id), axis)
                for c, g in zip(candidates, noise.gumbel(size=len(candidates))):
                    key = math.log(max(c.score, TINY)) + float(g) / beta
                    out.append(Scored.of(c, key, stratum=float(stratum), stratum_score=c.score,
                                         beta=beta, noise=float(g) / beta))
            del probs
            return out

    # ------------------------------------------------------------------ the class split
    def per_round(self, ctx: QueryContext, scored: list[Scored]) -> int:
        """``n``: the option, else one whole-scan equivalent (the mean voxels of a pool case,
        as the callback's allowance) over the median voxels of a plain-ranking candidate."""
        if self.regions_per_round:
            return self.regions_per_round
        shapes: dict[str, tuple[int, ...]] = dict(getattr(self, "shapes", {}))
        for cid in [*ctx.pool, *{s.case_id for s in scored}]:
            if cid not in shapes:  # not scored this round: fully annotated
                done = ctx.annotated(cid) if ctx.annotated is not None else None
                shape = done.shape if done is not None else ctx.image(cid).shape[1:]
                shapes[cid] = tuple(int(v) for v in shape)
        scan = statistics.fmean(math.prod(s) for s in shapes.values())
        sizes = [s.region.voxels(shapes[s.case_id]) for s in scored  # type: ignore[union-attr]
                 if s.factors["stratum"] == PLAIN]
        return max(1, int(scan // statistics.median(sizes))) if sizes else 1

    def order(self, ctx: QueryContext, unit: AnnotationUnit, scored: list[Scored]) -> list[Scored]:
        if not scored:
            return []
        n = self.per_round(ctx, scored)
        strata = sorted({int(s.factors["stratum"]) for s in scored})
        classes = [c for c in strata if c != PLAIN]
        queues = {k: deque(sorted((s for s in scored if s.factors["stratum"] == k),
                                  key=lambda s: (-s.score, s.case_id, repr(s.region))))
                  for k in [PLAIN, *classes]}
        rng = ctx.rng()
        taken = Taken(scored)
        out: list[Scored] = []

        def take(stratum: int, want: int, block: int) -> int:
            queue, got = queues[stratum], 0
            while queue and got < want:
                s = queue.popleft()
                assert s.region is not None
                if taken.overlaps(s.case_id, s.region):
                    continue
                taken.add(s.case_id, s.region)
                out.append(Scored(s.case_id, 0.0, s.factors | {"block": float(block)}, s.region))
                got += 1
            return got

        block = 0
        while any(queues.values()):
            n_cls = int(n * self.class_share) if classes else 0
            quota = dict.fromkeys(classes, n_cls // len(classes) if classes else 0)
            for c in (rng.permutation(classes)[: n_cls % len(classes)] if classes else []):
                quota[int(c)] += 1
            quota[PLAIN] = n - n_cls
            got = 0
            for k in rng.permutation(np.asarray([PLAIN, *classes])):
                got += take(int(k), quota[int(k)], block)
            for k in [PLAIN, *classes]:  # places a ranking left empty: PE first, then classes
                got += take(k, n - got, block)
            block += 1
        total = len(out)
        return [Scored(s.case_id, float(total - i), s.factors, s.region) for i, s in enumerate(out)]
