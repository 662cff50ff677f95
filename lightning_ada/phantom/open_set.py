"""Out-of-distribution (OOD) cases for open-set target pools (issue 15, seed 003's OpenPath).

A real target pool holds scans nobody wants labelled: another body part or field of view, a scan
with no tumour, a corrupted acquisition, a series whose modalities were stacked in the wrong
order. A strategy that queries them wastes labels. This module turns an in-distribution case
into one of these, as pure functions over the case's arrays, so that a phantom (or a test) can
call them on what it has just synthesised:

* ``image``: ``(C, H, W, D)`` float, scanner units, 0 outside the body;
* ``label``: ``(H, W, D)`` integer reference label (0 background).

Every generator returns an :class:`OODCase`: the new arrays and the *flag*, a JSON-ready dict
``{"ood": <kind>, "ood_detail": {...}}`` to merge into the case's ``meta`` in ``dataset.json``;
an in-distribution case carries :func:`in_distribution_flag` (``{"ood": None}``).
:func:`plan_ood` decides which cases of a pool become which kind (exact fraction, balanced
kinds, seeded); :func:`ood_kind` and :func:`purity` read the flag back (query log, tables).

Kinds (:data:`OOD_KINDS`):

* ``other_anatomy``: a torso-like body (an open cylinder through the whole volume with low-signal
  lungs and a bright spine), its tissue intensities drawn from the case's own in-body
  intensities (same scanner scale); label empty.
* ``field_of_view``: the same head seen through another field of view: zoomed out (the head
  shrinks to ``scale**3`` of its volume) or zoomed in (the head is cut by the volume's faces),
  shifted; the label follows the same resampling.
* ``no_tumour``: the tumour voxels are filled with the nearest healthy in-body voxels; label
  empty.
* ``corrupted``: an unusable acquisition: a k-space ``spike`` (stripes over the whole volume),
  a ``dropout`` slab of missing slices, or ``noise`` far above the scanner's; label unchanged.
* ``channel_order``: the modality channels in a deranged order (no channel in its place);
  label unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage

__all__ = [
    "OOD_KINDS",
    "OODCase",
    "channel_order",
    "corrupted",
    "field_of_view",
    "in_distribution_flag",
    "make_ood",
    "no_tumour",
    "ood_kind",
    "other_anatomy",
    "plan_ood",
    "purity",
]

OODKind = Literal["other_anatomy", "field_of_view", "no_tumour", "corrupted", "channel_order"]
OOD_KINDS: tuple[str, ...] = (
    "other_anatomy",
    "field_of_view",
    "no_tumour",
    "corrupted",
    "channel_order",
)
Corruption = Literal["spike", "dropout", "noise"]


@dataclass(frozen=True)
class OODCase:
    """An out-of-distribution version of a case.

    Attributes:
        image: ``(C, H, W, D)`` float32, same shape and units as the input image.
        label: ``(H, W, D)`` same dtype as the input label (all zeros when the kind has no tumour).
        flag: ``{"ood": kind, "ood_detail": {...}}``, JSON-serialisable, for the case's meta.
    """

    image: np.ndarray
    label: np.ndarray
    flag: dict[str, Any]


def in_distribution_flag() -> dict[str, Any]:
    """The flag of an in-distribution case: ``{"ood": None}``."""
    return {"ood": None}


def ood_kind(meta: Mapping[str, Any]) -> str | None:
    """The OOD kind recorded in a case's meta (None: in-distribution or never flagged)."""
    kind = meta.get("ood")
    return None if kind is None else str(kind)


def purity(metas: Sequence[Mapping[str, Any]]) -> float:
    """Fraction of queried cases that were in-distribution (NaN for no query).

    Args:
        metas: the metadata of each queried case (e.g. ``entry["case_meta"]`` of the query log).
    """
    if not metas:
        return float("nan")
    return sum(ood_kind(m) is None for m in metas) / len(metas)


def _check(image: np.ndarray, label: np.ndarray) -> None:
    if image.ndim != 4:
        raise ValueError(f"image must be (C, H, W, D), got shape {image.shape}")
    if label.shape != image.shape[1:]:
        raise ValueError(f"label shape {label.shape} does not match image {image.shape[1:]}")


def _body(image: np.ndarray) -> np.ndarray:
    """(H, W, D) bool: voxels where any channel is non-zero."""
    return (image != 0).any(axis=0)


def _flag(kind: str, **detail: Any) -> dict[str, Any]:
    return {"ood": kind, "ood_detail": detail}


# ---------------------------------------------------------------------------------------- kinds
def other_anatomy(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> OODCase:
    """Replace the head by a torso-like body of the same scanner.

    The body is an elliptic cylinder along the last axis (it crosses both end faces, which a head
    never does) containing two lungs (the 5th intensity percentile of each channel), a spine
    (the 95th) and soft tissue (the median); each tissue's values are the case's own in-body
    quantiles per channel, so only the shape is foreign. Smoothed with a 0.7-voxel Gaussian, plus
    noise of 3 % of the channel median.

    Args:
        image: ``(C, H, W, D)`` scanner units, 0 outside the body.
        label: ``(H, W, D)`` reference label.
        rng: the case's generator.

    Returns:
        The new case; its label is all zeros.
    """
    _check(image, label)
    size = np.array(image.shape[1:])
    g = [(np.arange(n) + 0.5) / n * 2.0 - 1.0 for n in size]
    x, y, _ = np.meshgrid(*g, indexing="ij")
    ax, ay = rng.uniform(0.75, 0.92), rng.uniform(0.5, 0.65)
    body = (x / ax) ** 2 + (y / ay) ** 2 <= 1.0
    lungs = np.zeros_like(body)
    for side in (-1.0, 1.0):
        lungs |= ((x - side * 0.4 * ax) / (0.28 * ax)) ** 2 + ((y + 0.05) / (0.6 * ay)) ** 2 <= 1.0
    spine = (x / 0.12) ** 2 + ((y - 0.7 * ay) / 0.12) ** 2 <= 1.0
    inside = _body(image)
    out = np.zeros(image.shape, np.float32)
    for c in range(image.shape[0]):
        vals = image[c][inside] if inside.any() else np.array([1.0])
        soft, dark, bright = np.quantile(vals, [0.5, 0.05, 0.95])
        ch = np.where(body, soft, 0.0)
        ch = np.where(body & lungs, dark, ch)
        ch = np.where(body & spine, bright, ch)
        ch = ndimage.gaussian_filter(ch, 0.7) + 0.03 * abs(soft) * rng.standard_normal(ch.shape)
        out[c] = np.where(body, np.maximum(ch, 1e-3 * max(abs(soft), 1e-6)), 0.0)
    return OODCase(out, np.zeros_like(label), _flag("other_anatomy", body="torso"))


def field_of_view(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    scale: float | None = None,
    shift: Sequence[float] | None = None,
) -> OODCase:
    """The same anatomy through another field of view (magnification ``scale``, then a shift).

    Output voxel ``o`` samples input position ``centre + (o - centre - shift) / scale`` (linear
    interpolation for the image, nearest for the label, 0 outside the input).

    Args:
        image: ``(C, H, W, D)``.
        label: ``(H, W, D)``.
        rng: draws ``scale`` (half the time log-uniform in 0.45-0.6, else in 1.8-2.2) and
            ``shift`` (uniform within a quarter of each side) when not given.
        scale: magnification; < 1 zooms out (the head covers about ``scale**3`` of its volume),
            > 1 zooms in (the head is cut by the faces).
        shift: translation in output voxels, one per spatial axis.

    Returns:
        The new case; ``ood_detail`` holds ``scale`` and ``shift``.
    """
    _check(image, label)
    size = np.array(image.shape[1:], float)
    if scale is None:
        lo, hi = (0.45, 0.6) if rng.uniform() < 0.5 else (1.8, 2.2)
        scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    if scale <= 0:
        raise ValueError(f"field_of_view scale must be > 0, got {scale}")
    if shift is None:
        shift = rng.uniform(-0.25, 0.25, 3) * size
    shift = np.asarray(shift, float)
    centre = (size - 1) / 2
    matrix = np.eye(3) / scale
    offset = centre - (centre + shift) / scale
    out = np.stack(
        [
            ndimage.affine_transform(ch, matrix, offset, order=1, mode="constant", cval=0.0)
            for ch in image.astype(np.float32)
        ]
    )
    lab = ndimage.affine_transform(label, matrix, offset, order=0, mode="constant", cval=0)
    detail = {"scale": round(float(scale), 4), "shift": [round(float(s), 3) for s in shift]}
    return OODCase(
        out.astype(np.float32), lab.astype(label.dtype), _flag("field_of_view", **detail)
    )


def no_tumour(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
) -> OODCase:
    """Remove the tumour: each tumour voxel takes the values of its nearest healthy body voxel.

    Args:
        image: ``(C, H, W, D)``.
        label: ``(H, W, D)``; voxels > 0 are tumour.
        rng: unused (uniform signature).

    Returns:
        The new case; its label is all zeros; voxels outside the tumour are unchanged.

    Raises:
        ValueError: the case has no healthy body voxel to fill from.
    """
    _check(image, label)
    tumour = label > 0
    healthy = _body(image) & ~tumour
    if not healthy.any():
        raise ValueError("no_tumour needs healthy body voxels (image != 0 outside the label)")
    out = image.astype(np.float32, copy=True)
    if tumour.any():
        _, idx = ndimage.distance_transform_edt(~healthy, return_indices=True)
        src = tuple(i[tumour] for i in idx)
        out[:, tumour] = out[(slice(None), *src)]
    return OODCase(out, np.zeros_like(label), _flag("no_tumour", removed_voxels=int(tumour.sum())))


def corrupted(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    corruption: Corruption | None = None,
    strength: float | None = None,
) -> OODCase:
    """An unusable acquisition of the same anatomy (label unchanged).

    Args:
        image: ``(C, H, W, D)``.
        label: ``(H, W, D)``.
        rng: draws the corruption, its place and (if not given) its strength.
        corruption: ``spike``: every channel gains a k-space spike at one non-central frequency
            (and its Hermitian twin, so the image stays real), of magnitude ``strength`` x the
            channel's largest k-space magnitude (stripes across the whole volume; default
            strength 0.5); ``dropout``: a slab of ``strength`` x the
            side (default 0.4) consecutive slices along one axis is set to 0 in every channel;
            ``noise``: Gaussian noise of ``strength`` (default 1.0) x each channel's in-body
            median is added inside the body.
        strength: see ``corruption``.

    Returns:
        The new case; ``ood_detail`` holds ``corruption``, ``strength`` and where.
    """
    _check(image, label)
    kinds = ("spike", "dropout", "noise")
    if corruption is None:
        corruption = kinds[int(rng.integers(len(kinds)))]
    if corruption not in kinds:
        raise ValueError(f"corruption must be one of {kinds}, got {corruption!r}")
    out = image.astype(np.float32, copy=True)
    spatial = image.shape[1:]
    detail: dict[str, Any] = {"corruption": corruption}
    if corruption == "spike":
        strength = 0.5 if strength is None else strength
        loc = tuple(int(rng.integers(n // 4, n // 2)) for n in spatial)  # off-centre frequency
        twin = tuple(-i % n for i, n in zip(loc, spatial))  # Hermitian pair: the image stays real
        for c in range(out.shape[0]):
            k = np.fft.fftn(out[c])
            spike = strength * np.abs(k).max()
            k[loc] += spike
            k[twin] += spike
            out[c] = np.fft.ifftn(k).real.astype(np.float32)
        detail["frequency"] = list(loc)
    elif corruption == "dropout":
        strength = 0.4 if strength is None else strength
        axis = int(rng.integers(3))
        width = max(1, round(strength * spatial[axis]))
        start = int(rng.integers(0, spatial[axis] - width + 1))
        sl = [slice(None)] * 4
        sl[axis + 1] = slice(start, start + width)
        out[tuple(sl)] = 0.0
        detail |= {"axis": axis, "slices": [start, start + width]}
    else:
        strength = 1.0 if strength is None else strength
        body = _body(image)
        for c in range(out.shape[0]):
            med = float(np.median(np.abs(image[c][body]))) if body.any() else 1.0
            out[c] = np.where(body, out[c] + strength * med * rng.standard_normal(spatial), out[c])
    detail["strength"] = float(strength)
    return OODCase(out, label.copy(), _flag("corrupted", **detail))


def channel_order(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    order: Sequence[int] | None = None,
) -> OODCase:
    """The modalities stacked in a wrong order: channel ``k`` of the output is ``order[k]``.

    Args:
        image: ``(C, H, W, D)`` with C >= 2.
        label: ``(H, W, D)``.
        rng: draws a derangement (no channel keeps its place) when ``order`` is not given.
        order: a permutation of ``range(C)`` other than the identity.

    Returns:
        The new case; ``ood_detail["order"]`` is the permutation.
    """
    _check(image, label)
    n = image.shape[0]
    if n < 2:
        raise ValueError("channel_order needs at least 2 channels")
    if order is None:
        while True:  # rejection sampling: about e tries for a derangement
            order = [int(i) for i in rng.permutation(n)]
            if all(o != k for k, o in enumerate(order)):
                break
    order = [int(i) for i in order]
    if sorted(order) != list(range(n)) or order == list(range(n)):
        raise ValueError(f"order must be a non-identity permutation of 0..{n - 1}, got {order}")
    out = image[order].astype(np.float32, copy=True)
    return OODCase(out, label.copy(), _flag("channel_order", order=order))


_GENERATORS = {
    "other_anatomy": other_anatomy,
    "field_of_view": field_of_view,
    "no_tumour": no_tumour,
    "corrupted": corrupted,
    "channel_order": channel_order,
}


def make_ood(
    kind: str, image: np.ndarray, label: np.ndarray, rng: np.random.Generator, **options: Any
) -> OODCase:
    """Apply the generator of ``kind`` (one of :data:`OOD_KINDS`) with its ``options``.

    Raises:
        ValueError: unknown kind (the message lists the known ones).
    """
    if kind not in _GENERATORS:
        raise ValueError(f"unknown OOD kind {kind!r}; known: {list(OOD_KINDS)}")
    return _GENERATORS[kind](image, label, rng, **options)


def plan_ood(
    n: int, fraction: float, seed: int | Sequence[int], kinds: Sequence[str] = OOD_KINDS
) -> list[str | None]:
    """Which of ``n`` pool cases become out-of-distribution, and of which kind.

    Exactly ``round(fraction * n)`` cases are chosen by a permutation seeded by ``seed``; kinds
    are dealt round-robin in that order, so every kind appears equally often (within one).

    Args:
        n: pool size.
        fraction: share of OOD cases, in [0, 1).
        seed: seed of the choice (an int or a list such as ``[seed, task_code, split_code, 3]``).
        kinds: the kinds to deal.

    Returns:
        One entry per case index: a kind, or None (in-distribution).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"ood fraction must be in [0, 1), got {fraction}")
    unknown = [k for k in kinds if k not in _GENERATORS]
    if unknown or not kinds:
        raise ValueError(
            f"ood kinds must be a non-empty subset of {list(OOD_KINDS)}, got {list(kinds)}"
        )
    chosen = np.random.default_rng(seed).permutation(n)[: round(fraction * n)]
    plan: list[str | None] = [None] * n
    for j, i in enumerate(chosen):
        plan[int(i)] = kinds[j % len(kinds)]
    return plan
