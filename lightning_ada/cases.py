"""The case record: one patient scan with its modalities, label(s) and metadata.

Every part of lightning_ada addresses cases by their stable ``case_id``, never by position.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lightning_ada.errors import DataError

#: the label value of a voxel nobody annotated (a partial label: slices, a box, scribbles), in
#: delivered label files and, unchanged by preprocessing, in the network's class-index labels,
#: where training ignores it
NOT_ANNOTATED = 255


#: the image path of a modality a case has no file of (``data.missing_modality zero_fill``)
MISSING = ""


@dataclass(frozen=True)
class Case:
    """One multi-modal case.

    Args:
        case_id: stable identifier, unique within a dataset.
        images: one NIfTI path per modality, in ``modalities`` order; or a single path to a
            4-D NIfTI holding every modality (MSD layout). ``""`` (:data:`MISSING`) for a
            modality the case lacks, read so only with ``data.missing_modality zero_fill``: the
            channel is zero-filled (:attr:`missing`).
        modalities: modality names, e.g. ``("flair", "t1", "t1ce", "t2")``.
        label: path of the reference mask (label values as stored on disk), or None.
        modality_labels: modality name -> path of the mask an annotator drew looking at that
            modality alone (phantom data; absent for most real data).
        split: which set the case belongs to (``source``, ``source_test``, ``pool``, ``test``) or
            None when the split comes from the configuration.
        meta: free metadata (centre, scanner, tumour volume, degraded modality, ...).
    """

    case_id: str
    images: tuple[str, ...]
    modalities: tuple[str, ...]
    label: str | None = None
    modality_labels: Mapping[str, str] = field(default_factory=dict)
    split: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def missing(self) -> tuple[str, ...]:
        """The modalities this case has no file of (zero-filled), in channel order."""
        if len(self.images) != len(self.modalities):
            return ()
        return tuple(m for m, p in zip(self.modalities, self.images) if p == MISSING)

    @property
    def present_images(self) -> tuple[str, ...]:
        """The image files the case has (:attr:`images` without the missing ones)."""
        return tuple(p for p in self.images if p != MISSING)

    @property
    def reference_image(self) -> str:
        """An image file of the case whose grid its labels must have (the first present)."""
        return self.present_images[0]

    def to_item(self) -> dict[str, Any]:
        """The MONAI-style dict item (``image`` paths, ``label`` path, ``case_id``).

        A missing modality's channel is loaded from :attr:`reference_image` (so it has the
        case's grid) and listed in ``zero_channels`` for the preprocessing to zero it.
        """
        images = [p if p != MISSING else self.reference_image for p in self.images]
        item: dict[str, Any] = {
            "case_id": self.case_id,
            "image": images if len(images) > 1 else images[0],
        }
        if self.missing:
            item["zero_channels"] = [i for i, p in enumerate(self.images) if p == MISSING]
        if self.label is not None:
            item["label"] = self.label
        return item

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (round-trips through :meth:`from_json`)."""
        d = asdict(self)
        d["images"] = list(self.images)
        d["modalities"] = list(self.modalities)
        d["modality_labels"] = dict(self.modality_labels)
        d["meta"] = dict(self.meta)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any], base_dir: str | Path | None = None) -> Case:
        """Build a case from :meth:`to_json` output; relative paths resolve against ``base_dir``."""

        def resolve(p: str | None) -> str:
            if not p:
                return MISSING
            path = Path(p)
            if base_dir is not None and not path.is_absolute():
                path = Path(base_dir) / path
            return str(path)

        return cls(
            case_id=str(d["case_id"]),
            images=tuple(resolve(p) for p in d["images"]),
            modalities=tuple(d["modalities"]),
            label=resolve(d["label"]) if d.get("label") else None,
            modality_labels={k: resolve(v) for k, v in (d.get("modality_labels") or {}).items()},
            split=d.get("split"),
            meta=dict(d.get("meta") or {}),
        )


#: A case id is used in file names (predictions, annotation requests and labels): letters,
#: digits, ``.``, ``_`` and ``-``, starting with a letter or digit, at most 128 characters.
SAFE_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_case_id(case_id: str, source: str) -> None:
    """Raise :class:`DataError` naming ``source`` if ``case_id`` is not a safe file-name stem.

    Rejects path separators, ``..``, absolute paths, spaces and any character outside
    :data:`SAFE_CASE_ID`, so that no file named after a case can leave its folder.
    """
    if not isinstance(case_id, str) or SAFE_CASE_ID.fullmatch(case_id) is None:
        raise DataError(
            f"{source}: case id {case_id!r} is not allowed: use 1-128 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit (no path separators)"
        )


def check_case_ids(cases: Sequence[Case], source: str) -> None:
    """Raise :class:`DataError` naming ``source`` if an id is unsafe or two cases share one."""
    for c in cases:
        check_case_id(c.case_id, source)
    check_unique_ids(cases, source)


def check_unique_ids(cases: Sequence[Case], source: str) -> None:
    """Raise :class:`DataError` naming ``source`` if two cases share an id."""
    seen: dict[str, int] = {}
    for c in cases:
        seen[c.case_id] = seen.get(c.case_id, 0) + 1
    dups = sorted(k for k, n in seen.items() if n > 1)
    if dups:
        raise DataError(f"{source}: duplicate case ids {dups}")



def classes_differ(trained: Mapping[str, int], configured: Mapping[str, int]) -> bool:
    """Whether a network trained with label classes ``trained`` (name -> on-disk value, in class
    order) would read ``configured`` wrongly.

    The network predicts class indices (position + 1); the datamodule maps on-disk values to
    them. The classes agree when there are as many and each position keeps its name or its value:
    the same classes stored with other values (BraTS 2021's ET = 4, BraTS 2023's ET = 3) or
    renamed (``NCR`` as ``necrosis``) agree; a reordering (``{ED: 2, NCR: 1}`` for
    ``{NCR: 1, ED: 2}``) or another set does not.
    """
    a, b = list(dict(trained).items()), list(dict(configured).items())
    if len(a) != len(b):
        return True
    return any(na != nb and int(va) != int(vb) for (na, va), (nb, vb) in zip(a, b))


#: other names of the same MRI sequences (BraTS 2023, MSD, nnU-Net), lower-cased -> BraTS 2021's
MODALITY_ALIASES = {
    "t2f": "flair", "t2-flair": "flair", "t2flair": "flair",
    "t1n": "t1", "t1w": "t1", "t1-native": "t1",
    "t1c": "t1ce", "t1gd": "t1ce", "t1-gd": "t1ce", "t1ce": "t1ce",
    "t2w": "t2",
}


def canonical_modality(name: str) -> str:
    """A modality name as BraTS 2021 spells it when it is a known alias (``T2F``, ``t2f`` and
    ``FLAIR`` are all ``flair``), else lower-cased."""
    low = str(name).strip().lower()
    return MODALITY_ALIASES.get(low, low)
