"""Pseudo-label primitives for self-training on the unlabelled target pool (pure functions).

ALGORITHMS.md sections 8 (UGTST's tiered self-training) and 11.3 (GBA's iterative
self-training): a teacher's probabilities, optionally averaged over flips
(:func:`flip_averaged_probs`), become a class-index pseudo-label (:func:`pseudo_label`), cleaned
to the largest connected component of each region (:func:`keep_largest_component`, GBA's
post-processing); a per-case confidence (:func:`case_confidence`) filters the cases
(:func:`confident_cases`) or orders them into UGTST's tiers, most certain first
(:func:`tiered_order`, :func:`ugtst_fractions`). Cases are addressed by their ids; ties are
broken by id so every order is reproducible. Nothing here holds state or touches files.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from lightning_ada.active.stats import gaua, mean_entropy

ConfidenceKind = Literal["foreground_max_prob", "mean_max_prob", "neg_entropy", "neg_gaua"]

#: every combination of the three spatial axes, identity first (the 8 mirror flips)
ALL_FLIPS: tuple[tuple[int, ...], ...] = tuple(
    c for r in range(4) for c in itertools.combinations((0, 1, 2), r)
)


# ---------------------------------------------------------------------------- teacher
def flip_averaged_probs(
    predict: Callable[[Tensor], Tensor],
    image: Tensor,
    flips: Sequence[Sequence[int]] = ALL_FLIPS,
) -> Tensor:
    """Teacher probabilities averaged over mirror flips of the input (test-time augmentation).

    Args:
        predict: image ``(C, H, W, D)`` -> probabilities ``(K, H, W, D)`` (e.g.
            ``SegmentationModule.predict_case``).
        image: ``(C, H, W, D)``.
        flips: each a tuple of spatial axes (0 = H, 1 = W, 2 = D) to flip together; ``()`` is the
            unflipped image. Default: all 8 combinations.

    Returns:
        The mean of the predictions, each flipped back, ``(K, H, W, D)``.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (C, H, W, D), got shape {tuple(image.shape)}")
    if not flips:
        raise ValueError("flips must hold at least one flip (() = no flip)")
    total: Tensor | None = None
    for axes in flips:
        if any(a not in (0, 1, 2) for a in axes):
            raise ValueError(f"flip axes must be spatial axes 0, 1 or 2, got {tuple(axes)}")
        dims = [a + 1 for a in axes]
        x = torch.flip(image, dims) if dims else image
        p = predict(x)
        p = torch.flip(p, dims) if dims else p
        total = p.double() if total is None else total + p.double()
    assert total is not None
    return (total / len(flips)).to(torch.float32)


# ---------------------------------------------------------------------------- labels
def pseudo_label(probs: Tensor, foreground_threshold: float | None = None) -> Tensor:
    """Class-index pseudo-label ``(H, W, D)`` int64 from probabilities ``(K, H, W, D)``.

    Args:
        probs: softmax probabilities, class 0 = background.
        foreground_threshold: None = argmax. A number ``t``: a voxel is foreground when
            ``1 - p_background >= t`` (GBA's "softmax thresholding"), then of its most probable
            foreground class; for two classes and ``t = 0.5`` this is the argmax up to ties.
    """
    if probs.ndim != 4 or probs.shape[0] < 2:
        raise ValueError(f"probs must be (K >= 2, H, W, D), got shape {tuple(probs.shape)}")
    if foreground_threshold is None:
        return probs.argmax(0).long()
    if not 0.0 < foreground_threshold <= 1.0:
        raise ValueError(f"foreground_threshold must be in (0, 1], got {foreground_threshold}")
    foreground = (1.0 - probs[0]) >= foreground_threshold
    return torch.where(
        foreground, probs[1:].argmax(0) + 1, torch.zeros_like(foreground, dtype=torch.long)
    ).long()


def largest_component(
    mask: np.ndarray | Tensor, connectivity: Literal[1, 2, 3] = 3
) -> np.ndarray | Tensor:
    """The largest connected component of a boolean mask ``(H, W, D)`` (same type as the input).

    Args:
        mask: boolean (or 0/1) mask.
        connectivity: neighbours that connect voxels: 1 = faces (6), 2 = + edges (18),
            3 = + corners (26, default).

    Returns:
        The component with the most voxels (among equally large ones, the first met in C order);
        an empty mask stays empty.
    """
    is_tensor = isinstance(mask, Tensor)
    m = mask.detach().cpu().numpy() if is_tensor else np.asarray(mask)
    m = m.astype(bool)
    if m.ndim != 3:
        raise ValueError(f"mask must be (H, W, D), got shape {m.shape}")
    if connectivity not in (1, 2, 3):
        raise ValueError(f"connectivity must be 1, 2 or 3, got {connectivity}")
    labelled, n = ndimage.label(m, structure=ndimage.generate_binary_structure(3, connectivity))
    if n > 1:
        sizes = np.bincount(labelled.ravel())[1:]
        m = labelled == (int(np.argmax(sizes)) + 1)
    if is_tensor:
        return torch.as_tensor(m, device=mask.device)
    return m


def keep_largest_component(
    label: Tensor,
    regions: Sequence[Sequence[int]] | None = None,
    connectivity: Literal[1, 2, 3] = 3,
) -> Tensor:
    """Set to background every voxel of a region outside that region's largest component.

    A region is a union of class indices, taken as one mask (BraTS: the whole tumour
    ``[1, 2, 3]``, so a necrotic core inside its oedema stays; a stray blob away from the tumour
    goes). Regions are processed in order on the result of the previous ones.

    Args:
        label: class indices ``(H, W, D)`` or ``(1, H, W, D)``.
        regions: class-index groups; None = one region of every foreground class.
        connectivity: see :func:`largest_component`.

    Returns:
        A new label of the same shape and dtype.
    """
    if label.ndim not in (3, 4) or (label.ndim == 4 and label.shape[0] != 1):
        raise ValueError(f"label must be (H, W, D) or (1, H, W, D), got shape {tuple(label.shape)}")
    out = label.clone()
    flat = out[0] if out.ndim == 4 else out
    if regions is None:
        classes = [int(c) for c in torch.unique(flat).tolist() if c != 0]
        regions = [classes] if classes else []
    for region in regions:
        members = torch.as_tensor([int(c) for c in region], device=flat.device)
        if (members == 0).any():
            raise ValueError(f"region {list(region)} contains the background class 0")
        inside = torch.isin(flat, members)
        if not inside.any():
            continue
        keep = largest_component(inside, connectivity)
        flat[inside & ~keep] = 0
    return out


# ---------------------------------------------------------------------------- confidence
def case_confidence(probs: Tensor, kind: ConfidenceKind = "foreground_max_prob") -> float:
    """How certain the teacher is about one case; higher = more certain.

    Args:
        probs: ``(K, H, W, D)`` softmax probabilities.
        kind: ``foreground_max_prob`` = mean of ``max_k p`` over the voxels predicted foreground
            (0.0 when none is: an empty tumour pseudo-label is not trusted); ``mean_max_prob`` =
            the same over all voxels (dominated by the background); ``neg_entropy`` = minus the
            mean voxel entropy in nats (B2); ``neg_gaua`` = minus UGTST's GAUA uncertainty in
            bits (section 8).

    Returns:
        The confidence (``foreground_max_prob``, ``mean_max_prob`` in ``[1/K, 1]``; the others
        ``<= 0``).
    """
    if probs.ndim != 4 or probs.shape[0] < 2:
        raise ValueError(f"probs must be (K >= 2, H, W, D), got shape {tuple(probs.shape)}")
    p = probs.detach()
    if kind == "foreground_max_prob":
        top, cls = p.max(0)
        fg = cls != 0
        return float(top[fg].double().mean()) if fg.any() else 0.0
    if kind == "mean_max_prob":
        return float(p.max(0).values.double().mean())
    if kind == "neg_entropy":
        return -mean_entropy(p)
    if kind == "neg_gaua":
        return -gaua(p)[0]
    raise ValueError(f"unknown confidence kind {kind!r}; choose one of {ConfidenceKind.__args__}")


def by_confidence(confidence: Mapping[str, float]) -> list[str]:
    """Case ids, most certain first (ties and NaN: by id; NaN after every number)."""
    return sorted(confidence, key=lambda c: (math.isnan(confidence[c]), -_num(confidence[c]), c))


def _num(x: float) -> float:
    return 0.0 if math.isnan(x) else float(x)


def confident_cases(
    confidence: Mapping[str, float],
    threshold: float | None = None,
    top_fraction: float | None = None,
) -> list[str]:
    """The cases whose pseudo-labels are trusted, most certain first.

    Args:
        confidence: case id -> :func:`case_confidence`.
        threshold: keep cases with confidence ``>= threshold`` (None: no threshold).
        top_fraction: keep at most the ``ceil(top_fraction * N)`` most certain of the ``N``
            cases (None: no limit). Both given: both apply.
    """
    order = by_confidence(confidence)
    if top_fraction is not None:
        if not 0.0 <= top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in [0, 1], got {top_fraction}")
        order = order[: math.ceil(top_fraction * len(order) - 1e-9)]
    if threshold is not None:
        order = [c for c in order if not math.isnan(confidence[c]) and confidence[c] >= threshold]
    return order


def ugtst_fractions(ratio: float = 0.05, capacity: int = 4) -> tuple[float, float]:
    """UGTST's two tiers: the most certain ``1 - ratio * (capacity - 1)`` of the cases, then all.

    Args:
        ratio: the annotation ratio (5 % in UGTST).
        capacity: C, candidates per budget unit (4).
    """
    first = 1.0 - ratio * (capacity - 1)
    if not 0.0 < first <= 1.0:
        raise ValueError(
            f"1 - ratio * (capacity - 1) must be in (0, 1], got {first} "
            f"(ratio={ratio}, capacity={capacity})"
        )
    return (first, 1.0)


def tiered_order(
    confidence: Mapping[str, float], fractions: Sequence[float] = ugtst_fractions()
) -> list[list[str]]:
    """Cumulative tiers of pseudo-labelled cases, most certain first (UGTST, section 8).

    Args:
        confidence: case id -> :func:`case_confidence`.
        fractions: increasing fractions in ``(0, 1]``; tier ``t`` holds the
            ``ceil(fractions[t] * N)`` most certain cases (default :func:`ugtst_fractions`).

    Returns:
        One list of case ids per tier, each most certain first and containing the previous one.
    """
    values = [float(f) for f in fractions]
    if not values or any(not 0.0 < f <= 1.0 for f in values) or values != sorted(values):
        raise ValueError(f"fractions must be increasing values in (0, 1], got {list(fractions)}")
    order = by_confidence(confidence)
    return [order[: math.ceil(f * len(order) - 1e-9)] for f in values]


def pseudo_label_case(
    probs: Tensor,
    regions: Sequence[Sequence[int]] | None = None,
    foreground_threshold: float | None = None,
    kind: ConfidenceKind = "foreground_max_prob",
    connectivity: Literal[1, 2, 3] = 3,
) -> tuple[Tensor, float]:
    """The pseudo-label of one case ``(1, H, W, D)`` int64 (largest component per region) and
    the teacher's confidence about it (:func:`case_confidence` of ``probs``)."""
    label = keep_largest_component(pseudo_label(probs, foreground_threshold), regions, connectivity)
    return label.unsqueeze(0), case_confidence(probs, kind)
