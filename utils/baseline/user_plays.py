"""Reading WORK/user_dir: each user's folder of CSV files, parsed, typed and checked row by row.

`read_user_plays` is the one reader of a user's plays: it checks the header, that every row
belongs to the folder's user, that every play has a timestamp and that every duration is empty
or a non-negative number, and returns the plays oldest first (ties in file order) with the
columns the caller asks for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from utils.core.columns import (
    AGE,
    COUNTRY,
    DURATION,
    GENDER,
    REGISTERED,
    TIMESTAMP,
    USER_DIR_COLUMNS,
    USER_ID,
)
from utils.core.config import USER_ID_PATTERN
from utils.core.errors import SessionlenError
from utils.core.parallel import worker_count

_DICT = pa.dictionary(pa.int32(), pa.string())
# Read from every file whatever else is asked: the checks need the owner, the start and the
# duration of every play.
CHECKED_TYPES: dict[str, pa.DataType] = {
    USER_ID: pa.string(), TIMESTAMP: pa.timestamp("ms", tz="UTC"), DURATION: pa.float64(),
}
# The profile columns the summaries carry; the others are parsed and skipped.
PROFILE_TYPES: dict[str, pa.DataType] = {
    GENDER: _DICT, AGE: pa.int32(), COUNTRY: _DICT, REGISTERED: pa.date32(),
}
# Files are read one per thread, each by one thread: Arrow's own threads on top of ours cost
# more CPU than they save. A user's file (a few MB) is parsed in a few blocks.
FILE_READ = pcsv.ReadOptions(use_threads=False, block_size=4 << 20)
# Only an empty field is missing: "NA", "null" or "nan" are valid user ids and countries.
NULL_VALUES = [""]


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


def file_types(columns: Mapping[str, pa.DataType]) -> dict[str, pa.DataType]:
    """CHECKED_TYPES and `columns` (checked columns keep their types), in header order."""
    unknown = sorted(set(columns) - set(USER_DIR_COLUMNS))
    if unknown:
        raise SessionlenError(f"not user_dir columns: {', '.join(unknown)}")
    types = {**columns, **CHECKED_TYPES}
    return {name: types[name] for name in USER_DIR_COLUMNS if name in types}


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


def read_play_file(path: Path, user: str,
                   columns: Mapping[str, pa.DataType] = PROFILE_TYPES) -> pa.Table:
    """One user_dir CSV file, checked row by row: timestamp, duration and `columns`, typed."""
    check_header(path)
    types = file_types(columns)
    try:
        table = pcsv.read_csv(path, read_options=FILE_READ, convert_options=pcsv.ConvertOptions(
            column_types=types, include_columns=list(types),
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


def read_user_plays(user: str, files: Sequence[Path],
                    columns: Mapping[str, pa.DataType] = PROFILE_TYPES) -> pa.Table:
    """All plays of one user, oldest first; equal timestamps keep file order (files by name).

    The table holds timestamp, duration and `columns` (user_dir column -> Arrow type; string
    columns are best read as dictionaries), in header order; only an empty field is null.
    """
    tables = [read_play_file(path, user, columns) for path in files]
    if not tables:
        types = file_types(columns)
        return pa.schema([(n, t) for n, t in types.items() if n != USER_ID]).empty_table()
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
    return plays_of(names, tables)


def plays_of(names: list[str], tables: Sequence[pa.Table]) -> Plays:
    """One Plays of the users `names`, each with its table from `read_user_plays`, in order."""
    counts = np.array([t.num_rows for t in tables], dtype=np.int64)
    table = pa.concat_tables(tables).unify_dictionaries().combine_chunks()
    return Plays(
        users=names,
        user_code=np.repeat(np.arange(len(names), dtype=np.int32), counts),
        timestamp_ms=table.column(TIMESTAMP).cast(pa.int64()).to_numpy(),
        duration_s=table.column(DURATION).to_numpy(zero_copy_only=False),
        profile=table.select(list(PROFILE_TYPES)),
    )
