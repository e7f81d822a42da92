"""The track.getInfo crawl: concurrent requests inside one rate limit, each retried with backoff.

Each answer is committed to the crawl cache as it arrives; an API key the server rejects stops
the crawl at once, and a stop (Ctrl-C, a failure elsewhere) ends it without waiting out retries.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from urllib.parse import urlsplit

import pandas as pd
import requests
from tqdm import tqdm

from utils.core.columns import (
    ARTIST_KEY,
    ARTIST_NAME,
    PLAY_COUNT,
    TRACK_KEY,
    TRACK_MBID,
    TRACK_NAME,
)
from utils.core.config import API_KEY_ENV, API_URL_ENV, CrawlParams
from utils.core.errors import ApiKeyError, SessionlenError
from utils.data_processing import lastfm_client as client
from utils.data_processing.crawl_cache import (
    STATUS_FAILED,
    STATUS_NOT_FOUND,
    STATUS_OK,
    TrackCache,
    TrackResult,
)


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
    check_api_url(api_url)
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


def check_api_url(api_url: str) -> None:
    """Refuse an API root that is not an http(s) URL, before any request."""
    try:
        parts = urlsplit(api_url)
        usable = parts.scheme in ("http", "https") and bool(parts.netloc)
    except ValueError:  # an unbalanced IPv6 bracket, for one
        usable = False
    if not usable:
        raise SessionlenError(
            f"{API_URL_ENV}={client.scrub_key(api_url)!r} is not an http(s) URL")
