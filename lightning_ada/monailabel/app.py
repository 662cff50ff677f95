"""The MONAI Label app: lightning_ada's strategies, model and training behind MONAI Label's REST
API (and so behind 3D Slicer's MONAI Label module).

The app's settings are MONAI Label ``--conf`` pairs (``monailabel start_server --app APP
--studies STUDIES --conf KEY VALUE ...``, or ``python -m lightning_ada.monailabel``):

* ``source_checkpoint`` (required): the source model (a ``lightning-ada fit`` checkpoint); its
  modalities and labels are the app's;
* ``configs`` (required): lightning_ada config files, comma-separated, as given to
  ``lightning-ada fit -c``: the model, the target-stage data settings and the trainer;
* ``strategies``: comma-separated strategy names to offer (default: every registered
  case-level strategy, and every region rule that ranks the ``unit`` and can run outside a
  simulation); each is ``/activelearning/<name>`` and ``/scoring/<name>``;
* ``unit``: what a region rule asks for, ``name[:key=value,...]`` (default ``slices:k=3``:
  three slices of one image; ``patch:size=32``: a box); a case-level strategy asks for whole
  images;
* ``overrides``: more ``lightning-ada`` options for every run, space-separated.

The datastore holds one 4-D NIfTI per case (``<case>.nii.gz``, modalities on the last axis in the
source model's order; ``python -m lightning_ada.monailabel.prepare`` makes them from any layout
the library reads), and MONAI Label's ``labels/final/<case>.nii.gz``.
"""

from __future__ import annotations

import shlex
from typing import Any

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask

from lightning_ada.active.strategies import REGISTRY
from lightning_ada.active.strategies.base import Strategy as AdaStrategy
from lightning_ada.monailabel.datastore import CheckedDatastore
from lightning_ada.monailabel.regions import RegionRequests
from lightning_ada.monailabel.tasks import (
    MODEL,
    Fit,
    NextSample,
    PoolRanking,
    Predict,
    RankingScore,
)
from lightning_ada.monailabel.workspace import Workspace

#: the app's annotation unit of region rules when ``--conf unit`` is not given
DEFAULT_UNIT = "slices:k=3"


def case_level_strategies() -> list[str]:
    """Registered strategies that rank whole cases."""
    return sorted(n for n, cls in REGISTRY.items() if cls.case_regions is AdaStrategy.case_regions)


def region_rules(unit: str) -> list[str]:
    """Registered region rules that rank the unit ``unit`` (its name: ``slices``, ``patch``)
    and need no reference label (not
    :attr:`~lightning_ada.active.strategies.base.Strategy.simulation_only`)."""
    return sorted(n for n, cls in REGISTRY.items()
                  if cls.case_regions is not AdaStrategy.case_regions and unit in cls.units
                  and unit != "case" and not cls.simulation_only)


class LightningAdaApp(MONAILabelApp):
    """MONAI Label app whose next sample, inference and training are lightning_ada's."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        for key in ("source_checkpoint", "configs"):
            if not conf.get(key):
                raise MONAILabelException(MONAILabelError.APP_INIT_ERROR,
                                          f"the lightning_ada app needs --conf {key} ...")
        self.workspace = Workspace(
            studies, [c for c in conf["configs"].split(",") if c], conf["source_checkpoint"],
            shlex.split(conf.get("overrides", "")))
        unit = conf.get("unit") or DEFAULT_UNIT
        unit_name = unit.partition(":")[0].strip()
        names = [n for n in conf.get("strategies", "").split(",") if n] or [
            *case_level_strategies(), *region_rules(unit_name)]
        unknown = sorted(set(names) - set(REGISTRY))
        if unknown:
            raise MONAILabelException(MONAILabelError.APP_INIT_ERROR,
                                      f"unknown strategies {unknown}; registered: {sorted(REGISTRY)}")
        regional = {n for n in names if REGISTRY[n].case_regions is not AdaStrategy.case_regions}
        wrong = sorted(n for n in regional if unit_name not in REGISTRY[n].units)
        if wrong:
            raise MONAILabelException(MONAILabelError.APP_INIT_ERROR,
                                      f"strategies {wrong} do not rank the unit {unit_name!r}")
        self.rankings = {n: PoolRanking(self.workspace, n, unit if n in regional else None)
                         for n in names}
        self.requests = RegionRequests(self.workspace.root)
        labels = {name: int(v) for name, v in self.workspace.labels.items()}
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="lightning_ada",
                         description="source-free active domain adaptation (lightning_ada)",
                         version="1", labels=labels)
        # a ranking is made when a client asks for it and kept per model version; MONAI Label's
        # automatic re-scoring would rank with every strategy after each request and training
        self._auto_update_scoring = False

    def init_datastore(self) -> Datastore:
        return CheckedDatastore(
            self.studies, self.workspace.labels.values(), self.requests,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_strategies(self) -> dict[str, Strategy]:
        return {n: NextSample(r, describe(n), self.requests) for n, r in self.rankings.items()}

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        return {n: RankingScore(r, describe(n)) for n, r in self.rankings.items()}

    def init_infers(self) -> dict[str, InferTask]:
        return {MODEL: Predict(self.workspace, self.datastore())}

    def init_trainers(self) -> dict[str, TrainTask]:
        return {MODEL: Fit(self.workspace)}

    def info(self) -> dict[str, Any]:
        meta = super().info()
        meta["lightning_ada"] = {"modalities": self.workspace.modalities,
                                 "model_version": self.workspace.current()[1],
                                 "configs": list(self.workspace.configs)}
        return meta


def describe(name: str) -> str:
    """A strategy's description: the first line of its class docstring."""
    doc = (REGISTRY[name].__doc__ or name).strip().splitlines()[0]
    return f"lightning_ada {name}: {doc}"
