"""Notebook rules: thin, one literal parameters cell, no definitions, outputs stripped."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from utils.core import notebook_tools


def _write(path: Path, cells: list, kernel: dict | None = None) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = kernel or notebook_tools.KERNELSPEC
    nbformat.write(nb, path)
    return path


def _params(source: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["parameters"]
    return cell


def test_clean_notebook_has_no_problems(tmp_path: Path) -> None:
    path = _write(tmp_path / "ok.ipynb", [nbformat.v4.new_markdown_cell("# t"),
                                          _params("a = 1\nb = [0.1, 'x']"),
                                          nbformat.v4.new_code_cell("print(a)")])
    assert notebook_tools.notebook_problems(path) == []


@pytest.mark.parametrize(
    ("cells", "problem"),
    [
        ([_params("a = 1"), _params("b = 2")], "2 cells tagged"),
        ([_params("a = f(1)")], "more than literal"),
        ([_params("a = 1"), nbformat.v4.new_code_cell("def f():\n    pass")], "defines"),
        ([_params("a = 1"), nbformat.v4.new_code_cell("g = lambda x: x")], "defines"),
    ],
)
def test_rule_breaks_are_reported(tmp_path: Path, cells: list, problem: str) -> None:
    path = _write(tmp_path / "bad.ipynb", [nbformat.v4.new_markdown_cell("# t"), *cells])
    assert any(problem in p for p in notebook_tools.notebook_problems(path))


def test_a_notebook_on_another_kernel_is_reported_and_strip_mends_it(tmp_path: Path) -> None:
    python3 = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    path = _write(tmp_path / "k.ipynb", [nbformat.v4.new_markdown_cell("# t"), _params("a = 1")],
                  kernel=python3)
    assert any("kernelspec 'python3'" in p for p in notebook_tools.notebook_problems(path))
    assert notebook_tools.strip_outputs(path) is True
    assert notebook_tools.notebook_problems(path) == []


def test_strip_removes_outputs(tmp_path: Path) -> None:
    code = nbformat.v4.new_code_cell("1")
    code.outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "1"})]
    code.execution_count = 3
    path = _write(tmp_path / "o.ipynb", [nbformat.v4.new_markdown_cell("# t"), _params("a=1"),
                                         code])
    assert any("outputs" in p for p in notebook_tools.notebook_problems(path))
    assert notebook_tools.strip_outputs(path) is True
    assert notebook_tools.notebook_problems(path) == []
    assert notebook_tools.strip_outputs(path) is False


def test_committed_stage_notebooks_are_thin() -> None:
    problems = [p for nb in notebook_tools.stage_notebook_paths()
                for p in notebook_tools.notebook_problems(nb)]
    assert problems == []
