"""MONAI Label's local datastore with lightning_ada's label checks at the door.

A label a client saves as ``final`` is checked against its image before it is stored (the
library's :func:`~lightning_ada.data.validation.validate_label_file`: the image's grid and affine,
the label values of the source model, not empty, gzip integrity); a bad one is refused with HTTP
422 naming the image and the fault, and nothing is written. Two uploads for one image are
serialised by the datastore's lock: the label stored is one complete upload, never a mixture.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import HTTPException
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag

from lightning_ada.data.validation import validate_label_file
from lightning_ada.errors import DataError
from lightning_ada.monailabel.workspace import REFUSED

logger = logging.getLogger(__name__)



class CheckedDatastore(LocalDatastore):
    """A :class:`LocalDatastore` whose ``final`` labels are validated before they are stored.

    Args:
        datastore_path: the studies folder (one 4-D NIfTI per case).
        label_values: the on-disk foreground label values a label may hold (0 is background).
        **kwargs: forwarded to :class:`LocalDatastore`.
    """

    def __init__(self, datastore_path: str, label_values: Sequence[int], **kwargs: Any) -> None:
        self.label_values = [int(v) for v in label_values]
        super().__init__(datastore_path, **kwargs)

    def save_label(self, image_id: str, label_filename: str, label_tag: str,
                   label_info: dict[str, Any]) -> str:
        if label_tag == DefaultLabelTag.FINAL.value:
            image = self.get_image_uri(image_id)
            if not image:
                raise HTTPException(status_code=404, detail=f"image {image_id!r} is not in the datastore")
            try:
                validate_label_file(label_filename, image, self.label_values)
            except DataError as bad:
                reason = str(bad).replace(str(label_filename), "the uploaded label")
                logger.warning("label for %s refused: %s", image_id, reason)
                raise HTTPException(status_code=REFUSED,
                                    detail=f"label for image {image_id!r} refused: {reason}") from bad
        return super().save_label(image_id, label_filename, label_tag, label_info)
