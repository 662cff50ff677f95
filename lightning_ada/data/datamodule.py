"""ActiveDataModule: source set, target labeled / unlabeled pools and evaluation sets.

The datamodule keeps the loaders and the Lightning hooks. What it is built from lives beside it:
reading and checking cases (:mod:`.roots`, :mod:`.readers`, :mod:`.validation`), splits
(:mod:`.splits`), the preprocessed cases and their cache (:mod:`.preprocessed`), the
adaptation state of the pool (:mod:`.pool_state`) and the training epochs (:mod:`.epochs`).
"""

from __future__ import annotations

import math
import os
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as L
import torch
from monai.data import list_data_collate
from monai.data.utils import affine_to_spacing
from torch.utils.data import DataLoader

from lightning_ada.augment.tumour_contrast import TumourContrast
from lightning_ada.cases import NOT_ANNOTATED, Case, check_case_ids
from lightning_ada.data import partial_labels
from lightning_ada.data import splits as split_rules
from lightning_ada.data.epochs import LabeledEpoch, PreparingLoader, seed_worker
from lightning_ada.data.pool_state import PoolState
from lightning_ada.data.pools import ActivePool
from lightning_ada.data.preprocessed import PreprocessedCases, cache_settings
from lightning_ada.data.pseudo_set import PseudoLabel, PseudoLabelSet
from lightning_ada.data.regions import Region
from lightning_ada.data.roots import CaseRoot, read_roots
from lightning_ada.data.transforms import training_augmentation
from lightning_ada.data.validation import (
    MAX_VOXELS,
    ValidationMarkers,
    validate_case,
    validate_label_file,
)
from lightning_ada.errors import DataError
from lightning_ada.phantom.simulator import generate_phantom, rater_datalist

Layout = Literal["datalist", "brats", "brats2023", "msd", "nnunet"]
Stage = Literal["source", "target"]
# ``val_split: none`` returns no validation loader (an empty list) on purpose
warnings.filterwarnings(
    "ignore", message="Total length of `list` across ranks is zero", module="lightning.pytorch"
)


class ActiveDataModule(L.LightningDataModule):
    """Cases of one task, split into a source set, a target pool and evaluation sets.

    In the ``source`` stage the model trains on every ``source`` case and is tested on
    ``source_test``. In the ``target`` stage it trains on the *labeled* part of the target
    ``pool`` (grown by :meth:`label`) and is tested on ``test``. Validation during training
    uses ``val_split`` (by default none: the test cases' labels are read only by ``test``).

    Args:
        root: dataset folder (for ``layout="datalist"``: the JSON file, or a folder holding
            ``dataset.json`` or ``datalist.json``).
        extra_roots: more folders or datalists to read cases from
            (:class:`~lightning_ada.data.roots.CaseRoot`: ``root``, optional ``layout`` and
            ``split``), so test cases or other institutions' cases stay where they are. Case ids
            must be unique over all roots.
        layout: on-disk layout read by :func:`lightning_ada.data.readers.read_cases`; the
            BraTS layouts read only the files of ``modalities`` (a subset of the sequences).
        phantom: keyword arguments of :func:`lightning_ada.phantom.simulator.generate_phantom`; when
            given, the synthetic phantom is generated into ``root`` if absent (deterministic).
        stage: ``source`` (pre-training) or ``target`` (adaptation).
        splits: explicit case ids per split name (``source``, ``source_test``, ``pool``,
            ``test``); a split not given here is taken from each case's own ``split`` field.
        modalities: modality names, in channel order.
        labels: region name -> on-disk label value, in class order (class index = position + 1).
        initial_labeled: pool case ids labeled (with their reference mask) before any query.
        initial_partial: those of ``initial_labeled`` whose label file is partial: its
            ``NOT_ANNOTATED`` (255) voxels were not annotated (e.g. the slices a MONAI Label
            client delineated, merged); training ignores them and centres its crops on the
            annotated voxels, and sub-volume queries may ask for them later.
        label_all: label the whole pool with reference masks (the upper bound).
        batch_size: training batch size.
        iterations_per_epoch: training batches per epoch, whatever the labeled-set size.
        patch_size: training patch in voxels ``(H, W, D)``.
        pixdim: resample to this spacing in mm (None keeps the native grid).
        crop_foreground: crop each case to its non-zero box.
        divisible_by: pad volumes to a multiple of this (product of the net's strides).
        augment: random flips and intensity augmentation for training.
        validate_inputs: check every file (shapes, affines, NaN/inf as the network sees them,
            label values) once in setup (:mod:`lightning_ada.data.validation`).
        max_voxels: largest number of voxels (all channels) accepted in one file; a header
            declaring more is refused before its data is read.
        num_workers: DataLoader workers.
        cache_dir: keep the preprocessed cases on disk in this folder (MONAI
            ``PersistentDataset``) so later runs skip preprocessing; the key of a case hashes its
            files' fingerprints (size, mtime, first MiB) and the preprocessing settings, so a
            changed file or setting recomputes it (stale entries are left; delete the folder to
            reclaim space). Cases that passed ``validate_inputs`` are remembered there too.
            None: preprocess (and validate) in memory at every setup.
        predict_split: which split ``predict`` runs on.
        val_split: what validation (during ``fit``) scores. None (default): no validation, so
            no label of the test split is read before ``test``. A split name: that split (never
            the stage's test split, ``test`` or ``source_test``), e.g. a ``val`` split of its
            own listed in ``splits`` or ``extra_roots``, or ``source_test`` during adaptation
            (how the source test cases fare). A fraction in (0, 1): that share of the training
            cases (``pool`` in the target stage, ``source`` in the source stage) is held out as
            split ``val``, chosen by a fixed seed over the sorted ids (the same cases in every
            run); in the target stage their labels are read, so they cost annotations and leave
            the pool.
        extra_test_splits: more splits ``test`` scores after the stage's test split, each
            logged under its own name as metric prefix (``source_test/dice_ET``,
            ``other_institutions/dice_mean``, ...): e.g. the source test cases and cases of
            institutions outside the target pool, to measure forgetting.
        tumour_contrast: tumour-contrast augmentation of the labeled training cases
            (:class:`~lightning_ada.augment.tumour_contrast.TumourContrast`, GBA's naive or
            blended rescaling, ALGORITHMS 11; ``on_pseudo_labels`` extends it to pseudo-labelled
            cases; GBA proper with a ``harmoniser``, whose SinGAN the training loader trains
            or reloads once per run); None (default): off.
        rater: read the labels of this rater (a phantom generated with ``phantom.raters``:
            ``<root>/dataset_rater-<rater>.json``,
            :func:`~lightning_ada.phantom.simulator.rater_datalist`): the target cases' references
            (oracle and test) are the rater's masks. None: the reference (consensus) labels.
        train_input: ``all`` modalities for every labeled case (default); ``dominant_only``:
            only the modality the case was annotated on, the others zero-filled;
            ``modality:<name>``: the model only ever sees that modality (training, evaluation and
            scoring; the paper's Table 2 single-modality ablation).
        missing_modality: a case without one of ``modalities`` (BraTS 2015-style folders with
            FLAIR and T1c only, a clinical series without T2): ``refuse`` (default; one line
            naming the case and the modality) or ``zero_fill``: read it, its missing channels
            zero-filled (what a model trained with ``modality_dropout`` expects), listed in a
            warning at set-up, in the query log (``missing_modalities``) and in the predictions
            (``zero_filled.json`` beside them, and each NIfTI's header description); the
            election never elects a missing modality.
        modality_dropout: modality dropout in training: the probability that a training patch has
            one of its modalities zeroed (drawn among those it has); 0 (default) leaves
            training as it was.
    """

    def __init__(
        self,
        root: str = "data/phantom/glioma",
        layout: Layout = "datalist",
        extra_roots: list[CaseRoot] | None = None,
        phantom: dict[str, Any] | None = None,
        stage: Stage = "target",
        splits: dict[str, list[str]] | None = None,
        modalities: list[str] = ["flair", "t1", "t1ce", "t2"],  # noqa: B006
        labels: dict[str, int] = {"NCR": 1, "ED": 2, "ET": 4},  # noqa: B006
        initial_labeled: list[str] | None = None,
        initial_partial: list[str] | None = None,
        label_all: bool = False,
        batch_size: int = 4,
        iterations_per_epoch: int = 25,
        patch_size: list[int] = [32, 32, 32],  # noqa: B006
        pixdim: list[float] | None = None,
        crop_foreground: bool = False,
        divisible_by: int = 8,
        augment: bool = True,
        validate_inputs: bool = True,
        max_voxels: int = MAX_VOXELS,
        num_workers: int = 0,
        cache_dir: str | None = None,
        predict_split: str = "test",
        train_input: str = "all",
        val_split: float | str | None = None,
        extra_test_splits: list[str] | None = None,
        tumour_contrast: TumourContrast | None = None,
        rater: str | None = None,
        missing_modality: Literal["refuse", "zero_fill"] = "refuse",
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        allowed = ["all", "dominant_only", *(f"modality:{m}" for m in modalities)]
        if train_input not in allowed:
            raise ValueError(f"data.train_input must be one of {allowed}, got {train_input!r}")
        stray = sorted(set(initial_partial or []) - set(initial_labeled or []))
        if stray:
            raise ValueError(f"data.initial_partial names cases not in data.initial_labeled: {stray}")
        if missing_modality not in ("refuse", "zero_fill"):
            raise ValueError(
                f"data.missing_modality must be 'refuse' or 'zero_fill', got {missing_modality!r}"
            )
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"data.modality_dropout must be in [0, 1), got {modality_dropout}")
        # an object in the hyper-parameters would make checkpoints unloadable with
        # weights_only=True; the run's config.yaml records it
        self.save_hyperparameters(ignore=["tumour_contrast"])
        self.tumour_contrast = tumour_contrast
        #: labelled / unlabelled pool, accepted labels, pseudo-labels: the resumable state
        self.state = PoolState(str(root))
        self.cases: dict[str, Case] = {}
        self.split_ids: dict[str, list[str]] = {}
        self._source_pool: ActivePool | None = None
        self._data: PreprocessedCases | None = None
        self._merged: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ set-up
    def prepare_data(self) -> None:
        """Generate the phantom into ``root`` when configured (once, on one process)."""
        if self.hparams.phantom is not None:
            generate_phantom(self._root_dir(), **self.hparams.phantom)

    def _root_dir(self) -> Path:
        root = Path(self.hparams.root)
        return root.parent if root.suffix == ".json" else root

    def _read(self) -> list[Case]:
        root = str(self.hparams.root)
        if self.hparams.get("rater") is not None:  # one rater's labels (phantom with raters)
            root = str(rater_datalist(self._root_dir(), self.hparams.rater))
        roots = [CaseRoot(root), *(self.hparams.extra_roots or [])]
        roots = [r if isinstance(r, CaseRoot) else CaseRoot(**r) for r in roots]
        missing_ok = self.hparams.get("missing_modality", "refuse") == "zero_fill"
        return read_roots(roots, self.hparams.layout, list(self.hparams.modalities), missing_ok)

    def setup(self, stage: str | None = None) -> None:
        """Read the cases, check them, build the pool and the in-memory cache (once).

        With ``cache_dir`` the in-memory cache is filled from the disk cache (preprocessing only
        the cases missing there).
        """
        if self._data is not None:
            return
        if self.hparams.phantom is not None:
            self.prepare_data()  # idempotent; covers direct use without a Trainer
        cases = self._read()
        check_case_ids(cases, str(self.hparams.root))
        self.cases = {c.case_id: c for c in cases}
        for c in cases:
            if tuple(c.modalities) != tuple(self.hparams.modalities):
                raise DataError(
                    f"case {c.case_id}: modalities {list(c.modalities)} differ from the "
                    f"configured {self.hparams.modalities}"
                )
        self.split_ids = split_rules.resolve_splits(
            cases, self.hparams.stage, self.hparams.splits, self.hparams.val_split,
            self.hparams.extra_test_splits or [], source=str(self.hparams.root),
        )
        if self.hparams.validate_inputs:
            for cid in sorted({i for ids in self.split_ids.values() for i in ids}):
                self._validate(cid)
        self._source_pool = ActivePool(self.split_ids.get("source", []))
        for cid in self._source_pool.case_ids:
            self._source_pool.label(cid, self._reference_label(cid))
        initial = {cid: self._reference_label(cid) for cid in self._initially_labeled()}
        self.state.start(self.split_ids.get("pool", []), initial, self.cases,
                         partial=self._initially_partial())
        used = [cid for cid in self.cases if any(cid in ids for ids in self.split_ids.values())]
        self._data = PreprocessedCases(
            self.cases, used, list(self.hparams.labels.values()), list(self.hparams.modalities),
            pixdim=self.hparams.pixdim, crop_foreground=self.hparams.crop_foreground,
            divisible_by=self.hparams.divisible_by, cache_dir=self.hparams.cache_dir,
            max_voxels=int(self.hparams.max_voxels), source=str(self.hparams.root),
            unlabelled_ok=self.split_ids.get("pool", []) if self.hparams.stage == "target" else (),
        )
        if self.hparams.pixdim is None:
            self._warn_mixed_spacing(used)
        filled = {cid: list(self.cases[cid].missing) for cid in used if self.cases[cid].missing}
        if filled:
            shown = "; ".join(f"{cid}: {', '.join(m)}" for cid, m in sorted(filled.items())[:5])
            more = f" and {len(filled) - 5} more" if len(filled) > 5 else ""
            warnings.warn(
                f"{len(filled)} cases lack a modality, zero-filled (data.missing_modality "
                f"zero_fill): {shown}{more}; their results are flagged (query log, predictions)",
                UserWarning, stacklevel=2,
            )

    def _warn_mixed_spacing(self, ids: Sequence[str]) -> None:
        """Warn once when the cases' voxel spacings differ and ``pixdim`` keeps each native grid
        (the network would see voxels of different physical sizes)."""
        spacing = {
            cid: tuple(float(v) for v in affine_to_spacing(self.preprocessed.item(cid)["image"].affine, r=3))
            for cid in ids
        }
        if not spacing:
            return
        smallest = min(spacing, key=lambda c: (math.prod(spacing[c]), c))
        largest = max(spacing, key=lambda c: (math.prod(spacing[c]), c))
        lo, hi = spacing[smallest], spacing[largest]
        if any(abs(a - b) > 0.01 * max(a, b) for a, b in zip(lo, hi)):
            warnings.warn(
                f"{self.hparams.root}: the cases' voxel spacings differ ({smallest}: "
                f"{', '.join(f'{v:g}' for v in lo)} mm; {largest}: {', '.join(f'{v:g}' for v in hi)} "
                "mm) and data.pixdim is null (each case keeps its own grid): set data.pixdim to "
                "resample every case to one spacing",
                UserWarning, stacklevel=2,
            )

    def _validate(self, case_id: str) -> None:
        """:func:`validate_case`, remembered in ``<cache_dir>/validated`` once passed."""
        case, values = self.cases[case_id], list(self.hparams.labels.values())
        limit = int(self.hparams.max_voxels)
        partial = case_id in self._initially_partial()
        if self.hparams.cache_dir is None:
            validate_case(case, values, max_voxels=limit, allow_not_annotated=partial)
            return
        markers = ValidationMarkers(
            Path(self.hparams.cache_dir) / "validated",
            {"label_values": values, "max_voxels": limit, "allow_not_annotated": partial},
        )
        markers.validate(case, label_values=values, max_voxels=limit, allow_not_annotated=partial)

    def _initially_labeled(self) -> list[str]:
        if self.hparams.stage == "source":
            return []  # the source stage trains on ``train_pool`` (every source case)
        if self.hparams.label_all:
            return list(self.split_ids["pool"])
        return list(self.hparams.initial_labeled or [])

    def _initially_partial(self) -> set[str]:
        if self.hparams.stage != "target":
            return set()
        return set(self.hparams.get("initial_partial") or [])

    def _reference_label(self, case_id: str) -> str:
        label = self.cases[case_id].label
        if label is None:
            raise DataError(f"case {case_id} has no reference label")
        return label

    # ------------------------------------------------------------------ splits
    def validation_setting(self) -> str | float | None:
        """``val_split`` as configured: None, a split name or a fraction (``"none"`` is None)."""
        return split_rules.validation_setting(self.hparams.val_split)

    def test_split(self) -> str:
        """The test split of the current stage: ``source_test`` (source) or ``test`` (target)."""
        return split_rules.test_split(self.hparams.stage)

    def validation_split(self) -> str | None:
        """The split validation scores: None (no validation), a configured split, or ``val``."""
        return split_rules.validation_split(self.hparams.val_split)

    def test_split_names(self) -> list[str]:
        """The splits ``test`` scores, in dataloader order: the test split, then the extras."""
        return [self.test_split(), *(self.hparams.extra_test_splits or [])]

    # ------------------------------------------------------------------ pool
    @property
    def pool(self) -> ActivePool | None:
        """The target pool's labelled / unlabelled bookkeeping (None before :meth:`setup`)."""
        return self.state.pool

    @property
    def pseudo(self) -> PseudoLabelSet:
        """The pseudo-labelled cases of self-training (empty unless self-training fills it)."""
        return self.state.pseudo

    @property
    def train_pool(self) -> ActivePool:
        """The pool training draws from (the source set in the ``source`` stage)."""
        if self.state.pool is None or self._source_pool is None:
            raise RuntimeError("call setup() first")
        return self._source_pool if self.hparams.stage == "source" else self.state.pool

    def unlabeled_ids(self) -> list[str]:
        """Ids of the target pool cases still unlabeled, in pool order."""
        return self.state.unlabeled

    def label(
        self, case_id: str, label_path: str, modality: str | None, round: int, epoch: int,
        region: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record the mask an oracle delivered for ``case_id`` (within ``region``, a
        ``Region.to_json()``; None: wherever the file annotates) in the labelled pool.

        Returns:
            What the delivery added, on the network grid: ``voxels`` annotated for the first
            time, ``foreground_voxels`` among them, ``slices`` they touch along the region's
            axis (axis 2 for boxes and whole cases), ``new_case`` (the case's first delivery),
            ``partial`` (the case is annotated in parts).
        """
        before = self.annotated(case_id)
        shape = tuple(self.item(case_id)["image"].shape[1:])
        whole = region is None or region.get("kind", "case") == "case"
        label = self.preprocessed.with_label(case_id, str(label_path))["label"]
        partial = not whole or bool((label == NOT_ANNOTATED).any())
        self.state.label(self.cases[case_id], label_path, modality, round=round, epoch=epoch,
                         region=None if whole else region, partial=partial)
        after = self.annotated(case_id)
        assert after is not None
        new = after if before is None else after & ~before
        merged = self._partial_label(case_id)[0][0] if partial else label[0]
        axis = int(region.get("axis", 2)) if region and region.get("kind") == "slices" else 2
        others = tuple(a for a in range(3) if a != axis)
        tumour = new & (merged > 0) & (merged != NOT_ANNOTATED)
        return {
            "voxels": int(new.sum()),
            "foreground_voxels": int(tumour.sum()),
            "slices": int(new.any(dim=others).sum()),
            "slices_with_tumour": int(tumour.any(dim=others).sum()),
            "new_case": before is None,
            "partial": partial,
            "case_voxels": int(torch.tensor(shape).prod()),
        }

    def set_pseudo_labels(
        self, records: Sequence[PseudoLabel], ratio: float,
        labels: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Replace the pseudo-labelled set (a self-training pass); epochs draw from it
        (:meth:`~lightning_ada.data.pool_state.PoolState.set_pseudo_labels`)."""
        self.state.set_pseudo_labels(records, ratio, labels)

    def pseudo_labelled_ids(self) -> list[str]:
        """Ids of the pseudo-labelled cases training uses: those not labeled since the pass."""
        return self.state.pseudo_labelled_ids()

    def pool_view(self) -> DataModulePoolView:
        """The narrow view the active-learning side uses (:class:`~lightning_ada.data.pool_view.PoolView`)."""
        return DataModulePoolView(self)

    def run_definition(self) -> dict[str, Any]:
        """This datamodule's entries of the run definition (:mod:`lightning_ada.run.definition`):
        the pool's ids, the stage, the modalities and the labels."""
        out: dict[str, Any] = {}
        if self.state.pool is not None:
            out["pool"] = sorted(self.state.pool.case_ids)
        for key in ("stage", "modalities", "labels"):
            if key in self.hparams:
                value = self.hparams[key]
                out[key] = dict(value) if isinstance(value, dict) else (
                    list(value) if isinstance(value, (list, tuple)) else value
                )
        return out

    # ------------------------------------------------------------------ items
    def preprocessing_settings(self) -> dict[str, Any]:
        """What the preprocessed cases depend on besides their files (the disk cache's key)."""
        hp = self.hparams
        return cache_settings(list(hp.labels.values()), list(hp.modalities), hp.pixdim,
                              hp.crop_foreground, hp.divisible_by)

    @property
    def preprocessed(self) -> PreprocessedCases:
        """The preprocessed cases (after :meth:`setup`)."""
        if self._data is None:
            raise RuntimeError("call setup() first")
        return self._data

    def case(self, case_id: str) -> Case:
        """The :class:`Case` record of ``case_id``."""
        return self.cases[case_id]

    def item(self, case_id: str) -> dict[str, Any]:
        """The preprocessed item of a case: ``image`` ``(C, H, W, D)``, ``label`` ``(1, H, W, D)``."""
        return self._only_input(self.preprocessed.item(case_id))

    def _only_input(self, item: dict[str, Any], modality: str | None = None) -> dict[str, Any]:
        """Zero every channel but ``modality`` (or the ``modality:<name>`` of ``train_input``)."""
        mode = self.hparams.train_input
        if mode.startswith("modality:"):
            modality = mode.split(":", 1)[1]
        if modality is None:
            return item
        keep = list(self.hparams.modalities).index(modality)
        image = item["image"].clone()
        image[[m for m in range(image.shape[0]) if m != keep]] = 0
        return dict(item) | {"image": image}

    def image(self, case_id: str) -> torch.Tensor:
        """The preprocessed image ``(C, H, W, D)`` of a case (network input space)."""
        return self.item(case_id)["image"]

    def training_item(self, case_id: str) -> dict[str, Any]:
        """Image with the delivered annotation (which may differ from the reference mask).

        A case annotated in parts gets its deliveries merged (``NOT_ANNOTATED`` elsewhere) and
        a ``sampling`` map (:mod:`lightning_ada.data.partial_labels`) for the training crop.
        """
        annotation = self.train_pool.annotation(case_id)
        dominant = self.hparams.train_input == "dominant_only"
        if self.hparams.stage == "source" or not annotation.partial:
            item = self.preprocessed.with_label(case_id, annotation.label_path)
            return self._only_input(item, annotation.modality if dominant else None)
        label, annotated = self._partial_label(case_id)
        item = dict(self.item(case_id)) | {
            "label": label, "sampling": partial_labels.sampling_map(label, annotated)
        }
        return self._only_input(item, annotation.modality if dominant else None)

    def _partial_label(self, case_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The merged partial label ``(1, H, W, D)`` of a case and its annotated mask (cached
        until the case's next delivery)."""
        deliveries = self.state.deliveries(case_id)
        key = (case_id, len(deliveries))
        if key not in self._merged:
            shape = tuple(self.item(case_id)["image"].shape[1:])
            parts = []
            for a in deliveries:
                label = self.preprocessed.with_label(case_id, a.label_path)["label"]
                region = None if a.region is None else Region.from_json(a.region).mask(shape)
                parts.append((label, partial_labels.delivered(label, region)))
            # the reference's grid and metadata, or a delivery's (an unlabelled pool case)
            like = self.item(case_id).get("label", parts[0][0])
            self._merged[key] = partial_labels.merge(parts, like)
        return self._merged[key]

    def annotated(self, case_id: str) -> torch.Tensor | None:
        """Boolean ``(H, W, D)`` of the voxels of a pool case annotated so far (None: none)."""
        if self.state.pool is None or case_id not in self.state.pool or \
                case_id not in self.state.labeled:
            return None
        if not self.state.pool.annotation(case_id).partial:
            return torch.ones(tuple(self.item(case_id)["image"].shape[1:]), dtype=torch.bool)
        return self._partial_label(case_id)[1][0]

    def reference(self, case_id: str) -> torch.Tensor:
        """The reference label ``(H, W, D)`` (class indices) of a case on the network grid.

        Raises:
            DataError: the case has none (an unlabelled pool case: only an oracle labels it).
        """
        item = self.item(case_id)
        if "label" not in item:
            raise DataError(f"case {case_id} has no reference label (a simulated oracle or a "
                            "reference-based rule needs one)")
        return item["label"][0]

    def pseudo_item(self, case_id: str) -> dict[str, Any]:
        """The preprocessed image with its pseudo-label in place of the reference mask.

        Raises:
            DataError: the pseudo-label does not have the case's grid (another preprocessing).
        """
        item = self.item(case_id)
        pseudo = self.pseudo.label(case_id)
        reference = item["label"]
        if tuple(pseudo.shape) != tuple(reference.shape):
            raise DataError(
                f"{self.pseudo.record(case_id).path}: pseudo-label of shape {tuple(pseudo.shape)} "
                f"but case {case_id} is {tuple(reference.shape)} after preprocessing"
            )
        label = reference.clone()  # keeps the label's metadata; the values are replaced
        label.copy_(pseudo.to(label.dtype))
        return dict(item) | {"label": label}

    def invert(self, prediction: torch.Tensor, case_id: str) -> torch.Tensor:
        """Map a class-index prediction ``(1, H, W, D)`` back to the case's original geometry.

        Returns a MetaTensor carrying the original affine, with on-disk label values
        (:func:`~lightning_ada.data.transforms.invert_prediction`).
        """
        return self.preprocessed.invert(prediction, case_id)

    # ------------------------------------------------------------------ loaders
    def epoch_seed(self) -> int:
        """Seed of this epoch's sampling and augmentation: a function of (run seed, epoch) only.

        With the loader rebuilt every epoch (``trainer.reload_dataloaders_every_n_epochs: 1``)
        a resumed run draws exactly the batches an uninterrupted run would have drawn.
        """
        base = int(os.environ.get("PL_GLOBAL_SEED", 0))
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return (base * 1_000_003 + epoch * 7_919) % (2**31 - 1)

    def _labeled_ids(self) -> list[str]:
        return self.train_pool.labeled

    def _pseudo_ratio(self) -> float:
        return self.pseudo.ratio

    def train_dataloader(self) -> DataLoader:
        """Fixed-length epochs sampled from the *current* labeled set, seeded per epoch."""
        seed = self.epoch_seed()
        dropout = float(self.hparams.get("modality_dropout", 0.0))
        augmentation = training_augmentation(self.hparams.patch_size, self.hparams.augment,
                                             modality_dropout=dropout)
        contrast = self.tumour_contrast
        length = self.hparams.iterations_per_epoch * self.hparams.batch_size
        epoch = LabeledEpoch(
            self._labeled_ids, self.pseudo_labelled_ids, self._pseudo_ratio,
            self.training_item, self.pseudo_item, augmentation, length,
            contrast=contrast.transform(self) if contrast is not None else None,
            contrast_pseudo=contrast is not None and contrast.on_pseudo_labels,
            offset=random.Random(seed).randrange(max(1, len(self.pseudo))),
            partial_transform=training_augmentation(
                self.hparams.patch_size, self.hparams.augment, partial=True,
                modality_dropout=dropout),
        )
        epoch.set_random_state(seed)
        return PreparingLoader(
            epoch,
            batch_size=self.hparams.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            num_workers=self.hparams.num_workers,
            worker_init_fn=seed_worker,
            collate_fn=list_data_collate,
            persistent_workers=False,
        )

    def _eval_loader(self, split: str) -> DataLoader:
        if not self.split_ids.get(split):
            raise DataError(f"{self.hparams.root}: split {split!r} is empty (data.splits lists it "
                            "so): nothing to evaluate or predict")
        subset = [self.item(cid) for cid in self.split_ids[split]]
        return DataLoader(subset, batch_size=1, num_workers=0, collate_fn=list_data_collate)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Loader of :meth:`validation_split`; an empty list (validation skipped) for none."""
        split = self.validation_split()
        return [] if split is None else self._eval_loader(split)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """Loader of the test split alone, or one per :meth:`test_split_names` with extras."""
        loaders = [self._eval_loader(name) for name in self.test_split_names()]
        return loaders[0] if len(loaders) == 1 else loaders

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self.hparams.predict_split)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The pool state (:meth:`~lightning_ada.data.pool_state.PoolState.state_dict`)."""
        return self.state.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the pool state, before or after :meth:`setup`.

        Raises:
            DataError: a pseudo-label file is missing or changed; the pool state does not fit,
                or a label or image changed since it was accepted.
        """
        self.state.load_state_dict(state_dict, self.cases)


class DataModulePoolView:
    """The active-learning view of an :class:`ActiveDataModule` (after ``setup``), implementing
    :class:`~lightning_ada.data.pool_view.PoolView`.

    Args:
        dm: the datamodule.
    """

    def __init__(self, dm: ActiveDataModule) -> None:
        self._dm = dm
        self.stage: str = dm.hparams.stage
        self.modalities: list[str] = list(dm.hparams.modalities)
        self.label_values: list[int] = list(dm.hparams.labels.values())

    def ids(self, split: str) -> list[str]:
        return list(self._dm.split_ids.get(split, []))

    def labeled(self) -> list[str]:
        return list(self._dm.state.labeled)

    def unlabeled(self) -> list[str]:
        return list(self._dm.state.unlabeled)

    def image(self, case_id: str) -> torch.Tensor:
        return self._dm.image(case_id)

    def case(self, case_id: str) -> Case:
        return self._dm.case(case_id)

    def label(
        self, case_id: str, label_path: str, modality: str | None, round: int, epoch: int,
        region: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return self._dm.label(case_id, label_path, modality, round=round, epoch=epoch, region=region)

    def annotated(self, case_id: str) -> torch.Tensor | None:
        return self._dm.annotated(case_id)

    def reference(self, case_id: str) -> torch.Tensor:
        return self._dm.reference(case_id)

    def invert(self, prediction: torch.Tensor, case_id: str) -> torch.Tensor:
        return self._dm.invert(prediction, case_id)

    def validate_label(
        self, path: str, case_id: str, allow_empty: bool = False, allow_not_annotated: bool = False,
        reorient: bool = False,
    ) -> str | None:
        return validate_label_file(
            path, self._dm.case(case_id).reference_image, self.label_values, allow_empty,
            max_voxels=int(self._dm.hparams.max_voxels), allow_not_annotated=allow_not_annotated,
            reorient=reorient,
        )

