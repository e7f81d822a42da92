"""The summarize stage: per-user plays -> sessions -> leakage-free per-session summaries -> splits.

Both engines reduce the plays to the same intermediate table of sessions (one row per session,
lengths in integer milliseconds) and hand it to `write_summaries`, which assigns the splits,
fits the country vocabulary on train sessions, and writes every file. Lengths are carried in
integer milliseconds (durations have millisecond precision) so that running sums are exact and
both engines produce the same digits.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from utils.baseline.sessions import session_lengths, session_starts
from utils.baseline.splits import check_fractions, split_codes
from utils.core import csv_text
from utils.core.arrow_memory import prefer_jemalloc
from utils.core.columns import (
    AGE,
    AVERAGE_SESSION_LENGTH,
    COUNTRY,
    CURRENT_SESSION_LENGTH,
    DURATION,
    GENDER,
    PREVIOUS_SESSION_LENGTH,
    REGISTERED,
    SESSION_ID,
    SPLITS,
    SUMMARY_COLUMNS,
    TIMESTAMP,
    USER_DIR_COLUMNS,
    USER_ID,
)
from utils.core.config import USER_ID_PATTERN, SessionParams, WorkLayout
from utils.core.errors import SessionlenError
from utils.core.parallel import worker_count
from utils.core.spark import check_engine_target
from utils.core.stage_io import Timer, atomic_dir, require_stage, write_manifest
from utils.core.work_lock import locked_stage, reading_stage

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ENGINES = ("local", "spark")
USER_IDS_FILE = "user_ids.csv"
COUNTRY_VOCAB_FILE = "country_vocab.csv"
SUMMARY_OUTPUTS = [*SPLITS, USER_IDS_FILE, COUNTRY_VOCAB_FILE]
# user_ids.csv: the user id as written in the raw data, and the integer the summaries use.
SOURCE_ID = "source_id"
USER_IDS_COLUMNS = [SOURCE_ID, USER_ID]
# country_vocab.csv: code 0 is reserved for unknown or unseen countries.
COUNTRY_CODE = "code"
COUNTRY_VOCAB_COLUMNS = [COUNTRY, COUNTRY_CODE]
UNKNOWN = -1
GENDER_CODES = {"m": 1, "f": 0}
MS_PER_DAY = 86_400_000
NUMBERED_USER = re.compile(r"^user_(\d+)$")

# Columns of the intermediate sessions table both engines produce (lengths in integer ms).
PLAYS = "plays"
PREVIOUS_MS = "previous_ms"
AVERAGE_MS = "average_ms"
LENGTH_MS = "length_ms"
SESSION_TABLE_COLUMNS = [
    SOURCE_ID, SESSION_ID, TIMESTAMP, GENDER, AGE, COUNTRY, REGISTERED, PLAYS,
    PREVIOUS_MS, AVERAGE_MS, LENGTH_MS,
]

# Only the columns the summaries need are materialized; the rest are parsed and skipped.
_DICT = pa.dictionary(pa.int32(), pa.string())
READ_TYPES: dict[str, pa.DataType] = {
    USER_ID: pa.string(), TIMESTAMP: pa.timestamp("ms", tz="UTC"), GENDER: _DICT,
    AGE: pa.int32(), COUNTRY: _DICT, REGISTERED: pa.date32(), DURATION: pa.float64(),
}
# Files are read one per thread, each by one thread: Arrow's own threads on top of ours cost
# more CPU than they save. A user's file (a few MB) is parsed in a few blocks.
FILE_READ = pcsv.ReadOptions(use_threads=False, block_size=4 << 20)
# Only an empty field is missing: "NA", "null" or "nan" are valid user ids and countries.
NULL_VALUES = [""]
_SUMMARY_TYPES: dict[str, pa.DataType] = {
    name: pa.float64() if name in (PREVIOUS_SESSION_LENGTH, AVERAGE_SESSION_LENGTH,
                                   CURRENT_SESSION_LENGTH) else pa.int64()
    for name in SUMMARY_COLUMNS
}


# ---------------------------------------------------------------------------------------------
# Reading the denormalized plays
# ---------------------------------------------------------------------------------------------

def _visible(path: Path) -> bool:
    """False for hidden and bookkeeping entries (`.x`, `_SUCCESS`, `_temporary`, `.x.crc`)."""
    return not path.name.startswith((".", "_"))


def user_files(user_dir: Path) -> dict[str, list[Path]]:
    """Each user folder of `user_dir` (sorted by name) with its CSV files in name order."""
    users: dict[str, list[Path]] = {}
    for entry in sorted(Path(user_dir).iterdir()):
        if not entry.is_dir() or not _visible(entry):
            continue
        if not re.match(USER_ID_PATTERN, entry.name):
            raise SessionlenError(f"{entry}: user folder name is not a valid user id")
        users[entry.name] = sorted(p for p in entry.glob("*.csv") if _visible(p))
    if not users:
        raise SessionlenError(f"{user_dir}: no user folders to summarize")
    return users


def check_header(path: Path) -> None:
    """Fail naming the file unless its first line is exactly the user_dir header."""
    with open(path, encoding="utf-8", newline="") as fh:
        header = fh.readline().rstrip("\r\n").split(",")
    if header != USER_DIR_COLUMNS:
        raise SessionlenError(
            f"{path}: line 1: header {','.join(header)!r} is not {','.join(USER_DIR_COLUMNS)!r}"
        )


def _bad_value_row(path: Path, column: str) -> tuple[int, str] | None:
    """(line number, text) of the first value of `column` the stage cannot parse, if found."""
    text = pcsv.read_csv(
        path, convert_options=pcsv.ConvertOptions(
            include_columns=[column], column_types={column: pa.string()},
            null_values=NULL_VALUES, strings_can_be_null=True),
    ).column(column).to_pandas()
    if column == TIMESTAMP:
        parsed = pd.to_datetime(text, format="%Y-%m-%dT%H:%M:%SZ", errors="coerce", utc=True)
    elif column == REGISTERED:
        parsed = pd.to_datetime(text, format="%Y-%m-%d", errors="coerce")
    else:
        numbers = pd.to_numeric(text, errors="coerce")
        parsed = numbers.where(numbers == numbers.round()) if column == AGE else numbers
    bad = np.flatnonzero(text.notna().to_numpy() & parsed.isna().to_numpy())
    return (int(bad[0]) + 2, str(text.iloc[bad[0]])) if len(bad) else None


def _value_error(path: Path, exc: pa.ArrowInvalid) -> SessionlenError:
    """A one-line error for an unparsable user_dir file, naming the line when it can be found."""
    message = str(exc).splitlines()[0]
    match = re.search(r"CSV column #(\d+)", message)
    if match and int(match.group(1)) < len(USER_DIR_COLUMNS):
        column = USER_DIR_COLUMNS[int(match.group(1))]
        found = _bad_value_row(path, column)
        if found:
            return SessionlenError(f"{path}: line {found[0]}: invalid {column} {found[1]!r}")
    return SessionlenError(f"{path}: {message}")


def _first_row(mask: np.ndarray) -> int:
    """The file line number of the first flagged data row (the header is line 1)."""
    return int(np.flatnonzero(mask)[0]) + 2


def read_play_file(path: Path, user: str) -> pa.Table:
    """One user_dir CSV file: the typed columns the summaries need, checked row by row."""
    check_header(path)
    try:
        table = pcsv.read_csv(path, read_options=FILE_READ, convert_options=pcsv.ConvertOptions(
            column_types=READ_TYPES, include_columns=list(READ_TYPES),
            null_values=NULL_VALUES, strings_can_be_null=True))
    except pa.ArrowInvalid as exc:
        raise _value_error(path, exc) from exc
    ids = table.column(USER_ID)
    wrong_user = ~pc.fill_null(pc.equal(ids, user), False).to_numpy(zero_copy_only=False)
    if wrong_user.any():
        line = _first_row(wrong_user)
        raise SessionlenError(
            f"{path}: line {line}: user_id {ids[line - 2].as_py()!r} in the folder of {user}")
    stamps = table.column(TIMESTAMP)
    if stamps.null_count:
        line = _first_row(stamps.is_null().to_numpy(zero_copy_only=False))
        raise SessionlenError(f"{path}: line {line}: empty timestamp")
    durations = table.column(DURATION).to_numpy(zero_copy_only=False)
    bad = ~np.isnan(durations) & ~(np.isfinite(durations) & (durations >= 0))
    if bad.any():
        line = _first_row(bad)
        raise SessionlenError(f"{path}: line {line}: invalid duration {durations[line - 2]}")
    return table.drop_columns([USER_ID])


def read_user_plays(user: str, files: Sequence[Path]) -> pa.Table:
    """All plays of one user, oldest first; equal timestamps keep file order (files by name)."""
    tables = [read_play_file(path, user) for path in files]
    if not tables:
        return pa.schema([(n, t) for n, t in READ_TYPES.items() if n != USER_ID]).empty_table()
    table = pa.concat_tables(tables)
    stamps = table.column(TIMESTAMP).cast(pa.int64()).to_numpy()
    if np.any(np.diff(stamps) < 0):
        table = table.take(np.argsort(stamps, kind="stable"))
    return table


@dataclass(frozen=True)
class Plays:
    """Every play of every user, sorted by (user, time); profile columns stay Arrow-typed."""

    users: list[str]
    user_code: np.ndarray
    timestamp_ms: np.ndarray
    duration_s: np.ndarray
    profile: pa.Table

    def __len__(self) -> int:
        return len(self.timestamp_ms)


def read_plays(users: dict[str, list[Path]], threads: int | None = None) -> Plays:
    """Read every user's files in parallel (Arrow releases the GIL) into one sorted Plays."""
    names = list(users)
    with ThreadPoolExecutor(max_workers=threads or worker_count()) as pool:
        tables = list(pool.map(read_user_plays, names, [users[n] for n in names]))
    counts = np.array([t.num_rows for t in tables], dtype=np.int64)
    table = pa.concat_tables(tables).unify_dictionaries().combine_chunks()
    return Plays(
        users=names,
        user_code=np.repeat(np.arange(len(names), dtype=np.int32), counts),
        timestamp_ms=table.column(TIMESTAMP).cast(pa.int64()).to_numpy(),
        duration_s=table.column(DURATION).to_numpy(zero_copy_only=False),
        profile=table.select([GENDER, AGE, COUNTRY, REGISTERED]),
    )


# ---------------------------------------------------------------------------------------------
# Sessions and their leakage-free history
# ---------------------------------------------------------------------------------------------

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


def local_sessions(users: dict[str, list[Path]], gap_minutes: float) -> tuple[pd.DataFrame, int]:
    """The local engine: (sessions table, plays read)."""
    prefer_jemalloc()
    plays = read_plays(users)
    return sessionize(plays, gap_minutes), len(plays)


# ---------------------------------------------------------------------------------------------
# Ids, vocabulary, splits and files
# ---------------------------------------------------------------------------------------------

def user_id_mapping(source_ids: Sequence[str]) -> pd.Series:
    """Integer id of each source id: its digits if all are user_<digits> and unique, else rank."""
    ordered = sorted(source_ids)
    matches = [NUMBERED_USER.match(s) for s in ordered]
    if all(matches):
        numbers = [int(m.group(1)) for m in matches if m]
        if len(set(numbers)) == len(numbers):
            return pd.Series(numbers, index=ordered, dtype=np.int64, name=USER_ID)
    return pd.Series(np.arange(1, len(ordered) + 1), index=ordered, dtype=np.int64, name=USER_ID)


def fit_country_vocab(countries: pd.Series) -> pd.Series:
    """Codes 1.. for the distinct known countries (sorted by name); 0 stays for unknown."""
    known = pd.Series(countries.dropna().unique(), dtype=object)
    known = np.sort(known[known != ""].to_numpy().astype(str))
    return pd.Series(np.arange(1, len(known) + 1), index=known, dtype=np.int64, name=COUNTRY_CODE)


def lookup(values: pd.Series, table: pd.Series, missing: int) -> np.ndarray:
    """table[value] for each value (vectorized), `missing` where the value is not in the table."""
    position = table.index.get_indexer(values.astype(object))
    # get_indexer says -1 for an absent value, which picks the appended `missing`.
    return np.append(table.to_numpy(), missing).astype(np.int64)[position]


def summary_table(sessions: pd.DataFrame, user_ids: pd.Series, vocab: pd.Series) -> pd.DataFrame:
    """The SUMMARY_COLUMNS rows of `sessions` (lengths still in integer ms)."""
    return pd.DataFrame({
        TIMESTAMP: sessions[TIMESTAMP].to_numpy(np.int64),
        USER_ID: lookup(sessions[SOURCE_ID], user_ids, UNKNOWN),
        SESSION_ID: sessions[SESSION_ID].to_numpy(np.int64),
        GENDER: sessions[GENDER].to_numpy(np.int64),
        AGE: sessions[AGE].to_numpy(np.int64),
        COUNTRY: lookup(sessions[COUNTRY], vocab, 0),
        REGISTERED: sessions[REGISTERED].to_numpy(np.int64),
        PREVIOUS_SESSION_LENGTH: sessions[PREVIOUS_MS].to_numpy(np.int64),
        AVERAGE_SESSION_LENGTH: sessions[AVERAGE_MS].to_numpy(np.int64),
        CURRENT_SESSION_LENGTH: sessions[LENGTH_MS].to_numpy(np.int64),
    })


def csv_lines(table: pd.DataFrame) -> pa.Array:
    """One CSV line per summary row; lengths in seconds with exactly three decimals."""
    seconds = (PREVIOUS_SESSION_LENGTH, AVERAGE_SESSION_LENGTH, CURRENT_SESSION_LENGTH)
    return csv_text.join_lines([
        csv_text.format_fixed(table[name].to_numpy() / 1000.0, 3) if name in seconds
        else csv_text.format_int(table[name].to_numpy())
        for name in SUMMARY_COLUMNS
    ])


def write_split_files(folder: Path, sources: np.ndarray, lines: pa.Array) -> int:
    """Write each user's consecutive lines to folder/{source id}.csv; return the file count."""
    folder.mkdir(parents=True, exist_ok=True)
    if not len(sources):
        return 0
    bounds = np.flatnonzero(np.r_[True, sources[1:] != sources[:-1], True])
    header = csv_text.header_line(SUMMARY_COLUMNS)
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        with open(folder / f"{sources[start]}.csv", "wb") as fh:
            fh.write(header)
            fh.write(csv_text.line_block(lines, int(start), int(stop)))
    return len(bounds) - 1


def _write_small_csv(path: Path, frame: pd.DataFrame) -> None:
    """A small lookup table as CSV (minimal quoting, LF line ends)."""
    frame.to_csv(path, index=False, lineterminator="\n")


def write_summaries(sessions: pd.DataFrame, users: Sequence[str], params: SessionParams,
                    out: Path) -> dict[str, Any]:
    """Split, encode and write the sessions table into `out`; return per-split counts."""
    sessions = sessions.sort_values([SOURCE_ID, SESSION_ID], kind="stable", ignore_index=True)
    codes = split_codes(sessions, params, user=SOURCE_ID)
    user_ids = user_id_mapping(users)
    vocab = fit_country_vocab(sessions.loc[codes == 0, COUNTRY])
    lines = csv_lines(summary_table(sessions, user_ids, vocab))
    sources = sessions[SOURCE_ID].to_numpy()
    counts: dict[str, Any] = {"sessions_per_split": {}, "users_per_split": {}}
    for index, name in enumerate(SPLITS):
        rows = np.flatnonzero(codes == index)
        counts["sessions_per_split"][name] = len(rows)
        counts["users_per_split"][name] = write_split_files(
            out / name, sources[rows], lines.take(rows))
    _write_small_csv(out / USER_IDS_FILE, pd.DataFrame(
        {SOURCE_ID: user_ids.index, USER_ID: user_ids.to_numpy()}))
    _write_small_csv(out / COUNTRY_VOCAB_FILE, pd.DataFrame(
        {COUNTRY: vocab.index, COUNTRY_CODE: vocab.to_numpy()}))
    counts["countries"] = len(vocab)
    return counts


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------

def check_engine(engine: str) -> None:
    """Fail with a one-line error naming the valid engines."""
    if engine not in ENGINES:
        raise SessionlenError(f"unknown engine {engine!r}; valid engines: {', '.join(ENGINES)}")


def engine_sessions(users: dict[str, list[Path]], gap_minutes: float, engine: str,
                    spark_master: str | None) -> tuple[pd.DataFrame, int]:
    """(sessions table, plays read) from the chosen engine."""
    check_engine(engine)
    if engine == "spark":
        from utils.baseline.summaries_spark import spark_sessions

        return spark_sessions(users, gap_minutes, spark_master)
    return local_sessions(users, gap_minutes)


@locked_stage("summary_dir", reads=("user_dir",))
def summarize(work: Path, params: SessionParams, engine: str = "local",
              spark_master: str | None = None) -> dict[str, Any]:
    """Sessions, per-session summaries and splits of WORK/user_dir into WORK/summary_dir."""
    layout = WorkLayout(Path(work))
    check_engine(engine)
    check_engine_target(engine, spark_master)
    if not params.gap_minutes > 0:
        raise SessionlenError(f"SessionParams gap_minutes={params.gap_minutes} must be positive")
    check_fractions(params.train_fraction, params.validate_fraction)
    require_stage(layout.user_dir, "denormalize")
    users = user_files(layout.user_dir)
    with Timer() as compute:
        sessions, plays_in = engine_sessions(users, params.gap_minutes, engine, spark_master)
    if not plays_in:
        raise SessionlenError(f"{layout.user_dir}: the user files hold no plays")
    with atomic_dir(layout.summary_dir) as out:
        with Timer() as write:
            counts = write_summaries(sessions, list(users), params, out)
        write_manifest(
            out, "summarize", inputs=[layout.user_dir],
            parameters={**params.to_dict(), "engine": engine, **counts}, rows_in=plays_in,
            rows_out=int(sessions[PLAYS].sum()), rows_rejected=0, outputs=SUMMARY_OUTPUTS,
            timings={"sessions": compute.seconds, "write": write.seconds},
        )
    return {
        "summary_dir": str(layout.summary_dir), "engine": engine, "plays": plays_in,
        "users": len(users), **counts,
        "seconds": round(compute.seconds + write.seconds, 3),
    }


# ---------------------------------------------------------------------------------------------
# Reading the stage back, and views for the notebook
# ---------------------------------------------------------------------------------------------

def _read_summary_file(path: Path) -> pa.Table:
    """One summary CSV with its column names and types checked."""
    try:
        table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
            column_types=_SUMMARY_TYPES))
    except pa.ArrowInvalid as exc:
        raise SessionlenError(f"{path}: {str(exc).splitlines()[0]}") from exc
    if table.column_names != SUMMARY_COLUMNS:
        raise SessionlenError(f"{path}: columns {table.column_names} are not {SUMMARY_COLUMNS}")
    return table


def load_summaries(work: Path) -> dict[str, pd.DataFrame]:
    """Every split of WORK/summary_dir: all users in one frame, sorted by user_id, timestamp."""
    summary_dir = WorkLayout(Path(work)).summary_dir
    schema = pa.schema(list(_SUMMARY_TYPES.items()))
    frames = {}
    # Many files: a rerun of the stage must not swap the folder between two of them.
    with reading_stage(summary_dir), ThreadPoolExecutor(
            max_workers=(os.cpu_count() or 1) * 2) as pool:
        require_stage(summary_dir, "summarize")
        for name in SPLITS:
            tables = list(pool.map(_read_summary_file, sorted((summary_dir / name).glob("*.csv"))))
            table = pa.concat_tables(tables) if tables else schema.empty_table()
            frames[name] = table.to_pandas().sort_values(
                [USER_ID, TIMESTAMP], kind="stable", ignore_index=True)
    return frames


def load_user_ids(work: Path) -> pd.DataFrame:
    """The source id -> integer user_id mapping written by the stage."""
    summary_dir = WorkLayout(Path(work)).summary_dir
    require_stage(summary_dir, "summarize")
    return pd.read_csv(summary_dir / USER_IDS_FILE, dtype={SOURCE_ID: str, USER_ID: np.int64},
                       keep_default_na=False)


def load_country_vocab(work: Path) -> pd.DataFrame:
    """The country -> code vocabulary fit on train sessions (code 0 = unknown)."""
    summary_dir = WorkLayout(Path(work)).summary_dir
    require_stage(summary_dir, "summarize")
    return pd.read_csv(summary_dir / COUNTRY_VOCAB_FILE,
                       dtype={COUNTRY: str, COUNTRY_CODE: np.int64}, keep_default_na=False)


def split_overview(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per split: sessions, users and the mean/median session length in seconds."""
    rows = {
        name: {
            "sessions": len(frame),
            "users": frame[USER_ID].nunique(),
            "median_length_s": frame[CURRENT_SESSION_LENGTH].median(),
            "mean_length_s": frame[CURRENT_SESSION_LENGTH].mean(),
        }
        for name, frame in splits.items()
    }
    return pd.DataFrame.from_dict(rows, orient="index")


def threshold_sensitivity(work: Path, gap_minutes: Sequence[float]) -> pd.DataFrame:
    """Sessions and median session length (s) under several gap thresholds, on the same plays."""
    layout = WorkLayout(Path(work))
    require_stage(layout.user_dir, "denormalize")
    plays = read_plays(user_files(layout.user_dir))
    rows = []
    for gap in sorted(set(gap_minutes)):
        starts = session_starts(plays.user_code, plays.timestamp_ms, plays.duration_s, gap)
        _, lengths = session_lengths(starts, plays.timestamp_ms, plays.duration_s)
        rows.append({"gap_minutes": gap, "sessions": int(starts.sum()),
                     "median_length_s": float(np.median(lengths)) if len(lengths) else np.nan})
    return pd.DataFrame(rows)


def plot_session_lengths(splits: dict[str, pd.DataFrame], path: Path | None = None) -> Figure:
    """Histogram of session lengths per split on a log x axis; saved as PNG when `path` is given."""
    import matplotlib.pyplot as plt

    from utils.core.plots import finish_figure

    fig, ax = plt.subplots(figsize=(8, 4))
    # A one-play session of unknown duration lasts 0 s: it is counted in the first log bin.
    lengths = {n: np.maximum(f[CURRENT_SESSION_LENGTH].to_numpy(), 1.0) for n, f in splits.items()}
    top = max((float(v.max()) for v in lengths.values() if len(v)), default=10.0)
    bins = np.logspace(0, np.log10(max(top, 10.0)), 60)
    for name, values in lengths.items():
        ax.hist(values, bins=bins, histtype="step", label=f"{name} ({len(values)} sessions)")
    ax.set_xscale("log")
    ax.set_xlabel("session length (s, log scale; 0 s counted as 1 s)")
    ax.set_ylabel("sessions")
    ax.set_title("Session lengths per split")
    ax.legend()
    fig.tight_layout()
    return finish_figure(fig, path)
