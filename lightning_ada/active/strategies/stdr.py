"""STDR: dual reference selection against source anchors (ALGORITHMS.md section 6), in one file.

STDR is source-free at adaptation time: its reference points ("anchors") are made once, at the
end of the SOURCE training, by :class:`SourceAnchors` (the strategy's ``source_callback``) and
travel with the source checkpoint; :class:`STDRStrategy` reads them from there
(:meth:`STDRStrategy.load_source_artifacts`). This file holds

- the descriptor maths shared by both sides: :func:`slice_descriptors`, :func:`body_slices`,
  :func:`case_descriptors`, :func:`anchor_distances`, :func:`fit_anchors`;
- the anchor files: :func:`write_anchors_npy` / :func:`load_anchors` (``anchors.npy`` or a
  checkpoint);
- :class:`SourceAnchors`, the Lightning callback of the source training;
- :class:`STDRStrategy`, the query strategy.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_ada.active.strategies.base import QueryContext, Scored, Strategy, in_order
from lightning_ada.io import atomic_path

#: checkpoint key of the ``(k, grid**2)`` float32 anchor tensor
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
                "lightning_ada.active.strategies.stdr.SourceAnchors callback"
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


# ---------------------------------------------------------------------------------- source side
class SourceAnchors(L.Callback):
    """Compute the STDR anchors at the end of the SOURCE training (ALGORITHMS §6).

    In the final epoch (``trainer.current_epoch == trainer.max_epochs - 1``) the callback
    runs ``pl_module.case_features`` over every case of the split ``every_case_of`` in
    ``on_train_epoch_end``; Lightning runs ``ModelCheckpoint`` after the other callbacks
    there (with ``save_on_train_epoch_end: true``), so the last checkpoint carries the
    anchors under ``checkpoint["stdr_anchors"]`` (a float32 ``(k, grid**2)`` tensor, plus
    the settings under ``checkpoint["stdr_anchors_meta"]``). The anchors are also written
    to ``<trainer.log_dir or default_root_dir>/anchors.npy`` (atomically). If training
    stops before that epoch (``max_steps``, early stopping), ``on_train_end`` computes them
    and writes the ``.npy`` (checkpoints saved before then lack them).

    Runs only when the datamodule is in the ``source`` stage (a no-op in target fits), and
    on the global-zero process only (the process that writes checkpoints).

    Args:
        k: number of anchors (ALGORITHMS §6 uses 40 on 2-D NPC slices; small pools need
            fewer). Reduced to the number of distinct descriptors if needed.
        every_case_of: datamodule split whose cases describe the source domain.
        weight, grid, axis, min_positive: descriptor settings (see
            :func:`slice_descriptors`); the ``stdr`` strategy must use the same.
        seed: k-means random state.
        filename: name of the ``.npy`` file in the log dir.
    """

    def __init__(
        self,
        k: int = 8,
        every_case_of: str = "source",
        weight: Weight = "background",
        grid: int = 16,
        axis: int = -1,
        min_positive: int = 10,
        seed: int = 0,
        filename: str = "anchors.npy",
    ) -> None:
        if k < 1:
            raise ValueError(f"SourceAnchors k must be >= 1, got {k}")
        self.k, self.every_case_of, self.seed = k, every_case_of, seed
        self.descriptor_args: dict[str, Any] = {
            "weight": weight,
            "grid": grid,
            "axis": axis,
            "min_positive": min_positive,
        }
        self.filename = filename
        self.anchors: np.ndarray | None = None
        self.meta: dict[str, Any] = {}
        self.path: Path | None = None
        self._done_this_fit = False

    # ------------------------------------------------------------ trainer-free parts
    def compute(self, features: Features, images: Iterable[Tensor]) -> np.ndarray:
        """Compute (and keep) the anchors of ``images`` with the model pass ``features``."""
        self.anchors, self.meta = compute_source_anchors(
            features, images, k=self.k, seed=self.seed, **self.descriptor_args
        )
        return self.anchors

    def write(self, directory: str | Path) -> Path:
        """Write the kept anchors to ``directory / filename`` (atomic)."""
        if self.anchors is None:
            raise RuntimeError("SourceAnchors.write before compute")
        self.path = write_anchors_npy(self.anchors, Path(directory) / self.filename)
        return self.path

    # ------------------------------------------------------------ hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._done_this_fit = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs > 0:
            if trainer.current_epoch == max_epochs - 1:
                self._run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._done_this_fit:
            self._run(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.anchors is not None:
            checkpoint[CHECKPOINT_KEY] = torch.from_numpy(
                np.ascontiguousarray(self.anchors, dtype=np.float32)
            )
            checkpoint[META_KEY] = dict(self.meta)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if CHECKPOINT_KEY in checkpoint:
            self.anchors = as_anchor_array(checkpoint[CHECKPOINT_KEY]).astype(np.float32)
            self.meta = dict(checkpoint.get(META_KEY) or {})

    # ------------------------------------------------------------ internals
    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._done_this_fit = True
        pool = trainer.datamodule.pool_view()
        if pool.stage != "source":
            rank_zero_info(f"[stdr anchors] skipped: datamodule stage is {pool.stage!r}")
            return
        if not trainer.is_global_zero:
            return
        ids = pool.ids(self.every_case_of)
        if not ids:
            raise ValueError(
                f"SourceAnchors: the datamodule has no {self.every_case_of!r} cases"
            )
        features = getattr(pl_module, "case_features", None)
        if features is None:
            raise ValueError("SourceAnchors needs pl_module.case_features(image)")
        self.compute(features, (pool.image(cid) for cid in ids))
        self.meta["case_ids"] = ",".join(ids)
        self.meta["epoch"] = int(trainer.current_epoch)
        path = self.write(trainer.log_dir or trainer.default_root_dir)
        rank_zero_info(
            f"[stdr anchors] {self.meta['k']} anchors from {self.meta['n_descriptors']} "
            f"slices of {len(ids)} {self.every_case_of} cases -> {path} and checkpoint "
            f"key {CHECKPOINT_KEY!r}"
        )


# ---------------------------------------------------------------------------------- strategy
class STDRStrategy(Strategy):
    """Farthest ``ceil(B/2)`` + nearest ``floor(B/2)`` cases to the source anchors (§6, §14).

    Per case (one ``ctx.features`` pass of the source model): slice descriptors of the body
    slices (:func:`slice_descriptors`: last decoder features
    weighted by the background probability, max-pooled to ``grid x grid``, divided by the mean
    weight), slice score ``delta = min_k mean((z - c_k)**2)`` against the source anchors ``c_k``,
    case score ``delta_i`` = mean over its body slices. Selection (§6 "Dual reference", 3-D
    adaptation): the ``ceil(B/2)`` cases with the largest ``delta`` (domain-specific) then the
    ``floor(B/2)`` with the smallest (domain-invariant) among the rest; B = 3 -> 2 + 1. One-off
    (§13): the callback takes ``rank(ctx)[:budget]``.

    Source-free: the anchors are made by :class:`SourceAnchors` (``source_callback``) at the end
    of the source training, saved with the source checkpoint and read from it by
    :meth:`load_source_artifacts` at setup; there is no fallback to source data.

    The returned ranking is the selection (farthest first, then nearest), followed by the other
    cases by decreasing ``delta``; scores are strictly decreasing positions (``n - i``), the raw
    criteria are in ``factors``.

    Args:
        weight: descriptor weight map, ``background`` (official code) or ``foreground``.
        grid: pooled in-plane side (descriptor length ``grid**2``); must match the anchors.
        axis: slice axis (``-1`` = D, axial).
        min_positive: voxels with ``w > 0`` a slice needs for a non-zero descriptor.
    """

    name = "stdr"
    display_name = "STDR (TMI'24)"
    table_order = 50
    schedule = "one_off"
    needs = frozenset({"features"})
    source_callback = SourceAnchors

    def __init__(
        self,
        weight: Weight = "background",
        grid: int = 16,
        axis: int = -1,
        min_positive: int = 10,
    ) -> None:
        self.descriptor_args: dict[str, Any] = {
            "weight": weight,
            "grid": int(grid),
            "axis": int(axis),
            "min_positive": int(min_positive),
        }
        self.anchors: np.ndarray | None = None

    def load_source_artifacts(self, checkpoint: Mapping[str, Any], path: str) -> None:
        """Take the anchors :class:`SourceAnchors` saved in the source checkpoint ``path``.

        Raises:
            ValueError: no anchors in it, or anchors made with other descriptor settings.
        """
        raw = checkpoint.get(CHECKPOINT_KEY)
        if raw is None:
            raise ValueError(
                f"stdr needs the source anchors, but {path} has none: add the callback "
                "lightning_ada.active.strategies.stdr.SourceAnchors to the SOURCE training (it "
                f"saves them in the checkpoint under {CHECKPOINT_KEY!r} and as anchors.npy); "
                "STDR is source-free and does not fall back to source data"
            )
        anchors = as_anchor_array(raw)
        g2 = self.descriptor_args["grid"] ** 2
        if anchors.shape[1] != g2:
            raise ValueError(
                f"stdr anchors of {path} have {anchors.shape[1]} features but grid="
                f"{self.descriptor_args['grid']} gives {g2}: use the grid of the source anchors"
            )
        meta = checkpoint.get(META_KEY) or {}
        for key in ("weight", "grid", "axis", "min_positive"):
            if key in meta and meta[key] != self.descriptor_args[key]:
                raise ValueError(
                    f"stdr {key}={self.descriptor_args[key]!r} differs from the source anchors' "
                    f"{key}={meta[key]!r} ({path})"
                )
        self.anchors = anchors

    def _anchors(self) -> np.ndarray:
        if self.anchors is None:
            raise ValueError(
                "stdr has no source anchors: the run must set model.source_checkpoint to a "
                "checkpoint of a source training with the SourceAnchors callback"
            )
        return self.anchors

    def score(self, ctx: QueryContext) -> list[Scored]:
        anchors = self._anchors()
        if ctx.features is None:
            raise ValueError("stdr needs ctx.features (decoder features and probabilities)")
        inference, statistics = 0.0, 0.0
        delta: dict[str, float] = {}
        n_slices: dict[str, int] = {}
        ids: Any = ctx.unlabeled
        if self.progress:
            from tqdm.auto import tqdm

            ids = tqdm(ctx.unlabeled, desc="stdr descriptors", unit="case")
        with torch.no_grad():
            for cid in ids:
                image = ctx.image(cid)
                t0 = time.perf_counter()
                out = ctx.features(image)
                t1 = time.perf_counter()
                desc = case_descriptors(out, image, **self.descriptor_args)
                del out
                d = anchor_distances(desc, anchors)
                delta[cid] = float(d.mean()) if len(d) else 0.0
                n_slices[cid] = int(len(d))
                inference += t1 - t0
                statistics += time.perf_counter() - t1
        self.timings = {"inference": inference, "statistics": statistics}

        b = min(self.budget, len(delta))
        by_far = sorted(delta, key=lambda c: (-delta[c], c))
        far = by_far[: math.ceil(b / 2)]
        rest = [c for c in by_far if c not in far]
        near = sorted(rest, key=lambda c: (delta[c], c))[: b // 2]
        chosen = set(far) | set(near)
        order = far + near + [c for c in by_far if c not in chosen]
        return in_order(
            order,
            lambda cid: {
                "delta": delta[cid],
                "far": float(cid in far),
                "near": float(cid in near),
                "n_slices": float(n_slices[cid]),
                "n_anchors": float(len(anchors)),
            },
        )
