"""The committed benchmark tables say what their data are.

Each test reads a generated file under ``benchmarks/`` and the ``results.jsonl`` it was made from:
the caption states the data's setting (real or phantom, folds x seeds, labels, how each method
was tested), each row its n and seeds, a baseline that is not of the row's schedule is flagged,
no caption names a method that did not run, and where the harness can remake the file from the
committed results (no run folder needed), it remakes it byte for byte.
"""

from __future__ import annotations

import csv
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from ada_bench.loop import last_rows
from ada_bench.results import normalise, read_rows

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
CBICA = BENCH / "brats18_cbica"
CENTRES = BENCH / "centres"
#: the first power tables (seeds 0-9, post hoc primary table), archived with their note
POWER = BENCH / "archive" / "power_seeds_0-9"


def table_rows(path: Path) -> list[dict[str, str]]:
    """The rows of the first markdown table of ``path``, keyed by its header."""
    lines = [x for x in path.read_text().splitlines() if x.startswith("|")]
    cells = [[c.strip() for c in x.strip().strip("|").split("|")] for x in lines]
    header, body = cells[0], [c for c in cells[2:] if len(c) == len(cells[0])]
    return [dict(zip(header, c)) for c in body]


def notes(path: Path) -> str:
    """The text of ``path`` outside its tables."""
    return "\n".join(x for x in path.read_text().splitlines() if not x.startswith("|"))


def protocols_module() -> Any:
    sys.path.insert(0, str(ROOT / "scripts"))
    import protocols

    return protocols


# ---------------------------------------------------------------------------------- centres
def test_centre_CBICA_caption_comes_from_its_data(tmp_path: Path) -> None:
    """Real scans, 3 labels, folds x seeds pooled, every run tested once at the end: not the
    phantom protocol's caption (a 20 % budget, a phantom draw, a test after each stride)."""
    rows = [normalise(r) for r in read_rows(CBICA / "results.jsonl") if r["run"] != "source"]
    folds, seeds = {r["fold"] for r in rows}, {r["seed"] for r in rows}
    labels = sorted({r["budget"] for r in rows if r["method"] not in ("lower", "upper")})
    n_test = {r["n_test"] for r in rows}
    assert not any(r.get("curve") for r in rows) and labels == [3] and n_test == {5}
    text = notes(CBICA / "centre_CBICA.md")
    for phantom_words in ("20 %", "phantom", "stride", "draw"):
        assert phantom_words not in text, phantom_words
    assert (f"Real scans, folds pooled: {len(folds)} folds x {len(seeds)} seeds = "
            f"{len(folds) * len(seeds)} runs per method, 5 CBICA test cases") in text
    assert "(3 labels), tested once at the end of its schedule" in text
    assert "over the test cases of every fold and seed" in text
    for row in table_rows(CBICA / "centre_CBICA.md"):
        assert row["seeds"] == str(len(seeds)) and row["n"] == str(5 * len(folds) * len(seeds))
        assert row["budget"] == ("–" if row["method"].endswith("bound") else "3")
    # the harness remakes it from the committed results
    out = tmp_path / "cbica"
    out.mkdir()
    shutil.copy(CBICA / "results.jsonl", out / "results.jsonl")
    protocols_module().real_centre_summary(out, "CBICA", None)
    assert (out / "centre_CBICA.md").read_text() == (CBICA / "centre_CBICA.md").read_text()


def test_centres_rows_give_their_seeds_and_n_and_the_20_percent_row_once() -> None:
    """Centre D: random and mmActS ran for 1 seed (8 cases), the bounds for 3 (23 cases); its
    20 % of a pool of 5 is 1 label, the budget-1 row, shown once; C's 20 % (1 or 2 labels by
    seed) is a row of its own."""
    from ada_bench.centres import SHARE_ROW, group_table

    rows = [r for r in last_rows(CENTRES / "results.jsonl") if r["task"] == "glioma"]
    norm = [normalise(r) for r in rows if r["run"] != "source"]
    groups = ["B", "C", "D"]
    shown = table_rows(CENTRES / "centres.md")
    for row in shown:
        fold = groups.index(row["centre"])
        method = {"Lower bound": "lower", "Upper bound": "upper"}.get(row["method"],
                                                                      row["method"].lower())
        seeds = {r["seed"] for r in norm if r["fold"] == fold and r["method"] == method}
        assert row["seeds"] == str(len(seeds)), row
    seen = [(r["centre"], r["method"], *(v for k, v in r.items() if "median" in k or "Δ" in k))
            for r in shown]
    assert len(seen) == len(set(seen)), "a row repeats another"
    d = {(r["method"], r["budget"]): r for r in shown if r["centre"] == "D"}
    assert (d[("Random", "1 (= 20 %)")]["seeds"], d[("Random", "1 (= 20 %)")]["n"]) == ("1", "8")
    assert (d[("Upper bound", "–")]["seeds"], d[("Upper bound", "–")]["n"]) == ("3", "23")
    assert ("C", "Random", SHARE_ROW) in {(r["centre"], r["method"], r["budget"]) for r in shown}
    text = notes(CENTRES / "centres.md")
    assert ("D Random, mmActS: seed 1 only, no run for seeds 0, 2: the pool has 4 cases there, "
            "fewer than the budget 5 the run was planned at") in text
    assert "'k (= 20 %)' (B: 4, D: 1)" in text
    # the CSV keeps every budget's row, the 20 % one included
    with open(CENTRES / "centres.csv") as f:
        table = list(csv.DictReader(f))
    assert {(r["centre"], r["budget"]) for r in table if r["method"] == "random"} >= {
        ("D", SHARE_ROW), ("D", "1")}
    assert {r["seeds"] for r in table if r["centre"] == "D" and r["method"] == "random"} == {"1"}
    # the harness remakes the file from the committed results
    table_ = group_table(rows, groups, "One adaptation per centre", "centre")
    assert table_.markdown() == (CENTRES / "centres.md").read_text()


# ---------------------------------------------------------------------------------- CBICA
def cbica_methods() -> set[str]:
    return {normalise(r)["method"] for r in read_rows(CBICA / "results.jsonl")}


def test_cbica_tables_name_only_the_methods_that_ran(tmp_path: Path) -> None:
    """mmActS did not run on CBICA: no table of the folder names it; the empty ablations say
    they are empty. The harness remakes every table from the committed results."""
    from ada_bench.report import write_report
    from ada_bench.tables import display_name

    from lightning_ada.active.strategies import REGISTRY

    ran = cbica_methods()
    assert "mmacts" not in ran
    absent = {display_name(m) for m in REGISTRY if m not in ran}
    names = ("table1", "table1_distances", "table2", "ablation_schedule", "all_runs", "paired",
             "budget_curve", "forgetting", "centre_CBICA")
    for name in names:
        text = (CBICA / f"{name}.md").read_text()
        said = {a for a in absent if re.search(rf"(?<![\w-]){re.escape(a)}(?![\w-])", text)}
        assert not said, f"{name}.md names {said}, which did not run"
    assert (CBICA / "table2.md").read_text().startswith(
        "## Table 2: modality ablation at budget 3: no runs in this benchmark")
    assert (CBICA / "ablation_schedule.md").read_text().startswith(
        "## Ablation: one-off vs sequential querying at budget 3: no runs in this benchmark")
    out = tmp_path / "cbica"
    out.mkdir()
    shutil.copy(CBICA / "results.jsonl", out / "results.jsonl")
    write_report(out, ())
    for name in names[:-1]:
        assert (out / f"{name}.md").read_text() == (CBICA / f"{name}.md").read_text(), name


def test_cbica_paired_table_says_which_baseline_each_row_uses() -> None:
    """UGTST queries its whole budget at once and no one-off random ran: its row's baseline,
    sequential random, is flagged; the sequential rules' rows are schedule-matched."""
    rows = [normalise(r) for r in read_rows(CBICA / "results.jsonl")]
    schedule = {r["method"]: r.get("schedule") for r in rows if r.get("schedule")}
    shown = table_rows(CBICA / "paired.md")
    by_name = {"UGTST (MICCAI'24)": "ugtst", "ProbCover (coverage)": "coverage",
               "MaxHerding (soft coverage)": "maxherding"}
    assert {r["Strategy"] for r in shown} == set(by_name)
    for row in shown:
        method, base = by_name[row["Strategy"]], row["Baseline"].removesuffix(" †")
        assert base == "Random"
        assert row["Baseline"].endswith("†") == (schedule[method] != schedule["random"]), row
    text = notes(CBICA / "paired.md")
    assert "(the baseline of the same schedule where one ran, † where not)" in text
    assert ("Baseline of each row, of the same query schedule: Random for ProbCover (coverage), "
            "MaxHerding (soft coverage).") in text
    assert ("† Not the same schedule: UGTST (MICCAI'24) queried the whole budget at once "
            "(one-off) but no Random (one-off) ran") in text
    assert "the baseline of the same schedule)" not in text
    assert "Wilcoxon p: not adjusted for multiplicity" in text


# ---------------------------------------------------------------------------------- power
@pytest.fixture(scope="module")
def power_rows() -> list[dict[str, Any]]:
    return read_rows(POWER / "results.jsonl")


def test_power_md_opens_with_the_declared_primary_table(power_rows: list[dict[str, Any]]) -> None:
    """The published protocol is the one the tables used; the primary table's Holm p are Holm over its own
    Wilcoxon p; its rows are the AUBC rows of the secondary table; the runs started before any
    recorded declaration, so the table says post hoc, with the count of its runs."""
    from ada_bench import endpoint, stats

    # the protocol the folder's tables were built with, published beside them (the live config
    # may since have been declared anew for other runs)
    assert (POWER / "protocol.yaml").is_file()
    protocol = endpoint.load_protocol(POWER / "protocol.yaml")
    md = (POWER / "power.md").read_text()
    headings = [x for x in md.splitlines() if x.startswith("## ")]
    assert headings[0].startswith("## Primary endpoint (post hoc: declared after the runs): "
                                  "AUBC 1-5")
    assert all(h.startswith("## Secondary / exploratory (unadjusted p): ")
               for h in headings[1:-1])
    assert f"SHA-256 `{protocol.sha256[:12]}…`" in md
    assert "[pairwise penalty matrix](power_penalty.md)" in md
    with open(POWER / "power_primary.csv") as f:
        primary = list(csv.DictReader(f))
    with open(POWER / "power.csv") as f:
        secondary = {(r["task"], r["strategy"], r["measure"]): r for r in csv.DictReader(f)}
    assert len(primary) == len(protocol.methods) * len(protocol.tasks)
    adjusted = stats.holm({i: float(r["p"]) for i, r in enumerate(primary)})
    for i, r in enumerate(primary):
        assert float(r["p_holm"]) == adjusted[i]
        assert int(r["rejected"]) == (adjusted[i] <= protocol.alpha)
        same = secondary[(r["task"], r["strategy"], r["measure"])]
        for col in ("baseline", "diff_mean", "ci_low", "ci_high", "p", "mdd"):
            assert r[col] == same[col], (r["strategy"], col)
    decl = endpoint.declaration(power_rows, protocol, POWER)
    assert decl.recorded is None and decl.before == decl.runs
    assert f"the {decl.runs} runs of this table ran between {decl.first} and {decl.last}" in md


def test_power_figures_are_embedded_with_captions_from_the_data(
    power_rows: list[dict[str, Any]]
) -> None:
    from ada_bench.results import expand_curves
    from ada_bench.stats import bound_point

    rows = [normalise(r) for r in expand_curves(power_rows) if r["run"] != "source"]
    md = (POWER / "power.md").read_text()
    pngs = sorted(p.name for p in POWER.glob("power_curve_*.png"))
    assert pngs == ["power_curve_additions_glioma.png", "power_curve_additions_npc.png",
                    "power_curve_glioma.png", "power_curve_npc.png"]
    for name in pngs:
        task = name.removesuffix(".png").rsplit("_", 1)[1]
        m = re.search(rf"!\[[^\]]*\]\({re.escape(name)}\)\n\n(\*\*[^\n]+)", md)
        assert m, name
        caption = m.group(1)
        seeds = len({r["seed"] for r in rows if r["task"] == task})
        low, up = (bound_point(rows, task, b) for b in ("lower", "upper"))
        assert caption.startswith(f"**{task}: ") and f" over {seeds} seeds " in caption
        assert f"0 labels: mean Dice {100 * low[0]:.1f} %" in caption
        assert f"labelled: mean Dice {100 * up[0]:.1f} %" in caption
        assert "95 % bootstrap CI (BCa) of the mean over seeds" in caption
    # the README block links the figures where power.md embeds them, not a second time
    readme = (POWER / "README.md").read_text()
    assert all(readme.count(f"]({name})") == 1 for name in pngs)
