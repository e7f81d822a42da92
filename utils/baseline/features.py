"""The feature set: everything the baseline models read, scaled, with the sequence tensors.

Every feature of a session uses only what is known when it starts (session_features); targets
are only ever taken from the split a row belongs to. Scalers, vocabularies and peer groups
(peer_groups) are fit on the training rows alone.

The user's identity enters through their history (statistics, habits, peer group), never as an
id: those exist for a user never seen in training too and keep changing as the user does, while
an id embedding is fit to the train sessions only and cannot follow the user past them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from utils.baseline.peer_groups import fit_peer_groups, peer_features
from utils.baseline.session_features import (
    LOG_LENGTH,
    add_session_features,
    combine_splits,
)
from utils.core import columns as C
from utils.core.errors import SessionlenError

# Numeric features of the session being predicted (standardized on train rows).
CONTEXT_FEATURES = [
    "hour_sin", "hour_cos", "weekday_sin", "weekday_cos", "is_weekend",
    "usual_hour_sin", "usual_hour_cos", "hour_regularity", "log_sessions_per_day",
    "weekend_share",
    "prev_hour_sin", "prev_hour_cos", "prev_weekday_sin", "prev_weekday_cos",
    "log_gap_since_end", "log_gap_since_start", "log_history_count", "has_history",
    "hist_mean_log", "hist_median_log", "hist_std_log", "hist_q25_log", "hist_q75_log",
    "ewm_fast_log", "ewm_slow_log", "recent_mean_log", "recent_median_log",
    "lag1_log", "lag2_log", "lag3_log", "lag1_minus_mean",
    "age_known", "age_years", "account_known", "account_age_years",
    "own_hour_block_dev", "own_day_type_dev", "own_gap_bucket_dev",
]
# Features of each earlier session in the sequence a network reads. `present` is always 1 for a
# real session, so a padded step (all zeros) is never mistaken for one.
STEP_FEATURES = [
    "present", LOG_LENGTH, "hour_sin", "hour_cos", "weekday_sin", "weekday_cos",
    "log_gap_since_end", "step_minus_mean",
]
# Categorical ids: embedded by the networks, native categories for LightGBM, never fed as numbers.
CATEGORICAL_FEATURES = ["country", "gender", "hour", "weekday"]
# Start-time features and listener habits whose products enter the context (see
# `interaction_products`).
INTERACTION_TIMES = ["hour_sin", "hour_cos", "prev_hour_sin", "prev_hour_cos", "weekday_sin",
                     "weekday_cos", "is_weekend"]
HABIT_FEATURES = ["weekend_share", "hist_median_log", "log_sessions_per_day", "hour_regularity",
                  "usual_hour_sin", "usual_hour_cos"]
STANDARD_CLIP = 5.0


@dataclass(frozen=True)
class Standardizer:
    """Column means and standard deviations fit on training rows."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> Standardizer:
        """Fit on the rows of `values` (constant columns keep a unit scale)."""
        mean, std = values.mean(axis=0), values.std(axis=0)
        # Constant columns (up to rounding noise) keep scale 1 instead of exploding.
        return cls(mean, np.where(std > 1e-9 * np.maximum(1.0, np.abs(mean)), std, 1.0))

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Standardize `values` as float32, clipped to +-STANDARD_CLIP standard deviations.

        A column that is nearly constant on the train rows (the membership of a peer group few
        train users belong to, a rare flag) can put other rows at hundreds of standard
        deviations, and a linear read-out then extrapolates to absurd lengths; beyond a few
        deviations a value says no more than "far out".
        """
        scaled = (values - self.mean) / self.std
        return np.clip(scaled, -STANDARD_CLIP, STANDARD_CLIP).astype(np.float32)


@dataclass(frozen=True)
class TargetScaler:
    """Seconds <-> standardized log1p(seconds); the MAE-optimal median survives the transform."""

    mean: float
    std: float

    @classmethod
    def fit(cls, seconds: np.ndarray) -> TargetScaler:
        """Fit on training targets in seconds."""
        logs = np.log1p(seconds)
        return cls(float(logs.mean()), float(max(logs.std(), 1e-9)))

    def encode(self, seconds: np.ndarray) -> np.ndarray:
        """Seconds to the standardized log target."""
        return ((np.log1p(seconds) - self.mean) / self.std).astype(np.float32)

    def decode(self, values: np.ndarray) -> np.ndarray:
        """Standardized log predictions back to non-negative seconds."""
        z = np.asarray(values, dtype=np.float64).reshape(-1)
        return np.clip(np.expm1(z * self.std + self.mean), 0.0, None)


@dataclass(frozen=True)
class FeatureSet:
    """Everything the models need, for every session of every split, in (user, time) order."""

    sessions: pd.DataFrame
    rows: dict[str, np.ndarray]
    context: np.ndarray
    categorical: dict[str, np.ndarray]
    vocab_sizes: dict[str, int]
    steps: np.ndarray
    history: np.ndarray
    target: np.ndarray
    target_scaler: TargetScaler
    split_names: dict[str, str]
    context_names: list[str]
    peer_groups: int = 0

    @property
    def lengths_s(self) -> np.ndarray:
        """Actual session lengths in seconds."""
        return self.sessions[C.CURRENT_SESSION_LENGTH].to_numpy(dtype=np.float64)

    def role_frame(self, role: str) -> pd.DataFrame:
        """The session rows of a role (train, validate or test), in (user, time) order."""
        return self.sessions.iloc[self.rows[role]]


def _role_rows(sessions: pd.DataFrame, split_names: dict[str, str]) -> dict[str, np.ndarray]:
    """Row positions of each role, checking that every named split exists and that they differ."""
    present = sorted(sessions[C.SPLIT].unique())
    rows = {}
    for role, name in split_names.items():
        # A split of the stage without sessions is too little data, which the caller explains.
        if name not in present and name not in C.SPLITS:
            raise SessionlenError(
                f"{role} split {name!r} not found in summary_dir; available: {', '.join(present)}"
            )
        rows[role] = np.flatnonzero(sessions[C.SPLIT].to_numpy() == name)
    if len(set(split_names.values())) != len(split_names):
        raise SessionlenError(f"train/validation/test splits must differ, got {split_names}")
    return rows


def _vocabulary(values: pd.Series, train_rows: np.ndarray) -> tuple[np.ndarray, int]:
    """Map values to ids 1..V by the values seen in training rows; 0 for unseen ones."""
    known = np.unique(values.to_numpy()[train_rows])
    pos = np.searchsorted(known, values.to_numpy())
    hit = (pos < len(known)) & (known[np.minimum(pos, len(known) - 1)] == values.to_numpy())
    return np.where(hit, pos + 1, 0).astype(np.int32), len(known) + 1


def _categorical(sessions: pd.DataFrame, train_rows: np.ndarray
                 ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Integer ids for embeddings: countries by train vocabulary, the rest fixed."""
    countries, n_countries = _vocabulary(sessions[C.COUNTRY], train_rows)
    gender = (sessions[C.GENDER].to_numpy().clip(-1, 1) + 1).astype(np.int32)
    ids = {"country": countries, "gender": gender,
           "hour": sessions["hour"].to_numpy(np.int32),
           "weekday": sessions["weekday"].to_numpy(np.int32)}
    sizes = {"country": n_countries, "gender": 3, "hour": 24, "weekday": 7}
    return ids, sizes


def _filled(frame: pd.DataFrame, names: list[str], train_rows: np.ndarray) -> np.ndarray:
    """Columns as a float matrix with missing values (no history, unknown) set to train means."""
    values = frame[names].to_numpy(dtype=np.float64)
    fill = frame[names].iloc[train_rows].mean().fillna(0.0).to_numpy(dtype=np.float64)
    return np.where(np.isnan(values), fill, values)


def history_index(users: np.ndarray, sequence_length: int) -> np.ndarray:
    """For each row, the step-table rows of the user's previous K sessions, oldest first.

    Step-table row r+1 holds session r; 0 is the all-zero padding step used where a user has
    fewer than K earlier sessions (pre-padding keeps the newest session last).
    """
    n = len(users)
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1] if n else np.zeros(0, int)
    first_row = np.repeat(starts, np.diff(np.r_[starts, n]))
    offsets = np.arange(sequence_length, 0, -1)
    earlier = np.arange(n)[:, None] - offsets[None, :]
    return np.where(earlier >= first_row[:, None], earlier + 1, 0).astype(np.int32)


def interaction_products(times: np.ndarray, habits: np.ndarray) -> np.ndarray:
    """Products of each start-time feature with each listener-habit feature.

    The effect of an hour or a weekday depends on the kind of listener and on the clock the
    habitual hour stands for; the products make those effects linear for every model.
    """
    return (times[:, :, None] * habits[:, None, :]).reshape(len(times), -1)


def _context(sessions: pd.DataFrame, train: np.ndarray, peer_groups: int | None, seed: int
             ) -> tuple[np.ndarray, list[str], int]:
    """The standardized context matrix (base features, peer-group features, interactions),
    its column names, and the number of peer groups used."""
    base = _filled(sessions, CONTEXT_FEATURES, train)
    base = Standardizer.fit(base[train]).apply(base)
    names = list(CONTEXT_FEATURES)
    habits = base[:, [CONTEXT_FEATURES.index(n) for n in HABIT_FEATURES]]
    habit_names = list(HABIT_FEATURES)
    peers = fit_peer_groups(sessions, train, peer_groups, seed)
    if peers is not None:
        peer, peer_names = peer_features(sessions, peers)
        peer = Standardizer.fit(peer[train]).apply(peer)
        base, names = np.hstack([base, peer]), names + peer_names
        habits = np.hstack([habits, peer[:, :len(peers.levels)]])
        habit_names += peer_names[:len(peers.levels)]
    times = base[:, [CONTEXT_FEATURES.index(n) for n in INTERACTION_TIMES]]
    products = interaction_products(times, habits)
    names += [f"{t}_x_{h}" for t in INTERACTION_TIMES for h in habit_names]
    groups = 0 if peers is None else len(peers.levels)
    return np.hstack([base, Standardizer.fit(products[train]).apply(products)]), names, groups


def build_feature_set(
    splits: dict[str, pd.DataFrame],
    sequence_length: int,
    train_split: str = "train",
    validation_split: str = "validate",
    test_split: str = "test",
    peer_groups: int | None = None,
    seed: int = 1,
) -> FeatureSet:
    """Features, sequences and targets for every session; everything fit on the train split."""
    if sequence_length < 1:
        raise SessionlenError(f"sequence_length must be at least 1, got {sequence_length}")
    if peer_groups is not None and peer_groups < 0:
        raise SessionlenError(f"peer_groups must be None (chosen by BIC), 0 (none) or more, "
                              f"got {peer_groups}")
    names = {"train": train_split, "validate": validation_split, "test": test_split}
    sessions = add_session_features(combine_splits(splits))
    rows = _role_rows(sessions, names)
    train = rows["train"]
    context, context_names, groups = _context(sessions, train, peer_groups, seed)
    steps_raw = _filled(sessions.assign(present=1.0), STEP_FEATURES, train)
    step_scaler = Standardizer.fit(steps_raw[train])
    # `present` stays exactly 1 so that padding (0) remains distinguishable after scaling.
    step_scaler = Standardizer(np.r_[0.0, step_scaler.mean[1:]], np.r_[1.0, step_scaler.std[1:]])
    steps = np.vstack([np.zeros((1, len(STEP_FEATURES)), np.float32), step_scaler.apply(steps_raw)])
    categorical, sizes = _categorical(sessions, train)
    target_scaler = TargetScaler.fit(sessions[C.CURRENT_SESSION_LENGTH].to_numpy(float)[train])
    return FeatureSet(
        sessions=sessions, rows=rows,
        context=context, context_names=context_names,
        categorical=categorical, vocab_sizes=sizes, steps=steps,
        history=history_index(sessions[C.USER_ID].to_numpy(), sequence_length),
        target=target_scaler.encode(sessions[C.CURRENT_SESSION_LENGTH].to_numpy(float)),
        target_scaler=target_scaler, split_names=names, peer_groups=groups,
    )


def tabular_features(features: FeatureSet, lags: int = 5) -> pd.DataFrame:
    """One row per session for tree models: context features, lagged log-lengths, category ids."""
    frame = features.sessions
    table = pd.DataFrame(features.context, columns=features.context_names, index=frame.index)
    lagged = frame[LOG_LENGTH]
    for k in range(4, lags + 1):
        lagged_k = lagged.groupby(frame[C.USER_ID], sort=False).shift(k)
        table[f"lag{k}_log"] = lagged_k
    for name in CATEGORICAL_FEATURES:
        table[f"{name}_id"] = pd.Categorical(features.categorical[name])
    return table
