"""What the tests of the command line share: run it in this process, read its one error line,
and fingerprint a run folder (to show that a refused input changed nothing)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

# imported before any test captures stderr: Lightning's log handler binds the stderr of its
# first import, and a test's captured stream is closed when that test ends
from lightning_ada.main import cli_main


def run_cli(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    stdout: bool = False,
) -> tuple[int, str]:
    """Run ``lightning-ada ARGS`` in this process; return (exit code, stderr), or (exit code,
    stdout + stderr) with ``stdout``."""
    monkeypatch.setattr(sys, "argv", ["lightning-ada", *args])
    capsys.readouterr()
    try:
        cli_main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, (out.out + out.err) if stdout else out.err


def one_error(stderr: str) -> str:
    """The one ``error:`` line of ``stderr`` (asserts there is exactly one and no traceback)."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def snapshot(folder: Path, skip: tuple[str, ...] = ("run.lock",)) -> dict[str, str]:
    """SHA-256 of every file below ``folder`` by relative path (files named in ``skip`` left out:
    the lock a live run holds)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip
    }
