"""Readers of the raw Last.fm 1K files: exact line accounting, vectorized, quoting disabled.

Both files are split on raw bytes rather than with a CSV parser: quote characters are plain text
in this format (a default CSV reader merges ~52K lines of the real plays file), a CR inside a line
must be a reject rather than a line break, and every reject needs its exact 1-based line number.
The plays file is processed in chunks cut at newlines, on a few threads (numpy and Arrow release
the GIL); only damaged chunks (invalid UTF-8) take a slower exact per-line path.
"""

from __future__ import annotations

import collections
import csv
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from utils.core.columns import (
    AGE,
    ARTIST_MBID,
    ARTIST_NAME,
    COUNTRY,
    GENDER,
    PLAYS_COLUMNS,
    PROFILE_COLUMNS,
    PROFILE_HEADER,
    REGISTERED,
    REJECTS_COLUMNS,
    TIMESTAMP,
    TRACK_MBID,
    TRACK_NAME,
    USER_ID,
)
from utils.core.config import USER_ID_PATTERN
from utils.core.errors import SessionlenError
from utils.core.stage_io import atomic_file, require_file

LINE_NUMBER = "line_number"
# What read_plays_arrow returns unless asked for fewer columns.
READ_COLUMNS = (*PLAYS_COLUMNS, LINE_NUMBER)
# Below glibc's largest mmap threshold (32 MiB): numpy's per-chunk temporaries then reuse
# heap memory instead of faulting in fresh pages for every chunk (half the system time).
CHUNK_BYTES = 16 << 20
# Enough lines to tell a plays file from something else before reading gigabytes of it.
SNIFF_BYTES = 64 << 10
MAX_MALFORMED_SHARE = 0.5
MAX_AGE = 120

PLAYS_EXPECTED = (
    "6 tab-separated fields per line (user id, UTC timestamp YYYY-MM-DDTHH:MM:SSZ, artist MBID, "
    "artist name, track MBID, track name), UTF-8, no header"
)
PROFILE_EXPECTED = (
    "a header line '#id<TAB>gender<TAB>age<TAB>country<TAB>registered' then 5 tab-separated "
    "fields per line, UTF-8"
)

_TAB, _NL, _CR = 9, 10, 13

# Reject reasons, indexed by the int8 code kept per line (0 = kept); the first failing check wins.
OK = 0
EMPTY_LINE = 1
CARRIAGE_RETURN = 2
FIELD_COUNT = 3
INVALID_UTF8 = 4
BAD_USER_ID = 5
BAD_TIMESTAMP = 6
EMPTY_ARTIST = 7
EMPTY_TRACK = 8
DUPLICATE_USER = 9
REASONS = {
    EMPTY_LINE: "empty line",
    CARRIAGE_RETURN: "carriage return (CR) inside the line",
    FIELD_COUNT: "expected {expected} tab-separated fields, got {got}",
    INVALID_UTF8: "invalid UTF-8",
    # Doubled braces: every reason goes through str.format.
    BAD_USER_ID: "invalid user id (must match {pattern})".format(
        pattern=USER_ID_PATTERN.replace("{", "{{").replace("}", "}}")),
    BAD_TIMESTAMP: "invalid timestamp (expected YYYY-MM-DDTHH:MM:SSZ, UTC)",
    EMPTY_ARTIST: "empty artist name",
    EMPTY_TRACK: "empty track name",
    DUPLICATE_USER: "duplicate user id (an earlier line has it)",
}

_MONTHS = {m: i for i, m in enumerate(
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], start=1)}
_STRING = pd.StringDtype("pyarrow")
_UTC_MS = "datetime64[ms, UTC]"


@dataclass(frozen=True)
class ReadResult:
    """A raw file read: the kept rows, and how every other line was accounted for."""

    frame: pd.DataFrame
    rows_in: int
    rows_rejected: int
    rejects_path: Path | None
    nullified: dict[str, int] = field(default_factory=dict)


@dataclass
class Rejects:
    """Rejected lines of one chunk: 1-based line numbers (chunk-local), reasons, raw text."""

    line_numbers: np.ndarray
    reasons: list[str]
    lines: list[str]

    @classmethod
    def concat(cls, parts: list[Rejects]) -> Rejects:
        """All parts in order, as one."""
        return cls(
            np.concatenate([p.line_numbers for p in parts]) if parts else np.zeros(0, np.int64),
            [r for p in parts for r in p.reasons],
            [t for p in parts for t in p.lines],
        )


@dataclass
class _Split:
    """One chunk split into lines; `code` holds each line's reject reason (0 = kept so far).

    `tokens` views the chunk buffer zero-copy with alternating values: field text, then the
    separator after it. Field j of line i is value 2 * (first_token[i] + j), so taking a field
    for the kept lines is one gather, with no separator to cut off.
    """

    buf: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    n_fields: np.ndarray
    first_token: np.ndarray
    offsets: np.ndarray
    tokens: pa.Array
    code: np.ndarray
    kept: np.ndarray

    def reject(self, codes: np.ndarray) -> None:
        """Reject kept lines by a reason code per kept line (0 keeps the line)."""
        self.code[self.kept] = codes
        self.kept = self.kept[codes == OK]

    def bounds(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Byte start and end (exclusive) of field `j` in each kept line."""
        token = 2 * (self.first_token[self.kept] + j)
        return self.offsets[token], self.offsets[token + 1]

    def field(self, j: int) -> pa.Array:
        """Field `j` of the kept lines as a large_string array (UTF-8 already checked)."""
        return self.tokens.take(2 * (self.first_token[self.kept] + j)).view(pa.large_string())

    def rejects(self, expected_fields: int, with_text: bool) -> Rejects:
        """The rejected lines of the chunk, with their raw text decoded leniently when asked."""
        rows = np.flatnonzero(self.code)
        reasons = [
            REASONS[c].format(expected=expected_fields, got=n)
            for c, n in zip(self.code[rows].tolist(), self.n_fields[rows].tolist(), strict=True)
        ]
        lines = [
            self.buf[s:e].tobytes().decode("utf-8", errors="replace")
            for s, e in zip(self.starts[rows].tolist(), self.ends[rows].tolist(), strict=True)
        ] if with_text else []
        return Rejects(rows.astype(np.int64) + 1, reasons, lines)


def split_lines(buf: np.ndarray, n_fields: int) -> _Split:
    """Split a newline-terminated byte chunk into lines of exactly `n_fields` UTF-8 fields.

    Lines that are empty, contain a CR, have another field count or invalid UTF-8 are marked
    in `code` and left out of `kept`.
    """
    # One comparison finds every tab, newline and CR (all bytes <= 13); text rarely has others.
    control = np.flatnonzero(buf <= _CR)
    kinds = buf[control]
    seps = control[(kinds == _TAB) | (kinds == _NL)]
    newline_at = np.flatnonzero(buf[seps] == _NL)
    ends = seps[newline_at]
    starts = np.concatenate(([0], ends[:-1] + 1)) if len(ends) else ends
    first_token = np.concatenate(([0], newline_at[:-1] + 1)) if len(ends) else newline_at
    counts = newline_at - first_token + 1
    code = np.zeros(len(ends), dtype=np.int8)
    code[counts != n_fields] = FIELD_COUNT
    code[np.searchsorted(ends, control[kinds == _CR])] = CARRIAGE_RETURN
    code[ends == starts] = EMPTY_LINE
    offsets = np.empty(2 * len(seps) + 1, dtype=np.int64)
    offsets[0] = 0
    offsets[1::2] = seps
    offsets[2::2] = seps + 1
    tokens = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), 2 * len(seps), [None, pa.py_buffer(offsets), pa.py_buffer(buf)])
    split = _Split(buf, starts, ends, counts, first_token, offsets, tokens, code,
                   np.flatnonzero(code == OK))
    if not _is_utf8_buffer(buf):
        split.reject(np.where(_invalid_utf8_lines(split), INVALID_UTF8, OK).astype(np.int8))
    return split


def _is_utf8_buffer(buf: np.ndarray) -> bool:
    """Whether a whole byte buffer is valid UTF-8 (Arrow's vectorized validator)."""
    whole = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), 1,
        [None, pa.py_buffer(np.array([0, len(buf)], dtype=np.int64)), pa.py_buffer(buf)])
    try:
        whole.cast(pa.large_string())
    except pa.ArrowInvalid:
        return False
    return True


def _invalid_utf8_lines(split: _Split) -> np.ndarray:
    """Mask over `kept` of lines with invalid UTF-8, found by bisecting the damaged chunk.

    Each step validates one byte range with the vectorized check, so a chunk with k bad lines
    costs O(k log n) range checks rather than one decode per line.
    """
    starts, ends = split.starts[split.kept], split.ends[split.kept]
    bad = np.zeros(len(split.kept), dtype=bool)
    ranges = [(0, len(split.kept))]
    while ranges:
        lo, hi = ranges.pop()
        if lo == hi or _is_utf8_buffer(split.buf[starts[lo]:ends[hi - 1]]):
            continue
        if hi - lo == 1:
            bad[lo] = True
            continue
        middle = (lo + hi) // 2
        ranges += [(lo, middle), (middle, hi)]
    return bad


def valid_user_ids(user_ids: pa.Array) -> np.ndarray:
    """Mask of user ids usable as folder names (the pattern also keeps out `.` and `..`).

    A chunk holds the plays of a few users: the pattern is matched once per distinct id.
    """
    encoded = pc.dictionary_encode(user_ids)
    valid = pc.match_substring_regex(encoded.dictionary, USER_ID_PATTERN)
    return valid.to_numpy(zero_copy_only=False)[encoded.indices.to_numpy()]


def civil_days(
    year: np.ndarray, month: np.ndarray, day: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Days since 1970-01-01 of calendar dates, and a mask of the dates that exist."""
    year, month, day = (np.asarray(a, dtype=np.int64) for a in (year, month, day))
    month_start = ((year - 1970) * 12 + np.clip(month, 1, 12) - 1).astype("datetime64[M]")
    first_day = month_start.astype("datetime64[D]")
    days_in_month = ((month_start + 1).astype("datetime64[D]") - first_day).astype(np.int64)
    ok = (month >= 1) & (month <= 12) & (day >= 1) & (day <= days_in_month)
    return first_day.astype(np.int64) + day - 1, ok


# Byte positions in `YYYY-MM-DDTHH:MM:SSZ` of the digits and of the fixed separators.
_DIGITS = np.array([0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18])
_SEP_POS = np.array([4, 7, 10, 13, 16, 19])
_SEP_VALUES = np.frombuffer(b"--T::Z", dtype=np.uint8)
TIMESTAMP_WIDTH = 20


def parse_timestamp_text(text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Milliseconds since epoch and validity of rows of a (n, 20) byte matrix of timestamps.

    Strict `YYYY-MM-DDTHH:MM:SSZ`: every byte and the calendar are checked (Arrow's strptime
    accepts one-digit months, leading spaces and February 30).
    """
    # uint8 arithmetic wraps bytes below "0" above 9, so one comparison checks both ends.
    raw_digits = text[:, _DIGITS] - np.uint8(ord("0"))
    ok = (raw_digits <= 9).all(axis=1) & (text[:, _SEP_POS] == _SEP_VALUES).all(axis=1)
    # int16 holds every 2- and 4-digit number here and keeps the (n, 14) matrix small.
    digits = raw_digits.astype(np.int16)
    year = digits[:, 0] * 1000 + digits[:, 1] * 100 + digits[:, 2] * 10 + digits[:, 3]
    pairs = digits[:, 4::2] * 10 + digits[:, 5::2]
    month, day, hour, minute, second = (pairs[:, k].astype(np.int64) for k in range(5))
    days, date_ok = civil_days(year, month, day)
    ok &= date_ok & (hour < 24) & (minute < 60) & (second < 60)
    seconds = days * 86_400 + hour * 3_600 + minute * 60 + second
    return np.where(ok, seconds * 1_000, 0), ok


def _timestamps(
    buf: np.ndarray, start: np.ndarray, end: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Parse the timestamp field given by byte bounds in `buf`: (ms since epoch, valid mask)."""
    ms = np.zeros(len(start), dtype=np.int64)
    valid = (end - start) == TIMESTAMP_WIDTH
    rows = np.flatnonzero(valid)
    if not rows.size:
        return ms, valid
    # Row i of the sliding window is buf[i:i + 20]: one gather builds the (n, 20) text matrix.
    windows = np.lib.stride_tricks.sliding_window_view(buf, TIMESTAMP_WIDTH)
    ms[rows], valid[rows] = parse_timestamp_text(windows[start[rows]])
    return ms, valid


def _with_nulls_for_empty(values: pa.Array) -> pa.Array:
    """The same strings with empty ones marked missing (zero-copy: only a validity bitmap)."""
    present = pc.binary_length(values).to_numpy(zero_copy_only=False) > 0
    if present.all():
        return values
    bitmap = np.packbits(present, bitorder="little")
    if values.offset:
        values = pa.concat_arrays([values])
    return pa.Array.from_buffers(
        values.type, len(values), [pa.py_buffer(bitmap), *values.buffers()[1:]])


@dataclass
class _PlaysChunk:
    """The kept plays of one chunk (chunk-local line numbers), its line count and rejects."""

    table: pa.Table
    n_lines: int
    rejects: Rejects


def parse_plays_chunk(buf: np.ndarray, with_text: bool = True,
                      columns: Sequence[str] = READ_COLUMNS) -> _PlaysChunk:
    """Split, validate and type one newline-terminated chunk of the plays file.

    Every line is checked whatever `columns` holds; only the columns asked for are built.
    """
    unknown = sorted(set(columns) - set(READ_COLUMNS))
    if unknown:
        raise SessionlenError(f"unknown plays column(s) {', '.join(unknown)}; "
                              f"valid: {', '.join(READ_COLUMNS)}")
    split = split_lines(buf, len(PLAYS_COLUMNS))
    ms, stamp_ok = _timestamps(buf, *split.bounds(1))
    artist_start, artist_end = split.bounds(3)
    track_start, track_end = split.bounds(5)
    codes = np.select(
        [~valid_user_ids(split.field(0)), ~stamp_ok, artist_end == artist_start,
         track_end == track_start],
        [BAD_USER_ID, BAD_TIMESTAMP, EMPTY_ARTIST, EMPTY_TRACK], OK).astype(np.int8)
    split.reject(codes)
    builders: dict[str, Callable[[], pa.Array]] = {
        USER_ID: lambda: split.field(0),
        TIMESTAMP: lambda: pa.array(ms[codes == OK], pa.timestamp("ms", tz="UTC")),
        ARTIST_MBID: lambda: _with_nulls_for_empty(split.field(2)),
        ARTIST_NAME: lambda: split.field(3),
        TRACK_MBID: lambda: _with_nulls_for_empty(split.field(4)),
        TRACK_NAME: lambda: split.field(5),
        LINE_NUMBER: lambda: pa.array(split.kept.astype(np.int64) + 1),
    }
    table = pa.table({name: builders[name]() for name in columns})
    return _PlaysChunk(table, len(split.ends), split.rejects(len(PLAYS_COLUMNS), with_text))


def iter_line_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """Byte chunks of a file, each ending with a newline (one is added to an unterminated end)."""
    carry = b""
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        while True:
            # The file size only sizes the buffer (small files get small ones); reading goes on
            # to the real end. A fresh buffer that starts with the previous partial line avoids
            # copying each chunk again to join it.
            want = min(chunk_bytes, max(size - fh.tell(), 1 << 16))
            buf = bytearray(len(carry) + want)
            buf[:len(carry)] = carry
            read = fh.readinto(memoryview(buf)[len(carry):])
            if not read:
                break
            filled = len(carry) + read
            cut = buf.rfind(b"\n", 0, filled) + 1
            carry = bytes(buf[cut:filled])
            if cut:
                yield np.frombuffer(buf, dtype=np.uint8, count=cut)
    if carry:
        yield np.frombuffer(carry + b"\n", dtype=np.uint8)


def read_head(path: Path, size: int) -> np.ndarray:
    """The complete lines within the first `size` bytes of a file (all of a short file)."""
    with open(path, "rb") as fh:
        head = fh.read(size)
        more = bool(fh.read(1))
    if more:
        head = head[:head.rfind(b"\n") + 1]
    elif head and not head.endswith(b"\n"):
        head += b"\n"
    return np.frombuffer(head, dtype=np.uint8)


def check_not_empty(path: Path, what: str, expected: str, rows_in: int) -> None:
    """Refuse a file with no lines at all."""
    if rows_in == 0:
        raise SessionlenError(f"{path}: empty file; expected a Last.fm 1K {what} file: {expected}")


def check_mostly_valid(path: Path, what: str, expected: str, rows_in: int, rejects: Rejects,
                        scope: str = "") -> None:
    """Refuse a file that is not this format at all: more than half of its lines malformed."""
    rejected = len(rejects.line_numbers)
    if rejected > MAX_MALFORMED_SHARE * rows_in:
        reason, count = collections.Counter(rejects.reasons).most_common(1)[0]
        raise SessionlenError(
            f"{path}: not a Last.fm 1K {what} file: {rejected:,} of {rows_in:,} lines{scope} "
            f"malformed (first on line {rejects.line_numbers[0]}; {count:,} x '{reason}'); "
            f"expected {expected}"
        )


def _worker_count() -> int:
    """Threads for parsing chunks: the cores, capped (each in-flight chunk costs memory)."""
    return max(1, min(4, os.cpu_count() or 1))


def _read_plays_chunks(path: Path, with_text: bool, columns: Sequence[str]
                       ) -> tuple[list[_PlaysChunk], int]:
    """Parse every chunk of the plays file on a few threads; chunks and total lines, in order."""
    workers = _worker_count()
    results: list[_PlaysChunk] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque[Future[_PlaysChunk]] = collections.deque()
        for chunk in iter_line_chunks(path, CHUNK_BYTES):
            pending.append(pool.submit(parse_plays_chunk, chunk, with_text, columns))
            # A bounded queue keeps only a few raw chunks in memory at once.
            if len(pending) > workers:
                results.append(pending.popleft().result())
        results.extend(f.result() for f in pending)
    return results, sum(r.n_lines for r in results)


def _renumber(chunks: list[_PlaysChunk]) -> tuple[pa.Table, Rejects]:
    """Concatenate chunk results, turning chunk-local line numbers into file line numbers."""
    tables, parts, offset = [], [], 0
    for chunk in chunks:
        index = chunk.table.schema.get_field_index(LINE_NUMBER)
        tables.append(chunk.table if index < 0 else chunk.table.set_column(
            index, LINE_NUMBER, pc.add(chunk.table[LINE_NUMBER], offset)))
        parts.append(Rejects(chunk.rejects.line_numbers + offset, chunk.rejects.reasons,
                              chunk.rejects.lines))
        offset += chunk.n_lines
    return pa.concat_tables(tables), Rejects.concat(parts)


def rejects_file(path: Path, rejects_dir: Path) -> Path:
    """Where the rejects of raw file `path` go: `rejects_dir/<file name>.rejects.csv`."""
    return Path(rejects_dir) / f"{Path(path).name}.rejects.csv"


def write_rejects(path: Path, rejects_dir: Path | None, rejects: Rejects) -> Path | None:
    """Write the rejects CSV atomically; with no rejects, remove a stale one and return None."""
    if rejects_dir is None:
        return None
    target = rejects_file(path, rejects_dir)
    if not len(rejects.line_numbers):
        target.unlink(missing_ok=True)
        return None
    with atomic_file(target, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(REJECTS_COLUMNS)
        writer.writerows(zip(rejects.line_numbers.tolist(), rejects.reasons, rejects.lines,
                             strict=True))
    return target


def read_plays_arrow(path: Path, rejects_dir: Path | None = None,
                     columns: Sequence[str] = READ_COLUMNS) -> pa.Table:
    """The plays file as an Arrow table of `columns` (default PLAYS_COLUMNS + line_number),
    kept rows in file order; every line is checked whichever columns are built.

    Rejected lines go to `rejects_dir/<name>.rejects.csv` when a folder is given. The counts
    ride in the schema metadata (b"rows_in", b"rows_rejected", b"rejects_path"); `read_plays`
    returns them as a ReadResult.
    """
    path = require_file(Path(path), "plays file")
    # The first lines decide quickly whether this is a plays file at all.
    head = parse_plays_chunk(read_head(path, SNIFF_BYTES), with_text=False)
    check_mostly_valid(path, "plays", PLAYS_EXPECTED, head.n_lines, head.rejects,
                        scope=" at the start of the file")
    chunks, rows_in = _read_plays_chunks(path, rejects_dir is not None, columns)
    check_not_empty(path, "plays", PLAYS_EXPECTED, rows_in)
    table, rejects = _renumber(chunks)
    check_mostly_valid(path, "plays", PLAYS_EXPECTED, rows_in, rejects)
    target = write_rejects(path, rejects_dir, rejects)
    return table.replace_schema_metadata({
        "rows_in": str(rows_in),
        "rows_rejected": str(len(rejects.line_numbers)),
        "rejects_path": str(target) if target else "",
    })


def _string_types(arrow_type: pa.DataType) -> pd.api.extensions.ExtensionDtype | None:
    """Map Arrow strings to pandas' pyarrow-backed string dtype (NA for missing), zero-copy."""
    if pa.types.is_large_string(arrow_type) or pa.types.is_string(arrow_type):
        return _STRING
    return None


def read_plays(path: Path, rejects_dir: Path | None = None) -> ReadResult:
    """Read the plays file: typed frame of kept rows (with line_number) and reject accounting."""
    table = read_plays_arrow(path, rejects_dir)
    meta = table.schema.metadata
    frame = table.to_pandas(types_mapper=_string_types)
    return ReadResult(
        frame=frame,
        rows_in=int(meta[b"rows_in"]),
        rows_rejected=int(meta[b"rows_rejected"]),
        rejects_path=Path(meta[b"rejects_path"].decode()) if meta[b"rejects_path"] else None,
        nullified={},
    )


def _split_profile_header(path: Path, raw: bytes) -> bytes:
    """The body of a profile file after checking its header line; one-line error otherwise."""
    header, _, body = raw.partition(b"\n")
    if header.split(b"\t") != [name.encode() for name in PROFILE_HEADER]:
        shown = header[:80].decode("utf-8", errors="replace")
        raise SessionlenError(
            f"{path}: not a Last.fm 1K profile file: line 1 is {shown!r}; "
            f"expected {PROFILE_EXPECTED}"
        )
    return body if not body or body.endswith(b"\n") else body + b"\n"


def _gender(raw: pd.Series) -> tuple[pd.Series, int]:
    """`m`/`f` kept, anything else missing; count of non-empty values that were invalid."""
    valid = raw.isin(["m", "f"])
    return raw.where(valid).astype(_STRING), int((~valid & (raw != "")).sum())


def _age(raw: pd.Series) -> tuple[pd.Series, int]:
    """Whole ages 0..MAX_AGE as Int64, anything else missing; count of invalid non-empty values."""
    digits = raw.str.fullmatch(r"\d{1,3}").fillna(False).astype(bool)
    age = pd.to_numeric(raw.where(digits), errors="coerce").astype("Int64")
    age = age.where(age <= MAX_AGE)
    return age, int((age.isna() & (raw != "")).sum())


def _registered(raw: pd.Series) -> tuple[pd.Series, int]:
    """`Aug 13, 2006` dates as UTC midnight (locale-independent); count of unparseable values."""
    parts = raw.str.extract(r"^([A-Z][a-z]{2}) (\d{1,2}), (\d{4})$")
    month = parts[0].map(_MONTHS).astype("Int64")
    found = (parts[1].notna() & month.notna()).to_numpy(dtype=bool)
    numbers = [pd.to_numeric(p).fillna(0).to_numpy(dtype=np.int64)
               for p in (parts[2], month, parts[1])]
    days, ok = civil_days(*numbers)
    ok &= found
    ms = np.where(ok, days * 86_400_000, 0)
    dates = pd.Series(pd.to_datetime(ms, unit="ms", utc=True), index=raw.index).where(ok)
    return dates.astype(_UTC_MS), int((~ok & (raw != "").to_numpy(dtype=bool)).sum())


def _profile_values(split: _Split) -> tuple[pd.DataFrame, dict[str, int]]:
    """Typed profile columns of the kept lines, invalid values set missing and counted."""
    user, gender, age, country, registered = (
        pd.Series(split.field(j).to_pandas(types_mapper=_string_types), dtype=_STRING)
        for j in range(len(PROFILE_COLUMNS)))
    genders, bad_gender = _gender(gender)
    ages, bad_age = _age(age)
    dates, bad_date = _registered(registered)
    frame = pd.DataFrame({
        USER_ID: user, GENDER: genders, AGE: ages,
        COUNTRY: country.where(country != "").astype(_STRING), REGISTERED: dates,
    })
    return frame, {GENDER: bad_gender, AGE: bad_age, REGISTERED: bad_date}


def read_profiles(path: Path, rejects_dir: Path | None = None) -> ReadResult:
    """Read the profile file: one typed row per user; invalid values missing and counted."""
    path = require_file(Path(path), "profile file")
    body = _split_profile_header(path, path.read_bytes())
    split = split_lines(np.frombuffer(body, dtype=np.uint8), len(PROFILE_COLUMNS))
    split.reject(np.where(valid_user_ids(split.field(0)), OK, BAD_USER_ID).astype(np.int8))
    # A second profile for a user would duplicate that user's plays in the join.
    duplicated = split.field(0).to_pandas().duplicated().to_numpy()
    split.reject(np.where(duplicated, DUPLICATE_USER, OK).astype(np.int8))
    rejects = split.rejects(len(PROFILE_COLUMNS), with_text=True)
    # Line 1 is the header, so the first user is on line 2.
    rejects.line_numbers += 1
    rows_in = len(split.ends)
    check_mostly_valid(path, "profile", PROFILE_EXPECTED, rows_in, rejects)
    frame, nullified = _profile_values(split)
    target = write_rejects(path, rejects_dir, rejects)
    return ReadResult(frame, rows_in, len(rejects.line_numbers), target, nullified)
