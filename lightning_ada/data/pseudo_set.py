"""The pseudo-labelled part of the target pool: which cases, from which teacher pass, which file.

Self-training (:mod:`lightning_ada.active.self_training`) hands the datamodule one
:class:`PseudoLabel` record per trusted unlabelled case; the datamodule keeps them in a
:class:`PseudoLabelSet`, trains on them at a configured share of each epoch, and saves the set
in its ``state_dict`` (plain types only) so that an exact resume trains on the same
pseudo-labels. The label volumes themselves are files in the run folder (class indices on the
preprocessed grid, ``(1, H, W, D)`` uint8 ``.npy``, written atomically with
:func:`save_label`), never in the data folder; the state records each file's SHA-256 and a
resumed run refuses a file that changed or went missing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_ada.data.cache import content_sha256
from lightning_ada.errors import DataError
from lightning_ada.io import atomic_path


@dataclass(frozen=True)
class PseudoLabel:
    """One pseudo-labelled case.

    Args:
        case_id: the pool case.
        path: the label file (:func:`save_label`), class indices ``(1, H, W, D)`` on the
            preprocessed grid of the case.
        teacher_pass: 0-based index of the self-training pass that made it.
        epoch: training epochs completed when the teacher predicted (0 = before training).
        global_step: optimiser steps of the teacher.
        confidence: the teacher's per-case confidence
            (:func:`~lightning_ada.active.pseudo_labels.case_confidence`).
        sha256: content fingerprint of ``path`` when it was written.
    """

    case_id: str
    path: str
    teacher_pass: int
    epoch: int
    global_step: int
    confidence: float
    sha256: str


def save_label(label: torch.Tensor, path: str | Path) -> str:
    """Write a class-index label ``(1, H, W, D)`` as a uint8 ``.npy`` file atomically; return its
    SHA-256 (the same label gives the same bytes, in every run).

    Raises:
        ValueError: not ``(1, H, W, D)`` or a class index outside ``[0, 255]``.
    """
    if label.ndim != 4 or label.shape[0] != 1:
        raise ValueError(f"a pseudo-label must be (1, H, W, D), got shape {tuple(label.shape)}")
    if label.numel() and (int(label.min()) < 0 or int(label.max()) > 255):
        raise ValueError("pseudo-label class indices must be in [0, 255]")
    plain = label.as_tensor() if hasattr(label, "as_tensor") else label  # a MetaTensor's values
    array = np.ascontiguousarray(plain.detach().cpu().numpy().astype(np.uint8))
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array, allow_pickle=False)
    return content_sha256([path])


def load_label(path: str | Path) -> torch.Tensor:
    """Read a label written by :func:`save_label` as int64 ``(1, H, W, D)``.

    Raises:
        DataError: naming the file, when it is missing or not such an array.
    """
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError as e:
        raise DataError(f"{path}: pseudo-label file not found") from e
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a pseudo-label file ({type(e).__name__}: {e})") from e
    if array.ndim != 4 or array.shape[0] != 1 or array.dtype != np.uint8:
        raise DataError(f"{path}: not a pseudo-label (expected a (1, H, W, D) uint8 array)")
    return torch.from_numpy(array.astype(np.int64))


class PseudoLabelSet:
    """Pseudo-labelled cases by id and the share of each training epoch drawn from them.

    Args:
        ratio: share of a training epoch's items drawn from the pseudo-labelled cases (when
            there are both labelled and pseudo-labelled cases).
    """

    def __init__(self, ratio: float = 0.0) -> None:
        self.ratio = check_ratio(ratio)
        self._records: dict[str, PseudoLabel] = {}
        self._labels: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, case_id: object) -> bool:
        return case_id in self._records

    @property
    def case_ids(self) -> list[str]:
        """Pseudo-labelled case ids, most certain first (the order the teacher pass gave)."""
        return list(self._records)

    def record(self, case_id: str) -> PseudoLabel:
        """The record of a pseudo-labelled case."""
        return self._records[case_id]

    def replace(
        self,
        records: Iterable[PseudoLabel],
        ratio: float,
        labels: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Replace the whole set (a teacher pass replaces the previous pass's labels).

        Args:
            records: the new records, most certain first.
            ratio: share of an epoch drawn from them.
            labels: the label tensors already in memory, by case id (others are read from
                their files when first used).
        """
        self.ratio = check_ratio(ratio)
        self._records = {r.case_id: r for r in records}
        self._labels = {
            cid: t.detach().cpu().long()
            for cid, t in (labels or {}).items()
            if cid in self._records
        }

    def label(self, case_id: str) -> torch.Tensor:
        """The pseudo-label ``(1, H, W, D)`` int64 of a case (read from its file once).

        Raises:
            DataError: the file is missing, unreadable or changed since it was written.
        """
        if case_id not in self._labels:
            rec = self._records[case_id]
            _check_file(rec)
            self._labels[case_id] = load_label(rec.path)
        return self._labels[case_id]

    def check_files(self) -> None:
        """Check that every file exists with the content it was written with.

        Raises:
            DataError: naming the first file missing or changed.
        """
        for rec in self._records.values():
            _check_file(rec)

    def state_dict(self) -> dict[str, Any]:
        """Plain state: the ratio and every record, in order."""
        return {"ratio": self.ratio, "records": [asdict(r) for r in self._records.values()]}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Restore :meth:`state_dict` (None or an empty state: no pseudo-labels) and check files."""
        state = state or {}
        records = [PseudoLabel(**r) for r in state.get("records", [])]
        self.replace(records, float(state.get("ratio", 0.0)))
        self.check_files()


def _check_file(rec: PseudoLabel) -> None:
    if not Path(rec.path).is_file():
        raise DataError(f"{rec.path}: pseudo-label of case {rec.case_id} is gone")
    if content_sha256([rec.path]) != rec.sha256:
        raise DataError(
            f"{rec.path}: pseudo-label of case {rec.case_id} changed since teacher pass "
            f"{rec.teacher_pass} wrote it; restore the run folder or start a new run"
        )


def check_ratio(ratio: float) -> float:
    """``ratio`` as a float in ``[0, 1)``.

    Raises:
        ValueError: outside ``[0, 1)`` (1 would leave no room for the labelled cases).
    """
    value = float(ratio)
    if not 0.0 <= value < 1.0 or math.isnan(value):
        raise ValueError(f"the pseudo-label ratio must be in [0, 1), got {ratio}")
    return value


def pseudo_count(length: int, ratio: float, n_labeled: int, n_pseudo: int) -> int:
    """How many of an epoch's ``length`` items are drawn from pseudo-labelled cases.

    ``round(ratio * length)`` when there are both kinds of cases; all of them without labelled
    cases; none without pseudo-labelled ones.
    """
    if n_pseudo == 0:
        return 0
    if n_labeled == 0:
        return length
    return min(length, int(round(ratio * length)))
