"""MONAI transform chains: loading, nnU-Net-style preprocessing, patch sampling, augmentation.

Items are dicts with ``image`` (one path per modality, stacked to ``(C, H, W, D)``), optional
``label`` (one path, mapped to class indices ``(1, H, W, D)``) and ``case_id``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import monai
import torch
from monai import transforms as T

#: Bump when :func:`preprocessing` changes in a way its arguments do not show (a new transform,
#: another interpolation, ...): it is part of the key of the on-disk cache of preprocessed cases.
PREPROCESSING_VERSION = 2

# MONAI's LoadImage builds every registered reader, and with pydicom installed (the MONAI Label
# extra) its GPU DICOM reader says twice per LoadImage that nvImageCodec is absent. The library
# reads NIfTI with nibabel: that message says nothing about its runs.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin")


#: Smallest fraction of a channel's voxels that must hold its border's most frequent value for
#: that value to count as a constant background (BraTS-sized scans: 75-85 % background).
CONSTANT_BACKGROUND_FRACTION = 0.2


def constant_background(channel: torch.Tensor, min_fraction: float = CONSTANT_BACKGROUND_FRACTION) -> float | None:
    """The constant value filling the background of one channel, or None.

    The candidate is the most frequent value among the voxels of the six faces of the volume
    (the outside of the head in a brain scan); it is the background when it also holds at least
    ``min_fraction`` of all voxels *exactly* (noise-free), as in scans distributed already
    z-scored (background at ``-mean/std``) or with an offset.

    Args:
        channel: one modality ``(H, W, D)``.
        min_fraction: smallest fraction of the voxels equal to the candidate.

    Returns:
        The background value (0.0 for the usual zero background), or None when the border holds
        no such constant value (noisy or tight-cropped scans).
    """
    if channel.ndim != 3 or min(channel.shape) < 2:
        return None
    faces = torch.cat([
        channel[[0, -1]].reshape(-1), channel[:, [0, -1]].reshape(-1),
        channel[:, :, [0, -1]].reshape(-1),
    ])
    values, counts = torch.unique(faces, return_counts=True)
    candidate = values[counts.argmax()]
    if float((channel == candidate).sum()) < min_fraction * channel.numel():
        return None
    return float(candidate)


class ConstantBackgroundToZerod(T.MapTransform):
    """Set a constant non-zero background (:func:`constant_background`) to 0, per channel.

    After it, the nnU-Net steps that take the non-zero voxels as the head (crop to the
    foreground box, z-score over the non-zero mask) see a pre-normalised scan as they see a
    raw one: its brain voxels are z-scored over the brain only, on the scale of the same scan
    stored with a zero background (an affine intensity change cancels in the z-score). A
    channel whose background is already 0, or not constant, is returned untouched. Each case
    handled is reported once per process with a :class:`UserWarning`.
    """

    def __init__(self, keys: Any, min_fraction: float = CONSTANT_BACKGROUND_FRACTION) -> None:
        super().__init__(keys)
        self.min_fraction = float(min_fraction)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            found = [
                (c, value) for c in range(image.shape[0])
                if (value := constant_background(image[c], self.min_fraction)) not in (None, 0.0)
            ]
            if not found:
                continue
            image = image.clone()
            for c, value in found:
                image[c][image[c] == value] = 0
            d[key] = image
            channels = ", ".join(f"channel {c} = {value:.4g}" for c, value in found)
            warnings.warn(
                f"case {d.get('case_id', '?')}: constant non-zero background ({channels}; a "
                "pre-normalised scan?) treated as background: set to 0 before cropping and "
                "the z-score over the non-zero voxels",
                UserWarning, stacklevel=2,
            )
        return d


class ZeroChannelsd(T.MapTransform):
    """Zero the channels an item lists in ``zero_channels`` (modalities the case lacks, loaded
    from a stand-in file of the case for their grid: :meth:`~lightning_ada.cases.Case.to_item`),
    then drop that key. An item without it is returned unchanged."""

    def __init__(self, keys: Any, channels_key: str = "zero_channels") -> None:
        super().__init__(keys)
        self.channels_key = channels_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        channels = d.pop(self.channels_key, None)
        if channels:
            for key in self.key_iterator(d):
                image = d[key].clone()
                image[[int(c) for c in channels]] = 0
                d[key] = image
        return d


class RandModalityDropoutd(T.RandomizableTransform, T.MapTransform):
    """Modality dropout: with probability ``prob`` zero one channel, drawn among the channels
    that are not all zeros already (never the last one left), as a missing modality is
    zero-filled at inference (``data.missing_modality zero_fill``): a model trained so learns
    to segment without any one of them."""

    def __init__(self, keys: Any, prob: float = 0.25) -> None:
        T.MapTransform.__init__(self, keys)
        T.RandomizableTransform.__init__(self, prob)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        choice = int(self.R.randint(1 << 30))  # drawn every time: the stream does not depend on the data
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            image = d[key]
            alive = [c for c in range(image.shape[0]) if bool(image[c].any())]
            if len(alive) < 2:
                continue
            image = image.clone()
            image[alive[choice % len(alive)]] = 0
            d[key] = image
        return d


def nonzero(image: torch.Tensor) -> torch.Tensor:
    """The head mask of the crop: non-zero voxels (MONAI's default keeps only positive ones,
    which drops the below-mean half of a z-scored brain)."""
    return image != 0


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
    zero_fill: bool = False,
) -> dict[str, Any]:
    """Everything that determines the output of :func:`preprocessing` for given input files.

    JSON-serialisable; the datamodule hashes it (with the files' fingerprints) into the key of
    its on-disk cache, so changing any setting, the chain or MONAI's version misses the cache.
    """
    chain = preprocessing(label_values, with_label, pixdim, crop_foreground, divisible_by, zero_fill)
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
    zero_fill: bool = False,
) -> T.Compose:
    """Deterministic chain (cacheable): load, orient, [crop, resample], z-score, map labels, pad.

    A constant non-zero background (scans distributed already z-scored) is first set to 0
    (:class:`ConstantBackgroundToZerod`, with a warning). Then the nnU-Net recipe for MRI: crop to the non-zero (brain) box, resample image (bilinear) and
    label (nearest) to ``pixdim``, z-score each modality over its non-zero voxels, map the
    on-disk label values to class indices, pad to a multiple of ``divisible_by`` (zeros, i.e.
    background, in the image). Every spatial step is traced, so ``Invertd`` with this very
    instance maps a prediction back to the original grid and affine.

    Args:
        label_values: on-disk label values of the foreground classes, in class order.
        with_label: also load and map ``label`` (an item without one passes: an unlabelled
            pool case of real data).
        pixdim: target spacing in mm, or None to keep the native grid.
        crop_foreground: crop to the bounding box of the voxels non-zero in any channel (brain /
            head).
        divisible_by: pad spatial size to a multiple of this (net strides).
        zero_fill: zero the channels an item lists in ``zero_channels`` right after loading
            (:class:`ZeroChannelsd`: modalities a case lacks); only in chains that need it, so
            the others (and their cache keys) are unchanged.

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
        T.LoadImaged(keys=keys, ensure_channel_first=True, image_only=True, allow_missing_keys=True),
        T.EnsureTyped(keys=keys, dtype=None, track_meta=True, allow_missing_keys=True),
        *([ZeroChannelsd(keys="image")] if zero_fill else []),
        ConstantBackgroundToZerod(keys="image"),
        T.Orientationd(keys=keys, axcodes="RAS", labels=None, allow_missing_keys=True),
    ]
    if crop_foreground:
        chain.append(
            T.CropForegroundd(keys=keys, source_key="image", select_fn=nonzero, allow_smaller=True,
                              allow_missing_keys=True)
        )
    if pixdim is not None:
        chain.append(T.Spacingd(keys=keys, pixdim=tuple(pixdim), mode=modes, allow_missing_keys=True))
    chain.append(T.NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True))
    chain.append(T.CastToTyped(keys="image", dtype="float32"))
    if with_label:
        orig, target = label_mapping(label_values)
        chain.append(T.MapLabelValued(keys="label", orig_labels=orig, target_labels=target,
                                      allow_missing_keys=True))
        chain.append(T.CastToTyped(keys="label", dtype="int64", allow_missing_keys=True))
    if divisible_by > 1:
        chain.append(T.DivisiblePadd(keys=keys, k=divisible_by, allow_missing_keys=True))
    return T.Compose(chain)


def training_augmentation(
    patch_size: Sequence[int], augment: bool = True, tumour_contrast: T.Transform | None = None,
    partial: bool = False, modality_dropout: float = 0.0,
) -> T.Compose:
    """Random chain applied on top of the cached items for training.

    Samples one patch of ``patch_size`` voxels (1 in 3 centred on foreground, as nnU-Net's
    33 % oversampling), then flips and intensity augmentation (brightness, contrast, gamma,
    noise) when ``augment``. ``tumour_contrast`` (e.g. a
    :class:`~lightning_ada.augment.tumour_contrast.RandTumourContrastd`; off by default) first
    alters the whole case. ``partial``: the chain of a partially annotated item (its
    ``sampling`` map, :mod:`lightning_ada.data.partial_labels`): the patch is centred on an
    annotated voxel, on annotated foreground 1 time in 3, and the map is dropped after the crop.
    ``modality_dropout`` > 0 ends the chain with :class:`RandModalityDropoutd` (one channel
    zeroed with that probability); 0 leaves the chain (and its random streams) as it was.
    """
    keys = ["image", "label"]
    if partial:
        crop: list[T.Transform] = [
            T.SpatialPadd(keys=[*keys, "sampling"], spatial_size=tuple(patch_size)),
            T.RandCropByLabelClassesd(
                keys=[*keys, "sampling"],
                label_key="sampling",
                spatial_size=tuple(patch_size),
                ratios=[0, 2, 1],  # unannotated, annotated background, annotated foreground
                num_classes=3,
                num_samples=1,
                allow_smaller=True,
                warn=False,
            ),
            T.DeleteItemsd(keys="sampling"),
        ]
    else:
        crop = [
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
    chain: list[T.Transform] = list(crop)
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
    if modality_dropout > 0:  # last: a dropped channel is exactly 0, as a zero-filled one
        chain.append(RandModalityDropoutd(keys="image", prob=modality_dropout))
    if tumour_contrast is not None:  # on the whole case, before the patch is cut
        chain.insert(0, tumour_contrast)
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
