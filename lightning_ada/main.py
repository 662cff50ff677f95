"""Command-line entry point: ``lightning-ada fit|validate|test|predict|query -c CONFIG``."""

from __future__ import annotations

import csv
import importlib
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lightning_ada.active.callback import ActiveQueryCallback
from lightning_ada.checkpoint_io import as_storage_error, check_ckpt_path
from lightning_ada.cli_dirs import add_evaluation_arguments, redirect_evaluation
from lightning_ada.active.oracle import ORACLES, Oracle
from lightning_ada.active.query_round import Election, query_context, query_round
from lightning_ada.active.strategies import REGISTRY, Strategy
from lightning_ada.console import quiet
from lightning_ada.data.datamodule import ActiveDataModule
from lightning_ada.guards import RunError, RunGuard
from lightning_ada.io import write_json_atomic
from lightning_ada.models.module import SegmentationModule
from lightning_ada.predict import NiftiPredictionWriter
from lightning_ada.progress import add_progress_bar
from lightning_ada.run_folder import SaveConfigWhenAccepted
from lightning_ada.runtime import apply_thread_defaults

#: options whose value may be a registered short name instead of a class path
SHORT_NAMES: dict[str, tuple[type, dict[str, type]]] = {
    "--active.strategy": (Strategy, REGISTRY),  # type: ignore[dict-item]
    "--active.oracle": (Oracle, ORACLES),  # type: ignore[dict-item]
    "--active.strategy.help": (Strategy, REGISTRY),  # type: ignore[dict-item]
    "--active.oracle.help": (Oracle, ORACLES),  # type: ignore[dict-item]
}


def expand_short_names(args: list[str]) -> list[str]:
    """``--active.strategy mmacts`` -> the class path of ``mmacts`` (likewise ``--active.oracle``).

    Class paths and ``class_path``/``init_args`` dicts pass through unchanged.
    """
    out = list(args)
    for i, arg in enumerate(out):
        key, eq, value = arg.partition("=")
        if key not in SHORT_NAMES:
            continue
        names = SHORT_NAMES[key][1]
        if eq and value in names:
            out[i] = f"{key}={_class_path(names[value])}"
        elif not eq and i + 1 < len(out) and out[i + 1] in names:
            out[i + 1] = _class_path(names[out[i + 1]])
    return out


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def one_line_error(message: str) -> str:
    """A parser error as one line naming the key and, where known, the accepted values."""
    text = " ".join(message.split())
    unknown = re.search(r"Parser key \"(active\.(strategy|oracle))\".*Expected a dot import path string: (\S+)", text)
    if unknown:
        key, kind, value = unknown.groups()
        names = REGISTRY if kind == "strategy" else ORACLES
        return f"{key}: unknown {kind} {value!r}; known: {', '.join(sorted(names))} (or a class path)"
    option = re.search(r"Parser key \"([\w.]+)\": Problem with given class_path '([\w.]+)': Option '(\w+)' is not accepted", text)
    if option:
        key, class_path, name = option.groups()
        module, _, cls_name = class_path.rpartition(".")
        params = inspect.signature(getattr(importlib.import_module(module), cls_name)).parameters
        accepted = ", ".join(p for p in params if p not in ("self", "args", "kwargs")) or "none"
        return f"{key}: {class_path.rpartition('.')[2]} has no option {name!r}; accepted: {accepted}"
    optional = re.search(  # an Optional[X] option: X's own complaint, not the Union dump
        r"Parser key \"([\w.]+)\": Does not validate against any of the Union subtypes .*?"
        r"Errors: - (.+?) - Expected a <class 'NoneType'>.*Given value: (.*)$", text,
    )
    if optional:
        key, reason, value = optional.groups()
        return f'Parser key "{key}": ' + re.sub(r"^(Not of type \w+): ", rf"\1: {value} ", reason)
    return text


class ADAArgumentParser(LightningArgumentParser):
    """Parse errors as one line ``error: ...`` on stderr and exit code 2 (no usage dump)."""

    def error(self, message: str, ex: Exception | None = None) -> Any:
        if not self.exit_on_error:
            return super().error(message, ex)
        sys.stderr.write(f"error: {one_line_error(message)}\n")
        sys.exit(2)


def add_source_callbacks(trainer: Trainer) -> None:
    """Give a SOURCE training the callback of every registered strategy's ``source_callback``.

    A strategy that reads something from the source checkpoint (STDR's anchors) declares the
    callback that makes it in its own file; a source run gets it with its defaults unless the
    config already has one of that class.
    """
    from lightning.pytorch.callbacks import Checkpoint

    for strategy in REGISTRY.values():
        callback = strategy.source_callback
        if callback is not None and not any(isinstance(c, callback) for c in trainer.callbacks):
            # before the checkpoint callbacks, as Lightning orders them: the checkpoint saved at
            # the end of the last epoch must carry what the callback made
            first = next((i for i, c in enumerate(trainer.callbacks) if isinstance(c, Checkpoint)),
                         len(trainer.callbacks))
            trainer.callbacks.insert(first, callback())


class ADATrainer(Trainer):
    """Lightning's Trainer plus the ``query`` subcommand."""

    def query(
        self,
        model: LightningModule,
        datamodule: LightningDataModule,
        ckpt_path: str,
        out: str | None = None,
    ) -> list[dict[str, Any]]:
        """Rank the unlabeled pool of a checkpoint with the configured strategy, without training.

        Restores the model weights, the pool (which cases are labeled) and the query round of
        ``ckpt_path`` (weights only, through Lightning's own restore), ranks every unlabeled case
        with ``active.strategy``, elects the modality to annotate for each, prints the ranking
        with the strategy's factors and the per-modality Dice of the election, and writes it to
        ``OUT.json`` and ``OUT.csv``. Labels nothing and trains nothing; besides the ranking it
        writes only the strategy's caches (``<trainer.default_root_dir>/cache``, shared with
        ``fit``): no config, logs or checkpoints.

        Args:
            ckpt_path: checkpoint of a ``fit`` run (e.g. ``<run>/checkpoints/last.ckpt``).
            out: output path without suffix (default: ``<run>/query_ranking`` next to the
                checkpoint's ``checkpoints/`` folder).
        """
        callback = next((c for c in self.callbacks if isinstance(c, ActiveQueryCallback)), None)
        if callback is None:
            raise ValueError("query needs the active callback (the 'active' section)")
        self.limit_val_batches = 0  # the validate call below only restores the checkpoint
        self.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False, weights_only=True)
        callback.prepare(self, model)
        pool = callback._pool()
        ctx = query_context(pool, model, callback.round, callback.seed, callback._run_dir(self),
                            "features" in model.query_outputs())
        result = query_round(
            callback.strategy, ctx, len(ctx.unlabeled), self, pool,
            election=Election(model.predict_case, callback.election_per_class),
        )
        rows = [
            {"rank": e["rank"] + 1, "case_id": e["case_id"], "score": e["score"], **e["factors"],
             "elected_modality": e["modality"],
             **{f"dice_{m}": d for m, d in (e["election_dice"] or {}).items()}}
            for e in result.pending
        ]
        target = Path(out) if out else Path(ckpt_path).resolve().parent.parent / "query_ranking"
        if self.is_global_zero:
            write_json_atomic(target.with_suffix(".json"), rows)
            write_csv(target.with_suffix(".csv"), rows)
            print(format_ranking(rows))
            print(f"written: {target.with_suffix('.json')} and {target.with_suffix('.csv')}")
        return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows as CSV (header = every key in first-seen order)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def format_ranking(rows: list[dict[str, Any]]) -> str:
    """The ranking as a text table: rank, case, score, factors, elected modality, Dice per modality."""
    if not rows:
        return "no unlabeled case to rank"
    fixed = {"rank", "case_id", "score", "elected_modality"}
    factors = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in fixed and not k.startswith("dice_")]
    dice = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith("dice_")]
    width = max(8, *(len(r["case_id"]) for r in rows))
    head = f"{'rank':>4}  {'case':<{width}}  {'score':>10}"
    head += "".join(f"  {k:>10}" for k in factors) + f"  {'elected':<8}"
    head += "".join(f"  {k:>10}" for k in dice)
    lines = [head]
    for r in rows:
        line = f"{r['rank']:>4}  {r['case_id']:<{width}}  {r['score']:>10.4g}"
        line += "".join(f"  {r.get(k, float('nan')):>10.4g}" for k in factors)
        line += f"  {r['elected_modality']!s:<8}"
        line += "".join(f"  {r.get(k, float('nan')):>10.4f}" for k in dice)
        lines.append(line)
    return "\n".join(lines)


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
            if action.dest == "active.strategy":
                action.help = f"{action.help} Short names: {', '.join(sorted(REGISTRY))}."
            elif action.dest == "active.oracle":
                action.help = f"{action.help} Short names: {', '.join(sorted(ORACLES))}."
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
            from lightning.pytorch.loggers import CSVLogger

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
        add_evaluation_arguments(parser)  # --eval_dir (lightning_ada/cli_dirs.py)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        redirect_evaluation(config, self.subcommand)  # validate/test/predict: their own folder
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


def main(args: list[str] | None = None, run: bool = True) -> ADACLI:
    """Run the CLI (``args`` for programmatic use, as in the tests; ``run=False`` only builds)."""
    quiet()
    args = apply_thread_defaults(args)  # 1 torch thread unless asked (lightning_ada/runtime.py)
    return ADACLI(
        SegmentationModule,
        ActiveDataModule,
        trainer_class=ADATrainer,
        parser_class=ADAArgumentParser,
        seed_everything_default=0,
        save_config_callback=SaveConfigWhenAccepted,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"default_env": True, "description": "lightning-ada: source-free active "
                       "domain adaptation of 3-D multi-modal segmentation (fit, validate, test, "
                       "predict, query)."},
        trainer_defaults={"plugins": [{"class_path": "lightning_ada.checkpoint_io.AtomicCheckpointIO"}]},
        args=args,
        run=run,
    )


def cli_main() -> None:
    """Console-script entry point (``lightning-ada``)."""
    from lightning_ada.active.callback import AnnotationPending, ConfigError
    from lightning_ada.data.cases import DataError
    from lightning_ada.models.module import CheckpointError

    try:
        main()
    except AnnotationPending as pending:
        print(f"\n{pending}")
        sys.exit(3)
    except (DataError, CheckpointError, RunError, ConfigError) as bad_input:  # one line, no traceback
        print(f"error: {bad_input}", file=sys.stderr)
        sys.exit(2)
    except OSError as failed:  # a full disk, a quota, a read-only folder: one line too
        if (storage := as_storage_error(failed)) is None:
            raise
        print(f"error: {storage}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli_main()
