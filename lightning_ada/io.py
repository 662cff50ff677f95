"""Writing files safely: atomically (never half-written) and only inside their own folder.

Every file the project writes goes through :func:`atomic_path` (or one of the helpers built on
it): the content is written to a temporary file in the destination's folder, flushed to disk
(``fsync``) and moved over the destination with ``os.replace``, which is atomic on POSIX when
both names are on one filesystem. An interruption leaves either the previous file or the new
one, never a truncated file under the final name. :func:`safe_child` builds the path of a file
named after untrusted input (a case id) and refuses any name that would leave its folder;
:func:`write_mask` writes a predicted or delivered mask as NIfTI.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from lightning_ada.errors import UnsafePathError


def safe_child(folder: str | Path, name: str, follow_links: bool = True) -> Path:
    """``folder / name``, refusing a ``name`` that is not a plain file name inside ``folder``.

    Args:
        folder: the folder the file belongs to (need not exist yet).
        name: a file name, typically built from a case id (``f"{case_id}_pred.nii.gz"``).
        follow_links: also refuse a ``name`` that resolves (through a symbolic link already
            there) outside ``folder``: for files the project writes. False checks the name only:
            for files someone else puts there to be read (a delivered label may be a link to
            the annotator's own folder; what it points to is validated like any file).

    Returns:
        ``Path(folder) / name``.

    Raises:
        UnsafePathError: if ``name`` is empty, absolute, holds a path separator or ``..``, or
            (``follow_links``) resolves through symbolic links outside ``folder``.
    """
    folder = Path(folder)
    seps = {os.sep, "/", *([os.altsep] if os.altsep else [])}
    if (
        not name
        or name in {".", ".."}
        or any(s in name for s in seps)
        or Path(name).is_absolute()
        or "\x00" in name
    ):
        raise UnsafePathError(f"{name!r} is not a plain file name inside {folder}")
    child = folder / name
    if not follow_links:
        return child
    base = folder.resolve()
    if not child.resolve().is_relative_to(base):
        raise UnsafePathError(f"{child} resolves outside {folder}")
    return child


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it over ``path`` atomically.

    For writers that want a file *name* (``nibabel.save``, ``Figure.savefig``, ``np.save``).
    The temporary file is fsynced before the rename; on any exception it is removed and
    ``path`` is left as it was.

    Args:
        path: the destination (its folder is created if needed).
        suffix: ending of the temporary name (default: the destination's full ending, e.g.
            ``.nii.gz``, so that writers choosing a format by extension still do).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    # a fresh name, created by the writer itself (so with the usual permissions, not 0600)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp{suffix}")
    try:
        yield tmp
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return ``path``."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (``default=str``) to ``path`` atomically; return ``path``."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str))


def write_nifti_atomic(image: Any, path: str | Path) -> Path:
    """Save a nibabel image (``Nifti1Image``) to ``path`` (``.nii`` or ``.nii.gz``) atomically."""
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return Path(path)


def write_mask(mask: Any, path: str | Path, description: str | None = None) -> Path:
    """Save a class-label mask ``(1, H, W, D)`` carrying its affine (a MetaTensor, e.g. from
    ``ActiveDataModule.invert``: on-disk label values, original geometry) as uint8 NIfTI at
    ``path``, atomically; ``description`` goes into the header's ``descrip`` field (at most 80
    bytes, shown by viewers)."""
    data = np.asarray(mask[0].cpu().numpy(), dtype=np.uint8)
    image = nib.Nifti1Image(data, np.asarray(mask.affine, dtype=np.float64))
    if description:
        image.header["descrip"] = description.encode("utf-8")[:79]
    return write_nifti_atomic(image, path)
