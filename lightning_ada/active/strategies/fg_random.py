"""Foreground-aware random: a uniform draw among the cases with predicted tumour.

ALGORITHMS.md section 17. Source: nnActive (MIC-DKFZ), "nnActive: A Framework for Evaluation of
Active Learning in 3D Biomedical Segmentation", arXiv 2511.19183: a random baseline that knows
where foreground is beats almost every query strategy in 3D segmentation, so it is the honest
comparison. Their version draws patches with foreground; here, at case level, cases whose
current-model prediction has a foreground fraction above ``min_fraction`` come first (in the
order of :class:`~lightning_ada.active.strategies.random.RandomStrategy`'s draw, so with no
case below the threshold the picks are exactly ``random``'s), then the others.
"""

from __future__ import annotations

import time
import zlib

import numpy as np
import torch

from lightning_ada.active.stats import foreground_volume
from lightning_ada.active.strategies.base import QueryContext, Scored, Strategy


class ForegroundRandomStrategy(Strategy):
    """Seeded uniform draw among the unlabelled cases with predicted foreground (module doc).

    Args:
        min_fraction: a case has foreground when its predicted foreground voxels exceed this
            fraction of its voxels (default 0: at least one voxel).
    """

    name = "fg_random"
    display_name = "Random (foreground-aware)"
    table_order = 11
    schedule = "sequential"
    per_case = True

    def __init__(self, min_fraction: float = 0.0) -> None:
        if not 0.0 <= min_fraction < 1.0:
            raise ValueError(f"fg_random min_fraction must be in [0, 1), got {min_fraction}")
        self.min_fraction = float(min_fraction)

    def score(self, ctx: QueryContext) -> list[Scored]:
        out = []
        inference = 0.0
        with torch.no_grad():
            for cid in ctx.unlabeled:
                t0 = time.perf_counter()
                probs, _ = ctx.predict(ctx.image(cid))
                inference += time.perf_counter() - t0
                n_vox = int(np.prod(probs.shape[1:]))
                fraction = foreground_volume(probs)["total"] / max(n_vox, 1)
                del probs
                draw = np.random.default_rng([ctx.seed, ctx.round, zlib.crc32(cid.encode())])
                u = float(draw.random())  # the same draw as ``random``
                fg = fraction > self.min_fraction
                factors = {"uniform": u, "foreground_fraction": fraction, "foreground": float(fg)}
                out.append(Scored(cid, u + (1.0 if fg else 0.0), factors))
        self.timings = {"inference": inference}
        return out
