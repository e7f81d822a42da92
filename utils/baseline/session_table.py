"""The session rule applied to every user's plays: the sessions table both engines produce.

One row per session (SESSION_TABLE_COLUMNS), with its profile fields, its play count and its
leakage-free history. Lengths are carried in integer milliseconds (durations have millisecond
precision) so that running sums are exact and both engines produce the same digits. The Spark
engine of summarize runs this module in its tasks (session_table_spark); the final_dir stages'
Spark engines mirror its arithmetic step by step (summaries_spark).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from utils.baseline.sessions import session_lengths, session_starts
from utils.baseline.user_plays import Plays, plays_of, read_user_plays
from utils.core.arrow_memory import prefer_jemalloc
from utils.core.columns import AGE, COUNTRY, GENDER, REGISTERED, SESSION_ID, TIMESTAMP
from utils.core.parallel import worker_count

# The user id as written in the raw data (the user's folder name).
SOURCE_ID = "source_id"
UNKNOWN = -1
GENDER_CODES = {"m": 1, "f": 0}
MS_PER_DAY = 86_400_000
# Runs of users read and sessionized by one thread at a time: several per thread, so that a
# thread that drew the largest users does not leave the others idle at the end.
GROUPS_PER_WORKER = 8

# Columns of the intermediate sessions table both engines produce (lengths in integer ms).
PLAYS = "plays"
PREVIOUS_MS = "previous_ms"
AVERAGE_MS = "average_ms"
LENGTH_MS = "length_ms"
SESSION_TABLE_COLUMNS = [
    SOURCE_ID, SESSION_ID, TIMESTAMP, GENDER, AGE, COUNTRY, REGISTERED, PLAYS,
    PREVIOUS_MS, AVERAGE_MS, LENGTH_MS,
]


def to_milliseconds(seconds: np.ndarray) -> np.ndarray:
    """Seconds to integer milliseconds, half up (the Spark engine does the same arithmetic)."""
    return np.floor(np.asarray(seconds, dtype=np.float64) * 1000.0 + 0.5).astype(np.int64)


def rank_within_user(user_code: np.ndarray) -> np.ndarray:
    """0-based position of each row among its user's rows (rows sorted by user)."""
    index = np.arange(len(user_code))
    first = np.ones(len(user_code), dtype=bool)
    first[1:] = user_code[1:] != user_code[:-1]
    return index - np.maximum.accumulate(np.where(first, index, 0))


def history_ms(session_id: np.ndarray, length_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per session: the previous session's length and the mean of all earlier ones (ms, 0 first).

    Only sessions before each row enter its values. The mean is rounded half up to the
    millisecond with integer arithmetic, so it is exact and engine-independent.
    """
    earlier_total = np.cumsum(length_ms) - length_ms
    user_start = np.maximum.accumulate(np.where(session_id == 0, np.arange(len(session_id)), 0))
    earlier_total -= earlier_total[user_start]
    previous = np.zeros_like(length_ms)
    previous[1:] = length_ms[:-1]
    previous[session_id == 0] = 0
    count = np.maximum(session_id, 1)
    average = np.where(session_id > 0, (2 * earlier_total + count) // (2 * count), 0)
    return previous, average


def _gender_codes(values: pa.Array) -> np.ndarray:
    """1 for m, 0 for f, -1 for anything else (empty included)."""
    labels = pa.array(sorted(GENDER_CODES, key=GENDER_CODES.__getitem__))  # position = code
    codes = pc.fill_null(pc.index_in(values.cast(pa.string()), labels), UNKNOWN)
    return codes.to_numpy(zero_copy_only=False).astype(np.int64)


def _int_or_unknown(values: pa.Array) -> np.ndarray:
    """Integers with nulls as -1."""
    return pc.fill_null(values.cast(pa.int64()), UNKNOWN).to_numpy(zero_copy_only=False)


def sessionize(plays: Plays, gap_minutes: float) -> pd.DataFrame:
    """The intermediate sessions table (SESSION_TABLE_COLUMNS) of all plays, sorted by user."""
    if not len(plays):
        return pd.DataFrame({name: [] for name in SESSION_TABLE_COLUMNS})
    starts = session_starts(plays.user_code, plays.timestamp_ms, plays.duration_s, gap_minutes)
    first, lengths = session_lengths(starts, plays.timestamp_ms, plays.duration_s)
    length_ms = to_milliseconds(lengths)
    session_id = rank_within_user(plays.user_code[first])
    previous, average = history_ms(session_id, length_ms)
    profile = plays.profile.take(pa.array(first))
    registered_days = profile.column(REGISTERED).cast(pa.int32()).cast(pa.int64())
    return pd.DataFrame({
        SOURCE_ID: np.asarray(plays.users, dtype=object)[plays.user_code[first]],
        SESSION_ID: session_id.astype(np.int64),
        TIMESTAMP: plays.timestamp_ms[first],
        GENDER: _gender_codes(profile.column(GENDER).combine_chunks()),
        AGE: _int_or_unknown(profile.column(AGE)),
        COUNTRY: profile.column(COUNTRY).cast(pa.string()).to_pandas(),
        REGISTERED: _int_or_unknown(pc.multiply(registered_days, MS_PER_DAY)),
        PLAYS: np.diff(np.append(first, len(plays))),
        PREVIOUS_MS: previous,
        AVERAGE_MS: average,
        LENGTH_MS: length_ms,
    })


def consecutive_groups(sizes: Sequence[int], groups: int) -> list[range]:
    """Positions 0..len(sizes)-1 cut into at most `groups` runs of about equal total size,
    in order, none empty."""
    ends = np.cumsum(np.asarray(sizes, dtype=np.float64))
    total = ends[-1] if len(ends) else 0.0
    cuts = np.searchsorted(ends, total * np.arange(1, groups) / groups, side="left") + 1
    bounds = np.unique(np.concatenate([[0], np.minimum(cuts, len(sizes)), [len(sizes)]]))
    return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def sessions_of_users(users: dict[str, list[Path]], names: Sequence[str],
                      gap_minutes: float) -> tuple[pd.DataFrame, int]:
    """(sessions table, plays read) of the users `names`, read one after another."""
    tables = [read_user_plays(name, users[name]) for name in names]
    plays = plays_of(list(names), tables)
    return sessionize(plays, gap_minutes), len(plays)


def local_sessions(users: dict[str, list[Path]], gap_minutes: float) -> tuple[pd.DataFrame, int]:
    """The local engine: (sessions table, plays read).

    Runs of consecutive users are read and sessionized on a few threads (Arrow and numpy
    release the GIL), so the session rule of one run overlaps the reading of the next; the
    runs' tables are joined in user order, and a bad file fails with the error of the first
    bad user in that order, as when every user is read one by one.
    """
    prefer_jemalloc()
    names = list(users)
    sizes = [sum(os.path.getsize(path) for path in users[name]) for name in names]
    workers = worker_count()
    runs = consecutive_groups(sizes, GROUPS_PER_WORKER * workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(lambda run: sessions_of_users(users, names[run.start:run.stop],
                                                            gap_minutes), runs))
    frames = [frame for frame, _ in parts if len(frame)]
    table = (pd.concat(frames, ignore_index=True) if frames
             else pd.DataFrame({name: [] for name in SESSION_TABLE_COLUMNS}))
    return table, sum(count for _, count in parts)
