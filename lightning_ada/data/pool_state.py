"""PoolState: what adaptation has learnt about the target pool, as one resumable state.

- which pool cases are labelled, by which query, with which delivered label, and the content
  fingerprints of that label and of the case's images when it was accepted
  (:class:`~lightning_ada.data.pools.ActivePool`);
- for cases annotated in parts (slices, boxes), every delivery in order: a case can be asked
  again for more of it, and training merges its deliveries (:meth:`deliveries`);
- the pseudo-labelled cases of self-training
  (:class:`~lightning_ada.data.pseudo_set.PseudoLabelSet`).

It is plain state, apart from the dataset: :meth:`state_dict` / :meth:`load_state_dict`
round-trip it (a state may be loaded before the pool exists, as Lightning restores a datamodule
before ``setup`` on some paths: it is applied by :meth:`start`), and a restored state is checked
against the files on disk (:meth:`check_content`), so a resumed run trains on exactly the labels
it had accepted, or stops naming the file that changed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_ada.cases import Case
from lightning_ada.data.cache import content_sha256
from lightning_ada.data.pools import ActivePool, Annotation
from lightning_ada.data.pseudo_set import PseudoLabel, PseudoLabelSet
from lightning_ada.errors import DataError


class PoolState:
    """Labelled / unlabelled target cases, their accepted labels and the pseudo-labelled set.

    Args:
        source: what errors name as the dataset (e.g. its root folder).
    """

    def __init__(self, source: str = "the dataset") -> None:
        self.source = source
        #: the target pool (None until :meth:`start`)
        self.pool: ActivePool | None = None
        #: the pseudo-labelled cases of self-training (empty unless self-training fills it)
        self.pseudo = PseudoLabelSet()
        #: the deliveries after a partially annotated case's first, in order
        self._more: dict[str, list[Annotation]] = {}
        self._restored: dict[str, Any] | None = None

    # ------------------------------------------------------------------ life cycle
    def start(
        self,
        pool_ids: Sequence[str],
        initially_labeled: Mapping[str, str],
        cases: Mapping[str, Case],
        partial: Collection[str] = (),
    ) -> None:
        """Create the pool, label the initial cases with the given masks (round -1; those in
        ``partial`` as partial labels, annotated where not ``NOT_ANNOTATED``) and apply a
        state loaded before (checked against ``cases``).

        Raises:
            DataError: a loaded state that does not fit the pool, or whose labels or images
                changed on disk (:meth:`check_content`).
        """
        self.pool = ActivePool(pool_ids)
        for cid, label_path in initially_labeled.items():
            self.pool.label(cid, label_path, None, round=-1, partial=cid in partial)
        if self._restored is not None:
            state, self._restored = self._restored, None
            self._restore(state, cases)

    @property
    def started(self) -> bool:
        """Whether the pool exists (after :meth:`start`)."""
        return self.pool is not None

    def _started(self) -> ActivePool:
        if self.pool is None:
            raise RuntimeError("the pool state is not started: call the datamodule's setup() first")
        return self.pool

    # ------------------------------------------------------------------ labels
    @property
    def labeled(self) -> list[str]:
        """Labelled pool ids, in labelling order."""
        return self._started().labeled

    @property
    def unlabeled(self) -> list[str]:
        """Unlabelled pool ids, in pool order ([] before :meth:`start`)."""
        return self.pool.unlabeled if self.pool is not None else []

    def label(
        self, case: Case, label_path: str, modality: str | None, round: int, epoch: int,
        region: dict[str, Any] | None = None, partial: bool = False,
    ) -> None:
        """Record the mask an oracle delivered for ``case``, with the content fingerprints of
        the label and of the case's images; a partial delivery of a case annotated in parts
        before is added to its deliveries.

        Raises:
            ValueError: a case delivered whole before, or a whole delivery of a case labelled
                before.
        """
        pool = self._started()
        fingerprints = dict(label_sha256=content_sha256([label_path]),
                            images_sha256=content_sha256(case.present_images))
        cid = case.case_id
        if cid not in pool.labeled:
            pool.label(cid, str(label_path), modality, round=round, epoch=epoch,
                       region=region, partial=partial, **fingerprints)
            return
        if not (partial and pool.annotation(cid).partial):
            raise ValueError(f"case {cid!r} is already labeled")
        self._more.setdefault(cid, []).append(
            Annotation(round, modality, str(label_path), epoch, region=region, partial=True,
                       **fingerprints)
        )

    def deliveries(self, case_id: str) -> list[Annotation]:
        """Every delivery of a labelled case, in order (one for a case delivered whole)."""
        return [self._started().annotation(case_id), *self._more.get(case_id, [])]

    def check_content(self, cases: Mapping[str, Case]) -> None:
        """Refuse labels or images that changed since they were accepted.

        Compares the content fingerprints recorded by :meth:`label` with the files now on disk
        (a resume against another dataset with the same ids, or a label file replaced after it
        was accepted). Annotations without fingerprints (older states) are not checked.

        Raises:
            DataError: one line naming the case and the file(s) whose content changed.
        """
        pool = self._started()
        for cid, a in ((c, a) for c in pool.labeled for a in self.deliveries(c)):
            if a.label_sha256 is not None:
                if not Path(a.label_path).is_file():
                    raise DataError(
                        f"{a.label_path}: label of case {cid} accepted earlier is gone (not there, "
                        "and no file of the case with its content where the dataset is now): "
                        "restore it, or resume where it is"
                    )
                if content_sha256([a.label_path]) != a.label_sha256:
                    raise DataError(
                        f"{a.label_path}: content changed since case {cid} was labeled (round "
                        f"{a.round}); restore that file or start a new run"
                    )
            if a.images_sha256 is not None and cid in cases:
                if content_sha256(cases[cid].present_images) != a.images_sha256:
                    raise DataError(
                        f"case {cid}: images differ from those it was labeled on "
                        f"({', '.join(cases[cid].present_images)}); is this the run's dataset?"
                    )

    # ------------------------------------------------------------------ pseudo-labels
    def set_pseudo_labels(
        self, records: Sequence[PseudoLabel], ratio: float,
        labels: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Replace the pseudo-labelled set (a self-training pass).

        Raises:
            DataError: a record names a case outside the target pool.
        """
        pool = self.pool.case_ids if self.pool is not None else []
        outside = sorted({r.case_id for r in records} - set(pool))
        if outside:
            raise DataError(f"pseudo-labels for cases outside the target pool: {outside}")
        self.pseudo.replace(records, ratio, labels)

    def pseudo_labelled_ids(self) -> list[str]:
        """Ids of the pseudo-labelled cases training uses: those not labelled since the pass."""
        if not len(self.pseudo):
            return []
        labeled = set(self.pool.labeled) if self.pool is not None else set()
        return [cid for cid in self.pseudo.case_ids if cid not in labeled]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The pool (labelled ids with their round, modality, label file and fingerprints) and
        the pseudo-labelled set (ids, teacher pass and step, file and fingerprint, share)."""
        if self.pool is not None:
            pool = self.pool.state_dict() | {
                "more": {c: [asdict(a) for a in more] for c, more in self._more.items()}
            }
        else:
            pool = self._restored
        return {"pool": pool, "pseudo": self.pseudo.state_dict()}

    def load_state_dict(
        self, state_dict: Mapping[str, Any], cases: Mapping[str, Case] | None = None
    ) -> None:
        """Restore a state; before :meth:`start` the pool part waits for it.

        Raises:
            DataError: a pseudo-label file of the state is missing or changed; the pool state
                does not fit, or a label or image changed (:meth:`check_content`).
        """
        self.pseudo.load_state_dict(state_dict.get("pseudo"))
        state = state_dict.get("pool")
        if state is None:
            return
        if self.pool is None:
            self._restored = state
        else:
            self._restore(state, cases or {})

    def _restore(self, state: dict[str, Any], cases: Mapping[str, Case]) -> None:
        pool = self._started()
        state = relocated(state, cases)
        try:
            pool.load_state_dict(state)
        except ValueError as e:
            raise DataError(f"{self.source}: the saved pool state does not fit: {e}") from e
        self._more = {c: [Annotation(**a) for a in more] for c, more in state.get("more", {}).items()}
        self.check_content(cases)


def relocated(state: dict[str, Any], cases: Mapping[str, Case]) -> dict[str, Any]:
    """A saved pool state whose missing label files are found where the dataset is now.

    A run resumed on another machine, or after its dataset moved, records label files at their
    old place (the simulated oracle's masks live in the dataset). A recorded label that is gone
    is looked for among the case's current files (its reference label and per-modality masks)
    by content (``label_sha256``): the one with the same bytes takes its place. Labels found
    where they were, or without a fingerprint, are left as they are (:meth:`PoolState.
    check_content` then names a file still missing).
    """
    def moved(cid: str, a: dict[str, Any]) -> dict[str, Any]:
        path, sha = a.get("label_path"), a.get("label_sha256")
        if not path or not sha or Path(path).is_file() or cid not in cases:
            return a
        case = cases[cid]
        for candidate in [*([case.label] if case.label else []), *case.modality_labels.values()]:
            if Path(candidate).is_file() and content_sha256([candidate]) == sha:
                rank_zero_info(f"[pool] case {cid}: label {path} found at {candidate} (same content)")
                return {**a, "label_path": str(candidate)}
        return a

    labeled = state.get("labeled")
    if not isinstance(labeled, dict):
        return state
    out = dict(state)
    out["labeled"] = {cid: moved(cid, dict(a)) for cid, a in labeled.items()}
    if isinstance(state.get("more"), dict):
        out["more"] = {cid: [moved(cid, dict(a)) for a in more] for cid, more in state["more"].items()}
    return out
