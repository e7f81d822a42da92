"""The session rule on hand-made plays."""

from __future__ import annotations

import numpy as np

from utils.baseline.sessions import session_lengths, session_starts

MIN = 60_000


def test_gap_minus_duration_decides_a_new_session() -> None:
    users = np.array([0, 0, 0, 0, 1])
    ts = np.array([0, 40 * MIN, 80 * MIN + 1, 200 * MIN, 0])
    # play 0 lasts 15 min: gap 40 - 15 = 25 -> same; play 1 unknown: gap 40 min + 1 ms -> new
    durations = np.array([15 * 60.0, np.nan, 60.0, 100.0, 30.0])
    starts = session_starts(users, ts, durations)
    assert starts.tolist() == [True, False, True, True, True]
    first, lengths = session_lengths(starts, ts, durations)
    assert first.tolist() == [0, 2, 3, 4]
    assert lengths.tolist() == [40 * 60.0, 60.0, 100.0, 30.0]


def test_threshold_is_configurable() -> None:
    users = np.zeros(2, dtype=int)
    ts = np.array([0, 20 * MIN])
    assert session_starts(users, ts, np.zeros(2), gap_minutes=10).tolist() == [True, True]
    assert session_starts(users, ts, np.zeros(2), gap_minutes=30).tolist() == [True, False]


def test_no_plays_gives_no_sessions() -> None:
    empty = np.zeros(0)
    first, lengths = session_lengths(session_starts(empty, empty, empty), empty, empty)
    assert len(first) == 0 and len(lengths) == 0
