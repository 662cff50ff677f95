"""What the region rules share (ALGORITHMS.md section 18): one model pass per case and round,
the timings, the per-case seeded generators, Gumbel keys and region arithmetic.

:class:`RegionRule` is an abstract helper (no ``name``, so not registered): each rule is one
file, a subclass that implements :meth:`~lightning_ada.active.strategies.base.Strategy.case_regions`
and, when its ranking is a decision over the whole pool (a class split, a draw sequence), the
hook :meth:`RegionRule.order`.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from lightning_ada.active.strategies.base import QueryContext, Scored, Strategy
from lightning_ada.active.units import AnnotationUnit, Region
from lightning_ada.data.regions import gather_boxes

#: scores are clipped to this before a logarithm (a region of zero entropy keeps a finite key)
TINY = 1e-12


def case_rng(ctx: QueryContext, case_id: str, stream: int = 0) -> np.random.Generator:
    """A generator seeded by ``(seed, round, case id)``: the same on every rank, after a resume,
    and whatever the other cases of the pool. ``stream`` 0 is ``random_region``'s
    own generator (the unit's random orders); other streams are independent draws of the case."""
    key = [ctx.seed, ctx.round, zlib.crc32(case_id.encode())]
    return np.random.default_rng(key + [stream] if stream else key)


def power_key(score: float, power: float, gumbel: float) -> float:
    """``power * log(score) + g``: sorting by it draws without replacement with probability
    proportional to ``score ** power`` (Gumbel-top-k, ``g ~ Gumbel(0, 1)``)."""
    return power * math.log(max(float(score), TINY)) + float(gumbel)


def region_sum(region: Region, volume: Tensor) -> float:
    """The sum of an ``(H, W, D)`` tensor over ``region`` (no mask is built)."""
    if region.kind == "case":
        return float(volume.double().sum())
    if region.kind == "slices":
        index = torch.as_tensor(region.indices, dtype=torch.long)
        axis = int(region.axis)  # type: ignore[arg-type]
        return float(volume.index_select(axis, index).double().sum())
    box = tuple(slice(s, s + n) for s, n in zip(region.start, region.size))
    return float(volume[box].double().sum())


def region_sums(regions: Sequence[Region], volume: Tensor) -> list[float]:
    """:func:`region_sum` of every region of one case: boxes of one size are gathered and summed
    in one call (each box reduced on its own, the same float64 sums as box by box), the other
    regions one by one."""
    out: list[float | None] = [None] * len(regions)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(regions):
        inside = r.kind == "patch" and all(
            s + n <= g for s, n, g in zip(r.start, r.size, volume.shape))
        if inside:
            by_size.setdefault(tuple(r.size), []).append(i)
        else:
            out[i] = region_sum(r, volume)
    for size, idx in by_size.items():
        blocks = gather_boxes(volume, [regions[i].start for i in idx], size)
        for i, v in zip(idx, blocks.double().sum(dim=(1, 2, 3)).tolist()):
            out[i] = v
    return out  # type: ignore[return-value]


def regions_overlap(a: Region, b: Region) -> bool:
    """Whether two regions of the same case share a voxel (on a grid at least as large as both)."""
    if a.kind == "case" or b.kind == "case":
        return True
    if a.kind == "slices" and b.kind == "slices":
        return a.axis != b.axis or bool(set(a.indices) & set(b.indices))
    if a.kind == "patch" and b.kind == "patch":
        return all(sa < sb + nb and sb < sa + na
                   for sa, na, sb, nb in zip(a.start, a.size, b.start, b.size))
    sl, box = (a, b) if a.kind == "slices" else (b, a)
    s, n = box.start[sl.axis], box.size[sl.axis]  # type: ignore[index]
    return any(s <= i < s + n for i in sl.indices)


class Taken:
    """The regions taken so far while a rule builds its ranking, per case, and whether a new one
    overlaps one of them: sets of slice indices and voxel masks of boxes (a round's candidates
    are of one kind, on one axis), pairwise :func:`regions_overlap` otherwise.

    Args:
        scored: every candidate of the ranking (sizes the box masks).
    """

    def __init__(self, scored: Sequence[Scored]) -> None:
        self._extent: dict[str, list[int]] = {}
        for s in scored:
            r = s.region
            if r is not None and r.kind == "patch":
                ends = [a + n for a, n in zip(r.start, r.size)]
                old = self._extent.setdefault(s.case_id, ends)
                self._extent[s.case_id] = [max(a, b) for a, b in zip(old, ends)]
        self._regions: dict[str, list[Region]] = {}
        self._slices: dict[tuple[str, int], set[int]] = {}
        # numpy, not torch: indexing a small box of a small mask is several times cheaper there,
        # and a ranking asks it once per candidate
        self._boxes: dict[str, np.ndarray] = {}

    def overlaps(self, case_id: str, region: Region) -> bool:
        """Whether ``region`` shares a voxel with a region of ``case_id`` taken before."""
        taken = self._regions.get(case_id)
        if not taken:
            return False
        kinds = {r.kind for r in taken}
        one_axis = {r.axis for r in taken} == {region.axis}
        if region.kind == "slices" and kinds == {"slices"} and one_axis:
            axis = int(region.axis)  # type: ignore[arg-type]
            return bool(self._slices[(case_id, axis)] & set(region.indices))
        if region.kind == "patch" and kinds == {"patch"}:
            return bool(self._boxes[case_id][self._box(region)].any())
        return any(regions_overlap(region, r) for r in taken)

    def add(self, case_id: str, region: Region) -> None:
        """Record ``region`` as taken."""
        self._regions.setdefault(case_id, []).append(region)
        if region.kind == "slices":
            axis = int(region.axis)  # type: ignore[arg-type]
            self._slices.setdefault((case_id, axis), set()).update(region.indices)
        elif region.kind == "patch":
            if case_id not in self._boxes:
                self._boxes[case_id] = np.zeros(self._extent[case_id], dtype=bool)
            self._boxes[case_id][self._box(region)] = True

    @staticmethod
    def _box(region: Region) -> tuple[slice, ...]:
        return tuple(slice(a, a + n) for a, n in zip(region.start, region.size))


def slice_map(values: np.ndarray | Tensor, shape: Sequence[int], axis: int) -> Tensor:
    """An ``(H, W, D)`` float64 map equal to ``values[j]`` on every voxel of slice ``j`` along
    ``axis`` (a per-slice criterion as a voxel map: its mean over a slice is ``values[j]``)."""
    v = torch.as_tensor(np.asarray(values, dtype=np.float64))
    view = [1, 1, 1]
    view[axis] = -1
    return v.view(view).expand(*shape).clone()


class RegionRule(Strategy):
    """Base of the region rules: timings, progress, and an ``order`` hook for pool decisions.

    ``timings`` of a round: ``inference`` (seconds in the model's pass, one per case) and
    ``scoring`` (everything else a rule computes); filled from :meth:`prepare_round` on.
    """

    def prepare_round(self, ctx: QueryContext) -> None:
        self.timings = {"inference": 0.0, "scoring": 0.0}
        #: case id -> network grid ``(H, W, D)`` of the cases scored this round
        self.shapes: dict[str, tuple[int, int, int]] = {}

    def score(self, ctx: QueryContext) -> list[Scored]:
        """Refused: a region rule ranks regions (:meth:`rank_regions`), never whole cases alone
        (a rule built on a case-level one must not fall back to its parent's ranking)."""
        raise NotImplementedError(
            f"{self.name} is a region rule: it ranks the regions of an annotation unit "
            "(rank_regions with ctx.unit), not whole cases"
        )

    def rank_regions(self, ctx: QueryContext, unit: AnnotationUnit) -> list[Scored]:
        """Every candidate region of ``ctx.candidates`` (one pass per case), then :meth:`order`."""
        self.prepare_round(ctx)
        ids: Sequence[str] = ctx.candidates
        if self.progress:
            from tqdm.auto import tqdm

            ids = tqdm(ctx.candidates, desc=f"{self.name} regions", unit="case")
        scored = [s for cid in ids for s in self.case_regions(ctx, unit, cid)]
        with self.scoring():
            return self.order(ctx, unit, scored)

    def order(self, ctx: QueryContext, unit: AnnotationUnit, scored: list[Scored]) -> list[Scored]:
        """The round's ranking of every case's regions (default: by score, best first; ties by
        case id, then by region)."""
        return sorted(scored, key=lambda s: (-s.score, s.case_id, repr(s.region)))

    # ------------------------------------------------------------------ per case
    def case_inputs(
        self, ctx: QueryContext, case_id: str
    ) -> tuple[Tensor, tuple[int, int, int], Tensor | None]:
        """``(image (C, H, W, D), grid (H, W, D), annotated voxels or None)`` of a case."""
        image = ctx.image(case_id)
        shape = tuple(int(s) for s in image.shape[1:])
        if not hasattr(self, "shapes"):
            self.shapes = {}
        self.shapes[case_id] = shape  # type: ignore[assignment]
        annotated = ctx.annotated(case_id) if ctx.annotated is not None else None
        return image, shape, annotated  # type: ignore[return-value]

    def predict(self, ctx: QueryContext, image: Tensor) -> Tensor:
        """The current model's softmax ``(K, H, W, D)`` of ``image``: the case's one pass."""
        t0 = time.perf_counter()
        with torch.no_grad():
            probs, _ = ctx.predict(image)
        self._add("inference", time.perf_counter() - t0)
        # a plain tensor: every operation on a MONAI MetaTensor goes through its metadata
        # dispatch, which costs more than the arithmetic on maps of this size
        return probs.as_subclass(torch.Tensor)

    @contextmanager
    def scoring(self) -> Iterator[None]:
        """Count the block's seconds as ``scoring``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._add("scoring", time.perf_counter() - t0)

    def _add(self, part: str, seconds: float) -> None:
        if "inference" not in self.timings:  # case_regions called outside a round
            self.timings = {"inference": 0.0, "scoring": 0.0}
        self.timings[part] = self.timings.get(part, 0.0) + seconds
