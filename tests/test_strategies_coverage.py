"""Coverage, typicality, foreground-aware random, mmActS fidelity options (ALGORITHMS §16-17).

Constructed pools: descriptors are injected through ``PoolDescriptors.vectors`` (no network);
the mmActS tests hand a constructed posterior through ``ctx.predict``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_ada.active.density import compute_density, neighbour_counts, pairwise_distances
from lightning_ada.active.strategies import QueryContext, build_strategy
from lightning_ada.active.strategies.mmacts import boundary_band
from lightning_ada.main import main

CONF = Path(__file__).parent / "conf"


def _ctx(pool: list[str], labeled: list[str] = (), round: int = 0, predict=None, image=None,
         regions=None) -> QueryContext:
    return QueryContext(
        unlabeled=[c for c in pool if c not in labeled],
        pool=list(pool),
        labeled=list(labeled),
        image=image or (lambda c: pytest.fail("the descriptor seam should avoid reading images")),
        predict=predict or (lambda x: pytest.fail("the descriptor seam should avoid the network")),
        modalities=["m0"],
        regions=regions or {"FG": [1]},
        round=round,
    )


def _three_clusters() -> dict[str, np.ndarray]:
    """Clusters of 4, 3 and 2 cases (unit spacing inside, 20 apart); ids interleave clusters."""
    centres = {"a": (0.0, 0.0), "b": (20.0, 0.0), "c": (10.0, 17.3)}
    offsets = {
        "a": [(0, 0), (1, 0), (0, 1), (1, 1)],
        "b": [(0, 0), (1, 0), (0.5, 0.87)],
        "c": [(0, 0), (0, 1)],
    }
    return {f"{k}{i}": np.add(centres[k], o) for k in centres for i, o in enumerate(offsets[k])}


def _with_vectors(name: str, vectors: dict[str, np.ndarray], **kw):
    strategy = build_strategy(name, budget=3, **kw)
    strategy.descriptors.vectors = {c: np.asarray(v, dtype=float) for c, v in vectors.items()}
    return strategy


@pytest.mark.parametrize("name", ["coverage", "maxherding"])
def test_coverage_takes_one_case_per_cluster_before_a_second_from_any(name: str) -> None:
    vectors = _three_clusters()
    pool = sorted(vectors)
    first3 = [s.case_id for s in _with_vectors(name, vectors).rank(_ctx(pool))[:3]]
    assert sorted(c[0] for c in first3) == ["a", "b", "c"]
    assert first3[0][0] == "a"  # the largest cluster covers most
    # a labelled case covers its cluster: the next two picks are the other two clusters
    ranked = _with_vectors(name, vectors).rank(_ctx(pool, labeled=["b1"], round=1))
    assert sorted(s.case_id[0] for s in ranked[:2]) == ["a", "c"]


def test_probcover_with_jittered_clusters_and_an_absolute_radius() -> None:
    rng = np.random.default_rng(0)
    vectors = {
        f"{k}{i}": rng.normal(centre, 0.3, size=4)
        for k, centre in (("x", 0), ("y", 8), ("z", -8))
        for i in range(4)
    }
    pool = sorted(vectors)
    strategy = _with_vectors("coverage", vectors, radius=3.0)
    ranked = strategy.rank(_ctx(pool))
    assert sorted(s.case_id[0] for s in ranked[:3]) == ["x", "y", "z"]
    assert [s.factors["coverage_gain"] for s in ranked[:3]] == [4.0, 4.0, 4.0]
    assert all(s.factors["coverage_gain"] == 0 for s in ranked[3:])  # everything covered


def test_typiclust_picks_the_densest_case_of_the_largest_unlabelled_cluster() -> None:
    # cluster L (6 cases, one labelled) is the largest but holds a labelled case; cluster U (5
    # cases) is not labelled: its centre u4 is the most typical (closest to its neighbours)
    vectors = {f"l{i}": np.array([30.0 + i, 0.0]) for i in range(6)}
    vectors |= {
        "u0": np.array([-1.0, 0.0]),
        "u1": np.array([1.0, 0.0]),
        "u2": np.array([0.0, -1.0]),
        "u3": np.array([0.0, 1.2]),
        "u4": np.array([0.05, 0.05]),
    }
    pool = sorted(vectors)
    strategy = _with_vectors("typiclust", vectors)
    ranked = strategy.rank(_ctx(pool, labeled=["l2"], round=1))  # sequential: k = |L| + 1 = 2
    assert ranked[0].case_id == "u4"
    assert ranked[0].factors["cluster_size"] == 5
    # nothing labelled, one cluster (k = 1): the most typical case of the whole pool
    assert strategy.rank(_ctx(pool))[0].case_id in {"l2", "l3"}  # the middle of the 6-case line
    # one-off: k = B = 3 clusters, one pick from each of the two groups first
    one_off = _with_vectors("typiclust", vectors, schedule="one_off")
    first = [s.case_id[0] for s in one_off.rank(_ctx(pool))[:3]]
    assert set(first) == {"l", "u"}


def test_density_rules_give_every_case_of_a_six_case_pool_rho_at_least_one() -> None:
    rng = np.random.default_rng(1)
    images = [
        torch.from_numpy(rng.normal(i % 3, 1.0 + i, size=(2, 8, 8, 8)).astype(np.float32))
        for i in range(6)
    ]
    ids = [f"c{i}" for i in range(6)]
    exclusive = compute_density(ids, images)
    assert min(exclusive.density.values()) == 0  # today's rule gates the small pool
    for rule in ("inclusive", "kernel"):
        rho = compute_density(ids, images, rule=rule).density
        assert min(rho.values()) >= 1.0, rule
    # inclusive = exclusive + 1; the kernel density is a smooth count bounded by N
    inclusive = compute_density(ids, images, rule="inclusive").density
    assert all(inclusive[c] == exclusive.density[c] + 1 for c in ids)
    kernel, sigma = neighbour_counts(pairwise_distances(exclusive.descriptors), rule="kernel")
    assert sigma == pytest.approx(np.median(exclusive.distances[np.triu_indices(6, 1)]))
    assert np.all(kernel < 6)


def _posterior(ed: int, et: int, side: int = 12) -> torch.Tensor:
    """``(4, side, side, side)`` softmax, 0.9 on each voxel's class (ED, ET, background)."""
    label = torch.zeros(side**3, dtype=torch.long)
    label[:ed] = 2
    label[ed : ed + et] = 3
    probs = torch.full((4, side**3), 0.1 / 3)
    probs[label, torch.arange(side**3)] = 0.9
    return probs.reshape(4, side, side, side)


def test_per_region_ranking_picks_large_et_where_whole_tumour_volume_does_not() -> None:
    cases = {"big_wt": _posterior(ed=600, et=10), "big_et": _posterior(ed=0, et=200)}
    image = {c: torch.full((1, 12, 12, 12), float(i)) for i, c in enumerate(cases)}
    regions = {"NCR": [1], "ED": [2], "ET": [3], "WT": [1, 2, 3]}

    def ctx(round: int = 0) -> QueryContext:
        return _ctx(sorted(cases), round=round, regions=regions, image=image.__getitem__,
                    predict=lambda x: (cases["big_wt" if x.max() == 0 else "big_et"], None))

    whole = build_strategy("mmacts", exponents=(1, 1, 0)).rank(ctx())
    assert whole[0].case_id == "big_wt"
    per_region = build_strategy("mmacts", exponents=(1, 1, 0), ranking="per_region",
                                ranking_regions=["ET", "WT"])
    first = per_region.rank(ctx(0))
    assert first[0].case_id == "big_et" and first[0].factors["volume"] == 200
    assert "region:ET" in first[0].factors
    assert per_region.rank(ctx(1))[0].case_id == "big_wt"  # the next round ranks WT
    with pytest.raises(ValueError, match="not among the model's regions"):
        build_strategy("mmacts", ranking="per_region", ranking_regions=["XX"]).rank(ctx())


def test_entropy_roi_foreground_and_boundary_band() -> None:
    mask = torch.zeros(9, 9, 9, dtype=torch.bool)
    mask[3:6, 3:6, 3:6] = True
    band = boundary_band(mask, 1)
    assert band[4, 4, 4].item() is False and band[3, 3, 3].item() and band[2, 4, 4].item()
    assert not band[0, 0, 0].item()
    # background voxels are certain here, tumour voxels uncertain: foreground entropy is larger
    probs = torch.zeros(2, 9, 9, 9)
    probs[0] = 1.0
    probs[:, mask] = torch.tensor([0.4, 0.6])[:, None]
    from lightning_ada.active.strategies.mmacts import region_stats

    full, _ = region_stats(probs, None, "volume")
    fg, vol = region_stats(probs, None, "foreground")
    assert vol == 27 and fg == pytest.approx(-(0.4 * np.log(0.4) + 0.6 * np.log(0.6)), rel=1e-5)
    assert full == pytest.approx(fg * 27 / 729, rel=1e-5)


def test_fg_random_is_random_among_cases_with_foreground() -> None:
    pool = [f"c{i}" for i in range(8)]
    fg = {"c1", "c4", "c6"}

    def predict(x: torch.Tensor):
        probs = torch.zeros(2, 4, 4, 4)
        probs[0] = 1.0
        if x.item() in {1, 4, 6}:
            probs[:, 0, 0, 0] = torch.tensor([0.0, 1.0])
        return probs, None

    ctx = _ctx(pool, image=lambda c: torch.tensor(float(c[1:])), predict=predict)
    ranked = build_strategy("fg_random").rank(ctx)
    assert {s.case_id for s in ranked[:3]} == fg
    # among the foreground cases (and after them), the order is random's own draw
    plain = [s.case_id for s in build_strategy("random").rank(ctx)]
    assert [s.case_id for s in ranked[:3]] == [c for c in plain if c in fg]
    assert [s.case_id for s in ranked[3:]] == [c for c in plain if c not in fg]


def test_descriptors_read_raw_images_or_the_network_input_and_scale_both_blocks() -> None:
    from lightning_ada.active.descriptors import (
        PoolDescriptors,
        distance_matrix,
        median_offdiagonal,
    )

    rng = np.random.default_rng(2)
    imgs = {f"c{i}": rng.normal(i, 1.0, size=(1, 8, 8, 8)).astype(np.float32) for i in range(4)}
    embs = {f"c{i}": torch.tensor([100.0 * i, 0.0]) for i in range(4)}
    ids = sorted(imgs)
    fail = lambda *_: pytest.fail("read the wrong source")  # noqa: E731
    raw = PoolDescriptors("density", density_input="raw")
    raw.ensure(ids, fail, fail, raw_image=imgs.__getitem__)
    net = PoolDescriptors("density")
    net.ensure(ids, lambda c: torch.from_numpy(imgs[c]), fail)
    np.testing.assert_allclose(raw.matrix(ids), net.matrix(ids))
    with pytest.raises(ValueError, match="raw needs a pool that reads raw images"):
        PoolDescriptors("density", density_input="raw").ensure(ids, fail, fail)
    both = PoolDescriptors("both")
    by_mean = lambda x: (None, embs[ids[int(x.mean().round())]])  # noqa: E731 - case i has mean ~i
    both.ensure(ids, lambda c: torch.from_numpy(imgs[c]), by_mean)
    z = both.matrix(ids)
    d = net.matrix(ids).shape[1]
    # each block has median pairwise distance 1: the huge embedding does not swamp the density
    assert median_offdiagonal(distance_matrix(z[:, :d])) == pytest.approx(1.0)
    assert median_offdiagonal(distance_matrix(z[:, d:])) == pytest.approx(1.0)


def test_raw_case_image_reads_per_modality_and_4d_files(tmp_path: Path) -> None:
    import nibabel as nib

    from lightning_ada.active.density import raw_case_image
    from lightning_ada.cases import Case

    vols = [np.arange(24, dtype=np.float32).reshape(2, 3, 4) * (m + 1) for m in range(2)]
    for m, v in enumerate(vols):
        nib.save(nib.Nifti1Image(v, np.eye(4)), tmp_path / f"m{m}.nii.gz")
    nib.save(nib.Nifti1Image(np.stack(vols, -1), np.eye(4)), tmp_path / "all.nii.gz")
    per_mod = Case("c", (str(tmp_path / "m0.nii.gz"), str(tmp_path / "m1.nii.gz")), ("a", "b"))
    np.testing.assert_array_equal(raw_case_image(per_mod), np.stack(vols))
    single = Case("c", (str(tmp_path / "all.nii.gz"),), ("a", "b"))
    np.testing.assert_array_equal(raw_case_image(single), np.stack(vols))
    bad = Case("c", (str(tmp_path / "all.nii.gz"), str(tmp_path / "m0.nii.gz")), ("a", "b"))
    with pytest.raises(ValueError, match="all.nii.gz: expected a 3-D modality image"):
        raw_case_image(bad)


@pytest.mark.parametrize(
    "strategy, options",
    [
        # two stay in the default suite; the others run with the slow tests (time)
        pytest.param("coverage", ["--active.strategy.descriptor", "both"], marks=pytest.mark.slow),
        ("maxherding", ["--active.strategy.density_input", "raw"]),
        pytest.param("typiclust", ["--active.strategy.descriptor", "embedding"], marks=pytest.mark.slow),
        pytest.param("fg_random", [], marks=pytest.mark.slow),
        pytest.param("mmacts_coverage", ["--active.strategy.budget_weighting", "true"],
                     marks=pytest.mark.slow),
        ("mmacts", ["--active.strategy.density_rule", "kernel",
                    "--active.strategy.ranking", "per_region",
                    "--active.strategy.entropy_roi", "boundary"]),
        pytest.param("mmacts", ["--active.strategy.density_input", "raw",
                                "--active.strategy.density_rule", "inclusive"], marks=pytest.mark.slow),
    ],
)
def test_new_strategies_and_options_run_one_round_through_fit(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path, strategy: str, options: list[str]
) -> None:
    main(
        [
            "fit", "-c", str(CONF / "random_tiny.yaml"),
            "--data.root", str(phantom_root),
            "--model.source_checkpoint", str(source_ckpt),
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0",
            "--active.budget", "1", "--active.strategy", strategy, *options,
        ]
    )
    log = json.loads((tmp_path / "query_log.json").read_text())
    assert len(log) == 1 and log[0]["strategy"] == strategy
    assert log[0]["case_id"].startswith("glioma_pool_")
    factors = log[0]["factors"]
    expected = {"coverage": "coverage_gain", "maxherding": "coverage_gain", "mmacts": "density",
                "fg_random": "foreground", "typiclust": "cluster_size",
                "mmacts_coverage": "coverage_gain"}
    assert expected[strategy] in factors
    if strategy == "mmacts":  # both rules count the case itself: never the gate of a small pool
        assert factors["density"] >= 1.0
