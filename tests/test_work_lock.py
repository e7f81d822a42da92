"""Two processes on one WORK: stage locks, who holds them, --no-wait, takeover after kill -9,
concurrent appends to experiments.csv and two crawls sharing one SQLite cache.

Every holder and every contender is a real process; the crawls ask `sessionlen fake-api` over
loopback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from test_secrets import fake_api_cli
from test_stage_kills import snapshot

from utils.core import columns as C
from utils.core.config import PROJECT_ROOT, CrawlParams, WorkLayout
from utils.core.results import load_experiments
from utils.core.work_lock import COMMAND_ENV, holder_path, read_holder, stage_lock
from utils.data_processing.denormalize import denormalize
from utils.data_processing.track_metadata import build_track_metadata
from utils.data_processing.tracks import build_unique_tracks

KEY = "0123456789abcdef0123456789abcdef"
HOLDER_COMMAND = "sessionlen summarize --work elsewhere"
SINCE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
# Holds a stage's exclusive lock, says so on stdout, and keeps it until stdin closes.
HOLD_SCRIPT = (
    "import sys; from utils.core.work_lock import stage_lock\n"
    "with stage_lock(sys.argv[1], exclusive=True):\n"
    "    print('held', flush=True); sys.stdin.read()\n")


def _sessionlen(*args: str) -> list[str]:
    return [sys.executable, "-m", "utils.cli", *args]


def _env(**extra: str) -> dict[str, str]:
    """The environment without an inherited API key, plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if k != "LASTFM_API_KEY"}, **extra}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    """The real excerpt's WORK up to denormalize (summarize is what the tests run)."""
    root = tmp_path_factory.mktemp("lock-template")
    raw = root / "raw"
    raw.mkdir()
    shutil.copy(sample_dir / "plays-excerpt.tsv", raw / C.PLAYS_FILE)
    shutil.copy(sample_dir / C.PROFILE_FILE, raw / C.PROFILE_FILE)
    work = root / "work"
    build_unique_tracks(raw, work)
    build_track_metadata(work, CrawlParams(), None, "http://unused.invalid/", progress=False)
    denormalize(raw, work)
    return work


@pytest.fixture()
def work(template: Path, tmp_path: Path) -> Path:
    shutil.copytree(template, tmp_path / "work")
    return tmp_path / "work"


@pytest.fixture()
def holder(work: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding WORK/summary_dir's exclusive lock until the test ends."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(work / "summary_dir")],
                            cwd=PROJECT_ROOT, env=_env(**{COMMAND_ENV: HOLDER_COMMAND}),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    yield proc
    if proc.poll() is None:
        proc.communicate("", timeout=30)


def _stage_files(work: Path) -> dict[str, bytes | None]:
    return {k: v for k, v in snapshot(work).items() if k.startswith("summary_dir")}


def test_two_concurrent_summarize_write_what_one_run_writes(template: Path,
                                                            tmp_path: Path) -> None:
    # Same relative WORK path in both, so that the manifests' input paths match too.
    alone, pair = tmp_path / "alone", tmp_path / "pair"
    for cwd in (alone, pair):
        shutil.copytree(template, cwd / "work")
    assert subprocess.run(_sessionlen("summarize", "--work", "work"), cwd=alone, env=_env(),
                          capture_output=True).returncode == 0
    # Both start while the lock is taken, so both wait and then race for it.
    with stage_lock(pair / "work" / "summary_dir", exclusive=True):
        procs = [subprocess.Popen(_sessionlen("summarize", "--work", "work"), cwd=pair,
                                  env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        waiting = [proc.stderr.readline() for proc in procs]  # type: ignore[union-attr]
    errors = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], errors
    assert all(f"summary_dir is in use: pid {os.getpid()}" in line for line in waiting), waiting
    assert _stage_files(pair / "work") == _stage_files(alone / "work")
    assert not holder_path(pair / "work" / "summary_dir").exists()


def test_second_writer_waits_naming_the_holder(work: Path,
                                               holder: subprocess.Popen[str]) -> None:
    proc = subprocess.Popen(_sessionlen("summarize", "--work", str(work)), cwd=PROJECT_ROOT,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline().rstrip("\n")
    assert re.fullmatch(
        rf"{re.escape(str(work))}/summary_dir is in use: pid {holder.pid} "
        rf"\({HOLDER_COMMAND}\) has been writing it since {SINCE}; waiting for it to finish "
        rf"\(--no-wait exits instead\)", line), line
    time.sleep(1)
    assert proc.poll() is None and not (work / "summary_dir").exists()
    holder.communicate("", timeout=30)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert (work / "summary_dir" / "_manifest.json").is_file()


def test_no_wait_exits_at_once_with_one_line(work: Path, holder: subprocess.Popen[str]) -> None:
    started = time.monotonic()
    result = subprocess.run(_sessionlen("summarize", "--work", str(work), "--no-wait"),
                            cwd=PROJECT_ROOT, env=_env(), capture_output=True, text=True)
    assert time.monotonic() - started < 30
    assert result.returncode == 75
    assert re.fullmatch(
        rf"sessionlen summarize: error: {re.escape(str(work))}/summary_dir is in use: pid "
        rf"{holder.pid} \({HOLDER_COMMAND}\) has been writing it since {SINCE}; rerun when it "
        rf"has finished\n", result.stderr), result.stderr
    assert not (work / "summary_dir").exists()


def test_lock_left_by_a_killed_holder_is_taken_over(work: Path,
                                                    holder: subprocess.Popen[str]) -> None:
    recorded = read_holder(work / "summary_dir")
    assert recorded is not None and recorded.pid == holder.pid
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    result = subprocess.run(_sessionlen("summarize", "--work", str(work), "--no-wait"),
                            cwd=PROJECT_ROOT, env=_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"{work}/summary_dir: taking over the lock left by pid {holder.pid} ({HOLDER_COMMAND}, "
        f"writing since {recorded.since}), which is no longer running\n")
    assert not holder_path(work / "summary_dir").exists()


def test_a_reader_waits_for_the_writer_and_leaves_no_trace(work: Path) -> None:
    subprocess.run(_sessionlen("summarize", "--work", str(work)), cwd=PROJECT_ROOT, env=_env(),
                   capture_output=True, check=True)
    before = snapshot(work)
    script = ("import sys; from utils.baseline.summary_dir import load_summaries\n"
              "print(sum(len(f) for f in load_summaries(sys.argv[1]).values()))\n")
    with stage_lock(work / "summary_dir", exclusive=True):
        reader = subprocess.Popen([sys.executable, "-c", script, str(work)], cwd=PROJECT_ROOT,
                                  env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        time.sleep(2)
        assert reader.poll() is None
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0 and int(out) == 309, err
    assert "summary_dir is in use" in err
    assert snapshot(work) == before


RECORD_SCRIPT = """
import sys, types
from pathlib import Path
import pandas as pd
from utils.core.columns import COMPARISON_COLUMNS, EXPERIMENT_COLUMNS
from utils.baseline.experiment import record_results
work, tag, times = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
kept = [c for c in EXPERIMENT_COLUMNS if c not in ("run_id", "finished_at", "stage")]
for i in range(times):
    labels = [f"{tag}-{i}-{j}" for j in range(3)]
    table = pd.DataFrame({**dict.fromkeys(kept, 1.0), "label": labels, "model": labels,
                          "params": "{}", "reference": "user_mean", "selected": False,
                          "n_test": 10})
    compared = pd.DataFrame({**dict.fromkeys(COMPARISON_COLUMNS[2:], 1.0), "model": labels,
                             "versus": "user_mean", "verdict": "not distinguishable"})
    record_results(types.SimpleNamespace(work=work, run_id=f"{tag}-{i}"), table, compared)
"""


def test_concurrent_record_steps_keep_every_row_once(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "summary_dir").mkdir(parents=True)
    procs = [subprocess.Popen([sys.executable, "-c", RECORD_SCRIPT, str(work), tag, "15"],
                              cwd=PROJECT_ROOT, env=_env(), stderr=subprocess.PIPE, text=True)
             for tag in ("a", "b", "c")]
    errors = [proc.communicate(timeout=300)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], errors
    rows = load_experiments(work)
    expected = {f"{tag}-{i}-{j}" for tag in "abc" for i in range(15) for j in range(3)}
    assert len(rows) == len(expected) == rows["model"].nunique()
    assert set(rows["model"]) == expected
    assert (rows["stage"] == "baseline").all()
    manifest = json.loads((WorkLayout(work).results / "_manifest.json").read_text())
    assert manifest["baseline_models"]["rows_out"] == 10


CRAWL_SCRIPT = """
import sys
import pandas as pd
from utils.data_processing import crawl, crawl_cache
from utils.core.config import CrawlParams
todo = pd.read_csv(sys.argv[2], dtype=str, keep_default_na=False)
with crawl_cache.TrackCache(sys.argv[1]) as cache:
    crawl.crawl_tracks(todo, cache, api_key=sys.argv[3], api_url=sys.argv[4],
                       params=CrawlParams(rate=300.0, concurrency=4), progress=False)
"""


def _catalog(tmp_path: Path, n: int) -> Path:
    catalog = tmp_path / "catalog.csv"
    pd.DataFrame({"artist_name": [f"Artist {i % 7}" for i in range(n)],
                  "track_name": [f"Song {i}" for i in range(n)], "artist_mbid": "",
                  "track_mbid": "", "duration_ms": [120_000 + 1_000 * i for i in range(n)],
                  "tags": "rock"}, columns=C.GT_TRACKS_COLUMNS).to_csv(catalog, index=False)
    return catalog


def _todo(catalog: Path, path: Path) -> Path:
    known = pd.read_csv(catalog, dtype=str, keep_default_na=False)
    names = [*zip(known["artist_name"], known["track_name"], strict=True),
             *[("Nobody", f"Lost {i}") for i in range(20)]]
    pd.DataFrame({"artist_key": [a.lower() for a, _ in names],
                  "track_key": [t.lower() for _, t in names],
                  "artist_name": [a for a, _ in names], "track_name": [t for _, t in names],
                  "track_mbid": "", C.PLAY_COUNT: 1}).to_csv(path, index=False)
    return path


def test_two_crawls_sharing_a_cache_store_each_track_once(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, 150)
    todo = _todo(catalog, tmp_path / "todo.csv")
    cache = tmp_path / "one_cache" / "lastfm_track_info.sqlite"
    with fake_api_cli(catalog, _env(LASTFM_API_KEY=KEY), tmp_path / "fake-api.log") as url:
        procs = [subprocess.Popen([sys.executable, "-c", CRAWL_SCRIPT, str(cache), str(todo),
                                   KEY, url], cwd=PROJECT_ROOT, env=_env(),
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        errors = [proc.communicate(timeout=300)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], errors
    with sqlite3.connect(cache) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT artist_key, track_key, status, duration_s FROM track_info")
        stored = pd.DataFrame(rows.fetchall(), columns=["artist", "track", "status", "duration"])
    asked = pd.read_csv(todo, dtype=str, keep_default_na=False)
    assert len(stored) == len(asked) == len(stored.drop_duplicates(["artist", "track"]))
    assert set(zip(stored["artist"], stored["track"], strict=True)) == set(
        zip(asked["artist_key"], asked["track_key"], strict=True))
    assert stored["status"].value_counts().to_dict() == {"ok": 150, "not_found": 20}
    ok = stored[stored["status"] == "ok"].sort_values("duration")
    assert ok["duration"].tolist() == [120.0 + i for i in range(150)]


def test_two_metadata_stages_on_one_work_ask_each_track_once(work: Path,
                                                              tmp_path: Path) -> None:
    tracks = pd.read_csv(WorkLayout(work).unique_tracks, dtype=str, keep_default_na=False)
    catalog = tmp_path / "catalog.csv"
    pd.DataFrame({"artist_name": tracks["artist_name"], "track_name": tracks["track_name"],
                  "artist_mbid": "", "track_mbid": "", "duration_ms": 200_000, "tags": ""},
                 columns=C.GT_TRACKS_COLUMNS).to_csv(catalog, index=False)
    log = tmp_path / "fake-api.log"
    with fake_api_cli(catalog, _env(LASTFM_API_KEY=KEY), log) as url:
        env = _env(LASTFM_API_KEY=KEY, LASTFM_API_URL=url)
        procs = [subprocess.Popen(_sessionlen("metadata", "--work", str(work), "--rate", "200"),
                                  cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outputs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    asked = [int(m) for out, _ in outputs
             for m in re.findall(r"track\.getInfo: (\d+) tracks to ask", out)]
    assert sorted(asked) == [0, len(tracks)], outputs
    metadata = pd.read_csv(WorkLayout(work).track_metadata, dtype=str, keep_default_na=False)
    assert len(metadata) == len(tracks)


@pytest.mark.notebooks
def test_run_no_wait_reaches_the_notebook_kernels(tmp_path: Path, sample_dir: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(sample_dir / "plays-excerpt.tsv", raw / C.PLAYS_FILE)
    shutil.copy(sample_dir / C.PROFILE_FILE, raw / C.PROFILE_FILE)
    work = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(work / "tracks")],
                            cwd=PROJECT_ROOT, env=_env(**{COMMAND_ENV: HOLDER_COMMAND}),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        result = subprocess.run(_sessionlen("run", "--raw", str(raw), "--work", str(work),
                                            "--scale", "tiny", "--no-wait"),
                                cwd=PROJECT_ROOT, env=_env(), capture_output=True, text=True,
                                timeout=300)
    finally:
        proc.communicate("", timeout=30)
    assert result.returncode == 75, result.stderr
    # The kernel, stopped after the failing cell, may log its interruption on the way out.
    lines = [line for line in result.stderr.splitlines() if not line.startswith("[IPKernelApp]")]
    assert len(lines) == 1 and re.fullmatch(
        rf"sessionlen run: error: notebook data_processing/1_get_unique_tracks\.ipynb: "
        rf"{re.escape(str(work))}/tracks is in use: pid {proc.pid} \({HOLDER_COMMAND}\) has been "
        rf"writing it since {SINCE}; rerun when it has finished", lines[0]), result.stderr
