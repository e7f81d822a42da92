"""Train/validate/test splits of per-user session sequences (pure functions, no I/O).

Both split kinds reduce to two boundaries per user, in session_id space: sessions with
`session_id < train_end` are train, `train_end <= session_id < validate_end` validate, the rest
test. Boundaries depend only on each user's session count (and the seed), so every engine gets
the same assignment from the same small table of counts.

- `chrono`: per user, in time order, the first sessions are train, then validate, then test.
  Validate and test sizes are floor(n * fraction) and train takes the remainder, so a user's
  earliest sessions always train: users with fewer than 5 sessions (at the default 70/10/20) are
  train only, users with 5 to 9 sessions have test sessions but no validate session.
- `seed`: the original pipeline's split. Users are shuffled with the seed; the first 80% are
  train users, the next 10% validate users, the rest test users. Each validate/test user's
  sessions are cut at a uniform(0.5, 1) fraction of their count: sessions after the cut are that
  split's rows, sessions before it are the user's known history and go to train (they precede
  the cut in time, so nothing leaks and no session is dropped).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from utils.core.columns import SESSION_ID, USER_ID
from utils.core.config import SessionParams
from utils.core.errors import SessionlenError

TRAIN_END = "train_end"
VALIDATE_END = "validate_end"
SEED_USER_FRACTIONS = (0.8, 0.1)
SEED_CUT_RANGE = (0.5, 1.0)
# Fractions like 1 - 0.7 - 0.1 are not exact in binary; rounding the product first keeps
# 10 sessions * 0.2 test from flooring to 1.
_PRODUCT_DECIMALS = 9
# Beyond this many sessions per user, a chrono split that still leaves a split empty is a
# parameter problem (a fraction of 0), not a small dataset.
MAX_MIN_SESSIONS = 10_000
# floor(0.8 n) train, floor(0.1 n) validate and the rest test users are all >= 1 from 10 users.
_SEED_MIN_USERS = 10


def check_fractions(train_fraction: float, validate_fraction: float) -> None:
    """Fail with a one-line error unless both fractions and their sum lie in [0, 1]."""
    for name, value in (("train_fraction", train_fraction),
                        ("validate_fraction", validate_fraction)):
        if not 0.0 <= value <= 1.0:
            raise SessionlenError(f"SessionParams parameter {name}={value} must be in [0, 1]")
    if train_fraction + validate_fraction > 1.0 + 1e-12:
        raise SessionlenError(
            f"SessionParams train_fraction + validate_fraction = "
            f"{train_fraction + validate_fraction} must not exceed 1"
        )


def _floor_share(counts: np.ndarray, fraction: float) -> np.ndarray:
    """floor(count * fraction), robust to binary rounding of the fraction."""
    return np.floor(np.round(counts * fraction, _PRODUCT_DECIMALS)).astype(np.int64)


def chrono_bounds(
    counts: np.ndarray, train_fraction: float = 0.7, validate_fraction: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Per-user (train_end, validate_end) of the chronological split of `counts` sessions."""
    check_fractions(train_fraction, validate_fraction)
    counts = np.asarray(counts, dtype=np.int64)
    n_test = _floor_share(counts, max(0.0, 1.0 - train_fraction - validate_fraction))
    n_validate = _floor_share(counts, validate_fraction)
    validate_end = counts - n_test
    return validate_end - n_validate, validate_end


def seed_bounds(counts: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user (train_end, validate_end) of the original's seeded split; users in given order."""
    counts = np.asarray(counts, dtype=np.int64)
    n_users = len(counts)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_users)
    cut_fraction = rng.uniform(*SEED_CUT_RANGE, size=n_users)
    n_train_users = int(_floor_share(np.array([n_users]), SEED_USER_FRACTIONS[0])[0])
    n_validate_users = int(_floor_share(np.array([n_users]), SEED_USER_FRACTIONS[1])[0])
    role = np.empty(n_users, dtype=np.int8)
    role[order[:n_train_users]] = 0
    role[order[n_train_users:n_train_users + n_validate_users]] = 1
    role[order[n_train_users + n_validate_users:]] = 2
    # uniform < 1 keeps the cut below the count: every held-out user has >= 1 held-out session.
    cut = np.floor(counts * cut_fraction).astype(np.int64)
    train_end = np.where(role == 0, counts, cut)
    validate_end = np.where(role == 2, cut, counts)
    return train_end, validate_end


def chrono_min_sessions(train_fraction: float, validate_fraction: float) -> int:
    """The fewest sessions that give a user a train, a validate and a test session (chrono)."""
    check_fractions(train_fraction, validate_fraction)
    counts = np.arange(1, MAX_MIN_SESSIONS + 1)
    train_end, validate_end = chrono_bounds(counts, train_fraction, validate_fraction)
    every = (train_end >= 1) & (validate_end > train_end) & (counts > validate_end)
    return int(counts[every][0]) if every.any() else 0


def split_minimum(params: dict[str, Any]) -> str:
    """What the data needs for every split to hold sessions, naming the parameters to change.

    `params` are the summarize stage's parameters as its manifest records them.
    """
    if params.get("split") == "seed":
        users = _SEED_MIN_USERS
        return (f"split=seed needs at least {users} users (train, validate and test users "
                f"{SEED_USER_FRACTIONS[0]:g}/{SEED_USER_FRACTIONS[1]:g}/rest); use split=chrono "
                f"or data with more listeners")
    fractions = (float(params.get("train_fraction", 0.7)),
                 float(params.get("validate_fraction", 0.1)))
    needed = chrono_min_sessions(*fractions)
    if not needed:
        return (f"split=chrono with train_fraction={fractions[0]:g} and validate_fraction="
                f"{fractions[1]:g} leaves a split empty for every user; change those fractions")
    return (f"split=chrono with train_fraction={fractions[0]:g} and validate_fraction="
            f"{fractions[1]:g} gives a user sessions in every split from {needed} sessions on; "
            f"change those fractions or use listeners with longer histories")


def split_bounds(counts: pd.Series, params: SessionParams) -> pd.DataFrame:
    """Boundaries for each user of `counts` (session counts indexed by user, sorted by user)."""
    counts = counts.sort_index()
    if params.split == "chrono":
        train_end, validate_end = chrono_bounds(
            counts.to_numpy(), params.train_fraction, params.validate_fraction)
    elif params.split == "seed":
        train_end, validate_end = seed_bounds(counts.to_numpy(), params.seed)
    else:
        raise SessionlenError(f"unknown split {params.split!r}; valid splits: chrono, seed")
    return pd.DataFrame({TRAIN_END: train_end, VALIDATE_END: validate_end}, index=counts.index)


def assign_splits(session_ids: np.ndarray, train_end: np.ndarray, validate_end: np.ndarray
                  ) -> np.ndarray:
    """Split index (0 train, 1 validate, 2 test) of each session given its user's boundaries."""
    session_ids = np.asarray(session_ids)
    return np.where(session_ids < train_end, 0,
                    np.where(session_ids < validate_end, 1, 2)).astype(np.int8)


def split_codes(sessions: pd.DataFrame, params: SessionParams, user: str = USER_ID) -> np.ndarray:
    """Split index of every row of a sessions frame (columns `user` and session_id)."""
    counts = sessions.groupby(user, sort=True).size()
    bounds = split_bounds(counts, params).reindex(sessions[user].to_numpy())
    return assign_splits(sessions[SESSION_ID].to_numpy(), bounds[TRAIN_END].to_numpy(),
                         bounds[VALIDATE_END].to_numpy())

