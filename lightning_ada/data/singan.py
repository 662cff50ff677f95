"""Deprecated location of :mod:`lightning_ada.augment.singan` (kept so that configs naming
``lightning_ada.data.singan.SinGANHarmoniser`` still run)."""

import warnings

from lightning_ada.augment.singan import *  # noqa: F403
from lightning_ada.augment.singan import SinGANHarmoniser  # noqa: F401

warnings.warn(
    "lightning_ada.data.singan moved to lightning_ada.augment.singan: write "
    "class_path: lightning_ada.augment.singan.SinGANHarmoniser in your config",
    FutureWarning,
    stacklevel=2,
)
