"""Cases read from several folders or datalists: the main ``data.root`` plus ``data.extra_roots``.

A user's test cases (or another institution's cases) need not be copied beside the pool: each
:class:`CaseRoot` names a folder (or datalist JSON) with its own layout and, optionally, the split
every case read there belongs to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lightning_ada.cases import Case, check_case_ids
from lightning_ada.data.readers import Layout, read_cases
from lightning_ada.errors import DataError


@dataclass(frozen=True)
class CaseRoot:
    """One more place to read cases from.

    Args:
        root: dataset folder in ``layout`` (for ``datalist``: the JSON file, or a folder holding
            ``dataset.json`` or ``datalist.json``; its relative paths resolve against the JSON's
            folder, absolute paths may point anywhere).
        layout: on-disk layout (:func:`~lightning_ada.data.readers.read_cases`); None: the
            configured ``data.layout``.
        split: the split every case read here belongs to (``pool``, ``test``, or a name of your
            own such as ``other_institutions``), replacing the cases' own ``split`` field; None
            keeps that field. A split listed in ``data.splits`` is exactly the ids listed there.
    """

    root: str
    layout: Layout | None = None
    split: str | None = None


def read_roots(
    roots: Sequence[CaseRoot], default_layout: Layout, modalities: Sequence[str],
    missing_ok: bool = False,
) -> list[Case]:
    """Read every root and return all their cases, in root order.

    Args:
        roots: the places to read; a root's ``layout`` None means ``default_layout``.
        default_layout: ``data.layout``.
        modalities: modality names in channel order (the BraTS layouts read only those files).
        missing_ok: read a case without one of its modalities as missing it (zero-filled)
            instead of refusing it (not for the 4-D MSD layout).

    Returns:
        The cases of every root, each with its root's ``split`` when that is set.

    Raises:
        DataError: any reader error, or a case id found under two roots (naming both).
    """
    cases: list[Case] = []
    where: dict[str, str] = {}
    for r in roots:
        layout = r.layout or default_layout
        kwargs: dict[str, object] = {"modalities": list(modalities)} if layout in ("brats", "brats2023") else {}
        if missing_ok and layout != "msd":
            kwargs["missing_ok"] = True
        found = read_cases(Path(r.root), layout, **kwargs)
        check_case_ids(found, str(r.root))
        for c in found:
            if c.case_id in where:
                raise DataError(
                    f"case id {c.case_id!r} is found both in {where[c.case_id]} and in {r.root}; "
                    "case ids must be unique over data.root and data.extra_roots"
                )
            where[c.case_id] = str(r.root)
            cases.append(dataclasses.replace(c, split=r.split) if r.split is not None else c)
    return cases
