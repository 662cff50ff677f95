"""Regions of a case: the part of its network voxel grid ``(H, W, D)`` one query asks for.

The vocabulary shared by the annotation units (:mod:`lightning_ada.active.units`, which cut
cases into regions), the pool state (which records the region of every delivery) and the
datamodule (which trains on a delivery only inside its region).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class Region:
    """A part of one case on its network voxel grid ``(H, W, D)``.

    Attributes:
        kind: ``case`` (every voxel), ``slices`` (whole slices ``indices`` along ``axis``) or
            ``patch`` (the box ``start`` + ``size``, clipped to the grid).
        axis: the slice axis (0, 1 or 2) of ``slices``.
        indices: the slice indices of ``slices``, ascending.
        start: the box's first voxel of ``patch``.
        size: the box's size of ``patch``.
    """

    kind: Literal["case", "slices", "patch"] = "case"
    axis: int | None = None
    indices: tuple[int, ...] = ()
    start: tuple[int, ...] = ()
    size: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "slices" and (self.axis not in (0, 1, 2) or not self.indices):
            raise ValueError(f"a slices region needs an axis in 0-2 and indices, got {self}")
        if self.kind == "patch" and (len(self.start) != 3 or len(self.size) != 3):
            raise ValueError(f"a patch region needs a 3-d start and size, got {self}")
        if self.kind not in ("case", "slices", "patch"):
            raise ValueError(f"unknown region kind {self.kind!r}")

    # ------------------------------------------------------------------ geometry
    def mask(self, shape: Sequence[int]) -> Tensor:
        """The region as a boolean mask of ``shape`` ``(H, W, D)``."""
        out = torch.zeros(tuple(shape), dtype=torch.bool)
        if self.kind == "case":
            out[...] = True
        elif self.kind == "slices":
            index = [slice(None)] * 3
            index[self.axis] = torch.as_tensor(self.indices, dtype=torch.long)  # type: ignore[index]
            out[tuple(index)] = True
        else:
            out[tuple(slice(s, s + n) for s, n in zip(self.start, self.size))] = True
        return out

    def voxels(self, shape: Sequence[int]) -> int:
        """Voxels of the region on a grid of ``shape``."""
        h, w, d = (int(s) for s in shape)
        if self.kind == "case":
            return h * w * d
        if self.kind == "slices":
            return len(self.indices) * h * w * d // (h, w, d)[self.axis]
        return int(np.prod([max(0, min(s + n, g) - s) for s, n, g in zip(self.start, self.size, shape)]))

    # ------------------------------------------------------------------ records
    def to_json(self) -> dict[str, Any]:
        """Plain JSON (query log, pool state, requests)."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "slices":
            out |= {"axis": self.axis, "indices": list(self.indices)}
        elif self.kind == "patch":
            out |= {"start": list(self.start), "size": list(self.size)}
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Region:
        """Inverse of :meth:`to_json` (None: the whole case)."""
        if not d:
            return cls()
        return cls(d.get("kind", "case"), d.get("axis"), tuple(d.get("indices", ())),
                   tuple(d.get("start", ())), tuple(d.get("size", ())))

    def describe(self) -> str:
        """A short human description, e.g. ``slices 3, 9, 14 along axis 2``."""
        if self.kind == "case":
            return "the whole case"
        if self.kind == "slices":
            return f"slices {', '.join(map(str, self.indices))} along axis {self.axis}"
        end = [s + n - 1 for s, n in zip(self.start, self.size)]
        return f"the box {tuple(self.start)}-{tuple(end)}"


def gather_boxes(volume: Tensor, starts: Sequence[Sequence[int]], size: Sequence[int]) -> Tensor:
    """The boxes of ``size`` at ``starts`` of an ``(H, W, D)`` volume, stacked ``(n, *size)``.

    One gather instead of one slice per box; every box must lie inside the volume. Reducing the
    result over its last three dimensions gives each box's own reduction (the same float64 sums
    and means as box by box, ``tests/test_units.py``).
    """
    st = torch.as_tensor([list(s) for s in starts], dtype=torch.long).reshape(-1, 3)
    ix, iy, iz = (st[:, a, None] + torch.arange(int(n)) for a, n in enumerate(size))
    return volume[ix[:, :, None, None], iy[:, None, :, None], iz[:, None, None, :]]
