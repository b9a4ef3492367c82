"""The import rules of the layout, read from the source: the core never imports a method or a
dataset adapter, method plugins use the core only through ``wsbench.api`` and never import each
other (the shared DAE is not a method), and no module imports itself through a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
PACKAGES = {"wsbench": "wsbench", "plugins": "wsbench.plugins", "datasets": "wsbench.datasets"}
"""Source folder → the package it installs as (pyproject's package-dir)."""
SHARED = "wsbench.plugins.common"


def module_name(path: Path) -> str:
    """The dotted module a source file installs as."""
    relative = path.relative_to(PROJECT)
    parts = [PACKAGES[relative.parts[0]], *relative.with_suffix("").parts[1:]]
    return ".".join(parts).removesuffix(".__init__")


def source_modules() -> dict[str, Path]:
    """Every module of the project by its installed name."""
    return {
        module_name(path): path
        for folder in PACKAGES
        for path in sorted((PROJECT / folder).rglob("*.py"))
    }


MODULES = source_modules()


def imported(path: Path, name: str) -> set[str]:
    """The project modules ``path`` imports (at any depth of the file, lazily or not), each as
    the longest known module its import names."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imported(path, name) for name, path in MODULES.items()}


def kind(module: str) -> str:
    """``core``, ``shared``, ``method:<name>`` or ``dataset:<name>``."""
    if module.startswith(SHARED):
        return "shared"
    for prefix, label in (("wsbench.plugins.", "method"), ("wsbench.datasets.", "dataset")):
        if module.startswith(prefix):
            return f"{label}:{module.removeprefix(prefix).split('.')[0]}"
    if module in ("wsbench.plugins", "wsbench.datasets"):
        return "namespace"
    return "core"


def test_the_source_tree_is_read():
    assert "wsbench.harness.runner" in GRAPH and "wsbench.plugins.hideseek" in GRAPH
    assert "wsbench.api" in GRAPH["wsbench.plugins.otsu"]
    assert "wsbench.plugins.common.dae.network" in GRAPH["wsbench.plugins.hideseek"]


def test_the_core_imports_no_method_and_no_dataset():
    wrong = {
        (module, target)
        for module, targets in GRAPH.items()
        if kind(module) == "core"
        for target in targets
        if kind(target) != "core"
    }
    assert not wrong


def test_methods_use_the_core_through_wsbench_api_only_and_never_each_other():
    wrong = set()
    for module, targets in GRAPH.items():
        mine = kind(module)
        if not mine.startswith("method:") and mine != "shared":
            continue
        for target in targets:
            theirs = kind(target)
            allowed = theirs in (mine, "shared") or target == "wsbench.api"
            if mine == "shared" and theirs.startswith("method:"):
                allowed = False
            if not allowed:
                wrong.add((module, target))
    assert not wrong


def test_datasets_never_import_methods():
    wrong = {
        (module, target)
        for module, targets in GRAPH.items()
        if kind(module).startswith("dataset:")
        for target in targets
        if kind(target).startswith("method:") or kind(target) == "shared"
    }
    assert not wrong


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (module → imported modules), or ``None``."""
    state: dict[str, str] = {}
    trail: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        trail.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*trail[trail.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        trail.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_module_imports_itself_through_a_circle():
    assert find_cycle(GRAPH) is None


@pytest.mark.parametrize(
    ("graph", "has_cycle"),
    [({"a": {"b"}, "b": {"c"}, "c": set()}, False), ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True)],
)
def test_the_cycle_finder_finds_cycles(graph, has_cycle):
    assert (find_cycle(graph) is not None) == has_cycle
