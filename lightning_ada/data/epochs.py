"""Training epochs drawn from the labelled set as it is when each item is fetched.

:class:`LabeledEpoch` is the training dataset of the target stage (and of the source stage, whose
"labelled set" is every source case); :class:`PreparingLoader` readies it in the main process
before any loader worker starts; :func:`seed_worker` gives each worker its own augmentation
stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader

from lightning_ada.data.pseudo_set import pseudo_count

Item = dict[str, Any]


class LabeledEpoch(torch.utils.data.Dataset):
    """A fixed-length epoch drawn from the labelled set *as it is when an item is fetched*.

    Looking the labelled ids up at fetch time means the training loader always reflects the
    current pool, whenever Lightning (re)builds it: a case labelled before epoch ``e`` is trained
    on from epoch ``e`` on. With pseudo-labelled cases (self-training), items ``i < n`` of the
    epoch come from them (``n`` = :func:`~lightning_ada.data.pseudo_set.pseudo_count`, each
    case equally often from a per-epoch offset), the rest from the labelled cases; the loader's
    shuffle mixes the two. ``contrast`` (tumour-contrast augmentation) alters labelled cases,
    and pseudo-labelled ones when ``contrast_pseudo``, before ``transform``.

    Args:
        labeled: the labelled ids now, in labelling order.
        pseudo: the pseudo-labelled ids training uses now.
        pseudo_ratio: the share of an epoch drawn from pseudo-labelled cases.
        labeled_item: case id -> preprocessed item with its delivered label.
        pseudo_item: case id -> preprocessed item with its pseudo-label.
        transform: the training augmentation (MONAI, seeded by :meth:`set_random_state`).
        partial_transform: the augmentation of a partially annotated item (one with a
            ``sampling`` map), or None (no partial labels in this run).
        length: items per epoch.
        contrast: the tumour-contrast transform, or None.
        contrast_pseudo: apply ``contrast`` to pseudo-labelled items too.
        offset: where the pseudo-labelled cases start this epoch.
    """

    def __init__(
        self,
        labeled: Callable[[], list[str]],
        pseudo: Callable[[], list[str]],
        pseudo_ratio: Callable[[], float],
        labeled_item: Callable[[str], Item],
        pseudo_item: Callable[[str], Item],
        transform: Any,
        length: int,
        contrast: Any = None,
        contrast_pseudo: bool = False,
        offset: int = 0,
        partial_transform: Any = None,
    ) -> None:
        self.labeled, self.pseudo, self.pseudo_ratio = labeled, pseudo, pseudo_ratio
        self.partial_transform = partial_transform
        self.labeled_item, self.pseudo_item = labeled_item, pseudo_item
        self.transform, self.length = transform, length
        self.contrast, self.contrast_pseudo, self.offset = contrast, contrast_pseudo, offset

    def __len__(self) -> int:
        return self.length

    def prepare(self) -> None:
        """Ready the tumour-contrast transform (GBA proper trains or reloads its SinGAN here)."""
        if self.contrast is not None and hasattr(self.contrast, "prepare"):
            self.contrast.prepare()

    def set_random_state(self, seed: int) -> None:
        """Seed the augmentation (and the tumour-contrast transform with a derived seed)."""
        self.transform.set_random_state(seed=seed)
        if self.partial_transform is not None:
            self.partial_transform.set_random_state(seed=(seed * 17 + 5) % (2**31 - 1))
        if self.contrast is not None:
            self.contrast.set_random_state(seed=(seed * 31 + 17) % (2**31 - 1))

    def __getitem__(self, i: int) -> Any:
        ids = self.labeled()
        pseudo = self.pseudo()
        n_pseudo = pseudo_count(self.length, self.pseudo_ratio(), len(ids), len(pseudo))
        if not ids and not pseudo:
            raise RuntimeError(
                "no labeled case to train on: give the active callback a budget > 0, "
                "or list data.initial_labeled / set data.label_all"
            )
        if i < n_pseudo:
            item = self.pseudo_item(pseudo[(i + self.offset) % len(pseudo)])
            alter = self.contrast_pseudo
        else:
            item = self.labeled_item(ids[(i - n_pseudo) % len(ids)])
            alter = True
        if self.contrast is not None and alter:
            item = self.contrast(item)
        if "sampling" in item and self.partial_transform is not None:
            return self.partial_transform(item)
        return self.transform(item)


class PreparingLoader(DataLoader):
    """A DataLoader that prepares its dataset in this process each time iteration starts, before
    any worker starts (``LabeledEpoch.prepare``: a SinGAN trained once, then shared)."""

    def __iter__(self) -> Any:
        prepare = getattr(self.dataset, "prepare", None)
        if prepare is not None:
            prepare()
        return super().__iter__()


def seed_worker(worker_id: int) -> None:
    """Give each loader worker its own augmentation stream (workers fork identical states)."""
    info = torch.utils.data.get_worker_info()
    if info is not None:
        info.dataset.set_random_state(seed=(info.seed + worker_id) % (2**31 - 1))
