"""Fuzzing the plays reader: a seeded corpus of mutated real lines, and random byte damage.

The corpus is every line of the real excerpt with 2,000 of them mutated in known ways (wrong
field counts, bad timestamps, invalid UTF-8, quotes, tabs, CR, empty lines, 1 MB fields, user
ids that could leave WORK); each mutation kind knows whether the reader must keep the line or
reject it and with which reason. The property test damages real lines with random bytes and
compares the reader with a plain line-by-line statement of the format's rules.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from utils.core import columns as C
from utils.core.config import CrawlParams, WorkLayout
from utils.core.errors import SessionlenError
from utils.core.stage_io import MANIFEST
from utils.core.work_lock import LOCK_DIR
from utils.data_processing import plays_reader, raw_lines
from utils.data_processing.denormalize import denormalize
from utils.data_processing.plays_reader import LINE_NUMBER, read_plays
from utils.data_processing.raw_lines import REASONS
from utils.data_processing.track_metadata import build_track_metadata
from utils.data_processing.tracks import build_unique_tracks

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SEED = 20090504
HUGE = 1 << 20
N_FIELDS = len(C.PLAYS_COLUMNS)
# The folder-name rule (the design's, led by a letter or digit, at most 200 characters),
# written independently of the reader's implementation.
FOLDER_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")

Mutator = Callable[[list[bytes], random.Random], tuple[bytes, str | None]]


def reason(code: int, got: int = 0) -> str:
    """The reject reason the reader must give for a reason code."""
    return REASONS[code].format(expected=N_FIELDS, got=got)


def _join(fields: list[bytes]) -> bytes:
    return b"\t".join(fields)


def _with_field(fields: list[bytes], index: int, value: bytes) -> list[bytes]:
    return [*fields[:index], value, *fields[index + 1:]]


def _insert(text: bytes, rng: random.Random, piece: bytes) -> bytes:
    """`piece` at a random byte position (which may cut a multi-byte character)."""
    at = rng.randint(0, len(text))
    return text[:at] + piece + text[at:]


def _insert_between_characters(text: bytes, rng: random.Random, piece: bytes) -> bytes:
    """`piece` at a random character boundary of UTF-8 text: the result stays valid."""
    decoded = text.decode()
    at = rng.randint(0, len(decoded))
    return decoded[:at].encode() + piece + decoded[at:].encode()


# --- mutations the reader must reject ---------------------------------------------------------

def missing_fields(fields: list[bytes], rng: random.Random) -> tuple[bytes, str | None]:
    """Drop 1 to 5 fields (never the user id: a line of one empty field would be empty)."""
    keep = [0, *sorted(rng.sample(range(1, N_FIELDS), rng.randint(0, N_FIELDS - 2)))]
    return _join([fields[i] for i in keep]), reason(raw_lines.FIELD_COUNT, len(keep))


def embedded_tab(fields: list[bytes], rng: random.Random) -> tuple[bytes, str | None]:
    """Tabs inside the artist or track name: more fields than the format has."""
    index, tabs = rng.choice([3, 5]), rng.randint(1, 3)
    value = fields[index]
    for _ in range(tabs):
        value = _insert(value, rng, b"\t")
    return _join(_with_field(fields, index, value)), reason(raw_lines.FIELD_COUNT, N_FIELDS + tabs)


BAD_TIMESTAMPS: list[Callable[[bytes], bytes]] = [
    lambda s: b"2009-02-30" + s[10:],
    lambda s: b"2009-02-29" + s[10:],
    lambda s: b"2009-04-31" + s[10:],
    lambda s: s.replace(b"T", b" "),
    lambda s: s[:-1],
    lambda s: s[:-1] + b"+00:00",
    lambda s: s + b" ",
    lambda s: b" " + s[1:],
    lambda s: s[:5] + b"13" + s[7:],
    lambda s: s[:5] + b"00" + s[7:],
    lambda s: s[:8] + b"00" + s[10:],
    lambda s: s[:11] + b"24" + s[13:],
    lambda s: s[:14] + b"60" + s[16:],
    lambda s: s[:17] + b"60" + s[19:],
    lambda s: s[:5] + s[6:],
    lambda s: s.lower(),
    lambda s: s.replace(b"-", b"/"),
    lambda s: s.replace(b"0", "\uff10".encode(), 1),
    lambda s: b"",
    lambda s: b"1241478537",
]


def bad_timestamp(fields: list[bytes], rng: random.Random) -> tuple[bytes, str | None]:
    """A timestamp off the strict YYYY-MM-DDTHH:MM:SSZ form or off the calendar."""
    stamp = rng.choice(BAD_TIMESTAMPS)(fields[1])
    return _join(_with_field(fields, 1, stamp)), reason(raw_lines.BAD_TIMESTAMP)


BROKEN_UTF8 = [b"\xff", b"\xfe\xff", b"\x80", b"\xc3", b"\xe5\x9d", b"\xf0\x9f\x98",
               b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]


def invalid_utf8(fields: list[bytes], rng: random.Random) -> tuple[bytes, str | None]:
    """A multi-byte character cut short, or bytes that are never UTF-8, in any field."""
    line = _join(fields)
    leads = [i for i, b in enumerate(line) if b >= 0xC0]
    if leads and rng.random() < 0.5:
        cut = rng.choice(leads) + 1
        return line[:cut] + line[cut + 1:], reason(raw_lines.INVALID_UTF8)
    index = rng.randrange(N_FIELDS)
    value = _insert(fields[index], rng, rng.choice(BROKEN_UTF8))
    return _join(_with_field(fields, index, value)), reason(raw_lines.INVALID_UTF8)


def carriage_return(fields: list[bytes], rng: random.Random) -> tuple[bytes, str | None]:
    """A CRLF line end, a CR anywhere, or a CR in place of a tab (CR is checked first)."""
    line = _join(fields)
    variant = rng.randrange(3)
    if variant == 0:
        damaged = line + b"\r"
    elif variant == 1:
        damaged = _insert(line, rng, b"\r")
    else:
        tabs = [i for i, b in enumerate(line) if b == 9]
        at = rng.choice(tabs)
        damaged = line[:at] + b"\r" + line[at + 1:]
    return damaged, reason(raw_lines.CARRIAGE_RETURN)


def empty_line(fields: list[bytes], rng: random.Random) -> tuple[bytes, str | None]:
    """The line's text gone, its newline kept."""
    return b"", reason(raw_lines.EMPTY_LINE)


ESCAPING_USER_IDS = [
    b"/", b".", b"..", b"../x", b"../../etc", b"a/b", b"user_000001/..", b"/tmp", b"./user",
    b"user\x00000001", b"\x00", b"user 000001", b" user_000001", b"user_000001 ", b"",
    "user_00000\uff11".encode(), "\u00fc".encode(), "user_1\u0085".encode(), b"~", b"user\\x",
    b"..\\..", b"user:1", b"*", b"user\x0b", b"user\x0c", b"...", b"-", b"_", b".user",
    b"_user", b"-user", b"u" * 201,
]


def bad_user_id(fields: list[bytes], rng: random.Random) -> tuple[bytes, str | None]:
    """A user id that is no safe folder name: slashes, dots, NUL, spaces, non-ASCII, empty."""
    user = rng.choice(ESCAPING_USER_IDS)
    return _join(_with_field(fields, 0, user)), reason(raw_lines.BAD_USER_ID)


def empty_artist(fields: list[bytes], rng: random.Random) -> tuple[bytes, str | None]:
    return _join(_with_field(fields, 3, b"")), reason(raw_lines.EMPTY_ARTIST)


def empty_track(fields: list[bytes], rng: random.Random) -> tuple[bytes, str | None]:
    return _join(_with_field(fields, 5, b"")), reason(raw_lines.EMPTY_TRACK)


def huge_invalid(fields: list[bytes], rng: random.Random) -> tuple[bytes, str | None]:
    """A 1 MB field in a line that is wrong anyway: an extra field, or a 1 MB path as user id."""
    if rng.random() < 0.5:
        return _join([*fields, b"x" * HUGE]), reason(raw_lines.FIELD_COUNT, N_FIELDS + 1)
    user = b"../" * (HUGE // 3)
    return _join(_with_field(fields, 0, user)), reason(raw_lines.BAD_USER_ID)


# --- mutations the reader must keep, byte for byte ---------------------------------------------

def _requote(name: bytes, rng: random.Random) -> bytes:
    variant = rng.randrange(6)
    if variant == 0:
        return b'"' + name
    if variant == 1:
        return name + b'"'
    if variant == 2:
        return b'"' + name + b'"'
    if variant == 3:
        return _insert_between_characters(name, rng, b'""')
    if variant == 4:
        return _insert_between_characters(name, rng, b"'")
    return b'"'


def quotes(fields: list[bytes], rng: random.Random) -> tuple[bytes, str | None]:
    """Quote characters in the names: plain text in this format."""
    for index in rng.sample([3, 5], rng.randint(1, 2)):
        fields = _with_field(fields, index, _requote(fields[index], rng))
    return _join(fields), None


TRICKY_TEXT = [
    "NA", "null", "nan", "None", "#", ",", "\\N", "\\", "=1+1", " ", "\u2028", "\u2029",
    "\u0085", "\x0b", "\x0c", "\x00", "\x1c\x1d\x1e", "\ufeffBOM", "\u202eright-to-left",
    "\U0001f44d\U0001f3fd", "a\u0301", "\U0001d11e", "\U0010ffff", "\ufffd", "\u3000",
]


def tricky_text(fields: list[bytes], rng: random.Random) -> tuple[bytes, str | None]:
    """Names a careless reader would turn into nulls, split on, or strip."""
    index = rng.choice([3, 5])
    value = rng.choice(TRICKY_TEXT).encode()
    if rng.random() < 0.5:
        value = fields[index] + value
    return _join(_with_field(fields, index, value)), None


ODD_VALID_USER_IDS = [b"a...", b"9-", b"x_", b"NA", b"null", b"nan", b"u.s-e_r", b"A", b"u" * 200]


def odd_user_id(fields: list[bytes], rng: random.Random) -> tuple[bytes, str | None]:
    """User ids that look odd but are safe folder names."""
    return _join(_with_field(fields, 0, rng.choice(ODD_VALID_USER_IDS))), None


def no_mbids(fields: list[bytes], rng: random.Random) -> tuple[bytes, str | None]:
    return _join(_with_field(_with_field(fields, 2, b""), 4, b"")), None


EXTREME_TIMESTAMPS = [b"0000-02-29T00:00:00Z", b"0001-01-01T00:00:00Z", b"1582-10-10T12:00:00Z",
                     b"1969-12-31T23:59:59Z", b"2008-02-29T23:59:59Z", b"9999-12-31T23:59:59Z"]


def extreme_timestamp(fields: list[bytes], rng: random.Random) -> tuple[bytes, str | None]:
    """Valid instants far from the data's years: year 0, the Gregorian switch, 9999, leap days."""
    return _join(_with_field(fields, 1, rng.choice(EXTREME_TIMESTAMPS))), None


def huge_valid(fields: list[bytes], rng: random.Random) -> tuple[bytes, str | None]:
    """A 1 MB non-ASCII artist name (whole characters), or a 1 MB MBID field."""
    if rng.random() < 0.5:
        name = ("\u5742\u672c\u9f8d\u4e00 \"x\" " * (HUGE // 16)).encode()
        return _join(_with_field(fields, 3, name)), None
    return _join(_with_field(fields, 2, b"f" * HUGE)), None


# How many real lines each mutation kind damages: 1,272 become invalid, 728 stay valid.
MUTATIONS: dict[str, tuple[Mutator, int]] = {
    "missing_fields": (missing_fields, 150),
    "embedded_tab": (embedded_tab, 150),
    "bad_timestamp": (bad_timestamp, 200),
    "invalid_utf8": (invalid_utf8, 200),
    "carriage_return": (carriage_return, 150),
    "empty_line": (empty_line, 100),
    "bad_user_id": (bad_user_id, 200),
    "empty_artist": (empty_artist, 60),
    "empty_track": (empty_track, 60),
    "huge_invalid": (huge_invalid, 2),
    "quotes": (quotes, 300),
    "tricky_text": (tricky_text, 250),
    "odd_user_id": (odd_user_id, 78),
    "no_mbids": (no_mbids, 60),
    "extreme_timestamp": (extreme_timestamp, 38),
    "huge_valid": (huge_valid, 2),
}


@dataclass(frozen=True)
class Corpus:
    """Lines of a plays file, and for each mutated line (1-based) its kind and expected reason."""

    lines: list[bytes]
    kinds: dict[int, str]
    expected_rejects: dict[int, str]

    def data(self, final_newline: bool = True) -> bytes:
        return b"\n".join(self.lines) + (b"\n" if final_newline else b"")

    def kept_line_numbers(self) -> list[int]:
        return [n for n in range(1, len(self.lines) + 1) if n not in self.expected_rejects]


def build_corpus(real: list[bytes], seed: int = SEED) -> Corpus:
    """Every real line, with a seeded choice of lines damaged by each mutation kind."""
    rng = random.Random(seed)
    kinds = [kind for kind, (_, count) in MUTATIONS.items() for _ in range(count)]
    rng.shuffle(kinds)
    positions = sorted(rng.sample(range(len(real)), len(kinds)))
    lines = list(real)
    by_line, expected = {}, {}
    for position, kind in zip(positions, kinds, strict=True):
        line, why = MUTATIONS[kind][0](real[position].split(b"\t"), rng)
        lines[position] = line
        by_line[position + 1] = kind
        if why is not None:
            expected[position + 1] = why
    return Corpus(lines, by_line, expected)


@pytest.fixture(scope="module")
def real_lines(sample_dir: Path) -> list[bytes]:
    return (sample_dir / "plays-excerpt.tsv").read_bytes().split(b"\n")[:-1]


@pytest.fixture(scope="module")
def corpus(real_lines: list[bytes]) -> Corpus:
    return build_corpus(real_lines)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory, corpus: Corpus) -> Path:
    path = tmp_path_factory.mktemp("corpus") / C.PLAYS_FILE
    path.write_bytes(corpus.data())
    return path


def read_rejects(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"line": str}, keep_default_na=False)


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146_097 + day_of_era - 719_468


def days_in_month(year: int, month: int) -> int:
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return [31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]


STAMP = re.compile(rb"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z")


def stamp_ms(text: bytes) -> int | None:
    """Milliseconds since epoch of a strict UTC timestamp, None if it is not one."""
    match = STAMP.fullmatch(text)
    if not match:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups())
    if not (1 <= month <= 12 and 1 <= day <= days_in_month(year, month)):
        return None
    if hour > 23 or minute > 59 or second > 59:
        return None
    return ((days_from_civil(year, month, day) * 24 + hour) * 60 + minute) * 60_000 + second * 1000


def text_fields(frame: pd.DataFrame) -> list[list[bytes]]:
    """The five text fields (all but the timestamp) of each kept row, as bytes."""
    columns = [frame[C.USER_ID], frame[C.ARTIST_MBID].fillna(""), frame[C.ARTIST_NAME],
               frame[C.TRACK_MBID].fillna(""), frame[C.TRACK_NAME]]
    return [[value.encode() for value in row] for row in zip(*columns, strict=True)]


def check_kept_rows(frame: pd.DataFrame, sources: list[bytes]) -> None:
    """Each kept row holds its source line's fields: text byte for byte, the instant exactly."""
    fields = [line.split(b"\t") for line in sources]
    assert text_fields(frame) == [[f[0], *f[2:]] for f in fields]
    got_ms = frame[C.TIMESTAMP].astype("int64").tolist() if len(frame) else []
    assert got_ms == [stamp_ms(f[1]) for f in fields]


def test_corpus_is_built_from_real_lines_as_specified(
    corpus: Corpus, real_lines: list[bytes]
) -> None:
    assert len(corpus.lines) == len(real_lines) == 5000
    counts = Counter(corpus.kinds.values())
    assert counts == {kind: count for kind, (_, count) in MUTATIONS.items()}
    assert len(corpus.kinds) == 2000 and len(corpus.expected_rejects) == 1272
    changed = [n for n in range(1, 5001) if corpus.lines[n - 1] != real_lines[n - 1]]
    # A mutation may by chance reproduce the line (a quote inserted into a quoted name cannot).
    assert set(changed) <= set(corpus.kinds) and len(changed) >= 1990
    assert sum(len(line) >= HUGE for line in corpus.lines) == 4
    assert build_corpus(real_lines).lines == corpus.lines  # seeded: the same corpus every run


def test_corpus_every_line_accounted_with_line_number_and_reason(
    corpus: Corpus, corpus_file: Path, tmp_path: Path
) -> None:
    result = read_plays(corpus_file, tmp_path)
    assert result.rows_in == 5000 == len(result.frame) + result.rows_rejected
    assert result.rows_rejected == len(corpus.expected_rejects) == 1272
    rejects = read_rejects(result.rejects_path)
    assert list(rejects.columns) == C.REJECTS_COLUMNS
    assert rejects["line_number"].tolist() == sorted(corpus.expected_rejects)
    wrong = [(n, corpus.kinds[n], got) for n, got in zip(rejects["line_number"],
                                                          rejects["reason"], strict=True)
             if got != corpus.expected_rejects[n]]
    assert wrong == []
    texts = [corpus.lines[n - 1].decode("utf-8", errors="replace") for n in rejects["line_number"]]
    assert rejects["line"].tolist() == texts
    assert result.frame[LINE_NUMBER].tolist() == corpus.kept_line_numbers()


def test_corpus_kept_rows_equal_their_source_fields_byte_for_byte(
    corpus: Corpus, corpus_file: Path
) -> None:
    frame = read_plays(corpus_file).frame
    kept = [corpus.lines[n - 1] for n in frame[LINE_NUMBER]]
    check_kept_rows(frame, kept)
    # The check covers what it is meant to: quotes, non-ASCII, control text, 1 MB fields.
    assert sum(b'"' in line for line in kept) >= 250
    assert sum(any(b >= 0x80 for b in line) for line in kept) >= 800
    assert sum(b"\x00" in line or b"\x0b" in line for line in kept) >= 10
    assert sum(len(line) >= HUGE for line in kept) == 2
    assert {"NA", "null", "nan"} <= set(frame[C.USER_ID])
    assert frame[C.ARTIST_NAME].isna().sum() == frame[C.TRACK_NAME].isna().sum() == 0


def test_corpus_kept_user_ids_are_safe_folder_names(corpus_file: Path) -> None:
    users = set(read_plays(corpus_file).frame[C.USER_ID])
    unsafe = [u for u in users if not FOLDER_SAFE.fullmatch(u)]
    assert unsafe == []


@pytest.mark.parametrize("chunk_bytes", [4093, 65_537, HUGE + 3])
def test_corpus_chunk_boundaries_do_not_matter(
    corpus: Corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_bytes: int
) -> None:
    # Without a final newline the last line is still a line.
    path = tmp_path / C.PLAYS_FILE
    path.write_bytes(corpus.data(final_newline=False))
    whole = read_plays(path, tmp_path / "whole")
    monkeypatch.setattr(plays_reader, "CHUNK_BYTES", chunk_bytes)
    chunked = read_plays(path, tmp_path / "chunked")
    assert (chunked.rows_in, chunked.rows_rejected) == (whole.rows_in, whole.rows_rejected)
    pd.testing.assert_frame_equal(chunked.frame, whole.frame)
    assert chunked.rejects_path.read_bytes() == whole.rejects_path.read_bytes()


def test_corpus_through_the_stages_keeps_every_user_inside_work(
    corpus_file: Path, sample_dir: Path, tmp_path: Path
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / C.PLAYS_FILE).write_bytes(corpus_file.read_bytes())
    (raw / C.PROFILE_FILE).write_bytes((sample_dir / "userid-profile.tsv").read_bytes())
    work = tmp_path / "work"
    build_unique_tracks(raw, work)
    build_track_metadata(work, CrawlParams(), None, "http://localhost:1/", progress=False)
    summary = denormalize(raw, work)
    assert (summary["plays_in"], summary["plays_rejected"]) == (5000, 1272)
    assert summary["plays_out"] == 5000 - 1272
    kept_users = set(read_plays(corpus_file).frame[C.USER_ID])
    user_dir = WorkLayout(work).user_dir
    assert {p.name for p in user_dir.iterdir() if p.is_dir()} == kept_users
    # Nothing was written beside the inputs and WORK, and WORK holds only the stage folders
    # (and the stage locks, named after them).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "work"]
    assert sorted(p.name for p in raw.iterdir()) == sorted([C.PLAYS_FILE, C.PROFILE_FILE])
    assert {p.name for p in work.iterdir()} == {"tracks", "user_dir", "rejects", LOCK_DIR}
    assert sorted(p.name for p in (work / LOCK_DIR).iterdir()) == ["tracks.lock", "user_dir.lock"]
    files = [p.relative_to(user_dir) for p in user_dir.rglob("*") if p.is_file()]
    assert all(len(f.parts) == 2 or f.name == MANIFEST for f in files)


def test_mostly_malformed_corpus_is_one_line_error(
    corpus: Corpus, real_lines: list[bytes], tmp_path: Path
) -> None:
    # The first 2,000 real lines (well past the first 64 KiB) are intact; 3,000 damaged follow.
    damaged = [corpus.lines[n - 1] for n in sorted(corpus.expected_rejects)]
    rng = random.Random(SEED)
    tail = [rng.choice(damaged) for _ in range(3000)]
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / C.PLAYS_FILE).write_bytes(b"\n".join(real_lines[:2000] + tail) + b"\n")
    result = subprocess.run(
        [sys.executable, "-m", "utils.cli", "tracks", "--raw", str(raw), "--work",
         str(tmp_path / "work")], capture_output=True, text=True, timeout=300)
    assert result.returncode == SessionlenError.exit_code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert C.PLAYS_FILE in lines[0]
    assert "not a Last.fm 1K plays file: 3,000 of 5,000 lines malformed" in lines[0]
    assert "(first on line 2001;" in lines[0]
    assert not (tmp_path / "work" / "tracks" / MANIFEST).exists()


# --- property: real lines under random byte damage, against the rules written plainly ---------

def verdict(line: bytes) -> tuple[int, int]:
    """The reason code the format's rules give a line (0 = keep), and its field count."""
    fields = line.split(b"\t")
    if not line:
        return raw_lines.EMPTY_LINE, 1
    if b"\r" in line:
        return raw_lines.CARRIAGE_RETURN, len(fields)
    if len(fields) != N_FIELDS:
        return raw_lines.FIELD_COUNT, len(fields)
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return raw_lines.INVALID_UTF8, N_FIELDS
    user = fields[0].decode()
    if not FOLDER_SAFE.fullmatch(user):
        return raw_lines.BAD_USER_ID, N_FIELDS
    if stamp_ms(fields[1]) is None:
        return raw_lines.BAD_TIMESTAMP, N_FIELDS
    if not fields[3]:
        return raw_lines.EMPTY_ARTIST, N_FIELDS
    if not fields[5]:
        return raw_lines.EMPTY_TRACK, N_FIELDS
    return raw_lines.OK, N_FIELDS


def file_lines(data: bytes) -> list[bytes]:
    """The lines of a file: split on LF only; a last line needs no LF."""
    if not data:
        return []
    return (data[:-1] if data.endswith(b"\n") else data).split(b"\n")


# Bytes that hit the format's rules, mixed with arbitrary ones.
STRUCTURAL = [b"\t", b"\r", b"\n", b"\x00", b'"', b"/", b".", b" ", b"Z", b"T", b"-", b":",
              b"0", b"9", b"\xff", b"\xc3", b"\xa9", "\u00e9".encode(), "\u2028".encode()]
_pieces = st.one_of(
    st.lists(st.sampled_from(STRUCTURAL), min_size=1, max_size=4).map(b"".join),
    st.binary(min_size=1, max_size=4),
)
# Two lines in three stay intact, so most files stay under the "mostly malformed" refusal.
_damage = st.one_of(st.none(), st.none(), st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 300), _pieces),
    st.tuples(st.just("delete"), st.integers(0, 300), st.integers(1, 40)),
    st.tuples(st.just("field"), st.integers(0, N_FIELDS - 1), st.one_of(
        _pieces, st.just(b""), st.sampled_from(ESCAPING_USER_IDS + ODD_VALID_USER_IDS),
        st.sampled_from([b"2008-02-29T12:00:00Z", b"0000-02-29T00:00:00Z",
                         b"9999-12-31T23:59:59Z", b"1969-12-31T23:59:59Z"]),
    )),
))


def damaged(line: bytes, damage: tuple | None) -> bytes:
    """A real line with one random damage applied."""
    if damage is None:
        return line
    kind, where, what = damage
    if kind == "insert":
        at = where % (len(line) + 1)
        return line[:at] + what + line[at:]
    if kind == "delete":
        at = where % (len(line) + 1)
        return line[:at] + line[at + what:]
    return _join(_with_field(line.split(b"\t"), where, what))


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    picks=st.lists(st.tuples(st.integers(0, 4999), _damage), min_size=1, max_size=30),
    final_newline=st.booleans(),
    chunk_bytes=st.integers(1, 700),
)
def test_property_reader_matches_the_rules_on_damaged_real_lines(
    tmp_path_factory: pytest.TempPathFactory, real_lines: list[bytes],
    picks: list[tuple[int, tuple | None]], final_newline: bool, chunk_bytes: int,
) -> None:
    folder = tmp_path_factory.mktemp("prop")
    data = b"\n".join(damaged(real_lines[i], d) for i, d in picks)
    data += b"\n" if final_newline else b""
    path = folder / C.PLAYS_FILE
    path.write_bytes(data)
    lines = file_lines(data)
    verdicts = [verdict(line) for line in lines]
    rejected = [(n, reason(code, got), line) for n, ((code, got), line)
                in enumerate(zip(verdicts, lines, strict=True), start=1) if code]
    for code in {code for code, _ in verdicts}:
        event(f"has lines with code {code}")
    event("refused: empty" if not lines else "refused: mostly malformed"
          if 2 * len(rejected) > len(lines) else "read")
    if not lines:
        with pytest.raises(SessionlenError, match="empty file"):
            read_plays(path)
        return
    if 2 * len(rejected) > len(lines):
        with pytest.raises(SessionlenError, match="not a Last.fm 1K plays file"):
            read_plays(path, folder)
        assert not raw_lines.rejects_file(path, folder).exists()
        return
    results = [read_plays(path, folder / "default")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plays_reader, "CHUNK_BYTES", chunk_bytes)
        results.append(read_plays(path, folder / "chunked"))
    kept = [(n, line) for n, ((code, _), line) in enumerate(zip(verdicts, lines, strict=True),
                                                           start=1) if not code]
    for result in results:
        assert result.rows_in == len(lines) == len(result.frame) + result.rows_rejected
        frame = result.frame
        assert frame[LINE_NUMBER].tolist() == [n for n, _ in kept]
        check_kept_rows(frame, [line for _, line in kept])
        if not rejected:
            assert result.rejects_path is None
            continue
        rejects = read_rejects(result.rejects_path)
        assert list(rejects.itertuples(index=False, name=None)) == [
            (n, why, line.decode("utf-8", errors="replace")) for n, why, line in rejected]


# --- the Spark reader on the same corpus -------------------------------------------------------

@pytest.mark.spark
@pytest.mark.slow
def test_spark_reader_gives_the_same_rows_and_rejects_bytes(
    corpus_file: Path, tmp_path: Path
) -> None:
    from pyspark.sql import functions as F

    from utils.data_processing.plays_spark import (
        LINE,
        ROW_ID,
        TS_S,
        account_lines,
        line_number,
        partition_offsets,
        read_plays_spark,
    )
    from utils.data_processing.spark_stages import spark_session

    local = read_plays(corpus_file, tmp_path / "local")
    spark: SparkSession = spark_session("local[2]")
    spark.sparkContext.setLogLevel("ERROR")
    # Small input splits: lines (the 1 MB ones too) straddle split boundaries.
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(256 << 10))
    try:
        plays = read_plays_spark(spark, corpus_file)
        numbers = line_number(partition_offsets(spark, corpus_file)).alias(LINE)
        table = plays.kept.orderBy(ROW_ID).select(
            numbers, C.USER_ID, (F.col(TS_S) * 1000).alias(C.TIMESTAMP), C.ARTIST_MBID,
            C.ARTIST_NAME, C.TRACK_MBID, C.TRACK_NAME).toArrow()
        counts = account_lines(spark, plays, tmp_path / "spark")
        partitions = plays.kept.rdd.getNumPartitions()
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
        spark.stop()
    assert partitions > 1
    assert (counts["rows_in"], counts["rows_rejected"]) == (local.rows_in, local.rows_rejected)
    frame = local.frame
    assert table[LINE].to_pylist() == frame[LINE_NUMBER].tolist()
    assert table[C.TIMESTAMP].to_pylist() == frame[C.TIMESTAMP].astype("int64").tolist()
    for column in (C.USER_ID, C.ARTIST_MBID, C.ARTIST_NAME, C.TRACK_MBID, C.TRACK_NAME):
        want = frame[column].astype(object).where(frame[column].notna(), None).tolist()
        assert table[column].to_pylist() == want, column
    assert Path(counts["rejects_path"]).read_bytes() == local.rejects_path.read_bytes()
