"""Run one experiment in-process through the library's Python API and collect its numbers.

A run is a config *dict*, the one the command line builds from ``-c`` files and ``--key value``
options: :func:`compose` merges YAML files the way several ``-c`` do and then sets dotted keys
wholesale the way ``--key value`` does; :func:`run_experiment` hands the dict to
``lightning_ada.main.main(args=<dict>, run=False)`` (LightningCLI parses and validates it like a
config file) and calls ``trainer.fit`` / ``trainer.test`` itself. Used by the benchmark and the
demo; the same configs run from the command line.
"""

from __future__ import annotations

import copy
import json
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

Config = dict[str, Any]


def read_config(path: str | Path) -> Config:
    """The mapping of one YAML config file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file does not hold a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ValueError(f"{path}: a config must be a mapping of sections, got {kind}")
    return data


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> Config:
    """``over`` merged into a copy of ``base`` as a later ``-c`` file is merged by the CLI.

    Mappings merge key by key; a ``class_path`` mapping whose class differs from the base's
    replaces it (its ``init_args`` belong to the other class); lists and scalars replace. A key
    ending in ``+`` appends to the list of the key without it (jsonargparse's list append, e.g.
    ``trainer: {callbacks+: [...]}`` in ``configs/additions/dgst.yaml``).
    """
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(key, str) and key.endswith("+"):
            items = copy.deepcopy(value if isinstance(value, list) else [value])
            target = key[:-1] if isinstance(out.get(key[:-1]), list) else key
            out[target] = [*(out.get(target) or []), *items]
            continue
        out.pop(f"{key}+", None)  # a plain value replaces what was appended before
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            other_class = "class_path" in value and value.get("class_path") != old.get("class_path")
            out[key] = copy.deepcopy(dict(value)) if other_class else merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_key(config: Config, dotted: str, value: Any) -> None:
    """Set ``config[a][b]... = value`` for ``dotted = "a.b..."`` as ``--a.b value`` does: the
    value replaces the key's, except a ``class_path`` mapping of the class already there, whose
    ``init_args`` are merged into the old ones."""
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        child = node.get(p)
        if not isinstance(child, dict):
            child = node[p] = {}
        node = child
    old = node.get(leaf)
    same_class = (
        isinstance(old, Mapping)
        and isinstance(value, Mapping)
        and "class_path" in value
        and old.get("class_path") == value["class_path"]
    )
    node[leaf] = merge(old, value) if same_class else copy.deepcopy(value)


def compose(files: Sequence[str | Path], overrides: Mapping[str, Any] | None = None) -> Config:
    """The config of ``-c f1 -c f2 ... --k1 v1 --k2 v2``: files merged in order, then the dotted
    ``overrides`` set in order (:func:`set_key`: a plain dict value replaces the whole key, as on
    the command line)."""
    config: Config = {}
    for f in files:
        config = merge(config, read_config(f))
    for key, value in (overrides or {}).items():
        set_key(config, key, value)
    return config


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """``["--a.b", "1", "--c=x"]`` -> ``{"a.b": 1, "c": "x"}`` (values read as YAML, like the CLI).

    Raises:
        ValueError: an item that is not ``--key value`` / ``--key=value``.
    """
    return split_command_line(args)[1]


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """A script's arguments -> (its own, the ones after ``--`` that go to every run)."""
    items = list(argv)
    if "--" not in items:
        return items, []
    i = items.index("--")
    return items[:i], items[i + 1 :]


def read_arguments(
    parser: Any, argv: Sequence[str]
) -> tuple[Any, list[str], dict[str, Any]]:
    """A script's command line -> (its parsed arguments, the config files and the dotted
    overrides after ``--`` that go to every run); a bad item after ``--`` exits with one line."""
    own, rest = split_passthrough(argv)
    args = parser.parse_args(own)
    try:
        extra_configs, extra = split_command_line(rest)
    except ValueError as e:
        raise SystemExit(f"after --: {e}") from None
    return args, extra_configs, extra


def split_command_line(args: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """CLI-style arguments -> (config files of ``-c FILE`` / ``--config FILE``, dotted overrides).

    Raises:
        ValueError: an item that is not ``-c FILE``, ``--key value`` or ``--key=value``.
    """
    files: list[str] = []
    out: dict[str, Any] = {}
    items = list(args)
    i = 0
    while i < len(items):
        item = items[i]
        if item in ("-c", "--config"):
            if i + 1 == len(items):
                raise ValueError(f"{item} needs a config file")
            files.append(items[i + 1])
            i += 2
            continue
        if not item.startswith("--") or len(item) < 3:
            raise ValueError(f"override {item!r}: expected --key value or --key=value")
        if "=" in item:
            key, text = item[2:].split("=", 1)
            i += 1
        elif i + 1 < len(items):
            key, text = item[2:], items[i + 1]
            i += 2
        else:
            raise ValueError(f"override {item!r} has no value")
        out[key] = _value(text)
    return files, out


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")


def _value(text: str) -> Any:
    """A command-line value read as YAML; ``1e-3`` is a float (YAML 1.1 would keep a string)."""
    value = yaml.safe_load(text)
    return float(text) if isinstance(value, str) and _FLOAT.match(text) else value


def run_configs(
    files: Sequence[str | Path], args: Sequence[str] = (), fit: bool = True, test: bool = True
) -> dict[str, Any]:
    """:func:`run_experiment` of ``-c files... args...`` given command-line style (``args``:
    ``--key value`` items and more ``-c FILE``, e.g. from ``lightning_ada.cli.eval_dirs``)."""
    more, overrides = split_command_line(args)
    return run_experiment(compose([*files, *more], overrides), fit=fit, test=test)


def run_experiment(
    config: Mapping[str, Any],
    fit: bool = True,
    test: bool = True,
    snapshots: Callable[[Any], Any] | None = None,
    label_check: bool = False,
) -> dict[str, Any]:
    """Build the CLI objects of ``config`` (:func:`compose`), then fit and/or test.

    Args:
        config: the run's config dict (sections ``trainer``, ``model``, ``data``, ``active``...).
        fit: train (``trainer.fit``); False only tests the model as configured.
        test: test on the datamodule's test split after fitting.
        snapshots: optional ``factory(config) -> callback`` added to the trainer; after the final
            test, ``callback.evaluate(trainer, model, datamodule)`` returns extra results stored
            under ``"curve"`` (:class:`ada_bench.curve.StrideSnapshots`).
        label_check: after the fit, measure every labelled case's loss under the final model
            and flag suspect annotations (:mod:`ada_bench.label_check`), under ``"label_fit"``.

    A run whose config sets ``active.unit`` also returns ``"pool_cases"`` (:func:`pool_costs`,
    measured after the test: nothing of the run depends on it).

    Returns:
        ``{"test": {metric: value}, "per_case": [...], "extra_splits": {split: {...}}, "query_log":
        [...], "fit_seconds", "seconds", "log_dir"}`` (+ ``"curve"``); test metrics are keyed
        like ``dice_ET``; ``extra_splits`` holds the extra test splits (:func:`test_model`).
    """
    from lightning_ada.cli.console import quiet
    from lightning_ada.cli.short_names import expand_config
    from lightning_ada.main import main

    with warnings.catch_warnings():
        # the process's own command line (e.g. the benchmark script's) is not the run's
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        cli = main(args=expand_config(copy.deepcopy(dict(config))), run=False)
    quiet()  # the CLI's filters again: the block above restored the filters as they were before it
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    snap = snapshots(config) if snapshots is not None else None
    if snap is not None:
        trainer.callbacks.append(snap)
    t0 = time.perf_counter()
    if fit:
        trainer.fit(model, datamodule=dm)
    fit_seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"fit_seconds": fit_seconds, "log_dir": trainer.log_dir}
    if snap is not None and fit:
        out["curve"] = snap.evaluate(trainer, model, dm)
    if label_check and fit:
        from ada_bench.label_check import label_fit

        out["label_fit"] = label_fit(model, dm)
    if test:
        out.update(test_model(trainer, model, dm))
    if fit and (config.get("active") or {}).get("unit") is not None:
        out["pool_cases"] = pool_costs(dm)
    log = Path(trainer.log_dir or trainer.default_root_dir) / "query_log.json"
    out["query_log"] = json.loads(log.read_text()) if fit and log.exists() else []
    out["seconds"] = time.perf_counter() - t0
    return out


def pool_costs(dm: Any) -> dict[str, list[int]]:
    """What annotating each whole case of the target pool costs, on the network grid: ``{case id:
    [voxels, slices along axis 2, foreground voxels, slices along axis 2 with foreground]}``
    (the counts a whole-case delivery gives, :meth:`ActiveDataModule.label`); from the
    reference labels, so {} when the pool has none (a human-in-the-loop pool) or no pool view.

    The benchmark stores it in the rows of runs with a unit: the denominator of the foreground
    share (the pool's foreground voxels) and the cost of the whole-case baseline's queries, whose
    rows record no cost (:mod:`ada_bench.equal_cost`).
    """
    from lightning_ada.cases import NOT_ANNOTATED

    view = getattr(dm, "pool_view", None)
    if view is None:
        return {}
    pool = view()
    out: dict[str, list[int]] = {}
    try:
        for cid in pool.ids("pool"):
            label = pool.reference(cid)
            tumour = (label > 0) & (label != NOT_ANNOTATED)
            out[cid] = [
                int(label.numel()), int(label.shape[2]), int(tumour.sum()),
                int(tumour.any(dim=0).any(dim=0).sum()),
            ]
    except (KeyError, OSError, RuntimeError, ValueError):  # no reference label (DataError)
        return {}
    return out


def test_model(trainer: Any, model: Any, dm: Any) -> dict[str, Any]:
    """``trainer.test`` of ``model`` on ``dm``'s test split: summary metrics and per-case rows.

    The datamodule's extra test splits (``data.extra_test_splits``: e.g. the source test cases
    or other institutions, to measure forgetting) come under ``"extra_splits"``:
    ``{split: {"test": {metric: value}, "per_case": [...]}}`` (empty without extras).
    """
    trainer.test(model, datamodule=dm, verbose=False)
    metrics = trainer.callback_metrics
    names = dm.test_split_names()[1:] if hasattr(dm, "test_split_names") else []
    per_split = getattr(model, "last_extra_per_case", {}) or {}
    extra = {
        name: {
            "test": {
                k.removeprefix(f"{name}/"): float(v)
                for k, v in metrics.items()
                if k.startswith(f"{name}/")
            },
            "per_case": list(per_split.get(name, [])),
        }
        for name in names
    }
    return {
        "test": {
            k.removeprefix("test/"): float(v) for k, v in metrics.items() if k.startswith("test/")
        },
        "per_case": list(getattr(model, "last_test_per_case", [])),
        "extra_splits": extra,
    }


test_model.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
