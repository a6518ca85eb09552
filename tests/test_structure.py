"""The shape of the code: no import cycles, arrows that run one way, modules of a readable size.

The import graph is read from the source (``ast``), not by importing: every module-level
``import``/``from`` between normserve's own modules, at any nesting except under
``if TYPE_CHECKING:``. Function-level (lazy) imports count too: a cycle through a function is
still a cycle a reader has to hold in their head.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {
    "normserve": "normserve",
    "models": "normserve.models",
    "export": "normserve.export",
    "service": "normserve.service",
}
MAX_LINES = 300
OVERSIZE_REASON = "Over 300 lines because"


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, path: Path) -> set[str]:
    """The normserve modules ``module`` imports (a ``from package import name`` counts as the
    submodule when ``name`` is one)."""
    targets: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            targets.add(base)
            targets.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {t for t in targets if t in MODULES and t != module}


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]], ignore_packages: bool) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""

    def edges(node: str) -> set[str]:
        # A package's __init__ importing its own submodules (re-exports) is not a cycle.
        return {
            t
            for t in graph[node]
            if not (ignore_packages and (t.startswith(node + ".") or node.startswith(t + ".")))
        }

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges(node):
            if target not in index:
                strong(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strong(node)
    return found


def test_the_graph_is_read_from_real_imports():
    # Guards the reader itself: edges it must see.
    assert "normserve.model_repository" in GRAPH["normserve.service.runtime.loader"]
    assert "normserve.service.dataplane" in GRAPH["normserve.service.http.fastpath"]
    assert "normserve.errors" in GRAPH["normserve.model_repository"]


def test_no_import_cycles():
    assert _cycles(GRAPH, ignore_packages=True) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph, ignore_packages=False) == [["a", "b", "c"]]


def _importers_of(prefix: str, among: str) -> list[str]:
    return sorted(
        f"{m} -> {t}"
        for m, targets in GRAPH.items()
        if m.startswith(among)
        for t in targets
        if t == prefix or t.startswith(prefix + ".")
    )


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        # The contract and the error base are the bottom: they import nothing of ours above.
        ("normserve.model_repository", "normserve.service"),
        ("normserve.model_repository", "normserve.export"),
        ("normserve.model_repository", "normserve.models"),
        ("normserve.errors", "normserve.model_repository"),
        # Serving never reaches the training/export side (the serving image has no torch).
        ("normserve.service", "normserve.export"),
        ("normserve.service", "normserve.models"),
        # The CLI is the top: nothing imports it.
        ("normserve.service", "normserve.cli"),
        ("normserve.export", "normserve.cli"),
        ("normserve.models", "normserve.cli"),
        ("normserve.models", "normserve.export"),
        # Inside service: transport above the data plane above the runtime above telemetry.
        ("normserve.service.runtime", "normserve.service.http"),
        ("normserve.service.runtime", "normserve.service.dataplane"),
        ("normserve.service.runtime", "normserve.service.codecs"),
        ("normserve.service.codecs", "normserve.service.http"),
        ("normserve.service.dataplane", "normserve.service.http"),
        ("normserve.service.telemetry", "normserve.service.runtime"),
        ("normserve.service.telemetry", "normserve.service.http"),
    ],
)
def test_arrows_run_one_way(lower: str, higher: str):
    assert _importers_of(higher, among=lower) == []


def test_long_modules_say_why():
    unexplained = []
    for module, path in MODULES.items():
        lines = path.read_text().count("\n")
        if lines > MAX_LINES:
            docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
            if OVERSIZE_REASON not in " ".join(docstring.split()):
                unexplained.append(f"{module}: {lines} lines")
    assert unexplained == []
