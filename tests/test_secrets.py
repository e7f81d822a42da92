"""The Last.fm API key is written nowhere: not in WORK, the crawl cache, logs, manifests,
executed notebooks, figures or results, and not in any error message, even when requests'
own exceptions and the HTTP stack's log lines quote the full URL, key included.

Every check scans bytes for the key as given, URL-encoded and base64-encoded.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit

import pytest
import requests

from utils.core.columns import PLAYS_FILE
from utils.core.config import PROJECT_ROOT, CrawlParams, WorkLayout
from utils.core.errors import ApiKeyError, SessionlenError
from utils.data_processing import crawl, track_metadata
from utils.data_processing import lastfm_client as client
from utils.data_processing.tracks import build_unique_tracks, read_unique_tracks
from utils.synthetic.fake_api import FaultConfig, start_server
from utils.synthetic.generate import generate_dataset

# Random per test session, so no fixture or cached file can hold it by accident. Real keys are
# 32 hex digits; "+/" makes the URL-encoded form differ from the plain one.
KEY = secrets.token_hex(13) + "+/" + secrets.token_hex(3)
QUICK_RETRY = crawl.RetryPolicy(base_s=0.005, cap_s=0.02)
ERROR_PARAMS = CrawlParams(rate=200.0, limit=6, timeout_s=0.3, max_retries=2)


def key_forms(key: str) -> tuple[set[bytes], set[bytes]]:
    """The byte strings a leak of `key` would contain: (case-insensitive forms, exact forms).

    Plain, URL-encoded and JSON-escaped forms compare without case (percent escapes may be
    either case); base64 is exact, taken at each of the three alignments the key can have
    inside a longer encoded blob, in the standard and the URL-safe alphabets.
    """
    text_forms = {key, quote(key, safe=""), quote_plus(key), key.replace("/", "\\/")}
    folded = {form.lower().encode() for form in text_forms}
    exact: set[bytes] = set()
    raw = key.encode()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        core = encoded[(shift * 8 + 5) // 6: (shift + len(raw)) * 8 // 6]
        exact |= {core, core.replace(b"+", b"-").replace(b"/", b"_")}
    return folded, exact


@dataclass
class KeyScan:
    """What was scanned for the key, and where it was found."""

    key: str
    files: int = 0
    bytes: int = 0
    hits: list[str] = field(default_factory=list)

    def blob(self, name: str, data: bytes) -> None:
        """Scan one named byte string."""
        folded, exact = key_forms(self.key)
        lowered = data.lower()
        self.bytes += len(data)
        if any(f in lowered for f in folded) or any(e in data for e in exact):
            self.hits.append(name)

    def text(self, name: str, text: str) -> None:
        """Scan a message, an output stream or an exception text."""
        self.blob(name, text.encode("utf-8", errors="surrogateescape"))

    def tree(self, root: Path) -> None:
        """Scan every file under `root` (the SQLite cache and its WAL included)."""
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            self.files += 1
            self.blob(str(path.relative_to(root)), path.read_bytes())

    def summary(self) -> str:
        """The line the report quotes."""
        return (f"bytes of key found: {len(self.hits)} hits in {self.files} files and "
                f"{self.bytes} bytes scanned")


def exception_text(exc: BaseException) -> str:
    """Everything an exception can show: str and repr along its whole chain, even the contexts
    a `from None` hides, and the formatted traceback."""
    parts, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    parts.append("".join(traceback.format_exception(exc)))
    return "\n".join(parts)


def closed_port_url() -> str:
    """An API URL on a loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/2.0/"


class _EchoHandler(BaseHTTPRequestHandler):
    """A misbehaving server that quotes the request (its query holds the key) back: in a 500
    page, in a non-API page, in an API error message, behind malformed headers."""

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the request line holds the key."""

    def do_GET(self) -> None:
        sent_key = dict(parse_qsl(urlsplit(self.path).query)).get("api_key", "")
        echo = f"{self.path} (key {sent_key}, {quote(sent_key, safe='')})"
        mode = self.path.split("/")[1]
        if mode == "bad-headers":
            body = json.dumps({"error": 6, "message": "Track not found", "links": []}).encode()
            self.wfile.write(b"HTTP/1.0 200 OK\r\nX Broken Header Line\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            return
        status, body = {
            "http-500": (500, f"<h1>Internal Server Error</h1><p>while serving {echo}</p>"),
            "not-api": (200, f"<html><body>Proxy error for {echo}</body></html>"),
            "echo-error": (200, json.dumps({"error": 7, "message": f"Invalid resource {echo}"})),
            "bad-key": (403, json.dumps({"error": 10, "message": f"Invalid API key {echo}"})),
        }[mode]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body.encode())))
        self.end_headers()
        self.wfile.write(body.encode())


@contextmanager
def echo_server() -> Iterator[str]:
    """Run the echo server on loopback; yield its root URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    server.daemon_threads = True
    thread = Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny synthetic dataset (raw dir) and a WORK holding its completed tracks stage."""
    root = tmp_path_factory.mktemp("secrets_data")
    raw, work = root / "raw", root / "work"
    generate_dataset(raw, scale="tiny", seed=1)
    build_unique_tracks(raw, work)
    return raw, work


def fresh_work(dataset: tuple[Path, Path], target: Path) -> Path:
    """A WORK with only the tracks stage done, for one crawl."""
    shutil.copytree(WorkLayout(dataset[1]).tracks, WorkLayout(target).tracks)
    return target


@pytest.fixture()
def http_log(tmp_path: Path) -> Iterator[Path]:
    """Every log record of the process at DEBUG level, into a file (as a verbose app would)."""
    path = tmp_path / "logs" / "debug.log"
    path.parent.mkdir()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def test_the_scan_finds_every_form_of_the_key() -> None:
    scan = KeyScan(KEY)
    scan.text("plain", f"x{KEY}y")
    scan.text("url-encoded, lower-case escapes", f"api_key={quote(KEY, safe='').lower()}&a=b")
    scan.text("form-encoded", quote_plus(KEY))
    for shift in range(3):
        scan.blob(f"base64 +{shift}", base64.b64encode(b"a" * shift + KEY.encode() + b"tail"))
        scan.blob(f"urlsafe +{shift}", base64.urlsafe_b64encode(b"b" * shift + KEY.encode()))
    scan.text("clean", "api_key=*** and " + KEY[:-1])
    assert scan.hits == ["plain", "url-encoded, lower-case escapes", "form-encoded",
                         "base64 +0", "urlsafe +0", "base64 +1", "urlsafe +1", "base64 +2",
                         "urlsafe +2"]


def test_requests_own_errors_quote_the_key_but_the_client_never_does() -> None:
    url = closed_port_url()
    params = client.request_params("Artist", "Track", KEY)
    with pytest.raises(requests.ConnectionError) as raised:
        requests.get(url, params=params, timeout=2)
    scan = KeyScan(KEY)
    scan.text("requests' exception", exception_text(raised.value))
    assert scan.hits == ["requests' exception"], "the URL in requests' message holds the key"
    with requests.Session() as session:
        attempt = client.fetch_once(session, url, params, 2.0)
    assert attempt == client.Attempt(client.RETRY, reason="connection refused")


def test_a_crawl_through_every_kind_of_error_leaves_the_key_nowhere(
        tmp_path: Path, dataset: tuple[Path, Path], http_log: Path,
        capfd: pytest.CaptureFixture[str]) -> None:
    raw, _ = dataset
    scan = KeyScan(KEY)
    summaries: dict[str, dict[str, Any]] = {}

    def crawl_into(name: str, api_url: str, params: CrawlParams = ERROR_PARAMS) -> dict[str, Any]:
        work = fresh_work(dataset, tmp_path / name)
        summaries[name] = track_metadata.build_track_metadata(work, params, KEY, api_url,
                                                     retry=QUICK_RETRY, progress=False)
        return summaries[name]

    catalog = raw / "ground_truth" / "tracks.csv"
    each = 0.2 / 7
    faults = FaultConfig(p_5xx=each, p_rate_limit=each, p_temporary=each, p_operation_failed=each,
                         p_slow=each, p_truncated=each, p_reset=each, slow_seconds=1.0, seed=2)
    with start_server(catalog, api_key=KEY, faults=faults) as api:
        ok = crawl_into("faults", api.url, CrawlParams(rate=200.0, limit=150, timeout_s=0.3))
    assert ok["by_status"]["ok"] + ok["by_status"].get("not_found", 0) == 150
    assert all(api.fault_counts.values()), api.fault_counts
    with start_server(catalog, api_key=KEY, faults=FaultConfig(p_slow=1.0, slow_seconds=2)) as api:
        timeout = crawl_into("timeout", api.url)
    refused = crawl_into("refused", closed_port_url())
    with echo_server() as root:
        http_500 = crawl_into("http_500", f"{root}/http-500/2.0/")
        not_api = crawl_into("not_api", f"{root}/not-api/2.0/")
        echo_error = crawl_into("echo_error", f"{root}/echo-error/2.0/")
        bad_headers = crawl_into("bad_headers", f"{root}/bad-headers/2.0/")
        with pytest.raises(ApiKeyError) as bad_key:
            crawl_into("bad_key", f"{root}/bad-key/2.0/")
    with pytest.raises(SessionlenError) as bad_url:
        crawl_into("bad_url", f"ftp://127.0.0.1/2.0/?api_key={quote_plus(KEY)}")

    given_up = "gave up after 3 attempts: "
    assert timeout["failed_reasons"] == {given_up + "timeout after 0.3s": 6}
    assert refused["failed_reasons"] == {given_up + "connection refused": 6}
    assert http_500["failed_reasons"] == {given_up + "HTTP 500": 6}
    assert not_api["failed_reasons"] == {given_up + "truncated or malformed body": 6}
    assert echo_error["by_status"]["failed"] == sum(echo_error["failed_reasons"].values()) == 6
    assert all(r.startswith("error 7: Invalid resource /echo-error/2.0/?method=track.getInfo&")
               and "api_key=***" in r for r in echo_error["failed_reasons"])
    assert bad_headers["by_status"]["not_found"] == 6
    assert "Failed to parse headers" in http_log.read_text(encoding="utf-8")
    assert "api_key=***" in http_log.read_text(encoding="utf-8")
    assert str(bad_key.value).startswith("Last.fm rejected the API key (error 10: Invalid API")
    assert "is not an http(s) URL" in str(bad_url.value)

    scan.tree(tmp_path)
    captured = capfd.readouterr()
    scan.text("stdout", captured.out)
    scan.text("stderr", captured.err)
    scan.text("summaries", json.dumps(summaries))
    scan.text("invalid key error", exception_text(bad_key.value))
    scan.text("bad URL error", exception_text(bad_url.value))
    print(scan.summary())
    assert scan.files >= 9 * 2 + 1 and scan.hits == []


@contextmanager
def fake_api_cli(catalog: Path, env: dict[str, str], log: Path, *flags: str) -> Iterator[str]:
    """`sessionlen fake-api` in a subprocess; yield its URL; stop it with SIGTERM and keep its
    output in `log`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "utils.cli", "fake-api", "--catalog", str(catalog), "--port", "0",
         *flags], cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        yield first.split(" at ")[1].split(" ")[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        log.write_text(first + rest, encoding="utf-8")
    assert proc.returncode == 0 and "stopped by SIGTERM" in rest


def run_cli(log: Path, env: dict[str, str], *args: str, timeout: float = 600
            ) -> subprocess.CompletedProcess[str]:
    """One `sessionlen` command; its stdout and stderr are kept in `log`."""
    done = subprocess.run([sys.executable, "-m", "utils.cli", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    log.write_text(f"$ sessionlen {' '.join(args)}\n[exit {done.returncode}]\n"
                   f"--- stdout\n{done.stdout}--- stderr\n{done.stderr}", encoding="utf-8")
    return done


def test_cli_crawl_invalid_key_and_bad_rate_leave_the_key_nowhere(
        tmp_path: Path, dataset: tuple[Path, Path]) -> None:
    raw, _ = dataset
    catalog = raw / "ground_truth" / "tracks.csv"
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, "LASTFM_API_KEY": KEY}
    work = fresh_work(dataset, tmp_path / "work")
    with fake_api_cli(catalog, env, logs / "fake_api.log", "--p-5xx", "0.05", "--p-reset",
                      "0.05", "--p-truncated", "0.05", "--p-temporary", "0.05") as url:
        crawled = run_cli(logs / "metadata.log", {**env, "LASTFM_API_URL": url},
                          "metadata", "--work", str(work), "--limit", "40", "--rate", "100")
    assert crawled.returncode == 0, crawled.stderr
    assert "'ok': 40" in crawled.stdout
    other_key = {**env, "LASTFM_API_KEY": secrets.token_hex(16)}
    with fake_api_cli(catalog, other_key, logs / "fake_api_other_key.log") as url:
        rejected = run_cli(logs / "invalid_key.log", {**env, "LASTFM_API_URL": url},
                           "metadata", "--work", str(work), "--limit", "60")
    assert rejected.returncode == ApiKeyError.exit_code
    assert "rejected the API key (error 10" in rejected.stderr
    for bad in ("abc", "-1", "0"):
        bad_rate = run_cli(logs / f"rate_{bad}.log", env, "metadata", "--work", str(work),
                           "--rate", bad)
        assert bad_rate.returncode == 2 and "--rate" in bad_rate.stderr

    scan = KeyScan(KEY)
    scan.tree(tmp_path)
    print(scan.summary())
    assert scan.files >= 7 + 4 and scan.hits == []


def background_metadata(work: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`sessionlen metadata --limit 1` started in the background, its output going to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "utils.cli", "metadata", "--work", str(work), "--limit", "1"],
            cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.slow
@pytest.mark.notebooks
def test_a_pipeline_run_through_the_fake_api_leaves_the_key_nowhere(
        tmp_path: Path, dataset: tuple[Path, Path]) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(dataset[0], raw)
    with (raw / PLAYS_FILE).open("a", encoding="utf-8") as plays:
        plays.write("a line with too few fields\n")  # so the run writes a rejects file too
    catalog = raw / "ground_truth" / "tracks.csv"
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, "LASTFM_API_KEY": KEY}
    work = tmp_path / "work"
    tracks = run_cli(logs / "tracks.log", env, "tracks", "--raw", str(raw), "--work", str(work))
    assert tracks.returncode == 0, tracks.stderr
    n_tracks = len(read_unique_tracks(WorkLayout(work).unique_tracks))
    with fake_api_cli(catalog, env, logs / "fake_api.log", "--p-5xx", "0.02", "--p-reset",
                      "0.02", "--p-truncated", "0.02") as url:
        api_env = {**env, "LASTFM_API_URL": url}
        # The most played tracks first at a test's pace; the run's notebook asks for the rest
        # (at Last.fm's 5 requests/s), with the key only in its environment.
        first = run_cli(logs / "metadata.log", api_env, "metadata", "--work", str(work),
                        "--limit", str(n_tracks - 60), "--rate", "200")
        assert first.returncode == 0, first.stderr
        # Meanwhile, errors that carry a URL, through the CLI and its default retries.
        with fake_api_cli(catalog, env, logs / "fake_api_503.log", "--p-5xx", "1") as url_503:
            failing = [
                background_metadata(fresh_work(dataset, tmp_path / name), logs / f"{name}.log",
                                    {**env, "LASTFM_API_URL": api_url})
                for name, api_url in (("refused", closed_port_url()), ("http_503", url_503))]
            run = run_cli(logs / "run.log", api_env, "run", "--raw", str(raw), "--work",
                          str(work), "--scale", "tiny")
            for proc in failing:
                assert proc.wait(timeout=300) == 0
        assert run.returncode == 0, run.stderr[-2000:]
    notebook = (WorkLayout(work).notebooks / "data_processing"
                / "2_get_track_metadata.ipynb").read_text(encoding="utf-8")
    assert "track.getInfo: 60 tracks to ask" in notebook
    served = re.search(r"stopped by SIGTERM after (\d+) requests",
                       (logs / "fake_api.log").read_text(encoding="utf-8"))
    assert served and int(served.group(1)) >= n_tracks
    assert "gave up after 7 attempts: connection refused" in (logs / "refused.log").read_text()
    assert "gave up after 7 attempts: HTTP 503" in (logs / "http_503.log").read_text()
    for part in ("notebooks", "results/figures", "results/experiments.csv", "cache", "rejects"):
        assert any((work / part).rglob("*")) or (work / part).is_file(), part

    scan = KeyScan(KEY)
    scan.tree(tmp_path)
    print(scan.summary())
    assert scan.files > 100 and scan.hits == []
