"""The denormalize stage (local engine): the age rule, play order, joins, CSV bytes, manifest."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_tracks import copy_excerpt, raw_plays_frame, write_raw

from utils.core import columns as C
from utils.core.config import WorkLayout
from utils.core.errors import SessionlenError, StageIncompleteError
from utils.core.stage_io import MANIFEST, write_manifest
from utils.data_processing.denormalize import denormalize
from utils.data_processing.denormalize_fields import USER_FILE, calendar_parts, whole_years
from utils.data_processing.denormalize_local import file_order_runs, spelling_pairs
from utils.data_processing.track_metadata import read_metadata_table
from utils.data_processing.track_rules import name_key
from utils.data_processing.tracks import build_unique_tracks, play_order, read_unique_tracks


def write_metadata(work: Path, rows: Sequence[Sequence[object]]) -> Path:
    """A finished metadata stage: track_metadata.csv with `rows` and its manifest entry."""
    layout = WorkLayout(work)
    layout.tracks.mkdir(parents=True, exist_ok=True)
    with open(layout.track_metadata, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(C.TRACK_METADATA_COLUMNS)
        writer.writerows(rows)
    write_manifest(layout.tracks, "metadata", inputs=[], parameters={}, rows_in=len(rows),
                   rows_out=len(rows), rows_rejected=0, outputs=[layout.track_metadata.name],
                   timings={})
    return layout.track_metadata


def metadata_from_tracks(raw: Path, work: Path) -> pd.DataFrame:
    """Run the tracks stage, then a stand-in metadata stage over its output."""
    build_unique_tracks(raw, work)
    return fake_metadata_stage(work)


def fake_metadata_stage(work: Path) -> pd.DataFrame:
    """A stand-in metadata stage over unique_tracks.csv; the tracks given metadata.

    Durations are the gap medians plus half a millisecond (rounding is exercised), 240 s when
    unknown; every seventh track is left without metadata; genres hold commas and quotes.
    """
    tracks = read_unique_tracks(WorkLayout(work).unique_tracks)
    tracks = tracks[np.arange(len(tracks)) % 7 != 3]
    genre = np.where(np.arange(len(tracks)) % 3 == 0, 'rock|pop, "indie"', "jazz")
    duration = tracks[C.GAP_MEDIAN_S].fillna(240.0).to_numpy() + 0.0005
    write_metadata(work, list(zip(tracks[C.ARTIST_KEY], tracks[C.TRACK_KEY], duration.tolist(),
                                  genre, ["estimated"] * len(tracks), strict=True)))
    return tracks


def user_rows(work: Path, user: str) -> list[list[str]]:
    """A user's file parsed with the csv module (header included)."""
    text = (WorkLayout(work).user_dir / user / USER_FILE).read_text(encoding="utf-8")
    return list(csv.reader(io.StringIO(text, newline="")))


def stamp_parts(text: str) -> tuple[np.ndarray, np.ndarray]:
    """calendar_parts of one ISO timestamp."""
    seconds = int(pd.Timestamp(text, tz="UTC").timestamp())
    return calendar_parts(np.array([seconds], dtype=np.int64))


@pytest.mark.parametrize(("registered", "played", "years"), [
    ("2006-08-13", "2007-08-12T23:59:59", 0),
    ("2006-08-13", "2007-08-13T00:00:00", 1),
    ("2006-08-13", "2009-05-04T23:08:57", 2),
    ("2006-08-13", "2006-08-12T23:59:59", 0),
    ("2006-08-13", "2005-08-13T00:00:00", -1),
    ("2006-08-13", "2005-08-13T00:00:01", 0),
    ("2008-02-29", "2009-02-28T23:59:59", 0),
    ("2008-02-29", "2009-03-01T00:00:00", 1),
    ("2008-02-29", "2012-02-29T00:00:00", 4),
])
def test_whole_years_are_anniversary_exact(registered: str, played: str, years: int) -> None:
    reg_year, reg_key = stamp_parts(registered)
    play_year, play_key = stamp_parts(played)
    assert whole_years(reg_year, reg_key, play_year, play_key).tolist() == [years]


def hand_made_raw(raw: Path) -> Path:
    """Four profiled users (one without age and date, one without date) and one unprofiled."""
    plays = [
        ["u1", "2007-08-13T00:00:00Z", "", "The Band", "", 'Song, "A"'],
        ["u1", "2007-08-12T23:59:59Z", "", "The Band", "", 'Song, "A"'],
        ["u1", "2007-08-12T23:59:59Z", "", "Other Artist", "", "X"],
        ["u1", "2005-08-13T00:00:01Z", "", "A", "", "B"],
        ["u1", "2005-08-13T00:00:00Z", "", "A", "", "B"],
        ["u2", "2009-01-01T00:00:00Z", "", "A", "", "B"],
        ["u3", "2009-01-01T00:00:00Z", "", "A", "", "B"],
        ["u4", "2009-01-01T00:00:00Z", "", "A", "", "B"],
        ["u5", "2012-02-29T00:00:00Z", "", "a ", "", "b"],
        ["u5", "2009-03-01T00:00:00Z", "", "A", "", "B"],
        ["u5", "2009-02-28T12:00:00Z", "", "A", "", "B"],
    ]
    profiles = [
        ["u1", "m", "20", "Korea, Republic of", "Aug 13, 2006"],
        ["u2", "f", "", "Peru", ""],
        ["u4", "", "30", "", ""],
        ["u5", "f", "25", "Japan", "Feb 29, 2008"],
    ]
    return write_raw(raw, plays, profiles)


def test_hand_made_users_exact_files(tmp_path: Path) -> None:
    raw, work = hand_made_raw(tmp_path / "raw"), tmp_path / "work"
    write_metadata(work, [["the band", 'song, "a"', 123.4564, "rock|pop, indie", "api"],
                          ["a", "b", 200, "", "default"]])
    summary = denormalize(raw, work)
    korea = '"Korea, Republic of",2006-08-13'
    assert (WorkLayout(work).user_dir / "u1" / USER_FILE).read_text(encoding="utf-8") == (
        ",".join(C.USER_DIR_COLUMNS) + "\n"
        f"u1,2005-08-13T00:00:00Z,A,B,m,19,{korea},200.000,\n"
        f"u1,2005-08-13T00:00:01Z,A,B,m,20,{korea},200.000,\n"
        # Same second: the later line of the (newest-first) file is the earlier play.
        f"u1,2007-08-12T23:59:59Z,Other Artist,X,m,20,{korea},,\n"
        f'u1,2007-08-12T23:59:59Z,The Band,"Song, ""A""",m,20,{korea},123.456,"rock|pop, indie"\n'
        f'u1,2007-08-13T00:00:00Z,The Band,"Song, ""A""",m,21,{korea},123.456,"rock|pop, indie"\n'
    )
    assert user_rows(work, "u2")[1] == [
        "u2", "2009-01-01T00:00:00Z", "A", "B", "f", "", "Peru", "", "200.000", ""]
    assert user_rows(work, "u3")[1][4:8] == ["", "", "", ""]
    assert user_rows(work, "u4")[1][4:8] == ["", "30", "", ""]
    assert [row[5] for row in user_rows(work, "u5")[1:]] == ["25", "26", "29"]
    assert user_rows(work, "u5")[3][2:4] == ["a ", "b"]
    assert summary["users"] == 5 and summary["plays_out"] == 11
    assert (summary["users_without_profile"], summary["plays_without_profile"]) == (1, 1)
    assert summary["plays_without_metadata"] == 1
    manifest = json.loads((WorkLayout(work).user_dir / MANIFEST).read_text())["denormalize"]
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_rejected"]) == (11, 11, 0)
    assert manifest["parameters"]["join_counts"]["users_without_profile"] == 1
    assert manifest["outputs"] == ["u1", "u2", "u3", "u4", "u5"]


def test_real_excerpt_two_users_every_play_once(sample_dir: Path, tmp_path: Path) -> None:
    raw, work = copy_excerpt(sample_dir, tmp_path / "raw"), tmp_path / "work"
    metadata_from_tracks(raw, work)
    summary = denormalize(raw, work)
    user_dir = WorkLayout(work).user_dir
    assert sorted(p.name for p in user_dir.iterdir() if p.is_dir()) == [
        "user_000001", "user_000002"]
    first = pd.read_csv(user_dir / "user_000001" / USER_FILE, dtype=str, keep_default_na=False)
    second = pd.read_csv(user_dir / "user_000002" / USER_FILE, dtype=str, keep_default_na=False)
    assert (len(first), len(second)) == (4997, 3)
    assert summary["plays_in"] == summary["plays_out"] == 5000
    assert summary["plays_rejected"] == 0 and summary["users_without_profile"] == 0
    assert first[C.TIMESTAMP].is_monotonic_increasing
    # user_000001: m, no age, Japan, Aug 13, 2006 in the real profile file.
    assert set(map(tuple, first[[C.GENDER, C.AGE, C.COUNTRY, C.REGISTERED]].to_numpy())) == {
        ("m", "", "Japan", "2006-08-13")}
    raw_names = raw_plays_frame(raw)
    assert sorted(first[C.TRACK_NAME]) == sorted(
        raw_names.loc[raw_names[C.USER_ID] == "user_000001", C.TRACK_NAME])


def test_tiny_synthetic_files_join_profiles_and_metadata(tmp_path: Path) -> None:
    from utils.synthetic.generate import generate_dataset

    raw, work = tmp_path / "raw", tmp_path / "work"
    generate_dataset(raw, scale="tiny", seed=1)
    tracks = metadata_from_tracks(raw, work)
    summary = denormalize(raw, work)
    files = sorted(WorkLayout(work).user_dir.glob(f"*/{USER_FILE}"))
    frame = pd.concat([pd.read_csv(f, dtype=str, keep_default_na=False) for f in files])
    assert len(frame) == summary["plays_out"] == summary["plays_in"] - summary["plays_rejected"]
    assert len(files) == summary["users"] == 24
    assert frame[C.DURATION].str.fullmatch(r"(\d+\.\d{3})?").all()
    keys = pd.Series([name_key(a) + "\t" + name_key(t) for a, t in zip(
        frame[C.ARTIST_NAME], frame[C.TRACK_NAME], strict=True)])
    known = set(tracks[C.ARTIST_KEY] + "\t" + tracks[C.TRACK_KEY])
    assert ((frame[C.DURATION] != "").to_numpy() == keys.isin(known).to_numpy()).all()
    assert summary["plays_without_metadata"] == int((~keys.isin(known)).sum()) > 0
    for path in files:
        stamps = pd.read_csv(path, usecols=[C.TIMESTAMP])[C.TIMESTAMP]
        assert stamps.is_monotonic_increasing, path


def test_missing_metadata_stage_names_the_command_to_run(tmp_path: Path) -> None:
    raw = hand_made_raw(tmp_path / "raw")
    build_unique_tracks(raw, tmp_path / "work")
    with pytest.raises(StageIncompleteError, match="run `sessionlen metadata` first"):
        denormalize(raw, tmp_path / "work")
    assert not WorkLayout(tmp_path / "work").user_dir.exists()


@pytest.mark.parametrize("missing", [C.PLAYS_FILE, C.PROFILE_FILE])
def test_missing_raw_file_is_a_one_line_error(tmp_path: Path, missing: str) -> None:
    raw, work = hand_made_raw(tmp_path / "raw"), tmp_path / "work"
    write_metadata(work, [["a", "b", 200, "", "default"]])
    (raw / missing).unlink()
    with pytest.raises(SessionlenError, match=missing):
        denormalize(raw, work)


@pytest.mark.parametrize(("rows", "message"), [
    ([["a", "b", -1, "", "api"]], "line 2: duration '-1'"),
    ([["a", "b", 1, "", "api"], ["x", "y", "long", "", "api"]], "line 3: duration 'long'"),
    ([["a", "b", 1, "", "api"], ["a", "b", 2, "", "api"]], "line 3: duplicate"),
])
def test_bad_metadata_values_name_file_and_line(tmp_path: Path, rows: list, message: str
                                                ) -> None:
    raw, work = hand_made_raw(tmp_path / "raw"), tmp_path / "work"
    write_metadata(work, rows)
    with pytest.raises(SessionlenError, match=f"track_metadata.csv: {message}"):
        denormalize(raw, work)


def test_rerun_replaces_the_whole_user_dir(tmp_path: Path) -> None:
    raw, work = hand_made_raw(tmp_path / "raw"), tmp_path / "work"
    write_metadata(work, [["a", "b", 200, "", "default"]])
    denormalize(raw, work)
    write_raw(raw, [["u9", "2009-01-01T00:00:00Z", "", "A", "", "B"]])
    summary = denormalize(raw, work)
    assert sorted(p.name for p in WorkLayout(work).user_dir.iterdir()) == [MANIFEST, "u9"]
    assert summary["users_without_profile"] == 1


@pytest.mark.parametrize(("users", "seconds", "file_layout"), [
    ([0, 0, 0, 1, 1, 2], [9, 5, 5, 7, 7, 1], True),
    ([0, 0, 1, 1, 0], [9, 5, 7, 3, 1], False),
    ([0, 0, 1], [5, 9, 7], False),
    ([], [], True),
])
def test_file_layout_order_is_play_order(users: list[int], seconds: list[int],
                                         file_layout: bool) -> None:
    """Blocks of users newest first take the fast path, to the same order; others do not."""
    user_codes, ts_s = np.array(users, dtype=np.int64), np.array(seconds, dtype=np.int64)
    order = file_order_runs(user_codes, ts_s)
    assert (order is not None) == file_layout
    if order is not None:
        assert order.tolist() == play_order(user_codes, ts_s).tolist()


def test_metadata_table_reads_what_pandas_reads(tmp_path: Path) -> None:
    """Empty durations are null; values Arrow refuses but pandas reads are kept as pandas
    reads them."""
    path = write_metadata(tmp_path, [["a", "b", "", "", "api"], ["c", "d", " 1.5", "x,y", "api"]])
    table = read_metadata_table(path)
    assert table[C.DURATION].to_pylist() == [None, 1.5]
    assert table[C.GENRE].to_pylist() == ["", "x,y"]


def test_user_ids_of_different_lengths_write_the_same_lines(tmp_path: Path) -> None:
    """Ids of one length are written with the start times as one byte matrix; ids of mixed
    lengths take the general path, to the same lines."""
    lines = {}
    for second in ("u2", "user2"):
        raw, work = tmp_path / second / "raw", tmp_path / second / "work"
        write_raw(raw, [["u1", "2009-01-02T03:04:05Z", "", "A", "", "B"],
                        [second, "2009-01-01T00:00:00Z", "", "A", "", "B"]],
                  [["u1", "m", "20", "Peru", ""]])
        write_metadata(work, [["a", "b", 200, "", "default"]])
        denormalize(raw, work)
        lines[second] = [user_rows(work, user)[1] for user in ("u1", second)]
    assert lines["u2"][0] == lines["user2"][0] == [
        "u1", "2009-01-02T03:04:05Z", "A", "B", "m", "20", "Peru", "", "200.000", ""]
    assert lines["u2"][1][1:] == lines["user2"][1][1:]
    assert lines["user2"][1][0] == "user2"


def test_freed_memory_is_kept_where_glibc_is_the_c_library() -> None:
    """The heap setting applies on glibc and is skipped (False) elsewhere, never an error."""
    import platform

    from utils.core.arrow_memory import keep_freed_memory

    assert keep_freed_memory() == (platform.libc_ver()[0] == "glibc")


def test_spelling_pairs_are_every_distinct_pair_once() -> None:
    """Titles played under one artist and under several: each distinct pair gets one id."""
    artists = np.array([0, 1, 0, 2, 1, 0, 2], dtype=np.int64)
    titles = np.array([0, 0, 1, 2, 0, 0, 2], dtype=np.int64)
    ids, pair_artist, pair_title = spelling_pairs(artists, titles, 3)
    assert pair_artist[ids].tolist() == artists.tolist()
    assert pair_title[ids].tolist() == titles.tolist()
    assert sorted(zip(pair_artist.tolist(), pair_title.tolist(), strict=True)) == [
        (0, 0), (0, 1), (1, 0), (2, 2)]
