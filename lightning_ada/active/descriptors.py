"""Case descriptors for the coverage rules: density descriptor, bottleneck embedding, or both.

ALGORITHMS.md section 17. A descriptor ``z_i`` is a vector per pool case; distances between
cases are Euclidean distances between descriptors:

* ``density``: the per-modality quantile summaries of the PCA scores (:mod:`.density`,
  ``(M, Q)`` per case) flattened and divided by ``sqrt(Q)``, so that the Euclidean distance is
  ``sqrt(sum_m W2(P_i^m, P_j^m)^2)`` (quantile form of the 2-Wasserstein distance). It never
  changes (images only; cached like mmActS' density). On the ``network`` input (z-scored per
  modality) much of a scanner's intensity shift is gone; ``density_input: raw`` computes it on
  the images as stored.
* ``embedding``: the source model's pooled bottleneck embedding (ALGORITHMS B4), read once, at
  the strategy's first round (the model that scores round 0 is the source model), and kept
  (also across a resume via the strategy's ``state_dict``).
* ``both``: the two blocks concatenated after scaling each by its median off-diagonal pairwise
  distance (per-block standardisation: each block contributes on a comparable scale and keeps
  its own geometry).

Every function here takes arrays; :class:`PoolDescriptors` is the small stateful helper a
strategy keeps (and the test seam: assign ``vectors`` directly to skip the network).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from scipy.spatial.distance import cdist

from lightning_ada.active.density import compute_density
from lightning_ada.active.pairwise import condensed

DescriptorKind = Literal["density", "embedding", "both"]

__all__ = [
    "DescriptorKind",
    "PoolDescriptors",
    "distance_matrix",
    "median_offdiagonal",
    "scale_block",
]


def distance_matrix(z: np.ndarray) -> np.ndarray:
    """Euclidean distances ``(N, N)`` between the rows of ``z`` ``(N, d)`` (zero diagonal)."""
    z = np.asarray(z, dtype=np.float64)
    return cdist(z, z) if len(z) else np.zeros((0, 0))


def median_offdiagonal(dist: np.ndarray) -> float:
    """Median of the ``N(N-1)/2`` off-diagonal distances (0.0 when N < 2)."""
    off = np.asarray(dist)[np.triu_indices(len(dist), k=1)]
    return float(np.median(off)) if off.size else 0.0


def scale_block(z: np.ndarray) -> np.ndarray:
    """``z / median pairwise distance`` (unchanged when that median is 0).

    The median is taken over the ``N (N - 1) / 2`` distances, computed in blocks (``cdist`` up
    to 2,000 cases, matrix products above: :func:`~lightning_ada.active.pairwise.condensed`).
    """
    cond = condensed(z, "euclidean", "auto") if len(z) > 1 else np.zeros(0)
    med = float(np.median(cond)) if cond.size else 0.0
    return z / med if med > 0 else z


class PoolDescriptors:
    """The descriptor of every pool case, computed once and kept.

    Args:
        kind: ``density``, ``embedding`` or ``both`` (module doc).
        density_args: options of :func:`~lightning_ada.active.density.compute_density`
            (``resize``, ``n_quantiles``, ...) for the density block.
        density_input: the density block reads the ``network`` input or the ``raw`` images.

    Attributes:
        vectors: case id -> ``(d,)`` descriptor (the test seam: fill it to skip computing).
    """

    def __init__(
        self,
        kind: DescriptorKind = "density",
        density_args: dict[str, Any] | None = None,
        density_input: Literal["network", "raw"] = "network",
    ) -> None:
        if kind not in ("density", "embedding", "both"):
            raise ValueError(f"descriptor must be one of density, embedding, both; got {kind!r}")
        if density_input not in ("network", "raw"):
            raise ValueError(f"density_input must be network or raw; got {density_input!r}")
        self.kind, self.density_input = kind, density_input
        self.density_args = dict(density_args or {})
        self.vectors: dict[str, np.ndarray] = {}

    @property
    def needs_embedding(self) -> bool:
        """The descriptor uses the model's embedding."""
        return self.kind in ("embedding", "both")

    def ensure(
        self,
        pool: Sequence[str],
        image: Callable[[str], torch.Tensor],
        predict: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
        cache_dir: Any = None,
        progress: bool = False,
        raw_image: Callable[[str], Any] | None = None,
    ) -> None:
        """Compute the descriptors of the pool cases that have none yet.

        Args:
            pool: every pool case id.
            image: case id -> network input ``(C, H, W, D)``.
            predict: the current model (``(probs, embedding)``); used only for the embedding.
            cache_dir: where the density descriptors are cached (None: no cache).
            progress: progress bars.
            raw_image: case id -> the image as stored (``density_input: raw``).

        Raises:
            ValueError: an embedding is needed and ``predict`` returns none, or raw images are
                needed and ``raw_image`` is None.
        """
        missing = sorted(c for c in pool if c not in self.vectors)
        if not missing:
            return
        blocks: list[np.ndarray] = []
        if self.kind in ("density", "both"):
            read = image
            if self.density_input == "raw":
                if raw_image is None:
                    raise ValueError("density_input: raw needs a pool that reads raw images")
                read = raw_image
            res = compute_density(
                missing, (read(c) for c in missing), cache_dir=cache_dir, progress=progress,
                counts=False, **self.density_args,
            )
            desc = res.descriptors
            blocks.append(desc.reshape(len(missing), -1) / np.sqrt(desc.shape[-1]))
        if self.needs_embedding:
            rows = []
            with torch.no_grad():
                for cid in missing:
                    _, emb = predict(image(cid))
                    if emb is None or emb.numel() == 0:
                        raise ValueError(
                            f"descriptor {self.kind!r} needs case embeddings; the model returned "
                            f"none for case {cid!r}"
                        )
                    rows.append(emb.detach().double().cpu().numpy().reshape(-1))
            blocks.append(np.stack(rows))
        if len(blocks) == 2:
            if self.vectors:  # a new case joins a pool already described: blocks rescaled jointly
                raise ValueError("descriptor 'both' must describe the whole pool at once")
            blocks = [scale_block(b) for b in blocks]
        z = np.concatenate(blocks, axis=1)
        self.vectors.update({c: z[i] for i, c in enumerate(missing)})

    def matrix(self, ids: Sequence[str]) -> np.ndarray:
        """``(len(ids), d)`` descriptors in the order of ``ids``."""
        return np.stack([self.vectors[c] for c in ids]).astype(np.float64)

    def state_dict(self) -> dict[str, Any]:
        """The descriptors (lists of floats), for a resume."""
        return {"kind": self.kind, "vectors": {c: v.tolist() for c, v in self.vectors.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (ignored if it was made for another descriptor kind)."""
        if state.get("kind") == self.kind:
            vectors = state.get("vectors", {})
            self.vectors = {c: np.asarray(v, dtype=np.float64) for c, v in vectors.items()}
