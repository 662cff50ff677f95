"""Benchmark tasks on config folders (real data), distance tables, parallel workers, retries."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ada_bench import tables
from ada_bench.tasks import ConfigTask, PhantomTask
from ada_bench.folds import FoldScheme
from ada_bench.loop import BenchConfig, BenchmarkLoop
from ada_bench.jobs import Unit, run_units, split_units
from ada_bench.results import read_rows

REPO = Path(__file__).resolve().parents[1]


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("bench_script", REPO / "scripts" / "benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Recorder:
    """A runner that records its calls, writes a checkpoint when it fits, returns no cases."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str], bool]] = []

    def __call__(self, configs: list[str], overrides: list[str], fit: bool = True) -> dict:
        self.calls.append((list(configs), list(overrides), fit))
        if fit:
            ckpt = Path(overrides[overrides.index("--trainer.default_root_dir") + 1]) / "last.ckpt"
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            ckpt.write_bytes(b"x")
        return {"test": {"dice_mean": 0.5}, "per_case": [], "query_log": [], "seconds": 0.0}


def test_config_task_takes_folds_and_modalities_from_its_configs() -> None:
    task = ConfigTask("brats18", str(REPO / "configs" / "{task}"))
    assert task.n_folds == 3 and task.modalities == ["flair", "t1", "t1ce", "t2"]
    f1 = task.fold(1)
    assert f1.configs == (str(REPO / "configs/brats18/folds/fold1.yaml"),)
    assert (f1.n_pool, f1.n_test, f1.overrides) == (6, 3, ())
    with pytest.raises(ValueError, match="fold must be in 0..2"):
        task.fold(3)
    assert ConfigTask("brats18", "x", data_root="/d").data_overrides(2) == [
        "--seed_everything",
        "2",
        "--data.root",
        "/d",
    ]
    with pytest.raises(FileNotFoundError, match="mmacts.yaml"):
        _ = ConfigTask("nope", "/nonexistent/{task}").modalities


def test_real_task_runs_with_its_fold_overlay_and_no_phantom_overrides(tmp_path: Path) -> None:
    rec = Recorder()
    task = ConfigTask("brats18", str(REPO / "configs" / "{task}"), data_root="/data/brats")
    cfg = BenchConfig(
        out=tmp_path,
        tasks=["brats18"],
        seeds=[0],
        folds=[2],
        runs={"brats18": [("upper", None), ("mmacts", 2)]},
        task_specs={"brats18": task},
    )
    BenchmarkLoop(cfg, runner=rec).run()
    (src_cfg, src_ov, _), (up_cfg, up_ov, _), (mm_cfg, mm_ov, _) = rec.calls
    assert src_cfg == [str(REPO / "configs/brats18/source.yaml")]
    assert up_cfg[-1].endswith("folds/fold2.yaml") and mm_cfg[0].endswith("brats18/mmacts.yaml")
    for ov in (src_ov, up_ov, mm_ov):
        assert "--data.phantom" not in ov and "--data.splits" not in ov
        assert ov[ov.index("--data.root") + 1] == "/data/brats"
    assert mm_ov[mm_ov.index("--active.budget") + 1] == "2"
    rows = {r["run"]: r for r in read_rows(tmp_path / "results.jsonl")}
    assert rows["upper"]["labels"] == 6 and rows["mmacts"]["n_test"] == 3


def test_quick_profile_and_budgets_per_task() -> None:
    mod = load_script()
    quick = mod.build_config(mod.parser().parse_args(["--quick", "--strategies", "mmacts"]), [])
    glioma = quick.task("glioma")
    assert isinstance(glioma, PhantomTask) and glioma.scheme.size == 24
    assert glioma.scheme.n_pool == 20 and "--trainer.max_epochs" in glioma.source_overrides
    assert "--active.stride" in glioma.fold(0).overrides
    assert {b for _, b in quick.runs["glioma"]} == {1, 2, 3, 5}
    real = mod.build_config(mod.parser().parse_args(["--tasks", "brats18", "--ablations"]), [])
    assert isinstance(real.task("brats18"), ConfigTask) and real.folds == [0, 1, 2]
    assert {b for n, b in real.runs["brats18"] if n == "mmacts"} == {1, 2, 3}


def test_distance_table_bolds_the_lowest_and_shows_mm() -> None:
    def row(run: str, hd: float) -> dict[str, Any]:
        case = {"case_id": "c0", "dice_ET": 0.5, "hd95_ET": hd, "assd_ET": hd / 4}
        return {"task": "npc", "run": run, "seed": 0, "fold": 0, "budget": 3,
                "per_case": [{**case, "dice_GTV": 0.5, "hd95_GTV": hd, "assd_GTV": hd / 4}]}

    t = tables.table1_distances([row("mmacts", 8.0), row("random", 4.0), row("lower", 2.0)])
    cells = {r[0]: r for r in t.rows}
    assert cells["Random"][2] == "**4.00**" and cells["**mmActS**"][2] == "8.00"
    assert cells["Lower bound"][2] == "2.00"  # bounds are never bold
    assert t.csv_rows[0][2] == pytest.approx(2.0)  # mm, not scaled to %


def test_interrupted_attempt_is_cleared_before_the_run_is_made_again(tmp_path: Path) -> None:
    rec = Recorder()
    cfg = BenchConfig(
        out=tmp_path, tasks=["glioma"], seeds=[0], folds=[0], runs={"glioma": [("mmacts", 1)]}
    )
    stale = tmp_path / "glioma" / "seed0" / "fold0" / "mmacts_b1" / "checkpoints"
    stale.mkdir(parents=True)
    (stale / "last.ckpt").write_bytes(b"from the killed attempt")
    loop = BenchmarkLoop(cfg, runner=rec)
    assert [k[1] for k in loop.pending()] == ["source", "mmacts"]
    loop.run()
    assert not (stale / "last.ckpt").exists()
    assert BenchmarkLoop(cfg, runner=rec).pending() == []


FAKE_WORKER = """
import json, os, sys, time
argv = sys.argv[1:]
def value(flag):
    return argv[len(argv) - 1 - argv[::-1].index(flag) + 1]
out, task, seed = value("--out"), value("--tasks"), int(value("--seeds"))
assert value("--workers") == "1" and os.environ["OMP_NUM_THREADS"] == value("--threads")
if "--source-only" in argv:
    assert value("--threads") == "1"  # two source units for two workers: one core each
if "--source-only" in argv:
    row = {"task": task, "run": "source", "seed": seed}
else:
    fold = int(value("--folds"))
    src = [json.loads(l) for l in open(os.path.join(out, "results.jsonl"))]
    assert any(r["run"] == "source" and r["task"] == task and r["seed"] == seed for r in src)
    row = {"task": task, "run": "mmacts", "seed": seed, "fold": fold, "budget": 1}
time.sleep(0.2)
with open(os.path.join(out, "results.jsonl"), "a") as f:
    f.write(json.dumps(row) + "\\n")
"""


def test_parallel_workers_run_sources_first_then_every_unit(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(FAKE_WORKER)
    out = tmp_path / "bench"
    sources = [Unit("glioma", 0), Unit("npc", 0)]
    targets = [Unit("glioma", 0, 0), Unit("glioma", 0, 1), Unit("npc", 0, 0)]
    failed = run_units(script, ["--out", str(out), "--workers", "2"], [], [sources, targets], 2,
                       out, 5)
    assert failed == 0
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == 5 and [r["run"] for r in rows[:2]] == ["source", "source"]
    assert {(r["task"], r.get("fold")) for r in rows[2:]} == {("glioma", 0), ("glioma", 1),
                                                              ("npc", 0)}
    assert (out / "logs" / "glioma_seed0_fold1.log").read_text().startswith("$ " + sys.executable)

    bad = tmp_path / "bad.py"
    bad.write_text("import sys; sys.exit(3)")
    assert run_units(bad, [], [], [[Unit("npc", 1)]], 1, tmp_path / "b2", 1) == 1


def test_shards_partition_a_folds_runs() -> None:
    units = [Unit("brats18", 0, f) for f in range(3)]
    assert split_units(units[:2], 2) == units[:2]  # two units keep two workers busy
    shards = split_units(units, 2)
    assert len(shards) == 6 and shards[1] == Unit("brats18", 0, 0, (1, 2))
    assert shards[1].args()[-2:] == ["--shard", "1/2"]
    runs = {"glioma": [("lower", None), ("upper", None), ("mmacts", 1), ("random", 1), ("x", 3)]}
    seen = []
    for k in range(2):
        cfg = BenchConfig(out=Path("/nonexistent"), tasks=["glioma"], seeds=[0], folds=[0],
                          runs=runs, shard=(k, 2))
        seen += [key[1] for key in BenchmarkLoop(cfg)._planned("glioma", 0)]
    assert sorted(seen) == sorted(n for n, _ in runs["glioma"])


def test_fold_scheme_of_the_quick_profile_is_valid() -> None:
    scheme = FoldScheme(n_pool=20, n_test=10, size=24)
    s = scheme.splits("npc", 0)
    assert len(s["pool"]) == 20 and len(s["test"]) == 10 and not set(s["pool"]) & set(s["test"])
    kw = scheme.phantom("npc", 1)
    assert (kw["size"], kw["n_pool"], kw["n_test"], kw["seed"]) == (24, 40, 10, 1)  # 5 blocks of 10


def test_publish_copies_results_and_fills_the_readme_block(tmp_path: Path) -> None:
    from ada_bench.publish import (
        fill_readme,
        invocations,
        publish,
        record_end,
        record_start,
    )
    from ada_bench.results import append_row

    out, dest = tmp_path / "run", tmp_path / "benchmarks" / "quick"
    (out / "table1.md").parent.mkdir(parents=True)
    (out / "table1.md").write_text("## Table 1: x\n\n| a |\n|---|\n| 1 |\n")
    (out / "budget_curve_npc.png").write_bytes(b"png")
    t = 1.7e9
    record_start(out, ["--quick"], t)  # killed: no end line, its last row came 60 s in
    append_row(out / "results.jsonl", {"task": "npc", "run": "lower", "seed": 0,
                                       "time": time.strftime("%Y-%m-%d %H:%M:%S",
                                                             time.localtime(t + 60))})
    ident = record_start(out, ["--quick"], t + 100)
    append_row(out / "results.jsonl", {"task": "npc", "run": "upper", "seed": 0})
    record_end(out, ident, 30.0, 1, 0)
    inv = invocations(out)
    assert [(i["killed"], i["ran"], i["seconds"]) for i in inv] == [(True, 1, 60), (False, 1, 30)]
    text = publish(out, dest, "Results: quick")
    assert (dest / "results.jsonl").exists() and (dest / "budget_curve_npc.png").exists()
    assert "python scripts/benchmark.py --quick" in text and "Wall time 1.5 min over 2" in text
    assert "1.0 min (killed), 0.5 min" in text
    assert "#### Table 1: x" in text and f"]({dest.as_posix()}/budget_curve_npc.png)" in text
    assert "](budget_curve_npc.png)" in (dest / "README.md").read_text()

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:quick:start -->\nold\n<!-- results:quick:end -->\nend\n")
    fill_readme(readme, "quick", text)
    doc = readme.read_text()
    assert "old" not in doc and doc.startswith("intro\n") and doc.endswith("end\n")
    assert "#### Table 1: x" in doc
    with pytest.raises(ValueError, match="results:other:start"):
        fill_readme(readme, "other", text)


def test_query_overhead_uses_the_saved_schedule(tmp_path: Path) -> None:
    from ada_bench.overhead import overhead_table

    (tmp_path / "config.yaml").write_text("trainer: {max_epochs: 10}\nactive: {stride: 2}\n")
    row = {"task": "npc", "run": "mmacts", "seed": 0, "fold": 0, "budget": 2,
           "run_dir": str(tmp_path), "fit_seconds": 24.0, "scoring_seconds": 4.0,
           "queries": [{"round": 0}, {"round": 1}]}
    t = overhead_table([row, {**row, "run_dir": str(tmp_path / "gone")}])
    # 2 s per round; (24 - 4) / 10 epochs x 2 = 4 s per stride; the run without config is skipped
    assert t.csv_rows == [["npc", "mmacts", 1, 2.0, 4.0, 50.0]]
