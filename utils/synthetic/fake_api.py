"""A local stand-in of the Last.fm API: `track.getInfo` from a catalog, with injectable faults.

It answers in the real shape (numbers as strings, duration in ms, `toptags.tag` possibly empty,
errors as `{"error": N, "message": ..., "links": []}` with HTTP 200, an invalid key with 403 as
Last.fm does, XML when `format=json` is missing) so the client is tested
against the same bytes it meets in production. Faults reproduce what a crawl of a million tracks
meets: 5xx pages, rate limiting (29), temporary errors (16), operation failed (8), answers slower
than the client's timeout, truncated bodies and connection resets.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import struct
import threading
import time
import xml.etree.ElementTree as ET
import zlib
from collections import Counter
from dataclasses import dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, quote_plus, urlsplit

import pandas as pd

from utils.core.columns import ARTIST_MBID, ARTIST_NAME, GT_TRACKS_COLUMNS, TRACK_MBID, TRACK_NAME
from utils.core.errors import SessionlenError
from utils.data_processing.lastfm_client import GENRE_SEPARATOR, METHOD, normalize_name

API_PATH = "/2.0/"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
FAULT_KINDS = ("5xx", "rate_limit", "temporary", "operation_failed", "slow", "truncated", "reset")
ERROR_MESSAGES = {
    3: "Invalid Method - No method with that name in this package",
    6: "Track not found",
    8: "Operation failed - Most likely the backend service failed. Please try again.",
    10: "Invalid API key - You must be granted a valid key by last.fm",
    16: "There was a temporary error processing your request. Please try again",
    29: "Rate Limit Exceeded - Your IP has made too many requests in a short period",
}


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


@dataclass(frozen=True)
class CatalogTrack:
    """One catalog entry, as the fake API serves it."""

    artist: str
    track: str
    artist_mbid: str
    track_mbid: str
    duration_ms: int
    tags: tuple[str, ...]


class Catalog:
    """Catalog tracks looked up by stripped case-insensitive names, or by track MBID."""

    def __init__(self, tracks: list[CatalogTrack]) -> None:
        self.by_names: dict[tuple[str, str], CatalogTrack] = {}
        self.by_mbid: dict[str, CatalogTrack] = {}
        for t in tracks:
            self.by_names.setdefault((normalize_name(t.artist), normalize_name(t.track)), t)
            if t.track_mbid:
                self.by_mbid.setdefault(t.track_mbid.lower(), t)

    def __len__(self) -> int:
        return len(self.by_names)

    def lookup(self, artist: str, track: str, mbid: str) -> CatalogTrack | None:
        """The entry for a request: by MBID when given (as Last.fm does), else by names."""
        if mbid.strip():
            return self.by_mbid.get(mbid.strip().lower())
        return self.by_names.get((normalize_name(artist), normalize_name(track)))


def load_catalog(path: Path) -> Catalog:
    """Read a catalog CSV (`ground_truth/tracks.csv` of a synthetic dataset)."""
    path = Path(path)
    if not path.is_file():
        raise SessionlenError(f"{path}: catalog not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise SessionlenError(f"{path}: not a readable catalog CSV ({exc})") from None
    missing = [c for c in GT_TRACKS_COLUMNS if c not in frame.columns]
    if missing:
        raise SessionlenError(f"{path}: catalog lacks column(s) {', '.join(missing)}")
    durations = pd.to_numeric(frame["duration_ms"].replace("", "0"), errors="coerce")
    bad = durations.isna() | (durations < 0)
    if bad.any():
        line = int(bad.to_numpy().argmax()) + 2  # 1-based, after the header
        raise SessionlenError(
            f"{path}: line {line}: duration_ms {frame['duration_ms'].iloc[line - 2]!r} "
            "is not a non-negative number")
    tags = frame["tags"].str.split(GENRE_SEPARATOR, regex=False)
    return Catalog([
        CatalogTrack(a, t, am, tm, int(d), tuple(x for x in tg if x))
        for a, t, am, tm, d, tg in zip(frame[ARTIST_NAME], frame[TRACK_NAME], frame[ARTIST_MBID],
                                       frame[TRACK_MBID], durations, tags, strict=True)
    ])


def _lastfm_url(*parts: str) -> str:
    return "https://www.last.fm/music/" + "/_/".join(quote_plus(p) for p in parts)


def track_payload(t: CatalogTrack) -> dict[str, Any]:
    """A track.getInfo JSON body in the real shape (every number a string)."""
    popularity = zlib.crc32(f"{t.artist}\t{t.track}".encode())
    artist: dict[str, str] = {"name": t.artist, "url": _lastfm_url(t.artist)}
    if t.artist_mbid:
        artist["mbid"] = t.artist_mbid
    track: dict[str, Any] = {"name": t.track}
    if t.track_mbid:
        track["mbid"] = t.track_mbid
    track.update({
        "url": _lastfm_url(t.artist, t.track),
        "duration": str(t.duration_ms),
        "streamable": {"#text": "0", "fulltrack": "0"},
        "listeners": str(popularity % 100_000),
        "playcount": str(popularity % 1_000_000),
        "artist": artist,
        "toptags": {"tag": [{"name": g, "url": "https://www.last.fm/tag/" + quote_plus(g)}
                            for g in t.tags]},
    })
    return {"track": track}


def error_payload(code: int) -> dict[str, Any]:
    """An error body in the real shape."""
    return {"error": code, "message": ERROR_MESSAGES.get(code, "Error"), "links": []}


def xml_body(payload: dict[str, Any]) -> bytes:
    """The XML rendering of a payload, what Last.fm sends when `format=json` is missing."""
    root = ET.Element("lfm")
    if "error" in payload:
        root.set("status", "failed")
        ET.SubElement(root, "error", code=str(payload["error"])).text = payload["message"]
    else:
        root.set("status", "ok")
        t = payload["track"]
        track = ET.SubElement(root, "track")
        for name in ("name", "mbid", "url", "duration", "listeners", "playcount"):
            if name in t:
                ET.SubElement(track, name).text = t[name]
        tags = ET.SubElement(track, "toptags")
        for tag in t["toptags"]["tag"]:
            ET.SubElement(ET.SubElement(tags, "tag"), "name").text = tag["name"]
    return b'<?xml version="1.0" encoding="UTF-8" ?>\n' + ET.tostring(root, encoding="utf-8")


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
