"""Checks of the content of every input file, before anything reaches the network.

:func:`validate_case` and :func:`validate_label_file` read the NIfTI files and raise one
:class:`~lightning_ada.cases.DataError` naming the file and the fault: a header declaring
more voxels than the file can hold or than ``max_voxels`` (checked before any data is read),
truncated or unreadable files, shapes and affines that disagree, voxels that are not finite
*as the network sees them* (after the header's scaling and the cast to float32), constant
channels, label values outside the declared set, a gzip-compressed label whose integrity
(each member's CRC-32 and length, in its trailer) does not check out. A delivered label may be
stored in another axis order of its image's grid (LPS instead of RAS, axes permuted):
:func:`validate_label_file` accepts it when asked (``reorient``) and :func:`label_on_image_grid`
gives it in the image's axis order (nibabel's orientation tools); a real misalignment stays
refused. :class:`ValidationMarkers` remembers, in the disk cache, the cases that passed, so that
later runs do not read them again.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from lightning_ada.cases import MISSING, NOT_ANNOTATED, Case
from lightning_ada.data.cache import CacheKey
from lightning_ada.errors import DataError

#: Default ceiling on the voxels of one file (all channels): 512^3, about 0.5 GB as float32.
MAX_VOXELS = 512**3
#: Deflate cannot expand data by more than about 1032:1; a ``.nii.gz`` declaring more bytes
#: than this many times its own size is a lie (a header claiming a huge image).
_GZIP_MAX_RATIO = 1100
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _header(path: str | Path, max_voxels: int) -> nib.Nifti1Image:
    """Open a NIfTI's header only; refuse it if its declared size cannot be right.

    Raises:
        DataError: missing or unreadable file, more voxels than ``max_voxels``, or a declared
            data size the file cannot hold (checked before any voxel is read).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: missing file")
    try:
        img = nib.load(str(p))
    except Exception as e:  # bad magic, bad header (ImageFileError), truncated header
        fault = f"{type(e).__name__}: {e}"
        raise DataError(f"{p}: unreadable or truncated NIfTI header ({fault})") from e
    shape = tuple(int(n) for n in img.shape)
    voxels = math.prod(shape)
    if voxels > max_voxels:
        raise DataError(
            f"{p}: header declares shape {shape} = {voxels:,} voxels, above the limit of "
            f"{max_voxels:,} (data.max_voxels)"
        )
    declared = voxels * img.get_data_dtype().itemsize + int(getattr(img.dataobj, "offset", 0))
    size = p.stat().st_size
    compressed = p.name.endswith(".gz")
    if (compressed and declared > size * _GZIP_MAX_RATIO) or (not compressed and declared > size):
        raise DataError(
            f"{p}: header declares shape {shape} of {img.get_data_dtype()} ({declared:,} bytes) "
            f"but the file holds {size:,} bytes{' compressed' if compressed else ''}: "
            "truncated file or wrong header"
        )
    return img


def _load(path: str | Path, max_voxels: int = MAX_VOXELS) -> tuple[np.ndarray, np.ndarray]:
    """Load a NIfTI as (array after the header's scaling, affine); DataError naming the file."""
    img = _header(path, max_voxels)
    try:
        arr = np.asarray(np.asanyarray(img.dataobj))
    except MemoryError as e:
        raise DataError(
            f"{path}: not enough memory to read shape {tuple(img.shape)} of "
            f"{img.get_data_dtype()}"
        ) from e
    except Exception as e:  # truncated gzip (EOFError, zlib.error), damaged data
        raise DataError(f"{path}: unreadable or truncated NIfTI ({type(e).__name__}: {e})") from e
    return arr, np.asarray(img.affine, dtype=np.float64)


def check_gzip_integrity(path: str | Path) -> None:
    """Read a ``.gz`` file to its end, so that every member's CRC-32 and length (its trailer)
    are checked; a file not ending in ``.gz`` is left alone.

    nibabel reads a ``.nii.gz`` only as far as the header says the data goes: a file whose
    trailer is missing or whose data does not match its checksum loads without a word.

    Raises:
        DataError: naming the file and what gzip found (no trailer, CRC or length mismatch,
            bytes after the last member).
    """
    p = Path(path)
    if not p.name.endswith(".gz"):
        return
    try:
        with gzip.open(p, "rb") as f:
            while f.read(1 << 20):
                pass
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(
            f"{p}: damaged gzip file ({type(e).__name__}: {e}): its integrity check (CRC-32 and "
            "length) fails, so it was cut short or changed after it was written; save it again"
        ) from e


_Ref = tuple[str | Path, tuple[int, ...], np.ndarray]  # (file, spatial shape, affine)


def axis_codes(affine: np.ndarray) -> str:
    """The axis directions of an affine, e.g. ``RAS`` or ``LPS`` (nibabel's ``aff2axcodes``)."""
    return "".join(str(c) for c in nib.aff2axcodes(affine))


def axis_order_change(
    shape: tuple[int, ...], affine: np.ndarray, ref_shape: tuple[int, ...],
    ref_affine: np.ndarray, atol: float = 1e-3,
) -> np.ndarray | None:
    """The nibabel orientation transform that puts an array of ``shape``/``affine`` on the
    reference grid, when the two are the same voxels stored in another axis order (flipped and
    or permuted axes, e.g. LPS vs RAS); None when they are not (or already in the same order).
    """
    orientations = nib.orientations
    own, target = orientations.io_orientation(affine), orientations.io_orientation(ref_affine)
    if np.array_equal(own, target):
        return None
    ornt = orientations.ornt_transform(own, target)
    moved = [0, 0, 0]
    for axis, (to, _) in enumerate(ornt):
        moved[int(to)] = int(shape[axis])
    new_affine = affine @ orientations.inv_ornt_aff(ornt, shape[:3])
    if tuple(moved) != tuple(ref_shape) or not np.allclose(new_affine, ref_affine, rtol=0.0, atol=atol):
        return None
    return ornt


def _check_grid(
    path: str | Path, shape: tuple[int, ...], affine: np.ndarray, ref: _Ref, atol: float,
    hint: str = "",
) -> None:
    """Raise if ``shape``/``affine`` of ``path`` differ from the reference (name, shape, affine)."""
    ref_path, ref_shape, ref_affine = ref
    if shape != ref_shape:
        raise DataError(f"{path}: shape {shape} disagrees with {ref_shape} of {ref_path}{hint}")
    if not np.allclose(affine, ref_affine, rtol=0.0, atol=atol):
        diff = float(np.abs(affine - ref_affine).max())
        raise DataError(
            f"{path}: affine differs from that of {ref_path} "
            f"(max abs difference {diff:.4g} > atol {atol}){hint}"
        )


def _check_finite(path: str | Path, arr: np.ndarray) -> None:
    """Raise if a floating array holds NaN or inf voxels."""
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
        raise DataError(f"{path}: non-finite voxels ({n_nan} NaN, {n_inf} inf)")


def _check_float32(path: str | Path, arr: np.ndarray) -> None:
    """Raise if a finite array overflows float32, the type the network is fed.

    A stored int16 image whose header scale slope is large is finite in float64 (what nibabel
    returns) and infinite once cast to float32 by the loader.
    """
    if arr.size == 0 or not np.issubdtype(arr.dtype, np.number):
        return
    peak = float(np.abs(arr).max())
    if peak > _FLOAT32_MAX:
        n = int((np.abs(arr) > _FLOAT32_MAX).sum())
        raise DataError(
            f"{path}: {n} voxels overflow float32 after the header's scaling (|value| up to "
            f"{peak:.3g} > {_FLOAT32_MAX:.3g}): the network would see inf/NaN; check the "
            "header's scl_slope/scl_inter"
        )


def _check_label(
    path: str | Path,
    ref: _Ref,
    label_values: Sequence[int] | None,
    allow_empty: bool,
    atol: float,
    max_voxels: int = MAX_VOXELS,
    allow_not_annotated: bool = False,
    reorient: bool = False,
) -> str | None:
    """Load a label map; check gzip integrity, grid, finiteness, values in ``{0} |
    label_values`` (and ``NOT_ANNOTATED`` when allowed), emptiness.

    Returns:
        None, or with ``reorient`` for a label stored in another axis order of the reference's
        grid: the change, e.g. ``"LPS -> RAS"`` (the checks ran on the reoriented array).
    """
    arr, affine = _load(path, max_voxels)
    check_gzip_integrity(path)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise DataError(f"{path}: label must be 3-D, got shape {arr.shape}")
    changed, hint = None, ""
    if reorient and axis_codes(affine) != axis_codes(ref[2]):
        ornt = axis_order_change(arr.shape, affine, ref[1], ref[2], atol)
        if ornt is not None:
            changed = f"{axis_codes(affine)} -> {axis_codes(ref[2])}"
            affine = affine @ nib.orientations.inv_ornt_aff(ornt, arr.shape)
            arr = nib.orientations.apply_orientation(arr, ornt)
        else:
            hint = (f" (stored as {axis_codes(affine)}, the image as {axis_codes(ref[2])}; not the "
                    "image's grid in another axis order either)")
    _check_grid(path, tuple(arr.shape), affine, ref, atol, hint)
    _check_finite(path, arr)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.array_equal(arr, np.round(arr)):
            raise DataError(f"{path}: label holds non-integer values")
        if arr.size and float(np.abs(arr).max()) >= 2**62:
            raise DataError(f"{path}: label values out of range (|value| >= 2^62)")
        arr = arr.astype(np.int64)
    lo, hi = int(arr.min()), int(arr.max())
    if lo >= 0 and hi < 65536:
        values = np.flatnonzero(np.bincount(arr.ravel().astype(np.intp, copy=False), minlength=1))
    else:
        values = np.unique(arr)
    if label_values is not None:
        allowed = {0, *map(int, label_values), *([NOT_ANNOTATED] if allow_not_annotated else [])}
        bad = sorted(set(values.tolist()) - allowed)
        if bad:
            raise DataError(f"{path}: label values {bad} outside the declared set {sorted(allowed)}")
    if not allow_empty and hi == 0 and lo == 0:
        raise DataError(f"{path}: label is empty (background only)")
    return changed


def validate_case(
    case: Case,
    label_values: Sequence[int] | None = None,
    atol: float = 1e-3,
    allow_empty_label: bool = True,
    max_voxels: int = MAX_VOXELS,
    allow_not_annotated: bool = False,
) -> None:
    """Load every file of ``case`` and raise one clear :class:`DataError` at the first fault.

    Checks: every header declares at most ``max_voxels`` voxels and a data size its file can
    hold (before reading data); every file is readable (truncated gzip included); images are
    3-D (or one 4-D file with one channel per modality on the last axis); shapes and affines
    (within ``atol``) agree between modalities, the label and any per-modality labels (a
    modality the case lacks, :data:`~lightning_ada.cases.MISSING`, is skipped); no
    NaN/inf voxels, and none once scaled by the header and cast to float32 (what the network
    sees); no modality channel is constant (e.g. all zeros); label values lie in
    ``{0} | label_values``.

    Args:
        case: the case to check.
        label_values: allowed foreground label values (0 is always allowed); None skips the check.
        atol: absolute tolerance on affine entries.
        allow_empty_label: whether an all-background label is acceptable.
        max_voxels: largest number of voxels (all channels) accepted in one file.
        allow_not_annotated: the case's label is partial: its ``NOT_ANNOTATED`` voxels are
            accepted (not annotated, not a class).

    Raises:
        DataError: naming the offending file and the fault.
    """
    n_mod = len(case.modalities)
    if len(case.images) not in (1, n_mod):
        raise DataError(
            f"case {case.case_id!r}: {len(case.images)} image files for {n_mod} modalities"
        )
    ref: _Ref | None = None
    for i, path in enumerate(case.images):
        if path == MISSING:  # a modality the case lacks (data.missing_modality zero_fill)
            continue
        arr, affine = _load(path, max_voxels)
        if len(case.images) == 1 and n_mod > 1:
            if arr.ndim != 4 or arr.shape[-1] != n_mod:
                raise DataError(
                    f"{path}: expected a 4-D image with {n_mod} modalities on the last axis, "
                    f"got shape {arr.shape}"
                )
            channels = [(case.modalities[k], arr[..., k]) for k in range(n_mod)]
        else:
            if arr.ndim == 4 and arr.shape[-1] == 1:
                arr = arr[..., 0]
            if arr.ndim != 3:
                raise DataError(f"{path}: expected a 3-D image, got shape {arr.shape}")
            channels = [(case.modalities[i], arr)]
        ref = ref or (path, tuple(arr.shape[:3]), affine)
        _check_grid(path, tuple(arr.shape[:3]), affine, ref, atol)
        _check_finite(path, arr)
        _check_float32(path, arr)
        for name, ch in channels:
            lo, hi = ch.min(), ch.max()
            if lo == hi:
                fault = "all zeros" if lo == 0 else f"constant (every voxel = {float(lo):g})"
                raise DataError(f"{path}: modality {name!r} is {fault}")
    if ref is None:
        raise DataError(f"case {case.case_id!r}: no image at all")
    if case.label is not None:
        _check_label(case.label, ref, label_values, allow_empty_label, atol, max_voxels,
                     allow_not_annotated)
    for path in case.modality_labels.values():
        _check_label(path, ref, label_values, True, atol, max_voxels)


def validate_label_file(
    path: str | Path,
    reference_image: str | Path,
    label_values: Sequence[int] | None,
    allow_empty: bool = False,
    atol: float = 1e-3,
    max_voxels: int = MAX_VOXELS,
    allow_not_annotated: bool = False,
    reorient: bool = False,
) -> str | None:
    """Check a delivered annotation against the image it was drawn on.

    Args:
        path: the label file.
        reference_image: an image of the case (3-D, or 4-D MSD-style: its first 3 axes are used).
        label_values: allowed foreground values (0 always allowed); None skips the check.
        allow_empty: whether an all-background label is acceptable.
        atol: absolute tolerance on affine entries.
        max_voxels: largest number of voxels accepted in the label file.
        allow_not_annotated: accept ``NOT_ANNOTATED`` voxels (a partial label).
        reorient: accept a label stored in another axis order of the image's grid (the same
            voxels, axes flipped or permuted: LPS vs RAS); :func:`label_on_image_grid` then
            gives it in the image's order.

    Returns:
        None, or (``reorient``) the axis-order change of a label stored in another axis order,
        e.g. ``"LPS -> RAS"``.

    Raises:
        DataError: naming ``path`` (or the reference image if that is unreadable) and the fault.
    """
    p = Path(reference_image)
    if not p.is_file():
        raise DataError(f"{p}: missing file (reference image)")
    try:
        img = nib.load(str(p))
        shape, affine = tuple(img.shape[:3]), np.asarray(img.affine, dtype=np.float64)
    except Exception as e:
        raise DataError(f"{p}: unreadable reference image ({type(e).__name__}: {e})") from e
    return _check_label(path, (p, shape, affine), label_values, allow_empty, atol, max_voxels,
                        allow_not_annotated, reorient)


def label_on_image_grid(
    path: str | Path, reference_image: str | Path, atol: float = 1e-3
) -> nib.Nifti1Image:
    """A label stored in another axis order of its image's grid, in the image's axis order
    (nibabel's ``as_reoriented``), with the image's affine; the stored values are unchanged.

    Raises:
        DataError: the label is not the image's grid in another axis order.
    """
    label, image = nib.load(str(path)), nib.load(str(reference_image))
    shape, affine = tuple(int(n) for n in label.shape[:3]), np.asarray(label.affine, np.float64)
    ref_shape, ref_affine = tuple(int(n) for n in image.shape[:3]), np.asarray(image.affine, np.float64)
    ornt = axis_order_change(shape, affine, ref_shape, ref_affine, atol)
    if ornt is None:
        raise DataError(f"{path}: not the grid of {reference_image} in another axis order")
    data = np.asanyarray(label.dataobj)
    data = data[..., 0] if data.ndim == 4 else data
    moved = nib.orientations.apply_orientation(data, ornt)
    out = nib.Nifti1Image(np.ascontiguousarray(moved), ref_affine)
    out.set_data_dtype(label.get_data_dtype())
    return out


class ValidationMarkers:
    """Cases that passed :func:`validate_case`, remembered as empty files in ``folder``.

    The marker of a case hashes its files' fingerprints (size, mtime, first MiB), the checks'
    settings and the source of this module, so a changed file, setting or check validates again.

    Args:
        folder: where the markers live (``<cache_dir>/validated``).
        settings: JSON-serialisable settings of the checks (label values, voxel limit, ...).
    """

    def __init__(self, folder: str | Path, settings: dict[str, object]) -> None:
        self.folder = Path(folder)
        checks = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
        self.key = CacheKey({**settings, "checks": checks})

    def marker(self, case: Case) -> Path:
        """The marker file of ``case``."""
        return self.folder / f"{self.key(case.to_item()).decode()}.ok"

    def validate(self, case: Case, **kwargs: object) -> None:
        """:func:`validate_case` unless a marker says the case passed; leave one if it does."""
        marker = self.marker(case)
        if marker.is_file():
            return
        validate_case(case, **kwargs)  # type: ignore[arg-type]
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
