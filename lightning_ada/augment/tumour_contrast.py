"""Tumour-contrast augmentation: rescale the tumour's intensities per modality (GBA, seed 001).

ALGORITHMS.md section 11. Two MONAI dictionary transforms, random (seeded through MONAI's
``set_random_state``, so a ``Compose`` seeds them with the rest of its chain) and applied with a
probability:

- :class:`RandTumourContrastd`: naive tumour intensity rescaling (11.1). Every tumour voxel of
  every modality moves away from (factor > 1) or towards (factor < 1) a reference intensity:
  ``x' = ref + factor * (x - ref)``. With images scaled to ``[-1, 1]`` and ``ref = -1`` this is
  exactly the paper's ``u = (x + 1) / 2; u' = factor * u; x' = 2 u' - 1``.
- :class:`RandBlendedTumourContrastd`: the same rescaled tumour blended into the original image
  by the weighting mask ``W = normalise_[0,1](G_sigma * dilate_r(M))`` computed per axial slice
  (11.2, lightning_ada's "blended naive" default, ``x_gen = x'``, ``x_bg = x``):
  ``x_GBA = W * x' + (1 - W) * x``. The change ``W * (x' - x)`` is therefore zero outside the
  tumour and tapers where ``W < 1`` (small tumours, tumour borders).

- :class:`RandGBATumourContrastd`: GBA proper (11.2): each axial slice with tumour of the
  naive-rescaled image ``x'`` is harmonised by a single-image SinGAN
  (:mod:`lightning_ada.augment.singan`) and blended in by the same ``W``:
  ``x_GBA = W * SinGAN(x') + (1 - W) * x'``. Voxels where ``W = 0`` stay bit-identical.

:class:`TumourContrast` is the datamodule option (``data.tumour_contrast``) that builds them
(GBA proper with ``harmoniser: SinGANHarmoniser``; off by default).

The naive and blended transforms write only tumour voxels: every other voxel of the output is
bit-identical to the input. GBA proper also writes the voxels around the tumour where ``W > 0``
(the dilated mask, widened by the Gaussian's reach). The label is never changed, and factors of
exactly 1 return the input voxels unchanged (GBA proper included: nothing to harmonise).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from functools import partial
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from scipy import ndimage

from lightning_ada.augment.singan import SinGAN, SinGANHarmoniser
from lightning_ada.errors import NoTrainingCase

#: The factor set of the authors' public notebook (one factor per augmented copy).
NOTEBOOK_FACTORS = (0.5, 0.8, 1.5)


def tumour_mask(
    label: torch.Tensor | np.ndarray, classes: Sequence[int] | None = None
) -> np.ndarray:
    """Boolean tumour mask ``(H, W, D)`` from a class-index label ``(1, H, W, D)`` or ``(H, W, D)``.

    Args:
        label: class indices (0 = background).
        classes: the class indices that make up the tumour; None = every foreground class.
    """
    lab = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    if lab.ndim == 4:
        if lab.shape[0] != 1:
            raise ValueError(f"label must be (1, H, W, D) or (H, W, D), got shape {lab.shape}")
        lab = lab[0]
    if lab.ndim != 3:
        raise ValueError(f"label must be (1, H, W, D) or (H, W, D), got shape {lab.shape}")
    if classes is None:
        return lab > 0
    return np.isin(lab, np.asarray(list(classes), dtype=lab.dtype))


def blend_weights(
    mask: np.ndarray, dilation_radius: int = 7, sigma: float = 5.0, axis: int = 2
) -> np.ndarray:
    """Weighting mask ``W = normalise_[0,1](G_sigma * dilate_r(M))`` per slice (ALGORITHMS 11.2).

    Each slice along ``axis`` (the axial one: ``D`` for RAS-oriented ``(H, W, D)`` volumes) that
    contains tumour is dilated by a disk of ``dilation_radius`` voxels, smoothed by a 2-D
    Gaussian of ``sigma`` voxels (SciPy's ``gaussian_filter``, truncated at 4 sigma,
    reflecting borders) and min-max normalised over the slice; slices without tumour get 0.
    Only the in-plane box of the tumour plus the reach of both filters is computed; the result
    equals the computation on whole slices.

    Args:
        mask: boolean tumour mask ``(H, W, D)``.
        dilation_radius: disk radius r in voxels (0: no dilation).
        sigma: Gaussian standard deviation in voxels (0: no smoothing).
        axis: spatial axis of the slices (0, 1 or 2).

    Returns:
        ``W`` ``(H, W, D)`` float32 in ``[0, 1]``.
    """
    if mask.ndim != 3:
        raise ValueError(f"mask must be (H, W, D), got shape {mask.shape}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    if dilation_radius < 0 or sigma < 0:
        raise ValueError(f"dilation_radius and sigma must be >= 0, got {dilation_radius}, {sigma}")
    m = np.moveaxis(mask.astype(bool), axis, 2)  # slices along the last axis
    weights = np.zeros(m.shape, dtype=np.float32)
    slices = np.flatnonzero(m.any(axis=(0, 1)))
    if slices.size == 0:
        return np.moveaxis(weights, 2, axis)
    reach = int(dilation_radius) + int(4.0 * sigma + 0.5) + 1  # dilation + Gaussian kernel radius
    rows = np.flatnonzero(m[:, :, slices].any(axis=(1, 2)))
    cols = np.flatnonzero(m[:, :, slices].any(axis=(0, 2)))
    r0, r1 = max(0, rows[0] - reach), min(m.shape[0], rows[-1] + reach + 1)
    c0, c1 = max(0, cols[0] - reach), min(m.shape[1], cols[-1] + reach + 1)
    block = m[r0:r1, c0:c1][:, :, slices]
    if dilation_radius > 0:
        yy, xx = np.mgrid[
            -dilation_radius : dilation_radius + 1, -dilation_radius : dilation_radius + 1
        ]
        disk = (yy**2 + xx**2) <= dilation_radius**2
        block = ndimage.binary_dilation(block, structure=disk[:, :, None])
    smooth = block.astype(np.float64)
    if sigma > 0:
        smooth = ndimage.gaussian_filter(smooth, sigma=(sigma, sigma, 0.0), mode="reflect")
    # min-max per slice; the minimum of a whole slice is that of the box (0 unless the box is
    # the whole slice), since the box reaches past every non-zero response of the filters
    lo = smooth.min(axis=(0, 1), keepdims=True)
    hi = smooth.max(axis=(0, 1), keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    normalised = np.where(hi > lo, (smooth - lo) / span, 1.0)  # a constant slice: weight 1
    weights[r0:r1, c0:c1, slices] = normalised.astype(np.float32)
    return np.moveaxis(weights, 2, axis)


class RandTumourContrastd(RandomizableTransform, MapTransform):
    """Naive tumour intensity rescaling (GBA's "naive tumor rescaling", ALGORITHMS 11.1).

    With probability ``prob``, draws one factor per modality (or one for all) from ``factors``
    (uniformly among the values) or ``factor_range`` (uniform on the interval), and sets every
    tumour voxel ``x`` of modality ``c`` to ``ref_c + factor_c * (x - ref_c)``. Images
    ``(C, H, W, D)``; the tumour is read from ``label`` ``(1, H, W, D)`` (class indices), which is
    returned unchanged. Voxels outside the tumour, and every voxel of a modality whose factor is
    1, are returned bit-identical. Cases without tumour pass through.

    Args:
        keys: image key(s) to alter (``(C, H, W, D)`` each).
        label_key: key of the class-index label that defines the tumour.
        prob: probability of altering a case.
        factors: set of factors to draw from (default, with ``factor_range`` None: the
            notebook's ``(0.5, 0.8, 1.5)``).
        factor_range: ``(low, high)`` interval to draw factors from instead of a set.
        per_modality: one factor per modality (the tumour's contrast varies differently in each
            modality, ALGORITHMS 11.2); False: one factor for all modalities.
        classes: class indices forming the tumour; None = every foreground class.
        reference: intensity that stays fixed, per modality: ``"min"`` = the modality's minimum
            over the image (the analogue of ``-1`` for ``[-1, 1]`` images, so that factors > 1
            always brighten and < 1 darken), or a number (``-1.0`` reproduces ALGORITHMS 11.1).
        allow_missing_keys: skip keys missing from the item.
    """

    backend: ClassVar[list[str]] = ["torch"]

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_key: str = "label",
        prob: float = 0.5,
        factors: Sequence[float] | None = None,
        factor_range: tuple[float, float] | None = None,
        per_modality: bool = True,
        classes: Sequence[int] | None = None,
        reference: Literal["min"] | float = "min",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        if factors is not None and factor_range is not None:
            raise ValueError("give either factors (a set) or factor_range (an interval), not both")
        if factor_range is not None:
            low, high = (float(v) for v in factor_range)
            if not 0.0 < low <= high:
                raise ValueError(
                    f"factor_range must be (low, high) with 0 < low <= high, got {factor_range}"
                )
            self.factor_range: tuple[float, float] | None = (low, high)
            self.factors: tuple[float, ...] = ()
        else:
            values = tuple(float(f) for f in (NOTEBOOK_FACTORS if factors is None else factors))
            if not values or min(values) <= 0.0:
                raise ValueError(
                    f"factors must be a non-empty set of positive numbers, got {factors}"
                )
            self.factor_range, self.factors = None, values
        if not (reference == "min" or isinstance(reference, (int, float))):
            raise ValueError(f"reference must be 'min' or a number, got {reference!r}")
        self.label_key = label_key
        self.per_modality = bool(per_modality)
        self.classes = None if classes is None else [int(c) for c in classes]
        self.reference = reference
        #: factors drawn by the last :meth:`randomize`, one per modality
        self.drawn: np.ndarray = np.ones(0)

    def randomize(self, data: Any = None, channels: int = 1) -> None:
        """Decide whether to alter this case and draw its factors (one per modality).

        Args:
            data: unused (MONAI's signature).
            channels: number of modalities of the image.
        """
        super().randomize(None)
        if not self._do_transform:
            return
        n = channels if self.per_modality else 1
        if self.factor_range is not None:
            drawn = self.R.uniform(self.factor_range[0], self.factor_range[1], size=n)
        else:
            drawn = np.asarray(self.factors)[self.R.randint(len(self.factors), size=n)]
        self.drawn = drawn if self.per_modality else np.repeat(drawn, channels)

    def weights(self, mask: np.ndarray) -> np.ndarray | None:
        """Per-voxel weight of the change ``(H, W, D)``; None = weight 1 (no blending)."""
        return None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        if self.label_key not in d:
            raise KeyError(
                f"{type(self).__name__}: the item has no {self.label_key!r} to find the tumour in "
                f"(keys: {sorted(map(str, d))}); apply it to labelled cases only"
            )
        first = d[keys[0]]
        if first.ndim != 4:
            raise ValueError(
                f"{type(self).__name__}: image must be (C, H, W, D), got shape {tuple(first.shape)}"
            )
        self.randomize(None, channels=int(first.shape[0]))
        if not self._do_transform:
            return d
        mask_np = tumour_mask(d[self.label_key], self.classes)
        if not mask_np.any():
            return d
        weights_np = self.weights(mask_np)
        for key in keys:
            d[key] = self._rescale(d[key], mask_np, weights_np)
        return d

    def _rescale(
        self, image: torch.Tensor, mask_np: np.ndarray, weights_np: np.ndarray | None
    ) -> torch.Tensor:
        if tuple(image.shape[1:]) != mask_np.shape:
            raise ValueError(
                f"{type(self).__name__}: image {tuple(image.shape)} and label {mask_np.shape} "
                "have different spatial shapes"
            )
        if len(self.drawn) != image.shape[0]:
            raise ValueError(
                f"{type(self).__name__}: all keys must have {len(self.drawn)} channels, got "
                f"{tuple(image.shape)}"
            )
        if np.all(self.drawn == 1.0):
            return image
        out = image.clone()  # keeps a MetaTensor's meta; written through a plain view below
        raw = out.as_tensor() if hasattr(out, "as_tensor") else out
        src = image.as_tensor() if hasattr(image, "as_tensor") else image
        mask = torch.as_tensor(mask_np, device=image.device)
        w = None if weights_np is None else torch.as_tensor(weights_np, device=image.device)[mask]
        for c, factor in enumerate(self.drawn):
            if factor == 1.0:
                continue  # exact identity (ref + 1 * (x - ref) need not round to x)
            channel = src[c]
            ref = channel.min() if self.reference == "min" else float(self.reference)
            x = channel[mask]
            change = (float(factor) - 1.0) * (x - ref)
            if w is not None:
                change = w.to(change.dtype) * change
            raw[c][mask] = x + change
        return out


class RandBlendedTumourContrastd(RandTumourContrastd):
    """Tumour rescaling blended by a smoothed dilated mask per axial slice (ALGORITHMS 11.2).

    ``x_GBA = W * x' + (1 - W) * x`` with ``x'`` the naive rescaling of
    :class:`RandTumourContrastd` and ``W`` from :func:`blend_weights` (disk dilation radius
    ``dilation_radius`` and Gaussian ``sigma``, both in voxels; SinGAN's harmonisation defaults
    7 and 5). Since ``x' = x`` outside the tumour, only tumour voxels change, by a fraction
    ``W`` of the naive change; voxels outside the tumour (hence outside the dilated mask) are
    bit-identical. All other arguments as :class:`RandTumourContrastd`.

    Args:
        dilation_radius: in-plane disk radius of the dilation, voxels.
        sigma: in-plane Gaussian standard deviation, voxels.
        axial_axis: spatial axis across the axial slices (2 = ``D`` in RAS ``(H, W, D)``).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_key: str = "label",
        prob: float = 0.5,
        factors: Sequence[float] | None = None,
        factor_range: tuple[float, float] | None = None,
        per_modality: bool = True,
        classes: Sequence[int] | None = None,
        reference: Literal["min"] | float = "min",
        dilation_radius: int = 7,
        sigma: float = 5.0,
        axial_axis: int = 2,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(
            keys,
            label_key,
            prob,
            factors,
            factor_range,
            per_modality,
            classes,
            reference,
            allow_missing_keys,
        )
        if dilation_radius < 0 or sigma < 0 or axial_axis not in (0, 1, 2):
            raise ValueError(
                f"need dilation_radius >= 0, sigma >= 0, axial_axis in (0, 1, 2); got "
                f"{dilation_radius}, {sigma}, {axial_axis}"
            )
        self.dilation_radius, self.sigma, self.axial_axis = (
            int(dilation_radius),
            float(sigma),
            int(axial_axis),
        )

    def weights(self, mask: np.ndarray) -> np.ndarray:
        return blend_weights(mask, self.dilation_radius, self.sigma, self.axial_axis)


class RandGBATumourContrastd(RandBlendedTumourContrastd):
    """GBA proper: the rescaled slice harmonised by a single-image SinGAN (ALGORITHMS 11.2).

    With probability ``prob``, draws the factors as :class:`RandTumourContrastd` and one seed of
    the harmonisation noise; computes the naive rescaling ``x'`` (only tumour voxels differ from
    ``x``), then for every axial slice containing tumour harmonises the whole slice
    ``(C, H, W)`` (all modalities together) with ``singan`` from the injection scale
    ``K - generators`` up, and writes ``x_GBA = W * x_gen + (1 - W) * x'`` wherever ``W > 0``
    (``W`` of :func:`blend_weights`). Every voxel with ``W = 0`` (slices without tumour, and
    in-plane farther from the tumour than the dilation plus the Gaussian's reach) is
    bit-identical to the input; factors all equal to 1 return the input. Image dtype kept.

    The model may be given as a provider (a callable returning it, e.g. the
    :class:`~lightning_ada.augment.singan.SinGANHarmoniser` bound to its datamodule): it is then
    called once, by :meth:`prepare` (the datamodule's training loader calls it in the main
    process before any loader worker starts, so workers receive the trained model; it waits
    while the provider has no case to train on) or at the first transformed case;
    ``generators`` is then capped at the model's scale count.

    Args:
        singan: the trained model (:class:`~lightning_ada.augment.singan.SinGAN`, as many channels
            as the images), or a provider of it.
        generators: ``k*``, how many of its finest generators run (1..K).
        **kwargs: as :class:`RandBlendedTumourContrastd`.
    """

    def __init__(
        self, singan: SinGAN | Callable[[], SinGAN], generators: int = 2, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if int(generators) < 1:
            raise ValueError(f"generators must be >= 1, got {generators}")
        self.generators = int(generators)
        self.singan: SinGAN | None = None
        self._provider: Callable[[], SinGAN] | None = None
        if isinstance(singan, SinGAN):
            if self.generators > singan.scales:
                raise ValueError(f"generators must be in 1..{singan.scales}, got {generators}")
            self.singan = singan
        else:
            self._provider = singan
        #: seed of the harmonisation noise drawn by the last :meth:`randomize`
        self.noise_seed = 0

    def prepare(self) -> SinGAN | None:
        """Obtain the SinGAN from the provider (trained or reloaded) if it can be yet.

        Returns:
            The model, or None while the provider has no case to train on
            (:class:`~lightning_ada.augment.singan.NoTrainingCase`: nothing labelled yet).
        """
        try:
            return self._model()
        except NoTrainingCase:
            return None

    def _model(self) -> SinGAN:
        if self.singan is None:
            assert self._provider is not None
            self.singan = self._provider()
            self.generators = min(self.generators, self.singan.scales)
        return self.singan

    def randomize(self, data: Any = None, channels: int = 1) -> None:
        super().randomize(data, channels)
        if self._do_transform:
            self.noise_seed = int(self.R.randint(2**31 - 1))

    def _rescale(
        self, image: torch.Tensor, mask_np: np.ndarray, weights_np: np.ndarray | None
    ) -> torch.Tensor:
        rescaled = super()._rescale(image, mask_np, None)  # x' (naive)
        if rescaled is image or weights_np is None:
            return rescaled  # factors all 1: identity
        singan = self._model()
        if image.shape[0] != singan.channels:
            raise ValueError(
                f"{type(self).__name__}: image has {image.shape[0]} channels, the SinGAN "
                f"{singan.channels}"
            )
        raw = rescaled.as_tensor() if hasattr(rescaled, "as_tensor") else rescaled
        weights = torch.as_tensor(weights_np)
        noise = torch.Generator().manual_seed(self.noise_seed)
        axis = self.axial_axis
        for k in np.flatnonzero(mask_np.any(axis=tuple(a for a in range(3) if a != axis))):
            where = [slice(None)] * 3
            where[axis] = int(k)
            w = weights[tuple(where)]
            region = w > 0
            if not region.any():
                continue
            view = raw[(slice(None), *where)]  # (C, h, w), a view into the output
            x_bg = view.float()
            x_gen = singan.harmonise(x_bg, self.generators, noise).to(x_bg.device)
            blended = w * x_gen + (1 - w) * x_bg
            view[:, region] = blended[:, region].to(view.dtype)
        return rescaled


class TumourContrast:
    """Tumour-contrast augmentation of training cases, as a datamodule option (typed for the CLI).

    ``data.tumour_contrast`` (off by default) builds one of the transforms above and applies it
    to every labelled training case before its patch is cut (and to pseudo-labelled cases with
    ``on_pseudo_labels``, their tumour being the pseudo-label). Evaluation, scoring and the
    teacher never see it.

    Args:
        blend: the blended variant (:class:`RandBlendedTumourContrastd`, ALGORITHMS 11.2;
            default) or the naive rescaling (:class:`RandTumourContrastd`, 11.1).
        prob: probability of altering a case.
        factors: set of factors to draw from (None with ``factor_range`` None: the notebook's
            ``(0.5, 0.8, 1.5)``).
        factor_range: ``[low, high]`` interval to draw factors from instead of a set.
        per_modality: one factor per modality (False: one for all).
        classes: class indices forming the tumour; None = every foreground class.
        dilation_radius: in-plane disk radius of the blending mask, voxels (``blend`` only).
        sigma: in-plane Gaussian standard deviation of the blending mask, voxels (``blend`` only).
        axial_axis: spatial axis across the axial slices (2 = ``D`` in RAS ``(H, W, D)``).
        on_pseudo_labels: also alter pseudo-labelled cases (self-training).
        harmoniser: GBA proper (:class:`RandGBATumourContrastd`): a
            :class:`~lightning_ada.augment.singan.SinGANHarmoniser` that trains a single-image
            SinGAN when the training loader is first built and harmonises the rescaled slices
            (needs ``blend``); None (default): no SinGAN.
    """

    def __init__(
        self,
        blend: bool = True,
        prob: float = 0.5,
        factors: list[float] | None = None,
        factor_range: tuple[float, float] | None = None,
        per_modality: bool = True,
        classes: list[int] | None = None,
        dilation_radius: int = 7,
        sigma: float = 5.0,
        axial_axis: int = 2,
        on_pseudo_labels: bool = False,
        harmoniser: SinGANHarmoniser | None = None,
    ) -> None:
        self.blend, self.prob = bool(blend), float(prob)
        self.factors = None if factors is None else [float(f) for f in factors]
        self.factor_range = None if factor_range is None else tuple(float(v) for v in factor_range)
        self.per_modality = bool(per_modality)
        self.classes = None if classes is None else [int(c) for c in classes]
        self.dilation_radius, self.sigma = int(dilation_radius), float(sigma)
        self.axial_axis = int(axial_axis)
        self.on_pseudo_labels = bool(on_pseudo_labels)
        self.harmoniser = harmoniser
        if harmoniser is not None and not self.blend:
            raise ValueError(
                "data.tumour_contrast: harmoniser (GBA proper) blends the SinGAN output by the "
                "weighting mask: set blend: true"
            )
        try:
            self._build()  # every check of the transforms, at configuration time
        except ValueError as bad:
            raise ValueError(f"data.tumour_contrast: {bad}") from bad

    def transform(self, datamodule: Any = None) -> RandTumourContrastd:
        """A new transform with these settings (seed it with ``set_random_state``).

        Args:
            datamodule: the :class:`~lightning_ada.data.datamodule.ActiveDataModule` whose
                labelled case and run folder the ``harmoniser`` trains from and caches in (only
                needed with a harmoniser). The SinGAN is trained or reloaded when the transform
                is prepared (:meth:`RandGBATumourContrastd.prepare`), not here: the loader may be
                built before the first case is labelled.
        """
        if self.harmoniser is None:
            return self._build()
        if datamodule is None:
            raise ValueError(
                "data.tumour_contrast.harmoniser: the SinGAN trains on a case of the datamodule; "
                "call transform(datamodule)"
            )
        return self._build(partial(self.harmoniser.model, datamodule, self.axial_axis))

    def _build(
        self, singan: SinGAN | Callable[[], SinGAN] | None = None
    ) -> RandTumourContrastd:
        common = {
            "prob": self.prob,
            "factors": self.factors,
            "factor_range": self.factor_range,
            "per_modality": self.per_modality,
            "classes": self.classes,
        }
        if not self.blend:
            return RandTumourContrastd(**common)
        blended = {
            **common, "dilation_radius": self.dilation_radius, "sigma": self.sigma,
            "axial_axis": self.axial_axis,
        }
        if singan is not None:
            return RandGBATumourContrastd(singan, self.harmoniser.generators, **blended)
        return RandBlendedTumourContrastd(**blended)

    def __repr__(self) -> str:
        kind = "blended" if self.blend else "naive"
        if self.harmoniser is not None:
            kind = f"GBA, {self.harmoniser!r}"
        return (
            f"TumourContrast({kind}, prob={self.prob}, factors={self.factors}, "
            f"factor_range={self.factor_range}, on_pseudo_labels={self.on_pseudo_labels})"
        )
