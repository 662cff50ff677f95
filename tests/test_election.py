from __future__ import annotations

import pytest
import torch

from lightning_ada.active.election import (
    binary_dice,
    elect_modality,
    label_dice,
    single_modality_input,
)

MODS = ("flair", "t1", "t1ce", "t2")


def threshold_predict(image: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """Toy 'model': foreground where any channel exceeds t; returns (2, H, W, D) probs."""
    fg = (image > t).any(dim=0).float()
    return torch.stack([1 - fg, fg]) * 0.8 + 0.1


def _case() -> torch.Tensor:
    img = torch.zeros(4, 8, 8, 8)
    img[0, 2:6, 2:6, 2:6] = 1.0  # flair carries the whole tumour (64 voxels)
    img[2, 2:4, 2:6, 2:6] = 1.0  # t1ce sees half of it (32 voxels)
    img[3, 0, 0, 0] = 1.0  # t2 sees one voxel outside the tumour; t1 is blank
    return img


def test_single_modality_input_modes() -> None:
    img = torch.arange(2 * 3, dtype=torch.float32).reshape(2, 3, 1, 1) + 1
    z = single_modality_input(img, 1)
    assert torch.equal(z[0], torch.zeros(3, 1, 1)) and torch.equal(z[1], img[1])
    r = single_modality_input(img, 0, mode="replicate")
    assert torch.equal(r[1], img[0]) and torch.equal(r[0], img[0])
    r[1] += 1  # a real copy, not a view of the input
    assert torch.equal(img[1], torch.tensor([4.0, 5.0, 6.0]).reshape(3, 1, 1))
    with pytest.raises(IndexError):
        single_modality_input(img, 2)


def test_dice_policy() -> None:
    e, f = torch.zeros(4, dtype=torch.bool), torch.tensor([1, 1, 0, 0], dtype=torch.bool)
    assert binary_dice(e, e) == 1.0
    assert binary_dice(e, f) == 0.0 and binary_dice(f, e) == 0.0
    assert binary_dice(f, torch.tensor([1, 0, 1, 0])) == pytest.approx(0.5)
    a, b = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 2, 2, 0])
    assert label_dice(a, b) == pytest.approx(2 * 2 / (3 + 2))  # foreground {1,2,3} vs {1,2}
    # multiclass: class 1 -> (a has 1 voxel, b none) = 0 ; class 2 -> 2*1/(2+2) = 0.5
    assert label_dice(a, b, multiclass=True) == pytest.approx(0.25)
    empty = torch.zeros(3, dtype=torch.long)
    assert label_dice(empty, empty, multiclass=True) == 1.0


def test_blank_modality_loses_and_tumour_modality_wins() -> None:
    calls = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.clone())
        return threshold_predict(x)

    el = elect_modality(_case(), predict, MODS)
    assert len(calls) == 5
    assert el.modality == "flair" and el.index == 0
    # pseudo-label = flair tumour (64) + t2's single voxel (1) = 65 voxels
    assert el.dice["flair"] == pytest.approx(2 * 64 / (64 + 65))
    assert el.dice["t1ce"] == pytest.approx(2 * 32 / (32 + 65))
    assert el.dice["t2"] == pytest.approx(2 * 1 / (1 + 65))
    assert el.dice["t1"] == 0.0  # blank input -> empty prediction vs non-empty pseudo-label


def test_tie_goes_to_lowest_index_in_configured_order() -> None:
    img = torch.zeros(4, 4, 4, 4)
    img[1, :2] = 1.0
    img[3, :2] = 1.0  # t1 and t2 identical -> equal Dice 1.0
    el = elect_modality(img, threshold_predict, MODS)
    assert el.modality == "t1" and el.index == 1
    assert el.dice["t1"] == el.dice["t2"] == 1.0
    # everything blank: every Dice is 1 (both empty) -> the first modality
    el0 = elect_modality(torch.zeros(4, 4, 4, 4), threshold_predict, MODS)
    assert el0.index == 0 and set(el0.dice.values()) == {1.0}


def test_replicate_mode_and_bad_names() -> None:
    el = elect_modality(_case(), threshold_predict, MODS, mode="replicate")
    assert el.modality == "flair"
    with pytest.raises(ValueError):
        elect_modality(_case(), threshold_predict, MODS[:3])
