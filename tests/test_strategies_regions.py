"""Region rules (ALGORITHMS.md section 18) on constructed cases whose picks are known exactly.

A case's "image" is its probabilities ``(K, H, W, D)`` and the fake model returns it, so every
voxel score map is designed by hand; the units are the library's own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from lightning_ada.active.callback import ActiveQueryCallback
from lightning_ada.active.query_round import pick_regions
from lightning_ada.active.stats import inner_border
from lightning_ada.active.strategies import REGISTRY, QueryContext, Scored, build_strategy
from lightning_ada.active.strategies.region_rule import Taken, regions_overlap
from lightning_ada.active.units import UNITS, Region
from lightning_ada.errors import ConfigError
from lightning_ada.main import main

CONF = Path(__file__).parent / "conf"
SIDE = 16
RULES = ["fg_random_region", "fg_random_region_reference", "entropy_region", "clasp_pe",
         "mmacts_region", "stdr_slices", "sparse_slices"]


class Model:
    """``ctx.predict`` of a case whose image is its probabilities; counts the passes."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, None]:
        self.calls.append(id(image))
        return image.clone(), None


def probs_from_slices(per_slice: dict[int, tuple[float, ...]], k: int = 2,
                      axis: int = 2) -> torch.Tensor:
    """``(k, 16, 16, 16)``: the given class probabilities on slices along ``axis``, background
    certain elsewhere."""
    p = torch.zeros(k, SIDE, SIDE, SIDE)
    p[0] = 1.0
    for j, values in per_slice.items():
        index: list[Any] = [slice(None)] * 4
        index[axis + 1] = j
        for c, v in enumerate(values):
            index[0] = c
            p[tuple(index)] = v
    return p


def make_ctx(images: dict[str, torch.Tensor], predict: Callable[..., Any] | None = None,
             unit: Any = None, **kw: Any) -> QueryContext:
    ids = sorted(images)
    return QueryContext(
        unlabeled=ids, pool=ids, labeled=[], image=images.__getitem__,
        predict=predict or Model(), modalities=["a"], regions={"FG": [1]},
        unit=unit, candidates=kw.pop("candidates", ids), **kw,
    )


def ranked(name: str, ctx: QueryContext, unit: Any, **options: Any) -> list[Scored]:
    return build_strategy(name, **options).rank_regions(ctx, unit)


def slices_of(s: Scored) -> tuple[int, ...]:
    assert s.region is not None and s.region.kind == "slices"
    return s.region.indices


# ------------------------------------------------------------------ the registry and the callback
def test_every_registered_rule_lists_its_units() -> None:
    for name, cls in REGISTRY.items():
        assert cls.units and set(cls.units) <= set(UNITS), name
        region_rule = cls.case_regions is not REGISTRY["random"].case_regions
        assert region_rule == bool(set(cls.units) - {"case"}), name
    for name in RULES:
        cls = REGISTRY[name]
        assert cls.table_order > 200 and cls.display_name != name
        assert "slices" in cls.units
    assert REGISTRY["stdr_slices"].units == REGISTRY["sparse_slices"].units == {"slices"}
    assert "reference" in REGISTRY["fg_random_region_reference"].display_name
    for name in ("mmacts_region", "stdr_slices"):  # never their case-level parent's ranking
        with pytest.raises(NotImplementedError, match="region rule"):
            build_strategy(name).score(make_ctx({"a": probs_from_slices({})}))


def test_a_case_level_rule_rejects_a_sub_volume_unit_and_names_the_region_rules() -> None:
    callback = ActiveQueryCallback(budget=1, strategy=build_strategy("entropy"),
                                   unit=UNITS["slices"](k=4))
    pool = SimpleNamespace(stage="target", ids=lambda split: [])
    trainer = SimpleNamespace(datamodule=SimpleNamespace(pool_view=lambda: pool),
                              is_global_zero=True, progress_bar_callback=None)
    module = SimpleNamespace(query_outputs=lambda: frozenset({"embedding"}))
    with pytest.raises(ConfigError, match="'entropy' ranks case queries, not the 'slices'") as err:
        callback.prepare(trainer, module)  # type: ignore[arg-type]
    for name in RULES:
        assert name in str(err.value)


# ------------------------------------------------------------------ entropy_region
def test_entropy_region_takes_the_uncertain_slices_then_the_next_case() -> None:
    images = {
        "a": probs_from_slices({j: (0.5, 0.5) for j in (3, 4, 5)}),
        "b": probs_from_slices({j: (0.2, 0.8) for j in (9, 10, 11)}),
    }
    model = Model()
    strategy = build_strategy("entropy_region")
    top = strategy.rank_regions(make_ctx(images, model), UNITS["slices"](k=3))
    assert [(s.case_id, slices_of(s)) for s in top[:2]] == [("a", (3, 4, 5)), ("b", (9, 10, 11))]
    assert top[0].score == pytest.approx(math.log(2), rel=1e-5)
    assert len(model.calls) == 2  # one pass per case
    assert set(strategy.timings) == {"inference", "scoring"}


def test_entropy_region_ranks_boxes_of_the_patch_unit() -> None:
    p = torch.zeros(2, SIDE, SIDE, SIDE)
    p[0] = 1.0
    p[:, 8:, 0:8, 8:] = 0.5
    top = ranked("entropy_region", make_ctx({"a": p}), UNITS["patch"](size=8))
    assert top[0].region == Region("patch", start=(8, 0, 8), size=(8, 8, 8))
    assert top[0].factors["entropy"] == pytest.approx(math.log(2), rel=1e-5)


def test_entropy_region_power_draw_is_seeded_and_greedy_at_high_power() -> None:
    rising = {j: (1 - q, q) for j, q in zip(range(SIDE), np.linspace(0.5, 0.9, SIDE))}
    images = {c: probs_from_slices(rising) for c in ("a", "b", "c")}
    unit = UNITS["slices"](k=2)

    def order(seed: int, power: float) -> list[tuple[str, tuple[int, ...]]]:
        return [(s.case_id, slices_of(s))
                for s in ranked("entropy_region", make_ctx(images, seed=seed), unit, power=power)]

    assert order(0, 1.0) == order(0, 1.0)
    assert len({tuple(order(s, 1.0)[:3]) for s in range(6)}) > 1  # a draw, not a sort
    greedy = [(s.case_id, slices_of(s)) for s in ranked("entropy_region", make_ctx(images), unit)]
    assert [r for _, r in order(3, 1e4)[:3]] == [r for _, r in greedy[:3]] == [(0, 1)] * 3
    with pytest.raises(ValueError, match="power"):
        build_strategy("entropy_region", power=0.0)


# ------------------------------------------------------------------ foreground-aware random
def box_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities predicting tumour in the box at (0, 0, 0) and a reference with tumour in
    the box at (8, 8, 8) (8-voxel boxes of a 16^3 grid)."""
    p = torch.zeros(2, SIDE, SIDE, SIDE)
    p[0] = 1.0
    p[:, 2:6, 2:6, 2:6] = torch.tensor([0.1, 0.9]).view(2, 1, 1, 1)
    ref = torch.zeros(SIDE, SIDE, SIDE, dtype=torch.long)
    ref[10:14, 10:14, 10:14] = 1
    return p, ref


def test_fg_random_region_reference_needs_the_reference() -> None:
    p, _ = box_case()
    with pytest.raises(ValueError, match="simulation only.*fg_random_region"):
        ranked("fg_random_region_reference", make_ctx({"a": p}), UNITS["patch"](size=8))


def test_fg_random_region_takes_the_foreground_box_with_the_documented_share() -> None:
    p, ref = box_case()
    unit = UNITS["patch"](size=8)
    model = Model()
    reference = {"a": ref}.__getitem__
    predicted = ranked("fg_random_region", make_ctx({"a": p}, model), unit, share=1.0)
    truth = ranked("fg_random_region_reference", make_ctx({"a": p}, model, reference=reference),
                   unit, share=1.0)
    # every draw targets the foreground: the box of the map's tumour comes first
    assert predicted[0].region == Region("patch", start=(0, 0, 0), size=(8, 8, 8))
    assert truth[0].region == Region("patch", start=(8, 8, 8), size=(8, 8, 8))
    assert predicted[0].factors["foreground"] == 64 and truth[0].factors["border"] == 56
    assert len(model.calls) == 1  # the predicted rule's one pass; the reference rule makes none
    # the share, on an 8^3 case of eight 4-voxel boxes with tumour in one (reference)
    small = torch.zeros(2, 8, 8, 8)
    small[0] = 1.0
    tumour = torch.zeros(8, 8, 8, dtype=torch.long)
    tumour[5:7, 5:7, 5:7] = 1
    boxes = UNITS["patch"](size=4)

    def first_draws(share: float, n: int = 400) -> list[tuple[float, bool]]:
        out = []
        for seed in range(n):
            ctx = make_ctx({"a": small}, reference={"a": tumour}.__getitem__, seed=seed)
            top = ranked("fg_random_region_reference", ctx, boxes, share=share)[0]
            hit = top.region.start == (4, 4, 4)  # type: ignore[union-attr]
            out.append((top.factors["area"], hit))
        return out

    draws = first_draws(2 / 3)
    assert all(hit for area, hit in draws if area > 0)  # a foreground or border draw: the box
    expected = 2 / 3 + 1 / 3 * 1 / 8  # or a uniform draw among the 8 boxes
    rate = np.mean([hit for _, hit in draws])
    assert abs(rate - expected) < 4 * math.sqrt(expected * (1 - expected) / len(draws))
    uniform = np.mean([hit for _, hit in first_draws(0.0)])  # share 0: nnActive's uniform draw
    assert abs(uniform - 1 / 8) < 4 * math.sqrt(1 / 8 * 7 / 8 / 400)


def test_fg_random_region_visits_cases_in_a_seeded_round_robin() -> None:
    p, _ = box_case()
    images = {c: p.clone() for c in ("a", "b", "c", "d")}
    unit = UNITS["slices"](k=4)

    def sequence(seed: int) -> list[tuple[str, tuple[int, ...]]]:
        return [(s.case_id, slices_of(s))
                for s in ranked("fg_random_region", make_ctx(images, seed=seed), unit)]

    first = sequence(5)
    assert first == sequence(5)
    assert {c for c, _ in first[:4]} == set(images)  # one region per case before a second
    # each case's candidates are random_region's own (seed, round, case id) draw
    plain = ranked("random_region", make_ctx(images, seed=5), unit)
    assert {(s.case_id, slices_of(s)) for s in plain} == set(first)


def test_regions_overlap_and_taken_agree_with_the_masks() -> None:
    shape = (SIDE,) * 3
    regions = [Region("patch", start=s, size=(8, 8, 8)) for s in ((0, 0, 0), (8, 0, 0), (4, 4, 4))]
    regions += [Region("slices", 2, (3, 4)), Region("slices", 2, (5,)), Region("slices", 0, (9,)),
                Region("case")]
    for a in regions:
        for b in regions:
            truth = bool((a.mask(shape) & b.mask(shape)).any())
            assert regions_overlap(a, b) == truth, (a, b)
            taken = Taken([Scored("c", 0.0, {}, r) for r in regions])
            taken.add("c", a)
            assert taken.overlaps("c", b) == truth and not taken.overlaps("other", b), (a, b)


def test_inner_border_is_the_mask_minus_its_6_connected_erosion() -> None:
    m = torch.zeros(7, 7, 7, dtype=torch.bool)
    m[1:6, 1:6, 1:6] = True
    border = inner_border(m)
    assert int(border.sum()) == 125 - 27 and not border[3, 3, 3] and border[1, 3, 3]
    assert int(inner_border(torch.ones(3, 3, 3)).sum()) == 26  # the grid's edge is outside


# ------------------------------------------------------------------ ClaSP PE
def clasp_case() -> torch.Tensor:
    """Background, classes 1 and 2: slices 0, 1 most uncertain overall; slices 4, 5 next;
    slice 2 the best of class 1 (H * p_1), slice 3 the best of class 2."""
    return probs_from_slices({
        0: (0.5, 0.25, 0.25), 1: (0.5, 0.25, 0.25),
        2: (0.3, 0.7, 0.0), 3: (0.3, 0.0, 0.7),
        4: (0.6, 0.2, 0.2), 5: (0.6, 0.2, 0.2),
    }, k=3)


def test_clasp_pe_splits_two_thirds_of_a_round_over_the_classes() -> None:
    unit = UNITS["slices"](k=1)
    model = Model()
    exact = {"beta_start": 1e6, "beta_end": 1e6, "regions_per_round": 4}  # negligible noise
    strategy = build_strategy("clasp_pe", **exact)
    top = strategy.rank_regions(make_ctx({"a": clasp_case()}, model), unit)[:4]
    # int(4 * 0.66) = 2 from the classes, one each; 2 from plain predictive entropy
    assert {slices_of(s)[0]: s.factors["stratum"] for s in top} == {0: 0, 1: 0, 2: 1, 3: 2}
    assert len(model.calls) == 1 and set(strategy.timings) == {"inference", "scoring"}
    plain = ranked("clasp_pe", make_ctx({"a": clasp_case()}), unit, class_share=0.0, **exact)
    assert {slices_of(s)[0] for s in plain[:4]} == {0, 1, 4, 5}
    # each slice appears once in the ranking, whichever ranking offered it
    every = strategy.rank_regions(make_ctx({"a": clasp_case()}), unit)
    assert sorted(slices_of(s)[0] for s in every) == list(range(SIDE))


def test_clasp_pe_round_size_is_one_scan_of_candidates() -> None:
    images = {c: clasp_case() for c in ("a", "b")}
    strategy = build_strategy("clasp_pe")
    ctx = make_ctx(images)
    scored = [s for c in images for s in strategy.case_regions(ctx, UNITS["slices"](k=4), c)]
    assert strategy.per_round(ctx, scored) == 4  # 16^3 voxels / (4 slices of 16^2)


def test_clasp_pe_power_noise_is_seeded_and_falls_over_the_rounds() -> None:
    images = {c: clasp_case() for c in ("a", "b", "c")}
    unit = UNITS["slices"](k=2)
    strategy = build_strategy("clasp_pe", rounds=5)
    assert [strategy.beta(t) for t in (0, 2, 4, 9)] == pytest.approx([1.0, 10.0, 100.0, 100.0])
    first = strategy.rank_regions(make_ctx(images, round=0), unit)
    again = strategy.rank_regions(make_ctx(images, round=0), unit)
    assert [(s.case_id, s.region) for s in first] == [(s.case_id, s.region) for s in again]
    last = strategy.rank_regions(make_ctx(images, round=4), unit)
    noise = [np.mean([abs(s.factors["noise"]) for s in r]) for r in (first, last)]
    assert {s.factors["beta"] for s in last} == {100.0}
    assert noise[1] < noise[0] / 20


# ------------------------------------------------------------------ mmActS region
def test_mmacts_region_is_entropy_times_volume_times_density(tmp_path: Path) -> None:
    images = {
        "a": probs_from_slices({j: (0.4, 0.6) for j in (3, 4, 5)}),
        "b": probs_from_slices({j: (0.1, 0.9) for j in (8, 9, 10)}),
        "c": probs_from_slices({}),
    }
    model = Model()
    strategy = build_strategy("mmacts_region", density_delta=1e9)  # every case a neighbour
    top = strategy.rank_regions(make_ctx(images, model, run_dir=tmp_path), UNITS["slices"](k=3))
    h06 = -(0.4 * math.log(0.4) + 0.6 * math.log(0.6))
    assert (top[0].case_id, slices_of(top[0])) == ("a", (3, 4, 5))
    f = top[0].factors
    assert f["entropy"] == pytest.approx(h06, rel=1e-5)
    assert (f["volume"], f["density"]) == (3 * SIDE * SIDE, 2.0)
    assert top[0].score == pytest.approx(h06 * 768 * 2, rel=1e-5) == f["product"]
    assert (top[1].case_id, slices_of(top[1])) == ("b", (8, 9, 10))
    assert len(model.calls) == 3 and set(strategy.timings) == {"inference", "scoring", "density"}
    share = build_strategy("mmacts_region", density_delta=1e9, volume="share")
    assert share.rank_regions(make_ctx(images, run_dir=tmp_path), UNITS["slices"](k=3))[0] \
        .factors["volume"] == 1.0
    isolated = build_strategy("mmacts_region", density_delta=0.0)  # rho = 0 everywhere
    top = isolated.rank_regions(make_ctx(images, run_dir=tmp_path), UNITS["slices"](k=3))[0]
    assert top.factors["fallback"] == 1.0 and top.score == pytest.approx(h06 * 768, rel=1e-5)


def test_mmacts_region_on_whole_cases_is_mmacts(tmp_path: Path) -> None:
    images = {
        "a": probs_from_slices({j: (0.4, 0.6) for j in (3, 4, 5)}),
        "b": probs_from_slices({j: (0.1, 0.9) for j in (8, 9, 10)}),
        "c": probs_from_slices({2: (0.45, 0.55)}),
    }
    case = build_strategy("mmacts", density_delta=1e9).rank(make_ctx(images, run_dir=tmp_path))
    region = build_strategy("mmacts_region", density_delta=1e9).rank_regions(
        make_ctx(images, run_dir=tmp_path), UNITS["case"]())
    assert [s.case_id for s in region] == [s.case_id for s in case]
    assert [s.score for s in region] == pytest.approx([s.score for s in case], rel=1e-9)


# ------------------------------------------------------------------ STDR slices
def test_stdr_slices_alternates_the_farthest_and_the_nearest_groups() -> None:
    level = torch.full((SIDE,), 2.0)
    level[10:13] = 3.0  # farthest from the anchor at 0
    level[0:3] = 1.0  # nearest
    decoder = level.view(1, 1, 1, SIDE).expand(2, SIDE, SIDE, SIDE).clone()
    image = torch.ones(1, SIDE, SIDE, SIDE)
    image[:, :, :, 15] = 0.0  # outside the body
    probs = torch.zeros(2, SIDE, SIDE, SIDE)
    probs[0] = 1.0  # background weight 1: a slice's descriptor is its level
    calls = []

    def features(x: torch.Tensor) -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"probs": probs, "decoder": decoder, "embedding": torch.zeros(2)}

    strategy = with_anchors(grid=4)
    unit = UNITS["slices"](k=3)
    ctx = make_ctx({"a": image}, features=features, unit=unit)
    top = strategy.rank_regions(ctx, unit)
    assert [slices_of(s) for s in top[:2]] == [(10, 11, 12), (0, 1, 2)]
    assert [s.factors["delta"] for s in top[:2]] == pytest.approx([9.0, 1.0])
    assert all(15 not in slices_of(s) for s in top) and len(calls) == 1
    far_only = with_anchors(grid=4, dual=False).rank_regions(ctx, unit)
    assert [s.factors["delta"] for s in far_only[:2]] == pytest.approx([9.0, 4.0])
    with pytest.raises(ValueError, match="axis 0 .* the unit cuts along axis 2"):
        with_anchors(grid=4, axis=0).rank_regions(ctx, unit)


def with_anchors(**options: Any) -> Any:
    """``stdr_slices`` with one anchor at the origin (what SourceAnchors would have saved)."""
    strategy = build_strategy("stdr_slices", **options)
    strategy.anchors = np.zeros((1, 16))
    return strategy


# ------------------------------------------------------------------ sparse slices
def test_sparse_slices_spreads_a_round_over_the_least_annotated_scans() -> None:
    images = {f"c{i}": torch.zeros(1, SIDE, SIDE, SIDE) for i in range(6)}

    def no_model(image: torch.Tensor) -> Any:
        raise AssertionError("sparse_slices is model-free")

    unit = UNITS["slices"](k=4)
    done: dict[str, torch.Tensor] = {}
    ctx = make_ctx(images, no_model, unit=unit, annotated=done.get)
    first = pick_regions(ranked("sparse_slices", ctx, unit), ctx, 0, allowance=SIDE**3)
    assert len(first) == 4 and len({s.case_id for s in first}) == 4
    for s in first:
        done[s.case_id] = s.region.mask((SIDE,) * 3)  # type: ignore[union-attr]
    ctx = make_ctx(images, no_model, unit=unit, annotated=done.get, round=1)
    second = pick_regions(ranked("sparse_slices", ctx, unit), ctx, 0, allowance=SIDE**3)
    fresh = set(images) - set(done)
    assert {s.case_id for s in second[:2]} == fresh  # the untouched scans first
    assert all(s.factors["level"] == 1.0 for s in second[2:])
    ctx = make_ctx(images, no_model, unit=unit)
    interval = ranked("sparse_slices", ctx, unit, within="interval")
    assert all(slices_of(s) == (2, 6, 10, 14) for s in interval if s.factors["group"] == 0)
    with pytest.raises(ValueError, match="multiple of the unit's k"):
        ranked("sparse_slices", ctx, unit, per_scan=6)


# ------------------------------------------------------------------ through the CLI
def test_entropy_region_asks_for_slices_through_fit(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    main([
        "fit", "-c", str(CONF / "random_tiny.yaml"),
        "--data.root", str(phantom_root),
        "--model.source_checkpoint", str(source_ckpt),
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0",
        "--active.unit", "slices", "--active.unit.k", "4",
        "--active.strategy", "entropy_region", "--active.budget", "1",
    ])
    log = json.loads((tmp_path / "query_log.json").read_text())
    assert log and all(q["strategy"] == "entropy_region" for q in log)
    for q in log:
        assert q["region"]["kind"] == "slices" and len(q["region"]["indices"]) == 4
        assert q["cost"]["voxels"] == 4 * SIDE * SIDE and q["cost"]["slices"] == 4
        assert set(q["timings"]) == {"inference", "scoring"}
    assert sum(q["cost"]["scans"] for q in log) == pytest.approx(1.0)
