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
  ``mmacts_dominant_only`` (``data.train_input: dominant_only``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ada_bench.results import BUDGETLESS

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
    """

    name: str
    config: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    fit: bool = True
    strategy: str = ""
    budgeted: bool = True
    train_input: str = "all"
    schedule: str | None = None


def _callback_parameters() -> set[str]:
    from lightning_ada.active.callback import ActiveQueryCallback

    return set(inspect.signature(ActiveQueryCallback.__init__).parameters)


def strategy_overrides(strategy: str, **init_args: Any) -> dict[str, Any]:
    """The overrides choosing ``strategy`` with ``init_args``: its ``class_path`` / ``init_args``
    (typed strategies), or name plus ``strategy_args`` (no progress bars) where the callback
    still takes those (the library before typed strategies; drop once both have merged)."""
    from lightning_ada.active.strategies import REGISTRY

    cls = REGISTRY[strategy]
    if "strategy_args" not in _callback_parameters():
        path = f"{cls.__module__}.{cls.__qualname__}"
        return {"active.strategy": {"class_path": path, "init_args": dict(init_args)}}
    args = dict(init_args)
    if "progress" in inspect.signature(cls.__init__).parameters:
        args.setdefault("progress", False)
    return {"active.strategy": strategy, "active.strategy_args": args}


def modality_masks_overrides() -> dict[str, Any]:
    """The overrides making the simulated oracle deliver the elected modality's mask only."""
    if "use_modality_masks" in _callback_parameters():
        return {"active.use_modality_masks": True}
    from lightning_ada.active.oracle import SimulatedOracle

    path = f"{SimulatedOracle.__module__}.{SimulatedOracle.__qualname__}"
    return {"active.oracle": {"class_path": path, "init_args": {"use_modality_masks": True}}}


def _schedule(strategy: str, args: dict[str, Any] | None = None) -> str:
    from lightning_ada.active.strategies import REGISTRY

    if args and "schedule" in args:
        return str(args["schedule"])
    return str(getattr(REGISTRY.get(strategy), "schedule", "sequential"))


def run_spec(name: str, modalities: list[str]) -> RunSpec:
    """The :class:`RunSpec` of a run name (module doc) for a task with ``modalities``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
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

    if name == "lower":
        return RunSpec(
            name, "random.yaml", {"active.budget": 0}, fit=False, strategy="lower", budgeted=False
        )
    if name == "upper":
        return RunSpec(
            name,
            "upper_bound.yaml",
            {"data.label_all": True, "active.budget": 0},
            strategy="upper",
            budgeted=False,
        )
    if name.startswith("random@"):
        draw = int(name.split("@", 1)[1])
        return RunSpec(
            name,
            "random.yaml",
            {"active.seed": 1000 + draw},
            strategy="random",
            schedule="sequential",
        )
    if name == "random_one_off":  # the baseline of one-off strategies (same steps, same labels)
        return RunSpec(
            name,
            "random.yaml",
            strategy_overrides("random", schedule="one_off"),
            strategy="random",
            schedule="one_off",
        )
    if name == "mmacts":
        return mm()
    if name in REGISTRY:
        return RunSpec(
            name,
            "mmacts.yaml",
            strategy_overrides(name),
            strategy=name,
            schedule=_schedule(name),
        )
    if name == "mmacts_one_off":
        return mm(args={"schedule": "one_off"})
    if name == "mmacts_modality_masks":
        return mm(modality_masks_overrides())
    if name == "mmacts_modality_masks_perclass":
        return mm({**modality_masks_overrides(), "active.election_per_class": True})
    if name in FACTOR_ABLATIONS:
        return mm(args={"exponents": FACTOR_ABLATIONS[name]})
    if name == "mmacts_dominant_only":
        return mm({"data.train_input": "dominant_only"}, train_input="dominant_only")
    if name.startswith("mmacts_input_") and name.removeprefix("mmacts_input_") in modalities:
        value = "modality:" + name.removeprefix("mmacts_input_")
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
            *(f"mmacts_input_{m}" for m in modalities),
        }
    )
    raise ValueError(f"unknown run {name!r}; known: {known} and random@<draw>")


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
    bounds = [s for s in ("lower", "upper") if s in strategies]
    others = [s for s in strategies if s not in BUDGETLESS]
    first = [b for b in budgets if b == ablation_budget] or budgets[:1]
    rest = [b for b in budgets if b not in first]
    out: list[tuple[str, int | None]] = [(s, None) for s in bounds]
    out += [(s, b) for b in first for s in others]
    out += [(a, ablation_budget) for a in ablation_runs(ablations, modalities)]
    out += [(s, b) for b in rest for s in others]
    seen: set[tuple[str, int | None]] = set()
    return [x for x in out if not (x in seen or seen.add(x))]
