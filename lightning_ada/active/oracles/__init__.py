"""Oracles: who delivers the mask of a queried case (:mod:`.base` holds the protocol).

Adding one: a module with an :class:`Oracle` subclass that sets ``name`` (it registers itself on
import). Every module of this package is imported below; an oracle elsewhere is used by its
class path (``--active.oracle my_pkg.MyOracle``).
"""

import importlib
import pkgutil

from lightning_ada.active.oracles.base import ORACLES, Answer, Oracle, Request, Status

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ORACLES", "Answer", "Oracle", "Request", "Status"]
