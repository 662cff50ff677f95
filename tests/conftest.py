"""Shared fixtures: one tiny phantom and one tiny source checkpoint per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

CONF = Path(__file__).parent / "conf"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats18"
# the benchmark harness (scripts/ada_bench) sits above the library; its tests import it from there
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

# The tests run the library's own thread rule (lightning_ada/runtime.py: 1 torch thread unless
# LIGHTNING_ADA_THREADS or OMP_NUM_THREADS says otherwise) from the start, not only after the
# first in-process CLI call: on 16-32 voxel volumes a second thread costs more than it gives.
# Importing lightning_ada first sets OMP_WAIT_POLICY=PASSIVE before torch loads.
from lightning_ada.runtime import apply_thread_defaults  # noqa: E402

apply_thread_defaults([])


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16^3 glioma phantom (the same parameters as ``tests/conf/*_tiny.yaml``)."""
    from lightning_ada.phantom.simulator import generate_phantom

    root = tmp_path_factory.mktemp("phantom") / "tiny_glioma"
    generate_phantom(
        root, task="glioma", size=16, n_source=4, n_source_test=2, n_pool=6, n_test=2, seed=0,
        progress=False,
    )
    return root


@pytest.fixture(scope="session")
def source_ckpt(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A source checkpoint trained for 2 tiny epochs through ``lightning-ada fit``."""
    from lightning_ada.main import main

    out = tmp_path_factory.mktemp("source")
    main(
        [
            "fit", "-c", str(CONF / "source_tiny.yaml"),
            "--data.root", str(phantom_root), "--trainer.default_root_dir", str(out),
        ]
    )
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt
