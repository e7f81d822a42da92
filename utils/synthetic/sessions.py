"""Listeners and their sessions: the planted structure a model can learn from the synthetic data.

Generative model of session k of user u (all times in the user's local clock):

    beta_k = log(archetype median) + b_u + hour_effect[hour] + weekday_effect[weekday]
    mu_k   = beta_k + PERSISTENCE * (log L_{k-1} - beta_{k-1})        (0 for the first session)
    T_k    = exp(mu_k + SIGMA * eps_k),  eps_k ~ N(0, 1)               (the planned length)
    D_k    = duration of the session's first track, drawn from u's library, independent of T_k
    L_k    = D_k if round(T_k) <= D_k (one play) else round(T_k)       (the realized length)

(round(T_k) is capped at MAX_LENGTH_S, far above any median.)

Plays are laid out so that the session rule measures exactly L_k (see synthetic_plays), so L_k is
observable; mu_k depends only on what is known when session k starts (the user, the start time,
the previous session's length). Hence P(L_k <= x | known) = Phi((ln(x + 1/2) - mu_k) / SIGMA) *
F_u(x) below the cap and F_u(x) from it on, with F_u the user's first-track duration law: the
exact CDF from which synthetic_truth solves the ground truth's quantiles, the median first (the
MAE-optimal prediction, written as median_length_s).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.special import ndtr

from utils.synthetic.catalog import DurationCdf, InverseCdf

DAY_S = 86_400
DATA_START_S = 1_108_339_200  # 2005-02-14T00:00:00Z, the real dataset's first day
DATA_END_S = 1_241_481_599  # 2009-05-04T23:59:59Z, its last
MIN_BREAK_S = 31 * 60  # between sessions: the 30-minute rule plus a one-minute margin
WEEK_IDS = 1000  # week ids per user: more than any activity window has
MAX_LENGTH_S = 16 * 3600  # caps the lognormal tail far above every median (medians unchanged)

SIGMA = 0.9
PERSISTENCE = 0.3
USER_EFFECT_SD = 0.04
HISTORY_SD = 0.08  # spread of history length within an archetype
WEEKDAY_EFFECT = np.array([-0.05, 0.0, 0.0, 0.0, 0.05, 0.12, 0.12])  # Monday first
HOUR_EFFECT = 0.2 * np.sin(2 * np.pi * (np.arange(24) - 14) / 24)  # longest near 20:00


def _hour_profile(*bumps: tuple[float, float, float]) -> np.ndarray:
    """24 start weights: a floor plus circular bumps (peak hour, width in hours, height)."""
    hours = np.arange(24)
    weights = np.full(24, 0.05)
    for peak, width, height in bumps:
        distance = np.minimum(np.abs(hours - peak), 24 - np.abs(hours - peak))
        weights += height * np.exp(-0.5 * (distance / width) ** 2)
    return weights / weights.sum()


@dataclass(frozen=True)
class Archetype:
    """A listener cluster: its session-length level, history size and when it listens."""

    name: str
    share: float
    median_length_s: float
    sessions: float  # relative number of sessions in a full history
    hours: np.ndarray  # local start-hour weights
    weekdays: np.ndarray  # start weights Monday..Sunday


ARCHETYPES = (
    Archetype("short bursts", 0.22, 700.0, 1600.0,
              _hour_profile((8, 1.0, 1.0), (12.5, 1.0, 0.8), (17.5, 1.2, 1.0)),
              np.array([1.1, 1.1, 1.1, 1.1, 1.0, 0.7, 0.6])),
    Archetype("evening listener", 0.28, 3500.0, 1000.0,
              _hour_profile((20.5, 2.0, 1.0), (13, 2.0, 0.25)),
              np.array([1.0, 1.0, 1.0, 1.0, 1.1, 1.2, 1.1])),
    Archetype("background at work", 0.28, 7000.0, 600.0,
              _hour_profile((10, 1.5, 1.0), (14.5, 1.5, 0.9)),
              np.array([1.2, 1.2, 1.2, 1.2, 1.1, 0.5, 0.4])),
    Archetype("marathon", 0.22, 11000.0, 420.0,
              _hour_profile((16, 2.5, 0.8), (22, 2.5, 1.0)),
              np.array([0.8, 0.8, 0.8, 0.9, 1.1, 1.4, 1.4])),
)
LEVEL = np.log([a.median_length_s for a in ARCHETYPES])


@dataclass(frozen=True)
class Users:
    """Per-user hidden traits (arrays indexed by user)."""

    archetype: np.ndarray
    effect: np.ndarray  # b_u: the user's log-length offset
    tz_hours: np.ndarray  # local time = UTC + tz_hours
    window_start_s: np.ndarray
    window_end_s: np.ndarray
    planned_sessions: np.ndarray
    skip_prob: np.ndarray  # share of plays cut short by the next one
    skip_heard: np.ndarray  # typical share of a skipped track heard before the next starts

    @property
    def n(self) -> int:
        """Number of users."""
        return len(self.archetype)


@dataclass(frozen=True)
class Sessions:
    """Planted sessions, sorted by user then start (arrays indexed by session)."""

    user: np.ndarray
    start_s: np.ndarray
    length_s: np.ndarray  # whole seconds, what the session rule measures
    mu: np.ndarray  # conditional location of log T given what is known at the start
    first_track: np.ndarray

    def take(self, keep: np.ndarray) -> Sessions:
        """The sessions selected by a mask or index array."""
        return type(self)(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))


def draw_users(
    rng: np.random.Generator, tz_hours: np.ndarray, registered_s: np.ndarray
) -> Users:
    """Archetype, effects, activity window and behaviour of each user."""
    n = len(tz_hours)
    shares = np.array([a.share for a in ARCHETYPES])
    archetype = rng.choice(len(ARCHETYPES), size=n, p=shares / shares.sum())
    start = np.maximum(DATA_START_S, registered_s) + rng.uniform(1, 45, n) * DAY_S
    start = np.minimum(start, DATA_END_S - 10 * DAY_S)
    latest = DATA_END_S - 3 * DAY_S  # every user's first session starts early enough to keep
    # Most users listen until the crawl; some stopped earlier; a few came and went quickly.
    end = np.where(rng.random(n) < 0.75, latest - rng.uniform(0, 8 * DAY_S, n),
                   start + (latest - start) * rng.uniform(0.45, 1.0, n))
    brief = rng.random(n) < 0.08
    end = np.where(brief, np.minimum(start + rng.uniform(3, 60, n) * DAY_S, latest), end)
    span_days = (end - start) / DAY_S
    relative = np.array([a.sessions for a in ARCHETYPES])[archetype]
    planned = relative * np.exp(rng.normal(0.0, HISTORY_SD, n)) * np.minimum(1.0, span_days / 300)
    skip_prob, skip_heard = skip_habits(rng, n)
    return Users(archetype=archetype, effect=rng.normal(0.0, USER_EFFECT_SD, n),
                 tz_hours=tz_hours, window_start_s=start.astype(np.int64),
                 window_end_s=end.astype(np.int64), planned_sessions=planned,
                 skip_prob=skip_prob, skip_heard=skip_heard)


def skip_habits(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(skip_prob, skip_heard) of n listeners.

    Most listen to whole tracks; a few scan through them (many plays per hour of listening),
    which gives the heavy right tail of plays per user without touching session lengths.
    """
    habit = rng.choice(4, size=n, p=[0.6, 0.22, 0.13, 0.05])
    low = np.array([[0.02, 0.15], [0.12, 0.1], [0.4, 0.05], [0.85, 0.04]])[habit]
    high = np.array([[0.12, 0.35], [0.4, 0.3], [0.85, 0.25], [0.97, 0.1]])[habit]
    skip_prob, skip_heard = rng.uniform(low, high).T
    return skip_prob, skip_heard


def mean_length_s(users: Users) -> np.ndarray:
    """Rough expected session length of each user (sizes histories before simulating)."""
    spread = SIGMA**2 / (1 - PERSISTENCE**2)
    return np.exp(LEVEL[users.archetype] + users.effect + spread / 2)


def scale_history(users: Users, sessions_total: float) -> Users:
    """Users with planned session counts rescaled to sum to `sessions_total` (at least one)."""
    planned = users.planned_sessions * sessions_total / users.planned_sessions.sum()
    return replace(users, planned_sessions=np.maximum(1, np.round(planned)).astype(np.int64))


def day_grid(users: Users) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(owner, local day number, week id) of every day of every user's window, user by user.

    Week ids are unique across users (user * WEEK_IDS + week of the window).
    """
    first_day = (users.window_start_s + users.tz_hours * 3600) // DAY_S
    days = np.maximum(1, (users.window_end_s - users.window_start_s) // DAY_S)
    owner = np.repeat(np.arange(users.n), days)
    day = first_day[owner] + np.arange(days.sum()) - np.repeat(np.cumsum(days) - days, days)
    week = (day - first_day[owner]) // 7 + owner * WEEK_IDS
    return owner, day, week


def draw_days(rng: np.random.Generator, users: Users, owner: np.ndarray, weight: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """(user, index into the day grid) of every planned session, days drawn by `weight`."""
    days = np.bincount(owner, minlength=users.n)
    within = np.cumsum(weight)
    within = within - np.concatenate([[0.0], within])[np.cumsum(days) - days][owner]
    within /= within[np.cumsum(days) - 1][owner]
    who = np.repeat(np.arange(users.n), users.planned_sessions)
    pos = InverseCdf(owner + within).find(who + rng.random(len(who)))
    return who, np.clip(pos, (np.cumsum(days) - days)[who], np.cumsum(days)[who] - 1)


def plan_starts(rng: np.random.Generator, users: Users) -> tuple[np.ndarray, np.ndarray]:
    """(user, planned start in UTC seconds) of every planned session, sorted by user and time.

    Days are drawn with the archetype's weekday weights times a per-week mood (listening comes in
    bursts), hours with the archetype's local-hour profile.
    """
    owner, day, week = day_grid(users)
    mood = rng.gamma(2.0, 0.5, int(week.max()) + 1)[week]
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday
    weekday_weight = np.stack([a.weekdays for a in ARCHETYPES])[users.archetype[owner], weekday]
    who, pos = draw_days(rng, users, owner, weekday_weight * mood)
    hour_cdf = np.cumsum(np.stack([a.hours for a in ARCHETYPES]), axis=1)
    u = rng.random(len(who))
    hour = (u[:, None] > hour_cdf[users.archetype[who]]).sum(axis=1)
    local = day[pos] * DAY_S + hour * 3600 + rng.integers(0, 3600, len(who))
    start = local - users.tz_hours[who] * 3600
    order = np.lexsort((start, who))
    return who[order], start[order]


def session_grid(owner: np.ndarray, n_users: int) -> np.ndarray:
    """Users x session index -> position in `owner` (sessions grouped by user), -1 past the end.

    The laws step through every user's k-th session at once; this is the lookup they step on.
    """
    counts = np.bincount(owner, minlength=n_users)
    index = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    grid = np.full((n_users, counts.max()), -1, dtype=np.int64)
    grid[owner, index] = np.arange(len(owner))
    return grid


def simulate_sessions(
    rng: np.random.Generator, users: Users, owner: np.ndarray, planned_s: np.ndarray,
    first_duration: np.ndarray, first_track: np.ndarray,
) -> Sessions:
    """Run the length model forward in time for every user at once (one step per session index).

    A session planned before the previous one ended plus the break starts after the break.
    Sessions starting too late to surely end before the dataset's last second are dropped: the
    choice depends on start times only, so it selects nothing about a kept session's length.
    """
    grid = session_grid(owner, users.n)
    start = np.zeros(len(owner), dtype=np.int64)
    length = np.zeros(len(owner), dtype=np.int64)
    mu = np.zeros(len(owner))
    eps = rng.normal(size=len(owner))
    wait = rng.exponential(1200.0, len(owner)).astype(np.int64)
    base_level = LEVEL[users.archetype] + users.effect
    previous_end = np.full(users.n, np.iinfo(np.int64).min // 2)
    deviation = np.zeros(users.n)
    for k in range(grid.shape[1]):
        row = grid[:, k]
        live = np.flatnonzero(row >= 0)
        s = row[live]
        begin = np.maximum(planned_s[s], previous_end[live] + MIN_BREAK_S + wait[s])
        local = begin + users.tz_hours[live] * 3600
        beta = (base_level[live] + HOUR_EFFECT[(local // 3600) % 24]
                + WEEKDAY_EFFECT[(local // DAY_S + 3) % 7])
        mu[s] = beta + PERSISTENCE * deviation[live]
        length[s] = realized_lengths(planned_lengths(eps[s], mu[s]), first_duration[s])
        start[s] = begin
        deviation[live] = np.log(length[s]) - beta
        previous_end[live] = begin + length[s]
    sessions = Sessions(user=owner, start_s=start, length_s=length, mu=mu, first_track=first_track)
    return sessions.take(start <= DATA_END_S - MAX_LENGTH_S)


def thin_plan(rng: np.random.Generator, owner: np.ndarray, keep_share: float) -> np.ndarray:
    """Mask keeping each planned session with probability keep_share (users keep their first).

    The choice ignores every length, so the kept sessions follow the same model; thinning the
    whole plan (rather than cutting histories short) keeps every activity window intact.
    """
    first = np.r_[True, owner[1:] != owner[:-1]]
    return first | (rng.random(len(owner)) < keep_share)


def planned_lengths(eps: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """T from one standard normal draw per session."""
    return np.exp(mu + SIGMA * eps)


def realized_lengths(planned_s: np.ndarray, first_duration: np.ndarray) -> np.ndarray:
    """L of every law: T rounded to whole seconds and capped, but never shorter than D."""
    capped = np.minimum(np.rint(planned_s), MAX_LENGTH_S)
    return np.maximum(capped, first_duration).astype(np.int64)


def conditional_cdf(sessions: Sessions, first_track_cdf: DurationCdf, x: np.ndarray
                    ) -> np.ndarray:
    """P(L <= x | what is known at the start) at whole seconds x, one row of x per session."""
    planned = ndtr((np.log(x + 0.5) - sessions.mu[:, None]) / SIGMA)
    planned = np.where(x < MAX_LENGTH_S, planned, 1.0)
    return planned * first_track_cdf(np.broadcast_to(sessions.user[:, None], x.shape), x)


@dataclass(frozen=True)
class Mechanics:
    """A session-level law: who listens, when, for how long, and each length's exact CDF.

    Everything else (catalog, libraries, plays, files) is shared by every law, so two laws differ
    only in what a model has to learn.
    """

    name: str
    draw_users: Callable[[np.random.Generator, np.ndarray, np.ndarray], Users]
    plan_starts: Callable[[np.random.Generator, Users], tuple[np.ndarray, np.ndarray]]
    simulate_sessions: Callable[..., Sessions]
    conditional_cdf: Callable[[Sessions, DurationCdf, np.ndarray], np.ndarray]
    mean_length_s: Callable[[Users], np.ndarray]
    types: int  # planted listener types (users.csv archetype is in 0..types-1)
    separated_types: bool  # False: types overlap by design, so their cluster ARI is not a target
    parameters: dict[str, Any]  # recorded in the manifest


STANDARD = Mechanics(
    name="standard", draw_users=draw_users, plan_starts=plan_starts,
    simulate_sessions=simulate_sessions, conditional_cdf=conditional_cdf,
    mean_length_s=mean_length_s, types=len(ARCHETYPES), separated_types=True,
    parameters={"sigma": SIGMA, "persistence": PERSISTENCE,
                "archetypes": [a.name for a in ARCHETYPES]},
)
