"""Track durations and genres: the track.getInfo crawl, its SQLite cache, and offline estimates.

The crawl is built to be killed: every answer is committed to the cache as it arrives, so a rerun
asks only for what is missing (tracks never asked, and those that failed last time); a finished
crawl reruns without a single request. Tracks the API cannot resolve get a duration estimated from
the listening data, and every duration records where it came from (api | estimated | default).
"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import requests
from tqdm import tqdm

from utils.core.columns import (
    ARTIST_GAP_MEDIAN_S,
    ARTIST_KEY,
    ARTIST_NAME,
    DURATION,
    DURATION_SOURCE,
    GAP_MEDIAN_S,
    GENRE,
    GT_TRACKS_COLUMNS,
    PLAY_COUNT,
    TRACK_KEY,
    TRACK_MBID,
    TRACK_METADATA_COLUMNS,
    TRACK_NAME,
)
from utils.core.config import API_KEY_ENV, API_URL_ENV, LASTFM_API_URL, CrawlParams, WorkLayout
from utils.core.errors import ApiKeyError, SessionlenError
from utils.core.stage_io import (
    Timer,
    atomic_file,
    forget_stage,
    require_file,
    require_stage,
    write_manifest,
)
from utils.core.work_lock import locked_stage
from utils.data_processing import lastfm_client as client
from utils.data_processing.tracks import read_unique_tracks

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STATUS_OK = "ok"
STATUS_NOT_FOUND = "not_found"
STATUS_FAILED = "failed"
STATUS_NOT_REQUESTED = "not_requested"
# A cached ok or not_found is final; a failed track is asked again on the next run.
FINAL_STATUSES = (STATUS_OK, STATUS_NOT_FOUND)

API_STATUS = "api_status"
ESTIMATED_DURATION = "estimated_duration"
METADATA_COLUMNS = [*TRACK_METADATA_COLUMNS, API_STATUS, ESTIMATED_DURATION]
KEYS = [ARTIST_KEY, TRACK_KEY]

CACHE_SCHEMA = """
CREATE TABLE IF NOT EXISTS track_info (
    artist_key TEXT NOT NULL,
    track_key TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'not_found', 'failed')),
    duration_s REAL,
    genres TEXT NOT NULL DEFAULT '',
    error_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (artist_key, track_key)
) WITHOUT ROWID
"""
CACHE_COLUMNS = [ARTIST_KEY, TRACK_KEY, "status", "duration_s", "genres", "error_code", "reason",
                 "attempts"]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter between the attempts of one track."""

    base_s: float = 1.0
    cap_s: float = 60.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (0-based)."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** attempt)
        # Jitter keeps concurrent workers that failed together from retrying together.
        return ceiling * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class TrackResult:
    """Where one track's crawl ended in this run."""

    status: str
    duration_s: float | None = None
    genres: tuple[str, ...] = ()
    error_code: int | None = None
    reason: str = ""
    attempts: int = 0


class CrawlStopped(Exception):
    """Raised inside a worker when the crawl is being stopped."""


class RateLimiter:
    """Spaces request starts at least 1/rate apart across all threads, without bursts."""

    def __init__(self, rate: float, stop: threading.Event) -> None:
        self.interval = 1.0 / rate
        self._next = time.monotonic()
        self._lock = threading.Lock()
        self._stop = stop

    def acquire(self) -> None:
        """Block until this caller's slot; raise CrawlStopped if the crawl stops meanwhile."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if self._stop.wait(slot - now) if slot > now else self._stop.is_set():
            raise CrawlStopped

    def pause(self, seconds: float) -> None:
        """Push every later slot back: the server said we are too fast (error 29)."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


class TrackCache:
    """The persistent crawl cache: one row per (artist_key, track_key); never holds the key."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=30.0)
            # WAL: a kill -9 loses at most the answer being written, never the file.
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(CACHE_SCHEMA)
            self._conn.commit()
        except sqlite3.OperationalError as exc:
            # Disk full, read-only or locked: the file itself is fine, its place is not.
            raise SessionlenError(
                f"{self.path}: cannot use the crawl cache ({exc}); check the free space and "
                "write permission of its folder, then rerun") from None
        except sqlite3.DatabaseError as exc:
            raise SessionlenError(
                f"{self.path}: unusable crawl cache ({exc}); delete it to start afresh") from None

    def read(self) -> pd.DataFrame:
        """Every cached answer."""
        return pd.read_sql_query(f"SELECT {', '.join(CACHE_COLUMNS)} FROM track_info", self._conn)

    def record(self, artist_key: str, track_key: str, result: TrackResult) -> None:
        """Commit one track's outcome (attempts add up across runs)."""
        with self._conn:
            self._conn.execute(
                """INSERT INTO track_info VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (artist_key, track_key) DO UPDATE SET
                     status = excluded.status, duration_s = excluded.duration_s,
                     genres = excluded.genres, error_code = excluded.error_code,
                     reason = excluded.reason, attempts = attempts + excluded.attempts,
                     updated_at = excluded.updated_at""",
                (artist_key, track_key, result.status, result.duration_s,
                 client.GENRE_SEPARATOR.join(result.genres), result.error_code, result.reason,
                 result.attempts, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
            )

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> TrackCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_cache(path: Path) -> pd.DataFrame:
    """The cached answers, or an empty frame when no crawl has run (without creating a file)."""
    if not Path(path).is_file():
        return pd.DataFrame({c: pd.Series(dtype=object) for c in CACHE_COLUMNS})
    with TrackCache(path) as cache:
        return cache.read()


class _Crawler:
    """Fetches one track with retries, inside the shared rate limit; one HTTP session per thread."""

    def __init__(self, api_url: str, api_key: str, params: CrawlParams, retry: RetryPolicy,
                 stop: threading.Event) -> None:
        self.api_url, self.api_key, self.params, self.retry = api_url, api_key, params, retry
        self.stop = stop
        self.limiter = RateLimiter(params.rate, stop)
        self.requests_sent = 0
        self._first_sent = self._last_sent = 0.0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        """Close every thread's HTTP session."""
        for session in self._sessions:
            session.close()

    def _count_request(self) -> None:
        now = time.monotonic()
        with self._lock:
            self.requests_sent += 1
            self._first_sent = self._first_sent or now
            self._last_sent = now

    def sustained_rate(self) -> float:
        """Requests per second between the first and the last request sent."""
        span = self._last_sent - self._first_sent
        return (self.requests_sent - 1) / span if span > 0 else 0.0

    def fetch(self, artist: str, track: str, mbid: str) -> TrackResult:
        """Ask until an answer, a permanent failure, or the retries run out."""
        query = client.request_params(artist, track, self.api_key, mbid=mbid,
                                      autocorrect=self.params.autocorrect)
        reason = ""
        for attempt in range(self.params.max_retries + 1):
            self.limiter.acquire()
            self._count_request()
            outcome = client.fetch_once(self._session(), self.api_url, query, self.params.timeout_s)
            if outcome.outcome == client.KEY_REJECTED:
                raise ApiKeyError(
                    f"Last.fm rejected the API key ({outcome.reason}); check {API_KEY_ENV}")
            if outcome.outcome != client.RETRY:
                return _track_result(outcome, attempt + 1)
            reason = outcome.reason
            delay = self.retry.delay(attempt)
            if outcome.code == client.RATE_LIMITED:
                self.limiter.pause(delay)
            if attempt < self.params.max_retries and self.stop.wait(delay):
                raise CrawlStopped
        return TrackResult(STATUS_FAILED, reason=f"gave up after {attempt + 1} attempts: {reason}",
                           attempts=attempt + 1)


def _track_result(outcome: client.Attempt, attempts: int) -> TrackResult:
    """A final client outcome as a cache row."""
    if outcome.outcome == client.OK and outcome.info is not None:
        return TrackResult(STATUS_OK, outcome.info.duration_s, outcome.info.genres,
                           attempts=attempts)
    status = STATUS_NOT_FOUND if outcome.outcome == client.NOT_FOUND_OUTCOME else STATUS_FAILED
    return TrackResult(status, error_code=outcome.code, reason=outcome.reason, attempts=attempts)


class _Progress:
    """The progress bar: tracks done, their rate and ETA, and play-weighted API coverage."""

    def __init__(self, total: int, total_plays: float, covered_plays: float, enabled: bool) -> None:
        self.total_plays = max(total_plays, 1.0)
        self.covered = covered_plays
        # Off a terminal (notebooks, logs) every redraw is kept: a days-long crawl must not
        # leave hundreds of thousands of lines behind.
        interactive = sys.stderr.isatty()
        self.bar = tqdm(total=total, unit="track", desc="track.getInfo", disable=not enabled,
                        mininterval=0.5 if interactive else 30.0, smoothing=0.05,
                        dynamic_ncols=True)
        self._show()

    def _show(self) -> None:
        self.bar.set_postfix_str(f"plays covered {self.covered / self.total_plays:.1%}",
                                 refresh=False)

    def done(self, result: TrackResult, plays: float) -> None:
        """Count one finished track."""
        if result.status == STATUS_OK and result.duration_s:
            self.covered += plays
        self._show()
        self.bar.update(1)

    def close(self) -> None:
        """Finish the bar."""
        self.bar.close()


def _rows(todo: pd.DataFrame) -> Iterator[tuple[str, str, str, str, str, float]]:
    columns = [ARTIST_KEY, TRACK_KEY, ARTIST_NAME, TRACK_NAME, TRACK_MBID, PLAY_COUNT]
    return todo[columns].itertuples(index=False, name=None)


@dataclass(frozen=True)
class CrawlStats:
    """What a crawl cost: requests sent (retries included) and their sustained rate."""

    requests_sent: int
    sustained_rate: float


def crawl_tracks(
    todo: pd.DataFrame,
    cache: TrackCache,
    *,
    api_key: str,
    api_url: str,
    params: CrawlParams,
    retry: RetryPolicy | None = None,
    progress: bool = True,
    plays: tuple[float, float] = (0.0, 0.0),
) -> CrawlStats:
    """Ask the API about every row of `todo` in order, committing each answer as it arrives.

    `params.concurrency` requests run at once inside the `params.rate` limit. `plays` is
    (total plays, plays already covered by the API) for the progress bar's coverage. An
    ApiKeyError stops the crawl at once (answers already received are kept).
    """
    _check_api_url(api_url)
    if todo.empty:
        return CrawlStats(0, 0.0)
    stop = threading.Event()
    retry = retry or RetryPolicy(params.backoff_base_s, params.backoff_cap_s)
    crawler = _Crawler(api_url, api_key, params, retry, stop)
    bar = _Progress(len(todo), plays[0], plays[1], progress)
    rows = _rows(todo)
    pending: dict[Future[TrackResult], tuple] = {}
    failure: BaseException | None = None
    pool = ThreadPoolExecutor(max_workers=params.concurrency, thread_name_prefix="getinfo")
    try:
        while failure is None:
            # A short queue keeps memory flat for a million tracks and stops promptly.
            while len(pending) < 2 * params.concurrency and (row := next(rows, None)):
                pending[pool.submit(crawler.fetch, row[2], row[3], row[4])] = row
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                failure = _collect(future, pending.pop(future), cache, bar) or failure
    finally:
        stop.set()
        for future in pending:
            future.cancel()
        for future in wait(pending).done:
            failure = _collect(future, pending[future], cache, bar) or failure
        pool.shutdown(wait=True)
        crawler.close()
        bar.close()
    if failure is not None:
        raise failure
    return CrawlStats(crawler.requests_sent, crawler.sustained_rate())


def _collect(future: Future[TrackResult], row: tuple, cache: TrackCache,
             bar: _Progress) -> BaseException | None:
    """Record a finished future's answer; return the exception that must end the crawl, if any."""
    if future.cancelled():
        return None
    exc = future.exception()
    if isinstance(exc, CrawlStopped):
        return None
    if exc is not None:
        return exc
    result = future.result()
    cache.record(row[0], row[1], result)
    bar.done(result, float(row[5]))
    return None


def _check_api_url(api_url: str) -> None:
    """Refuse an API root that is not an http(s) URL, before any request."""
    try:
        parts = urlsplit(api_url)
        usable = parts.scheme in ("http", "https") and bool(parts.netloc)
    except ValueError:  # an unbalanced IPv6 bracket, for one
        usable = False
    if not usable:
        raise SessionlenError(
            f"{API_URL_ENV}={client.scrub_key(api_url)!r} is not an http(s) URL")


def _api_host(api_url: str) -> str:
    """host[:port] of the API root, for messages; any user:password@ part stays out of them."""
    parts = urlsplit(api_url)
    host = f"[{parts.hostname}]" if ":" in str(parts.hostname) else str(parts.hostname)
    return f"{host}:{parts.port}" if parts.port else host


def _public_url(api_url: str, api_key: str | None) -> str:
    """The API root as a manifest records it: without any user:password@ part or key."""
    parts = urlsplit(api_url)
    public = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return client.scrub_key(public, api_key)


def tracks_to_request(tracks: pd.DataFrame, cached: pd.DataFrame,
                      limit: int | None) -> pd.DataFrame:
    """The tracks to ask about, most played first: within the top `limit`, not answered yet."""
    ranked = tracks.sort_values(PLAY_COUNT, ascending=False, kind="stable")
    if limit:
        ranked = ranked.head(limit)
    final = cached[cached["status"].isin(FINAL_STATUSES)]
    answered = pd.MultiIndex.from_frame(ranked[KEYS]).isin(pd.MultiIndex.from_frame(final[KEYS]))
    return ranked[~answered].drop_duplicates(KEYS)


def estimate_durations(tracks: pd.DataFrame, default_s: float) -> pd.DataFrame:
    """Offline durations: the track's median in-session gap, else its artist's, else a default."""
    own = tracks[GAP_MEDIAN_S].where(tracks[GAP_MEDIAN_S] > 0)
    artist = tracks[ARTIST_GAP_MEDIAN_S].where(tracks[ARTIST_GAP_MEDIAN_S] > 0)
    duration = own.fillna(artist).fillna(default_s)
    source = np.where(own.notna() | artist.notna(), "estimated", "default")
    return pd.DataFrame({DURATION: duration.to_numpy(), DURATION_SOURCE: source},
                        index=tracks.index)


def assemble_metadata(tracks: pd.DataFrame, cached: pd.DataFrame,
                      default_s: float) -> pd.DataFrame:
    """One row per unique track, in input order: API duration when known, else the estimate."""
    answers = tracks[KEYS].merge(cached, how="left", on=KEYS, validate="m:1")
    estimate = estimate_durations(tracks, default_s)
    ok = answers["status"].eq(STATUS_OK).to_numpy()
    api_duration = pd.to_numeric(answers["duration_s"], errors="coerce").to_numpy()
    from_api = ok & (api_duration > 0)
    return pd.DataFrame({
        ARTIST_KEY: tracks[ARTIST_KEY].to_numpy(),
        TRACK_KEY: tracks[TRACK_KEY].to_numpy(),
        DURATION: np.where(from_api, api_duration, estimate[DURATION].to_numpy()).round(3),
        GENRE: np.where(ok, answers["genres"].fillna("").astype(str).to_numpy(), ""),
        DURATION_SOURCE: np.where(from_api, "api", estimate[DURATION_SOURCE].to_numpy()),
        API_STATUS: answers["status"].fillna(STATUS_NOT_REQUESTED).to_numpy(),
        ESTIMATED_DURATION: estimate[DURATION].round(3).to_numpy(),
    })


def api_key_from_env() -> str | None:
    """The Last.fm API key from the environment, or None (offline)."""
    return os.environ.get(API_KEY_ENV) or None


def api_url_from_env() -> str:
    """The API root from the environment, else the real Last.fm one."""
    return os.environ.get(API_URL_ENV) or LASTFM_API_URL


def _crawl_if_online(tracks: pd.DataFrame, cache_path: Path, params: CrawlParams,
                     api_key: str | None, api_url: str, retry: RetryPolicy | None,
                     progress: bool) -> tuple[int, CrawlStats, float]:
    """Run the crawl when there is a key; return (tracks asked, its cost, seconds)."""
    if not api_key:
        print(f"{API_KEY_ENV} is not set: running offline. Durations are estimated from the data "
              "(median in-session gap after each track, else its artist's, else "
              f"{params.default_duration_s:g} s); genres stay empty.", flush=True)
        return 0, CrawlStats(0, 0.0), 0.0
    _check_api_url(api_url)
    with TrackCache(cache_path) as cache, Timer() as timer:
        cached = cache.read()
        todo = tracks_to_request(tracks, cached, params.limit)
        scope = f"the {params.limit} most played of " if params.limit else ""
        print(f"track.getInfo: {len(todo)} tracks to ask ({scope}{len(tracks)}; "
              f"{len(cached)} in the cache) at {params.rate:g} req/s, {params.concurrency} "
              f"concurrent, from {_api_host(api_url)}", flush=True)
        answered = assemble_metadata(tracks, cached, params.default_duration_s)
        covered = tracks[PLAY_COUNT].to_numpy()[answered[DURATION_SOURCE].eq("api").to_numpy()]
        stats = crawl_tracks(todo, cache, api_key=api_key, api_url=api_url, params=params,
                            retry=retry, progress=progress,
                            plays=(float(tracks[PLAY_COUNT].sum()), float(covered.sum())))
    return len(todo), stats, timer.seconds


def metadata_summary(metadata: pd.DataFrame, tracks: pd.DataFrame,
                     cached: pd.DataFrame) -> dict[str, Any]:
    """Counts by source and status, failure reasons and play-weighted API coverage."""
    plays = tracks[PLAY_COUNT].to_numpy()
    from_api = metadata[DURATION_SOURCE].eq("api").to_numpy()
    failed = metadata[[*KEYS, API_STATUS]].merge(cached[[*KEYS, "reason"]], how="left", on=KEYS)
    reasons = failed.loc[failed[API_STATUS].eq(STATUS_FAILED), "reason"].value_counts()
    return {
        "tracks": len(metadata),
        "by_source": {s: int(n) for s, n in metadata[DURATION_SOURCE].value_counts().items()},
        "by_status": {s: int(n) for s, n in metadata[API_STATUS].value_counts().items()},
        "failed_reasons": {str(r): int(n) for r, n in reasons.items()},
        "play_coverage_api": round(float(plays[from_api].sum() / max(plays.sum(), 1.0)), 4),
    }


@locked_stage("tracks")
def build_track_metadata(
    work: Path,
    params: CrawlParams,
    api_key: str | None,
    api_url: str,
    *,
    retry: RetryPolicy | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The metadata stage: crawl (with a key) or estimate, then write track_metadata.csv."""
    layout = WorkLayout(Path(work))
    with Timer() as total:
        require_stage(layout.tracks, "tracks")
        tracks = read_unique_tracks(layout.unique_tracks)
        asked, stats, crawl_s = _crawl_if_online(tracks, layout.crawl_cache, params, api_key,
                                                api_url, retry, progress)
        cached = read_cache(layout.crawl_cache)
        metadata = assemble_metadata(tracks, cached, params.default_duration_s)
        # Until the new manifest entry is written, the stage must read as incomplete.
        forget_stage(layout.tracks, "metadata")
        with atomic_file(layout.track_metadata, newline="", encoding="utf-8") as fh:
            metadata.to_csv(fh, index=False)
    summary = {
        "mode": "api" if api_key else "offline",
        **metadata_summary(metadata, tracks, cached),
        "tracks_asked": asked,
        "requests_sent": stats.requests_sent,
        "request_rate": round(stats.sustained_rate, 2),
        "output": str(layout.track_metadata),
    }
    write_manifest(
        layout.tracks, "metadata", inputs=[layout.unique_tracks],
        parameters={**params.to_dict(), "mode": summary["mode"],
                    "api_url": _public_url(api_url, api_key),
                    "retry": asdict(retry or RetryPolicy(params.backoff_base_s,
                                                          params.backoff_cap_s))},
        rows_in=len(tracks), rows_out=len(metadata), rows_rejected=0,
        outputs=[layout.track_metadata.name],
        timings={"crawl": crawl_s, "total": total.seconds},
    )
    return summary


def read_metadata_file(path: Path) -> pd.DataFrame:
    """Read track_metadata.csv: keys as strings, duration in seconds (NaN when empty), genre."""
    require_file(path, "track metadata file")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SessionlenError(f"{path}: unreadable CSV ({exc})") from exc
    missing = [c for c in TRACK_METADATA_COLUMNS if c not in frame.columns]
    if missing:
        raise SessionlenError(f"{path}: missing column(s) {', '.join(missing)}")
    text = frame[DURATION]
    duration = pd.to_numeric(text.replace("", np.nan), errors="coerce").astype(np.float64)
    bad = (text != "").to_numpy() & ~(np.isfinite(duration) & (duration >= 0)).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise SessionlenError(
            f"{path}: line {row + 2}: duration {text.iloc[row]!r} is not a "
            f"non-negative number of seconds")
    duplicated = frame.duplicated([ARTIST_KEY, TRACK_KEY])
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise SessionlenError(f"{path}: line {row + 2}: duplicate (artist_key, track_key)")
    frame[DURATION] = duration
    if ESTIMATED_DURATION in frame.columns:
        frame[ESTIMATED_DURATION] = pd.to_numeric(frame[ESTIMATED_DURATION].replace("", np.nan))
    return frame


def read_track_metadata(work: Path) -> pd.DataFrame:
    """WORK/tracks/track_metadata.csv of a completed metadata stage."""
    layout = WorkLayout(Path(work))
    require_stage(layout.tracks, "metadata")
    return read_metadata_file(layout.track_metadata)


def sources_table(work: Path) -> pd.DataFrame:
    """Tracks and plays per duration source, with their shares."""
    layout = WorkLayout(Path(work))
    metadata = read_track_metadata(work)
    plays = read_unique_tracks(layout.unique_tracks)[PLAY_COUNT].to_numpy()
    table = (pd.DataFrame({DURATION_SOURCE: metadata[DURATION_SOURCE], "tracks": 1,
                           "plays": plays})
             .groupby(DURATION_SOURCE).sum()
             .reindex(["api", "estimated", "default"], fill_value=0))
    table["track_share"] = (table["tracks"] / max(len(metadata), 1)).round(4)
    table["play_share"] = (table["plays"] / max(plays.sum(), 1)).round(4)
    return table


def duration_errors(metadata: pd.DataFrame, catalog_csv: Path) -> pd.DataFrame:
    """Per track with a known true duration: the output and the offline estimate against it."""
    truth = pd.read_csv(catalog_csv, dtype=str, keep_default_na=False)
    missing = [c for c in GT_TRACKS_COLUMNS if c not in truth.columns]
    if missing:
        raise SessionlenError(f"{catalog_csv}: missing column(s) {', '.join(missing)}")
    truth = pd.DataFrame({
        ARTIST_KEY: client.normalize_names(truth[ARTIST_NAME]),
        TRACK_KEY: client.normalize_names(truth[TRACK_NAME]),
        "true_duration": pd.to_numeric(truth["duration_ms"], errors="coerce") / 1000.0,
    }).drop_duplicates(KEYS)
    joined = metadata.merge(truth[truth["true_duration"] > 0], on=KEYS, how="inner")
    joined["error_s"] = joined[DURATION] - joined["true_duration"]
    joined["estimate_error_s"] = joined[ESTIMATED_DURATION] - joined["true_duration"]
    return joined[[*KEYS, DURATION_SOURCE, "true_duration", DURATION, ESTIMATED_DURATION,
                   "error_s", "estimate_error_s"]]


def duration_error_table(errors: pd.DataFrame) -> pd.DataFrame:
    """Median and mean absolute error (s) per duration source, plus the offline estimate alone."""
    final = errors.assign(abs_error=errors["error_s"].abs())
    table = final.groupby(DURATION_SOURCE)["abs_error"].agg(
        tracks="size", median_abs_error_s="median", mean_abs_error_s="mean")
    offline = errors["estimate_error_s"].abs()
    table.loc["offline estimate, every track"] = [len(offline), offline.median(), offline.mean()]
    return table.round(2)


def plot_duration_errors(errors: pd.DataFrame, out: Path | None = None) -> Figure:
    """Histogram of offline-estimate errors against the true durations (saved to `out` if given).

    The figure is released from pyplot, so a notebook shows it once: when a cell returns it.
    """
    # Imported here: the CLI's metadata stage never plots, and matplotlib is slow to import.
    import matplotlib.pyplot as plt

    from utils.core.plots import finish_figure

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.hist(errors["estimate_error_s"].clip(-300, 300), bins=60, color="tab:blue", alpha=0.8)
    ax.axvline(0, color="black", linewidth=1)
    ax.set_xlabel("offline estimate - true duration (s, clipped to ±300)")
    ax.set_ylabel("tracks")
    ax.set_title(f"Offline duration estimate error, {len(errors)} tracks "
                 f"(median |error| {errors['estimate_error_s'].abs().median():.1f} s)")
    return finish_figure(fig, out)
