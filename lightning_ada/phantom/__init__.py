"""The embedded phantom: synthetic multi-centre MRI cases written as NIfTI (:mod:`.simulator`),
out-of-distribution cases for open-set pools (:mod:`.open_set`) and simulated raters
(:mod:`.raters`). Nothing is downloaded; the datamodule reads the phantom as it reads real data."""
