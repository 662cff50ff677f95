"""Strategies on constructed pools whose right answer is known by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_ada.active.strategies import QueryContext, Scored, build_strategy
from lightning_ada.active.strategies.base import REGISTRY


def probs_for(image: torch.Tensor) -> tuple[torch.Tensor, None]:
    """Toy model: channel 0 holds p(foreground) per voxel; 2 classes."""
    p = image[0].clamp(0, 1)
    return torch.stack([1 - p, p]), None


def make_ctx(images: dict[str, torch.Tensor], run_dir: Path | None = None, **kw: object) -> QueryContext:
    ids = sorted(images)
    return QueryContext(
        unlabeled=kw.pop("unlabeled", ids),  # type: ignore[arg-type]
        pool=ids,
        labeled=[],
        image=images.__getitem__,
        predict=probs_for,
        modalities=["a", "b"],
        regions={"FG": [1]},
        run_dir=run_dir,
        **kw,  # type: ignore[arg-type]
    )


def volume(p_fg: float, n_fg: int, side: int = 8) -> torch.Tensor:
    """Image whose channel 0 is p_fg on the first n_fg voxels (flattened), 0 elsewhere."""
    img = torch.zeros(2, side, side, side)
    flat = img[0].view(-1)
    flat[:n_fg] = p_fg
    img[1] = torch.linspace(0, 1, side**3).view(side, side, side)  # same second channel
    return img


def test_registry_and_unknown_name() -> None:
    assert {"random", "entropy", "mmacts"} <= set(REGISTRY)
    with pytest.raises(ValueError, match="unknown strategy 'nope'.*known strategies"):
        build_strategy("nope")


def test_rank_breaks_ties_by_case_id() -> None:
    strat = build_strategy("random")
    strat.score = lambda ctx: [Scored(c, 1.0) for c in reversed(ctx.unlabeled)]  # type: ignore[method-assign]
    ranked = strat.rank(make_ctx({"b": volume(0, 0), "a": volume(0, 0), "c": volume(0, 0)}))
    assert [s.case_id for s in ranked] == ["a", "b", "c"]


def test_entropy_ranks_the_most_uncertain_case_first() -> None:
    images = {"sure": volume(1.0, 100), "half": volume(0.5, 100), "some": volume(0.8, 100)}
    ranked = build_strategy("entropy", progress=False).rank(make_ctx(images))
    assert [s.case_id for s in ranked] == ["half", "some", "sure"]
    # mean entropy of 100 voxels at p = 0.5 among 512: 100 * ln 2 / 512
    assert ranked[0].factors["entropy"] == pytest.approx(100 * torch.log(torch.tensor(2.0)).item() / 512, rel=1e-4)


def test_mmacts_product_factors_and_argmax(tmp_path: Path) -> None:
    # uncertain-but-small vs. confident-but-large vs. uncertain-and-large
    images = {
        "small_uncertain": volume(0.6, 40),
        "large_confident": volume(0.999, 300),
        "large_uncertain": volume(0.6, 300),
    }
    strat = build_strategy("mmacts", density_delta=1e9, progress=False)  # every case is a neighbour
    ranked = strat.rank(make_ctx(images, tmp_path))
    top = ranked[0]
    assert top.case_id == "large_uncertain"
    f = top.factors
    assert f["volume"] == 300 and f["density"] == 2  # all other cases within delta
    assert f["product"] == pytest.approx(f["entropy"] * f["volume"] * f["density"])
    assert set(strat.timings) == {"density", "inference", "statistics"}


def test_mmacts_exponents_select_one_factor(tmp_path: Path) -> None:
    images = {"small_uncertain": volume(0.5, 40), "large_confident": volume(0.99, 400)}
    entropy_only = build_strategy("mmacts", exponents=(1, 0, 0), density_delta=1e9, progress=False)
    volume_only = build_strategy("mmacts", exponents=(0, 1, 0), density_delta=1e9, progress=False)
    # mean entropy: 40*ln2/512 = 0.054 vs 400*H(0.99)/512 = 0.044 -> entropy prefers the small one
    assert entropy_only.rank(make_ctx(images, tmp_path))[0].case_id == "small_uncertain"
    assert volume_only.rank(make_ctx(images, tmp_path))[0].case_id == "large_confident"


def test_mmacts_tie_goes_to_lowest_case_id(tmp_path: Path) -> None:
    same = volume(0.7, 120)
    images = {"case_b": same.clone(), "case_a": same.clone(), "case_c": volume(0.99, 10)}
    ranked = build_strategy("mmacts", density_delta=1e9, progress=False).rank(make_ctx(images, tmp_path))
    assert ranked[0].score == ranked[1].score
    assert [s.case_id for s in ranked[:2]] == ["case_a", "case_b"]


def test_mmacts_scores_only_unlabeled_but_density_counts_whole_pool(tmp_path: Path) -> None:
    images = {f"c{i}": volume(0.6, 50 + i) for i in range(4)}
    strat = build_strategy("mmacts", density_delta=1e9, progress=False)
    ranked = strat.rank(make_ctx(images, tmp_path, unlabeled=["c0", "c2"]))
    assert {s.case_id for s in ranked} == {"c0", "c2"}
    assert all(s.factors["density"] == 3 for s in ranked)  # neighbours among all 4 pool cases


def test_mmacts_isolated_cases_fall_back_to_informativeness(tmp_path: Path) -> None:
    images = {"a": volume(0.6, 50), "b": volume(0.6, 200)}
    ranked = build_strategy("mmacts", density_delta=0.0, progress=False).rank(make_ctx(images, tmp_path))
    assert ranked[0].case_id == "b" and ranked[0].factors.get("fallback") == 1.0


def test_random_depends_on_seed_and_round_only() -> None:
    images = {f"c{i}": volume(0, 0) for i in range(20)}
    strat = build_strategy("random")
    first = strat.rank(make_ctx(images, seed=3, round=1))[0].case_id
    assert strat.rank(make_ctx(images, seed=3, round=1))[0].case_id == first
    picks = {strat.rank(make_ctx(images, seed=s, round=0))[0].case_id for s in range(10)}
    assert len(picks) > 3
