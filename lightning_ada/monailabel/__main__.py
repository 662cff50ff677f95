"""Start the MONAI Label server with the lightning_ada app over a studies folder.

    python -m lightning_ada.monailabel --studies STUDIES --source-checkpoint SOURCE.ckpt \\
        --config configs/brats18/base.yaml --config configs/brats18/cbica/random.yaml

It writes the app folder MONAI Label loads (``<studies>/.lightning_ada/app/main.py``; MONAI Label
adds its ``model``, ``logs`` ... folders there) and runs ``monailabel start_server`` with the
app's ``--conf`` pairs (``lightning_ada/monailabel/app.py``). Connect 3D Slicer's MONAI Label
module to ``http://HOST:PORT``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lightning_ada.monailabel.workspace import WORKSPACE

APP_MAIN = '''"""Written by python -m lightning_ada.monailabel: MONAI Label finds the app class here."""

from lightning_ada.monailabel.app import LightningAdaApp

__all__ = ["LightningAdaApp"]
'''


def app_folder(studies: Path) -> Path:
    """Write (once) and return the app folder MONAI Label loads for ``studies``."""
    folder = studies / WORKSPACE / "app"
    folder.mkdir(parents=True, exist_ok=True)
    main = folder / "main.py"
    if not main.is_file() or main.read_text() != APP_MAIN:
        main.write_text(APP_MAIN)
    return folder


def server_command(args: argparse.Namespace) -> list[str]:
    """The ``monailabel start_server`` command line of the parsed arguments."""
    studies = Path(args.studies).resolve()
    if not studies.is_dir():
        sys.exit(f"error: --studies {studies}: not a folder")
    conf = {"source_checkpoint": str(Path(args.source_checkpoint).resolve()),
            "configs": ",".join(str(Path(c).resolve()) for c in args.config)}
    if args.strategies:
        conf["strategies"] = ",".join(args.strategies)
    if args.overrides:
        conf["overrides"] = args.overrides
    if args.unit:
        conf["unit"] = args.unit
    command = [sys.executable, "-m", "monailabel.main", "start_server", "--app",
               str(app_folder(studies)), "--studies", str(studies), "--host", args.host,
               "--port", str(args.port)]
    for key, value in conf.items():
        command += ["--conf", key, value]
    return command


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m lightning_ada.monailabel", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", required=True, help="the datastore: one 4-D NIfTI per case")
    p.add_argument("--source-checkpoint", required=True, help="the source model")
    p.add_argument("--config", action="append", required=True,
                   help="a lightning-ada config file (repeat, in order, as -c for fit)")
    p.add_argument("--strategies", nargs="+", default=None,
                   help="strategies to offer (default: every case-level strategy and every "
                   "region rule of the unit usable outside a simulation)")
    p.add_argument("--unit", default=None,
                   help="what a region rule asks for: name[:key=value,...] (default slices:k=3)")
    p.add_argument("--overrides", default="", help="more lightning-ada options for every run")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args(argv)
    command = server_command(args)
    os.environ.setdefault("MONAI_LABEL_AUTO_UPDATE_SCORING", "false")
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
