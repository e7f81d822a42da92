"""The variant synthetic law: same real format, other mechanics, exact conditional medians."""

from __future__ import annotations

import filecmp
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_synthetic import (
    assert_readers_read_everything,
    assert_rule_measures_ground_truth,
    plays_with_durations,
)

from utils.cli import main
from utils.core import config
from utils.core.columns import GROUND_TRUTH, GT_MEDIAN, GT_USERS_COLUMNS, PLAYS_FILE, PROFILE_FILE
from utils.core.errors import SessionlenError
from utils.synthetic.generate import MECHANICS, generate_dataset
from utils.synthetic.sessions import DATA_START_S, DAY_S, MAX_LENGTH_S, scale_history
from utils.synthetic.truth import law_columns
from utils.synthetic.variant import (
    BLOCK_EFFECT,
    CHECKIN_MEAN_S,
    DEVIATION_CLIP,
    GAP_EFFECT,
    LAMBDA,
    RHO,
    TYPES,
    VARIANT,
    WEEKEND_EFFECT,
    YEAR_S,
    VariantUsers,
    draw_users,
    plan_starts,
    planned_cdf,
    planned_lengths,
    simulate_sessions,
)

FILES = [PLAYS_FILE, PROFILE_FILE] + [f"{GROUND_TRUTH}/{name}" for name in (
    "sessions.csv", "tracks.csv", "users.csv", "calibration.csv")]
D_LOW, D_HIGH = 150, 400  # first-track durations of the fixed-condition draws: uniform whole s
# Four standard errors of a proportion near 1/2 over this many draws.
DRAWS = 40_000
TOLERANCE = 4 * np.sqrt(0.25 / DRAWS)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """The tiny variant dataset (seed 1) and its report."""
    out = tmp_path_factory.mktemp("variant") / "tiny-1"
    return out, generate_dataset(out, scale="tiny", seed=1, mechanics="variant")


def _uniform_duration_cdf(users: np.ndarray, x: np.ndarray) -> np.ndarray:
    """P(D <= x) for D uniform on the whole seconds D_LOW..D_HIGH, for every user."""
    return np.clip((np.floor(x) - D_LOW + 1) / (D_HIGH - D_LOW + 1), 0.0, 1.0)


def _assert_is_median(length: np.ndarray, median: np.ndarray, tolerance: float) -> None:
    """m is a median of L: P(L <= m) >= 1/2 and P(L < m) <= 1/2, within sampling error."""
    assert np.mean(length <= median) >= 0.5 - tolerance
    assert np.mean(length < median) <= 0.5 + tolerance


def _copies(users: VariantUsers, pick: np.ndarray) -> VariantUsers:
    """A population made of copies of the picked users (same latent traits)."""
    return VariantUsers(**{f.name: getattr(users, f.name)[pick] for f in fields(users)})


def _with_eager_checker(users: VariantUsers, who: int) -> VariantUsers:
    """The users plus a copy of `who` whose sessions are mostly check-ins.

    Their median lands among first-track durations, where the first track's law matters.
    """
    extended = _copies(users, np.r_[np.arange(users.n), who])
    extended.checkin_logit[-1] = 2.5
    return extended


def _population(seed: int, n: int) -> VariantUsers:
    """n listeners of the variant law who signed up before the data starts."""
    rng = np.random.default_rng(seed)
    return draw_users(rng, rng.integers(-8, 10, n), np.full(n, DATA_START_S - DAY_S))


def test_same_seed_gives_identical_files_and_another_seed_differs(tiny, tmp_path):
    out, _ = tiny
    generate_dataset(tmp_path / "again", scale="tiny", seed=1, mechanics="variant")
    _, mismatch, errors = filecmp.cmpfiles(out, tmp_path / "again", FILES, shallow=False)
    assert (mismatch, errors) == ([], [])
    generate_dataset(tmp_path / "other", scale="tiny", seed=2, mechanics="variant")
    assert (tmp_path / "other" / PLAYS_FILE).read_bytes() != (out / PLAYS_FILE).read_bytes()


def test_differs_from_the_standard_law(tiny, tmp_path):
    out, _ = tiny
    generate_dataset(tmp_path / "standard", scale="tiny", seed=1)
    truth = pd.read_csv(out / GROUND_TRUTH / "sessions.csv")
    standard = pd.read_csv(tmp_path / "standard" / GROUND_TRUTH / "sessions.csv")
    assert not truth["length_s"].equals(standard["length_s"])
    users = pd.read_csv(out / GROUND_TRUTH / "users.csv")
    assert list(users.columns) == GT_USERS_COLUMNS
    assert users["archetype"].between(0, len(TYPES) - 1).all()


def test_the_raw_readers_read_everything(tiny, tmp_path):
    assert_readers_read_everything(*tiny, tmp_path)


def test_session_rule_measures_the_planted_sessions(tiny):
    out, report = tiny
    assert_rule_measures_ground_truth(plays_with_durations(out), out, report.sessions)


def test_written_medians_are_medians(tiny):
    out, report = tiny
    truth = pd.read_csv(out / GROUND_TRUTH / "sessions.csv")
    _assert_is_median(truth["length_s"].to_numpy(), truth["median_length_s"].to_numpy(),
                      4 * np.sqrt(0.25 / report.sessions))


def test_mixture_cdf_matches_scipy_and_the_sampler():
    checkin, mu, shape = 0.3, np.log(2500.0), 1.9
    t = np.array([60.0, 400.0, 2500.0, 9000.0])
    expected = (checkin * stats.expon(scale=CHECKIN_MEAN_S).cdf(t)
                + (1 - checkin) * stats.fisk(c=shape, scale=np.exp(mu)).cdf(t))
    np.testing.assert_allclose(planned_cdf(t, checkin, mu, shape), expected, rtol=1e-12)
    u = np.random.default_rng(0).random((DRAWS, 3))
    drawn = planned_lengths(u, np.full(DRAWS, checkin), np.full(DRAWS, mu), np.full(DRAWS, shape))
    empirical = (drawn[:, None] <= t).mean(axis=0)
    np.testing.assert_allclose(empirical, expected, atol=TOLERANCE)


def test_median_is_exact_at_fixed_conditions():
    """First sessions of copies of one listener at one start: the same conditions every draw."""
    rng = np.random.default_rng(5)
    people = _population(7, 30)
    chosen = [int(np.flatnonzero(people.archetype == kind)[0]) for kind in range(len(TYPES))]
    people = _with_eager_checker(people, chosen[0])
    chosen.append(people.n - 1)
    starts = np.array([1_170_000_000, 1_200_050_000])  # a weekday and a weekend evening (UTC)
    groups = [(who, when) for who in chosen for when in starts]
    pick = np.repeat([who for who, _ in groups], DRAWS)
    users = _copies(people, pick)
    owner = np.arange(len(pick))
    planned = np.repeat([when for _, when in groups], DRAWS)
    first = rng.integers(D_LOW, D_HIGH + 1, len(pick))
    sessions = simulate_sessions(rng, users, owner, planned, first, np.zeros_like(first))
    median = law_columns(VARIANT, sessions, _uniform_duration_cdf)[GT_MEDIAN]
    for group in range(len(groups)):
        part = slice(group * DRAWS, (group + 1) * DRAWS)
        assert len(np.unique(median[part])) == 1
        _assert_is_median(sessions.length_s[part], median[part], TOLERANCE)


def test_medians_are_medians_through_whole_histories():
    """Every session of simulated histories (persistence, gaps, drift): coverage of 1/2."""
    rng = np.random.default_rng(11)
    users = scale_history(_population(13, 120), DRAWS)
    owner, planned = plan_starts(rng, users)
    first = rng.integers(D_LOW, D_HIGH + 1, len(owner))
    sessions = simulate_sessions(rng, users, owner, planned, first, np.zeros_like(first))
    median = law_columns(VARIANT, sessions, _uniform_duration_cdf)[GT_MEDIAN]
    assert len(median) > DRAWS / 2
    _assert_is_median(sessions.length_s, median, 4 * np.sqrt(0.25 / len(median)))
    gaps = np.diff(sessions.start_s)[np.diff(sessions.user) == 0]
    assert gaps.min() > 30 * 60


def _first_sessions(users: VariantUsers, who: int, local_s: np.ndarray) -> np.ndarray:
    """log a_k of first sessions of copies of `who` starting at these local times."""
    copies = _copies(users, np.full(len(local_s), who))
    start = local_s - copies.tz_hours * 3600
    sessions = simulate_sessions(np.random.default_rng(0), copies, np.arange(len(start)), start,
                                 np.full(len(start), 200), np.zeros(len(start), dtype=np.int64))
    return sessions.mu


def test_clock_acts_in_blocks_and_levels_drift():
    people = _population(7, 30)
    monday = DATA_START_S + 14 * 7 * DAY_S  # 2005-02-14 was a Monday; after every first day
    hours = np.array([8 + 5 / 60, 11 + 55 / 60, 12 + 5 / 60])
    local = np.r_[monday + np.rint(hours * 3600), monday + 5 * DAY_S + 8 * 3600,
                  monday + 52 * 7 * DAY_S + 8 * 3600].astype(np.int64)
    for who in (int(np.flatnonzero(people.archetype == kind)[0]) for kind in range(len(TYPES))):
        kind = people.archetype[who]
        drift = people.drift_per_year[who] * (local - local[0]) / YEAR_S
        mu = _first_sessions(people, who, local) - drift
        assert mu[0] == pytest.approx(mu[1])  # 08:05 and 11:55: one block
        assert mu[2] - mu[1] == pytest.approx(BLOCK_EFFECT[kind, 3] - BLOCK_EFFECT[kind, 2])
        assert mu[3] - mu[0] == pytest.approx(WEEKEND_EFFECT[kind])
        assert mu[4] == pytest.approx(mu[0])  # a year on: the drift alone
        assert abs(drift[4]) > 0.001


def test_persistence_is_an_ewma_and_long_breaks_lengthen():
    """Copies of one listener with the same plan: what differs is their earlier lengths."""
    rng = np.random.default_rng(3)
    people = _population(7, 30)
    n = 2000
    users = _copies(people, np.zeros(2 * n, dtype=np.int64))
    day0 = DATA_START_S + 14 * 7 * DAY_S + 20 * 3600
    later = np.where(np.arange(2 * n) < n, 3, 10) * DAY_S  # the second break: days or a week+
    planned = np.column_stack([np.full(2 * n, day0), day0 + later, day0 + later + 7 * DAY_S])
    owner = np.repeat(np.arange(2 * n), 3)
    sessions = simulate_sessions(rng, users, owner, planned.ravel(), np.full(6 * n, 200),
                                 np.zeros(6 * n, dtype=np.int64))
    assert (sessions.start_s == planned.ravel()).all() and len(sessions.user) == 6 * n
    mu = sessions.mu.reshape(-1, 3)
    deviation = np.clip(np.log(sessions.length_s.reshape(-1, 3)) - mu, -DEVIATION_CLIP,
                        DEVIATION_CLIP)
    state_2 = (1 - LAMBDA) * deviation[:, 0]
    state_3 = LAMBDA * state_2 + (1 - LAMBDA) * deviation[:, 1]
    rest_2, rest_3 = mu[:, 1] - RHO * state_2, mu[:, 2] - RHO * state_3
    for part in (slice(0, n), slice(n, 2 * n)):
        assert np.ptp(rest_2[part]) < 1e-9 and np.ptp(rest_3[part]) < 1e-9
    drift = people.drift_per_year[0] * 7 * DAY_S / YEAR_S
    assert rest_2[n] - rest_2[0] == pytest.approx(
        people.gap_sensitivity[0] * (GAP_EFFECT[3] - GAP_EFFECT[2]) + drift)
    assert sessions.length_s.max() <= MAX_LENGTH_S


def test_unknown_mechanics_is_a_one_line_error(tmp_path):
    with pytest.raises(SessionlenError, match="mechanics='nope'") as err:
        generate_dataset(tmp_path / "x", mechanics="nope")
    assert "\n" not in str(err.value) and not (tmp_path / "x").exists()


def test_cli_and_config_know_every_law(tmp_path, capsys):
    assert tuple(MECHANICS) == config.SYNTH_MECHANICS
    assert config.synthetic_dir("demo", 1, "variant").name == "demo-1-variant"
    assert config.synthetic_dir("demo", 1).name == "demo-1"
    assert config.resolve_raw("demo", None, 1, "variant") == config.synthetic_dir("demo", 1,
                                                                                 "variant")
    assert main(["synth", "--out", str(tmp_path / "d"), "--users", "3", "--mechanics",
                 "variant"]) == 0
    printed = capsys.readouterr().out
    assert "(variant law)" in printed and "k=3" in printed
    assert '"mechanics": "variant"' in (tmp_path / "d" / "_manifest.json").read_text()


@pytest.mark.slow
def test_demo_scale_difficulty(tmp_path):
    report = generate_dataset(tmp_path / "demo", scale="demo", seed=1, mechanics="variant")
    for f in report.figures:
        if f.name.startswith(("user_mean", "oracle /", "users", "plays", "% dup")):
            assert f.ok, f
