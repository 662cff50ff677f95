"""What the MONAI Label app keeps on disk and how it runs lightning_ada: the datastore as a
datalist, the current model and its version, and the ``lightning-ada`` runs it starts.

Layout of the app's workspace (``<studies>/.lightning_ada/``, next to MONAI Label's own
``labels/`` and ``.datastore.json``):

* ``runs/train_<labelled hash>/``: one ``fit`` per labelled set (resumed if it was interrupted),
  with its ``datalist.json``: every image of the datastore as a target pool case (one 4-D NIfTI
  per case, modalities on the last axis in the source model's order), with its ``final`` label
  if it has one (rankings and predictions run in folders of their own, removed afterwards);
* ``model/current.ckpt`` + ``model/current.json``: the model the app ranks and predicts with
  (the source checkpoint until a training has finished), with its version (a content hash);
* ``rankings/<strategy>_<version>.json``: a strategy's ranking of the pool under one model
  version (the scoring cache; also written into each image's info in the datastore).

Every run is the ``lightning-ada`` command line in a child process, with the app's config files,
so it is exactly what a researcher would run and its errors are the CLI's one-line errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lightning_ada.cases import check_case_id
from lightning_ada.errors import DataError
from lightning_ada.io import atomic_path, write_json_atomic
from lightning_ada.weights import read_checkpoint

#: the app's folder inside the studies folder
WORKSPACE = ".lightning_ada"
#: HTTP status of a request lightning_ada refused (understood, but its input is wrong)
REFUSED = 422
#: what the current model's checkpoint keeps of a training's last checkpoint
MODEL_KEYS = frozenset({
    "state_dict", "hyper_parameters", "hparams_name", "datamodule_hyper_parameters",
    "datamodule_hparams_name", "pytorch-lightning_version", "epoch", "global_step",
    "stdr_anchors", "stdr_anchors_meta",
})


class RunFailed(RuntimeError):
    """A ``lightning-ada`` run ended with an error; the message is its one-line error."""


def file_hash(path: str | Path) -> str:
    """First 16 hex digits of the SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def labelled_hash(labels: dict[str, str]) -> str:
    """A short hash of the labelled set: the ids and their label files' content."""
    digest = hashlib.sha256()
    for cid in sorted(labels):
        digest.update(f"{cid}:{file_hash(labels[cid])};".encode())
    return digest.hexdigest()[:12]


@dataclass
class Workspace:
    """The app's files and the runs it starts.

    Attributes:
        studies: the MONAI Label studies folder (the datastore).
        configs: lightning_ada config files (``-c``), in order, as for ``lightning-ada fit``.
        source_checkpoint: the source model.
        overrides: more command-line options for every run (e.g. ``--trainer.max_epochs 5``).
    """

    studies: Path
    configs: Sequence[str]
    source_checkpoint: Path
    overrides: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        self.studies = Path(self.studies).resolve()
        self.source_checkpoint = Path(self.source_checkpoint).resolve()
        self.root = self.studies / WORKSPACE
        source = read_checkpoint(self.source_checkpoint)
        data = source.get("datamodule_hyper_parameters") or {}
        if not data.get("modalities") or not data.get("labels"):
            raise DataError(f"{self.source_checkpoint}: no modalities or labels in this checkpoint; "
                            "is it a lightning-ada checkpoint?")
        #: modality names in channel order (the last axis of each 4-D image)
        self.modalities: list[str] = list(data["modalities"])
        #: on-disk label values by class name
        self.labels: dict[str, int] = dict(data["labels"])
        #: the source model's version, hashed once (every request asks for the current model)
        self.source_version = file_hash(self.source_checkpoint)

    # ------------------------------------------------------------------ the datastore as cases
    def write_datalist(self, images: dict[str, str], labels: dict[str, str], folder: Path) -> Path:
        """Write ``<folder>/datalist.json``: every image a pool case, labelled ones with their
        label. Each run has its own (a request made meanwhile never changes a run's cases).

        Args:
            images: image path by image id (MONAI Label's ids: the file names without suffix).
            labels: final label path by image id.
            folder: the run's folder.

        Raises:
            DataError: an image id that is not a valid case id (it names files).
        """
        for cid in images:
            check_case_id(cid, str(self.studies))
        cases = [
            {"case_id": cid, "images": [images[cid]], "modalities": self.modalities,
             "split": "pool", **({"label": labels[cid]} if cid in labels else {})}
            for cid in sorted(images)
        ]
        datalist = {"name": "monailabel", "modalities": self.modalities, "labels": self.labels,
                    "cases": cases}
        return write_json_atomic(Path(folder) / "datalist.json", datalist)

    # ------------------------------------------------------------------ the current model
    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    def current(self) -> tuple[Path, str]:
        """The model to rank and predict with, and its version: the last finished training,
        else the source model."""
        info = self.model_dir / "current.json"
        if info.is_file():
            record = json.loads(info.read_text())
            return self.model_dir / "current.ckpt", str(record["version"])
        return self.source_checkpoint, self.source_version

    def publish(self, checkpoint: Path, labelled: dict[str, str], run_dir: Path) -> str:
        """Make ``checkpoint``'s model the current one (written, then renamed: never
        half-written).

        Only the weights, the hyper-parameters and the source artefacts are kept
        (:data:`MODEL_KEYS`): the training's pool state, loops and optimizer belong to its run,
        and a ranking under this model must take the datastore's labels as they are now.
        """
        kept = {k: v for k, v in read_checkpoint(checkpoint).items() if k in MODEL_KEYS}
        with atomic_path(self.model_dir / "current.ckpt") as tmp:
            torch.save(kept, tmp)
        version = file_hash(self.model_dir / "current.ckpt")
        write_json_atomic(self.model_dir / "current.json", {
            "version": version, "labelled": sorted(labelled), "run": str(run_dir)})
        return version

    # ------------------------------------------------------------------ runs
    def command(self, subcommand: str, run_dir: Path, *options: str,
                splits: str = "{test: []}") -> list[str]:
        """A ``lightning-ada`` command over the run folder's datalist (no evaluation set)."""
        configs = [arg for c in self.configs for arg in ("-c", str(c))]
        return [sys.executable, "-m", "lightning_ada.main", subcommand, *configs,
                "--data.root", str(Path(run_dir) / "datalist.json"), "--data.layout", "datalist",
                "--data.phantom", "null", "--data.splits", splits,
                "--trainer.default_root_dir", str(run_dir), *self.overrides, *options]

    def run(self, command: list[str], capture: bool = True) -> str:
        """Run a command; its stdout (``capture``), or :class:`RunFailed` with its error line.

        With ``capture`` false its output (stdout and stderr, where the progress bars are) goes
        line by line to this process's stdout: MONAI Label shows a training's last lines as the
        task's status.
        """
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if capture:
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            out, err, code = done.stdout, done.stderr.splitlines(), done.returncode
        else:
            out, err = "", deque(maxlen=50)
            with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, env=env) as child:
                assert child.stdout is not None
                for line in child.stdout:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                    err.append(line.rstrip())
            code = child.returncode
        if code != 0:
            lines = [ln for ln in err if ln.strip()]
            one = next((ln for ln in reversed(lines) if ln.startswith("error:")), None)
            raise RunFailed(one[len("error:"):].strip() if one else
                            f"lightning-ada {command[3]} failed (exit {code}): "
                            + " | ".join(lines[-3:]))
        return out
