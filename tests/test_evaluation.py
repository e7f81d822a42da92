"""The evaluation protocol: validation picks, paired bootstrap intervals over users."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_cluster_models import LEVELS, _splits

from utils.baseline import experiment
from utils.baseline.baselines import naive_predictions
from utils.baseline.experiment_state import Experiment, ModelResult
from utils.baseline.features import build_feature_set
from utils.core import evaluation


def _experiment(tmp_path: Path) -> Experiment:
    """An experiment on hand-made summaries with the frozen baselines added."""
    splits = _splits(LEVELS)
    run = Experiment(tmp_path, build_feature_set(splits, 3, peer_groups=0), splits)
    train = splits["train"]
    for name in ("global_median", "user_mean", "user_median", "previous_session"):
        val = naive_predictions(train, run.features.role_frame("validate"))[name]
        test = naive_predictions(train, run.features.role_frame("test"))[name]
        run.results.append(ModelResult(name, "baseline", {},
                                       val.to_numpy(float), test.to_numpy(float)))
    return run


def test_a_model_perfect_on_test_but_poor_on_validation_is_not_selected(tmp_path):
    run = _experiment(tmp_path)
    actual_val, actual = run.actual_val_s, run.actual_s
    run.results.append(ModelResult(
        "peeker", "lightgbm", {}, actual_val * 3.0, actual.copy()))
    run.results.append(ModelResult(
        "honest", "network", {}, actual_val * 1.1, actual * 1.1))
    table = experiment.results_table(run).set_index("label")
    assert table.loc["peeker", "mae_s"] == 0.0
    assert table["mae_s"].idxmin() == "peeker"
    assert experiment.best_model(table.reset_index()) == "honest"
    assert table["selected"].sum() == 1 and table.loc["honest", "selected"]
    assert table.loc["honest", "val_mae_s"] < table.loc["peeker", "val_mae_s"]
    # The reference baseline is the naive one with the lowest validation MAE.
    naive = table[table["kind"] == "baseline"]
    assert set(table["reference"]) == {naive["val_mae_s"].idxmin()}
    compared = experiment.comparisons(run, table.reset_index())
    assert compared["model"].eq("honest").all()
    assert set(compared["versus"]) == {"peeker", naive["val_mae_s"].idxmin()}


def test_results_table_intervals_bracket_the_estimates(tmp_path):
    run = _experiment(tmp_path)
    run.results.append(ModelResult(
        "model", "network", {}, run.actual_val_s * 1.2, run.actual_s * 1.2))
    table = experiment.results_table(run)
    for name in ("mae", "normalized_mae", "diff_vs_reference"):
        value = table["mae_s" if name == "mae" else
                      name + ("_s" if name == "diff_vs_reference" else "")]
        assert (table[f"{name}_ci_low"] <= value + 1e-9).all()
        assert (value <= table[f"{name}_ci_high"] + 1e-9).all()
    assert table["headroom_captured"].isna().all()  # no oracle, no headroom
    user_mean = table.set_index("label").loc["user_mean"]
    assert user_mean["normalized_mae"] == 1.0 == user_mean["normalized_mae_ci_low"]


def test_bootstrap_resamples_whole_users_and_is_seeded():
    users = np.array([1, 1, 1, 2, 3, 3])
    actual = np.array([10.0, 10.0, 10.0, 100.0, 50.0, 50.0])
    scores = evaluation.bootstrap_scores(actual, {"a": actual + 1.0, "b": actual + 3.0},
                                         users, resamples=500, seed=4)
    np.testing.assert_allclose(scores.mae, [1.0, 3.0])
    # Constant errors: every resample has the same MAE, and the difference is exactly -2.
    np.testing.assert_allclose(scores.resampled, np.tile([1.0, 3.0], (500, 1)))
    assert scores.difference("a", "b") == pytest.approx((-2.0, -2.0, -2.0))
    again = evaluation.bootstrap_scores(actual, {"a": actual * 1.5, "b": actual}, users,
                                        resamples=500, seed=4)
    other = evaluation.bootstrap_scores(actual, {"a": actual * 1.5, "b": actual}, users,
                                        resamples=500, seed=4)
    np.testing.assert_array_equal(again.resampled, other.resampled)
    # A resample weights whole users: user 1's three rows always come together.
    weights = evaluation.bootstrap_weights(3, 500, seed=4)
    assert weights.sum(axis=1).tolist() == [3.0] * 500


def _paired_dataset(rng: np.random.Generator, true_diff: float, users: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Paired absolute errors of two models whose population MAEs differ by `true_diff`.

    Users differ in level and session count, and a user's two errors share that level, the
    dependence a bootstrap over sessions would miss. Returns (errors a, errors b, users, the
    population difference of the row-weighted MAEs).
    """
    sessions = rng.integers(5, 60, users)
    user = np.repeat(np.arange(users), sessions)
    level = rng.lognormal(7.0, 0.8, users)[user]
    errors_b = level * (0.5 + rng.exponential(1.0, len(user)))
    # Symmetric noise of at most 0.3 level keeps errors positive and the mean gap exact.
    errors_a = errors_b + true_diff + level * rng.uniform(-0.3, 0.3, len(user))
    return errors_a, errors_b, user, true_diff


def test_bootstrap_interval_covers_the_true_difference_at_its_level():
    rng = np.random.default_rng(11)
    covered = 0
    for _ in range(200):
        errors_a, errors_b, users, true_diff = _paired_dataset(rng, 40.0, users=80)
        zeros = np.zeros(len(users))
        scores = evaluation.bootstrap_scores(zeros, {"a": errors_a, "b": errors_b}, users,
                                             resamples=1000, seed=int(rng.integers(1 << 30)))
        _, low, high = scores.difference("a", "b")
        covered += low <= true_diff <= high
    assert covered / 200 >= 0.90


def test_verdicts_need_the_interval_to_exclude_zero():
    assert evaluation.verdict("a", "b", -5.0, -1.0) == "a better"
    assert evaluation.verdict("a", "b", 1.0, 5.0) == "b better"
    assert evaluation.verdict("a", "b", -5.0, 1.0) == "not distinguishable"


def test_headroom_is_elementwise_and_nan_without_headroom():
    assert evaluation.headroom_captured(92.5, 100.0, 90.0) == pytest.approx(0.75)
    np.testing.assert_allclose(
        evaluation.headroom_captured(np.array([95.0, 100.0]), np.array([100.0, 100.0]),
                                     np.array([90.0, 100.0])), [0.5, np.nan])
    assert pd.isna(evaluation.headroom_captured(80.0, 90.0, 95.0))
