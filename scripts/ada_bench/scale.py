"""Issue 29, item 1: one query round of a registered rule over a large pool of cached inputs.

The network is replaced by lookups, so what is timed is the selection itself: a case's image,
softmax map, decoder features and reference label come from a small bank of maps of a realistic
grid (``bank``: the power profile's 24^3 for case rules, BraTS at 3 mm for region rules), its
embedding and its density descriptor from ``(N, d)`` arrays made once (clustered, as scanners
are), and the density's per-case PCA (:func:`~lightning_ada.active.density.case_descriptor`)
returns the cached descriptor. Everything a rule computes from those inputs - per-case
statistics of the maps, distances, graphs, clustering, greedy orders, the candidates of a unit
and their ranking - is measured.

:func:`inference_rate` is the other half: cases per second of the sliding-window scoring of a
real net at a given grid (random weights: the cost does not depend on them).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ada_bench.memory import RssSampler

#: embedding length of the power profile's DynUNet (filters [8, 16, 32, 64])
EMBEDDING = 64
#: the density descriptor: 4 modalities x 1,024 quantiles
MODALITIES, QUANTILES = 4, 1024
#: labelled cases before the measured round (a sequential rule's third round)
LABELLED = 2


def bank(grid: tuple[int, int, int], n_maps: int | None = None, classes: int = 4,
         seed: int = 0) -> dict:
    """``n_maps`` images, softmax maps, decoder features and reference labels of ``grid``
    (None: 8, or 2 above a million voxels - a 1 mm BraTS grid holds 9 million).

    Each map: smooth random logits plus a tumour blob (classes 1..K-1 in nested shells), so
    entropies, predicted volumes, borders and per-slice scores vary as they do on real cases.
    """
    g = torch.Generator().manual_seed(seed)
    shape = tuple(int(s) for s in grid)
    if n_maps is None:
        n_maps = 8 if np.prod(shape) <= 1_000_000 else 2
    axes = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in shape], indexing="ij")
    out: dict[str, list[torch.Tensor]] = {"image": [], "probs": [], "decoder": [], "label": []}
    for _ in range(n_maps):
        centre = (torch.rand(3, generator=g) - 0.5) * 0.8
        radius = 0.15 + 0.25 * torch.rand(1, generator=g)
        r = torch.sqrt(sum((a - c) ** 2 for a, c in zip(axes, centre))) / radius
        noise = torch.randn((classes, *shape), generator=g)
        logits = F.avg_pool3d(noise[None], 5, stride=1, padding=2)[0] * 3.0
        logits[0] += 2.0
        for c in range(1, classes):  # nested shells: class c inside radius (K - c) / K
            logits[c] += 6.0 * torch.sigmoid(8 * ((classes - c) / classes - r))
        probs = torch.softmax(logits, 0).float()
        brain = (sum(a**2 for a in axes) < 0.9).float()
        out["image"].append(torch.randn((MODALITIES, *shape), generator=g) * brain)
        out["probs"].append(probs)
        out["decoder"].append(torch.randn((8, *shape), generator=g))
        out["label"].append(probs.argmax(0))
    return out


def descriptors(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(density (n, 4, 1024) sorted quantile summaries, embeddings (n, 64))`` in scanner
    groups."""
    rng = np.random.default_rng(seed)
    group = rng.integers(6, size=n)
    loc = rng.normal(0, 0.3, 6)[group][:, None, None] + rng.normal(0, 0.05, (n, MODALITIES, 1))
    scale = rng.uniform(0.7, 1.4, 6)[group][:, None, None] * rng.uniform(0.9, 1.1, (n, MODALITIES, 1))
    density = np.empty((n, MODALITIES, QUANTILES))
    for a in range(0, n, 1000):  # in blocks: the t draws are the memory peak otherwise
        b = min(n, a + 1000)
        density[a:b] = np.sort(
            loc[a:b] + scale[a:b] * rng.standard_t(5, size=(b - a, MODALITIES, QUANTILES)), axis=-1
        )
    centres = rng.normal(size=(6, EMBEDDING))
    embedding = centres[group] + 0.5 * rng.normal(size=(n, EMBEDDING))
    return density, embedding


class CachedPool:
    """``ctx.image`` / ``ctx.predict`` / ``ctx.features`` / ``ctx.reference`` over cached inputs.

    ``image(cid)`` remembers the case, so the next ``predict(image)`` (always the case's own:
    every rule calls them in that order) returns its map and embedding.
    """

    def __init__(self, ids: list[str], maps: dict, density: np.ndarray, embedding: np.ndarray):
        self.index = {c: i for i, c in enumerate(ids)}
        self.maps, self.density, self.embedding = maps, density, embedding
        self.current = 0
        self.n_maps = len(maps["probs"])

    def image(self, cid: str) -> torch.Tensor:
        self.current = self.index[cid]
        return self.maps["image"][self.current % self.n_maps]

    def predict(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.current
        return self.maps["probs"][i % self.n_maps], torch.from_numpy(self.embedding[i])

    def features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        i = self.current % self.n_maps
        return {"probs": self.maps["probs"][i], "decoder": self.maps["decoder"][i],
                "embedding": torch.from_numpy(self.embedding[self.current])}

    def reference(self, cid: str) -> torch.Tensor:
        return self.maps["label"][self.index[cid] % self.n_maps]

    def case_descriptor(self, image: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        """Stands in for the density's per-case PCA: the cached descriptor of the case."""
        return self.density[self.current]


def round_inputs(rule: str, unit: str, n: int, grid: tuple[int, int, int], budget: int) -> dict:
    """The strategy, its context (and unit) for one round over ``n`` cases (case rules) or the
    scans that hold about ``n`` candidates (region rules)."""
    from lightning_ada.active import density as density_module
    from lightning_ada.active.strategies import QueryContext, build_strategy
    from lightning_ada.active.units import UNITS

    unit_obj = None
    options: dict[str, Any] = {}
    if unit != "case":
        unit_obj = UNITS[unit](**({"k": 1} if unit == "slices" else {"size": 8}))
        per_scan = len(unit_obj.candidates("x", grid, torch.zeros(grid), None,
                                           np.random.default_rng(0)))
        n_cases = max(1, round(n / per_scan))
    else:
        n_cases = n
    n_source = 30 if rule == "aada" else 0
    ids = [f"case{i:05d}" for i in range(n_cases)]
    source = [f"src{i:03d}" for i in range(n_source)]
    dens, emb = descriptors(n_cases + n_source)
    maps = bank(grid)
    pool = CachedPool(ids + source, maps, dens, emb)
    density_module.case_descriptor = pool.case_descriptor  # the per-case PCA, cached
    if rule == "replay":
        options["order"] = ids[:budget]
    labelled = ids[:LABELLED] if unit == "case" else []
    strategy = build_strategy(rule, budget=budget, **options)
    if rule in ("stdr", "stdr_slices"):
        rng = np.random.default_rng(1)
        strategy.anchors = rng.normal(size=(8, 256))
    ctx = QueryContext(
        unlabeled=[c for c in ids if c not in labelled], pool=ids, labeled=labelled,
        image=pool.image, predict=pool.predict, modalities=["flair", "t1", "t1ce", "t2"],
        regions={"NCR": [1], "ED": [2], "ET": [3]}, round=LABELLED if unit == "case" else 0,
        seed=0, source=source, features=pool.features, unit=unit_obj,
        candidates=ids if unit != "case" else [], reference=pool.reference,
    )
    return {"strategy": strategy, "ctx": ctx, "unit": unit_obj, "n_cases": n_cases}


def one_round(rule: str, unit: str, n: int, grid: tuple[int, int, int], budget: int = 5,
              options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time one round (this process): seconds, RSS before / peak, what was ranked."""
    made = round_inputs(rule, unit, n, grid, budget)
    strategy, ctx, unit_obj = made["strategy"], made["ctx"], made["unit"]
    for key, value in (options or {}).items():
        setattr(strategy, key, value)
    with RssSampler(interval=0.01) as mem:
        t0 = time.perf_counter()
        ranked = strategy.rank(ctx) if unit_obj is None else strategy.rank_regions(ctx, unit_obj)
        seconds = time.perf_counter() - t0
    return {
        "rule": rule, "unit": unit, "n": n, "cases": made["n_cases"], "ranked": len(ranked),
        "seconds": seconds, "rss_before_mb": mem.base, "rss_peak_mb": mem.peak,
        "rss_rise_mb": mem.rise,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "timings": {k: float(v) for k, v in (strategy.timings or {}).items()},
        "top": [s.case_id for s in ranked[:budget]],
        "scores": {s.case_id: float(s.score) for s in ranked} if unit_obj is None else {},
    }


def agreement(rule: str, n: int, grid: tuple[int, int, int], budget: int,
              exact: dict[str, Any], approx: dict[str, Any]) -> dict[str, Any]:
    """The same round with the exact and the approximate option: top-``budget`` overlap and the
    Spearman correlation of the full rankings."""
    from scipy.stats import spearmanr

    a = one_round(rule, "case", n, grid, budget, exact)
    b = one_round(rule, "case", n, grid, budget, approx)
    ids = sorted(a["scores"])
    rho = spearmanr([a["scores"][c] for c in ids], [b["scores"][c] for c in ids]).statistic
    return {"rule": rule, "n": n, "exact": exact, "approx": approx,
            "exact_s": a["seconds"], "approx_s": b["seconds"],
            "same_picks": a["top"] == b["top"],
            "top_overlap": len(set(a["top"]) & set(b["top"])) / max(1, len(a["top"])),
            "spearman": float(rho)}


def density_agreement(n: int, coarse: int = 64) -> dict[str, Any]:
    """mmActS' density with ``n_quantiles`` 1,024 vs ``coarse`` (the existing option; the
    coarse summary is the bin mean of the fine one): time, Spearman of rho, top-5 % overlap."""
    from scipy.stats import spearmanr

    from lightning_ada.active.density import neighbour_counts_condensed, pairwise_condensed

    dens, _ = descriptors(n)
    out: dict[str, Any] = {"n": n, "coarse": coarse}
    rho = {}
    for q, desc in ((QUANTILES, dens),
                    (coarse, dens.reshape(n, MODALITIES, coarse, -1).mean(axis=-1))):
        t0 = time.perf_counter()
        rho[q] = neighbour_counts_condensed(pairwise_condensed(desc), n)[0]
        out[f"q{q}_s"] = time.perf_counter() - t0
    out["spearman"] = float(spearmanr(rho[QUANTILES], rho[coarse]).statistic)
    top = max(1, n // 20)
    best = [set(np.argsort(-rho[q], kind="stable")[:top]) for q in (QUANTILES, coarse)]
    out["top5pct_overlap"] = len(best[0] & best[1]) / top
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def inference_rate(model_args: dict[str, Any], images: list[torch.Tensor], repeats: int = 1,
                   threads: int = 1, device: str = "cpu") -> dict[str, Any]:
    """Seconds per case of ``predict_case`` (sliding window, embedding on) on ``images``
    (``device``: ``cpu``, or ``cuda`` under bf16 autocast as the ``gpu_1mm`` overlay trains)."""
    from contextlib import nullcontext

    from lightning_ada.models.module import SegmentationModule

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = SegmentationModule(**model_args).to(device)
    model.eval()
    cast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda")
            else nullcontext())
    with cast:
        model.predict_case(images[0][:, :model_args["roi_size"][0], :model_args["roi_size"][1],
                                     :model_args["roi_size"][2]], with_embedding=True)  # warm-up
    per_case = []
    with RssSampler(interval=0.05) as mem, cast:
        for _ in range(repeats):
            for image in images:
                t0 = time.perf_counter()
                model.predict_case(image, with_embedding=True)
                _sync(device)
                per_case.append(time.perf_counter() - t0)
    return {"shape": list(images[0].shape[1:]), "cases": len(per_case),
            "s_per_case": float(np.median(per_case)), "cases_per_s": 1.0 / float(np.median(per_case)),
            "rss_before_mb": mem.base, "rss_peak_mb": mem.peak, "rss_rise_mb": mem.rise,
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def train_step(model_args: dict[str, Any], patch: list[int], batch: int, steps: int = 3,
               threads: int = 1, device: str = "cpu") -> dict[str, Any]:
    """Seconds per step of forward + Dice-CE + backward + Adam at ``patch`` and ``batch`` (the
    bare loop of ``scripts/profile_run.py``; random data and weights; bf16 autocast on
    ``cuda``), the peak RSS and, on a GPU, the peak GPU memory."""
    from contextlib import nullcontext

    from lightning_ada.models.module import SegmentationModule

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = SegmentationModule(**model_args)
    net, loss_fn = model.net.to(device).train(), model.loss
    x = torch.randn(batch, 4, *patch, device=device)
    y = torch.randint(0, model.num_classes, (batch, 1, *patch), device=device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    cuda = device.startswith("cuda")
    cast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with cast:
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()

    step()  # warm-up
    _sync(device)
    with RssSampler(interval=0.05) as mem:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        seconds = (time.perf_counter() - t0) / steps
    out = {"patch": list(patch), "batch": batch, "step_s": seconds, "steps": steps,
           "step_rss_peak_mb": mem.peak}
    if cuda:
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def growth_exponent(ns: list[float], ts: list[float]) -> float:
    """Least-squares slope of ``log t`` on ``log n`` (NaN with fewer than 2 points)."""
    pts = [(n, t) for n, t in zip(ns, ts) if t and t > 0]
    if len({p[0] for p in pts}) < 2:  # fewer than two distinct sizes
        return float("nan")
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


Builder = Callable[..., dict[str, Any]]
