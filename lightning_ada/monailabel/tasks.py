"""MONAI Label tasks backed by lightning_ada: next sample, scoring, inference and training.

* :class:`PoolRanking` ranks the datastore's images with one lightning_ada strategy under the
  current model (``lightning-ada query``: the strategy's score, its factors and the elected
  modality of every unlabelled image), once per strategy and model version: the ranking is kept
  in ``rankings/`` and in each image's info in the datastore, and later requests under the same
  model only skip the images labelled since.
* :class:`NextSample` is ``/activelearning/<strategy>``: the best-ranked image still unlabelled,
  or, for a region rule, the best-ranked slices or box not annotated yet (the request is kept
  until the image's next label, which is merged as a delineation of that part:
  :mod:`lightning_ada.monailabel.regions`).
* :class:`RankingScore` is ``/scoring/<strategy>``: the ranking made ahead of the requests.
* :class:`Predict` is ``/infer/lightning_ada``: the current model's sliding-window prediction
  (``lightning-ada predict``) in the image's own grid and affine.
* :class:`Fit` is ``/train/lightning_ada``: ``lightning-ada fit`` from the source model on the
  datastore's final labels (``data.initial_labeled``, no queries), resumed from its last epoch
  if a training of the same labelled set was interrupted; the finished model becomes current.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask

from lightning_ada.io import write_json_atomic
from lightning_ada.monailabel.datastore import CheckedDatastore
from lightning_ada.monailabel.regions import (
    REGION_KEYS,
    REQUEST_KEYS,
    RegionRequests,
    annotated_voxels,
    is_partial,
    overlaps,
    unit_options,
)
from lightning_ada.monailabel.workspace import REFUSED, RunFailed, Workspace, labelled_hash

logger = logging.getLogger(__name__)

#: the image-info key under which rankings are kept in the datastore
INFO_KEY = "lightning_ada"
#: the name of the model (infer) and of the trainer
MODEL = "lightning_ada"
#: region rows of a ranking given their place in the image files (and a mask): the regions a
#: session can be offered before the ranking is made again
IMAGE_GRID_TOP = 20


def failed(error: Exception) -> HTTPException:
    """A lightning_ada run's one-line error as the response the client gets (FastAPI's own
    error: MONAI Label answers any other exception with a bare 500)."""
    return HTTPException(status_code=REFUSED, detail=str(error))


def datastore_cases(datastore: Datastore) -> tuple[dict[str, str], dict[str, str]]:
    """Image path by id and final-label path by id."""
    images = {i: datastore.get_image_uri(i) for i in datastore.list_images()}
    labels = {i: datastore.get_label_uri(i, DefaultLabelTag.FINAL.value)
              for i in datastore.get_labeled_images()}
    return images, labels


class PoolRanking:
    """One strategy's ranking of the datastore under the current model, made once per version.

    Args:
        workspace: the app's workspace.
        strategy: a registered lightning_ada strategy name (``--active.strategy``).
        unit: the annotation unit of a region rule, ``name[:key=value,...]`` (e.g.
            ``slices:k=3``); None: the strategy ranks whole images.
    """

    def __init__(self, workspace: Workspace, strategy: str, unit: str | None = None) -> None:
        self.workspace, self.strategy, self.unit = workspace, strategy, unit
        self._lock = threading.Lock()  # two requests at once make one ranking

    def __call__(self, datastore: Datastore, again: bool = False) -> tuple[list[dict[str, Any]], str]:
        """The ranking (rows of ``lightning-ada query``, best first) and the model version;
        ``again``: rank again under the same model (the labels delivered since are then
        annotated, not candidates)."""
        with self._lock:
            checkpoint, version = self.workspace.current()
            target = self.workspace.root / "rankings" / f"{self.strategy}_{version}"
            if again or not target.with_suffix(".json").is_file():
                self._rank(datastore, checkpoint, version, target)
            return json.loads(target.with_suffix(".json").read_text()), version

    def _rank(self, datastore: Datastore, checkpoint: Path, version: str, target: Path) -> None:
        images, labels = datastore_cases(datastore)
        target.parent.mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix=f"query_{self.strategy}_", dir=target.parent))
        self.workspace.write_datalist(images, labels, run_dir)
        regions = ([*unit_options(self.unit), "--image_grid_top", str(IMAGE_GRID_TOP)]
                   if self.unit else [])
        command = self.workspace.command(
            "query", run_dir, "--ckpt_path", str(checkpoint), "--active.strategy", self.strategy,
            "--out", str(target), *regions, *labelled_options(labels))
        try:
            self.workspace.run(command)
        except RunFailed as error:
            raise failed(error) from error
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        best: dict[str, dict[str, Any]] = {}  # a region rule: each image's best region
        for row in json.loads(target.with_suffix(".json").read_text()):
            best.setdefault(row["case_id"], row)
        infos = {}
        for row in best.values():
            if row["case_id"] in images:
                info = datastore.get_image_info(row["case_id"]).get(INFO_KEY, {})
                info[self.strategy] = {"model_version": version, **row}
                infos[row["case_id"]] = {INFO_KEY: info}
        if isinstance(datastore, CheckedDatastore):
            datastore.update_image_infos(infos)  # the datastore file written once
        else:
            for image_id, info in infos.items():
                datastore.update_image_info(image_id, info)


def labelled_options(labels: dict[str, str]) -> list[str]:
    """The command-line options naming the labelled ids and, among them, those whose final
    label is partial (merged region deliveries); none: no option."""
    if not labels:
        return []
    partial = sorted(cid for cid, path in labels.items() if is_partial(path))
    return ["--data.initial_labeled", f"[{', '.join(sorted(labels))}]",
            *(["--data.initial_partial", f"[{', '.join(partial)}]"] if partial else [])]


class NextSample(Strategy):
    """``/activelearning/<strategy>``: the best-ranked image not labelled yet, or (a region
    rule) the best-ranked region not annotated yet.

    The response carries, besides MONAI Label's ``id`` (and ``path``), the strategy, its
    ``score`` and ``factors``, the ``elected_modality`` with its channel in the 4-D image
    (``elected_channel``) and the election's Dice per modality, the ``rank`` and the
    ``model_version`` the ranking was made with. For a region rule also the ``region``
    (its description), where it lies in the image file (``slice_axis`` and ``slices``, or
    ``index_range``: voxel indices) and ``asked_mask`` (a mask of it on the server); the
    image's next final label answers that request.
    """

    def __init__(self, ranking: PoolRanking, description: str, requests: RegionRequests) -> None:
        super().__init__(description)
        self.ranking, self.requests = ranking, requests

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        rows, version = self.ranking(datastore)
        row = self._best(rows, datastore)
        if row is None and any("region" in r and "asked_mask" not in r for r in rows):
            rows, version = self.ranking(datastore, again=True)  # past the rows placed in files
            row = self._best(rows, datastore)
        if row is None:
            return {}
        if "region" in row:
            self.requests.ask(row, self.ranking.strategy, version)
        else:
            self.requests.cancel(row["case_id"])  # offered whole: its next label is whole
        fixed = {"rank", "open_set_candidate", *REQUEST_KEYS}
        modalities = self.ranking.workspace.modalities
        return {
            "id": row["case_id"],
            "strategy": self.ranking.strategy,
            "rank": row["rank"],
            "score": row["score"],
            "factors": {k: v for k, v in row.items() if k not in fixed and not k.startswith("dice_")},
            "elected_modality": row["elected_modality"],
            "elected_channel": modalities.index(row["elected_modality"]),
            "election_dice": {k[5:]: v for k, v in row.items() if k.startswith("dice_")},
            "model_version": version,
            **{k: row[k] for k in REGION_KEYS if k in row},
        }

    def _best(self, rows: list[dict[str, Any]], datastore: Datastore) -> dict[str, Any] | None:
        """The first row still to annotate: an unlabelled image, or a region placed in the image
        files that touches no annotated voxel of an image not labelled whole."""
        _, labels = datastore_cases(datastore)
        annotated: dict[str, Any] = {}
        for row in rows:
            cid = row["case_id"]
            if row.get("rank") is None:
                continue
            if "region" not in row:
                if cid not in labels:
                    return row
                continue
            if "asked_mask" not in row:
                continue
            if cid in labels:
                if cid not in annotated:
                    annotated[cid] = annotated_voxels(labels[cid])
                if overlaps(row["asked_mask"], annotated[cid]):
                    continue  # a whole label, or a region delivered since the ranking
            return row
        return None


class RankingScore(ScoringMethod):
    """``/scoring/<strategy>``: make (or reuse) the ranking of the current model version and
    write each image's score into its info."""

    def __init__(self, ranking: PoolRanking, description: str) -> None:
        super().__init__(description)
        self.ranking = ranking

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        rows, version = self.ranking(datastore)
        return {"strategy": self.ranking.strategy, "model_version": version, "ranked": len(rows)}


class Predict(InferTask):
    """``/infer/lightning_ada``: the current model's prediction of a datastore image.

    Only images of the datastore are predicted: a path elsewhere on the server is refused.
    """

    def __init__(self, workspace: Workspace, datastore: Datastore) -> None:
        labels = {name: int(v) for name, v in workspace.labels.items()}
        super().__init__(InferType.SEGMENTATION, labels, 3,
                         "lightning_ada: sliding-window prediction of the current model, "
                         "written in the image's grid and affine")
        self.workspace, self.datastore = workspace, datastore

    def is_valid(self) -> bool:
        return True

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        images, labels = datastore_cases(self.datastore)
        path = str(request.get("image", ""))
        by_path = {str(Path(p).resolve()): i for i, p in images.items()}
        case_id = by_path.get(str(Path(path).resolve())) if path else None
        if case_id is None:
            raise HTTPException(status_code=404, detail=f"image {path!r} is not an image of the datastore")
        checkpoint, version = self.workspace.current()
        out = Path(tempfile.mkdtemp(prefix="lightning_ada_predict_"))  # MONAI Label sends it
        self.workspace.write_datalist(images, labels, out / "run")
        command = self.workspace.command(
            "predict", out / "run", "--ckpt_path", str(checkpoint), "--data.predict_split", "infer",
            "--writer.output_dir", str(out), splits=f"{{test: [], infer: [{case_id}]}}")
        try:
            self.workspace.run(command)
        except RunFailed as error:
            raise failed(error) from error
        finally:
            shutil.rmtree(out / "run", ignore_errors=True)
        return str(out / f"{case_id}_pred.nii.gz"), {"model_version": version}


class Fit(TrainTask):
    """``/train/lightning_ada``: lightning_ada's target-stage ``fit`` on the final labels."""

    def __init__(self, workspace: Workspace) -> None:
        super().__init__("lightning_ada: fit from the source model on the datastore's final "
                         "labels (resumed if interrupted); the result becomes the current model")
        self.workspace = workspace

    def stats(self) -> dict[str, Any]:
        info = self.workspace.model_dir / "current.json"
        current = json.loads(info.read_text()) if info.is_file() else {}
        return {"model_version": self.workspace.current()[1],
                "labelled": len(current.get("labelled", [])), "run": current.get("run")}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        images, labels = datastore_cases(datastore)
        if not labels:
            raise failed(ValueError("nothing to train on: no image has a final label yet"))
        run_dir = self.workspace.root / "runs" / f"train_{labelled_hash(labels)}"
        last = run_dir / "checkpoints" / "last.ckpt"
        done = run_dir / "done.json"
        if done.is_file():  # this labelled set was trained already
            return json.loads(done.read_text())
        if not (run_dir / "datalist.json").is_file():  # a resume keeps its run's cases
            self.workspace.write_datalist(images, labels, run_dir)
        resume = ["--ckpt_path", str(last)] if last.is_file() else []
        print(f"[lightning_ada] training on {len(labels)} labelled image(s) in {run_dir}"
              + (f", resuming from {last}" if resume else ""), flush=True)
        command = self.workspace.command(
            "fit", run_dir, "--model.source_checkpoint", str(self.workspace.source_checkpoint),
            "--active.budget", "0", *labelled_options(labels), *resume)
        try:
            self.workspace.run(command, capture=False)
        except RunFailed as error:
            raise failed(error) from error
        version = self.workspace.publish(last, labels, run_dir)
        result = {"model_version": version, "labelled": sorted(labels), "run": str(run_dir),
                  "resumed": bool(resume)}
        write_json_atomic(done, result)
        print(f"[lightning_ada] model {version} is current", flush=True)
        return result
