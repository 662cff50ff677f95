"""Short names for typed choices: ``--active.strategy mmacts`` for the class path of ``mmacts``.

The same expansion serves the command line (:func:`expand_short_names`) and configs built as
Python dicts (:func:`expand_config`, e.g. by the benchmark harness), so a short name means the
same class everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_ada.active.oracles import ORACLES
from lightning_ada.active.strategies import REGISTRY
from lightning_ada.active.units import UNITS

#: config keys whose value may be a registered short name, and the registry of each
CHOICES: dict[str, Mapping[str, type]] = {
    "active.strategy": REGISTRY,
    "active.oracle": ORACLES,
    "active.unit": UNITS,
}

#: command-line options whose value may be a short name (``help`` lists a class's options)
OPTIONS: dict[str, Mapping[str, type]] = {
    **{f"--{key}": names for key, names in CHOICES.items()},
    **{f"--{key}.help": names for key, names in CHOICES.items()},
}


def class_path(cls: type) -> str:
    """The import path of a class (``package.module.Class``)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def expand_short_names(args: list[str]) -> list[str]:
    """``--active.strategy mmacts`` -> the class path of ``mmacts`` (likewise ``--active.oracle``,
    ``--active.unit``).

    Class paths and ``class_path``/``init_args`` dicts pass through unchanged.
    """
    out = list(args)
    for i, arg in enumerate(out):
        key, eq, value = arg.partition("=")
        if key not in OPTIONS:
            continue
        names = OPTIONS[key]
        if eq and value in names:
            out[i] = f"{key}={class_path(names[value])}"
        elif not eq and i + 1 < len(out) and out[i + 1] in names:
            out[i + 1] = class_path(names[out[i + 1]])
    return out


def expand_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict's ``active.strategy`` / ``active.oracle`` given by a short name, as the
    ``{"class_path": ...}`` the command line makes of it (in place; returned)."""
    for key, names in CHOICES.items():
        section, option = key.split(".")
        part = config.get(section)
        if isinstance(part, dict) and isinstance(part.get(option), str) and part[option] in names:
            part[option] = {"class_path": class_path(names[part[option]])}
    return config
