"""Query strategies. Adding one: a file here with a ``@register`` class, plus one import line below."""

from lightning_ada.active.strategies.base import (
    REGISTRY,
    QueryContext,
    Scored,
    Strategy,
    build_strategy,
    register,
)
from lightning_ada.active.strategies.entropy import EntropyStrategy
from lightning_ada.active.strategies.mmacts import MMActSStrategy
from lightning_ada.active.strategies.random import RandomStrategy

__all__ = [
    "REGISTRY",
    "EntropyStrategy",
    "MMActSStrategy",
    "QueryContext",
    "RandomStrategy",
    "Scored",
    "Strategy",
    "build_strategy",
    "register",
]
