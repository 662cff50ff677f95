"""The ``query`` subcommand: rank a checkpoint's unlabeled pool without training or labelling."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from lightning_ada.active.callback import ActiveQueryCallback
from lightning_ada.active.oracles.base import Request
from lightning_ada.io import write_json_atomic


class ADATrainer(Trainer):
    """Lightning's Trainer plus the ``query`` subcommand."""

    def query(
        self,
        model: LightningModule,
        datamodule: LightningDataModule,
        ckpt_path: str,
        out: str | None = None,
        image_grid_top: int | None = None,
    ) -> list[dict[str, Any]]:
        """Rank the unlabeled pool of a checkpoint with the configured strategy, without training.

        Restores the model weights, the pool (which cases are labeled) and the query round of
        ``ckpt_path`` (weights only, through Lightning's own restore), ranks every unlabeled case
        with ``active.strategy``, elects the modality to annotate for each, prints the ranking
        with the strategy's factors and the per-modality Dice of the election, and writes it to
        ``OUT.json`` and ``OUT.csv``. With ``active.open_set_filter`` the strategy ranks only the
        pre-filter's candidates, as ``fit`` would in its next round; the cases it leaves out
        follow, unranked (``open_set_candidate`` false, their prototype distance given). Labels
        nothing and trains nothing; besides the ranking it
        writes only the strategy's caches (``<trainer.default_root_dir>/cache``, shared with
        ``fit``): no config, logs or checkpoints.

        Args:
            ckpt_path: checkpoint of a ``fit`` run (e.g. ``<run>/checkpoints/last.ckpt``).
            out: output path without suffix (default: ``<run>/query_ranking`` next to the
                checkpoint's ``checkpoints/`` folder).
            image_grid_top: a region rule (``active.unit`` slices or patch) ranks regions; each
                row then names its ``region`` on the network grid and, for the best
                ``image_grid_top`` rows (None: every row), where it lies in the image files
                (``slice_axis`` and ``slices``, or ``index_range``) with a mask of it,
                ``OUT_asked/<case>_part<k>.nii.gz`` (what an annotator is asked to delineate).
        """
        callback = next((c for c in self.callbacks if isinstance(c, ActiveQueryCallback)), None)
        if callback is None:
            raise ValueError("query needs the active callback (the 'active' section)")
        self.limit_val_batches = 0  # the validate call below only restores the checkpoint
        self.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False, weights_only=True)
        entries = callback.rank_pool(self, model)
        target = Path(out) if out else Path(ckpt_path).resolve().parent.parent / "query_ranking"
        rows = [
            {"rank": None if e["rank"] is None else e["rank"] + 1, "case_id": e["case_id"],
             "score": e["score"], **e["factors"],
             **({"open_set_candidate": e["open_set_candidate"]} if "open_set_candidate" in e else {}),
             "elected_modality": e["modality"],
             **{f"dice_{m}": d for m, d in (e["election_dice"] or {}).items()}}
            for e in entries
        ]
        if self.is_global_zero:
            for i, (row, entry) in enumerate(zip(rows, entries)):
                if entry.get("region") is not None:
                    on_image = image_grid_top is None or i < image_grid_top
                    row.update(region_columns(callback.request_for(model, entry), target, on_image))
            write_json_atomic(target.with_suffix(".json"), rows)
            write_csv(target.with_suffix(".csv"), rows)
            print(format_ranking(rows))
            print(f"written: {target.with_suffix('.json')} and {target.with_suffix('.csv')}")
        return rows


#: the columns of a region row besides the case's (not factors of the score)
REGION_COLUMNS = ("part", "region", "region_network_grid", "slice_axis", "slices", "index_range",
                  "asked_mask")


def region_columns(request: Request, target: Path, on_image: bool) -> dict[str, Any]:
    """A region row's columns: the region on the network grid and, with ``on_image``, where it
    lies in the image files with its mask written to ``<target>_asked/``."""
    assert request.region is not None
    out: dict[str, Any] = {"part": request.part, "region": request.region.describe(),
                           "region_network_grid": request.region.to_json()}
    if not on_image:
        return out
    grid = request.region_record().get("image_grid", {})
    if "slice_axis" in grid:
        out |= {"slice_axis": grid["slice_axis"], "slices": grid["slices"]}
    out["index_range"] = grid.get("index_range")
    name = f"{request.case.case_id}_part{request.part}.nii.gz"
    mask = target.parent / f"{target.name}_asked" / name
    mask.parent.mkdir(parents=True, exist_ok=True)
    assert request.write_asked is not None
    request.write_asked(mask)
    return out | {"asked_mask": str(mask)}


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows as CSV (header = every key in first-seen order)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def format_ranking(rows: list[dict[str, Any]]) -> str:
    """The ranking as a text table: rank, case, score, factors, elected modality, Dice per
    modality (and the region, for a region rule)."""
    if not rows:
        return "no unlabeled case to rank"
    fixed = {"rank", "case_id", "score", "elected_modality", "open_set_candidate", *REGION_COLUMNS}
    factors = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in fixed and not k.startswith("dice_")]
    dice = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith("dice_")]
    width = max(8, *(len(r["case_id"]) for r in rows))
    head = f"{'rank':>4}  {'case':<{width}}  {'score':>10}"
    head += "".join(f"  {k:>10}" for k in factors) + f"  {'elected':<8}"
    head += "".join(f"  {k:>10}" for k in dice)
    regions = any("region" in r for r in rows)
    head += "  region" if regions else ""
    lines = [head]
    for r in rows:
        if r["rank"] is None:  # left out by the open-set pre-filter
            line = f"{'-':>4}  {r['case_id']:<{width}}  {'filtered':>10}"
        else:
            line = f"{r['rank']:>4}  {r['case_id']:<{width}}  {r['score']:>10.4g}"
        line += "".join(f"  {_number(r.get(k)):>10.4g}" for k in factors)
        line += f"  {r['elected_modality']!s:<8}"
        line += "".join(f"  {_number(r.get(k)):>10.4f}" for k in dice)
        line += f"  {r.get('region', '')}" if regions else ""
        lines.append(line)
    return "\n".join(lines)


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)
