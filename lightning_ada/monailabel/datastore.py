"""MONAI Label's local datastore with lightning_ada's label checks at the door.

A label a client saves as ``final`` is checked against its image before it is stored (the
library's :func:`~lightning_ada.data.validation.validate_label_file`: the image's grid and affine,
the label values of the source model, not empty, gzip integrity); a bad one is refused with HTTP
422 naming the image and the fault, and nothing is written. Two uploads for one image are
serialised by the datastore's lock: the label stored is one complete upload, never a mixture.

A label for an image with a region request pending (:mod:`lightning_ada.monailabel.regions`)
delineates the asked slices or box only: it is checked against them and merged into the
image's partial label (uploads serialised by a lock of their own: read, merge, store).
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag

from lightning_ada.data.validation import validate_label_file
from lightning_ada.errors import DataError
from lightning_ada.monailabel.regions import RegionRequests, merge_delivery
from lightning_ada.monailabel.workspace import REFUSED

logger = logging.getLogger(__name__)


class CheckedDatastore(LocalDatastore):
    """A :class:`LocalDatastore` whose ``final`` labels are validated before they are stored.

    Args:
        datastore_path: the studies folder (one 4-D NIfTI per case).
        label_values: the on-disk foreground label values a label may hold (0 is background).
        requests: the app's region requests (None: every label is a whole mask).
        **kwargs: forwarded to :class:`LocalDatastore`.
    """

    def __init__(self, datastore_path: str, label_values: Sequence[int],
                 requests: RegionRequests | None = None, **kwargs: Any) -> None:
        self.label_values = [int(v) for v in label_values]
        self.requests = requests
        self._merging = threading.Lock()
        super().__init__(datastore_path, **kwargs)

    def save_label(self, image_id: str, label_filename: str, label_tag: str,
                   label_info: dict[str, Any]) -> str:
        if label_tag != DefaultLabelTag.FINAL.value:
            return super().save_label(image_id, label_filename, label_tag, label_info)
        image = self.get_image_uri(image_id)
        if not image:
            raise HTTPException(status_code=404, detail=f"image {image_id!r} is not in the datastore")
        if self.requests is not None and self.requests.pending(image_id) is not None:
            return self._save_region(image_id, image, label_filename, label_info)
        try:
            validate_label_file(label_filename, image, self.label_values)
        except DataError as bad:
            raise refused(image_id, label_filename, bad) from bad
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def update_image_infos(self, infos: Mapping[str, dict[str, Any]]) -> None:
        """:meth:`update_image_info` for many images, with the datastore file written once
        (MONAI Label rewrites the whole file on every call: a ranking of N images would write
        it N times).

        Raises:
            HTTPException: 404 for an id not in the datastore (nothing updated).
        """
        objects = self._datastore.objects
        unknown = sorted(set(infos) - set(objects))
        if unknown:
            raise HTTPException(status_code=404, detail=f"images {unknown} are not in the datastore")
        for image_id, info in infos.items():
            objects[image_id].image.info.update(info)
        self._update_datastore_file()

    def _save_region(self, image_id: str, image: str, upload: str, label_info: dict[str, Any]) -> str:
        """Merge a delivery for the pending region request into the image's partial label."""
        assert self.requests is not None
        final = DefaultLabelTag.FINAL.value
        with self._merging, tempfile.TemporaryDirectory(prefix="lightning_ada_label_") as tmp:
            # a concurrent upload may have answered it meanwhile: this one answers it again
            request = self.requests.pending(image_id) or self.requests.answers(image_id)[-1]
            previous = self.get_label_uri(image_id, final) or None
            merged = Path(tmp) / f"{image_id}.nii.gz"
            try:
                given = merge_delivery(upload, image, request, previous, self.label_values, merged)
            except DataError as bad:
                raise refused(image_id, upload, bad) from bad
            info = dict(label_info or {}) | {"lightning_ada_region": request.get("region")}
            label_id = super().save_label(image_id, str(merged), final, info)
            self.requests.answered(image_id, request, given)
            logger.info("label for %s: %d voxels of %s merged", image_id, given, request.get("region"))
            return label_id


def refused(image_id: str, upload: str, bad: DataError) -> HTTPException:
    """HTTP 422 naming the image and the fault (the upload's temporary name replaced)."""
    reason = str(bad).replace(str(upload), "the uploaded label")
    logger.warning("label for %s refused: %s", image_id, reason)
    return HTTPException(status_code=REFUSED, detail=f"label for image {image_id!r} refused: {reason}")
