"""The reader of the raw plays file: exact line accounting, vectorized, quoting disabled.

The file is processed in chunks cut at newlines, on a few threads (numpy and Arrow release the
GIL); only damaged chunks (invalid UTF-8) take a slower exact per-line path. Splitting and reject
accounting are `utils.data_processing.raw_lines`; `plays_spark` is the Spark twin of this reader.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from utils.core.civil_dates import civil_days
from utils.core.columns import (
    ARTIST_MBID,
    ARTIST_NAME,
    PLAYS_COLUMNS,
    TIMESTAMP,
    TRACK_MBID,
    TRACK_NAME,
    USER_ID,
)
from utils.core.errors import SessionlenError
from utils.core.stage_io import require_file
from utils.data_processing.raw_lines import (
    BAD_TIMESTAMP,
    BAD_USER_ID,
    EMPTY_ARTIST,
    EMPTY_TRACK,
    OK,
    ReadResult,
    Rejects,
    check_mostly_valid,
    check_not_empty,
    split_lines,
    string_types,
    valid_user_ids,
    write_rejects,
)

LINE_NUMBER = "line_number"
# What read_plays_arrow returns unless asked for fewer columns.
READ_COLUMNS = (*PLAYS_COLUMNS, LINE_NUMBER)
# The columns read_plays_arrow can return dictionary-encoded.
ENCODABLE = (USER_ID, ARTIST_NAME, TRACK_NAME)
# Below glibc's largest mmap threshold (32 MiB): numpy's per-chunk temporaries then reuse
# heap memory instead of faulting in fresh pages for every chunk (half the system time).
CHUNK_BYTES = 16 << 20
# Enough lines to tell a plays file from something else before reading gigabytes of it.
SNIFF_BYTES = 64 << 10

PLAYS_EXPECTED = (
    "6 tab-separated fields per line (user id, UTC timestamp YYYY-MM-DDTHH:MM:SSZ, artist MBID, "
    "artist name, track MBID, track name), UTF-8, no header"
)

TIMESTAMP_WIDTH = 20
# Per byte of `YYYY-MM-DDTHH:MM:SSZ`: the lowest value allowed and how far above it a byte may
# go (9 for a digit, 0 for a fixed separator).
_LOWEST = np.frombuffer(b"0000-00-00T00:00:00Z", dtype=np.uint8)
_SPAN = np.where(ord("0") == _LOWEST, 9, 0).astype(np.uint8)
_ALL_TRUE_8 = np.frombuffer(b"\x01" * 8, dtype="<u8")[0]
_ALL_TRUE_4 = np.frombuffer(b"\x01" * 4, dtype="<u4")[0]


def _rows_all(mask: np.ndarray) -> np.ndarray:
    """Whether every entry of each row of a contiguous (n, 20) bool matrix is true.

    Each row is read as two 8-byte and one 4-byte integer (a true bool is the byte 1), so
    the reduction is three comparisons per row instead of a 20-wide loop.
    """
    def part(offset: int, dtype: str) -> np.ndarray:
        return np.ndarray((len(mask),), dtype, mask.view(np.uint8), offset, (mask.strides[0],))

    return ((part(0, "<u8") == _ALL_TRUE_8) & (part(8, "<u8") == _ALL_TRUE_8)
            & (part(16, "<u4") == _ALL_TRUE_4))


def parse_timestamp_text(text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Milliseconds since epoch and validity of rows of a (n, 20) byte matrix of timestamps.

    Strict `YYYY-MM-DDTHH:MM:SSZ`: every byte and the calendar are checked (Arrow's strptime
    accepts one-digit months, leading spaces and February 30).
    """
    # uint8 arithmetic wraps bytes below the lowest allowed above the span, so one comparison
    # checks both ends; at a digit, the difference is the digit's value.
    offset = np.ascontiguousarray(text) - _LOWEST
    ok = _rows_all(offset <= _SPAN)

    def number(*columns: int) -> np.ndarray:
        value = offset[:, columns[0]].astype(np.int64)
        for column in columns[1:]:
            value = value * 10 + offset[:, column]
        return value

    days, date_ok = civil_days(number(0, 1, 2, 3), number(5, 6), number(8, 9))
    hour, minute, second = number(11, 12), number(14, 15), number(17, 18)
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
                      columns: Sequence[str] = READ_COLUMNS,
                      encoded: Collection[str] = ()) -> _PlaysChunk:
    """Split, validate and type one newline-terminated chunk of the plays file.

    Every line is checked whatever `columns` holds; only the columns asked for are built, the
    text columns named in `encoded` dictionary-encoded (one dictionary per chunk: hashing a
    chunk's few distinct values here, on the reader's threads, is cheaper than hashing every
    row of the whole column afterwards).
    """
    unknown = sorted(set(columns) - set(READ_COLUMNS))
    if unknown:
        raise SessionlenError(f"unknown plays column(s) {', '.join(unknown)}; "
                              f"valid: {', '.join(READ_COLUMNS)}")
    not_encodable = sorted(set(encoded) - set(ENCODABLE))
    if not_encodable:
        raise SessionlenError(f"plays column(s) {', '.join(not_encodable)} cannot be "
                              f"encoded; encodable: {', '.join(ENCODABLE)}")
    split = split_lines(buf, len(PLAYS_COLUMNS))
    # The user ids are encoded for the pattern check; the encoding is kept for the column.
    users = pc.dictionary_encode(split.field(0))
    ms, stamp_ok = _timestamps(buf, *split.bounds(1))
    artist_start, artist_end = split.bounds(3)
    track_start, track_end = split.bounds(5)
    codes = np.select(
        [~valid_user_ids(users), ~stamp_ok, artist_end == artist_start,
         track_end == track_start],
        [BAD_USER_ID, BAD_TIMESTAMP, EMPTY_ARTIST, EMPTY_TRACK], OK).astype(np.int8)
    split.reject(codes)
    kept = codes == OK

    def text(j: int, name: str) -> pa.Array:
        return pc.dictionary_encode(split.field(j)) if name in encoded else split.field(j)

    builders: dict[str, Callable[[], pa.Array]] = {
        # Filtering keeps the whole dictionary: an id whose lines were all rejected stays in
        # it unused (`used_dictionary` drops such values).
        USER_ID: lambda: users.filter(kept) if USER_ID in encoded else split.field(0),
        TIMESTAMP: lambda: pa.array(ms[kept], pa.timestamp("ms", tz="UTC")),
        ARTIST_MBID: lambda: _with_nulls_for_empty(split.field(2)),
        ARTIST_NAME: lambda: text(3, ARTIST_NAME),
        TRACK_MBID: lambda: _with_nulls_for_empty(split.field(4)),
        TRACK_NAME: lambda: text(5, TRACK_NAME),
        LINE_NUMBER: lambda: pa.array(split.kept.astype(np.int64) + 1),
    }
    table = pa.table({name: builders[name]() for name in columns})
    return _PlaysChunk(table, len(split.ends), split.rejects(len(PLAYS_COLUMNS), with_text))


def used_dictionary(values: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Code per row and the distinct values of a column read `encoded`: the chunks'
    dictionaries unified (values in order of first appearance), values no row uses dropped."""
    combined = values.combine_chunks() if values.num_chunks else pa.array(
        [], values.type)
    # int32, as Arrow holds them (zero-copy): half the memory of int64 for every play.
    codes = combined.indices.to_numpy()
    dictionary = combined.dictionary
    used = np.bincount(codes, minlength=len(dictionary)) > 0
    if not used.all():
        codes = (np.cumsum(used) - 1)[codes]
        dictionary = dictionary.filter(pa.array(used))
    return codes, dictionary.cast(pa.large_string())


def iter_line_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES, start: int = 0,
                     stop: int | None = None) -> Iterator[np.ndarray]:
    """Byte chunks of a file, each ending with a newline (one is added to an unterminated end).

    With `start` and `stop` (both at line starts, or stop at the end), only those bytes.
    """
    carry = b""
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(start)
        while True:
            # The file size only sizes the buffer (small files get small ones); reading goes on
            # to the real end, or to `stop`. A fresh buffer that starts with the previous
            # partial line avoids copying each chunk again to join it.
            if stop is None:
                want = min(chunk_bytes, max(size - fh.tell(), 1 << 16))
            else:
                want = min(chunk_bytes, stop - fh.tell())
                if want <= 0:
                    break
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


def _worker_count() -> int:
    """Threads for parsing chunks: the cores, capped (each in-flight chunk costs memory)."""
    return max(1, min(4, os.cpu_count() or 1))


def _read_plays_chunks(path: Path, with_text: bool, columns: Sequence[str],
                       encoded: Collection[str], start: int = 0, stop: int | None = None,
                       workers: int | None = None) -> tuple[list[_PlaysChunk], int]:
    """Parse every chunk of the plays file (or of bytes start..stop) on a few threads; chunks
    and total lines, in order."""
    workers = workers or _worker_count()
    results: list[_PlaysChunk] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque[Future[_PlaysChunk]] = collections.deque()
        for chunk in iter_line_chunks(path, CHUNK_BYTES, start, stop):
            pending.append(pool.submit(parse_plays_chunk, chunk, with_text, columns, encoded))
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


def read_plays_arrow(path: Path, rejects_dir: Path | None = None,
                     columns: Sequence[str] = READ_COLUMNS,
                     encoded: Collection[str] = ()) -> pa.Table:
    """The plays file as an Arrow table of `columns` (default PLAYS_COLUMNS + line_number),
    kept rows in file order; every line is checked whichever columns are built. The text
    columns named in `encoded` are dictionary-encoded chunk by chunk (see `used_dictionary`).

    Rejected lines go to `rejects_dir/<name>.rejects.csv` when a folder is given. The counts
    ride in the schema metadata (b"rows_in", b"rows_rejected", b"rejects_path"); `read_plays`
    returns them as a ReadResult.
    """
    path = require_file(Path(path), "plays file")
    # The first lines decide quickly whether this is a plays file at all.
    head = parse_plays_chunk(read_head(path, SNIFF_BYTES), with_text=False)
    check_mostly_valid(path, "plays", PLAYS_EXPECTED, head.n_lines, head.rejects,
                        scope=" at the start of the file")
    chunks, rows_in = _read_plays_chunks(path, rejects_dir is not None, columns, encoded)
    check_not_empty(path, "plays", PLAYS_EXPECTED, rows_in)
    table, rejects = _renumber(chunks)
    check_mostly_valid(path, "plays", PLAYS_EXPECTED, rows_in, rejects)
    target = write_rejects(path, rejects_dir, rejects)
    return table.replace_schema_metadata({
        "rows_in": str(rows_in),
        "rows_rejected": str(len(rejects.line_numbers)),
        "rejects_path": str(target) if target else "",
    })


def read_plays_range(path: Path, start: int, stop: int, columns: Sequence[str],
                     encoded: Collection[str], workers: int = 1
                     ) -> tuple[pa.Table, Rejects, int] | None:
    """The lines in bytes start..stop of the plays file (start at a line start, stop at a line
    start or the end), checked as `read_plays_arrow` checks them: (kept plays, rejected lines
    numbered from the range's first line, lines read); None when the range holds no line.

    The caller accounts for the whole file (emptiness, mostly valid, the rejects file).
    """
    chunks, lines = _read_plays_chunks(Path(path), True, columns, encoded, start, stop, workers)
    if not chunks:
        return None
    table, rejects = _renumber(chunks)
    return table, rejects, lines


def read_plays(path: Path, rejects_dir: Path | None = None) -> ReadResult:
    """Read the plays file: typed frame of kept rows (with line_number) and reject accounting."""
    table = read_plays_arrow(path, rejects_dir)
    meta = table.schema.metadata
    frame = table.to_pandas(types_mapper=string_types)
    return ReadResult(
        frame=frame,
        rows_in=int(meta[b"rows_in"]),
        rows_rejected=int(meta[b"rows_rejected"]),
        rejects_path=Path(meta[b"rejects_path"].decode()) if meta[b"rejects_path"] else None,
        nullified={},
    )
