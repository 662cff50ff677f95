"""lightning_ada: source-free active domain adaptation for multi-modal 3D tumour segmentation."""

from lightning_ada.runtime import prefer_passive_wait

prefer_passive_wait()  # before torch loads OpenMP (lightning_ada/runtime.py explains why)

__version__ = "0.1.0"
