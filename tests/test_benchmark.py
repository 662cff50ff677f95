"""Benchmark harness (scripts/ada_bench): folds, results file, statistics, tables, plots, resume
logic, W&B offline."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ada_bench import stats, tables
from ada_bench.folds import FoldScheme
from ada_bench.loop import INTERRUPTED, BenchConfig, BenchmarkLoop, last_rows, run_lock
from ada_bench.markdown import format_mean_std
from ada_bench.plots import QueriedCase, box_plot, budget_curve, curve_series, queried_cases
from ada_bench.protocol import plan, run_spec
from ada_bench.results import append_row, normalise, read_rows, run_key
from ada_bench.wandb_io import WandbSettings

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
        rows.append(row("lower", seed, [0.5] * 6, fold=0, budget=0))
        rows.append(row("upper", seed, [0.95] * 6, fold=0, labels=30))
        rows.append(row("mmacts", seed, [0.9] * 6, fold=0, budget=3))
        for draw in (0, 1):
            rows.append(
                row(
                    f"random@{draw}", seed, [0.9 - 0.01 * (k + 1 + 6 * seed) for k in range(6)],
                    fold=0, budget=3, strategy="random",
                )
            )
        rows.append(row("mmacts", seed, [0.8] * 6, fold=0, budget=1))
        rows.append(
            row(
                "mmacts_input_t1ce", seed, [0.7] * 6, fold=0, budget=3,
                train_input="modality:t1ce", strategy="mmacts",
            )
        )
        rows.append(row("mmacts_one_off", seed, [0.85] * 6, fold=0, budget=3, strategy="mmacts"))
    return rows


@pytest.fixture
def named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Table names and order of random / mmacts set on their classes (as the classes declare)."""
    from lightning_ada.active.strategies import REGISTRY

    for name, shown, order in (("random", "Random", 10), ("mmacts", "mmActS", 90)):
        monkeypatch.setattr(REGISTRY[name], "display_name", shown, raising=False)
        monkeypatch.setattr(REGISTRY[name], "table_order", order, raising=False)


def test_normalise_derives_fields_and_rejects_rows_without_fold_or_budget() -> None:
    r = normalise({"task": "glioma", "run": "random@1", "seed": 2, "fold": 1, "budget": 2})
    assert (r["method"], r["strategy"], r["budget"], r["fold"], r["train_input"], r["labels"]) == (
        "random", "random", 2, 1, "all", 2
    )
    assert normalise({"task": "g", "run": "lower", "seed": 0, "fold": 0})["budget"] == 0
    upper = normalise({"task": "g", "run": "upper", "seed": 0, "fold": 0, "n_pool": 9})
    assert upper["labels"] == 9
    # bounds and source do not depend on the budget, the source not on the fold
    upper_key = run_key({"task": "g", "run": "upper", "seed": 0, "fold": 0})
    assert upper_key == ("g", "upper", None, 0, 0)
    assert run_key({"task": "g", "run": "source", "seed": 1}) == ("g", "source", None, None, 1)
    with pytest.raises(ValueError, match="run 'mmacts' .*no budget"):
        normalise({"task": "g", "run": "mmacts", "seed": 0, "fold": 0})
    with pytest.raises(ValueError, match="run 'mmacts' .*no fold"):
        normalise({"task": "g", "run": "mmacts", "seed": 0, "budget": 3})


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
    assert format_mean_std(stats.mean_std([1.0, 3.0])) == "2.00 ± 1.41"


@pytest.mark.slow
def test_table1_means_bold_and_p_values(tmp_path: Path, named: None) -> None:
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


@pytest.mark.slow
def test_table2_schedule_and_budget_tables(named: None) -> None:
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


def _colour_fraction(png: Path, rgb: tuple[float, float, float], tol: float = 0.08) -> float:
    """Fraction of the PNG's pixels within ``tol`` of ``rgb`` (0-1 floats)."""
    import matplotlib.image

    img = matplotlib.image.imread(png)[..., :3]
    return float((np.abs(img - np.array(rgb)).max(axis=-1) < tol).mean())


def test_plots_draw_the_aggregated_values(tmp_path: Path, named: None) -> None:
    rows = make_rows()
    curves, lower, upper = curve_series(rows, "glioma")
    assert list(curves) == ["random", "mmacts"]  # table order, bounds left out
    mm = [(b, round(s.mean, 6), s.n) for b, s in curves["mmacts"]]
    assert mm == [(0, 0.5, 2), (1, 0.8, 2), (3, 0.9, 2)]  # starts at the lower bound
    assert (lower.mean, upper.mean) == (pytest.approx(0.5), pytest.approx(0.95))
    curve = budget_curve(rows, "glioma", tmp_path / "curve.png")
    box = box_plot(rows, "glioma", tmp_path / "box.png")
    import matplotlib.image

    assert curve is not None and matplotlib.image.imread(curve).shape[2] in (3, 4)
    assert _colour_fraction(curve, (0.12, 0.47, 0.71)) > 1e-4  # C0: the first strategy's line
    assert box is not None and _colour_fraction(box, (0xDD / 255,) * 3, 0.02) > 1e-3  # random's box
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
    # the elected modality's gold frame, the source model's red and the adapted model's green
    assert _colour_fraction(fig, (1.0, 0.84, 0.0)) > 1e-3
    assert _colour_fraction(fig, (1.0, 0.0, 0.0), 0.15) > 1e-4
    assert _colour_fraction(fig, (0.0, 1.0, 0.0), 0.15) > 1e-4
    plain = queried_cases(tmp_path / "p.png", [QueriedCase(case.image, mask, mask)], ["a"] * 4)
    assert _colour_fraction(plain, (1.0, 0.84, 0.0)) == 0.0  # no election, no frame


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
    assert spec.train_input == "modality:t1ce"
    assert spec.overrides["data.train_input"] == "modality:t1ce"
    assert run_spec("stdr", ["t1"]).schedule == "one_off"
    chosen = run_spec("cup", ["t1"]).overrides["active.strategy"]  # a name or a class path
    from lightning_ada.active.strategies import REGISTRY

    cup = REGISTRY["cup"]
    path = f"{cup.__module__}.{cup.__qualname__}"
    assert chosen in ("cup", {"class_path": path, "init_args": {}})
    assert run_spec("random@2", ["t1"]).overrides == {"active.seed": 1002}
    assert run_spec("lower", ["t1"]).fit is False
    with pytest.raises(ValueError, match="unknown run"):
        run_spec("mmacts_input_flair", ["t1", "t1ce", "t2"])


# ------------------------------------------------------------------ resume with a fake runner
class FakeRunner:
    """Stands for ``run_experiment``: no training, writes a checkpoint, returns fixed numbers."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, config: dict[str, Any], fit: bool = True, curve: bool = False) -> dict:
        self.calls.append(config)
        root = Path(config["trainer"]["default_root_dir"])
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
    fake = FakeRunner()
    monkeypatch.setattr(
        "ada_bench.runner.run_experiment", lambda config, fit, snapshots, **kw: fake(config, fit)
    )
    cfg = BenchConfig(
        out=out,
        tasks=["glioma"],
        seeds=[0, 1],
        folds=[0, 1],
        runs={"glioma": [("lower", None), ("mmacts", 3), ("mmacts", 1)]},
    )
    first = BenchmarkLoop(cfg).run()
    # per seed one source model, then 2 folds x 3 runs
    assert len(fake.calls) == 2 * (1 + 2 * 3) and not first.failed
    seed1 = [c for c in fake.calls if c["seed_everything"] == 1]
    sources = {c["model"].get("source_checkpoint") for c in seed1} - {None}
    assert sources == {str(out / "glioma" / "seed1" / "source" / "checkpoints" / "last.ckpt")}
    lower = next(c for c in seed1 if c["data"]["stage"] == "target" and c["active"]["budget"] == 0)
    assert lower["data"]["splits"]["test"] == FoldScheme().splits("glioma", 0)["test"]
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
    # a source checkpoint gone: its finished runs stay finished, the missing ones retrain it
    cfg.runs["glioma"].append(("random", 2))
    shutil.rmtree(out / "glioma" / "seed0" / "source")
    third_runner = FakeRunner()
    third = BenchmarkLoop(cfg, runner=third_runner).run()
    assert [k[1] for k in third.ran] == ["source", "random", "random", "random", "random"]


def test_a_failing_run_is_recorded_and_the_loop_goes_on(tmp_path: Path) -> None:
    fake = FakeRunner()

    def runner(config: dict[str, Any], fit: bool = True, curve: bool = False) -> dict[str, Any]:
        if config["active"].get("budget") == 1:
            print("error: Parser key data.train_input", file=sys.stderr)
            raise SystemExit(2)  # what the CLI does on an invalid argument
        return fake(config, fit)

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


def test_a_run_another_job_finishes_while_this_one_waits_is_not_made_twice(
    tmp_path: Path,
) -> None:
    """A job of a killed benchmark still making a run, and a restarted benchmark's job given the
    same run (in another unit or shard): the second waits on the run's lock, then skips it."""
    fake = FakeRunner()
    cfg = BenchConfig(
        out=tmp_path, tasks=["glioma"], seeds=[0], folds=[0], runs={"glioma": [("mmacts", 3)]}
    )
    BenchmarkLoop(dataclasses.replace(cfg, source_only=True), runner=fake).run()  # source only
    key = ("glioma", "mmacts", 3, 0, 0)
    held, release = threading.Event(), threading.Event()

    def other_job() -> None:
        with run_lock(tmp_path, key):
            held.set()
            release.wait(5)
            append_row(tmp_path / "results.jsonl", {**read_rows(tmp_path / "results.jsonl")[0],
                       "run": "mmacts", "strategy": "mmacts", "budget": 3, "fold": 0})

    thread = threading.Thread(target=other_job)
    thread.start()
    held.wait(5)
    threading.Timer(0.3, release.set).start()
    calls = len(fake.calls)
    report = BenchmarkLoop(cfg, runner=fake).run()
    thread.join()
    assert len(fake.calls) == calls  # the runner was not called again
    assert key in report.skipped and report.ran == [] and not report.failed
    rows = [r for r in read_rows(tmp_path / "results.jsonl") if r["run"] == "mmacts"]
    assert len(rows) == 1


def test_an_interrupted_run_stops_the_loop_instead_of_counting_as_failed(tmp_path: Path) -> None:
    """Lightning ends a run it stopped on a signal with ``SystemExit(1)``: with the interrupt
    flag set, the loop passes it on (no error row, no next run)."""
    fake = FakeRunner()

    def runner(config: dict[str, Any], fit: bool = True, curve: bool = False) -> dict[str, Any]:
        if config["active"].get("budget") == 1:
            INTERRUPTED.set()  # what the SIGINT/SIGTERM handler does before raising
            raise SystemExit(1)
        return fake(config, fit)

    cfg = BenchConfig(
        out=tmp_path,
        tasks=["glioma"],
        seeds=[0],
        folds=[0],
        runs={"glioma": [("mmacts", 1), ("mmacts", 3)]},
    )
    try:
        with pytest.raises(KeyboardInterrupt):
            BenchmarkLoop(cfg, runner=runner).run()
    finally:
        INTERRUPTED.clear()
    assert not (tmp_path / "errors.jsonl").exists()
    assert len(fake.calls) == 1  # the source model; the budget-3 run was not started
    assert all(r["run"] == "source" for r in read_rows(tmp_path / "results.jsonl"))


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("bench_script", REPO / "scripts" / "benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_script_options_resolve_to_the_documented_protocols() -> None:
    mod = load_script()
    named = mod.build_config(
        mod.parser().parse_args(
            ["--tasks", "glioma", "--seeds", "0", "1", "--folds", "0", "--budgets", "3",
             "--ablations", "--strategies", "lower", "random@0", "mmacts", "--out", "runs/x"]
        ),
        {},
    )
    assert (named.tasks, named.seeds, named.folds) == (["glioma"], [0, 1], [0])
    assert named.runs["glioma"] == [("lower", None), ("random@0", 3), ("mmacts", 3)]
    quick = mod.build_config(
        mod.parser().parse_args(["--quick", "--budgets", "3"]), {"trainer.max_epochs": 1}
    )
    assert (quick.tasks, quick.seeds, quick.folds, quick.extra) == (
        ["glioma", "npc"],
        [0, 1],
        [0],
        {"trainer.max_epochs": 1},
    )
    assert ("mmacts_input_flair", 3) in quick.runs["glioma"] and ("aada", 3) in quick.runs["npc"]
    assert not quick.curve
    with pytest.raises(SystemExit):  # one profile at a time
        mod.parser().parse_args(["--quick", "--power"])


def test_overrides_after_the_double_dash_are_read_like_the_cli() -> None:
    from ada_bench.runner import parse_overrides

    assert parse_overrides(["--trainer.max_epochs", "8", "--data.splits={pool: [a]}",
                            "--model.lr", "1e-3", "--active.elect_modality", "false"]) == {
        "trainer.max_epochs": 8,
        "data.splits": {"pool": ["a"]},
        "model.lr": 1e-3,
        "active.elect_modality": False,
    }
    with pytest.raises(ValueError, match="no value"):
        parse_overrides(["--trainer.max_epochs"])
    with pytest.raises(ValueError, match="expected --key value"):
        parse_overrides(["trainer.max_epochs", "8"])
    from ada_bench.runner import split_command_line

    assert split_command_line(["-c", "a.yaml", "--x", "1", "--config", "b.yaml"]) == (
        ["a.yaml", "b.yaml"], {"x": 1}
    )


# ------------------------------------------------------------------ W&B offline, one tiny real fit
@pytest.mark.slow
def test_wandb_offline_runs_receive_the_metrics_and_the_run_attributes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb
    from wandb.sdk.wandb_run import Run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    inits: list[dict[str, Any]] = []
    logged: list[dict[str, Any]] = []
    real_init, real_log = wandb.init, Run.log

    @functools.wraps(real_init)  # the CLI reads wandb.init's signature (WandbLogger's kwargs)
    def init(*args: Any, **kwargs: Any) -> Any:
        inits.append(dict(kwargs))
        return real_init(*args, **kwargs)

    def log(self: Any, data: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        tables_as_rows = {  # as given (W&B may clear a table once written)
            k: {"columns": list(v.columns), "data": [list(r) for r in v.data]}
            for k, v in data.items()
            if isinstance(v, wandb.Table)
        }
        logged.append({"run": self.id, **data, **tables_as_rows})
        return real_log(self, data, *args, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(Run, "log", log)
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
        extra={"trainer.max_epochs": 2},
        wandb=WandbSettings(group="bench-test", mode="offline"),
    )
    report = BenchmarkLoop(cfg).run()
    assert not report.failed, read_rows(out / "errors.jsonl")
    rows = {r["run"]: r for r in read_rows(out / "results.jsonl")}
    run = rows["random"]
    assert run["fold"] == 1 and run["budget"] == 1 and len(run["queried_cases"]) == 1
    assert run["queried_cases"][0] in scheme.splits("glioma", 1)["pool"]
    assert {c["case_id"] for c in run["per_case"]} == set(scheme.splits("glioma", 1)["test"])
    assert Path(run["checkpoint"]).is_file()

    by_name = {i["name"]: i for i in inits}
    adapt = by_name["glioma/random/b1/f1/s0"]
    assert (adapt["group"], adapt["job_type"], adapt["mode"]) == ("bench-test", "adapt", "offline")
    assert {"glioma", "random", "budget1", "fold1", "seed0"} <= set(adapt["tags"])
    assert by_name["glioma/source/s0"]["job_type"] == "source"
    mine = [d for d in logged if d["run"] == run["wandb"]["id"]]
    tested = [d for d in mine if "test/dice_mean" in d]
    assert tested and tested[-1]["test/dice_mean"] == pytest.approx(run["test"]["dice_mean"])
    assert any("active/n_labeled" in d for d in mine)  # the callback logs to the same run
    assert list(Path(run["run_dir"]).rglob(f"run-{run['wandb']['id']}.wandb"))  # offline file

    from ada_bench.wandb_io import log_report

    info = log_report(
        cfg.wandb, out / "wandb_report",
        {"table1": tables.table1(read_rows(out / "results.jsonl"), budget=1)},
    )
    assert info is not None and inits[-1]["job_type"] == "summary"
    table = next(d for d in logged if d["run"] == info["id"])["tables/table1"]
    assert table["columns"][:2] == ["method", "labels"]
    assert [r[:2] for r in table["data"]] == [["random", "1"]]
    assert table["data"][0][2] == pytest.approx(100 * run["test"]["dice_ET"], abs=1e-6)


def test_captions_name_only_the_methods_that_ran(named: None) -> None:
    """Without mmActS (the p-values' reference) no caption names it; the ablations without
    runs say so in their title."""
    rows = [r for r in make_rows() if not r["run"].startswith("mmacts")]
    texts = {
        "table1": tables.table1(rows).markdown(),
        "distances": tables.table1_distances(rows).markdown(),
        "table2": tables.table2(rows).markdown(),
        "schedule": tables.schedule_table(rows).markdown(),
        "all_runs": tables.all_runs_table(rows).markdown(),
    }
    for name, text in texts.items():
        assert "mmActS" not in text, name
    assert tables.NO_REFERENCE in texts["table1"] and tables.NO_REFERENCE in texts["all_runs"]
    assert texts["table2"].startswith(
        "## Table 2: modality ablation at budget 3: no runs in this benchmark")
    assert "| p |" in texts["all_runs"].splitlines()[2]
    full = tables.table1(make_rows()).markdown()
    assert "of mmActS vs the row" in full and tables.NO_REFERENCE not in full
