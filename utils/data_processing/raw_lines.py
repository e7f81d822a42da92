"""What both raw Last.fm 1K readers share: lines split on raw bytes, and every reject accounted.

Both files are split on raw bytes rather than with a CSV parser: quote characters are plain text
in this format (a default CSV reader merges ~52K lines of the real plays file), a CR inside a line
must be a reject rather than a line break, and every reject needs its exact 1-based line number.
Here: the splitting, the reject reasons, the check of the user ids both files
hold, the refusal of a file that is not this format, and the rejects CSV.
"""

from __future__ import annotations

import collections
import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from utils.core.columns import REJECTS_COLUMNS
from utils.core.config import USER_ID_PATTERN
from utils.core.errors import SessionlenError
from utils.core.stage_io import atomic_file

MAX_MALFORMED_SHARE = 0.5

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

# The text columns of both readers: pandas strings backed by Arrow, NA when missing.
STRING = pd.StringDtype("pyarrow")


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
class LineSplit:
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


def split_lines(buf: np.ndarray, n_fields: int) -> LineSplit:
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
    split = LineSplit(buf, starts, ends, counts, first_token, offsets, tokens, code,
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


def _invalid_utf8_lines(split: LineSplit) -> np.ndarray:
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

    A chunk holds the plays of a few users: the pattern is matched once per distinct id (ids
    already dictionary-encoded are not encoded again).
    """
    encoded = user_ids if pa.types.is_dictionary(user_ids.type) else pc.dictionary_encode(
        user_ids)
    valid = pc.match_substring_regex(encoded.dictionary, USER_ID_PATTERN)
    return valid.to_numpy(zero_copy_only=False)[encoded.indices.to_numpy()]


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


def string_types(arrow_type: pa.DataType) -> pd.api.extensions.ExtensionDtype | None:
    """Map Arrow strings to pandas' pyarrow-backed string dtype (NA for missing), zero-copy."""
    if pa.types.is_large_string(arrow_type) or pa.types.is_string(arrow_type):
        return STRING
    return None
