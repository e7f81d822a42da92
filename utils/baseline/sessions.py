"""The session rule of DESIGN.md, vectorized over all users' plays at once."""

from __future__ import annotations

import numpy as np

from utils.core.config import SESSION_GAP_MINUTES


def session_starts(
    user_codes: np.ndarray,
    timestamps_ms: np.ndarray,
    durations_s: np.ndarray,
    gap_minutes: float = SESSION_GAP_MINUTES,
) -> np.ndarray:
    """Boolean mask of plays that start a session.

    Inputs are sorted by (user, time). A play starts a session when it is a user's first play,
    or when its gap to the previous play minus that play's duration exceeds the threshold.
    Unknown durations (NaN) count as 0, as the rule says.
    """
    n = len(timestamps_ms)
    starts = np.ones(n, dtype=bool)
    if n < 2:
        return starts
    # In place on one float array: at full size every temporary is 150 MB of fresh pages.
    idle_ms = np.asarray(durations_s[:-1], dtype=np.float64) * 1000.0
    idle_ms[np.isnan(idle_ms)] = 0.0
    np.subtract(np.diff(np.asarray(timestamps_ms, dtype=np.int64)), idle_ms, out=idle_ms)
    np.greater(idle_ms, gap_minutes * 60_000.0, out=starts[1:])
    starts[1:] |= user_codes[1:] != user_codes[:-1]
    return starts


def session_lengths(
    starts: np.ndarray, timestamps_ms: np.ndarray, durations_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-session (start index, length in seconds): last start - first start + last duration."""
    first = np.flatnonzero(starts)
    if len(first) == 0:
        return first, np.zeros(0, dtype=np.float64)
    last = np.append(first[1:], len(starts)) - 1
    ts = np.asarray(timestamps_ms, dtype=np.int64)
    last_duration = np.nan_to_num(np.asarray(durations_s, dtype=np.float64)[last], nan=0.0)
    return first, (ts[last] - ts[first]) / 1000.0 + last_duration
