"""The raw Last.fm 1K readers, on the real files and on damaged copies of real lines."""

from __future__ import annotations

import operator
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utils.core.columns import PLAYS_COLUMNS, PROFILE_COLUMNS, REJECTS_COLUMNS
from utils.core.errors import SessionlenError
from utils.data_processing import plays_reader, raw_lines
from utils.data_processing.plays_reader import LINE_NUMBER, read_plays, read_plays_arrow
from utils.data_processing.profile_reader import read_profiles

PLAYS_SAMPLE = "plays-excerpt.tsv"
PROFILE_SAMPLE = "userid-profile.tsv"


@pytest.fixture(scope="module")
def plays(sample_dir: Path) -> raw_lines.ReadResult:
    return read_plays(sample_dir / PLAYS_SAMPLE)


@pytest.fixture(scope="module")
def profiles(sample_dir: Path) -> raw_lines.ReadResult:
    return read_profiles(sample_dir / PROFILE_SAMPLE)


@pytest.fixture(scope="module")
def real_lines(sample_dir: Path) -> list[bytes]:
    return (sample_dir / PLAYS_SAMPLE).read_bytes().split(b"\n")[:-1]


def _rejects(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"line": str}, keep_default_na=False)


def test_plays_excerpt_counts(plays: raw_lines.ReadResult) -> None:
    frame = plays.frame
    assert (plays.rows_in, plays.rows_rejected, plays.rejects_path) == (5000, 0, None)
    assert list(frame.columns) == [*PLAYS_COLUMNS, LINE_NUMBER]
    assert frame[LINE_NUMBER].tolist() == list(range(1, 5001))
    assert frame["user_id"].value_counts().to_dict() == {"user_000001": 4997, "user_000002": 3}
    assert frame["artist_mbid"].isna().sum() == 353
    assert frame["track_mbid"].isna().sum() == 1396
    # Rows repeating an earlier (user, timestamp): each of the 166 pairs occurs exactly twice.
    pair_sizes = frame.groupby(["user_id", "timestamp"]).size()
    assert frame.duplicated(["user_id", "timestamp"]).sum() == 166
    assert (pair_sizes > 1).sum() == 166 and pair_sizes.max() == 2
    names = frame[["artist_name", "track_name"]]
    non_ascii = names.apply(lambda s: s.str.contains(r"[^\x00-\x7f]"))
    assert non_ascii.any(axis=1).sum() == 1076


def test_plays_excerpt_types_and_first_rows(plays: raw_lines.ReadResult) -> None:
    frame = plays.frame
    assert str(frame["timestamp"].dtype) == "datetime64[ms, UTC]"
    for column in ("user_id", "artist_mbid", "artist_name", "track_mbid", "track_name"):
        assert frame[column].dtype == pd.StringDtype("pyarrow"), column
    assert frame[LINE_NUMBER].dtype == np.int64
    first = frame.iloc[0]
    assert first["user_id"] == "user_000001"
    assert first["timestamp"] == pd.Timestamp("2009-05-04T23:08:57", tz="UTC")
    assert first["artist_mbid"] == "f1b1cf71-bd35-4e99-8624-24a6e15f133a"
    assert first["artist_name"] == "Deep Dish"
    assert pd.isna(first["track_mbid"])
    assert first["track_name"] == "Fuck Me Im Famous (Pacha Ibiza)-09-28-2007"
    assert frame.iloc[1]["artist_name"] == "坂本龍一"
    assert frame.iloc[1]["track_name"] == "Composition 0919 (Live_2009_4_15)"
    last = frame.iloc[-1]
    assert (last["user_id"], last["timestamp"]) == (
        "user_000002", pd.Timestamp("2008-12-08T06:04:00", tz="UTC"))
    # Quote characters are text: the real line 1491 keeps them.
    assert frame.loc[frame[LINE_NUMBER] == 1491, "artist_name"].item() == 'Johnny "Hammond" Smith'
    # Newest first within a user, as published.
    assert frame["timestamp"].iloc[:4997].is_monotonic_decreasing


def test_read_plays_arrow_carries_counts(sample_dir: Path) -> None:
    table = read_plays_arrow(sample_dir / PLAYS_SAMPLE)
    assert table.num_rows == 5000
    assert table.schema.metadata[b"rows_in"] == b"5000"
    assert table.schema.metadata[b"rows_rejected"] == b"0"
    assert str(table.schema.field("timestamp").type) == "timestamp[ms, tz=UTC]"


def test_profiles_real_file(profiles: raw_lines.ReadResult) -> None:
    frame = profiles.frame
    assert (profiles.rows_in, profiles.rows_rejected, len(frame)) == (992, 0, 992)
    assert list(frame.columns) == PROFILE_COLUMNS
    assert profiles.nullified == {"gender": 0, "age": 0, "registered": 0}
    missing = frame.isna().sum().to_dict()
    assert missing == {"user_id": 0, "gender": 108, "age": 706, "country": 85, "registered": 8}
    assert set(frame["gender"].dropna()) == {"m", "f"}
    assert (frame["age"].min(), frame["age"].max()) == (3, 103)
    assert str(frame["age"].dtype) == "Int64"
    assert str(frame["registered"].dtype) == "datetime64[ms, UTC]"
    assert frame["user_id"].is_unique
    first = frame.iloc[0].to_dict()
    assert first["user_id"] == "user_000001" and first["country"] == "Japan"
    assert first["registered"] == pd.Timestamp("2006-08-13", tz="UTC")
    with_commas = frame.set_index("user_id")["country"].dropna()
    with_commas = with_commas[with_commas.str.contains(",")].to_dict()
    assert with_commas == {
        "user_000214": "Korea, Democratic People's Republic of",
        "user_000224": "Congo, the Democratic Republic of the",
    }
    user_214 = frame.set_index("user_id").loc["user_000214"]
    assert user_214["age"] == 103 and pd.isna(user_214["gender"])
    assert user_214["registered"] == pd.Timestamp("2007-02-04", tz="UTC")


def _damaged_copy(lines: list[bytes]) -> tuple[list[bytes], dict[int, str]]:
    """Real lines with damage at known 1-based positions, and the reason expected for each."""
    out = list(lines[:40])
    expected = {}

    def damage(line_number: int, new: bytes, reason: str) -> None:
        out[line_number - 1] = new
        expected[line_number] = reason

    damage(3, out[2] + b"\textra", "expected 6 tab-separated fields, got 7")
    damage(5, out[4].rsplit(b"\t", 1)[0], "expected 6 tab-separated fields, got 5")
    damage(7, out[6].replace(b"2009-05-04T", b"2009-02-30T"), "invalid timestamp")
    damage(9, out[8].replace(b"Z\t", b"\t"), "invalid timestamp")
    damage(11, out[10].replace(b"\xe5\x9d\x82", b"\xe5\x9d"), "invalid UTF-8")
    damage(13, b"../x" + out[12][len(b"user_000001"):], "invalid user id")
    damage(15, b".." + out[14][len(b"user_000001"):], "invalid user id")
    damage(17, b"", "empty line")
    damage(19, out[18].replace(b"Z\t", b"Z\r\t"), "carriage return")
    damage(21, b"\t".join(out[20].split(b"\t")[:3] + [b""] + out[20].split(b"\t")[4:]),
           "empty artist name")
    # Quote characters must stay text: an unbalanced quote would make a CSV parser merge lines.
    fields = out[22].split(b"\t")
    out[22] = b"\t".join(fields[:5] + [b'"Unbalanced ' + fields[5]])
    fields = out[23].split(b"\t")
    out[23] = b"\t".join(fields[:3] + [b'Say "Hi"'] + fields[4:])
    return out, expected


def test_malformed_lines_go_to_rejects(tmp_path: Path, real_lines: list[bytes]) -> None:
    lines, expected = _damaged_copy(real_lines)
    path = tmp_path / "plays.tsv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = read_plays(path, tmp_path / "rejects")
    assert result.rejects_path == tmp_path / "rejects" / "plays.tsv.rejects.csv"
    rejects = _rejects(result.rejects_path)
    assert list(rejects.columns) == REJECTS_COLUMNS
    assert rejects["line_number"].tolist() == sorted(expected)
    for line_number, reason in zip(rejects["line_number"], rejects["reason"], strict=True):
        assert expected[line_number] in reason
    assert (result.rows_in, result.rows_rejected) == (40, len(expected))
    assert len(result.frame) + result.rows_rejected == result.rows_in
    kept = result.frame.set_index(LINE_NUMBER)
    assert kept.loc[23, "track_name"].startswith('"Unbalanced ')
    assert kept.loc[24, "artist_name"] == 'Say "Hi"'
    assert kept.loc[25, "track_name"] == real_lines[24].split(b"\t")[5].decode()
    by_line = rejects.set_index("line_number")["line"]
    assert by_line[3] == lines[2].decode()
    assert by_line[17] == ""
    assert "\ufffd" in by_line[11]
    assert "\r" in by_line[19]
    # Without a rejects folder the accounting is the same; nothing is written.
    counted_only = read_plays(path)
    assert (counted_only.rows_in, counted_only.rows_rejected) == (40, len(expected))
    assert counted_only.rejects_path is None
    pd.testing.assert_frame_equal(counted_only.frame, result.frame)


def test_chunk_boundaries_do_not_change_the_result(
    tmp_path: Path, real_lines: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines, _ = _damaged_copy(real_lines)
    lines = lines + real_lines[40:300]
    path = tmp_path / "plays.tsv"
    # No final newline: the last line still counts.
    path.write_bytes(b"\n".join(lines))
    whole = read_plays(path, tmp_path / "whole")
    monkeypatch.setattr(plays_reader, "CHUNK_BYTES", 997)
    chunked = read_plays(path, tmp_path / "chunked")
    pd.testing.assert_frame_equal(whole.frame, chunked.frame)
    assert whole.rows_in == chunked.rows_in == 300
    pd.testing.assert_frame_equal(_rejects(whole.rejects_path), _rejects(chunked.rejects_path))
    assert chunked.frame[LINE_NUMBER].iloc[-1] == 300


def test_stale_rejects_file_is_removed(tmp_path: Path, sample_dir: Path) -> None:
    stale = raw_lines.rejects_file(sample_dir / PLAYS_SAMPLE, tmp_path)
    stale.write_text("line_number,reason,line\n1,old,old\n")
    result = read_plays(sample_dir / PLAYS_SAMPLE, tmp_path)
    assert result.rejects_path is None and not stale.exists()


@pytest.mark.parametrize(
    ("text", "expected_ms"),
    [
        (b"2009-05-04T23:08:57Z", 1241478537000),
        (b"1970-01-01T00:00:00Z", 0),
        (b"2008-02-29T12:00:00Z", 1204286400000),
        (b"2009-02-29T12:00:00Z", None),
        (b"2009-02-30T00:00:00Z", None),
        (b"2009-04-31T00:00:00Z", None),
        (b"2009-05-04T24:00:00Z", None),
        (b"2009-05-04T23:60:00Z", None),
        (b"2009-05-04T23:08:60Z", None),
        (b"2009-00-04T23:08:57Z", None),
        (b"2009-05-00T23:08:57Z", None),
        (b" 009-05-04T23:08:57Z", None),
        (b"2009-05-04 23:08:57Z", None),
        (b"2009-05-04T23:08:57+", None),
        (b"2009/05/04T23:08:57Z", None),
    ],
)
def test_timestamp_parser_is_strict(text: bytes, expected_ms: int | None) -> None:
    ms, ok = plays_reader.parse_timestamp_text(np.frombuffer(text, dtype=np.uint8).reshape(1, -1))
    assert bool(ok[0]) == (expected_ms is not None)
    if expected_ms is not None:
        assert ms[0] == expected_ms


def test_missing_and_wrong_format_files(tmp_path: Path, sample_dir: Path) -> None:
    with pytest.raises(SessionlenError, match="nope.tsv"):
        read_plays(tmp_path / "nope.tsv")
    with pytest.raises(SessionlenError, match="nope.tsv"):
        read_profiles(tmp_path / "nope.tsv")
    with pytest.raises(SessionlenError, match=r"not a Last\.fm 1K plays file.*got 5"):
        read_plays(sample_dir / PROFILE_SAMPLE)
    with pytest.raises(SessionlenError, match=r"not a Last\.fm 1K profile file: line 1"):
        read_profiles(sample_dir / PLAYS_SAMPLE)
    binary = tmp_path / "binary.tsv"
    binary.write_bytes(np.random.default_rng(1).integers(0, 256, 200_000, dtype=np.uint8)
                       .tobytes())
    with pytest.raises(SessionlenError, match=r"binary\.tsv: not a Last\.fm 1K plays file"):
        read_plays(binary, tmp_path / "rejects")
    assert not (tmp_path / "rejects").exists()
    empty = tmp_path / "empty.tsv"
    empty.write_bytes(b"")
    with pytest.raises(SessionlenError, match="empty file"):
        read_plays(empty)
    with pytest.raises(SessionlenError, match="line 1"):
        read_profiles(empty)


def test_mostly_malformed_beyond_the_first_lines(tmp_path: Path, real_lines: list[bytes]) -> None:
    # The first 64 KiB look right; the whole file is still mostly malformed.
    good = real_lines[:1000]
    bad = [line.rsplit(b"\t", 1)[0] for line in real_lines[1000:2100]]
    path = tmp_path / "plays.tsv"
    path.write_bytes(b"\n".join(good + bad) + b"\n")
    message = r"1,100 of 2,100 lines malformed \(first on line 1001"
    with pytest.raises(SessionlenError, match=message):
        read_plays(path)


PROFILE_HEADER_LINE = "#id\tgender\tage\tcountry\tregistered"


def test_profile_invalid_values_are_nullified_and_counted(tmp_path: Path) -> None:
    rows = [
        "user_000001\tm\t22\tJapan\tAug 13, 2006",
        "user_000002\tx\tabc\tPeru\tFoo 1, 2006",
        "user_000003\tf\t150\tUnited States\tFeb 30, 2007",
        "user_000004\t\t-3\t\t2006-04-26",
        "user_000005\tf\t0\tKorea, Republic of\tFeb 29, 2008",
        "user_000001\tf\t30\tPeru\tAug 13, 2006",
        "bad/id\tm\t22\tJapan\tAug 13, 2006",
        "user_000006\tm\t22\tJapan",
    ]
    path = tmp_path / "userid-profile.tsv"
    path.write_text("\n".join([PROFILE_HEADER_LINE, *rows]) + "\n", encoding="utf-8")
    result = read_profiles(path, tmp_path)
    frame = result.frame.set_index("user_id")
    assert result.rows_in == 8 and result.rows_rejected == 3 and len(frame) == 5
    assert result.nullified == {"gender": 1, "age": 3, "registered": 3}
    assert frame.loc["user_000001", "age"] == 22
    assert pd.isna(frame.loc["user_000002", "gender"]) and pd.isna(frame.loc["user_000002", "age"])
    assert pd.isna(frame.loc["user_000003", "age"])
    assert pd.isna(frame.loc["user_000003", "registered"])
    assert pd.isna(frame.loc["user_000004", "country"])
    assert frame.loc["user_000005", "age"] == 0
    assert frame.loc["user_000005", "country"] == "Korea, Republic of"
    assert frame.loc["user_000005", "registered"] == pd.Timestamp("2008-02-29", tz="UTC")
    rejects = _rejects(result.rejects_path)
    # Line 1 is the header: the rows above start on line 2.
    assert rejects["line_number"].tolist() == [7, 8, 9]
    assert [r.split(" ")[0] for r in rejects["reason"]] == ["duplicate", "invalid", "expected"]


# --- property: random mixtures of valid and damaged lines -------------------------------------

_names = st.text(
    st.characters(blacklist_characters="\t\n\r", blacklist_categories=("Cs",)),
    min_size=1, max_size=12,
)
_mbids = st.one_of(st.just(""), st.uuids().map(str))
_user_ids = st.builds(operator.add, st.text(string.ascii_letters + string.digits, min_size=1,
                                             max_size=1),
                      st.text(string.ascii_letters + string.digits + "_.-", max_size=11))
_times = st.integers(0, 2_000_000_000).map(
    lambda s: pd.Timestamp(s, unit="s").strftime("%Y-%m-%dT%H:%M:%SZ"))
_valid_lines = st.tuples(_user_ids, _times, _mbids, _names, _mbids, _names).map("\t".join)


def _mutate(line: str, kind: int) -> bytes:
    """A damaged version of a valid line, invalid whatever the line was."""
    fields = line.split("\t")
    mutated: list[str] | bytes
    if kind == 0:
        mutated = fields[:-1]
    elif kind == 1:
        mutated = [*fields, "extra"]
    elif kind == 2:
        mutated = [fields[0], fields[1].replace("T", "t"), *fields[2:]]
    elif kind == 3:
        mutated = [".."] + fields[1:]
    elif kind == 4:
        mutated = fields[:3] + [""] + fields[4:]
    elif kind == 5:
        mutated = [fields[0], fields[1] + "\r", *fields[2:]]
    elif kind == 6:
        mutated = b""
    else:
        mutated = "\t".join(fields).encode() + b"\xff"
    return mutated if isinstance(mutated, bytes) else "\t".join(mutated).encode()


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(
        st.tuples(_valid_lines, st.one_of(st.none(), st.integers(0, 7))), min_size=1, max_size=25),
    final_newline=st.booleans(),
)
def test_property_every_line_accounted_for(
    tmp_path: Path, lines: list[tuple[str, int | None]], final_newline: bool
) -> None:
    raw = [line.encode() if kind is None else _mutate(line, kind) for line, kind in lines]
    # An unterminated empty last line would be no line at all: terminate it.
    terminated = final_newline or raw[-1] == b""
    path = tmp_path / "plays.tsv"
    path.write_bytes(b"\n".join(raw) + (b"\n" if terminated else b""))
    damaged = [i + 1 for i, (_, kind) in enumerate(lines) if kind is not None]
    if 2 * len(damaged) > len(lines):
        with pytest.raises(SessionlenError, match="not a Last.fm 1K plays file"):
            read_plays(path, tmp_path)
        return
    result = read_plays(path, tmp_path)
    assert result.rows_in == len(lines) == len(result.frame) + result.rows_rejected
    assert result.rows_rejected == len(damaged)
    frame = result.frame
    valid = [(i + 1, line) for i, (line, kind) in enumerate(lines) if kind is None]
    assert frame[LINE_NUMBER].tolist() == [n for n, _ in valid]
    rebuilt = (
        frame["user_id"] + "\t" + frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ") + "\t"
        + frame["artist_mbid"].fillna("") + "\t" + frame["artist_name"] + "\t"
        + frame["track_mbid"].fillna("") + "\t" + frame["track_name"]
    )
    assert rebuilt.tolist() == [line for _, line in valid]
    if damaged:
        assert _rejects(result.rejects_path)["line_number"].tolist() == damaged
    else:
        assert result.rejects_path is None


def test_encoded_columns_hold_the_same_text_and_only_kept_users(tmp_path: Path,
                                                                 real_lines: list[bytes]) -> None:
    """Encoded per chunk, the columns decode to the plain ones; an id whose every line was
    rejected (after the id check) leaves no value behind."""
    lost = [b"user_000777\t2009-02-30T10:00:00Z\t\tA\t\tB"] * 3
    path = tmp_path / "plays.tsv"
    path.write_bytes(b"\n".join(lost + real_lines[:300]) + b"\n")
    names = ("user_id", "artist_name", "track_name")
    plain = read_plays_arrow(path, columns=names)
    encoded = read_plays_arrow(path, columns=names, encoded=names)
    for name in names:
        codes, values = plays_reader.used_dictionary(encoded[name])
        assert values.take(codes).to_pylist() == plain[name].to_pylist()
    assert "user_000777" not in plays_reader.used_dictionary(encoded["user_id"])[1].to_pylist()
    with pytest.raises(SessionlenError, match="cannot be encoded"):
        read_plays_arrow(path, encoded=["timestamp"])
