"""The Last.fm `track.getInfo` client: request building, one HTTP attempt, response parsing.

Last.fm answers most errors with HTTP 200 and a body `{"error": N, "message": ...}`, so the body
decides the outcome; the HTTP status only matters when there is no parsable body (5xx, proxies).
Numbers come back as strings; `duration` is milliseconds and "0" when unknown.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

import pandas as pd
import requests
import urllib3

from utils.core.errors import SessionlenError
from utils.data_processing.track_rules import name_key

METHOD = "track.getInfo"
NOT_FOUND = 6
RATE_LIMITED = 29
# 8 operation failed, 11 service offline, 16 temporary error, 29 rate limit: worth another try.
RETRYABLE_CODES = frozenset({8, 11, 16, RATE_LIMITED})
# 10 invalid key, 26 suspended key: every further request would fail the same way.
KEY_CODES = frozenset({10, 26})

OK = "ok"
NOT_FOUND_OUTCOME = "not_found"
RETRY = "retry"
KEY_REJECTED = "key_rejected"
FAILED = "failed"

GENRE_SEPARATOR = "|"
MIN_KEY_LENGTH = 6
# The HTTP stack's loggers whose lines can quote a request URL (and so the key).
HTTP_LOGGERS = ("urllib3.connection", "urllib3.connectionpool", "urllib3.poolmanager",
                "urllib3.response", "urllib3.util.retry", "requests")
_KEY_IN_URL = re.compile(r"(api_key=)[^&\s'\"]+", re.IGNORECASE)


class MalformedResponse(ValueError):
    """A body that is neither a track nor an error (truncated or not Last.fm at all)."""


@dataclass(frozen=True)
class TrackInfo:
    """What the pipeline keeps from a track.getInfo answer."""

    duration_s: float | None
    genres: tuple[str, ...]


@dataclass(frozen=True)
class ApiError:
    """An error body: its Last.fm code and message."""

    code: int
    message: str


@dataclass(frozen=True)
class Attempt:
    """The outcome of one HTTP attempt: ok | not_found | retry | key_rejected | failed."""

    outcome: str
    info: TrackInfo | None = None
    code: int | None = None
    reason: str = ""


def normalize_names(names: pd.Series) -> pd.Series:
    """`track_rules.name_key` over a column (missing values become empty strings).

    Python's own strip/lower run once per distinct name, so the keys match the tracks stage's
    exactly (vectorized Unicode lower-casing differs on a few characters).
    """
    names = names.fillna("").astype(str)
    distinct = names.unique()
    return names.map(dict(zip(distinct, map(name_key, distinct), strict=True)))


def scrub_key(text: str, api_key: str | None = None) -> str:
    """`text` with the API key removed: any `api_key=` URL parameter, and the key itself as
    given or URL-encoded (a server may echo the query string it received)."""
    text = _KEY_IN_URL.sub(r"\1***", text)
    # Real keys are 32 hex characters; replacing a one-letter test key would garble every word.
    if not api_key or len(api_key) < MIN_KEY_LENGTH:
        return text
    for form in {api_key, quote(api_key, safe=""), quote_plus(api_key)}:
        text = re.sub(re.escape(form), "***", text, flags=re.IGNORECASE)
    return text


def request_params(
    artist: str, track: str, api_key: str, *, mbid: str = "", autocorrect: int = 1
) -> dict[str, str]:
    """Query parameters of one track.getInfo call (names when known, else the MusicBrainz id).

    Names are preferred: Last.fm answers an unknown mbid with "not found" even when the names
    would match, and the 1K dataset's MBIDs are from 2009.
    """
    params = {"method": METHOD, "format": "json", "autocorrect": str(int(autocorrect)),
              "api_key": api_key}
    if artist.strip() and track.strip():
        params.update(artist=artist, track=track)
    elif mbid.strip():
        params["mbid"] = mbid.strip()
    else:
        params.update(artist=artist, track=track)
    return params


def duration_seconds(value: Any) -> float | None:
    """Milliseconds (a string in the real API) to seconds; None when unknown ("0", missing)."""
    try:
        ms = float(value)
    except (TypeError, ValueError):
        return None
    return ms / 1000.0 if ms > 0 else None


def genre_list(toptags: Any) -> list[str]:
    """Tag names of a `toptags` object, in order; one tag may arrive as an object, not a list."""
    if not isinstance(toptags, dict):
        return []
    tags = toptags.get("tag") or []
    if isinstance(tags, dict):
        tags = [tags]
    names = (t.get("name", "") if isinstance(t, dict) else "" for t in tags)
    # "|" joins genres in the output files, so it cannot stay inside a name.
    return [n.replace(GENRE_SEPARATOR, "/").strip() for n in names if str(n).strip()]


def parse_json_body(payload: Any) -> TrackInfo | ApiError:
    """A decoded JSON body as a track or an error."""
    if isinstance(payload, dict) and "error" in payload:
        try:
            code = int(payload["error"])
        except (TypeError, ValueError) as exc:
            raise MalformedResponse(f"error code {payload['error']!r} is not a number") from exc
        return ApiError(code, str(payload.get("message", "")))
    track = payload.get("track") if isinstance(payload, dict) else None
    if not isinstance(track, dict):
        raise MalformedResponse("no 'track' object in the body")
    genres = tuple(genre_list(track.get("toptags")))
    return TrackInfo(duration_seconds(track.get("duration")), genres)


def parse_xml_body(text: str) -> TrackInfo | ApiError:
    """An XML body (`<lfm status=...>`, the API's default format) as a track or an error."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise MalformedResponse(f"unparsable XML ({exc})") from exc
    error = root.find("error")
    if root.get("status") == "failed" and error is not None:
        code = error.get("code", "")
        if not code.isdigit():
            raise MalformedResponse(f"error code {code!r} is not a number")
        return ApiError(int(code), (error.text or "").strip())
    track = root.find("track")
    if track is None:
        raise MalformedResponse("no <track> element in the body")
    tags = [{"name": t.findtext("name", "")} for t in track.findall("toptags/tag")]
    return TrackInfo(duration_seconds(track.findtext("duration")),
                     tuple(genre_list({"tag": tags})))


def parse_body(body: bytes | str) -> TrackInfo | ApiError:
    """A response body in either format as a track or an error; MalformedResponse otherwise."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    if text.lstrip().startswith("<"):
        return parse_xml_body(text)
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedResponse(f"unparsable JSON ({exc.msg})") from exc
    return parse_json_body(payload)


def classify_error(error: ApiError, api_key: str | None = None) -> Attempt:
    """What to do about an API error code."""
    message = scrub_key(error.message, api_key)
    reason = f"error {error.code}: {message}".strip()
    if error.code == NOT_FOUND:
        return Attempt(NOT_FOUND_OUTCOME, code=error.code, reason=reason)
    if error.code in KEY_CODES:
        return Attempt(KEY_REJECTED, code=error.code, reason=reason)
    if error.code in RETRYABLE_CODES:
        return Attempt(RETRY, code=error.code, reason=reason)
    return Attempt(FAILED, code=error.code, reason=reason)


def classify_response(status: int, body: bytes, api_key: str | None = None) -> Attempt:
    """The outcome of an HTTP response: the body decides unless the server itself failed."""
    if status >= 500:
        return Attempt(RETRY, reason=f"HTTP {status}")
    try:
        parsed = parse_body(body)
    except MalformedResponse:
        if status == 429:
            return Attempt(RETRY, code=RATE_LIMITED, reason="HTTP 429")
        if status == 200:
            return Attempt(RETRY, reason="truncated or malformed body")
        return Attempt(FAILED, reason=f"HTTP {status} without an API body")
    if isinstance(parsed, ApiError):
        return classify_error(parsed, api_key)
    return Attempt(OK, info=parsed)


class _KeyScrubber(logging.Filter):
    """Removes `api_key=...` from log records of the HTTP stack: its lines quote request URLs."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub_key(record.getMessage()), ()
        if record.exc_info:
            # Format the traceback now, scrubbed; handlers print exc_text when it is set.
            record.exc_text = scrub_key(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


@functools.cache
def guard_http_logs() -> None:
    """Attach the key scrubber to every logger of the HTTP stack (once per process).

    A logger's filters only see that logger's own records, so each module's logger needs one:
    urllib3.connection, for one, warns with the full URL when a response's headers are malformed.
    """
    existing = [name for name in list(logging.root.manager.loggerDict)
                if name.split(".")[0] in ("urllib3", "requests")]
    for name in {*HTTP_LOGGERS, *existing}:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _KeyScrubber) for f in logger.filters):
            logger.addFilter(_KeyScrubber())


def fetch_once(
    session: requests.Session, api_url: str, params: dict[str, str], timeout_s: float
) -> Attempt:
    """One GET of track.getInfo; network trouble becomes a `retry` outcome, never an exception.

    Reasons are short fixed phrases: request exceptions quote the full URL, key included.
    """
    api_key = params.get("api_key")
    guard_http_logs()
    try:
        response = session.get(api_url, params=params, timeout=timeout_s)
        body = response.content
    except requests.Timeout:
        return Attempt(RETRY, reason=f"timeout after {timeout_s:g}s")
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema, urllib3.exceptions.LocationParseError):
        raise SessionlenError(
            f"the API URL {scrub_key(api_url, api_key)!r} is not a usable http(s) URL") from None
    except requests.exceptions.ChunkedEncodingError:
        return Attempt(RETRY, reason="connection broken mid-body")
    except requests.ConnectionError as exc:
        return Attempt(RETRY, reason=_connection_reason(exc))
    except requests.RequestException as exc:
        return Attempt(RETRY, reason=f"request failed ({type(exc).__name__})")
    return classify_response(response.status_code, body, api_key)


def _connection_reason(exc: requests.ConnectionError) -> str:
    """A short, key-free description of a connection failure."""
    text = repr(exc)
    if "reset" in text.lower() or "RemoteDisconnected" in text or "aborted" in text.lower():
        return "connection reset"
    if "refused" in text.lower():
        return "connection refused"
    return "connection error"
