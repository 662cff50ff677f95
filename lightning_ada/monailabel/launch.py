"""The app's server as a child process, started and waited for: what a script or a test that
drives it through MONAI Label's client needs (``python -m lightning_ada.monailabel`` in a
process group of its own, its output in a log file)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from monailabel.client import MONAILabelClient


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python -m lightning_ada.monailabel`` on 127.0.0.1 and a free port.

    Args:
        studies: the datastore folder.
        source_checkpoint: the source model.
        configs: ``lightning-ada`` config files, in order.
        log: the server's output (appended: a restart adds to it).
        strategies: strategies to offer (empty: the app's default).
        options: more options of ``python -m lightning_ada.monailabel`` (e.g. ``--unit``).
    """

    def __init__(self, studies: Path, source_checkpoint: Path, configs: Sequence[Path], log: Path,
                 strategies: Sequence[str] = (), options: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "lightning_ada.monailabel", "--studies", str(studies),
                        "--source-checkpoint", str(source_checkpoint),
                        *(a for c in configs for a in ("--config", str(c))),
                        *(["--strategies", *strategies] if strategies else []),
                        "--port", str(self.port), *options]
        self.log = Path(log)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> MONAILabelClient:
        """Start the server; a client once ``/info/`` answers.

        Raises:
            RuntimeError: the server exited or did not answer within ``timeout`` seconds (with
                the end of its log).
        """
        with open(self.log, "a") as fh:
            self.process = subprocess.Popen(self.command, stdout=fh, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        client = MONAILabelClient(self.url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log.read_text()[-3000:]}")
            try:
                client.info()
                return client
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.2)
        raise RuntimeError(f"the server did not answer in {timeout} s: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the server and every process it started (a crash, a power cut)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
