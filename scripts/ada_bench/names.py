"""The grammar of run names: ``<base>[@<unit>][:<key>=<value>,...][+<addition>...]``.

* ``<base>``: a bound (``lower``, ``upper``), a registered strategy (``mmacts``), a repeated draw
  (``random@1``), an ablation (``mmacts_one_off``) or a preset (``mmacts_paper``), as
  :func:`ada_bench.protocol.run_spec` knows them;
* ``@<unit>``: the annotation unit of the run (``random_region@slices``, ``clasp_pe@patch``): a
  name of :data:`lightning_ada.active.units.UNITS` (``case``, ``slices``, ``patch``); without it
  the run asks for whole cases (the library's default unit). ``@`` followed by digits is a
  repeated draw (``random@1``), by a name a unit;
* ``:<key>=<value>,...``: options of the base's strategy (its ``init_args``) and, with a unit,
  of the unit (``entropy_region@slices:k=3,power=2``: ``k`` is the slices unit's, ``power`` the
  rule's; :func:`ada_bench.protocol.run_spec` routes each key to the one that accepts it, and a
  key both accept is written ``unit.<key>`` or ``strategy.<key>``); each value is read as a YAML
  scalar or flow collection (``density_rule=inclusive``, ``exponents=[1, 0, 1]``,
  ``density_delta=0.5``); commas inside brackets or quotes belong to the value;
* ``+<addition>``: an overlay config ``configs/additions/<addition>.yaml`` composed onto the run
  (``random+st``, ``upper+dgst``, ``mmacts:ranking=per_region+st+gba``).

Only the syntax is checked here; whether a base, option or addition exists is the protocol's
business (:mod:`ada_bench.protocol`). This module imports nothing of the harness, so the results
and tables code can read run names without building anything.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

#: the runs whose result does not depend on the query budget (and their name in ``run``)
BUDGETLESS = frozenset({"source", "lower", "upper"})
_ADDITION = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
#: an option key, optionally qualified by whose option it is (``unit.k``, ``strategy.power``)
_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z_][A-Za-z0-9_]*")
#: the name of an annotation unit after ``@`` (digits after ``@`` are a draw)
_UNIT = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_DRAW = re.compile(r"^(?P<name>[^:+@]+)@(?P<draw>\d+)")
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")
_OPEN, _CLOSE = "[{(", "]})"


@dataclass(frozen=True)
class RunName:
    """A parsed run name.

    Attributes:
        text: the name as given (the ``run`` field of its result rows).
        base: the part before the unit, options and additions (``random@1``, ``mmacts_paper``,
            ``random_region`` of ``random_region@slices``).
        options: the strategy's (and the unit's) options, in the order given (values read as
            YAML).
        option_text: the options as written (``density_rule=inclusive,ranking=per_region``).
        additions: the overlay names, in order.
        unit: the annotation unit after ``@`` (``slices``), None without one (whole cases).
    """

    text: str
    base: str
    options: dict[str, Any] = field(default_factory=dict)
    option_text: str = ""
    additions: tuple[str, ...] = ()
    unit: str | None = None

    @property
    def base_method(self) -> str:
        """The base without a ``@draw`` suffix (``random@1`` -> ``random``)."""
        m = _DRAW.match(self.base)
        return m.group("name") if m else self.base

    @property
    def draw(self) -> int | None:
        """The repeated-draw index of ``random@<k>``, else None."""
        m = _DRAW.match(self.base)
        return int(m.group("draw")) if m else None

    @property
    def method(self) -> str:
        """The name without the ``@draw`` suffix: repeated draws of one method share it."""
        return compose_name(self.base_method, self.option_text, self.additions, self.unit)

    @property
    def is_variant(self) -> bool:
        """Options, additions or a unit given (a method of its own in the tables)."""
        return bool(self.option_text or self.additions or self.unit)

    def without_last_addition(self) -> str | None:
        """The method this one adds its last addition to (``random+st+gba`` -> ``random+st``),
        or None without additions."""
        if not self.additions:
            return None
        return compose_name(self.base_method, self.option_text, self.additions[:-1], self.unit)

    def without_additions(self) -> str:
        """The method without any addition (``mmacts:x=1+st`` -> ``mmacts:x=1``)."""
        return compose_name(self.base_method, self.option_text, (), self.unit)


def compose_name(
    base: str, option_text: str = "", additions: tuple[str, ...] = (), unit: str | None = None
) -> str:
    """The run name of ``base`` with a unit, options (as written) and additions."""
    return (
        base + (f"@{unit}" if unit else "") + (f":{option_text}" if option_text else "")
        + "".join(f"+{a}" for a in additions)
    )


def _scan(text: str):
    """``(character, bracket depth after it, inside quotes)`` for each character of ``text``."""
    depth, quote = 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
            yield ch, depth, True
            continue
        if ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
        yield ch, depth, bool(quote)


def _depth_changes(text: str) -> int:
    """Brackets opened minus closed in ``text`` (outside quotes)."""
    depth = 0
    for _, depth, _ in _scan(text):
        pass
    return depth


def split_top_level(text: str, sep: str) -> list[str]:
    """``text`` split at every ``sep`` outside brackets and quotes."""
    parts, current = [], ""
    for ch, depth, quoted in _scan(text):
        if ch == sep and depth == 0 and not quoted:
            parts.append(current)
            current = ""
            continue
        current += ch
    parts.append(current)
    return parts


def read_value(text: str) -> Any:
    """An option value read as YAML (``1e-3`` a float, as on the command line)."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"value {text!r} is not valid YAML ({str(e).splitlines()[0]})") from None
    return float(text) if isinstance(value, str) and _FLOAT.match(text) else value


@functools.lru_cache(maxsize=4096)  # the tables read the same names over and over
def parse_run_name(text: str) -> RunName:
    """Parse ``text`` (module doc). The result is shared between calls: do not mutate it.

    Raises:
        ValueError: an empty base, an option that is not ``key=value``, a key given twice, or an
            addition that is not a name (the message quotes the run name).
    """
    if not text or text != text.strip():
        raise ValueError(f"run name {text!r}: empty or with surrounding spaces")
    head, *tokens = text.split("+")
    additions: list[str] = []
    for tok in tokens:  # a '+' inside a value (1e+3, [a+b]) belongs to the value
        if not additions and (_depth_changes(head) > 0 or not _ADDITION.fullmatch(tok)):
            head += "+" + tok
        elif _ADDITION.fullmatch(tok):
            additions.append(tok)
        else:
            raise ValueError(
                f"run {text!r}: addition {tok!r} is not a name (letters, digits, _ and -)"
            )
    base, colon, option_text = head.partition(":")
    if not base:
        raise ValueError(f"run {text!r}: no run before ':'")
    base, unit = _split_unit(text, base)
    if colon and not option_text:
        raise ValueError(f"run {text!r}: ':' needs options, e.g. {base}:key=value")
    options: dict[str, Any] = {}
    if option_text:
        for item in split_top_level(option_text, ","):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not _KEY.fullmatch(key) or not value.strip():
                raise ValueError(
                    f"run {text!r}: option {item!r} is not key=value (e.g. {base}:"
                    "density_rule=inclusive,ranking=per_region)"
                )
            if key in options:
                raise ValueError(f"run {text!r}: option {key!r} given twice")
            try:
                options[key] = read_value(value.strip())
            except ValueError as e:
                raise ValueError(f"run {text!r}: option {key}: {e}") from None
    return RunName(text, base, options, option_text, tuple(additions), unit)


def _split_unit(text: str, base: str) -> tuple[str, str | None]:
    """``name@unit`` -> ``(name, unit)``; ``name@<digits>`` (a draw) and a plain name stay.

    Raises:
        ValueError: more than one ``@``, or ``@`` followed by neither digits nor a unit name.
    """
    name, at, after = base.partition("@")
    if not at or after.isdigit():
        return base, None
    if not name or "@" in after or not _UNIT.fullmatch(after):
        raise ValueError(
            f"run {text!r}: '@' takes a draw number (random@1) or an annotation unit "
            "(random_region@slices), once"
        )
    return name, after


def method_of(run: str) -> str:
    """The method of a run: its name without a ``@draw`` suffix (``random@1+st`` -> ``random+st``).

    A name the grammar cannot read (e.g. from an older results file) loses only ``@...``.
    """
    try:
        return parse_run_name(run).method
    except ValueError:
        return run.split("@", 1)[0]


def bound_of(run: str) -> str | None:
    """``lower`` / ``upper`` / ``source`` for a bound run (additions allowed: ``upper+dgst``)."""
    try:
        base = parse_run_name(run).base_method
    except ValueError:
        base = run
    return base if base in BUDGETLESS else None


def budgetless(run: str) -> bool:
    """The run's result does not depend on the query budget (the bounds, the source run)."""
    return bound_of(run) is not None


def folder_name(run: str) -> str:
    """A file-system name of a run: ``@<draw>`` -> ``_<draw>``, ``@<unit>`` -> ``-<unit>`` (no
    strategy name holds a ``-``, so ``stdr@slices`` never meets a strategy ``stdr_slices``); a
    name with other characters than letters, digits and ``_ . + -`` gets them replaced and a
    short hash of the full name (unique)."""
    import hashlib

    plain = re.sub(r"@(?=[A-Za-z])", "-", run).replace("@", "_")
    if re.fullmatch(r"[A-Za-z0-9_.+-]+", plain):
        return plain
    safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", plain).strip("_")[:80]
    return f"{safe}-{hashlib.sha1(run.encode()).hexdigest()[:8]}"
