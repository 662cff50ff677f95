"""Benchmark tasks on config folders (real data), config composition, distance tables, parallel
jobs (submitit), retries, publishing."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from ada_bench import tables
from ada_bench.folds import FoldScheme
from ada_bench.jobs import Cluster, Unit, run_units, split_units, units_of
from ada_bench.loop import BenchConfig, BenchmarkLoop
from ada_bench.results import read_rows
from ada_bench.runner import compose, merge
from ada_bench.tasks import ConfigTask, PhantomTask

REPO = Path(__file__).resolve().parents[1]


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("bench_script", REPO / "scripts" / "benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Recorder:
    """A runner that records its configs, writes a checkpoint when it fits, returns no cases."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], bool]] = []

    def __call__(self, config: dict[str, Any], fit: bool = True, curve: bool = False) -> dict:
        self.calls.append((config, fit))
        if fit:
            ckpt = Path(config["trainer"]["default_root_dir"]) / "last.ckpt"
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            ckpt.write_bytes(b"x")
        return {"test": {"dice_mean": 0.5}, "per_case": [], "query_log": [], "seconds": 0.0}


def test_config_task_takes_folds_and_modalities_from_its_configs() -> None:
    task = ConfigTask("brats18", str(REPO / "configs" / "{task}"))
    assert task.n_folds == 3 and task.modalities == ["flair", "t1", "t1ce", "t2"]
    f1 = task.fold(1)
    assert f1.configs == (str(REPO / "configs/brats18/folds/fold1.yaml"),)
    assert (f1.n_pool, f1.n_test, dict(f1.overrides)) == (6, 3, {})
    with pytest.raises(ValueError, match="fold must be in 0..2"):
        task.fold(3)
    assert ConfigTask("brats18", "x", data_root="/d").data_overrides(2, {}) == {
        "seed_everything": 2,
        "data.root": "/d",
    }
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
        extra_configs=[str(REPO / "configs/trainer/gpu.yaml")],  # `-- -c FILE` of the script
    )
    BenchmarkLoop(cfg, runner=rec).run()
    (src, _), (up, _), (mm, _) = rec.calls
    assert {c["trainer"]["precision"] for c, _ in rec.calls} == {"16-mixed"}
    fold2 = compose([REPO / "configs/brats18/folds/fold2.yaml"])["data"]["splits"]
    assert src["data"]["stage"] == "source" and "pool" not in src["data"]["splits"]
    assert up["data"]["splits"] == fold2 and up["data"]["label_all"] is True  # the overlay wins
    assert mm["data"]["splits"] == fold2 and mm["active"]["budget"] == 2
    for c in (src, up, mm):
        assert "phantom" not in c["data"] and c["data"]["root"] == "/data/brats"
        assert c["trainer"]["enable_progress_bar"] is False and c["trainer"]["logger"] is False
    rows = {r["run"]: r for r in read_rows(tmp_path / "results.jsonl")}
    assert rows["upper"]["labels"] == 6 and rows["mmacts"]["n_test"] == 3


def test_composition_gives_the_config_the_cli_builds_from_the_same_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``-c a -c b --k v`` on the command line and ``compose([a, b], {k: v})`` as a dict parse
    to the same config (the benchmark's runs are the command line's runs)."""
    from lightning_ada import main as cli

    monkeypatch.setattr(cli.ADACLI, "instantiate_classes", lambda self: None)
    files = [
        REPO / "configs/brats18/upper_bound.yaml",
        REPO / "configs/brats18/gpu_1mm.yaml",
        REPO / "configs/brats18/folds/fold1.yaml",
    ]
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "x"}}
    overrides = {"active.seed": 7, "trainer.logger": logger, "data.splits": {"pool": ["a"]}}
    argv = [a for f in files for a in ("-c", str(f))]
    argv += [x for k, v in overrides.items() for x in (f"--{k}", json.dumps(v))]
    by_cli = cli.main(argv, run=False).config
    by_dict = cli.main(compose(files, overrides), run=False).config
    del by_cli["config"], by_dict["config"]
    assert by_dict.as_dict() == by_cli.as_dict()
    assert by_dict.data.splits == {"pool": ["a"]} and by_dict.trainer.precision == "bf16-mixed"
    # the configs pin no logger: the one given is taken as it is, as on the command line
    assert (by_dict.trainer.logger.init_args.name, by_dict.trainer.logger.init_args.save_dir) == (
        "lightning_logs", "x"
    )


def test_short_strategy_names_reach_the_cli_as_it_takes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--active.strategy stdr`` given command-line style (demo, overrides after ``--``) parses
    as the STDR strategy through the dict path too."""
    from ada_bench.runner import split_command_line

    from lightning_ada import main as cli
    from lightning_ada.active.strategies import REGISTRY
    from lightning_ada.cli.short_names import expand_config

    monkeypatch.setattr(cli.ADACLI, "instantiate_classes", lambda self: None)
    files, overrides = split_command_line(
        ["-c", str(REPO / "tests/conf/random_tiny.yaml"), "--active.strategy", "stdr"]
    )
    parsed = cli.main(expand_config(compose(files, overrides)), run=False).config.active
    chosen = parsed.strategy if isinstance(parsed.strategy, str) else parsed.strategy.class_path
    stdr = REGISTRY["stdr"]
    assert chosen in ("stdr", f"{stdr.__module__}.{stdr.__qualname__}")


def test_merge_follows_the_cli_rules_for_class_paths_and_lists() -> None:
    base = {"t": {"logger": {"class_path": "A", "init_args": {"x": 1, "y": 2}}, "cb": [1, 2]}}
    same = merge(base, {"t": {"logger": {"class_path": "A", "init_args": {"y": 3}}, "cb": [9]}})
    assert same["t"] == {"logger": {"class_path": "A", "init_args": {"x": 1, "y": 3}}, "cb": [9]}
    other = merge(base, {"t": {"logger": {"class_path": "B", "init_args": {"z": 0}}}})
    assert other["t"]["logger"] == {"class_path": "B", "init_args": {"z": 0}}
    assert base["t"]["logger"]["init_args"] == {"x": 1, "y": 2}  # inputs untouched
    assert merge(base, {"t": {"logger": False}})["t"]["logger"] is False


def test_no_library_module_names_the_harness() -> None:
    sources = list((REPO / "lightning_ada").rglob("*.py"))
    assert len(sources) > 20
    assert [p for p in sources if "ada_bench" in p.read_text()] == []  # no module names it
    assert not (REPO / "lightning_ada" / "benchmark").exists()


@pytest.mark.slow  # a fresh interpreter importing the whole library (~10 s)
def test_the_library_imports_nothing_from_the_harness() -> None:
    code = (
        "import sys, lightning_ada, lightning_ada.main\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] == 'ada_bench'\n"
        "             or n.startswith(('lightning_ada.benchmark', 'lightning_ada.runner'))))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO)  # the library only: the harness is not importable...
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]  # ...and the library does not need it
    assert res.stdout.strip() == "[]"


def test_quick_profile_and_budgets_per_task() -> None:
    mod = load_script()
    quick = mod.build_config(mod.parser().parse_args(["--quick", "--strategies", "mmacts"]), {})
    glioma = quick.task("glioma")
    assert isinstance(glioma, PhantomTask) and glioma.scheme.size == 24
    assert glioma.scheme.n_pool == 20 and glioma.source_stage()["trainer.max_epochs"] == 24
    assert glioma.fold(0).overrides["active.stride"] == 2
    assert {b for _, b in quick.runs["glioma"]} == {1, 2, 3, 5}
    real = mod.build_config(mod.parser().parse_args(["--tasks", "brats18", "--ablations"]), {})
    assert isinstance(real.task("brats18"), ConfigTask) and real.folds == [0, 1, 2]
    assert {b for n, b in real.runs["brats18"] if n == "mmacts"} == {1, 2, 3}


def test_phantom_draw_keeps_the_configs_parameters_and_takes_the_seed() -> None:
    task = PhantomTask("glioma", FoldScheme(n_folds=1, n_pool=4, n_test=50, size=16))
    config = {"data": {"phantom": {"task": "glioma", "size": 32, "seed": 0, "shift": 0.7}}}
    drawn = task.data_overrides(3, config)
    assert drawn["seed_everything"] == 3 and drawn["data.root"].endswith("glioma_16_seed3_t54")
    assert drawn["data.phantom"] == {
        "task": "glioma", "size": 16, "seed": 3, "shift": 0.7, "n_source": 20,
        "n_source_test": 6, "n_pool": 4, "n_test": 50, "progress": False,
    }
    assert config["data"]["phantom"]["seed"] == 0  # the config itself is left alone


def test_table_rows_come_from_the_strategy_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A strategy registered in one file shows up under its display name at its table order;
    a strategy the registry does not know still shows, under its own name, last."""
    from lightning_ada.active.strategies import REGISTRY

    class Toy:
        display_name = "Toy (one file)"
        table_order = 5

    monkeypatch.setitem(REGISTRY, "toy", Toy)
    monkeypatch.setattr(REGISTRY["random"], "table_order", 10, raising=False)
    monkeypatch.setattr(REGISTRY["random"], "display_name", "Random", raising=False)

    def row(run: str, dice: float, **kw: Any) -> dict[str, Any]:
        case = {"case_id": "c0", "dice_GTV": dice, "iou_GTV": dice}
        return {"task": "npc", "run": run, "seed": 0, "fold": 0, "budget": 3, "per_case": [case],
                **kw}

    rows = [row("random", 0.6), row("toy", 0.7), row("gone", 0.2), row("lower", 0.5),
            row("mmacts_one_off", 0.9, strategy="mmacts")]  # an ablation: not in Table 1
    for build in (tables.table1, tables.table1_distances):
        assert [r[0].strip("*") for r in build(rows).rows] == [
            "Lower bound", "Toy (one file)", "Random", "gone"
        ]
    curve = tables.budget_table(rows)
    assert [r[1] for r in curve.rows] == ["Toy (one file)", "Random", "gone"]
    assert curve.rows[0][2:4] == ["50.00", "70.00"]  # lower bound, then the toy at budget 3


def test_distance_table_bolds_the_lowest_and_shows_mm() -> None:
    def row(run: str, hd: float) -> dict[str, Any]:
        case = {"case_id": "c0", "dice_ET": 0.5, "hd95_ET": hd, "assd_ET": hd / 4}
        return {"task": "npc", "run": run, "seed": 0, "fold": 0, "budget": 3,
                "per_case": [{**case, "dice_GTV": 0.5, "hd95_GTV": hd, "assd_GTV": hd / 4}]}

    t = tables.table1_distances([row("mmacts", 8.0), row("random", 4.0), row("lower", 2.0)])
    cells = {r[0].strip("*"): r for r in t.rows}
    rnd, mm = tables.display_name("random"), tables.display_name("mmacts")
    assert cells[rnd][2] == "**4.00**" and cells[mm][2] == "8.00"
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


class JobRunner:
    """A runner for submitit jobs (pickled by value): no training; the source model must exist
    before a target run starts; the runs of fold 1 fail."""

    def __call__(self, config: dict[str, Any], fit: bool = True, curve: bool = False) -> dict:
        import os

        root = Path(config["trainer"]["default_root_dir"])
        if config["data"]["stage"] == "target":
            assert Path(config["model"]["source_checkpoint"]).is_file()
            if root.parent.name == "fold1":
                raise RuntimeError("fold 1 fails")
        if fit:
            (root / "checkpoints").mkdir(parents=True, exist_ok=True)
            (root / "checkpoints" / "last.ckpt").write_bytes(b"x")
        return {"test": {"threads": float(os.environ["OMP_NUM_THREADS"]), "pid": os.getpid()},
                "per_case": [], "query_log": []}


@pytest.mark.slow  # three submitit subprocesses, about 20 s
def test_parallel_jobs_run_sources_first_then_every_unit(tmp_path: Path) -> None:
    """Three submitit jobs (subprocesses): the source model, then two folds at once."""
    import os

    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cfg = BenchConfig(
        out=tmp_path / "bench", tasks=["glioma"], seeds=[0], folds=[0, 1],
        runs={"glioma": [("lower", None), ("mmacts", 1)]},
        scheme=FoldScheme(n_folds=2, n_pool=3, n_test=2, size=16),
    )
    sources, targets = units_of(cfg, 2)
    assert sources == [Unit("glioma", 0)]
    assert targets == [Unit("glioma", 0, 0), Unit("glioma", 0, 1)]
    failed = run_units(cfg, [sources, targets], Cluster("local", 2), 5, runner=JobRunner(),
                       poll_seconds=0.2)
    assert failed == 2  # both runs of fold 1, recorded in errors.jsonl
    rows = read_rows(cfg.out / "results.jsonl")
    assert [(r["run"], r["fold"]) for r in rows] == [("source", None), ("lower", 0), ("mmacts", 0)]
    errors = read_rows(cfg.out / "errors.jsonl")
    assert {(e["run"], e["fold"]) for e in errors} == {("lower", 1), ("mmacts", 1)}
    assert "fold 1 fails" in errors[0]["error"]
    assert rows[0]["test"]["threads"] == 2.0  # one unit alone: it gets both cores
    assert {r["test"]["threads"] for r in rows[1:]} == {1.0}  # two at once: one each
    assert os.getpid() not in {r["test"]["pid"] for r in rows}  # made in other processes
    assert len(list((cfg.out / "jobs").glob("*_log.out"))) == 3  # one log per job
    assert [k[3] for k in BenchmarkLoop(cfg).pending()] == [1, 1]  # only the failed are left


def test_a_job_waits_for_the_job_of_a_killed_benchmark_on_the_same_unit(tmp_path: Path) -> None:
    """A job left running by a killed benchmark holds its unit's lock: the restarted benchmark's
    job for that unit waits, then finds the runs done and makes nothing twice."""
    import fcntl
    import threading

    from ada_bench.jobs import run_unit

    cfg = BenchConfig(out=tmp_path, tasks=["glioma"], seeds=[0], folds=[0],
                      runs={"glioma": [("mmacts", 1)]})
    unit = Unit("glioma", 0, 0)
    lock_path = tmp_path / "locks" / f"{unit.name}.lock"
    lock_path.parent.mkdir()
    old_job = lock_path.open("a")
    fcntl.flock(old_job, fcntl.LOCK_EX)
    rec = Recorder()
    result: dict[str, Any] = {}
    job = threading.Thread(target=lambda: result.update(run_unit(cfg, unit, 1, rec)))
    job.start()
    time.sleep(1.0)
    assert job.is_alive() and rec.calls == []  # waiting for the old job
    BenchmarkLoop(cfg, runner=Recorder()).run()  # the old job finishes the unit...
    fcntl.flock(old_job, fcntl.LOCK_UN)  # ...and exits
    old_job.close()
    job.join(timeout=30)
    assert result == {"unit": unit.name, "ran": 0, "skipped": 1, "failed": 0} and rec.calls == []


def test_shards_partition_a_folds_runs() -> None:
    units = [Unit("brats18", 0, f) for f in range(3)]
    assert split_units(units[:2], 2) == units[:2]  # two units keep two workers busy
    shards = split_units(units, 2)
    assert len(shards) == 6 and shards[1] == Unit("brats18", 0, 0, (1, 2))
    runs = {"glioma": [("lower", None), ("upper", None), ("mmacts", 1), ("random", 1), ("x", 3)]}
    whole = BenchConfig(out=Path("/nonexistent"), tasks=["glioma", "npc"], seeds=[0, 1],
                        folds=[0, 1], runs=runs)
    seen = []
    for k in range(2):
        cfg = Unit("glioma", 1, 0, (k, 2)).restrict(whole)
        assert (cfg.tasks, cfg.seeds, cfg.folds, cfg.shard) == (["glioma"], [1], [0], (k, 2))
        seen += [key[1] for key in BenchmarkLoop(cfg)._planned("glioma", 1)]
    assert sorted(seen) == sorted(n for n, _ in runs["glioma"])
    assert Unit("npc", 0).restrict(whole).source_only


def test_fold_scheme_of_the_quick_profile_is_valid() -> None:
    scheme = FoldScheme(n_pool=20, n_test=10, size=24)
    s = scheme.splits("npc", 0)
    assert len(s["pool"]) == 20 and len(s["test"]) == 10 and not set(s["pool"]) & set(s["test"])
    kw = scheme.phantom("npc", 1)
    assert (kw["size"], kw["n_pool"], kw["n_test"], kw["seed"]) == (24, 40, 10, 1)  # 5 blocks of 10


def test_publish_copies_results_and_fills_the_readme_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ada_bench.publish import (
        fill_readme,
        invocations,
        publish,
        record_end,
        record_start,
    )
    from ada_bench.results import append_row

    monkeypatch.chdir(tmp_path)  # paths as the harness is run: relative to the repository root
    out, dest = Path("run"), Path("benchmarks") / "quick"
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
    assert "#### Table 1: x" in text and "](benchmarks/quick/budget_curve_npc.png)" in text
    assert "](budget_curve_npc.png)" in (dest / "README.md").read_text()

    block = "<!-- results:quick:start -->\nold\n<!-- results:quick:end -->\n"
    # the default target, benchmarks/README.md: links resolve from benchmarks/
    readme = Path("benchmarks") / "README.md"
    readme.write_text(f"intro\n{block}end\n")
    fill_readme(readme, "quick", text)
    doc = readme.read_text()
    assert "old" not in doc and doc.startswith("intro\n") and doc.endswith("end\n")
    assert "#### Table 1: x" in doc and "](quick/budget_curve_npc.png)" in doc
    assert (readme.parent / "quick" / "budget_curve_npc.png").exists()
    # a file at the root keeps the root-relative links
    top = Path("README.md")
    top.write_text(block)
    fill_readme(top, "quick", text)
    assert "](benchmarks/quick/budget_curve_npc.png)" in top.read_text()
    with pytest.raises(ValueError, match="results:other:start"):
        fill_readme(readme, "other", text)


def test_relink_moves_relative_links_only(tmp_path: Path) -> None:
    from ada_bench.publish import relink

    text = (
        "![a](benchmarks/power/a.png) [t](benchmarks/power/power.md#power) [s](#section) "
        "[u](https://example.org/x.md) [m](mailto:x@example.org) `benchmarks/power/`"
    )
    moved = relink(text, ".", "benchmarks")
    assert "![a](power/a.png)" in moved and "[t](power/power.md#power)" in moved
    assert "[s](#section)" in moved and "[u](https://example.org/x.md)" in moved
    assert "[m](mailto:x@example.org)" in moved and "`benchmarks/power/`" in moved
    assert relink(text, ".", ".") == text
    assert "](../benchmarks/power/a.png)" in relink(text, ".", "docs")
    absolute = f"![a]({tmp_path.as_posix()}/quick/a.png)"
    assert relink(absolute, ".", tmp_path / "quick") == "![a](a.png)"


def test_query_overhead_uses_the_saved_schedule(tmp_path: Path) -> None:
    from ada_bench.overhead import overhead_table

    (tmp_path / "config.yaml").write_text("trainer: {max_epochs: 10}\nactive: {stride: 2}\n")
    row = {"task": "npc", "run": "mmacts", "seed": 0, "fold": 0, "budget": 2,
           "run_dir": str(tmp_path), "fit_seconds": 24.0, "scoring_seconds": 4.0,
           "queries": [{"round": 0}, {"round": 1}]}
    t = overhead_table([row, {**row, "run_dir": str(tmp_path / "gone")}])
    # 2 s per round; (24 - 4) / 10 epochs x 2 = 4 s per stride; the run without config is skipped
    assert t.csv_rows == [["npc", "mmacts", 1, 2.0, 4.0, 50.0]]


def test_publish_again_in_place_keeps_the_header_and_embeds_figures_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A committed folder (no invocations.jsonl) summarised again and published onto itself: the
    block keeps its commands / machine lines, a table's relative links resolve from the
    repository root, a figure a table embeds is not listed again; a run folder's protocol and
    invocation log are published with the tables."""
    from ada_bench.publish import publish, record_start

    monkeypatch.chdir(tmp_path)
    dest = Path("benchmarks") / "power"
    dest.mkdir(parents=True)
    (dest / "results.jsonl").write_text("")
    (dest / "README.md").write_text(
        "### Results: power\n\nCommands:\n```bash\npython scripts/benchmark.py --power\n```\n"
        "Machine: 2 CPU cores. Wall time 1.0 min.\n\n#### Old table\n\nold\n"
    )
    (dest / "power.md").write_text(
        "## Primary\n\n| a |\n|---|\n| 1 |\n\nSee [m](power_penalty.md).\n\n"
        "![power_curve_glioma](power_curve_glioma.png)\n\n**caption**\n"
    )
    (dest / "power_curve_glioma.png").write_bytes(b"png")
    (dest / "boxplot_glioma_b3.png").write_bytes(b"png")
    text = publish(dest, dest, "Results: power")
    assert text.startswith("### Results: power\n\nCommands:\n```bash\npython scripts/benchmark.py "
                           "--power\n```\nMachine: 2 CPU cores. Wall time 1.0 min.\n\n#### Primary")
    assert "[m](benchmarks/power/power_penalty.md)" in text and "Old table" not in text
    assert text.count("power_curve_glioma.png)") == 1
    assert "![boxplot_glioma_b3](benchmarks/power/boxplot_glioma_b3.png)" in text
    readme = (dest / "README.md").read_text()
    assert "[m](power_penalty.md)" in readme and "](power_curve_glioma.png)" in readme
    out = Path("run")
    out.mkdir()
    (out / "results.jsonl").write_text("")
    (out / "protocol.yaml").write_text("primary: {}\n")
    record_start(out, ["--power"], 1.7e9, {"file": "p.yaml", "sha256": "ab", "text": "x"})
    publish(out, Path("benchmarks") / "other", "Results: other")
    assert (Path("benchmarks") / "other" / "protocol.yaml").read_text() == "primary: {}\n"
    assert '"sha256": "ab"' in (Path("benchmarks") / "other" / "invocations.jsonl").read_text()


def test_a_report_without_the_run_folders_keeps_the_query_overhead_table(tmp_path: Path) -> None:
    """The overhead needs each run's config.yaml (its run folder): a committed results folder
    summarised again keeps the table made when the folders were there."""
    import json

    from ada_bench.report import write_report

    rows = [{"task": "npc", "run": run, "seed": 0, "fold": 0, "budget": b, "test": {},
             "per_case": [{"case_id": "c0", "dice_GTV": 0.5}], "run_dir": str(tmp_path / "gone"),
             "fit_seconds": 10.0, "queries": [{"round": 0}] if run == "random" else []}
            for run, b in (("lower", 0), ("random", 1))]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = "## Query overhead\n\n| Task |\n|---|\n| npc |\n"
    (tmp_path / "query_overhead.md").write_text(kept)
    text = write_report(tmp_path, ())
    assert (tmp_path / "query_overhead.md").read_text() == kept and kept in text
    assert "query_overhead.md/.csv" in text
    (tmp_path / "query_overhead.md").unlink()
    write_report(tmp_path, ())
    assert "(none)" in (tmp_path / "query_overhead.md").read_text()  # nothing to keep


def test_a_summary_again_keeps_the_commands_it_was_made_with(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import protocols

    (tmp_path / "summary.md").write_text(
        "# Protocol\n\nMade with:\n\n```\npython scripts/protocols.py centres   # started x\n```\n"
        "\n## Table\n")
    assert protocols.made_with(tmp_path / "summary.md") == (
        "python scripts/protocols.py centres   # started x")
    assert protocols.made_with(tmp_path / "none.md") == ""


def test_scoring_time_counts_each_round_once(tmp_path: Path) -> None:
    """A region round logs one entry per region, each with the round's seconds: the run's and
    the overhead table's scoring time count the round once (27 regions of one round: 6 s, not
    162 s)."""
    from ada_bench.overhead import overhead_table
    from ada_bench.results import round_seconds

    queries = [{"round": 0, "scoring_seconds": 6.0}] * 27 + [{"round": 1, "scoring_seconds": 2.0}] * 27
    assert round_seconds(queries) == {0: 6.0, 1: 2.0}
    (tmp_path / "config.yaml").write_text("trainer: {max_epochs: 10}\nactive: {stride: 2}\n")
    row = {"task": "npc", "run": "mmacts", "seed": 0, "fold": 0, "budget": 2,
           "run_dir": str(tmp_path), "fit_seconds": 48.0, "scoring_seconds": 216.0,
           "queries": queries}
    # 4 s per round; (48 - 8) / 10 epochs x 2 = 8 s per stride, whatever the stale total says
    assert overhead_table([row]).csv_rows == [["npc", "mmacts", 1, 4.0, 8.0, 50.0]]
