"""A local stand-in of the Last.fm API: `track.getInfo` from a catalog, with injectable faults.

It answers in the real shape (numbers as strings, duration in ms, `toptags.tag` possibly empty,
errors as `{"error": N, "message": ..., "links": []}` with HTTP 200, an invalid key with 403 as
Last.fm does, XML when `format=json` is missing) so the client is tested
against the same bytes it meets in production. Faults reproduce what a crawl of a million tracks
meets: 5xx pages, rate limiting (29), temporary errors (16), operation failed (8), answers slower
than the client's timeout, truncated bodies and connection resets. The catalog and the bodies
themselves are made in `utils.synthetic.fake_api_catalog`.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

from utils.core.errors import SessionlenError
from utils.data_processing.lastfm_client import METHOD
from utils.synthetic.fake_api_catalog import (
    Catalog,
    error_payload,
    load_catalog,
    track_payload,
    xml_body,
)

API_PATH = "/2.0/"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
FAULT_KINDS = ("5xx", "rate_limit", "temporary", "operation_failed", "slow", "truncated", "reset")


@dataclass(frozen=True)
class FaultConfig:
    """Per-request probabilities of each injected fault (they must sum to at most 1)."""

    p_5xx: float = 0.0
    p_rate_limit: float = 0.0
    p_temporary: float = 0.0
    p_operation_failed: float = 0.0
    p_slow: float = 0.0
    p_truncated: float = 0.0
    p_reset: float = 0.0
    slow_seconds: float = 15.0
    seed: int = 1

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("p_") and not 0.0 <= value <= 1.0:
                raise SessionlenError(f"fault probability {f.name}={value} is not in [0, 1]")
        if sum(self.probabilities()) > 1.0 + 1e-9:
            raise SessionlenError(
                f"fault probabilities sum to {sum(self.probabilities()):g}, more than 1")
        if self.slow_seconds < 0:
            raise SessionlenError(f"slow_seconds={self.slow_seconds} must not be negative")

    def probabilities(self) -> list[float]:
        """The probabilities in FAULT_KINDS order."""
        return [self.p_5xx, self.p_rate_limit, self.p_temporary, self.p_operation_failed,
                self.p_slow, self.p_truncated, self.p_reset]

    def pick(self, u: float) -> str | None:
        """The fault a request suffers given a uniform draw `u` in [0, 1), or None."""
        for kind, p in zip(FAULT_KINDS, self.probabilities(), strict=True):
            if u < p:
                return kind
            u -= p
        return None


class TrackRequest(NamedTuple):
    """The track a request asked about, as sent (the key is deliberately not part of it)."""

    artist: str
    track: str
    mbid: str


class _Server(ThreadingHTTPServer):
    """The HTTP server plus the state every handler thread shares."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], catalog: Catalog, api_key: str | None,
                 faults: FaultConfig) -> None:
        super().__init__(address, _Handler)
        self.catalog = catalog
        self.api_key = api_key
        self.faults = faults
        self.rng = random.Random(faults.seed)
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.requests_served = 0
        self.fault_counts = dict.fromkeys(FAULT_KINDS, 0)
        self.arrivals: list[float] = []
        self.per_track: Counter[TrackRequest] = Counter()

    def admit(self, query: dict[str, str]) -> str | None:
        """Count a request (and the track it asks about) and draw the fault it suffers, if any."""
        with self.lock:
            self.requests_served += 1
            self.arrivals.append(time.perf_counter())
            self.per_track[TrackRequest(query.get("artist", ""), query.get("track", ""),
                                        query.get("mbid", ""))] += 1
            fault = self.faults.pick(self.rng.random())
            if fault is not None:
                self.fault_counts[fault] += 1
        return fault

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (after a timeout, a reset) are routine here, not tracebacks."""


class _Handler(BaseHTTPRequestHandler):
    """track.getInfo over GET, as Last.fm serves it."""

    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes; with Nagle on, keep-alive answers would wait
    # for the client's delayed ACK (~40 ms each).
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: request lines carry the API key, which must never reach a log."""

    def do_GET(self) -> None:
        query = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        fault = self.server.admit(query)
        if fault == "reset":
            self._reset()
            return
        if fault == "5xx":
            self._send(503, b"<html><body>503 Service Unavailable</body></html>", "text/html")
            return
        if fault == "slow" and self.server.closing.wait(self.server.faults.slow_seconds):
            return
        codes = {"rate_limit": 29, "temporary": 16, "operation_failed": 8}
        payload = error_payload(codes[fault]) if fault in codes else self._answer(query)
        if query.get("format") == "json":
            body, kind = json.dumps(payload, ensure_ascii=False).encode(), "application/json"
        else:
            body, kind = xml_body(payload), "text/xml"
        if fault == "truncated":
            body = body[: len(body) // 2]
        self._send(403 if payload.get("error") == 10 else 200, body, kind)

    def _answer(self, query: dict[str, str]) -> dict[str, Any]:
        key = query.get("api_key", "")
        if not key or (self.server.api_key is not None and key != self.server.api_key):
            return error_payload(10)
        if query.get("method", "").lower() != METHOD.lower():
            return error_payload(3)
        found = self.server.catalog.lookup(query.get("artist", ""), query.get("track", ""),
                                           query.get("mbid", ""))
        return track_payload(found) if found else error_payload(6)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", f"{content_type}; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def _reset(self) -> None:
        """Abort the connection with a TCP RST, as an overloaded proxy does."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()


class FakeApi:
    """A running fake API in a background thread; use as a context manager or call `stop()`."""

    def __init__(self, catalog: Catalog, host: str, port: int, api_key: str | None,
                 faults: FaultConfig) -> None:
        self._server = _Server((host, port), catalog, api_key, faults)
        bound_host, bound_port = self._server.server_address[:2]
        self.url = f"http://{bound_host}:{bound_port}{API_PATH}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def catalog_size(self) -> int:
        """Distinct (artist, track) entries served."""
        return len(self._server.catalog)

    @property
    def requests_served(self) -> int:
        """Requests received so far, faulty ones included."""
        return self._server.requests_served

    @property
    def fault_counts(self) -> dict[str, int]:
        """How many requests suffered each kind of fault."""
        with self._server.lock:
            return dict(self._server.fault_counts)

    @property
    def requests_per_track(self) -> Counter[TrackRequest]:
        """How many requests asked about each track, faulty ones included."""
        with self._server.lock:
            return Counter(self._server.per_track)

    @property
    def arrivals(self) -> list[float]:
        """`time.perf_counter()` of every request's arrival (to measure the client's rate)."""
        with self._server.lock:
            return list(self._server.arrivals)

    def stop(self) -> None:
        """Stop serving and release the port; slow answers in progress are abandoned."""
        self._server.closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> FakeApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(catalog: Path, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, faults: FaultConfig | None = None) -> FakeApi:
    """Serve `catalog` on host:port (0 = any free port) in a background thread."""
    return FakeApi(load_catalog(catalog), host, port, api_key, faults or FaultConfig())


def wait_for_stop_signal() -> str:
    """Block until SIGINT (Ctrl-C) or SIGTERM arrives; return its name.

    Both are handled, so `kill` stops the server as cleanly as Ctrl-C; the previous handlers
    come back afterwards. Must run in the main thread (Python delivers signals there).
    """
    received: list[int] = []
    stop = threading.Event()

    def handle(signum: int, frame: object) -> None:
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, handle) for s in STOP_SIGNALS}
    try:
        while not stop.wait(3600):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return signal.Signals(received[0]).name


def fault_summary(counts: dict[str, int]) -> str:
    """Injected faults per kind, e.g. "5xx 3, reset 1", or "no faults"."""
    injected = [f"{kind} {n}" for kind, n in counts.items() if n]
    return ", ".join(injected) if injected else "no faults"


def serve(catalog: Path, host: str, port: int, api_key: str | None, faults: FaultConfig) -> None:
    """Serve until Ctrl-C or SIGTERM, printing the URL to point LASTFM_API_URL at."""
    api = start_server(catalog, host, port, api_key, faults)
    key_note = "checking the key from LASTFM_API_KEY" if api_key else "accepting any key"
    print(f"fake Last.fm API: {api.catalog_size} tracks at {api.url} ({key_note}); "
          "Ctrl-C or SIGTERM stops", flush=True)
    print(f"  export LASTFM_API_URL={api.url}", flush=True)
    try:
        stopped_by = wait_for_stop_signal()
    finally:
        api.stop()
    print(f"fake Last.fm API stopped by {stopped_by} after {api.requests_served} requests "
          f"({fault_summary(api.fault_counts)})", flush=True)
