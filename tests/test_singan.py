"""GBA proper: the single-image SinGAN and its harmonisation of rescaled tumour slices
(lightning_ada/augment/singan.py, ALGORITHMS 11.2)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

import lightning_ada.augment.singan as singan_module
from lightning_ada.augment.singan import (
    SinGAN,
    SinGANHarmoniser,
    SinGANSettings,
    most_tumour_slice,
    pyramid_sizes,
    train_singan,
)
from lightning_ada.augment.tumour_contrast import (
    RandGBATumourContrastd,
    TumourContrast,
    blend_weights,
    tumour_mask,
)
from lightning_ada.data.epochs import PreparingLoader

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CONF = Path(__file__).parent / "conf"
#: tiny training settings: a few iterations of narrow networks (well under a second)
TINY = SinGANSettings(width=8, blocks=3, iterations=12, seed=0)
#: even tinier, where only the bookkeeping around the training matters
FEW = {"width": 8, "blocks": 3, "iterations": 3}


def _case(size: tuple[int, int, int] = (20, 18, 12), channels: int = 3, seed: int = 0) -> dict:
    """Structured modalities (stripes, a ramp, noise) with a tumour ball of class 1."""
    g = torch.Generator().manual_seed(seed)
    zz = torch.stack(
        torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in size], indexing="ij")
    )
    base = [torch.sin(zz[0] / 2.0), zz[1] / size[1] - 0.5, torch.cos(zz[0] / 3 + zz[1] / 4)]
    image = torch.stack([base[c % 3] for c in range(channels)])
    image = image + 0.1 * torch.randn(channels, *size, generator=g)
    centre = torch.tensor([9.0, 8.0, 5.0]).view(3, 1, 1, 1)
    label = torch.zeros(1, *size, dtype=torch.int64)
    label[0][((zz - centre) ** 2).sum(0).sqrt() <= 4.2] = 1
    return {"image": MetaTensor(image), "label": label, "case_id": "c0"}


def _bits(t: torch.Tensor) -> torch.Tensor:
    raw = t.as_tensor() if isinstance(t, MetaTensor) else t
    return raw.contiguous().view(torch.int32)


@pytest.fixture(scope="module")
def tiny_singan() -> SinGAN:
    case = _case()
    k = most_tumour_slice(case["label"])
    model, _ = train_singan(case["image"].as_tensor()[:, :, :, k], TINY)
    return model


def test_the_pyramid_goes_from_the_slice_down_to_about_min_size() -> None:
    assert pyramid_sizes(24, 24) == [(10, 10), (14, 14), (18, 18), (24, 24)]
    sizes = pyramid_sizes(20, 18, 0.75, 8)
    assert sizes[-1] == (20, 18) and min(sizes[0]) >= 8 and min(sizes[0]) * 0.75 < 8
    assert pyramid_sizes(6, 7) == [(6, 7)]  # smaller than min_size: one scale
    with pytest.raises(ValueError, match="scale_factor"):
        pyramid_sizes(16, 16, scale_factor=1.0)


def test_training_on_one_slice_decreases_the_reconstruction_loss() -> None:
    image = _case()["image"].as_tensor()[:, :, :, 6]
    settings = SinGANSettings(width=8, blocks=3, iterations=30, seed=1)
    model, history = train_singan(image, settings)
    assert len(history) == model.scales == len(pyramid_sizes(20, 18)) and model.scales >= 2
    assert all(len(h) == 30 for h in history)
    first, last = np.mean(history[0][:5]), np.mean(history[0][-5:])
    assert last < 0.7 * first  # the coarsest scale learns to reconstruct from its fixed noise
    real = model.normalise(image)
    rec = model.reconstruct()
    assert rec.shape == real.shape
    assert torch.mean((rec - real) ** 2) < torch.mean(real**2)  # better than predicting 0
    assert model.train_seconds > 0 and model.noise_amps[0] == 1.0 and model.noise_amps[1] > 0


def test_training_is_seeded_and_leaves_the_global_rng_alone() -> None:
    image = _case()["image"].as_tensor()[:, :, :, 6]
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, _ = train_singan(image, SinGANSettings(**FEW, seed=0))
    assert torch.equal(torch.rand(3), expected_next)  # global RNG as if nothing had run
    b, _ = train_singan(image, SinGANSettings(**FEW, seed=0))
    c, _ = train_singan(image, SinGANSettings(**FEW, seed=1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("sigma", [0.0, 1.5])
def test_gba_changes_only_where_the_weighting_mask_is_positive(
    tiny_singan: SinGAN, sigma: float
) -> None:
    case = _case()
    before = case["image"].clone()
    t = RandGBATumourContrastd(
        tiny_singan, generators=2, prob=1.0, factors=[2.0], dilation_radius=2, sigma=sigma
    )
    t.set_random_state(seed=0)
    out = t(dict(case))
    image = out["image"]
    assert isinstance(image, MetaTensor) and image.dtype == before.dtype
    assert tuple(image.shape) == tuple(before.shape)
    assert torch.equal(out["label"], case["label"])  # the label is never changed
    mask = tumour_mask(case["label"])
    weights = blend_weights(mask, 2, sigma)
    if sigma == 0.0:  # W is exactly the per-slice dilated mask
        yy, xx = np.mgrid[-2:3, -2:3]
        disk = (yy**2 + xx**2) <= 4
        dilated = np.stack(
            [ndimage.binary_dilation(mask[:, :, k], disk) for k in range(mask.shape[2])], -1
        )
        assert np.array_equal(weights > 0, dilated)
    changed = (_bits(image) != _bits(before)).numpy()
    outside = ~(weights > 0)
    assert not changed[:, outside].any()  # bit-identical wherever W = 0
    assert changed[:, mask].all()  # the tumour is rescaled and harmonised in every modality
    around = (weights > 0) & ~mask
    assert changed[:, around].mean() > 0.9  # ... and the harmonised texture blends around it
    assert torch.equal(_bits(case["image"]), _bits(before))  # the input is not modified in place


def test_gba_differs_from_the_blended_naive_rescaling(tiny_singan: SinGAN) -> None:
    """The SinGAN output replaces the tumour region: not the blended rescaling of 11.2."""
    from lightning_ada.augment.tumour_contrast import RandBlendedTumourContrastd

    case = _case()
    kwargs = {"prob": 1.0, "factors": [2.0], "dilation_radius": 2, "sigma": 1.5}
    gba = RandGBATumourContrastd(tiny_singan, generators=2, **kwargs)
    naive = RandBlendedTumourContrastd(**kwargs)
    gba.set_random_state(seed=0)
    naive.set_random_state(seed=0)
    a = gba(dict(case))["image"].as_tensor()
    b = naive(dict(case))["image"].as_tensor()
    mask = torch.as_tensor(tumour_mask(case["label"])).expand_as(a)
    assert not torch.allclose(a[mask], b[mask], atol=1e-3)


def test_gba_is_reproducible_from_a_seed_and_the_identity_with_factor_one(
    tiny_singan: SinGAN,
) -> None:
    case = _case()

    def run(seed: int, factors: list[float] = [0.5, 2.0]) -> torch.Tensor:  # noqa: B006
        t = RandGBATumourContrastd(tiny_singan, 2, prob=1.0, factors=factors, sigma=1.0)
        t.set_random_state(seed=seed)
        return t(dict(case))["image"].as_tensor()

    assert torch.equal(run(4), run(4))
    assert not torch.equal(run(4), run(5))
    assert torch.equal(_bits(run(4, [1.0])), _bits(case["image"]))


def test_gba_transform_pickles_with_its_trained_singan(tiny_singan: SinGAN) -> None:
    """Loader workers receive the transform by pickling: the copy harmonises identically."""
    t = RandGBATumourContrastd(tiny_singan, 2, prob=1.0, factors=[1.5], sigma=1.0)
    copy = pickle.loads(pickle.dumps(t))
    t.set_random_state(seed=2)
    copy.set_random_state(seed=2)
    case = _case()
    assert torch.equal(t(dict(case))["image"], copy(dict(case))["image"])


class _FakeDataModule:
    """The datamodule surface :class:`SinGANHarmoniser` reads (labelled ids, items, run folder)."""

    def __init__(self, run: Path | None, labeled: list[str]) -> None:
        self.cases = {"c0": None, "c1": None}
        self.train_pool = SimpleNamespace(labeled=labeled)
        self.trainer = (
            None if run is None else SimpleNamespace(log_dir=None, default_root_dir=str(run))
        )
        self.items = {"c0": _case(seed=0), "c1": _case(seed=1)}

    def training_item(self, case_id: str) -> dict:
        return self.items[case_id]

    def item(self, case_id: str) -> dict:
        return self.items[case_id]


def _harmoniser(**kwargs: object) -> SinGANHarmoniser:
    return SinGANHarmoniser(**(FEW | kwargs))


def test_weights_are_cached_in_the_run_folder_and_reloaded_without_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    dm = _FakeDataModule(run, labeled=["c1", "c0"])
    first = _harmoniser().model(dm)
    weights, report = run / "singan" / "c1.pt", run / "singan" / "c1.json"
    assert weights.is_file() and report.is_file()  # the first labelled case, in the run folder
    info = json.loads(report.read_text())
    assert info["case_id"] == "c1" and info["train_seconds"] > 0
    assert info["slice_index"] == most_tumour_slice(dm.items["c1"]["label"]) == 5
    assert info["scales"] == [list(s) for s in first.sizes]

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained again instead of reloading the cache")

    monkeypatch.setattr(singan_module, "train_singan", no_training)
    again = _harmoniser().model(dm)  # a new run object (a resume): reloads
    assert again.train_seconds == pytest.approx(first.train_seconds)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                  again.state_dict().values(), strict=True))
    monkeypatch.undo()
    calls = []
    real = singan_module.train_singan
    monkeypatch.setattr(
        singan_module, "train_singan", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    _harmoniser(iterations=4).model(dm)  # other settings: retrained and replaced
    assert calls == [1]
    assert SinGAN.load(weights)[0].settings.iterations == 4
    weights.write_bytes(b"not a torch file")  # an interrupted or foreign file: retrained
    with pytest.warns(UserWarning, match="not a readable SinGAN weights file"):
        _harmoniser(iterations=4).model(dm)
    assert calls == [1, 1] and SinGAN.load(weights)[0].settings.iterations == 4


def test_the_harmoniser_chooses_its_case_and_slice_and_names_bad_settings(tmp_path: Path) -> None:
    dm = _FakeDataModule(None, labeled=[])
    with pytest.raises(ValueError, match="no labelled case"):
        _harmoniser().model(dm)
    with pytest.raises(ValueError, match="unknown case 'zz'"):
        _harmoniser(case_id="zz").model(dm)
    case_id, index, image = _harmoniser(case_id="c0").training_slice(dm)
    assert (case_id, index, tuple(image.shape)) == ("c0", 6, (3, 20, 18))  # unlabelled: middle
    with pytest.raises(ValueError, match="slice_index"):
        _harmoniser(case_id="c0", slice_index=40).training_slice(dm)
    with pytest.raises(ValueError, match="harmoniser: iterations"):
        SinGANHarmoniser(iterations=0)
    model = _harmoniser(case_id="c0").model(dm)  # no trainer, no cache_dir: memory only
    assert model.scales >= 2 and not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="blend: true"):
        TumourContrast(blend=False, harmoniser=_harmoniser())
    contrast = TumourContrast(prob=1.0, factors=[2.0], harmoniser=_harmoniser(generators=9))
    with pytest.raises(ValueError, match="datamodule"):
        contrast.transform()
    dm = _FakeDataModule(tmp_path / "r", labeled=[])
    t = contrast.transform(dm)  # built before any case is labelled: trains nothing yet
    assert isinstance(t, RandGBATumourContrastd) and t.singan is None
    assert t.prepare() is None and t.singan is None  # the loader starts before any query
    dm.train_pool.labeled.append("c0")
    with pytest.warns(UserWarning, match="all of them run"):
        t.prepare()  # the loader's first iteration: trained now, on the first labelled case
    assert t.singan is not None and t.generators == t.singan.scales
    assert (tmp_path / "r" / "singan" / "c0.pt").is_file()


@pytest.mark.slow  # a long end-to-end run: `make test-all` runs it
def test_fit_on_the_phantom_with_gba_singan_trains_and_caches_the_singan_in_the_run_folder(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``-c random_tiny -c gba_singan``: the SinGAN is trained once (on the first queried case,
    at the first training batch), harmonises every epoch, and a resumed run reloads it."""
    import logging

    from lightning_ada.main import main

    caplog.set_level(logging.INFO)

    out = tmp_path / "run"
    args = [
        "fit", "-c", str(CONF / "random_tiny.yaml"),
        "-c", str(CONFIGS / "additions" / "gba_singan.yaml"),
        "--data.root", str(phantom_root), "--model.source_checkpoint", str(source_ckpt),
        "--trainer.default_root_dir", str(out), "--trainer.max_epochs", "2",
        "--trainer.limit_val_batches", "0", "--active.budget", "1",
        "--data.tumour_contrast.init_args.prob", "1.0",
        "--data.tumour_contrast.init_args.harmoniser.init_args.iterations", "20",
    ]
    cli = main(args)
    contrast = cli.datamodule.tumour_contrast
    assert isinstance(contrast.harmoniser, SinGANHarmoniser)
    assert contrast.harmoniser.settings.iterations == 20
    first = cli.datamodule.pool.labeled[0]
    weights = out / "singan" / f"{first}.pt"
    assert weights.is_file() and not list(phantom_root.rglob("*.pt"))  # never in the data folder
    report = json.loads(weights.with_suffix(".json").read_text())
    assert report["case_id"] == first and report["train_seconds"] > 0
    model, _ = SinGAN.load(weights)
    assert model.channels == cli.datamodule.image(first).shape[0]
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert "SinGANHarmoniser" in (out / "config.yaml").read_text()
    lines = [r.getMessage() for r in caplog.records if "[singan]" in r.getMessage()]
    assert len(lines) == 1 and "trained on case" in lines[0]  # once for both epochs

    caplog.clear()
    last = out / "checkpoints" / "last.ckpt"
    main([*args, "--trainer.max_epochs", "3", "--ckpt_path", str(last)])  # one epoch more
    lines = [r.getMessage() for r in caplog.records if "[singan]" in r.getMessage()]
    assert len(lines) == 1 and "reloaded" in lines[0]  # the resumed run does not train again


def test_the_benchmark_harness_composes_gba_singan_as_an_addition(
    phantom_root: Path, source_ckpt: Path
) -> None:
    """``random+gba_singan``: the run name parses and the overlay composes onto the power recipe."""
    from ada_bench.names import parse_run_name
    from ada_bench.runner import compose

    from lightning_ada.cli.short_names import expand_config
    from lightning_ada.main import main

    assert parse_run_name("random+gba_singan").additions == ("gba_singan",)
    config = compose([CONFIGS / "power" / "glioma" / "target.yaml",
                      CONFIGS / "additions" / "gba_singan.yaml"])
    config["data"] |= {"root": str(phantom_root), "phantom": None}
    config["model"] |= {"source_checkpoint": str(source_ckpt), "filters": [4, 8, 16]}
    cli = main(args=expand_config(config), run=False)
    contrast = cli.datamodule.tumour_contrast
    assert isinstance(contrast, TumourContrast) and contrast.blend
    assert isinstance(contrast.harmoniser, SinGANHarmoniser) and contrast.harmoniser.generators == 2


def test_the_training_loader_prepares_its_dataset_before_workers_start() -> None:
    """``PreparingLoader``: what ``prepare`` sets in the main process reaches the workers."""
    class Data(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.value = 0

        def prepare(self) -> None:
            self.value += 1

        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> int:
            return self.value

    data = Data()
    loader = PreparingLoader(data, batch_size=2, num_workers=1)
    assert list(loader)[0].tolist() == [1, 1]
    assert list(loader)[0].tolist() == [2, 2]  # again at every iteration (cheap once trained)
