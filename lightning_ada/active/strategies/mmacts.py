"""mmActS: informativeness (mean entropy x predicted volume) x representativeness (density).

ALGORITHMS.md section 1: ``S_t(x) = U_t(x)^a * A_t(x)^b * rho(x)^c`` (default a = b = c = 1),
argmax over the unlabeled pool, one case per stride (``sequential``), ties by case id.

The options of ALGORITHMS §16 (faithfulness to the official code; defaults = the behaviour the
published results were made with):

* ``density_rule``: ``exclusive`` (a case does not count itself; gates small pools),
  ``inclusive`` (it does) or ``kernel`` (Gaussian kernel density, median-distance bandwidth);
* ``ranking``: ``multiclass`` (one ranking, volume = all foreground) or ``per_region`` (the
  paper's protocol: one binary task per region, entropy of the region's binary posterior
  ``p_r = sum_{c in r} p_c`` and volume = the region's predicted voxels; a run with one
  multi-class model and one budget cycles the regions ``ranking_regions`` round by round);
* ``entropy_roi``: mean entropy over the ``volume`` (official), the predicted ``foreground``, or
  a ``boundary`` band of +- ``boundary_width`` voxels around the predicted foreground's surface;
* ``density_input``: density on the ``network`` input (z-scored, cropped) or on the ``raw``
  images as stored (the authors' ICA code; with ``density_resize: 128``, their grid).

The paper-faithful set: ``density_input: raw, density_resize: 128, ranking: per_region``
(``ranking_regions`` the binary tasks, e.g. ``[ET, NCR, ED]``), ``entropy_roi: volume``; the
radius rule of the paper is unknown (``exclusive`` is ours; ``inclusive`` counts the case).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_ada.active.density import DensityResult, DensityRule, compute_density
from lightning_ada.active.stats import class_map, entropy_map, stream_pool_stats
from lightning_ada.active.strategies.base import QueryContext, Scored, Strategy

EntropyROI = Literal["volume", "foreground", "boundary"]


def boundary_band(mask: Tensor, width: int) -> Tensor:
    """Voxels within ``width`` voxels of the surface of a binary mask (both sides).

    Args:
        mask: ``(H, W, D)`` bool.
        width: band half-width in voxels (>= 1).

    Returns:
        ``(H, W, D)`` bool: dilation minus erosion (cubic structuring element ``2 width + 1``).
    """
    m = mask.float()[None, None]
    k = 2 * width + 1
    dilated = F.max_pool3d(m, k, stride=1, padding=width)
    eroded = 1.0 - F.max_pool3d(1.0 - m, k, stride=1, padding=width)
    return (dilated > 0.5)[0, 0] & ~(eroded > 0.5)[0, 0]


def entropy_and_foreground(probs: Tensor, classes: Sequence[int] | None) -> tuple[Tensor, Tensor]:
    """The voxel maps behind mmActS' informativeness, for all foreground or one region.

    Args:
        probs: ``(K, H, W, D)`` softmax.
        classes: the region's class indices (entropy of its binary posterior
            ``p_r = sum_{c in r} p_c``, foreground ``argmax in classes``); None: the multi-class
            entropy and ``argmax != 0``.

    Returns:
        ``(entropy (H, W, D) in nats, predicted foreground (H, W, D) bool)``.
    """
    label = class_map(probs)
    if classes is None:
        return entropy_map(probs), label != 0
    idx = torch.as_tensor(list(classes), device=probs.device)
    p = probs.index_select(0, idx).sum(0).clamp(0.0, 1.0)
    return entropy_map(torch.stack([1.0 - p, p])), torch.isin(label, idx)


def region_stats(
    probs: Tensor, classes: Sequence[int] | None, roi: EntropyROI = "volume", width: int = 2
) -> tuple[float, int]:
    """Mean entropy and predicted volume of one case, for all foreground or one region.

    Args:
        probs: ``(K, H, W, D)`` softmax.
        classes: the region's class indices (its binary posterior ``p_r = sum_c p_c`` gives a
            binary entropy and its volume is ``#(argmax in classes)``); None: the multi-class
            entropy and the whole foreground ``#(argmax != 0)``.
        roi: voxels the entropy is averaged over (module doc).
        width: boundary band half-width (``roi="boundary"``).

    Returns:
        ``(mean entropy in nats, volume in voxels)``; an empty ROI gives entropy 0.
    """
    h, fg = entropy_and_foreground(probs, classes)
    if roi == "foreground":
        h = h[fg]
    elif roi == "boundary":
        h = h[boundary_band(fg, width)]
    elif roi != "volume":
        raise ValueError(f"unknown entropy_roi {roi!r}; use volume, foreground or boundary")
    return (float(h.double().mean()) if h.numel() else 0.0), int(fg.sum())


class MMActSStrategy(Strategy):
    """The paper's criterion (eq. 1-6), with the fidelity options of ALGORITHMS §16.

    Args:
        exponents: ``(a, b, c)`` of entropy, predicted foreground volume and density; 0 drops a
            factor (the factor ablation), e.g. ``[1, 0, 0]`` is entropy alone.
        schedule: ``sequential`` (the paper) or ``one_off`` (all the budget at epoch 0).
        density_quantile: neighbourhood radius as a quantile of the pairwise distances (§1.3).
        density_delta: absolute radius (overrides the quantile; the bandwidth for ``kernel``).
        density_resize: cube side the images are resized to before PCA (None: native up to 64;
            the authors: 128).
        n_quantiles: quantiles summarising each PCA score distribution.
        density_rule: ``exclusive`` (default, today's: a case does not count itself),
            ``inclusive`` (it does: rho >= 1) or ``kernel`` (Gaussian, bandwidth = median
            pairwise distance unless ``density_delta``: rho >= 1).
        ranking: ``multiclass`` (default: one ranking, volume = whole foreground) or
            ``per_region`` (binary per region, the paper's protocol).
        ranking_regions: the regions ``per_region`` cycles through, one per round (None: every
            region of the model, in its order).
        entropy_roi: ``volume`` (default, official), ``foreground`` or ``boundary``.
        boundary_width: half-width in voxels of the ``boundary`` band.
        density_input: ``network`` (default: the z-scored network input) or ``raw`` (the images
            as stored on disk, full field of view, as the authors did).
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
        density_rule: DensityRule = "exclusive",
        ranking: Literal["multiclass", "per_region"] = "multiclass",
        ranking_regions: list[str] | None = None,
        entropy_roi: EntropyROI = "volume",
        boundary_width: int = 2,
        density_input: Literal["network", "raw"] = "network",
    ) -> None:
        self.exponents = tuple(float(e) for e in exponents)
        if len(self.exponents) != 3 or min(self.exponents) < 0:
            raise ValueError(f"mmacts exponents must be 3 non-negative numbers, got {exponents}")
        if density_rule not in ("exclusive", "inclusive", "kernel"):
            raise ValueError(
                f"mmacts density_rule must be exclusive, inclusive or kernel; got {density_rule!r}"
            )
        if ranking not in ("multiclass", "per_region"):
            raise ValueError(f"mmacts ranking must be multiclass or per_region; got {ranking!r}")
        if entropy_roi not in ("volume", "foreground", "boundary") or boundary_width < 1:
            raise ValueError(
                "mmacts entropy_roi must be volume, foreground or boundary and "
                f"boundary_width >= 1; got {entropy_roi!r}, {boundary_width}"
            )
        if density_input not in ("network", "raw"):
            raise ValueError(f"mmacts density_input must be network or raw; got {density_input!r}")
        self.schedule, self.density_input = schedule, density_input
        self.density_args: dict[str, Any] = {
            "quantile": density_quantile,
            "delta": density_delta,
            "resize": density_resize,
            "n_quantiles": n_quantiles,
            "rule": density_rule,
        }
        self.ranking, self.ranking_regions = ranking, ranking_regions
        self.entropy_roi, self.boundary_width = entropy_roi, int(boundary_width)
        self.density: DensityResult | None = None

    def _density(self, ctx: QueryContext) -> DensityResult:
        """Image-only density over the whole pool, computed once (and cached in the run dir)."""
        if self.density is None or self.density.case_ids != sorted(ctx.pool):
            ids = sorted(ctx.pool)
            cache = ctx.run_dir / "cache" if ctx.run_dir is not None else None
            image = ctx.image
            if self.density_input == "raw":
                if ctx.raw_image is None:
                    raise ValueError("mmacts density_input: raw needs a pool that reads raw images")
                image = ctx.raw_image
            self.density = compute_density(
                ids, (image(c) for c in ids), cache_dir=cache, **self.density_args
            )
        return self.density

    def round_region(self, ctx: QueryContext) -> str | None:
        """The region ranked this round (``per_region``), or None (``multiclass``).

        Raises:
            ValueError: a ``ranking_regions`` entry the model does not define.
        """
        if self.ranking == "multiclass":
            return None
        names = list(self.ranking_regions or ctx.regions)
        unknown = [r for r in names if r not in ctx.regions]
        if unknown or not names:
            raise ValueError(
                f"mmacts ranking_regions {unknown or names} not among the model's regions "
                f"{list(ctx.regions)}"
            )
        return names[ctx.round % len(names)]

    def _informativeness(self, ctx: QueryContext) -> list[tuple[str, float, float]]:
        """``(case id, mean entropy, volume)`` of every unlabeled case under the current model."""
        region = self.round_region(ctx)
        if region is None and self.entropy_roi == "volume":  # the published path, unchanged
            stats = stream_pool_stats(
                ((cid, ctx.image(cid)) for cid in ctx.unlabeled), ctx.predict, ctx.regions,
                self.progress, timings=self.timings, total=len(ctx.unlabeled),
            )
            return [(s.case_id, s.mean_entropy, float(s.volume)) for s in stats]
        classes = None if region is None else ctx.regions[region]
        out, inference, statistics = [], 0.0, 0.0
        with torch.no_grad():
            for cid in ctx.unlabeled:
                t0 = time.perf_counter()
                probs, _ = ctx.predict(ctx.image(cid))
                t1 = time.perf_counter()
                u, vol = region_stats(probs, classes, self.entropy_roi, self.boundary_width)
                out.append((cid, u, float(vol)))
                del probs
                inference += t1 - t0
                statistics += time.perf_counter() - t1
        self.timings.update(inference=inference, statistics=statistics)
        return out

    def score(self, ctx: QueryContext) -> list[Scored]:
        a, b, c = self.exponents
        t0 = time.perf_counter()
        rho = self._density(ctx).density if c else {}
        self.timings = {"density": time.perf_counter() - t0}
        region = self.round_region(ctx)
        extra = {} if region is None else {f"region:{region}": 1.0}  # the region ranked, in the log
        scored = []
        for cid, entropy, volume in self._informativeness(ctx):
            density = rho.get(cid, 1.0)
            factors = {"entropy": entropy, "volume": volume, "density": density}
            score = (entropy**a) * (volume**b) * (density**c)
            scored.append(Scored(cid, score, factors | {"product": score} | extra))
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
