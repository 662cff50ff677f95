"""Rebuild what a run queried, for the figure: images, reference, predictions before / after.

"Before" is the source model (the run's starting point), "after" the run's final checkpoint;
both predict every queried case in the network's input space. The run's data and model settings
come from the ``config.yaml`` the CLI saved in the run folder.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import yaml

from ada_bench.plots import QueriedCase


def load_queried_cases(row: dict[str, Any]) -> tuple[list[QueriedCase], list[str]]:
    """The queried cases of a finished run (in query order) and the modality names.

    Raises:
        FileNotFoundError: the run folder, its ``config.yaml`` or a checkpoint is missing.
        ValueError: the run queried nothing.
    """
    from ada_bench.loop import find_checkpoint
    from lightning_ada.data.datamodule import ActiveDataModule
    from lightning_ada.models.module import SegmentationModule

    queries = [q for q in row.get("queries", []) if q.get("case_id")]
    if not queries:
        raise ValueError(f"run {row['run']} queried nothing")
    if not row.get("run_dir"):
        raise FileNotFoundError(f"run {row['run']} (seed {row['seed']}) records no run_dir")
    folder = Path(row["run_dir"])
    cfg_path = folder / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: no saved config for this run")
    cfg = yaml.safe_load(cfg_path.read_text())
    final = Path(row["checkpoint"]) if row.get("checkpoint") else find_checkpoint(folder)
    if final is None or not final.is_file():
        raise FileNotFoundError(f"no final checkpoint in {folder}")
    data_cfg = dict(cfg["data"])
    model_cfg = dict(cfg["model"])
    source = row.get("source_checkpoint") or model_cfg.get("source_checkpoint")
    if not source or not Path(source).is_file():
        raise FileNotFoundError(f"source checkpoint {source!r} not found")

    ids = list(dict.fromkeys(q["case_id"] for q in queries))
    allowed = inspect.signature(ActiveDataModule.__init__).parameters
    data_cfg = {k: v for k, v in data_cfg.items() if k in allowed}
    data_cfg.update(
        stage="target",
        label_all=False,
        initial_labeled=None,
        validate_inputs=False,
        cache_dir=None,
        splits={"source": [], "source_test": [], "pool": ids, "test": ids[:1]},
    )
    dm = ActiveDataModule(**data_cfg)
    dm.setup("fit")
    mods = list(dm.hparams.modalities)

    allowed = inspect.signature(SegmentationModule.__init__).parameters
    base = {k: v for k, v in model_cfg.items() if k in allowed and k != "source_checkpoint"}
    base.update(in_channels=len(mods), labels=dict(dm.hparams.labels))
    before = SegmentationModule(**base, source_checkpoint=str(source))
    after = SegmentationModule(**base)
    after.load_source(final)

    cases = []
    for q in queries:
        cid = q["case_id"]
        item = dm.item(cid)
        image = item["image"]
        meta = q.get("case_meta") or {}
        deg = meta.get("degraded_modality")
        site = meta.get("centre") or meta.get("group") or "?"  # phantom scanner / BraTS site
        title = f"{cid}\nround {q.get('round')}, site {site}" + (
            f", {deg} degraded" if deg else ""
        )
        cases.append(
            QueriedCase(
                image=image.detach().float().cpu().numpy(),
                before=before.predict_case(image).argmax(0).numpy(),
                after=after.predict_case(image).argmax(0).numpy(),
                label=item["label"][0].detach().cpu().numpy() if "label" in item else None,
                elected=q.get("modality"),
                title=title,
            )
        )
    return cases, mods
