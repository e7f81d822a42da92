"""final_dir per-play files: sessions matched to summary_dir, splits, times_played, vocab ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from utils.baseline.summaries import summarize
from utils.baseline.summary_dir import load_summaries
from utils.core import columns as C
from utils.core.config import SessionParams, WorkLayout
from utils.core.errors import SessionlenError, StageIncompleteError
from utils.core.stage_io import MANIFEST, require_stage, write_manifest
from utils.models_with_clusters.session_data import (
    build_session_data,
    read_final_split,
    sample_rows,
    session_data_overview,
)
from utils.models_with_clusters.split_plays import times_played
from utils.models_with_clusters.vocab import build_vocab, read_vocabularies

T0 = 1_230_000_000_000  # 2008-12-23, ms
HOUR_MS = 3_600_000
PROFILE = {C.GENDER: "f", C.AGE: 30, C.COUNTRY: "Norway", C.REGISTERED: "2006-08-13"}


def session_plays(user: str, start_ms: int, tracks: list[tuple[str, str]], duration_s: float = 200.0
                  ) -> pd.DataFrame:
    """Back-to-back plays of `tracks` starting at `start_ms` (one session under the rule)."""
    stamps = start_ms + np.arange(len(tracks)) * int(duration_s * 1000)
    return pd.DataFrame({
        C.USER_ID: user, C.TIMESTAMP: stamps,
        C.ARTIST_NAME: [a for a, _ in tracks], C.TRACK_NAME: [t for _, t in tracks],
        C.DURATION: duration_s,
    })


def write_user_dir(work: Path, plays: pd.DataFrame, profiles: dict[str, dict] | None = None
                   ) -> None:
    """Write plays (ms timestamps) as WORK/user_dir/{user}/part-0.csv and a denormalize manifest."""
    user_dir = WorkLayout(work).user_dir
    for user, frame in plays.groupby(C.USER_ID, sort=True):
        profile = (profiles or {}).get(user, PROFILE)
        out = frame.sort_values(C.TIMESTAMP, kind="stable").assign(**profile, genre="rock|pop")
        out[C.TIMESTAMP] = pd.to_datetime(out[C.TIMESTAMP], unit="ms", utc=True).dt.strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        folder = user_dir / str(user)
        folder.mkdir(parents=True, exist_ok=True)
        out[C.USER_DIR_COLUMNS].to_csv(folder / "part-0.csv", index=False, lineterminator="\n")
    write_manifest(user_dir, "denormalize", inputs=[], parameters={}, rows_in=len(plays),
                   rows_out=len(plays), rows_rejected=0, outputs=[], timings={})


def small_corpus(users: int = 3, sessions: int = 10, seed: int = 0) -> pd.DataFrame:
    """Users with `sessions` sessions each, 2 h apart, tracks drawn from a small catalog."""
    rng = np.random.default_rng(seed)
    catalog = [(f"artist {a}", f"song {t}") for a in range(4) for t in range(3)]
    catalog += [('Quote "Band", The', "NA"), ("null", "")]
    frames = []
    for u in range(users):
        for s in range(sessions):
            picks = rng.integers(0, len(catalog), size=int(rng.integers(1, 6)))
            start = T0 + (u * 1000 + s * 2) * HOUR_MS
            frames.append(session_plays(f"user_{u + 1:06d}", start, [catalog[i] for i in picks]))
    return pd.concat(frames, ignore_index=True)


def make_work(tmp_path: Path, plays: pd.DataFrame | None = None) -> Path:
    """A WORK dir with user_dir (hand-made) and summary_dir (the real summarize stage)."""
    work = tmp_path / "work"
    write_user_dir(work, small_corpus() if plays is None else plays)
    summarize(work, SessionParams())
    return work


@pytest.fixture
def built(tmp_path: Path) -> Path:
    """WORK with vocab and session_data built on the small corpus."""
    work = make_work(tmp_path)
    build_vocab(work)
    build_session_data(work)
    return work


def test_every_play_lands_in_exactly_one_split(built: Path) -> None:
    frames = {s: read_final_split(built, s) for s in C.SPLITS}
    assert sum(len(f) for f in frames.values()) == len(small_corpus())
    assert all(list(f.columns) == C.FINAL_COLUMNS for f in frames.values())
    keys = pd.concat([f[[C.USER_ID, C.CURRENT_TIMESTAMP]] for f in frames.values()])
    assert not keys.duplicated().any()
    summaries = load_summaries(built)
    for split, frame in frames.items():
        sessions = frame[[C.USER_ID, C.START_TIMESTAMP]].drop_duplicates()
        expected = summaries[split][[C.USER_ID, C.TIMESTAMP]]
        assert len(sessions) == len(expected)
        assert set(map(tuple, sessions.to_numpy())) == set(map(tuple, expected.to_numpy()))


def test_rows_carry_their_session_summary(built: Path) -> None:
    test = read_final_split(built, "test")
    summary = load_summaries(built)["test"]
    merged = test.merge(summary, left_on=[C.USER_ID, C.START_TIMESTAMP],
                        right_on=[C.USER_ID, C.TIMESTAMP], suffixes=("", "_s"))
    assert len(merged) == len(test)
    assert (merged[C.SESSION_ID] == merged[f"{C.SESSION_ID}_s"]).all()
    assert np.allclose(merged[C.SESSION_LENGTH], merged[C.CURRENT_SESSION_LENGTH])
    assert (merged[C.CURRENT_TIMESTAMP] >= merged[C.START_TIMESTAMP]).all()
    assert (test[C.TRACK_DURATION] == 200.0).all()


def test_files_are_per_user_and_split(built: Path) -> None:
    final = WorkLayout(built).final_dir
    names = sorted(p.name for p in (final / "train").glob("*.csv"))
    assert names == ["user_000001.csv", "user_000002.csv", "user_000003.csv"]
    header = (final / "train" / "user_000001.csv").read_text().splitlines()[0]
    assert header == ",".join(C.FINAL_COLUMNS)
    assert set(json.loads((final / MANIFEST).read_text())) == {"vocab", "session_data"}
    entry = require_stage(final, "session_data")
    assert entry["rows_in"] == entry["rows_out"] == len(small_corpus())
    sample = sample_rows(built, "validate", rows=3)
    assert len(sample) <= 3 and (sample[C.USER_ID] == 1).all()
    with pytest.raises(SessionlenError, match="unknown split 'dev'"):
        read_final_split(built, "dev")


def test_times_played_counts_repeats_within_a_session() -> None:
    track = np.array([0, 0, 1, 2, 0, 0])
    sessions = np.array([0, 0, 0, 0, 0, 1])
    assert times_played(sessions, track).tolist() == [1, 2, 1, 1, 3, 1]
    assert times_played(np.zeros(0, int), np.zeros(0, int)).tolist() == []


def test_times_played_in_the_files(tmp_path: Path) -> None:
    tracks = [("a", "x"), ("a", "x"), ("b", "x"), ("a", "x")]
    plays = pd.concat([session_plays("u1", T0 + i * 4 * HOUR_MS, tracks) for i in range(10)])
    work = make_work(tmp_path, plays)
    build_vocab(work)
    build_session_data(work)
    train = read_final_split(work, "train")
    assert train[C.TIMES_PLAYED].tolist()[:4] == [1, 2, 1, 3]
    # ("b", "x") is a different track from ("a", "x"): the pair is the key.
    assert train[C.TRACK_NAME].nunique() == 2


def test_unseen_names_map_to_unknown_id(tmp_path: Path) -> None:
    early = [session_plays("u1", T0 + i * 4 * HOUR_MS, [("seen", "song")]) for i in range(8)]
    late = [session_plays("u1", T0 + i * 4 * HOUR_MS, [("new band", "new song")])
            for i in range(8, 10)]
    work = make_work(tmp_path, pd.concat(early + late))
    build_vocab(work)
    result = build_session_data(work)
    test = read_final_split(work, "test")
    assert (test[C.ARTIST_NAME] == 0).all() and (test[C.TRACK_NAME] == 0).all()
    assert (read_final_split(work, "train")[C.ARTIST_NAME] == 1).all()
    assert result["splits"]["test"]["unknown_artist_plays"] == len(test)
    overview = session_data_overview(work)
    assert overview.loc["test", "unknown_artist_share"] == 1.0
    assert overview.loc["train", "unknown_track_share"] == 0.0


def test_tied_timestamps_keep_the_summarize_order(tmp_path: Path) -> None:
    # Two plays at the same second: the later one in file order ends the session, so its
    # duration decides whether the next play (35 min later) continues the session: 35 min -
    # 600 s is within the 30 min gap, 35 min - 10 s would not be.
    base = [session_plays("u1", T0 + i * 4 * HOUR_MS, [("a", "x")]) for i in range(10)]
    tie = pd.DataFrame({C.USER_ID: "u1", C.TIMESTAMP: [T0 + 50 * HOUR_MS] * 2 + [
        T0 + 50 * HOUR_MS + 35 * 60_000], C.ARTIST_NAME: ["a", "b", "c"],
        C.TRACK_NAME: ["x", "y", "z"], C.DURATION: [10.0, 600.0, 100.0]})
    work = make_work(tmp_path, pd.concat(base + [tie]))
    build_vocab(work)
    build_session_data(work)
    rows = pd.concat([read_final_split(work, s) for s in C.SPLITS])
    last = rows[rows[C.CURRENT_TIMESTAMP] >= T0 + 50 * HOUR_MS]
    assert last[C.START_TIMESTAMP].nunique() == 1
    assert last[C.SESSION_LENGTH].iloc[0] == pytest.approx(35 * 60 + 100.0)


def test_requires_the_vocab_stage(tmp_path: Path) -> None:
    work = make_work(tmp_path)
    with pytest.raises(StageIncompleteError, match="sessionlen vocab"):
        build_session_data(work)


def test_refuses_user_dir_changed_after_summarize(tmp_path: Path) -> None:
    work = make_work(tmp_path)
    build_vocab(work)
    path = WorkLayout(work).user_dir / "user_000002" / "part-0.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))
    with pytest.raises(SessionlenError, match="user_000002.*rerun `sessionlen summarize`"):
        build_session_data(work)
    assert not (WorkLayout(work).final_dir / "train").exists()


def test_refuses_a_summary_of_another_gap(tmp_path: Path) -> None:
    plays = small_corpus()
    work = tmp_path / "work"
    write_user_dir(work, plays)
    summarize(work, SessionParams(gap_minutes=150.0))
    manifest = WorkLayout(work).summary_dir / MANIFEST
    data = json.loads(manifest.read_text())
    data["summarize"]["parameters"]["gap_minutes"] = 30.0
    manifest.write_text(json.dumps(data))
    with pytest.raises(SessionlenError, match="sessions"):
        build_vocab(work)


def test_failed_rebuild_keeps_old_files_and_marks_stage_incomplete(built: Path) -> None:
    final = WorkLayout(built).final_dir
    before = (final / "train" / "user_000001.csv").read_text()
    (WorkLayout(built).user_dir / "user_000003" / "part-0.csv").write_text("bad,header\n")
    with pytest.raises(SessionlenError, match="header"):
        build_session_data(built)
    assert (final / "train" / "user_000001.csv").read_text() == before
    with pytest.raises(StageIncompleteError):
        require_stage(final, "session_data")
    assert read_vocabularies(built)["artists"].table.shape[0] > 0
