"""Checks of the content of every input file, before anything reaches the network.

:func:`validate_case` and :func:`validate_label_file` read the NIfTI files and raise one
:class:`~lightning_ada.cases.DataError` naming the file and the fault: a header declaring
more voxels than the file can hold or than ``max_voxels`` (checked before any data is read),
truncated or unreadable files, shapes and affines that disagree, voxels that are not finite
*as the network sees them* (after the header's scaling and the cast to float32), constant
channels, label values outside the declared set. :class:`ValidationMarkers` remembers, in the
disk cache, the cases that passed, so that later runs do not read them again.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from lightning_ada.cases import NOT_ANNOTATED, Case
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


_Ref = tuple[str | Path, tuple[int, ...], np.ndarray]  # (file, spatial shape, affine)


def _check_grid(
    path: str | Path, shape: tuple[int, ...], affine: np.ndarray, ref: _Ref, atol: float
) -> None:
    """Raise if ``shape``/``affine`` of ``path`` differ from the reference (name, shape, affine)."""
    ref_path, ref_shape, ref_affine = ref
    if shape != ref_shape:
        raise DataError(f"{path}: shape {shape} disagrees with {ref_shape} of {ref_path}")
    if not np.allclose(affine, ref_affine, rtol=0.0, atol=atol):
        diff = float(np.abs(affine - ref_affine).max())
        raise DataError(
            f"{path}: affine differs from that of {ref_path} "
            f"(max abs difference {diff:.4g} > atol {atol})"
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
) -> None:
    """Load a label map; check grid, finiteness, values in ``{0} | label_values`` (and
    ``NOT_ANNOTATED`` when allowed), emptiness."""
    arr, affine = _load(path, max_voxels)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise DataError(f"{path}: label must be 3-D, got shape {arr.shape}")
    _check_grid(path, arr.shape, affine, ref, atol)
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


def validate_case(
    case: Case,
    label_values: Sequence[int] | None = None,
    atol: float = 1e-3,
    allow_empty_label: bool = True,
    max_voxels: int = MAX_VOXELS,
) -> None:
    """Load every file of ``case`` and raise one clear :class:`DataError` at the first fault.

    Checks: every header declares at most ``max_voxels`` voxels and a data size its file can
    hold (before reading data); every file is readable (truncated gzip included); images are
    3-D (or one 4-D file with one channel per modality on the last axis); shapes and affines
    (within ``atol``) agree between modalities, the label and any per-modality labels; no
    NaN/inf voxels, and none once scaled by the header and cast to float32 (what the network
    sees); no modality channel is constant (e.g. all zeros); label values lie in
    ``{0} | label_values``.

    Args:
        case: the case to check.
        label_values: allowed foreground label values (0 is always allowed); None skips the check.
        atol: absolute tolerance on affine entries.
        allow_empty_label: whether an all-background label is acceptable.
        max_voxels: largest number of voxels (all channels) accepted in one file.

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
    assert ref is not None
    if case.label is not None:
        _check_label(case.label, ref, label_values, allow_empty_label, atol, max_voxels)
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
) -> None:
    """Check a delivered annotation against the image it was drawn on.

    Args:
        path: the label file.
        reference_image: an image of the case (3-D, or 4-D MSD-style: its first 3 axes are used).
        label_values: allowed foreground values (0 always allowed); None skips the check.
        allow_empty: whether an all-background label is acceptable.
        atol: absolute tolerance on affine entries.
        max_voxels: largest number of voxels accepted in the label file.
        allow_not_annotated: accept ``NOT_ANNOTATED`` voxels (a partial label).

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
    _check_label(path, (p, shape, affine), label_values, allow_empty, atol, max_voxels,
                 allow_not_annotated)


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
