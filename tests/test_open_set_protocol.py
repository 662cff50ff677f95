"""The open-set protocol (scripts/protocols.py open_set): purity table on constructed results and a
tiny run end to end with and without the prototype filter."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Any

import protocols  # scripts/protocols.py (tests/conftest.py puts scripts/ on the path)
import pytest
from ada_bench.open_set_protocol import group_name, open_set_groups, open_set_table, query_flags
from ada_bench.results import read_rows

REPO = Path(__file__).resolve().parents[1]
CONF = Path(__file__).parent / "conf"
REGIONS = ["ET", "NCR", "ED"]


def row(seed: int, fold: int, run: str, flags: list[str | None], dice: float) -> dict[str, Any]:
    return {
        "task": "glioma", "seed": seed, "fold": fold, "run": run,
        "budget": None if run == "lower" else 3,
        "queries": [{"case_id": f"c{i}", "case_meta": {"ood": f}} for i, f in enumerate(flags)],
        "per_case": [{"case_id": "t0", **{f"dice_{g}": dice for g in REGIONS}}],
    }


def test_purity_and_dice_per_group() -> None:
    groups = ["ood20", "ood20_filter"]
    rows = [
        row(0, 0, "random", [None, "no_tumour", "corrupted"], 0.5),
        row(1, 0, "random", [None, None, "no_tumour"], 0.7),
        row(0, 1, "random", [None, None, None], 0.6),
        row(1, 1, "random", [None, None, "channel_order"], 0.8),
        row(0, 0, "lower", [], 0.3),
        row(0, 1, "lower", [], 0.3),
    ]
    table = open_set_table(rows, groups)
    got = {(r[1], r[2]): r for r in table.csv_rows}
    plain, filt = got[(0, "random")], got[(1, "random")]
    assert plain[5] == pytest.approx(statistics.fmean([1 / 3, 2 / 3]))
    assert plain[6] == pytest.approx(statistics.stdev([1 / 3, 2 / 3]))
    assert (plain[7], plain[8]) == (3, 6) and plain[9] == "corrupted 1, no_tumour 2"
    assert plain[10] == pytest.approx(0.6) and filt[10] == pytest.approx(0.7)
    assert filt[5] == pytest.approx(statistics.fmean([1.0, 2 / 3])) and filt[7] == 1
    assert (0, "lower") in got and (1, "lower") not in got  # the source model: shown once
    assert group_name(0.4, True) == "ood40_filter" and query_flags(rows[0])[1] == "no_tumour"
    # a query-log event (no case) is not a query
    event = {**rows[0], "queries": [*rows[0]["queries"], {"event": "nothing_to_train"}]}
    assert query_flags(event) == query_flags(rows[0])


def test_result_rows_keep_log_events_apart_from_queries() -> None:
    from ada_bench.loop import make_row

    log = [{"round": 0, "epoch": -1, "case_id": "c0", "case_meta": {"ood": "no_tumour"}},
           {"event": "nothing_to_train", "refused": ["c0"]}]
    r = make_row("glioma", "random", 0, {"query_log": log}, fold=0, budget=1)
    assert r["queried_cases"] == ["c0"] and len(r["queries"]) == 1
    assert r["events"] == [{"event": "nothing_to_train", "refused": ["c0"]}]


def test_groups_point_at_one_open_set_phantom_per_share() -> None:
    base = {"data.root": "data/x", "data.phantom": {"task": "glioma", "seed": 1}}
    groups = open_set_groups(base, [0.2, 0.4])
    assert [g.name for g in groups] == ["ood20", "ood20_filter", "ood40", "ood40_filter"]
    roots = [g.overrides["data.root"] for g in groups]
    assert roots[0] == roots[1] != roots[2] == roots[3] and roots[0].startswith("data/x_ood20")
    assert groups[2].overrides["data.phantom"] == {"task": "glioma", "seed": 1,
                                                   "open_set": {"fraction": 0.4}}
    assert "active.open_set_filter" in groups[3].overrides
    assert "active.open_set_filter" not in groups[2].overrides
    with pytest.raises(ValueError):
        open_set_groups(base, [1.0])


@pytest.mark.slow
def test_tiny_open_set_protocol_end_to_end(tmp_path: Path) -> None:
    mod = protocols
    conf = tmp_path / "conf" / "glioma"
    conf.mkdir(parents=True)
    shutil.copy(CONF / "source_tiny.yaml", conf / "source.yaml")
    shutil.copy(CONF / "random_tiny.yaml", conf / "target.yaml")
    out = tmp_path / "out"
    argv = ["open_set", "--quick", "--seeds", "0", "--strategies", "random", "--ood", "0.5",
            "--budget", "2", "--config-dir", str(conf.parent / "{task}"), "--data-base",
            str(tmp_path / "data"), "--out", str(out)]
    assert mod.main(argv) == 0, read_rows(out / "errors.jsonl")
    rows = read_rows(out / "results.jsonl")
    made = sorted((r["run"], r["fold"]) for r in rows if r["run"] != "source")
    assert made == [("lower", 0), ("lower", 1), ("random", 0), ("random", 1)]
    # the source model is trained once, on the plain phantom; the targets on the open-set one
    folders = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert len(folders) == 2 and folders[1].startswith(folders[0] + "_ood50")
    data = json.loads((tmp_path / "data" / folders[1] / "dataset.json").read_text())
    pool = [c for c in data["cases"] if c["split"] == "pool"]
    assert sum(c["meta"]["ood"] is not None for c in pool) == len(pool) // 2
    for r in (r for r in rows if r["run"] == "random"):
        assert len(r["queries"]) == 2
        flags = query_flags(r)
        assert all(f == next(c["meta"]["ood"] for c in pool if c["case_id"] == q["case_id"])
                   for f, q in zip(flags, r["queries"]))
    csv = (out / "open_set.csv").read_text().splitlines()
    header = csv[0].split(",")
    lines = [dict(zip(header, line.split(","))) for line in csv[1:]]
    rnd = {int(x["filter"]): x for x in lines if x["method"] == "random"}
    for f, x in rnd.items():
        r = next(r for r in rows if r["run"] == "random" and r["fold"] == f)
        flags = query_flags(r)
        assert float(x["purity_mean"]) == pytest.approx(sum(q is None for q in flags) / len(flags))
    assert "Open-set pools" in (out / "summary.md").read_text()
