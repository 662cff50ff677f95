"""Tests of the synthetic multi-centre phantom (tiny volumes, whole file in a few seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lightning_ada.errors import DataError
from lightning_ada.phantom.simulator import TASKS, generate_phantom, load_phantom

GLIOMA = dict(task="glioma", size=20, n_source=4, n_source_test=2, n_pool=20, n_test=4, seed=3)
NPC = dict(task="npc", size=20, n_source=3, n_source_test=1, n_pool=12, n_test=2, seed=1)


@pytest.fixture(scope="module")
def glioma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_phantom(tmp_path_factory.mktemp("glioma"), progress=False, **GLIOMA)


@pytest.fixture(scope="module")
def npc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_phantom(tmp_path_factory.mktemp("npc"), progress=False, **NPC)


def _arr(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def _score(mask: np.ndarray, gt: np.ndarray, task: str) -> float:
    """Mean Dice over WT / TC / ET (glioma) or of the GTV (npc)."""
    if task == "npc":
        return _dice(mask > 0, gt > 0)
    regions = [lambda a: a > 0, lambda a: (a == 1) | (a == 4), lambda a: a == 4]
    return float(np.mean([_dice(r(mask), r(gt)) for r in regions]))


@pytest.mark.parametrize("name", ["glioma", "npc"])
def test_layout_and_files(name: str, request: pytest.FixtureRequest) -> None:
    out: Path = request.getfixturevalue(name)
    params = GLIOMA if name == "glioma" else NPC
    spec = TASKS[name]
    root = out.parent
    d = json.loads(out.read_text())
    assert out.name == "dataset.json"
    assert d["task"] == name and d["modalities"] == list(spec["modalities"])
    assert d["labels"] == spec["labels"]
    assert {k: v for k, v in d["generator"].items() if k != "version"} == params
    n = params["n_source"] + params["n_source_test"] + params["n_pool"] + params["n_test"]
    cases = load_phantom(root)
    assert len(cases) == n == len({c.case_id for c in cases})
    assert {c.split for c in cases} == {"source", "source_test", "pool", "test"}
    allowed = {0, *spec["labels"].values()}
    s = params["size"]
    for entry, c in zip(d["cases"], cases):
        assert not Path(entry["images"][0]).is_absolute()  # stored relative to root
        assert c.case_id.startswith(f"{name}_")
        assert c.modalities == spec["modalities"]
        assert c.images == tuple(
            str(root / c.case_id / f"{c.case_id}_{m}.nii.gz") for m in c.modalities)
        assert c.label == str(root / c.case_id / f"{c.case_id}_seg.nii.gz")
        assert set(c.modality_labels) == set(c.modalities)
        files = [*c.images, c.label, *c.modality_labels.values()]
        affines = [nib.load(f).affine for f in files]
        assert not np.allclose(affines[0], np.eye(4))
        assert np.allclose(np.abs(np.diag(affines[0])[:3]), 192 / s)
        assert all(np.array_equal(a, affines[0]) for a in affines)
        imgs = np.stack([_arr(p) for p in c.images])
        assert imgs.shape == (len(c.modalities), s, s, s) and imgs.dtype == np.float32
        assert np.isfinite(imgs).all() and (imgs >= 0).all()
        head = imgs[0] > 0
        for img in imgs:  # same head support on every channel: 0 outside, > 0 inside
            assert np.array_equal(img > 0, head)
        gt = _arr(c.label)
        assert gt.dtype == np.uint8 and gt.shape == (s, s, s)
        assert set(np.unique(gt)) <= allowed and gt.any()
        assert not (gt > 0)[~head].any()
        for path in c.modality_labels.values():
            m = _arr(path)
            assert m.dtype == np.uint8 and set(np.unique(m)) <= allowed
        assert c.meta["tumour_voxels"]["total"] == int((gt > 0).sum())
        for key in ("centre", "scanner_index", "tumour_radius_vox", "degraded_modality",
                    "degradation"):
            assert key in c.meta


def test_splits_scanners_and_meta(glioma: Path) -> None:
    cases = load_phantom(glioma)
    src = [c for c in cases if c.split in ("source", "source_test")]
    assert {c.meta["centre"] for c in src} == {"A"}
    assert all(c.meta["degraded_modality"] is None for c in src)
    pool = [c for c in cases if c.split == "pool"]
    centres = [c.meta["centre"] for c in pool]
    assert set(centres) == {"B", "C", "D"}
    assert centres.count("B") > centres.count("C") > centres.count("D") >= 1
    degraded = [c for c in pool if c.meta["degraded_modality"]]
    assert 2 <= len(degraded) <= 6
    for c in degraded:
        assert c.meta["degraded_modality"] in c.modalities
        assert c.meta["degradation"] in ("noise", "blur", "motion")
    vox = [c.meta["tumour_voxels"]["total"] for c in cases]
    assert max(vox) > 6 * min(vox)
    assert {"NCR", "ED", "ET", "total"} <= set(cases[0].meta["tumour_voxels"])
    assert [c.case_id for c in pool][:2] == ["glioma_pool_000", "glioma_pool_001"]


def test_determinism(glioma: Path, tmp_path: Path) -> None:
    small = {**GLIOMA, "n_source": 2, "n_source_test": 0, "n_pool": 2, "n_test": 0}
    a = load_phantom(generate_phantom(tmp_path / "a", progress=False, **small))
    b = load_phantom(generate_phantom(tmp_path / "b", progress=False, **small))
    c = load_phantom(generate_phantom(tmp_path / "c", progress=False, **{**small, "seed": 99}))
    full = {x.case_id: x for x in load_phantom(glioma)}  # more cases, same seed
    for x, y, z in zip(a, b, c):
        assert x.case_id == y.case_id == z.case_id and x.meta == y.meta
        for p, q, r in zip([*x.images, x.label], [*y.images, y.label], [*z.images, z.label]):
            assert np.array_equal(_arr(p), _arr(q))
            assert not np.array_equal(_arr(p), _arr(r))
        for m in x.modalities:
            assert np.array_equal(_arr(x.modality_labels[m]), _arr(y.modality_labels[m]))
        # generating more cases does not change the anatomy of earlier ones
        assert np.array_equal(_arr(x.label), _arr(full[x.case_id].label))


@pytest.mark.parametrize("name", ["glioma", "npc"])
def test_modality_masks_matter(name: str, request: pytest.FixtureRequest) -> None:
    cases = load_phantom(request.getfixturevalue(name))
    scores = {m: [] for m in cases[0].modalities}
    gaps = []
    for c in cases:
        gt = _arr(c.label)
        s = {m: _score(_arr(p), gt, name) for m, p in c.modality_labels.items()}
        for m, v in s.items():
            scores[m].append(v)
        deg = c.meta["degraded_modality"]
        if deg:
            best_other = max(v for m, v in s.items() if m != deg)
            if best_other == 0.0:  # a tiny tumour no modality shows
                assert s[deg] == 0.0, (c.case_id, s)
                continue
            assert s[deg] < best_other, (c.case_id, s)
            gaps.append(best_other - s[deg])
    means = {m: float(np.mean(v)) for m, v in scores.items()}
    assert max(means.values()) - min(means.values()) > 0.1, means
    assert max(means.values()) < 1.0  # no modality reproduces the reference everywhere
    assert gaps and np.mean(gaps) > 0.15, gaps
    if name == "glioma":  # the enhancing rim is only crisp on T1c
        assert max(means, key=means.get) == "t1ce"


def test_target_shift(glioma: Path) -> None:
    """FLAIR oedema / healthy-brain intensity ratio differs between source and target."""
    cases = load_phantom(glioma)
    ratio: dict[str, list[float]] = {"source": [], "target": []}
    for c in cases:
        flair, gt = _arr(c.images[c.modalities.index("flair")]), _arr(c.label)
        if (gt == 2).sum() < 5:
            continue
        dom = "source" if c.meta["centre"] == "A" else "target"
        ratio[dom].append(flair[gt == 2].mean() / flair[(gt == 0) & (flair > 0)].mean())
    assert np.mean(ratio["source"]) - np.mean(ratio["target"]) > 0.25, ratio
    src = [c for c in cases if c.meta["centre"] == "A"][0]
    tgt = [c for c in cases if c.meta["centre"] == "B"][0]
    # different global intensity units per scanner
    assert _arr(tgt.images[0]).max() > 2 * _arr(src.images[0]).max()


def test_idempotent_and_mismatch(tmp_path: Path) -> None:
    params = {**NPC, "n_source": 1, "n_source_test": 0, "n_pool": 1, "n_test": 0}
    out = generate_phantom(tmp_path, progress=False, **params)
    stamp = out.stat().st_mtime_ns
    img = Path(load_phantom(tmp_path)[0].images[0])
    img_stamp = img.stat().st_mtime_ns
    assert generate_phantom(tmp_path, progress=False, **params) == out
    assert out.stat().st_mtime_ns == stamp and img.stat().st_mtime_ns == img_stamp
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_phantom(tmp_path, progress=False, **{**params, "seed": 5})
    generate_phantom(tmp_path, progress=False, overwrite=True, **{**params, "seed": 5, "n_pool": 0})
    d = json.loads(out.read_text())
    assert d["generator"]["seed"] == 5 and len(d["cases"]) == 1
    assert not (tmp_path / "npc_pool_000").exists()  # stale cases removed on overwrite


def test_interrupted_and_bad_args(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        load_phantom(tmp_path)  # no dataset.json: missing or interrupted generation
    with pytest.raises(ValueError):
        generate_phantom(tmp_path, task="liver", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        generate_phantom(tmp_path, n_pool=-1, progress=False)


def test_power_regime(tmp_path: Path) -> None:
    """The ``power`` regime: its own draw, recorded in dataset.json, larger tumours, same seed
    same arrays; the original regime's files and generator record are unchanged by it."""
    from lightning_ada.phantom.simulator import REGIMES

    params = {**GLIOMA, "n_source": 6, "n_source_test": 0, "n_pool": 10, "n_test": 0}
    old = generate_phantom(tmp_path / "old", progress=False, **params)
    assert "regime" not in json.loads(old.read_text())["generator"]  # published phantoms reuse
    new = generate_phantom(tmp_path / "new", progress=False, regime="power", **params)
    again = generate_phantom(tmp_path / "again", progress=False, regime="power", **params)
    gen = json.loads(new.read_text())["generator"]
    assert gen["regime"]["name"] == "power"
    assert gen["regime"]["radius"] == list(REGIMES["power"]["glioma"].radius)
    a, b, o = load_phantom(new), load_phantom(again), load_phantom(old)
    for x, y in zip(a, b):
        assert np.array_equal(_arr(x.images[0]), _arr(y.images[0]))
        assert np.array_equal(_arr(x.label), _arr(y.label))
    assert [c.meta["centre"] for c in a] == [c.meta["centre"] for c in o]
    big = [c.meta["tumour_voxels"]["total"] for c in a]
    small = [c.meta["tumour_voxels"]["total"] for c in o]
    assert np.median(big) > 1.5 * np.median(small), (big, small)
    with pytest.raises(FileExistsError):  # another regime in the same folder is not reused
        generate_phantom(tmp_path / "old", progress=False, regime="power", **params)
    with pytest.raises(ValueError, match="regime"):
        generate_phantom(tmp_path / "x", progress=False, regime="strong", **params)


@pytest.mark.parametrize("task", ["glioma", "npc"])
def test_power_shift_is_shared_by_every_target_scanner(task: str) -> None:
    """Every power target scanner has the same contrast change from the source (one label of
    any scanner teaches it), they differ in image quality; each tumour region still differs
    from every other tissue in some modality (labels can teach it)."""
    from lightning_ada.phantom.simulator import _scanners

    a, b, c, d = _scanners(task, "power")
    assert (a.table != b.table).sum() >= 4
    assert np.array_equal(c.table, b.table) and np.array_equal(d.table, b.table)
    assert len({(s.noise, s.blur, s.gamma) for s in (b, c, d)}) == 3
    tissues = TASKS[task]["tissues"]
    for t in tissues[3:] if task == "glioma" else ("tumour",):
        i = tissues.index(t)
        gap = np.abs(b.table[i] - np.delete(b.table, i, 0)).max(1)  # best modality
        assert gap.min() >= 0.1, (task, t, gap)


def _fingerprint(out: Path) -> str:
    """sha256 of a phantom: its dataset.json text and every array (dtype, shape, bytes)."""
    import hashlib

    h = hashlib.sha256(out.read_bytes())
    for c in load_phantom(out.parent):
        for path in [*c.images, c.label, *c.modality_labels.values()]:
            a = _arr(path)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


#: fingerprints of phantoms made by the generator BEFORE the open_set / raters options existed
#: (main at bcc2f2f): with the options off, the generator must reproduce them bit for bit
GOLDEN = {
    ("glioma", "power"): "55693bc74e7040a4a90f7414c4b158cec622e0251deb4e7fab9b77b052503432",
    ("npc", "power"): "43fdb25d27b35773eb339db605b3834ad0989ab2f4901287334a5170dfd8889c",
    ("glioma", "phantom-1"): "615efe95db02db2247763e86d08a8301cf4deb8b3d5d05b36fb26c3c3d844b74",
}


@pytest.mark.parametrize("task,regime", list(GOLDEN))
def test_options_off_reproduce_the_earlier_generator(
    task: str, regime: str, tmp_path: Path
) -> None:
    params = dict(task=task, size=16, n_source=2, n_source_test=1, n_pool=4, n_test=2, seed=7,
                  regime=regime, progress=False)
    out = generate_phantom(tmp_path / "off", **params)
    assert _fingerprint(out) == GOLDEN[(task, regime)]
    # the options' off values are off too
    same = generate_phantom(tmp_path / "zero", open_set=0.0, raters=[], **params)
    assert _fingerprint(same) == GOLDEN[(task, regime)]


def test_case_centres_are_the_generators(glioma: Path) -> None:
    from lightning_ada.phantom.simulator import case_centres

    cases = load_phantom(glioma)
    for split, n in (("pool", GLIOMA["n_pool"]), ("test", GLIOMA["n_test"]), ("source", 4)):
        got = case_centres("glioma", split, n, GLIOMA["seed"])
        assert got == [c.meta["centre"] for c in cases if c.split == split]
    pool = [c.meta["centre"] for c in cases if c.split == "pool"]
    assert case_centres("glioma", "pool", 5, GLIOMA["seed"]) == pool[:5]  # prefix-stable
    with pytest.raises(ValueError):
        case_centres("glioma", "val", 3, 0)
