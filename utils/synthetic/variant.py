"""A second session-level law for the synthetic data, built on other mechanics than the standard.

Models are judged on data from more than one law so that none is fitted to one generator's
shapes. Only the listeners and their sessions differ; catalog, libraries, plays and files are
the standard generator's. Session k of user u (local clock = UTC + tz_hours, a per-listener
offset added to the country's zone):

    gap_k   = start_k - end_{k-1}, in blocks: < 2 h, 2 h-1 d, 1-7 d, > 7 d (or a first session)
    log a_k = level[type] + b_u + block_effect[type, local 4-hour block]
              + weekend_effect[type] * weekend + s_u * gap_effect[gap block]
              + drift_u * years since u's first day + RHO * m_k
    pi_k    = expit(c_u + gap_checkin[gap block])                     (share of check-ins)
    T_k     ~ pi_k Exp(mean CHECKIN_MEAN_S) + (1 - pi_k) LogLogistic(scale a_k, shape beta_u)
    L_k     = max(min(round(T_k), MAX_LENGTH_S), D_k)                 (D_k: first track)
    m_{k+1} = LAMBDA m_k + (1 - LAMBDA) clip(log L_k - log a_k)        (m_0 = 0)

b_u, c_u, beta_u, s_u and drift_u vary continuously across listeners around their type's values;
three types are planted. Everything on the right is known when session k starts (with u's latent
traits), and D_k is drawn independently of T_k, so P(L_k <= x | known) = F_T(x + 1/2) F_u(x)
below the cap and F_u(x) from it on: the exact CDF from which synthetic_truth solves the ground
truth's quantiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from utils.synthetic.catalog import DurationCdf
from utils.synthetic.sessions import (
    DATA_END_S,
    DATA_START_S,
    DAY_S,
    MAX_LENGTH_S,
    MIN_BREAK_S,
    WEEK_IDS,
    Mechanics,
    Sessions,
    Users,
    day_grid,
    draw_days,
    realized_lengths,
    session_grid,
    skip_habits,
)

YEAR_S = 365.25 * DAY_S
BLOCK_HOURS = 4  # time-of-day effects are constant within 4-hour blocks of the local clock
CHECKIN_MEAN_S = 420.0
LAMBDA = 0.8  # EWMA weight of the past in the persistence state
RHO = 0.5  # how much the persistence state moves the next session's scale
DEVIATION_CLIP = 2.5  # a check-in's log deviation is huge; the state remembers it as at most this
GAP_EDGES_S = np.array([2 * 3600, DAY_S, 7 * DAY_S])
GAP_EFFECT = np.array([-0.2, 0.0, 0.15, 0.3, 0.0])  # by gap block; the last is a first session
GAP_CHECKIN = np.array([0.4, 0.0, -0.1, -0.2, 0.0])  # quick returns are more often check-ins
SCALE_SD = 0.3  # continuous spread of b_u around the type's level
CHECKIN_SD = 0.6
SHAPE_SD = 0.1
DRIFT_SD = 0.08  # per year, on the log scale
MAX_DRIFT = 1.0  # total drift is bounded, so no listener's level runs away over the years
HISTORY_SD = 0.5  # spread of history length within a type (wider than the standard law's)
SHIFTS = ((-2, 0.1), (-1, 0.2), (0, 0.4), (1, 0.2), (2, 0.1))  # personal clock offset, hours
MAX_LOG_SCALE = float(np.log(5 * 3600))  # keeps every median far below MAX_LENGTH_S


@dataclass(frozen=True)
class ListenerType:
    """A planted listener type: its body level and shape, check-in habit, and clock."""

    name: str
    share: float
    scale_s: float  # median of the log-logistic body
    shape: float
    checkin_share: float
    sessions: float  # relative number of sessions in a full history
    start_blocks: np.ndarray  # start weights per local 4-hour block
    block_effect: np.ndarray  # log-scale effect per local 4-hour block
    weekend_effect: float
    weekend_weight: float  # start weight of a weekend day relative to a weekday


TYPES = (
    ListenerType("quick check-ins", 0.35, 1700.0, 1.7, 0.35, 1500.0,
                 np.array([0.03, 0.15, 0.25, 0.22, 0.25, 0.10]),
                 np.array([0.0, 0.18, -0.12, -0.18, 0.15, 0.24]), 0.2, 0.9),
    ListenerType("night owl", 0.30, 5400.0, 2.2, 0.15, 800.0,
                 np.array([0.30, 0.03, 0.05, 0.12, 0.15, 0.35]),
                 np.array([0.27, 0.0, -0.24, -0.15, -0.06, 0.15]), 0.35, 1.3),
    ListenerType("workday streamer", 0.35, 10000.0, 2.6, 0.10, 500.0,
                 np.array([0.02, 0.08, 0.40, 0.35, 0.10, 0.05]),
                 np.array([-0.18, -0.12, 0.21, 0.18, -0.15, -0.24]), -0.45, 0.4),
)
LEVEL = np.log([t.scale_s for t in TYPES])
BLOCK_EFFECT = np.stack([t.block_effect for t in TYPES])
WEEKEND_EFFECT = np.array([t.weekend_effect for t in TYPES])


@dataclass(frozen=True)
class VariantUsers(Users):
    """The standard per-user traits plus this law's continuous ones (`effect` is b_u)."""

    checkin_logit: np.ndarray  # c_u
    shape: np.ndarray  # beta_u
    gap_sensitivity: np.ndarray  # s_u
    drift_per_year: np.ndarray
    burstiness: np.ndarray  # gamma shape of weekly mood: small = long breaks between bursts


@dataclass(frozen=True)
class VariantSessions(Sessions):
    """Planted sessions with the rest of their conditional law (`mu` is log a_k)."""

    checkin: np.ndarray  # pi_k
    shape: np.ndarray  # beta of the body


def planned_cdf(t: np.ndarray, checkin: np.ndarray, mu: np.ndarray, shape: np.ndarray
                ) -> np.ndarray:
    """P(T <= t) of the check-in / log-logistic mixture."""
    t = np.maximum(t, 1e-9)
    body = expit(shape * (np.log(t) - mu))
    return checkin * -np.expm1(-t / CHECKIN_MEAN_S) + (1 - checkin) * body


def planned_lengths(u: np.ndarray, checkin: np.ndarray, mu: np.ndarray, shape: np.ndarray
                    ) -> np.ndarray:
    """T from three uniforms per session (columns: component, check-in, body), by inversion."""
    short = -CHECKIN_MEAN_S * np.log1p(-u[:, 1])
    body = np.exp(mu + (np.log(u[:, 2]) - np.log1p(-u[:, 2])) / shape)
    return np.where(u[:, 0] < checkin, short, body)


def draw_users(rng: np.random.Generator, tz_hours: np.ndarray, registered_s: np.ndarray
               ) -> VariantUsers:
    """Type, continuous traits, clock, activity window and skip habits of each user."""
    n = len(tz_hours)
    shares = np.array([t.share for t in TYPES])
    kind = rng.choice(len(TYPES), size=n, p=shares / shares.sum())
    offsets, weights = zip(*SHIFTS, strict=True)
    shift = rng.choice(offsets, size=n, p=weights)
    start, end = _activity_windows(rng, registered_s)
    span_days = (end - start) / DAY_S
    relative = np.array([t.sessions for t in TYPES])[kind]
    planned = relative * np.exp(rng.normal(0.0, HISTORY_SD, n)) * np.minimum(1.0, span_days / 300)
    skip_prob, skip_heard = skip_habits(rng, n)
    checkin = np.array([t.checkin_share for t in TYPES])[kind]
    return VariantUsers(
        archetype=kind, effect=rng.normal(0.0, SCALE_SD, n), tz_hours=tz_hours + shift,
        window_start_s=start, window_end_s=end, planned_sessions=planned, skip_prob=skip_prob,
        skip_heard=skip_heard,
        checkin_logit=np.log(checkin / (1 - checkin)) + rng.normal(0.0, CHECKIN_SD, n),
        shape=np.array([t.shape for t in TYPES])[kind] * np.exp(rng.normal(0.0, SHAPE_SD, n)),
        gap_sensitivity=rng.uniform(0.4, 1.6, n), drift_per_year=rng.normal(0.0, DRIFT_SD, n),
        burstiness=np.exp(rng.uniform(np.log(0.3), np.log(4.0), n)))


def _activity_windows(rng: np.random.Generator, registered_s: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) second of each user's listening: most stay until the crawl, some leave."""
    n = len(registered_s)
    start = np.maximum(DATA_START_S, registered_s) + rng.uniform(1, 90, n) * DAY_S
    start = np.minimum(start, DATA_END_S - 10 * DAY_S)
    latest = DATA_END_S - 3 * DAY_S
    end = np.where(rng.random(n) < 0.7, latest - rng.uniform(0, 5 * DAY_S, n),
                   start + (latest - start) * rng.uniform(0.3, 1.0, n))
    return start.astype(np.int64), np.maximum(end, start + 3 * DAY_S).astype(np.int64)


def mean_length_s(users: VariantUsers) -> np.ndarray:
    """Rough expected session length of each user (sizes histories before simulating)."""
    checkin = expit(users.checkin_logit)
    shape = np.maximum(users.shape, 1.2)  # the log-logistic mean is finite for shape > 1
    body = np.exp(LEVEL[users.archetype] + users.effect) * (np.pi / shape) / np.sin(np.pi / shape)
    return checkin * CHECKIN_MEAN_S + (1 - checkin) * np.minimum(body, MAX_LENGTH_S / 2)


def plan_starts(rng: np.random.Generator, users: VariantUsers) -> tuple[np.ndarray, np.ndarray]:
    """(user, planned start in UTC seconds) of every planned session, sorted by user and time.

    Days are drawn by a weekly mood whose gamma shape is the user's burstiness (so return gaps
    differ by listener) times the type's weekend weight; hours by the type's 4-hour blocks.
    """
    owner, day, week = day_grid(users)
    shape_of_week = np.repeat(users.burstiness, WEEK_IDS)[: int(week.max()) + 1]
    mood = rng.gamma(shape_of_week, 1.0 / shape_of_week)[week]
    weekend = (day + 3) % 7 >= 5  # 1970-01-01 was a Thursday
    weekend_weight = np.array([t.weekend_weight for t in TYPES])[users.archetype[owner]]
    # A small floor: with a small gamma shape a user's moods can all underflow to zero.
    weight = np.where(weekend, weekend_weight, 1.0) * mood + 1e-9
    who, pos = draw_days(rng, users, owner, weight)
    block_cdf = np.cumsum(np.stack([t.start_blocks for t in TYPES]), axis=1)
    block_cdf /= block_cdf[:, -1:]
    block = (rng.random(len(who))[:, None] > block_cdf[users.archetype[who]]).sum(axis=1)
    local = day[pos] * DAY_S + block * BLOCK_HOURS * 3600 + rng.integers(0, BLOCK_HOURS * 3600,
                                                                         len(who))
    start = local - users.tz_hours[who] * 3600
    order = np.lexsort((start, who))
    return who[order], start[order]


def _gap_block(gap_s: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Index into GAP_EFFECT / GAP_CHECKIN: the gap's block, or the last for a first session."""
    return np.where(first, len(GAP_EDGES_S) + 1, np.searchsorted(GAP_EDGES_S, gap_s, "right"))


def _session_law(users: VariantUsers, live: np.ndarray, begin: np.ndarray, gap_block: np.ndarray,
                 state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log a_k, pi_k) of sessions of users `live` starting at `begin`: all known at the start."""
    local = begin + users.tz_hours[live] * 3600
    kind = users.archetype[live]
    block = (local // 3600) % 24 // BLOCK_HOURS
    weekend = (local // DAY_S + 3) % 7 >= 5
    years = (begin - users.window_start_s[live]) / YEAR_S
    drift = np.clip(users.drift_per_year[live] * years, -MAX_DRIFT, MAX_DRIFT)
    mu = (LEVEL[kind] + users.effect[live] + BLOCK_EFFECT[kind, block]
          + WEEKEND_EFFECT[kind] * weekend + users.gap_sensitivity[live] * GAP_EFFECT[gap_block]
          + drift + RHO * state)
    checkin = expit(users.checkin_logit[live] + GAP_CHECKIN[gap_block])
    return np.minimum(mu, MAX_LOG_SCALE), checkin


def simulate_sessions(
    rng: np.random.Generator, users: VariantUsers, owner: np.ndarray, planned_s: np.ndarray,
    first_duration: np.ndarray, first_track: np.ndarray,
) -> VariantSessions:
    """Run the law forward in time for every user at once (one step per session index).

    As in the standard law, a session planned before the previous one ended plus the break
    starts after it, and sessions too late to surely end inside the dataset are dropped.
    """
    grid = session_grid(owner, users.n)
    start = np.zeros(len(owner), dtype=np.int64)
    length = np.zeros(len(owner), dtype=np.int64)
    mu, checkin = np.zeros(len(owner)), np.zeros(len(owner))
    uniforms = rng.random((len(owner), 3))
    wait = rng.exponential(1200.0, len(owner)).astype(np.int64)
    previous_end = np.zeros(users.n, dtype=np.int64)
    state = np.zeros(users.n)
    for k in range(grid.shape[1]):
        live = np.flatnonzero(grid[:, k] >= 0)
        s = grid[live, k]
        begin = planned_s[s] if k == 0 else np.maximum(
            planned_s[s], previous_end[live] + MIN_BREAK_S + wait[s])
        gap_block = _gap_block(begin - previous_end[live], np.full(len(live), k == 0))
        mu[s], checkin[s] = _session_law(users, live, begin, gap_block, state[live])
        planned = planned_lengths(uniforms[s], checkin[s], mu[s], users.shape[live])
        length[s] = realized_lengths(planned, first_duration[s])
        start[s] = begin
        deviation = np.clip(np.log(length[s]) - mu[s], -DEVIATION_CLIP, DEVIATION_CLIP)
        state[live] = LAMBDA * state[live] + (1 - LAMBDA) * deviation
        previous_end[live] = begin + length[s]
    sessions = VariantSessions(user=owner, start_s=start, length_s=length, mu=mu,
                               first_track=first_track, checkin=checkin,
                               shape=users.shape[owner])
    return sessions.take(start <= DATA_END_S - MAX_LENGTH_S)


def conditional_cdf(sessions: VariantSessions, first_track_cdf: DurationCdf, x: np.ndarray
                    ) -> np.ndarray:
    """P(L <= x | what is known at the start) at whole seconds x, one row of x per session."""
    planned = planned_cdf(x + 0.5, sessions.checkin[:, None], sessions.mu[:, None],
                          sessions.shape[:, None])
    planned = np.where(x < MAX_LENGTH_S, planned, 1.0)
    return planned * first_track_cdf(np.broadcast_to(sessions.user[:, None], x.shape), x)


VARIANT = Mechanics(
    name="variant", draw_users=draw_users, plan_starts=plan_starts,
    simulate_sessions=simulate_sessions, conditional_cdf=conditional_cdf,
    mean_length_s=mean_length_s, types=len(TYPES), separated_types=False,
    parameters={"checkin_mean_s": CHECKIN_MEAN_S, "ewma_weight": LAMBDA, "persistence": RHO,
                "types": [t.name for t in TYPES]},
)
