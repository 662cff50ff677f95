"""Query strategies.

Adding one: a module in this package with a ``@register`` class (its registry line); every module
here is imported below, so nothing else needs editing.
"""

import importlib
import pkgutil

from lightning_ada.active.strategies.base import (
    REGISTRY,
    QueryContext,
    Scored,
    Strategy,
    build_strategy,
    register,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "QueryContext", "Scored", "Strategy", "build_strategy", "register"]
