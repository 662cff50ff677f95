"""Oracles: who delivers the mask of a queried case.

``annotate`` returns the path of the mask, or None when the annotation is not there yet (a human
annotator working through files); the callback then saves a checkpoint and stops, and the run
continues from that checkpoint once the file exists.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_ada.active.pool_view import PoolView
from lightning_ada.data.cases import Case, DataError
from lightning_ada.data.open_set import ood_kind
from lightning_ada.io import safe_child, write_json_atomic

#: what :meth:`Oracle.annotate` returns for a case refused as out of distribution: the label
#: is spent, nothing is added to training
REFUSED = "refused:out-of-distribution"

#: short name -> oracle class (``--active.oracle files``)
ORACLES: dict[str, type[Oracle]] = {}


class Oracle:
    """Something that delivers the mask of a queried case.

    Subclasses set ``name`` (registers the short name) and implement :meth:`annotate`.
    """

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            ORACLES[cls.name] = cls

    def configure(self, run_dir: Path, pool: PoolView) -> None:
        """Receive the run folder and the pool (called at setup, before any query)."""

    def annotate(self, case: Case, modality: str | None, request: dict[str, Any]) -> str | None:
        """Path of the mask delineated on ``modality``, or None if it is not available yet."""
        raise NotImplementedError


class SimulatedOracle(Oracle):
    """Reveals stored masks: the delineation made on the elected modality when the dataset has
    per-modality masks (the phantom), else the reference mask.

    Args:
        use_modality_masks: return the mask drawn on the requested modality when one exists.
        refuse_ood: refuse a case flagged out of distribution (``meta["ood"]``, open-set
            phantom): the label is spent and nothing is trained on.
    """

    name = "simulated"

    def __init__(self, use_modality_masks: bool = True, refuse_ood: bool = True) -> None:
        self.use_modality_masks = use_modality_masks
        self.refuse_ood = refuse_ood

    def annotate(self, case: Case, modality: str | None, request: dict[str, Any] | None = None) -> str:
        """Path of the mask for ``case``.

        Raises:
            DataError: if the case has no mask at all.
        """
        if self.refuse_ood and ood_kind(case.meta) is not None:
            return REFUSED
        if self.use_modality_masks and modality is not None and modality in case.modality_labels:
            return case.modality_labels[modality]
        if case.label is None:
            raise DataError(f"case {case.case_id}: the simulated oracle needs a reference label")
        return case.label


class FileOracle(Oracle):
    """A human annotator working through files in the run folder.

    For a query it writes ``requests/round_<k>_<case>.json`` (what to annotate and why), the
    current prediction as ``requests/round_<k>_<case>_prediction.nii.gz`` (a starting point to
    correct in 3D Slicer or ITK-SNAP) and a PNG preview, then waits for ``labels/<case>.nii.gz``.
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

    def request_path(self, round: int, case_id: str) -> Path:
        """The request file of a query."""
        return safe_child(self.run_dir / "requests", f"round_{int(round)}_{case_id}.json")

    def write_request(
        self,
        case: Case,
        modality: str | None,
        request: dict[str, Any],
        write_prediction: Callable[[Path], None] | None = None,
        write_preview: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write the request JSON (+ prediction NIfTI and PNG preview) for one query."""
        path = self.request_path(request["round"], case.case_id)
        stem = path.with_suffix("")
        files: dict[str, Any] = {}
        existing = self.label_path(case.case_id)
        if existing.exists():  # not an answer to this request (yet): remember which file it was
            files["label_present_before_request"] = {"mtime_ns": existing.stat().st_mtime_ns}
            rank_zero_warn(
                f"[oracle] {existing} already exists before its request was written; it will be "
                "used only once re-saved (or with --active.oracle.accept_existing_labels true)"
            )
        if write_prediction is not None:
            files["prediction"] = str(stem) + "_prediction.nii.gz"
            write_prediction(Path(files["prediction"]))
        if write_preview is not None:
            files["preview"] = str(stem) + "_preview.png"
            write_preview(Path(files["preview"]))
        write_json_atomic(
            path,
            {
                "case_id": case.case_id,
                "annotate_on_modality": modality,
                "why": request.get("why", ""),
                "election_dice": request.get("election_dice"),
                "score": request.get("score"),
                "factors": request.get("factors"),
                "round": request["round"],
                "images": dict(zip(case.modalities, case.images)),
                "deliver_label_to": str(self.label_path(case.case_id)),
                "or_refuse_by_creating": str(self.refusal_path(case.case_id)),
                "label_values": self.label_values,
                **files,
            },
        )
        return path

    def annotate(self, case: Case, modality: str | None, request: dict[str, Any] | None = None) -> str | None:
        """Return the validated label path, waiting for it if configured; None if not there.

        A delivered file that fails validation is reported (rank-zero log) and ignored; the
        request stays open.
        """
        if self._pool is None:
            raise RuntimeError("FileOracle.annotate before configure()")
        target = self.label_path(case.case_id)
        deadline = time.monotonic() + (self.timeout if self.wait else 0.0)
        last_error: str | None = None
        announced = False
        while True:
            if self.refusal_path(case.case_id).exists():
                return REFUSED
            if target.exists():
                try:
                    self._check_not_stale(target, case.case_id, request)
                    self._pool.validate_label(str(target), case.case_id, self.allow_empty)
                    return str(target)
                except DataError as e:
                    if str(e) != last_error:
                        rank_zero_info(f"[oracle] rejected {target}: {e}. The request stays open.")
                        last_error = str(e)
            if time.monotonic() >= deadline:
                return None
            if not announced:
                rank_zero_info(f"[oracle] waiting for {target} (timeout {self.timeout:.0f} s) ...")
                announced = True
            time.sleep(self.poll)

    def _check_not_stale(self, target: Path, case_id: str, request: dict[str, Any] | None) -> None:
        """Raise if ``target`` is the very file that was in ``labels/`` before the request."""
        if self.accept_existing_labels or request is None or "round" not in request:
            return
        path = self.request_path(request["round"], case_id)
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
