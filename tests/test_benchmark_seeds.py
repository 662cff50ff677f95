"""Calibration and evaluation never share a seed: the declaration file and the scripts' refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from ada_bench.seeds import SeedError, check_seeds, seed_ranges

REPO = Path(__file__).resolve().parents[1]


def test_the_committed_ranges_are_disjoint_and_declared() -> None:
    ranges = seed_ranges()
    assert ranges["calibration"] and ranges["evaluation"]
    assert not set(ranges["calibration"]) & (set(ranges["evaluation"]) | set(ranges["archived"]))


def test_overlapping_ranges_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "seeds.yaml"
    f.write_text("calibration: [1, 2]\nevaluation: [2, 3]\narchived: []\n")
    with pytest.raises(SeedError, match=r"seeds \[2\] are both calibration and evaluation"):
        seed_ranges(f)


def test_each_use_refuses_the_others_seeds(tmp_path: Path) -> None:
    f = tmp_path / "seeds.yaml"
    f.write_text("calibration: [100, 101]\nevaluation: [10, 11]\narchived: [0]\n")
    check_seeds([100], "calibration", f)
    check_seeds([10, 11, 12], "evaluation", f)  # more evaluation seeds are fine
    with pytest.raises(SeedError, match=r"\[10\] are not calibration seeds"):
        check_seeds([100, 10], "calibration", f)
    with pytest.raises(SeedError, match=r"\[101\] are calibration seeds"):
        check_seeds([11, 101], "evaluation", f)


@pytest.mark.parametrize(
    ("script", "args", "words"),
    [
        ("calibrate.py", ["--seeds", "3"], "are not calibration seeds"),
        ("benchmark.py", ["--power", "--seeds", "100", "--dry-run"], "are calibration seeds"),
    ],
)
@pytest.mark.slow
def test_the_scripts_refuse_a_seed_of_the_other_use(script: str, args: list[str], words: str) -> None:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / script), *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and words in done.stderr
