"""User profiles: train data only, eligibility filters with counted exclusions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_session_data import HOUR_MS, T0, make_work, session_plays

from utils.core import columns as C
from utils.core.config import SCALES, ClusterParams, WorkLayout
from utils.core.errors import SessionlenError, StageIncompleteError
from utils.core.stage_io import MANIFEST
from utils.models_with_clusters.profiles import (
    EXCLUDED_FILE,
    build_user_profiles,
    eligibility_summary,
    load_excluded,
    load_profiles,
    profile_parts,
    profiles_of,
)
from utils.models_with_clusters.session_data import build_session_data, read_final_split
from utils.models_with_clusters.vocab import build_vocab

LOOSE = ClusterParams(min_rows=0, min_sessions=0, max_average_length=1e9)


def listener(user: str, sessions: int, tracks: list[tuple[str, str]], offset_h: int = 0,
             test_tracks: list[tuple[str, str]] | None = None, duration_s: float = 200.0
             ) -> pd.DataFrame:
    """A user with `sessions` sessions of `tracks`; the last 20% play `test_tracks` instead."""
    n_test = sessions // 5
    return pd.concat(
        session_plays(user, T0 + (offset_h + 4 * i) * HOUR_MS,
                      test_tracks if test_tracks and i >= sessions - n_test else tracks,
                      duration_s)
        for i in range(sessions))


def built_work(tmp_path: Path, plays: pd.DataFrame) -> Path:
    """WORK with vocab and session_data built from hand-made plays."""
    work = make_work(tmp_path, plays)
    build_vocab(work)
    build_session_data(work)
    return work


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """Three listeners: a heavy one, a light one, one with very long sessions."""
    plays = pd.concat([
        listener("user_000001", 10, [("a", "x"), ("a", "x"), ("b", "y")],
                 test_tracks=[("z", "z")] * 30),
        listener("user_000002", 5, [("b", "y")], offset_h=1),
        listener("user_000003", 10, [("c", "w")] * 4, offset_h=2, duration_s=3000.0),
    ])
    return built_work(tmp_path, plays)


def test_profiles_use_train_sessions_only(work: Path) -> None:
    result = build_user_profiles(work, LOOSE)
    assert result["eligible"] == 3
    profiles = load_profiles(work).set_index(C.USER_ID)
    assert list(load_profiles(work).columns) == C.PROFILE_CLUSTER_COLUMNS
    heavy = profiles.loc[1]
    # 10 sessions: 7 train (the 30-play test sessions of "z" must not count).
    assert heavy["total_sessions"] == 7
    assert heavy["total_session_rows"] == 21
    assert heavy["max_session_length"] == pytest.approx(600.0)
    train = read_final_split(work, "train")
    top = train[(train[C.USER_ID] == 1)][C.ARTIST_NAME].mode()[0]
    assert heavy["top_artist"] == top
    long = profiles.loc[3]
    assert long[C.AVERAGE_SESSION_LENGTH] == pytest.approx(12000.0)
    assert long["median_session_length"] == pytest.approx(12000.0)


def test_profile_statistics() -> None:
    train = pd.DataFrame({
        C.USER_ID: [7, 7, 7, 7, 9], C.CURRENT_TIMESTAMP: [1, 2, 3, 4, 1],
        C.SESSION_ID: [0, 0, 1, 2, 0], C.SESSION_LENGTH: [10.0, 10.0, 40.0, 100.0, 5.0],
        C.GENDER: 1, C.AGE: [20, 20, 20, 21, 30], C.COUNTRY: 3, C.REGISTERED: 0,
        C.ARTIST_NAME: [4, 2, 2, 4, 0], C.TRACK_NAME: [0, 0, 0, 5, 0],
    })
    profiles = profiles_of(profile_parts(train)).set_index(C.USER_ID)
    assert profiles.loc[7, "total_sessions"] == 3
    assert profiles.loc[7, "total_session_rows"] == 4
    assert profiles.loc[7, C.AVERAGE_SESSION_LENGTH] == pytest.approx(50.0)
    assert profiles.loc[7, "median_session_length"] == pytest.approx(40.0)
    assert profiles.loc[7, C.AGE] == 21  # latest train session
    assert profiles.loc[7, "top_artist"] == 2  # tie 2 vs 4 -> smaller id
    assert profiles.loc[7, "top_track"] == 5  # unknown id 0 loses to any known track
    assert profiles.loc[9, "top_track"] == 0  # ...unless it is all the user played


def test_exclusions_are_listed_and_counted(work: Path) -> None:
    params = ClusterParams(min_rows=10, min_sessions=5, max_average_length=5000.0)
    result = build_user_profiles(work, params)
    assert result["eligible"] == 1 and result["excluded"] == 2
    assert result["excluded_by_reason"] == {"no_train_plays": 0, "min_rows": 1,
                                            "min_sessions": 1, "max_average_length": 1}
    excluded = load_excluded(work).set_index(C.USER_ID)
    assert excluded.loc[2, "reason"] == "min_rows;min_sessions"
    assert excluded.loc[3, "reason"] == "max_average_length"
    assert load_profiles(work)[C.USER_ID].tolist() == [1]
    manifest = json.loads((WorkLayout(work).final_dir / MANIFEST).read_text())["profiles"]
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_rejected"]) == (3, 1, 2)
    assert manifest["excluded_by_reason"]["min_rows"] == 1
    summary = eligibility_summary(work)["value"]
    assert summary["eligible"] == 1 and summary["threshold: min_rows"] == 10


def test_user_without_train_plays_is_excluded_with_a_reason(tmp_path: Path) -> None:
    plays = pd.concat([listener("user_000001", 10, [("a", "x")]),
                       listener("user_000002", 1, [("b", "y")], offset_h=1)])
    work = built_work(tmp_path, plays)
    # One session: the chrono split keeps it in train; remove it to simulate a held-out user.
    (WorkLayout(work).final_dir / "train" / "user_000002.csv").unlink()
    result = build_user_profiles(work, LOOSE)
    assert result["excluded_by_reason"]["no_train_plays"] == 1
    assert load_excluded(work)["reason"].tolist() == ["no_train_plays"]


def test_original_thresholds_can_exclude_everyone(work: Path) -> None:
    result = build_user_profiles(work, ClusterParams())
    assert result["eligible"] == 0
    assert load_profiles(work).empty
    assert len(load_excluded(work)) == 3


def test_bad_thresholds_and_missing_stage(tmp_path: Path, work: Path) -> None:
    with pytest.raises(SessionlenError, match="min_rows=-1"):
        build_user_profiles(work, ClusterParams(min_rows=-1))
    with pytest.raises(SessionlenError, match="max_average_length"):
        build_user_profiles(work, ClusterParams(max_average_length=0.0))
    with pytest.raises(StageIncompleteError, match="sessionlen profiles"):
        load_profiles(work)
    with pytest.raises(StageIncompleteError, match="sessionlen session-data"):
        build_user_profiles(tmp_path / "empty", LOOSE)


def test_scales_shrink_thresholds_with_their_histories() -> None:
    thresholds = {name: (s.min_rows, s.min_sessions) for name, s in SCALES.items()}
    assert thresholds == {"tiny": (25, 2), "demo": (125, 8), "full": (500, 30)}
    assert thresholds["full"] == (ClusterParams().min_rows, ClusterParams().min_sessions)

def test_failed_rewrite_leaves_the_stage_incomplete(work: Path) -> None:
    build_user_profiles(work, LOOSE)
    excluded = WorkLayout(work).final_dir / EXCLUDED_FILE
    excluded.unlink()
    excluded.mkdir()  # cannot be replaced by a file: the rewrite fails half-way
    with pytest.raises(OSError):
        build_user_profiles(work, LOOSE)
    with pytest.raises(StageIncompleteError):
        load_profiles(work)
    assert np.all(np.isfinite(pd.read_csv(WorkLayout(work).user_profile_cluster)[
        C.AVERAGE_SESSION_LENGTH]))


def test_rebuilding_upstream_stages_marks_profiles_stale(work: Path) -> None:
    build_user_profiles(work, LOOSE)
    build_session_data(work)
    with pytest.raises(StageIncompleteError, match="sessionlen profiles"):
        load_profiles(work)
    build_user_profiles(work, LOOSE)
    build_vocab(work)
    with pytest.raises(StageIncompleteError, match="sessionlen session-data"):
        build_user_profiles(work, LOOSE)
