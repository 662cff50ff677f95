"""Foreground-aware random regions: nnActive's improved random baseline (ALGORITHMS.md 18.2).

nnActive (Lüth et al., "nnActive: A Framework for Evaluation of Active Learning in 3D Biomedical
Segmentation", TMLR 2025, arXiv 2511.19183; MIC-DKFZ/nnActive ``strategies/randomlabel.py``,
``randomlabel2.py``, ``utils.py``) shows that a random baseline which knows where the foreground
is beats almost every query method in 3D segmentation. Its query loop visits the images in a
shuffled round robin; at each visit it draws an *area*: ``all`` (a patch at a uniform position),
``seg`` (a patch centred on a uniform voxel of a class drawn uniformly among the image's
foreground classes) or ``border`` (the same on the class's inner border: the class mask minus its
erosion by the 6-connected unit ball). "Random 66% FG" (``random-label``) draws the three areas
with equal probability; "Random 33% FG" (``random-label2``) with 4/6, 1/6, 1/6. Their label maps
are the reference labels (simulation); here ``fg_random_region`` uses the current model's
prediction (usable in practice) and ``fg_random_region_reference`` the reference (simulation
only, like nnActive's).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lightning_ada.active.stats import class_map, inner_border
from lightning_ada.active.strategies.base import QueryContext, Scored
from lightning_ada.active.strategies.region_rule import RegionRule, case_rng, region_sums
from lightning_ada.active.units import AnnotationUnit

#: the areas of a draw, in the order of their probabilities ``(1 - share, share/2, share/2)``
AREAS = ("all", "foreground", "border")


class ForegroundRandomRegionStrategy(RegionRule):
    """nnActive's foreground-aware random draw over regions, on the predicted foreground.

    Per case (one model pass): the unit's candidates in random order (exactly
    ``random_region``'s, from the generator of ``(seed, round, case id)``); for each candidate
    and each foreground class ``c`` the voxels predicted ``c`` inside it and the voxels of the
    inner border of the predicted ``c`` mask inside it. A candidate "has foreground" when the
    map says so inside it. The round's order is a draw sequence: the cases in a shuffled round
    robin (generator of ``(seed, round)``); at each visit an area ``all`` / ``foreground`` /
    ``border`` with probabilities ``1 - share``, ``share / 2``, ``share / 2``; ``all`` takes a
    uniformly random remaining candidate of the case; ``foreground`` (``border``) a class
    uniformly among those the case's remaining candidates hold, then a candidate with
    probability proportional to its voxels of that class (of its border): a uniform voxel, and
    the candidate that holds it, as nnActive centres a patch on a uniform voxel. A case with no
    such voxel is passed over (the next visit draws its own area); once no remaining candidate
    of the pool holds foreground, ``foreground``/``border`` draws take a uniform candidate. Each
    case's choices come from a generator of ``(seed, round, case id)``. Scores are the positions
    in the sequence (``N - i``). Source: nnActive (arXiv 2511.19183), MIC-DKFZ/nnActive
    ``strategies/randomlabel.py`` (``random-label``: ``share = 2/3``),
    ``strategies/randomlabel2.py`` (``random-label2``: ``share = 1/3``), ``strategies/utils.py``
    (``get_locs_from_segmentation``, ``generate_random_patch_from_locs``).

    Args:
        share: probability that a draw targets the foreground or its border (half each);
            2/3 is nnActive's "Random 66% FG", 1/3 its "Random 33% FG", 0 a uniform draw in
            nnActive's round robin.
        schedule: ``sequential`` (one scan's worth per round) or ``one_off``.
    """

    name = "fg_random_region"
    display_name = "Random FG-aware region"
    table_order = 210
    units = frozenset({"case", "slices", "patch"})

    def __init__(
        self, share: float = 2 / 3, schedule: Literal["sequential", "one_off"] = "sequential"
    ) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{self.name} share must be in [0, 1], got {share}")
        if schedule not in ("sequential", "one_off"):
            raise ValueError(f"schedule must be 'sequential' or 'one_off', got {schedule!r}")
        super().__init__()
        self.share = float(share)
        self.schedule = schedule  # type: ignore[misc]

    def labels(self, ctx: QueryContext, case_id: str, image: Tensor) -> Tensor:
        """The class-index map ``(H, W, D)`` the foreground is read from: the prediction."""
        return class_map(self.predict(ctx, image))

    def case_regions(
        self, ctx: QueryContext, unit: AnnotationUnit, case_id: str, axis: int | None = None
    ) -> list[Scored]:
        image, shape, annotated = self.case_inputs(ctx, case_id)
        labels = self.labels(ctx, case_id, image)
        with self.scoring():
            classes = [int(c) for c in torch.unique(labels).tolist() if c > 0]
            maps = {}
            for c in classes:
                mask = labels == c
                maps[c] = (mask.float(), inner_border(mask).float())
            del labels
            out = []
            rng = case_rng(ctx, case_id)
            cands = unit.candidates(case_id, shape, None, annotated, rng, axis)
            regions = [cand.region for cand in cands]
            sums = {}
            for c, (fg, border) in maps.items():
                sums[f"foreground_{c}"] = region_sums(regions, fg)
                sums[f"border_{c}"] = region_sums(regions, border)
            for j, cand in enumerate(cands):
                counts = {k: v[j] for k, v in sums.items()}
                foreground = sum(v for k, v in counts.items() if k.startswith("foreground_"))
                border = sum(v for k, v in counts.items() if k.startswith("border_"))
                out.append(Scored.of(cand, cand.score + float(foreground > 0), uniform=cand.score,
                                     foreground=foreground, border=border, **counts))
            return out

    def order(self, ctx: QueryContext, unit: AnnotationUnit, scored: list[Scored]) -> list[Scored]:
        """The draw sequence (class doc); ``scored`` holds each case's candidates in its own
        random order."""
        by_case: dict[str, list[Scored]] = {}
        for s in scored:
            by_case.setdefault(s.case_id, []).append(s)
        if not by_case:
            return []
        classes = sorted({int(k.split("_", 1)[1]) for s in scored for k in s.factors
                          if k.startswith("foreground_")})
        counts = {cid: {area: np.array([[s.factors.get(f"{area}_{c}", 0.0) for c in classes]
                                        for s in cands]).reshape(len(cands), len(classes))
                        for area in AREAS[1:]}
                  for cid, cands in by_case.items()}
        alive = {cid: np.ones(len(cands), dtype=bool) for cid, cands in by_case.items()}
        left = {area: sum(float(counts[cid][area].sum()) for cid in by_case) for area in AREAS[1:]}
        draws = {cid: case_rng(ctx, cid, stream=1) for cid in by_case}
        pool = ctx.rng()
        ids = sorted(by_case)
        cycle = [ids[i] for i in pool.permutation(len(ids))]
        p = [1.0 - self.share, self.share / 2, self.share / 2]
        out: list[Scored] = []
        visit, remaining = 0, len(scored)
        while remaining:
            area = AREAS[int(pool.choice(3, p=p))]
            cid = cycle[visit % len(cycle)]
            visit += 1
            live = alive[cid]
            if not live.any():
                continue
            extra: dict[str, float] = {}
            if area != "all" and left[area] <= 0:
                extra["fallback"] = 1.0
                area_used = "all"
            else:
                area_used = area
            draw = draws[cid]
            if area_used == "all":
                j = int(draw.choice(np.flatnonzero(live)))
            else:
                weights = counts[cid][area_used] * live[:, None]
                present = np.flatnonzero(weights.sum(0) > 0)
                if present.size == 0:
                    continue  # nothing of that area in this case: the next visit draws anew
                c = int(present[draw.integers(present.size)])
                w = weights[:, c]
                j = int(draw.choice(len(w), p=w / w.sum()))
                extra["class"] = float(classes[c])
            live[j] = False
            for a in AREAS[1:]:
                left[a] -= float(counts[cid][a][j].sum())
            s = by_case[cid][j]
            out.append(Scored(cid, 0.0, s.factors | extra | {"area": float(AREAS.index(area))},
                              s.region))
            remaining -= 1
        total = len(out)
        return [Scored(s.case_id, float(total - i), s.factors, s.region) for i, s in enumerate(out)]


class ForegroundRandomRegionReferenceStrategy(ForegroundRandomRegionStrategy):
    """SIMULATION ONLY: :class:`ForegroundRandomRegionStrategy` on the reference labels.

    The draw of ``fg_random_region`` with the foreground read from the reference label of each
    pool case (``ctx.reference``), as nnActive's own foreground-aware random does: an upper
    reference for what knowing the true foreground is worth, which no real annotation session
    can run (the reference is what the annotator is asked for). No model pass. Source: nnActive
    (arXiv 2511.19183), MIC-DKFZ/nnActive ``strategies/randomlabel.py``.

    Args:
        share, schedule: as ``fg_random_region``.

    Raises:
        ValueError: the run offers no reference labels (``ctx.reference`` is None).
    """

    name = "fg_random_region_reference"
    simulation_only = True
    display_name = "Random FG-aware region (reference, simulation only)"
    table_order = 211

    def prepare_round(self, ctx: QueryContext) -> None:
        super().prepare_round(ctx)
        self._require_reference(ctx)

    def labels(self, ctx: QueryContext, case_id: str, image: Tensor) -> Tensor:
        """The reference label of the case (simulation only)."""
        reference = self._require_reference(ctx)
        with self.scoring():
            return torch.as_tensor(reference(case_id)).long()

    def _require_reference(self, ctx: QueryContext):  # type: ignore[no-untyped-def]
        if ctx.reference is None:
            raise ValueError(
                f"{self.name} exists in simulation only: it reads the reference labels of the "
                "pool (ctx.reference), which this run does not offer; use fg_random_region "
                "(the predicted foreground) instead"
            )
        return ctx.reference
