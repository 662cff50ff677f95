"""Thread defaults of the command line (lightning_ada/runtime.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

from lightning_ada.runtime import (
    ENV_THREADS,
    apply_thread_defaults,
    prefer_passive_wait,
    resolve_threads,
)


@pytest.fixture
def keep_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("option", "env", "expected"),
    [
        (None, {}, (1, "default")),
        (None, {"OMP_NUM_THREADS": "3"}, (None, "OMP_NUM_THREADS")),
        (None, {"OMP_NUM_THREADS": "3", ENV_THREADS: "2"}, (2, ENV_THREADS)),
        (None, {ENV_THREADS: "auto"}, (None, ENV_THREADS)),
        ("4", {ENV_THREADS: "2", "OMP_NUM_THREADS": "1"}, (4, "--threads")),
        ("0", {}, (None, "--threads")),
    ],
)
def test_resolve_order(option: str | None, env: dict[str, str], expected: tuple) -> None:
    assert resolve_threads(option, env) == expected


@pytest.mark.parametrize("bad", ["-1", "two", ""])
def test_bad_counts_are_named(bad: str) -> None:
    with pytest.raises(ValueError, match=ENV_THREADS):
        resolve_threads(None, {ENV_THREADS: bad or " x "})
    with pytest.raises(ValueError, match="--threads"):
        resolve_threads(bad or "x", {})


def test_default_is_one_thread_and_overridable(keep_threads: None) -> None:
    torch.set_num_threads(2)
    args = ["fit", "-c", "x.yaml"]
    assert apply_thread_defaults(args, {}) is args  # nothing to strip: the same list
    assert torch.get_num_threads() == 1
    out = apply_thread_defaults(["fit", "--threads", "2", "-c", "x.yaml"], {})
    assert out == ["fit", "-c", "x.yaml"] and torch.get_num_threads() == 2
    out = apply_thread_defaults(["--threads=3", "fit"], {ENV_THREADS: "1"})
    assert out == ["fit"] and torch.get_num_threads() == 3
    apply_thread_defaults([], {ENV_THREADS: "2"})
    assert torch.get_num_threads() == 2
    apply_thread_defaults([], {"OMP_NUM_THREADS": "4"})  # the user's OpenMP setting is torch's
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="needs a value"):
        apply_thread_defaults(["fit", "--threads"], {})


def test_cli_main_applies_the_default(keep_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_ada.main import main

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(ENV_THREADS, raising=False)
    torch.set_num_threads(2)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert torch.get_num_threads() == 1
    with pytest.raises(SystemExit):
        main(["--threads", "2", "--help"])  # stripped before LightningCLI sees it
    assert torch.get_num_threads() == 2


@pytest.mark.slow
def test_wait_policy_set_before_torch_loads() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os, lightning_ada, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "PASSIVE", out.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # an explicit choice is kept
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "ACTIVE", out.stderr
    # once torch is loaded the variable would have no effect, so it is not touched
    assert prefer_passive_wait({}) is False
