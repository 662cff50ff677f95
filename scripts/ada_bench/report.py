"""Everything written from ``results.jsonl``: tables, plots, figures of the picks, W&B report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ada_bench.equal_cost import equal_cost_report, has_unit_runs
from ada_bench.forgetting import forgetting_table
from ada_bench.label_check import suspect_summary
from ada_bench.loop import last_rows
from ada_bench.names import folder_name
from ada_bench.overhead import overhead_table
from ada_bench.plots import box_plot, budget_curve, queried_cases
from ada_bench.protocol import HEADLINE_BUDGET
from ada_bench.results import expand_curves
from ada_bench.summary import picks_summary
from ada_bench.tables import display_name, tasks_of, write_tables
from ada_bench.wandb_io import WandbSettings, log_report


def queried_figures(
    rows: Sequence[dict[str, Any]], out: Path, methods: Sequence[str], budget: int = HEADLINE_BUDGET
) -> list[Path]:
    """One figure of the picks per task and method, from its first run (lowest fold, seed)."""
    from ada_bench.queried import load_queried_cases

    paths = []
    for task in tasks_of(rows):
        for method in methods:
            sel = sorted(
                (
                    r
                    for r in rows
                    if r["task"] == task
                    and r["method"] == method
                    and r["budget"] == budget
                    and r["train_input"] == "all"
                    and r.get("queries")
                ),
                key=lambda r: (r["fold"], r["seed"], r["run"]),
            )
            if not sel:
                continue
            r = sel[0]
            try:
                cases, mods = load_queried_cases(r)
            except (OSError, ValueError, KeyError, RuntimeError) as e:
                print(f"no figure of {task} {r['run']}: {type(e).__name__}: {e}")
                continue
            run, fold, seed = folder_name(r["run"]), r["fold"], r["seed"]
            path = out / f"queried_{task}_{run}_b{budget}_f{fold}_s{seed}.png"
            title = (
                f"{task}: {display_name(method)}, budget {budget}, fold {fold}, seed {seed}"
            )
            paths.append(queried_cases(path, cases, mods, title))
    return paths


def paired_runs(rows: Sequence[Mapping[str, Any]], baseline: str = "random") -> bool:
    """Whether ``baseline`` has at least two ``(fold, seed)`` runs of one task and budget (what
    a paired table over runs needs)."""
    units: dict[tuple[Any, Any], set[tuple[Any, Any]]] = {}
    for r in rows:
        if r.get("strategy") == baseline and r.get("run") == baseline:
            units.setdefault((r["task"], r.get("budget")), set()).add((r.get("fold"), r["seed"]))
    return any(len(u) >= 2 for u in units.values())


def write_report(
    out: str | Path,
    figure_methods: Sequence[str] = ("mmacts",),
    wandb: WandbSettings | None = None,
    budget: int = HEADLINE_BUDGET,
    protocol: Any = None,
    equal_cost_protocol: Any = None,
) -> str:
    """Write the tables (``*.md``, ``*.csv``), plots (``*.png``) and ``summary.md`` into ``out``.

    Args:
        out: the results folder (holding ``results.jsonl``).
        figure_methods: methods whose picks are drawn (needs their checkpoints); empty: none.
        wandb: also log the tables and figures to one W&B ``summary`` run.
        budget: the headline budget (Table 1, box plot, figures).
        protocol: the declared primary comparison of a power report
            (:class:`ada_bench.endpoint.Protocol`; :mod:`ada_bench.power`), None: no primary
            table.
        equal_cost_protocol: the declared primary comparison at equal annotation cost
            (``configs/power/protocol_equal_cost.yaml``), None: no primary table there. The
            equal-cost report (:mod:`ada_bench.equal_cost`: ``equal_cost*.md/.csv/.png``) is
            written whenever runs with an annotation unit are present, paired over seeds with
            budget curves (the power profile), else over ``(fold, seed)`` runs.

    Returns:
        The text of ``summary.md``.
    """
    out = Path(out)
    rows = [r for r in last_rows(out / "results.jsonl") if r["run"] != "source"]
    curves = any(r.get("curve") for r in rows)
    rows = expand_curves(rows)  # a sequential run's curve: one row per budget
    tables = write_tables(rows, out)
    overhead = overhead_table(rows)
    kept = out / "query_overhead.md"
    if overhead.rows or not kept.is_file() or not any(r.get("queries") for r in rows):
        overhead.write(out, "query_overhead")
        overhead_text = overhead.markdown()
        tables["query_overhead"] = overhead
    else:  # the run folders (their config.yaml) are gone: keep the table made when they were
        print(f"{kept}: kept (the run folders with each run's config.yaml are not there)")
        overhead_text = kept.read_text()
    forgetting = forgetting_table(rows)
    if forgetting.rows:  # runs that scored extra test splits (source test, other institutions)
        tables["forgetting"] = forgetting
        forgetting.write(out, "forgetting")
    images: list[Path] = []
    for task in tasks_of(rows):
        for p in (
            budget_curve(rows, task, out / f"budget_curve_{task}.png"),
            box_plot(rows, task, out / f"boxplot_{task}_b{budget}.png", budget=budget),
        ):
            if p is not None:
                images.append(p)
    if figure_methods:
        images += queried_figures(rows, out, figure_methods, budget)
    power = []
    if curves:  # the power profile (sequential runs with a budget curve)
        from ada_bench.power import power_report

        made = power_report(rows, out, protocol=protocol)
        tables["power"] = made.table
        if made.primary is not None:
            tables["power_primary"] = made.primary
        images += made.figures
        power = [made.markdown]
    elif paired_runs(rows):  # several folds x seeds per budget: paired over (fold, seed) runs
        from ada_bench.power import additions_table, power_table

        tables["paired"] = power_table(rows, pair_by="run")
        tables["paired"].notes.append(
            "Wilcoxon p: not adjusted for multiplicity (no primary endpoint was declared for this "
            "benchmark; scripts/ada_bench/endpoint.py)."
        )
        gains = additions_table(rows, pair_by="run")
        if gains.rows:
            tables["paired_additions"] = gains
            gains.write(out, "paired_additions")
            tables["paired"].notes = [*tables["paired"].notes, "", gains.markdown()]
        tables["paired"].write(out, "paired")
        power = [tables["paired"].markdown()]
    equal = []
    if has_unit_runs(rows):  # runs with an annotation unit: the comparison at equal cost
        made_ec = equal_cost_report(rows, out, "seed" if curves else "run", equal_cost_protocol)
        tables["equal_cost"] = made_ec.table
        if made_ec.primary is not None:
            tables["equal_cost_primary"] = made_ec.primary
        images += made_ec.figures
        equal = [made_ec.markdown]
    text = "\n".join(
        [
            f"# Benchmark results ({len(rows)} runs)",
            "",
            *power,
            *equal,
            tables["table1"].markdown(),
            tables["table1_distances"].markdown(),
            tables["table2"].markdown(),
            tables["ablation_schedule"].markdown(),
            tables["budget_curve"].markdown(),
            *([tables["forgetting"].markdown()] if "forgetting" in tables else []),
            overhead_text,
            picks_summary(rows),
            suspect_summary(rows),
            "Files: "
            + ", ".join(sorted(f"{n}.md/.csv" for n in {*tables, "query_overhead"}))
            + ", "
            + ", ".join(p.name for p in images),
            "",
        ]
    )
    (out / "summary.md").write_text(text)
    if wandb is not None:
        info = log_report(wandb, out / "wandb_report", tables, images)
        if info:
            print(f"W&B report run {info['id']} in {info['dir']}")
    return text
