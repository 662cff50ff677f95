"""Adaptation to one rater's style (issue 15 item 3, seed 002): per-rater medians, the inter-rater
ceiling and how much of a prediction the rater would revise.

The phantom is generated with ``raters`` (:func:`lightning_ada.phantom.simulator.generate_phantom`):
every target case has one mask per rater style. Group ``k`` (a fold of the loop,
:mod:`ada_bench.centres`) is rater ``k``: its runs read that rater's datalist (``data.rater``), so
the oracle delivers the rater's masks and the test compares with the rater's masks; the source
model (trained on the consensus of the source centre) is shared by every rater.

Besides the DSC and HD95 of :func:`ada_bench.centres.group_table`, each test prediction gets the
revision measure of :mod:`lightning_ada.metrics.revision` against the rater's mask (volume: voxels of the
symmetric difference over the rater's volume; surface: the share of both boundaries further than
the tolerance from the other, 1 - surface Dice), on the whole tumour (``WT``, every label) and per
region, plus the whole-tumour DSC (the inter-rater agreement is a whole-tumour Dice). They are
computed by :class:`RevisionProbe` after every test of a run (each point of a budget curve and the
final test) and stored in the per-case rows as ``revision_volume_<region>``,
``revision_surface_<region>`` and ``dice_WT``.

The ceiling: the inter-rater agreement on the same test cases (:func:`inter_rater_agreement`), the
mean foreground Dice of the rater's masks against every other rater's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ada_bench.centres import Group, _fmt_iqr
from ada_bench.curve import StrideSnapshots
from ada_bench.runner import run_experiment
from ada_bench.stats import per_seed_case, quartiles

#: boundary deviation (mm) a rater would not revise (about one voxel of the 24^3 phantom)
TOLERANCE_MM = 8.0
WHOLE = "WT"


def rater_groups(styles: Sequence[Any]) -> list[Group]:
    """One group per rater style: its runs read that rater's labels (``data.rater``)."""
    return [Group(s.name, {"data.rater": s.name}) for s in styles]


def revision_rows(model: Any, dm: Any, tolerance_mm: float = TOLERANCE_MM) -> dict[str, dict]:
    """Revision measures and the whole-tumour DSC of every test case of ``dm`` under ``model``.

    Returns:
        case id -> ``{"revision_volume_<region>", "revision_surface_<region>", "dice_WT"}`` for
        the model's regions and ``WT`` (the union of every label).
    """
    import torch
    from monai.data.utils import affine_to_spacing

    from lightning_ada.metrics.revision import revision

    regions = dict(model.regions)
    regions.setdefault(WHOLE, sorted({i for ids in model.regions.values() for i in ids}))
    out: dict[str, dict[str, float]] = {}
    for cid in dm.split_ids[dm.test_split()]:
        item = dm.item(cid)
        image, label = item["image"], torch.as_tensor(item["label"])[0].long()
        pred = model.predict_case(image).argmax(0)
        spacing = [float(s) for s in affine_to_spacing(image.affine, r=3)]
        row: dict[str, float] = {}
        for region, rev in revision(pred, label, regions, tolerance_mm, spacing).items():
            row[f"revision_volume_{region}"] = rev["volume"]
            row[f"revision_surface_{region}"] = rev["surface"]
        p, g = torch.isin(pred, torch.tensor(regions[WHOLE])), torch.isin(
            label, torch.tensor(regions[WHOLE])
        )
        total = int(p.sum() + g.sum())
        row["dice_WT"] = 1.0 if total == 0 else 2.0 * float((p & g).sum()) / total
        out[cid] = row
    return out


class RevisionProbe(StrideSnapshots):
    """Budget-curve snapshots (when ``curve``) plus :func:`revision_rows` after every test.

    Args:
        stride: the run's ``active.stride``.
        curve: also test after every stride (:class:`ada_bench.curve.StrideSnapshots`).
        tolerance_mm: the revision's boundary tolerance.
    """

    def __init__(self, stride: int, curve: bool, tolerance_mm: float = TOLERANCE_MM) -> None:
        super().__init__(max(1, int(stride)))
        self.curve, self.tolerance_mm = curve, tolerance_mm
        #: one ``revision_rows`` result per test, in order
        self.tests: list[dict[str, dict[str, float]]] = []

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self.tests.append(revision_rows(pl_module, trainer.datamodule, self.tolerance_mm))

    def evaluate(self, trainer: Any, model: Any, dm: Any) -> list[dict[str, Any]]:
        return super().evaluate(trainer, model, dm) if self.curve else []


def _merge(per_case: list[dict[str, Any]], extra: Mapping[str, Mapping[str, float]]) -> None:
    for row in per_case:
        row.update(extra.get(str(row.get("case_id")), {}))


def revision_runner(
    config: Mapping[str, Any], fit: bool = True, curve: bool = False
) -> dict[str, Any]:
    """The loop's runner (:class:`ada_bench.loop.BenchmarkLoop`) with :class:`RevisionProbe`:
    :func:`ada_bench.runner.run_experiment`, the revision measures merged into the per-case rows
    of the final test and of every budget-curve point."""
    probes: list[RevisionProbe] = []

    def factory(cfg: Mapping[str, Any]) -> RevisionProbe:
        probes.append(RevisionProbe(int(cfg.get("active", {}).get("stride", 1)), curve))
        return probes[-1]

    res = run_experiment(config, fit=fit, snapshots=factory)
    tests = probes[0].tests if probes else []
    points = list(res.get("curve") or [])
    for point, extra in zip(points, tests[: len(points)]):
        _merge(point.get("per_case", []), extra)
    if tests:
        _merge(res.get("per_case", []), tests[-1])
    if not points:
        res.pop("curve", None)
    return res


# ---------------------------------------------------------------------------------- ceiling
def inter_rater_agreement(root: str | Path, case_ids: Sequence[str]) -> dict[str, Any]:
    """Whole-tumour Dice between the raters' masks of ``case_ids`` in a phantom with raters.

    Returns:
        ``{"pairs": {"a|b": mean Dice}, "per_rater": {rater: mean Dice vs the other raters},
        "vs_consensus": {rater: mean Dice vs the reference}, "mean": mean over pairs,
        "n_cases": n}``.

    Raises:
        FileNotFoundError: no phantom with raters at ``root``.
    """
    import json

    import nibabel as nib

    from lightning_ada.phantom.raters import inter_rater_dice

    root = Path(root)
    data = json.loads((root / "dataset.json").read_text())
    by_id = {c["case_id"]: c for c in data["cases"]}
    pairs: dict[str, list[float]] = {}
    vs_ref: dict[str, list[float]] = {}
    for cid in case_ids:
        case = by_id[cid]
        paths = case["meta"].get("rater_labels") or {}
        if not paths:
            raise FileNotFoundError(f"{root}: case {cid} has no rater masks")
        masks = {r: np.asarray(nib.load(root / p).dataobj) for r, p in paths.items()}
        ref = np.asarray(nib.load(root / case["label"]).dataobj)
        for k, v in inter_rater_dice(masks).items():
            pairs.setdefault(k, []).append(v)
        for r, m in masks.items():
            vs_ref.setdefault(r, []).append(inter_rater_dice({"a": m, "b": ref})["a|b"])
    pair_mean = {k: float(np.mean(v)) for k, v in pairs.items()}
    raters = sorted(vs_ref)
    per_rater = {
        r: float(np.mean([v for k, v in pair_mean.items() if r in k.split("|")]))
        for r in raters
    }
    return {
        "pairs": pair_mean,
        "per_rater": per_rater,
        "vs_consensus": {r: float(np.mean(v)) for r, v in vs_ref.items()},
        "mean": float(np.mean(list(pair_mean.values()))) if pair_mean else math.nan,
        "n_cases": len(case_ids),
    }


def revision_columns(
    ceiling: Mapping[str, Mapping[str, float]], group_of: Mapping[int, str]
) -> tuple[list[str], Any]:
    """Extra columns of the rater table: WT DSC, revision (WT) and the rater's ceiling."""
    header = ["WT DSC % median [IQR]", "revision vol. WT median [IQR]",
              "revision surf. WT median [IQR]", "ceiling: WT DSC vs other raters %"]

    def extra(sel: list[dict[str, Any]], regions: list[str]) -> dict[str, str]:
        wt = per_seed_case(sel, "dice_WT", [])
        vol = per_seed_case(sel, f"revision_volume_{WHOLE}", [])
        surf = per_seed_case(sel, f"revision_surface_{WHOLE}", [])
        rater = group_of.get(sel[0]["fold"], "") if sel else ""
        c = ceiling.get("per_rater", {}).get(rater, math.nan)
        return {
            header[0]: _fmt_iqr(*quartiles(list(wt.values())), scale=100),
            header[1]: _fmt_iqr(*quartiles(list(vol.values())), digits=2),
            header[2]: _fmt_iqr(*quartiles(list(surf.values())), digits=2),
            header[3]: "–" if math.isnan(c) else f"{100 * c:.1f}",
        }

    return header, extra
