"""The crawl cache: one SQLite row per track asked about, and the statuses a track can end in.

Every answer is committed as it arrives, so a killed crawl loses at most the answer being written
and a rerun asks only for what is missing (tracks never asked, and those that failed last time).
The cache never holds the API key.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from utils.core.columns import ARTIST_KEY, TRACK_KEY
from utils.core.errors import SessionlenError
from utils.data_processing import lastfm_client as client

STATUS_OK = "ok"
STATUS_NOT_FOUND = "not_found"
STATUS_FAILED = "failed"
# Never cached: what track_metadata.csv says of a track the crawl did not reach.
STATUS_NOT_REQUESTED = "not_requested"
# A cached ok or not_found is final; a failed track is asked again on the next run.
FINAL_STATUSES = (STATUS_OK, STATUS_NOT_FOUND)
# The cache's primary key, and the key its answers join the unique tracks on.
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
class TrackResult:
    """Where one track's crawl ended in this run."""

    status: str
    duration_s: float | None = None
    genres: tuple[str, ...] = ()
    error_code: int | None = None
    reason: str = ""
    attempts: int = 0


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
