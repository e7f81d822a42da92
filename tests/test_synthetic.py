"""The synthetic Last.fm 1K generator: real format, exact ground truth, determinism, calibration."""

from __future__ import annotations

import csv
import filecmp
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.baseline.sessions import session_lengths, session_starts
from utils.cli import main
from utils.core.columns import (
    GROUND_TRUTH,
    GT_SESSIONS_COLUMNS,
    GT_TRACKS_COLUMNS,
    GT_USERS_COLUMNS,
    PLAYS_FILE,
    PROFILE_FILE,
    PROFILE_HEADER,
)
from utils.core.config import SESSION_GAP_MINUTES
from utils.core.errors import SessionlenError
from utils.data_processing.plays_reader import read_plays
from utils.data_processing.profile_reader import read_profiles
from utils.synthetic.catalog import InverseCdf
from utils.synthetic.generate import format_calibration, generate_dataset
from utils.synthetic.names import make_unique, uuids
from utils.synthetic.plays import MAX_GAP_S, iso_timestamps
from utils.synthetic.sessions import ARCHETYPES

USER_RE = re.compile(r"^user_\d{6}$")
TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
MBID_RE = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?$")
REGISTERED_RE = re.compile(r"^([A-Z][a-z]{2} \d{1,2}, (\d{4}))?$")
PLAYS_NAMES = ["user", "time", "artist_mbid", "artist", "track_mbid", "track"]


def _read_tsv(path: Path) -> pd.DataFrame:
    """A plays file as text columns, quoting disabled as the format requires."""
    return pd.read_csv(path, sep="\t", header=None, names=PLAYS_NAMES, dtype=str,
                       quoting=csv.QUOTE_NONE, keep_default_na=False, na_filter=False)


def _key(artist: pd.Series, track: pd.Series) -> pd.Series:
    """The pipeline's track key: lower-cased, stripped artist and track names."""
    return artist.str.strip().str.lower() + "\x1f" + track.str.strip().str.lower()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """The tiny dataset (seed 1) and its report."""
    out = tmp_path_factory.mktemp("synth") / "tiny-1"
    return out, generate_dataset(out, scale="tiny", seed=1)


@pytest.fixture(scope="module")
def plays(tiny: tuple[Path, object]) -> pd.DataFrame:
    """The tiny plays with true durations and epoch milliseconds, in file order."""
    return plays_with_durations(tiny[0])


def plays_with_durations(out: Path) -> pd.DataFrame:
    """A generated dataset's plays with true durations and epoch milliseconds, in file order."""
    frame = _read_tsv(out / PLAYS_FILE)
    catalog = pd.read_csv(out / GROUND_TRUTH / "tracks.csv", dtype=str, keep_default_na=False)
    seconds = pd.Series(catalog["duration_ms"].astype(np.int64).to_numpy() / 1000.0,
                        index=_key(catalog["artist_name"], catalog["track_name"]).to_numpy())
    frame["duration_s"] = seconds.reindex(_key(frame["artist"], frame["track"])).to_numpy()
    frame["ms"] = (pd.to_datetime(frame["time"], format="%Y-%m-%dT%H:%M:%SZ")
                   .to_numpy().astype("datetime64[ms]").astype(np.int64))
    return frame


def rule_sessions(plays: pd.DataFrame, ties_reversed: bool) -> tuple[pd.DataFrame, np.ndarray]:
    """Sessions by the session rule on oldest-first plays (tied rows in either order)."""
    order = plays.assign(row=np.arange(len(plays))).sort_values(
        ["user", "ms", "row"], ascending=[True, True, ties_reversed], kind="stable")
    codes = pd.factorize(order["user"])[0]
    ms, duration = order["ms"].to_numpy(), order["duration_s"].to_numpy()
    starts = session_starts(codes, ms, duration, SESSION_GAP_MINUTES)
    first, length = session_lengths(starts, ms, duration)
    sessions = pd.DataFrame({"user_id": order["user"].to_numpy()[first], "start_ms": ms[first],
                             "length_s": length})
    return sessions, starts


def test_plays_file_has_the_real_format(tiny, sample_dir):
    out, report = tiny
    raw = (out / PLAYS_FILE).read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n")
    lines = raw.decode("utf-8").split("\n")[:-1]
    assert len(lines) == report.plays
    real = (sample_dir / "plays-excerpt.tsv").read_text(encoding="utf-8").splitlines()
    for line in lines + real:  # the checks describe the real excerpt too
        fields = line.split("\t")
        assert len(fields) == 6, line
        assert USER_RE.match(fields[0]) and TIMESTAMP_RE.match(fields[1]), line
        assert MBID_RE.match(fields[2]) and MBID_RE.match(fields[4]), line
        assert fields[3] and fields[5], line


def test_users_in_id_order_newest_first(plays, tiny):
    _, report = tiny
    ids = plays["user"].to_numpy()
    assert list(pd.unique(ids)) == [f"user_{i:06d}" for i in range(1, report.users + 1)]
    same_user = ids[1:] == ids[:-1]
    assert (np.diff(plays["ms"].to_numpy())[same_user] <= 0).all()


def test_text_looks_like_the_real_data(plays):
    names = pd.concat([plays["artist"], plays["track"]])
    assert not names.str.contains(r"[\t\r\n]").any()
    assert names.str.contains('"', regex=False).any() and names.str.contains("'").any()
    non_ascii = ~(plays["artist"] + plays["track"]).map(str.isascii)
    assert 0.05 < non_ascii.mean() < 0.4
    assert 0.1 < (plays["track_mbid"] == "").mean() < 0.5
    assert (plays["artist_mbid"] != "").mean() > 0.5


def test_profile_file_has_the_real_format(tiny, sample_dir):
    out, report = tiny
    ours = (out / PROFILE_FILE).read_text(encoding="utf-8").splitlines()
    real = (sample_dir / "userid-profile.tsv").read_text(encoding="utf-8").splitlines()
    assert ours[0] == real[0] == "\t".join(PROFILE_HEADER)
    assert len(ours) == report.users + 1
    for line in ours[1:] + real[1:]:
        user, gender, age, country, registered = line.split("\t")
        assert USER_RE.match(user) and gender in ("m", "f", "")
        assert age == "" or 1 <= int(age) <= 110
        assert "\t" not in country
        match = REGISTERED_RE.match(registered)
        assert match and (registered == "" or 2002 <= int(match.group(2)) <= 2009), line


def assert_readers_read_everything(out: Path, report, tmp_path: Path):
    """Every generated play and profile line passes the raw readers; returns the profile read."""
    result = read_plays(out / PLAYS_FILE, tmp_path)
    assert (result.rows_in, result.rows_rejected) == (report.plays, 0)
    profile = read_profiles(out / PROFILE_FILE, tmp_path)
    assert (profile.rows_in, profile.rows_rejected) == (report.users, 0)
    return profile


def test_the_raw_readers_read_everything(tiny, tmp_path):
    profile = assert_readers_read_everything(*tiny, tmp_path)
    assert not any(profile.nullified.values())


def assert_rule_measures_ground_truth(plays: pd.DataFrame, out: Path, sessions: int) -> None:
    """The session rule, with ties in either order, finds exactly the planted sessions."""
    assert plays["duration_s"].notna().all()  # every played track is in the catalog
    truth = pd.read_csv(out / GROUND_TRUTH / "sessions.csv", dtype={"user_id": str})
    assert list(truth.columns) == GT_SESSIONS_COLUMNS and len(truth) == sessions
    for ties_reversed in (False, True):
        measured, _ = rule_sessions(plays, ties_reversed)
        pd.testing.assert_frame_equal(
            measured, truth[["user_id", "start_ms", "length_s"]].astype({"length_s": float}))


def test_ground_truth_is_exactly_what_the_session_rule_measures(plays, tiny):
    out, report = tiny
    assert_rule_measures_ground_truth(plays, out, report.sessions)


def test_sessions_are_unambiguous(plays):
    sessions, starts = rule_sessions(plays, ties_reversed=False)
    order = plays.sort_values(["user", "ms"], kind="stable")
    ms, duration = order["ms"].to_numpy(), order["duration_s"].to_numpy()
    inside = ~starts[1:]
    assert (np.diff(ms)[inside] <= MAX_GAP_S * 1000).all()
    last = np.append(np.flatnonzero(starts)[1:], len(starts)) - 1
    same_user = order["user"].to_numpy()[np.flatnonzero(starts)[1:]] == \
        order["user"].to_numpy()[last[:-1]]
    margin_ms = ms[np.flatnonzero(starts)[1:]] - (ms[last[:-1]] + duration[last[:-1]] * 1000)
    assert (margin_ms[same_user] >= (SESSION_GAP_MINUTES + 1) * 60_000).all()
    tied = np.r_[False, (ms[1:] == ms[:-1])] | np.r_[ms[1:] == ms[:-1], False]
    assert not tied[last].any()  # no session ends on a duplicated (user, timestamp)


def test_median_is_the_conditional_median(tiny):
    out, _ = tiny
    truth = pd.read_csv(out / GROUND_TRUTH / "sessions.csv")
    length, median = truth["length_s"].to_numpy(), truth["median_length_s"].to_numpy()
    assert abs(np.mean(length <= median) - 0.5) < 0.06
    mae = np.abs(length - median).mean()
    assert mae < np.abs(length - 1.15 * median).mean()
    assert mae < np.abs(length - 0.85 * median).mean()


def test_catalog_is_unique_by_the_pipeline_key(tiny, plays):
    out, _ = tiny
    catalog = pd.read_csv(out / GROUND_TRUTH / "tracks.csv", dtype=str, keep_default_na=False)
    assert list(catalog.columns) == GT_TRACKS_COLUMNS
    assert _key(catalog["artist_name"], catalog["track_name"]).is_unique
    artists = catalog[["artist_name"]].drop_duplicates()["artist_name"]
    assert artists.str.strip().str.lower().is_unique
    duration = catalog["duration_ms"].astype(np.int64)
    assert (duration > 0).all() and (duration % 1000 == 0).all()
    assert catalog["artist_mbid"].str.match(MBID_RE).all()
    assert catalog["tags"].str.match(r"^([a-z0-9&\- ]+(\|[a-z0-9&\- ]+)*)?$").all()
    played = set(_key(plays["artist"], plays["track"]))
    assert played == set(_key(catalog["artist_name"], catalog["track_name"]))


def test_users_ground_truth(tiny):
    out, report = tiny
    users = pd.read_csv(out / GROUND_TRUTH / "users.csv")
    assert list(users.columns) == GT_USERS_COLUMNS and len(users) == report.users
    assert users["archetype"].between(0, len(ARCHETYPES) - 1).all()


def test_calibration_at_tiny_scale(tiny):
    out, report = tiny
    for name in ("users", "plays", "% duplicated (user, timestamp)", "empty profile gender",
                 "empty profile age", "empty profile country", "empty profile registered"):
        assert report.figure(name).ok, name
    assert report.plays <= 40_000
    table = format_calibration(report)
    assert table.splitlines()[1].startswith("figure ") and "within ±10%?" in table
    assert all(f.name in table for f in report.figures)
    saved = pd.read_csv(out / GROUND_TRUTH / "calibration.csv")
    assert list(saved["figure"]) == [f.name for f in report.figures]
    manifest = json.loads((out / "_manifest.json").read_text())["synth"]
    assert manifest["rows_out"] == report.plays and manifest["parameters"]["seed"] == 1


def test_same_seed_gives_identical_files_and_another_seed_differs(tiny, tmp_path):
    out, _ = tiny
    again = tmp_path / "again"
    generate_dataset(again, scale="tiny", seed=1)
    names = [PLAYS_FILE, PROFILE_FILE] + [f"{GROUND_TRUTH}/{n}" for n in
                                          ("sessions.csv", "tracks.csv", "users.csv",
                                           "calibration.csv")]
    match, mismatch, errors = filecmp.cmpfiles(out, again, names, shallow=False)
    assert (mismatch, errors) == ([], [])
    other = tmp_path / "other"
    generate_dataset(other, scale="tiny", seed=2)
    assert (other / PLAYS_FILE).read_bytes() != (out / PLAYS_FILE).read_bytes()


def test_users_override_and_atomic_replacement(tmp_path):
    out = tmp_path / "data"
    generate_dataset(out, scale="tiny", users=3, seed=5)
    report = generate_dataset(out, scale="tiny", users=2, seed=5)
    profile = (out / PROFILE_FILE).read_text(encoding="utf-8").splitlines()
    assert report.users == 2 and len(profile) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temp dirs left


@pytest.mark.parametrize("kwargs", [{"users": 0}, {"users": -3}, {"users": True},
                                    {"scale": "huge"}, {"seed": -1}])
def test_bad_arguments_are_one_line_errors(tmp_path, kwargs):
    with pytest.raises(SessionlenError) as err:
        generate_dataset(tmp_path / "x", **kwargs)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x").exists()


def test_refuses_to_replace_other_directories(tmp_path):
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    with pytest.raises(SessionlenError, match="not a synthetic dataset"):
        generate_dataset(precious, scale="tiny", users=2)
    assert (precious / "keep.txt").read_text() == "mine"
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(SessionlenError, match="not a directory"):
        generate_dataset(a_file, scale="tiny", users=2)


def test_cli_synth(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "d"), "--scale", "tiny", "--users", "3",
                 "--seed", "4"]) == 0
    printed = capsys.readouterr().out
    assert "within ±10%?" in printed and (tmp_path / "d" / PLAYS_FILE).is_file()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 4_102_444_799), min_size=1, max_size=50))  # 1970..2099
def test_iso_timestamps_match_numpy(seconds):
    values = np.array(seconds, dtype=np.int64)
    expected = np.datetime_as_string(values.astype("datetime64[s]"), unit="s")
    assert iso_timestamps(values).to_pylist() == [f"{e}Z" for e in expected]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.001, 10.0), min_size=1, max_size=40), st.integers(0, 2**31))
def test_inverse_cdf_matches_searchsorted(weights, seed):
    cum = np.cumsum(weights)
    u = np.random.default_rng(seed).uniform(0, cum[-1], 200)
    assert np.array_equal(InverseCdf(cum).find(u), np.searchsorted(cum, u, side="right"))


def test_uuids_and_unique_names():
    ids = uuids(np.random.default_rng(0), 50)
    assert all(MBID_RE.match(str(i)) and str(i)[14] == "4" for i in ids)
    names = np.array(["Intro", "INTRO", "Outro", "intro"], dtype=np.dtypes.StringDType())
    assert list(make_unique(names)) == ["Intro", "INTRO (2)", "Outro", "intro (3)"]
    assert list(make_unique(names, group=np.array([0, 1, 0, 1]))) == [
        "Intro", "INTRO", "Outro", "intro (2)"]


@pytest.mark.slow
def test_demo_scale_difficulty_and_clusters(tmp_path):
    report = generate_dataset(tmp_path / "demo", scale="demo", seed=1)
    for f in report.figures:
        if f.name.startswith(("user_mean", "oracle /", "cluster ARI", "users", "plays", "% dup")):
            assert f.ok, f
