"""OpenPath prototype pre-filter (issue 15): drops constructed outliers, keeps inliers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_ada.active.open_set_filter import (
    PrototypeFilter,
    egss_sample,
    keep_nearest,
    kmeans_pick,
    prototype_distances,
)
from lightning_ada.active.strategies.base import QueryContext

D = 8


def _pool(n_in: int = 15, n_out: int = 5, seed: int = 0):
    """Embeddings: inliers around e0 (two sub-clusters, as two scanners), outliers around e3..e5.

    Inliers have a predicted tumour, outliers none; entropies grow with the index.
    """
    rng = np.random.default_rng(seed)
    emb, fg = {}, {}
    for i in range(n_in):
        base = np.eye(D)[0] + (0.6 * np.eye(D)[1] if i % 2 else 0.0)
        emb[f"in{i:02d}"], fg[f"in{i:02d}"] = base + 0.1 * rng.standard_normal(D), 30
    for i in range(n_out):
        emb[f"out{i:02d}"], fg[f"out{i:02d}"] = (
            np.eye(D)[3 + i % 3] + 0.1 * rng.standard_normal(D),
            0,
        )
    return emb, fg


def _ctx(emb, fg, labeled):
    """A QueryContext whose 'model' reads the embedding and the tumour size off the image."""

    def image(cid):
        img = torch.zeros((D, 6, 6, 6))
        img[:] = torch.as_tensor(emb[cid], dtype=torch.float32)[:, None, None, None]
        img[0, 0, 0, 0] = float(fg[cid])  # voxel count of the predicted tumour, hidden in a corner
        return img

    def predict(img):
        e = img.mean((1, 2, 3)).clone()
        e[0] = img[0, 1:, 1:, 1:].mean()
        n = int(img[0, 0, 0, 0])
        p = torch.full((2, 6, 6, 6), 0.9)
        p[1] = 0.1
        flat = p.view(2, -1)
        flat[0, :n], flat[1, :n] = 0.2, 0.8
        return p, e

    pool = sorted(emb)
    return QueryContext(
        unlabeled=[c for c in pool if c not in labeled],
        pool=pool,
        labeled=list(labeled),
        image=image,
        predict=predict,
        modalities=[f"m{i}" for i in range(D)],
        regions={"fg": [1]},
        round=1 if labeled else 0,
        seed=3,
    )


@pytest.mark.parametrize("prototypes", ["each", "mean"])
def test_labelled_prototypes_keep_the_inliers_and_drop_the_outliers(prototypes):
    emb, fg = _pool()
    ctx = _ctx(emb, fg, labeled=["in00", "in01"])  # one labelled case of each scanner
    unl = set(ctx.unlabeled)
    inliers = {c for c in unl if c.startswith("in")}
    f = PrototypeFilter(id_ratio=len(inliers) / len(unl), prototypes=prototypes)
    res = f.candidates(ctx, n=1)
    assert res.prototype_source == "labelled" and res.n_prototypes == (
        2 if prototypes == "each" else 1
    )
    assert set(res.candidates) == inliers
    assert max(res.distances[c] for c in inliers) < min(res.distances[c] for c in unl - inliers)
    half = PrototypeFilter(id_ratio=0.25).candidates(ctx, n=1).candidates
    assert len(half) == 5 and set(half) <= inliers


def test_round_zero_prototype_comes_from_cases_with_predicted_tumour():
    emb, fg = _pool()
    ctx = _ctx(emb, fg, labeled=[])
    res = PrototypeFilter(id_ratio=0.75).candidates(ctx, n=1)
    assert res.prototype_source == "predicted_tumour" and res.n_prototypes == 1
    assert set(res.candidates) == {c for c in emb if c.startswith("in")}
    assert (
        res.signals["out00"].foreground_voxels == 0 and res.signals["in03"].foreground_voxels == 30
    )
    # no case with predicted tumour: nothing to build a prototype from, nothing is filtered
    none = PrototypeFilter().candidates(_ctx(emb, dict.fromkeys(emb, 0), labeled=[]), n=1)
    assert none.prototype_source == "none" and set(none.candidates) == set(emb)


def test_the_candidates_are_at_least_the_query_size_and_ties_break_by_id():
    d = {"b": 0.1, "a": 0.1, "c": 0.5, "d": 0.9}
    assert keep_nearest(d, 0.25) == ["a"]
    assert keep_nearest(d, 0.25, at_least=3) == ["a", "b", "c"]
    assert keep_nearest(d, 1.0) == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="id_ratio"):
        keep_nearest(d, 0.0)
    np.testing.assert_allclose(
        prototype_distances(np.array([[1.0, 0], [0, 2.0], [-1, 0]]), np.array([[2.0, 0]])),
        [0.0, 1.0, 2.0],
    )


def test_sampling_modes_pick_only_candidates():
    emb, fg = _pool()
    ctx = _ctx(emb, fg, labeled=["in00", "in01"])
    for sampling in ("strategy", "egss", "kmeans"):
        f = PrototypeFilter(id_ratio=0.5, sampling=sampling)
        res = f.candidates(ctx, n=3)
        ranked = sorted(
            ctx.unlabeled, reverse=True
        )  # a strategy that prefers outliers ('out' > 'in')
        picks = f.pick(res, ranked, 3, ctx.rng(), seed=0)
        assert len(set(picks)) == 3 and set(picks) <= set(res.candidates)
        if sampling == "strategy":
            assert picks == [c for c in ranked if c in res.candidates][:3]


def test_egss_prefers_high_entropy_and_is_seeded():
    ent = {f"c{i}": 0.01 * (i + 1) for i in range(10)}
    cold = egss_sample(ent, 3, np.random.default_rng(0), temperature=1e-3)
    assert cold == ["c9", "c8", "c7"]
    draws = [egss_sample(ent, 1, np.random.default_rng(s), temperature=0.3)[0] for s in range(400)]
    top, bottom = draws.count("c9"), draws.count("c0")
    assert top > 3 * bottom  # P(c9)/P(c0) = exp(0.9 / 0.3) ~ 20 with relative entropies
    assert egss_sample(ent, 4, np.random.default_rng(5)) == egss_sample(
        ent, 4, np.random.default_rng(5)
    )
    assert len(set(egss_sample(ent, 20, np.random.default_rng(1)))) == 10


def test_kmeans_pick_takes_one_case_per_cluster():
    emb = {f"a{i}": np.array([0.0, 0.0]) + 0.01 * i for i in range(4)}
    emb |= {f"b{i}": np.array([5.0, 5.0]) + 0.01 * i for i in range(4)}
    picks = kmeans_pick(emb, 2, seed=0)
    assert sorted(p[0] for p in picks) == ["a", "b"]


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="id_ratio"):
        PrototypeFilter(id_ratio=1.5)
    with pytest.raises(ValueError, match="sampling"):
        PrototypeFilter(sampling="greedy")  # type: ignore[arg-type]
    emb, fg = _pool()
    ctx = _ctx(emb, fg, labeled=["in00"])
    ctx.predict = lambda img: (torch.full((2, 6, 6, 6), 0.5), None)
    with pytest.raises(ValueError, match="embeddings"):
        PrototypeFilter().candidates(ctx, 1)
