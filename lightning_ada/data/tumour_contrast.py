"""Deprecated location of :mod:`lightning_ada.augment.tumour_contrast` (kept so that configs
naming ``lightning_ada.data.tumour_contrast.TumourContrast`` still run)."""

import warnings

from lightning_ada.augment.tumour_contrast import *  # noqa: F403
from lightning_ada.augment.tumour_contrast import TumourContrast  # noqa: F401

warnings.warn(
    "lightning_ada.data.tumour_contrast moved to lightning_ada.augment.tumour_contrast: write "
    "class_path: lightning_ada.augment.tumour_contrast.TumourContrast in your config",
    FutureWarning,
    stacklevel=2,
)
