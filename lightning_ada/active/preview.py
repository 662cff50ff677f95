"""PNG previews of a query for the annotator: one slice per plane and modality for a whole case
(:func:`save_preview`), exactly the asked slices or box for a part of one
(:func:`save_region_preview`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lightning_ada.data.regions import Region
from lightning_ada.io import atomic_path


def save_preview(
    path: str | Path,
    image: torch.Tensor,
    prediction: torch.Tensor | None,
    modalities: Sequence[str],
    elected: str | None,
    title: str = "",
) -> Path:
    """Axial, coronal and sagittal slices through the predicted tumour for every modality.

    Args:
        path: output PNG.
        image: ``(C, H, W, D)`` network-space image.
        prediction: ``(H, W, D)`` class indices (outlined in red) or None.
        modalities: names of the C channels.
        elected: the modality to annotate on (its row is framed).
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = image.detach().float().cpu().numpy()
    pred = None if prediction is None else (prediction.detach().cpu().numpy() > 0)
    if pred is not None and pred.any():
        centre = [int(np.median(a)) for a in np.nonzero(pred)]
    else:
        centre = [s // 2 for s in img.shape[1:]]
    planes = [("axial", 2), ("coronal", 1), ("sagittal", 0)]
    fig, axes = plt.subplots(len(modalities), 3, figsize=(7.5, 2.5 * len(modalities)), squeeze=False)
    for r, name in enumerate(modalities):
        for c, (plane, axis) in enumerate(planes):
            ax = axes[r][c]
            sl = np.take(img[r], centre[axis], axis=axis).T
            ax.imshow(sl, cmap="gray", origin="lower")
            if pred is not None:
                ax.contour(np.take(pred, centre[axis], axis=axis).T.astype(float), levels=[0.5],
                           colors="red", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name + ("  (annotate)" if name == elected else ""))
            if r == 0:
                ax.set_title(plane)
            if name == elected:
                for spine in ax.spines.values():
                    spine.set_edgecolor("gold")
                    spine.set_linewidth(3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return Path(path)


def save_region_preview(
    path: str | Path,
    image: torch.Tensor,
    prediction: torch.Tensor | None,
    region: Region,
    modalities: Sequence[str],
    elected: str | None,
    title: str = "",
    max_slices: int = 8,
) -> Path:
    """Exactly the slices a query asks for (a box: its middle slice along each axis, the box
    outlined), one column per modality, the prediction outlined in red.

    Args:
        path: output PNG.
        image: ``(C, H, W, D)`` network-space image.
        prediction: ``(H, W, D)`` class indices or None.
        region: the asked region (``slices`` or ``patch``) on the network grid.
        modalities: names of the C channels.
        elected: the modality to annotate on (its column is framed).
        title: figure title.
        max_slices: rows shown at most (the first ones, in order).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = image.detach().float().cpu().numpy()
    pred = None if prediction is None else (prediction.detach().cpu().numpy() > 0)
    if region.kind == "slices":
        rows = [(int(region.axis), int(i), None) for i in region.indices[:max_slices]]  # type: ignore[arg-type]
    else:
        centre = [s + n // 2 for s, n in zip(region.start, region.size)]
        rows = [(axis, centre[axis], region) for axis in (2, 1, 0)]
    fig, axes = plt.subplots(len(rows), len(modalities), figsize=(2.2 * len(modalities), 2.2 * len(rows)),
                             squeeze=False)
    for r, (axis, index, box) in enumerate(rows):
        for c, name in enumerate(modalities):
            ax = axes[r][c]
            ax.imshow(np.take(img[c], index, axis=axis).T, cmap="gray", origin="lower")
            if pred is not None:
                ax.contour(np.take(pred, index, axis=axis).T.astype(float), levels=[0.5],
                           colors="red", linewidths=0.8)
            if box is not None:  # the box in this plane: the two in-plane axes, transposed
                (a0, a1) = [a for a in range(3) if a != axis]
                ax.add_patch(plt.Rectangle((box.start[a0] - 0.5, box.start[a1] - 0.5),
                                           box.size[a0], box.size[a1], fill=False,
                                           edgecolor="cyan", linewidth=1.2))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"axis {axis}, slice {index}", fontsize=7)
            if r == 0:
                ax.set_title(name + ("  (annotate)" if name == elected else ""), fontsize=8)
            if name == elected:
                for spine in ax.spines.values():
                    spine.set_edgecolor("gold")
                    spine.set_linewidth(3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return Path(path)
