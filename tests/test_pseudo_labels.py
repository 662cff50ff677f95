"""Pseudo-label primitives: largest component, confidence filter, UGTST tiers, flip averaging."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_ada.active.pseudo_labels import (
    ALL_FLIPS,
    case_confidence,
    confident_cases,
    flip_averaged_probs,
    keep_largest_component,
    largest_component,
    pseudo_label,
    pseudo_label_case,
    tiered_order,
    ugtst_fractions,
)


def _two_blobs() -> np.ndarray:
    mask = np.zeros((16, 16, 16), dtype=bool)
    mask[2:5, 2:5, 2:5] = True  # 27 voxels
    mask[10:12, 10:12, 10:12] = True  # 8 voxels
    return mask


def test_largest_component_of_two_blobs() -> None:
    mask = _two_blobs()
    kept = largest_component(mask)
    assert kept.sum() == 27 and kept[2:5, 2:5, 2:5].all() and not kept[10:12, 10:12, 10:12].any()
    t = largest_component(torch.as_tensor(mask))
    assert isinstance(t, torch.Tensor) and torch.equal(t, torch.as_tensor(kept))
    assert not largest_component(np.zeros((4, 4, 4), bool)).any()


def test_connectivity_decides_what_touches() -> None:
    mask = np.zeros((8, 8, 8), dtype=bool)
    mask[1:3, 1:3, 1:3] = True  # 8 voxels
    mask[3, 3, 3] = True  # touches the cube by a corner only
    mask[5:7, 5:7, 5:7] = True  # 8 voxels, separate
    assert largest_component(mask, connectivity=3).sum() == 9
    by_faces = largest_component(mask, connectivity=1)
    assert by_faces.sum() == 8 and by_faces[1, 1, 1]  # a tie: the first met in C order


def test_keep_largest_component_per_region() -> None:
    label = torch.zeros(1, 16, 16, 16, dtype=torch.int64)
    label[0, 2:9, 2:9, 2:9] = 2  # oedema
    label[0, 4:7, 4:7, 4:7] = 1  # core inside it
    label[0, 12:14, 12:14, 12:14] = 2  # stray oedema blob
    label[0, 12, 2, 2] = 1  # stray core voxel
    out = keep_largest_component(label)
    expected = label.clone()
    expected[0, 12:14, 12:14, 12:14] = 0
    expected[0, 12, 2, 2] = 0
    assert torch.equal(out, expected) and out.dtype == label.dtype
    # per class instead of whole tumour: the core split in two keeps only its larger piece
    label2 = expected.clone()
    label2[0, 4:7, 4:7, 5] = 2  # a plane of oedema cuts the 3x3x3 core into two 3x3x1 pieces
    assert torch.equal(keep_largest_component(label2), label2)  # whole tumour: nothing removed
    per_class = keep_largest_component(label2, regions=[[1], [2]], connectivity=1)
    core = (per_class[0] == 1).numpy()
    assert (
        core.sum() == 9 and (label2[0] == 1).sum() == 18 and core[4:7, 4:7, 4].all()
    )  # tie: first
    with pytest.raises(ValueError, match="background"):
        keep_largest_component(label, regions=[[0, 1]])


def test_pseudo_label_argmax_and_threshold() -> None:
    probs = torch.tensor([[0.6, 0.4, 0.2], [0.3, 0.3, 0.5], [0.1, 0.3, 0.3]]).view(3, 3, 1, 1)
    assert pseudo_label(probs).view(-1).tolist() == [0, 0, 1]
    assert pseudo_label(probs, foreground_threshold=0.5).view(-1).tolist() == [0, 1, 1]
    assert pseudo_label(probs, foreground_threshold=0.75).view(-1).tolist() == [0, 0, 1]


def _probs(sharpness: float, seed: int = 0, size: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, size, size, size, generator=g)
    logits[1, 2:6, 2:6, 2:6] += 3.0
    return torch.softmax(sharpness * logits, 0)


@pytest.mark.parametrize(
    "kind", ["foreground_max_prob", "mean_max_prob", "neg_entropy", "neg_gaua"]
)
def test_sharper_predictions_are_more_confident(kind: str) -> None:
    scores = [case_confidence(_probs(s), kind) for s in (0.5, 1.0, 2.0, 4.0)]
    assert scores == sorted(scores) and scores[0] < scores[-1]


def test_empty_foreground_is_not_trusted() -> None:
    probs = torch.zeros(2, 4, 4, 4)
    probs[0] = 0.99
    probs[1] = 0.01
    assert case_confidence(probs) == 0.0
    assert case_confidence(probs, "mean_max_prob") == pytest.approx(0.99)


def test_confidence_filter_and_tiers_on_constructed_probabilities() -> None:
    sharpness = {f"case{i:02d}": 0.1 + 0.1 * ((i * 7) % 20) for i in range(20)}  # shuffled
    conf = {cid: case_confidence(_probs(s)) for cid, s in sharpness.items()}
    truth = sorted(sharpness, key=lambda c: -sharpness[c])  # sharper = more certain
    assert ugtst_fractions(0.05, 4) == pytest.approx((0.85, 1.0))
    tiers = tiered_order(conf)
    assert [len(t) for t in tiers] == [17, 20]
    assert tiers[0] == truth[:17] and tiers[1] == truth  # most certain first
    assert set(tiers[1]) - set(tiers[0]) == set(truth[17:])
    assert confident_cases(conf, top_fraction=0.25) == truth[:5]
    cut = conf[truth[9]]
    assert confident_cases(conf, threshold=cut) == truth[:10]
    assert confident_cases(conf, threshold=cut, top_fraction=0.2) == truth[:4]


def test_order_is_reproducible_with_ties_and_nan() -> None:
    conf = {"b": 0.5, "a": 0.5, "c": float("nan"), "d": 0.9}
    assert tiered_order(conf, [0.5, 1.0]) == [["d", "a"], ["d", "a", "b", "c"]]
    assert confident_cases(conf, threshold=0.0) == ["d", "a", "b"]
    with pytest.raises(ValueError, match="increasing"):
        tiered_order(conf, [1.0, 0.5])
    with pytest.raises(ValueError):
        ugtst_fractions(0.5, 4)


def test_flip_average_is_flip_symmetric_and_exact_for_equivariant_teachers() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 6, 5, 4, generator=g)
    ramp = torch.linspace(-2, 2, 6).view(6, 1, 1) + torch.linspace(0, 1, 4).view(1, 1, 4)

    def positional(x: torch.Tensor) -> torch.Tensor:  # not flip-equivariant
        return torch.softmax(torch.stack([x[0] + ramp, x[1] - ramp, x.sum(0)]), 0)

    def voxelwise(x: torch.Tensor) -> torch.Tensor:  # flip-equivariant
        return torch.softmax(torch.stack([x[0], x[1], x.sum(0)]), 0)

    avg = flip_averaged_probs(positional, image)
    assert avg.shape == (3, 6, 5, 4)
    torch.testing.assert_close(avg.sum(0), torch.ones(6, 5, 4))
    assert not torch.allclose(avg, positional(image))
    for axes in ALL_FLIPS[1:]:
        dims = [a + 1 for a in axes]
        torch.testing.assert_close(
            flip_averaged_probs(positional, torch.flip(image, dims)), torch.flip(avg, dims)
        )
    torch.testing.assert_close(flip_averaged_probs(voxelwise, image), voxelwise(image))
    assert len(ALL_FLIPS) == 8 and ALL_FLIPS[0] == ()
    with pytest.raises(ValueError, match="spatial"):
        flip_averaged_probs(voxelwise, image, flips=[(3,)])


def test_pseudo_label_case_cleans_and_scores() -> None:
    probs = torch.zeros(2, 16, 16, 16)
    probs[0] = 0.9
    probs[1] = 0.1
    blobs = torch.as_tensor(_two_blobs())
    probs[1][blobs] = 0.8
    probs[0][blobs] = 0.2
    label, conf = pseudo_label_case(probs)
    assert label.shape == (1, 16, 16, 16) and int(label.sum()) == 27
    assert conf == pytest.approx(0.8)
