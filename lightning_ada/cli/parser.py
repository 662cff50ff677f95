"""The CLI's argument parser: a parse error is one line ``error: ...`` and exit status 2."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser

from lightning_ada.cli.short_names import CHOICES


def one_line_error(message: str) -> str:
    """A parser error as one line naming the key and, where known, the accepted values."""
    text = " ".join(message.split())
    unknown = re.search(r"Parser key \"(active\.(strategy|oracle))\".*Expected a dot import path string: (\S+)", text)
    if unknown:
        key, kind, value = unknown.groups()
        names = CHOICES[key]
        return f"{key}: unknown {kind} {value!r}; known: {', '.join(sorted(names))} (or a class path)"
    option = re.search(r"Parser key \"([\w.]+)\": Problem with given class_path '([\w.]+)': Option '(\w+)' is not accepted", text)
    if option:
        key, class_path, name = option.groups()
        module, _, cls_name = class_path.rpartition(".")
        params = inspect.signature(getattr(importlib.import_module(module), cls_name)).parameters
        accepted = ", ".join(p for p in params if p not in ("self", "args", "kwargs")) or "none"
        return f"{key}: {class_path.rpartition('.')[2]} has no option {name!r}; accepted: {accepted}"
    optional = re.search(  # an Optional[X] option: X's own complaint, not the Union dump
        r"Parser key \"([\w.]+)\": Does not validate against any of the Union subtypes .*?"
        r"Errors: - (.+?) - Expected a <class 'NoneType'>.*Given value: (.*)$", text,
    )
    if optional:
        key, reason, value = optional.groups()
        return f'Parser key "{key}": ' + re.sub(r"^(Not of type \w+): ", rf"\1: {value} ", reason)
    return text


class ADAArgumentParser(LightningArgumentParser):
    """Parse errors as one line ``error: ...`` on stderr and exit code 2 (no usage dump)."""

    def error(self, message: str, ex: Exception | None = None) -> Any:
        if not self.exit_on_error:
            return super().error(message, ex)
        sys.stderr.write(f"error: {one_line_error(message)}\n")
        sys.exit(2)
