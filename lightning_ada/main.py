"""Command-line entry point: ``lightning-ada fit|validate|test|predict -c CONFIG``."""

from __future__ import annotations

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_ada.active.callback import ActiveQueryCallback
from lightning_ada.data.datamodule import ActiveDataModule
from lightning_ada.models.module import SegmentationModule
from lightning_ada.predict import NiftiPredictionWriter


class ADACLI(LightningCLI):
    """LightningCLI with an always-present ``active`` callback section and linked shapes."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ActiveQueryCallback, "active")
        parser.add_lightning_class_args(NiftiPredictionWriter, "writer")
        parser.link_arguments("data.modalities", "model.in_channels", compute_fn=len)
        parser.link_arguments("data.labels", "model.labels")


def main(args: list[str] | None = None, run: bool = True) -> ADACLI:
    """Run the CLI (``args`` for programmatic use, as in the tests; ``run=False`` only builds)."""
    return ADACLI(
        SegmentationModule,
        ActiveDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"default_env": True},
        args=args,
        run=run,
    )


def cli_main() -> None:
    """Console-script entry point (``lightning-ada``)."""
    main()


if __name__ == "__main__":
    cli_main()
