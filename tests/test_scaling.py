"""Issue 29, item 2: the scalable forms of the descriptor rules give the dense forms' answers.

Each rule's scalable path (blocked distances, nearest-neighbour graphs, lazy greedy) is checked
against the dense reference it replaced (``cdist`` over the whole pool, the ``(N, N)``
matrices), on constructed pools of the power profile's size (30 cases: 4 x 1,024 quantile
descriptors in three scanner groups, 64-d embeddings) with 0, 1 and 3 labelled cases: the same
order, the same scores. Multi-block paths are exercised with small blocks on larger pools, with
duplicates and lattice ties.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist, pdist
from sklearn.cluster import KMeans
from sklearn.metrics.pairwise import cosine_similarity
from sklearn.preprocessing import normalize

from lightning_ada.active import pairwise
from lightning_ada.active.density import compute_density, neighbour_counts
from lightning_ada.active.strategies import QueryContext, build_strategy
from lightning_ada.active.strategies.coverage import (
    herding_gains,
    herding_order,
    kernel_matrix,
    median_nn_distance,
    probcover_order,
)
from lightning_ada.active.strategies.mhpl import MHPLStrategy
from lightning_ada.active.strategies.typiclust import typicality

POOL = 30  # the power profile's pool
LABELLED = ([], [4], [0, 11, 27])


def density_descriptors(n: int, seed: int) -> np.ndarray:
    """``(n, 4, 1024)`` sorted quantile summaries, three intensity groups (scanners)."""
    rng = np.random.default_rng(seed)
    group = rng.integers(3, size=n)
    loc = np.array([0.0, 0.4, -0.3])[group][:, None, None] + rng.normal(0, 0.05, (n, 4, 1))
    scale = np.array([1.0, 1.3, 0.8])[group][:, None, None] * rng.uniform(0.9, 1.1, (n, 4, 1))
    return np.sort(loc + scale * rng.standard_t(5, size=(n, 4, 1024)), axis=-1)


def vectors(n: int, seed: int, kind: str) -> dict[str, np.ndarray]:
    if kind == "density":
        d = density_descriptors(n, seed)
        z = d.reshape(n, -1) / np.sqrt(d.shape[-1])  # PoolDescriptors' density block
    else:
        rng = np.random.default_rng(seed)
        z = rng.normal(size=(5, 64))[rng.integers(5, size=n)] + 0.3 * rng.normal(size=(n, 64))
    return {f"c{i:03d}": z[i] for i in range(n)}


def ctx_of(ids: list[str], labelled: list[int], round: int = 0) -> QueryContext:
    lab = {ids[i] for i in labelled}
    return QueryContext(
        unlabeled=[c for c in ids if c not in lab], pool=list(ids), labeled=sorted(lab),
        image=lambda c: pytest.fail("no image"), predict=lambda x: pytest.fail("no network"),
        modalities=["m"], regions={"FG": [1]}, round=round, seed=3,
    )


def with_vectors(name: str, vecs: dict[str, np.ndarray], **kw):
    strategy = build_strategy(name, budget=3, **kw)
    strategy.descriptors.vectors = dict(vecs)
    return strategy


def mask(ids: list[str], labelled: list[int]) -> np.ndarray:
    m = np.zeros(len(ids), dtype=bool)
    m[labelled] = True
    return m


CASES = [(seed, kind, lab) for seed in (0, 1) for kind in ("density", "embedding")
         for lab in LABELLED]


# ------------------------------------------------------------------ the primitives
@pytest.mark.parametrize("metric", ["euclidean", "cityblock"])
def test_condensed_blocks_are_pdist_bit_for_bit(metric: str) -> None:
    z = density_descriptors(23, 5).reshape(23, -1)[:, :300]
    assert np.array_equal(pairwise.condensed(z, metric, "exact", block=5), pdist(z, metric))
    rows = pairwise.condensed_rows(pdist(z, metric), 23, [0, 7, 22])
    assert np.array_equal(rows, cdist(z, z, metric)[[0, 7, 22]])


def test_blas_distances_equal_cdist_within_rounding() -> None:
    z = density_descriptors(40, 6).reshape(40, -1)
    fast = pairwise.condensed(z, "euclidean", "blas", block=16)
    np.testing.assert_allclose(fast, pdist(z), rtol=1e-9)
    assert pairwise.resolve_method("auto", pairwise.EXACT_MAX) == "exact"
    assert pairwise.resolve_method("auto", pairwise.EXACT_MAX + 1) == "blas"
    with pytest.raises(ValueError, match="Euclidean distances only"):
        pairwise.resolve_method("blas", 10, "cityblock")


def lattice(n: int, seed: int) -> np.ndarray:
    """Points on an integer lattice, with duplicates: many exact distance ties."""
    rng = np.random.default_rng(seed)
    z = rng.integers(0, 4, size=(n, 6)).astype(float) * 0.5 + 100.0  # far from the origin
    z[5] = z[6]
    return z


@pytest.mark.parametrize("make", [lattice, lambda n, s: np.random.default_rng(s).normal(size=(n, 50))])
def test_knn_and_radius_graph_equal_the_dense_matrix(make) -> None:
    z = make(120, 0)
    dense = cdist(z, z)
    np.fill_diagonal(dense, np.inf)
    for k in (1, 3, 20):
        index, dist = pairwise.knn(z, k, block=17)
        np.testing.assert_array_equal(dist, np.sort(dense, axis=1)[:, :k])
        np.testing.assert_array_equal(np.take_along_axis(dense, index, axis=1), dist)
    np.fill_diagonal(dense, 0.0)
    radius = float(np.median(dense))
    indptr, indices = pairwise.radius_graph(z, radius, block=17)
    got = np.zeros_like(dense, dtype=bool)
    got[np.repeat(np.arange(len(z)), np.diff(indptr)), indices] = True
    np.testing.assert_array_equal(got, dense <= radius)


# ------------------------------------------------------------------ the rules on 30-case pools
def test_density_counts_are_the_dense_ones() -> None:
    for seed in range(3):
        desc = density_descriptors(POOL, seed)
        dense = cdist(desc.reshape(POOL, -1), desc.reshape(POOL, -1), "cityblock") / 1024
        ids = [f"c{i}" for i in range(POOL)]
        for rule in ("exclusive", "inclusive", "kernel"):
            # compute_density from images would recompute the descriptors: hand them in
            res = compute_density_from(ids, desc, rule)
            rho, delta = neighbour_counts(dense, rule=rule)
            assert [res.density[c] for c in ids] == [float(r) for r in rho]
            assert res.delta == delta
            np.testing.assert_array_equal(res.distances, dense)


def compute_density_from(ids: list[str], desc: np.ndarray, rule: str):
    from lightning_ada.active import density

    original = density.case_descriptor
    table = {float(i): d for i, d in enumerate(desc)}
    density.case_descriptor = lambda img, *a, **k: table[float(img.flat[0])]
    try:
        images = [np.full((1, 2, 2, 2), float(i), dtype=np.float32) for i in range(len(ids))]
        return compute_density(ids, images, rule=rule)
    finally:
        density.case_descriptor = original


@pytest.mark.parametrize("seed, kind, labelled", CASES)
def test_probcover_order_is_the_dense_one(seed: int, kind: str, labelled: list[int]) -> None:
    vecs = vectors(POOL, seed, kind)
    ids = sorted(vecs)
    z = np.stack([vecs[c] for c in ids])
    dist = cdist(z, z)
    for radius_scale in (1.0, 2.0, 4.0):
        ctx = ctx_of(ids, labelled)
        got = with_vectors("coverage", vecs, radius_scale=radius_scale).rank(ctx)
        delta = radius_scale * median_nn_distance(dist)
        order, gains = probcover_order(dist, mask(ids, labelled), delta, ctx.rng())
        assert [s.case_id for s in got] == [ids[i] for i in order]
        assert [s.factors["coverage_gain"] for s in got] == [float(g) for g in gains]


@pytest.mark.parametrize("seed, kind, labelled", CASES)
def test_maxherding_and_mmacts_coverage_are_the_dense_ones(
    seed: int, kind: str, labelled: list[int]
) -> None:
    vecs = vectors(POOL, seed, kind)
    ids = sorted(vecs)
    z = np.stack([vecs[c] for c in ids])
    dist = cdist(z, z)
    sigma = float(np.median(dist[np.triu_indices(POOL, 1)]))
    k = kernel_matrix(dist, sigma)
    lab = mask(ids, labelled)
    got = with_vectors("maxherding", vecs).rank(ctx_of(ids, labelled))
    order, gains = herding_order(k, lab)
    assert [s.case_id for s in got] == [ids[i] for i in order]
    assert [s.factors["coverage_gain"] for s in got] == gains
    # mmacts_coverage: the gains of every case given the labelled set, before the product
    coverage = k[lab].max(axis=0) if lab.any() else np.zeros(POOL)
    ref = herding_gains(k, coverage)
    probs = torch.zeros(2, 4, 4, 4)
    probs[0] = 0.9
    probs[0, 0, 0, 0] = 0.4  # one voxel predicted foreground
    probs[1] = 1 - probs[0]
    strategy = with_vectors("mmacts_coverage", vecs)
    ctx = ctx_of(ids, labelled)
    ctx.image = lambda c: torch.zeros(1)
    ctx.predict = lambda x: (probs, None)
    scored = {s.case_id: s.factors["coverage_gain"] for s in strategy.rank(ctx)}
    assert scored == {ids[i]: float(ref[i]) for i in range(POOL) if not lab[i]}


def typiclust_reference(z: np.ndarray, lab: np.ndarray, n_picks: int, seed: int) -> list[int]:
    """The dense TypiClust of before issue 29 (k_max 20, min cluster size 1)."""
    n_clusters = min(len(z), int(lab.sum()) + n_picks)
    cluster = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit(z).labels_
    taken, picks = lab.copy(), []
    for _ in range(min(n_picks, int((~lab).sum()))):
        cands = []
        for c in range(n_clusters):
            members = np.flatnonzero(cluster == c)
            if (~taken[members]).any():
                cands.append((False, int(taken[members].sum()), -len(members), c))
        c = min(cands)[3]
        members = np.flatnonzero(cluster == c)
        typ = typicality(cdist(z[members], z[members]))
        typ[taken[members]] = -np.inf
        picks.append(int(members[int(np.argmax(typ))]))
        taken[picks[-1]] = True
    pool_typ = typicality(cdist(z, z))
    rest = sorted((i for i in np.flatnonzero(~lab) if i not in picks), key=lambda i: -pool_typ[i])
    return picks + [int(i) for i in rest]


@pytest.mark.parametrize("seed, kind, labelled", CASES)
@pytest.mark.parametrize("schedule", ["sequential", "one_off"])
def test_typiclust_order_is_the_dense_one(
    seed: int, kind: str, labelled: list[int], schedule: str
) -> None:
    vecs = vectors(POOL, seed, kind)
    ids = sorted(vecs)
    z = np.stack([vecs[c] for c in ids])
    ctx = ctx_of(ids, labelled)
    got = with_vectors("typiclust", vecs, schedule=schedule).rank(ctx)
    ref = typiclust_reference(z, mask(ids, labelled), 3 if schedule == "one_off" else 1, ctx.seed)
    assert [s.case_id for s in got] == [ids[i] for i in ref]


@pytest.mark.parametrize("n, block", [(POOL, pairwise.BLOCK), (260, 37)])
def test_mhpl_neighbourhoods_are_the_dense_ones(n: int, block: int) -> None:
    rng = np.random.default_rng(n)
    emb = rng.normal(size=(6, 16))[rng.integers(6, size=n)] + 0.2 * rng.normal(size=(n, 16))
    emb[3] = emb[4] = emb[9]  # exact similarity ties: resolved by index
    f = normalize(emb)
    sim = cosine_similarity(f)
    for m in (1, 4, 10):
        index, value = MHPLStrategy.neighbourhoods(f, m, block=block)
        ref = MHPLStrategy._neighbours(sim, m)
        np.testing.assert_array_equal(index, ref)
        if block >= n:  # one block: the very similarities of the dense form
            np.testing.assert_array_equal(value, np.take_along_axis(sim, ref, axis=1))
        else:
            np.testing.assert_allclose(value, np.take_along_axis(sim, ref, axis=1), rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mhpl_ranking_is_the_dense_one(seed: int) -> None:
    from lightning_ada.active.stats import CaseStats

    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(4, 32))[rng.integers(4, size=POOL)] + 0.4 * rng.normal(size=(POOL, 32))
    ent = rng.uniform(0.1, 0.6, size=POOL)
    ids = [f"c{i:03d}" for i in range(POOL)]
    stats = [CaseStats(cid, float(ent[i]), 1, embedding=emb[i]) for i, cid in enumerate(ids)]
    import lightning_ada.active.strategies.mhpl as mhpl_module

    original = mhpl_module.stream_pool_stats
    mhpl_module.stream_pool_stats = lambda *a, **k: stats
    try:
        got = [s.case_id for s in build_strategy("mhpl", budget=3).rank(ctx_of(ids, [2]))]
    finally:
        mhpl_module.stream_pool_stats = original
    # the dense form of before issue 29
    f = normalize(emb)
    sim = cosine_similarity(f)
    others = MHPLStrategy._neighbours(sim, 10)
    hood = np.concatenate([np.arange(POOL)[:, None], others[:, :10]], axis=1)
    nau = ent[hood].mean(axis=1) * np.take_along_axis(sim, others[:, :10], axis=1).mean(axis=1)
    order = sorted((i for i in range(POOL) if i != 2), key=lambda i: (-nau[i], ids[i]))
    selected, accepted, skipped = {2}, [], []
    for i in order:
        (skipped if any(j in selected for j in others[i, :4]) else accepted).append(i)
        if i in accepted:
            selected.add(i)
    assert got == [ids[i] for i in accepted + skipped]


def test_large_pool_multi_block_rules_agree_with_the_dense_ones(monkeypatch) -> None:
    """ProbCover and MaxHerding on 300 cases, blocks of 64 rows: still the dense orders."""
    monkeypatch.setattr(pairwise, "BLOCK", 64)
    vecs = vectors(300, 9, "embedding")
    ids = sorted(vecs)
    z = np.stack([vecs[c] for c in ids])
    dist = cdist(z, z)
    lab = [3, 100]
    ctx = ctx_of(ids, lab)
    got = with_vectors("coverage", vecs).rank(ctx)
    order, _ = probcover_order(dist, mask(ids, lab), 2.0 * median_nn_distance(dist), ctx.rng())
    assert [s.case_id for s in got] == [ids[i] for i in order]
    sigma = float(np.median(dist[np.triu_indices(300, 1)]))
    order, _ = herding_order(kernel_matrix(dist, sigma), mask(ids, lab))
    got = with_vectors("maxherding", vecs).rank(ctx)
    assert [s.case_id for s in got] == [ids[i] for i in order]
    from lightning_ada.active.strategies import coverage

    monkeypatch.setattr(coverage, "KERNEL_BYTES", 0)  # kernel rows rebuilt from the distances
    got = with_vectors("maxherding", vecs).rank(ctx)
    assert [s.case_id for s in got] == [ids[i] for i in order]


def test_class_map_is_argmax_with_ties_and_nan() -> None:
    from lightning_ada.active.stats import class_map

    rng = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(4, 9, 7, 5, generator=rng), 0)
    p[:, 0, 0, 0] = 0.25  # a four-way tie: the first class
    p[1:3, 1, 0, 0] = 0.5
    p[0, 1, 0, 0] = p[3, 1, 0, 0] = 0.0
    p[2, 2, 0, 0] = float("nan")
    assert torch.equal(class_map(p), p.argmax(0))


def test_aada_full_batch_below_the_threshold_is_the_training_of_before() -> None:
    """Power-profile sizes (30 target + 20 source rows): the discriminator's outputs are those of
    the full-batch loop of before, bit for bit; minibatches only above ``batch`` rows."""
    import torch.nn.functional as F

    from lightning_ada.active.strategies.aada import AADAStrategy

    def fit_before(self, x, y):  # the loop of before issue 29
        n_src = float(y.sum())
        w = torch.where(y > 0, 0.5 / n_src, 0.5 / (len(y) - n_src))
        net = self._discriminator(x.shape[1])
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        net.train()
        for _ in range(self.steps):
            opt.zero_grad()
            bce = F.binary_cross_entropy_with_logits(net(x).squeeze(1), y, reduction="none")
            (w * bce).sum().backward()
            opt.step()
        return net.eval()

    rng = np.random.default_rng(0)
    z_s, z_t = rng.normal(size=(20, 16)), rng.normal(0.3, 1.0, size=(POOL, 16))
    now = AADAStrategy(steps=30).p_source(z_s, z_t, seed=4)
    before = AADAStrategy(steps=30)
    before._fit = fit_before.__get__(before)
    np.testing.assert_array_equal(now, before.p_source(z_s, z_t, seed=4))
    small = AADAStrategy(steps=30, batch=16).p_source(z_s, z_t, seed=4)  # minibatches
    assert small.shape == now.shape and not np.array_equal(small, now)
