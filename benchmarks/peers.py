"""The peers the pipeline is measured against, shared by the benchmark scripts.

- the floor: one read of the raw plays file into Arrow strings, and nothing else;
- DuckDB: the session rule and per-session summaries as SQL window functions over user_dir;
- the row loop: the original student pipeline's way of finding sessions, one play at a time in
  Python over a pandas DataFrame, writing one summary CSV per user.

Heavy libraries are imported inside the functions, so a child process that runs one peer holds
only what that peer needs (its peak memory is its own).

`tests/test_bench_peers.py` proves that DuckDB and the row loop find exactly the sessions the
summarize stage finds, so a speed ratio against them compares equal work.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from utils.core.columns import (
    AGE,
    AVERAGE_SESSION_LENGTH,
    COUNTRY,
    CURRENT_SESSION_LENGTH,
    DURATION,
    GENDER,
    PLAYS_COLUMNS,
    PREVIOUS_SESSION_LENGTH,
    REGISTERED,
    SESSION_ID,
    TIMESTAMP,
    USER_DIR_COLUMNS,
    USER_ID,
)

if TYPE_CHECKING:
    import pandas as pd

DUCKDB_SESSIONS = """
WITH plays AS (
    SELECT user_id, epoch_ms(CAST("timestamp" AS TIMESTAMPTZ)) AS ts,
           CAST(duration AS DOUBLE) AS dur, filename, row_number() OVER () AS file_row
    FROM read_csv($files, header = true, columns = $columns, filename = true)
), ordered AS (
    SELECT *, row_number() OVER w AS seq, lag(ts) OVER w AS prev_ts, lag(dur) OVER w AS prev_dur
    FROM plays WINDOW w AS (PARTITION BY user_id ORDER BY ts, filename, file_row)
), marked AS (
    SELECT *, sum(CASE WHEN prev_ts IS NULL
                         OR CAST(ts - prev_ts AS DOUBLE) - coalesce(prev_dur, 0.0) * 1000.0
                            > $gap_ms THEN 1 ELSE 0 END)
              OVER (PARTITION BY user_id ORDER BY seq ROWS UNBOUNDED PRECEDING) - 1 AS session_id
    FROM ordered
), sessions AS (
    SELECT user_id, session_id, min(ts) AS start_ms, max(ts) AS last_ts,
           arg_max(coalesce(dur, 0.0), seq) AS last_dur, count(*) AS plays
    FROM marked GROUP BY user_id, session_id
), lengths AS (
    SELECT *, CAST(floor((CAST(last_ts - start_ms AS DOUBLE) / 1000.0 + last_dur) * 1000.0 + 0.5)
                   AS BIGINT) AS length_ms
    FROM sessions
)
SELECT user_id, session_id, start_ms, plays, length_ms,
       coalesce(lag(length_ms) OVER h, 0) AS previous_ms,
       coalesce(sum(length_ms) OVER (h ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
           AS earlier_ms
FROM lengths WINDOW h AS (PARTITION BY user_id ORDER BY session_id)
"""

# The row loop's summary file: one row per session, lengths in seconds.
START_MS = "start_ms"
ROW_LOOP_COLUMNS = [
    USER_ID, SESSION_ID, START_MS, GENDER, AGE, COUNTRY, REGISTERED,
    PREVIOUS_SESSION_LENGTH, AVERAGE_SESSION_LENGTH, CURRENT_SESSION_LENGTH,
]


def read_arrow_floor(path: Path) -> int:
    """One multi-threaded pyarrow CSV read into strings: the least any reader must do; rows."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=PLAYS_COLUMNS),
        parse_options=pacsv.ParseOptions(
            delimiter="\t", quote_char=False, invalid_row_handler=lambda row: "skip"),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(PLAYS_COLUMNS, pa.string()), strings_can_be_null=False),
    )
    return table.num_rows


def duckdb_sessions(files: Sequence[Path], gap_minutes: float,
                    threads: int | None = None) -> pd.DataFrame:
    """Sessions of the user_dir `files` by DUCKDB_SESSIONS: one row per session, lengths in ms."""
    import duckdb

    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con.execute(DUCKDB_SESSIONS, {
        "files": [str(p) for p in files], "columns": dict.fromkeys(USER_DIR_COLUMNS, "VARCHAR"),
        "gap_ms": gap_minutes * 60_000.0,
    }).df()


def count_plays(files: Sequence[Path]) -> int:
    """Data lines of user_dir CSV files (each has one header line; fields hold no line breaks)."""
    total = 0
    for path in files:
        with open(path, "rb") as fh:
            total += sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b"")) - 1
    return total


def choose_users(users: dict[str, list[Path]], min_plays: int,
                 seed: int) -> tuple[dict[str, list[Path]], int]:
    """A seeded random subset of users holding at least `min_plays` plays (all if fewer)."""
    order = sorted(users)
    random.Random(seed).shuffle(order)
    chosen: dict[str, list[Path]] = {}
    plays = 0
    for user in order:
        if plays >= min_plays:
            break
        chosen[user] = users[user]
        plays += count_plays(users[user])
    return dict(sorted(chosen.items())), plays


def _session_row(user: str, session_id: int, first: pd.Series, start: pd.Timestamp,
                 length_s: float, earlier: list[float]) -> dict[str, object]:
    """One summary row: the session's profile fields, start, length and earlier lengths."""
    return {
        USER_ID: user, SESSION_ID: session_id, START_MS: start.value // 1_000_000,
        GENDER: first[GENDER], AGE: first[AGE], COUNTRY: first[COUNTRY],
        REGISTERED: first[REGISTERED],
        PREVIOUS_SESSION_LENGTH: earlier[-1] if earlier else 0.0,
        AVERAGE_SESSION_LENGTH: sum(earlier) / len(earlier) if earlier else 0.0,
        CURRENT_SESSION_LENGTH: length_s,
    }


def row_loop_user(user: str, files: Sequence[Path], gap_minutes: float) -> pd.DataFrame:
    """One user's sessions, found by walking the plays one DataFrame row at a time.

    As the original did: read the user's CSV with pandas, sort by time (ties keep file order),
    then `iterrows()`; a play opens a session when its gap to the previous play minus that
    play's duration (0 if unknown) exceeds the threshold.
    """
    import pandas as pd

    frame = pd.concat([pd.read_csv(path) for path in files], ignore_index=True)
    frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], utc=True)
    frame = frame.sort_values(TIMESTAMP, kind="stable", ignore_index=True)
    gap_s = gap_minutes * 60.0
    rows: list[dict[str, object]] = []
    lengths: list[float] = []
    first = start = last = None
    last_duration = 0.0
    for _, play in frame.iterrows():
        stamp = play[TIMESTAMP]
        if last is None or (stamp - last).total_seconds() - last_duration > gap_s:
            if last is not None:
                length = (last - start).total_seconds() + last_duration
                rows.append(_session_row(user, len(lengths), first, start, length, lengths))
                lengths.append(length)
            first, start = play, stamp
        last = stamp
        last_duration = 0.0 if pd.isna(play[DURATION]) else float(play[DURATION])
    if last is not None:
        length = (last - start).total_seconds() + last_duration
        rows.append(_session_row(user, len(lengths), first, start, length, lengths))
    return pd.DataFrame(rows, columns=ROW_LOOP_COLUMNS)


def row_loop_summaries(users: dict[str, list[Path]], out: Path,
                       gap_minutes: float) -> dict[str, int]:
    """The row loop over every user, one summary CSV per user in `out`; plays and sessions."""
    out.mkdir(parents=True, exist_ok=True)
    sessions = 0
    for user, files in users.items():
        table = row_loop_user(user, files, gap_minutes)
        table.to_csv(out / f"{user}.csv", index=False)
        sessions += len(table)
    return {"users": len(users), "sessions": sessions}
