"""Readers for real data layouts (BraTS, BraTS 2023, MSD, nnU-Net raw, our datalist).

Every reader returns a list of :class:`~lightning_ada.cases.Case` with unique, safe ids;
any missing or inconsistent file raises :class:`~lightning_ada.cases.DataError` naming the
file or case folder (nothing is silently skipped). The content of the files is checked by
:mod:`lightning_ada.data.validation`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from lightning_ada.cases import MISSING, Case, check_case_ids
from lightning_ada.errors import DataError

Layout = Literal["brats", "brats2023", "msd", "nnunet", "datalist"]

NIFTI_ENDINGS = (".nii.gz", ".nii")
#: File names of our datalist JSON accepted in a dataset folder (the phantom writes the first).
DATALIST_NAMES = ("dataset.json", "datalist.json")
# BraTS 2018/2019 training names Brats18_<group>_<id>_<n>: Brats18_TCIA10_628_1, BraTS19_2013_0_1.
_BRATS_GROUP = re.compile(r"^brats1[89]_([A-Za-z0-9]+)_[A-Za-z0-9]+_\d+$", re.IGNORECASE)


# ----------------------------------------------------------------------------------------- helpers
def _require(path: str | Path, kind: Literal["dir", "file"]) -> Path:
    """Return ``path`` as a Path, raising :class:`DataError` if it is not an existing dir/file."""
    p = Path(path)
    ok = p.is_dir() if kind == "dir" else p.is_file()
    if not ok:
        raise DataError(f"{p}: {'directory' if kind == 'dir' else 'file'} does not exist")
    return p


def _stem(path: str | Path) -> str:
    """File name without a NIfTI ending (``BRATS_001.nii.gz`` -> ``BRATS_001``)."""
    name = Path(path).name
    for end in NIFTI_ENDINGS:
        if name.endswith(end):
            return name[: -len(end)]
    return name


def _find_nifti(folder: Path, stem: str) -> Path | None:
    """``folder/stem.nii.gz`` or ``folder/stem.nii``, whichever exists (None if neither)."""
    for end in NIFTI_ENDINGS:
        if (folder / f"{stem}{end}").is_file():
            return folder / f"{stem}{end}"
    return None


def _load_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object, raising :class:`DataError` naming the file on any fault."""
    _require(path, "file")
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object at top level")
    return obj


def _indexed_names(mapping: Any, path: Path, key: str) -> tuple[str, ...]:
    """``{"0": "FLAIR", "1": "T1w"}`` -> ``("FLAIR", "T1w")``, checking the keys are 0..n-1."""
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(f"{path}: missing or empty {key!r}")
    try:
        items = sorted((int(k), str(v)) for k, v in mapping.items())
    except ValueError as e:
        raise DataError(f"{path}: {key!r} keys must be channel indices, got {list(mapping)}") from e
    if [i for i, _ in items] != list(range(len(items))):
        raise DataError(f"{path}: {key!r} keys must be 0..{len(items) - 1}, got {list(mapping)}")
    return tuple(v for _, v in items)


#: what a refusal of a case without one of its modalities tells the user to do instead
ZERO_FILL_HINT = (
    "to run such cases with that channel zero-filled (flagged in the query log and the "
    "predictions), set data.missing_modality zero_fill, best with a model trained with "
    "data.modality_dropout"
)


def _finish(cases: list[Case], source: str, missing_ok: bool = False) -> list[Case]:
    """Check ids are safe and unique and every referenced file exists; return ``cases``.

    A modality a case has no file of (:data:`~lightning_ada.cases.MISSING`) is refused naming
    the case and the modality, unless ``missing_ok``; a case with no image at all is refused.
    """
    check_case_ids(cases, source)
    for c in cases:
        if c.missing and not missing_ok:
            raise DataError(
                f"{source}: case {c.case_id!r} has no {', '.join(repr(m) for m in c.missing)} "
                f"image; {ZERO_FILL_HINT}"
            )
        if not c.present_images:
            raise DataError(f"{source}: case {c.case_id!r} has no image at all")
        files = [*c.present_images, *([c.label] if c.label else []), *c.modality_labels.values()]
        for f in files:
            if not Path(f).is_file():
                raise DataError(f"{source}: case {c.case_id!r}: missing file {f}")
    return cases


# ----------------------------------------------------------------------------------------- readers
#: Grade folders of the BraTS 2018/2019 training download (``<root>/HGG/<case>/...``).
GRADE_FOLDERS = ("HGG", "LGG")


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _case_folders(root: Path, expected: str) -> list[tuple[Path, dict[str, Any]]]:
    """Case folders of ``root``, descending into the ``HGG``/``LGG`` grade folders if present.

    Returns ``(folder, meta)`` pairs, ``meta["grade"]`` set for cases under a grade folder.
    """
    folders = _subfolders(root)
    grades = [f for f in folders if f.name.upper() in GRADE_FOLDERS]
    if grades:
        others = [f.name for f in folders if f not in grades]
        if others:
            raise DataError(
                f"{root}: mixes grade folders {[g.name for g in grades]} with other folders "
                f"{others}; expected {expected}"
            )
        found = [(c, {"grade": g.name.upper()}) for g in grades for c in _subfolders(g)]
    else:
        found = [(f, {}) for f in folders]
    if not found:
        raise DataError(f"{root}: no case folders found; expected {expected}")
    return found


def _read_case_folders(
    root: str | Path, modalities: Sequence[str], sep: str, meta: Callable[[str], dict[str, Any]],
    missing_ok: bool = False,
) -> list[Case]:
    """Shared reader of ``root/<case>/<case><sep><modality>.nii[.gz]`` (+ ``<sep>seg``) layouts.

    Case folders may sit in ``HGG``/``LGG`` grade folders (the BraTS 2018/2019 training
    download); only the files of ``modalities`` are read, so a subset of the sequences works.
    The label is optional but must be present for all cases or for none. A modality file a
    case lacks is refused naming it, or (``missing_ok``) read as missing (zero-filled).
    """
    root = _require(root, "dir")
    expected = (
        f"<root>/<case>/<case>{sep}<modality>.nii.gz, optionally under HGG/ and LGG/, "
        f"for modalities {list(modalities)}"
    )
    cases = []
    for folder, extra in _case_folders(root, expected):
        cid = folder.name
        if not any(f.is_file() for f in folder.iterdir()):
            raise DataError(f"{folder}: case folder holds no files; expected {expected}")
        images = []
        for m in modalities:
            p = _find_nifti(folder, f"{cid}{sep}{m}")
            if p is None:
                present = sorted(
                    _stem(f) for f in folder.iterdir() if f.name.endswith(NIFTI_ENDINGS)
                )
                hint = _layout_hint(present, sep)
                if missing_ok and not hint:
                    images.append(MISSING)
                    continue
                raise DataError(
                    f"{folder}: missing modality file {cid}{sep}{m}.nii.gz (or .nii): case {cid!r} "
                    f"has no modality {m!r}; found {present}{hint or '; ' + ZERO_FILL_HINT}"
                )
            images.append(str(p))
        seg = _find_nifti(folder, f"{cid}{sep}seg")
        lab = str(seg) if seg else None
        cases.append(Case(cid, tuple(images), tuple(modalities), lab, meta=meta(cid) | extra))
    cases.sort(key=lambda c: c.case_id)
    unlabeled = [c.case_id for c in cases if c.label is None]
    if unlabeled and len(unlabeled) < len(cases):
        raise DataError(f"{root}: label file <case>{sep}seg.nii.gz missing for {unlabeled}")
    return _finish(cases, str(root), missing_ok)


def _layout_hint(stems: Sequence[str], sep: str) -> str:
    """A hint when the files follow the other BraTS naming than the layout read."""
    if sep == "_" and any(s.endswith(("-t2f", "-t1n", "-t1c", "-t2w")) for s in stems):
        return " (BraTS 2023 names: use data.layout brats2023)"
    if sep == "-" and any(s.endswith(("_flair", "_t1", "_t1ce", "_t2")) for s in stems):
        return " (BraTS 2018-2021 names: use data.layout brats)"
    return ""


def read_brats(
    root: str | Path, modalities: Sequence[str] = ("flair", "t1", "t1ce", "t2"),
    missing_ok: bool = False,
) -> list[Case]:
    """Read the BraTS 2018-2021 layout ``root/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``.

    As distributed: the case folders may sit in ``root/HGG/`` and ``root/LGG/`` (BraTS
    2018/2019 training; ``meta["grade"]``), files other than the wanted modalities and the label
    are ignored. Labels are stored as 0/1/2/4. For BraTS 2018/2019 case names the institution
    group is put in ``meta["group"]`` (``Brats18_TCIA10_628_1`` -> ``"TCIA10"``).

    Args:
        root: folder holding one sub-folder per case (or the ``HGG``/``LGG`` grade folders).
        modalities: modality suffixes to read, in channel order (a subset is fine).
        missing_ok: read a case without one of the modality files as missing that modality
            (zero-filled, ``data.missing_modality zero_fill``) instead of refusing it.

    Returns:
        Cases sorted by id (label None for every case if no ``_seg`` file exists at all).

    Raises:
        DataError: missing root, empty case folder, missing modality file (unless
            ``missing_ok``), or ``_seg`` present for only some cases.
    """

    def meta(cid: str) -> dict[str, Any]:
        m = _BRATS_GROUP.match(cid)
        return {"group": m.group(1)} if m else {}

    return _read_case_folders(root, modalities, "_", meta, missing_ok)


def read_brats2023(
    root: str | Path, modalities: Sequence[str] = ("t2f", "t1n", "t1c", "t2w"),
    missing_ok: bool = False,
) -> list[Case]:
    """Read the BraTS 2023 layout ``root/<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz``.

    Case ids as distributed, e.g. ``BraTS-GLI-00000-000``. Labels are stored as 0/1/2/3.

    Args:
        root: folder holding one sub-folder per case.
        modalities: modality suffixes to read, in channel order (a subset is fine).
        missing_ok: as :func:`read_brats`.

    Returns:
        Cases sorted by id.

    Raises:
        DataError: as :func:`read_brats`.
    """
    return _read_case_folders(root, modalities, "-", lambda cid: {}, missing_ok)


def read_msd(root: str | Path) -> list[Case]:
    """Read a Medical Segmentation Decathlon task folder (e.g. ``Task01_BrainTumour``).

    ``root/dataset.json`` lists ``training`` (image + label, 4-D images with modality on the last
    axis) and optionally ``test`` (image paths only; label None). Case id = file stem.

    Args:
        root: the task folder holding ``dataset.json``.

    Returns:
        Training cases then test cases, in ``dataset.json`` order; ``meta["subset"]`` is
        ``"train"`` or ``"test"``.

    Raises:
        DataError: missing root / ``dataset.json``, malformed entries, or a listed file missing.
    """
    root = _require(root, "dir")
    js = root / "dataset.json"
    d = _load_json(js)
    modalities = _indexed_names(d.get("modality"), js, "modality")
    cases = []
    for entry in d.get("training") or []:
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DataError(f"{js}: training entry {entry!r} needs 'image' and 'label'")
        img = root / entry["image"]
        lab = str(root / entry["label"])
        cases.append(Case(_stem(img), (str(img),), modalities, lab, meta={"subset": "train"}))
    for entry in d.get("test") or []:
        img = root / (entry["image"] if isinstance(entry, dict) else entry)
        cases.append(Case(_stem(img), (str(img),), modalities, None, meta={"subset": "test"}))
    if not cases:
        raise DataError(f"{js}: no 'training' or 'test' cases listed")
    return _finish(cases, str(js))


def read_nnunet_raw(root: str | Path, missing_ok: bool = False) -> list[Case]:
    """Read an nnU-Net v2 raw dataset folder (``Dataset001_BrainTumour``).

    ``imagesTr/<case>_<XXXX><file_ending>`` (one file per channel of ``channel_names``) with
    ``labelsTr/<case><file_ending>``; ``imagesTs`` cases (if the folder exists) get label None.

    Args:
        root: the dataset folder holding ``dataset.json``.
        missing_ok: read a case without one of its channel files as missing that modality
            (zero-filled) instead of refusing it.

    Returns:
        ``imagesTr`` cases then ``imagesTs`` cases, each sorted by id; ``meta["subset"]`` is
        ``"train"`` or ``"test"``.

    Raises:
        DataError: missing root / ``dataset.json`` / ``imagesTr``, a file not named
            ``<case>_XXXX``, a missing channel or training label, or a label without images.
    """
    root = _require(root, "dir")
    js = root / "dataset.json"
    d = _load_json(js)
    names = d.get("channel_names", d.get("modality"))  # nnU-Net v1 used "modality"
    modalities = _indexed_names(names, js, "channel_names")
    ending = str(d.get("file_ending", ".nii.gz"))
    pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(ending)}$")
    cases: list[Case] = []
    for sub, lab_sub, subset in (("imagesTr", "labelsTr", "train"), ("imagesTs", None, "test")):
        folder = root / sub
        if not folder.is_dir():
            if sub == "imagesTr":
                raise DataError(f"{folder}: directory does not exist")
            continue
        channels: dict[str, dict[int, Path]] = {}
        for f in sorted(folder.iterdir()):
            if f.name.startswith(".") or not f.is_file():
                continue
            m = pattern.match(f.name)
            if m is None:
                raise DataError(f"{f}: not named <case>_XXXX{ending}")
            channels.setdefault(m.group(1), {})[int(m.group(2))] = f
        for cid in sorted(channels):
            missing = [i for i in range(len(modalities)) if i not in channels[cid]]
            extra = sorted(set(channels[cid]) - set(range(len(modalities))))
            if extra:
                raise DataError(f"{folder}: case {cid!r}: unexpected channel file "
                                f"{cid}_{extra[0]:04d}{ending}")
            if missing and not missing_ok:
                raise DataError(
                    f"{folder}: case {cid!r} has no modality {modalities[missing[0]]!r} (missing "
                    f"channel file {cid}_{missing[0]:04d}{ending}); {ZERO_FILL_HINT}"
                )
            label = None
            if lab_sub is not None:
                label = root / lab_sub / f"{cid}{ending}"
                if not label.is_file():
                    raise DataError(
                        f"{root / lab_sub}: case {cid!r}: missing label file {label.name}"
                    )
            images = tuple(str(channels[cid][i]) if i in channels[cid] else MISSING
                           for i in range(len(modalities)))
            lab = str(label) if label else None
            cases.append(Case(cid, images, modalities, lab, meta={"subset": subset}))
        if lab_sub is not None and (root / lab_sub).is_dir():
            orphans = sorted(
                f.name
                for f in (root / lab_sub).iterdir()
                if f.name.endswith(ending)
                and not f.name.startswith(".")
                and f.name[: -len(ending)] not in channels
            )
            if orphans:
                raise DataError(f"{root / lab_sub}: label files without images in {sub}: {orphans}")
    if not cases:
        raise DataError(f"{root}: no cases found in imagesTr/imagesTs")
    return _finish(cases, str(root), missing_ok)


def read_datalist(path: str | Path, missing_ok: bool = False) -> list[Case]:
    """Read our JSON datalist ``{"name", "modalities", "labels", "cases": [Case.to_json(), ...]}``.

    Relative paths resolve against the JSON file's folder. This is the format the synthetic phantom
    writes. A case entry holds ``case_id``, ``images`` (one path per modality, ``null`` for a
    modality the case lacks), ``modalities`` and optionally ``label``, ``modality_labels``,
    ``split`` and ``meta``.

    Args:
        path: the JSON file, or a folder holding ``datalist.json`` or ``dataset.json`` (one of
            the two).
        missing_ok: accept ``null`` images (the modality zero-filled) instead of refusing them.

    Returns:
        The cases in file order.

    Raises:
        DataError: missing/malformed file, a case whose modalities disagree with the top-level
            ``modalities``, a referenced file missing, or duplicate ids.
    """
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in DATALIST_NAMES if (path / n).is_file()]
        if len(found) > 1:
            raise DataError(f"{path}: holds both {' and '.join(DATALIST_NAMES)}; keep one")
        if not found:
            raise DataError(f"{path}: no {' or '.join(DATALIST_NAMES)} datalist in this folder")
        path = found[0]
    d = _load_json(path)
    if not isinstance(d.get("cases"), list):
        raise DataError(f"{path}: missing 'cases' list")
    top = tuple(d["modalities"]) if d.get("modalities") else None
    cases = []
    for i, entry in enumerate(d["cases"]):
        try:
            c = Case.from_json(entry, path.parent)
        except (KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{path}: case entry {i} is malformed ({e!r})") from e
        if top is not None and c.modalities != top:
            raise DataError(
                f"{path}: case {c.case_id!r} has modalities {list(c.modalities)}, "
                f"expected {list(top)}"
            )
        if len(c.images) not in (1, len(c.modalities)):
            raise DataError(
                f"{path}: case {c.case_id!r} has {len(c.images)} images "
                f"for {len(c.modalities)} modalities"
            )
        cases.append(c)
    return _finish(cases, str(path), missing_ok)


_READERS: dict[str, Callable[..., list[Case]]] = {
    "brats": read_brats,
    "brats2023": read_brats2023,
    "msd": read_msd,
    "nnunet": read_nnunet_raw,
    "datalist": read_datalist,
}


def read_cases(root_or_file: str | Path, layout: Layout, **kwargs: Any) -> list[Case]:
    """Read cases from ``root_or_file`` in the given ``layout``.

    Args:
        root_or_file: dataset folder (or datalist JSON file).
        layout: one of ``"brats"``, ``"brats2023"``, ``"msd"``, ``"nnunet"``, ``"datalist"``.
        **kwargs: forwarded to the reader (e.g. ``modalities`` for the BraTS layouts).

    Returns:
        The cases, with unique ids.

    Raises:
        DataError: unknown layout or any reader error.
    """
    if layout not in _READERS:
        raise DataError(f"unknown layout {layout!r}; expected one of {sorted(_READERS)}")
    return _READERS[layout](root_or_file, **kwargs)
