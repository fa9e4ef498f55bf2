"""The shape of ``service/``'s imports: they point one way, and Kafka's client stays behind
its boundary (STYLE: no cycles; ``confluent_kafka`` imported only by the Kafka backend and the
schema registry client; the backends never import the dispatcher)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENT_ALLOWED = ("service.backends.kafka", "service.schema_registry")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "service").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported(name: str, path: Path) -> set[str]:
    """Every name imported at run time (``if TYPE_CHECKING:`` blocks left out), anywhere."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names)
            for field in ("body", "orelse", "finalbody"):
                visit(getattr(node, field, []))
            for handler in getattr(node, "handlers", []):
                visit(handler.body)

    visit(ast.parse(path.read_text()).body)
    return names


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set()
        for target in imported(name, path):
            parts = target.split(".")
            for end in range(len(parts), 0, -1):  # the longest known module it names
                candidate = ".".join(parts[:end])
                if candidate in known:
                    if candidate != name:
                        targets.add(candidate)
                    break
        edges[name] = targets
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strong(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges[node]:
            if target not in index:
                strong(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            strong(node)
    return found


def test_service_modules_import_each_other_without_cycles() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_kafka_client_is_imported_only_behind_its_boundary() -> None:
    outside = {
        name: sorted(n for n in imported(name, path) if n.split(".")[0] == "confluent_kafka")
        for name, path in modules().items()
        if not name.startswith(CLIENT_ALLOWED)
    }
    assert {name: found for name, found in outside.items() if found} == {}


def test_the_backends_never_import_the_dispatcher() -> None:
    edges = graph()
    upward = {
        name: sorted(t for t in targets if t.startswith(("service.dispatch", "service.runner")))
        for name, targets in edges.items()
        if name.startswith("service.backends")
    }
    assert {name: found for name, found in upward.items() if found} == {}
