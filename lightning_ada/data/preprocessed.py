"""The preprocessed cases of a task, held in memory: what the network sees of each case.

:class:`PreprocessedCases` runs the preprocessing chain (:func:`~lightning_ada.data.transforms.
preprocessing`) once per case into a MONAI ``CacheDataset``, filled from an on-disk
``PersistentDataset`` when a cache folder is given (so later runs skip the work), refuses a case
whose network input is not finite, preprocesses delivered labels on demand, and maps predictions
back to a case's original geometry with the very transforms that were applied.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
from monai.data import CacheDataset, PersistentDataset

from lightning_ada.cases import Case
from lightning_ada.data.cache import CacheKey, cache_safe_globals
from lightning_ada.data.transforms import invert_prediction, preprocessing, preprocessing_settings
from lightning_ada.data.validation import validate_label_file
from lightning_ada.errors import DataError


def cache_settings(
    label_values: Sequence[int],
    modalities: Sequence[str],
    pixdim: Sequence[float] | None = None,
    crop_foreground: bool = False,
    divisible_by: int = 8,
    zero_fill: bool = False,
) -> dict[str, Any]:
    """Everything the preprocessed output of a case depends on besides its files (the disk
    cache's key, JSON-friendly): the chain's settings and the modalities."""
    settings = dict(pixdim=pixdim, crop_foreground=crop_foreground, divisible_by=divisible_by,
                    zero_fill=zero_fill)
    return preprocessing_settings(list(label_values), with_label=True, **settings) | {
        "modalities": list(modalities)
    }


class PreprocessedCases:
    """Preprocessed items ``{"image": (C, H, W, D), "label": (1, H, W, D), ...}`` by case id.

    Args:
        cases: the case records, by id.
        ids: the cases to preprocess (each with a reference label, but ``unlabelled_ok``).
        label_values: on-disk foreground label values, in class order.
        modalities: modality names in channel order (part of the disk-cache key).
        pixdim: resample to this spacing in mm (None keeps the native grid).
        crop_foreground: crop each case to its non-zero box.
        divisible_by: pad volumes to a multiple of this.
        cache_dir: the on-disk cache folder, or None (preprocess in memory every time).
        max_voxels: largest number of voxels accepted in a delivered label file.
        source: what errors name as the dataset (e.g. its root folder).
        unlabelled_ok: ids that may come without a reference label (their item has no
            ``label``): the target pool of real data, labelled by the oracle.

    Raises:
        DataError: a case without a reference label (other than ``unlabelled_ok``: the
            target pool, whose labels come from the oracle), not enough memory, or a case whose
            preprocessed image is not finite.
    """

    def __init__(
        self,
        cases: Mapping[str, Case],
        ids: Sequence[str],
        label_values: Sequence[int],
        modalities: Sequence[str],
        pixdim: Sequence[float] | None = None,
        crop_foreground: bool = False,
        divisible_by: int = 8,
        cache_dir: str | None = None,
        max_voxels: int | None = None,
        source: str = "the dataset",
        unlabelled_ok: Collection[str] = (),
    ) -> None:
        self.cases, self.label_values, self.max_voxels = cases, list(label_values), max_voxels
        self.index = {cid: i for i, cid in enumerate(ids)}
        items = [cases[cid].to_item() for cid in ids]
        missing = [i["case_id"] for i in items if "label" not in i and i["case_id"] not in unlabelled_ok]
        if missing:
            raise DataError(f"{source}: cases without a reference label: {missing}")
        zero_fill = any(cases[cid].missing for cid in ids)  # cases without a modality
        settings = dict(pixdim=pixdim, crop_foreground=crop_foreground, divisible_by=divisible_by,
                        zero_fill=zero_fill)
        # one instance: MONAI inverts only with the very transform objects that were applied
        self.transform = preprocessing(self.label_values, with_label=True, **settings)
        #: what the preprocessed output depends on (:func:`cache_settings`)
        self.settings = cache_settings(self.label_values, modalities, **settings)
        try:
            if cache_dir is None:
                self.cache = CacheDataset(items, self.transform, progress=False, num_workers=0)
            else:
                # cached MetaTensors keep their applied_operations with the instance ids reset
                # (reset_ops_id), so Invertd accepts them with ``self.transform``
                on_disk = PersistentDataset(
                    items, self.transform, cache_dir=cache_dir, hash_func=CacheKey(self.settings),
                    track_meta=True,
                )
                with cache_safe_globals():
                    self.cache = CacheDataset(on_disk, transform=None, progress=False, num_workers=0)
        except MemoryError as e:
            raise DataError(
                f"{source}: not enough memory to preprocess the {len(items)} cases in memory "
                "(smaller data.pixdim, crop_foreground, or fewer cases)"
            ) from e
        self._annotated: dict[tuple[str, str], dict[str, Any]] = {}
        self.check_finite()

    def item(self, case_id: str) -> dict[str, Any]:
        """The preprocessed item of a case with its reference label (none for an unlabelled
        pool case)."""
        return self.cache[self.index[case_id]]

    def check_finite(self) -> None:
        """Refuse a case whose preprocessed image (what the network sees) is not finite.

        The file checks catch NaN/inf in the files and float32 overflow of the scaled values;
        this catches what preprocessing itself makes non-finite (e.g. a z-score over values so
        large that their variance overflows float32).
        """
        for cid in self.index:
            image = self.item(cid)["image"]
            if not bool(torch.isfinite(image).all()):
                n = int((~torch.isfinite(image)).sum())
                files = ", ".join(self.cases[cid].present_images)
                raise DataError(
                    f"case {cid}: {n} non-finite voxels after preprocessing (z-score of float32 "
                    f"values), from {files}: intensities out of range?"
                )

    def with_label(self, case_id: str, path: str) -> dict[str, Any]:
        """The item of a case with the label file ``path`` (an oracle's delivery) instead of the
        reference, validated and preprocessed once; ``NOT_ANNOTATED`` voxels of a partial label
        keep that value (nearest-neighbour resampling; the label mapping leaves it alone).

        Raises:
            DataError: the file does not fit the case (geometry, values, size).
        """
        if path == self.cases[case_id].label:
            return self.item(case_id)
        key = (case_id, path)
        if key not in self._annotated:
            limit = {} if self.max_voxels is None else {"max_voxels": int(self.max_voxels)}
            validate_label_file(path, self.cases[case_id].reference_image, self.label_values,
                                allow_empty=True, allow_not_annotated=True, **limit)
            self._annotated[key] = self.transform(self.cases[case_id].to_item() | {"label": path})
        return self._annotated[key]

    def invert(self, prediction: torch.Tensor, case_id: str) -> torch.Tensor:
        """A class-index prediction ``(1, H, W, D)`` in the case's original geometry, with
        on-disk label values (a MetaTensor with the original affine)."""
        image = self.item(case_id)["image"]
        return invert_prediction(prediction, image, self.transform, self.label_values)
