"""Real BraTS 2018 cases end to end: preprocessing, disk cache, fit + one mmActS round, predict.

Reads 3 of the 17 cases in ``../shared/data/brats18`` at 6 mm with a tiny net
(``tests/conf/brats18_tiny.yaml``); skipped when that folder is absent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from lightning_ada.data.cache import CacheKey
from lightning_ada.data.datamodule import ActiveDataModule
from lightning_ada.main import main

CONF = Path(__file__).parent / "conf"
BRATS = Path(__file__).resolve().parents[2] / "shared/data/brats18"
TINY = CONF / "brats18_tiny.yaml"
POOL = ["Brats18_CBICA_AQN_1", "Brats18_TCIA10_639_1"]
TEST = "Brats18_TCIA13_623_1"

SKIP_REASON = f"real BraTS 2018 cases not found at {BRATS} (see shared/data/README.md)"


def needs_brats(test: Callable[..., None]) -> Callable[..., None]:
    """Mark ``realdata`` and skip, saying why, when the shared cases are absent."""
    return pytest.mark.realdata(pytest.mark.skipif(not BRATS.is_dir(), reason=SKIP_REASON)(test))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One disk cache for the module: the first setup fills it, the later ones read it."""
    return tmp_path_factory.mktemp("brats18_cache")


def make_dm(cache_dir: Path, **kw: object) -> ActiveDataModule:
    args: dict[str, object] = dict(
        root=str(BRATS), layout="brats", stage="target", splits={"pool": POOL, "test": [TEST]},
        pixdim=[6.0, 6.0, 6.0], crop_foreground=True, divisible_by=4, cache_dir=str(cache_dir),
    )
    dm = ActiveDataModule(**(args | kw))  # type: ignore[arg-type]
    dm.setup("fit")
    return dm


def _forbidden(what: str) -> Callable[..., None]:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{what} ran again although the disk cache holds its result")

    return fail


def _no_preprocessing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any cache miss fail: what follows must read every case from the disk cache."""
    monkeypatch.setattr("monai.data.PersistentDataset._pre_transform", _forbidden("preprocessing"))


def test_cache_key_follows_content_and_settings(tmp_path: Path) -> None:
    f = tmp_path / "a_flair.nii.gz"
    f.write_bytes(b"x" * 100)
    item = {"case_id": "a", "image": [str(f)], "label": str(f)}
    key = CacheKey({"pixdim": [3.0, 3.0, 3.0]})
    first = key(item)
    assert first == key(item) and first.startswith(b"a_")
    assert CacheKey({"pixdim": [6.0, 6.0, 6.0]})(item) != first  # a changed setting misses
    f.write_bytes(b"y" * 100)
    assert key(item) != first  # changed content (same size) misses


@needs_brats
@pytest.mark.slow
def test_preprocess_real_cases_and_cache(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dm = make_dm(cache_dir)
    item = dm.item(TEST)
    image, label = item["image"], item["label"]
    assert image.dtype == torch.float32 and label.dtype == torch.int64
    assert image.shape[0] == 4 and label.shape[0] == 1
    assert all(s % 4 == 0 and 16 <= s <= 48 for s in image.shape[1:])  # brain box at 6 mm
    spacing = np.linalg.norm(np.asarray(image.affine)[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, [6.0, 6.0, 6.0], atol=1e-5)
    assert set(label.unique().tolist()) <= {0, 1, 2, 3}
    brain = image[0] != 0
    mean, std = float(image[0][brain].mean()), float(image[0][brain].std())
    assert abs(mean) < 0.05 and abs(std - 1) < 0.05
    # the geometry round trip: the reference mask at 6 mm, inverted, overlaps the 1 mm original
    seg = np.asarray(nib.load(dm.case(TEST).label).dataobj)
    back = dm.invert(label, TEST)
    assert tuple(back.shape[1:]) == seg.shape == (240, 240, 155)
    wt_back, wt = back[0].numpy() > 0, seg > 0
    assert 2 * (wt_back & wt).sum() / (wt_back.sum() + wt.sum()) > 0.85
    # one file per case; a second setup reads all of them (and skips the passed checks), a new
    # spacing is a new key
    assert len(list(cache_dir.glob("*.pt"))) == 3
    assert len(list(cache_dir.glob("validated/*.ok"))) == 3
    with monkeypatch.context() as m:
        _no_preprocessing(m)
        m.setattr("lightning_ada.data.validation.validate_case", _forbidden("validate_case"))
        again = make_dm(cache_dir)
        torch.testing.assert_close(again.image(TEST), image)
        assert [op["class"] for op in again.image(TEST).applied_operations] == [
            "Orientation", "CropForeground", "SpatialResample", "DivisiblePad",
        ]
    coarser = ActiveDataModule(pixdim=[5.0, 5.0, 5.0], crop_foreground=True, divisible_by=4)
    item_paths = dm.case(TEST).to_item()
    assert CacheKey(coarser.preprocessing_settings())(item_paths) != CacheKey(
        dm.preprocessing_settings()
    )(item_paths)


@pytest.fixture(scope="module")
def fitted(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny fit: one mmActS query before training, one training step, one validation."""
    if not BRATS.is_dir():
        pytest.skip(SKIP_REASON)
    out = tmp_path_factory.mktemp("brats18_fit")
    main(
        [
            "fit", "-c", str(TINY),
            "--data.root", str(BRATS), "--data.cache_dir", str(cache_dir),
            "--trainer.default_root_dir", str(out),
            "--trainer.max_epochs", "1", "--data.iterations_per_epoch", "1",
        ]
    )
    return out


@needs_brats
def test_fit_with_one_mmacts_round_on_real_cases(fitted: Path) -> None:
    assert (fitted / "checkpoints" / "last.ckpt").is_file()
    log = json.loads((fitted / "query_log.json").read_text())
    assert len(log) == 1
    q = log[0]
    assert q["case_id"] in POOL and q["n_labeled"] == 1 and q["pool_size"] == 2
    assert set(q["factors"]) >= {"entropy", "volume", "density", "product"}
    assert q["modality"] in {"flair", "t1", "t1ce", "t2"}
    assert q["case_meta"]["group"] in {"CBICA", "TCIA10"}


@needs_brats
def test_predict_from_cache_back_to_original_geometry(
    fitted: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_preprocessing(monkeypatch)  # predict's setup reads the cases the fit cached
    out = tmp_path / "pred"
    main(
        [
            "predict", "-c", str(TINY),
            "--data.root", str(BRATS), "--data.cache_dir", str(cache_dir),
            "--model.source_checkpoint", str(fitted / "checkpoints" / "last.ckpt"),
            "--trainer.default_root_dir", str(tmp_path),
            "--writer.output_dir", str(out),
        ]
    )
    assert sorted(p.name for p in out.glob("*_pred.nii.gz")) == [f"{TEST}_pred.nii.gz"]
    ref = nib.load(BRATS / TEST / f"{TEST}_flair.nii.gz")
    pred = nib.load(out / f"{TEST}_pred.nii.gz")
    assert pred.shape == ref.shape == (240, 240, 155)
    np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-5)
    assert nib.aff2axcodes(pred.affine) == ("L", "P", "S")
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2, 4}
