from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from lightning_ada.active import density as dens
from lightning_ada.active.density import (
    case_descriptor,
    compute_density,
    neighbour_counts,
    pairwise_distances,
    pca_scores,
    quantile_summary,
    resize_cube,
    w1_exact,
    w1_quantile,
)


def _w1q(a: np.ndarray, b: np.ndarray, q: int, method: str = "mean") -> float:
    return w1_quantile(quantile_summary(a, q, method), quantile_summary(b, q, method))


# ----------------------------------------------------------------------------- W1


@pytest.mark.parametrize("method", ["mean", "midpoint"])
def test_w1_quantile_exact_for_equal_sizes_q_equals_n(method: str) -> None:
    rng = np.random.default_rng(0)
    for n in (7, 100, 1024):
        a, b = rng.normal(size=n), rng.standard_t(3, size=n) + 0.2
        assert _w1q(a, b, n, method) == pytest.approx(w1_exact(a, b), rel=1e-10)


def test_w1_quantile_mean_exact_for_common_multiple_q() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=300), rng.exponential(size=500)
    assert _w1q(a, b, 1500) == pytest.approx(w1_exact(a, b), rel=1e-10)


def test_w1_quantile_unequal_sizes_tolerance_and_lower_bound() -> None:
    """Random unequal sizes, different distributions: measured errors (ALGORITHMS §1.3).

    Bin-mean summaries never exceed the exact W1 (Jensen). With Q = 4096 the relative error stays
    below 1e-3; with the default Q = 1024 it stays below 5e-3 (measured maximum ~2e-3 over 300
    shifted-normal trials; typical 1e-4). Mid-points at the same Q are clearly worse.
    """
    rng = np.random.default_rng(2)
    err = {(q, m): [] for q in (1024, 4096) for m in ("mean", "midpoint")}
    for t in range(30):
        na, nb = rng.integers(500, 20000, size=2)
        a = rng.normal(size=na)
        b = rng.normal(size=nb) * (1.5 if t % 2 else 1.0) + (0.0 if t % 2 else 0.3)
        ex = w1_exact(a, b)
        for q, m in err:
            approx = _w1q(a, b, q, m)
            if m == "mean":
                assert approx <= ex * (1 + 1e-9)  # cumsum round-off only
            err[q, m].append(abs(approx - ex) / ex)
    assert max(err[4096, "mean"]) < 1e-3
    assert max(err[1024, "mean"]) < 5e-3
    assert np.median(err[1024, "mean"]) < np.median(err[1024, "midpoint"])


def test_quantile_summary_midpoint_levels() -> None:
    x = np.arange(10.0)  # inverted CDF at (q+0.5)/5 = 0.1, 0.3, ... -> ranks 0, 2, 4, 6, 8
    np.testing.assert_array_equal(quantile_summary(x, 5, "midpoint"), [0, 2, 4, 6, 8])
    np.testing.assert_allclose(quantile_summary(x, 5, "mean"), [0.5, 2.5, 4.5, 6.5, 8.5])
    np.testing.assert_allclose(quantile_summary(np.array([0.0, 3.0]), 4), [0, 0, 3, 3])


# ----------------------------------------------------------------------------- PCA


def _spectrum_volume(ratios: list[float], r: int = 8) -> np.ndarray:
    """(r, r, r) volume whose (r*r, r) matrix is centred with explained variances ``ratios``."""
    rng = np.random.default_rng(3)
    u = rng.normal(size=(r * r, len(ratios)))
    u -= u.mean(axis=0)
    u, _ = np.linalg.qr(u)  # orthonormal, zero-mean columns
    x = sum(np.sqrt(w) * np.outer(u[:, k], np.eye(r)[k]) for k, w in enumerate(ratios))
    return x.reshape(r, r, r)


def test_pca_variance_rule() -> None:
    v = _spectrum_volume([0.5, 0.3, 0.2])
    assert pca_scores(v, variance=0.75).size == 64 * 2
    assert pca_scores(v, variance=0.8).size == 64 * 2  # 0.8 >= 0.8
    assert pca_scores(v, variance=0.81).size == 64 * 3
    assert pca_scores(v, variance=0.5).size == 64 * 1


def test_pca_rank_one_keeps_one_component() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(16, 16)), rng.normal(size=16)
    v = a[:, :, None] * b[None, None, :] + 5.0  # rank 1 after column centring
    assert pca_scores(v).size == 16 * 16


def test_pca_matches_sklearn_up_to_sign_and_sign_convention() -> None:
    rng = np.random.default_rng(5)
    v = rng.normal(size=(16, 16, 16)).cumsum(axis=2)  # correlated slices
    s = pca_scores(v).reshape(256, -1)
    k = s.shape[1]
    pca = PCA(svd_solver="full").fit(v.reshape(256, 16))
    assert k == int(np.searchsorted(np.cumsum(pca.explained_variance_ratio_), 0.75) + 1)
    comps = pca.components_[:k]
    flip = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    ref = pca.transform(v.reshape(256, 16))[:, :k] * flip
    np.testing.assert_allclose(s, ref, atol=1e-8)
    np.testing.assert_array_equal(pca_scores(v), pca_scores(v.copy()))  # deterministic
    # sign convention fixes the loadings, so negating the image negates every score
    np.testing.assert_allclose(pca_scores(-v), -pca_scores(v), atol=1e-10)


def test_pca_row_permutation_keeps_distribution_and_constant_volume() -> None:
    rng = np.random.default_rng(6)
    v = rng.normal(size=(12, 12, 12)).cumsum(axis=2)
    q1 = quantile_summary(pca_scores(v), 64)
    q2 = quantile_summary(pca_scores(v[::-1].copy()), 64)
    np.testing.assert_allclose(q1, q2, atol=1e-10)
    np.testing.assert_array_equal(pca_scores(np.zeros((8, 8, 8))), np.zeros(64))


def test_resize_default_rule() -> None:
    assert resize_cube(np.ones((40, 20, 30)), 32).shape == (32, 32, 32)
    v = np.random.default_rng(7).normal(size=(20, 24, 28)).cumsum(axis=2)
    n = pca_scores(v).size  # native side 28 <= 64 -> 28^3
    assert n % (28 * 28) == 0
    big = np.random.default_rng(8).normal(size=(80, 70, 66)).cumsum(axis=2)
    assert pca_scores(big).size % (64 * 64) == 0
    assert pca_scores(big, resize=16).size % 256 == 0


# ----------------------------------------------------------------------------- distances


def test_neighbour_counts_toy_matrix() -> None:
    d = np.array([[0, 1, 4, 5], [1, 0, 2, 6], [4, 2, 0, 3], [5, 6, 3, 0]], dtype=float)
    c, dl = neighbour_counts(d, delta=3.5)
    assert c.tolist() == [1, 2, 2, 1] and dl == 3.5
    c, _ = neighbour_counts(d, delta=3.0)  # strict "<"
    assert c.tolist() == [1, 2, 1, 0]
    c, dl = neighbour_counts(d, quantile=0.5)  # median of {1..6} = 3.5
    assert dl == pytest.approx(3.5) and c.tolist() == [1, 2, 2, 1]
    c, dl = neighbour_counts(d, quantile=0.1)  # 1 + 0.5*(2-1) = 1.5
    assert dl == pytest.approx(1.5) and c.tolist() == [1, 1, 0, 0]
    c, _ = neighbour_counts(np.zeros((3, 3)), delta=1.0)  # self never counted
    assert c.tolist() == [2, 2, 2]


def test_pairwise_distances_sum_over_modalities() -> None:
    desc = np.array(
        [
            [[0, 0, 0, 0], [1, 1, 1, 1]],
            [[1, 1, 1, 1], [1, 1, 1, 1]],
            [[0, 1, 2, 3], [3, 3, 3, 3]],
        ],
        dtype=float,
    )
    d = pairwise_distances(desc)
    # d(0,1) = 1 + 0 ; d(0,2) = 1.5 + 2 ; d(1,2) = (1+0+1+2)/4 + 2 = 3
    np.testing.assert_allclose(d, [[0, 1, 3.5], [1, 0, 3], [3.5, 3, 0]])
    for i in range(3):
        for j in range(3):
            ref = sum(w1_quantile(desc[i, m], desc[j, m]) for m in (0, 1))
            assert d[i, j] == pytest.approx(ref)


def test_case_descriptor_distance_is_sum_of_exact_w1_for_common_multiple_q() -> None:
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(2, 8, 8, 8)), rng.normal(size=(2, 8, 8, 8)) * 2
    a[1] = np.add.outer(np.arange(64.0).reshape(8, 8), np.ones(8))  # rank 1
    b[1] = a[1] * 3
    q = 64 * 840  # a multiple of every possible n = 64 * k, k <= 8 -> exact
    da = case_descriptor(a, n_quantiles=q)
    db = case_descriptor(torch.from_numpy(b), n_quantiles=q)  # tensors accepted
    assert da.shape == (2, q)
    ref = sum(w1_exact(pca_scores(a[m]), pca_scores(b[m])) for m in range(2))
    assert pairwise_distances(np.stack([da, db]))[0, 1] == pytest.approx(ref, rel=1e-9)


# ----------------------------------------------------------------------------- density + cache


def _pool(n: int = 6, seed: int = 10) -> tuple[list[str], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    imgs = [rng.normal(size=(2, 8, 8, 8)).cumsum(axis=3) * (1 + i % 3) for i in range(n)]
    return [f"case{i}" for i in range(n)], [x.astype(np.float32) for x in imgs]


def test_compute_density_matches_manual_pipeline() -> None:
    ids, imgs = _pool()
    res = compute_density(ids, iter(imgs), n_quantiles=256)
    desc = np.stack([case_descriptor(x, n_quantiles=256) for x in imgs])
    counts, dl = neighbour_counts(pairwise_distances(desc), quantile=0.1)
    assert res.density == {c: float(n) for c, n in zip(ids, counts)}
    assert res.delta == dl and not res.from_cache and res.n_computed == 6
    everyone = compute_density(ids, imgs, n_quantiles=256, delta=1e9)
    assert everyone.density == {c: 5.0 for c in ids} and everyone.quantile is None


def test_density_cache_hit_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = [0]
    real = dens.case_descriptor

    def counting(*a, **k):
        calls[0] += 1
        return real(*a, **k)

    monkeypatch.setattr(dens, "case_descriptor", counting)
    ids, imgs = _pool()
    r1 = compute_density(ids, iter(imgs), n_quantiles=128, cache_dir=tmp_path)
    assert calls[0] == 6 and not r1.from_cache
    desc_files = sorted(tmp_path.glob("desc_*.npy"))
    assert len(desc_files) == 6 and np.load(desc_files[0], allow_pickle=False).shape == (2, 128)
    assert not list(tmp_path.glob(".*tmp*"))

    # same content (fresh copies, reversed order) -> hit, nothing recomputed
    copies = [x.copy() for x in imgs[::-1]]
    r2 = compute_density(ids[::-1], copies, n_quantiles=128, cache_dir=tmp_path)
    assert calls[0] == 6 and r2.from_cache and r2.key == r1.key and r2.density == r1.density
    # delta / quantile are applied to the cached distances (same key, no recompute)
    r3 = compute_density(ids, imgs, n_quantiles=128, cache_dir=tmp_path, quantile=0.5)
    assert calls[0] == 6 and r3.from_cache and r3.key == r1.key and r3.delta > r1.delta
    # changed parameter -> new key, recomputed
    r4 = compute_density(ids, imgs, n_quantiles=64, cache_dir=tmp_path)
    assert calls[0] == 12 and r4.key != r1.key and not r4.from_cache
    # changed content of one case -> new pool key, only that descriptor recomputed
    imgs2 = [x.copy() for x in imgs]
    imgs2[2][0, 0, 0, 0] += 1.0
    r5 = compute_density(ids, imgs2, n_quantiles=128, cache_dir=tmp_path)
    assert calls[0] == 13 and r5.key != r1.key and r5.n_computed == 1


def test_density_cache_corrupt_file_is_recomputed(tmp_path: Path) -> None:
    ids, imgs = _pool(3)
    r1 = compute_density(ids, imgs, cache_dir=tmp_path)
    broken = sorted(tmp_path.glob("desc_*.npy"))[0]
    broken.write_bytes(b"not a numpy file")
    r2 = compute_density(ids, imgs, cache_dir=tmp_path)
    assert not r2.from_cache and r2.n_computed == 1 and r2.density == r1.density
    assert np.load(broken, allow_pickle=False).shape == r1.descriptors.shape[1:]
