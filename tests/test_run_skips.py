"""Data too small for a stage: the runner skips those notebooks, says why, and `--strict` fails.

The real 5,000-line excerpt of the Last.fm 1K dataset (one listener with a long history, one with
a few plays) runs through the baseline models, but has one user eligible for clustering.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from utils import runner
from utils.baseline.summaries import summarize
from utils.core import columns as C
from utils.core.config import (
    PROJECT_ROOT,
    ClusterParams,
    CrawlParams,
    SessionParams,
    WorkLayout,
    get_scale,
)
from utils.core.errors import DatasetTooSmallError, SessionlenError, WorkBusyError
from utils.core.results import load_experiments
from utils.core.skips import SkipNote, read_skips
from utils.data_processing.denormalize import denormalize
from utils.data_processing.track_metadata import build_track_metadata
from utils.data_processing.tracks import build_unique_tracks
from utils.models_with_clusters.profiles import build_user_profiles
from utils.models_with_clusters.session_data import build_session_data
from utils.models_with_clusters.vocab import build_vocab

CLUSTER_NOTEBOOKS = [PROJECT_ROOT / "models_with_clusters" / name for name in
                     ("4_cluster_analysis.ipynb", "5_train_and_test_model.ipynb")]
TOO_FEW = ("clustering needs at least {needed} eligible users ({why}); user_profile_cluster.csv "
           "has 1 of the 2 users (max_average_length=20000.0, {thresholds}): "
           "lower clusters or the eligibility thresholds "
           "(models_with_clusters/3_build_user_profiles), or use data with more listeners")
CHOOSING_4 = "choosing the number of clusters; the elbow needs 3 values of k"
CHOOSING_5 = "choosing the number of clusters"
DEFAULT_THRESHOLDS = "min_rows=500, min_sessions=30"
SKIP_4 = TOO_FEW.format(needed=3, why=CHOOSING_4, thresholds=DEFAULT_THRESHOLDS)
SKIP_5 = TOO_FEW.format(needed=3, why=CHOOSING_5, thresholds=DEFAULT_THRESHOLDS)
ROW = ("from utils.core.columns import EXPERIMENT_COLUMNS\n"
       "from utils.core.results import append_experiments\n"
       "row = {**dict.fromkeys(EXPERIMENT_COLUMNS, 1.0), 'run_id': 'r1', 'stage': 'baseline', "
       "'finished_at': '2026-01-01T00:00:00Z', 'model': 'user_mean', 'params': '{}', "
       "'reference': 'user_median_running', 'selected': False}\n"
       "append_experiments(work_dir, [row])")


def _notebook(path: Path, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell('work_dir = ""')
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


def _raise(kind: str, message: str) -> str:
    return f"from utils.core.errors import {kind}\nraise {kind}({message!r})"


@pytest.fixture()
def raw(tmp_path: Path, sample_dir: Path) -> Path:
    """The real excerpt and profile file under the raw file names."""
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(sample_dir / "plays-excerpt.tsv", raw / C.PLAYS_FILE)
    shutil.copy(sample_dir / C.PROFILE_FILE, raw / C.PROFILE_FILE)
    return raw


@pytest.mark.notebooks
def test_a_too_small_notebook_is_skipped_and_the_run_goes_on(tmp_path: Path, raw: Path) -> None:
    work = tmp_path / "work"
    marker = tmp_path / "after.txt"
    notebooks = [_notebook(tmp_path / "1_record.ipynb", ROW),
                 _notebook(tmp_path / "2_small.ipynb",
                           _raise("DatasetTooSmallError", "needs 4 users, has 1: lower k")),
                 _notebook(tmp_path / "3_after.ipynb", f"open({str(marker)!r}, 'w')")]
    paths = runner.run_pipeline(raw=raw, work=work, scale="tiny", notebooks=notebooks)
    assert marker.exists()
    note = SkipNote(f"{tmp_path.name}/2_small.ipynb", "needs 4 users, has 1: lower k")
    assert paths.skipped == (note,) and read_skips(work) == [note]
    report = (WorkLayout(work).results / "report.md").read_text()
    assert "## Skipped notebooks" in report
    assert f"- `{note.notebook}`: {note.reason}" in report
    assert "| baseline | user_mean |" in report

    # A later run without a skip forgets it.
    runner.run_pipeline(raw=raw, work=work, scale="tiny", notebooks=notebooks[:1])
    assert read_skips(work) == []


@pytest.mark.notebooks
def test_strict_makes_a_skip_an_error(tmp_path: Path, raw: Path) -> None:
    marker = tmp_path / "after.txt"
    notebooks = [_notebook(tmp_path / "1_small.ipynb",
                           _raise("DatasetTooSmallError", "needs 4 users, has 1: lower k")),
                 _notebook(tmp_path / "2_after.ipynb", f"open({str(marker)!r}, 'w')")]
    with pytest.raises(SessionlenError, match=r"1_small\.ipynb failed in cell \d+: "
                       r"DatasetTooSmallError: needs 4 users, has 1: lower k .*\(--strict: data "
                       r"too small for a notebook is an error\)$"):
        runner.run_pipeline(raw=raw, work=tmp_path / "work", scale="tiny", notebooks=notebooks,
                            strict=True)
    assert not marker.exists()


@pytest.mark.notebooks
def test_only_the_too_small_error_type_skips(tmp_path: Path, raw: Path) -> None:
    # The same words in another error type are a failure: skips go by type, not by text.
    bad = _notebook(tmp_path / "1_bad.ipynb",
                    _raise("SessionlenError", "clustering needs at least 4 eligible users"))
    with pytest.raises(SessionlenError, match=r"1_bad\.ipynb failed .*SessionlenError"):
        runner.run_pipeline(raw=raw, work=tmp_path / "work", scale="tiny", notebooks=[bad])
    busy = _notebook(tmp_path / "1_busy.ipynb",
                     _raise("WorkBusyError", "work/summary_dir is in use: pid 1"))
    with pytest.raises(WorkBusyError, match=r"^notebook .*1_busy\.ipynb: work/summary_dir is in "
                       r"use: pid 1$"):
        runner.run_pipeline(raw=raw, work=tmp_path / "work", scale="tiny", notebooks=[busy])


def _through_profiles(raw: Path, work: Path) -> None:
    """Every stage up to the profiles, as the CLI twins run them."""
    build_unique_tracks(raw, work)
    build_track_metadata(work, CrawlParams(), None, "http://unused.invalid/", progress=False)
    denormalize(raw, work)
    summarize(work, SessionParams())
    build_vocab(work)
    build_session_data(work)
    build_user_profiles(work, ClusterParams())


@pytest.mark.notebooks
def test_cluster_notebooks_on_the_real_excerpt_are_skipped_with_the_minimum(
        tmp_path: Path, raw: Path) -> None:
    work = tmp_path / "work"
    _through_profiles(raw, work)
    paths = runner.run_pipeline(raw=raw, work=work, scale="demo", notebooks=CLUSTER_NOTEBOOKS)
    assert [n.reason for n in paths.skipped] == [SKIP_4, SKIP_5]
    report = (WorkLayout(work).results / "report.md").read_text()
    assert report.startswith("# sessionlen — results\n\nNo experiment recorded yet.")
    assert f"- `models_with_clusters/4_cluster_analysis.ipynb`: {SKIP_4}" in report


def test_the_cluster_minimum_is_a_too_small_error(tmp_path: Path, raw: Path) -> None:
    from utils.models_with_clusters.clustering import check_enough_users

    work = tmp_path / "work"
    _through_profiles(raw, work)
    with pytest.raises(DatasetTooSmallError, match=f"^{re.escape(SKIP_4)}$"):
        check_enough_users(work, ClusterParams(), elbow=True)
    check_enough_users(work, ClusterParams(clusters=1))


@pytest.mark.slow
@pytest.mark.notebooks
def test_sessionlen_run_on_the_real_excerpt_skips_the_cluster_stages(
        tmp_path: Path, raw: Path) -> None:
    work = tmp_path / "work"
    done = subprocess.run(
        [sys.executable, "-m", "utils.cli", "run", "--raw", str(raw), "--work", str(work),
         "--scale", "tiny"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr
    # The tiny scale sets its own eligibility thresholds; the message names the applied ones.
    tiny = get_scale("tiny")
    thresholds = f"min_rows={tiny.min_rows}, min_sessions={tiny.min_sessions}"
    tiny_4 = TOO_FEW.format(needed=3, why=CHOOSING_4, thresholds=thresholds)
    tiny_5 = TOO_FEW.format(needed=3, why=CHOOSING_5, thresholds=thresholds)
    assert ("skipped 2 notebook(s): the data is too small for them (--strict makes this an "
            "error); the report lists them too\n"
            f"  models_with_clusters/4_cluster_analysis.ipynb: {tiny_4}\n"
            f"  models_with_clusters/5_train_and_test_model.ipynb: {tiny_5}\n") in done.stdout
    experiments = load_experiments(work)
    # The in-session notebook needs no clusters: the excerpt's sessions are enough for it.
    assert set(experiments["stage"]) == {"baseline", "in_session"}
    assert {"user_mean", "user_median", "gru", "lightgbm"} <= set(experiments["model"])
    report = (WorkLayout(work).results / "report.md").read_text()
    assert "| baseline | lightgbm |" in report
    assert f"- `models_with_clusters/5_train_and_test_model.ipynb`: {tiny_5}" in report
    notes = json.loads((WorkLayout(work).results / "skipped_notebooks.json").read_text())
    assert [n["notebook"] for n in notes] == [f"models_with_clusters/{p.name}"
                                              for p in CLUSTER_NOTEBOOKS]

    strict = subprocess.run(
        [sys.executable, "-m", "utils.cli", "run", "--raw", str(raw), "--work", str(work),
         "--scale", "tiny", "--strict"], cwd=PROJECT_ROOT, capture_output=True, text=True,
        timeout=1200)
    assert strict.returncode == 2
    # The kernel, stopped after the failing cell, may log its interruption on the way out.
    lines = [line for line in strict.stderr.splitlines() if not line.startswith("[IPKernelApp]")]
    assert len(lines) == 1 and lines[0].startswith(
        "sessionlen run: error: notebook models_with_clusters/4_cluster_analysis.ipynb failed in "
        "cell "), strict.stderr
    assert f"DatasetTooSmallError: {tiny_4}" in lines[0]


def test_an_empty_split_names_what_the_split_needs(tmp_path: Path, raw: Path) -> None:
    from utils.baseline.experiment import start_experiment

    work = tmp_path / "work"
    build_unique_tracks(raw, work)
    build_track_metadata(work, CrawlParams(), None, "http://unused.invalid/", progress=False)
    denormalize(raw, work)
    # Two users: the seeded split has one train user, no validate user, one test user.
    summarize(work, SessionParams(split="seed"))
    with pytest.raises(DatasetTooSmallError, match=r"^the 'validate' split has no sessions, and "
                       r"the models need train, validation and test sessions: split=seed needs "
                       r"at least 10 users .*use split=chrono or data with more listeners$"):
        start_experiment(work, sequence_length=10)
