"""Representativeness of a case: neighbour counts under a PCA-Wasserstein image distance.

ALGORITHMS §1.2 eq. (3)-(5) and §1.3:

* each modality volume is resized to a cube, reshaped to ``(R*R, R)`` (rows = in-plane positions,
  columns = slices) and reduced by a PCA fitted on that image alone (centred, not scaled),
  keeping the fewest components with cumulative explained variance >= 0.75;
* ``P_i^m`` is the 1-D empirical distribution of all the PCA scores; it is summarised by ``Q``
  quantile-bin values so that the 1-D Wasserstein-1 distance becomes ``mean |q_a - q_b|``;
* ``d(i, j) = sum_m W1(P_i^m, P_j^m)`` = L1 distance of the concatenated ``(M*Q)`` summaries / Q;
* ``rho_i = #{j != i : d(i, j) < delta}`` with ``delta`` the 10 % quantile of the off-diagonal
  distances unless given (``rule="exclusive"``, the default). On a small pool this rule gates:
  with 6 cases only 3 get ``rho >= 1`` and ``rho = 0`` zeroes mmActS' product (ALGORITHMS §16),
  so two rules that never give 0 are offered: ``inclusive`` (a case counts itself,
  ``rho_i = 1 + #{j != i : d(i, j) < delta}``) and ``kernel`` (``rho_i = sum_j
  exp(-d(i, j)^2 / (2 sigma^2))``, self included, ``sigma`` the median off-diagonal distance).

Caveats (kept visible on purpose): the PCA is fitted per image, so components of two cases are not
aligned and the distance compares *value distributions* of scores, not images; the sign of a
principal component is an SVD convention, fixed here by making the largest-|loading| entry of each
component positive.

Intensities are used as given: the ``mmacts`` strategy passes the network-input images
(z-scored per modality inside the brain, ALGORITHMS §1.3) by default, or, with
``density_input: raw``, the images as stored on disk (:func:`raw_case_image`: raw values, full
field of view), as the authors' ICA code did (with ``density_resize: 128`` for their grid).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial.distance import squareform

from lightning_ada.active.pairwise import condensed, condensed_rows, row_blocks
from lightning_ada.io import atomic_path

__all__ = [
    "DensityResult",
    "case_descriptor",
    "compute_density",
    "content_hash",
    "raw_case_image",
    "neighbour_counts",
    "neighbour_counts_condensed",
    "pairwise_condensed",
    "pairwise_distances",
    "pca_scores",
    "quantile_summary",
    "resize_cube",
    "w1_exact",
    "w1_quantile",
]

#: Bump when the descriptor definition changes: it is part of every cache key.
DESCRIPTOR_VERSION = "pca-w1-v1"
#: Cube side used when ``resize=None`` and the volume is larger than that.
MAX_NATIVE_SIDE = 64
#: :func:`compute_density` keeps the dense ``(N, N)`` distances in its result up to this pool
#: size (None above: 800 MB at N = 10,000; :func:`pairwise_condensed` gives them on demand)
KEEP_DENSE_MAX = 2048

QuantileMethod = Literal["mean", "midpoint"]
#: how ``rho`` is counted from the distances (module doc)
DensityRule = Literal["exclusive", "inclusive", "kernel"]


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def resize_cube(volume: np.ndarray, side: int) -> np.ndarray:
    """Anti-aliased trilinear resize of a 3-D volume to ``side**3``.

    Downsampled axes are Gaussian-prefiltered with ``sigma = (factor - 1) / 2`` (the skimage
    ``anti_aliasing`` rule), then ``scipy.ndimage.zoom(order=1, grid_mode=True)``.

    Args:
        volume: ``(H, W, D)`` array.
        side: output cube side ``R``.

    Returns:
        ``(R, R, R)`` float array (float32 for integer input; the input itself if already
        that shape).
    """
    v = np.asarray(volume)
    if not np.issubdtype(v.dtype, np.floating):
        v = v.astype(np.float32)
    if v.shape == (side,) * 3:
        return v
    factors = np.array(v.shape, dtype=np.float64) / side  # > 1: downsampling
    sigma = np.maximum(0.0, (factors - 1.0) / 2.0)
    if np.any(sigma > 0):
        v = ndimage.gaussian_filter(v, sigma, mode="nearest")
    out = ndimage.zoom(v, 1.0 / factors, order=1, mode="nearest", grid_mode=True)
    if out.shape != (side,) * 3:  # zoom rounds the output shape; guard against off-by-one
        raise RuntimeError(f"resize produced {out.shape}, expected {(side,) * 3}")
    return out


def pca_scores(
    volume: np.ndarray | torch.Tensor, resize: int | None = None, variance: float = 0.75
) -> np.ndarray:
    """Flattened PCA scores of one modality volume (ALGORITHMS §1.3 steps 2-5).

    Args:
        volume: ``(H, W, D)`` intensities.
        resize: cube side ``R``. None (default): ``R = min(64, max(H, W, D))``, i.e. a small
            volume (e.g. a 32^3 phantom) keeps its native grid (no interpolation if already
            cubic) and a large one is reduced to 64^3. The authors' value is 128 (pass it for
            paper fidelity; ~8x slower). Use an explicit int when pool cases have different
            small sizes, so that every case is compared on the same grid.
        variance: keep the fewest components whose cumulative explained variance is
            ``>= variance``.

    Returns:
        1-D float64 array of the ``R*R*k`` scores (row-major ``(R*R, k)`` flattened). A constant
        volume (zero variance) gives ``R*R`` zeros.
    """
    v = _as_numpy(volume)
    if v.ndim != 3:
        raise ValueError(f"pca_scores expects a 3-D volume, got shape {v.shape}")
    side = resize if resize is not None else min(MAX_NATIVE_SIDE, max(v.shape))
    x = resize_cube(v, side).reshape(side * side, side).astype(np.float64)
    x -= x.mean(axis=0, keepdims=True)
    # PCA via the (R, R) scatter matrix: same components/scores as sklearn PCA(svd_solver="full")
    # (tests), 10-20x faster than an SVD of the (R*R, R) matrix. Variance rule: ">=".
    ev, vec = np.linalg.eigh(x.T @ x)
    ev, vec = np.clip(ev[::-1], 0.0, None), vec[:, ::-1]
    total = ev.sum()
    if total <= 0 or not np.isfinite(total):
        return np.zeros(side * side, dtype=np.float64)
    k = int(min(np.searchsorted(np.cumsum(ev) / total, variance * (1 - 1e-12)) + 1, side))
    comps = vec[:, :k]  # (R, k) loadings
    sign = np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(k)])
    sign[sign == 0] = 1.0
    return (x @ (comps * sign)).ravel()


def quantile_summary(
    values: np.ndarray, n_quantiles: int = 1024, method: QuantileMethod = "mean"
) -> np.ndarray:
    """``Q``-point summary of the quantile function of an empirical 1-D distribution.

    Args:
        values: 1-D sample (any length >= 1).
        n_quantiles: ``Q``.
        method: ``"mean"`` (default) - the average of the quantile function ``F^{-1}`` over each
            of the Q equal-probability bins ``[q/Q, (q+1)/Q]``; ``"midpoint"`` - ``F^{-1}`` at
            the mid-point levels ``(q + 0.5)/Q`` (ALGORITHMS §1.3 wording). Both give the exact
            sorted sample when ``Q == len(values)``. With ``"mean"``, ``mean |qa - qb|`` is exact
            whenever Q is a common multiple of both sample sizes, is never larger than the exact
            W1, and errs only in bins where the two quantile functions cross; it is several times
            to orders of magnitude more accurate than mid-points at the same Q (tests).

    Returns:
        ``(Q,)`` float64, non-decreasing.
    """
    x = np.sort(_as_numpy(values).astype(np.float64).ravel())
    n, q = x.size, int(n_quantiles)
    if n == 0:
        raise ValueError("quantile_summary of an empty sample")
    if method == "midpoint":
        # inverted-CDF quantile at (q+0.5)/Q: the sample of rank ceil(n*(q+0.5)/Q) - 1
        ranks = np.ceil(n * (np.arange(q) + 0.5) / q).astype(np.int64) - 1
        return x[np.clip(ranks, 0, n - 1)]
    if method != "mean":
        raise ValueError(f"unknown quantile method {method!r}")
    # G(u) = int_0^u F^{-1}; u = l/Q -> position l*n/Q in sample units, split exactly in integers
    cs = np.concatenate([[0.0], np.cumsum(x)])
    pos = np.arange(q + 1, dtype=np.int64) * n
    j, frac = pos // q, (pos % q) / q
    g = cs[j] + frac * np.append(x, x[-1])[j]  # n * G(l/Q)
    return np.diff(g) * (q / n)


def w1_quantile(qa: np.ndarray, qb: np.ndarray) -> float | np.ndarray:
    """W1 from two quantile summaries of equal length: ``mean |qa - qb|`` over the last axis."""
    r = np.mean(np.abs(np.asarray(qa) - np.asarray(qb)), axis=-1)
    return float(r) if np.ndim(r) == 0 else r


def w1_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Exact 1-D W1 between two uniform empirical samples (POT reference; W_1^1 = W_1)."""
    import ot

    return float(ot.wasserstein_1d(_as_numpy(a).ravel(), _as_numpy(b).ravel(), p=1))


def case_descriptor(
    image: np.ndarray | torch.Tensor,
    resize: int | None = None,
    variance: float = 0.75,
    n_quantiles: int = 1024,
    method: QuantileMethod = "mean",
) -> np.ndarray:
    """Per-modality quantile summaries of the PCA scores of one case.

    Args:
        image: ``(M, H, W, D)`` intensities (as given, see module doc).
        resize, variance: see :func:`pca_scores`.
        n_quantiles, method: see :func:`quantile_summary`.

    Returns:
        ``(M, Q)`` float64 descriptor.
    """
    img = _as_numpy(image)
    if img.ndim != 4:
        raise ValueError(f"case_descriptor expects (M, H, W, D), got shape {img.shape}")
    return np.stack(
        [quantile_summary(pca_scores(v, resize, variance), n_quantiles, method) for v in img]
    )


def pairwise_distances(desc: np.ndarray) -> np.ndarray:
    """Case distance matrix ``d(i, j) = sum_m W1(P_i^m, P_j^m)`` (eq. 4).

    Args:
        desc: ``(N, M, Q)`` descriptors.

    Returns:
        ``(N, N)`` symmetric float64 matrix with zero diagonal (``8 N^2`` bytes: use
        :func:`pairwise_condensed` for a large pool).
    """
    d = np.asarray(desc, dtype=np.float64)
    return squareform(pairwise_condensed(d), checks=False)


def pairwise_condensed(desc: np.ndarray) -> np.ndarray:
    """The distances of :func:`pairwise_distances` for ``i < j`` only (``pdist`` order), computed
    in blocks of rows: half the work and ``4 N^2`` bytes; every value equals the dense
    matrix's entry bit for bit (one ``cdist`` cityblock per pair, divided by ``Q``).

    Args:
        desc: ``(N, M, Q)`` descriptors.
    """
    d = np.asarray(desc, dtype=np.float64)
    n, _, q = d.shape
    cond = condensed(d.reshape(n, -1), metric="cityblock", method="exact")
    cond /= q
    return cond


def neighbour_counts(
    dist: np.ndarray,
    delta: float | None = None,
    quantile: float = 0.10,
    rule: DensityRule = "exclusive",
) -> tuple[np.ndarray, float]:
    """Density ``rho`` of every case from the case distances (eq. 3 and the small-pool rules).

    Args:
        dist: ``(N, N)`` symmetric distance matrix.
        delta: absolute radius; None -> the ``quantile`` quantile (NumPy linear interpolation) of
            the ``N(N-1)/2`` off-diagonal distances. For ``rule="kernel"`` it is the kernel width
            ``sigma``; None -> the median off-diagonal distance (``quantile`` unused).
        quantile: see ``delta``.
        rule: ``exclusive`` (the paper's count, ``rho_i = #{j != i : d(i, j) < delta}``; an
            isolated case gets 0), ``inclusive`` (the case counts itself: ``1 + #{j != i :
            d(i, j) < delta}``, so ``rho >= 1``) or ``kernel`` (``sum_j exp(-d(i, j)^2 /
            (2 sigma^2))`` with self, so ``rho >= 1``, no hard radius).

    Returns:
        ``(rho (N,), delta_used)``: int64 counts for the radius rules, float64 for ``kernel``;
        ``delta_used`` is the radius (or ``sigma``). With N < 2 and no delta it is 0.0.
    """
    dist = np.asarray(dist, dtype=np.float64)
    n = dist.shape[0]
    off = dist[np.triu_indices(n, k=1)]
    if rule == "kernel":
        sigma = float(np.median(off)) if delta is None and off.size else float(delta or 0.0)
        if sigma <= 0:  # all cases identical (or one case): every case is its own neighbourhood
            return (dist == 0).sum(axis=1).astype(np.float64), sigma
        return np.exp(-(dist**2) / (2.0 * sigma**2)).sum(axis=1), sigma
    if rule not in ("exclusive", "inclusive"):
        raise ValueError(f"unknown density rule {rule!r}; use exclusive, inclusive or kernel")
    if delta is None:
        delta = float(np.quantile(off, quantile)) if off.size else 0.0
    close = dist < delta
    np.fill_diagonal(close, rule == "inclusive")
    return close.sum(axis=1).astype(np.int64), float(delta)


def _pair_index(p: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(i, j)`` of positions ``p`` of a condensed vector of ``n`` rows."""
    i = np.arange(n, dtype=np.int64)
    off = i * n - i * (i + 1) // 2
    row = np.searchsorted(off, p, side="right") - 1
    return row, p - off[row] + row + 1


def neighbour_counts_condensed(
    cond: np.ndarray,
    n: int,
    delta: float | None = None,
    quantile: float = 0.10,
    rule: DensityRule = "exclusive",
) -> tuple[np.ndarray, float]:
    """:func:`neighbour_counts` of the symmetric matrix whose upper triangle is ``cond``.

    The same numbers as the dense function on ``squareform(cond)`` (the radius is the same
    quantile of the same values; counts are integers; a kernel sum is taken over the full row
    in index order, rebuilt block by block), with memory ``O(N^2 / 2)`` instead of several
    ``(N, N)`` arrays.

    Args:
        cond: ``N (N - 1) / 2`` distances in ``pdist`` order.
        n: ``N``.
        delta, quantile, rule: as :func:`neighbour_counts`.
    """
    cond = np.asarray(cond, dtype=np.float64)
    if rule == "kernel":
        sigma = float(np.median(cond)) if delta is None and cond.size else float(delta or 0.0)
        if sigma <= 0:
            zero = np.flatnonzero(cond == 0)
            i, j = _pair_index(zero, n)
            rho = 1 + np.bincount(i, minlength=n) + np.bincount(j, minlength=n)
            return rho.astype(np.float64), sigma
        rho = np.empty(n, dtype=np.float64)
        for a, b in row_blocks(n, 512):
            dist = condensed_rows(cond, n, range(a, b))
            rho[a:b] = np.exp(-(dist**2) / (2.0 * sigma**2)).sum(axis=1)
        return rho, sigma
    if rule not in ("exclusive", "inclusive"):
        raise ValueError(f"unknown density rule {rule!r}; use exclusive, inclusive or kernel")
    if delta is None:
        delta = float(np.quantile(cond, quantile)) if cond.size else 0.0
    i, j = _pair_index(np.flatnonzero(cond < delta), n)
    counts = np.bincount(i, minlength=n) + np.bincount(j, minlength=n)
    if rule == "inclusive":
        counts += 1
    return counts.astype(np.int64), float(delta)


def raw_case_image(case: Any) -> np.ndarray:
    """A case's image as stored on disk: raw intensities, full field of view, no reorientation.

    Args:
        case: a :class:`~lightning_ada.cases.Case` (``images``: one NIfTI per modality, or
            one 4-D NIfTI with the modalities on the last axis; a missing modality's channel
            is zeros).

    Returns:
        ``(M, X, Y, Z)`` float32 array (voxel axes as stored).

    Raises:
        ValueError: a file is not 3-D (per-modality files) or 4-D (single file); names the file.
    """
    import nibabel as nib

    paths = list(case.images)
    if len(paths) == 1:
        data = np.asarray(nib.load(paths[0]).get_fdata(dtype=np.float32))
        if data.ndim == 3:
            return data[None]
        if data.ndim != 4:
            raise ValueError(f"{paths[0]}: expected a 3-D or 4-D image, got shape {data.shape}")
        return np.moveaxis(data, -1, 0)
    vols: list[np.ndarray | None] = []
    for path in paths:
        if not path:  # a modality the case lacks: zero-filled, as the network sees it
            vols.append(None)
            continue
        v = np.asarray(nib.load(path).get_fdata(dtype=np.float32))
        if v.ndim == 4 and v.shape[-1] == 1:
            v = v[..., 0]
        if v.ndim != 3:
            raise ValueError(f"{path}: expected a 3-D modality image, got shape {v.shape}")
        vols.append(v)
    present = [v for v in vols if v is not None]
    if not present:
        raise ValueError(f"case {case.case_id!r}: no image file")
    vols = [np.zeros_like(present[0]) if v is None else v for v in vols]
    shapes = {v.shape for v in vols}
    if len(shapes) != 1:
        raise ValueError(f"case {case.case_id!r}: modality images differ in shape {sorted(shapes)}")
    return np.stack(vols)


def content_hash(image: np.ndarray | torch.Tensor) -> str:
    """sha256 over dtype, shape and bytes of an array (the cache's content fingerprint)."""
    a = np.ascontiguousarray(_as_numpy(image))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


@dataclass
class DensityResult:
    """Output of :func:`compute_density`.

    Attributes:
        density: case_id -> ``rho`` (neighbour count, as float for JSON / product scoring).
        delta: the radius used.
        quantile: the quantile rule used (None if ``delta`` was given).
        key: sha256 hex of the descriptor parameters and the cases' content hashes.
        case_ids: the pool order of ``distances`` / ``descriptors``.
        distances: ``(N, N)`` case distances, kept for pools of at most
            :data:`KEEP_DENSE_MAX` cases (None above: :func:`pairwise_condensed` of
            ``descriptors`` gives them).
        descriptors: ``(N, M, Q)`` descriptors.
        from_cache: True if every descriptor was read from ``cache_dir``.
        n_computed: number of case descriptors actually computed in this call.
        params: the descriptor parameters that entered the key.
    """

    density: dict[str, float]
    delta: float
    quantile: float | None
    key: str
    case_ids: list[str]
    distances: np.ndarray | None
    descriptors: np.ndarray | None = None
    from_cache: bool = False
    n_computed: int = 0
    params: dict[str, Any] = field(default_factory=dict)


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _load_descriptor(path: Path) -> np.ndarray | None:
    """A cached descriptor, or None if absent or unreadable (then it is recomputed)."""
    try:
        return np.load(path, allow_pickle=False) if path.is_file() else None
    except (OSError, ValueError, EOFError):
        return None


def compute_density(
    case_ids: Sequence[str],
    images: Iterable[np.ndarray | torch.Tensor],
    *,
    resize: int | None = None,
    variance: float = 0.75,
    n_quantiles: int = 1024,
    method: QuantileMethod = "mean",
    delta: float | None = None,
    quantile: float = 0.10,
    rule: DensityRule = "exclusive",
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
    counts: bool = True,
) -> DensityResult:
    """Neighbour-count density of every pool case (computed once over the whole pool, §1.2).

    Images are streamed: only the small ``(M, Q)`` descriptor of each case is kept. The
    distances are computed over the upper triangle in blocks (:func:`pairwise_condensed`): the
    neighbour count is quadratic in the pool by definition (a radius that is a quantile of every
    pairwise distance), about ``N^2 M Q / 2`` absolute differences (2 x 10^11 at N = 10,000,
    ``M Q = 4096``), with ``4 N^2`` bytes of distances.

    Caching (``cache_dir`` given): the ``(M, Q)`` descriptor of a case is kept in
    ``desc_<sha256(content hash, parameters)>.npy``, the content hash being the sha256 of the
    image bytes (:func:`content_hash`), so a repeated call computes no PCA; the distances are
    recomputed from the descriptors (cheap). ``delta``/``quantile`` are not in the key. Files
    are written atomically (:func:`lightning_ada.io.atomic_path`) and read with
    ``np.load(allow_pickle=False)``.

    Args:
        case_ids: N unique case identifiers, in the order of ``images``.
        images: iterable of ``(M, H, W, D)`` arrays/tensors (consumed lazily, at most once).
        resize, variance: PCA parameters (:func:`pca_scores`).
        n_quantiles, method: quantile summary (:func:`quantile_summary`).
        delta, quantile, rule: neighbourhood radius and counting rule (:func:`neighbour_counts`).
        cache_dir: directory of the cache, or None (no caching).
        progress: tqdm progress bar over the cases.
        counts: False: the descriptors only (no distances, an empty ``density``): what the
            coverage rules' descriptors need, without the quadratic pass.

    Returns:
        A :class:`DensityResult`.
    """
    ids = [str(c) for c in case_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("compute_density: duplicate case ids")
    params = {
        "version": DESCRIPTOR_VERSION,
        "resize": resize,
        "variance": float(variance),
        "n_quantiles": int(n_quantiles),
        "method": method,
        "extra": {},  # kept so that descriptor files cached before stay valid
    }
    cache = Path(cache_dir) if cache_dir is not None else None
    it: Iterable[Any] = images
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(images, total=len(ids), desc="density descriptors", unit="case")
    hashes, descs, n_computed = [], [], 0
    for i, img in enumerate(it):
        if i >= len(ids):
            raise ValueError("compute_density: more images than case ids")
        h = content_hash(img)
        hashes.append(h)
        dpath = cache / f"desc_{_key({'params': params, 'content': h})}.npy" if cache else None
        d = _load_descriptor(dpath) if dpath is not None else None
        if d is not None:
            descs.append(d)
        else:
            d = case_descriptor(img, resize, variance, n_quantiles, method)
            n_computed += 1
            if dpath is not None:
                with atomic_path(dpath) as tmp, tmp.open("wb") as f:
                    np.save(f, d, allow_pickle=False)
            descs.append(d)
        del img
    if len(descs) != len(ids):
        raise ValueError(f"compute_density: {len(descs)} images for {len(ids)} case ids")
    desc = np.stack(descs) if descs else np.zeros((0, 0, int(n_quantiles)))
    n = len(descs)
    rho: np.ndarray = np.zeros(0)
    dist: np.ndarray | None = None
    d_used = float("nan")
    if counts:
        cond = pairwise_condensed(desc) if n else np.zeros(0)
        rho, d_used = neighbour_counts_condensed(cond, n, delta, quantile, rule)
        dist = squareform(cond, checks=False) if 0 < n <= KEEP_DENSE_MAX else None
        if n == 0:
            dist = np.zeros((0, 0))
        del cond
    return DensityResult(
        density={c: float(r) for c, r in zip(ids, rho)},
        delta=d_used,
        quantile=None if delta is not None else float(quantile),
        key=_key({"params": params, "cases": sorted(zip(ids, hashes))}),
        case_ids=list(ids),
        distances=dist,
        descriptors=desc,
        from_cache=cache is not None and n_computed == 0,
        n_computed=n_computed,
        params=params,
    )
