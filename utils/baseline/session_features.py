"""Each session's start-time features, raw and unscaled, from what is known when it starts.

A session's features use only its start time, the user's profile, and the lengths and gaps of
the user's EARLIER sessions, which come from every split (under the chrono split a test
session's history includes the user's train sessions). Statistics "up to and including" a
session become "before" the next one by a shift within the user.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from utils.core import columns as C
from utils.core.errors import SessionlenError

LOG_LENGTH = "log_length"
SECONDS_PER_YEAR = 365.25 * 86400.0
RECENT_WINDOW = 5
EWM_FAST_ALPHA = 0.3
EWM_SLOW_ALPHA = 0.05
REFERENCE_HOUR = 12.0
# Context histories: blocks of hours, gap buckets (log1p seconds: 3 h, 12 h, 2 days, a week) and
# how many sessions' worth of the user's overall level a context's own mean is shrunk toward.
HOUR_BLOCK = 3
GAP_BUCKET_EDGES = np.log1p([3 * 3600.0, 12 * 3600.0, 2 * 86400.0, 7 * 86400.0])
CONTEXT_PRIOR_SESSIONS = 10.0


def combine_splits(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """All splits' sessions in one frame sorted by (user, time), with the split name per row."""
    frames = []
    for name, frame in splits.items():
        missing = [c for c in C.SUMMARY_COLUMNS if c not in frame.columns]
        if missing:
            raise SessionlenError(f"summary split {name!r} lacks column(s) {', '.join(missing)}")
        frames.append(frame[C.SUMMARY_COLUMNS].assign(**{C.SPLIT: name}))
    if not frames:
        raise SessionlenError("no summary splits to build features from")
    sessions = pd.concat(frames, ignore_index=True)
    bad = sessions[C.CURRENT_SESSION_LENGTH].isna() | (sessions[C.CURRENT_SESSION_LENGTH] < 0)
    if bad.any():
        row = sessions[bad].iloc[0]
        raise SessionlenError(
            f"summary split {row[C.SPLIT]!r}: user {row[C.USER_ID]} session {row[C.SESSION_ID]} "
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
