"""The file oracle: a human annotator working through files in the run folder."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_ada.active.oracles.base import Answer, Oracle, Request
from lightning_ada.cases import NOT_ANNOTATED
from lightning_ada.data.pool_view import PoolView
from lightning_ada.data.validation import (
    axis_codes,
    axis_order_change,
    check_gzip_integrity,
    label_on_image_grid,
)
from lightning_ada.errors import DataError
from lightning_ada.io import safe_child, write_json_atomic, write_nifti_atomic

#: how a label file may end: compressed (what the request names) or not (what several tools save)
LABEL_ENDINGS = (".nii.gz", ".nii")
#: the folder of the run holding labels delivered in another axis order, put in the image's order
REORIENTED = "labels_reoriented"


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
    A label may be saved compressed (``.nii.gz``, the name the request gives) or not (``.nii``,
    what several tools write by default); both present is ambiguous and stays open until one is
    removed. A delivered file is validated (shape and affine of the image, label values, gzip
    integrity, not empty unless allowed); a bad one is reported and the request stays open. A
    label stored in another axis order of the image's grid (LPS instead of RAS, axes permuted:
    the same voxels) is taken: it is put in the image's axis order with nibabel's orientation
    tools, written to ``labels_reoriented/<case>.nii.gz`` (what training reads) and the query
    log records the change (``oracle.reoriented``, e.g. ``"LPS -> RAS"``); any other
    misalignment stays refused. A label that is a symbolic link (to the annotator's own folder)
    is read through the link and validated like any file; the query log records where it
    pointed (``oracle.label_link_target``). A file that was already in ``labels/`` when the
    request was written is not taken until the annotator re-saves it (confirming it is the
    answer to this request) or ``accept_existing_labels`` is set. A case the annotator will not
    delineate (out of distribution: wrong anatomy, no tumour, corrupt) is refused by creating
    ``labels/<case>.ood`` (any content, e.g. the reason) instead; the label is spent and
    nothing is trained on.

    The labels folder may live on a network share: a look that fails with an operating-system
    error (the share slow, unmounted for a moment, a stale handle) is logged and retried every
    ``poll`` seconds, at least ``retries`` times even without ``wait``, then counts as a look
    that found nothing (the request stays pending); it never stops the run.

    The run folder and the allowed label values come from :meth:`configure` (the callback's
    run folder and the pool).

    Args:
        wait: poll for the label (True) or return at once (the callback then checkpoints and exits).
        timeout: seconds to wait before giving up (then as with ``wait=False``).
        poll: seconds between two looks.
        allow_empty: accept an all-background label.
        accept_existing_labels: take a label file that predates its request without asking.
        retries: looks retried after one fails with an operating-system error, even when not
            waiting (``poll`` seconds apart).
    """

    name = "files"

    def __init__(
        self,
        wait: bool = True,
        timeout: float = 3600.0,
        poll: float = 2.0,
        allow_empty: bool = False,
        accept_existing_labels: bool = False,
        retries: int = 3,
    ) -> None:
        if timeout < 0 or poll <= 0:
            raise ValueError(f"files oracle needs timeout >= 0 and poll > 0 seconds, got {timeout}, {poll}")
        if retries < 0:
            raise ValueError(f"files oracle needs retries >= 0, got {retries}")
        self.wait, self.timeout, self.poll, self.allow_empty = wait, timeout, poll, allow_empty
        self.accept_existing_labels = accept_existing_labels
        self.retries = int(retries)
        self.run_dir = Path(".")
        self.label_values: list[int] = []
        self._pool: PoolView | None = None

    def configure(self, run_dir: Path, pool: PoolView) -> None:
        self.run_dir = Path(run_dir)
        self.label_values = list(pool.label_values)
        self._pool = pool

    def label_path(self, case_id: str) -> Path:
        """Where the annotator puts the mask of ``case_id`` (or the same name ending ``.nii``).

        The name is checked, not where a link already there points: the file is read, never
        written, and what it points to is validated like any label.
        """
        return safe_child(self.run_dir / "labels", f"{case_id}.nii.gz", follow_links=False)

    def refusal_path(self, case_id: str) -> Path:
        """The file the annotator creates to refuse ``case_id`` as out of distribution."""
        return safe_child(self.run_dir / "labels", f"{case_id}.ood", follow_links=False)

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
        name = f"{case_id}_round{request.round}{suffix}.nii.gz"
        return safe_child(self.run_dir / "labels", name, follow_links=False)

    def label_candidates(self, request: Request) -> list[Path]:
        """The names a delivery of ``request`` may have: :meth:`label_path_of` (``.nii.gz``) and
        the same name ending ``.nii`` (uncompressed)."""
        path = self.label_path_of(request)
        return [path, path.with_name(path.name.removesuffix(".nii.gz") + ".nii")]

    def where(self) -> str:
        return (f"see the request files and previews in {self.run_dir / 'requests'}; a label may "
                "be saved as .nii.gz or .nii")

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
        for existing in self.label_candidates(request):
            if not existing.exists():
                continue
            # not an answer to this request (yet): remember which file it was
            files["label_present_before_request"] = {
                "mtime_ns": existing.stat().st_mtime_ns, "file": existing.name,
            }
            rank_zero_warn(
                f"[oracle] {existing} already exists before its request was written; it will be "
                "used only once re-saved (or with --active.oracle.accept_existing_labels true)"
            )
            break
        if request.write_prediction is not None:
            files["prediction"] = str(stem) + "_prediction.nii.gz"
            request.write_prediction(Path(files["prediction"]))
        if request.write_preview is not None:
            files["preview"] = str(stem) + "_preview.png"
            request.write_preview(Path(files["preview"]))
        if request.region is not None and request.region.kind != "case":
            files["region"] = request.region_record()
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
                "images": {m: p for m, p in zip(case.modalities, case.images) if m not in case.missing},
                **({"missing_modalities": list(case.missing)} if case.missing else {}),
                "deliver_label_to": str(self.label_path_of(request)),
                "or_uncompressed_as": str(self.label_candidates(request)[1]),
                "or_refuse_by_creating": str(self.refusal_path(case.case_id)),
                "label_values": self.label_values,
                **files,
            },
        )
        return path

    def look(self, request: Request) -> Answer:
        """Answer from ``labels/``, waiting (``wait``) up to ``timeout`` seconds.

        A delivered file that fails validation is reported (rank-zero log) and ignored; the
        request stays open. A look that fails with an operating-system error (the labels folder
        unavailable) is reported and retried (``retries`` times at least, ``poll`` seconds
        apart); the answer's ``details`` count such failed looks (``unavailable_looks``).
        """
        if self._pool is None:
            raise RuntimeError("FileOracle.ask before configure()")
        target = self.label_path_of(request)
        deadline = time.monotonic() + (self.timeout if self.wait else 0.0)
        last_error = ""
        announced = False
        unavailable = 0
        retries = self.retries
        while True:
            try:
                answer, why = self._look_once(request)
            except OSError as e:  # a network share slow or briefly gone: retried, never fatal
                unavailable += 1
                answer, why = None, (f"the labels folder {target.parent} could not be read "
                                     f"({type(e).__name__}: {e})")
                if why != last_error:
                    rank_zero_info(f"[oracle] {why}; retrying every {self.poll:g} s")
            else:
                retries = self.retries
                if answer is not None:
                    if unavailable:
                        details = answer.details | {"unavailable_looks": unavailable}
                        answer = dataclasses.replace(answer, details=details)
                    return answer
                if why and why != last_error:
                    rank_zero_info(f"[oracle] rejected {why}. The request stays open.")
            last_error = why or last_error
            failed_now = bool(why) and why.startswith("the labels folder ")
            if time.monotonic() >= deadline and not (failed_now and retries > 0):
                status = "timed_out" if self.wait else "pending"
                return Answer(status, reason=last_error, awaiting=str(target))
            if failed_now:
                retries -= 1
            if not announced:
                rank_zero_info(f"[oracle] waiting for {target} (timeout {self.timeout:.0f} s) ...")
                announced = True
            time.sleep(self.poll)

    def _look_once(self, request: Request) -> tuple[Answer | None, str]:
        """One look at ``labels/``: ``(answer, "")`` for a delivered or refused case, else
        ``(None, what was wrong with the file there)`` (``""``: nothing there yet).

        Raises:
            OSError: the labels folder could not be read.
        """
        assert self._pool is not None
        case_id = request.case.case_id
        refusal = self.refusal_path(case_id)
        if refusal.exists():
            return Answer.refused(_read_reason(refusal), refusal=str(refusal)), ""
        candidates = self.label_candidates(request)
        found = [p for p in candidates if p.exists()]  # through links: a dangling one is absent
        if not found:
            dangling = next((p for p in candidates if p.is_symlink()), None)
            if dangling is not None:
                return None, (f"{dangling}: a symbolic link to {os.readlink(dangling)}, which does "
                              "not exist")
            return None, ""
        if len(found) > 1:
            return None, (f"{found[0]} and {found[1]}: two labels for one request; keep one "
                          f"(expected {candidates[0].name} or {candidates[1].name})")
        target = found[0]
        whole = request.region is None or request.region.kind == "case"
        details: dict[str, Any] = {}
        try:
            self._check_not_stale(target, request)
            change, hint = self._axis_order(target, request)
            options = {"reorient": True} if change else {}
            try:
                if whole:
                    self._pool.validate_label(str(target), case_id, self.allow_empty, **options)
                else:
                    self._pool.validate_label(str(target), case_id, allow_empty=True,
                                              allow_not_annotated=True, **options)
            except DataError as e:
                raise DataError(f"{e}{hint}") from e
            image = label_on_image_grid(target, request.case.reference_image) if change else None
            if not whole:
                values = None if image is None else np.asanyarray(image.dataobj)
                self._check_inside(target, request, values)
        except DataError as e:
            return None, str(e)
        if target.is_symlink():
            details["label_link_target"] = str(target.resolve())
        used = target
        if image is not None:
            used = safe_child(self.run_dir / REORIENTED,
                              target.name.removesuffix(".gz").removesuffix(".nii") + ".nii.gz")
            write_nifti_atomic(image, used)
            details |= {"reoriented": change, "delivered_file": str(target)}
        return Answer.delivered(used, request.region, **details), ""

    def _axis_order(self, target: Path, request: Request) -> tuple[str | None, str]:
        """``(change, "")`` when ``target`` is the image's grid stored in another axis order
        (e.g. ``"LPS -> RAS"``); ``(None, hint)`` otherwise (``hint``: a note for the refusal
        of a label stored in other axis directions that is not the image's grid)."""
        try:
            label, image = nib.load(str(target)), nib.load(request.case.reference_image)
            shape = tuple(int(n) for n in label.shape[:3])
            ref_shape = tuple(int(n) for n in image.shape[:3])
            own, ref = np.asarray(label.affine, np.float64), np.asarray(image.affine, np.float64)
        except Exception:  # noqa: BLE001 - an unreadable file: validation names the fault
            return None, ""
        if axis_codes(own) == axis_codes(ref):
            return None, ""
        if axis_order_change(shape, own, ref_shape, ref) is None:
            return None, (f" (stored as {axis_codes(own)}, the image as {axis_codes(ref)}; not the "
                          "image's grid in another axis order either)")
        check_gzip_integrity(target)  # the reoriented copy is what is validated afterwards
        return f"{axis_codes(own)} -> {axis_codes(ref)}", ""

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
        if before is None or before.get("file", target.name) != target.name:
            return
        if target.stat().st_mtime_ns == before.get("mtime_ns"):
            raise DataError(
                f"{target} was already there before the request {path.name} was written; "
                "re-save it to confirm it answers this request (or set "
                "--active.oracle.accept_existing_labels true)"
            )

    # ------------------------------------------------------------------ regions
    def _check_inside(self, target: Path, request: Request, values: Any = None) -> None:
        """Refuse a delivery that labels tumour outside the asked part (``values``: the file's
        voxels on the image grid, when already read; else read from ``target``).

        Raises:
            DataError: naming the file, the number of tumour voxels outside and where they are.
        """
        if request.asked is None:
            return
        asked = np.asarray(request.asked(), dtype=bool)
        if values is None:
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
