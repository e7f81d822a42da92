"""Each user's plays matched one to one to the summarized sessions, with their split.

The sessions of a user's plays are recomputed from user_dir with the summarize stage's own rule
and gap and checked against summary_dir (same count, same starts, same lengths); both the
vocabulary (train counts) and the session data (per-play files) read plays through here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from utils.baseline.sessions import session_lengths, session_starts
from utils.baseline.user_plays import read_user_plays as read_checked_plays
from utils.core import columns as C
from utils.models_with_clusters.final_dir import (
    FROM_SESSION,
    SPLIT_INDEX,
    PlaySource,
    check_sessions_match,
)

READ_THREADS = 2
PREFETCH_USERS = 4
_NAMES = pa.dictionary(pa.int32(), pa.string())
_NAME_TYPES: dict[str, pa.DataType] = {C.ARTIST_NAME: _NAMES, C.TRACK_NAME: _NAMES}


@dataclass(frozen=True)
class UserPlays:
    """One user's plays, oldest first; names as codes into the user's distinct names.

    Names are handled as codes so that the per-play work (sessions, repeat counts, vocabulary
    look-ups) is integer arithmetic; strings are touched once per distinct name.
    """

    timestamp_ms: np.ndarray
    duration_s: np.ndarray
    artist: np.ndarray
    track: np.ndarray
    artists: pd.DataFrame
    tracks: pd.DataFrame

    def __len__(self) -> int:
        return len(self.timestamp_ms)


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(code per row, distinct values) of a one-chunk dictionary column."""
    if column.num_chunks == 0:
        return np.zeros(0, np.int64), np.array([], dtype=object)
    chunk = column.chunk(0)
    if chunk.null_count:
        # The reader reads an empty name as null; it stays the empty (unknown) name.
        chunk = pc.fill_null(chunk.cast(pa.string()), "").dictionary_encode()
    return (chunk.indices.to_numpy(zero_copy_only=False).astype(np.int64),
            chunk.dictionary.to_numpy(zero_copy_only=False))


def read_user_plays(user: str, files: list[Path]) -> UserPlays:
    """One user's plays, read and checked by the summarize stage's reader: oldest first, ties in
    file order, so tied plays end their session exactly as they did there."""
    table = read_checked_plays(user, files, _NAME_TYPES).unify_dictionaries().combine_chunks()
    artist, artist_names = _codes(table.column(C.ARTIST_NAME))
    track_text, track_names = _codes(table.column(C.TRACK_NAME))
    # A track is the (artist, track name) pair: "Intro" by two artists is two tracks.
    pairs, track = np.unique(artist * max(len(track_names), 1) + track_text, return_inverse=True)
    pair_artist, pair_track = np.divmod(pairs, max(len(track_names), 1))
    return UserPlays(
        timestamp_ms=table.column(C.TIMESTAMP).cast(pa.int64()).to_numpy(),
        duration_s=table.column(C.DURATION).to_numpy(),
        artist=artist, track=track.reshape(-1),
        artists=pd.DataFrame({C.ARTIST_NAME: artist_names}),
        tracks=pd.DataFrame({C.ARTIST_NAME: artist_names[pair_artist],
                             C.TRACK_NAME: track_names[pair_track]}),
    )


def match_sessions(plays: UserPlays, sessions: pd.DataFrame, gap_minutes: float,
                   where: str) -> np.ndarray:
    """Row of `sessions` each play belongs to; fails unless the sessions agree one to one."""
    stamps, durations = plays.timestamp_ms, plays.duration_s
    starts = session_starts(np.zeros(len(stamps), np.int8), stamps, durations, gap_minutes)
    first, lengths = session_lengths(starts, stamps, durations)
    check_sessions_match(stamps[first], lengths, sessions, where)
    return np.cumsum(starts) - 1


def times_played(session_row: np.ndarray, track: np.ndarray) -> np.ndarray:
    """Plays of the same track within the session so far, this play included.

    Plays are in time order: a stable sort by (session, track) keeps each group in time order,
    and a play's rank inside its group is its count so far.
    """
    key = np.asarray(session_row, np.int64) * (int(track.max(initial=0)) + 1) + track
    order = np.argsort(key, kind="stable")
    ranked = key[order]
    index = np.arange(len(key))
    group_start = np.maximum.accumulate(
        np.where(np.r_[True, ranked[1:] != ranked[:-1]], index, 0)) if len(key) else index
    counts = np.empty(len(key), np.int64)
    counts[order] = index - group_start + 1
    return counts


@dataclass(frozen=True)
class SplitPlays:
    """One user's per-play rows with their split.

    `rows` holds FINAL_COLUMNS plus `split`, except that artist_name and track_name are still
    codes into this user's `artists` and `tracks` tables (names), not vocabulary ids.
    """

    user: str
    rows: pd.DataFrame
    artists: pd.DataFrame
    tracks: pd.DataFrame

    def in_split(self, name: str) -> np.ndarray:
        """Boolean mask of the rows of one split."""
        return self.rows[SPLIT_INDEX].to_numpy() == C.SPLITS.index(name)

    def name_counts(self, kind: str, mask: np.ndarray) -> pd.DataFrame:
        """Plays per distinct artist or track (kind "artists" | "tracks") among masked rows."""
        names, column = (self.artists, C.ARTIST_NAME) if kind == "artists" else (
            self.tracks, C.TRACK_NAME)
        plays = np.bincount(self.rows[column].to_numpy()[mask], minlength=len(names))
        return names.assign(count=plays)[plays > 0]


def split_plays(user: str, plays: UserPlays, sessions: pd.DataFrame, gap_minutes: float,
                where: str) -> SplitPlays:
    """Each play of a user with its session's summary values and split."""
    row = match_sessions(plays, sessions, gap_minutes, where)
    session = {final: sessions[name].to_numpy()[row] for final, name in FROM_SESSION.items()}
    play = {
        C.CURRENT_TIMESTAMP: plays.timestamp_ms,
        C.TRACK_DURATION: plays.duration_s,
        C.TIMES_PLAYED: times_played(row, plays.track),
        C.ARTIST_NAME: plays.artist,
        C.TRACK_NAME: plays.track,
    }
    merged = {**session, **play}
    rows = pd.DataFrame({name: merged[name] for name in [*C.FINAL_COLUMNS, SPLIT_INDEX]})
    return SplitPlays(user, rows, plays.artists, plays.tracks)


def load_split_plays(source: PlaySource, user: str) -> SplitPlays:
    """One user of user_dir with the split of each play."""
    plays = read_user_plays(user, source.users[user])
    sessions = source.user_sessions(source.user_codes[user])
    return split_plays(user, plays, sessions, source.gap_minutes, str(source.user_dir / user))


def iter_split_plays(source: PlaySource) -> Iterator[SplitPlays]:
    """Every user of user_dir with the split of each play, in user order.

    The next few users are read on worker threads (Arrow parsing releases the GIL) while the
    caller works on the current one; the window bounds how many users sit in memory.
    """
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        pending: deque[Future[SplitPlays]] = deque()
        for user in source.users:
            pending.append(pool.submit(load_split_plays, source, user))
            if len(pending) > PREFETCH_USERS:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
