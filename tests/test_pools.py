"""Pool arithmetic and state round trips (baal-style), addressed by case ids."""

from __future__ import annotations

import json

import pytest

from lightning_ada.data.pools import ActivePool


def make_pool(n: int = 100) -> ActivePool:
    return ActivePool(f"case_{i:03d}" for i in range(n))


def test_label_moves_one_case() -> None:
    pool = make_pool()
    assert (pool.n_labeled, pool.n_unlabeled) == (0, 100)
    pool.label("case_042", "/m/42.nii.gz", "t1ce", round=0, epoch=-1)
    assert (pool.n_labeled, pool.n_unlabeled) == (1, 99)
    assert pool.n_labeled + pool.n_unlabeled == len(pool)
    assert "case_042" not in pool.unlabeled and pool.labeled == ["case_042"]
    ann = pool.annotation("case_042")
    assert (ann.round, ann.modality, ann.label_path, ann.epoch) == (0, "t1ce", "/m/42.nii.gz", -1)


def test_labeled_keeps_query_order_unlabeled_keeps_pool_order() -> None:
    pool = make_pool(10)
    for r, cid in enumerate(["case_007", "case_002", "case_005"]):
        pool.label(cid, f"{cid}.nii.gz", None, round=r)
    assert pool.labeled == ["case_007", "case_002", "case_005"]
    assert pool.unlabeled == [f"case_{i:03d}" for i in (0, 1, 3, 4, 6, 8, 9)]


def test_errors() -> None:
    pool = make_pool(5)
    pool.label("case_001", "a")
    with pytest.raises(ValueError, match="already labeled"):
        pool.label("case_001", "a")
    with pytest.raises(KeyError, match="not in the pool"):
        pool.label("nope", "a")
    with pytest.raises(KeyError, match="not labeled"):
        pool.annotation("case_002")
    with pytest.raises(ValueError, match="duplicate case ids"):
        ActivePool(["a", "b", "a"])


def test_state_round_trip_through_json() -> None:
    pool = make_pool(20)
    pool.label("case_003", "x3", "flair", round=0, epoch=-1)
    pool.label("case_011", "x11", "t2", round=1, epoch=3)
    state = json.loads(json.dumps(pool.state_dict()))  # plain, serialisable state
    fresh = make_pool(20)
    fresh.load_state_dict(state)
    assert fresh.labeled == pool.labeled and fresh.unlabeled == pool.unlabeled
    assert fresh.annotation("case_011") == pool.annotation("case_011")


def test_state_from_another_pool_is_refused() -> None:
    pool = make_pool(5)
    pool.label("case_004", "x")
    with pytest.raises(ValueError, match="unknown to this pool"):
        make_pool(3).load_state_dict(pool.state_dict())
