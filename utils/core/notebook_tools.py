"""Keep the stage notebooks thin: strip outputs, and check the rules DESIGN.md sets for them."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

import nbformat

from utils.core import config

# The kernel `make` installs into the project's venv (see the Makefile); notebooks open on it.
KERNELSPEC = {"name": "sessionlen", "display_name": "sessionlen (.venv)", "language": "python"}


def strip_outputs(path: Path) -> bool:
    """Remove outputs and execution counts, and set the project kernel; True if it changed."""
    nb = nbformat.read(path, as_version=4)
    changed = nb.metadata.get("kernelspec") != KERNELSPEC
    nb.metadata["kernelspec"] = KERNELSPEC
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if cell.outputs or cell.execution_count is not None:
            cell.outputs, cell.execution_count = [], None
            changed = True
        for key in ("execution", "collapsed", "scrolled"):
            changed |= cell.metadata.pop(key, None) is not None
    if changed:
        nbformat.write(nb, path)
    return changed


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except ValueError:
        return False
    return True


def notebook_problems(path: Path) -> list[str]:
    """Every way a notebook breaks the thin-notebook rules (empty list when it is clean)."""
    nb = nbformat.read(path, as_version=4)
    problems: list[str] = []
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    if len(params) != 1:
        problems.append(f"{path}: {len(params)} cells tagged 'parameters' (exactly one expected)")
    for cell in params:
        for node in ast.parse(cell.source).body:
            if not (isinstance(node, ast.Assign) and _is_literal(node.value)):
                problems.append(f"{path}: parameters cell holds more than literal assignments")
                break
    for index, cell in enumerate(code):
        if cell.outputs or cell.execution_count is not None:
            problems.append(f"{path}: code cell {index} has outputs (strip them)")
        tree = ast.parse(cell.source)
        if any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
               for n in ast.walk(tree)):
            problems.append(f"{path}: code cell {index} defines a function or class")
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    if kernel != KERNELSPEC["name"]:
        problems.append(f"{path}: kernelspec {kernel!r}, expected the project kernel "
                        f"{KERNELSPEC['name']!r}")
    if not nb.cells or nb.cells[0].cell_type != "markdown":
        problems.append(f"{path}: the first cell must be a markdown title")
    return problems


def stage_notebook_paths(folders: Iterable[str] = config.STAGE_FOLDERS) -> list[Path]:
    """All notebooks in the stage folders."""
    return sorted(p for f in folders for p in (config.PROJECT_ROOT / f).glob("*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    """`python -m utils.core.notebook_tools strip|check [folders...]`."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("strip", "check"):
        print("usage: python -m utils.core.notebook_tools strip|check [folder ...]",
              file=sys.stderr)
        return 2
    paths = stage_notebook_paths(args[1:] or config.STAGE_FOLDERS)
    if args[0] == "strip":
        for path in paths:
            if strip_outputs(path):
                print(f"stripped {path.relative_to(config.PROJECT_ROOT)}")
        return 0
    problems = [p for path in paths for p in notebook_problems(path)]
    print("\n".join(problems) or f"{len(paths)} notebooks clean")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
