"""Start-time features and sequence tensors: no look-ahead, train-only fitting, clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from utils.baseline.features import (
    CONTEXT_FEATURES,
    STANDARD_CLIP,
    STEP_FEATURES,
    Standardizer,
    TargetScaler,
    build_feature_set,
    history_index,
    tabular_features,
)
from utils.baseline.peer_groups import fit_peer_groups, peer_features
from utils.baseline.session_features import LOG_LENGTH, add_session_features, combine_splits
from utils.core import columns as C
from utils.core.errors import SessionlenError

HOUR_MS = 3_600_000
# 2009-05-04T00:00:00Z, a Monday.
MONDAY_MS = 1_241_395_200_000


def sessions_frame(lengths: dict[int, list[float]], gap_hours: float = 5.0) -> pd.DataFrame:
    """Summary rows for users with the given session lengths, one session every `gap_hours`."""
    rows = []
    for user, user_lengths in lengths.items():
        for i, length in enumerate(user_lengths):
            rows.append({
                C.TIMESTAMP: MONDAY_MS + user * 1000 + int(i * gap_hours * HOUR_MS),
                C.USER_ID: user, C.SESSION_ID: i, C.GENDER: [1, 0, -1][user % 3],
                C.AGE: 20 + user if user % 2 else -1, C.COUNTRY: user % 2 + 1,
                C.REGISTERED: MONDAY_MS - 400 * 24 * HOUR_MS if user % 2 else -1,
                C.PREVIOUS_SESSION_LENGTH: 0.0, C.AVERAGE_SESSION_LENGTH: 0.0,
                C.CURRENT_SESSION_LENGTH: float(length),
            })
    return pd.DataFrame(rows, columns=C.SUMMARY_COLUMNS)


def chrono(frame: pd.DataFrame, train: int, validate: int) -> dict[str, pd.DataFrame]:
    """Per user: first `train` sessions train, next `validate` validate, the rest test."""
    pos = frame.groupby(C.USER_ID).cumcount()
    return {"train": frame[pos < train],
            "validate": frame[(pos >= train) & (pos < train + validate)],
            "test": frame[pos >= train + validate]}


@pytest.fixture
def splits() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(3)
    lengths = {u: list(np.round(rng.lognormal(7 + 0.3 * u, 0.8, 12), 3)) for u in range(1, 5)}
    return chrono(sessions_frame(lengths), train=8, validate=2)


def test_combine_splits_orders_by_user_and_time_and_keeps_every_row(splits):
    combined = combine_splits({name: frame.iloc[::-1] for name, frame in splits.items()})
    assert len(combined) == sum(len(f) for f in splits.values())
    assert combined[C.USER_ID].is_monotonic_increasing
    assert (combined.groupby(C.USER_ID)[C.TIMESTAMP].diff().dropna() > 0).all()
    assert combined.groupby(C.USER_ID)["split"].apply(list).iloc[0] == (
        ["train"] * 8 + ["validate"] * 2 + ["test"] * 2)


def test_history_statistics_use_only_earlier_sessions():
    lengths = [100.0, 300.0, 50.0, 1000.0, 20.0]
    frame = add_session_features(combine_splits({"train": sessions_frame({7: lengths})}))
    logs = np.log1p(lengths)
    assert np.isnan(frame["hist_mean_log"].iloc[0]) and frame["has_history"].iloc[0] == 0
    for i in range(1, len(lengths)):
        assert frame["hist_mean_log"].iloc[i] == pytest.approx(logs[:i].mean())
        assert frame["hist_median_log"].iloc[i] == pytest.approx(np.median(logs[:i]))
        assert frame["lag1_log"].iloc[i] == pytest.approx(logs[i - 1])
        assert frame["log_history_count"].iloc[i] == pytest.approx(np.log1p(i))
    # Five hours between starts, minus the previous session's length: the idle gap.
    assert frame["log_gap_since_end"].iloc[1] == pytest.approx(np.log1p(5 * 3600 - 100.0))
    assert frame["log_gap_since_start"].iloc[1] == pytest.approx(np.log1p(5 * 3600))


def test_time_and_profile_features_are_read_from_the_session_start():
    frame = add_session_features(combine_splits({"train": sessions_frame({1: [60.0, 60.0]},
                                                                         gap_hours=30)}))
    # With no earlier session the habitual hour defaults to 00:00 UTC, shifted to 12:00.
    assert list(frame["hour"]) == [12, 18] and list(frame["weekday"]) == [0, 1]
    assert frame["hour_cos"].iloc[0] == pytest.approx(-1.0)
    assert frame["age_years"].iloc[0] == 21 and frame["age_known"].iloc[0] == 1
    assert frame["account_age_years"].iloc[0] == pytest.approx(400 / 365.25, rel=1e-3)


def test_hours_are_read_on_the_users_own_clock():
    # Two users with the same habit six time zones apart: every session 21:00 on their clock.
    east = sessions_frame({1: [600.0] * 6}, gap_hours=24)
    west = sessions_frame({2: [600.0] * 6}, gap_hours=24)
    west[C.TIMESTAMP] += 6 * HOUR_MS
    frame = add_session_features(combine_splits({"train": pd.concat([east, west])}))
    later = frame[frame.groupby(C.USER_ID).cumcount() > 0]
    assert (later["hour"] == 12).all()
    np.testing.assert_allclose(later.groupby(C.USER_ID)["hour_sin"].mean(), 0.0, atol=1e-3)
    assert (frame["hour_regularity"].dropna() > 0.99).all()


def test_no_feature_of_a_session_sees_its_own_length_or_later_ones(splits):
    base = build_feature_set(splits, sequence_length=4)
    changed = {name: frame.copy() for name, frame in splits.items()}
    test = changed["test"]
    target_index = test.index[0]
    test.loc[target_index, C.CURRENT_SESSION_LENGTH] = 99_999.0
    other = build_feature_set(changed, sequence_length=4)
    row = int(np.flatnonzero(base.sessions[C.CURRENT_SESSION_LENGTH].to_numpy()
                             != other.sessions[C.CURRENT_SESSION_LENGTH].to_numpy())[0])
    user_rows = np.flatnonzero(base.sessions[C.USER_ID].to_numpy()
                               == base.sessions[C.USER_ID].iloc[row])
    upto = user_rows[user_rows <= row]
    np.testing.assert_array_equal(base.context[upto], other.context[upto])
    np.testing.assert_array_equal(base.steps[base.history[upto]], other.steps[other.history[upto]])
    assert base.target[row] != other.target[row]
    # ...while the next session of that user does see it, through its history.
    assert not np.array_equal(base.context[row + 1], other.context[row + 1])


def test_scalers_and_vocabularies_are_fit_on_train_rows_only(splits):
    base = build_feature_set(splits, sequence_length=3)
    changed = {name: frame.copy() for name, frame in splits.items()}
    changed["test"][C.CURRENT_SESSION_LENGTH] *= 50
    changed["test"][C.COUNTRY] = 99
    other = build_feature_set(changed, sequence_length=3)
    assert other.target_scaler == base.target_scaler
    train = base.rows["train"]
    np.testing.assert_allclose(other.context[train], base.context[train])
    assert (other.categorical["country"][other.rows["test"]] == 0).all()
    assert base.vocab_sizes["country"] == 3
    assert "user" not in base.categorical


def test_a_user_without_train_sessions_still_gets_features(splits):
    newcomer = sessions_frame({9: [120.0, 240.0]})
    splits = {**splits, "test": pd.concat([splits["test"], newcomer])}
    features = build_feature_set(splits, sequence_length=3)
    rows = np.flatnonzero(features.sessions[C.USER_ID].to_numpy() == 9)
    assert np.isfinite(features.context[rows]).all()
    assert features.history[rows[1], -1] == rows[0] + 1


def test_peer_groups_are_ordered_by_level_and_fit_on_train_users_only():
    rng = np.random.default_rng(5)
    short = {u: list(rng.lognormal(5.5, 0.3, 20)) for u in range(1, 9)}
    long = {u: list(rng.lognormal(8.5, 0.3, 20)) for u in range(11, 19)}
    splits = chrono(sessions_frame({**short, **long}), train=14, validate=2)
    features = build_feature_set(splits, sequence_length=2, peer_groups=2)
    sessions = features.sessions
    peers = fit_peer_groups(sessions, features.rows["train"], groups=2, seed=1)
    assert peers.levels[0] < 6.0 < 8.0 < peers.levels[1]
    probs, names = peer_features(sessions, peers)
    assert names[:3] == ["peer_p1", "peer_p2", "peer_level"]
    test = features.rows["test"]
    is_long = sessions[C.USER_ID].to_numpy()[test] > 10
    assert (probs[test][is_long, 1] > 0.99).all() and (probs[test][~is_long, 0] > 0.99).all()
    assert {"peer_p1", "peer_level", "hour_sin_x_peer_p2"} <= set(features.context_names)
    assert features.context.shape[1] == len(features.context_names)
    # Changing test lengths moves no group: the mixture never sees them.
    changed = {name: frame.copy() for name, frame in splits.items()}
    changed["test"][C.CURRENT_SESSION_LENGTH] *= 100
    again = fit_peer_groups(add_session_features(combine_splits(changed)),
                            features.rows["train"], groups=2, seed=1)
    np.testing.assert_allclose(again.levels, peers.levels)


def test_peer_groups_are_skipped_when_too_few_users_or_disabled(splits):
    assert fit_peer_groups(build_feature_set(splits, 2).sessions, np.arange(8), 4, 1) is None
    features = build_feature_set(splits, sequence_length=2, peer_groups=0)
    assert not any(name.startswith("peer_") for name in features.context_names)
    with pytest.raises(SessionlenError, match="peer_groups"):
        build_feature_set(splits, sequence_length=2, peer_groups=-1)


def test_history_index_pads_new_users_and_never_crosses_users():
    users = np.array([1, 1, 1, 2, 2, 3])
    index = history_index(users, 2)
    # Step-table row r + 1 holds session r; 0 is padding; the newest earlier session is last.
    np.testing.assert_array_equal(index, [[0, 0], [0, 1], [1, 2], [0, 0], [0, 4], [0, 0]])


def test_test_sequences_include_the_users_earlier_train_and_validate_sessions(splits):
    features = build_feature_set(splits, sequence_length=4)
    first_test = features.rows["test"][0]
    earlier = features.history[first_test] - 1
    assert (earlier >= 0).all()
    assert set(features.sessions["split"].iloc[earlier]) == {"train", "validate"}
    steps = features.steps[features.history[first_test]]
    assert (steps[:, STEP_FEATURES.index("present")] == 1).all()
    assert features.steps.shape == (len(features.sessions) + 1, len(STEP_FEATURES))
    assert (features.steps[0] == 0).all()


def test_context_has_no_missing_values_and_is_standardized_on_train(splits):
    features = build_feature_set(splits, sequence_length=2)
    assert features.context.shape == (len(features.sessions), len(features.context_names))
    assert features.context_names[:len(CONTEXT_FEATURES)] == CONTEXT_FEATURES
    assert np.isfinite(features.context).all()
    assert np.abs(features.context).max() <= STANDARD_CLIP
    train = features.context[features.rows["train"]]
    # Columns with no train value at the clip are exactly standardized on train.
    unclipped = (np.abs(train) < STANDARD_CLIP).all(axis=0)
    informative = unclipped & (train.std(axis=0) > 1e-6)
    np.testing.assert_allclose(train.mean(axis=0)[unclipped], 0.0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=0)[informative], 1.0, rtol=1e-4)


def test_standardized_values_far_outside_train_are_clipped():
    rare = np.r_[np.zeros(999), 1.0][:, None]  # a flag one train row in a thousand has
    scaler = Standardizer.fit(rare)
    assert scaler.apply(np.array([[1.0], [0.0]])).ravel().tolist() == pytest.approx(
        [STANDARD_CLIP, -rare.mean() / rare.std()], rel=1e-5)


def test_target_scaler_round_trips_seconds():
    seconds = np.array([0.0, 1.0, 250.0, 36_000.0])
    scaler = TargetScaler.fit(seconds)
    np.testing.assert_allclose(scaler.decode(scaler.encode(seconds)), seconds, rtol=1e-5,
                               atol=1e-3)
    assert (scaler.decode(np.array([-100.0])) >= 0).all()


def test_tabular_features_hold_lags_and_categories(splits):
    features = build_feature_set(splits, sequence_length=2)
    table = tabular_features(features, lags=5)
    assert len(table) == len(features.sessions)
    assert str(table["country_id"].dtype) == "category"
    assert list(table.columns[:len(features.context_names)]) == features.context_names
    logs = features.sessions[LOG_LENGTH].to_numpy()
    assert table["lag5_log"].iloc[5] == pytest.approx(logs[0])
    assert np.isnan(table["lag5_log"].iloc[4])


def test_missing_column_is_a_one_line_error(splits):
    broken = {**splits, "test": splits["test"].drop(columns=[C.AGE])}
    with pytest.raises(SessionlenError, match="'test' lacks column.*age"):
        build_feature_set(broken, sequence_length=2)


def test_invalid_length_names_the_split_and_user(splits):
    broken = {name: frame.copy() for name, frame in splits.items()}
    broken["validate"].iloc[0, broken["validate"].columns.get_loc(C.CURRENT_SESSION_LENGTH)] = -5
    with pytest.raises(SessionlenError, match="'validate': user 1 session 8"):
        build_feature_set(broken, sequence_length=2)


def test_unknown_split_name_and_bad_sequence_length_are_errors(splits):
    with pytest.raises(SessionlenError, match="test split 'holdout' not found"):
        build_feature_set(splits, sequence_length=2, test_split="holdout")
    with pytest.raises(SessionlenError, match="must differ"):
        build_feature_set(splits, sequence_length=2, validation_split="train")
    with pytest.raises(SessionlenError, match="sequence_length"):
        build_feature_set(splits, sequence_length=0)
