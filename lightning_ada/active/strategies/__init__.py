"""Query strategies.

Adding one: a module with a :class:`Strategy` subclass that sets ``name`` (it registers itself on
import). Every module of this package is imported below; a strategy elsewhere is used by its
class path (``--active.strategy my_pkg.MyStrategy``) or registered by importing its module.
"""

import importlib
import pkgutil

from lightning_ada.active.strategies.base import (
    NEEDS,
    REGISTRY,
    QueryContext,
    RunInfo,
    Scored,
    Strategy,
    build_strategy,
    strategy_class,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "NEEDS",
    "REGISTRY",
    "QueryContext",
    "RunInfo",
    "Scored",
    "Strategy",
    "build_strategy",
    "strategy_class",
]
