"""CUP, STDR (and its source anchors) and UGTST on constructed pools with hand-known answers."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from lightning_ada.active.stats import _first_peak, gaua
from lightning_ada.active.strategies import QueryContext, Strategy, build_strategy
from lightning_ada.active.strategies.stdr import (
    SourceAnchors,
    anchor_distances,
    body_slices,
    fit_anchors,
    load_anchors,
    slice_descriptors,
)

SIDE = 8  # 8^3 = 512 voxels per toy case


# ------------------------------------------------------------------------------------ helpers
def toy_predict(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel 0 = p(foreground) per voxel (2 classes); embedding = first 2 voxels of channel 1."""
    p = image[0].clamp(0, 1)
    return torch.stack([1 - p, p]), image[1].flatten()[:2].clone()


def toy_features(image: torch.Tensor) -> dict[str, torch.Tensor]:
    """Decoder = the image itself; background probability 0.9 everywhere.

    So every slice descriptor equals max-pool(mean over channels of the image slice).
    """
    shape = image.shape[1:]
    probs = torch.stack([torch.full(shape, 0.9), torch.full(shape, 0.1)])
    return {"probs": probs, "decoder": image.clone(), "embedding": torch.empty(0)}


def make_ctx(images: dict[str, torch.Tensor], **kw: Any) -> QueryContext:
    ids = sorted(images)
    return QueryContext(
        unlabeled=ids,
        pool=ids,
        labeled=[],
        image=images.__getitem__,
        predict=kw.pop("predict", toy_predict),
        modalities=["a", "b"],
        regions={"FG": [1]},
        features=kw.pop("features", toy_features),
        **kw,
    )


def case(p_fg: float, n_fg: int, emb: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """Channel 0: p_fg on the first n_fg voxels, 0 elsewhere; channel 1 starts with emb."""
    img = torch.zeros(2, SIDE, SIDE, SIDE)
    img[0].view(-1)[:n_fg] = p_fg
    img[1].view(-1)[:2] = torch.tensor(emb)
    return img


def constant(v: float, zero_slices: int = 0) -> torch.Tensor:
    """Both channels = v; the last ``zero_slices`` axial slices are empty (outside the body)."""
    img = torch.full((2, SIDE, SIDE, SIDE), float(v))
    if zero_slices:
        img[..., SIDE - zero_slices :] = 0
    return img


def ids(ranked: list[Any]) -> list[str]:
    return [s.case_id for s in ranked]


# ------------------------------------------------------------------------------------ CUP
def cup_pool() -> dict[str, torch.Tensor]:
    # mean entropy (nats): small 200*H(.52)/512 = .270 > large 260*H(.8)/512 = .254
    # >> fillers 50*H(.9)/512 = .032 > confident 500*H(.999)/512 = .008
    pool = {
        "unc_small": case(0.52, 200),
        "unc_large": case(0.8, 260),
        "confident_huge": case(0.999, 500),
    }
    pool |= {f"filler_{i:02d}": case(0.9, 50) for i in range(17)}
    return pool  # 20 cases: 10 % = 2


def test_cup_largest_volume_among_the_most_uncertain_ten_percent() -> None:
    ranked = build_strategy("cup", budget=1).rank(make_ctx(cup_pool()))
    assert ranked[0].case_id == "unc_large"  # more volume than unc_small, both in the top 10 %
    assert ranked[1].case_id == "unc_small"
    f = {s.case_id: s.factors for s in ranked}
    assert f["unc_small"]["entropy"] > f["unc_large"]["entropy"]  # entropy alone: unc_small
    assert f["confident_huge"]["volume"] == 500 > f["unc_large"]["volume"] == 260
    assert f["confident_huge"]["step1"] == 0.0 and f["unc_large"]["n_step1"] == 2
    assert f["unc_small"]["entropy"] == pytest.approx(
        200 * -(0.52 * math.log(0.52) + 0.48 * math.log(0.48)) / 512, rel=1e-4
    )
    assert [s.score for s in ranked] == sorted((s.score for s in ranked), reverse=True)
    assert len({s.score for s in ranked}) == len(ranked)  # strictly decreasing


def test_cup_step1_keeps_at_least_the_budget() -> None:
    ranked = build_strategy("cup", budget=3).rank(make_ctx(cup_pool()))
    # C1 = top max(3, 2) by entropy = the two uncertain cases + the first filler (by id)
    assert ids(ranked[:3]) == ["unc_large", "unc_small", "filler_00"]
    assert "confident_huge" not in ids(ranked[:3])
    assert all(s.factors["step1"] == 1.0 for s in ranked[:3])
    assert all(s.factors["step1"] == 0.0 for s in ranked[3:])


# ------------------------------------------------------------------------------------ STDR
ANCHORS = np.stack([np.full(256, 1.0), np.full(256, 5.0)])  # descriptors of v = 1 and v = 5


def stdr(budget: int, artifacts: dict[str, Any] | None = None) -> Strategy:
    """STDR for ``budget`` with the anchors of a (fake) source checkpoint ``artifacts``."""
    strategy = build_strategy("stdr", budget=budget)
    if artifacts is not None:
        strategy.load_source_artifacts(artifacts, "source.ckpt")
    return strategy


def stdr_pool() -> dict[str, torch.Tensor]:
    # delta = min((v-1)^2, (v-5)^2): near 0, far 225, mid_a 4, mid_b 2.25
    return {"near": constant(1), "far": constant(20), "mid_a": constant(3), "mid_b": constant(2.5)}


def test_stdr_farthest_then_nearest_to_the_source_anchors() -> None:
    artifacts = {"stdr_anchors": torch.from_numpy(ANCHORS).float()}
    ctx = make_ctx(stdr_pool())
    two = stdr(2, artifacts).rank(ctx)
    assert ids(two[:2]) == ["far", "near"]  # ceil(2/2) farthest + floor(2/2) nearest
    delta = {s.case_id: s.factors["delta"] for s in two}
    assert delta == pytest.approx({"near": 0.0, "far": 225.0, "mid_a": 4.0, "mid_b": 2.25})
    three = stdr(3, artifacts).rank(ctx)
    assert ids(three) == ["far", "mid_a", "near", "mid_b"]  # 2 farthest + 1 nearest, then delta
    assert [s.factors["far"] for s in three[:3]] == [1.0, 1.0, 0.0]
    assert three[2].factors["near"] == 1.0


def test_stdr_scores_body_slices_only() -> None:
    # 4 of 8 slices empty: their zero descriptors (delta 1 to anchor v=1) would halve the mean
    images = {"half": constant(20, zero_slices=4), "near": constant(1)}
    top = stdr(1, {"stdr_anchors": ANCHORS}).rank(make_ctx(images))[0]
    assert top.case_id == "half"
    assert top.factors["n_slices"] == 4 and top.factors["delta"] == pytest.approx(225.0)


def test_stdr_without_anchors_is_an_error_not_a_fallback() -> None:
    strat = stdr(2)
    assert strat.needs == frozenset({"features"}) and strat.schedule == "one_off"
    assert strat.source_callback is SourceAnchors
    with pytest.raises(ValueError, match="no source anchors"):
        strat.rank(make_ctx(stdr_pool()))
    with pytest.raises(ValueError, match="source.ckpt has none.*SourceAnchors"):
        strat.load_source_artifacts({}, "source.ckpt")
    with pytest.raises(ValueError, match="grid"):
        strat.load_source_artifacts({"stdr_anchors": np.zeros((2, 16))}, "source.ckpt")
    meta = {"grid": 16, "weight": "foreground"}
    with pytest.raises(ValueError, match="weight"):
        strat.load_source_artifacts({"stdr_anchors": ANCHORS, "stdr_anchors_meta": meta}, "s.ckpt")


# ------------------------------------------------------------------------------------ UGTST
def bits(p: float) -> float:
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def probs_from(values: list[tuple[float, int]]) -> torch.Tensor:
    p = torch.cat([torch.full((n,), v) for v, n in values]).view(1, 1, -1)
    return torch.stack([1 - p, p])


def test_gaua_threshold_is_the_first_histogram_peak() -> None:
    groups = [(0.0, 1000), (0.05, 10), (0.2, 50), (0.35, 10), (0.5, 5)]
    score, tau = gaua(probs_from(groups))
    # entropies (bits) .286 / .722 / .934 / 1.0 over [0, 1], 100 bins: first interior peak =
    # bin 28 (the 10 voxels at p = .05), tau = its left edge 0.28; the 1000 zeros are excluded
    assert tau == pytest.approx(0.28, abs=1e-6)
    expected = (10 * bits(0.05) + 50 * bits(0.2) + 10 * bits(0.35) + 5 * 1.0) / 75
    assert score == pytest.approx(expected, rel=1e-5)
    # no interior peak (zeros + maximal entropy only): the highest bin (the zeros) is the peak
    score, _ = gaua(probs_from([(0.0, 1000), (0.5, 5)]))
    assert score == pytest.approx(1.0, rel=1e-6)
    assert _first_peak(np.array([5, 1, 3, 3, 3, 1, 0])) == 3  # plateau middle
    assert _first_peak(np.array([5, 4, 3, 2, 1])) == 0


def ugtst_pool() -> dict[str, torch.Tensor]:
    a = [(0.0, 0.0), (1.0, 0.0), (-1.0, 0.0), (0.0, 0.5)]  # centroid (0, .125): nearest a0
    b = [(10.0, 10.0), (11.0, 10.0), (9.0, 10.0), (10.0, 10.5)]  # nearest b0
    far = [(100.0, -100.0), (101.0, -100.0), (100.0, -101.0), (-100.0, 100.0)]
    pool = {f"hi_a{i}": case(0.5 - 0.01 * i, 100, e) for i, e in enumerate(a)}
    pool |= {f"hi_b{i}": case(0.46 - 0.01 * i, 100, e) for i, e in enumerate(b)}
    pool |= {f"lo_{i}": case(0.99 - 0.001 * i, 100, e) for i, e in enumerate(far)}
    return pool


def test_ugtst_picks_one_representative_per_cluster_of_uncertain_cases() -> None:
    ranked = build_strategy("ugtst", budget=2).rank(make_ctx(ugtst_pool(), seed=1))
    f = {s.case_id: s.factors for s in ranked}
    assert set(ids(ranked[:2])) == {"hi_a0", "hi_b0"}
    assert f["hi_a0"]["cluster"] != f["hi_b0"]["cluster"]
    # candidates = top 4B = 8 by GAUA = every hi_* case; the confident outliers never enter
    assert {c for c in f if f[c]["candidate"]} == {c for c in f if c.startswith("hi_")}
    assert all(f[c]["cluster"] == -1 for c in f if c.startswith("lo_"))
    assert ids(ranked[:2]) == ["hi_a0", "hi_b0"]  # picks by decreasing GAUA (p .50 vs .46)
    assert f["hi_a0"]["gaua"] == pytest.approx(bits(0.5), rel=1e-5)


def test_ugtst_needs_embeddings() -> None:
    ctx = make_ctx(ugtst_pool(), predict=lambda img: (toy_predict(img)[0], None))
    with pytest.raises(ValueError, match="embeddings"):
        build_strategy("ugtst", budget=2).rank(ctx)


# ------------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize(
    ("name", "pool", "extra"),
    [
        ("cup", cup_pool, {}),
        ("stdr", stdr_pool, {}),
        ("ugtst", ugtst_pool, {"seed": 7}),
    ],
)
def test_same_context_same_ranking(name: str, pool: Any, extra: dict[str, Any]) -> None:
    ctx = make_ctx(pool(), **extra)
    anchors = {"stdr_anchors": ANCHORS}
    first = (stdr(2, anchors) if name == "stdr" else build_strategy(name, budget=2)).rank(ctx)
    again = (stdr(2, anchors) if name == "stdr" else build_strategy(name, budget=2)).rank(ctx)
    assert [(s.case_id, s.score) for s in first] == [(s.case_id, s.score) for s in again]


# ------------------------------------------------------------------------------------ anchors
def test_slice_descriptors_shapes_and_values() -> None:
    decoder = torch.full((3, 6, 5, 4), 2.0)
    probs = torch.stack([torch.full((6, 5, 4), 0.25), torch.full((6, 5, 4), 0.75)])
    probs[0, :, :, 2] = 0  # slice 2: no background weight -> zero descriptor
    probs[0, :, :, 3] = 0
    probs[0, :2, :2, 3] = 0.5  # slice 3: 4 voxels with w > 0 < min_positive -> zero
    d = slice_descriptors(decoder, probs)
    assert d.shape == (4, 256) and d.dtype == np.float64
    np.testing.assert_allclose(d[:2], 2.0)  # max(2 * .25) / mean(.25)
    assert not d[2:].any()
    assert slice_descriptors(decoder, probs, grid=4, axis=0).shape == (6, 16)
    fg = slice_descriptors(decoder, probs, weight="foreground", grid=2)
    np.testing.assert_allclose(fg[0], 2.0)
    image = torch.ones(2, 6, 5, 4)
    image[..., 1] = 0
    assert body_slices(image).tolist() == [True, False, True, True]
    assert anchor_distances(d[:2], np.stack([np.zeros(256), np.full(256, 3.0)])).tolist() == [1, 1]


def test_fit_anchors_deterministic_for_a_seed() -> None:
    x = np.random.default_rng(0).normal(size=(200, 16))
    a, b = fit_anchors(x, 4, seed=3), fit_anchors(x, 4, seed=3)
    assert a.shape == (4, 16) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    with pytest.warns(UserWarning, match="distinct"):
        assert fit_anchors(np.repeat(x[:2], 5, axis=0), 4, seed=0).shape == (2, 16)


def test_source_anchors_compute_write_checkpoint_roundtrip(tmp_path: Path) -> None:
    images = [constant(1), constant(5), constant(1.1), constant(4.9)]
    cb = SourceAnchors(k=2, grid=16)
    got = cb.compute(toy_features, images)
    assert got.shape == (2, 256)
    np.testing.assert_allclose(np.sort(got[:, 0]), [1.05, 4.95], rtol=1e-5)
    path = cb.write(tmp_path)
    assert path == tmp_path / "anchors.npy"
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), got)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind
    ckpt: dict[str, Any] = {}
    cb.on_save_checkpoint(None, None, ckpt)  # type: ignore[arg-type]
    torch.save(ckpt, tmp_path / "source.ckpt")
    loaded = torch.load(tmp_path / "source.ckpt", weights_only=True)
    np.testing.assert_array_equal(loaded["stdr_anchors"].numpy(), got)
    assert loaded["stdr_anchors_meta"]["grid"] == 16
    np.testing.assert_array_equal(load_anchors(tmp_path / "source.ckpt"), load_anchors(path))
    # the strategy consumes what the callback made (v=20 far, v=1 near)
    ranked = stdr(2, loaded).rank(make_ctx(stdr_pool()))
    assert ids(ranked[:2]) == ["far", "near"]


def test_source_anchors_hooks_with_a_fake_trainer(tmp_path: Path) -> None:
    images = {"s0": constant(1), "s1": constant(5), "s2": constant(3)}
    calls: list[int] = []

    def features(image: torch.Tensor) -> dict[str, torch.Tensor]:
        calls.append(1)
        return toy_features(image)

    def trainer(stage: str, epoch: int) -> Any:
        view = SimpleNamespace(
            stage=stage, ids={"source": sorted(images)}.get, image=images.__getitem__
        )
        dm = SimpleNamespace(pool_view=lambda: view)
        return SimpleNamespace(
            datamodule=dm, current_epoch=epoch, max_epochs=2, is_global_zero=True,
            log_dir=str(tmp_path / stage), default_root_dir=str(tmp_path),
        )

    module = SimpleNamespace(case_features=features)
    cb = SourceAnchors(k=2)
    t = trainer("source", 0)
    cb.on_train_start(t, module)
    cb.on_train_epoch_end(t, module)  # not the final epoch
    assert cb.anchors is None and not calls
    t = trainer("source", 1)
    cb.on_train_epoch_end(t, module)  # final epoch: before ModelCheckpoint saves
    assert cb.anchors is not None and len(calls) == 3
    assert (tmp_path / "source" / "anchors.npy").is_file()
    cb.on_train_end(t, module)  # already done in this fit: no second pass
    assert len(calls) == 3
    target = SourceAnchors(k=2)
    t = trainer("target", 1)
    target.on_train_start(t, module)
    target.on_train_epoch_end(t, module)
    target.on_train_end(t, module)
    assert target.anchors is None and not (tmp_path / "target" / "anchors.npy").exists()


@pytest.mark.slow
def test_strategies_know_neither_the_datamodule_nor_the_model() -> None:
    code = (
        "import sys, lightning_ada.active.strategies; "
        "bad = [m for m in sys.modules if m.startswith(('lightning_ada.data.datamodule', "
        "'lightning_ada.models', 'lightning_ada.main'))]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
