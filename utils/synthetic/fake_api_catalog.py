"""What the fake Last.fm API serves: its track catalog and the answer bodies in the real shape.

Bodies copy Last.fm's: every number a string, duration in ms, `toptags.tag` possibly empty, errors
as `{"error": N, "message": ..., "links": []}`, and the XML rendering sent when `format=json` is
missing. `utils.synthetic.fake_api` serves them over HTTP, with the faults.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pandas as pd

from utils.core.columns import ARTIST_MBID, ARTIST_NAME, GT_TRACKS_COLUMNS, TRACK_MBID, TRACK_NAME
from utils.core.errors import SessionlenError
from utils.data_processing.lastfm_client import GENRE_SEPARATOR
from utils.data_processing.track_rules import name_key

ERROR_MESSAGES = {
    3: "Invalid Method - No method with that name in this package",
    6: "Track not found",
    8: "Operation failed - Most likely the backend service failed. Please try again.",
    10: "Invalid API key - You must be granted a valid key by last.fm",
    16: "There was a temporary error processing your request. Please try again",
    29: "Rate Limit Exceeded - Your IP has made too many requests in a short period",
}


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
            self.by_names.setdefault((name_key(t.artist), name_key(t.track)), t)
            if t.track_mbid:
                self.by_mbid.setdefault(t.track_mbid.lower(), t)

    def __len__(self) -> int:
        return len(self.by_names)

    def lookup(self, artist: str, track: str, mbid: str) -> CatalogTrack | None:
        """The entry for a request: by MBID when given (as Last.fm does), else by names."""
        if mbid.strip():
            return self.by_mbid.get(mbid.strip().lower())
        return self.by_names.get((name_key(artist), name_key(track)))


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
