"""The notebook runner, on throwaway notebooks executed for real with papermill."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from utils import runner
from utils.core import config
from utils.core.errors import SessionlenError


def _notebook(path: Path, params: str, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), cell, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture()
def raw_dir(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "userid-timestamp-artid-artname-traid-traname.tsv").write_text("")
    return raw


@pytest.mark.notebooks
def test_runs_in_order_injecting_only_declared_parameters(tmp_path: Path, raw_dir: Path) -> None:
    out = tmp_path / "seen.txt"
    first = _notebook(tmp_path / "1_a.ipynb", 'scale = "demo"\nwork_dir = ""',
                      f"open({str(out)!r}, 'a').write(scale + ' ' + work_dir + '\\n')")
    second = _notebook(tmp_path / "2_b.ipynb", "epochs = 30",
                       f"open({str(out)!r}, 'a').write(str(epochs) + '\\n')")
    paths = runner.run_pipeline(raw=raw_dir, work=tmp_path / "work", scale="tiny",
                                notebooks=[first, second])
    assert out.read_text().splitlines() == [f"tiny {tmp_path / 'work'}", "2"]
    assert (paths.notebooks / tmp_path.name / "1_a.ipynb").is_file()


@pytest.mark.notebooks
def test_stops_at_first_failure_naming_it(tmp_path: Path, raw_dir: Path) -> None:
    bad = _notebook(tmp_path / "1_bad.ipynb", "seed = 1", "raise ValueError('boom')")
    never = _notebook(tmp_path / "2_never.ipynb", "seed = 1", "open('x', 'w')")
    with pytest.raises(SessionlenError, match=r"1_bad\.ipynb failed.*ValueError: boom"):
        runner.run_pipeline(raw=raw_dir, work=tmp_path / "work", scale="tiny",
                            notebooks=[bad, never])
    assert not (tmp_path / "x").exists()


def test_stage_notebooks_are_in_design_order(tmp_path: Path) -> None:
    for folder, names in {"baseline": ["2_t.ipynb", "1_s.ipynb"],
                          "data_processing": ["10_z.ipynb", "2_y.ipynb", "notes.ipynb"]}.items():
        (tmp_path / folder).mkdir()
        for name in names:
            (tmp_path / folder / name).write_text("{}")
    found = [f"{p.parent.name}/{p.name}" for p in runner.stage_notebooks(tmp_path)]
    assert found == ["data_processing/2_y.ipynb", "data_processing/10_z.ipynb",
                     "baseline/1_s.ipynb", "baseline/2_t.ipynb"]


def test_each_scale_sets_only_its_own_training_overrides() -> None:
    tiny, full = (runner.scale_overrides(config.get_scale(n)) for n in ("tiny", "full"))
    assert tiny["epochs"] == 2 and "batch_size" not in tiny
    assert full["batch_size"] == 1024 and full["lgbm_learning_rate"] == 0.1
    assert full["patience"] == 1 and full["refit_networks"] is False
    assert full["head_units"] == 32 and "head_units" not in tiny
    assert "epochs" not in full
    assert full["min_rows"] == config.ClusterParams.min_rows
    assert runner.scale_overrides(config.get_scale("demo")).keys() == {"min_rows",
                                                                       "min_sessions"}


def test_explicit_raw_dir_must_hold_the_plays_file(tmp_path: Path) -> None:
    with pytest.raises(SessionlenError, match="no userid-timestamp"):
        runner.prepare_raw("tiny", tmp_path)


@pytest.mark.notebooks
def test_each_notebook_line_is_streamed_as_it_is_printed(tmp_path: Path, raw_dir: Path,
                                                         capfd: pytest.CaptureFixture) -> None:
    # The second line is printed after a pause: it must still arrive, whole and prefixed.
    body = ("import sys, time\nprint('epoch 1/2', flush=True)\ntime.sleep(0.5)\n"
            "print('epoch 2/2', end='', flush=True)\nprint(' done')\n"
            "print('careful', file=sys.stderr)")
    notebook = _notebook(tmp_path / "1_train.ipynb", "seed = 1", body)
    runner.run_pipeline(raw=raw_dir, work=tmp_path / "work", scale="tiny", notebooks=[notebook])
    out, err = capfd.readouterr()
    prefix = f"[{tmp_path.name}/1_train]"
    assert f"{prefix} epoch 1/2\n{prefix} epoch 2/2 done\n" in out
    assert f"{prefix} careful\n" in err


def test_prefixed_lines_complete_lines_and_keep_a_bar_s_last_state() -> None:
    import io

    target = io.StringIO()
    stream = runner.PrefixedLines("[nb]", target)
    stream.write("a")
    stream.write("b\nc 10%\rc 50%\rc 100%\n")
    stream.write("tail")
    assert target.getvalue() == "[nb] ab\n[nb] c 100%\n"
    stream.close()
    assert target.getvalue().endswith("[nb] tail\n")


def test_relative_paths_reach_the_notebooks_as_absolute(tmp_path: Path, raw_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "seen.txt"
    nb = _notebook(tmp_path / "1_a.ipynb", 'work_dir = ""\nraw_dir = ""',
                   f"open({str(out)!r}, 'w').write(work_dir + ' ' + raw_dir)")
    monkeypatch.chdir(tmp_path)
    runner.run_pipeline(raw="raw", work="work", scale="tiny", notebooks=[nb])
    assert out.read_text() == f"{tmp_path / 'work'} {raw_dir}"
