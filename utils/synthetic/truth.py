"""Exact conditional quantiles of the planted session lengths: the ground truth of every law.

Each law gives F(x) = P(L <= x | what is known at the session's start) exactly at whole seconds
(Mechanics.conditional_cdf); one bisection turns F into the smallest whole x where it reaches a
level, so the median, the other quantiles and the checkpoint medians all come from the same code.
Given that a session has lasted more than e seconds, P(L <= x | L > e) = (F(x) - F(e)) / (1 - F(e))
for x > e, which reaches 1/2 at the smallest x > e with F(x) >= (1 + F(e)) / 2: a statement about
the law at the start, so it is written for every session, also for those that ended before e.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from utils.core.columns import GT_GIVEN_MEDIANS, GT_QUANTILE_LEVELS
from utils.synthetic.catalog import DurationCdf
from utils.synthetic.sessions import MAX_LENGTH_S, Mechanics, Sessions

Cdf = Callable[[np.ndarray], np.ndarray]  # whole seconds, one row per session -> P(L <= x)


def conditional_quantiles(cdf: Cdf, levels: np.ndarray, above: np.ndarray | int = 0
                          ) -> np.ndarray:
    """The smallest whole x > `above` with cdf(x) >= level, per session (row) and level (column).

    `cdf` must be nondecreasing. No session outlasts MAX_LENGTH_S (the cap is far above the
    longest track), so cdf(MAX_LENGTH_S) = 1 and the search ends there.
    """
    levels = np.asarray(levels, dtype=np.float64)
    low = np.broadcast_to(np.asarray(above, dtype=np.int64), levels.shape).copy()
    high = np.full(levels.shape, MAX_LENGTH_S, dtype=np.int64)
    while np.any(searching := high - low > 1):
        mid = (low + high) // 2
        reached = cdf(mid) >= levels
        low = np.where(searching & ~reached, mid, low)
        high = np.where(searching & reached, mid, high)
    return high


def law_columns(law: Mechanics, sessions: Sessions, first_track_cdf: DurationCdf
                ) -> dict[str, np.ndarray]:
    """The columns of ground_truth/sessions.csv solved from the law (GT_LAW_COLUMNS), by name."""
    def cdf(x: np.ndarray) -> np.ndarray:
        return law.conditional_cdf(sessions, first_track_cdf, x)

    n = len(sessions.user)
    quantile_levels = np.array(list(GT_QUANTILE_LEVELS.values()))
    checkpoints = np.array(list(GT_GIVEN_MEDIANS.values()), dtype=np.int64)
    lasted = cdf(np.tile(checkpoints, (n, 1)))
    levels = np.hstack([np.tile(quantile_levels, (n, 1)), (1 + lasted) / 2])
    above = np.r_[np.zeros(len(quantile_levels), dtype=np.int64), checkpoints]
    solved = conditional_quantiles(cdf, levels, above)
    names = [*GT_QUANTILE_LEVELS, *GT_GIVEN_MEDIANS]
    return {name: np.ascontiguousarray(column) for name, column in zip(names, solved.T,
                                                                        strict=True)}
