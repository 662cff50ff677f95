"""The on-disk cache of preprocessed cases: its key, file fingerprints and safe loading.

MONAI's ``PersistentDataset`` keeps each preprocessed case in ``cache_dir`` under the key
computed by :class:`CacheKey`; :func:`cache_safe_globals` lets ``torch.load(weights_only=True)``
read those files back without allowing arbitrary pickled code. :func:`content_sha256` is the
full-content fingerprint recorded with every accepted label (resume checks it).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from lightning_ada.errors import DataError

_FINGERPRINT_BYTES = 1 << 20
_CHUNK = 1 << 22


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """Cheap content fingerprint of a file: size, mtime and the SHA-256 of its first MiB.

    A changed (or re-written) file changes the fingerprint, so the disk cache misses; reading
    one MiB per file keeps this fast on large datasets.
    """
    p = Path(path)
    try:
        st = p.stat()
        with p.open("rb") as f:
            head = hashlib.sha256(f.read(_FINGERPRINT_BYTES)).hexdigest()
    except OSError as e:
        raise DataError(f"{p}: cannot read file for the cache key ({e})") from e
    return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "head": head}


def content_sha256(paths: Iterable[str | Path]) -> str:
    """SHA-256 of the full bytes of ``paths``, in order (names, sizes and dates do not enter).

    Two copies of a dataset give the same value; any changed byte gives another.

    Raises:
        DataError: naming a file that cannot be read.
    """
    h = hashlib.sha256()
    for path in paths:
        p = Path(path)
        try:
            with p.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        except OSError as e:
            raise DataError(f"{p}: cannot read file for its content fingerprint ({e})") from e
        h.update(b"\x00file-end\x00")
    return h.hexdigest()


def cache_safe_globals() -> Any:
    """Context allowing ``torch.load(weights_only=True)`` of cached items and nothing more.

    A cached item holds MetaTensors whose metadata and traced operations keep numpy arrays
    (NIfTI header fields, affines) and MONAI enums; MONAI registers only some of these. The
    rest are allowed only while the cache is read (not left registered), and nothing else: a
    file holding any other class fails to load and MONAI recomputes it.
    """
    import numpy as np
    from monai.data import MetaTensor
    from monai.utils.enums import MetaKeys, SpaceKeys, TraceKeys

    reconstruct = np.ndarray((0,)).__reduce__()[0]  # numpy's array unpickler, across versions
    dtypes = [type(np.dtype(c)) for c in "?bhilqBHILQefdgFDGSU"]
    wanted = [reconstruct, np.ndarray, np.dtype, *dtypes, MetaTensor, MetaKeys, SpaceKeys]
    wanted.append(TraceKeys)
    known = set(map(id, torch.serialization.get_safe_globals()))
    # leave globally registered ones alone: leaving the context un-registers what it added
    return torch.serialization.safe_globals([g for g in wanted if id(g) not in known])


class CacheKey:
    """Key of a case in the disk cache (``hash_func`` of MONAI's ``PersistentDataset``).

    Hashes the case id, the fingerprint of each of its files (:func:`file_fingerprint`) and the
    preprocessing settings, so a changed file or a changed setting misses the cache. The key
    starts with the case id so that the cache folder is readable.

    Args:
        settings: JSON-serialisable values that determine the cached output.
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)

    def payload(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """What enters the hash of ``item`` (a :meth:`Case.to_item` dict)."""
        image = item["image"]
        files = [*(image if isinstance(image, (list, tuple)) else [image])]
        if item.get("label") is not None:
            files.append(item["label"])
        payload = {
            "case_id": str(item.get("case_id", "")),
            "files": [file_fingerprint(f) for f in files],
            "settings": self.settings,
        }
        if item.get("zero_channels"):  # missing modalities, zero-filled
            payload["zero_channels"] = [int(c) for c in item["zero_channels"]]
        return payload

    def __call__(self, item: Mapping[str, Any]) -> bytes:
        blob = json.dumps(self.payload(item), sort_keys=True).encode()
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(item.get("case_id", "case")))[:64]
        return f"{name}_{hashlib.sha256(blob).hexdigest()[:32]}".encode()
