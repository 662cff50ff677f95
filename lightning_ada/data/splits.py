"""Splits of a task's cases: which ids the model trains, validates and is tested on, per stage.

A case's split comes from its own record (a datalist's ``split`` field) unless ``data.splits``
lists the split's ids explicitly. The ``source`` stage trains on ``source`` and is tested on
``source_test``; the ``target`` stage trains on the labelled part of ``pool`` and is tested on
``test``. Validation (``data.val_split``) is off by default, a named split (never the stage's
test split) or a held-out fraction of the training split.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from lightning_ada.cases import Case
from lightning_ada.errors import DataError

#: Metric prefixes the module already uses: not allowed as names of extra test splits.
RESERVED_PREFIXES = ("train", "val", "test")


def training_split(stage: str) -> str:
    """The split the model trains on: ``source`` (source stage) or ``pool`` (target stage)."""
    return "source" if stage == "source" else "pool"


def test_split(stage: str) -> str:
    """The split ``test`` scores first: ``source_test`` (source stage) or ``test`` (target)."""
    return "source_test" if stage == "source" else "test"


def validation_setting(val: float | str | None) -> str | float | None:
    """``data.val_split`` as configured: None, a split name or a fraction (``"none"`` is None)."""
    if isinstance(val, str) and val.strip().lower() in ("none", "null", ""):
        return None
    if isinstance(val, str):
        try:
            return float(val)
        except ValueError:
            return val
    return None if val is None else float(val)


def validation_split(val: float | str | None) -> str | None:
    """The split validation scores: None (no validation), the configured split, or ``val`` (a
    held-out fraction)."""
    setting = validation_setting(val)
    return "val" if isinstance(setting, float) else setting


def resolve_splits(
    cases: Sequence[Case],
    stage: str,
    listed: Mapping[str, Sequence[str]] | None = None,
    val: float | str | None = None,
    extra_test_splits: Sequence[str] = (),
    source: str = "the dataset",
) -> dict[str, list[str]]:
    """Case ids per split name, checked for the stage.

    Args:
        cases: every case read.
        stage: ``source`` or ``target``.
        listed: explicit ids per split (``data.splits``); they replace the cases' own fields.
            Listing the stage's test split as empty (``{test: []}``) says there is no
            evaluation set (an annotation app's datastore): accepted here, refused by ``test``.
        val: ``data.val_split`` (a fraction moves that share of the training split to ``val``).
        extra_test_splits: more splits ``test`` scores (``data.extra_test_splits``).
        source: what to name in errors (the dataset root).

    Raises:
        DataError: an unknown id, an empty split the stage needs, a case in two of the
            training/validation/test splits, or a bad validation or extra split.
    """
    known = {c.case_id for c in cases}
    splits: dict[str, list[str]] = {}
    for c in cases:
        if c.split is not None:
            splits.setdefault(c.split, []).append(c.case_id)
    for name, ids in (listed or {}).items():
        unknown = sorted(set(ids) - known)
        if unknown:
            raise DataError(f"split {name!r} names unknown case ids: {unknown}")
        splits[name] = list(ids)
    need = ("source", "source_test") if stage == "source" else ("pool", "test")
    for name in need:
        declared_empty = name == test_split(stage) and name in (listed or {})
        if not splits.get(name) and not declared_empty:
            raise DataError(f"{source}: split {name!r} is empty or missing")
    hold_out_validation(splits, stage, val)
    check_disjoint(splits, stage, val)
    for name in extra_test_splits:
        if name in RESERVED_PREFIXES or name == test_split(stage):
            raise DataError(
                f"data.extra_test_splits: {name!r} is not allowed (the test split is scored "
                f"anyway; {list(RESERVED_PREFIXES)} are metric prefixes already)"
            )
        if not splits.get(name):
            raise DataError(f"data.extra_test_splits: split {name!r} is empty or missing")
    return splits


def hold_out_validation(splits: dict[str, list[str]], stage: str, val: float | str | None) -> None:
    """Check ``val_split``; for a fraction, move that share of the training split to ``val``
    (in place), chosen by a fixed seed over the sorted ids: the same cases in every run."""
    setting = validation_setting(val)
    if setting is None:
        return
    if isinstance(setting, str):
        if setting == test_split(stage):
            raise DataError(
                f"data.val_split {setting!r} is the test split of the {stage} stage: "
                "validate on another split, a held-out fraction, or none"
            )
        if not splits.get(setting):
            raise DataError(f"data.val_split: split {setting!r} is empty or missing")
        return
    train = training_split(stage)
    ids = splits[train]
    n = max(1, round(setting * len(ids)))
    if not 0 < setting < 1 or n >= len(ids):
        raise DataError(
            f"data.val_split {setting}: a held-out fraction must be in (0, 1) and leave a case "
            f"of the {len(ids)} in split {train!r}"
        )
    if "val" in splits:
        raise DataError("data.val_split is a fraction but a split named 'val' exists already")
    held = set(random.Random(0).sample(sorted(ids), n))
    splits["val"] = [cid for cid in ids if cid in held]
    splits[train] = [cid for cid in ids if cid not in held]


def check_disjoint(splits: Mapping[str, Sequence[str]], stage: str, val: float | str | None) -> None:
    """Refuse a case in two of the stage's training, validation and test splits."""
    names = [n for n in (training_split(stage), validation_split(val), test_split(stage)) if n]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = sorted(set(splits.get(a, [])) & set(splits.get(b, [])))
            if both:
                raise DataError(f"cases in both split {a!r} and split {b!r}: {both}")
