"""The seed ranges of the power profile (``configs/power/seeds.yaml``): calibration seeds are
never evaluated on, evaluation seeds never calibrated on, archived seeds never reused."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

SEEDS_FILE = Path(__file__).resolve().parents[2] / "configs" / "power" / "seeds.yaml"
USES = ("calibration", "evaluation", "archived")


class SeedError(ValueError):
    """A seed asked for a use its range does not allow."""


def seed_ranges(path: str | Path = SEEDS_FILE) -> dict[str, list[int]]:
    """``{use: seeds}`` from the declaration file.

    Raises:
        SeedError: a use missing, or a seed in two ranges.
    """
    data = yaml.safe_load(Path(path).read_text()) or {}
    ranges = {use: [int(s) for s in data.get(use) or []] for use in USES}
    for i, a in enumerate(USES):
        for b in USES[i + 1:]:
            both = sorted(set(ranges[a]) & set(ranges[b]))
            if both:
                raise SeedError(f"{path}: seeds {both} are both {a} and {b} seeds")
    if not ranges["calibration"] or not ranges["evaluation"]:
        raise SeedError(f"{path}: declare calibration and evaluation seeds")
    return ranges


def check_seeds(seeds: Sequence[int], use: str, path: str | Path = SEEDS_FILE) -> None:
    """Refuse ``seeds`` that belong to a range of another use.

    ``calibration`` may take only calibration seeds; ``evaluation`` any seed outside the
    calibration range (its own, or a new one, e.g. more seeds for power).

    Raises:
        SeedError: naming the seeds, their range and the file.
    """
    ranges = seed_ranges(path)
    if use == "calibration":
        bad = sorted(set(seeds) - set(ranges["calibration"]))
        if bad:
            raise SeedError(
                f"seeds {bad} are not calibration seeds ({ranges['calibration']}, {path}): "
                "calibrating on a seed an evaluation uses would choose the recipe on its test "
                "cases"
            )
        return
    bad = sorted(set(seeds) & set(ranges["calibration"]))
    if bad:
        raise SeedError(
            f"seeds {bad} are calibration seeds ({path}): an evaluation must not use the cases "
            "the recipe was chosen on"
        )
