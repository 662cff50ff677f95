"""What a benchmark task runs on: the embedded phantom (generated per seed) or a config folder.

A task gives the benchmark loop its config folder, its modalities, its folds and the overrides
that point every run at its data:

* :class:`PhantomTask` (``glioma``, ``npc``): one phantom per seed, folds from
  :class:`~ada_bench.folds.FoldScheme` passed as ``--data.splits``;
* :class:`ConfigTask` (``brats18``): real scans named by the task's own configs; fold ``f`` is the
  overlay ``<config_dir>/folds/fold<f>.yaml`` (its splits), the data root a config value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ada_bench.folds import FoldScheme
from ada_bench.runner import compose, read_config

Overrides = dict[str, Any]


@dataclass(frozen=True)
class Fold:
    """One fold of a task: extra config files, overrides and its pool / test sizes."""

    configs: tuple[str, ...]
    overrides: Mapping[str, Any]
    n_pool: int
    n_test: int


@dataclass(frozen=True)
class PhantomTask:
    """A task on the embedded phantom, regenerated per seed (``data_base/<task>_<size>_seed<s>``).

    Attributes:
        name: ``glioma`` or ``npc``.
        scheme: fold and phantom sizes.
        data_base: folder of the generated phantoms.
        config_dir: config folder (``{task}`` is replaced by the name).
        source_overrides: extra overrides of the source run (e.g. fewer epochs in ``--quick``).
        target_overrides: extra overrides of every target run.
        extra_configs: config files added after the run's own.
        target_config: one config file of the folder for every target run (a single adaptation
            recipe, e.g. ``configs/power/<task>/target.yaml``: the run's strategy, budget and
            bound are then set by overrides); None: each run's own file (``mmacts.yaml``...).
    """

    name: str
    scheme: FoldScheme = field(default_factory=FoldScheme)
    data_base: str = "data/phantom"
    config_dir: str = "configs/phantom/{task}"
    source_overrides: Mapping[str, Any] = field(default_factory=dict)
    target_overrides: Mapping[str, Any] = field(default_factory=dict)
    extra_configs: tuple[str, ...] = ()
    target_config: str | None = None

    def config_file(self, name: str) -> Path:
        """The file of run config ``name`` (``source.yaml``, ``mmacts.yaml``...) in the folder."""
        if self.target_config and name != "source.yaml":
            return self.folder / self.target_config
        return self.folder / name

    @property
    def modalities(self) -> list[str]:
        from lightning_ada.phantom.simulator import TASKS

        return list(TASKS[self.name]["modalities"])

    @property
    def folder(self) -> Path:
        return Path(self.config_dir.format(task=self.name))

    @property
    def n_folds(self) -> int:
        return self.scheme.n_folds

    def data_overrides(self, seed: int, config: Mapping[str, Any]) -> Overrides:
        """Overrides of every run of ``seed``: training seed, phantom root and draw.

        The draw is the config's ``data.phantom`` (e.g. the shift parameters of a calibrated
        phantom) updated with the scheme's sizes and ``seed``: a fresh phantom per seed, the
        same for every run of that seed.
        """
        s = self.scheme
        drawn = dict((config.get("data") or {}).get("phantom") or {})
        drawn.update(s.phantom(self.name, seed))
        regime = drawn.get("regime")  # another generator regime: another folder
        suffix = f"_{regime}" if regime not in (None, "phantom-1") else ""
        return {
            "seed_everything": seed,
            "data.root": s.root(self.name, seed, self.data_base) + suffix,
            "data.phantom": drawn,
        }

    def source_stage(self) -> Overrides:
        """Overrides of the source run (source cases only)."""
        return {"data.splits": {"pool": [], "test": []}, **self.source_overrides}

    def fold(self, fold: int) -> Fold:
        """Fold ``fold`` (raises ValueError outside the scheme)."""
        splits = self.scheme.splits(self.name, fold)
        return Fold(
            (),
            {"data.splits": splits, **self.target_overrides},
            len(splits["pool"]),
            len(splits["test"]),
        )


@dataclass(frozen=True)
class ConfigTask:
    """A task whose data, splits and folds are all in its config folder (real scans).

    Attributes:
        name: task name (``brats18``).
        config_dir: folder with ``source.yaml``, ``mmacts.yaml``, ``random.yaml``,
            ``upper_bound.yaml`` and ``folds/fold<k>.yaml``.
        data_root: overrides ``data.root`` of every run (None: the configs' value).
        extra_configs: config files added after the run's own (e.g. ``gpu_1mm.yaml``).
    """

    name: str
    config_dir: str
    data_root: str | None = None
    extra_configs: tuple[str, ...] = ()

    @property
    def folder(self) -> Path:
        return Path(self.config_dir.format(task=self.name))

    def config_file(self, name: str) -> Path:
        """The file of run config ``name`` in the folder."""
        return self.folder / name

    def _yaml(self, path: Path) -> dict[str, Any]:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (task {self.name!r} needs it)")
        return read_config(path)

    def _run_yaml(self, name: str) -> dict[str, Any]:
        """The sections of ``base.yaml`` (if any) updated by those of the run overlay ``name``."""
        merged: dict[str, Any] = {}
        base = self.folder / "base.yaml"
        for part in ([self._yaml(base)] if base.is_file() else []) + [self._yaml(self.folder / name)]:
            for key, value in part.items():
                both = isinstance(value, dict) and isinstance(merged.get(key), dict)
                merged[key] = {**merged[key], **value} if both else value
        return merged

    @cached_property
    def modalities(self) -> list[str]:
        self._yaml(self.folder / "mmacts.yaml")  # a clear error when it is missing
        config = compose([*base_files(self.folder), self.folder / "mmacts.yaml"])
        return list(config["data"]["modalities"])

    @cached_property
    def _fold_files(self) -> list[Path]:
        files = (self.folder / "folds").glob("fold*.yaml")
        return sorted(files, key=lambda p: int(p.stem.removeprefix("fold") or 0))

    @property
    def n_folds(self) -> int:
        return len(self._fold_files) or 1

    def data_overrides(self, seed: int, config: Mapping[str, Any]) -> Overrides:
        """Overrides of every run of ``seed``: training seed and (if given) the data root."""
        root = {"data.root": self.data_root} if self.data_root else {}
        return {"seed_everything": seed, **root}

    def source_stage(self) -> Overrides:
        """Overrides of the source run: none (the source split is in the configs)."""
        return {}

    def fold(self, fold: int) -> Fold:
        files = self._fold_files
        if not 0 <= fold < max(len(files), 1):
            raise ValueError(f"task {self.name!r}: fold must be in 0..{len(files) - 1}, got {fold}")
        path = files[fold] if files else self.folder / "mmacts.yaml"
        splits = self._yaml(path).get("data", {}).get("splits") or self._run_yaml(
            "mmacts.yaml"
        )["data"]["splits"]
        return Fold(
            (str(path),) if files else (),
            {},
            len(splits.get("pool", [])),
            len(splits.get("test", [])),
        )


def base_files(folder: Path) -> list[Path]:
    """The base configs every run of ``folder`` starts from: ``<folder>/../base.yaml`` and
    ``<folder>/base.yaml``, those that exist."""
    return [p for p in (folder.parent / "base.yaml", folder / "base.yaml") if p.is_file()]


BenchTask = PhantomTask | ConfigTask
