"""Dominant-modality (DM) election for a selected case (ALGORITHMS §1.2 eq. 7, §1.7).

The multi-modal prediction is the pseudo-label; each modality alone (others blanked) is run
through the same model and the modality whose single-modality prediction agrees best (Dice) with
the pseudo-label is elected. Model-agnostic: ``predict`` is any ``image -> probs`` callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = ["Election", "binary_dice", "elect_modality", "label_dice", "single_modality_input"]

FillMode = Literal["zero", "replicate"]


def single_modality_input(image: Tensor, m: int, mode: FillMode = "zero") -> Tensor:
    """Keep modality ``m`` only.

    Args:
        image: ``(M, H, W, D)`` network input.
        m: channel to keep.
        mode: ``"zero"`` - other channels set to 0 (= the mean after z-scoring; modality-dropout
            convention, default); ``"replicate"`` - channel ``m`` copied into every channel.

    Returns:
        A new ``(M, H, W, D)`` tensor (the input is not modified).
    """
    if not 0 <= m < image.shape[0]:
        raise IndexError(f"modality index {m} out of range for {image.shape[0]} channels")
    if mode == "zero":
        out = torch.zeros_like(image)
        out[m] = image[m]
        return out
    if mode == "replicate":
        return image[m : m + 1].expand_as(image).clone()
    raise ValueError(f"unknown fill mode {mode!r}")


def binary_dice(a: Tensor, b: Tensor) -> float:
    """Dice of two binary masks; both empty -> 1.0, exactly one empty -> 0.0."""
    a, b = a.bool(), b.bool()
    sa, sb = int(a.sum()), int(b.sum())
    if sa == 0 and sb == 0:
        return 1.0
    if sa == 0 or sb == 0:
        return 0.0
    return 2.0 * int((a & b).sum()) / (sa + sb)


def label_dice(a: Tensor, b: Tensor, multiclass: bool = False) -> float:
    """Agreement of two class-index maps ``(H, W, D)``.

    Args:
        a, b: integer label maps (0 = background).
        multiclass: False (default) - :func:`binary_dice` of the foregrounds ``!= 0`` (the
            official runs are binary per region). True - mean :func:`binary_dice` over the
            foreground classes present in either map; 1.0 if neither has any foreground.
    """
    if not multiclass:
        return binary_dice(a != 0, b != 0)
    classes = torch.unique(torch.cat([a.reshape(-1), b.reshape(-1)]))
    classes = [int(c) for c in classes if int(c) != 0]
    if not classes:
        return 1.0
    return sum(binary_dice(a == c, b == c) for c in classes) / len(classes)


@dataclass
class Election:
    """Result of :func:`elect_modality`.

    Attributes:
        modality: elected modality name ``m*``.
        index: its channel index.
        dice: modality name -> Dice(single-modality prediction, multi-modal pseudo-label).
        extra: free metadata (e.g. foreground volume of the pseudo-label).
    """

    modality: str
    index: int
    dice: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)


def elect_modality(
    image: Tensor,
    predict: Callable[[Tensor], Tensor],
    modalities: Sequence[str],
    mode: FillMode = "zero",
    multiclass: bool = False,
    exclude: Sequence[str] = (),
) -> Election:
    """Elect the dominant modality of one case (eq. 7).

    Args:
        image: ``(M, H, W, D)`` multi-modal input.
        predict: ``(M, H, W, D) -> (K, H, W, D)`` probabilities (or logits: only the argmax is
            used), e.g. a sliding-window softmax. Called ``M + 1`` times under ``no_grad``.
        modalities: the M modality names in channel order (the tie-break order).
        mode: blanking of the other channels (:func:`single_modality_input`).
        multiclass: Dice policy (:func:`label_dice`).
        exclude: modalities that cannot be elected (a case's missing, zero-filled ones); their
            Dice is not computed.

    Returns:
        The :class:`Election`; ties go to the lowest channel index.
    """
    if len(modalities) != image.shape[0]:
        raise ValueError(f"{len(modalities)} modality names for {image.shape[0]} channels")
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"duplicate modality names {list(modalities)}")
    with torch.no_grad():
        ref = predict(image).argmax(0)
        dice = {
            name: label_dice(predict(single_modality_input(image, m, mode)).argmax(0), ref,
                             multiclass)
            for m, name in enumerate(modalities) if name not in exclude
        }
    if not dice:
        raise ValueError(f"every modality is excluded from the election: {list(exclude)}")
    best = max((m for m in range(len(modalities)) if modalities[m] in dice),
               key=lambda m: (dice[modalities[m]], -m))
    return Election(modalities[best], best, dice, {"pseudo_label_volume": int((ref != 0).sum())})
