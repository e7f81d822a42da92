"""Per-play session data (final_dir): every play with its session's summary row and its split.

The sessions of each user's plays are recomputed from user_dir with the summarize stage's own rule
and gap, then matched one to one with the sessions in summary_dir (same count, same start times,
same lengths). Each play therefore lands in exactly the split of its session, and the per-play
rows carry the very summary values (ids, profile codes, lengths) the baseline stage uses.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from utils.baseline import user_plays as summaries
from utils.baseline.sessions import session_lengths, session_starts
from utils.core import columns as C
from utils.core.config import WorkLayout
from utils.core.errors import SessionlenError
from utils.core.spark import check_engine_target
from utils.core.stage_io import (
    Timer,
    annotate_stage,
    atomic_dir,
    forget_stage,
    require_stage,
    write_manifest,
)
from utils.core.work_lock import locked_stage, reading_stage
from utils.models_with_clusters.final_dir import (
    FINAL_TYPES,
    FROM_SESSION,
    PROFILES_STAGE,
    SESSION_DATA_STAGE,
    SPLIT,
    SPLIT_COUNTS,
    PlaySource,
    check_engine,
    check_play_count,
    check_sessions_match,
    open_play_source,
    split_counts,
    write_final_csv,
)
from utils.models_with_clusters.vocab import Vocabulary, read_vocabularies

STAGE = SESSION_DATA_STAGE
READ_THREADS = 2
PREFETCH_USERS = 4
_NAMES = pa.dictionary(pa.int32(), pa.string())
_PLAY_TYPES: dict[str, pa.DataType] = {
    C.TIMESTAMP: pa.timestamp("ms", tz="UTC"), C.ARTIST_NAME: _NAMES, C.TRACK_NAME: _NAMES,
    C.DURATION: pa.float64(),
}


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


def _read_play_file(path: Path, user: str) -> pa.Table:
    """One user_dir file: timestamp, dictionary-encoded names, duration."""
    summaries.check_header(path)
    try:
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types=_PLAY_TYPES, include_columns=list(_PLAY_TYPES)))
    except pa.ArrowInvalid as exc:
        raise SessionlenError(f"{path}: {str(exc).splitlines()[0]}") from exc
    if table.column(C.TIMESTAMP).null_count:
        raise SessionlenError(f"{path}: empty timestamp in the plays of {user}")
    return table


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(code per row, distinct values) of a one-chunk dictionary column."""
    if column.num_chunks == 0:
        return np.zeros(0, np.int64), np.array([], dtype=object)
    chunk = column.chunk(0)
    return (chunk.indices.to_numpy(zero_copy_only=False).astype(np.int64),
            chunk.dictionary.to_numpy(zero_copy_only=False))


def read_user_plays(user: str, files: list[Path]) -> UserPlays:
    """One user's plays, oldest first, ties in file order: exactly the summarize stage's order,
    so tied plays end their session identically."""
    tables = [_read_play_file(path, user) for path in files]
    if tables:
        table = pa.concat_tables(tables).unify_dictionaries().combine_chunks()
    else:
        table = pa.schema(list(_PLAY_TYPES.items())).empty_table()
    stamps = table.column(C.TIMESTAMP).cast(pa.int64()).to_numpy()
    order = np.argsort(stamps, kind="stable")
    artist, artist_names = _codes(table.column(C.ARTIST_NAME))
    track_text, track_names = _codes(table.column(C.TRACK_NAME))
    artist, track_text = artist[order], track_text[order]
    # A track is the (artist, track name) pair: "Intro" by two artists is two tracks.
    pairs, track = np.unique(artist * max(len(track_names), 1) + track_text, return_inverse=True)
    pair_artist, pair_track = np.divmod(pairs, max(len(track_names), 1))
    return UserPlays(
        timestamp_ms=stamps[order],
        duration_s=table.column(C.DURATION).to_numpy()[order],
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
        return self.rows[SPLIT].to_numpy() == C.SPLITS.index(name)

    def name_counts(self, kind: str, mask: np.ndarray) -> pd.DataFrame:
        """Plays per distinct artist or track (kind "artists" | "tracks") among masked rows."""
        names, column = (self.artists, C.ARTIST_NAME) if kind == "artists" else (
            self.tracks, C.TRACK_NAME)
        plays = np.bincount(self.rows[column].to_numpy()[mask], minlength=len(names))
        return names.assign(count=plays)[plays > 0]

    def encoded(self, vocabs: dict[str, Vocabulary]) -> pd.DataFrame:
        """FINAL_COLUMNS plus split, with artist and track as vocabulary ids."""
        artist_ids = vocabs["artists"].encode(self.artists)
        track_ids = vocabs["tracks"].encode(self.tracks)
        return self.rows.assign(**{
            C.ARTIST_NAME: artist_ids[self.rows[C.ARTIST_NAME].to_numpy()],
            C.TRACK_NAME: track_ids[self.rows[C.TRACK_NAME].to_numpy()],
        })


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
    rows = pd.DataFrame({name: merged[name] for name in [*C.FINAL_COLUMNS, SPLIT]})
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


def write_local(source: PlaySource, vocabs: dict[str, Vocabulary], out: dict[str, Path]
                ) -> tuple[dict[str, dict[str, int]], int]:
    """Local engine: write every user's per-split files into `out`; (totals per split, plays)."""
    totals = {name: dict.fromkeys(SPLIT_COUNTS, 0) for name in C.SPLITS}
    plays_in = 0
    for plays in iter_split_plays(source):
        plays_in += len(plays.rows)
        encoded = plays.encoded(vocabs)
        for name in C.SPLITS:
            part = encoded[plays.in_split(name)]
            if len(part):
                write_final_csv(part, out[name] / f"{plays.user}.csv")
            for key, value in split_counts(part).items():
                totals[name][key] += value
    check_play_count(source, plays_in)
    return totals, plays_in


def write_spark(source: PlaySource, vocabs: dict[str, Vocabulary], out: dict[str, Path],
                spark_master: str | None) -> tuple[dict[str, dict[str, int]], int]:
    """Spark engine: the same files, written by Spark's workers."""
    from utils.models_with_clusters.session_data_spark import spark_session_data

    tables = {name: vocab.table for name, vocab in vocabs.items()}
    return spark_session_data(source, tables, out, spark_master)


@locked_stage("final_dir", reads=("user_dir", "summary_dir"))
def build_session_data(work: str | Path, engine: str = "local", spark_master: str | None = None
                       ) -> dict[str, Any]:
    """Write final_dir/{train,validate,test}/{user_id}.csv: every play, in its session's split.

    `spark_master` (engine spark): a master URL or sc://host:port (default SPARK_REMOTE, else
    local[*]).
    """
    check_engine(engine)
    check_engine_target(engine, spark_master)
    layout = WorkLayout(Path(work))
    with Timer() as timer:
        source = open_play_source(layout)
        vocabs = read_vocabularies(layout.root)
        # New per-play files make the profiles built on the old ones stale.
        for stage in (STAGE, PROFILES_STAGE):
            forget_stage(layout.final_dir, stage)
        with contextlib.ExitStack() as stack:
            out = {name: stack.enter_context(atomic_dir(layout.final_dir / name))
                   for name in C.SPLITS}
            if engine == "spark":
                totals, plays_in = write_spark(source, vocabs, out, spark_master)
            else:
                totals, plays_in = write_local(source, vocabs, out)
    plays_out = sum(t["plays"] for t in totals.values())
    write_manifest(
        layout.final_dir, STAGE, inputs=[layout.user_dir, layout.summary_dir, layout.vocab],
        parameters={"gap_minutes": source.gap_minutes, "engine": engine}, rows_in=plays_in,
        rows_out=plays_out, rows_rejected=0, outputs=list(C.SPLITS),
        timings={"total": timer.seconds},
    )
    annotate_stage(layout.final_dir, STAGE, splits=totals)
    return {"final_dir": str(layout.final_dir), "engine": engine, "plays": plays_in,
            "splits": totals, "seconds": round(timer.seconds, 2)}


def session_data_overview(work: str | Path) -> pd.DataFrame:
    """Per split: users, sessions, plays and the share of plays of names unseen in training."""
    entry = require_stage(WorkLayout(Path(work)).final_dir, STAGE)
    table = pd.DataFrame.from_dict(entry["splits"], orient="index")
    for kind in ("artist", "track"):
        table[f"unknown_{kind}_share"] = (
            table[f"unknown_{kind}_plays"] / table["plays"].where(table["plays"] > 0))
    return table


def _read_final_file(path: Path) -> pa.Table:
    """One final_dir file with its column types."""
    if not path.is_file():
        raise SessionlenError(f"{path}: no such final_dir file")
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=FINAL_TYPES))


def read_final_split(work: str | Path, split: str, users: list[str] | None = None
                     ) -> pd.DataFrame:
    """The per-play rows of one final_dir split (all users, or the given user ids)."""
    final_dir = WorkLayout(Path(work)).final_dir
    if split not in C.SPLITS:
        raise SessionlenError(f"unknown split {split!r}; valid splits: {', '.join(C.SPLITS)}")
    # Many files: a rerun of the stage must not swap the folder between two of them.
    with reading_stage(final_dir):
        require_stage(final_dir, STAGE)
        files = sorted((final_dir / split).glob("*.csv")) if users is None else [
            final_dir / split / f"{user}.csv" for user in users]
        tables = [_read_final_file(path) for path in files]
    if not tables:
        return pa.schema(list(FINAL_TYPES.items())).empty_table().to_pandas()
    return pa.concat_tables(tables).to_pandas()


def sample_rows(work: str | Path, split: str = "train", rows: int = 10) -> pd.DataFrame:
    """The first rows of the first user's file of a split, to see what the files hold."""
    final_dir = WorkLayout(Path(work)).final_dir
    require_stage(final_dir, STAGE)
    first = next(iter(sorted((final_dir / split).glob("*.csv"))), None)
    if first is None:
        return pa.schema(list(FINAL_TYPES.items())).empty_table().to_pandas()
    return read_final_split(work, split, [first.stem]).head(rows)
