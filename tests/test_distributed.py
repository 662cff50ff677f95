"""DDP with 2 CPU processes (gloo) and bf16 autocast on CPU, through the real CLI code path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lightning_ada.main import main

CONF = Path(__file__).parent / "conf"

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import lightning.pytorch as L
    from lightning_ada.main import main

    class DumpPool(L.Callback):
        def on_fit_end(self, trainer, pl_module):
            out = Path(trainer.default_root_dir) / f"pool_rank{trainer.global_rank}.json"
            out.write_text(json.dumps(trainer.datamodule.pool.state_dict()))

    cli = main(sys.argv[1:], run=False)
    cli.trainer.callbacks.append(DumpPool())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    """
)


@pytest.mark.parametrize("strategy", ["mmacts", "random"])
def test_ddp_two_cpu_processes_label_the_same_cases(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path, strategy: str
) -> None:
    script = tmp_path / "run_ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    subprocess.run(
        [
            sys.executable, str(script),
            "-c", str(CONF / "random_tiny.yaml"),
            "--data.root", str(phantom_root),
            "--model.source_checkpoint", str(source_ckpt),
            "--trainer.default_root_dir", str(out),
            "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
            "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "0",
            "--active.budget", "2", "--active.stride", "1",
            "--active.strategy", strategy, "--active.strategy_args", "{}",
        ],
        check=True, cwd=tmp_path, env=env, timeout=600, capture_output=True,
    )
    pools = [json.loads((out / f"pool_rank{r}.json").read_text()) for r in (0, 1)]
    assert pools[0] == pools[1]
    assert len(pools[0]["labeled"]) == 2
    log = json.loads((out / "query_log.json").read_text())
    assert [q["case_id"] for q in log] == list(pools[0]["labeled"])


def test_bf16_mixed_precision_on_cpu(phantom_root: Path, source_ckpt: Path, tmp_path: Path) -> None:
    cli = main(
        [
            "fit", "-c", str(CONF / "random_tiny.yaml"),
            "--data.root", str(phantom_root),
            "--model.source_checkpoint", str(source_ckpt),
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.precision", "bf16-mixed",
            "--trainer.max_epochs", "2",
            "--active.budget", "2", "--active.stride", "1", "--active.strategy", "mmacts",
            "--active.strategy_args", '{"progress": false}',
            "--data.val_split", "source_test",  # validation is off by default
        ]
    )
    assert cli.trainer.precision == "bf16-mixed"
    log = json.loads((tmp_path / "query_log.json").read_text())
    assert len(log) == 2 and all(q["factors"]["entropy"] > 0 for q in log)
    assert cli.trainer.callback_metrics["val/dice_mean"] >= 0
