"""The package's shape: no import cycles, every import down the pipeline's layers, short modules.

Imports inside functions count: hiding a dependency in a function body does not remove it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from utils.core.config import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "utils"
# A module may import its own subpackage and any lower layer. The top (cli, runner, report)
# drives every stage; synthetic data is built with the baseline stage's split and baselines.
LAYERS = {"core": 0, "data_processing": 1, "baseline": 2, "models_with_clusters": 3,
          "synthetic": 3, "": 4}


def module_name(path: Path) -> str:
    """Dotted name of a module file under utils/ (a package's __init__ is the package)."""
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere in its body (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in modules and name != "utils"}


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules it imports (packages' __init__ files included)."""
    modules = all_modules()
    names = set(modules)
    return {name: imported_modules(path, names) - {name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def subpackage(module: str) -> str:
    """The subpackage a module belongs to ('' for the modules at the top of utils)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else ""


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a subpackage into another one at the same or a higher layer."""
    wrong = []
    for module, targets in graph.items():
        here = subpackage(module)
        for target in targets:
            there = subpackage(target)
            if there != here and LAYERS[there] >= LAYERS[here]:
                wrong.append(f"{module} -> {target}")
    return sorted(wrong)


def test_cycle_finder_reports_a_cycle_and_only_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_layer_check_reports_an_upward_import() -> None:
    graph = {"utils.core.x": {"utils.baseline.y"}, "utils.baseline.y": {"utils.core.x"},
             "utils.cli": {"utils.baseline.y"}}
    assert upward_imports(graph) == ["utils.core.x -> utils.baseline.y"]


def test_every_subpackage_has_a_layer() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(LAYERS) - {""}


def test_function_level_imports_are_edges() -> None:
    graph = import_graph()
    assert "utils.models_with_clusters.vocab_spark" in graph[
        "utils.models_with_clusters.vocab"], "vocab imports its Spark twin inside a function"


@pytest.mark.parametrize("check", [cycles, upward_imports], ids=["no cycle", "layers"])
def test_the_package_import_graph(check) -> None:
    assert check(import_graph()) == []


def test_no_module_is_over_400_lines() -> None:
    lengths = {name: len(path.read_text(encoding="utf-8").splitlines())
               for name, path in all_modules().items()}
    assert {name: n for name, n in lengths.items() if n > 400} == {}
