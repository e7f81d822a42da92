"""The tracks stage (local engine): keys, spellings, in-session gaps, the CSV and its manifest."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from utils.core import columns as C
from utils.core.config import WorkLayout
from utils.core.errors import SessionlenError, StageIncompleteError
from utils.core.stage_io import MANIFEST, require_stage, write_manifest
from utils.data_processing.track_rules import name_key
from utils.data_processing.tracks import (
    build_unique_tracks,
    encode_keys,
    group_medians,
    most_frequent,
    play_order,
    read_unique_tracks,
)


def write_raw(raw: Path, plays: Sequence[Sequence[str]],
              profiles: Sequence[Sequence[str]] = ()) -> Path:
    """A raw directory in the real format: plays lines (6 fields) and a profile file."""
    raw.mkdir(parents=True, exist_ok=True)
    with open(raw / C.PLAYS_FILE, "w", encoding="utf-8", newline="") as fh:
        fh.writelines("\t".join(row) + "\n" for row in plays)
    with open(raw / C.PROFILE_FILE, "w", encoding="utf-8", newline="") as fh:
        fh.write("\t".join(C.PROFILE_HEADER) + "\n")
        fh.writelines("\t".join(row) + "\n" for row in profiles)
    return raw


def copy_excerpt(sample_dir: Path, raw: Path) -> Path:
    """The real 5,000-line excerpt and profile file as a raw directory."""
    raw.mkdir(parents=True, exist_ok=True)
    shutil.copy(sample_dir / "plays-excerpt.tsv", raw / C.PLAYS_FILE)
    shutil.copy(sample_dir / C.PROFILE_FILE, raw / C.PROFILE_FILE)
    return raw


def raw_plays_frame(raw: Path) -> pd.DataFrame:
    """The plays file parsed naively with quoting disabled (a reference, not the reader)."""
    frame = pd.read_csv(raw / C.PLAYS_FILE, sep="\t", header=None, names=C.PLAYS_COLUMNS,
                        quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
    frame["line"] = np.arange(1, len(frame) + 1)
    frame["ts"] = pd.to_datetime(frame[C.TIMESTAMP], utc=True).dt.as_unit("s").astype("int64")
    return frame


def reference_tracks(raw: Path) -> pd.DataFrame:
    """The unique-tracks table computed the slow, obvious way with pandas."""
    df = raw_plays_frame(raw)
    df[C.ARTIST_KEY] = [name_key(s) for s in df[C.ARTIST_NAME]]
    df[C.TRACK_KEY] = [name_key(s) for s in df[C.TRACK_NAME]]
    df = df.sort_values([C.USER_ID, "ts", "line"], ascending=[True, True, False])
    gap = df.groupby(C.USER_ID)["ts"].shift(-1) - df["ts"]
    df["gap"] = gap.where((gap > 0) & (gap <= 1800))
    keys = [C.ARTIST_KEY, C.TRACK_KEY]
    out = df.groupby(keys).agg(play_count=("line", "size"), gap_median_s=("gap", "median"),
                               gap_count=("gap", "count")).reset_index()
    artist = df.groupby(C.ARTIST_KEY)["gap"].median().rename(C.ARTIST_GAP_MEDIAN_S)
    out = out.merge(artist, on=C.ARTIST_KEY)
    for column in (C.ARTIST_NAME, C.TRACK_NAME, C.ARTIST_MBID, C.TRACK_MBID):
        seen = df[df[column] != ""].groupby([*keys, column]).size().rename("n").reset_index()
        seen["order"] = [s.encode("utf-8") for s in seen[column]]
        best = seen.sort_values([*keys, "n", "order"], ascending=[True, True, False, True])
        out = out.merge(best.drop_duplicates(keys)[[*keys, column]], on=keys, how="left")
    return out.fillna({c: "" for c in (C.ARTIST_MBID, C.TRACK_MBID)})


@pytest.fixture(scope="module")
def tiny_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic dataset (real format)."""
    from utils.synthetic.generate import generate_dataset

    raw = tmp_path_factory.mktemp("tiny") / "raw"
    generate_dataset(raw, scale="tiny", seed=1)
    return raw


def test_name_key_strips_unicode_whitespace_and_lowercases_with_full_case_mapping() -> None:
    assert name_key("\u3000 The Beatles\xa0\t") == "the beatles"
    assert name_key("İSTANBUL") == "i\u0307stanbul"
    assert name_key("ΟΔΟΣ ΣΟΦΟΣ") == "οδος σοφος"


def test_encode_keys_merges_spellings_of_one_key() -> None:
    codes, keys = encode_keys(pa.chunked_array([["Abc", "abc "], ["ABC", "x", "X"]]))
    assert keys.to_pylist() == ["abc", "x"]
    assert codes.tolist() == [0, 0, 0, 1, 1]


def test_play_order_is_user_then_time_with_equal_times_latest_line_first() -> None:
    users = np.array([1, 0, 0, 0, 1])
    ts = np.array([50, 30, 20, 20, 10])
    assert play_order(users, ts).tolist() == [3, 2, 1, 4, 0]


def test_group_medians_even_odd_and_empty_groups() -> None:
    groups = np.array([0, 0, 0, 2, 2, 0])
    values = np.array([5, 1, 3, 10, 20, 100])
    medians, counts = group_medians(groups, values, 3)
    assert medians[0] == 4.0 and medians[2] == 15.0 and np.isnan(medians[1])
    assert counts.tolist() == [4, 0, 2]


def test_most_frequent_breaks_ties_by_code_point_order() -> None:
    # Distinct values and their code point ranks: 'z' < 'é' < '\uffef' < '𝄞'.
    ranks = np.array([0, 1, 2, 3])
    groups = np.array([0, 0, 1, 1, 1, 1, 2])
    codes = np.array([1, 0, 3, 2, 3, 2, -1])
    assert most_frequent(groups, codes, ranks, 3).tolist() == [0, 2, -1]


def hand_made_plays() -> list[list[str]]:
    """Newest first per user, like the real file: gaps 0 s, 1800 s, 1801 s and across users."""
    mbid = "a7f7df4a-77d8-4f12-8acd-5c60c93f4de8"
    return [
        ["u1", "2009-01-01T03:00:00Z", "", "The Band", "", 'Song, "A"'],
        ["u1", "2009-01-01T02:29:59Z", mbid, "the band ", "t-1", 'Song, "A"'],
        ["u1", "2009-01-01T02:00:00Z", mbid, "THE BAND", "t-2", 'song, "a"'],
        ["u1", "2009-01-01T02:00:00Z", mbid, "The Band", "t-2", "Other"],
        ["u1", "2009-01-01T01:30:00Z", "", "The Band", "", "other"],
        ["u2", "2009-01-01T01:29:00Z", "", "Solo", "", "Only"],
    ]


def test_unique_tracks_spellings_mbids_counts_and_gap_rules(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", hand_made_plays())
    summary = build_unique_tracks(raw, tmp_path / "work")
    tracks = read_unique_tracks(WorkLayout(tmp_path / "work").unique_tracks)
    assert summary["tracks"] == 3 and summary["plays_kept"] == 6
    assert tracks[C.TRACK_KEY].tolist() == ['song, "a"', "other", "only"]
    song, other, only = (tracks.iloc[i] for i in range(3))
    # The most frequent spelling wins; ties go to the smallest in code point order ('H' < 'h').
    assert (song[C.ARTIST_NAME], song[C.TRACK_NAME]) == ("THE BAND", 'Song, "A"')
    assert other[C.TRACK_NAME] == "Other"
    # The most frequent non-empty MBID (t-1 and t-2 tie).
    mbid = "a7f7df4a-77d8-4f12-8acd-5c60c93f4de8"
    assert (song[C.ARTIST_MBID], song[C.TRACK_MBID]) == (mbid, "t-1")
    assert (other[C.ARTIST_MBID], other[C.TRACK_MBID], other[C.PLAY_COUNT]) == (mbid, "t-2", 2)
    assert (only[C.ARTIST_MBID], only[C.TRACK_MBID]) == ("", "")
    # u1 in time order: Other 01:30, then at 02:00 the later line (Other) before 'song, "a"',
    # then 02:29:59 and 03:00. Gaps: 1800 (kept), 0 (dropped), 1799, 1801 (dropped), end.
    assert (other[C.GAP_MEDIAN_S], other[C.GAP_COUNT]) == (1800.0, 1)
    assert (song[C.GAP_MEDIAN_S], song[C.GAP_COUNT]) == (1799.0, 1)
    assert song[C.ARTIST_GAP_MEDIAN_S] == 1799.5
    # u2's only play has no next play (u1's plays do not count).
    assert only[C.GAP_COUNT] == 0 and np.isnan(only[C.GAP_MEDIAN_S])
    lines = WorkLayout(tmp_path / "work").unique_tracks.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ",".join(C.UNIQUE_TRACKS_COLUMNS)
    assert lines[1] == ('the band,"song, ""a""",THE BAND,"Song, ""A""",'
                       'a7f7df4a-77d8-4f12-8acd-5c60c93f4de8,t-1,3,1799.0,1,1799.5')


def test_real_excerpt_every_play_counted_once(sample_dir: Path, tmp_path: Path) -> None:
    raw = copy_excerpt(sample_dir, tmp_path / "raw")
    summary = build_unique_tracks(raw, tmp_path / "work")
    layout = WorkLayout(tmp_path / "work")
    tracks = read_unique_tracks(layout.unique_tracks)
    reference = raw_plays_frame(raw)
    keys = {(name_key(a), name_key(t))
            for a, t in zip(reference[C.ARTIST_NAME], reference[C.TRACK_NAME], strict=True)}
    assert summary["plays_in"] == 5000 and summary["plays_rejected"] == 0
    assert tracks[C.PLAY_COUNT].sum() == 5000
    assert len(tracks) == len(keys) == summary["tracks"]
    assert set(zip(tracks[C.ARTIST_KEY], tracks[C.TRACK_KEY], strict=True)) == keys
    entry = json.loads((layout.tracks / MANIFEST).read_text())["tracks"]
    assert (entry["rows_in"], entry["rows_out"], entry["rows_rejected"]) == (5000, 5000, 0)


def test_tiny_synthetic_matches_a_plain_pandas_reference(tiny_raw: Path, tmp_path: Path
                                                         ) -> None:
    summary = build_unique_tracks(tiny_raw, tmp_path / "work")
    got = read_unique_tracks(WorkLayout(tmp_path / "work").unique_tracks)
    want = reference_tracks(tiny_raw)
    assert summary["tracks"] == len(want) == len(got)
    assert got[C.PLAY_COUNT].is_monotonic_decreasing
    merged = got.merge(want, on=[C.ARTIST_KEY, C.TRACK_KEY], suffixes=("", "_want"))
    assert len(merged) == len(want)
    for column in C.UNIQUE_TRACKS_COLUMNS[2:]:
        pd.testing.assert_series_equal(merged[column], merged[f"{column}_want"],
                                       check_names=False, check_dtype=False)


def test_rejected_lines_are_counted_and_reconciled(tmp_path: Path) -> None:
    plays = hand_made_plays()
    plays.insert(2, ["u1", "2009-02-30T00:00:00Z", "", "A", "", "B"])
    plays.append(["u/2", "2009-01-01T00:00:00Z", "", "A", "", "B"])
    raw = write_raw(tmp_path / "raw", plays)
    summary = build_unique_tracks(raw, tmp_path / "work")
    layout = WorkLayout(tmp_path / "work")
    entry = require_stage(layout.tracks, "tracks")
    assert (summary["plays_in"], summary["plays_kept"], summary["plays_rejected"]) == (8, 6, 2)
    assert (entry["rows_in"], entry["rows_out"], entry["rows_rejected"]) == (8, 6, 2)
    rejects = pd.read_csv(entry["parameters"]["rejects_file"])
    assert rejects["line_number"].tolist() == [3, 8]


def test_read_unique_tracks_keeps_names_that_look_like_missing_values(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", [["u1", "2009-01-01T00:00:00Z", "", "NA", "", "null"]])
    build_unique_tracks(raw, tmp_path / "work")
    tracks = read_unique_tracks(WorkLayout(tmp_path / "work").unique_tracks)
    assert tracks.loc[0, [C.ARTIST_KEY, C.TRACK_KEY, C.ARTIST_NAME]].tolist() == [
        "na", "null", "NA"]


def test_rerun_replaces_the_folder_and_invalidates_metadata(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", hand_made_plays())
    layout = WorkLayout(tmp_path / "work")
    build_unique_tracks(raw, layout.root)
    layout.track_metadata.write_text(",".join(C.TRACK_METADATA_COLUMNS) + "\n")
    write_manifest(layout.tracks, "metadata", inputs=[], parameters={}, rows_in=0, rows_out=0,
                   rows_rejected=0, outputs=[layout.track_metadata.name], timings={})
    build_unique_tracks(raw, layout.root)
    assert not layout.track_metadata.exists()
    with pytest.raises(StageIncompleteError, match="sessionlen metadata"):
        require_stage(layout.tracks, "metadata")


def test_missing_plays_file_and_bad_engine_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(SessionlenError, match=C.PLAYS_FILE):
        build_unique_tracks(tmp_path / "nowhere", tmp_path / "work")
    raw = write_raw(tmp_path / "raw", hand_made_plays())
    with pytest.raises(SessionlenError, match="unknown engine 'dask'"):
        build_unique_tracks(raw, tmp_path / "work", engine="dask")
    assert not (tmp_path / "work" / "tracks").exists()
