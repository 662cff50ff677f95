"""MONAI transform chains: loading, nnU-Net-style preprocessing, patch sampling, augmentation.

Items are dicts with ``image`` (one path per modality, stacked to ``(C, H, W, D)``), optional
``label`` (one path, mapped to class indices ``(1, H, W, D)``) and ``case_id``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import monai
import torch
from monai import transforms as T

#: Bump when :func:`preprocessing` changes in a way its arguments do not show (a new transform,
#: another interpolation, ...): it is part of the key of the on-disk cache of preprocessed cases.
PREPROCESSING_VERSION = 1


def label_mapping(label_values: Sequence[int]) -> tuple[list[int], list[int]]:
    """On-disk label values -> class indices: background 0 stays 0, value ``v_k`` becomes ``k+1``."""
    orig = [0, *[int(v) for v in label_values]]
    return orig, list(range(len(orig)))


def _check_pixdim(pixdim: Sequence[float] | None) -> list[float] | None:
    if pixdim is None:
        return None
    values = [float(v) for v in pixdim]
    if len(values) != 3 or min(values) <= 0:
        raise ValueError(f"pixdim must be 3 positive spacings in mm, got {list(pixdim)}")
    return values


def preprocessing_settings(
    label_values: Sequence[int],
    with_label: bool = True,
    pixdim: Sequence[float] | None = None,
    crop_foreground: bool = False,
    divisible_by: int = 1,
) -> dict[str, Any]:
    """Everything that determines the output of :func:`preprocessing` for given input files.

    JSON-serialisable; the datamodule hashes it (with the files' fingerprints) into the key of
    its on-disk cache, so changing any setting, the chain or MONAI's version misses the cache.
    """
    chain = preprocessing(label_values, with_label, pixdim, crop_foreground, divisible_by)
    return {
        "version": PREPROCESSING_VERSION,
        "monai": monai.__version__,
        "chain": [type(t).__name__ for t in chain.transforms],
        "label_values": [int(v) for v in label_values],
        "with_label": bool(with_label),
        "pixdim": _check_pixdim(pixdim),
        "crop_foreground": bool(crop_foreground),
        "divisible_by": int(divisible_by),
    }


def preprocessing(
    label_values: Sequence[int],
    with_label: bool = True,
    pixdim: Sequence[float] | None = None,
    crop_foreground: bool = False,
    divisible_by: int = 1,
) -> T.Compose:
    """Deterministic chain (cacheable): load, orient, [crop, resample], z-score, map labels, pad.

    The nnU-Net recipe for MRI: crop to the non-zero (brain) box, resample image (bilinear) and
    label (nearest) to ``pixdim``, z-score each modality over its non-zero voxels, map the
    on-disk label values to class indices, pad to a multiple of ``divisible_by`` (zeros, i.e.
    background, in the image). Every spatial step is traced, so ``Invertd`` with this very
    instance maps a prediction back to the original grid and affine.

    Args:
        label_values: on-disk label values of the foreground classes, in class order.
        with_label: also load and map ``label``.
        pixdim: target spacing in mm, or None to keep the native grid.
        crop_foreground: crop to the bounding box of non-zero image voxels (brain / head).
        divisible_by: pad spatial size to a multiple of this (net strides).

    Returns:
        A ``Compose`` whose output ``image`` is ``(C, H, W, D)`` float32 z-scored inside the
        non-zero mask per channel, and ``label`` ``(1, H, W, D)`` class indices.
    """
    pixdim = _check_pixdim(pixdim)
    if divisible_by < 1:
        raise ValueError(f"divisible_by must be >= 1, got {divisible_by}")
    keys = ["image", "label"] if with_label else ["image"]
    modes = ["bilinear", "nearest"] if with_label else ["bilinear"]
    chain: list[T.Transform] = [
        T.LoadImaged(keys=keys, ensure_channel_first=True, image_only=True),
        T.EnsureTyped(keys=keys, dtype=None, track_meta=True),
        T.Orientationd(keys=keys, axcodes="RAS", labels=None),
    ]
    if crop_foreground:
        chain.append(T.CropForegroundd(keys=keys, source_key="image", allow_smaller=True))
    if pixdim is not None:
        chain.append(T.Spacingd(keys=keys, pixdim=tuple(pixdim), mode=modes))
    chain.append(T.NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True))
    chain.append(T.CastToTyped(keys="image", dtype="float32"))
    if with_label:
        orig, target = label_mapping(label_values)
        chain.append(T.MapLabelValued(keys="label", orig_labels=orig, target_labels=target))
        chain.append(T.CastToTyped(keys="label", dtype="int64"))
    if divisible_by > 1:
        chain.append(T.DivisiblePadd(keys=keys, k=divisible_by))
    return T.Compose(chain)


def training_augmentation(patch_size: Sequence[int], augment: bool = True) -> T.Compose:
    """Random chain applied on top of the cached items for training.

    Samples one patch of ``patch_size`` voxels (1 in 3 centred on foreground, as nnU-Net's
    33 % oversampling), then flips and intensity augmentation (brightness, contrast, gamma,
    noise) when ``augment``.
    """
    keys = ["image", "label"]
    chain: list[T.Transform] = [
        T.SpatialPadd(keys=keys, spatial_size=tuple(patch_size)),
        T.RandCropByPosNegLabeld(
            keys=keys,
            label_key="label",
            spatial_size=tuple(patch_size),
            pos=1,
            neg=2,
            num_samples=1,
            image_key="image",
            image_threshold=0.0,
            allow_smaller=True,
        ),
    ]
    if augment:
        chain += [
            T.RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
            T.RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
            T.RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
            T.RandScaleIntensityd(keys="image", factors=0.25, prob=0.3),
            T.RandShiftIntensityd(keys="image", offsets=0.2, prob=0.3),
            T.RandAdjustContrastd(keys="image", gamma=(0.7, 1.5), prob=0.3),
            T.RandGaussianNoised(keys="image", std=0.05, prob=0.15),
        ]
    return T.Compose(chain)


def invert_prediction(
    prediction: torch.Tensor, image: Any, chain: T.Compose, label_values: Sequence[int]
) -> Any:
    """Map a class-index prediction back to the original geometry and on-disk label values.

    Args:
        prediction: class indices ``(1, H, W, D)`` on the grid of ``image``.
        image: the preprocessed image ``(C, H, W, D)`` (a MetaTensor carrying the operations
            ``chain`` applied to it).
        chain: the very :func:`preprocessing` instance that produced ``image`` (MONAI inverts
            only with the transform objects that were applied).
        label_values: on-disk label values of the foreground classes, in class order.

    Returns:
        A MetaTensor ``(1, H0, W0, D0)`` on the original grid, with the original affine,
        holding on-disk label values (nearest-neighbour interpolation).
    """
    from monai.data import MetaTensor

    pred = MetaTensor(prediction.to(torch.float32), meta=dict(image.meta))
    # the inverse of the image's applied transforms (pad, resample, crop, orientation)
    inverted = T.Invertd(keys="pred", transform=chain, orig_keys="image", nearest_interp=True)(
        {"pred": pred, "image": image}
    )["pred"]
    orig, target = label_mapping(label_values)
    return T.MapLabelValue(orig_labels=target, target_labels=orig)(inverted)
