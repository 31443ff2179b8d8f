"""No import circle among the project's modules, and the layering the code relies on.

Read with `ast` (nothing is imported): module-level imports only, since an import inside a function
runs after every module has loaded, and `if TYPE_CHECKING:` blocks never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("ragfleet", "workers", "tasks", "api_shim")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop(0)
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            pending += node.body + node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, ast.With):
            pending += node.body


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports at module level (a `from pkg import mod` counts as `mod`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _module_level_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            # the deepest project module the import names (importing a.b.c runs a and a.b too, but
            # a package's __init__ importing its submodules is no circle of ours to chase)
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_module_level_imports_only() -> None:
    graph = import_graph()
    assert "workers.base" in graph["tasks._common"]  # `from workers.base import RagfleetTask`
    assert "workers.hooks.node" in graph["workers.hooks.warmup"]  # `from workers.hooks import node`
    assert "ragfleet.embedding" not in graph["workers.hooks.warmup"]  # imported inside a function


def test_no_import_circle_among_the_projects_modules() -> None:
    assert cycles(import_graph()) == []


def test_the_core_imports_nothing_of_the_workers_and_no_celery_signals() -> None:
    """ragfleet/ is importable and testable without a running Celery: it imports no worker, task or
    API module (at module level or inside a function), and connects no Celery signal."""
    modules = _modules()
    for name, path in modules.items():
        if not name.startswith("ragfleet"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
                assert not any(n.split(".")[0] in ("workers", "tasks", "api_shim") for n in names), (
                    name,
                    names,
                )
                assert not any(n == "celery.signals" for n in names), name
                if isinstance(node, ast.ImportFrom) and node.module == "celery":
                    assert "signals" not in {a.name for a in node.names} or name == "ragfleet.producer", name


def test_task_modules_build_no_app() -> None:
    """shared_task style: a task module imports no Celery app; workers.app imports them."""
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("tasks"):
            assert "workers.app" not in deps, name
