"""Cost of a query round: one mmActS scoring round vs pool size, and the density's W1.

* :func:`scoring_round`: one ``MMActSStrategy.rank`` over a phantom pool of ``n`` cases
  (sliding-window inference, streamed statistics, density), time split and RSS rise above the
  level after the data were cached (the probability maps are streamed, so it should stay flat);
* :func:`density_w1`: the density's case distances by the quantile summaries (ours) against
  POT's exact pairwise 1-D W1 on the same PCA scores: time and max relative error.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ada_bench.memory import RssSampler


def pool_datamodule(root: Path, n_pool: int, size: int, n_generated: int, seed: int = 7) -> Any:
    """A set-up datamodule whose pool is the first ``n_pool`` cases of one glioma phantom.

    The phantom holds ``n_generated`` pool cases (generated once, prefix-stable), so every pool
    size reads the same cases; only the ``n_pool`` used ones (and one test case) are loaded.
    """
    from lightning_ada.data.datamodule import ActiveDataModule

    ids = [f"glioma_pool_{i:03d}" for i in range(n_pool)]
    dm = ActiveDataModule(
        root=str(root),
        phantom={
            "task": "glioma",
            "size": size,
            "n_source": 1,
            "n_source_test": 1,
            "n_pool": n_generated,
            "n_test": 1,
            "seed": seed,
            "progress": False,
        },
        splits={"source": [], "source_test": [], "pool": ids, "test": ["glioma_test_000"]},
        validate_inputs=False,
        patch_size=[size] * 3,
        divisible_by=8,
    )
    dm.setup("fit")
    return dm


def segmentation_model(size: int, ckpt: str | None = None) -> Any:
    """The phantom configs' net (DynUNet 8-64, 4 modalities, 3 classes); weights from ``ckpt``
    or random (the cost of a round does not depend on the weights)."""
    import torch

    from lightning_ada.models.module import SegmentationModule

    torch.manual_seed(0)  # the same random weights in every measuring process
    model = SegmentationModule(roi_size=[size] * 3, source_checkpoint=ckpt)
    model.eval()
    return model


def warm_up(model: Any, image: Any) -> None:
    """One prediction before measuring: the allocator's and the kernels' one-off buffers are
    then in the baseline, so the measured RSS rise is what the pool adds."""
    model.predict_case(image, with_embedding=True)


def scoring_round(
    root: Path, n_pool: int, size: int, n_generated: int, ckpt: str | None = None
) -> dict[str, float]:
    """One mmActS round over ``n_pool`` cases: seconds by part and RSS (MiB, after a warm-up)."""
    from lightning_ada.active.strategies import QueryContext, build_strategy

    dm = pool_datamodule(root, n_pool, size, n_generated)
    model = segmentation_model(size, ckpt)
    warm_up(model, dm.image(dm.split_ids["test"][0]))
    strategy = build_strategy("mmacts", progress=False)
    ctx = QueryContext(
        unlabeled=dm.unlabeled_ids(),
        pool=dm.pool.case_ids,
        labeled=[],
        image=dm.image,
        predict=lambda img: model.predict_case(img, with_embedding=True),
        modalities=list(dm.hparams.modalities),
        regions=model.regions,
        run_dir=None,
    )
    with RssSampler() as mem:
        t0 = time.perf_counter()
        strategy.rank(ctx)
        total = time.perf_counter() - t0
    return {
        "pool": n_pool,
        "total_s": total,
        **{f"{k}_s": v for k, v in strategy.timings.items()},
        "rss_before_mb": mem.base,
        "rss_peak_mb": mem.peak,
        "rss_rise_mb": mem.rise,
    }


def density_w1(
    root: Path, n_pool: int, size: int, n_generated: int, n_quantiles: int = 1024
) -> dict[str, float]:
    """Pairwise case distances ``sum_m W1`` by quantile summaries vs POT's exact W1.

    Both start from the same per-modality PCA scores (timed separately as ``pca_s``); ours adds
    the ``(M, Q)`` summaries and one L1 ``cdist``, the reference runs ``ot.wasserstein_1d`` for
    every pair and modality.
    """
    from lightning_ada.active.density import (
        pairwise_distances,
        pca_scores,
        quantile_summary,
        w1_exact,
    )

    dm = pool_datamodule(root, n_pool, size, n_generated)
    images = [dm.image(c).detach().cpu().numpy() for c in dm.pool.case_ids]
    t0 = time.perf_counter()
    scores = [[pca_scores(v) for v in img] for img in images]
    t1 = time.perf_counter()
    desc = np.stack([[quantile_summary(s, n_quantiles) for s in case] for case in scores])
    ours = pairwise_distances(desc)
    t2 = time.perf_counter()
    n = len(scores)
    exact = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            exact[i, j] = exact[j, i] = sum(w1_exact(a, b) for a, b in zip(scores[i], scores[j]))
    t3 = time.perf_counter()
    iu = np.triu_indices(n, 1)
    rel = np.abs(ours[iu] - exact[iu]) / np.maximum(exact[iu], 1e-12)
    return {
        "pool": n_pool,
        "pairs": int(iu[0].size),
        "pca_s": t1 - t0,
        "quantile_s": t2 - t1,
        "exact_s": t3 - t2,
        "distance_ratio": (t3 - t2) / max(t2 - t1, 1e-9),
        "total_ratio": (t3 - t1 + (t1 - t0)) / max(t2 - t0, 1e-9),
        "max_rel_err": float(rel.max()),
        "mean_rel_err": float(rel.mean()),
        "n_scores": int(np.mean([s.size for case in scores for s in case])),
    }
