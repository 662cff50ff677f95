"""The per-group protocols (scripts/protocols.py): per-centre and per-rater tables on constructed
results with known answers, the centre groups, and a tiny per-rater run end to end."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import protocols  # scripts/protocols.py (tests/conftest.py puts scripts/ on the path)
import pytest
from ada_bench.centres import SHARE_ROW, Group, GroupTask, centre_groups, group_table, share_budget
from ada_bench.folds import FoldScheme
from ada_bench.results import read_rows
from scipy.stats import wilcoxon

REPO = Path(__file__).resolve().parents[1]
CONF = Path(__file__).parent / "conf"
REGIONS = ["ET", "NCR", "ED"]


def tiny_configs(folder: Path) -> Path:
    """configs/power/glioma/ in miniature: source.yaml and target.yaml from the tiny configs."""
    task = folder / "glioma"
    task.mkdir(parents=True)
    shutil.copy(CONF / "source_tiny.yaml", task / "source.yaml")
    shutil.copy(CONF / "random_tiny.yaml", task / "target.yaml")
    return folder


def per_case(values: list[float], hd: float = 5.0) -> list[dict[str, Any]]:
    return [{"case_id": f"glioma_test_{i:03d}", **{f"dice_{g}": v for g in REGIONS},
             **{f"hd95_{g}": hd + i for g in REGIONS}} for i, v in enumerate(values)]


def constructed() -> list[dict[str, Any]]:
    """2 groups x 2 seeds, 4 test cases. Upper: 0.8 everywhere; random (a curve run over pools
    of 10 in group 0, 20 in group 1): 0.4 + 0.05 k + 0.01 i at k labels for case i."""
    rows = []
    for s in (0, 1):
        for fold, n_pool in ((0, 10), (1, 20)):
            base = {"task": "glioma", "seed": s, "fold": fold, "n_pool": n_pool, "n_test": 4}
            rows.append({**base, "run": "upper", "per_case": per_case([0.8] * 4, hd=2.0)})
            curve = [{"labels": k, "epoch": k, "per_case": per_case(
                [0.4 + 0.05 * k + 0.01 * i for i in range(4)])} for k in range(1, 6)]
            rows.append({**base, "run": "random", "budget": 5, "per_case": [], "curve": curve})
    return rows


def test_group_table_medians_and_paired_differences() -> None:
    table = group_table(constructed(), ["B", "C"], "t", "centre")
    rows = {(r[0], r[1], r[2]): r for r in table.csv_rows}
    # 20 % of 10 is 2 labels in group B, of 20 is 4 labels in group C
    assert share_budget(10) == 2 and share_budget(20) == 4 and share_budget(2) == 1
    for group, k in (("B", 2), ("C", 4)):
        share, at_k = rows[(group, "random", SHARE_ROW)], rows[(group, "random", str(k))]
        assert share[3] == str(k) and share[4:] == at_k[4:]
        values = [0.4 + 0.05 * k + 0.01 * i for i in range(4)] * 2  # both seeds
        assert share[5] == pytest.approx(statistics.median(values))
        assert share[6] == pytest.approx(float(np.percentile(values, 25)))
        diffs = [v - 0.8 for v in values]
        assert share[11] == pytest.approx(statistics.fmean(diffs))
        assert share[12] <= share[11] <= share[13]
        assert share[14] == pytest.approx(wilcoxon(diffs).pvalue)
        assert share[8] == pytest.approx(statistics.median([5.0, 6.0, 7.0, 8.0]))
        assert share[15] == pytest.approx(3.0)  # HD95 5+i vs 2+i
        up = rows[(group, "upper", "upper")]
        assert up[5] == pytest.approx(0.8) and math.isnan(up[11])
    assert {r[2] for r in table.csv_rows if r[1] == "random"} == {SHARE_ROW, "1", "2", "3", "4",
                                                                  "5"}
    assert any("not that the two models are equivalent" in n for n in table.notes)


def test_centre_groups_follow_the_generator(tmp_path: Path) -> None:
    from lightning_ada.phantom.simulator import generate_phantom, load_phantom

    scheme = FoldScheme(n_folds=1, n_pool=12, n_test=8, size=16, n_source=1, n_source_test=0)
    task = GroupTask("glioma", scheme, str(tmp_path), str(tiny_configs(tmp_path / "c") / "{task}"),
                     target_config="target.yaml")
    groups = centre_groups(task, 3)
    assert [g.name for g in groups] == ["B", "C", "D"]
    phantom = generate_phantom(tmp_path / "p", **scheme.phantom("glioma", 3))
    centre = {c.case_id: c.meta["centre"] for c in load_phantom(phantom)}
    for g in groups:
        assert g.splits["pool"] and g.splits["test"]
        assert all(centre[cid] == g.name for split in g.splits.values() for cid in split)
    assert sorted(i for g in groups for i in g.splits["pool"]) == sorted(
        scheme.splits("glioma", 0)["pool"])
    fold = replace(task, groups=tuple(groups)).fold(1)
    assert fold.overrides["data.splits"] == {k: list(v) for k, v in groups[1].splits.items()}
    assert fold.n_pool == len(groups[1].splits["pool"])
    with pytest.raises(ValueError, match="centre"):
        centre_groups(GroupTask("glioma", FoldScheme(n_folds=1, n_pool=2, n_test=1, size=16),
                                str(tmp_path), task.config_dir, target_config="target.yaml"), 3)
    assert Group("x").splits is None


def test_centres_dry_run_plans_every_centre(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mod = protocols
    conf = tiny_configs(tmp_path / "conf")
    code = mod.main(["centres", "--quick", "--dry-run", "--seeds", "0", "--strategies", "random",
                     "--config-dir", str(conf / "{task}"), "--data-base", str(tmp_path / "d"),
                     "--out", str(tmp_path / "out")])
    text = capsys.readouterr().out
    assert code == 0
    for fold in range(3):
        assert f"fold {fold}" in text
    assert text.count("would run:") == 1 + 3 * 3  # source, then lower / upper / random per centre


@pytest.mark.slow
def test_tiny_rater_protocol_end_to_end(tmp_path: Path) -> None:
    """2 raters x (lower, upper, random's curve) on a 16^3 phantom: the runs read the rater's
    labels, the per-case rows hold the revision measures, the ceiling is the raters' Dice."""
    from lightning_ada.phantom.raters import inter_rater_dice

    mod = protocols
    conf = tiny_configs(tmp_path / "conf")
    raters = [{"name": "wide", "margin": 1, "metric": "chessboard"},
              {"name": "core", "omit_labels": [2]}]
    out = tmp_path / "out"
    argv = ["raters", "--quick", "--seeds", "0", "--strategies", "random", "--raters",
            json.dumps(raters), "--config-dir", str(conf / "{task}"), "--data-base",
            str(tmp_path / "data"), "--out", str(out)]
    assert mod.main(argv) == 0, read_rows(out / "errors.jsonl")
    rows = read_rows(out / "results.jsonl")
    groups = json.loads((out / "groups.json").read_text())["groups"]
    assert groups == ["wide", "core"]
    made = sorted((r["run"], r["fold"]) for r in rows if r["run"] != "source")
    assert made == sorted((run, f) for run in ("lower", "upper", "random") for f in (0, 1))
    for r in rows:
        if r["run"] == "random":  # the oracle delivered the group's rater's masks
            assert r["queries"] and all(
                q["case_meta"]["rater"] == groups[r["fold"]] for q in r["queries"])
        if r["run"] == "source":
            continue
        for c in [*r["per_case"], *(c for p in r.get("curve", []) for c in p["per_case"])]:
            assert 0.0 <= c["revision_surface_WT"] <= 1.0 and 0.0 <= c["dice_WT"] <= 1.0
            assert c["revision_volume_WT"] >= 0.0 or math.isnan(c["revision_volume_WT"])
    # core's references have no oedema: a model that predicts it is revised more there
    ceiling = json.loads((out / "inter_rater.json").read_text())["0"]
    root = next(p for p in (tmp_path / "data").iterdir() if "raters2" in p.name)
    data = json.loads((root / "dataset.json").read_text())
    test = [c for c in data["cases"] if c["split"] == "test"]
    direct = [inter_rater_dice({k: np.asarray(nib.load(root / p).dataobj)
                                for k, p in c["meta"]["rater_labels"].items()})["core|wide"]
              for c in test]
    assert ceiling["pairs"]["core|wide"] == pytest.approx(statistics.fmean(direct))
    assert ceiling["per_rater"]["wide"] == ceiling["per_rater"]["core"] < 1.0
    md = (out / "raters.md").read_text()
    assert "ceiling" in md and "wide" in md and "core" in md
    summary = (out / "summary.md").read_text()
    assert "--quick" in summary and "Inter-rater agreement" in summary
    # a second invocation makes nothing again
    assert mod.main(argv) == 0
    assert len(read_rows(out / "results.jsonl")) == len(rows)


@pytest.mark.slow
def test_tiny_centre_protocol_end_to_end(tmp_path: Path) -> None:
    """3 centres x (lower, upper, random's curve): each group's runs see only that centre's cases,
    the upper bound labels all of them, the table has the 20 % row of every centre."""
    from lightning_ada.phantom.simulator import load_phantom

    mod = protocols
    conf = tiny_configs(tmp_path / "conf")
    out = tmp_path / "out"
    argv = ["centres", "--quick", "--seeds", "0", "--strategies", "random", "--config-dir",
            str(conf / "{task}"), "--data-base", str(tmp_path / "data"), "--out", str(out)]
    assert mod.main(argv) == 0, read_rows(out / "errors.jsonl")
    rows = read_rows(out / "results.jsonl")
    groups = json.loads((out / "groups.json").read_text())["groups"]
    assert groups == ["B", "C", "D"]
    (root,) = list((tmp_path / "data").iterdir())
    centre = {c.case_id: c.meta["centre"] for c in load_phantom(root)}
    for r in (r for r in rows if r["run"] != "source"):
        name = groups[r["fold"]]
        assert r["per_case"] and all(centre[c["case_id"]] == name for c in r["per_case"])
        assert all(centre[q["case_id"]] == name for q in r["queries"])
        if r["run"] == "upper":
            assert r["labels"] == r["n_pool"] == sum(
                1 for cid, c in centre.items() if c == name and "_pool_" in cid)
    csv = (out / "centres.csv").read_text().splitlines()
    share = [line for line in csv[1:] if ",random,20 %," in line]
    assert len(share) == 3
    assert "not that the two models are equivalent" in (out / "centres.md").read_text()


def test_real_centre_summary_pools_the_folds_of_one_institution(tmp_path: Path) -> None:
    """A real benchmark whose folds all adapt to one institution: the folds' (seed, case) pairs
    pooled into one centre, each run paired with its own fold's upper bound."""
    mod = protocols

    def case(cid: str, v: float) -> dict[str, Any]:
        return {"case_id": cid, **{f"dice_{g}": v for g in ("ET", "NCR", "ED")},
                **{f"hd95_{g}": 10.0 for g in ("ET", "NCR", "ED")}}

    rows = []
    for f in range(3):  # fold f tests cases c{f}a, c{f}b; random is 0.1 f below its upper bound
        runs = (("lower", 0, 0.3), ("upper", None, 0.8), ("random", 3, 0.8 - 0.1 * f))
        for run, budget, v in runs:
            rows.append({"task": "brats18", "run": run, "seed": 0, "fold": f, "budget": budget,
                         "per_case": [case(f"c{f}a", v), case(f"c{f}b", v)]})
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = mod.real_centre_summary(tmp_path, "CBICA", None)
    csv = (tmp_path / "centre_CBICA.csv").read_text().splitlines()
    header = csv[0].split(",")
    random = dict(zip(header, next(r for r in csv if ",random," in r).split(",")))
    assert random["n"] == "6" and random["budget"] == "3"
    assert float(random["dsc_diff"]) == pytest.approx(-0.1)  # mean of 0, 0, -0.1, -0.1, -0.2, -0.2
    assert "folds pooled" in text


def test_group_table_shows_each_rows_seeds_and_the_20_percent_row_once() -> None:
    """Group B (pools of 10 in both seeds): its 20 % is 2 labels for every seed, the budget-2
    row, shown once as '2 (= 20 %)'. Group C: pools of 20 and 10, so 4 and 2 labels, a row of
    its own. Group D: random ran for seed 1 only (a pool of 4 in seed 0, under the budget of 5):
    1 seed, and the caption says which seeds and why. The CSV keeps every budget's row."""
    rows = constructed()
    for r in rows:
        if r["fold"] == 1 and r["seed"] == 1:
            r["n_pool"] = 10
    for s in (0, 1):
        base = {"task": "glioma", "seed": s, "fold": 2, "n_pool": 4 if s == 0 else 5, "n_test": 4}
        rows.append({**base, "run": "upper", "per_case": per_case([0.8] * 4, hd=2.0)})
        if s == 1:
            curve = [{"labels": k, "epoch": k, "per_case": per_case([0.5] * 4)}
                     for k in range(1, 6)]
            rows.append({**base, "run": "random", "budget": 5, "per_case": [], "curve": curve})
    table = group_table(rows, ["B", "C", "D"], "t", "centre")
    assert table.header[:6] == ["centre", "method", "budget", "labels", "seeds", "n"]
    shown = {(r[0], r[2]): r for r in table.rows if r[1] == "Random"}
    assert [b for g, b in shown if g == "B"] == ["1", "2 (= 20 %)", "3", "4", "5"]
    assert [b for g, b in shown if g == "C"] == [SHARE_ROW, "1", "2", "3", "4", "5"]
    assert shown[("C", SHARE_ROW)][3] == "2/4"  # seed 1: 20 % of 10; seed 0: of 20
    assert shown[("D", "1 (= 20 %)")][4:6] == ["1", "4"]  # one seed, its 4 cases
    assert [r[4:6] for r in table.rows if r[0] == "D" and r[1] == "Upper bound"] == [["2", "8"]]
    csv_rows = {(r[0], r[2]): dict(zip(table.csv_header, r)) for r in table.csv_rows
                if r[1] == "random"}
    assert csv_rows[("B", SHARE_ROW)]["share_20"] == csv_rows[("B", "2")]["share_20"] == 1
    assert csv_rows[("B", "3")]["share_20"] == 0 and csv_rows[("D", "2")]["seeds"] == 1
    text = "\n".join(table.notes)
    assert "'k (= 20 %)' (B: 2, D: 1), not a second row (the CSV keeps both)" in text
    assert ("D Random: seed 1 only, no run for seed 0: the pool has 4 cases there, fewer than "
            "the budget 5 the run was planned at") in text
    assert "Random: one sequential run per seed at the largest budget, tested after each" in text
    assert "a phantom draw" in text and "every seed;" in text
    real = group_table(rows, ["B", "C", "D"], "t", "centre", budgets=[3], real=True)
    text = "\n".join(real.notes)
    assert "phantom" not in text and "20 %" not in text and "every fold and seed" in text
    assert "the runs of one seed their source model" in text
