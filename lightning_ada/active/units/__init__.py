"""Annotation units: how much of a case one query asks for (:mod:`.base` holds the protocol).

Adding one: a module with an :class:`AnnotationUnit` subclass that sets ``name`` (it registers
itself on import). Every module of this package is imported below.
"""

import importlib
import pkgutil

from lightning_ada.active.units.base import UNITS, AnnotationUnit, Candidate, Region, Shape

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["UNITS", "AnnotationUnit", "Candidate", "Region", "Shape"]
