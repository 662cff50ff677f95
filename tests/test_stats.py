from __future__ import annotations

import math
import weakref

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from lightning_ada.active.stats import (
    compute_case_stats,
    entropy_map,
    foreground_volume,
    mean_entropy,
    stream_pool_stats,
)


def _onehot(idx: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(idx, k).permute(3, 0, 1, 2).float()


@pytest.mark.parametrize("c", [2, 3, 4])
def test_uniform_entropy_is_log_c(c: int) -> None:
    probs = torch.full((c, 3, 4, 5), 1.0 / c)
    assert mean_entropy(probs) == pytest.approx(math.log(c), rel=1e-6)


def test_onehot_entropy_is_zero() -> None:
    probs = _onehot(torch.randint(0, 3, (4, 4, 4)), 3)
    assert mean_entropy(probs) == pytest.approx(0.0, abs=1e-7)


def test_two_voxel_mix_matches_hand_and_scipy() -> None:
    # voxel 0: (0.5, 0.5) -> log 2 ; voxel 1: (0.9, 0.1) -> -(0.9 ln .9 + .1 ln .1)
    probs = torch.tensor([[0.5, 0.9], [0.5, 0.1]], dtype=torch.float64).reshape(2, 2, 1, 1)
    h1 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert mean_entropy(probs) == pytest.approx((math.log(2) + h1) / 2, rel=1e-12)
    ref = scipy_entropy(np.clip(probs.numpy(), 1e-10, 1), axis=0)
    np.testing.assert_allclose(entropy_map(probs).numpy(), ref, rtol=1e-12)
    roi = torch.tensor([False, True]).reshape(2, 1, 1)
    assert mean_entropy(probs, roi=roi) == pytest.approx(h1, rel=1e-12)


def test_clip_and_renormalise_like_scipy() -> None:
    probs = torch.tensor([1.0, 0.0, 0.0]).reshape(3, 1, 1, 1)  # zeros -> eps, renormalised
    ref = scipy_entropy(np.clip(probs.numpy().astype(np.float64), 1e-10, 1), axis=0)
    assert mean_entropy(probs.double()) == pytest.approx(float(ref.ravel()[0]), rel=1e-9)


def test_foreground_volume_from_probs_and_index() -> None:
    idx = torch.zeros(4, 4, 4, dtype=torch.long)
    idx[0, 0, :3] = 1  # 3 voxels class 1
    idx[1, 1, :2] = 2  # 2 voxels class 2
    idx[2, 2, 0] = 3  # 1 voxel class 3
    regions = {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}
    expected = {"total": 6, "1": 3, "2": 2, "3": 1, "WT": 6, "TC": 4, "ET": 1}
    assert foreground_volume(_onehot(idx, 4), regions) == expected
    assert foreground_volume(idx, regions) == expected
    # probabilities of a 5-class model with no voxel of class 4: key "4" present with 0
    assert foreground_volume(_onehot(idx, 5))["4"] == 0
    assert foreground_volume(torch.zeros(2, 2, 2, dtype=torch.long)) == {"total": 0}


def test_case_stats_embedding_passthrough() -> None:
    idx = torch.zeros(2, 2, 2, dtype=torch.long)
    idx[0, 0, 0] = 1
    emb = torch.arange(5, dtype=torch.float32)
    st = compute_case_stats("c1", _onehot(idx, 2), emb, regions={"fg": [1]})
    assert st.volume == 1 and st.volume_per_region == {"1": 1, "fg": 1}
    np.testing.assert_array_equal(st.embedding, np.arange(5, dtype=np.float32))
    assert compute_case_stats("c2", _onehot(idx, 2)).embedding is None


def test_stream_pool_stats_keeps_one_map_alive() -> None:
    alive, peak = [0], [0]

    def release() -> None:
        alive[0] -= 1

    def predict(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fg = (image[0] > 0).long()
        probs = _onehot(fg, 2) * 0.8 + 0.1  # (2, H, W, D), 0.9 / 0.1
        alive[0] += 1
        weakref.finalize(probs, release)
        peak[0] = max(peak[0], alive[0])
        return probs, image.mean(dim=(1, 2, 3))

    def cases():
        for i in range(5):
            img = torch.zeros(2, 4, 4, 4)
            img[0, :i] = 1.0  # case i: i*16 foreground voxels
            yield f"case{i}", img

    out = stream_pool_stats(cases(), predict, progress=False)
    assert peak[0] == 1 and alive[0] == 0
    assert [s.case_id for s in out] == [f"case{i}" for i in range(5)]
    assert [s.volume for s in out] == [16 * i for i in range(5)]
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert all(s.mean_entropy == pytest.approx(h, rel=1e-5) for s in out)
    assert out[2].embedding.shape == (2,) and out[2].embedding[0] == pytest.approx(32 / 64)
