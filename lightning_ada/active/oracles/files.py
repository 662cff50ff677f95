"""The file oracle: a human annotator working through files in the run folder."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_ada.active.oracles.base import Answer, Oracle, Request
from lightning_ada.cases import NOT_ANNOTATED
from lightning_ada.data.pool_view import PoolView
from lightning_ada.errors import DataError
from lightning_ada.io import safe_child, write_json_atomic


class FileOracle(Oracle):
    """A human annotator working through files in the run folder.

    For a query it writes ``requests/round_<k>_<case>.json`` (what to annotate and why), the
    current prediction as ``requests/round_<k>_<case>_prediction.nii.gz`` (a starting point to
    correct in 3D Slicer or ITK-SNAP) and a PNG preview, then waits for ``labels/<case>.nii.gz``.

    A query for part of a case (the ``slices`` or ``patch`` unit) names the part in the request
    (``region``: the slices along an axis or the box, in voxel indices and in mm of the image
    files), writes it as a mask (``requests/round_<k>_<case>_asked.nii.gz``), previews exactly
    those slices, and waits for ``labels/<case>_round<k>.nii.gz``: the asked part delineated,
    the rest 0 or ``NOT_ANNOTATED`` (255). Inside the asked part a 255 voxel is not annotated (a
    partial delivery is accepted and counted as what it gives); a tumour label outside it is
    refused, naming how many voxels and where, and the request stays open.
    A delivered file is validated (shape and affine of the image, label values, not empty unless
    allowed); a bad one is reported and the request stays open. A file that was already in
    ``labels/`` when the request was written is not taken until the annotator re-saves it
    (confirming it is the answer to this request) or ``accept_existing_labels`` is set. A case
    the annotator will not delineate (out of distribution: wrong anatomy, no tumour, corrupt)
    is refused by creating ``labels/<case>.ood`` (any content, e.g. the reason) instead; the
    label is spent and nothing is trained on.

    The run folder and the allowed label values come from :meth:`configure` (the callback's
    run folder and the pool).

    Args:
        wait: poll for the label (True) or return at once (the callback then checkpoints and exits).
        timeout: seconds to wait before giving up (then as with ``wait=False``).
        poll: seconds between two looks.
        allow_empty: accept an all-background label.
        accept_existing_labels: take a label file that predates its request without asking.
    """

    name = "files"

    def __init__(
        self,
        wait: bool = True,
        timeout: float = 3600.0,
        poll: float = 2.0,
        allow_empty: bool = False,
        accept_existing_labels: bool = False,
    ) -> None:
        if timeout < 0 or poll <= 0:
            raise ValueError(f"files oracle needs timeout >= 0 and poll > 0 seconds, got {timeout}, {poll}")
        self.wait, self.timeout, self.poll, self.allow_empty = wait, timeout, poll, allow_empty
        self.accept_existing_labels = accept_existing_labels
        self.run_dir = Path(".")
        self.label_values: list[int] = []
        self._pool: PoolView | None = None

    def configure(self, run_dir: Path, pool: PoolView) -> None:
        self.run_dir = Path(run_dir)
        self.label_values = list(pool.label_values)
        self._pool = pool

    def label_path(self, case_id: str) -> Path:
        """Where the annotator puts the mask of ``case_id``."""
        return safe_child(self.run_dir / "labels", f"{case_id}.nii.gz")

    def refusal_path(self, case_id: str) -> Path:
        """The file the annotator creates to refuse ``case_id`` as out of distribution."""
        return safe_child(self.run_dir / "labels", f"{case_id}.ood")

    def request_path(self, round: int, case_id: str, part: int = 0) -> Path:
        """The request file of a query (``part``: the round's j-th region of the case)."""
        suffix = f"_{int(part)}" if part else ""
        return safe_child(self.run_dir / "requests", f"round_{int(round)}_{case_id}{suffix}.json")

    def label_path_of(self, request: Request) -> Path:
        """Where the annotator puts the mask answering ``request``: ``labels/<case>.nii.gz``
        for a whole case, ``labels/<case>_round<k>[_<j>].nii.gz`` for a part of it."""
        case_id = request.case.case_id
        if request.region is None or request.region.kind == "case":
            return self.label_path(case_id)
        suffix = f"_{request.part}" if request.part else ""
        return safe_child(self.run_dir / "labels", f"{case_id}_round{request.round}{suffix}.nii.gz")

    def where(self) -> str:
        return f"see the request files and previews in {self.run_dir / 'requests'}"

    def ask(self, request: Request) -> Answer:
        """Write the request files once, then answer from ``labels/``: delivered (a validated
        label), refused (a ``.ood`` file), else pending (``wait=False``) or timed out."""
        self.write_request(request)
        return self.look(request)

    def write_request(self, request: Request) -> Path:
        """Write the request JSON (+ prediction NIfTI and PNG preview) of a query, once."""
        case = request.case
        path = self.request_path(request.round, case.case_id, request.part)
        if path.exists():
            return path
        stem = path.with_suffix("")
        files: dict[str, Any] = {}
        existing = self.label_path_of(request)
        if existing.exists():  # not an answer to this request (yet): remember which file it was
            files["label_present_before_request"] = {"mtime_ns": existing.stat().st_mtime_ns}
            rank_zero_warn(
                f"[oracle] {existing} already exists before its request was written; it will be "
                "used only once re-saved (or with --active.oracle.accept_existing_labels true)"
            )
        if request.write_prediction is not None:
            files["prediction"] = str(stem) + "_prediction.nii.gz"
            request.write_prediction(Path(files["prediction"]))
        if request.write_preview is not None:
            files["preview"] = str(stem) + "_preview.png"
            request.write_preview(Path(files["preview"]))
        if request.region is not None and request.region.kind != "case":
            files["region"] = self._region_record(request)
            if request.write_asked is not None:
                files["asked_region_mask"] = str(stem) + "_asked.nii.gz"
                request.write_asked(Path(files["asked_region_mask"]))
        query = request.query
        write_json_atomic(
            path,
            {
                "case_id": case.case_id,
                "annotate_on_modality": request.modality,
                "why": query.get("why", ""),
                "election_dice": query.get("election_dice"),
                "score": query.get("score"),
                "factors": query.get("factors"),
                "round": request.round,
                "images": dict(zip(case.modalities, case.images)),
                "deliver_label_to": str(self.label_path_of(request)),
                "or_refuse_by_creating": str(self.refusal_path(case.case_id)),
                "label_values": self.label_values,
                **files,
            },
        )
        return path

    def look(self, request: Request) -> Answer:
        """Answer from ``labels/``, waiting (``wait``) up to ``timeout`` seconds.

        A delivered file that fails validation is reported (rank-zero log) and ignored; the
        request stays open.
        """
        if self._pool is None:
            raise RuntimeError("FileOracle.ask before configure()")
        case_id = request.case.case_id
        target = self.label_path_of(request)
        deadline = time.monotonic() + (self.timeout if self.wait else 0.0)
        last_error = ""
        announced = False
        while True:
            refusal = self.refusal_path(case_id)
            if refusal.exists():
                return Answer.refused(_read_reason(refusal), refusal=str(refusal))
            if target.exists():
                try:
                    self._check_not_stale(target, request)
                    if request.region is None or request.region.kind == "case":
                        self._pool.validate_label(str(target), case_id, self.allow_empty)
                    else:
                        self._pool.validate_label(str(target), case_id, allow_empty=True,
                                                  allow_not_annotated=True)
                        self._check_inside(target, request)
                    return Answer.delivered(target, request.region)
                except DataError as e:
                    if str(e) != last_error:
                        rank_zero_info(f"[oracle] rejected {target}: {e}. The request stays open.")
                        last_error = str(e)
            if time.monotonic() >= deadline:
                status = "timed_out" if self.wait else "pending"
                return Answer(status, reason=last_error, awaiting=str(target))
            if not announced:
                rank_zero_info(f"[oracle] waiting for {target} (timeout {self.timeout:.0f} s) ...")
                announced = True
            time.sleep(self.poll)

    def _check_not_stale(self, target: Path, request: Request) -> None:
        """Raise if ``target`` is the very file that was in ``labels/`` before the request."""
        if self.accept_existing_labels:
            return
        path = self.request_path(request.round, request.case.case_id, request.part)
        if not path.is_file():
            return
        try:
            before = json.loads(path.read_text()).get("label_present_before_request")
        except (OSError, ValueError):
            return
        if before is not None and target.stat().st_mtime_ns == before.get("mtime_ns"):
            raise DataError(
                f"{target} was already there before the request {path.name} was written; "
                "re-save it to confirm it answers this request (or set "
                "--active.oracle.accept_existing_labels true)"
            )


    # ------------------------------------------------------------------ regions
    def _region_record(self, request: Request) -> dict[str, Any]:
        """What the request says of the asked part: on the network grid and on the grid of the
        image files (voxel indices per axis and, for slices, each slice's position in mm)."""
        region = request.region
        assert region is not None
        record: dict[str, Any] = {"network_grid": region.to_json(), "text": region.describe()}
        if request.asked is None:
            return record
        asked = np.asarray(request.asked(), dtype=bool)
        image = nib.load(request.case.images[0])
        affine = np.asarray(image.affine, dtype=np.float64)
        support = [np.flatnonzero(asked.any(axis=tuple(a for a in range(3) if a != ax)))
                   for ax in range(3)]
        record["image_grid"] = {
            "shape": list(asked.shape),
            "voxels": int(asked.sum()),
            "index_range": [[int(s.min()), int(s.max())] if s.size else [] for s in support],
        }
        if region.kind == "slices":
            partial_axes = [ax for ax, s in enumerate(support) if 0 < s.size < asked.shape[ax]]
            if len(partial_axes) == 1:
                ax = partial_axes[0]
                centre = [n // 2 for n in asked.shape]
                positions = []
                for i in support[ax]:
                    voxel = list(centre)
                    voxel[ax] = int(i)
                    positions.append([round(float(v), 2) for v in (affine @ [*voxel, 1.0])[:3]])
                record["image_grid"] |= {"slice_axis": ax, "slices": [int(i) for i in support[ax]],
                                         "slice_centres_mm": positions}
        return record

    def _check_inside(self, target: Path, request: Request) -> None:
        """Refuse a delivery that labels tumour outside the asked part.

        Raises:
            DataError: naming the file, the number of tumour voxels outside and where they are.
        """
        if request.asked is None:
            return
        asked = np.asarray(request.asked(), dtype=bool)
        values = np.asanyarray(nib.load(str(target)).dataobj)
        values = values[..., 0] if values.ndim == 4 else values
        outside = (values != 0) & (values != NOT_ANNOTATED) & ~asked
        n = int(outside.sum())
        if n:
            where = [int(np.median(a)) for a in np.nonzero(outside)]
            raise DataError(
                f"{target} labels {n} voxels outside the asked region ({request.region.describe()}"  # type: ignore[union-attr]
                f" on the network grid; {int(asked.sum())} voxels of the image grid, see the "
                f"request's asked_region_mask), around voxel {where}: delineate only the asked "
                "part (0 or 255 elsewhere)"
            )


def _read_reason(refusal: Path) -> str:
    """The reason an annotator wrote into a ``.ood`` refusal file (first line), else a default."""
    try:
        text = refusal.read_text(errors="replace").strip().splitlines()
    except OSError:
        text = []
    return text[0][:200] if text and text[0].strip() else "out of distribution"
