"""The in-session stage: its rows, what its features may read, its baselines, its oracle, the
results it records, and (slow) whether it beats the baselines on demo-scale synthetic data."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from utils.baseline.session_table import SOURCE_ID
from utils.core import columns as C
from utils.core.config import (
    LASTFM_API_URL,
    PROJECT_ROOT,
    CrawlParams,
    InSessionParams,
    SessionParams,
)
from utils.core.errors import SessionlenError
from utils.core.results import append_experiments, load_experiments
from utils.models_with_clusters import in_session
from utils.models_with_clusters.in_session_features import (
    PLAY_FEATURES,
    SESSION,
    SUMMARY_FEATURES,
    attach_sessions,
    known_plays,
    play_sequences,
    play_table,
    summarize_known,
)

NOTEBOOK = PROJECT_ROOT / "models_with_clusters" / "6_in_session.ipynb"
START = 1_200_000_000_000  # ms


def plays_frame(sessions: list[list[tuple[float, float, int]]], user: int = 0) -> pd.DataFrame:
    """final_dir-like plays of one user: per session a list of (offset s, duration s, artist).

    Session k starts k days after START; the track id is the artist id times 10 plus the
    position, so no track repeats unless a test says so; `session_length` is the last play's
    end (the session rule).
    """
    rows = []
    for k, plays in enumerate(sessions):
        start = START + k * 86_400_000
        length = max(offset + duration for offset, duration, _ in plays)
        for i, (offset, duration, artist) in enumerate(plays):
            rows.append({C.USER_ID: user, C.START_TIMESTAMP: start, C.SESSION_ID: k,
                         C.CURRENT_TIMESTAMP: start + int(offset * 1000),
                         C.TRACK_DURATION: duration, C.TIMES_PLAYED: 1,
                         C.ARTIST_NAME: artist, C.TRACK_NAME: artist * 10 + i,
                         C.SESSION_LENGTH: length, SESSION: k})
    return pd.DataFrame(rows)


def features_at(plays: pd.DataFrame, checkpoint_s: float
                ) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """(known plays, per-session summary, sequences of every session) at a checkpoint, the
    plays joined to their sessions through a summary-like session table, as the stage does."""
    first = plays.groupby(SESSION).first()
    sessions = pd.DataFrame({C.USER_ID: first[C.USER_ID], C.TIMESTAMP: first[C.START_TIMESTAMP],
                             C.SESSION_ID: first[C.SESSION_ID]})
    joined = attach_sessions(plays.drop(columns=SESSION), sessions)
    assert joined[SESSION].tolist() == plays[SESSION].tolist()
    lengths = first[C.SESSION_LENGTH].to_numpy()
    known = known_plays(play_table(joined), lengths > checkpoint_s, checkpoint_s)
    summary = summarize_known(known, len(lengths), checkpoint_s)
    sequences = play_sequences(known, np.arange(len(lengths)), 8, 100, 100)
    return known, summary, sequences.numeric


# One earlier session (artist 1 twice), then the session under test: 4 plays before e = 600 s
# (the third skipped: the fourth starts 60 s into a 200 s track), then plays after e.
HISTORY = [(0.0, 200.0, 1), (200.0, 200.0, 1)]
BEFORE_E = [(0.0, 200.0, 1), (200.0, 200.0, 2), (400.0, 200.0, 2), (460.0, 200.0, 3)]


def test_only_sessions_longer_than_e_are_rows() -> None:
    lengths = np.array([500.0, 600.0, 600.5, 4000.0, 700.0, 100.0])
    features = SimpleNamespace(lengths_s=lengths, rows={
        "train": np.array([0, 1, 2]), "validate": np.array([3]), "test": np.array([4, 5])})
    rows = in_session._role_rows(features, 600)
    assert {role: r.tolist() for role, r in rows.items()} == {
        "train": [2], "validate": [3], "test": [4]}


def test_plays_after_start_plus_e_change_no_feature() -> None:
    base = plays_frame([HISTORY, [*BEFORE_E, (660.0, 200.0, 4), (860.0, 300.0, 5)]])
    # The next play starts right after e: it would make the 4th play a skip and change the
    # pace, artists and idle time if it were read. Its artist is also a new one.
    changed = plays_frame([HISTORY, [*BEFORE_E, (601.0, 200.0, 9), (700.0, 900.0, 9)]])
    known_a, summary_a, seq_a = features_at(base, 600)
    known_b, summary_b, seq_b = features_at(changed, 600)
    assert known_a[SESSION].tolist() == [1, 1, 1, 1], "only the plays started before e"
    pd.testing.assert_frame_equal(summary_a, summary_b)
    np.testing.assert_array_equal(seq_a, seq_b)
    row = summary_a.loc[1]
    assert row["log_plays"] == pytest.approx(math.log1p(4))
    assert row["skip_share"] == pytest.approx(1 / 3), "3rd play skipped; 4th's end unknown"
    assert row["distinct_artists"] == 3
    assert row["last_remaining_s"] == pytest.approx(460 + 200 - 600)
    assert row["idle"] == 0.0
    assert summary_a.loc[0].isna().all(), "the first session lasted 400 s < e: not a row"
    # The control: the same change before e does change the features, so the test can fail.
    early = plays_frame([HISTORY, [*BEFORE_E[:3], (590.0, 200.0, 3), (790.0, 300.0, 5)]])
    assert not features_at(early, 600)[1].equals(summary_a)


def test_familiarity_counts_earlier_sessions_only() -> None:
    plays = plays_frame([HISTORY, BEFORE_E, [(0.0, 200.0, 2), (200.0, 700.0, 2)]])
    table = play_table(plays)
    assert table["familiarity"].tolist() == [0, 0, 2, 0, 0, 0, 2, 2]
    assert table["new_artist"].tolist() == [1, 0, 1, 1, 0, 1, 1, 0]
    assert list(PLAY_FEATURES[:1]) == ["present"] and "idle" in SUMMARY_FEATURES


def test_idle_listener_at_e() -> None:
    plays = plays_frame([[(0.0, 200.0, 1), (200.0, 100.0, 2), (900.0, 200.0, 3)]])
    summary = features_at(plays, 600)[1].loc[0]
    assert summary["idle"] == 1.0 and summary["idle_s"] == pytest.approx(300.0)


def history() -> pd.DataFrame:
    """Two users' sessions in (user, time) order; user 1's first three are train."""
    lengths = {1: [700.0, 500.0, 2000.0, 900.0, 650.0], 2: [3000.0, 610.0]}
    rows = [{C.USER_ID: u, C.TIMESTAMP: START + k, C.CURRENT_SESSION_LENGTH: x}
            for u, xs in lengths.items() for k, x in enumerate(xs)]
    return pd.DataFrame(rows)


def test_models_fit_on_a_seeded_sample_of_at_most_max_train_sessions() -> None:
    rows = {"train": np.arange(0, 50, 2), "validate": np.arange(50, 60), "test": np.arange(60, 70)}
    capped = in_session.fit_rows(rows, 10, seed=3)
    assert len(capped["train"]) == 10 and set(capped["train"]) <= set(rows["train"])
    assert np.all(np.diff(capped["train"]) > 0)
    np.testing.assert_array_equal(capped["train"], in_session.fit_rows(rows, 10, seed=3)["train"])
    assert capped["validate"] is rows["validate"] and capped["test"] is rows["test"]
    assert in_session.fit_rows(rows, 25, seed=3)["train"] is rows["train"]
    with pytest.raises(SessionlenError, match="max_train_sessions must be positive"):
        in_session.fit_rows(rows, 0, seed=3)


def test_baselines_on_a_hand_made_history() -> None:
    sessions = history()
    train = np.array([True, True, True, False, False, True, False])
    base = in_session.lasted_baselines(sessions, 600, train)
    # Rows lasting > 600 s: user 1's 700, 2000, 900, 650 and user 2's 3000, 610. The fallback is
    # the train median of sessions > 600 s: median(700, 2000, 3000) = 2000.
    assert base.index.tolist() == [0, 2, 3, 4, 5, 6]
    expected = [2000.0, 700.0, 1350.0, 900.0, 2000.0, 3000.0]
    assert base[in_session.USER_MEDIAN_LASTED].tolist() == expected
    assert base[in_session.USER_REMAINING].tolist() == expected
    assert (base[in_session.GLOBAL_MEDIAN_LASTED] == 2000.0).all()
    at_1800 = in_session.lasted_baselines(sessions, 1800, train)
    assert at_1800.index.tolist() == [2, 5]
    assert at_1800[in_session.USER_REMAINING].tolist() == [2500.0, 2500.0]


def test_baselines_need_a_long_train_session() -> None:
    with pytest.raises(SessionlenError, match="no train session lasted more than 5000"):
        in_session.lasted_baselines(history(), 5000, np.ones(7, bool))


def test_oracle_matches_by_user_and_start(tmp_path: Path) -> None:
    truth = tmp_path / "ground_truth"
    truth.mkdir()
    pd.DataFrame({
        C.USER_ID: ["user_a", "user_a", "user_b"], "start_ms": [START, START + 10_000, START],
        "length_s": [1, 2, 3], C.GT_MEDIAN: [1, 2, 3],
        "median_length_given_600_s": [1000, 1100, 1200],
        "median_length_given_1800_s": [2000, 2100, 2200],
    }).to_csv(truth / "sessions.csv", index=False)
    read = in_session.read_truth_given(tmp_path, [600, 1800, 3600])
    assert "median_length_given_3600_s" not in read.columns
    user_ids = pd.DataFrame({SOURCE_ID: ["user_a", "user_b"], C.USER_ID: [0, 1]})
    rows = pd.DataFrame({C.USER_ID: [1, 0, 0], C.TIMESTAMP: [START, START + 10_000,
                                                            START + 15_000]})
    values, exact = in_session.oracle_given(rows, read, user_ids, 1800)
    assert values.tolist() == [2200, 2100, 2100] and exact == 2
    assert in_session.oracle_given(rows, read, user_ids, 600)[0].tolist() == [1200, 1100, 1100]
    assert in_session.read_truth_given(tmp_path / "none", [600]) is None


def experiment_row(stage: str, checkpoint: float | None) -> dict[str, object]:
    row = {name: 1.0 for name in C.EXPERIMENT_COLUMNS}
    row.update(run_id="r1", finished_at="t", stage=stage, model="gru", params="{}",
               reference="user_median_lasted", selected=True)
    return row if checkpoint is None else {**row, C.CHECKPOINT_S: checkpoint}


def test_experiment_rows_carry_stage_and_checkpoint(tmp_path: Path) -> None:
    old = tmp_path / "results" / "experiments.csv"
    old.parent.mkdir()
    pd.DataFrame([experiment_row("baseline", None)])[C.EXPERIMENT_COLUMNS].to_csv(old,
                                                                                 index=False)
    append_experiments(tmp_path, [experiment_row("in_session", 600),
                                  experiment_row("in_session", 1800)])
    table = load_experiments(tmp_path)
    assert table.columns.tolist() == C.EXPERIMENT_FILE_COLUMNS
    assert table["stage"].tolist() == ["baseline", "in_session", "in_session"]
    assert table[C.CHECKPOINT_S].iloc[0] != table[C.CHECKPOINT_S].iloc[0], "empty for others"
    assert table[C.CHECKPOINT_S].iloc[1:].tolist() == [600, 1800]
    with pytest.raises(SessionlenError, match="checkpoint_s must be given"):
        append_experiments(tmp_path, [experiment_row("in_session", None)])
    with pytest.raises(SessionlenError, match="checkpoint_s must be given"):
        append_experiments(tmp_path, [experiment_row("clusters", 600)])


@pytest.mark.slow
def test_demo_scale_best_model_beats_both_user_baselines(tmp_path: Path) -> None:
    """On demo-scale synthetic data the validation-picked model beats both user baselines at
    every checkpoint, each paired 95% interval of the MAE difference below zero."""
    from utils.baseline.summaries import summarize
    from utils.data_processing.denormalize import denormalize
    from utils.data_processing.track_metadata import build_track_metadata
    from utils.data_processing.tracks import build_unique_tracks
    from utils.models_with_clusters.in_session_results import run_in_session
    from utils.models_with_clusters.session_data import build_session_data
    from utils.models_with_clusters.vocab import build_vocab
    from utils.synthetic.generate import generate_dataset

    raw, work = tmp_path / "raw", tmp_path / "work"
    generate_dataset(raw, scale="demo", seed=1)
    build_unique_tracks(raw, work)
    build_track_metadata(work, CrawlParams(), api_key=None, api_url=LASTFM_API_URL)
    denormalize(raw, work)
    summarize(work, SessionParams())
    build_vocab(work)
    build_session_data(work)
    verdict = run_in_session(work, raw, InSessionParams())
    print(verdict.to_string())
    assert verdict.index.tolist() == [600, 1800, 3600]
    assert verdict["holds"].all(), verdict.to_string()


def test_cli_without_earlier_stages_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "utils.cli", "in-session", "--work",
                           str(tmp_path / "work")], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sessionlen in-session: error:"), done.stderr
    assert "summarize" in lines[0]
