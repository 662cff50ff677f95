"""STDR reference points ("anchors") computed from the SOURCE domain (ALGORITHMS.md section 6).

STDR is source-free at adaptation time: the anchors are made once, at the end of the source
training, and travel with the source checkpoint. This module holds

- the pure descriptor maths shared by the source side (anchors) and the target side (the
  ``stdr`` strategy): :func:`slice_descriptors`, :func:`body_slices`, :func:`case_descriptors`,
  :func:`anchor_distances`;
- :func:`fit_anchors` (scikit-learn k-means);
- :func:`write_anchors_npy` / :func:`load_anchors` (``anchors.npy`` or a checkpoint);

The Lightning side (the ``SourceAnchors`` callback that runs these during the source ``fit``)
lives in :mod:`lightning_ada.active.source_anchors`, so this module never imports Lightning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_ada.io import atomic_path

__all__ = [
    "CHECKPOINT_KEY",
    "META_KEY",
    "anchor_distances",
    "body_slices",
    "case_descriptors",
    "compute_source_anchors",
    "fit_anchors",
    "load_anchors",
    "slice_descriptors",
    "write_anchors_npy",
]

#: checkpoint key of the ``(k, grid**2)`` float32 anchor tensor (and of ``source_artifacts``)
CHECKPOINT_KEY = "stdr_anchors"
#: checkpoint key of the descriptor settings the anchors were made with (plain dict)
META_KEY = "stdr_anchors_meta"

Weight = Literal["background", "foreground"]
Features = Callable[[Tensor], Mapping[str, Tensor]]


# ---------------------------------------------------------------------------------- descriptors
def slice_descriptors(
    decoder: Tensor,
    probs: Tensor,
    weight: Weight = "background",
    grid: int = 16,
    axis: int = -1,
    min_positive: int = 10,
) -> np.ndarray:
    """STDR descriptor of every slice of one case (ALGORITHMS §6, "Descriptor").

    Per slice along ``axis``: ``s = mean_channels(Phi * w)`` (an in-plane map), max-pooled to a
    ``grid x grid`` map (adaptive pooling, so cases of any in-plane size give the same length;
    the 2-D original pools 256x256 with kernel 16), flattened and divided by ``mean(w)``. A
    slice with ``mean(w) == 0`` or fewer than ``min_positive`` voxels with ``w > 0`` keeps an
    all-zero descriptor (it is still ranked), as in the official code.

    Args:
        decoder: ``(F, H, W, D)`` last decoder feature map ``Phi``.
        probs: ``(K, H, W, D)`` softmax of the same pass.
        weight: ``background`` (``w = p_0``, what the official code does) or ``foreground``
            (``w = 1 - p_0``).
        grid: side of the pooled in-plane map (descriptor length ``grid**2``).
        axis: spatial axis of the slices (0, 1, 2 or negative; ``-1`` = D, axial).
        min_positive: minimum number of ``w > 0`` voxels for a non-zero descriptor.

    Returns:
        ``(S, grid**2)`` float64 array, S = number of slices along ``axis``.
    """
    if decoder.dim() != 4 or probs.dim() != 4 or decoder.shape[1:] != probs.shape[1:]:
        raise ValueError(
            f"decoder (F, H, W, D) and probs (K, H, W, D) must share the grid, got "
            f"{tuple(decoder.shape)} and {tuple(probs.shape)}"
        )
    if weight not in ("background", "foreground"):
        raise ValueError(f"weight must be 'background' or 'foreground', got {weight!r}")
    ax = _spatial_axis(axis)
    w = probs[0].detach().double()
    if weight == "foreground":
        w = 1.0 - w
    phi = decoder.detach().double().mean(0)  # mean_c(Phi * w) = w * mean_c(Phi)
    s = (phi * w).movedim(ax, 0)  # (S, a, b)
    w = w.movedim(ax, 0)
    pooled = F.adaptive_max_pool2d(s.unsqueeze(1), grid).flatten(1)  # (S, grid**2)
    w_mean = w.flatten(1).mean(1)
    n_pos = (w > 0).flatten(1).sum(1)
    valid = (w_mean > 0) & (n_pos >= min_positive)
    out = torch.zeros_like(pooled)
    out[valid] = pooled[valid] / w_mean[valid, None]
    return out.cpu().numpy()


def body_slices(image: Tensor, axis: int = -1) -> np.ndarray:
    """Slices inside the body: any non-zero voxel in any channel (ALGORITHMS §6, 3D adaptation).

    The preprocessing normalises non-zero voxels only, so the background stays exactly 0.

    Args:
        image: ``(C, H, W, D)`` preprocessed image.
        axis: spatial axis of the slices (as in :func:`slice_descriptors`).

    Returns:
        ``(S,)`` boolean array.
    """
    ax = _spatial_axis(axis)
    nonzero = (image.detach() != 0).any(0).movedim(ax, 0)
    return nonzero.flatten(1).any(1).cpu().numpy()


def case_descriptors(
    features: Mapping[str, Tensor],
    image: Tensor,
    weight: Weight = "background",
    grid: int = 16,
    axis: int = -1,
    min_positive: int = 10,
) -> np.ndarray:
    """Descriptors of the body slices of one case (all slices if none is inside the body).

    Args:
        features: one model pass ``{"probs": (K, H, W, D), "decoder": (F, H, W, D), ...}``
            (``LightningADAModule.case_features``).
        image: the ``(C, H, W, D)`` image that was passed (defines the body slices).
        weight, grid, axis, min_positive: see :func:`slice_descriptors`.

    Returns:
        ``(S_body, grid**2)`` float64 array.
    """
    desc = slice_descriptors(
        features["decoder"], features["probs"], weight, grid, axis, min_positive
    )
    body = body_slices(image, axis)
    if body.shape[0] != desc.shape[0]:
        raise ValueError(
            f"image and features disagree on the number of slices: {body.shape[0]} vs "
            f"{desc.shape[0]}"
        )
    return desc[body] if body.any() else desc


def anchor_distances(descriptors: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """``delta = min_k mean((z - c_k)**2)`` per descriptor (ALGORITHMS §6, "Score").

    Args:
        descriptors: ``(S, G)`` slice descriptors.
        anchors: ``(k, G)`` reference points.

    Returns:
        ``(S,)`` float64 distances to the nearest anchor.
    """
    z = np.asarray(descriptors, dtype=np.float64)
    c = np.asarray(anchors, dtype=np.float64)
    if z.ndim != 2 or c.ndim != 2 or z.shape[1] != c.shape[1]:
        raise ValueError(
            f"descriptors (S, G) and anchors (k, G) must share G, got {z.shape} and {c.shape}"
        )
    if len(c) == 0:
        raise ValueError("no anchors")
    d = np.empty((len(z), len(c)))
    for j, cj in enumerate(c):  # k small: keeps memory at O(S*G)
        d[:, j] = ((z - cj) ** 2).mean(1)
    return d.min(1) if len(z) else np.zeros(0)


# ---------------------------------------------------------------------------------- k-means
def fit_anchors(descriptors: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means centroids of source slice descriptors (ALGORITHMS §6, "Reference points").

    scikit-learn ``KMeans`` (k-means++, ``n_init=10``, ``random_state=seed``): deterministic
    for a seed. ``k`` is reduced (with a warning) to the number of distinct descriptors.

    Args:
        descriptors: ``(N, G)`` descriptors.
        k: number of anchors.
        seed: k-means random state.

    Returns:
        ``(k', G)`` float32 anchors, ``k' = min(k, #distinct descriptors)``.
    """
    from sklearn.cluster import KMeans

    x = np.asarray(descriptors, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"fit_anchors needs a non-empty (N, G) array, got shape {x.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_distinct = len(np.unique(x, axis=0))
    if n_distinct < k:
        warnings.warn(
            f"only {n_distinct} distinct source descriptors: using {n_distinct} anchors, not {k}",
            stacklevel=2,
        )
        k = n_distinct
    km = KMeans(n_clusters=k, init="k-means++", n_init=10, random_state=int(seed)).fit(x)
    return km.cluster_centers_.astype(np.float32)


def compute_source_anchors(
    features: Features,
    images: Iterable[Tensor],
    k: int = 8,
    seed: int = 0,
    weight: Weight = "background",
    grid: int = 16,
    axis: int = -1,
    min_positive: int = 10,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Anchors from the body-slice descriptors of the source cases (one model pass per case).

    Args:
        features: ``image -> {"probs", "decoder", ...}`` of the (final) source model.
        images: the source images ``(C, H, W, D)``, consumed lazily.
        k, seed: see :func:`fit_anchors`.
        weight, grid, axis, min_positive: see :func:`slice_descriptors`.

    Returns:
        ``(anchors (k', grid**2) float32, meta)``; ``meta`` records the settings (plain types).
    """
    parts: list[np.ndarray] = []
    n_cases = 0
    with torch.no_grad():
        for image in images:
            out = features(image)
            parts.append(case_descriptors(out, image, weight, grid, axis, min_positive))
            n_cases += 1
            del out
    if not parts:
        raise ValueError("no source case to compute the STDR anchors from")
    desc = np.concatenate(parts)
    anchors = fit_anchors(desc, k, seed)
    meta = {
        "k": int(anchors.shape[0]),
        "k_requested": int(k),
        "seed": int(seed),
        "weight": str(weight),
        "grid": int(grid),
        "axis": int(axis),
        "min_positive": int(min_positive),
        "n_cases": n_cases,
        "n_descriptors": int(desc.shape[0]),
    }
    return anchors, meta


# ---------------------------------------------------------------------------------- files
def write_anchors_npy(anchors: np.ndarray, path: str | Path) -> Path:
    """Write ``anchors`` to ``path`` (``.npy``) atomically: temporary file + ``os.replace``."""
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.save(fh, np.ascontiguousarray(anchors, dtype=np.float32), allow_pickle=False)
    return Path(path)


def load_anchors(path: str | Path) -> np.ndarray:
    """Read anchors from ``anchors.npy`` or from a checkpoint (key :data:`CHECKPOINT_KEY`).

    Both are read without pickle (``np.load(allow_pickle=False)`` /
    ``torch.load(weights_only=True)``).

    Raises:
        ValueError: the checkpoint has no anchors.
    """
    path = Path(path)
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    else:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if CHECKPOINT_KEY not in ckpt:
            raise ValueError(
                f"{path} has no {CHECKPOINT_KEY!r}: train the source model with the "
                "lightning_ada.active.source_anchors.SourceAnchors callback"
            )
        arr = ckpt[CHECKPOINT_KEY]
    return as_anchor_array(arr)


def as_anchor_array(anchors: Any) -> np.ndarray:
    """``(k, G)`` float64 array from a tensor, an array or nested lists."""
    if isinstance(anchors, Tensor):
        anchors = anchors.detach().cpu().double().numpy()
    arr = np.asarray(anchors, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"anchors must be a non-empty (k, G) array, got shape {arr.shape}")
    return arr


def _spatial_axis(axis: int) -> int:
    """Spatial axis (of H, W, D) -> axis of an ``(H, W, D)`` tensor."""
    if not -3 <= axis <= 2:
        raise ValueError(f"slice axis must be one of 0, 1, 2 (or negative), got {axis}")
    return axis % 3
