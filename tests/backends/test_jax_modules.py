"""The JAX engine's floor plan (``backends/jax/``): its modules import one another
without cycles, and only ``_compat`` touches diffrax's or equinox's private API.

Read from the sources (``ast``), so these tests need neither JAX nor diffrax."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "backends" / "jax"


def _runtime_imports(tree: ast.Module) -> list[ast.ImportFrom | ast.Import]:
    """Imports run when the module is imported: ``if TYPE_CHECKING:`` blocks left out."""
    found = []

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list) and not isinstance(node, (ast.FunctionDef,
                                                                         ast.ClassDef)):
                    visit(children)

    visit(tree.body)
    return found


def _graph() -> dict[str, set[str]]:
    """Module name -> the engine's modules it imports at import time (``from .x``)."""
    graph = {}
    for path in ENGINE.glob("*.py"):
        tree = ast.parse(path.read_text())
        edges = set()
        for node in _runtime_imports(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                edges.add(node.module.split(".")[0])
        graph[path.stem] = edges
    return graph


def test_the_solve_modules_exist_and_solve_imports_them():
    graph = _graph()
    parts = {"_solver", "_controller", "_results", "_layout", "_forward", "_adjoint"}
    assert parts <= set(graph)
    assert {"_adjoint", "_forward", "_layout", "_results"} <= graph["solve"]
    # The parts never reach back to the entry point or to the programs.
    for part in parts:
        assert not ({"solve", "programs", "odenet", "cnf", "latent"} & graph[part]), part


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(module, path):
        state[module] = 1
        for other in sorted(graph.get(module, ())):
            if state.get(other) == 1:
                pytest.fail("import cycle: " + " -> ".join(path + [module, other]))
            if other in graph and other not in state:
                visit(other, path + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_only_compat_touches_private_api():
    for path in ENGINE.glob("*.py"):
        if path.stem == "_compat":
            continue
        source = path.read_text()
        for name in ("diffrax._", "equinox._", "eqx._"):
            assert name not in source, f"{path.name} names {name}"
