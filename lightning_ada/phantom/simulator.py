"""Synthetic multi-modal, multi-centre MRI tumour phantom, deterministic from a seed.

Two tasks:

* ``glioma``: 4 channels (``flair, t1, t1ce, t2``, BraTS 2021 file naming), a skull-stripped
  brain (CSF / grey matter / white matter, ventricles) with a tumour made of oedema (ED, label 2),
  necrotic core (NCR, label 1) and an enhancing rim (ET, label 4).
* ``npc``: 3 channels (``t1, t1ce, t2``), a head/neck body (fat, muscle, mucosa, bone, airway)
  with a gross tumour volume (GTV, label 1) at the nasopharynx.

Each centre (scanner) is a tissue x modality intensity table plus bias field, Rician noise,
Gaussian blur, gamma and a global intensity scale. The source centre ``A`` makes the ``source``
and ``source_test`` splits; the target population (scanners ``B`` / ``C`` / ``D`` at 60 / 25 /
15 %, one modality degraded in 20 % of cases) makes ``pool`` and ``test``. See
``CALIBRATION.md`` for why these numbers give a usable domain gap at 32^3.

A :class:`Regime` sets tumour sizes, the target scanners and their mixture: ``phantom-1`` (the
default, the draw of every published table) or ``power`` (larger tumours for 24^3 volumes, one
contrast change shared by every target scanner, 10 % degraded cases: calibrated so that target
labels matter, ``benchmarks/calibration.md``).

Besides the reference label, every case has one mask per modality: what an annotator would draw
looking at that modality alone. Each tumour boundary is judged by its contrast-to-noise ratio on
that modality for that case; a boundary below ``_LO`` is not seen (the two regions merge, or the
region is missed), otherwise it is drawn with a boundary error that shrinks as contrast grows.

Two options model messier targets (issue 15; both off by default, and then every array and
``dataset.json`` is exactly what it was without them):

* ``open_set``: a share of the ``pool`` split's cases is made out of distribution (another
  anatomy, another field of view, no tumour, a corrupted scan, the modalities in the wrong channel
  order; :mod:`lightning_ada.phantom.open_set`), each flagged in its ``meta`` (``"ood"``: the kind,
  ``"ood_detail"``); every other case of such a phantom carries ``"ood": None``. The ``test`` and
  source splits never hold such a case. The in-distribution cases are the arrays the phantom
  without the option has.
* ``raters``: the target cases (``pool`` and ``test``) get one mask per rater style
  (:mod:`lightning_ada.phantom.raters`) beside the reference, and one datalist per rater,
  ``dataset_rater-<name>.json``: the same cases, the target ones labelled by that rater (and
  without per-modality masks, so every oracle delivers the rater's delineation). A run picks the
  rater with ``data.rater`` (or ``data.root: <root>/dataset_rater-<name>.json``).

Both are part of the generator record in ``dataset.json`` (a folder generated with other options is
never reused; :func:`folder_suffix` names a folder per option set).

Layout written under ``root``::

    dataset.json                               (written last, atomically)
    dataset_rater-<name>.json                  per-rater datalists (``raters`` only)
    <case_id>/<case_id>_<modality>.nii.gz      float32, 0 outside the head
    <case_id>/<case_id>_seg.nii.gz             uint8 reference label
    <case_id>/<case_id>_seg_<modality>.nii.gz  uint8 per-modality annotation
    <case_id>/<case_id>_seg_rater-<name>.nii.gz uint8 a rater's mask (``raters``, target cases)
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from scipy import ndimage

from lightning_ada.cases import Case
from lightning_ada.errors import DataError
from lightning_ada.io import write_json_atomic
from lightning_ada.phantom.open_set import (
    OOD_KINDS,
    field_of_view,
    in_distribution_flag,
    make_ood,
    plan_ood,
)
from lightning_ada.phantom.raters import DEFAULT_RATERS, RaterStyle, rater_masks

__all__ = [
    "REGIMES",
    "TASKS",
    "Regime",
    "case_centres",
    "folder_suffix",
    "generate_phantom",
    "load_phantom",
    "open_set_options",
    "rater_datalist",
    "rater_styles",
]

VERSION = "phantom-1"
Task = Literal["glioma", "npc"]

# Task description: modalities, tissue rows of the intensity tables, labels written to dataset.json.
TASKS: dict[str, dict[str, Any]] = {
    "glioma": {
        "modalities": ("flair", "t1", "t1ce", "t2"),
        "tissues": ("csf", "gm", "wm", "ed", "ncr", "et"),
        "labels": {"NCR": 1, "ED": 2, "ET": 4},
    },
    "npc": {
        "modalities": ("t1", "t1ce", "t2"),
        "tissues": ("fat", "muscle", "mucosa", "bone", "airway", "tumour"),
        "labels": {"GTV": 1},
    },
}
_SPLITS = {  # split -> (case id tag, seed code)
    "source": ("src", 0), "source_test": ("srctest", 1), "pool": ("pool", 2), "test": ("test", 3),
}
_LO, _HI, _EXC = 1.5, 3.0, 6.0  # contrast-to-noise thresholds: seen / clear / exact boundary
_BALL = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class Scanner:
    """One centre's acquisition.

    Attributes:
        name: centre name (``A`` is the source centre).
        table: (tissues, modalities) mean intensity per tissue, unitless (about 0-1.1).
        noise: Rician noise std, in table units (after gamma).
        bias: std of the log multiplicative bias field.
        blur: Gaussian blur std in voxels.
        gamma: exponent applied to the biased, blurred intensities.
        scale: global intensity scale (arbitrary scanner units).
    """

    name: str
    table: np.ndarray
    noise: float
    bias: float
    blur: float
    gamma: float
    scale: float


def _with(table: np.ndarray, task: str, changes: dict[tuple[str, str], float]) -> np.ndarray:
    """Copy of ``table`` with entries ``(tissue, modality) -> value`` changed."""
    out = table.copy()
    for (tissue, mod), v in changes.items():
        out[TASKS[task]["tissues"].index(tissue), TASKS[task]["modalities"].index(mod)] = v
    return out


@dataclass(frozen=True)
class Regime:
    """How a phantom is drawn: tumour sizes, the target scanners and their mixture.

    ``phantom-1`` is the original draw (every published table used it); ``power`` is the regime
    calibrated so that target labels matter (``benchmarks/calibration.md`` gives each value and
    why). Same seed and regime, same arrays.

    Attributes:
        name: regime name (``regime`` argument of :func:`generate_phantom`).
        radius: tumour radius range, fraction of the head half-width (log-uniform).
        core: glioma core radius range, fraction of the tumour radius.
        rim: glioma enhancing-rim thickness range in voxels.
        target_freq: share of target scanners ``B``, ``C``, ``D``.
        degraded_freq: share of target cases with one degraded modality.
        shift: which target scanner set :func:`_scanners` builds (``phantom-1``, ``power``).
    """

    name: str
    radius: tuple[float, float] = (0.2, 0.6)
    core: tuple[float, float] = (0.35, 0.7)
    rim: tuple[float, float] = (0.8, 1.6)
    target_freq: tuple[float, float, float] = (0.60, 0.25, 0.15)
    degraded_freq: float = 0.20
    shift: str = "phantom-1"


REGIMES: dict[str, dict[str, Regime]] = {
    "phantom-1": {t: Regime("phantom-1") for t in ("glioma", "npc")},
    # labels matter: tumours large enough to segment at 24^3, a contrast change shared by every
    # target scanner (one label teaches it) plus per-scanner extras (more labels cover them),
    # fewer degraded cases (benchmarks/calibration.md)
    "power": {
        "glioma": Regime("power", radius=(0.4, 0.7), core=(0.55, 0.8), rim=(0.8, 1.3),
                         degraded_freq=0.10, shift="power"),
        "npc": Regime("power", radius=(0.3, 0.6), degraded_freq=0.10, shift="power"),
    },
}


def _regime(task: str, name: str) -> Regime:
    if name not in REGIMES:
        raise ValueError(f"regime must be one of {list(REGIMES)}, got {name!r}")
    return REGIMES[name][task]


#: target splits: the ones a rater delineates (``open_set`` alters the ``pool`` split only)
_TARGET_SPLITS = ("pool", "test")
#: seed-sequence tags of the option streams (after ``[seed, task, split]``), apart from the
#: scanner (1) and degradation (2) assignment streams
_OOD_PLAN, _OOD_CASE, _RATER = 3, 5, 4


def open_set_options(open_set: Mapping[str, Any] | float | None) -> dict[str, Any] | None:
    """The normalised ``open_set`` option: ``{"fraction": f, "kinds": [...]}``, or None (off).

    Args:
        open_set: None (off); a fraction in [0, 1) (every kind of
            :data:`~lightning_ada.phantom.open_set.OOD_KINDS`); or a mapping with ``fraction`` and
            optionally ``kinds`` (a non-empty subset of those kinds, dealt in that order). A
            fraction of 0 is off.

    Raises:
        ValueError: an unknown key, a fraction outside [0, 1) or an unknown kind.
    """
    if open_set is None:
        return None
    if isinstance(open_set, (int, float)) and not isinstance(open_set, bool):
        open_set = {"fraction": float(open_set)}
    if not isinstance(open_set, Mapping):
        raise ValueError(
            f"phantom open_set must be a fraction or {{fraction, kinds}}, got {open_set!r}"
        )
    unknown = sorted(set(open_set) - {"fraction", "kinds"})
    if unknown or "fraction" not in open_set:
        raise ValueError(
            f"phantom open_set takes 'fraction' (required) and 'kinds', got {sorted(open_set)}"
        )
    fraction = float(open_set["fraction"])
    kinds = [str(k) for k in (open_set.get("kinds") or OOD_KINDS)]
    plan_ood(0, fraction, 0, kinds)  # checks the fraction and the kinds
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"phantom open_set kinds repeat a kind: {kinds}")
    return None if fraction == 0 else {"fraction": fraction, "kinds": kinds}


def rater_styles(
    raters: str | Sequence[RaterStyle | Mapping[str, Any]] | None,
) -> tuple[RaterStyle, ...]:
    """The normalised ``raters`` option: a tuple of styles (empty: off).

    Args:
        raters: None (off); ``"default"`` (:data:`~lightning_ada.phantom.raters.DEFAULT_RATERS`);
            or a list of :class:`~lightning_ada.phantom.raters.RaterStyle` or of mappings of its
            fields (``{name: generous, margin: 1, margin_fraction: 0.5}``).

    Raises:
        ValueError: an unknown preset, a bad style (the message names the rater) or two raters
            with one name.
    """
    if raters is None:
        return ()
    if isinstance(raters, str):
        if raters != "default":
            raise ValueError(f"phantom raters: the only preset is 'default', got {raters!r}")
        return DEFAULT_RATERS
    styles = []
    for r in raters:
        if isinstance(r, RaterStyle):
            styles.append(r)
            continue
        if not isinstance(r, Mapping):
            raise ValueError(
                f"phantom raters: each rater is a mapping of RaterStyle fields, got {r!r}"
            )
        try:
            fields = dict(r)
            fields["omit_labels"] = tuple(int(v) for v in fields.get("omit_labels") or ())
            styles.append(RaterStyle(**fields))
        except TypeError as e:
            raise ValueError(f"phantom raters: bad rater {dict(r)!r}: {e}") from e
    names = [s.name for s in styles]
    if len(set(names)) != len(names):
        raise ValueError(f"phantom raters: names must be unique, got {names}")
    return tuple(styles)


def _options(open_set: Any, raters: Any) -> dict[str, Any]:
    """The generator-record entries of the options that are on (JSON values)."""
    out: dict[str, Any] = {}
    opts = open_set_options(open_set)
    if opts is not None:
        out["open_set"] = opts
    styles = rater_styles(raters)
    if styles:
        out["raters"] = [s.to_json() for s in styles]
    return out


def folder_suffix(open_set: Any = None, raters: Any = None) -> str:
    """A folder-name suffix per option set: ``""`` when both are off, else e.g.
    ``"_ood20_3f9a1c2e"`` / ``"_raters4_..."`` (a short hash of the normalised options), so
    phantoms of different options never share a folder."""
    opts = _options(open_set, raters)
    if not opts:
        return ""
    parts = []
    if "open_set" in opts:
        parts.append(f"ood{round(100 * opts['open_set']['fraction'])}")
    if "raters" in opts:
        parts.append(f"raters{len(opts['raters'])}")
    digest = hashlib.sha1(json.dumps(opts, sort_keys=True).encode()).hexdigest()[:8]
    return "_" + "_".join(parts + [digest])


def rater_datalist(root: str | Path, rater: str) -> Path:
    """The datalist of ``rater``'s labels in a phantom generated with ``raters``.

    Args:
        root: the phantom folder (or a JSON file in it).
        rater: the rater's name.

    Raises:
        DataError: no such datalist (the message lists the phantom's raters).
    """
    folder = Path(root)
    folder = folder.parent if folder.suffix == ".json" else folder
    path = folder / f"dataset_rater-{rater}.json"
    if not path.is_file():
        known: list[str] = []
        try:
            known = list(json.loads((folder / "dataset.json").read_text()).get("raters") or [])
        except (OSError, ValueError):
            pass
        raise DataError(
            f"{path}: no labels of rater {rater!r} here (this phantom's raters: "
            f"{known or 'none'}); generate it with data.phantom.raters"
        )
    return path


def case_centres(
    task: str, split: str, n: int, seed: int, regime: str = "phantom-1"
) -> list[str]:
    """The centre of each of the first ``n`` cases of ``split``, as :func:`generate_phantom`
    assigns them (prefix-stable; no file is read or written).

    Raises:
        ValueError: unknown task, split or regime.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    reg = _regime(task, regime)
    names = [sc.name for sc in _scanners(task, reg.shift)]
    scan, _ = _split_plan(split, n, reg, seed, list(TASKS).index(task))
    return [names[i] for i in scan]


def _split_plan(
    split: str, n: int, reg: Regime, seed: int, task_code: int
) -> tuple[list[int], list[bool]]:
    """(scanner index, degraded?) of each of the ``n`` cases of ``split``."""
    if split in ("source", "source_test"):
        return [0] * n, [False] * n
    split_code = _SPLITS[split][1]
    scan = [1 + j for j in _assign(n, np.array(reg.target_freq), [seed, task_code, split_code, 1])]
    freq = np.array([1 - reg.degraded_freq, reg.degraded_freq])
    degr = [j == 1 for j in _assign(n, freq, [seed, task_code, split_code, 2])]
    return scan, degr


def _power_targets(task: str, a: np.ndarray) -> list[Scanner]:
    """Target scanners of the ``power`` regime: one shared protocol change, three image qualities.

    The shared change alters tissue contrasts non-monotonically (no global intensity
    augmentation undoes it) but leaves every tumour region distinguishable from its neighbours
    in at least one modality, so labels can teach it.
    """
    if task == "glioma":
        common = {("ed", "flair"): 0.62, ("csf", "flair"): 0.40, ("et", "t1ce"): 0.92,
                  ("ncr", "t2"): 0.72, ("ncr", "flair"): 0.50, ("wm", "t2"): 0.50}
    else:
        common = {("fat", "t1ce"): 0.20, ("fat", "t2"): 0.25, ("tumour", "t1ce"): 0.62,
                  ("mucosa", "t1ce"): 0.78, ("tumour", "t2"): 0.75, ("muscle", "t2"): 0.35}
    b = _with(a, task, common)
    # the scanners differ in image quality only: a contrast change of one scanner that
    # contradicts another's (phantom-1's grey/white reversal on C) made a single label of
    # that scanner worse than none on the others (benchmarks/calibration.md)
    return [
        Scanner("B", b, noise=0.04, bias=0.15, blur=0.6, gamma=1.0, scale=350.0),
        Scanner("C", b, noise=0.05, bias=0.10, blur=0.9, gamma=1.0, scale=60.0),
        Scanner("D", b, noise=0.06, bias=0.25, blur=0.5, gamma=0.7, scale=1200.0),
    ]


def _scanners(task: str, shift: str = "phantom-1") -> list[Scanner]:
    """The four centres of ``task``: source ``A`` then targets ``B`` (60 %), ``C`` (25 %), ``D``."""
    if task == "glioma":
        #                  flair   t1  t1ce    t2
        a = np.array([[0.10, 0.20, 0.22, 1.00],  # csf
                      [0.55, 0.55, 0.57, 0.60],  # gm
                      [0.45, 0.75, 0.78, 0.35],  # wm
                      [0.95, 0.68, 0.62, 0.85],  # ed: bright FLAIR/T2, faint on T1/T1c
                      [0.70, 0.35, 0.35, 0.95],  # ncr: dark T1/T1c, bright T2
                      [0.75, 0.60, 1.10, 0.80]])  # et: enhancing on T1c only
        b = _with(a, task, {("ed", "flair"): 0.68, ("csf", "flair"): 0.35, ("et", "t1ce"): 0.80,
                            ("wm", "t2"): 0.45, ("ncr", "t2"): 0.75})
        c = _with(a, task, {("gm", "t1"): 0.75, ("wm", "t1"): 0.55})  # grey/white reversed on T1
    else:
        #                   t1  t1ce    t2
        a = np.array([[0.95, 0.90, 0.85],  # fat
                      [0.40, 0.45, 0.30],  # muscle
                      [0.45, 0.75, 0.70],  # mucosa: enhancing, T2-bright
                      [0.12, 0.15, 0.10],  # bone (cortical)
                      [0.03, 0.03, 0.03],  # airway
                      [0.52, 0.80, 0.55]])  # tumour: moderate T1, strongest on T1c
        # common target: fat-suppressed T1c/T2, weaker enhancement, brighter T2 tumour
        b = _with(a, task, {("fat", "t1ce"): 0.20, ("fat", "t2"): 0.25, ("tumour", "t1ce"): 0.65,
                            ("mucosa", "t1ce"): 0.70, ("tumour", "t2"): 0.72,
                            ("muscle", "t2"): 0.35})
        c = _with(a, task, {("fat", "t1"): 0.75, ("tumour", "t1"): 0.45})  # T1-isointense tumour
    source = Scanner("A", a, noise=0.03, bias=0.10, blur=0.5, gamma=1.0, scale=100.0)
    if shift == "power":
        return [source, *_power_targets(task, a)]
    return [
        source,
        Scanner("B", b, noise=0.04, bias=0.15, blur=0.6, gamma=1.0, scale=350.0),
        Scanner("C", c, noise=0.03, bias=0.10, blur=1.0, gamma=1.0, scale=60.0),
        Scanner("D", a, noise=0.07, bias=0.30, blur=0.5, gamma=0.6, scale=1200.0),
    ]


def _assign(n: int, freq: np.ndarray, key: list[int]) -> list[int]:
    """Prefix-stable proportional assignment of ``n`` items to ``len(freq)`` classes.

    Item ``k`` goes to the class furthest behind its quota (plus a seeded jitter), so every prefix
    (hence even a small pool) follows ``freq`` to within about one item, and adding items never
    changes earlier ones.
    """
    counts, out = np.zeros(len(freq)), []
    for k in range(n):
        jitter = np.random.default_rng([*key, k]).uniform(0.0, 0.5, len(freq))
        j = int(np.argmax(freq * (k + 1) - counts + jitter))
        counts[j] += 1
        out.append(j)
    return out


@lru_cache(maxsize=32)
def _upsampler(size: int, cells: int) -> np.ndarray:
    """(size, cells) matrix of 1-D cubic-spline upsampling (``ndimage.zoom`` is separable)."""
    eye = np.eye(cells)
    return np.stack([ndimage.zoom(e, size / cells, order=3, mode="mirror")[:size] for e in eye], 1)


def _smooth(rng: np.random.Generator, size: int, cells: int = 4) -> np.ndarray:
    """(size, size, size) low-frequency random field, zero mean and unit std."""
    w = _upsampler(size, cells)
    f = np.einsum("ai,bj,ck,ijk->abc", w, w, w, rng.standard_normal((cells,) * 3), optimize=True)
    return (f - f.mean()) / (f.std() + 1e-8)


def _grid(size: int) -> np.ndarray:
    """(3, H, W, D) voxel-centre coordinates in [-1, 1]."""
    g = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    return np.stack(np.meshgrid(g, g, g, indexing="ij"))


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A random 3x3 rotation matrix."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _blob(rng: np.random.Generator, xyz: np.ndarray, centre: np.ndarray, radii: np.ndarray,
          rot: np.ndarray, wobble: float) -> np.ndarray:
    """(H, W, D) normalised distance of an irregular ellipsoid (<= 1 inside)."""
    rel = np.einsum("ij,j...->i...", rot, xyz - centre[:, None, None, None])
    d = np.sqrt(((rel / radii[:, None, None, None]) ** 2).sum(0))
    return d * (1.0 + wobble * np.tanh(_smooth(rng, xyz.shape[1])))


def _log_radius(rng: np.random.Generator, lo: float = 0.2, hi: float = 0.6) -> float:
    """Tumour radius as a fraction of the head half-width, log-uniform in ``lo``-``hi``."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _tumour_geometry(
    rng: np.random.Generator, xyz: np.ndarray, centre: np.ndarray, frac: float,
    half_width: float, allowed: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, float]:
    """An irregular tumour of radius ``frac * half_width`` (normalised units) at ``centre``.

    Returns:
        (the normalised distance field, the region inside ``allowed``, radius in voxels).
    """
    size = xyz.shape[1]
    r = frac * half_width
    radii = r * (1.0 + rng.uniform(-0.2, 0.2, 3))
    d = _blob(rng, xyz, centre, radii, _rotation(rng), wobble=0.22)
    region = (d <= 1.0) & allowed
    if not region.any():  # a tiny tumour falling between voxel centres: keep its nearest voxel
        idx = np.unravel_index(np.argmin(np.where(allowed, d, np.inf)), d.shape)
        region[idx] = True
    return d, region, float(r * size / 2)


def _glioma_anatomy(
    rng: np.random.Generator, size: int, regime: Regime
) -> tuple[np.ndarray, np.ndarray, float]:
    """Tissue map (H, W, D) int8 (-1 background, else a row of the glioma table), GT, radius."""
    xyz = _grid(size)
    axes = np.array([0.86, 0.72, 0.80]) * (1.0 + 0.04 * rng.standard_normal(3))
    c0 = 0.03 * rng.standard_normal(3)
    rel = (xyz - c0[:, None, None, None]) / axes[:, None, None, None]
    r = np.sqrt((rel**2).sum(0))
    tissue = np.full(r.shape, -1, np.int8)
    tissue[r <= 1.0] = 2  # wm
    tissue[(r <= 1.0) & (r > 0.72 + 0.05 * _smooth(rng, size, 6))] = 1  # folded cortex
    tissue[(r <= 1.0) & (r > 0.90 + 0.02 * _smooth(rng, size, 6))] = 0  # sulcal csf
    vr = np.array([0.07, 0.28, 0.13]) * (1.0 + 0.15 * rng.standard_normal(3)).clip(0.6, 1.4)
    for side in (-1.0, 1.0):
        v = rel - np.array([side * 0.12, 0.0, 0.05])[:, None, None, None]
        tissue[((v / vr[:, None, None, None]) ** 2).sum(0) <= 1.0] = 0
    # tumour: oedema blob, offset core of 35-70 % its size, enhancing rim 0.8-1.6 voxels thick
    # (at most half the core radius, so small cores keep some necrosis)
    frac = _log_radius(rng, *regime.radius)
    p = rng.standard_normal(3)
    p = p / np.linalg.norm(p) * rng.uniform() ** (1 / 3) * max(0.15, 0.78 - 0.5 * frac)
    centre = c0 + p * axes
    d, region, r_vox = _tumour_geometry(rng, xyz, centre, frac, float(axes.mean()), r <= 0.93)
    core_frac = rng.uniform(*regime.core)
    core_c = centre + 0.15 * (r_vox * 2 / size) * rng.standard_normal(3)
    rot = _rotation(rng)
    core_r = core_frac * (r_vox * 2 / size) * (1.0 + rng.uniform(-0.2, 0.2, 3))
    dc = _blob(rng, xyz, core_c, core_r, rot, wobble=0.15)
    core = (dc <= 1.0) & region
    rim = min(rng.uniform(*regime.rim) / max(core_frac * r_vox, 1e-3), 0.5)  # fraction of core
    et = core & (dc > 1.0 - rim)
    kind = rng.uniform()
    partial = _smooth(rng, size) > 0
    if kind < 0.08:  # non-enhancing tumour
        et[:] = False
    elif kind < 0.18:  # incomplete rim
        et &= partial
    seg = np.zeros(r.shape, np.uint8)
    seg[region] = 2
    seg[core] = 1
    seg[et] = 4
    tissue[region] = 3
    tissue[core] = 4
    tissue[et] = 5
    return tissue, seg, r_vox


def _npc_anatomy(
    rng: np.random.Generator, size: int, regime: Regime
) -> tuple[np.ndarray, np.ndarray, float]:
    """Tissue map (H, W, D) int8 (-1 background, else a row of the npc table), GT, radius."""
    x, y, z = _grid(size)
    jit = 1.0 + 0.04 * rng.standard_normal(3)
    taper = np.clip(-z, 0.0, 1.0)  # the neck (z < 0) narrows
    rx, ry, rz = (0.80 - 0.22 * taper) * jit[0], (0.76 - 0.16 * taper) * jit[1], 0.96 * jit[2]
    rb = np.sqrt((x / rx) ** 2 + (y / ry) ** 2 + (z / rz) ** 2)
    body = rb <= 1.0
    tissue = np.full(x.shape, -1, np.int8)
    tissue[body] = 1  # muscle
    tissue[body & (rb > 0.86 + 0.03 * _smooth(rng, size, 6))] = 0  # subcutaneous fat
    for side in (-1.0, 1.0):  # parapharyngeal fat
        tissue[((x - side * 0.30) / 0.08) ** 2 + (y / 0.15) ** 2 + ((z - 0.2) / 0.2) ** 2 <= 1] = 0
    base = 0.52 + 0.04 * rng.standard_normal()
    bone = body & (rb <= 0.86) & (((z > base) & (z < base + 0.16))  # skull base
                                  | ((x**2 + (y - 0.45) ** 2 <= 0.13**2) & (z < base)))  # spine
    tissue[bone] = 3
    npx = np.array([0.0, -0.05, 0.3]) + 0.03 * rng.standard_normal(3)
    dx, dy, dz = (x - npx[0]) / 0.22, (y - npx[1]) / 0.16, (z - npx[2]) / 0.16
    airway = dx**2 + dy**2 + dz**2 <= 1  # nasopharynx
    airway |= ((x / 0.12) ** 2 + ((y + 0.05) / 0.10) ** 2 <= 1) & (z < npx[2])  # oropharynx
    airway |= (x / 0.15) ** 2 + ((y + 0.45) / 0.30) ** 2 + ((z - 0.35) / 0.12) ** 2 <= 1  # nose
    airway &= body & ~bone
    tissue[ndimage.binary_dilation(airway, _BALL) & body & ~bone] = 2  # mucosa
    tissue[airway] = 4
    side, frac = rng.choice([-1.0, 1.0]), _log_radius(rng, *regime.radius)
    centre = npx + np.array([side * rng.uniform(0, 0.18), 0.16 + rng.uniform(-0.05, 0.1),
                             rng.uniform(-0.12, 0.12)])
    half_width = float((0.80 * jit[0] + 0.76 * jit[1]) / 2)
    allowed = body & (rb <= 0.86) & ~bone
    d, region, r_vox = _tumour_geometry(rng, np.stack([x, y, z]), centre, frac, half_width, allowed)
    region &= ~airway | (d < 0.6)  # the tumour bulges into, but does not fill, the lumen
    if not region.any():
        region[np.unravel_index(np.argmin(np.where(body & ~bone, d, np.inf)), d.shape)] = True
    tissue[region] = 5
    return tissue, region.astype(np.uint8), r_vox


def _perception(sc: Scanner, deg: str | None) -> tuple[float, float]:
    """(noise an annotator perceives in table units, blur in voxels) of one modality."""
    noise, blur, ghost = sc.noise, sc.blur, 0.0
    if deg == "noise":
        noise += 0.15
    elif deg == "blur":
        blur += 2.0
    elif deg == "motion":
        ghost, blur = 0.10, blur + 1.0
    sigma = np.sqrt(noise**2 + (0.15 * sc.bias) ** 2 + 0.02**2 + ghost**2) * (1 + 0.5 * blur)
    return float(sigma), blur


def _cnr(diff: float, thickness: float, sigma: float, blur: float) -> float:
    """Contrast-to-noise ratio of a boundary; blur washes out structures thinner than 2 blur."""
    return abs(diff) / sigma * min(1.0, thickness / (2.0 * blur))


def _thickness(mask: np.ndarray) -> float:
    """Approximate thickness in voxels of the thickest part of ``mask`` (0 if empty)."""
    box = ndimage.find_objects(mask.astype(np.int8))
    if not box:
        return 0.0
    crop = np.pad(mask[box[0]], 1)  # the distance transform on the bounding box only
    return 2.0 * float(ndimage.distance_transform_edt(crop).max()) - 1.0


def _level(cnr: float) -> int:
    """0 unseen, 1 visible (1-voxel boundary error), 2 clear (partial error), 3 exact."""
    return int(np.searchsorted([_LO, _HI, _EXC], cnr, side="right"))


def _draw(region: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """An annotator's outline of ``region`` (H, W, D) bool at boundary quality ``level``."""
    if level >= 3:
        return region
    erode = rng.uniform() < (0.6 if level <= 1 else 0.5)
    moved = (ndimage.binary_erosion if erode else ndimage.binary_dilation)(region, _BALL)
    if level == 2:  # error on part of the boundary only
        return np.where(_smooth(rng, region.shape[0]) > 0, moved, region)
    if level == 0:  # barely seen: under-drawn by 1 voxel, by 2 on part of the boundary
        inner = ndimage.binary_erosion(region, _BALL)
        inner2 = ndimage.binary_erosion(inner, _BALL)
        return np.where(_smooth(rng, region.shape[0]) > 0, inner2, inner)
    return moved


def _shell_contrast(tissue: np.ndarray, inside: np.ndarray, vals: np.ndarray, v_in: float,
                    exclude: tuple[int, ...] = ()) -> float:
    """Mean |v_in - v_t| over the healthy tissues t in a 1-voxel shell around ``inside``."""
    shell = ndimage.binary_dilation(inside, _BALL) & ~inside & (tissue >= 0)
    t = tissue[shell]
    t = t[~np.isin(t, exclude)] if exclude else t
    if t.size == 0:
        return 1.0
    return float(np.abs(v_in - vals[t]).mean())


def _glioma_masks(tissue: np.ndarray, seg: np.ndarray, vals: np.ndarray, sigma: float,
                  blur: float, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Per-modality glioma annotation (H, W, D) uint8.

    ``vals`` (tissues,) are this modality's intensities, ``sigma`` and ``blur`` its perceived
    noise and blur (:func:`_perception`), ``cap`` the best boundary quality allowed (1 on a
    degraded modality).
    """
    ed, ncr, et = 3, 4, 5
    chain = [t for t in (ncr, et, ed) if (tissue == t).any()]  # inner -> outer, then brain
    th = {t: _thickness(tissue == t) for t in chain}
    cnr = [_cnr(vals[a] - vals[b], min(th[a], th[b]), sigma, blur)
           for a, b in zip(chain, chain[1:])]
    outer = np.isin(tissue, [ed, ncr, et])
    diff = _shell_contrast(tissue, outer, vals, vals[chain[-1]], exclude=(ed, ncr, et))
    cnr.append(_cnr(diff, _thickness(outer), sigma, blur))
    # edge k separates chain[:k+1] from the rest; unseen edges merge their two sides
    groups, current = [], [chain[0]]
    for k, c in enumerate(cnr):
        if _level(c) == 0:
            current.append(chain[k + 1] if k + 1 < len(chain) else -1)
        else:
            groups.append((k, current))
            current = [chain[k + 1]] if k + 1 < len(chain) else []
    out = np.zeros(seg.shape, np.uint8)
    for k, members in reversed(groups):  # paint outer edges first
        if -1 in members:
            continue
        label = 2 if ed in members else 1 if ncr in members else 4
        out[_draw(np.isin(tissue, chain[: k + 1]), min(_level(cnr[k]), cap), rng)] = label
    return out


def _npc_mask(tissue: np.ndarray, seg: np.ndarray, vals: np.ndarray, sigma: float, blur: float,
              cap: int, rng: np.random.Generator) -> np.ndarray:
    """Per-modality npc annotation (H, W, D) uint8; arguments as :func:`_glioma_masks`."""
    tum = seg > 0
    diff = _shell_contrast(tissue, tum, vals, vals[5], exclude=(2,))
    cnr = _cnr(diff, _thickness(tum), sigma, blur)
    drawn = _draw(tum, min(_level(cnr), cap), rng)
    if abs(vals[5] - vals[2]) / sigma < _LO:  # mucosa looks like tumour: over-drawn into it
        near = ndimage.binary_dilation(drawn | tum, _BALL, iterations=2)
        drawn |= near & (tissue == 2)
    return drawn.astype(np.uint8)


def _acquire(tissue: np.ndarray, sc: Scanner, table: np.ndarray, deg: tuple[int, str] | None,
             rng: np.random.Generator) -> np.ndarray:
    """(C, H, W, D) float32 images of ``tissue``: blur, bias, gamma, Rician noise, scale."""
    head = tissue >= 0
    lut = np.vstack([table, np.zeros((1, table.shape[1]))])  # index -1 -> background 0
    out = np.zeros((table.shape[1], *tissue.shape), np.float32)
    for m in range(table.shape[1]):
        kind = deg[1] if deg is not None and deg[0] == m else None
        x = ndimage.gaussian_filter(lut[tissue, m], sc.blur + (2.0 if kind == "blur" else 0.0))
        if kind == "motion":  # directional smear plus a ghost shifted along the phase axis
            ax = int(rng.integers(3))
            x = ndimage.gaussian_filter1d(x, 1.2, axis=ax)
            x = x + 0.35 * np.roll(x, tissue.shape[ax] // 3, axis=ax)
        x = (x * np.exp(sc.bias * _smooth(rng, tissue.shape[0]))).clip(0.0) ** sc.gamma
        s = sc.noise + (0.15 if kind == "noise" else 0.0)
        re, im = s * rng.standard_normal(x.shape), s * rng.standard_normal(x.shape)
        x = np.sqrt((x + re) ** 2 + im**2)  # magnitude image: Rician noise, always > 0
        out[m] = np.where(head, np.maximum(x, 1e-3) * sc.scale, 0.0)
    return out


def _affine(size: int) -> np.ndarray:
    """LPS-like affine, isotropic 192/size mm spacing, volume centred on the origin."""
    s = 192.0 / size
    half = s * (size - 1) / 2
    return np.array([[-s, 0, 0, half], [0, -s, 0, half], [0, 0, s, -half], [0, 0, 0, 1.0]])


def _save(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)


def _ood_mask(kind: str, flag: Mapping[str, Any], mask: np.ndarray) -> np.ndarray:
    """An annotation ``(H, W, D)`` of a case made out of distribution, following its arrays."""
    if kind in ("other_anatomy", "no_tumour"):
        return np.zeros_like(mask)
    if kind == "field_of_view":
        detail = flag["ood_detail"]
        empty = np.zeros((1, *mask.shape), np.float32)
        rng = np.random.default_rng(0)  # unused: scale and shift are given
        return field_of_view(empty, mask, rng, detail["scale"], detail["shift"]).label
    return mask  # corrupted / channel_order: the same anatomy, drawn as before


def _make_case(root: Path, task: str, split: str, index: int, scanner_index: int,
               degraded: bool, size: int, seed: int, regime: Regime, ood: str | None = None,
               open_set: bool = False, raters: tuple[RaterStyle, ...] = ()) -> Case:
    """Synthesise, write and describe one case (paths relative to ``root``).

    ``ood``: make the case out of distribution of this kind; ``open_set``: flag the case (an
    open-set phantom flags all its cases); ``raters``: write one mask per rater style.
    """
    spec, scanners = TASKS[task], _scanners(task, regime.shift)
    tag, split_code = _SPLITS[split]
    case_id = f"{task}_{tag}_{index:03d}"
    task_code = list(TASKS).index(task)
    ss = np.random.SeedSequence([seed, task_code, split_code, index])
    rng_anat, rng_acq, rng_ann = (np.random.default_rng(s) for s in ss.spawn(3))
    anatomy = _glioma_anatomy if task == "glioma" else _npc_anatomy
    tissue, seg, r_vox = anatomy(rng_anat, size, regime)
    sc = scanners[scanner_index]
    table = sc.table * (1.0 + 0.02 * rng_acq.standard_normal(sc.table.shape))  # per-case jitter
    mods = spec["modalities"]
    deg = None
    if degraded:
        deg = (int(rng_acq.integers(len(mods))), str(rng_acq.choice(["noise", "blur", "motion"])))
    images = _acquire(tissue, sc, table, deg, rng_acq)
    mask_fn = _glioma_masks if task == "glioma" else _npc_mask
    eff = table.clip(0.0) ** sc.gamma  # contrasts as acquired
    masks = {}
    for m, mod in enumerate(mods):
        kind = deg[1] if deg is not None and deg[0] == m else None
        cap = 3 if kind is None else 1
        masks[mod] = mask_fn(tissue, seg, eff[:, m], *_perception(sc, kind), cap, rng_ann)

    meta: dict[str, Any] = {"centre": sc.name, "scanner_index": scanner_index}
    if ood is not None:
        rng_ood = np.random.default_rng([seed, task_code, split_code, _OOD_CASE, index])
        made = make_ood(ood, images, seg, rng_ood)
        if ood == "field_of_view":  # redo with the recorded (rounded) values: the flag is exact
            detail = made.flag["ood_detail"]
            made = field_of_view(images, seg, rng_ood, detail["scale"], detail["shift"])
        masks = {mod: _ood_mask(ood, made.flag, mk) for mod, mk in masks.items()}
        images, seg = made.image, made.label
    vox = {name: int((seg == v).sum()) for name, v in spec["labels"].items()}
    vox["total"] = int((seg > 0).sum())
    meta |= {"tumour_voxels": vox, "tumour_radius_vox": round(r_vox, 3),
             "degraded_modality": mods[deg[0]] if deg else None,
             "degradation": deg[1] if deg else None}
    if open_set:
        meta |= made.flag if ood is not None else in_distribution_flag()

    affine = _affine(size)
    (root / case_id).mkdir(parents=True, exist_ok=True)
    rel = lambda suffix: f"{case_id}/{case_id}_{suffix}.nii.gz"  # noqa: E731
    for m, mod in enumerate(mods):
        _save(images[m], affine, root / rel(mod))
    _save(seg, affine, root / rel("seg"))
    for mod in mods:
        _save(masks[mod], affine, root / rel(f"seg_{mod}"))
    if raters:
        drawn = rater_masks(seg, raters, seed=[seed, task_code, split_code, _RATER, index])
        for name, mask in drawn.items():
            _save(mask, affine, root / rel(f"seg_rater-{name}"))
        meta["rater_labels"] = {name: rel(f"seg_rater-{name}") for name in drawn}
    return Case(case_id=case_id, images=tuple(rel(m) for m in mods), modalities=tuple(mods),
                label=rel("seg"), modality_labels={m: rel(f"seg_{m}") for m in mods},
                split=split, meta=meta)


def _rater_datalist(head: dict[str, Any], cases: Sequence[Case], style: RaterStyle) -> dict:
    """The datalist of one rater: the target cases labelled by the rater, nothing else changed."""
    entries = []
    for c in cases:
        entry = c.to_json()
        if c.split in _TARGET_SPLITS:
            entry["label"] = c.meta["rater_labels"][style.name]
            entry["modality_labels"] = {}  # the rater's delineation is the only one
            entry["meta"]["rater"] = style.name
        entries.append(entry)
    return {**head, "name": f"{head['name']}_rater-{style.name}", "rater": style.to_json(),
            "cases": entries}


def generate_phantom(root: str | Path, task: Task = "glioma", size: int = 32, n_source: int = 20,
                     n_source_test: int = 6, n_pool: int = 30, n_test: int = 12, seed: int = 0,
                     overwrite: bool = False, progress: bool = True,
                     regime: str = "phantom-1",
                     open_set: Mapping[str, Any] | float | None = None,
                     raters: str | Sequence[RaterStyle | Mapping[str, Any]] | None = None) -> Path:
    """Generate (or reuse) a synthetic multi-centre phantom under ``root``.

    Images are (H, W, D) = (size, size, size) float32 volumes, one NIfTI per modality, in
    arbitrary scanner units (0 outside the head); voxels are isotropic ``192 / size`` mm. Every
    case is drawn from its own generator seeded by ``(seed, task, split, index)``, so the same
    seed gives identical arrays and adding cases leaves earlier anatomies unchanged. Scanner and
    degradation assignment is prefix-stable too (:func:`_assign`).

    Each case's ``meta`` holds ``centre`` (``A`` source, ``B``/``C``/``D`` target),
    ``scanner_index`` (0-3 in that order), ``tumour_voxels`` (per label name and ``total``),
    ``tumour_radius_vox`` (mean radius in voxels before irregularity), ``degraded_modality`` and
    ``degradation`` (``noise``/``blur``/``motion``; both None when no modality is degraded);
    with ``open_set`` also ``ood`` (the kind, or None) and for an out-of-distribution case
    ``ood_detail``; with ``raters`` (target cases) ``rater_labels`` (rater -> mask path).

    Args:
        root: output folder.
        task: ``"glioma"`` (flair, t1, t1ce, t2; NCR 1, ED 2, ET 4) or ``"npc"`` (t1, t1ce, t2;
            GTV 1).
        size: edge length of the cubic volume in voxels.
        n_source: cases of split ``source`` (centre A).
        n_source_test: cases of split ``source_test`` (centre A).
        n_pool: cases of split ``pool`` (target scanners B / C / D at 60 / 25 / 15 %).
        n_test: cases of split ``test`` (same target population).
        seed: non-negative integer seed.
        overwrite: regenerate when ``root/dataset.json`` exists with different parameters.
        progress: show a tqdm progress bar.
        regime: ``phantom-1`` (the original draw) or ``power`` (calibrated so that target
            labels matter: larger tumours, a shared learnable target shift; see
            :class:`Regime` and ``benchmarks/calibration.md``).
        open_set: make this share of the ``pool`` split out of distribution
            (:func:`open_set_options`: a fraction, or ``{fraction, kinds}``); exactly
            ``round(fraction * n_pool)`` cases, kinds dealt in turn, seeded by ``seed``
            (:func:`~lightning_ada.phantom.open_set.plan_ood`). None or 0: off.
        raters: rater styles (:func:`rater_styles`: ``"default"`` or a list of
            :class:`~lightning_ada.phantom.raters.RaterStyle` fields) whose masks of the target
            cases are written, with one datalist per rater (:func:`rater_datalist`). None: off.

    Returns:
        The path of ``root/dataset.json`` (a datalist: ``{"name", "task", "modalities",
        "labels", "generator", "cases"}`` with paths relative to ``root``; with ``raters`` also
        ``"raters"``: rater name -> its datalist file).

    Raises:
        ValueError: bad arguments.
        FileExistsError: ``root`` holds a phantom generated with other parameters and
            ``overwrite`` is False.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    reg = _regime(task, regime)
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    counts = {"source": n_source, "source_test": n_source_test, "pool": n_pool, "test": n_test}
    if any(n < 0 for n in counts.values()) or seed < 0:
        raise ValueError(f"case counts and seed must be non-negative, got {counts}, seed={seed}")
    root = Path(root)
    out = root / "dataset.json"
    params = {"task": task, "size": size, "n_source": n_source, "n_source_test": n_source_test,
              "n_pool": n_pool, "n_test": n_test, "seed": seed, "version": VERSION}
    if regime != "phantom-1":  # absent for the original regime: its phantoms stay valid
        params["regime"] = json.loads(json.dumps(asdict(reg)))  # its values: edits miss the cache
    options = _options(open_set, raters)  # absent when off: the phantoms without them stay valid
    params |= options
    ood_opts, styles = options.get("open_set"), rater_styles(raters)
    if out.exists():
        try:
            old = json.loads(out.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("generator") == params:
            return out
        if not overwrite:
            raise FileExistsError(
                f"{out} was generated with {old.get('generator')}, not {params}; "
                "pass overwrite=True or choose another root")
        out.unlink()  # from here on an interruption leaves no dataset.json
        for c in old.get("cases", []):
            cid = str(c.get("case_id", ""))
            if cid and "/" not in cid and (root / cid).is_dir():
                shutil.rmtree(root / cid)
    for stale in root.glob("dataset_rater-*.json"):  # a rater datalist of an earlier draw
        stale.unlink()

    jobs = []
    task_code = list(TASKS).index(task)
    for split, n in counts.items():
        scan, degr = _split_plan(split, n, reg, seed, task_code)
        ood: list[str | None] = [None] * n
        if ood_opts is not None and split == "pool":
            key = [seed, task_code, _SPLITS[split][1], _OOD_PLAN]
            ood = plan_ood(n, ood_opts["fraction"], key, ood_opts["kinds"])
        jobs += [(split, i, scan[i], degr[i], ood[i]) for i in range(n)]
    it = jobs
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(jobs, desc=f"phantom {task} {size}^3", unit="case")
    cases = [
        _make_case(root, task, sp, i, s, d, size, seed, reg, ood=o, open_set=ood_opts is not None,
                   raters=styles if sp in _TARGET_SPLITS else ())
        for sp, i, s, d, o in it
    ]
    spec = TASKS[task]
    head = {"name": f"phantom_{task}", "task": task, "modalities": list(spec["modalities"]),
            "labels": dict(spec["labels"]), "generator": params}
    for style in styles:  # before dataset.json: its presence means the whole phantom is there
        write_json_atomic(root / f"dataset_rater-{style.name}.json",
                          _rater_datalist(head, cases, style))
    if styles:
        head["raters"] = {st.name: f"dataset_rater-{st.name}.json" for st in styles}
    write_json_atomic(out, {**head, "cases": [c.to_json() for c in cases]})
    return out


def load_phantom(root: str | Path) -> list[Case]:
    """The cases of a generated phantom, with absolute paths.

    Args:
        root: the phantom folder, or its ``dataset.json``.

    Raises:
        DataError: no (complete) phantom at ``root``.
    """
    path = Path(root)
    if path.is_dir():
        path = path / "dataset.json"
    if not path.is_file():
        raise DataError(f"{path}: no phantom here (missing or interrupted generation)")
    d = json.loads(path.read_text())
    return [Case.from_json(c, path.parent) for c in d["cases"]]
