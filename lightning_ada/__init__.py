"""lightning_ada: source-free active domain adaptation for multi-modal 3D tumour segmentation."""

__version__ = "0.1.0"
