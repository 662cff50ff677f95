"""The import graph of the package: no cycle, no import from a lower floor to a higher one.

Every ``import lightning_ada...`` of every module is read from its source (module level and
inside functions alike), so a cycle hidden by a deferred import is found too. The floors are
declared below, package by package: what each may import. A new package must be placed here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lightning_ada"

#: package (or top-level module) -> the packages it may import besides itself
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "runtime": set(),
    "cases": {"errors"},
    "io": {"errors"},
    "weights": {"errors"},
    "metrics": {"errors"},
    "phantom": {"errors", "cases", "io"},
    "augment": {"errors", "io"},
    "data": {"errors", "cases", "io", "phantom", "augment"},
    "models": {"errors", "cases", "io", "weights", "metrics"},
    "run": {"errors", "io", "weights"},
    "active": {"errors", "cases", "io", "weights", "metrics", "phantom", "data", "models", "run"},
    "cli": {"errors", "cases", "io", "weights", "runtime", "data", "models", "run", "active"},
    "main": {"errors", "runtime", "data", "models", "run", "active", "cli"},
    # the MONAI Label app runs the CLI in child processes: it reads cases, checkpoints and the
    # strategy registry, never the CLI or the model in-process
    "monailabel": {"errors", "cases", "io", "weights", "data", "active"},
    "__init__": {"runtime"},
}

#: the oracles the callback must not know by name (it knows the protocol only)
CONCRETE_ORACLES = ("lightning_ada.active.oracles.files", "lightning_ada.active.oracles.simulated")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path, known: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for every lightning_ada import of ``path``."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("lightning_ada"):
                        found.append((alias.name, child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module and \
                    child.module.startswith("lightning_ada"):
                for alias in child.names:  # ``from pkg import submodule`` names the submodule
                    sub = f"{child.module}.{alias.name}"
                    found.append((sub if sub in known else child.module, child.lineno, in_function))
            visit(child, inner)

    visit(tree, False)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: {i for i, _, _ in imports(p, known) if i in known and i != m} for m, p in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle_hidden_behind_a_chain() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(edges) == [["a", "b", "c"]]


def test_no_import_from_a_lower_floor_to_a_higher_one() -> None:
    known = modules()
    unplaced = sorted({package_of(m) for m in known} - set(ALLOWED))
    assert unplaced == [], f"place these packages in ALLOWED: {unplaced}"
    wrong = []
    for module, path in known.items():
        own = package_of(module)
        for target, line, _ in imports(path, known):
            other = package_of(target)
            if other != own and other not in ALLOWED[own]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({own}) imports {target} ({other})")
    assert wrong == []


def test_no_import_of_the_package_inside_a_function() -> None:
    known = modules()
    deferred = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
        for path in known.values()
        for target, line, inside in imports(path, known)
        if inside
    ]
    assert deferred == []


def test_nothing_in_the_package_imports_the_benchmark_harness() -> None:
    offenders = [
        str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
        if any(isinstance(n, (ast.Import, ast.ImportFrom)) and "ada_bench" in ast.unparse(n)
               for n in ast.walk(ast.parse(p.read_text())))
    ]
    assert offenders == []


@pytest.mark.parametrize("name", ["callback", "query_round"])
def test_the_loop_knows_the_oracle_protocol_not_an_oracle(name: str) -> None:
    known = modules()
    path = PACKAGE / "active" / f"{name}.py"
    concrete = [t for t, _, _ in imports(path, known) if t in CONCRETE_ORACLES]
    assert concrete == []
    assert "FileOracle" not in path.read_text() and "SimulatedOracle" not in path.read_text()
