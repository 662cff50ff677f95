"""Benchmark tooling: folds, results file, statistics, tables, plots, resume logic, W&B offline."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lightning_ada.benchmark import stats, tables
from lightning_ada.benchmark.folds import FoldScheme
from lightning_ada.benchmark.loop import BenchConfig, BenchmarkLoop, last_rows
from lightning_ada.benchmark.plots import QueriedCase, box_plot, budget_curve, queried_cases
from lightning_ada.benchmark.protocol import plan, run_spec
from lightning_ada.benchmark.results import append_row, normalise, read_rows, run_key
from lightning_ada.benchmark.wandb_io import WandbSettings, read_offline_run

CONF = Path(__file__).parent / "conf"
REPO = Path(__file__).resolve().parents[1]
REGIONS = ["ET", "NCR", "ED"]


# ------------------------------------------------------------------ synthetic rows
def make_rows() -> list[dict[str, Any]]:
    """glioma, 1 fold x 2 seeds x 6 test cases; every region of a case has the same Dice.

    Per-case Dice: lower 0.5, upper 0.95, mmacts 0.9, random 0.9 - 0.01 * (k + 1 + 6 * seed)
    (distinct differences), random drawn twice with the same values (averaged away).
    """
    rows = []

    def row(run: str, seed: int, dice: list[float], **kw: Any) -> dict[str, Any]:
        per_case = [
            {
                "case_id": f"glioma_test_{k:03d}",
                **{f"{m}_{g}": d for g in REGIONS for m in ("dice", "iou")},
                **{f"hd95_{g}": 1.0 for g in REGIONS},
            }
            for k, d in enumerate(dice)
        ]
        return {"task": "glioma", "run": run, "seed": seed, "test": {}, "per_case": per_case, **kw}

    for seed in (0, 1):
        rows.append(row("lower", seed, [0.5] * 6))  # an old row: no budget, no fold
        rows.append(row("upper", seed, [0.95] * 6, fold=0, labels=30))
        rows.append(row("mmacts", seed, [0.9] * 6, fold=0, budget=3))
        for draw in (0, 1):
            rows.append(
                row(f"random@{draw}", seed, [0.9 - 0.01 * (k + 1 + 6 * seed) for k in range(6)])
            )
        rows.append(row("mmacts", seed, [0.8] * 6, fold=0, budget=1))
        rows.append(
            row("mmacts_input_t1ce", seed, [0.7] * 6, fold=0, budget=3, train_input="modality:t1ce")
        )
        rows.append(row("mmacts_one_off", seed, [0.85] * 6, fold=0, budget=3))
    return rows


def test_normalise_defaults_of_old_rows() -> None:
    old = normalise({"task": "glioma", "run": "random@1", "seed": 2})
    assert (old["method"], old["budget"], old["fold"], old["train_input"]) == (
        "random",
        3,
        0,
        "all",
    )
    assert normalise({"task": "g", "run": "lower", "seed": 0})["budget"] == 0
    # bounds and source do not depend on the budget, the source not on the fold
    assert run_key({"task": "g", "run": "upper", "seed": 0}) == ("g", "upper", None, 0, 0)
    assert run_key({"task": "g", "run": "source", "seed": 1}) == ("g", "source", None, None, 1)
    assert run_key({"task": "g", "run": "mmacts", "seed": 0}) == run_key(
        {"task": "g", "run": "mmacts", "seed": 0, "budget": 3, "fold": 0}
    )


def test_results_file_is_append_only_and_tolerates_a_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    append_row(path, {"task": "g", "run": "a", "seed": 0})
    with path.open("a") as f:
        f.write('{"task": "g", "run": "cut')  # a write killed half-way
    append_row(path, {"task": "g", "run": "b", "seed": 0, "x": float("nan")})
    with pytest.warns(UserWarning, match="unreadable"):
        rows = read_rows(path)
    assert [r["run"] for r in rows] == ["a", "b"]
    assert path.read_text().endswith("\n")


def test_wilcoxon_paired_on_constructed_data() -> None:
    a = {("f", i): 1.0 + 0.1 * i for i in range(5)}
    b = {("f", i): 0.0 for i in range(5)}
    b[("f", 99)] = 3.0  # unpaired: ignored
    t = stats.wilcoxon_paired(a, b)
    assert t.n == 5 and t.p == pytest.approx(2 / 2**5)  # exact: all 5 differences positive
    assert t.mean_diff == pytest.approx(1.2)
    assert stats.wilcoxon_paired(a, dict(a)).p == 1.0  # identical: no difference at all
    assert math.isnan(stats.wilcoxon_paired({}, {}).p)
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=12), rng.normal(size=12)
    res = stats.wilcoxon_paired(dict(enumerate(x)), dict(enumerate(y)))
    assert res.p == pytest.approx(wilcoxon(x, y).pvalue)


def test_aggregation_means_and_draws() -> None:
    rows = [normalise(r) for r in make_rows()]
    rnd = stats.select(rows, "glioma", "random", budget=3)
    assert len(rnd) == 4  # 2 draws x 2 seeds
    runs = stats.per_run(rnd, "dice_mean", REGIONS)
    assert runs[(0, 0)] == pytest.approx(0.9 - 0.01 * 3.5)  # mean of k + 1 = 1..6
    cases = stats.per_case(rnd, "dice_ET", REGIONS)
    assert len(cases) == 12 and cases[(0, 1, "glioma_test_000")] == pytest.approx(0.9 - 0.07)
    assert stats.mean_std([1.0, 3.0]).fmt() == "2.00 ± 1.41"
    assert stats.relative_gain({"a": 0.9, "b": 0.6}, {"a": 0.6, "b": 0.6}) == pytest.approx(0.25)


def test_table1_means_bold_and_p_values(tmp_path: Path) -> None:
    t = tables.table1(make_rows())
    md = t.markdown()
    by_method = {r[0].strip("*"): r for r in t.rows}
    assert list(by_method) == ["Lower bound", "Upper bound", "Random", "mmActS"]
    col = t.header.index("ET Dice")
    assert by_method["mmActS"][col] == "**90.00 ± 0.00**"  # best strategy, bold
    assert by_method["Upper bound"][col] == "95.00 ± 0.00"  # bounds never bold
    assert by_method["Lower bound"][t.header.index("Labels")] == "0"
    assert by_method["Upper bound"][t.header.index("Labels")] == "30"
    assert (
        by_method["Random"][col] == f"{100 * (0.9 - 0.035 - 0.03):.2f} ± {100 * 0.06 / 2**0.5:.2f}"
    )
    p_col = t.header.index("p glioma")
    assert by_method["Random"][p_col] == "<0.001"  # 12 positive distinct differences: p = 2 / 2**12
    assert by_method["mmActS"][p_col] == "ref."
    assert by_method["Random"][t.header.index("runs glioma")] == "2"
    paths = t.write(tmp_path, "table1")
    csv = paths[1].read_text().splitlines()
    assert csv[0].startswith("method,labels,glioma_ET_dice_mean,glioma_ET_dice_std")
    rnd = next(line for line in csv if line.startswith("random,"))
    p = float(rnd.split(",")[csv[0].split(",").index("glioma_p")])
    assert p == pytest.approx(2 / 2**12)
    assert "Bold" in md and "| mmActS |" not in md  # the reference row's name is bold too


def test_table2_schedule_and_budget_tables() -> None:
    rows = make_rows()
    t2 = tables.table2(rows)
    labels = [r[0] for r in t2.rows]
    assert labels == ["T1c", "Multiple (all)"]  # no dominant_only run: row left out
    assert t2.rows[0][t2.header.index("ET Dice")] == "70.00 ± 0.00"
    assert t2.rows[0][t2.header.index("p glioma")] == "<0.001"
    sched = tables.schedule_table(rows)
    assert [r[0] for r in sched.rows] == ["mmActS one-off", "mmActS sequential"]
    curve = tables.budget_table(rows)
    assert curve.header == ["Task", "Method", "0 (lower)", "1", "3", "upper"]
    mm = next(r for r in curve.rows if r[1] == "mmActS")
    assert mm[2:] == ["50.00 ± 0.00", "80.00 ± 0.00", "90.00 ± 0.00", "95.00 ± 0.00"]
    everything = tables.all_runs_table(rows)
    assert len(everything.rows) == 7  # lower, upper, random, mmacts x2 budgets, t1ce, one-off


def test_plots_write_pngs(tmp_path: Path) -> None:
    rows = make_rows()
    curve = budget_curve(rows, "glioma", tmp_path / "curve.png")
    box = box_plot(rows, "glioma", tmp_path / "box.png")
    assert curve is not None and curve.stat().st_size > 1000
    assert box is not None and box.stat().st_size > 1000
    assert budget_curve(rows, "npc", tmp_path / "none.png") is None
    rng = np.random.default_rng(0)
    mask = np.zeros((8, 8, 8), np.int64)
    mask[2:5, 2:6, 3:5] = 1
    case = QueriedCase(
        rng.random((4, 8, 8, 8)),
        before=mask,
        after=np.roll(mask, 1, 0),
        label=mask,
        elected="t1ce",
        title="case 0",
    )
    fig = queried_cases(tmp_path / "q.png", [case, case], ["flair", "t1", "t1ce", "t2"], "t")
    assert fig.stat().st_size > 1000


def test_folds_partition_the_target_cases() -> None:
    s = FoldScheme()
    tests = [s.splits("glioma", f)["test"] for f in range(s.n_folds)]
    tested = [c for t in tests for c in t]
    assert sorted(tested) == sorted(s.target_ids("glioma"))  # each case tested exactly once
    for f in range(s.n_folds):
        sp = s.splits("glioma", f)
        assert (
            len(sp["pool"]) == 30
            and len(sp["test"]) == 12
            and not set(sp["pool"]) & set(sp["test"])
        )
    f0 = s.splits("glioma", 0)  # fold 0 = the phantom's own split
    assert f0["test"] == [f"glioma_test_{i:03d}" for i in range(12)]
    assert f0["pool"] == [f"glioma_pool_{i:03d}" for i in range(30)]
    assert s.phantom("npc", 2)["n_pool"] == 48
    with pytest.raises(ValueError):
        s.splits("glioma", 5)


def test_protocol_plan_and_specs() -> None:
    p = plan(["lower", "upper", "random", "mmacts"], [1, 3], ["schedule"], ["t1", "t1ce", "t2"])
    assert p[:2] == [("lower", None), ("upper", None)]
    assert p[2:5] == [("random", 3), ("mmacts", 3), ("mmacts_one_off", 3)]
    assert p[5:] == [("random", 1), ("mmacts", 1)]
    spec = run_spec("mmacts_input_t1ce", ["t1", "t1ce", "t2"])
    assert spec.train_input == "modality:t1ce" and "--data.train_input" in spec.overrides
    assert run_spec("stdr", ["t1"]).schedule == "one_off"
    assert json.loads(run_spec("cup", ["t1"]).overrides[-1]) == {"progress": False}
    with pytest.raises(ValueError, match="unknown run"):
        run_spec("mmacts_input_flair", ["t1", "t1ce", "t2"])


# ------------------------------------------------------------------ resume with a fake runner
class FakeRunner:
    """Stands for ``run_experiment``: no training, writes a checkpoint, returns fixed numbers."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(
        self, configs: list[str], overrides: list[str], fit: bool = True
    ) -> dict[str, Any]:
        self.calls.append(list(overrides))
        root = Path(overrides[overrides.index("--trainer.default_root_dir") + 1])
        if fit:
            (root / "checkpoints").mkdir(parents=True, exist_ok=True)
            (root / "checkpoints" / "last.ckpt").write_bytes(b"x")
        case = {"case_id": "glioma_test_000", **{f"dice_{g}": 0.5 for g in REGIONS}}
        return {
            "test": {"dice_mean": 0.5},
            "per_case": [case],
            "seconds": 0.1,
            "query_log": [{"case_id": "glioma_pool_001", "modality": "t1ce", "round": 0}],
        }


def test_resume_skips_finished_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bench"
    # the first benchmark's files: a source row + checkpoint and an mmacts row (no budget, fold)
    (out / "seed0" / "source" / "checkpoints").mkdir(parents=True)
    (out / "seed0" / "source" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    append_row(out / "results.jsonl", {"task": "glioma", "run": "source", "seed": 0, "test": {}})
    append_row(out / "results.jsonl", {"task": "glioma", "run": "mmacts", "seed": 0, "test": {}})
    fake = FakeRunner()
    monkeypatch.setattr("lightning_ada.runner.run_experiment", fake)
    cfg = BenchConfig(
        out=out,
        tasks=["glioma"],
        seeds=[0, 1],
        folds=[0, 1],
        runs={"glioma": [("lower", None), ("mmacts", 3), ("mmacts", 1)]},
    )
    first = BenchmarkLoop(cfg).run()
    # seed 0: source reused, fold 0 mmacts@3 done; seed 1: a new source; 2 seeds x 2 folds x 3 runs
    assert len(fake.calls) == 1 + 2 * 2 * 3 - 1
    assert ("glioma", "mmacts", 3, 0, 0) in first.skipped and not first.failed
    legacy_ckpt = str(out / "seed0" / "source" / "checkpoints" / "last.ckpt")
    seed0 = [
        c
        for c in fake.calls
        if "--seed_everything" in c and c[c.index("--seed_everything") + 1] == "0"
    ]
    assert all(c[c.index("--model.source_checkpoint") + 1] == legacy_ckpt for c in seed0)
    rows = last_rows(out / "results.jsonl")
    mm1 = [
        r
        for r in rows
        if r["run"] == "mmacts" and r["budget"] == 1 and r["fold"] == 1 and r["seed"] == 1
    ]
    assert len(mm1) == 1 and mm1[0]["queried_cases"] == ["glioma_pool_001"]
    assert mm1[0]["elected_modalities"] == ["t1ce"] and mm1[0]["n_pool"] == 30
    n_lines = len((out / "results.jsonl").read_text().splitlines())

    second = BenchmarkLoop(cfg, runner=FakeRunner()).run()  # same arguments: nothing new
    assert second.ran == [] and len(second.skipped) == 2 * 2 * 3
    assert len((out / "results.jsonl").read_text().splitlines()) == n_lines


def test_a_failing_run_is_recorded_and_the_loop_goes_on(tmp_path: Path) -> None:
    fake = FakeRunner()

    def runner(configs: list[str], overrides: list[str], fit: bool = True) -> dict[str, Any]:
        if (
            "--active.budget" in overrides
            and overrides[overrides.index("--active.budget") + 1] == "1"
        ):
            print("error: Parser key data.train_input", file=sys.stderr)
            raise SystemExit(2)  # what the CLI does on an invalid argument
        return fake(configs, overrides, fit)

    cfg = BenchConfig(
        out=tmp_path,
        tasks=["glioma"],
        seeds=[0],
        folds=[0],
        runs={"glioma": [("mmacts", 1), ("mmacts", 3)]},
    )
    report = BenchmarkLoop(cfg, runner=runner).run()
    assert report.failed == [("glioma", "mmacts", 1, 0, 0)]
    assert ("glioma", "mmacts", 3, 0, 0) in report.ran
    error = read_rows(tmp_path / "errors.jsonl")[0]
    assert "SystemExit" in error["error"] and "data.train_input" in error["stderr"]
    bad = BenchConfig(
        out=tmp_path / "bad",
        tasks=["glioma"],
        seeds=[0],
        folds=[0],
        runs={"glioma": [("mmacts_input_tx", 3)]},
    )
    with pytest.raises(ValueError, match="unknown run"):  # checked before anything runs
        BenchmarkLoop(bad, runner=runner).run()


def test_script_cli_stays_backward_compatible() -> None:
    spec = importlib.util.spec_from_file_location("bench_script", REPO / "scripts" / "benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = mod.parser().parse_args(
        [
            "--task",
            "glioma",
            "--seeds",
            "0",
            "1",
            "--runs",
            "lower",
            "random@0",
            "mmacts",
            "--out",
            "runs/x",
        ]
    )
    cfg = mod.build_config(args, [])
    assert (cfg.tasks, cfg.seeds, cfg.folds) == (["glioma"], [0, 1], [0])
    assert cfg.runs["glioma"] == [("lower", 3), ("random@0", 3), ("mmacts", 3)]
    quick = mod.build_config(mod.parser().parse_args(["--quick", "--budgets", "3"]), ["--x", "1"])
    assert (quick.tasks, quick.seeds, quick.folds, quick.extra) == (
        ["glioma", "npc"],
        [0, 1],
        [0],
        ["--x", "1"],
    )
    assert ("mmacts_input_flair", 3) in quick.runs["glioma"] and ("aada", 3) in quick.runs["npc"]


# ------------------------------------------------------------------ W&B offline, one tiny real fit
def test_wandb_offline_run_holds_the_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    conf = tmp_path / "conf" / "glioma"
    conf.mkdir(parents=True)
    shutil.copy(CONF / "source_tiny.yaml", conf / "source.yaml")
    shutil.copy(CONF / "random_tiny.yaml", conf / "random.yaml")
    shutil.copy(CONF / "random_tiny.yaml", conf / "mmacts.yaml")
    scheme = FoldScheme(n_folds=2, n_pool=3, n_test=2, size=16, n_source=4, n_source_test=2)
    out = tmp_path / "bench"
    cfg = BenchConfig(
        out=out,
        tasks=["glioma"],
        seeds=[0],
        folds=[1],
        runs={"glioma": [("random", 1)]},
        scheme=scheme,
        config_dir=str(tmp_path / "conf" / "{task}"),
        data_base=str(tmp_path / "data"),
        extra=["--trainer.max_epochs", "2"],
        wandb=WandbSettings(group="bench-test", mode="offline"),
    )
    report = BenchmarkLoop(cfg).run()
    assert not report.failed, read_rows(out / "errors.jsonl")
    rows = {r["run"]: r for r in read_rows(out / "results.jsonl")}
    run = rows["random"]
    assert run["fold"] == 1 and run["budget"] == 1 and len(run["queried_cases"]) == 1
    assert run["queried_cases"][0] in scheme.splits("glioma", 1)["pool"]
    assert {c["case_id"] for c in run["per_case"]} == set(scheme.splits("glioma", 1)["test"])
    assert Path(run["checkpoint"]).is_file() and run["wandb"]["id"]

    logged = read_offline_run(Path(run["run_dir"]) / "wandb")
    assert logged.summary["test/dice_mean"] == pytest.approx(run["test"]["dice_mean"])
    assert "active/n_labeled" in {k for h in logged.history for k in h}  # the callback logs too
    assert logged.finished and logged.group == "bench-test" and logged.job_type == "adapt"
    assert {"glioma", "random", "budget1", "fold1", "seed0"} <= set(logged.tags)
    source = read_offline_run(Path(rows["source"]["run_dir"]) / "wandb")
    assert source.job_type == "source" and source.name == "glioma/source/s0"

    from lightning_ada.benchmark.wandb_io import log_report

    info = log_report(
        cfg.wandb, out / "wandb_report", {"table1": tables.table1(read_rows(out / "results.jsonl"))}
    )
    assert info is not None
    report_run = read_offline_run(out / "wandb_report")
    assert report_run.job_type == "summary" and report_run.finished
    assert report_run.summary["tables/table1/_type"] == "table-file"  # a wandb.Table
