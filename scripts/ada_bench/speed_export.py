"""The official pipeline's scoring I/O vs ours, on the same pool, model and statistics.

* official (``policy/sort.py`` after an nnU-Net export, ALGORITHMS.md 1.4): predict every case
  and write its full probability map to ``<case>.npz`` (``np.savez_compressed``, key
  ``probabilities``), then read every file back and reduce it (mean entropy, foreground volume);
* ours (``stream_pool_stats``): predict and reduce each case at once, one map alive at a time.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ada_bench.memory import RssSampler
from ada_bench.speed_query import pool_datamodule, segmentation_model, warm_up
from lightning_ada.active.stats import compute_case_stats, stream_pool_stats


def _predict(model: Any) -> Any:
    return lambda img: model.predict_case(img, with_embedding=True)


def streamed(root: Path, n_pool: int, size: int, n_generated: int) -> dict[str, Any]:
    """Our streamed scoring: seconds and RSS rise (MiB)."""
    dm = pool_datamodule(root, n_pool, size, n_generated)
    model = segmentation_model(size)
    warm_up(model, dm.image(dm.split_ids["test"][0]))
    ids = dm.unlabeled_ids()
    with RssSampler() as mem:
        t0 = time.perf_counter()
        stats = stream_pool_stats(((c, dm.image(c)) for c in ids), _predict(model), model.regions)
        total = time.perf_counter() - t0
    return {
        "mode": "streamed",
        "pool": n_pool,
        "total_s": total,
        "rss_rise_mb": mem.rise,
        "disk_mb": 0.0,
        "entropy_sum": float(sum(s.mean_entropy for s in stats)),
    }


def exported(root: Path, n_pool: int, size: int, n_generated: int, folder: Path) -> dict[str, Any]:
    """The official way: export every probability map to ``.npz``, then read all back to score."""
    dm = pool_datamodule(root, n_pool, size, n_generated)
    model = segmentation_model(size)
    warm_up(model, dm.image(dm.split_ids["test"][0]))
    ids = dm.unlabeled_ids()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    predict = _predict(model)
    with RssSampler() as mem:
        t0 = time.perf_counter()
        with torch.no_grad():
            for c in ids:
                probs, _ = predict(dm.image(c))
                np.savez_compressed(folder / f"{c}.npz", probabilities=probs.numpy())
                del probs
        t1 = time.perf_counter()
        stats = []
        for c in ids:
            with np.load(folder / f"{c}.npz") as f:
                probs = torch.from_numpy(f["probabilities"])
            stats.append(compute_case_stats(c, probs, regions=model.regions))
            del probs
        t2 = time.perf_counter()
    disk = sum(p.stat().st_size for p in folder.glob("*.npz")) / 2**20
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "mode": "exported",
        "pool": n_pool,
        "total_s": t2 - t0,
        "export_s": t1 - t0,
        "read_score_s": t2 - t1,
        "rss_rise_mb": mem.rise,
        "disk_mb": disk,
        "entropy_sum": float(sum(s.mean_entropy for s in stats)),
    }
