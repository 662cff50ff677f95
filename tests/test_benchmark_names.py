"""Run names with strategy options, presets and additions; forgetting columns; the stride in
optimiser steps (callback, schedule check, budget curves). Constructed inputs, no training."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ada_bench import power, tables
from ada_bench.curve import StrideSnapshots, labels_at, snapshot_factory
from ada_bench.forgetting import forgetting_table
from ada_bench.names import bound_of, budgetless, folder_name, method_of, parse_run_name
from ada_bench.protocol import ADDITIONS_DIR, PRESETS, run_spec
from ada_bench.results import normalise, run_key
from ada_bench.runner import compose

REPO = Path(__file__).resolve().parents[1]
CONF = Path(__file__).parent / "conf"
ADDITIONS = CONF / "additions"
MODS = ["flair", "t1", "t1ce", "t2"]
REGIONS = ["ET", "NCR", "ED"]


def class_path(name: str) -> str:
    from lightning_ada.active.strategies import REGISTRY

    cls = REGISTRY[name]
    return f"{cls.__module__}.{cls.__qualname__}"


# ------------------------------------------------------------------ the grammar
def test_run_names_parse_into_base_options_and_additions() -> None:
    n = parse_run_name("mmacts:density_rule=inclusive,ranking=per_region")
    assert (n.base, n.options, n.additions) == (
        "mmacts", {"density_rule": "inclusive", "ranking": "per_region"}, ()
    )
    n = parse_run_name("mmacts:exponents=[1, 0, 1],density_delta=1e-3+st+gba")
    assert n.options == {"exponents": [1, 0, 1], "density_delta": 0.001}
    assert n.additions == ("st", "gba")
    assert n.option_text == "exponents=[1, 0, 1],density_delta=1e-3"
    assert parse_run_name("mmacts:density_delta=1e+3+st").options == {"density_delta": 1000.0}
    assert parse_run_name("mmacts:density_delta=1e+3+st").additions == ("st",)
    draw = parse_run_name("random@2+st")
    assert (draw.base, draw.draw, draw.method) == ("random@2", 2, "random+st")
    assert method_of("random@1") == "random" and method_of("random@1+st+gba") == "random+st+gba"
    many = parse_run_name("mmacts:ranking=per_region+st+gba")
    assert many.without_last_addition() == "mmacts:ranking=per_region+st"
    assert many.without_additions() == "mmacts:ranking=per_region"
    assert parse_run_name("mmacts").without_last_addition() is None
    assert (bound_of("upper+dgst"), bound_of("lower")) == ("upper", "lower")
    assert bound_of("random+st") is None
    assert budgetless("upper+dgst") and not budgetless("mmacts:ranking=per_region")
    for bad, why in (
        ("mmacts:", "needs options"),
        ("mmacts:rule", "not key=value"),
        ("mmacts:a=1,a=2", "given twice"),
        ("random+st+3", "not a name"),
        (":a=1", "no run before"),
        ("mmacts:a=[1,", "not valid YAML"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_run_name(bad)


def test_folder_names_are_safe_and_distinct() -> None:
    assert folder_name("random@1") == "random_1" and folder_name("random+st") == "random+st"
    a = folder_name("mmacts:density_rule=inclusive,ranking=per_region")
    b = folder_name("mmacts:density_rule=kernel,ranking=per_region")
    assert a != b and all(c.isalnum() or c in "_.+-" for c in a + b)


# ------------------------------------------------------------------ run specs
def test_strategy_options_become_init_args_and_set_the_schedule() -> None:
    spec = run_spec("mmacts:density_rule=inclusive,ranking=per_region", MODS)
    assert spec.name == "mmacts:density_rule=inclusive,ranking=per_region"
    assert (spec.strategy, spec.schedule, spec.config) == ("mmacts", "sequential", "mmacts.yaml")
    assert spec.overrides["active.strategy"] == {
        "class_path": class_path("mmacts"),
        "init_args": {"density_rule": "inclusive", "ranking": "per_region"},
    }
    assert run_spec("mmacts:schedule=one_off", MODS).schedule == "one_off"
    assert run_spec("typiclust:schedule=one_off", MODS).schedule == "one_off"
    assert run_spec("stdr", MODS).schedule == "one_off"
    # the composed config carries the options to the strategy
    config = compose([CONF / "random_tiny.yaml"], dict(spec.overrides))
    assert config["active"]["strategy"]["init_args"]["ranking"] == "per_region"


def test_unknown_options_and_bad_values_fail_at_plan_time() -> None:
    with pytest.raises(ValueError, match=r"no option 'density_rul'; accepted: exponents, schedule"):
        run_spec("mmacts:density_rul=inclusive", MODS)
    with pytest.raises(ValueError, match="density_rule"):
        run_spec("mmacts:density_rule=self", MODS)  # not one of exclusive, inclusive, kernel
    with pytest.raises(ValueError, match="density_resize"):
        run_spec("mmacts:density_resize=abc", MODS)  # not an int
    with pytest.raises(ValueError, match="options need a registered strategy or a preset"):
        run_spec("lower:x=1", MODS)
    with pytest.raises(ValueError, match=r"unknown run 'nope\+frozen' \('nope' is no run\)"):
        run_spec("nope+frozen", MODS, ADDITIONS)  # 'nope' is no run


def test_the_paper_preset_and_its_overrides() -> None:
    paper = run_spec("mmacts_paper", MODS)
    assert paper.strategy == "mmacts" and paper.schedule == "sequential"
    args = paper.overrides["active.strategy"]["init_args"]
    assert args == dict(PRESETS["mmacts_paper"].options)
    assert (args["density_input"], args["density_resize"]) == ("raw", 128)
    assert args["ranking"] == "per_region"
    assert (args["entropy_roi"], args["density_rule"]) == ("volume", "inclusive")
    from lightning_ada.active.strategies.mmacts import MMActSStrategy

    MMActSStrategy(**args)  # the preset's options are the strategy's own
    kernel = run_spec("mmacts_paper:density_rule=kernel", MODS).overrides["active.strategy"]
    assert kernel["init_args"] == {**args, "density_rule": "kernel"}


def test_additions_compose_their_overlays_in_order() -> None:
    assert ADDITIONS_DIR == REPO / "configs" / "additions"
    spec = run_spec("random+frozen+short", MODS, ADDITIONS)
    assert spec.configs == (str(ADDITIONS / "frozen.yaml"), str(ADDITIONS / "short.yaml"))
    assert (spec.strategy, spec.config, spec.overrides) == ("random", "mmacts.yaml",
                                                           run_spec("random", MODS).overrides)
    config = compose([CONF / "random_tiny.yaml", *spec.configs], dict(spec.overrides))
    assert config["model"]["lr"] == 0.0 and config["trainer"]["max_epochs"] == 2
    upper = run_spec("upper+frozen", MODS, ADDITIONS)
    assert (upper.strategy, upper.budgeted, upper.config) == ("upper", False, "upper_bound.yaml")
    draw = run_spec("random@3+frozen", MODS, ADDITIONS)
    assert draw.overrides == {"active.seed": 1003} and draw.configs == spec.configs[:1]
    with pytest.raises(ValueError, match="lower bound only tests"):
        run_spec("lower+frozen", MODS, ADDITIONS)
    with pytest.raises(ValueError, match=r"unknown addition 'nope'.*in .*: frozen, short"):
        run_spec("random+nope", MODS, ADDITIONS)


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("bench_script", REPO / "scripts" / "benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_power_plan_follows_each_runs_schedule() -> None:
    mod = load_script()
    plan = mod.power_plan(
        ["mmacts:ranking=per_region", "mmacts:schedule=one_off", "upper+frozen", "random+frozen"],
        [1, 3], str(ADDITIONS),
    )
    assert plan == [
        ("lower", None), ("upper", None), ("upper+frozen", None), ("random", 3),
        ("random_one_off", 1), ("random_one_off", 3),  # the matched baseline of one-off runs
        ("mmacts:ranking=per_region", 3), ("mmacts:schedule=one_off", 1),
        ("mmacts:schedule=one_off", 3), ("random+frozen", 3),
    ]
    sequential = mod.power_plan(["random+frozen", "mmacts_paper"], [1, 3], str(ADDITIONS))
    assert [n for n, _ in sequential] == ["lower", "upper", "random", "random+frozen",
                                          "mmacts_paper"]
    args = mod.parser().parse_args(["--power", "--strategies", "random+frozen", "--dry-run",
                                    "--additions-dir", str(ADDITIONS)])
    cfg = mod.build_config(args, {})
    assert cfg.additions_dir == str(ADDITIONS)
    assert cfg.task("glioma").target_overrides == {"data.extra_test_splits": ["source_test"]}
    quiet = mod.build_config(mod.parser().parse_args(["--power", "--no-forgetting"]), {})
    assert quiet.task("glioma").target_overrides == {}


# ------------------------------------------------------------------ results and tables
def test_rows_of_bounds_with_additions_are_budgetless() -> None:
    r = normalise({"task": "g", "run": "upper+dgst", "seed": 0, "fold": 0, "n_pool": 9})
    assert (r["budget"], r["labels"], r["method"]) == (None, 9, "upper+dgst")
    assert run_key(r) == ("g", "upper+dgst", None, 0, 0)
    r = normalise({"task": "g", "run": "random@1+st", "seed": 0, "fold": 0, "budget": 2})
    assert (r["method"], r["budget"], r["extra_splits"]) == ("random+st", 2, {})


@pytest.fixture
def named(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_ada.active.strategies import REGISTRY

    for name, shown, order in (("random", "Random", 10), ("mmacts", "mmActS", 90)):
        monkeypatch.setattr(REGISTRY[name], "display_name", shown, raising=False)
        monkeypatch.setattr(REGISTRY[name], "table_order", order, raising=False)


def cases(value: float, prefix: str = "glioma_test") -> list[dict[str, Any]]:
    """Two cases whose mean Dice (every region) is ``value``."""
    return [
        {"case_id": f"{prefix}_{i:03d}", **{f"dice_{g}": value + d for g in REGIONS}}
        for i, d in enumerate((-0.1, 0.1))
    ]


def constructed() -> list[dict[str, Any]]:
    """10 seeds: random's curve 0.5 + 0.02 b; random+st (two draws) = random + 0.01 (s + 1);
    random+st+gba = random+st + 0.02; a variant and the preset of mmActS at random - 0.01;
    bounds 0.4 / 0.9 and upper+dgst = upper + 0.03. Source test Dice: lower 0.8, every other
    run 0.8 - 0.1 (upper+dgst 0.8 - 0.05)."""
    rows = []
    for s in range(10):
        base = {"task": "glioma", "seed": s, "fold": 0}

        def extra(v: float) -> dict[str, Any]:
            return {"source_test": {"per_case": cases(v, "glioma_source_test")}}

        rows.append({**base, "run": "lower", "budget": 0, "per_case": cases(0.4),
                     "extra_splits": extra(0.8)})
        rows.append({**base, "run": "upper", "n_pool": 6, "per_case": cases(0.9),
                     "extra_splits": extra(0.7), "strategy": "upper"})
        rows.append({**base, "run": "upper+dgst", "n_pool": 6, "per_case": cases(0.93),
                     "extra_splits": extra(0.75), "strategy": "upper"})
        for run, add, strategy in (
            ("random", 0.0, "random"),
            ("random@0+st", 0.01 * (s + 1), "random"),
            ("random@1+st", 0.01 * (s + 1), "random"),
            ("random+st+gba", 0.01 * (s + 1) + 0.02, "random"),
            ("mmacts:ranking=per_region", -0.01, "mmacts"),
            ("mmacts_paper", -0.01, "mmacts"),
        ):
            curve = [
                {"labels": b, "epoch": b, "per_case": cases(0.5 + 0.02 * b + add),
                 "extra_splits": extra(0.7)}
                for b in (1, 2, 3)
            ]
            rows.append({**base, "run": run, "budget": 3, "per_case": cases(0.0), "curve": curve,
                         "strategy": strategy})
    return rows


def test_tables_show_variants_presets_and_additions(named: None) -> None:
    from ada_bench.results import expand_curves

    rows = expand_curves(constructed())
    assert tables.present_methods(rows) == [
        "lower", "upper", "upper+dgst", "random", "random+st", "random+st+gba",
        "mmacts:ranking=per_region", "mmacts_paper",
    ]
    shown = [r[0].strip("*") for r in tables.table1(rows, budget=3).rows]
    assert shown == [
        "Lower bound", "Upper bound", "Upper bound + DGST", "Random", "Random + self-training",
        "Random + self-training + GBA", "mmActS (ranking=per_region)", "mmActS (paper protocol)",
    ]
    t1 = tables.table1(rows, budget=3)
    labels = {r[0].strip("*"): r[t1.header.index("Labels")] for r in t1.rows}
    assert labels["Upper bound + DGST"] == "6" and labels["Random + self-training"] == "3"
    assert tables.display_name("mmacts_paper:density_rule=kernel+st") == (
        "mmActS (paper protocol; density_rule=kernel) + self-training"
    )
    assert tables.display_name("upper+xyz") == "Upper bound + xyz"
    curve = tables.budget_table(rows)
    assert "Upper bound + DGST" not in [r[1] for r in curve.rows]  # a bound, not a curve


@pytest.mark.slow
def test_power_compares_every_run_with_random_and_each_addition_with_its_base(
    named: None, tmp_path: Path
) -> None:
    table, _ = power.write_power(constructed(), tmp_path)
    vs_random = {(r[1], r[3]): dict(zip(table.csv_header, r)) for r in table.csv_rows}
    assert {r[2] for r in table.csv_rows} == {"random"}
    assert {m for m, _ in vs_random} == {
        "random+st", "random+st+gba", "mmacts:ranking=per_region", "mmacts_paper"
    }
    assert vs_random[("random+st", "AUBC 1-3")]["diff_mean"] == pytest.approx(5.5)
    assert vs_random[("mmacts_paper", "Dice at 2")]["diff_mean"] == pytest.approx(-1.0)
    gains = power.additions_table(constructed())
    by = {(r[1], r[2], r[3]): dict(zip(gains.csv_header, r)) for r in gains.csv_rows}
    assert set(by) == {
        ("random+st", "random", "Dice at 1"), ("random+st", "random", "Dice at 2"),
        ("random+st", "random", "Dice at 3"), ("random+st", "random", "AUBC 1-3"),
        ("random+st+gba", "random+st", "Dice at 1"), ("random+st+gba", "random+st", "Dice at 2"),
        ("random+st+gba", "random+st", "Dice at 3"), ("random+st+gba", "random+st", "AUBC 1-3"),
        ("random+st+gba", "random", "Dice at 1"), ("random+st+gba", "random", "Dice at 2"),
        ("random+st+gba", "random", "Dice at 3"), ("random+st+gba", "random", "AUBC 1-3"),
        ("upper+dgst", "upper", "Dice (all labels)"),
    }
    st = by[("random+st", "random", "Dice at 2")]
    assert (st["n_seeds"], st["diff_mean"]) == (10, pytest.approx(5.5))
    assert st["p"] == pytest.approx(2 / 2**10)  # every seed gains: exact Wilcoxon
    gba = by[("random+st+gba", "random+st", "AUBC 1-3")]
    assert (gba["diff_mean"], gba["ci_low"], gba["ci_high"]) == (
        pytest.approx(2.0), pytest.approx(2.0), pytest.approx(2.0)
    )
    dgst = by[("upper+dgst", "upper", "Dice (all labels)")]
    assert (dgst["diff_mean"], dgst["run_mean"], dgst["reference_mean"]) == (
        pytest.approx(3.0), pytest.approx(93.0), pytest.approx(90.0)
    )
    md = (tmp_path / "power.md").read_text()
    assert "## Gain of each addition" in md
    assert "| glioma | Upper bound + DGST | Upper bound | Dice (all labels) | 10 |" in md
    assert (tmp_path / "power_additions.csv").read_text().startswith("task,run,reference,measure")


def test_forgetting_table_gives_extra_split_dice_and_change_vs_lower(named: None) -> None:
    from ada_bench.results import expand_curves

    t = forgetting_table(expand_curves(constructed()))
    assert t.header == ["Task", "Method", "Labels", "Source test Dice %", "Source test Δ vs lower"]
    cells = {(r[1], r[2]): r for r in t.rows}
    assert cells[("Lower bound", "0")][3:] == ["80.00 ± 0.00", "–"]
    assert cells[("Upper bound", "6")][3:] == ["70.00 ± 0.00", "-10.00 ± 0.00"]
    assert cells[("Upper bound + DGST", "6")][4] == "-5.00 ± 0.00"
    assert cells[("Random + self-training", "2")][3:] == ["70.00 ± 0.00", "-10.00 ± 0.00"]
    csv = {(r[1], r[2]): dict(zip(t.csv_header, r)) for r in t.csv_rows}
    assert csv[("random", "1")]["source_test_delta_mean"] == pytest.approx(-10.0)
    assert csv[("random", "1")]["source_test_runs"] == 10
    assert forgetting_table([{**r, "extra_splits": {}} for r in constructed()]).rows == []


# ------------------------------------------------------------------ the stride in steps
def test_stride_in_epochs_or_steps_never_both() -> None:
    from lightning_ada.active.callback import ActiveQueryCallback

    default = ActiveQueryCallback()
    assert (default.stride, default.stride_steps) == (5, None)
    steps = ActiveQueryCallback(stride_steps=3)
    assert (steps.stride, steps.stride_steps) == (None, 3)
    with pytest.raises(ValueError, match=r"active.stride=2 .* active.stride_steps=3 .* mutually"):
        ActiveQueryCallback(stride=2, stride_steps=3)
    with pytest.raises(ValueError, match="stride_steps must be >= 1"):
        ActiveQueryCallback(stride_steps=0)


def fake_trainer(max_epochs: int, per_epoch: int, max_steps: int = -1) -> Any:
    loader = list(range(per_epoch))
    return SimpleNamespace(
        max_epochs=max_epochs, max_steps=max_steps, fast_dev_run=False,
        datamodule=SimpleNamespace(train_dataloader=lambda: loader),
        limit_train_batches=1.0, accumulate_grad_batches=1,
    )


def test_step_schedule_that_cannot_spend_the_budget_is_refused() -> None:
    from lightning_ada.errors import ScheduleError
    from lightning_ada.run.schedule import check_step_schedule, steps_in_run

    trainer = fake_trainer(max_epochs=3, per_epoch=2)  # 6 steps
    assert steps_in_run(trainer) == 6
    assert steps_in_run(fake_trainer(3, 2, max_steps=4)) == 4
    assert math.isinf(steps_in_run(fake_trainer(-1, 2)))
    check_step_schedule(trainer, 3, 2, "sequential")  # queries before step 1, after 2 and 4
    check_step_schedule(trainer, 5, 2, "one_off")  # the whole budget before step 1
    with pytest.raises(ScheduleError) as err:
        check_step_schedule(trainer, 5, 2, "sequential")
    text = str(err.value)
    for part in ("active.budget=5", "active.stride_steps=2", "makes 6 steps", "room for 3 queries",
                 "at least 9 optimiser steps", "active.stride_steps=1", "active.budget=3"):
        assert part in text
    with pytest.raises(ScheduleError, match="makes 4 steps"):
        check_step_schedule(fake_trainer(3, 2, max_steps=4), 3, 2, "sequential")


def test_budget_curves_place_queries_by_step() -> None:
    # queries before training (step 0) and after steps 2 and 4; copies after steps 2, 4 and 6
    assert [labels_at([0, 2, 4], s) for s in (2, 4, 6)] == [1, 2, 3]
    steps = snapshot_factory({"active": {"stride": None, "stride_steps": 2}})
    assert (steps.unit, steps.stride_steps, steps.stride) == ("step", 2, None)
    epochs = snapshot_factory({"active": {"stride": 3}})
    assert (epochs.unit, epochs.stride) == ("epoch", 3)
    assert snapshot_factory({"active": {}}).stride == 5  # the callback's default
    with pytest.raises(ValueError, match="not both or neither"):
        StrideSnapshots(stride=1, stride_steps=2)
    from ada_bench.results import expand_curves

    row = {"task": "g", "run": "random", "seed": 0, "fold": 0, "budget": 2,
           "curve": [{"labels": 1, "step": 2, "per_case": []}, {"labels": 2, "step": 4}]}
    assert [(r["budget"], r["curve_step"]) for r in expand_curves([row])] == [(1, 2), (2, 4)]


# ------------------------------------------------------------------ CBICA as the target
CBICA_DIR = REPO / "configs" / "brats18" / "cbica"
SHARED = REPO.parent / "shared" / "data"


def test_cbica_target_folds_and_extra_splits() -> None:
    from ada_bench.tasks import ConfigTask, base_files

    task = ConfigTask("brats18", str(CBICA_DIR))
    assert task.n_folds == 3 and task.modalities == MODS
    tested: list[str] = []
    for k in range(3):
        fold = task.fold(k)
        assert (fold.n_pool, fold.n_test) == (10, 5)
        files = [*base_files(task.folder), task.config_file("random.yaml"), *fold.configs]
        data = compose(files)["data"]
        splits = data["splits"]
        assert set(splits["pool"]) | set(splits["test"]) == {
            c for c in splits["pool"] + splits["test"] if "_CBICA_" in c
        }
        assert not set(splits["pool"]) & set(splits["test"])
        assert sorted(splits["other_institutions"]) == [
            "Brats18_TCIA10_628_1", "Brats18_TCIA10_637_1", "Brats18_TCIA10_639_1",
            "Brats18_TCIA13_623_1",
        ]
        assert data["extra_test_splits"] == ["source_test", "other_institutions"]
        assert data["extra_roots"] == [{"root": "../shared/data/brats18_cbica"}]
        tested += splits["test"]
    assert len(tested) == len(set(tested)) == 15  # every CBICA case tests in exactly one fold
    source = compose([*base_files(task.folder), task.config_file("source.yaml")])["data"]
    assert source["stage"] == "source" and "extra_test_splits" not in source


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED / "brats18_cbica").is_dir(), reason="no shared brats18_cbica")
def test_cbica_target_names_cases_that_exist() -> None:
    """Every id of the CBICA-target configs is a case folder of one of the two roots."""
    from lightning_ada.data.roots import CaseRoot, read_roots

    cases = read_roots(
        [CaseRoot(str(SHARED / "brats18")), CaseRoot(str(SHARED / "brats18_cbica"))], "brats", MODS
    )
    ids = {c.case_id for c in cases}
    assert sum("_CBICA_" in i for i in ids) == 15
    for name in ("random.yaml", "mmacts.yaml", "upper_bound.yaml", "source.yaml",
                 "folds/fold0.yaml", "folds/fold1.yaml", "folds/fold2.yaml"):
        splits = compose([CBICA_DIR / name])["data"]["splits"]
        named = {c for ids_ in splits.values() for c in ids_}
        assert named <= ids, (name, sorted(named - ids))


# ------------------------------------------------------------------ tiny runs end to end
def tiny_loop(
    tmp_path: Path, source_ckpt: Path, runs: list[tuple[str, int | None]], **kw: Any
) -> tuple[Any, list[dict[str, Any]]]:
    """The benchmark loop on 16^3 phantoms (the session's source model, the tiny configs, the
    source test cases scored after every target run); returns the report and the rows."""
    import shutil

    import yaml
    from ada_bench.folds import FoldScheme
    from ada_bench.loop import BenchConfig, BenchmarkLoop
    from ada_bench.results import append_row, read_rows
    from ada_bench.tasks import PhantomTask

    conf = tmp_path / "conf" / "glioma"
    conf.mkdir(parents=True)
    shutil.copy(CONF / "source_tiny.yaml", conf / "source.yaml")
    for name in ("random.yaml", "mmacts.yaml"):
        shutil.copy(CONF / "random_tiny.yaml", conf / name)
    upper = yaml.safe_load((CONF / "random_tiny.yaml").read_text())
    upper["data"]["label_all"], upper["active"] = True, {"budget": 0}
    (conf / "upper_bound.yaml").write_text(yaml.safe_dump(upper))
    # the phantom of tests/conftest.py (same draw), the session's source model for it
    scheme = FoldScheme(n_folds=1, n_pool=6, n_test=2, size=16, n_source=4, n_source_test=2)
    out = tmp_path / "bench"
    append_row(out / "results.jsonl",
               {"task": "glioma", "run": "source", "seed": 0, "checkpoint": str(source_ckpt)})
    task = PhantomTask("glioma", scheme, str(tmp_path / "data"), str(tmp_path / "conf" / "{task}"),
                       target_overrides={"data.extra_test_splits": ["source_test"]})
    cfg = BenchConfig(out=out, tasks=["glioma"], seeds=[0], folds=[0], runs={"glioma": runs},
                      scheme=scheme, task_specs={"glioma": task}, additions_dir=str(ADDITIONS),
                      **kw)
    report = BenchmarkLoop(cfg).run()
    assert not report.failed, read_rows(out / "errors.jsonl")
    return report, [r for r in read_rows(out / "results.jsonl") if r["run"] != "source"]


def dice_by_case(per_case: list[dict[str, Any]]) -> dict[str, tuple[float, ...]]:
    return {c["case_id"]: tuple(c[f"dice_{g}"] for g in REGIONS) for c in per_case}


@pytest.mark.slow
def test_an_addition_reaches_the_run_and_forgetting_is_recorded(
    tmp_path: Path, source_ckpt: Path
) -> None:
    """``random+frozen`` (learning rate 0) tests exactly as the source model does, on the target
    test cases and on the source test cases; ``upper+frozen`` is a budgetless bound."""
    _, rows = tiny_loop(tmp_path, source_ckpt,
                        [("lower", None), ("random+frozen", 2), ("upper+frozen", None)])
    by = {r["run"]: r for r in rows}
    assert set(by) == {"lower", "random+frozen", "upper+frozen"}
    lower, frozen, upper = by["lower"], by["random+frozen"], by["upper+frozen"]
    assert (frozen["budget"], frozen["strategy"], frozen["additions"]) == (2, "random", ["frozen"])
    assert frozen["variant"] and frozen["configs"] == [str(ADDITIONS / "frozen.yaml")]
    assert (upper["budget"], upper["labels"], upper["strategy"]) == (None, 6, "upper")
    saved = yaml_of(Path(frozen["run_dir"]) / "config.yaml")
    assert saved["model"]["lr"] == 0.0 and len(frozen["queried_cases"]) == 2
    assert yaml_of(Path(upper["run_dir"]) / "config.yaml")["model"]["lr"] == 0.0
    # no step moved a weight: every Dice equals the source model's, on both splits
    assert dice_by_case(frozen["per_case"]) == dice_by_case(lower["per_case"])
    source_ids = {f"glioma_srctest_{i:03d}" for i in range(2)}
    for r in rows:
        extra = r["extra_splits"]["source_test"]
        assert {c["case_id"] for c in extra["per_case"]} == source_ids
        assert "dice_mean" in extra["test"]
    assert dice_by_case(frozen["extra_splits"]["source_test"]["per_case"]) == dice_by_case(
        lower["extra_splits"]["source_test"]["per_case"]
    )
    # every labelled case's loss under the final model, next to its query; 2 labels: no verdict
    fit = frozen["label_fit"]
    assert set(fit["losses"]) == set(frozen["queried_cases"]) and fit["suspect"] == []
    assert [q["fit_loss"] for q in frozen["queries"]] == [
        fit["losses"][c] for c in frozen["queried_cases"]
    ]
    assert len(upper["label_fit"]["losses"]) == 6 and "label_fit" not in lower
    table = forgetting_table(rows)
    delta = {r[1]: dict(zip(table.csv_header, r))["source_test_delta_mean"] for r in table.csv_rows}
    assert delta["random+frozen"] == 0.0 and delta["upper+frozen"] == 0.0


def yaml_of(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())


@pytest.mark.slow
def test_stride_in_steps_queries_and_curve_points_by_step(
    tmp_path: Path, source_ckpt: Path
) -> None:
    """3 epochs x 2 steps, a query every 2 steps: queries at steps 0, 2, 4 and the budget curve's
    points after steps 2, 4, 6 with 1, 2, 3 labels; the epoch stride of the config is cleared."""
    _, rows = tiny_loop(tmp_path, source_ckpt, [("random", 3)], curve=True,
                        extra={"active.stride_steps": 2})
    (row,) = rows
    assert [q["step"] for q in row["queries"]] == [0, 2, 4]
    assert [q["epoch"] for q in row["queries"]] == [-1, 0, 1]
    assert [(p["labels"], p["step"]) for p in row["curve"]] == [(1, 2), (2, 4), (3, 6)]
    for p in row["curve"]:
        assert len(p["per_case"]) == 2 and len(p["extra_splits"]["source_test"]["per_case"]) == 2
    saved = yaml_of(Path(row["run_dir"]) / "config.yaml")["active"]
    assert (saved["stride"], saved["stride_steps"]) == (None, 2)


# ------------------------------------------------------------------ suspect labels
def test_suspect_label_rule_on_constructed_losses() -> None:
    from ada_bench.label_check import annotate_queries, suspect_labels, suspect_summary

    assert suspect_labels({"a": 0.2, "b": 0.25, "c": 0.9}) == ["c"]  # 3.9 x the median, +0.68
    assert suspect_labels({"a": 0.2, "b": 0.25, "c": 0.44}) == []  # just under 2 x the median
    assert suspect_labels({"a": 0.2, "b": 0.25, "c": 0.35}) == []  # within 2 x the others
    assert suspect_labels({"a": 0.02, "b": 0.03, "c": 0.09}) == []  # 3.6 x but only +0.065
    assert suspect_labels({"a": 0.1, "c": 0.9}) == []  # 2 labels: nothing to compare with
    assert suspect_labels({"a": 0.2, "b": 0.2, "c": 0.2, "d": 0.2}) == []
    fit = {"losses": {"a": 0.2, "c": 0.9}, "suspect": ["c"]}
    queries = annotate_queries([{"case_id": "a"}, {"case_id": "c"}, {"event": "note"}], fit)
    assert queries == [{"case_id": "a", "fit_loss": 0.2, "suspect_label": False},
                       {"case_id": "c", "fit_loss": 0.9, "suspect_label": True}, {"event": "note"}]
    rows = [
        {"task": "brats18", "run": r, "fold": f, "seed": 0, "run_dir": f"{r}{f}",
         "label_fit": {"losses": {"x": 1.0, "y": 0.1, "z": 0.1}, "suspect": s}}
        for r, f, s in (("random", 0, ["x"]), ("upper", 0, []), ("random", 1, ["x"]))
    ]
    text = suspect_summary(rows + rows[:1])  # a budget curve's copies count once
    assert "- brats18 x: flagged in 2 of the 3 runs that labelled it (random)" in text
    assert suspect_summary([{"task": "g", "run": "lower"}]) == ""


@pytest.mark.slow
def test_label_losses_use_the_delivered_annotation(phantom_root: Path, source_ckpt: Path) -> None:
    """The loss of a case is measured against the mask the oracle delivered: another case's
    mask delivered for it (a wrong annotation) changes its loss and no other."""
    from ada_bench.label_check import label_losses

    from lightning_ada.data.datamodule import ActiveDataModule
    from lightning_ada.models.module import SegmentationModule

    model = SegmentationModule(filters=[4, 8, 16], roi_size=[16, 16, 16],
                               source_checkpoint=str(source_ckpt))

    def losses(wrong: bool) -> dict[str, float]:
        dm = ActiveDataModule(root=str(phantom_root), divisible_by=4)
        dm.setup("fit")
        a, b, c = dm.pool.case_ids[:3]
        for cid in (a, b, c):
            delivered = dm.cases[b if wrong and cid == a else cid].label
            dm.label(cid, delivered, None, round=0, epoch=-1)
        return label_losses(model, dm)

    right, wrong = losses(False), losses(True)
    assert len(right) == 3 and all(math.isfinite(v) and v > 0 for v in right.values())
    a, b, c = list(right)
    assert wrong[a] != pytest.approx(right[a], rel=1e-3)
    assert (wrong[b], wrong[c]) == (pytest.approx(right[b]), pytest.approx(right[c]))
    source = ActiveDataModule(root=str(phantom_root), divisible_by=4, stage="source")
    source.setup("fit")
    assert label_losses(model, source) == {}  # only target runs are checked
