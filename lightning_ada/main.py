"""Command-line entry point: ``lightning-ada fit|validate|test|predict|query -c CONFIG``."""

from __future__ import annotations

import sys

from lightning_ada.cli.app import ADACLI
from lightning_ada.cli.console import quiet
from lightning_ada.cli.parser import ADAArgumentParser
from lightning_ada.cli.query import ADATrainer
from lightning_ada.cli.save_config import SaveConfigWhenAccepted
from lightning_ada.data.datamodule import ActiveDataModule
from lightning_ada.errors import (
    AnnotationPending,
    CheckpointError,
    ConfigError,
    DataError,
    RunError,
)
from lightning_ada.models.module import SegmentationModule
from lightning_ada.run.checkpoint_io import as_storage_error
from lightning_ada.runtime import apply_thread_defaults


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
        trainer_defaults={"plugins": [{"class_path": "lightning_ada.run.checkpoint_io.AtomicCheckpointIO"}]},
        args=args,
        run=run,
    )


def cli_main() -> None:
    """Console-script entry point (``lightning-ada``): bad input is one line and exit status 2,
    a run waiting for annotations exits with status 3."""
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
