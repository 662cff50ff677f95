"""Training-time augmentation: tumour-contrast rescaling and GBA (:mod:`.tumour_contrast`) with
its single-image SinGAN harmoniser (:mod:`.singan`)."""
