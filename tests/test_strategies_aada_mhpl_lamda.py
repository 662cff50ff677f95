"""AADA, MHPL and LAMDA on constructed pools whose right answer is known by hand.

A toy image ``(2, 4, 4, 4)`` carries everything the toy model returns: channel 0 is p(foreground)
per voxel (2 classes), the first ``d`` voxels of channel 1 are the case embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from lightning_ada.active.strategies import QueryContext, build_strategy
from lightning_ada.active.strategies.base import REGISTRY
from lightning_ada.active.strategies.lamda import confidence_gap

SIDE = 4


def case(embedding: Sequence[float], p_fg: float = 0.5, n_fg: int = 32) -> torch.Tensor:
    """Image whose model output is ``p_fg`` on ``n_fg`` voxels (0 elsewhere) and ``embedding``."""
    img = torch.zeros(2, SIDE, SIDE, SIDE)
    img[0].view(-1)[:n_fg] = p_fg
    emb = torch.as_tensor(embedding, dtype=torch.float32)
    img[1].view(-1)[: emb.numel()] = emb
    return img


def make_predict(d: int):  # noqa: ANN201 - a toy callable
    def predict(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = image[0].clamp(0, 1)
        return torch.stack([1 - p, p]), image[1].reshape(-1)[:d].clone()

    return predict


def make_ctx(
    images: dict[str, torch.Tensor],
    d: int,
    labeled: Sequence[str] = (),
    source: Sequence[str] = (),
    round: int = 0,
) -> QueryContext:
    """Target pool = every image not in ``source``; ``labeled`` are removed from the unlabeled."""
    pool = sorted(c for c in images if c not in source)
    return QueryContext(
        unlabeled=[c for c in pool if c not in labeled],
        pool=pool,
        labeled=list(labeled),
        image=images.__getitem__,
        predict=make_predict(d),
        modalities=["a", "b"],
        regions={"FG": [1]},
        round=round,
        seed=7,
        source=list(source),
    )


def ids(ranked: Sequence[object]) -> list[str]:
    return [s.case_id for s in ranked]  # type: ignore[attr-defined]


def test_registered_with_their_schedules() -> None:
    assert {"aada", "mhpl", "lamda"} <= set(REGISTRY)
    assert REGISTRY["aada"].schedule == "sequential" and REGISTRY["aada"].needs == {"source", "embedding"}
    assert REGISTRY["mhpl"].schedule == "one_off" and REGISTRY["mhpl"].needs == {"embedding"}
    assert REGISTRY["lamda"].schedule == "sequential" and REGISTRY["lamda"].needs == {"embedding"}


# ----------------------------------------------------------------------------------------- AADA
def aada_pool() -> dict[str, torch.Tensor]:
    """Source cases at (3, 0, 0); target cases at (0, 3, 0) except one exactly source-like case."""
    rng = np.random.default_rng(0)
    images = {f"src{i}": case([3, 0, 0] + 0.05 * rng.standard_normal(3)) for i in range(6)}
    images["t_source_like"] = case([3, 0, 0], p_fg=0.5)  # same entropy as t_target_like
    images["t_target_like"] = case([0, 3, 0], p_fg=0.5)
    for i in range(4):  # less uncertain target cases
        images[f"t{i}"] = case([0, 3, 0] + 0.05 * rng.standard_normal(3), p_fg=0.9)
    return images


def aada(**kw: object):  # noqa: ANN201
    return build_strategy("aada", hidden=(32, 32), steps=100, lr=1e-2, progress=False, **kw)


def test_aada_source_like_case_ranks_below_equally_uncertain_target_case() -> None:
    images = aada_pool()
    ctx = make_ctx(images, 3, source=[c for c in images if c.startswith("src")])
    ranked = aada().rank(ctx)
    by_id = {s.case_id: s for s in ranked}
    assert ranked[0].case_id == "t_target_like"
    like, target = by_id["t_source_like"], by_id["t_target_like"]
    assert like.factors["entropy"] == pytest.approx(target.factors["entropy"])
    assert like.factors["p_source"] > 0.5 > target.factors["p_source"]
    assert like.factors["weight"] < 1.0 < target.factors["weight"]
    assert ids(ranked)[-1] == "t_source_like"  # weight < 1 puts it below even the confident ones
    for s in ranked:
        assert s.score == pytest.approx(s.factors["weight"] * s.factors["entropy"])
        assert 1e-6 <= s.factors["p_source"] <= 1 - 1e-6


def test_aada_without_source_set_raises() -> None:
    images = {k: v for k, v in aada_pool().items() if not k.startswith("src")}
    with pytest.raises(ValueError, match="AADA needs the datamodule's source set"):
        aada().rank(make_ctx(images, 3))


def test_aada_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    images = aada_pool()
    src = [c for c in images if c.startswith("src")]
    strat = aada(max_source=4, folds=2)
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = strat.rank(make_ctx(images, 3, source=src))
    assert torch.rand(1) == before  # the discriminator trained inside a forked RNG
    assert torch.get_num_threads() == threads  # restored after its single-threaded training
    second = strat.rank(make_ctx(images, 3, source=src))
    assert ids(first) == ids(second)
    assert [s.score for s in first] == [s.score for s in second]


def test_aada_cross_fitting_keeps_the_discriminator_from_memorising_the_pool() -> None:
    # same distribution in both domains: the honest answer is D ~ 1/2 on every target case
    rng = np.random.default_rng(0)
    z_source, z_target = rng.standard_normal((20, 40)), rng.standard_normal((20, 40))
    in_sample = aada(folds=1).p_source(z_source, z_target, seed=0)
    cross_fit = aada(folds=4).p_source(z_source, z_target, seed=0)
    assert np.median(in_sample) < 0.1  # memorised: every target case looks "very target"
    assert np.median(cross_fit) > 0.2


# ----------------------------------------------------------------------------------------- MHPL
def mhpl_pool() -> dict[str, torch.Tensor]:
    """Three well-separated clusters of 5 in 3-d (a centre + a ring at 0.3 around each axis).

    Cluster A is the uncertain one: its centre ``a1`` has the highest affinity, ``a2`` is a
    near-duplicate of it (in place of one ring member).
    """
    eye = np.eye(3)
    p_fg = {"a": 0.5, "b": 0.7, "c": 0.9}
    images: dict[str, torch.Tensor] = {}
    for axis, name in enumerate("abc"):
        others = [eye[o] for o in range(3) if o != axis]
        ring = [eye[axis] + sign * 0.3 * o for o in others for sign in (1, -1)]
        members = [eye[axis], *ring]
        if name == "a":
            members[1] = eye[axis] + 0.02 * others[0]  # a2: the near-duplicate of a1
        for i, emb in enumerate(members):
            images[f"{name}{i + 1 if name == 'a' else i}"] = case(emb, p_fg[name])
    return images


def test_mhpl_best_first_and_near_duplicates_not_both_in_top2() -> None:
    images = mhpl_pool()
    ranked = build_strategy("mhpl", k=4, progress=False).rank(make_ctx(images, 3))
    assert ranked[0].case_id == "a1"  # uncertain neighbourhood x tightest affinity
    assert ranked[1].case_id != "a2" and not ranked[1].case_id.startswith("a")
    assert ranked[1].case_id == "b0"  # the centre of the next most uncertain cluster
    by_id = {s.case_id: s for s in ranked}
    assert by_id["a2"].factors["ndr_skipped"] == 1.0
    assert by_id["a2"].factors["nau"] > by_id[ranked[1].case_id].factors["nau"]  # skipped by NDR
    f = by_id["a1"].factors
    assert f["nau"] == pytest.approx(f["nu"] * f["na"])
    scores = [s.score for s in ranked]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
    # without the relaxation the two near-duplicates take the top-2
    plain = build_strategy("mhpl", k=4, n_diversity=1, progress=False).rank(make_ctx(images, 3))
    assert ids(plain)[:2] == ["a1", "a2"]


def test_mhpl_labeled_cases_count_as_selected_and_only_unlabeled_are_ranked() -> None:
    images = mhpl_pool()
    ranked = build_strategy("mhpl", k=4, progress=False).rank(make_ctx(images, 3, labeled=["a1"]))
    assert "a1" not in ids(ranked)
    assert ranked[0].case_id.startswith("b")  # all of cluster A neighbours the labeled a1


def test_mhpl_needs_embeddings() -> None:
    ctx = make_ctx(mhpl_pool(), 3)
    ctx.predict = lambda image: (make_predict(3)(image)[0], None)
    with pytest.raises(ValueError, match="embeddings"):
        build_strategy("mhpl", progress=False).rank(ctx)


def test_mhpl_label_purity_warns_on_a_binary_task() -> None:
    with pytest.warns(UserWarning, match="degenerate"):
        ranked = build_strategy("mhpl", k=4, purity="label", progress=False).rank(
            make_ctx(mhpl_pool(), 3)
        )
    assert all("np" in s.factors and s.factors["np"] >= 0 for s in ranked)


def test_mhpl_is_deterministic() -> None:
    strat = build_strategy("mhpl", k=4, progress=False)
    first, second = strat.rank(make_ctx(mhpl_pool(), 3)), strat.rank(make_ctx(mhpl_pool(), 3))
    assert [(s.case_id, s.score) for s in first] == [(s.case_id, s.score) for s in second]


# ---------------------------------------------------------------------------------------- LAMDA
def lamda_pool(p_fg_a: float = 0.6) -> dict[str, torch.Tensor]:
    """A big cluster A (6 cases) at the origin and a small cluster B (3 cases) far away."""
    rng = np.random.default_rng(2)
    images = {f"a{i}": case(0.1 * rng.standard_normal(2), p_fg_a) for i in range(6)}
    images |= {f"b{i}": case([4, 4] + 0.1 * rng.standard_normal(2), 0.6) for i in range(3)}
    return images


def test_confidence_gap() -> None:
    probs = torch.stack([torch.full((2, 2, 2), 0.1), torch.full((2, 2, 2), 0.9)])
    assert confidence_gap(probs) == pytest.approx(0.8)
    assert confidence_gap(torch.stack([torch.ones(2, 2, 2), torch.zeros(2, 2, 2)])) == 0.0


def test_lamda_herding_covers_both_clusters_before_a_second_point_of_the_first() -> None:
    images = lamda_pool()
    strat = build_strategy("lamda", progress=False)
    labeled: list[str] = []
    for r in range(3):
        ranked = strat.rank(make_ctx(images, 2, labeled=labeled, round=r))
        assert all(s.factors["pseudo_slot"] == 0 for s in ranked)  # nothing is confident
        labeled.append(ranked[0].case_id)
    first, second, third = labeled
    assert first.startswith("a") and second.startswith("b")
    assert third.startswith("a")  # 6:3 mass -> the third prototype goes back to A


def test_lamda_confident_cases_fill_pseudo_slots_without_budget() -> None:
    images = lamda_pool(p_fg_a=0.97)  # cluster A: gap 0.94 > 0.8 on its foreground
    ranked = build_strategy("lamda", progress=False).rank(make_ctx(images, 2))
    assert ranked[0].case_id.startswith("b")  # A's prototype took a free pseudo slot
    held = [s for s in ranked if s.factors["pseudo_slot"] == 1.0]
    assert len(held) == 2 and all(s.case_id.startswith("a") for s in held)  # cap = 2 * round 1
    # the herd started in A; once the cap is exceeded that oldest pseudo slot becomes a query
    assert ranked[1].case_id.startswith("a") and ranked[1].factors["herding_step"] == 0
    assert ranked[1].factors["converted"] == 1.0 and ranked[1].factors["confidence_gap"] > 0.8
    # no pseudo slots (cap 0): the confident A prototype is converted into the real query
    plain = build_strategy("lamda", pseudo_ratio=0, progress=False).rank(make_ctx(images, 2))
    assert plain[0].case_id.startswith("a") and plain[0].factors["converted"] == 1.0


def test_lamda_is_deterministic() -> None:
    strat = build_strategy("lamda", progress=False)
    first = strat.rank(make_ctx(lamda_pool(), 2, labeled=["a0"], round=1))
    second = strat.rank(make_ctx(lamda_pool(), 2, labeled=["a0"], round=1))
    assert [(s.case_id, s.score) for s in first] == [(s.case_id, s.score) for s in second]
    assert "a0" not in ids(first)
