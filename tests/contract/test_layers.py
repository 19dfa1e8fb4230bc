"""Dependencies point one way: the import graph, read from the source (`ast`), function-level
and `TYPE_CHECKING` imports included.

- No import cycle between first-party modules (`dunning`, `workflows`, `activities`,
  `starter`, `worker`).
- The library (`dunning.*`) never imports its entry points or the Temporal code that sits on
  top of it (`starter`, `worker`, `activities`, `workflows`); only the CLI (`dunning.cli`, which
  runs the worker and the demo) may.
- `dunning.domain` is pure: no SQLAlchemy (the workflow sandbox imports it).
- The workflow imports, of the project, only `dunning.domain` (and the metric names of
  `dunning.platform.metrics`, passed through the sandbox).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("dunning", "workflows", "activities", "starter")
MODULES = ("worker",)
ENTRY_POINTS = ("starter", "worker", "activities", "workflows")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[_module_name(path)] = path
    for name in MODULES:
        found[name] = ROOT / f"{name}.py"
    return found


def _is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def _imported(name: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The absolute module names an import statement loads (for `from X import Y`, X and, when
    Y is a module, X.Y)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    if node.level:
        package = name if _is_package(name) else name.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    yield base
    for alias in node.names:
        yield f"{base}.{alias.name}"


@functools.cache
def imports() -> dict[str, frozenset[str]]:
    """Module -> every module it imports (first-party or not), anywhere in its body."""
    graph: dict[str, frozenset[str]] = {}
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.update(_imported(name, node))
        graph[name] = frozenset(found)
    return graph


def first_party_edges() -> dict[str, set[str]]:
    known = modules()
    return {
        name: {target for target in targets if target in known and target != name}
        for name, targets in imports().items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
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
            visit(node)
    return found


def _top(name: str) -> str:
    return name.partition(".")[0]


def test_the_scan_sees_the_project() -> None:
    graph = first_party_edges()
    assert len(graph) > 60
    # Function-level imports count: `DunningClient.top_up` imports the wake module lazily.
    assert "dunning.credits.wake" in graph["dunning.cases.client"]
    assert "dunning.cli.demo" in graph["dunning.cli.server"]


def test_no_import_cycles() -> None:
    assert cycles(first_party_edges()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_library_never_imports_its_entry_points() -> None:
    wrong = sorted(
        (name, target)
        for name, targets in imports().items()
        if _top(name) == "dunning" and name != "dunning.cli" and not name.startswith("dunning.cli.")
        for target in targets
        if _top(target) in ENTRY_POINTS
    )
    assert wrong == []


def test_the_domain_is_pure() -> None:
    wrong = sorted(
        (name, target)
        for name, targets in imports().items()
        if name.startswith("dunning.domain")
        for target in targets
        if _top(target) == "sqlalchemy"
        or (target.startswith("dunning.") and not target.startswith(("dunning.domain",
                                                                      "dunning.errors")))
    )
    assert wrong == []


def test_the_workflow_imports_only_the_domain() -> None:
    wrong = sorted(
        (name, target)
        for name, targets in imports().items()
        if _top(name) == "workflows"
        for target in targets
        if _top(target) in (*PACKAGES, *MODULES)
        and _top(target) != "workflows"
        and not target.startswith("dunning.domain")
        and target not in ("dunning", "dunning.errors", "dunning.platform",
                           "dunning.platform.metrics")
    )
    assert wrong == []
