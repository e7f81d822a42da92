"""The benchmark peers do the same work as the pipeline (same sessions, so their ratios are
fair), and the benchmark counts the memory of a step's whole process tree."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from utils.baseline.session_table import SOURCE_ID
from utils.baseline.summaries import summarize
from utils.baseline.summary_dir import load_summaries, load_user_ids
from utils.baseline.user_plays import user_files
from utils.core.columns import (
    AVERAGE_SESSION_LENGTH,
    CURRENT_SESSION_LENGTH,
    PREVIOUS_SESSION_LENGTH,
    SESSION_ID,
    TIMESTAMP,
    USER_DIR_COLUMNS,
    USER_ID,
)
from utils.core.config import LASTFM_API_URL, PROJECT_ROOT, CrawlParams, SessionParams, WorkLayout
from utils.data_processing.denormalize import denormalize
from utils.data_processing.track_metadata import build_track_metadata
from utils.data_processing.tracks import build_unique_tracks
from utils.synthetic.generate import generate_dataset

GAP_MINUTES = SessionParams().gap_minutes


MIB = 2**20


def load_script(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module (benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "benchmarks" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


peers = load_script("peers")
bench_pipeline = load_script("bench_pipeline")


@pytest.fixture(scope="module")
def tiny_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic dataset taken through tracks, offline metadata, denormalize, summarize."""
    root = tmp_path_factory.mktemp("peers")
    raw, work = root / "raw", root / "work"
    generate_dataset(raw, scale="tiny", users=5, seed=3)
    build_unique_tracks(raw, work)
    build_track_metadata(work, CrawlParams(), api_key=None, api_url=LASTFM_API_URL)
    denormalize(raw, work)
    summarize(work, SessionParams())
    return work


def pipeline_sessions(work: Path) -> pd.DataFrame:
    """The summarize stage's sessions of every split, keyed by source user id, in time order."""
    frames = pd.concat(load_summaries(work).values(), ignore_index=True)
    ids = load_user_ids(work).set_index(USER_ID)[SOURCE_ID]
    frames[SOURCE_ID] = ids.loc[frames[USER_ID]].to_numpy()
    return frames.sort_values([SOURCE_ID, TIMESTAMP], kind="stable", ignore_index=True)


def to_ms(seconds: pd.Series) -> np.ndarray:
    """Seconds as whole milliseconds (every length here has millisecond precision)."""
    return np.rint(seconds.to_numpy(dtype=np.float64) * 1000.0).astype(np.int64)


def test_row_loop_finds_the_pipeline_sessions(tiny_work: Path, tmp_path: Path) -> None:
    users = user_files(WorkLayout(tiny_work).user_dir)
    result = peers.row_loop_summaries(users, tmp_path / "row_loop", GAP_MINUTES)
    loop = pd.concat([pd.read_csv(tmp_path / "row_loop" / f"{user}.csv", dtype={USER_ID: str})
                      for user in users], ignore_index=True)
    ours = pipeline_sessions(tiny_work)
    assert result == {"users": len(users), "sessions": len(ours)}
    assert len(ours) > 100
    assert loop[USER_ID].tolist() == ours[SOURCE_ID].tolist()
    assert loop[SESSION_ID].tolist() == ours[SESSION_ID].tolist()
    assert loop[peers.START_MS].tolist() == ours[TIMESTAMP].tolist()
    assert to_ms(loop[CURRENT_SESSION_LENGTH]).tolist() == to_ms(
        ours[CURRENT_SESSION_LENGTH]).tolist()
    assert to_ms(loop[PREVIOUS_SESSION_LENGTH]).tolist() == to_ms(
        ours[PREVIOUS_SESSION_LENGTH]).tolist()
    # The pipeline rounds the running mean to the millisecond (half up); the loop keeps a float.
    np.testing.assert_allclose(loop[AVERAGE_SESSION_LENGTH], ours[AVERAGE_SESSION_LENGTH],
                               rtol=0, atol=1e-3)


def test_duckdb_finds_the_pipeline_sessions(tiny_work: Path) -> None:
    files = [p for paths in user_files(WorkLayout(tiny_work).user_dir).values() for p in paths]
    duck = peers.duckdb_sessions(files, GAP_MINUTES).sort_values(
        ["user_id", "session_id"], ignore_index=True)
    ours = pipeline_sessions(tiny_work)
    assert len(duck) == len(ours)
    assert duck["user_id"].tolist() == ours[SOURCE_ID].tolist()
    assert duck["start_ms"].tolist() == ours[TIMESTAMP].tolist()
    assert duck["length_ms"].tolist() == to_ms(ours[CURRENT_SESSION_LENGTH]).tolist()
    assert duck["previous_ms"].tolist() == to_ms(ours[PREVIOUS_SESSION_LENGTH]).tolist()


def write_plays(folder: Path, name: str, rows: list[tuple[str, float | None]]) -> Path:
    """A user_dir CSV of one listener's plays: (ISO timestamp, duration or None) per row."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({
        USER_ID: "u1", TIMESTAMP: [t for t, _ in rows], "artist_name": "A", "track_name": "T",
        "gender": "m", "age": 30, "country": "Norway", "registered": "2006-08-13",
        "duration": [d for _, d in rows], "genre": "rock",
    })[USER_DIR_COLUMNS]
    path = folder / name
    frame.to_csv(path, index=False, float_format="%.3f", lineterminator="\n")
    return path


@pytest.fixture
def rule_case(tmp_path: Path) -> list[Path]:
    """Plays where only the exact rule gives the right sessions, over two files.

    10:00 (100 s) and a tie at 10:00 (2000 s, later in file order, so it is the earlier
    play's successor); 10:40 is 40 min later but only 6:40 after the tie ends: same session.
    11:20 follows an unknown duration (0 s) by 40 min: new session. 11:55 is 35 min after
    11:20, whose play lasted 300 s: exactly 30 min left, not more: same session.
    """
    folder = tmp_path / "u1"
    first = write_plays(folder, "part-00000.csv", [
        ("2009-01-01T10:00:00Z", 100.0), ("2009-01-01T10:00:00Z", 2000.0),
        ("2009-01-01T10:40:00Z", None),
    ])
    second = write_plays(folder, "part-00001.csv", [
        ("2009-01-01T11:20:00Z", 300.0), ("2009-01-01T11:55:00Z", 60.5),
    ])
    return [first, second]


def test_row_loop_applies_the_rule_with_the_previous_duration(rule_case: list[Path]) -> None:
    table = peers.row_loop_user("u1", rule_case, GAP_MINUTES)
    assert table[peers.START_MS].tolist() == [1230804000000, 1230808800000]
    assert table[CURRENT_SESSION_LENGTH].tolist() == [2400.0, 2160.5]
    assert table[PREVIOUS_SESSION_LENGTH].tolist() == [0.0, 2400.0]
    assert table[AVERAGE_SESSION_LENGTH].tolist() == [0.0, 2400.0]


def test_duckdb_applies_the_rule_with_the_previous_duration(rule_case: list[Path]) -> None:
    duck = peers.duckdb_sessions(rule_case, GAP_MINUTES).sort_values("session_id")
    assert duck["start_ms"].tolist() == [1230804000000, 1230808800000]
    assert duck["length_ms"].tolist() == [2_400_000, 2_160_500]
    assert duck["plays"].tolist() == [3, 2]


def test_choose_users_is_seeded_and_covers_the_plays(tmp_path: Path) -> None:
    users = {}
    for index in range(8):
        rows = [(f"2009-01-01T10:{m:02d}:00Z", 60.0) for m in range(index + 1)]
        users[f"u{index}"] = [write_plays(tmp_path / f"u{index}", "part-00000.csv", rows)]
    chosen, plays = peers.choose_users(users, min_plays=10, seed=7)
    assert plays >= 10
    assert plays == sum(int(name[1:]) + 1 for name in chosen)
    assert peers.choose_users(users, min_plays=10, seed=7) == (chosen, plays)
    assert peers.choose_users(users, min_plays=1000, seed=7) == (users, 36)


def test_peak_memory_counts_the_whole_process_tree_once(tmp_path: Path) -> None:
    """A child holding 200 MiB waits for a grandchild holding 300 MiB: the tree peaks at 500.

    The child's own ru_maxrss would say 300 (the larger of itself and the grandchild it
    reaped); adding the grandchild to it would say 800.
    """
    grandchild = "import time; b = b'x' * (300 * 2**20); time.sleep(3)"
    child = (f"import subprocess, sys; a = b'y' * (200 * 2**20); "
             f"subprocess.run([sys.executable, '-c', {grandchild!r}], check=True)")
    run = bench_pipeline.run_child([sys.executable, "-c", child], tmp_path / "logs" / "tree",
                                   env={})
    assert 500 * MIB <= run.peak_bytes < 600 * MIB
    assert 200 * MIB <= run.own_peak_bytes < 300 * MIB
    assert sum(run.descendants.values()) >= 300 * MIB
    assert run.seconds >= 3


def test_a_small_child_of_a_large_parent_is_charged_its_own_size(tmp_path: Path) -> None:
    """Linux keeps the spawner's peak in the child's ru_maxrss: the figure must not use it."""
    parent = (
        "import sys; from pathlib import Path; import bench_pipeline\n"
        "ballast = b'z' * (700 * 2**20)\n"
        "run = bench_pipeline.run_child([sys.executable, '-c', 'import time; time.sleep(1)'],"
        " Path(sys.argv[1]), env={})\n"
        "print(run.peak_bytes)\n"
    )
    done = subprocess.run([sys.executable, "-c", parent, str(tmp_path / "logs" / "small")],
                          cwd=PROJECT_ROOT / "benchmarks", capture_output=True, text=True,
                          timeout=120, check=True)
    assert int(done.stdout) < 100 * MIB


def test_a_forked_copy_that_never_execs_is_not_counted_twice(tmp_path: Path) -> None:
    """A fork shows its parent's pages until it execs: the tree is still one 300 MiB process."""
    child = ("import os, time; a = b'y' * (300 * 2**20); pid = os.fork()\n"
             "if pid == 0:\n    time.sleep(2); os._exit(0)\n"
             "os.waitpid(pid, 0)\n")
    run = bench_pipeline.run_child([sys.executable, "-c", child], tmp_path / "logs" / "fork",
                                   env={})
    assert 300 * MIB <= run.peak_bytes < 400 * MIB
    assert run.descendants == {}
