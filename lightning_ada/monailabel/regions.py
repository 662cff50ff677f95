"""Sub-volume requests through MONAI Label: the slices or box an image was asked for, and its
deliveries merged into one partial label.

A region rule (``entropy_region``, ``clasp_pe`` ...) served by ``/activelearning/<rule>`` asks
for part of an image: ``k`` slices along one axis of the image file, or a box (the app's
``unit``). The request is remembered per image (``<workspace>/requests/<image>.json``) until a
``final`` label for that image arrives. That label is read as a delineation of the asked part
only: its voxels outside the asked part must be 0 (what an editor saves for unpainted voxels)
or ``NOT_ANNOTATED`` (255), and tumour outside is refused naming how much and where. Inside the
asked part, 255 marks voxels the annotator left out (a partial delivery, counted as what was
given). The stored final label is the image's deliveries merged in order: annotated voxels hold
their class, every other voxel 255. Training reads it as a partial label
(``data.initial_partial``) and ignores the 255 voxels; a later ranking asks only for voxels
still unannotated. A ``final`` label saved with no region request pending is a whole mask, as
for a case-level strategy.

Layout in the app's workspace: ``requests/<image>.json`` (the pending request: the ranking row
served, with its strategy and model version) and ``deliveries/<image>.json`` (the requests
answered, in order, with the voxels each annotated).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from lightning_ada.cases import NOT_ANNOTATED
from lightning_ada.data.validation import label_on_image_grid, validate_label_file
from lightning_ada.errors import DataError
from lightning_ada.io import atomic_path, write_json_atomic

#: the columns of a region row of ``lightning-ada query`` the next-sample answer passes on
REGION_KEYS = ("part", "region", "slice_axis", "slices", "index_range", "asked_mask")
#: the ranking-row keys a region request keeps (what the next-sample answer showed)
REQUEST_KEYS = ("case_id", "score", "elected_modality", "region_network_grid", *REGION_KEYS)


def unit_options(spec: str) -> list[str]:
    """``lightning-ada`` options of an annotation unit given as ``name[:key=value,...]``.

    >>> unit_options("slices:k=3,axis=2")
    ['--active.unit', 'slices', '--active.unit.k', '3', '--active.unit.axis', '2']

    Raises:
        ValueError: an option that is not ``key=value``.
    """
    name, _, rest = spec.partition(":")
    out = ["--active.unit", name.strip()]
    for pair in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"unit {spec!r}: option {pair!r} is not key=value")
        out += [f"--active.unit.{key.strip()}", value.strip()]
    return out


class RegionRequests:
    """Which region each image was asked for, and which requests its label answered.

    Args:
        root: the app's workspace folder.
    """

    def __init__(self, root: Path) -> None:
        self.requests, self.deliveries = Path(root) / "requests", Path(root) / "deliveries"

    def ask(self, row: dict[str, Any], strategy: str, version: str) -> dict[str, Any]:
        """Remember that ``row`` (a region row of a ranking) was offered for its image; the
        image's next final label answers it. Returns the request as kept."""
        request = {k: row[k] for k in REQUEST_KEYS if k in row} | {
            "strategy": strategy, "model_version": version}
        write_json_atomic(self.requests / f"{row['case_id']}.json", request)
        return request

    def pending(self, image_id: str) -> dict[str, Any] | None:
        """The region request an image's next final label answers (None: a whole mask)."""
        path = self.requests / f"{image_id}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def answered(self, image_id: str, request: dict[str, Any], given: int) -> None:
        """Record that ``request`` was answered with ``given`` annotated voxels."""
        done = self.answers(image_id) + [request | {"annotated_voxels": given}]
        write_json_atomic(self.deliveries / f"{image_id}.json", done)
        (self.requests / f"{image_id}.json").unlink(missing_ok=True)

    def answers(self, image_id: str) -> list[dict[str, Any]]:
        """The requests an image's labels answered, in order ([]: none, or a whole mask)."""
        path = self.deliveries / f"{image_id}.json"
        return json.loads(path.read_text()) if path.is_file() else []

    def cancel(self, image_id: str) -> None:
        """Forget the image's pending region request (it was offered whole since)."""
        (self.requests / f"{image_id}.json").unlink(missing_ok=True)


def is_partial(label_path: str | Path) -> bool:
    """Whether a final label holds ``NOT_ANNOTATED`` voxels (a merge of region deliveries).

    Read from the file itself, not from the request records: a server killed between storing
    a merged label and recording its answer still trains on what the file says.
    """
    return bool((~annotated_voxels(label_path)).any())


def annotated_voxels(label_path: str | Path) -> np.ndarray:
    """Boolean ``(X, Y, Z)``: the voxels a partial final label annotates (not 255)."""
    data = np.asanyarray(nib.load(str(label_path)).dataobj)
    return (data[..., 0] if data.ndim == 4 else data) != NOT_ANNOTATED


def overlaps(asked_mask: str | Path, annotated: np.ndarray) -> bool:
    """Whether an asked region (a mask file) touches voxels annotated already."""
    asked = np.asanyarray(nib.load(str(asked_mask)).dataobj) > 0
    return bool((asked & annotated).any())


def merge_delivery(
    upload: str | Path, image: str | Path, request: dict[str, Any], previous: str | Path | None,
    label_values: list[int], out: Path,
) -> int:
    """Merge a delivery for a region request into the image's partial label, written to ``out``.

    Args:
        upload: the label file the client sent (the image's grid, any axis order).
        image: the datastore image it was drawn on.
        request: the pending region request (its ``asked_mask`` on the image's grid).
        previous: the image's partial final label so far (None: its first delivery).
        label_values: the foreground label values a label may hold.
        out: where to write the merged label (NIfTI, the image's affine, uint8).

    Returns:
        The voxels of the asked region the delivery annotates.

    Raises:
        DataError: the upload does not fit the image, labels tumour outside the asked region
            (how many voxels, around which voxel), or annotates nothing of it.
    """
    change = validate_label_file(upload, image, label_values, allow_empty=True,
                                 allow_not_annotated=True, reorient=True)
    source = label_on_image_grid(upload, image) if change else nib.load(str(upload))
    values = np.asanyarray(source.dataobj)
    values = (values[..., 0] if values.ndim == 4 else values).astype(np.uint8)
    asked = np.asanyarray(nib.load(request["asked_mask"]).dataobj) > 0
    outside = (values != 0) & (values != NOT_ANNOTATED) & ~asked
    if outside.any():
        where = [int(np.median(a)) for a in np.nonzero(outside)]
        raise DataError(
            f"the label marks {int(outside.sum())} voxels outside the asked region "
            f"({request.get('region', 'region')}; {int(asked.sum())} voxels of the image) around "
            f"voxel {where}: delineate only the asked part (0 or 255 elsewhere)")
    given = asked & (values != NOT_ANNOTATED)
    if not given.any():
        raise DataError(f"the label annotates nothing of the asked region ({request.get('region')}): "
                        "every voxel there is 255 (not annotated)")
    if previous is None:
        merged = np.full(asked.shape, NOT_ANNOTATED, dtype=np.uint8)
    else:
        merged = np.asanyarray(nib.load(str(previous)).dataobj).astype(np.uint8)
        merged = merged[..., 0] if merged.ndim == 4 else merged
    merged[given] = values[given]
    affine = np.asarray(nib.load(str(image)).affine, dtype=np.float64)
    with atomic_path(out) as tmp:
        nib.save(nib.Nifti1Image(merged, affine), tmp)
    return int(given.sum())
