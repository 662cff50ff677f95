"""Collapse outside the target pool (scripts/ada_bench/collapse.py): per-case changes vs the
source model, attribution to labelled pool cases and collapse counts on constructed results with
known answers; the case figure on a tiny BraTS-layout folder."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from ada_bench import collapse

REGIONS = ("ET", "NCR", "ED")


def cases(values: dict[str, float]) -> list[dict[str, Any]]:
    return [{"case_id": c, **{f"dice_{g}": v for g in REGIONS}} for c, v in values.items()]


def row(run: str, fold: int, labelled: list[str], other: dict[str, float], **kw: Any) -> dict:
    r = {
        "task": "glioma", "run": run, "seed": 0, "fold": fold, "budget": len(labelled),
        "queried_cases": labelled, "per_case": cases({"t": 0.5}),
        "extra_splits": {"other_institutions": {"per_case": cases(other)}},
    }
    r.update(kw)
    return r


def constructed() -> list[dict[str, Any]]:
    """Fold 0: random labels p1, p2 and collapses o1 (0.6 -> 0.3); ugtst labels p2, p3 and
    changes nothing. Fold 1: random labels p1, p3 and drops o2 by 10 points."""
    src = {"o1": 0.6, "o2": 0.6}
    return [
        {**row("lower", 0, [], src), "budget": 0},
        {**row("lower", 1, [], src), "budget": 0},
        {**row("upper", 0, [], {"o1": 0.1, "o2": 0.1}), "budget": None},
        row("random", 0, ["p1", "p2"], {"o1": 0.3, "o2": 0.6},
            label_fit={"suspect": ["p1"], "losses": {}}),
        row("ugtst", 0, ["p2", "p3"], src),
        row("random", 1, ["p1", "p3"], {"o1": 0.6, "o2": 0.5}),
    ]


def test_run_changes_are_points_vs_the_lower_bound_of_the_fold() -> None:
    changes = collapse.run_changes(constructed(), "other_institutions")
    got = {(c.method, c.fold): c.changes for c in changes}
    # the upper bound (no queried cases, budgetless) is left out
    assert set(got) == {("random", 0), ("ugtst", 0), ("random", 1)}
    assert got[("random", 0)] == pytest.approx({"o1": -30.0, "o2": 0.0})
    assert got[("random", 1)] == pytest.approx({"o1": 0.0, "o2": -10.0})
    collapsed = {(c.method, c.fold): c.collapsed for c in changes}
    assert collapsed == {("random", 0): ["o1"], ("ugtst", 0): [], ("random", 1): []}


def test_pool_case_table_attributes_changes_to_labelled_cases() -> None:
    table = collapse.pool_case_table(constructed(), "other_institutions")
    by = {r[1]: dict(zip(table.csv_header, r)) for r in table.csv_rows}
    # p1: labelled in random f0 (-30, 0) and random f1 (0, -10): mean -10; without it: ugtst f0
    p1 = by["p1"]
    assert (p1["runs_with"], p1["runs_without"]) == (2, 1)
    assert p1["change_with"] == pytest.approx(-10.0) and p1["change_without"] == pytest.approx(0.0)
    assert (p1["collapses_with"], p1["collapses_without"]) == (1, 0) and p1["suspect_flags"] == 1
    # p2: random f0 and ugtst f0 (mean -7.5); without it in fold 0: none
    assert by["p2"]["change_with"] == pytest.approx(-7.5) and by["p2"]["runs_without"] == 0
    assert math.isnan(by["p2"]["difference"])
    # p3: ugtst f0 (0, 0), random f1 (0, -10) -> -2.5; without: random f0 (-30, 0) -> -15
    assert by["p3"]["difference"] == pytest.approx(12.5)
    # most harmful first, undefined differences last
    assert [r[1] for r in table.csv_rows] == ["p1", "p3", "p2"]


def test_collapse_table_counts_collapsed_case_runs_per_method() -> None:
    table = collapse.collapse_table(constructed(), ["other_institutions"])
    by = {r[1]: dict(zip(table.csv_header, r)) for r in table.csv_rows}
    assert by["random"]["collapses"] == 1 and by["random"]["case_runs"] == 4
    assert by["random"]["change_mean"] == pytest.approx(-10.0)
    assert by["random"]["change_min"] == pytest.approx(-30.0)
    assert by["ugtst"]["collapses"] == 0
    # the upper bound (every pool case labelled) is counted here: 0.6 -> 0.1 on both cases
    assert by["upper"]["collapses"] == 2 and by["upper"]["change_mean"] == pytest.approx(-50.0)


def brats_case(root: Path, case: str) -> None:
    folder = root / "HGG" / case
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    seg = np.zeros((16, 16, 8), np.int16)
    seg[5:9, 5:9, 5] = 2  # the largest area on slice 5
    seg[6:8, 6:8, 5] = 4
    seg[7, 7, 2] = 1
    for m in ("flair", "t1", "t1ce", "t2"):
        img = rng.uniform(100, 200, seg.shape).astype(np.float32)
        nib.save(nib.Nifti1Image(img, np.eye(4)), folder / f"{case}_{m}.nii.gz")
    nib.save(nib.Nifti1Image(seg, np.eye(4)), folder / f"{case}_seg.nii.gz")


def test_case_figure_finds_the_case_in_any_root_and_draws_it(tmp_path: Path) -> None:
    brats_case(tmp_path / "b", "Brats18_X_1")
    files = collapse.find_case_files("Brats18_X_1", [tmp_path / "a", tmp_path / "b"])
    assert set(files) == {"flair", "t1", "t1ce", "t2", "seg"}
    out = collapse.case_figure("Brats18_X_1", [tmp_path / "b"], tmp_path / "fig.png")
    assert out.stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match="Brats18_Y_1"):
        collapse.find_case_files("Brats18_Y_1", [tmp_path / "b"])


def test_write_collapse_writes_tables_and_figures(tmp_path: Path) -> None:
    brats_case(tmp_path / "data", "p1")
    text, figures = collapse.write_collapse(constructed(), tmp_path, [tmp_path / "data"])
    assert (tmp_path / "collapse.md").read_text() == text
    assert "| glioma | p1 | 2 | -10.00 |" in text
    names = {p.name for p in figures}
    assert "collapse_other_institutions.png" in names and "collapse_case_p1.png" in names
    assert "no folder 'p2'" in text  # the least harmful case has no files here: said, not raised
