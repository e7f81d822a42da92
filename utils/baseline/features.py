"""Features known at session start, and the sequence tensors the baseline networks read.

Every feature of a session uses only what is known when it starts: its start time, the user's
profile, and the lengths and gaps of the user's EARLIER sessions. Earlier sessions come from every
split (under the chrono split a test session's history includes the user's train sessions), but
targets are only ever taken from the split a row belongs to. Scalers, vocabularies and peer groups
are fit on the training rows alone.

The user's identity enters through their history (statistics, habits, peer group), never as an
id: those exist for a user never seen in training too and keep changing as the user does, while
an id embedding is fit to the train sessions only and cannot follow the user past them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.mixture import GaussianMixture

from utils.core import columns as C
from utils.core.errors import SessionlenError

SPLIT = "split"
LOG_LENGTH = "log_length"
SECONDS_PER_YEAR = 365.25 * 86400.0

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
# What a listener's history says about the kind of listener: peer groups are fit on these.
PEER_DESCRIPTORS = ["hist_median_log", "hist_mean_log", "hist_q25_log", "hist_q75_log",
                    "log_sessions_per_day", "weekend_share", "hour_regularity"]
# History sizes (sessions) at which a user's own level counts half in the shrunk deviations.
PEER_SHRINK_SESSIONS = (30, 100)
RECENT_WINDOW = 5
STANDARD_CLIP = 5.0
# Upper end of the peer-group numbers BIC chooses among.
MAX_PEER_GROUPS = 8
EWM_FAST_ALPHA = 0.3
EWM_SLOW_ALPHA = 0.05
REFERENCE_HOUR = 12.0
# Context histories: blocks of hours, gap buckets (log1p seconds: 3 h, 12 h, 2 days, a week) and
# how many sessions' worth of the user's overall level a context's own mean is shrunk toward.
HOUR_BLOCK = 3
GAP_BUCKET_EDGES = np.log1p([3 * 3600.0, 12 * 3600.0, 2 * 86400.0, 7 * 86400.0])
CONTEXT_PRIOR_SESSIONS = 10.0


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


def combine_splits(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """All splits' sessions in one frame sorted by (user, time), with the split name per row."""
    frames = []
    for name, frame in splits.items():
        missing = [c for c in C.SUMMARY_COLUMNS if c not in frame.columns]
        if missing:
            raise SessionlenError(f"summary split {name!r} lacks column(s) {', '.join(missing)}")
        frames.append(frame[C.SUMMARY_COLUMNS].assign(**{SPLIT: name}))
    if not frames:
        raise SessionlenError("no summary splits to build features from")
    sessions = pd.concat(frames, ignore_index=True)
    bad = sessions[C.CURRENT_SESSION_LENGTH].isna() | (sessions[C.CURRENT_SESSION_LENGTH] < 0)
    if bad.any():
        row = sessions[bad].iloc[0]
        raise SessionlenError(
            f"summary split {row[SPLIT]!r}: user {row[C.USER_ID]} session {row[C.SESSION_ID]} "
            f"has an invalid current_session_length {row[C.CURRENT_SESSION_LENGTH]!r} "
            f"({int(bad.sum())} such rows)"
        )
    return sessions.sort_values([C.USER_ID, C.TIMESTAMP, C.SESSION_ID], kind="stable",
                                ignore_index=True)


def _shifted(values: pd.Series, users: pd.Series) -> pd.Series:
    """`values` of each user's previous session (NaN for a first session)."""
    return values.groupby(users, sort=False).shift(1)


def _grouped_window(values: pd.Series, users: pd.Series, stat: str, window: int | None
                    ) -> pd.Series:
    """A per-user expanding (window None) or rolling statistic over sessions up to this one."""
    grouped = values.groupby(users, sort=False)
    roller = grouped.expanding() if window is None else grouped.rolling(window, min_periods=1)
    if stat.startswith("q"):
        result = roller.quantile(int(stat[1:]) / 100.0)
    else:
        result = getattr(roller, stat)()
    return result.reset_index(level=0, drop=True).sort_index()


def _mean_before(values: pd.Series, users: pd.Series) -> pd.Series:
    """Mean of `values` over each user's EARLIER sessions (NaN for a first session)."""
    return _shifted(_grouped_window(values, users, "mean", None), users)


def _history_stats(log_len: pd.Series, users: pd.Series) -> pd.DataFrame:
    """Statistics of each user's EARLIER log-lengths (NaN where there is no history yet)."""
    upto = {
        "hist_mean_log": _grouped_window(log_len, users, "mean", None),
        "hist_median_log": _grouped_window(log_len, users, "median", None),
        "hist_std_log": _grouped_window(log_len, users, "std", None),
        "hist_q25_log": _grouped_window(log_len, users, "q25", None),
        "hist_q75_log": _grouped_window(log_len, users, "q75", None),
        "recent_mean_log": _grouped_window(log_len, users, "mean", RECENT_WINDOW),
        "recent_median_log": _grouped_window(log_len, users, "median", RECENT_WINDOW),
    }
    grouped = log_len.groupby(users, sort=False)
    for name, alpha in (("ewm_fast_log", EWM_FAST_ALPHA), ("ewm_slow_log", EWM_SLOW_ALPHA)):
        ewm = grouped.ewm(alpha=alpha).mean()
        upto[name] = ewm.reset_index(level=0, drop=True).sort_index()
    # Statistics "up to and including" a session become "before" the next one by a shift.
    return pd.DataFrame({name: _shifted(s, users) for name, s in upto.items()})


def _circle(values: np.ndarray, period: float) -> tuple[np.ndarray, np.ndarray]:
    """Points on the unit circle for a periodic quantity (hours of a day, days of a week)."""
    angle = 2 * np.pi * values / period
    return np.sin(angle), np.cos(angle)


def _time_features(timestamp_ms: pd.Series, users: pd.Series) -> pd.DataFrame:
    """Time of day and week on the user's own clock, as ids and as points on a circle.

    Timestamps are UTC and time zones unknown, so each start is shifted by the user's habitual
    listening hour (circular mean of the UTC start hours of EARLIER sessions) to REFERENCE_HOUR:
    whatever a user's zone, "two hours after when they usually listen" lands on the same hour.
    """
    utc = pd.to_datetime(timestamp_ms.to_numpy(dtype=np.int64), unit="ms", utc=True)
    utc_hour = utc.hour.to_numpy() + utc.minute.to_numpy() / 60.0
    utc_sin, utc_cos = _circle(utc_hour, 24.0)
    usual_sin = _mean_before(pd.Series(utc_sin, index=users.index), users)
    usual_cos = _mean_before(pd.Series(utc_cos, index=users.index), users)
    usual_hour = (np.arctan2(usual_sin, usual_cos).fillna(0.0) * 24 / (2 * np.pi)) % 24
    own = pd.to_datetime(timestamp_ms.to_numpy(dtype=np.int64)
                         + ((REFERENCE_HOUR - usual_hour.to_numpy()) * 3_600_000).astype(np.int64),
                         unit="ms", utc=True)
    hour = own.hour.to_numpy() + own.minute.to_numpy() / 60.0
    weekday = own.day_of_week.to_numpy()
    hour_sin, hour_cos = _circle(hour, 24.0)
    weekday_sin, weekday_cos = _circle(weekday, 7.0)
    return pd.DataFrame({
        "hour": own.hour.to_numpy(), "weekday": weekday,
        "hour_sin": hour_sin, "hour_cos": hour_cos,
        "weekday_sin": weekday_sin, "weekday_cos": weekday_cos,
        "is_weekend": (weekday >= 5).astype(np.float64),
        "usual_hour_sin": usual_sin, "usual_hour_cos": usual_cos,
        "hour_regularity": np.hypot(usual_sin, usual_cos),
    }, index=timestamp_ms.index)


def _utc_hours(timestamp_ms: pd.Series) -> np.ndarray:
    """The UTC hour of each start: a user's own clock up to the user's fixed time zone."""
    return (timestamp_ms.to_numpy(dtype=np.int64) // 3_600_000) % 24


def shrunk_context_deviation(log_len: pd.Series, users: pd.Series, context: np.ndarray,
                             prior_sessions: float) -> pd.Series:
    """How the user's EARLIER sessions in the same context differ from all their earlier ones.

    The mean log-length of the user's earlier sessions in this session's context, shrunk toward
    the user's overall earlier mean by `prior_sessions` pseudo-sessions, minus that mean: zero
    without evidence, the user's own context effect once there are many such sessions. The
    context is any integer label (a block of hours, a weekday type, a gap bucket), so the effect
    can take any shape and differ for every listener.
    """
    key = users.to_numpy(dtype=np.int64) * 64 + np.asarray(context, dtype=np.int64)
    grouped = log_len.groupby(key, sort=False)
    before_sum = grouped.cumsum() - log_len
    before_count = grouped.cumcount().astype(np.float64)
    overall = _mean_before(log_len, users)
    shrunk = (before_sum + prior_sessions * overall) / (before_count + prior_sessions)
    return shrunk - overall


def context_history(log_len: pd.Series, users: pd.Series, utc_hour: np.ndarray,
                    is_weekend: pd.Series, log_gap: pd.Series) -> pd.DataFrame:
    """Each listener's own effects of the hour, the day type and the gap since the last session.

    Listeners differ in when they listen long and in how a break changes their next session;
    these deviations let a model learn that from each listener's history (see
    `shrunk_context_deviation`) instead of from a fixed shape shared by everyone.
    """
    gap_bucket = np.digitize(np.nan_to_num(log_gap.to_numpy(), nan=-1.0), GAP_BUCKET_EDGES)
    return pd.DataFrame({
        "own_hour_block_dev": shrunk_context_deviation(
            log_len, users, utc_hour // HOUR_BLOCK, CONTEXT_PRIOR_SESSIONS),
        "own_day_type_dev": shrunk_context_deviation(
            log_len, users, is_weekend.to_numpy(), CONTEXT_PRIOR_SESSIONS),
        "own_gap_bucket_dev": shrunk_context_deviation(
            log_len, users, gap_bucket, CONTEXT_PRIOR_SESSIONS),
    }, index=log_len.index)


def add_session_features(sessions: pd.DataFrame) -> pd.DataFrame:
    """Add every start-time feature to a (user, time)-sorted session frame (raw, unscaled)."""
    users = sessions[C.USER_ID]
    length = sessions[C.CURRENT_SESSION_LENGTH].astype(np.float64)
    log_len = np.log1p(length).rename(LOG_LENGTH)
    start_s = sessions[C.TIMESTAMP].astype(np.float64) / 1000.0
    prev_start = _shifted(start_s, users)
    prev_end = prev_start + _shifted(length, users)
    count = sessions.groupby(C.USER_ID, sort=False).cumcount().astype(np.float64)
    stats = _history_stats(log_len, users)
    lag1 = _shifted(log_len, users)
    age = sessions[C.AGE].astype(np.float64)
    registered = sessions[C.REGISTERED].astype(np.float64)
    account_known = registered > 0
    extra = pd.DataFrame({
        LOG_LENGTH: log_len,
        "log_gap_since_end": np.log1p((start_s - prev_end).clip(lower=0.0)),
        "log_gap_since_start": np.log1p((start_s - prev_start).clip(lower=0.0)),
        "log_history_count": np.log1p(count),
        "has_history": (count > 0).astype(np.float64),
        "lag1_log": lag1,
        "lag2_log": _shifted(lag1, users),
        "lag3_log": _shifted(_shifted(lag1, users), users),
        "lag1_minus_mean": lag1 - _shifted(stats["hist_mean_log"], users),
        # Deviation of a session from the user's mean before it: the persistence signal.
        "step_minus_mean": log_len - stats["hist_mean_log"],
        "age_known": (age >= 0).astype(np.float64),
        "age_years": age.where(age >= 0),
        "account_known": account_known.astype(np.float64),
        "account_age_years": ((start_s * 1000.0 - registered) / 1000.0 / SECONDS_PER_YEAR
                              ).where(account_known),
    }, index=sessions.index)
    times = _time_features(sessions[C.TIMESTAMP], users)
    previous = pd.DataFrame({f"prev_{name}": _shifted(times[name], users)
                             for name in ("hour_sin", "hour_cos", "weekday_sin", "weekday_cos")})
    # How often and when a user listens tells listener types apart as much as how long.
    days_active = (start_s - start_s.groupby(users, sort=False).transform("first")) / 86400.0
    habits = pd.DataFrame({
        "log_sessions_per_day": np.log((count + 1.0) / (days_active + 1.0)),
        "weekend_share": _mean_before(times["is_weekend"], users),
    })
    context = context_history(log_len, users, _utc_hours(sessions[C.TIMESTAMP]),
                              times["is_weekend"], extra["log_gap_since_end"])
    return pd.concat([sessions, times, previous, habits, stats, extra, context], axis=1)


def _role_rows(sessions: pd.DataFrame, split_names: dict[str, str]) -> dict[str, np.ndarray]:
    """Row positions of each role, checking that every named split exists and that they differ."""
    present = sorted(sessions[SPLIT].unique())
    rows = {}
    for role, name in split_names.items():
        # A split of the stage without sessions is too little data, which the caller explains.
        if name not in present and name not in C.SPLITS:
            raise SessionlenError(
                f"{role} split {name!r} not found in summary_dir; available: {', '.join(present)}"
            )
        rows[role] = np.flatnonzero(sessions[SPLIT].to_numpy() == name)
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


@dataclass(frozen=True)
class PeerGroups:
    """A Gaussian mixture over train users' habits: the kinds of listener, and their levels."""

    mixture: GaussianMixture
    center: np.ndarray
    scale: np.ndarray
    levels: np.ndarray

    def probabilities(self, descriptors: np.ndarray) -> np.ndarray:
        """Group membership of each row; rows without history get the groups' shares."""
        known = ~np.isnan(descriptors).any(axis=1)
        probs = np.tile(self.mixture.weights_, (len(descriptors), 1))
        if known.any():
            probs[known] = self.mixture.predict_proba((descriptors[known] - self.center)
                                                      / self.scale)
        return probs


def _ordered_mixture(values: np.ndarray, groups: int, seed: int) -> GaussianMixture:
    """A seeded diagonal Gaussian mixture of `groups` components over standardized rows."""
    return GaussianMixture(groups, covariance_type="diag", n_init=5, reg_covar=1e-4,
                           random_state=seed).fit(values)


def choose_peer_groups(values: np.ndarray, seed: int, most: int = MAX_PEER_GROUPS) -> int:
    """The number of groups (1..most, two users per group at least) with the lowest BIC.

    BIC weighs the fit to the train users against the parameters each group adds, so the
    number follows the data, whatever generated it, without looking at any session to predict.
    """
    candidates = range(1, max(1, min(most, len(values) // 2)) + 1)
    bic = [_ordered_mixture(values, k, seed).bic(values) for k in candidates]
    return int(candidates[int(np.argmin(bic))])


def fit_peer_groups(sessions: pd.DataFrame, train_rows: np.ndarray, groups: int | None,
                    seed: int) -> PeerGroups | None:
    """Fit peer groups on each train user's habits as of their last train session.

    `groups` None chooses the number by BIC on those train users (`choose_peer_groups`).
    Groups are ordered by level (mean log-length). None when groups is 0 or there are too few
    train users (fewer than two per group) to fit them.
    """
    train = sessions.iloc[train_rows]
    last = train.groupby(C.USER_ID, sort=False).tail(1)[PEER_DESCRIPTORS].dropna()
    if groups == 0 or len(last) < 2 * (groups or 1):
        return None
    values = last.to_numpy(dtype=np.float64)
    center, scale = values.mean(axis=0), values.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    standardized = (values - center) / scale
    if groups is None:
        groups = choose_peer_groups(standardized, seed)
    mixture = _ordered_mixture(standardized, groups, seed)
    order = np.argsort(mixture.means_[:, 1] * scale[1] + center[1])
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        setattr(mixture, name, getattr(mixture, name)[order])
    levels = mixture.means_[:, 1] * scale[1] + center[1]
    return PeerGroups(mixture, center, scale, levels)


def peer_features(sessions: pd.DataFrame, peers: PeerGroups) -> tuple[np.ndarray, list[str]]:
    """Group probabilities, the expected group level, and the user's own deviation from it.

    The deviation is shrunk by history size: with few sessions a user's mean says little beyond
    their group's level, with many it says how they differ (an empirical-Bayes estimate, left to
    the models to weigh through two shrinkage strengths).
    """
    probs = peers.probabilities(sessions[PEER_DESCRIPTORS].to_numpy(dtype=np.float64))
    level = probs @ peers.levels
    deviation = np.nan_to_num(sessions["hist_mean_log"].to_numpy(dtype=np.float64) - level)
    count = np.expm1(sessions["log_history_count"].to_numpy(dtype=np.float64))
    shrunk = [deviation * count / (count + k) for k in PEER_SHRINK_SESSIONS]
    names = ([f"peer_p{k + 1}" for k in range(probs.shape[1])] + ["peer_level"]
             + [f"peer_deviation_{k}" for k in PEER_SHRINK_SESSIONS])
    return np.column_stack([probs, level, *shrunk]), names


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
