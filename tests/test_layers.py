"""The package's folders are its layers, and each imports only from the layers before it.

The pure core has no I/O: it imports neither psycopg nor Airflow nor boto, so its decisions can be
tested on plain data. The Postgres and AWS shells never reach into the Airflow face, and the engine
(which wires the core to the shells) is imported only by the face.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "plugins" / "inactive_users"
#: Each layer and what it may import from the package (besides itself and the package root).
ALLOWED = {
    "core": set(),
    "postgres": {"core"},
    "aws": {"core", "postgres"},
    "engine": {"core", "postgres", "aws"},
    "face": {"core", "postgres", "aws", "engine"},
    "example_dags": {"face"},  # the DAG file users copy: the face's public entry only
}
#: Third-party packages that mean I/O; the core imports none of them.
IO_PACKAGES = {"psycopg", "airflow", "boto3", "botocore", "fastapi", "jinja2", "requests"}


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (lazy imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module.split(".")[0] == "inactive_users":  # the submodules among the names too
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.stem == "engine")


def test_every_module_is_in_a_layer() -> None:
    top_level = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top_level == ["__init__.py", "engine.py"]
    assert {layer_of(p) for p in MODULES} == set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_from_earlier_layers(path: Path) -> None:
    layer = layer_of(path)
    reached = {
        m.split(".")[1]
        for m in imported_modules(path)
        if m.startswith("inactive_users.") and m.split(".")[1] in ALLOWED.keys() - {layer}
    }
    assert reached <= ALLOWED[layer], f"{layer} may not import from {sorted(reached - ALLOWED[layer])}"
    if layer == "core":
        io = {m.split(".")[0] for m in imported_modules(path)} & IO_PACKAGES
        assert not io, f"the pure core imports {sorted(io)}"


def package_module(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(("inactive_users", *parts))


MODULE_NAMES = {package_module(p): p for p in PACKAGE.rglob("*.py")}


def private_names_imported(path: Path) -> list[str]:
    """``module._name`` for each private name this file takes from another module of the package."""
    return [
        f"{node.module}.{alias.name}"
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("inactive_users")
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]


def test_no_module_imports_another_modules_private_names() -> None:
    found = {package_module(p): names for p in MODULE_NAMES.values() if (names := private_names_imported(p))}
    assert not found, found


def test_no_import_cycles() -> None:
    """Type-only and lazy imports count: a cycle between two modules is one module in two files."""
    graph = {
        name: {m for m in imported_modules(path) if m in MODULE_NAMES and m != name}
        for name, path in MODULE_NAMES.items()
    }
    cycles = []
    for start in graph:
        stack, seen = [(start, (start,))], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join((*trail, start)))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, (*trail, nxt)))
    assert not cycles, cycles
