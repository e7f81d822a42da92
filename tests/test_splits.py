"""Invariants of the chrono and seed splits (pure functions on session counts and frames)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.baseline.splits import (
    assign_splits,
    check_fractions,
    chrono_bounds,
    chrono_min_sessions,
    seed_bounds,
    split_bounds,
    split_codes,
    split_minimum,
)
from utils.core.columns import SESSION_ID, SPLITS, USER_ID
from utils.core.config import SessionParams
from utils.core.errors import SessionlenError

counts_strategy = st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=60)


def split_sessions(sessions: pd.DataFrame, params: SessionParams) -> dict[str, pd.DataFrame]:
    """The sessions frame cut into train/validate/test frames by the split codes."""
    codes = split_codes(sessions, params)
    return {name: sessions[codes == i] for i, name in enumerate(SPLITS)}


def sessions_frame(counts: list[int]) -> pd.DataFrame:
    """A sessions frame with `counts[i]` sessions for user i, in (user, time) order."""
    users = np.repeat(np.arange(len(counts)), counts)
    ids = np.concatenate([np.arange(n) for n in counts])
    return pd.DataFrame({USER_ID: users, SESSION_ID: ids, "timestamp": ids * 1000 + users})


@given(counts_strategy)
@settings(max_examples=200, deadline=None)
def test_chrono_bounds_follow_the_stated_rounding(counts: list[int]) -> None:
    n = np.array(counts)
    train_end, validate_end = chrono_bounds(n, 0.7, 0.1)
    assert np.all((train_end >= 0) & (train_end <= validate_end) & (validate_end <= n))
    assert np.array_equal(n - validate_end, n * 2 // 10)  # test = floor(20%)
    assert np.array_equal(validate_end - train_end, n // 10)  # validate = floor(10%)
    assert np.all(train_end >= np.ceil(n * 0.7) - 1e-9)  # train takes the remainder


def test_chrono_rounding_at_small_counts() -> None:
    train_end, validate_end = chrono_bounds(np.array([1, 4, 5, 9, 10, 20]))
    sizes = np.stack([train_end, validate_end - train_end,
                      np.array([1, 4, 5, 9, 10, 20]) - validate_end], axis=1)
    # fewer than 5 sessions: all train; 5-9: one test session, no validate; 10: 7/1/2
    assert sizes.tolist() == [[1, 0, 0], [4, 0, 0], [4, 0, 1], [8, 0, 1], [7, 1, 2],
                              [14, 2, 4]]


@given(counts_strategy, st.integers(min_value=0, max_value=2**31))
@settings(max_examples=100, deadline=None)
def test_every_session_lands_in_exactly_one_split_in_time_order(counts: list[int],
                                                               seed: int) -> None:
    sessions = sessions_frame(counts)
    for split in ("chrono", "seed"):
        parts = split_sessions(sessions, SessionParams(split=split, seed=seed))
        assert sum(len(p) for p in parts.values()) == len(sessions)
        joined = pd.concat(parts.values())
        assert not joined.index.duplicated().any()
        assert set(joined.index) == set(sessions.index)
        # Per user, every train session precedes every validate/test session.
        last_train = parts["train"].groupby(USER_ID)["timestamp"].max()
        for later in ("validate", "test"):
            first_later = parts[later].groupby(USER_ID)["timestamp"].min()
            common = first_later.index.intersection(last_train.index)
            assert (last_train[common] < first_later[common]).all()
        if split == "chrono":
            last_validate = parts["validate"].groupby(USER_ID)["timestamp"].max()
            first_test = parts["test"].groupby(USER_ID)["timestamp"].min()
            common = first_test.index.intersection(last_validate.index)
            assert (last_validate[common] < first_test[common]).all()


def test_seed_split_holds_out_whole_users_after_a_cut() -> None:
    counts = np.arange(1, 201) * 3
    train_end, validate_end = seed_bounds(counts, seed=7)
    train_users = (train_end == counts) & (validate_end == counts)
    validate_users = (train_end < counts) & (validate_end == counts)
    test_users = (train_end == validate_end) & (validate_end < counts)
    assert train_users.sum() == 160 and validate_users.sum() == 20 and test_users.sum() == 20
    held = validate_users | test_users
    # The cut is at a uniform(0.5, 1) fraction: at least half is history, >= 1 held-out session.
    assert np.all(train_end[held] >= np.floor(counts[held] * 0.5))
    assert np.all(train_end[held] <= counts[held] - 1)
    fractions = train_end[held] / counts[held]
    assert fractions.min() < 0.6 and fractions.max() > 0.9


def test_seed_split_is_deterministic_and_depends_on_the_seed() -> None:
    counts = np.full(50, 40)
    first = seed_bounds(counts, seed=3)
    again = seed_bounds(counts, seed=3)
    other = seed_bounds(counts, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_split_bounds_are_keyed_by_user_in_sorted_order() -> None:
    counts = pd.Series([10, 20], index=["user_b", "user_a"])
    bounds = split_bounds(counts, SessionParams())
    assert bounds.index.tolist() == ["user_a", "user_b"]
    assert bounds.loc["user_a"].tolist() == [14, 16]
    assert bounds.loc["user_b"].tolist() == [7, 8]


def test_assign_splits_uses_the_boundaries() -> None:
    codes = assign_splits(np.arange(5), np.full(5, 2), np.full(5, 3))
    assert codes.tolist() == [0, 0, 1, 2, 2]
    assert [SPLITS[c] for c in codes[:3]] == ["train", "train", "validate"]


@pytest.mark.parametrize(("train", "validate", "bad"), [
    (1.2, 0.1, "train_fraction"), (0.7, -0.1, "validate_fraction"), (0.8, 0.3, "must not exceed"),
])
def test_bad_fractions_are_one_line_errors(train: float, validate: float, bad: str) -> None:
    with pytest.raises(SessionlenError, match=bad):
        check_fractions(train, validate)
    with pytest.raises(SessionlenError, match=bad):
        split_sessions(sessions_frame([5]), SessionParams(train_fraction=train,
                                                          validate_fraction=validate))


def test_chrono_minimum_is_the_fewest_sessions_filling_every_split() -> None:
    n = chrono_min_sessions(0.7, 0.1)
    train_end, validate_end = chrono_bounds(np.array([n - 1, n]), 0.7, 0.1)
    filled = (train_end >= 1) & (validate_end > train_end) & (np.array([n - 1, n]) > validate_end)
    assert n == 10 and filled.tolist() == [False, True]
    assert "from 10 sessions on; change those fractions" in split_minimum(
        {"split": "chrono", "train_fraction": 0.7, "validate_fraction": 0.1})
    assert split_minimum({"split": "seed"}).startswith("split=seed needs at least 10 users")
