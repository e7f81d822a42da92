"""Stage metadata: track durations and genres, from the track.getInfo crawl or offline estimates.

With an API key the stage crawls the tracks not answered yet (the cache makes it resumable: a
finished crawl reruns without a single request); without one it runs offline. Either way it
writes WORK/tracks/track_metadata.csv, one row per unique track, and the stage manifest.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from utils.core.columns import (
    ARTIST_KEY,
    DURATION,
    DURATION_SOURCE,
    DURATION_SOURCES,
    PLAY_COUNT,
    TRACK_KEY,
    TRACK_METADATA_COLUMNS,
)
from utils.core.config import API_KEY_ENV, API_URL_ENV, LASTFM_API_URL, CrawlParams, WorkLayout
from utils.core.errors import SessionlenError
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
from utils.data_processing.crawl import CrawlStats, RetryPolicy, check_api_url, crawl_tracks
from utils.data_processing.crawl_cache import (
    FINAL_STATUSES,
    KEYS,
    STATUS_FAILED,
    TrackCache,
    read_cache,
)
from utils.data_processing.durations import API_STATUS, ESTIMATED_DURATION, assemble_metadata
from utils.data_processing.tracks import read_unique_tracks


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
    check_api_url(api_url)
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


def _pandas_durations(path: Path, text: pa.ChunkedArray) -> pa.Array:
    """Durations parsed as pandas does; a one-line error naming the first bad line."""
    numbers = pd.to_numeric(pd.Series(text.to_numpy(zero_copy_only=False)).replace("", np.nan),
                            errors="coerce").to_numpy(np.float64)
    bad = (pc.not_equal(text, "").to_numpy(zero_copy_only=False)
           & ~(np.isfinite(numbers) & (numbers >= 0)))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise SessionlenError(f"{path}: line {row + 2}: duration {text[row].as_py()!r} is not "
                              f"a non-negative number of seconds")
    return pa.array(numbers, from_pandas=True)


def _durations(path: Path, text: pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Durations in seconds (null when empty); a one-line error naming the first bad line.

    Arrow's parser reads a valid column; anything it refuses, or any negative or infinite
    value, goes to pandas' parser, which decides and names the line.
    """
    try:
        seconds = pc.cast(pc.if_else(pc.equal(text, ""), pa.scalar(None, text.type), text),
                          pa.float64())
    except pa.ArrowInvalid:
        return _pandas_durations(path, text)
    valid = pc.and_(pc.is_finite(seconds), pc.greater_equal(seconds, 0.0))
    if pc.all(valid, skip_nulls=True).as_py() is False:
        return _pandas_durations(path, text)
    return seconds


def read_metadata_table(path: Path, columns: Sequence[str] = TRACK_METADATA_COLUMNS) -> pa.Table:
    """Read `columns` of track_metadata.csv as Arrow: text as it is (empty fields stay empty),
    duration in seconds (null when empty); every line's duration and key pair checked."""
    require_file(path, "track metadata file")
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        header = next(csv.reader(fh), [])
    missing = [c for c in TRACK_METADATA_COLUMNS if c not in header]
    if missing:
        raise SessionlenError(f"{path}: missing column(s) {', '.join(missing)}")
    wanted = list(dict.fromkeys([ARTIST_KEY, TRACK_KEY, DURATION, *columns]))
    try:
        table = pcsv.read_csv(path, parse_options=pcsv.ParseOptions(newlines_in_values=True),
                              convert_options=pcsv.ConvertOptions(
                                  column_types=dict.fromkeys(wanted, pa.large_string()),
                                  include_columns=wanted, strings_can_be_null=False))
    except pa.ArrowInvalid as exc:
        raise SessionlenError(f"{path}: unreadable CSV ({str(exc).splitlines()[0]})") from exc
    table = table.set_column(table.schema.get_field_index(DURATION), DURATION,
                             _durations(path, table[DURATION]))
    keys = [pc.dictionary_encode(table[k]).combine_chunks() for k in (ARTIST_KEY, TRACK_KEY)]
    pairs = (keys[0].indices.to_numpy().astype(np.int64) * len(keys[1].dictionary)
             + keys[1].indices.to_numpy())
    duplicated = pd.Series(pairs).duplicated().to_numpy()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise SessionlenError(f"{path}: line {row + 2}: duplicate (artist_key, track_key)")
    return table.select(list(columns))


def read_metadata_file(path: Path) -> pd.DataFrame:
    """Read track_metadata.csv: keys as strings, duration in seconds (NaN when empty), genre."""
    require_file(path, "track metadata file")
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        header = next(csv.reader(fh), [])
    frame = read_metadata_table(path, [c for c in header if c]).to_pandas()
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
             .reindex(list(DURATION_SOURCES), fill_value=0))
    table["track_share"] = (table["tracks"] / max(len(metadata), 1)).round(4)
    table["play_share"] = (table["plays"] / max(plays.sum(), 1)).round(4)
    return table
