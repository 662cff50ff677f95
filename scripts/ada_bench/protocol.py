"""Which runs the benchmark makes: named run specifications and the protocol's run list.

A *run* is a config of the task's folder (``configs/phantom/<task>/``...) plus overrides (dotted
config keys, :func:`ada_bench.runner.compose`), trained from the source checkpoint of its task and
seed (except the lower bound, which only tests it). Names:

* ``lower`` (source model tested, 0 labels), ``upper`` (every pool case labelled);
* every registered strategy (``random``, ``entropy``, ``mmacts``, ``aada``, ...): the mmActS
  config with ``active.strategy`` set to it (same schedule, stride, training and modality
  election for all; one-off strategies receive the budget from the callback);
* ``random@<k>``: the random config with draw seed ``1000 + k`` (repeated random draws);
* ablations of mmActS: ``mmacts_one_off``, ``mmacts_modality_masks``, the factor ablations
  ``entropy_only``, ``volume_only``, ``density_only``, ``entropy_x_volume``, and the training
  input ablation ``mmacts_input_<modality>`` (``data.train_input: modality:<modality>``) and
  ``mmacts_dominant_only`` (``data.train_input: dominant_only``);
* presets (:data:`PRESETS`): ``mmacts_paper``, mmActS with the authors' protocol options;
* variants and additions (grammar in :mod:`ada_bench.names`): ``<strategy or preset>:<key>=<value>,
  ...`` sets the strategy's options (``mmacts:density_rule=inclusive,ranking=per_region``; unknown
  keys and bad values fail at plan time, a ``schedule`` option sets the run's schedule), and
  ``<run>+<addition>...`` composes ``configs/additions/<addition>.yaml`` onto the run
  (``random+st``, ``upper+dgst``, ``mmacts_paper+st+gba``);
* a unit (:func:`unit_spec`): ``<strategy or preset>@<unit>[:<options>]`` asks for less than a
  whole scan per query (``random_region@slices``, ``random_region@slices:k=3``,
  ``random_region@patch:size=8``): the run passes ``active.unit`` (the unit's ``class_path`` and
  the options the unit accepts) and records the annotation time of every query
  (``active.annotation_time``, :data:`ANNOTATION_TIME`); ``active.budget`` then counts
  whole-scan equivalents. A unit the library does not know, a strategy whose ``units`` do not
  hold it, an option neither accepts, and ``<case-level strategy>@case`` (the default unit:
  name the run without it) are refused at plan time. A name without ``@<unit>`` plans exactly
  what it planned before units existed (``random``: whole cases, no ``active.unit`` key).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ada_bench.names import RunName, budgetless, compose_name, parse_run_name

#: where ``<run>+<addition>`` finds ``<addition>.yaml`` (the repository's configs/additions)
ADDITIONS_DIR = Path(__file__).resolve().parents[2] / "configs" / "additions"
#: names of the additions in the tables (others are shown as written)
ADDITION_DISPLAY = {
    "st": "self-training", "gba": "GBA", "gba_singan": "GBA (SinGAN)", "dgst": "DGST",
}

#: the paper's budgets and its headline budget
BUDGETS = (1, 2, 3, 5)
HEADLINE_BUDGET = 3
FACTOR_ABLATIONS = {
    "entropy_only": [1, 0, 0],
    "volume_only": [0, 1, 0],
    "density_only": [0, 0, 1],
    "entropy_x_volume": [1, 1, 0],
}
#: ablation group -> run names (``{modality}`` expands over the task's modalities)
ABLATIONS = {
    "schedule": ["mmacts_one_off"],
    "modality": ["mmacts_input_{modality}", "mmacts_dominant_only"],
    "factors": list(FACTOR_ABLATIONS),
    "masks": ["mmacts_modality_masks"],
}


@dataclass(frozen=True)
class Preset:
    """A named strategy configuration (a run name of its own).

    Attributes:
        strategy: registered strategy name.
        options: its ``init_args``.
        display: name in the tables.
    """

    strategy: str
    options: Mapping[str, Any]
    display: str


#: named presets (issue 13). ``mmacts_paper``: mmActS as the authors ran it (ALGORITHMS.md 16):
#: density on the raw images as stored (no normalisation, full field of view) resized to 128^3,
#: one binary ranking per region (the model's regions in order, one per round: NCR, ED, ET on
#: glioma and BraTS; BraTS' evaluation regions WT, TC follow and are reached only after 3 rounds),
#: entropy averaged over the whole volume, and self-counting neighbourhoods (``inclusive``; the
#: authors' radius rule is unreported, ALGORITHMS.md 16 decides for it). The 128^3 PCA costs about
#: 0.1 s per modality image, once per run (cached in the run folder).
PRESETS: dict[str, Preset] = {
    "mmacts_paper": Preset(
        "mmacts",
        {
            "density_input": "raw",
            "density_resize": 128,
            "ranking": "per_region",
            "entropy_roi": "volume",
            "density_rule": "inclusive",
        },
        "mmActS (paper protocol)",
    ),
}


def own_method(base: str) -> bool:
    """A run name (without options and additions) shown in the tables as a method of its own even
    though its strategy is another's: the presets and ``random_one_off`` (random with the whole
    budget at epoch 0, the matched baseline of one-off strategies)."""
    return base in PRESETS or base == "random_one_off"


@dataclass(frozen=True)
class RunSpec:
    """How to make one named run.

    Attributes:
        name: run name (the ``run`` field of its result row).
        config: config file name inside the task's config folder.
        overrides: dotted config keys set wholesale (``{"active.budget": 0}``).
        fit: train (False: only test the source model).
        strategy: registered strategy name, or ``lower`` / ``upper``.
        budgeted: the query budget is set as ``active.budget``.
        train_input: the datamodule's ``train_input``.
        schedule: ``sequential`` / ``one_off`` for strategies, None for the bounds.
        configs: config files composed after the run's own (the additions' overlays).
        unit: the annotation unit of a ``<run>@<unit>`` name (None: whole cases, no
            ``active.unit`` override).
        unit_options: the unit's options as given in the name (its ``init_args``).
    """

    name: str
    config: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    fit: bool = True
    strategy: str = ""
    budgeted: bool = True
    train_input: str = "all"
    schedule: str | None = None
    configs: tuple[str, ...] = ()
    unit: str | None = None
    unit_options: Mapping[str, Any] = field(default_factory=dict)


def strategy_overrides(strategy: str, **init_args: Any) -> dict[str, Any]:
    """The overrides choosing the registered ``strategy`` with ``init_args``: its ``class_path``
    and ``init_args``."""
    from lightning_ada.active.strategies import REGISTRY
    from lightning_ada.cli.short_names import class_path

    return {"active.strategy": {"class_path": class_path(REGISTRY[strategy]),
                                "init_args": dict(init_args)}}


def modality_masks_overrides() -> dict[str, Any]:
    """The overrides making the simulated oracle deliver the elected modality's mask only."""
    from lightning_ada.active.oracles import ORACLES
    from lightning_ada.cli.short_names import class_path

    return {"active.oracle": {"class_path": class_path(ORACLES["simulated"]),
                              "init_args": {"use_modality_masks": True}}}


def _schedule(strategy: str, args: dict[str, Any] | None = None) -> str:
    from lightning_ada.active.strategies import REGISTRY

    if args and "schedule" in args:
        return str(args["schedule"])
    return str(getattr(REGISTRY.get(strategy), "schedule", "sequential"))


def strategy_options(strategy: str) -> list[str]:
    """The options (``init_args``) a registered strategy accepts, as ``--active.strategy.help``
    lists them: its constructor's parameters."""
    from lightning_ada.active.strategies import REGISTRY

    params = inspect.signature(REGISTRY[strategy].__init__).parameters
    return [p for p in params if p not in ("self", "args", "kwargs")]


def check_strategy_options(run: str, strategy: str, options: Mapping[str, Any]) -> None:
    """Refuse unknown option names and values the strategy's types or constructor reject.

    The values are type-checked as the CLI does (jsonargparse, from the constructor's
    annotations), then the strategy is built once (its own checks, e.g. mmActS' rules).

    Raises:
        ValueError: naming the run, the option and what is accepted.
    """
    from lightning_ada.active.strategies import REGISTRY

    accepted = strategy_options(strategy)
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise ValueError(
            f"run {run!r}: strategy {strategy!r} has no option {unknown[0]!r}; accepted: "
            f"{', '.join(accepted) or 'none'}"
        )
    cls = REGISTRY[strategy]
    parser = _options_parser(cls)
    if parser is not None:
        try:
            parser.parse_object({"options": dict(options)})
        except Exception as e:  # noqa: BLE001 - jsonargparse's ArgumentError (and friends)
            raise ValueError(
                f"run {run!r}: options {dict(options)} of {strategy!r}: {_one_line(e)}"
            ) from None
    try:
        cls(**options)
    except (TypeError, ValueError) as e:
        raise ValueError(f"run {run!r}: {_one_line(e)}") from None


def _options_parser(cls: type) -> Any:
    """A jsonargparse parser of ``cls``' constructor under key ``options`` (None if it cannot
    be built: then only the constructor checks the values)."""
    try:
        from jsonargparse import ArgumentParser

        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, "options")
    except Exception:  # noqa: BLE001 - an annotation jsonargparse cannot read: skip the type check
        return None
    return parser


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def addition_file(name: str, folder: str | Path | None = None) -> Path:
    """The overlay of addition ``name``: ``<folder>/<name>.yaml``.

    Raises:
        ValueError: no such file (the message names the folder and the additions present).
    """
    folder = Path(folder) if folder is not None else ADDITIONS_DIR
    path = folder / f"{name}.yaml"
    if not path.is_file():
        present = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        raise ValueError(
            f"unknown addition {name!r}: no {path} (additions in {folder}: "
            f"{', '.join(present) if present else 'none'})"
        )
    return path


def run_spec(name: str, modalities: list[str], additions_dir: str | Path | None = None) -> RunSpec:
    """The :class:`RunSpec` of a run name (module doc) for a task with ``modalities``.

    Args:
        name: the run name (grammar: :mod:`ada_bench.names`).
        modalities: the task's modalities (for ``mmacts_input_<modality>``).
        additions_dir: folder of the addition overlays (default :data:`ADDITIONS_DIR`).

    Raises:
        ValueError: unknown name, option or addition (the message lists the known ones).
    """
    parsed = parse_run_name(name)
    spec = unit_spec(parsed) if parsed.unit else _base_spec(parsed, modalities)
    if parsed.additions:
        if spec.strategy == "lower":
            raise ValueError(
                f"run {name!r}: the lower bound only tests the source model, an addition "
                "changes nothing (use upper+... or a strategy)"
            )
        files = tuple(str(addition_file(a, additions_dir)) for a in parsed.additions)
        spec = dataclasses.replace(spec, configs=spec.configs + files)
    return spec


def _annotation_time() -> dict[str, float]:
    from lightning_ada.active.cost import AnnotationTime

    return dataclasses.asdict(AnnotationTime())


#: the annotation-time model every run with a unit records (``active.annotation_time``): the
#: library's :class:`~lightning_ada.active.cost.AnnotationTime` defaults (seconds per slice with
#: and without tumour), which are assumptions, not measurements
ANNOTATION_TIME: dict[str, float] = _annotation_time()


def unit_options(unit: str) -> list[str]:
    """The options (``init_args``) a registered annotation unit accepts: its constructor's
    parameters (``k``, ``axis``, ``modality_axes`` of ``slices``; ``size`` of ``patch``)."""
    from lightning_ada.active.units import UNITS

    params = inspect.signature(UNITS[unit].__init__).parameters
    return [p for p in params if p not in ("self", "args", "kwargs")]


def unit_settings(unit: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The unit's constructor defaults updated by ``options``: what the run's unit is, however
    its name spells it (``random_region@slices`` and ``...@slices:k=3`` have the same slices
    unit when 3 is the default)."""
    from lightning_ada.active.units import UNITS

    params = inspect.signature(UNITS[unit].__init__).parameters
    out = {
        k: p.default for k, p in params.items()
        if k not in ("self", "args", "kwargs") and p.default is not inspect.Parameter.empty
    }
    return {**out, **dict(options)}


def route_options(
    run: str, strategy: str, unit: str, options: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a unit run's options into the unit's and the strategy's: a key goes to the one that
    accepts it; ``unit.<key>`` / ``strategy.<key>`` say it explicitly.

    Raises:
        ValueError: a key neither accepts, or one both accept without a prefix.
    """
    mine, theirs = set(unit_options(unit)), set(strategy_options(strategy))
    to_unit: dict[str, Any] = {}
    to_strategy: dict[str, Any] = {}
    for key, value in options.items():
        owner, dot, bare = key.partition(".")
        if dot and owner not in ("unit", "strategy"):
            raise ValueError(
                f"run {run!r}: option {key!r}: a prefix must be 'unit.' or 'strategy.'"
            )
        if not dot:
            bare, owner = key, ""
            if bare in mine and bare in theirs:
                raise ValueError(
                    f"run {run!r}: option {bare!r} is an option of the {unit!r} unit and of "
                    f"strategy {strategy!r}: write unit.{bare}=... or strategy.{bare}=..."
                )
            owner = "unit" if bare in mine else "strategy" if bare in theirs else ""
        if owner == "unit" and bare in mine:
            to_unit[bare] = value
        elif owner == "strategy" and bare in theirs:
            to_strategy[bare] = value
        else:
            raise ValueError(
                f"run {run!r}: no option {bare!r} for "
                + (f"the {unit!r} unit" if owner == "unit" else f"strategy {strategy!r}"
                   if owner == "strategy" else f"the {unit!r} unit or strategy {strategy!r}")
                + f"; the unit accepts: {', '.join(sorted(mine)) or 'none'}; the strategy: "
                f"{', '.join(sorted(theirs)) or 'none'}"
            )
    return to_unit, to_strategy


def check_unit_options(run: str, unit: str, options: Mapping[str, Any]) -> None:
    """Type-check the unit's options as the CLI does and build the unit once (its own checks,
    e.g. ``k >= 1``).

    Raises:
        ValueError: naming the run and what is wrong.
    """
    from lightning_ada.active.units import UNITS

    cls = UNITS[unit]
    parser = _options_parser(cls)
    if parser is not None:
        try:
            parser.parse_object({"options": dict(options)})
        except Exception as e:  # noqa: BLE001 - jsonargparse's ArgumentError (and friends)
            raise ValueError(
                f"run {run!r}: options {dict(options)} of the {unit!r} unit: {_one_line(e)}"
            ) from None
    try:
        cls(**options)
    except (TypeError, ValueError) as e:
        raise ValueError(f"run {run!r}: {_one_line(e)}") from None


def unit_spec(parsed: RunName) -> RunSpec:
    """The spec of ``<strategy or preset>@<unit>[:<options>]`` (module doc): the strategy's
    spec (the mmActS config with the strategy and its options) plus ``active.unit`` and
    ``active.annotation_time``.

    Raises:
        ValueError: an unknown unit, a base that is not a strategy or preset, a strategy that
            cannot rank the unit, ``<case-level strategy>@case``, or a bad option (one line
            naming the run).
    """
    from lightning_ada.active.strategies import REGISTRY
    from lightning_ada.active.units import UNITS
    from lightning_ada.cli.short_names import class_path

    name, unit, base = parsed.text, str(parsed.unit), parsed.base
    if parsed.draw is not None:
        raise ValueError(f"run {name!r}: a run with a unit has no @<draw>")
    if unit not in UNITS:
        raise ValueError(
            f"run {name!r}: unknown annotation unit {unit!r}; units: {', '.join(sorted(UNITS))}"
        )
    if base in PRESETS:
        strategy, args = PRESETS[base].strategy, dict(PRESETS[base].options)
    elif base in REGISTRY:
        strategy, args = base, {}
    else:
        raise ValueError(
            f"run {name!r}: a unit needs a registered strategy or a preset before '@', not "
            f"{base!r} (bounds, draws and ablations ask for whole cases)"
        )
    ranks = REGISTRY[strategy].units
    if unit not in ranks:
        rules = sorted(n for n, c in REGISTRY.items() if unit in c.units)
        raise ValueError(
            f"run {name!r}: strategy {strategy!r} ranks {', '.join(sorted(ranks))} queries, not "
            f"the {unit!r} unit; rules that rank it: {', '.join(rules) or 'none registered'}"
        )
    if unit == "case" and set(ranks) == {"case"}:
        raise ValueError(
            f"run {name!r}: 'case' is the default unit of {strategy!r}: name the run "
            f"{compose_name(base, parsed.option_text, ())!r}"
        )
    to_unit, to_strategy = route_options(name, strategy, unit, parsed.options)
    args.update(to_strategy)
    check_strategy_options(name, strategy, args)
    check_unit_options(name, unit, to_unit)
    spec = _strategy_spec(name, strategy, args)
    overrides = {
        **spec.overrides,
        "active.unit": {"class_path": class_path(UNITS[unit]), "init_args": dict(to_unit)},
        "active.annotation_time": dict(ANNOTATION_TIME),
    }
    return dataclasses.replace(spec, overrides=overrides, unit=unit, unit_options=dict(to_unit))


def _base_spec(parsed: RunName, modalities: list[str]) -> RunSpec:
    """The spec of the name without additions, named as the whole run."""
    from lightning_ada.active.strategies import REGISTRY

    name, base = parsed.text, parsed.base
    if parsed.option_text:
        if base in PRESETS:
            strategy, args = PRESETS[base].strategy, {**PRESETS[base].options, **parsed.options}
        elif base in REGISTRY:
            strategy, args = base, dict(parsed.options)
        else:
            raise ValueError(
                f"run {name!r}: options need a registered strategy or a preset before ':'; "
                f"known: {sorted({*REGISTRY, *PRESETS})}"
            )
        check_strategy_options(name, strategy, args)
        return _strategy_spec(name, strategy, args)
    if base in PRESETS:
        preset = PRESETS[base]
        check_strategy_options(name, preset.strategy, preset.options)
        return _strategy_spec(name, preset.strategy, dict(preset.options))
    return _named_spec(name, base, modalities)


def _strategy_spec(name: str, strategy: str, args: dict[str, Any]) -> RunSpec:
    """The mmActS config with ``strategy`` and its options (schedule from the options)."""
    return RunSpec(
        name,
        "mmacts.yaml",
        strategy_overrides(strategy, **args),
        strategy=strategy,
        schedule=_schedule(strategy, args),
    )


def _named_spec(name: str, base: str, modalities: list[str]) -> RunSpec:
    """The spec of a plain name (bounds, strategies, draws, ablations) under run name ``name``."""
    from lightning_ada.active.strategies import REGISTRY

    def mm(extra: Mapping[str, Any] | None = None, args: dict[str, Any] | None = None,
           **kw: Any) -> RunSpec:
        a = dict(args or {})
        return RunSpec(
            name,
            "mmacts.yaml",
            {**strategy_overrides("mmacts", **a), **(extra or {})},
            strategy="mmacts",
            schedule=_schedule("mmacts", a),
            **kw,
        )

    if base == "lower":
        return RunSpec(
            name, "random.yaml", {"active.budget": 0}, fit=False, strategy="lower", budgeted=False
        )
    if base == "upper":
        return RunSpec(
            name,
            "upper_bound.yaml",
            {"data.label_all": True, "active.budget": 0},
            strategy="upper",
            budgeted=False,
        )
    if base.startswith("random@"):
        draw = base.split("@", 1)[1]
        if not draw.isdigit():
            raise ValueError(f"run {name!r}: random@<draw> needs a number, got {draw!r}")
        return RunSpec(
            name,
            "random.yaml",
            {"active.seed": 1000 + int(draw)},
            strategy="random",
            schedule="sequential",
        )
    if base == "random_one_off":  # the baseline of one-off strategies (same steps, same labels)
        return RunSpec(
            name,
            "random.yaml",
            strategy_overrides("random", schedule="one_off"),
            strategy="random",
            schedule="one_off",
        )
    if base == "mmacts":
        return mm()
    if base in REGISTRY:
        return RunSpec(
            name,
            "mmacts.yaml",
            strategy_overrides(base),
            strategy=base,
            schedule=_schedule(base),
        )
    if base == "mmacts_one_off":
        return mm(args={"schedule": "one_off"})
    if base == "mmacts_modality_masks":
        return mm(modality_masks_overrides())
    if base == "mmacts_modality_masks_perclass":
        return mm({**modality_masks_overrides(), "active.election_per_class": True})
    if base in FACTOR_ABLATIONS:
        return mm(args={"exponents": FACTOR_ABLATIONS[base]})
    if base == "mmacts_dominant_only":
        return mm({"data.train_input": "dominant_only"}, train_input="dominant_only")
    if base.startswith("mmacts_input_") and base.removeprefix("mmacts_input_") in modalities:
        value = "modality:" + base.removeprefix("mmacts_input_")
        return mm({"data.train_input": value}, train_input=value)
    known = sorted(
        {
            "lower",
            "upper",
            "mmacts_one_off",
            "random_one_off",
            "mmacts_modality_masks",
            "mmacts_modality_masks_perclass",
            "mmacts_dominant_only",
            *FACTOR_ABLATIONS,
            *REGISTRY,
            *PRESETS,
            *(f"mmacts_input_{m}" for m in modalities),
        }
    )
    raise ValueError(
        f"unknown run {name!r}{f' ({base!r} is no run)' if base != name else ''}; known: "
        f"{known} and random@<draw>, each optionally with "
        "strategy options (<strategy>:<key>=<value>,...) and additions (+<addition>)"
    )


def ablation_runs(groups: list[str], modalities: list[str]) -> list[str]:
    """Run names of the ablation ``groups`` (:data:`ABLATIONS`) for a task."""
    out: list[str] = []
    for g in groups:
        if g not in ABLATIONS:
            raise ValueError(f"unknown ablation {g!r}; known: {sorted(ABLATIONS)}")
        for name in ABLATIONS[g]:
            out += [name.format(modality=m) for m in modalities] if "{modality}" in name else [name]
    return out


def plan(
    strategies: list[str],
    budgets: list[int],
    ablations: list[str],
    modalities: list[str],
    ablation_budget: int = HEADLINE_BUDGET,
) -> list[tuple[str, int | None]]:
    """The ``(run name, budget)`` list of one task, fold and seed, in execution order.

    Bounds first (budget None), then every strategy at the headline budget, the ablations (at
    ``ablation_budget``), then the other budgets: the tables fill up early in a long run.
    """
    bounds = [s for s in strategies if budgetless(s)]
    others = [s for s in strategies if not budgetless(s)]
    first = [b for b in budgets if b == ablation_budget] or budgets[:1]
    rest = [b for b in budgets if b not in first]
    out: list[tuple[str, int | None]] = [(s, None) for s in bounds]
    out += [(s, b) for b in first for s in others]
    out += [(a, ablation_budget) for a in ablation_runs(ablations, modalities)]
    out += [(s, b) for b in rest for s in others]
    seen: set[tuple[str, int | None]] = set()
    return [x for x in out if not (x in seen or seen.add(x))]
