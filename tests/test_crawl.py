"""The metadata stage against a real loopback fake API: resolution, cache, rate, faults, kills."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from utils.core.columns import (
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
from utils.core.config import PROJECT_ROOT, CrawlParams, WorkLayout
from utils.core.errors import ApiKeyError, SessionlenError, StageIncompleteError
from utils.core.stage_io import MANIFEST, write_manifest
from utils.data_processing import crawl, crawl_cache, durations, track_metadata
from utils.synthetic.fake_api import FAULT_KINDS, FakeApi, FaultConfig, TrackRequest, start_server

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
    return track_metadata.build_track_metadata(work, params, key if api else None,
                                      api.url if api else "http://unused.invalid/",
                                      retry=QUICK_RETRY, progress=False)


def _output(work: Path) -> pd.DataFrame:
    return track_metadata.read_track_metadata(work)


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
    assert (unknown[durations.API_STATUS] == "not_found").all()
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


def test_credentials_in_the_api_url_stay_out_of_messages_and_manifests(
        tmp_path: Path, catalog: Path, api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    work = _work(tmp_path / "work", _unique_tracks(catalog, 3, 0))
    url = api.url.replace("http://", "http://someone:pa55word@")
    track_metadata.build_track_metadata(work, FAST, KEY, url + f"?api_key={KEY}", progress=False)
    host = api.url.split("/")[2]
    assert f"from {host}\n" in capsys.readouterr().out
    manifest = json.loads((WorkLayout(work).tracks / MANIFEST).read_text())["metadata"]
    assert manifest["parameters"]["api_url"] == f"{api.url}?api_key=***"


def test_limit_asks_the_most_played_first(tmp_path: Path, catalog: Path, api: FakeApi) -> None:
    tracks = _unique_tracks(catalog, 12, 0).sample(frac=1.0, random_state=3)
    work = _work(tmp_path / "work", tracks)
    _run(work, api, CrawlParams(rate=400.0, limit=5))
    out = _output(work)
    top = tracks[PLAY_COUNT].to_numpy() >= np.sort(tracks[PLAY_COUNT].to_numpy())[-5]
    assert (out.loc[top, durations.API_STATUS] == "ok").all()
    assert (out.loc[~top, durations.API_STATUS] == "not_requested").all()
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
    estimate = durations.estimate_durations(tracks, 240.0)
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


def _twenty_percent_faults(seed: int) -> FaultConfig:
    """20% of requests faulty, the seven kinds equally likely; slow answers outlast a 0.3 s
    client timeout."""
    each = 0.2 / len(FAULT_KINDS)
    return FaultConfig(p_5xx=each, p_rate_limit=each, p_temporary=each, p_operation_failed=each,
                       p_slow=each, p_truncated=each, p_reset=each, slow_seconds=1.0, seed=seed)


# The reason the client gives for the last fault a track met before the crawler gave up.
FAULT_REASONS = {
    "5xx": "HTTP 503", "rate_limit": "error 29: Rate Limit Exceeded",
    "temporary": "error 16: There was a temporary error", "operation_failed": "error 8: Operation",
    "slow": "timeout after 0.2s", "truncated": "truncated or malformed body",
    "reset": "connection reset",
}


def _replay(faults: FaultConfig, in_catalog: list[bool], max_retries: int
            ) -> tuple[list[tuple[str, str | None]], dict[str, int], int]:
    """What a one-request-at-a-time crawl must end with, from the server's seeded draws.

    Returns per track (status, last fault when failed), faults injected per kind, requests.
    Every fault kind must make the crawler try again; any answer ends the track.
    """
    rng = random.Random(faults.seed)
    injected = dict.fromkeys(FAULT_KINDS, 0)
    ends: list[tuple[str, str | None]] = []
    sent = 0
    for known in in_catalog:
        end: tuple[str, str | None] = ("failed", None)
        for _ in range(max_retries + 1):
            sent += 1
            fault = faults.pick(rng.random())
            if fault is None:
                end = ("ok" if known else "not_found", None)
                break
            injected[fault] += 1
            end = ("failed", fault)
        ends.append(end)
    return ends, injected, sent


def _cache_rows(work: Path) -> pd.DataFrame:
    return crawl_cache.read_cache(WorkLayout(work).crawl_cache)


def _asked(requests_per_track: Counter[TrackRequest], tracks: pd.DataFrame
           ) -> Counter[tuple[str, str]]:
    """Requests per (artist_key, track_key), mapped back from the names sent."""
    keys = {(a, t): (ak, tk) for a, t, ak, tk in tracks[
        ["artist_name", "track_name", "artist_key", "track_key"]].itertuples(index=False)}
    asked: Counter[tuple[str, str]] = Counter()
    for request, n in requests_per_track.items():
        asked[keys[(request.artist, request.track)]] += n
    return asked


def _integrity(work: Path) -> str:
    with sqlite3.connect(WorkLayout(work).crawl_cache) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def _final_keys(work: Path) -> set[tuple[str, str]]:
    """Tracks whose answer (ok or not_found) is stored: they must never be asked again."""
    rows = _cache_rows(work)
    final = rows[rows["status"].isin(crawl_cache.FINAL_STATUSES)]
    return set(zip(final["artist_key"], final["track_key"], strict=True))


def test_twenty_percent_faults_end_exactly_as_replayed_and_a_rerun_asks_only_the_failed(
        tmp_path: Path, catalog: Path) -> None:
    # Seed 44: all seven kinds occur, and six tracks fail both attempts.
    faults = _twenty_percent_faults(seed=44)
    tracks = _unique_tracks(catalog, 50, 10)
    work = _work(tmp_path / "work", tracks)
    # One request at a time, so the server's n-th draw meets the crawler's n-th request.
    params = CrawlParams(rate=400.0, concurrency=1, timeout_s=0.2, max_retries=1)
    ends, injected, sent = _replay(faults, [True] * 50 + [False] * 10, params.max_retries)
    with start_server(catalog, api_key=KEY, faults=faults) as server:
        summary = _run(work, server, params)
        assert server.fault_counts == injected
        assert server.requests_served == sent == summary["requests_sent"] == 77
    assert injected == {"5xx": 2, "rate_limit": 6, "temporary": 3, "operation_failed": 4,
                        "slow": 2, "truncated": 2, "reset": 4}
    assert summary["by_status"] == {"ok": 45, "not_found": 9, "failed": 6}
    out = _output(work)
    assert out[durations.API_STATUS].tolist() == [status for status, _ in ends]
    cached = _cache_rows(work).set_index(["artist_key", "track_key"])
    keys = list(zip(out["artist_key"], out["track_key"], strict=True))
    for key, (status, fault) in zip(keys, ends, strict=True):
        row = cached.loc[key]
        assert row["status"] == status
        if status == "failed":
            assert row["reason"].startswith(f"gave up after 2 attempts: {FAULT_REASONS[fault]}")
            assert row["attempts"] == 2
    failed = set(cached.index[cached["status"] == "failed"])
    # The faults stop: the rerun asks each failed track once, and nothing else.
    with start_server(catalog, api_key=KEY) as server:
        summary = _run(work, server, params)
        assert _asked(server.requests_per_track, tracks) == Counter(dict.fromkeys(failed, 1))
    assert summary["requests_sent"] == 6
    assert summary["by_status"] == {"ok": 50, "not_found": 10}
    assert (_output(work).head(50)[DURATION] == 120.0 + np.arange(50)).all()


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
    assert _integrity(work) == "ok"
    stored = _final_keys(work)
    assert len(stored) >= served_before - 4  # at most the requests in flight were lost
    asked_before = api.requests_per_track
    summary = _run(work, api)
    tracks = pd.read_csv(WorkLayout(work).unique_tracks, dtype=str, keep_default_na=False)
    asked_again = _asked(api.requests_per_track - asked_before, tracks)
    everything = set(zip(tracks["artist_key"], tracks["track_key"], strict=True))
    assert asked_again == Counter(dict.fromkeys(everything - stored, 1))
    assert summary["requests_sent"] == 80 - len(stored) == api.requests_served - served_before
    assert summary["by_status"] == {"ok": 70, "not_found": 10}


def test_stopping_a_crawl_thread_keeps_answers_and_resumes(tmp_path: Path, catalog: Path,
                                                           api: FakeApi) -> None:
    tracks = _unique_tracks(catalog, 40, 0)
    layout = WorkLayout(_work(tmp_path / "work", tracks))
    params = CrawlParams(rate=40.0)
    served_before, returned = api.requests_served, threading.Event()

    def interrupt_after_some_answers() -> None:
        # On the answers served, not on a clock; never once the crawl has returned (the
        # check below then fails).
        while api.requests_served < served_before + 5 and not returned.is_set():
            time.sleep(0.005)
        if not returned.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    # Python leaves SIGINT ignored when it starts with it ignored (a background job of a shell
    # without job control): Ctrl-C's handler is set here so the test does not depend on that.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    with crawl_cache.TrackCache(layout.crawl_cache) as cache:
        interrupter = threading.Thread(target=interrupt_after_some_answers, daemon=True)
        interrupter.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                crawl.crawl_tracks(tracks, cache, api_key=KEY, api_url=api.url,
                                   params=params, progress=False)
        finally:
            returned.set()
            interrupter.join()
            signal.signal(signal.SIGINT, previous)
        kept = len(cache.read())
    assert 0 < kept < 40 and kept == api.requests_served - served_before
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
        track_metadata.build_track_metadata(work, FAST, KEY, "ftp://x", progress=False)
    with pytest.raises(SessionlenError, match=r"LASTFM_API_URL='http://\[::1/2.0/' is not"):
        track_metadata.build_track_metadata(work, FAST, KEY, "http://[::1/2.0/", progress=False)
    # Parsed fine, refused by the HTTP stack at the first request: still one line, no key.
    with pytest.raises(SessionlenError, match="API URL 'http://a..b/2.0/' is not a usable"):
        track_metadata.build_track_metadata(work, FAST, KEY, "http://a..b/2.0/", progress=False)


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
    errors = durations.duration_errors(_output(work), catalog)
    assert len(errors) == 12
    table = durations.duration_error_table(errors)
    assert set(table.index) == {"estimated", "default", "offline estimate, every track"}
    assert table["tracks"].sum() == 24
    truth = 120.0 + np.arange(12)
    assert table.loc["offline estimate, every track", "median_abs_error_s"] == pytest.approx(
        np.median(np.abs(errors["estimated_duration"].to_numpy() - truth)))
    figure = durations.plot_duration_errors(errors, tmp_path / "fig" / "errors.png")
    assert (tmp_path / "fig" / "errors.png").stat().st_size > 1000 and figure.axes


def test_sources_table_weights_by_plays(tmp_path: Path, catalog: Path, api: FakeApi) -> None:
    work = _work(tmp_path / "work", _unique_tracks(catalog, 3, 1))
    _run(work, api)
    table = track_metadata.sources_table(work)
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


def test_cli_timeout_and_retries_bound_an_unreachable_api(tmp_path: Path, catalog: Path) -> None:
    work = _work(tmp_path / "work", _unique_tracks(catalog, 3, 0))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    env = {**os.environ, "LASTFM_API_KEY": KEY,
           "LASTFM_API_URL": f"http://127.0.0.1:{closed_port}/2.0/"}
    command = [sys.executable, "-m", "utils.cli", "metadata", "--work", str(work),
               "--timeout", "0.5", "--max-retries", "0", "--rate", "50"]
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    cache = crawl_cache.read_cache(WorkLayout(work).crawl_cache)
    assert list(cache["status"]) == ["failed"] * 3
    assert set(cache["reason"]) == {"gave up after 1 attempts: connection refused"}
    assert list(cache["attempts"]) == [1, 1, 1]
    bad = subprocess.run([*command[:-6], "--max-retries", "-1"], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith("must be 0 or a positive integer, got -1 (see --help)")


@pytest.mark.slow
def test_twenty_percent_faults_of_every_kind_and_a_kill(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.csv"
    pd.DataFrame(_catalog_rows(400), columns=GT_TRACKS_COLUMNS).to_csv(catalog, index=False)
    tracks = _unique_tracks(catalog, 400, 100)
    work = _work(tmp_path / "work", tracks)
    everything = set(zip(tracks["artist_key"], tracks["track_key"], strict=True))
    script = (
        "import sys; from utils.data_processing import crawl, track_metadata\n"
        "from utils.core.config import CrawlParams\n"
        "track_metadata.build_track_metadata(sys.argv[1], CrawlParams(rate=150.0, timeout_s=0.2, "
        "max_retries=1), sys.argv[2], sys.argv[3], retry=crawl.RetryPolicy(0.01, 0.05), "
        "progress=False)\n")
    params = CrawlParams(rate=150.0, timeout_s=0.2, max_retries=1)
    with start_server(catalog, api_key=KEY, faults=_twenty_percent_faults(seed=11)) as server:
        proc = subprocess.Popen([sys.executable, "-c", script, str(work), KEY, server.url],
                                cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL)
        while server.requests_served < 250 and proc.poll() is None:
            time.sleep(0.01)
        assert proc.poll() is None, "the crawl ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        time.sleep(0.3)  # requests already on the wire reach the server before the snapshot
        assert _integrity(work) == "ok"
        stored = _final_keys(work)
        asked_before, served_before = server.requests_per_track, server.requests_served
        summary = _run(work, server, params)
        asked_again = _asked(server.requests_per_track - asked_before, tracks)
        injected = server.fault_counts
    assert 150 < len(stored) < 500
    assert not set(asked_again) & stored
    assert set(asked_again) == everything - stored
    assert summary["requests_sent"] == sum(asked_again.values()) == (
        server.requests_served - served_before)
    assert all(injected[kind] > 0 for kind in FAULT_KINDS), injected
    assert sum(injected.values()) == pytest.approx(0.2 * server.requests_served, rel=0.25)
    cached = _cache_rows(work).set_index(["artist_key", "track_key"])
    status = cached.loc[list(zip(tracks["artist_key"], tracks["track_key"], strict=True)),
                        "status"].to_numpy()
    assert set(status[:400]) <= {"ok", "failed"} and set(status[400:]) <= {"not_found", "failed"}
    failed = cached[cached["status"] == "failed"]
    assert len(failed) > 0 and failed["reason"].str.startswith("gave up after 2 attempts: ").all()
    counts = Counter(status)
    assert summary["by_status"] == {s: counts[s] for s in ("ok", "not_found", "failed")}
    # The faults stop: the rerun completes exactly the failed tracks, one request each.
    with start_server(catalog, api_key=KEY) as server:
        summary = _run(work, server, params)
        assert _asked(server.requests_per_track, tracks) == Counter(dict.fromkeys(failed.index, 1))
    assert summary["by_status"] == {"ok": 400, "not_found": 100}
    assert (_output(work).head(400)[DURATION] == 120.0 + np.arange(400)).all()
    assert _integrity(work) == "ok"
