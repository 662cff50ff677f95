"""The LightningCLI of lightning_ada: the ``guard``, ``active`` and ``writer`` sections, linked
shapes, short names, one-line errors, evaluation folders and the ``query`` subcommand."""

from __future__ import annotations

import copy
import os
import sys
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger

from lightning_ada.active.callback import ActiveQueryCallback
from lightning_ada.active.strategies import REGISTRY
from lightning_ada.cli.checkpoint_fit import check_source, reconcile
from lightning_ada.cli.eval_dirs import (
    add_evaluation_arguments,
    follow_root_dir,
    redirect_evaluation,
)
from lightning_ada.cli.prediction_writer import NiftiPredictionWriter
from lightning_ada.cli.progress import add_progress_bar
from lightning_ada.cli.short_names import CHOICES, expand_short_names
from lightning_ada.run.checkpoint_io import check_ckpt_path
from lightning_ada.run.guard import RunGuard


def add_source_callbacks(trainer: Trainer) -> None:
    """Give a SOURCE training the callback of every registered strategy's ``source_callback``.

    A strategy that reads something from the source checkpoint (STDR's anchors) declares the
    callback that makes it in its own file; a source run gets it with its defaults unless the
    config already has one of that class.
    """
    for strategy in REGISTRY.values():
        callback = strategy.source_callback
        if callback is not None and not any(isinstance(c, callback) for c in trainer.callbacks):
            # before the checkpoint callbacks, as Lightning orders them: the checkpoint saved at
            # the end of the last epoch must carry what the callback made
            first = next((i for i, c in enumerate(trainer.callbacks) if isinstance(c, Checkpoint)),
                         len(trainer.callbacks))
            trainer.callbacks.insert(first, callback())


class ADACLI(LightningCLI):
    """LightningCLI with the ``active`` and ``writer`` sections, linked shapes and ``query``."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "query": {"model", "datamodule"}}

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # the project's own sections first: ``fit --help`` shows them before the Trainer's
        # (the same sections as LightningCLI's, in another order)
        parser.add_lightning_class_args(RunGuard, "guard")  # first: locks the run folder
        parser.add_lightning_class_args(ActiveQueryCallback, "active")
        parser.add_lightning_class_args(NiftiPredictionWriter, "writer")
        for action in parser._actions:  # list every choice, including plug-in strategies
            if action.dest in CHOICES:
                names = ", ".join(sorted(CHOICES[action.dest]))
                action.help = f"{action.help} Short names: {names}."
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(self._datamodule_class, "data", subclass_mode=self.subclass_mode_data)
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer; without a configured logger, a CSV logger writing into the run folder.

        ``trainer.default_root_dir`` is then the one option that moves everything a run writes
        (checkpoints, ``config.yaml``, ``metrics.csv``, ``hparams.yaml``, the query log, STDR's
        ``anchors.npy``, caches): the configs pin no logger folder.
        """
        config = self.config_init.get(self.subcommand) if self.subcommand else self.config_init
        trainer = config.get("trainer") or {}
        if trainer.get("logger") is None and "logger" not in kwargs:
            root = trainer.get("default_root_dir") or os.getcwd()
            kwargs["logger"] = CSVLogger(save_dir=root, name="", version="")
        trainer_obj = super().instantiate_trainer(**kwargs)
        if getattr(getattr(self, "datamodule", None), "hparams", {}).get("stage") == "source":
            add_source_callbacks(trainer_obj)
        return trainer_obj

    def instantiate_classes(self) -> None:
        """Instantiate; an option a class refuses (e.g. ``--active.budget -1``) is a parse error."""
        try:
            super().instantiate_classes()
        except ValueError as bad:
            self.parser.error(str(bad))

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.modalities", "model.in_channels", compute_fn=len)
        parser.link_arguments("data.labels", "model.labels")
        add_evaluation_arguments(parser)  # --eval_dir (lightning_ada/cli/eval_dirs.py)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        redirect_evaluation(config, self.subcommand)  # validate/test/predict: their own folder
        follow_root_dir(config.get("trainer"))  # a logger without a folder of its own (W&B)
        check_source(self.subcommand, config.get("model"), config.get("data"))  # channel order
        add_progress_bar(config.get("trainer"))  # epoch bars with the total epochs and an ETA

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # no warning about ``args`` and ``sys.argv`` together: ``args`` is the programmatic use
        if args is None:
            args = sys.argv[1:]
        if isinstance(args, list):
            args = expand_short_names(args)
            self.config = parser.parse_args(args)
        else:
            self.config = parser.parse_object(args)
        subcommand = self.config.get("subcommand")
        check_ckpt_path(self.config.get(subcommand) if subcommand else None)  # a one-line error

    def _parse_ckpt_path(self) -> None:
        """Lightning's reading of ``--ckpt_path``'s hyper-parameters, reconciled with the config.

        LightningCLI makes every hyper-parameter of the checkpoint the model's config, silently
        replacing what the config or the command line set. Here the checkpoint fills in only the
        options left at their defaults; an option set otherwise keeps its value (an evaluation
        option such as ``--model.mirror_tta true`` is honoured); and a network the checkpoint
        cannot be (another ``net`` or ``filters``, another input-channel count or label set, for
        ``validate``/``test``/``predict``/``query`` another modality order) is refused in one
        line (:func:`~lightning_ada.cli.checkpoint_fit.reconcile`), before anything is written.
        """
        subcommand = self.config.get("subcommand")
        section = self.config.get(subcommand) if subcommand else None
        if section is None or section.get("model") is None:
            super()._parse_ckpt_path()
            return
        given = copy.deepcopy(section.model)
        super()._parse_ckpt_path()
        defaults = self._subcommand_parsers[subcommand].get_defaults().get("model")
        section = self.config[subcommand]
        reconcile(section.get("ckpt_path"), subcommand, given, section.model, defaults,
                  section.get("data"))

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> Any:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if "weights_only" in self._subcommand_method_arguments.get(subcommand, ()):
            # resuming reads checkpoints without executing pickled code unless asked otherwise
            parser.set_defaults(weights_only=True)
        return parser

    def before_query(self) -> None:
        """``query`` writes its ranking only: no config.yaml, no logger files in the run folder."""
        self.trainer.callbacks = [c for c in self.trainer.callbacks if not isinstance(c, SaveConfigCallback)]
        self.trainer.logger = None
