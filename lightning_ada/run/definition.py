"""The run definition: what a run is, declared by each of its parts, recorded in every checkpoint
and compared when a checkpoint is resumed.

Each part of a run that has a say in what the run is declares its own entries through a
``run_definition()`` method (:class:`DeclaresRunDefinition`): the active callback its strategy,
budget and self-training, the datamodule its pool, stage, modalities and labels, the model its
network shape. :func:`collect` gathers them; nothing here knows those classes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as L


@runtime_checkable
class DeclaresRunDefinition(Protocol):
    """A part of a run that declares its entries of the run definition."""

    def run_definition(self) -> dict[str, Any]:
        """Plain, comparable entries (str, int, list, dict, None), by key."""
        ...


def parts(trainer: L.Trainer) -> Iterable[Any]:
    """The parts of a run that may declare entries: callbacks, datamodule, model (this order)."""
    return [*trainer.callbacks, trainer.datamodule, trainer.lightning_module]


def collect(trainer: L.Trainer) -> dict[str, Any]:
    """The run definition: every part's declared entries, merged in :func:`parts` order."""
    definition: dict[str, Any] = {}
    for part in parts(trainer):
        if isinstance(part, DeclaresRunDefinition):
            definition.update(part.run_definition())
    return definition


def plain(value: Any) -> Any:
    """A config value as a plain comparable type (tuples and lists as lists, mappings as dicts)."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    return value


def changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (old, new)}`` for every key recorded in both definitions that differs."""
    return {k: (old[k], new[k]) for k in old if k in new and old[k] != new[k]}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe_change(key: str, old: Any, new: Any) -> str:
    """One change as ``key old -> new`` (a pool by its size and the ids gone or added)."""
    if key == "pool":
        gone, added = sorted(set(old) - set(new)), sorted(set(new) - set(old))
        out = [f"pool {len(old)} -> {len(new)} cases"]
        if gone:
            out.append(f"without {gone[:3]}{'...' if len(gone) > 3 else ''}")
        if added:
            out.append(f"with new {added[:3]}{'...' if len(added) > 3 else ''}")
        return " ".join(out)
    if key == "model":
        return "model " + ", ".join(
            f"{k} {_short(old.get(k))} -> {_short(new.get(k))}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
        )
    return f"{key} {_short(old)} -> {_short(new)}"


def describe(diff: dict[str, tuple[Any, Any]]) -> str:
    """Every change of :func:`changes`, ``; ``-separated."""
    return "; ".join(describe_change(k, *v) for k, v in diff.items())
