"""Rater styles: the same scans delineated the way different experts draw (issue 15, seed 002).

Seed 002 adapts one model to 4 raters who delineate the same 170 scans differently. Here a rater
is a deterministic *style* applied to a consensus (reference) label ``(H, W, D)`` (integer, 0 =
background): what the rater leaves out, misses, rounds off and how wide they draw. Styles are
pure functions of the label, so a phantom can write one mask per rater for the same scans, and
a test can check each style against the consensus by the configured amount.

A style is applied in this order (each step on the result of the previous one):

1. ``omit_labels``: label values the rater does not draw become background (e.g. a rater who
   contours the tumour core without the oedema, glioma label 2);
2. ``min_component_voxels``: connected foreground components (26-connectivity) smaller than this
   are missed;
3. ``smoothing``: each label's indicator (background included) is smoothed with a Gaussian of
   this std (voxels) and every voxel takes the label of the largest smoothed indicator (ties to the
   consensus label): protrusions thinner than about the std vanish, notches fill;
4. ``margin``: the outer boundary of the whole foreground moves outwards (> 0) or inwards (< 0)
   by this many voxels; inner boundaries between labels stay. Distances are ``metric``:
   ``euclidean`` (an isotropic margin: a voxel joins if its centre is within ``margin`` of the
   foreground; 1 voxel = the 6 face neighbours) or ``chessboard`` (the 26 neighbours: a cube grows
   by exactly its one-voxel shell). New voxels take the label of the nearest foreground voxel.
   With ``margin_fraction`` < 1 only that share of the voxels the margin would add (or remove)
   change: those where a smooth random field (white noise blurred by 2 voxels, from the ``rng``
   given to :func:`apply_style`) is highest, i.e. contiguous stretches of the boundary, as a rater
   who is generous on some slices only. At 24-32 voxels a side one voxel of margin is 30-70 % of a
   small tumour's volume, so partial margins give more realistic inter-rater agreement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import ndimage

__all__ = ["DEFAULT_RATERS", "RaterStyle", "apply_style", "inter_rater_dice", "rater_masks"]


@dataclass(frozen=True)
class RaterStyle:
    """How one rater draws.

    Attributes:
        name: the rater's name (used in file names: letters, digits, ``-``, ``_``).
        margin: voxels the outer boundary moves; > 0 generous, < 0 tight, 0 as the consensus.
        metric: distance of the margin, ``euclidean`` or ``chessboard``.
        smoothing: Gaussian std in voxels of the contour smoothing (0: none).
        omit_labels: label values the rater does not include (drawn as background).
        min_component_voxels: foreground components with fewer voxels are missed (0: none).
        margin_fraction: share (0-1] of the margin's voxels that change (see the module note).
    """

    name: str
    margin: int = 0
    metric: Literal["euclidean", "chessboard"] = "euclidean"
    smoothing: float = 0.0
    omit_labels: tuple[int, ...] = field(default_factory=tuple)
    min_component_voxels: int = 0
    margin_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.metric not in ("euclidean", "chessboard"):
            raise ValueError(
                f"rater {self.name!r}: metric must be 'euclidean' or 'chessboard', "
                f"got {self.metric!r}"
            )
        if not 0.0 < self.margin_fraction <= 1.0:
            raise ValueError(f"rater {self.name!r}: margin_fraction must be in (0, 1]")
        if self.smoothing < 0 or self.min_component_voxels < 0:
            raise ValueError(
                f"rater {self.name!r}: smoothing and min_component_voxels must be >= 0"
            )
        if not self.name or not all(ch.isalnum() or ch in "-_" for ch in self.name):
            raise ValueError(f"rater name {self.name!r}: use letters, digits, '-' or '_'")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (for ``dataset.json``)."""
        d = asdict(self)
        d["omit_labels"] = list(self.omit_labels)
        return d


#: four raters in the spirit of seed 002: generous and tight (on half of the boundary), smooth
#: and missing small lesions, core only (no oedema; a no-op on single-label tasks)
DEFAULT_RATERS: tuple[RaterStyle, ...] = (
    RaterStyle("generous", margin=1, margin_fraction=0.5),
    RaterStyle("tight", margin=-1, margin_fraction=0.5),
    RaterStyle("smooth", smoothing=1.0, min_component_voxels=20),
    RaterStyle("core_only", omit_labels=(2,)),
)

_FULL = ndimage.generate_binary_structure(3, 3)  # 26-connectivity


def _distance_outside(fg: np.ndarray, metric: str) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Distance of every voxel to the nearest foreground voxel, and that voxel's indices."""
    if metric == "euclidean":
        d, idx = ndimage.distance_transform_edt(~fg, return_indices=True)
    else:
        d, idx = ndimage.distance_transform_cdt(~fg, metric="chessboard", return_indices=True)
    return d, tuple(idx)


def _part(change: np.ndarray, fraction: float, rng: np.random.Generator | None) -> np.ndarray:
    """The ``round(fraction * n)`` voxels of ``change`` where a smooth random field is highest."""
    if fraction >= 1.0:
        return change
    if rng is None:
        raise ValueError("a rater with margin_fraction < 1 needs an rng (apply_style(..., rng=))")
    field_ = ndimage.gaussian_filter(rng.standard_normal(change.shape), 2.0, mode="wrap")
    where = np.flatnonzero(change)
    k = round(fraction * where.size)
    chosen = where[np.argsort(-field_.ravel()[where], kind="stable")[:k]]
    out = np.zeros(change.size, bool)
    out[chosen] = True
    return out.reshape(change.shape)


def _margin(
    label: np.ndarray, margin: int, metric: str, fraction: float, rng: np.random.Generator | None
) -> np.ndarray:
    fg = label > 0
    if margin == 0 or not fg.any():
        return label
    if margin > 0:
        d, idx = _distance_outside(fg, metric)
        grow = _part(~fg & (d <= margin), fraction, rng)
        out = label.copy()
        out[grow] = label[tuple(i[grow] for i in idx)]
        return out
    # inwards: a voxel goes if its distance to the background is <= |margin| (pad so the volume
    # border counts as background too)
    padded = np.pad(~fg, 1, constant_values=True)
    d, _ = _distance_outside(padded, metric)
    drop = _part(fg & (d[1:-1, 1:-1, 1:-1] <= -margin), fraction, rng)
    return np.where(drop, 0, label).astype(label.dtype)


def _smooth(label: np.ndarray, sigma: float) -> np.ndarray:
    values = np.unique(np.concatenate([[0], np.unique(label)]))
    scores = np.stack(
        [
            ndimage.gaussian_filter((label == v).astype(np.float32), sigma, mode="nearest")
            for v in values
        ]
    )
    own = np.searchsorted(values, label)[None]
    np.put_along_axis(scores, own, np.take_along_axis(scores, own, 0) + 1e-4, 0)  # ties: keep
    return values[scores.argmax(0)].astype(label.dtype)


def _drop_small(label: np.ndarray, min_voxels: int) -> np.ndarray:
    comps, n = ndimage.label(label > 0, structure=_FULL)
    if n == 0:
        return label
    sizes = np.bincount(comps.ravel())
    small = sizes < min_voxels
    small[0] = False
    return np.where(small[comps], 0, label).astype(label.dtype)


def apply_style(
    label: np.ndarray, style: RaterStyle, rng: np.random.Generator | None = None
) -> np.ndarray:
    """The mask ``style``'s rater draws for the consensus ``label``.

    Args:
        label: ``(H, W, D)`` integer consensus label (0 background).
        style: the rater.
        rng: draws which part of the boundary a partial margin moves (needed only when
            ``style.margin_fraction < 1``; e.g. seeded by the case and the rater).

    Returns:
        ``(H, W, D)`` same dtype as ``label``.
    """
    if label.ndim != 3:
        raise ValueError(f"label must be (H, W, D), got shape {label.shape}")
    out = label.copy()
    if style.omit_labels:
        out[np.isin(out, style.omit_labels)] = 0
    if style.min_component_voxels:
        out = _drop_small(out, style.min_component_voxels)
    if style.smoothing > 0:
        out = _smooth(out, style.smoothing)
    return _margin(out, style.margin, style.metric, style.margin_fraction, rng)


def rater_masks(
    label: np.ndarray,
    styles: Sequence[RaterStyle] = DEFAULT_RATERS,
    seed: int | Sequence[int] = 0,
) -> dict[str, np.ndarray]:
    """One mask per rater for the same scan: rater name -> ``(H, W, D)``.

    Rater ``k`` draws its partial margins from ``default_rng([*seed, k])`` (pass the case's key,
    e.g. ``[seed, task_code, split_code, index]``, so each case and rater gets its own stretch).

    Raises:
        ValueError: two raters share a name.
    """
    names = [s.name for s in styles]
    if len(set(names)) != len(names):
        raise ValueError(f"rater names must be unique, got {names}")
    key = [seed] if isinstance(seed, int) else list(seed)
    return {
        s.name: apply_style(label, s, np.random.default_rng([*key, k]))
        for k, s in enumerate(styles)
    }


def inter_rater_dice(masks: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Foreground Dice of every pair of raters (``"a|b"`` -> Dice; 1 when both are empty).

    The mean over pairs is the agreement ceiling of a per-rater adaptation.
    """
    names = sorted(masks)
    out: dict[str, float] = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pa, pb = masks[a] > 0, masks[b] > 0
            denom = int(pa.sum() + pb.sum())
            out[f"{a}|{b}"] = 1.0 if denom == 0 else 2.0 * float((pa & pb).sum()) / denom
    return out
