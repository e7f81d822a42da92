"""The summarize stage (local engine): session invariants, leakage-free history, files, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from utils.baseline import session_table
from utils.baseline.session_table import (
    LENGTH_MS,
    PLAYS,
    SOURCE_ID,
    consecutive_groups,
    local_sessions,
    sessionize,
)
from utils.baseline.summaries import summarize
from utils.baseline.summary_dir import (
    SUMMARY_OUTPUTS,
    load_country_vocab,
    load_summaries,
    load_user_ids,
)
from utils.baseline.summary_views import plot_session_lengths, split_overview, threshold_sensitivity
from utils.baseline.summary_writer import fit_country_vocab, user_id_mapping, write_summaries
from utils.baseline.user_plays import read_plays, read_user_plays, user_files
from utils.core.columns import (
    AVERAGE_SESSION_LENGTH,
    COUNTRY,
    CURRENT_SESSION_LENGTH,
    PREVIOUS_SESSION_LENGTH,
    SESSION_ID,
    SPLITS,
    SUMMARY_COLUMNS,
    TIMESTAMP,
    USER_DIR_COLUMNS,
    USER_ID,
)
from utils.core.config import SessionParams, WorkLayout
from utils.core.errors import SessionlenError, StageIncompleteError
from utils.core.stage_io import MANIFEST, write_manifest

MIN_MS = 60_000
EPOCH_2009 = 1_230_768_000_000
GAP_MS = 30 * MIN_MS


# ---------------------------------------------------------------------------------------------
# Building user_dir trees by hand
# ---------------------------------------------------------------------------------------------

def iso(ms: np.ndarray) -> pd.Series:
    """Milliseconds since epoch as the user_dir timestamp text."""
    return pd.Series(pd.to_datetime(np.asarray(ms), unit="ms", utc=True)
                     .strftime("%Y-%m-%dT%H:%M:%SZ"))


def write_user_dir(work: Path, plays: pd.DataFrame, split_files: tuple[str, ...] = ()) -> Path:
    """Write plays (timestamp_ms, duration, profile text) as a complete denormalize stage.

    Users listed in `split_files` get their plays spread over two files (first half, second
    half), as a multi-file engine would write them.
    """
    layout = WorkLayout(work)
    layout.user_dir.mkdir(parents=True)
    for user, frame in plays.groupby(USER_ID, sort=True):
        folder = layout.user_dir / str(user)
        folder.mkdir(parents=True)
        text = pd.DataFrame({
            USER_ID: frame[USER_ID].to_numpy(),
            TIMESTAMP: iso(frame["timestamp_ms"].to_numpy()).to_numpy(),
            "artist_name": 'Artist, "the"', "track_name": "Track ü",
            "gender": frame["gender"].to_numpy(), "age": frame["age"].to_numpy(),
            "country": frame["country"].to_numpy(), "registered": frame["registered"].to_numpy(),
            "duration": frame["duration"].to_numpy(), "genre": "rock|pop",
        })[USER_DIR_COLUMNS]
        parts = [text[: len(text) // 2], text[len(text) // 2:]] if user in split_files else [text]
        for index, part in enumerate(parts):
            part.to_csv(folder / f"part-{index:05d}.csv", index=False, float_format="%.3f",
                        lineterminator="\n")
    write_manifest(layout.user_dir, "denormalize", inputs=[], parameters={}, rows_in=len(plays),
                   rows_out=len(plays), rows_rejected=0, outputs=[], timings={})
    return layout.user_dir


def random_plays(seed: int, users: int = 6, plays_per_user: int = 400) -> pd.DataFrame:
    """Plays with in-session gaps, near-threshold gaps, long breaks, ties and unknown durations."""
    rng = np.random.default_rng(seed)
    frames = []
    for u in range(users):
        n = plays_per_user + 37 * u
        duration = np.round(rng.uniform(60, 400, n), 3)
        duration[rng.random(n) < 0.1] = np.nan
        kind = rng.choice(3, size=n, p=[0.85, 0.08, 0.07])
        slack = np.select([kind == 0, kind == 1], [
            rng.integers(0, 10 * MIN_MS, n),
            GAP_MS + rng.integers(-5_000, 5_000, n),
        ], rng.integers(GAP_MS, 3 * 86_400_000, n))
        step = np.r_[0, np.rint(np.nan_to_num(duration[:-1]) * 1000).astype(np.int64) + slack[1:]]
        step = -(-step // 1000) * 1000  # user_dir timestamps have whole seconds
        step[rng.random(n) < 0.03] = 0  # ties: equal timestamps, file order decides
        frames.append(pd.DataFrame({
            USER_ID: f"user_{u * 7 + 1:06d}",
            "timestamp_ms": EPOCH_2009 + u * 1_000 + np.cumsum(step),
            "duration": duration,
            "gender": ["m", "f", ""][u % 3],
            "age": rng.choice(["", "23", "41"], size=n),
            "country": ["Japan", "", "United Kingdom", "Côte d'Ivoire"][u % 4],
            "registered": ["2006-08-13", ""][u % 2],
        }))
    return pd.concat(frames, ignore_index=True)


def reference_sessions(plays: pd.DataFrame, gap_minutes: float = 30.0) -> pd.DataFrame:
    """The session rule and summaries written plainly, one play at a time (a test oracle)."""
    rows = []
    for user, frame in plays.groupby(USER_ID, sort=True):
        frame = frame.sort_values("timestamp_ms", kind="stable")
        ts = frame["timestamp_ms"].tolist()
        dur = [0.0 if np.isnan(d) else d for d in frame["duration"]]
        starts = [0] + [i for i in range(1, len(ts))
                        if ts[i] - ts[i - 1] - dur[i - 1] * 1000 > gap_minutes * MIN_MS]
        ends = [s - 1 for s in starts[1:]] + [len(ts) - 1]
        lengths: list[float] = []
        for sid, (first, last) in enumerate(zip(starts, ends, strict=True)):
            length = (ts[last] - ts[first]) / 1000 + dur[last]
            rows.append({SOURCE_ID: user, SESSION_ID: sid, TIMESTAMP: ts[first],
                         "plays": last - first + 1, "length": length,
                         "last_tied": last > first and ts[last] == ts[last - 1],
                         "previous": lengths[-1] if lengths else 0.0,
                         "average": sum(lengths) / len(lengths) if lengths else 0.0})
            lengths.append(length)
    return pd.DataFrame(rows)


def all_sessions(work: Path) -> pd.DataFrame:
    """Every split's rows in one frame, with the split name, sorted by (user_id, session_id)."""
    frames = [f.assign(split=name) for name, f in load_summaries(work).items()]
    return pd.concat(frames).sort_values([USER_ID, SESSION_ID], ignore_index=True)


@pytest.fixture(scope="module")
def plays() -> pd.DataFrame:
    return random_plays(seed=5)


@pytest.fixture(scope="module")
def summarized(tmp_path_factory: pytest.TempPathFactory, plays: pd.DataFrame) -> Path:
    work = tmp_path_factory.mktemp("work")
    write_user_dir(work, plays, split_files=("user_000008",))
    summarize(work, SessionParams())
    return work


# ---------------------------------------------------------------------------------------------
# Sessions and history
# ---------------------------------------------------------------------------------------------

def test_summaries_match_the_rule_written_plainly(summarized: Path, plays: pd.DataFrame) -> None:
    got = all_sessions(summarized)
    want = reference_sessions(plays)
    assert len(got) == len(want)
    ids = load_user_ids(summarized).set_index(SOURCE_ID)[USER_ID]
    assert np.array_equal(got[USER_ID], want[SOURCE_ID].map(ids))
    assert np.array_equal(got[SESSION_ID], want[SESSION_ID])
    assert np.array_equal(got[TIMESTAMP], want[TIMESTAMP])
    for column, reference in ((CURRENT_SESSION_LENGTH, "length"),
                              (PREVIOUS_SESSION_LENGTH, "previous"),
                              (AVERAGE_SESSION_LENGTH, "average")):
        # the files hold milliseconds; the mean is rounded to the millisecond
        assert np.allclose(got[column], want[reference], rtol=0, atol=0.0005 + 1e-9), column


def test_sessions_partition_plays_and_every_boundary_obeys_the_rule(summarized: Path) -> None:
    played = read_plays(user_files(WorkLayout(summarized).user_dir))
    sessions = sessionize(played, 30.0)
    assert sessions[PLAYS].min() >= 1
    assert sessions[PLAYS].sum() == len(played)
    session_of_play = np.repeat(np.arange(len(sessions)), sessions[PLAYS].to_numpy())
    same_user = played.user_code[1:] == played.user_code[:-1]
    excess = (np.diff(played.timestamp_ms)
              - np.nan_to_num(played.duration_s[:-1]) * 1000.0 - GAP_MS)
    inside = same_user & (session_of_play[1:] == session_of_play[:-1])
    boundary = same_user & ~inside
    assert inside.sum() > 0 and boundary.sum() > 0
    assert np.all(excess[inside] <= 0)
    assert np.all(excess[boundary] > 0)
    assert np.all(np.diff(played.timestamp_ms)[same_user] >= 0)


def test_rule_edges_exact_threshold_ties_and_unknown_durations(tmp_path: Path) -> None:
    m = MIN_MS
    plays = pd.DataFrame({
        USER_ID: "u1",
        # 0 -> 35 min after a 5 min play: exactly 30 min excess, same session; a tied play of
        # unknown duration (last in file order, so it ends the session and counts 0 s);
        # 31 min + 1 s later: new session; 200 min: a one-play session of unknown duration.
        "timestamp_ms": [0, 35 * m, 35 * m, 66 * m + 1000, 200 * m],
        "duration": [300.0, 120.0, np.nan, 60.0, np.nan],
        "gender": "m", "age": "", "country": "", "registered": "",
    })
    plays["timestamp_ms"] += EPOCH_2009
    write_user_dir(tmp_path, plays)
    summarize(tmp_path, SessionParams())
    sessions = all_sessions(tmp_path)
    assert sessions[TIMESTAMP].sub(EPOCH_2009).tolist() == [0, 66 * m + 1000, 200 * m]
    # first session ends on the tied play of unknown duration (file order): 35 min + 0 s
    assert sessions[CURRENT_SESSION_LENGTH].tolist() == [2100.0, 60.0, 0.0]
    assert sessions[PREVIOUS_SESSION_LENGTH].tolist() == [0.0, 2100.0, 60.0]
    assert sessions[AVERAGE_SESSION_LENGTH].tolist() == [0.0, 2100.0, 1080.0]
    assert sessions["split"].tolist() == ["train"] * 3


def test_history_columns_only_use_earlier_sessions(tmp_path: Path, plays: pd.DataFrame) -> None:
    """Shortening a middle session changes no earlier row and no row's own history."""
    reference = reference_sessions(plays)
    middle = reference.groupby(SOURCE_ID)[SESSION_ID].transform("max") // 2
    mid = reference[(reference[SESSION_ID] == middle) & (reference["plays"] >= 2)
                    & ~reference["last_tied"]]
    assert mid[SOURCE_ID].nunique() >= 3
    # Drop the last play of each chosen session: its length changes, its boundaries cannot
    # (the play before it ends no later than it did).
    last_index = reference.groupby(SOURCE_ID)["plays"].cumsum() - 1
    dropped = set(zip(mid[SOURCE_ID], last_index[mid.index], strict=True))
    index_in_user = plays.groupby(USER_ID).cumcount()
    keep = [(u, k) not in dropped for u, k in zip(plays[USER_ID], index_in_user, strict=True)]
    write_user_dir(tmp_path / "a", plays)
    write_user_dir(tmp_path / "b", plays[keep])
    summarize(tmp_path / "a", SessionParams())
    summarize(tmp_path / "b", SessionParams())
    before, after = all_sessions(tmp_path / "a"), all_sessions(tmp_path / "b")
    assert np.array_equal(before[[USER_ID, SESSION_ID, "split"]],
                          after[[USER_ID, SESSION_ID, "split"]])
    ids = load_user_ids(tmp_path / "a").set_index(SOURCE_ID)[USER_ID]
    cut_by_user = pd.Series(mid[SESSION_ID].to_numpy(), index=mid[SOURCE_ID].map(ids).to_numpy())
    cut = before[USER_ID].map(cut_by_user).fillna(np.inf)  # untouched users: every row earlier
    history = [PREVIOUS_SESSION_LENGTH, AVERAGE_SESSION_LENGTH]
    same_or_earlier = before[SESSION_ID] <= cut
    assert before.loc[same_or_earlier, history].equals(after.loc[same_or_earlier, history])
    earlier = before[SESSION_ID] < cut
    assert before.loc[earlier].equals(after.loc[earlier])
    changed = before[SESSION_ID] == cut
    assert (before.loc[changed, CURRENT_SESSION_LENGTH]
            > after.loc[changed, CURRENT_SESSION_LENGTH]).all()
    following = before[SESSION_ID] == cut + 1
    assert (before.loc[following, PREVIOUS_SESSION_LENGTH]
            > after.loc[following, PREVIOUS_SESSION_LENGTH]).all()


def planted_dataset(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(plays, planted sessions): tracks of known duration, in-session slack < 30 min."""
    rng = np.random.default_rng(seed)
    plays, truth = [], []
    for u in range(5):
        user, clock = f"listener-{u}", EPOCH_2009 + 1000 * int(rng.integers(0, 86_400))
        for _ in range(int(rng.integers(5, 40))):
            m = int(rng.integers(1, 25))
            duration_ms = rng.integers(30_000, 600_000, m)
            slack = rng.integers(0, 29 * MIN_MS, m)
            slack[rng.random(m) < 0.5] = 0  # back-to-back plays
            starts = clock + np.r_[0, np.cumsum(duration_ms[:-1] + slack[1:])]
            starts = -(-starts // 1000) * 1000  # whole seconds: gaps grow by < 1 s
            plays.append(pd.DataFrame({USER_ID: user, "timestamp_ms": starts,
                                       "duration": duration_ms / 1000.0}))
            truth.append({SOURCE_ID: user, "start_ms": starts[0],
                          "length_s": (starts[-1] - starts[0] + duration_ms[-1]) / 1000.0})
            clock = int(starts[-1] + duration_ms[-1] + rng.integers(GAP_MS + 1, 5 * 86_400_000))
    frame = pd.concat(plays, ignore_index=True).assign(
        gender="f", age="30", country="Peru", registered="2007-01-02")
    return frame, pd.DataFrame(truth)


def test_sessions_equal_the_planted_ground_truth(tmp_path: Path) -> None:
    plays, truth = planted_dataset(seed=11)
    write_user_dir(tmp_path, plays)
    summarize(tmp_path, SessionParams(split="seed"))
    got = all_sessions(tmp_path)
    # user ids are not user_<digits>: integer ids are the 1-based rank of the sorted names
    names = load_user_ids(tmp_path).set_index(USER_ID)[SOURCE_ID]
    assert names.tolist() == [f"listener-{u}" for u in range(5)]
    assert got[USER_ID].map(names).tolist() == truth[SOURCE_ID].tolist()
    assert got[TIMESTAMP].tolist() == truth["start_ms"].tolist()
    assert np.allclose(got[CURRENT_SESSION_LENGTH], truth["length_s"], rtol=0, atol=1e-9)


def test_sessions_equal_the_synthetic_ground_truth(tmp_path: Path) -> None:
    """On the project's generator: user_dir built with the catalog's true durations."""
    synthetic = pytest.importorskip("utils.synthetic.generate")
    raw = tmp_path / "raw"
    synthetic.generate_dataset(raw, scale="tiny", seed=1)
    tracks = pd.read_csv(raw / "ground_truth" / "tracks.csv", keep_default_na=False,
                         dtype=str)
    names = ["user_id", "ts", "artist_mbid", "artist_name", "track_mbid", "track_name"]
    played = pd.read_csv(raw / "userid-timestamp-artid-artname-traid-traname.tsv", sep="\t",
                         header=None, names=names, quoting=3, keep_default_na=False, dtype=str)
    played = played.iloc[::-1]  # the raw file is newest first per user
    duration = played.merge(tracks, on=["artist_name", "track_name"], how="left")["duration_ms"]
    stamps = pd.to_datetime(played["ts"], utc=True).dt.as_unit("ms").astype("int64")
    plays = pd.DataFrame({
        USER_ID: played["user_id"].to_numpy(), "timestamp_ms": stamps.to_numpy(),
        "duration": pd.to_numeric(duration, errors="coerce").to_numpy() / 1000.0,
        "gender": "", "age": "", "country": "", "registered": "",
    })
    write_user_dir(tmp_path / "work", plays)
    summarize(tmp_path / "work", SessionParams())
    got = all_sessions(tmp_path / "work")
    truth = pd.read_csv(raw / "ground_truth" / "sessions.csv", dtype={USER_ID: str})
    truth = truth.sort_values([USER_ID, "start_ms"], ignore_index=True)
    assert len(got) == len(truth)
    assert got[TIMESTAMP].tolist() == truth["start_ms"].tolist()
    assert np.allclose(got[CURRENT_SESSION_LENGTH], truth["length_s"], rtol=0, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Splits, ids, vocabulary, files and manifest
# ---------------------------------------------------------------------------------------------

@given(st.lists(st.integers(0, 10**6), max_size=40), st.integers(1, 50))
def test_consecutive_groups_cover_every_user_once_in_order(sizes: list[int], groups: int
                                                            ) -> None:
    runs = consecutive_groups(sizes, groups)
    assert [i for run in runs for i in run] == list(range(len(sizes)))
    assert all(len(run) for run in runs) and len(runs) <= groups
    if sizes and groups > 1 and min(sizes) > 0:
        # No run is larger than its share plus one user.
        share = sum(sizes) / groups
        assert all(sum(sizes[i] for i in run) <= share + max(sizes) for run in runs)


@pytest.mark.parametrize("groups", [1, 2, 5])
def test_local_sessions_in_runs_of_users_equal_all_users_at_once(
        summarized: Path, groups: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_table, "GROUPS_PER_WORKER", groups)
    users = user_files(WorkLayout(summarized).user_dir)
    played = read_plays(users)
    got, plays_read = local_sessions(users, 30.0)
    assert plays_read == len(played)
    pd.testing.assert_frame_equal(got, sessionize(played, 30.0))


def test_chrono_split_per_user_train_then_validate_then_test(summarized: Path) -> None:
    sessions = all_sessions(summarized)
    for _, frame in sessions.groupby(USER_ID):
        order = frame.sort_values(TIMESTAMP)["split"].map({n: i for i, n in enumerate(SPLITS)})
        assert order.is_monotonic_increasing
        n = len(frame)
        assert (frame["split"] == "test").sum() == n * 2 // 10
        assert (frame["split"] == "validate").sum() == n // 10
        assert frame[SESSION_ID].tolist() == list(range(n))


def test_files_manifest_and_ids(summarized: Path, plays: pd.DataFrame) -> None:
    summary_dir = WorkLayout(summarized).summary_dir
    manifest = json.loads((summary_dir / MANIFEST).read_text())["summarize"]
    assert manifest["rows_in"] == manifest["rows_out"] == len(plays)
    assert manifest["rows_rejected"] == 0
    per_split = manifest["parameters"]["sessions_per_split"]
    loaded = load_summaries(summarized)
    assert per_split == {name: len(frame) for name, frame in loaded.items()}
    assert sorted(manifest["outputs"]) == sorted(SUMMARY_OUTPUTS)
    for name in SPLITS:
        files = sorted(p.name for p in (summary_dir / name).glob("*.csv"))
        assert files == [f"user_{u * 7 + 1:06d}.csv" for u in range(6)]
    first = (summary_dir / "train" / "user_000008.csv").read_text().splitlines()
    assert first[0] == ",".join(SUMMARY_COLUMNS)
    # timestamp,user_id(=digits),session_id,gender(f=0),age,country,registered,lengths (3 dp)
    fields = first[1].split(",")
    assert fields[1:4] == ["8", "0", "0"] and fields[7:9] == ["0.000", "0.000"]
    assert all(len(f.split(".")[1]) == 3 for f in fields[7:])
    assert load_user_ids(summarized)[USER_ID].tolist() == [u * 7 + 1 for u in range(6)]


def test_profile_columns_are_encoded(summarized: Path) -> None:
    sessions = all_sessions(summarized)
    by_user = sessions.groupby(USER_ID)
    vocab = load_country_vocab(summarized)
    assert vocab[COUNTRY].tolist() == ["Côte d'Ivoire", "Japan", "United Kingdom"]
    assert vocab["code"].tolist() == [1, 2, 3]
    assert by_user["gender"].first().tolist() == [1, 0, -1, 1, 0, -1]
    assert by_user[COUNTRY].first().tolist() == [2, 0, 3, 1, 2, 0]
    registered = pd.Timestamp("2006-08-13", tz="UTC").value // 10**6
    assert by_user["registered"].first().tolist() == [registered, -1] * 3
    assert set(sessions["age"]) <= {-1, 23, 41}


def test_country_vocabulary_is_fit_on_train_sessions_only(tmp_path: Path) -> None:
    # A user who moved: the later (test) sessions carry a country no train session has.
    sessions = pd.DataFrame({
        SOURCE_ID: "user_000003", SESSION_ID: np.arange(10), TIMESTAMP: np.arange(10) * 10**8,
        "gender": 1, "age": 30, COUNTRY: ["Japan"] * 8 + ["Peru"] * 2, "registered": -1,
        PLAYS: 1, "previous_ms": 0, "average_ms": 0, LENGTH_MS: 1000,
    })
    counts = write_summaries(sessions, ["user_000003"], SessionParams(), tmp_path)
    assert counts["sessions_per_split"] == {"train": 7, "validate": 1, "test": 2}
    test = pd.read_csv(tmp_path / "test" / "user_000003.csv")
    validate = pd.read_csv(tmp_path / "validate" / "user_000003.csv")
    assert test[COUNTRY].tolist() == [0, 0]  # Peru unseen in train
    assert validate[COUNTRY].tolist() == [1]
    assert fit_country_vocab(pd.Series(["b", None, "a", "", "b"])).to_dict() == {"a": 1, "b": 2}


def test_user_id_mapping_rules() -> None:
    assert user_id_mapping(["user_000010", "user_000002"]).to_dict() == {
        "user_000002": 2, "user_000010": 10}
    # duplicate numbers or other names: 1-based rank of the sorted ids
    assert user_id_mapping(["user_7", "user_007"]).to_dict() == {"user_007": 1, "user_7": 2}
    assert user_id_mapping(["bob", "alice", "user_000001"]).to_dict() == {
        "alice": 1, "bob": 2, "user_000001": 3}


def test_seed_split_keeps_every_session(tmp_path: Path) -> None:
    plays = random_plays(seed=9, users=12, plays_per_user=120)
    write_user_dir(tmp_path, plays)
    result = summarize(tmp_path, SessionParams(split="seed", seed=3))
    sessions = all_sessions(tmp_path)
    assert len(sessions) == len(reference_sessions(plays))
    assert sum(result["sessions_per_split"].values()) == len(sessions)
    assert sessions.groupby(USER_ID)[SESSION_ID].apply(
        lambda s: s.tolist() == list(range(len(s)))).all()
    held_out = sessions[sessions["split"] != "train"].groupby(USER_ID)["split"].nunique()
    assert (held_out == 1).all()  # a held-out user is validate or test, never both


def test_threshold_sensitivity_and_views(summarized: Path, tmp_path: Path) -> None:
    table = threshold_sensitivity(summarized, [10, 30, 120])
    assert table["sessions"].is_monotonic_decreasing
    assert table.loc[1, "sessions"] == sum(len(f) for f in load_summaries(summarized).values())
    overview = split_overview(load_summaries(summarized))
    assert overview.index.tolist() == list(SPLITS)
    assert overview.loc["train", "sessions"] > overview.loc["test", "sessions"] > 0
    fig = plot_session_lengths(load_summaries(summarized), tmp_path / "hist.png")
    assert (tmp_path / "hist.png").stat().st_size > 1000
    assert fig.axes[0].get_xscale() == "log"


def test_rerun_replaces_the_output_atomically(summarized: Path, tmp_path: Path,
                                              plays: pd.DataFrame) -> None:
    write_user_dir(tmp_path, plays)
    summarize(tmp_path, SessionParams())
    first = {p.relative_to(tmp_path): p.read_bytes()
             for p in (tmp_path / "summary_dir").rglob("*.csv")}
    summarize(tmp_path, SessionParams())
    second = {p.relative_to(tmp_path): p.read_bytes()
              for p in (tmp_path / "summary_dir").rglob("*.csv")}
    assert first == second
    assert not list(tmp_path.glob(".summary_dir*"))


# ---------------------------------------------------------------------------------------------
# Failures a user can cause
# ---------------------------------------------------------------------------------------------

def small_plays() -> pd.DataFrame:
    return pd.DataFrame({USER_ID: "user_000001", "timestamp_ms": EPOCH_2009 + np.arange(3) * 1000,
                         "duration": [1.0, 2.0, 3.0], "gender": "m", "age": "20",
                         "country": "Peru", "registered": "2006-01-01"})


def corrupt(user_dir: Path, old: str, new: str) -> Path:
    """Replace text in the single file of user_000001 and return the file."""
    path = next((user_dir / "user_000001").glob("*.csv"))
    path.write_text(path.read_text().replace(old, new, 1))
    return path


def test_missing_denormalize_stage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StageIncompleteError, match="sessionlen denormalize"):
        summarize(tmp_path, SessionParams())
    with pytest.raises(StageIncompleteError, match="sessionlen summarize"):
        load_summaries(tmp_path)


@pytest.mark.parametrize(("old", "new", "message"), [
    ("user_id,timestamp", "user,timestamp", r"line 1: header"),
    ("2009-01-01T00:00:01Z", "2009-01-01 oops", r"line 3: invalid timestamp '2009-01-01 oops'"),
    (",2.000,", ",two,", r"line 3: invalid duration 'two'"),
    (",2.000,", ",-2.000,", r"line 3: invalid duration -2.0"),
    (",20,", ",twenty,", r"line 2: invalid age 'twenty'"),
    ("2006-01-01", "2006-13-45", r"line 2: invalid registered '2006-13-45'"),
    ("2009-01-01T00:00:01Z", "2009-01-01T00:00:01Z,extra", r"Expected 10 columns, got 11"),
    ("user_000001,2009-01-01T00:00:02Z", "user_000002,2009-01-01T00:00:02Z",
     r"line 4: user_id 'user_000002' in the folder of user_000001"),
])
def test_bad_user_dir_values_name_file_and_line(tmp_path: Path, old: str, new: str,
                                                message: str) -> None:
    path = corrupt(write_user_dir(tmp_path, small_plays()), old, new)
    with pytest.raises(SessionlenError, match=message) as info:
        summarize(tmp_path, SessionParams())
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "summary_dir").exists()


def test_user_plays_reader_serves_other_columns_with_the_same_checks(tmp_path: Path) -> None:
    user_dir = write_user_dir(tmp_path, small_plays())
    names = {"track_name": pa.dictionary(pa.int32(), pa.string()), "age": pa.int32()}
    table = read_user_plays("user_000001", user_files(user_dir)["user_000001"], names)
    assert table.column_names == [TIMESTAMP, "track_name", "age", "duration"]
    assert table.column("track_name").to_pylist() == ["Track \u00fc"] * 3
    with pytest.raises(SessionlenError, match="not user_dir columns: title"):
        read_user_plays("user_000001", [], {"title": pa.string()})
    corrupt(user_dir, ",2.000,", ",-2.000,")
    with pytest.raises(SessionlenError, match=r"line 3: invalid duration -2.0"):
        read_user_plays("user_000001", user_files(user_dir)["user_000001"], names)


def test_bad_parameters_and_layout(tmp_path: Path) -> None:
    user_dir = write_user_dir(tmp_path, small_plays())
    with pytest.raises(SessionlenError, match="unknown engine 'dask'"):
        summarize(tmp_path, SessionParams(), engine="dask")
    with pytest.raises(SessionlenError, match="gap_minutes"):
        summarize(tmp_path, SessionParams(gap_minutes=0.0))
    with pytest.raises(SessionlenError, match="train_fraction"):
        summarize(tmp_path, SessionParams(train_fraction=1.5))
    (user_dir / "bad name").mkdir()
    with pytest.raises(SessionlenError, match="not a valid user id"):
        summarize(tmp_path, SessionParams())


def test_bookkeeping_entries_are_skipped_and_an_empty_user_dir_is_refused(tmp_path: Path) -> None:
    user_dir = write_user_dir(tmp_path / "a", small_plays())
    (user_dir / "_temporary").mkdir()
    (user_dir / ".staging").mkdir()
    (user_dir / "user_000001" / "_SUCCESS").write_text("")
    (user_dir / "user_000001" / ".part-00000.csv").write_text("not,a,user,dir,file\n")
    (user_dir / "user_000001" / "_partial.csv").write_text("garbage\n")
    result = summarize(tmp_path / "a", SessionParams())
    assert result["users"] == 1 and result["plays"] == 3
    empty = write_user_dir(tmp_path / "b", small_plays().iloc[:0])
    with pytest.raises(SessionlenError, match="no user folders to summarize"):
        summarize(tmp_path / "b", SessionParams())
    (empty / "user_000001").mkdir()
    (empty / "user_000001" / "part-00000.csv").write_text(",".join(USER_DIR_COLUMNS) + "\n")
    with pytest.raises(SessionlenError, match="the user files hold no plays"):
        summarize(tmp_path / "b", SessionParams())
