"""A small single-image 2-D GAN (SinGAN) that harmonises rescaled tumour slices (GBA proper).

ALGORITHMS.md sections 11.2-11.3. SinGAN (Shaham, Dekel and Michaeli, ICCV 2019) learns the patch
statistics of *one* image with a pyramid of small fully-convolutional GANs, trained coarse to
fine. GBA (seed 001) trains it on one real target slice and then *harmonises* a slice whose tumour
intensities were rescaled: the rescaled slice is downsampled to an injection scale ``n`` and the
generators ``n .. K-1`` re-synthesise its fine detail with the target's texture, so the altered
tumour no longer looks pasted in.

The project's version, written for tiny multi-modal slices ``(C, H, W)`` (one channel per
modality, intensities in the preprocessed network-input units):

- pyramid: scale factor ``r`` (0.75) from the full slice down to the last size whose shorter
  side is still ``>= min_size`` (8 px): ``K`` scales, index 0 the coarsest;
- per scale a generator ``G_n(z, y) = tanh(f_n(z + y)) + y`` (``y`` = the upsampled output of
  scale ``n - 1``, zeros at scale 0) with ``f_n`` = ``blocks - 1`` conv3x3-BN-LeakyReLU blocks and a
  conv3x3, and a patch discriminator of the same depth (one score per pixel);
- loss per scale: WGAN-GP (gradient penalty weight 0.1) plus ``rec_weight`` (10) x the mean
  squared error of the reconstruction ``x_rec`` (fixed noise ``z*`` at scale 0, no noise above) to
  the real slice at that scale; noise amplitude of scale ``n > 0`` = ``noise_amp`` (0.1) x the RMSE
  of the upsampled reconstruction of scale ``n - 1``; Adam (lr 5e-4, betas 0.5/0.999), each scale
  initialised from the previous one;
- intensities: each channel mapped to ``[-1, 1]`` by the training slice's minimum and maximum
  (:class:`SinGAN` keeps them and maps back).

Seeded throughout (:class:`torch.Generator` for every noise draw, a forked global RNG for the
weight initialisation): the same image, settings and seed train the same weights, and the same
model, slice and seed harmonise to the same output.

:class:`SinGANHarmoniser` is the configuration choice (``data.tumour_contrast.harmoniser``): it
picks the training slice from a labelled case, trains once per run (weights cached in
``<run folder>/singan/<case_id>.pt``, reloaded when present) and reports the training time.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from lightning_ada.errors import NoTrainingCase

#: version of the cache file layout (a file of another version, or unreadable, is retrained)
CACHE_VERSION = 1


def pyramid_sizes(
    height: int, width: int, scale_factor: float = 0.75, min_size: int = 8
) -> list[tuple[int, int]]:
    """In-plane sizes of the scales, coarsest first, finest ``(height, width)`` last.

    Scale ``n`` of ``K`` has size ``round(s * r^(K-1-n))`` per side; ``K`` is the largest count
    whose coarsest shorter side is still ``>= min_size`` (1 when the slice itself is smaller).

    Args:
        height: slice height, pixels.
        width: slice width, pixels.
        scale_factor: ratio ``r`` of successive scales, in ``(0, 1)``.
        min_size: smallest side of the coarsest scale, pixels.
    """
    if not 0.0 < scale_factor < 1.0:
        raise ValueError(f"scale_factor must be in (0, 1), got {scale_factor}")
    if height < 1 or width < 1 or min_size < 1:
        raise ValueError(f"need positive sizes, got {height}x{width}, min_size {min_size}")
    short = min(height, width)
    count = 1
    if short > min_size:
        count = int(math.floor(math.log(min_size / short) / math.log(scale_factor) + 1e-9)) + 1
    return _sizes(height, width, scale_factor, count)


def _sizes(height: int, width: int, scale_factor: float, count: int) -> list[tuple[int, int]]:
    return [
        (max(1, round(height * scale_factor ** (count - 1 - n))),
         max(1, round(width * scale_factor ** (count - 1 - n))))
        for n in range(count)
    ]


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(N, C, H, W)`` to ``size`` (antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    # BatchNorm over the one image of the batch, never running statistics: the same normalisation
    # in training and in harmonisation (equivalent to an affine instance norm for one image)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out, track_running_stats=False),
        nn.LeakyReLU(0.2),
    )


class ScaleGenerator(nn.Module):
    """Generator of one scale: ``G(z, y) = tanh(f(z + y)) + y`` (residual on the coarser output).

    Args:
        channels: image channels C (modalities).
        width: feature channels of the hidden blocks.
        blocks: convolution layers (``blocks - 1`` conv-BN-LeakyReLU blocks and a final conv).
    """

    def __init__(self, channels: int, width: int = 16, blocks: int = 5) -> None:
        super().__init__()
        layers = [_block(channels, width)] + [_block(width, width) for _ in range(blocks - 2)]
        self.body = nn.Sequential(*layers, nn.Conv2d(width, channels, 3, padding=1), nn.Tanh())

    def forward(self, noise: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """``noise`` and ``previous`` ``(N, C, H, W)`` -> the scale's image ``(N, C, H, W)``."""
        return self.body(noise + previous) + previous


class PatchDiscriminator(nn.Module):
    """Critic of one scale: a score per pixel ``(N, 1, H, W)`` of an image ``(N, C, H, W)``.

    Its receptive field (``2 * blocks + 1`` pixels) is the patch size whose statistics the scale
    learns.
    """

    def __init__(self, channels: int, width: int = 16, blocks: int = 5) -> None:
        super().__init__()
        layers = [_block(channels, width)] + [_block(width, width) for _ in range(blocks - 2)]
        self.body = nn.Sequential(*layers, nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def gradient_penalty(
    critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """WGAN-GP: ``E[(||grad D(x_hat)||_2 - 1)^2]`` at random interpolates of real and fake."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, generator=generator, dtype=real.dtype)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


@dataclass(frozen=True)
class SinGANSettings:
    """Everything besides the training slice that determines the trained weights.

    Args:
        scale_factor: ratio of successive pyramid scales.
        min_size: smallest side of the coarsest scale, pixels.
        width: feature channels of every generator and discriminator.
        blocks: convolution layers per generator and discriminator (receptive field
            ``2 * blocks + 1`` px).
        iterations: training iterations per scale.
        d_steps: critic updates per iteration.
        g_steps: generator updates per iteration.
        lr: Adam learning rate of both networks.
        rec_weight: weight alpha of the reconstruction loss.
        gp_weight: weight of the gradient penalty.
        noise_amp: noise amplitude of scales above 0, relative to the RMSE of the upsampled
            coarser reconstruction.
        seed: seed of the weight initialisation and of every noise draw of the training.
    """

    scale_factor: float = 0.75
    min_size: int = 8
    width: int = 16
    blocks: int = 5
    iterations: int = 200
    d_steps: int = 1
    g_steps: int = 1
    lr: float = 5e-4
    rec_weight: float = 10.0
    gp_weight: float = 0.1
    noise_amp: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.scale_factor < 1.0:
            raise ValueError(f"scale_factor must be in (0, 1), got {self.scale_factor}")
        for name in ("min_size", "width", "iterations", "d_steps", "g_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.blocks < 2:
            raise ValueError(f"blocks must be >= 2, got {self.blocks}")
        if self.lr <= 0 or self.rec_weight < 0 or self.gp_weight < 0 or self.noise_amp < 0:
            raise ValueError(
                f"need lr > 0 and rec_weight, gp_weight, noise_amp >= 0; got {self.lr}, "
                f"{self.rec_weight}, {self.gp_weight}, {self.noise_amp}"
            )


class SinGAN(nn.Module):
    """A trained pyramid of generators with what harmonisation needs (no discriminators).

    Build it with :func:`train_singan` or :meth:`load`.

    Args:
        channels: image channels C.
        sizes: ``(H, W)`` per scale, coarsest first (of the training slice).
        settings: the training settings (width and depth of the generators).
    """

    def __init__(
        self, channels: int, sizes: Sequence[tuple[int, int]], settings: SinGANSettings
    ) -> None:
        super().__init__()
        self.channels, self.settings = int(channels), settings
        self.sizes = [tuple(int(v) for v in s) for s in sizes]
        self.generators = nn.ModuleList(
            ScaleGenerator(channels, settings.width, settings.blocks) for _ in self.sizes
        )
        #: noise amplitude per scale (1 at the coarsest)
        self.register_buffer("noise_amps", torch.ones(len(self.sizes)))
        #: the fixed reconstruction noise of the coarsest scale ``(1, C, h_0, w_0)``
        self.register_buffer("z_rec", torch.zeros(1, channels, *self.sizes[0]))
        #: per-channel minimum and maximum of the training slice (intensity units of the input)
        self.register_buffer("low", torch.zeros(channels))
        self.register_buffer("high", torch.ones(channels))
        #: training wall time, seconds (0 until trained; kept in the cache file)
        self.train_seconds = 0.0

    @property
    def scales(self) -> int:
        """Number of scales K."""
        return len(self.sizes)

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """``(C, H, W)`` input units -> ``(1, C, H, W)`` float32 (training slice in [-1, 1])."""
        low, high = self.low[:, None, None], self.high[:, None, None]
        span = torch.where(high > low, high - low, torch.ones_like(high))
        return (2 * (image.float() - low) / span - 1)[None]

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalise`: ``(1, C, H, W)`` -> ``(C, H, W)`` in input units."""
        low, high = self.low[:, None, None], self.high[:, None, None]
        span = torch.where(high > low, high - low, torch.ones_like(high))
        return (x[0] + 1) / 2 * span + low

    def _noise(self, n: int, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(1, self.channels, *size, generator=generator)
        return self.noise_amps[n] * z

    @torch.no_grad()
    def reconstruct(self) -> torch.Tensor:
        """The reconstruction of the training slice, ``(1, C, H, W)`` in ``[-1, 1]`` units."""
        out = torch.zeros(1, self.channels, *self.sizes[0])
        for n, g in enumerate(self.generators):
            previous = resize(out, self.sizes[n]) if n else out
            z = self.z_rec if n == 0 else torch.zeros_like(previous)
            out = g(z, previous)
        return out

    @torch.no_grad()
    def harmonise(
        self, image: torch.Tensor, generators: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Re-synthesise ``image`` from its downsampled version with the finest generators.

        The slice is normalised, downsampled to the injection scale ``n = K - generators`` of a
        pyramid with the training's scale count and factor but the slice's own size, and taken
        through ``G_n .. G_{K-1}`` (fresh noise of each scale's amplitude, upsampled between
        scales). Fewer generators change less (finer detail only).

        Args:
            image: slice ``(C, H, W)`` in the training slice's intensity units.
            generators: how many of the finest generators run (``k*``, 1..K).
            generator: source of the noise.

        Returns:
            ``(C, H, W)`` float32, the harmonised slice in input units.
        """
        if image.ndim != 3 or image.shape[0] != self.channels:
            raise ValueError(
                f"SinGAN.harmonise: expected a ({self.channels}, H, W) slice, got "
                f"{tuple(image.shape)}"
            )
        if not 1 <= generators <= self.scales:
            raise ValueError(f"generators must be in 1..{self.scales}, got {generators}")
        self.eval()
        sizes = _sizes(image.shape[1], image.shape[2], self.settings.scale_factor, self.scales)
        start = self.scales - generators
        out = resize(self.normalise(image.detach().cpu()), sizes[start])
        for n in range(start, self.scales):
            out = resize(out, sizes[n])
            out = self.generators[n](self._noise(n, sizes[n], generator), out)
        return self.denormalise(out)

    # ------------------------------------------------------------------ cache
    def save(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        """Write weights, sizes, settings and training time to ``path`` (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "version": CACHE_VERSION,
            "channels": self.channels,
            "sizes": [list(s) for s in self.sizes],
            "settings": asdict(self.settings),
            "train_seconds": float(self.train_seconds),
            "state_dict": self.state_dict(),
            "extra": dict(extra or {}),
        }
        partial = path.with_name(path.name + ".partial")
        torch.save(payload, partial)
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> tuple[SinGAN, dict[str, Any]]:
        """The model saved by :meth:`save` and the ``extra`` saved with it.

        Raises:
            ValueError: the file is not a SinGAN cache of this version (names the file).
        """
        try:
            payload = torch.load(Path(path), map_location="cpu", weights_only=True)
            if payload.get("version") != CACHE_VERSION:
                raise ValueError(f"cache version {payload.get('version')}, not {CACHE_VERSION}")
            model = cls(
                payload["channels"], [tuple(s) for s in payload["sizes"]],
                SinGANSettings(**payload["settings"]),
            )
            model.load_state_dict(payload["state_dict"])
        except Exception as bad:  # noqa: BLE001 - one clear error for any unreadable file
            raise ValueError(f"{path}: not a readable SinGAN weights file ({bad})") from bad
        model.train_seconds = float(payload["train_seconds"])
        return model.eval(), dict(payload["extra"])


def train_singan(
    image: torch.Tensor, settings: SinGANSettings | None = None
) -> tuple[SinGAN, list[list[float]]]:
    """Train a SinGAN on one slice, scale by scale (coarsest first).

    Args:
        image: the real slice ``(C, H, W)``, any float intensities (one channel per modality).
        settings: hyper-parameters and seed (defaults: :class:`SinGANSettings`).

    Returns:
        The trained model (training wall time in ``train_seconds``) and, per scale, the
        reconstruction loss (mean squared error in ``[-1, 1]`` units) of every iteration.
    """
    settings = settings or SinGANSettings()
    if image.ndim != 3:
        raise ValueError(f"train_singan: expected a (C, H, W) slice, got {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        raise ValueError("train_singan: the slice has non-finite values")
    started = time.perf_counter()
    channels = int(image.shape[0])
    sizes = pyramid_sizes(image.shape[1], image.shape[2], settings.scale_factor, settings.min_size)
    gen = torch.Generator().manual_seed(int(settings.seed))
    history: list[list[float]] = []
    previous_critic: PatchDiscriminator | None = None
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, global RNG left as it was
        torch.manual_seed(int(settings.seed))
        model = SinGAN(channels, sizes, settings)
        flat = image.detach().cpu().float().flatten(1)
        model.low.copy_(flat.min(dim=1).values)
        model.high.copy_(flat.max(dim=1).values)
        real = model.normalise(image.detach().cpu())
        reals = [resize(real, s) for s in sizes]
        model.z_rec.copy_(torch.randn(model.z_rec.shape, generator=gen))
        for n in range(model.scales):
            g = model.generators[n]
            if n > 0:
                g.load_state_dict(model.generators[n - 1].state_dict())
            critic = PatchDiscriminator(channels, settings.width, settings.blocks)
            if previous_critic is not None:
                critic.load_state_dict(previous_critic.state_dict())
            history.append(_train_scale(model, n, reals[n], critic, gen))
            previous_critic = critic
            g.requires_grad_(False)
    model.train_seconds = time.perf_counter() - started
    return model.eval(), history


def _train_scale(
    model: SinGAN, n: int, real: torch.Tensor, critic: PatchDiscriminator,
    gen: torch.Generator,
) -> list[float]:
    """Train generator ``n`` (coarser ones frozen) against ``critic``; the reconstruction losses."""
    s = model.settings
    g = model.generators[n]
    g.train()
    size = model.sizes[n]
    with torch.no_grad():
        if n == 0:
            rec_input = torch.zeros_like(real)
            rec_noise = model.z_rec
        else:
            rec_input = resize(_reconstruct_up_to(model, n), size)
            rec_noise = torch.zeros_like(real)
            rmse = torch.sqrt(F.mse_loss(rec_input, real))
            model.noise_amps[n] = s.noise_amp * rmse
    opt_g = torch.optim.Adam(g.parameters(), lr=s.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(critic.parameters(), lr=s.lr, betas=(0.5, 0.999))
    losses: list[float] = []
    for _ in range(s.iterations):
        with torch.no_grad():
            previous = _sample_up_to(model, n, gen)
        noise = model._noise(n, size, gen)
        for _ in range(s.d_steps):
            with torch.no_grad():
                fake = g(noise, previous)
            loss_d = critic(fake).mean() - critic(real).mean()
            if s.gp_weight > 0:
                loss_d = loss_d + s.gp_weight * gradient_penalty(critic, real, fake, gen)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        for _ in range(s.g_steps):
            adversarial = -critic(g(noise, previous)).mean()
            rec = F.mse_loss(g(rec_noise, rec_input), real)
            opt_g.zero_grad(set_to_none=True)
            (adversarial + s.rec_weight * rec).backward()
            opt_g.step()
            losses.append(float(rec.detach()))
    g.eval()
    return losses


def _reconstruct_up_to(model: SinGAN, n: int) -> torch.Tensor:
    """Reconstruction at scale ``n - 1`` (``n >= 1``), ``(1, C, h, w)``."""
    out = torch.zeros(1, model.channels, *model.sizes[0])
    for m in range(n):
        previous = resize(out, model.sizes[m]) if m else out
        z = model.z_rec if m == 0 else torch.zeros_like(previous)
        out = model.generators[m](z, previous)
    return out


def _sample_up_to(model: SinGAN, n: int, gen: torch.Generator) -> torch.Tensor:
    """A random sample of scales ``0 .. n-1`` upsampled to scale ``n`` (zeros for ``n = 0``)."""
    out = torch.zeros(1, model.channels, *model.sizes[0])
    for m in range(n):
        previous = resize(out, model.sizes[m]) if m else out
        out = model.generators[m](model._noise(m, model.sizes[m], gen), previous)
    return resize(out, model.sizes[n])


def most_tumour_slice(label: torch.Tensor | np.ndarray, axis: int = 2) -> int:
    """Index of the slice along spatial ``axis`` with the most foreground voxels (lowest on ties).

    Args:
        label: class indices ``(1, H, W, D)`` or ``(H, W, D)``.
        axis: spatial axis across the slices (2 = axial ``D`` for RAS volumes).
    """
    lab = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    lab = lab[0] if lab.ndim == 4 else lab
    counts = (lab > 0).sum(axis=tuple(a for a in range(3) if a != axis))
    return int(np.argmax(counts))


class SinGANHarmoniser:
    """GBA's SinGAN harmonisation as a tumour-contrast option (``data.tumour_contrast.harmoniser``).

    Trains one :class:`SinGAN` per run on one real axial slice of a target case, once a case is
    labelled: when the datamodule's training loader starts iterating (in the main process,
    before its workers start, so they receive the trained model and never train), or, when the
    loader was started before the first query (Lightning starts epoch 0's loader before
    ``on_fit_start``), at the first transformed case (in the main process with
    ``num_workers: 0``; with workers, each worker of that first epoch trains or reloads its own
    identical copy).
    The weights go to ``<run folder>/singan/<case_id>.pt`` with a ``<case_id>.json`` beside them
    (training time in seconds, slice, pyramid, last reconstruction losses); a later build, a
    resumed run or a second fit in the same folder reloads them instead of training again (a
    file trained with other settings or on another slice, or unreadable, is retrained and
    replaced). Nothing is written into the data folder.

    Args:
        generators: ``k*``, how many of the finest generators harmonise (the injection scale is
            ``n = K - k*`` of ``K`` scales): more generators, stronger re-synthesis. A slice too
            small for that many scales runs all ``K`` (with a warning).
        case_id: the case whose slice trains the SinGAN; None = the first labelled training case
            when the loader is first built (the first actively queried one in a target run).
        slice_index: the axial slice to train on; None = the slice with the most tumour voxels
            in the case's delivered label (for a case that is not labelled: the middle slice, so
            no unlabelled reference mask is read).
        iterations: training iterations per scale.
        width: feature channels of the generators and critics.
        blocks: convolution layers per generator and critic.
        scale_factor: ratio of successive pyramid scales.
        min_size: smallest side of the coarsest scale, pixels.
        lr: Adam learning rate.
        rec_weight: weight of the reconstruction loss (alpha).
        gp_weight: weight of the WGAN gradient penalty.
        noise_amp: noise amplitude above the coarsest scale, relative to the reconstruction RMSE.
        d_steps: critic updates per iteration.
        g_steps: generator updates per iteration.
        seed: seed of the SinGAN's training (the harmonisation noise is drawn from the
            transform's own seeded stream).
        cache_dir: folder of the weights; None = ``<run folder>/singan`` (the trainer's log dir,
            else ``trainer.default_root_dir``; kept in memory only without a trainer).
    """

    def __init__(
        self,
        generators: int = 2,
        case_id: str | None = None,
        slice_index: int | None = None,
        iterations: int = 200,
        width: int = 16,
        blocks: int = 5,
        scale_factor: float = 0.75,
        min_size: int = 8,
        lr: float = 5e-4,
        rec_weight: float = 10.0,
        gp_weight: float = 0.1,
        noise_amp: float = 0.1,
        d_steps: int = 1,
        g_steps: int = 1,
        seed: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        if int(generators) < 1:
            raise ValueError(f"harmoniser.generators must be >= 1, got {generators}")
        if slice_index is not None and int(slice_index) < 0:
            raise ValueError(f"harmoniser.slice_index must be >= 0, got {slice_index}")
        self.generators = int(generators)
        self.case_id = None if case_id is None else str(case_id)
        self.slice_index = None if slice_index is None else int(slice_index)
        try:
            self.settings = SinGANSettings(
                scale_factor=float(scale_factor), min_size=int(min_size), width=int(width),
                blocks=int(blocks), iterations=int(iterations), d_steps=int(d_steps),
                g_steps=int(g_steps), lr=float(lr), rec_weight=float(rec_weight),
                gp_weight=float(gp_weight), noise_amp=float(noise_amp), seed=int(seed),
            )
        except ValueError as bad:
            raise ValueError(f"harmoniser: {bad}") from bad
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        #: the trained (or reloaded) model per training case, kept for the life of the process
        self._models: dict[str, SinGAN] = {}
        #: where the last model was read from or written to (None: memory only)
        self.path: Path | None = None

    def folder(self, datamodule: Any) -> Path | None:
        """The weights folder: ``cache_dir``, else ``<run folder>/singan``, else None."""
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        trainer = getattr(datamodule, "trainer", None)
        if trainer is None:
            return None
        # the run folder: the trainer's log dir, else its default_root_dir (as the run layer's)
        return Path(trainer.log_dir or trainer.default_root_dir) / "singan"

    def training_slice(self, datamodule: Any, axial_axis: int = 2) -> tuple[str, int, torch.Tensor]:
        """``(case id, slice index, slice (C, H, W))`` the SinGAN trains on.

        Raises:
            NoTrainingCase: no labelled case to choose from (yet) and no ``case_id``.
            ValueError: an unknown case id, or a slice index outside the volume.
        """
        labeled = list(datamodule.train_pool.labeled)
        case_id = self.case_id if self.case_id is not None else (labeled[0] if labeled else None)
        if case_id is None:
            raise NoTrainingCase(
                "data.tumour_contrast.harmoniser: no labelled case to train the SinGAN on yet; "
                "set harmoniser.case_id"
            )
        if case_id not in datamodule.cases:
            raise ValueError(f"data.tumour_contrast.harmoniser.case_id: unknown case {case_id!r}")
        is_labelled = case_id in labeled
        item = datamodule.training_item(case_id) if is_labelled else datamodule.item(case_id)
        image = item["image"]
        image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        depth = int(image.shape[1 + axial_axis])
        if self.slice_index is not None:
            index = self.slice_index
        elif is_labelled:
            index = most_tumour_slice(item["label"], axial_axis)
        else:
            index = depth // 2
        if not 0 <= index < depth:
            raise ValueError(
                f"data.tumour_contrast.harmoniser.slice_index: {index} outside case {case_id}'s "
                f"{depth} axial slices"
            )
        return case_id, index, image.select(1 + axial_axis, index).float().clone()

    def model(self, datamodule: Any, axial_axis: int = 2) -> SinGAN:
        """The SinGAN of this run: in memory, else reloaded from the cache, else trained now."""
        labeled = list(datamodule.train_pool.labeled)
        chosen = self.case_id if self.case_id is not None else (labeled[0] if labeled else None)
        if chosen in self._models:
            return self._models[chosen]
        case_id, index, image = self.training_slice(datamodule, axial_axis)
        folder = self.folder(datamodule)
        path = None if folder is None else folder / f"{case_id}.pt"
        wanted = {
            "case_id": case_id, "slice_index": index, "axial_axis": int(axial_axis),
            "shape": list(image.shape),
            "slice_sha256": _tensor_sha256(image),
        }
        model = self._reload(path, wanted)
        if model is None:
            model, history = train_singan(image, self.settings)
            last = [round(float(np.mean(h[-10:])), 6) for h in history]
            report = wanted | {
                "train_seconds": round(model.train_seconds, 3),
                "scales": [list(s) for s in model.sizes],
                "reconstruction_mse_last": last,
                "settings": asdict(self.settings),
            }
            where = "memory only (no run folder)"
            if path is not None:
                model.save(path, extra=wanted)
                path.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
                where = str(path)
            rank_zero_info(
                f"[singan] trained on case {case_id}, axial slice {index} "
                f"{tuple(image.shape)}, {model.scales} scales x {self.settings.iterations} "
                f"iterations in {model.train_seconds:.1f} s -> {where}"
            )
        if self.generators > model.scales:
            rank_zero_warn(
                f"data.tumour_contrast.harmoniser.generators: {self.generators}, but the SinGAN "
                f"of case {case_id} has {model.scales} scales ({model.sizes}): all of them run"
            )
        self._models[case_id] = model
        self.path = path
        return model

    def _reload(self, path: Path | None, wanted: dict[str, Any]) -> SinGAN | None:
        if path is None or not path.is_file():
            return None
        try:
            model, extra = SinGAN.load(path)
        except ValueError as bad:
            rank_zero_warn(f"[singan] {bad}: retraining")
            return None
        if extra != wanted or asdict(model.settings) != asdict(self.settings):
            rank_zero_info(f"[singan] {path} was trained on another slice or settings: retraining")
            return None
        rank_zero_info(
            f"[singan] reloaded {path} (trained in {model.train_seconds:.1f} s), no training"
        )
        return model

    def __repr__(self) -> str:
        return (
            f"SinGANHarmoniser(generators={self.generators}, case_id={self.case_id}, "
            f"iterations={self.settings.iterations}, width={self.settings.width})"
        )


def _tensor_sha256(x: torch.Tensor) -> str:
    return hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
