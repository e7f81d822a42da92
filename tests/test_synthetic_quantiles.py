"""The ground truth's conditional quantiles of both laws: exact by simulation, ordered, written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from utils.baseline.baselines import GT_ORACLE_COLUMNS, read_ground_truth_sessions
from utils.cli import main
from utils.core.columns import (
    GROUND_TRUTH,
    GT_GIVEN_MEDIANS,
    GT_MEDIAN,
    GT_Q10,
    GT_Q90,
    GT_QUANTILE_LEVELS,
    GT_SESSIONS_COLUMNS,
)
from utils.synthetic.generate import MECHANICS, Planted, generate_dataset, plant
from utils.synthetic.sessions import MAX_LENGTH_S, Sessions, realized_lengths
from utils.synthetic.sessions import planned_lengths as standard_planned_lengths
from utils.synthetic.truth import conditional_quantiles
from utils.synthetic.variant import planned_lengths as variant_planned_lengths

DRAWS = 40_000
PICKED = 6  # sessions per law whose own law is simulated


def _standard_planned(rng: np.random.Generator, sessions: Sessions) -> np.ndarray:
    return standard_planned_lengths(rng.normal(size=len(sessions.user)), sessions.mu)


def _variant_planned(rng: np.random.Generator, sessions: Sessions) -> np.ndarray:
    return variant_planned_lengths(rng.random((len(sessions.user), 3)), sessions.checkin,
                                   sessions.mu, sessions.shape)


PLANNED = {"standard": _standard_planned, "variant": _variant_planned}


@pytest.fixture(scope="module", params=list(MECHANICS))
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[Planted, pd.DataFrame]:
    """A tiny dataset of each law, in memory (with its planted law) and as written."""
    out = tmp_path_factory.mktemp("quantiles") / request.param
    generate_dataset(out, scale="tiny", seed=1, mechanics=request.param)
    truth = pd.read_csv(out / GROUND_TRUTH / "sessions.csv", dtype={"user_id": str})
    return plant(scale="tiny", seed=1, mechanics=request.param), truth


def _draw_lengths(rng: np.random.Generator, planted: Planted, session: int, n: int
                  ) -> np.ndarray:
    """n realized lengths of one planted session, under its own law, by the generator's code."""
    sessions = planted.world.sessions.take(np.full(n, session))
    first = planted.world.libraries.draw(rng, sessions.user)
    return realized_lengths(PLANNED[planted.law.name](rng, sessions),
                            planted.catalog.duration_s[first])


def _assert_is_quantile(draws: np.ndarray, written: int, level: float) -> None:
    """`written` is the smallest whole x with P(L <= x) >= level, within sampling error.

    Four binomial standard errors; checked at x and x - 1, as L has atoms (first tracks).
    """
    tolerance = 4 * np.sqrt(level * (1 - level) / len(draws))
    assert np.mean(draws <= written) >= level - tolerance, (written, level)
    assert np.mean(draws <= written - 1) <= level + tolerance, (written, level)


def test_written_quantiles_are_exact_by_simulation(tiny):
    planted, truth = tiny
    sessions = planted.world.sessions
    np.testing.assert_array_equal(truth["start_ms"], sessions.start_s * 1000)
    np.testing.assert_array_equal(truth["length_s"], sessions.length_s)
    # From the shortest to the longest median, so short and marathon sessions both count.
    order = np.argsort(truth[GT_MEDIAN].to_numpy(), kind="stable")
    picked = order[np.linspace(0, len(order) - 1, PICKED).astype(np.int64)]
    rng = np.random.default_rng(17)
    for session in picked:
        draws = _draw_lengths(rng, planted, int(session), DRAWS)
        row = truth.iloc[session]
        for name, level in GT_QUANTILE_LEVELS.items():
            _assert_is_quantile(draws, row[name], level)
        for name, e in GT_GIVEN_MEDIANS.items():
            lasted = draws[draws > e]
            assert len(lasted) >= 300  # enough draws lasted past e to test the median given e
            _assert_is_quantile(lasted, row[name], 0.5)


def test_quantiles_are_ordered(tiny):
    _, truth = tiny
    assert (truth[GT_Q10] <= truth[GT_MEDIAN]).all()
    assert (truth[GT_MEDIAN] <= truth[GT_Q90]).all()
    assert (truth[GT_Q90] <= MAX_LENGTH_S).all()
    given = list(GT_GIVEN_MEDIANS.items())
    for (earlier, _), (later, _) in zip(given, given[1:], strict=False):
        assert (truth[earlier] <= truth[later]).all()
    for name, e in given:
        assert (truth[name] > e).all() and (truth[name] >= truth[GT_MEDIAN]).all()


def _assert_coverage(length: np.ndarray, written: np.ndarray, level: float) -> None:
    """P(L <= q) >= level > P(L < q) per session, so the shares bracket the level."""
    tolerance = 4 * np.sqrt(level * (1 - level) / len(length))
    assert np.mean(length <= written) >= level - tolerance
    assert np.mean(length < written) <= level + tolerance


def test_quantiles_cover_the_planted_lengths(tiny):
    """Over every session: L <= q at the rate of q's level (among sessions that lasted past e)."""
    _, truth = tiny
    length = truth["length_s"].to_numpy()
    for name, level in GT_QUANTILE_LEVELS.items():
        _assert_coverage(length, truth[name].to_numpy(), level)
    for name, e in GT_GIVEN_MEDIANS.items():
        lasted = length > e
        _assert_coverage(length[lasted], truth[name].to_numpy()[lasted], 0.5)


def test_bisection_finds_the_smallest_whole_x_past_the_floor():
    rng = np.random.default_rng(3)
    scale = rng.uniform(200, 20_000, (5, 1))
    atom = rng.integers(50, 400, (5, 1))

    def cdf(x: np.ndarray) -> np.ndarray:
        smooth = -np.expm1(-(x + 0.5) / scale)
        return np.where(x < MAX_LENGTH_S, smooth, 1.0) * (x >= atom)

    levels = np.column_stack([np.full(5, 0.3), rng.uniform(0.01, 0.99, 5), np.full(5, 0.999)])
    above = np.array([0, 1000, 3600])
    grid = np.tile(np.arange(MAX_LENGTH_S + 1), (5, 1))
    values = cdf(grid)
    for k in range(levels.shape[1]):
        reached = (values >= levels[:, k:k + 1]) & (grid > above[k])
        np.testing.assert_array_equal(conditional_quantiles(cdf, levels, above)[:, k],
                                      reached.argmax(axis=1))


@pytest.mark.parametrize("mechanics", list(MECHANICS))
def test_cli_synth_writes_every_column(tmp_path: Path, mechanics: str, capsys):
    out = tmp_path / "d"
    assert main(["synth", "--out", str(out), "--scale", "tiny", "--users", "3", "--seed", "4",
                 "--mechanics", mechanics]) == 0
    capsys.readouterr()
    path = out / GROUND_TRUTH / "sessions.csv"
    assert path.read_text().splitlines()[0] == ",".join(GT_SESSIONS_COLUMNS)
    truth = pd.read_csv(path)
    assert len(truth) and truth[GT_SESSIONS_COLUMNS[1:]].notna().all().all()
    assert list(read_ground_truth_sessions(out / GROUND_TRUTH).columns) == GT_ORACLE_COLUMNS
