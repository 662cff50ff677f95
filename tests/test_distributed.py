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


SHARDED = textwrap.dedent(
    """
    import json, sys
    from types import SimpleNamespace

    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from lightning_ada.active.density import DensityResult
    from lightning_ada.active.query_round import sharded_rank
    from lightning_ada.active.strategies import QueryContext, build_strategy

    IDS = [f"c{i}" for i in range(8)]


    def image(cid):
        # channel 0 = p(foreground) on the first voxels: entropy and volume differ per case
        i = int(cid[1:])
        img = torch.zeros(2, 8, 8, 8)
        img[0].view(-1)[: 40 + 10 * i] = 0.55 + 0.05 * i
        return img


    def predict(img):
        p = img[0].clamp(0, 1)
        return torch.stack([1 - p, p]), None


    def strategy(isolated):
        # shard 1 (c1, c3, c5, c7) holds only isolated cases (rho = 0); shard 0 does not,
        # unless every case is isolated
        rho = {c: 0.0 if (isolated == "all" or int(c[1:]) % 2) else 1.0 + int(c[1:]) for c in IDS}
        s = build_strategy("mmacts")
        s.density = DensityResult(rho, 0.0, None, "", sorted(IDS), np.zeros((8, 8)))
        return s


    def ctx():
        return QueryContext(unlabeled=IDS, pool=IDS, labeled=[], image=image, predict=predict,
                            modalities=["a", "b"], regions={"FG": [1]})


    def dump(ranked):
        return [[s.case_id, s.score, s.factors.get("fallback", 0.0)] for s in ranked]


    def worker(rank, out):
        dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=2)
        trainer = SimpleNamespace(world_size=2, global_rank=rank)
        result = {k: dump(sharded_rank(strategy(k), ctx(), trainer)) for k in ("mixed", "all")}
        (open(f"{out}/rank{rank}.json", "w")).write(json.dumps(result))
        dist.destroy_process_group()


    if __name__ == "__main__":
        out = sys.argv[1]
        mp.spawn(worker, args=(out,), nprocs=2)
        one = SimpleNamespace(world_size=1, global_rank=0)
        result = {k: dump(sharded_rank(strategy(k), ctx(), one)) for k in ("mixed", "all")}
        open(f"{out}/single.json", "w").write(json.dumps(result))
    """
)


@pytest.mark.slow  # a long end-to-end run: `make test-all` runs it
def test_sharded_ranking_equals_the_single_process_ranking(tmp_path: Path) -> None:
    """2 gloo ranks each score half the pool; the gathered ranking is the one-process ranking,
    including mmActS's isolated-case fallback, which is decided on the whole pool."""
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED)
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, timeout=300,
                   capture_output=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    single = json.loads((tmp_path / "single.json").read_text())
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == single
    # shard 1 alone is all isolated, the pool is not: no fallback, isolated cases score 0
    assert not any(fallback for _, _, fallback in single["mixed"])
    assert [cid for cid, score, _ in single["mixed"] if score == 0] == ["c1", "c3", "c5", "c7"]
    # every case isolated: the fallback ranks the whole pool by informativeness
    assert all(fallback for _, _, fallback in single["all"])
    assert all(score > 0 for _, score, _ in single["all"])


# two gloo processes, about 30 s each: long end-to-end runs, with the slow tests (`make test-all`)
@pytest.mark.slow
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
            "--active.strategy", strategy,
        ],
        check=True, cwd=tmp_path, env=env, timeout=600, capture_output=True,
    )
    pools = [json.loads((out / f"pool_rank{r}.json").read_text()) for r in (0, 1)]
    assert pools[0] == pools[1]
    assert len(pools[0]["labeled"]) == 2
    log = json.loads((out / "query_log.json").read_text())
    assert [q["case_id"] for q in log] == list(pools[0]["labeled"])


@pytest.mark.slow
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
            "--data.val_split", "source_test",  # validation is off by default
        ]
    )
    assert cli.trainer.precision == "bf16-mixed"
    log = json.loads((tmp_path / "query_log.json").read_text())
    assert len(log) == 2 and all(q["factors"]["entropy"] > 0 for q in log)
    assert cli.trainer.callback_metrics["val/dice_mean"] >= 0
