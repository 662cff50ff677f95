"""ActiveDataModule: source set, target labeled / unlabeled pools and evaluation sets."""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as L
import torch
from monai.data import CacheDataset, PersistentDataset, list_data_collate
from torch.utils.data import DataLoader

from lightning_ada.data.cache import CacheKey, cache_safe_globals, content_sha256
from lightning_ada.data.cases import Case, DataError, check_case_ids
from lightning_ada.data.pools import ActivePool
from lightning_ada.data.pseudo_set import PseudoLabel, PseudoLabelSet, pseudo_count
from lightning_ada.data.roots import CaseRoot
from lightning_ada.data.transforms import (
    invert_prediction,
    preprocessing,
    preprocessing_settings,
    training_augmentation,
)
from lightning_ada.data.tumour_contrast import TumourContrast
from lightning_ada.data.validation import (
    MAX_VOXELS,
    ValidationMarkers,
    validate_case,
    validate_label_file,
)

Layout = Literal["datalist", "brats", "brats2023", "msd", "nnunet"]
Stage = Literal["source", "target"]
#: Metric prefixes the module already uses: not allowed as names of extra test splits.
RESERVED_PREFIXES = ("train", "val", "test")
# ``val_split: none`` returns no validation loader (an empty list) on purpose
warnings.filterwarnings(
    "ignore", message="Total length of `list` across ranks is zero", module="lightning.pytorch"
)


class _LabeledEpoch(torch.utils.data.Dataset):
    """A fixed-length epoch drawn from the labeled set *as it is when an item is fetched*.

    Looking the labeled ids up at fetch time means the training loader always reflects the
    current pool, whenever Lightning (re)builds it: a case labeled before epoch ``e`` is trained
    on from epoch ``e`` on. With pseudo-labelled cases (self-training), items ``i < n`` of the
    epoch come from them (``n`` = :func:`~lightning_ada.data.pseudo_set.pseudo_count`, each
    case equally often from a per-epoch offset), the rest from the labeled cases; the loader's
    shuffle mixes the two. ``contrast`` (tumour-contrast augmentation) alters labeled cases,
    and pseudo-labelled ones when ``contrast_pseudo``, before ``transform``.
    """

    def __init__(
        self, dm: ActiveDataModule, transform: Any, length: int, contrast: Any = None,
        contrast_pseudo: bool = False, offset: int = 0,
    ) -> None:
        self.dm, self.transform, self.length = dm, transform, length
        self.contrast, self.contrast_pseudo, self.offset = contrast, contrast_pseudo, offset

    def __len__(self) -> int:
        return self.length

    def prepare(self) -> None:
        """Ready the tumour-contrast transform (GBA proper trains or reloads its SinGAN here)."""
        if self.contrast is not None and hasattr(self.contrast, "prepare"):
            self.contrast.prepare()

    def set_random_state(self, seed: int) -> None:
        """Seed the augmentation (and the tumour-contrast transform with a derived seed)."""
        self.transform.set_random_state(seed=seed)
        if self.contrast is not None:
            self.contrast.set_random_state(seed=(seed * 31 + 17) % (2**31 - 1))

    def __getitem__(self, i: int) -> Any:
        ids = self.dm.train_pool.labeled
        pseudo = self.dm.pseudo_labelled_ids()
        n_pseudo = pseudo_count(self.length, self.dm.pseudo.ratio, len(ids), len(pseudo))
        if not ids and not pseudo:
            raise RuntimeError(
                "no labeled case to train on: give the active callback a budget > 0, "
                "or list data.initial_labeled / set data.label_all"
            )
        if i < n_pseudo:
            item = self.dm._pseudo_item(pseudo[(i + self.offset) % len(pseudo)])
            alter = self.contrast_pseudo
        else:
            item = self.dm._training_item(ids[(i - n_pseudo) % len(ids)])
            alter = True
        if self.contrast is not None and alter:
            item = self.contrast(item)
        return self.transform(item)


class _PreparingLoader(DataLoader):
    """A DataLoader that prepares its dataset in this process each time iteration starts, before
    any worker starts (``_LabeledEpoch.prepare``: a SinGAN trained once, then shared)."""

    def __iter__(self) -> Any:
        prepare = getattr(self.dataset, "prepare", None)
        if prepare is not None:
            prepare()
        return super().__iter__()


def _seed_worker(worker_id: int) -> None:
    """Give each loader worker its own augmentation stream (workers fork identical states)."""
    info = torch.utils.data.get_worker_info()
    if info is not None:
        info.dataset.set_random_state(seed=(info.seed + worker_id) % (2**31 - 1))


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
        phantom: keyword arguments of :func:`lightning_ada.data.phantom.generate_phantom`; when
            given, the synthetic phantom is generated into ``root`` if absent (deterministic).
        stage: ``source`` (pre-training) or ``target`` (adaptation).
        splits: explicit case ids per split name (``source``, ``source_test``, ``pool``,
            ``test``); a split not given here is taken from each case's own ``split`` field.
        modalities: modality names, in channel order.
        labels: region name -> on-disk label value, in class order (class index = position + 1).
        initial_labeled: pool case ids labeled (with their reference mask) before any query.
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
            (:class:`~lightning_ada.data.tumour_contrast.TumourContrast`, GBA's naive or
            blended rescaling, ALGORITHMS 11; ``on_pseudo_labels`` extends it to pseudo-labelled
            cases; GBA proper with a ``harmoniser``, whose SinGAN the training loader trains
            or reloads once per run); None (default): off.
        rater: read the labels of this rater (a phantom generated with ``phantom.raters``:
            ``<root>/dataset_rater-<rater>.json``,
            :func:`~lightning_ada.data.phantom.rater_datalist`): the target cases' references
            (oracle and test) are the rater's masks. None: the reference (consensus) labels.
        train_input: ``all`` modalities for every labeled case (default); ``dominant_only``:
            only the modality the case was annotated on, the others zero-filled;
            ``modality:<name>``: the model only ever sees that modality (training, evaluation and
            scoring; the paper's Table 2 single-modality ablation).
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
    ) -> None:
        super().__init__()
        allowed = ["all", "dominant_only", *(f"modality:{m}" for m in modalities)]
        if train_input not in allowed:
            raise ValueError(f"data.train_input must be one of {allowed}, got {train_input!r}")
        # an object in the hyper-parameters would make checkpoints unloadable with
        # weights_only=True; the run's config.yaml records it
        self.save_hyperparameters(ignore=["tumour_contrast"])
        self.tumour_contrast = tumour_contrast
        #: the pseudo-labelled cases of self-training (empty unless the active callback fills it)
        self.pseudo = PseudoLabelSet()
        self.cases: dict[str, Case] = {}
        self.split_ids: dict[str, list[str]] = {}
        self.pool: ActivePool | None = None
        self._cache: CacheDataset | None = None
        self._prep: Any = None
        self._index: dict[str, int] = {}
        self._annotated: dict[tuple[str, str], dict[str, Any]] = {}
        self._pending_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------ set-up
    def prepare_data(self) -> None:
        """Generate the phantom into ``root`` when configured (once, on one process)."""
        if self.hparams.phantom is not None:
            from lightning_ada.data.phantom import generate_phantom

            generate_phantom(self._root_dir(), **self.hparams.phantom)

    def _root_dir(self) -> Path:
        root = Path(self.hparams.root)
        return root.parent if root.suffix == ".json" else root

    def _read(self) -> list[Case]:
        from lightning_ada.data.roots import read_roots

        root = str(self.hparams.root)
        if self.hparams.get("rater") is not None:  # one rater's labels (phantom with raters)
            from lightning_ada.data.phantom import rater_datalist

            root = str(rater_datalist(self._root_dir(), self.hparams.rater))
        roots = [CaseRoot(root), *(self.hparams.extra_roots or [])]
        roots = [r if isinstance(r, CaseRoot) else CaseRoot(**r) for r in roots]
        return read_roots(roots, self.hparams.layout, list(self.hparams.modalities))

    def setup(self, stage: str | None = None) -> None:
        """Read the cases, check them, build the pool and the in-memory cache (once).

        With ``cache_dir`` the in-memory cache is filled from the disk cache (preprocessing only
        the cases missing there).
        """
        if self._cache is not None:
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
        self.split_ids = self._resolve_splits(cases)
        if self.hparams.validate_inputs:
            for cid in sorted({i for ids in self.split_ids.values() for i in ids}):
                self._validate(cid)
        self.pool = ActivePool(self.split_ids.get("pool", []))
        self._source_pool = ActivePool(self.split_ids.get("source", []))
        for cid in self._source_pool.case_ids:
            self._source_pool.label(cid, self._reference_label(cid))
        for cid in self._initially_labeled():
            self.pool.label(cid, self._reference_label(cid), None, round=-1)
        if self._pending_state is not None:
            self._restore_pool(self._pending_state)
            self._pending_state = None
        used = [cid for cid in self.cases if any(cid in ids for ids in self.split_ids.values())]
        self._index = {cid: i for i, cid in enumerate(used)}
        items = [self.cases[cid].to_item() for cid in used]
        missing = [i["case_id"] for i in items if "label" not in i]
        if missing:
            raise DataError(f"{self.hparams.root}: cases without a reference label: {missing}")
        # one instance: MONAI inverts only with the very transform objects that were applied
        self._prep = self._preprocessing()
        try:
            if self.hparams.cache_dir is None:
                self._cache = CacheDataset(items, self._prep, progress=False, num_workers=0)
            else:
                # cached MetaTensors keep their applied_operations with the instance ids reset
                # (reset_ops_id), so Invertd accepts them with ``self._prep``
                on_disk = PersistentDataset(
                    items, self._prep, cache_dir=self.hparams.cache_dir,
                    hash_func=CacheKey(self._preprocessing_settings()), track_meta=True,
                )
                with cache_safe_globals():
                    self._cache = CacheDataset(
                        on_disk, transform=None, progress=False, num_workers=0
                    )
        except MemoryError as e:
            raise DataError(
                f"{self.hparams.root}: not enough memory to preprocess the {len(items)} cases "
                "in memory (smaller data.pixdim, crop_foreground, or fewer cases)"
            ) from e
        self._check_network_input(used)

    def _validate(self, case_id: str) -> None:
        """:func:`validate_case`, remembered in ``<cache_dir>/validated`` once passed."""
        case, values = self.cases[case_id], list(self.hparams.labels.values())
        limit = int(self.hparams.max_voxels)
        if self.hparams.cache_dir is None:
            validate_case(case, values, max_voxels=limit)
            return
        markers = ValidationMarkers(
            Path(self.hparams.cache_dir) / "validated",
            {"label_values": values, "max_voxels": limit},
        )
        markers.validate(case, label_values=values, max_voxels=limit)

    def _check_network_input(self, case_ids: Sequence[str]) -> None:
        """Refuse a case whose preprocessed image (what the network sees) is not finite.

        The file checks catch NaN/inf in the files and float32 overflow of the scaled values;
        this catches what preprocessing itself makes non-finite (e.g. a z-score over values
        so large that their variance overflows float32).
        """
        for cid in case_ids:
            image = self._cache[self._index[cid]]["image"]
            if not bool(torch.isfinite(image).all()):
                n = int((~torch.isfinite(image)).sum())
                files = ", ".join(self.cases[cid].images)
                raise DataError(
                    f"case {cid}: {n} non-finite voxels after preprocessing (z-score of float32 "
                    f"values), from {files}: intensities out of range?"
                )

    def _resolve_splits(self, cases: Sequence[Case]) -> dict[str, list[str]]:
        splits: dict[str, list[str]] = {}
        for c in cases:
            if c.split is not None:
                splits.setdefault(c.split, []).append(c.case_id)
        for name, ids in (self.hparams.splits or {}).items():
            unknown = sorted(set(ids) - set(self.cases))
            if unknown:
                raise DataError(f"split {name!r} names unknown case ids: {unknown}")
            splits[name] = list(ids)
        need = ("source", "source_test") if self.hparams.stage == "source" else ("pool", "test")
        for name in need:
            if not splits.get(name):
                raise DataError(f"{self.hparams.root}: split {name!r} is empty or missing")
        self._hold_out_validation(splits)
        self._check_disjoint(splits)
        for name in self.hparams.extra_test_splits or []:
            if name in RESERVED_PREFIXES or name == self.test_split():
                raise DataError(
                    f"data.extra_test_splits: {name!r} is not allowed (the test split is scored "
                    f"anyway; {list(RESERVED_PREFIXES)} are metric prefixes already)"
                )
            if not splits.get(name):
                raise DataError(f"data.extra_test_splits: split {name!r} is empty or missing")
        return splits

    def _hold_out_validation(self, splits: dict[str, list[str]]) -> None:
        """Check ``val_split``; for a fraction, move that share of the training split to ``val``."""
        val = self.validation_setting()
        if val is None:
            return
        if isinstance(val, str):
            if val == self.test_split():
                raise DataError(
                    f"data.val_split {val!r} is the test split of the {self.hparams.stage} stage: "
                    "validate on another split, a held-out fraction, or none"
                )
            if not splits.get(val):
                raise DataError(f"data.val_split: split {val!r} is empty or missing")
            return
        train = "source" if self.hparams.stage == "source" else "pool"
        ids = splits[train]
        n = max(1, round(val * len(ids)))
        if not 0 < val < 1 or n >= len(ids):
            raise DataError(
                f"data.val_split {val}: a held-out fraction must be in (0, 1) and leave a case "
                f"of the {len(ids)} in split {train!r}"
            )
        if "val" in splits:
            raise DataError("data.val_split is a fraction but a split named 'val' exists already")
        held = set(random.Random(0).sample(sorted(ids), n))
        splits["val"] = [cid for cid in ids if cid in held]
        splits[train] = [cid for cid in ids if cid not in held]

    def _check_disjoint(self, splits: dict[str, list[str]]) -> None:
        """Refuse a case in two of the stage's training, validation and test splits."""
        train = "source" if self.hparams.stage == "source" else "pool"
        names = [n for n in (train, self.validation_split(), self.test_split()) if n]
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                both = sorted(set(splits.get(a, [])) & set(splits.get(b, [])))
                if both:
                    raise DataError(f"cases in both split {a!r} and split {b!r}: {both}")

    def validation_setting(self) -> str | float | None:
        """``val_split`` as configured: None, a split name or a fraction (``"none"`` is None)."""
        val = self.hparams.val_split
        if isinstance(val, str) and val.strip().lower() in ("none", "null", ""):
            return None
        if isinstance(val, str):
            try:
                return float(val)
            except ValueError:
                return val
        return None if val is None else float(val)

    def _initially_labeled(self) -> list[str]:
        if self.hparams.stage == "source":
            return []  # the source stage trains on ``train_pool`` (every source case)
        if self.hparams.label_all:
            return list(self.split_ids["pool"])
        return list(self.hparams.initial_labeled or [])

    def _preprocessing(self, with_label: bool = True) -> Any:
        return preprocessing(
            list(self.hparams.labels.values()),
            with_label=with_label,
            pixdim=self.hparams.pixdim,
            crop_foreground=self.hparams.crop_foreground,
            divisible_by=self.hparams.divisible_by,
        )

    def _preprocessing_settings(self) -> dict[str, Any]:
        return preprocessing_settings(
            list(self.hparams.labels.values()),
            with_label=True,
            pixdim=self.hparams.pixdim,
            crop_foreground=self.hparams.crop_foreground,
            divisible_by=self.hparams.divisible_by,
        ) | {"modalities": list(self.hparams.modalities)}

    def _reference_label(self, case_id: str) -> str:
        label = self.cases[case_id].label
        if label is None:
            raise DataError(f"case {case_id} has no reference label")
        return label

    # ------------------------------------------------------------------ pool API
    @property
    def train_pool(self) -> ActivePool:
        """The pool training draws from (the source set in the ``source`` stage)."""
        if self.pool is None:
            raise RuntimeError("call setup() first")
        if self.hparams.stage == "source":
            return self._source_pool
        return self.pool

    def unlabeled_ids(self) -> list[str]:
        """Ids of the target pool cases still unlabeled, in pool order."""
        return self.pool.unlabeled if self.pool is not None else []

    def label(
        self, case_id: str, label_path: str, modality: str | None, round: int, epoch: int
    ) -> None:
        """Move ``case_id`` to the labeled pool with the mask the oracle delivered."""
        assert self.pool is not None, "call setup() first"
        self.pool.label(
            case_id, str(label_path), modality, round=round, epoch=epoch,
            label_sha256=content_sha256([label_path]),
            images_sha256=content_sha256(self.cases[case_id].images),
        )

    def _check_labeled_content(self) -> None:
        """Refuse a restored pool whose labels or images changed since they were accepted.

        Compares the content fingerprints recorded by :meth:`label` with the files now on disk
        (a resume against another dataset with the same ids, or a label file replaced after it
        was accepted). Annotations without fingerprints (older states) are not checked.

        Raises:
            DataError: one line naming the case and the file(s) whose content changed.
        """
        assert self.pool is not None
        for cid in self.pool.labeled:
            a = self.pool.annotation(cid)
            if a.label_sha256 is not None:
                if not Path(a.label_path).is_file():
                    raise DataError(f"{a.label_path}: label of case {cid} accepted earlier is gone")
                if content_sha256([a.label_path]) != a.label_sha256:
                    raise DataError(
                        f"{a.label_path}: content changed since case {cid} was labeled (round "
                        f"{a.round}); restore that file or start a new run"
                    )
            if a.images_sha256 is not None and cid in self.cases:
                if content_sha256(self.cases[cid].images) != a.images_sha256:
                    raise DataError(
                        f"case {cid}: images differ from those it was labeled on "
                        f"({', '.join(self.cases[cid].images)}); is this the run's dataset?"
                    )

    def pool_view(self) -> "DataModulePoolView":  # noqa: F821 - imported in the body
        """The narrow view the active-learning side uses (:class:`~lightning_ada.active.pool_view.PoolView`)."""
        from lightning_ada.data.pool_view import DataModulePoolView

        return DataModulePoolView(self)

    def case(self, case_id: str) -> Case:
        """The :class:`Case` record of ``case_id``."""
        return self.cases[case_id]

    def item(self, case_id: str) -> dict[str, Any]:
        """The preprocessed item of a case: ``image`` ``(C, H, W, D)``, ``label`` ``(1, H, W, D)``."""
        return self._only_input(self._cache[self._index[case_id]])

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

    def _training_item(self, case_id: str) -> dict[str, Any]:
        """Image with the delivered annotation (which may differ from the reference mask)."""
        annotation = self.train_pool.annotation(case_id)
        item = self._annotated_item(case_id, annotation.label_path)
        dominant = self.hparams.train_input == "dominant_only"
        return self._only_input(item, annotation.modality if dominant else None)

    # ------------------------------------------------------------------ pseudo-labels
    def set_pseudo_labels(
        self, records: Sequence[PseudoLabel], ratio: float,
        labels: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Replace the pseudo-labelled set (a self-training pass); epochs draw from it.

        Args:
            records: one per case, most certain first; each a target-pool case.
            ratio: share of each training epoch drawn from them (while labeled cases exist).
            labels: the label tensors ``(1, H, W, D)`` already in memory, by case id.

        Raises:
            DataError: a record names a case outside the target pool.
        """
        pool = self.pool.case_ids if self.pool is not None else []
        outside = sorted({r.case_id for r in records} - set(pool))
        if outside:
            raise DataError(f"pseudo-labels for cases outside the target pool: {outside}")
        self.pseudo.replace(records, ratio, labels)

    def pseudo_labelled_ids(self) -> list[str]:
        """Ids of the pseudo-labelled cases training uses: those not labeled since the pass."""
        if not len(self.pseudo):
            return []
        labeled = set(self.pool.labeled) if self.pool is not None else set()
        return [cid for cid in self.pseudo.case_ids if cid not in labeled]

    def _pseudo_item(self, case_id: str) -> dict[str, Any]:
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

    def _annotated_item(self, case_id: str, path: str) -> dict[str, Any]:
        if path == self.cases[case_id].label:
            return self.item(case_id)
        key = (case_id, path)
        if key not in self._annotated:
            validate_label_file(
                path, self.cases[case_id].images[0], list(self.hparams.labels.values()),
                allow_empty=True, max_voxels=int(self.hparams.max_voxels),
            )
            entry = self.cases[case_id].to_item() | {"label": path}
            self._annotated[key] = self._prep(entry)
        return self._annotated[key]

    # ------------------------------------------------------------------ loaders
    def epoch_seed(self) -> int:
        """Seed of this epoch's sampling and augmentation: a function of (run seed, epoch) only.

        With the loader rebuilt every epoch (``trainer.reload_dataloaders_every_n_epochs: 1``)
        a resumed run draws exactly the batches an uninterrupted run would have drawn.
        """
        base = int(os.environ.get("PL_GLOBAL_SEED", 0))
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return (base * 1_000_003 + epoch * 7_919) % (2**31 - 1)

    def train_dataloader(self) -> DataLoader:
        """Fixed-length epochs sampled from the *current* labeled set, seeded per epoch."""
        seed = self.epoch_seed()
        augmentation = training_augmentation(self.hparams.patch_size, self.hparams.augment)
        contrast = self.tumour_contrast
        length = self.hparams.iterations_per_epoch * self.hparams.batch_size
        epoch = _LabeledEpoch(
            self, augmentation, length,
            contrast=contrast.transform(self) if contrast is not None else None,
            contrast_pseudo=contrast is not None and contrast.on_pseudo_labels,
            offset=random.Random(seed).randrange(max(1, len(self.pseudo))),
        )
        epoch.set_random_state(seed)
        return _PreparingLoader(
            epoch,
            batch_size=self.hparams.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            num_workers=self.hparams.num_workers,
            worker_init_fn=_seed_worker,
            collate_fn=list_data_collate,
            persistent_workers=False,
        )

    def _eval_loader(self, split: str) -> DataLoader:
        subset = [self.item(cid) for cid in self.split_ids[split]]
        return DataLoader(subset, batch_size=1, num_workers=0, collate_fn=list_data_collate)

    def test_split(self) -> str:
        """The test split of the current stage: ``source_test`` (source) or ``test`` (target)."""
        return "source_test" if self.hparams.stage == "source" else "test"

    def eval_split(self) -> str:
        """The split ``test`` scores first (:meth:`test_split`; kept for older callers)."""
        return self.test_split()

    def validation_split(self) -> str | None:
        """The split validation scores: None (no validation), a configured split, or ``val``."""
        val = self.validation_setting()
        return "val" if isinstance(val, float) else val

    def test_split_names(self) -> list[str]:
        """The splits ``test`` scores, in dataloader order: the test split, then the extras."""
        return [self.test_split(), *(self.hparams.extra_test_splits or [])]

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

    def invert(self, prediction: torch.Tensor, case_id: str) -> torch.Tensor:
        """Map a class-index prediction ``(1, H, W, D)`` back to the case's original geometry.

        Returns a MetaTensor carrying the original affine, with on-disk label values
        (:func:`~lightning_ada.data.transforms.invert_prediction`).
        """
        image = self.item(case_id)["image"]
        return invert_prediction(prediction, image, self._prep, list(self.hparams.labels.values()))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The pool state (labeled ids with their round, modality, label file and the content
        fingerprints of the label and the images) and the pseudo-labelled set (ids, teacher
        pass and step, file and its fingerprint, the epoch share)."""
        return {
            "pool": self.pool.state_dict() if self.pool is not None else self._pending_state,
            "pseudo": self.pseudo.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the pool state (before or after :meth:`setup`) and the pseudo-labelled set.

        Raises:
            DataError: a pseudo-label file of the state is missing or changed.
        """
        self.pseudo.load_state_dict(state_dict.get("pseudo"))
        state = state_dict.get("pool")
        if state is None:
            return
        if self.pool is None:
            self._pending_state = state
        else:
            self._restore_pool(state)

    def _restore_pool(self, state: dict[str, Any]) -> None:
        """Load a saved pool state and check the labeled files' content against it.

        Raises:
            DataError: the state labels cases this pool does not hold, or a label or image
                changed since it was accepted (:meth:`_check_labeled_content`).
        """
        assert self.pool is not None
        try:
            self.pool.load_state_dict(state)
        except ValueError as e:
            raise DataError(f"{self.hparams.root}: the saved pool state does not fit: {e}") from e
        self._check_labeled_content()
