"""Command-line entry point: ``lightning-ada fit|validate|test|predict|query -c CONFIG``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_ada.active.callback import ActiveQueryCallback
from lightning_ada.checkpoint_io import as_storage_error, check_ckpt_path
from lightning_ada.cli_dirs import add_evaluation_arguments, redirect_evaluation
from lightning_ada.data.datamodule import ActiveDataModule
from lightning_ada.guards import RunError, RunGuard
from lightning_ada.io import write_json_atomic
from lightning_ada.models.module import SegmentationModule
from lightning_ada.predict import NiftiPredictionWriter
from lightning_ada.progress import add_progress_bar
from lightning_ada.run_folder import SaveConfigWhenAccepted


class ADACLI(LightningCLI):
    """LightningCLI with an always-present ``active`` callback section and linked shapes."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RunGuard, "guard")  # first: locks the run folder
        parser.add_lightning_class_args(ActiveQueryCallback, "active")
        parser.add_lightning_class_args(NiftiPredictionWriter, "writer")
        parser.link_arguments("data.modalities", "model.in_channels", compute_fn=len)
        parser.link_arguments("data.labels", "model.labels")
        add_evaluation_arguments(parser)  # --eval_dir (lightning_ada/cli_dirs.py)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        redirect_evaluation(config, self.subcommand)  # validate/test/predict: their own folder
        add_progress_bar(config.get("trainer"))  # epoch bars with the total epochs and an ETA

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        check_ckpt_path(self.config.get(subcommand) if subcommand else None)  # a one-line error

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> Any:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if "weights_only" in self._subcommand_method_arguments.get(subcommand, ()):
            # resuming reads checkpoints without executing pickled code unless asked otherwise
            parser.set_defaults(weights_only=True)
        return parser


def main(args: list[str] | None = None, run: bool = True) -> ADACLI:
    """Run the CLI (``args`` for programmatic use, as in the tests; ``run=False`` only builds)."""
    return ADACLI(
        SegmentationModule,
        ActiveDataModule,
        seed_everything_default=0,
        save_config_callback=SaveConfigWhenAccepted,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"default_env": True},
        trainer_defaults={"plugins": [{"class_path": "lightning_ada.checkpoint_io.AtomicCheckpointIO"}]},
        args=args,
        run=run,
    )


def query(args: list[str]) -> list[dict[str, Any]]:
    """``lightning-ada query -c CONFIG --ckpt_path CKPT [--out FILE]``: rank without training.

    Loads the model weights and the pool state of ``CKPT`` (weights only), ranks the unlabeled
    cases with the configured strategy, elects the modality of each, prints the ranked table and
    writes it as JSON and CSV (``--out``, default ``<ckpt dir>/../query_ranking``).
    """
    import argparse

    from lightning_ada.active.callback import query_context, sharded_rank
    from lightning_ada.active.election import elect_modality
    from lightning_ada.models.module import read_checkpoint

    p = argparse.ArgumentParser(prog="lightning-ada query", add_help=True)
    p.add_argument("--ckpt_path", required=True)
    p.add_argument("--out", default=None)
    own, rest = p.parse_known_args(args)
    cli = main(rest, run=False)
    dm, model, cb = cli.datamodule, cli.model, cli.config_init["active"]
    ckpt = read_checkpoint(own.ckpt_path)
    model.load_state_dict(ckpt["state_dict"])
    dm.setup("fit")
    if type(dm).__qualname__ in ckpt:
        dm.load_state_dict(ckpt[type(dm).__qualname__])
    round_ = ckpt.get("callbacks", {}).get(type(cb).__qualname__, {}).get("round", 0)
    ctx = query_context(dm, model, round_, cb.seed)
    ranked = sharded_rank(cb.strategy, ctx, cli.trainer)
    rows = []
    for i, s in enumerate(ranked):
        election = elect_modality(
            dm.image(s.case_id), model.predict_case, ctx.modalities, multiclass=cb.election_per_class
        )
        rows.append({"rank": i + 1, "case_id": s.case_id, "score": s.score, **s.factors,
                     "elected_modality": election.modality,
                     **{f"dice_{m}": d for m, d in election.dice.items()}})
    out = Path(own.out) if own.out else Path(own.ckpt_path).resolve().parent.parent / "query_ranking"
    write_json_atomic(out.with_suffix(".json"), rows)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in rows]
    out.with_suffix(".csv").write_text("\n".join(lines) + "\n")
    width = max(len(r["case_id"]) for r in rows) if rows else 8
    print(f"{'rank':>4}  {'case':<{width}}  {'score':>10}  elected")
    for r in rows:
        print(f"{r['rank']:>4}  {r['case_id']:<{width}}  {r['score']:>10.4g}  {r['elected_modality']}")
    print(f"written: {out.with_suffix('.json')} and .csv")
    return rows


def cli_main() -> None:
    """Console-script entry point (``lightning-ada``)."""
    import sys

    from lightning_ada.active.callback import AnnotationPending

    if len(sys.argv) > 1 and sys.argv[1] == "query":
        query(sys.argv[2:])
        return
    from lightning_ada.data.cases import DataError
    from lightning_ada.models.module import CheckpointError

    try:
        main()
    except AnnotationPending as pending:
        print(f"\n{pending}")
        sys.exit(3)
    except (DataError, CheckpointError, RunError) as bad_input:  # one clear line, no traceback
        print(f"error: {bad_input}", file=sys.stderr)
        sys.exit(2)
    except OSError as failed:  # a full disk, a quota, a read-only folder: one line too
        if (storage := as_storage_error(failed)) is None:
            raise
        print(f"error: {storage}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli_main()
