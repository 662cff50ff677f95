"""Annotation cost: what each query costs an annotator, and the budget in whole-scan equivalents.

Every query records, on the network grid (what the model learns from):

- ``voxels``: voxels annotated for the first time (a partial delivery counts what it gives);
- ``slices``: slices those voxels touch along the query's slice axis (axis 2, axial, for boxes
  and whole cases), ``slices_with_tumour`` of them (a time model can be applied afterwards);
- ``foreground_voxels``: tumour voxels among them;
- ``new_case``: 1 if the case had no annotation before (cases touched);
- ``scans``: ``voxels`` / the mean voxels of a pool case (whole-scan equivalents, the unit of
  the budget of the slices and patch units);
- ``seconds``: an annotation time from :class:`AnnotationTime` (an assumption, see there).

nnActive's foreground efficiency (how Dice grows with the share of the pool's foreground that
was annotated) is computed by the benchmark from ``foreground_voxels``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AnnotationTime:
    """A simple annotation-time model: seconds per annotated slice, with and without tumour.

    A whole case costs the sum over its slices, so the units compare on one scale. The
    defaults are **assumptions**, not measurements: a slice with tumour takes about a minute to
    delineate on one modality (the order of magnitude reported for manual glioma contouring,
    several minutes to an hour per whole case), a slice without tumour a few seconds to check
    and leave empty. Set them from your own annotators' times.

    Args:
        seconds_with_tumour: seconds to delineate a slice that holds tumour.
        seconds_without_tumour: seconds to confirm a slice holds none.
    """

    seconds_with_tumour: float = 60.0
    seconds_without_tumour: float = 3.0

    def seconds(self, slices: int, slices_with_tumour: int) -> float:
        """The time of ``slices`` annotated slices, ``slices_with_tumour`` of them with tumour."""
        return (slices_with_tumour * self.seconds_with_tumour
                + (slices - slices_with_tumour) * self.seconds_without_tumour)


def mean_case_voxels(shapes: Iterable[tuple[int, ...]]) -> float:
    """The mean voxels of a case over ``shapes`` (network grids ``(H, W, D)``): one scan."""
    sizes = [int(h) * int(w) * int(d) for h, w, d in shapes]
    if not sizes:
        raise ValueError("no case to measure a scan by")
    return sum(sizes) / len(sizes)


def query_cost(
    added: Mapping[str, Any], scan_voxels: float, timing: AnnotationTime | None = None
) -> dict[str, float]:
    """A query's cost from what its delivery added (``PoolView.label``'s counts).

    Args:
        added: ``voxels``, ``foreground_voxels``, ``slices``, ``new_case`` and
            ``slices_with_tumour`` (optional) of the delivery.
        scan_voxels: the voxels of one whole-scan equivalent (:func:`mean_case_voxels`).
        timing: the annotation-time model, or None (no ``seconds``).
    """
    cost = {
        "voxels": float(added["voxels"]),
        "slices": float(added["slices"]),
        "slices_with_tumour": float(added.get("slices_with_tumour", 0)),
        "foreground_voxels": float(added["foreground_voxels"]),
        "new_case": float(bool(added["new_case"])),
        "scans": float(added["voxels"]) / scan_voxels,
    }
    if timing is not None:
        with_tumour = int(added.get("slices_with_tumour", 0))
        cost["seconds"] = timing.seconds(int(added["slices"]), with_tumour)
    return cost


def total_cost(costs: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The sum of queries' costs, key by key."""
    out: dict[str, float] = {}
    for cost in costs:
        for k, v in cost.items():
            out[k] = out.get(k, 0.0) + float(v)
    return out
