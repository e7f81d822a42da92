"""The metadata stage against a real loopback fake API: resolution, cache, rate, faults, kills."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from utils import crawl
from utils.columns import (
    ARTIST_GAP_MEDIAN_S,
    DURATION,
    DURATION_SOURCE,
    GAP_MEDIAN_S,
    GENRE,
    GT_TRACKS_COLUMNS,
    PLAY_COUNT,
    TRACK_METADATA_COLUMNS,
    UNIQUE_TRACKS_COLUMNS,
)
from utils.config import PROJECT_ROOT, CrawlParams, WorkLayout
from utils.errors import ApiKeyError, SessionlenError, StageIncompleteError
from utils.fake_api import FakeApi, FaultConfig, start_server
from utils.stage_io import MANIFEST, write_manifest

KEY = "0123456789abcdef0123456789abcdef"
FAST = CrawlParams(rate=400.0, concurrency=4, timeout_s=2.0)
QUICK_RETRY = crawl.RetryPolicy(base_s=0.005, cap_s=0.02)
NAMES = ["AC/DC", "Sigur Rós", "Guns N' Roses", "Simon & Garfunkel", "+/-", "Beyoncé"]


def _catalog_rows(n: int) -> list[list[str]]:
    """n catalog tracks with distinct durations; names that need URL encoding; some without tags."""
    return [[NAMES[i % len(NAMES)], f"Song #{i} ? 100% «live»", "", f"mbid-{i}",
             str(120_000 + 1_000 * i), "" if i % 4 == 0 else f"rock|genre {i}"]
            for i in range(n)]


@pytest.fixture()
def catalog(tmp_path: Path) -> Path:
    path = tmp_path / "raw" / "ground_truth" / "tracks.csv"
    path.parent.mkdir(parents=True)
    pd.DataFrame(_catalog_rows(80), columns=GT_TRACKS_COLUMNS).to_csv(path, index=False)
    return path


def _unique_tracks(catalog: Path, n_known: int, n_unknown: int) -> pd.DataFrame:
    """unique_tracks rows: the first n_known catalog tracks plus n_unknown tracks it lacks."""
    known = pd.read_csv(catalog, dtype=str, keep_default_na=False).head(n_known)
    names = list(zip(known["artist_name"], known["track_name"], strict=True))
    names += [("Nobody", f"Lost Demo {i}") for i in range(n_unknown)]
    n = len(names)
    frame = pd.DataFrame({
        "artist_key": [a.strip().lower() for a, _ in names],
        "track_key": [t.strip().lower() for _, t in names],
        "artist_name": [a for a, _ in names], "track_name": [t for _, t in names],
        "artist_mbid": "", "track_mbid": "",
        PLAY_COUNT: np.arange(n, 0, -1) * 3,
        GAP_MEDIAN_S: np.where(np.arange(n) % 3 == 0, np.nan, 200.0),
        "gap_count": np.where(np.arange(n) % 3 == 0, 0, 5),
        ARTIST_GAP_MEDIAN_S: np.where(np.arange(n) % 2 == 0, np.nan, 210.0),
    })
    return frame[UNIQUE_TRACKS_COLUMNS]


def _work(root: Path, tracks: pd.DataFrame) -> Path:
    layout = WorkLayout(root)
    layout.tracks.mkdir(parents=True)
    tracks.to_csv(layout.unique_tracks, index=False)
    write_manifest(layout.tracks, "tracks", inputs=[], parameters={}, rows_in=len(tracks),
                   rows_out=len(tracks), rows_rejected=0, outputs=[layout.unique_tracks.name],
                   timings={})
    return root


@pytest.fixture()
def api(catalog: Path) -> Iterator[FakeApi]:
    with start_server(catalog, api_key=KEY) as server:
        yield server


def _run(work: Path, api: FakeApi | None, params: CrawlParams = FAST,
         key: str | None = KEY) -> dict:
    return crawl.build_track_metadata(work, params, key if api else None,
                                      api.url if api else "http://unused.invalid/",
                                      retry=QUICK_RETRY, progress=False)


def _output(work: Path) -> pd.DataFrame:
    return crawl.read_track_metadata(work)


def test_every_catalog_track_resolves_and_unknown_ones_are_not_found(
        tmp_path: Path, catalog: Path, api: FakeApi) -> None:
    work = _work(tmp_path / "work", _unique_tracks(catalog, 30, 6))
    summary = _run(work, api)
    out = _output(work)
    assert list(out.columns[:5]) == TRACK_METADATA_COLUMNS and len(out) == 36
    known, unknown = out.head(30), out.tail(6)
    assert (known[DURATION] == 120.0 + np.arange(30)).all()
    assert (known[DURATION_SOURCE] == "api").all()
    assert known[GENRE].iloc[1] == "rock|genre 1" and known[GENRE].iloc[0] == ""
    assert (unknown[crawl.API_STATUS] == "not_found").all()
    assert set(unknown[DURATION_SOURCE]) == {"estimated", "default"}
    assert summary["by_status"] == {"ok": 30, "not_found": 6}
    assert summary["requests_sent"] == 36 == api.requests_served
    manifest = json.loads((WorkLayout(work).tracks / MANIFEST).read_text())["metadata"]
    assert (manifest["rows_in"], manifest["rows_out"]) == (36, 36)


def test_second_run_sends_zero_requests_and_writes_the_same_file(
        tmp_path: Path, catalog: Path, api: FakeApi) -> None:
    work = _work(tmp_path / "work", _unique_tracks(catalog, 10, 3))
    _run(work, api)
    first = WorkLayout(work).track_metadata.read_bytes()
    summary = _run(work, api)
    assert summary["requests_sent"] == 0 and api.requests_served == 13
    assert WorkLayout(work).track_metadata.read_bytes() == first


def test_the_key_is_stored_nowhere(tmp_path: Path, catalog: Path, api: FakeApi,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    work = _work(tmp_path / "work", _unique_tracks(catalog, 5, 2))
    summary = _run(work, api)
    files = [p for p in work.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in files)
    assert all(KEY.encode() not in p.read_bytes() for p in files)
    captured = capsys.readouterr()
    assert KEY not in captured.out + captured.err + json.dumps(summary)


def test_limit_asks_the_most_played_first(tmp_path: Path, catalog: Path, api: FakeApi) -> None:
    tracks = _unique_tracks(catalog, 12, 0).sample(frac=1.0, random_state=3)
    work = _work(tmp_path / "work", tracks)
    _run(work, api, CrawlParams(rate=400.0, limit=5))
    out = _output(work)
    top = tracks[PLAY_COUNT].to_numpy() >= np.sort(tracks[PLAY_COUNT].to_numpy())[-5]
    assert (out.loc[top, crawl.API_STATUS] == "ok").all()
    assert (out.loc[~top, crawl.API_STATUS] == "not_requested").all()
    assert (out.loc[~top, DURATION_SOURCE] != "api").all()
    assert list(out["track_key"]) == list(tracks["track_key"])
    summary = _run(work, api, CrawlParams(rate=400.0, limit=8))
    assert summary["requests_sent"] == 3 and api.requests_served == 8


def test_offline_estimates_and_says_so(tmp_path: Path, catalog: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    work = _work(tmp_path / "work", _unique_tracks(catalog, 6, 0))
    summary = _run(work, None)
    assert "running offline" in capsys.readouterr().out
    out = _output(work)
    assert summary["mode"] == "offline" and summary["requests_sent"] == 0
    # Rows 0..5: own gap missing at 0 and 3, artist gap present at odd rows only.
    assert out[DURATION].tolist() == [240.0, 200.0, 200.0, 210.0, 200.0, 200.0]
    assert out[DURATION_SOURCE].tolist() == ["default"] + ["estimated"] * 5
    assert not WorkLayout(work).crawl_cache.exists()


def test_offline_after_a_crawl_keeps_the_cached_answers(tmp_path: Path, catalog: Path,
                                                        api: FakeApi) -> None:
    work = _work(tmp_path / "work", _unique_tracks(catalog, 6, 1))
    _run(work, api)
    summary = _run(work, None)
    assert summary["by_source"]["api"] == 6 and summary["mode"] == "offline"


def test_estimate_durations_falls_back_track_artist_default() -> None:
    tracks = pd.DataFrame({GAP_MEDIAN_S: [180.0, np.nan, 0.0, np.nan],
                           ARTIST_GAP_MEDIAN_S: [999.0, 220.0, 230.0, np.nan]})
    estimate = crawl.estimate_durations(tracks, 240.0)
    assert estimate[DURATION].tolist() == [180.0, 220.0, 230.0, 240.0]
    assert estimate[DURATION_SOURCE].tolist() == ["estimated"] * 3 + ["default"]


def test_sustained_rate_is_within_five_percent(tmp_path: Path, catalog: Path,
                                               api: FakeApi) -> None:
    work = _work(tmp_path / "work", _unique_tracks(catalog, 55, 5))
    summary = _run(work, api, CrawlParams(rate=20.0, concurrency=4))
    arrivals = np.array(api.arrivals)
    measured = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert len(arrivals) == 60
    assert measured == pytest.approx(20.0, rel=0.05)
    assert summary["request_rate"] == pytest.approx(20.0, rel=0.05)
    # No burst: any 21 consecutive requests span about a second or more.
    assert (arrivals[20:] - arrivals[:-20]).min() > 0.95


def test_invalid_key_stops_at_once_with_one_clear_error(tmp_path: Path, catalog: Path,
                                                        api: FakeApi) -> None:
    work = _work(tmp_path / "work", _unique_tracks(catalog, 40, 0))
    wrong = "ffffffffffffffffffffffffffffffff"
    with pytest.raises(ApiKeyError, match="rejected the API key.*check LASTFM_API_KEY") as exc:
        _run(work, api, CrawlParams(rate=50.0, concurrency=4), key=wrong)
    assert wrong not in str(exc.value) and "error 10" in str(exc.value)
    assert api.requests_served <= 4
    assert not WorkLayout(work).track_metadata.exists()


def test_faults_end_ok_after_retries(tmp_path: Path, catalog: Path) -> None:
    faults = FaultConfig(p_5xx=0.05, p_rate_limit=0.05, p_temporary=0.05, p_operation_failed=0.05,
                         p_slow=0.03, p_truncated=0.05, p_reset=0.05, slow_seconds=1.0, seed=3)
    work = _work(tmp_path / "work", _unique_tracks(catalog, 40, 4))
    with start_server(catalog, faults=faults) as server:
        summary = _run(work, server, CrawlParams(rate=400.0, timeout_s=0.25, max_retries=8))
        assert sum(server.fault_counts.values()) >= 5
    out = _output(work)
    assert summary["by_status"] == {"ok": 40, "not_found": 4}
    assert (out.head(40)[DURATION] == 120.0 + np.arange(40)).all()
    assert summary["requests_sent"] > 44


def test_failed_tracks_keep_a_reason_and_are_retried_next_run(tmp_path: Path,
                                                              catalog: Path) -> None:
    work = _work(tmp_path / "work", _unique_tracks(catalog, 30, 0))
    flaky = FaultConfig(p_5xx=0.3, p_truncated=0.2, p_reset=0.2, seed=5)
    with start_server(catalog, faults=flaky) as server:
        summary = _run(work, server, CrawlParams(rate=400.0, max_retries=0))
    failed = summary["by_status"]["failed"]
    assert failed > 5 and summary["by_status"]["ok"] == 30 - failed
    assert all(r.startswith("gave up after 1 attempts: ") for r in summary["failed_reasons"])
    with start_server(catalog) as server:
        summary = _run(work, server)
        assert server.requests_served == failed
    assert summary["by_status"] == {"ok": 30}


def test_kill_9_mid_crawl_then_rerun_asks_only_the_missing(tmp_path: Path, catalog: Path,
                                                           api: FakeApi) -> None:
    work = _work(tmp_path / "work", _unique_tracks(catalog, 70, 10))
    env = {**os.environ, "LASTFM_API_KEY": KEY, "LASTFM_API_URL": api.url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "utils.cli", "metadata", "--work", str(work), "--rate", "25"],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while api.requests_served < 25 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    served_before = api.requests_served
    assert 25 <= served_before < 80
    with sqlite3.connect(WorkLayout(work).crawl_cache) as conn:
        cached = conn.execute("SELECT COUNT(*) FROM track_info").fetchone()[0]
    assert cached >= served_before - 4  # at most the requests in flight were lost
    summary = _run(work, api)
    assert summary["requests_sent"] == 80 - cached == api.requests_served - served_before
    assert summary["by_status"] == {"ok": 70, "not_found": 10}


def test_stopping_a_crawl_thread_keeps_answers_and_resumes(tmp_path: Path, catalog: Path,
                                                           api: FakeApi) -> None:
    tracks = _unique_tracks(catalog, 40, 0)
    layout = WorkLayout(_work(tmp_path / "work", tracks))
    params = CrawlParams(rate=40.0)
    with crawl.TrackCache(layout.crawl_cache) as cache:
        stopper = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
        stopper.start()
        with pytest.raises(KeyboardInterrupt):
            crawl.crawl_tracks(tracks, cache, api_key=KEY, api_url=api.url, params=params,
                               progress=False)
        kept = len(cache.read())
    assert 0 < kept < 40 and kept == api.requests_served
    summary = _run(layout.root, api)
    assert summary["requests_sent"] == 40 - kept and summary["by_status"] == {"ok": 40}


def test_bad_inputs_are_one_line_errors(tmp_path: Path, catalog: Path) -> None:
    with pytest.raises(StageIncompleteError, match="run `sessionlen tracks` first"):
        _run(tmp_path / "empty", None)
    tracks = _unique_tracks(catalog, 3, 0)
    work = _work(tmp_path / "bad_count", tracks.assign(play_count=["7", "many", "1"]))
    with pytest.raises(SessionlenError, match=r"unique_tracks.csv: line 3: play_count 'many'"):
        _run(work, None)
    work = _work(tmp_path / "no_col", tracks.drop(columns=[GAP_MEDIAN_S]))
    with pytest.raises(SessionlenError, match="missing column.*gap_median_s"):
        _run(work, None)
    work = _work(tmp_path / "ok", tracks)
    with pytest.raises(SessionlenError, match="LASTFM_API_URL='ftp://x' is not an http"):
        crawl.build_track_metadata(work, FAST, KEY, "ftp://x", progress=False)


def test_rate_limiter_spaces_threads_and_stops() -> None:
    stop = threading.Event()
    limiter = crawl.RateLimiter(100.0, stop)
    times: list[float] = []

    def grab() -> None:
        for _ in range(10):
            limiter.acquire()
            times.append(time.monotonic())

    threads = [threading.Thread(target=grab) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    times.sort()
    assert (len(times) - 1) / (times[-1] - times[0]) == pytest.approx(100.0, rel=0.05)
    limiter.pause(5.0)
    stop.set()
    with pytest.raises(crawl.CrawlStopped):
        limiter.acquire()


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    policy = crawl.RetryPolicy(base_s=1.0, cap_s=10.0)
    delays = [[policy.delay(a) for _ in range(200)] for a in range(6)]
    assert min(delays[0]) >= 0.5 and max(delays[0]) <= 1.0
    assert min(delays[3]) >= 4.0 and max(delays[3]) <= 8.0
    assert max(delays[5]) <= 10.0 and len(set(delays[2])) > 100


def test_duration_errors_against_the_catalog(tmp_path: Path, catalog: Path) -> None:
    work = _work(tmp_path / "work", _unique_tracks(catalog, 12, 2))
    _run(work, None)
    errors = crawl.duration_errors(_output(work), catalog)
    assert len(errors) == 12
    table = crawl.duration_error_table(errors)
    assert set(table.index) == {"estimated", "default", "offline estimate, every track"}
    assert table["tracks"].sum() == 24
    truth = 120.0 + np.arange(12)
    assert table.loc["offline estimate, every track", "median_abs_error_s"] == pytest.approx(
        np.median(np.abs(errors["estimated_duration"].to_numpy() - truth)))
    figure = crawl.plot_duration_errors(errors, tmp_path / "fig" / "errors.png")
    assert (tmp_path / "fig" / "errors.png").stat().st_size > 1000 and figure.axes


def test_sources_table_weights_by_plays(tmp_path: Path, catalog: Path, api: FakeApi) -> None:
    work = _work(tmp_path / "work", _unique_tracks(catalog, 3, 1))
    _run(work, api)
    table = crawl.sources_table(work)
    assert table.loc["api", "tracks"] == 3 and table.loc["api", "plays"] == 12 + 9 + 6
    assert table["play_share"].sum() == pytest.approx(1.0)


def test_cli_offline_run_and_invalid_key(tmp_path: Path, catalog: Path, api: FakeApi) -> None:
    work = _work(tmp_path / "work", _unique_tracks(catalog, 4, 1))
    env = {k: v for k, v in os.environ.items() if k != "LASTFM_API_KEY"}
    command = [sys.executable, "-m", "utils.cli", "metadata", "--work", str(work)]
    offline = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
    assert offline.returncode == 0, offline.stderr
    assert "running offline" in offline.stdout and "'mode': 'offline'" in offline.stdout
    wrong = "ffffffffffffffffffffffffffffffff"
    env.update(LASTFM_API_KEY=wrong, LASTFM_API_URL=api.url)
    rejected = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
    assert rejected.returncode == ApiKeyError.exit_code
    error_lines = [line for line in rejected.stderr.splitlines() if "error" in line]
    assert error_lines == [
        "sessionlen metadata: error: Last.fm rejected the API key (error 10: Invalid API key - "
        "You must be granted a valid key by last.fm); check LASTFM_API_KEY"]
    assert wrong not in rejected.stdout + rejected.stderr


@pytest.mark.slow
def test_twenty_percent_faults_of_every_kind_and_a_kill(tmp_path: Path, catalog: Path) -> None:
    each = 0.2 / 7
    faults = FaultConfig(p_5xx=each, p_rate_limit=each, p_temporary=each, p_operation_failed=each,
                         p_slow=each, p_truncated=each, p_reset=each, slow_seconds=1.0, seed=11)
    work = _work(tmp_path / "work", _unique_tracks(catalog, 80, 20))
    script = (
        "import sys; from utils import crawl; from utils.config import CrawlParams\n"
        "crawl.build_track_metadata(sys.argv[1], CrawlParams(rate=60.0, timeout_s=0.3), "
        "sys.argv[2], sys.argv[3], retry=crawl.RetryPolicy(0.01, 0.05), progress=False)\n")
    with start_server(catalog, api_key=KEY, faults=faults) as server:
        proc = subprocess.Popen([sys.executable, "-c", script, str(work), KEY, server.url],
                                cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL)
        while server.requests_served < 50 and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        summary = _run(work, server, CrawlParams(rate=60.0, timeout_s=0.3, max_retries=10))
        assert sum(server.fault_counts.values()) >= 10
    out = _output(work)
    assert summary["by_status"] == {"ok": 80, "not_found": 20}
    assert (out.head(80)[DURATION] == 120.0 + np.arange(80)).all()
    with sqlite3.connect(WorkLayout(work).crawl_cache) as conn:
        attempts = conn.execute("SELECT SUM(attempts) FROM track_info").fetchone()[0]
    assert attempts > 100
