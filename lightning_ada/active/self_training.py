"""Pseudo-label self-training of the unlabelled target pool, on top of any query strategy.

ALGORITHMS.md 11.3 (GBA's iterative teacher -> student passes) and 8 (UGTST's tiered
self-training), adapted to one ``fit``: after ``warmup_epochs`` epochs and then every ``every``
epochs (at most ``passes`` times, and only while another epoch follows), the current model is
the teacher. It predicts every unlabelled pool case (optionally averaged over the 8 mirror
flips), each prediction becomes a pseudo-label (argmax, then the largest connected component of
each region) with a per-case confidence, and the most certain cases (``top_fraction``
and/or ``threshold``; or UGTST's cumulative tiers, one per pass) replace the previous pass's
pseudo-labelled set in the datamodule, which mixes them into every following training epoch at
the share ``ratio``. Labels are replaced at every pass, never accumulated.

Stop rule (GBA): with a validation split (``data.val_split``) and ``stop_delta``, the held-out
mean Dice of the teacher is measured before each pass; when it changed by less than
``stop_delta`` since the previous pass, no further pass is made (the last pseudo-labels stay).

Where things live: the options and the schedule state here (saved with the active callback's
state); the pseudo-labelled set (ids, pass, teacher step, files) in the datamodule's state; the
label volumes in ``<run>/pseudo_labels/pass_<k>/<case_id>.npy`` (written atomically, never in the
data folder); one entry per pass in ``<run>/self_training_log.json``. A run interrupted in the
middle of a pass resumes from its last checkpoint and makes that pass again, with the same
teacher, so it ends with the same pseudo-labelled set.

Cost per pass: one sliding-window prediction per unlabelled case (8 with ``flips``), plus a
connected-component labelling per case; the log records each pass's seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_ada.active.pseudo_labels import (
    ConfidenceKind,
    confident_cases,
    flip_averaged_probs,
    pseudo_label_case,
    tiered_order,
)
from lightning_ada.data.pseudo_set import PseudoLabel, check_ratio, save_label
from lightning_ada.errors import ConfigError
from lightning_ada.io import safe_child, write_json_atomic
from lightning_ada.metrics.regions import case_metrics
from lightning_ada.run.schedule import epochs_in_run

Selection = Literal["top_fraction", "tiered"]


# ---------------------------------------------------------------------------- one teacher pass
@dataclass(frozen=True)
class CasePseudoLabel:
    """A teacher's pseudo-label of one case, written to ``path``."""

    case_id: str
    path: Path
    confidence: float
    sha256: str
    foreground_voxels: int


def label_cases(
    predict: Callable[[Tensor], Tensor],
    image: Callable[[str], Tensor],
    case_ids: Sequence[str],
    folder: Path,
    flips: bool = False,
    regions: Sequence[Sequence[int]] | None = None,
    foreground_threshold: float | None = None,
    confidence: ConfidenceKind = "foreground_max_prob",
    connectivity: Literal[1, 2, 3] = 3,
) -> dict[str, CasePseudoLabel]:
    """Pseudo-label each case with the teacher and write each label to ``folder/<case_id>.npy``.

    One case at a time (memory: one prediction), each file written atomically.

    Args:
        predict: teacher, image ``(C, H, W, D)`` -> probabilities ``(K, H, W, D)``.
        image: case id -> preprocessed image ``(C, H, W, D)``.
        case_ids: the cases to label.
        folder: where the labels go (created).
        flips: average the teacher over the 8 mirror flips.
        regions, foreground_threshold, confidence, connectivity: see
            :func:`~lightning_ada.active.pseudo_labels.pseudo_label_case`.

    Returns:
        case id -> its :class:`CasePseudoLabel`, in ``case_ids`` order.
    """
    out: dict[str, CasePseudoLabel] = {}
    for cid in case_ids:
        x = image(cid)
        probs = flip_averaged_probs(predict, x) if flips else predict(x)
        label, conf = pseudo_label_case(
            probs, regions, foreground_threshold, confidence, connectivity
        )
        path = safe_child(folder, f"{cid}.npy")
        sha = save_label(label, path)
        out[cid] = CasePseudoLabel(cid, path, float(conf), sha, int((label > 0).sum()))
    return out


def select_cases(
    confidence: Mapping[str, float],
    selection: Selection,
    pass_index: int,
    top_fraction: float | None,
    threshold: float | None,
    tiers: Sequence[float],
) -> list[str]:
    """The cases whose pseudo-labels are trusted in pass ``pass_index``, most certain first.

    ``top_fraction``: the ``top_fraction`` most certain cases and/or those at or above
    ``threshold``. ``tiered``: UGTST's cumulative tier ``min(pass_index, len(tiers) - 1)``
    (:func:`~lightning_ada.active.pseudo_labels.tiered_order`), then ``threshold`` if set.
    """
    if selection == "tiered":
        order = tiered_order(confidence, tiers)
        chosen = order[min(pass_index, len(order) - 1)]
        if threshold is not None:
            chosen = [c for c in chosen if confidence[c] >= threshold]
        return chosen
    return confident_cases(confidence, threshold=threshold, top_fraction=top_fraction)


def held_out_dice(
    predict: Callable[[Tensor], Tensor],
    cases: Iterable[tuple[Tensor, Tensor]],
    regions: Mapping[str, Sequence[int]],
) -> float | None:
    """Mean over cases of the mean Dice over ``regions`` (argmax prediction vs reference).

    Args:
        predict: image ``(C, H, W, D)`` -> probabilities ``(K, H, W, D)``.
        cases: ``(image (C, H, W, D), label (1, H, W, D))`` pairs.
        regions: region name -> class indices.

    Returns:
        The mean Dice, or None without cases.
    """
    values = []
    for image, label in cases:
        pred = predict(image).argmax(0)
        per_region = case_metrics(pred, torch.as_tensor(label)[0].long(), regions, distances=False)
        values.append(sum(v["dice"] for v in per_region.values()) / max(1, len(per_region)))
    return float(sum(values) / len(values)) if values else None


# ---------------------------------------------------------------------------- the option
class SelfTraining:
    """Pseudo-label self-training of the unlabelled pool (``active.self_training``; off by default).

    Args:
        warmup_epochs: training epochs (on the labelled cases only) before the first pass; 0
            makes the first pass before epoch 0 (the source model as teacher).
        every: epochs between two passes.
        passes: most passes in the run (None: as many as the schedule allows).
        ratio: share of each training epoch's items drawn from pseudo-labelled cases, in
            ``[0, 1)`` (the rest from the labelled cases).
        selection: ``top_fraction`` (per-case confidence filter) or ``tiered`` (UGTST: the
            cumulative tier of each pass, most certain first).
        top_fraction: share of the unlabelled cases kept, most certain first (``top_fraction``
            selection; None: no limit).
        threshold: keep only cases whose confidence is at least this (None: no threshold).
        tiers: increasing cumulative shares in ``(0, 1]``, tier ``k`` used by pass ``k``
            (``tiered`` selection; UGTST's ``1 - ratio (C - 1)`` = 0.85, then all).
        confidence: per-case confidence
            (:func:`~lightning_ada.active.pseudo_labels.case_confidence`).
        flips: average the teacher over the 8 mirror flips (8x the inference).
        foreground_threshold: None = argmax; a number ``t``: foreground where
            ``1 - p_background >= t``.
        regions: class-index groups whose largest connected component is kept (None: all
            foreground classes as one region, the whole tumour).
        connectivity: 1 (faces), 2 (+ edges) or 3 (+ corners) for the components.
        stop_delta: stop making passes once the held-out Dice changed by less than this
            between two passes (needs ``data.val_split``; None: never stop early).
    """

    def __init__(
        self,
        warmup_epochs: int = 2,
        every: int = 2,
        passes: int | None = 3,
        ratio: float = 0.5,
        selection: Selection = "top_fraction",
        top_fraction: float | None = 0.5,
        threshold: float | None = None,
        tiers: list[float] = [0.85, 1.0],  # noqa: B006
        confidence: ConfidenceKind = "foreground_max_prob",
        flips: bool = False,
        foreground_threshold: float | None = None,
        regions: list[list[int]] | None = None,
        connectivity: int = 3,
        stop_delta: float | None = 0.005,
    ) -> None:
        name = "active.self_training"
        if warmup_epochs < 0:
            raise ValueError(f"{name}.warmup_epochs must be >= 0, got {warmup_epochs}")
        if every < 1:
            raise ValueError(f"{name}.every must be >= 1 epoch, got {every}")
        if passes is not None and passes < 1:
            raise ValueError(f"{name}.passes must be >= 1 or null, got {passes}")
        try:
            check_ratio(ratio)
        except ValueError as bad:
            raise ValueError(f"{name}.ratio: {bad}") from bad
        if selection not in ("top_fraction", "tiered"):
            raise ValueError(
                f"{name}.selection must be 'top_fraction' or 'tiered', got {selection!r}"
            )
        if top_fraction is not None and not 0.0 < top_fraction <= 1.0:
            raise ValueError(f"{name}.top_fraction must be in (0, 1], got {top_fraction}")
        values = [float(t) for t in tiers]
        if not values or any(not 0.0 < t <= 1.0 for t in values) or values != sorted(values):
            raise ValueError(f"{name}.tiers must be increasing shares in (0, 1], got {list(tiers)}")
        if connectivity not in (1, 2, 3):
            raise ValueError(f"{name}.connectivity must be 1, 2 or 3, got {connectivity}")
        if foreground_threshold is not None and not 0.0 < foreground_threshold <= 1.0:
            raise ValueError(
                f"{name}.foreground_threshold must be in (0, 1], got {foreground_threshold}"
            )
        if stop_delta is not None and (stop_delta < 0 or math.isnan(stop_delta)):
            raise ValueError(f"{name}.stop_delta must be >= 0 or null, got {stop_delta}")
        if regions is not None and any(not r or min(r) < 1 for r in regions):
            raise ValueError(
                f"{name}.regions must be non-empty lists of class indices >= 1, got {regions}"
            )
        self.warmup_epochs, self.every, self.passes = int(warmup_epochs), int(every), passes
        self.ratio, self.selection = float(ratio), selection
        self.top_fraction, self.threshold, self.tiers = top_fraction, threshold, values
        self.confidence, self.flips = confidence, bool(flips)
        self.foreground_threshold = foreground_threshold
        self.regions = None if regions is None else [[int(c) for c in r] for r in regions]
        self.connectivity = int(connectivity)
        self.stop_delta = stop_delta
        # ---- schedule state (saved with the active callback's state)
        self.passes_done = 0
        #: completed epochs at the last boundary a pass was considered (None: none yet)
        self.last_boundary: int | None = None
        self.stopped = False
        #: held-out Dice measured before the last pass
        self.held_out: float | None = None
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ schedule
    def due(self, boundary: int, epochs_in_run: float) -> bool:
        """Is a pass due after ``boundary`` completed epochs of a run of ``epochs_in_run``?"""
        return (
            not self.stopped
            and boundary >= self.warmup_epochs
            and (boundary - self.warmup_epochs) % self.every == 0
            and boundary < epochs_in_run  # an epoch follows that trains on the labels
            and (self.passes is None or self.passes_done < self.passes)
            and self.last_boundary != boundary
        )

    def on_fit_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, run_dir: Path,
        exclude: Iterable[str] = (),
        boundary: int = 0,
    ) -> None:
        """Check the run; make the pass due before it trains.

        Args:
            boundary: completed epochs before this fit trains its first epoch: 0 (a pass before
                epoch 0 when ``warmup_epochs`` is 0), or, when a file-oracle run that stopped at
                the end of an epoch resumes with its labels, that epoch + 1 (the pass due then
                was not made: the run stopped in the query, before this hook's epoch end).
        """
        self._datamodule(trainer)
        if self.last_boundary is None or boundary > self.last_boundary:  # not on a resume past it
            self.maybe_pass(trainer, pl_module, boundary, run_dir, exclude)

    def on_train_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, run_dir: Path,
        exclude: Iterable[str] = (),
    ) -> None:
        """A pass after this epoch when the schedule says so."""
        self.maybe_pass(trainer, pl_module, trainer.current_epoch + 1, run_dir, exclude)

    def maybe_pass(
        self, trainer: L.Trainer, pl_module: L.LightningModule, boundary: int, run_dir: Path,
        exclude: Iterable[str] = (),
    ) -> None:
        """Make pass ``passes_done`` after ``boundary`` completed epochs if it is due."""
        if not self.due(boundary, epochs_in_run(trainer)):
            return
        self.last_boundary = boundary
        dm = self._datamodule(trainer)
        start = time.perf_counter()
        dice = self._held_out_dice(dm, pl_module) if self.stop_delta is not None else None
        previous = self.held_out
        if dice is not None and previous is not None and abs(dice - previous) < self.stop_delta:
            self.stopped = True
            self.history.append({
                "event": "stopped", "epoch": boundary, "global_step": int(trainer.global_step),
                "held_out_dice": dice, "previous_held_out_dice": self.held_out,
            })
            rank_zero_info(
                f"[self-training] stopped before epoch {boundary}: held-out Dice {dice:.4f} "
                f"changed by less than {self.stop_delta} since the last pass"
            )
            self._write_log(trainer, run_dir)
            return
        self.held_out = dice if dice is not None else self.held_out
        pass_index = self.passes_done
        excluded = set(exclude)
        candidates = [cid for cid in dm.pool_view().unlabeled() if cid not in excluded]
        folder = Path(run_dir) / "pseudo_labels" / f"pass_{pass_index:02d}"
        labelled = label_cases(
            pl_module.predict_case, dm.image, candidates, folder, self.flips, self.regions,
            self.foreground_threshold, self.confidence, self.connectivity,  # type: ignore[arg-type]
        )
        confidence = {cid: p.confidence for cid, p in labelled.items()}
        chosen = select_cases(
            confidence, self.selection, pass_index, self.top_fraction, self.threshold, self.tiers
        )
        for cid in set(labelled) - set(chosen):  # keep only the files the run trains on
            labelled[cid].path.unlink(missing_ok=True)
        records = [
            PseudoLabel(
                case_id=cid, path=str(labelled[cid].path), teacher_pass=pass_index,
                epoch=boundary, global_step=int(trainer.global_step),
                confidence=labelled[cid].confidence, sha256=labelled[cid].sha256,
            )
            for cid in chosen
        ]
        dm.set_pseudo_labels(records, self.ratio)
        self.passes_done += 1
        seconds = time.perf_counter() - start
        self.history.append({
            "event": "pass", "pass": pass_index, "epoch": boundary,
            "global_step": int(trainer.global_step), "teacher": "flips" if self.flips else "plain",
            "candidates": len(candidates), "selected": chosen,
            "confidence": confidence,
            "empty": sorted(c for c, p in labelled.items() if not p.foreground_voxels),
            "held_out_dice": dice, "seconds": seconds,
        })
        mean_conf = sum(confidence[c] for c in chosen) / len(chosen) if chosen else float("nan")
        rank_zero_info(
            f"[self-training] pass {pass_index} before epoch {boundary}: {len(chosen)} of "
            f"{len(candidates)} unlabelled cases pseudo-labelled (mean confidence {mean_conf:.3f})"
            + (f", held-out Dice {dice:.4f}" if dice is not None else "")
        )
        metrics = {"self_training/n_pseudo": float(len(chosen))}
        if dice is not None:
            metrics["self_training/held_out_dice"] = dice
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self._write_log(trainer, run_dir)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _datamodule(trainer: L.Trainer) -> Any:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "set_pseudo_labels") or not hasattr(dm, "pool_view"):
            raise ConfigError(
                "active.self_training needs the ActiveDataModule (pseudo-labelled set)"
            )
        if dm.pool_view().stage != "target":
            raise ConfigError("active.self_training needs data.stage: target")
        return dm

    def _held_out_dice(self, dm: Any, pl_module: Any) -> float | None:
        split = dm.validation_split() if hasattr(dm, "validation_split") else None
        if split is None:
            return None
        regions = getattr(pl_module, "regions", None) or {
            f"class_{k}": [k] for k in range(1, int(getattr(pl_module, "num_classes", 2)))
        }
        cases = ((dm.item(cid)["image"], dm.item(cid)["label"]) for cid in dm.split_ids[split])
        return held_out_dice(pl_module.predict_case, cases, regions)

    def _write_log(self, trainer: L.Trainer, run_dir: Path) -> None:
        if trainer.is_global_zero:
            write_json_atomic(Path(run_dir) / "self_training_log.json", self.history)

    def state_dict(self) -> dict[str, Any]:
        """The schedule state: passes made, the last boundary, stopped, held-out Dice, log."""
        return {
            "passes_done": self.passes_done, "last_boundary": self.last_boundary,
            "stopped": self.stopped, "held_out": self.held_out, "history": self.history,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (an empty mapping: a fresh schedule)."""
        self.passes_done = int(state.get("passes_done", 0))
        self.last_boundary = state.get("last_boundary")
        self.stopped = bool(state.get("stopped", False))
        self.held_out = state.get("held_out")
        self.history = list(state.get("history", []))

    def __repr__(self) -> str:
        return (
            f"SelfTraining(warmup_epochs={self.warmup_epochs}, every={self.every}, "
            f"passes={self.passes}, ratio={self.ratio}, selection={self.selection!r})"
        )
