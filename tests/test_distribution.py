"""Distributional predictions: quantile metrics, the naive and oracle quantiles, the quantile
LightGBM, network and survival model, their experiments.csv columns and their choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from test_models import chrono_splits, planted_sessions, write_work

from utils import report
from utils.baseline import (
    distribution,
    distribution_models,
    distribution_plots,
    experiment,
    survival,
)
from utils.baseline.boosting import BoostingSettings, candidate_settings
from utils.baseline.experiment_state import ModelResult
from utils.baseline.features import FeatureSet, build_feature_set
from utils.core import columns as C
from utils.core.config import ModelParams, WorkLayout
from utils.core.errors import SessionlenError
from utils.core.results import append_experiments, load_experiments

LEVELS = (0.1, 0.5, 0.9)
# The planted law of test_models.planted_sessions: given the past, log1p(length) is normal
# around the planted median's log with standard deviation NOISE_SD.
NOISE_SD = 0.5


def planted_quantiles(frame: pd.DataFrame) -> np.ndarray:
    """The planted conditional quantiles (seconds) of each session, rows x LEVELS."""
    center = np.log1p(frame["true_median_s"].to_numpy())
    return np.expm1(center[:, None] + NOISE_SD * norm.ppf(LEVELS)[None, :])


def test_pinball_coverage_and_width_on_hand_made_numbers():
    actual = np.array([10.0, 20.0])
    quantiles = np.array([[5.0, 10.0, 15.0], [25.0, 30.0, 40.0]])
    # Row 1: 0.1 * 5, 0, 0.1 * 5. Row 2: all above 20 s: 0.9 * 5, 0.5 * 10, 0.1 * 20.
    np.testing.assert_allclose(distribution.pinball_losses(actual, quantiles, LEVELS),
                               [1.0 / 3.0, 11.5 / 3.0])
    assert distribution.pinball_loss(actual, quantiles, LEVELS) == pytest.approx(12.5 / 6.0)
    assert distribution.coverage(actual, quantiles, LEVELS) == 0.5
    assert distribution.interval_width(quantiles, LEVELS) == 12.5
    np.testing.assert_allclose(distribution.share_below(actual, quantiles, LEVELS),
                               [0.5, 1.0, 1.0])
    # Perfect quantiles of a point mass cost nothing; the bounds of the interval count inside.
    assert distribution.pinball_loss(actual, np.repeat(actual[:, None], 3, 1), LEVELS) == 0.0
    assert distribution.coverage(actual, np.column_stack([actual, actual, actual]), LEVELS) == 1
    with pytest.raises(SessionlenError, match="include 0.1, 0.5 and 0.9"):
        distribution.check_levels([0.2, 0.5, 0.9])
    with pytest.raises(SessionlenError, match="increase strictly"):
        distribution.check_levels([0.5, 0.1, 0.9])


def test_quantiles_are_sorted_per_row():
    crossed = np.array([[30.0, 10.0, 20.0], [-5.0, 1.0, 0.5]])
    np.testing.assert_array_equal(distribution.sort_quantiles(crossed),
                                  [[10.0, 20.0, 30.0], [0.0, 0.5, 1.0]])


def _sessions(lengths: dict[int, list[float]]) -> pd.DataFrame:
    rows = [{C.USER_ID: user, C.TIMESTAMP: 1000 * i, C.CURRENT_SESSION_LENGTH: length}
            for user, values in lengths.items() for i, length in enumerate(values)]
    return pd.DataFrame(rows)


def test_running_quantiles_use_only_earlier_sessions():
    fallback = np.array([1.0, 2.0, 3.0])
    sessions = _sessions({7: [100.0, 300.0, 200.0, 400.0, 9999.0], 8: [50.0, 60.0]})
    got = distribution.running_quantiles(sessions, LEVELS, fallback)
    np.testing.assert_array_equal(got[0], fallback)  # first session: no history
    np.testing.assert_array_equal(got[1], [100.0, 100.0, 100.0])
    np.testing.assert_allclose(got[2], np.quantile([100.0, 300.0], LEVELS))
    np.testing.assert_allclose(got[4], np.quantile([100.0, 300.0, 200.0, 400.0], LEVELS))
    np.testing.assert_array_equal(got[5], fallback)  # another user starts afresh
    np.testing.assert_array_equal(got[6], [50.0, 50.0, 50.0])
    # A later session's length changes nothing before it.
    changed = sessions.copy()
    changed.loc[3, C.CURRENT_SESSION_LENGTH] = 1.0
    np.testing.assert_array_equal(distribution.running_quantiles(changed, LEVELS, fallback)[:4],
                                  got[:4])


@pytest.fixture(scope="module")
def big_features() -> FeatureSet:
    return build_feature_set(chrono_splits(planted_sessions(users=60, sessions=80, seed=4)),
                             sequence_length=6, peer_groups=0)


def test_quantile_lightgbm_is_calibrated_on_planted_lognormal_sessions(big_features):
    frame = planted_sessions(users=60, sessions=80, seed=4)
    settings = BoostingSettings(max_rounds=400, early_stopping_rounds=40,
                                min_child_samples=50, seed=2)
    model = distribution_models.fit_quantile_lightgbm(big_features, settings, LEVELS,
                                                      log=lambda _: None)
    test = big_features.rows["test"]
    predicted = distribution_models.predict_quantile_lightgbm(model, big_features, test)
    assert (np.diff(predicted, axis=1) >= 0).all()
    actual = big_features.lengths_s[test]
    assert abs(distribution.coverage(actual, predicted, LEVELS) - 0.8) < 0.05
    # Close to the planted law's own quantiles, far better than one global set of quantiles.
    keyed = frame.set_index([C.USER_ID, C.TIMESTAMP])
    rows = big_features.role_frame("test")
    truth = planted_quantiles(keyed.loc[list(zip(rows[C.USER_ID], rows[C.TIMESTAMP],
                                                 strict=True))])
    train = big_features.lengths_s[big_features.rows["train"]]
    flat = np.tile(np.quantile(train, LEVELS), (len(test), 1))
    model_loss = distribution.pinball_loss(actual, predicted, LEVELS)
    assert model_loss < 1.25 * distribution.pinball_loss(actual, truth, LEVELS)
    assert model_loss < 0.8 * distribution.pinball_loss(actual, flat, LEVELS)


def _quantile_result(name: str, kind: str, val_q: np.ndarray, test_q: np.ndarray
                     ) -> ModelResult:
    return ModelResult(name, kind, {}, val_q[:, 1], test_q[:, 1],
                       val_quantiles_s=val_q, quantiles_s=test_q, quantile_levels=LEVELS)


def _spread(lengths: np.ndarray, factor: float) -> np.ndarray:
    """Quantiles around the actual lengths, `factor` apart."""
    return np.column_stack([lengths / factor, lengths, lengths * factor])


def test_best_distribution_is_chosen_on_validation_not_test(tmp_path):
    from test_evaluation import _experiment

    run = _experiment(tmp_path)
    val, test = run.actual_val_s, run.actual_s
    run.results.append(_quantile_result("peeker", distribution.DISTRIBUTION_KIND,
                                        _spread(val * 4.0, 3.0), _spread(test, 1.0)))
    run.results.append(_quantile_result("honest", distribution.DISTRIBUTION_KIND,
                                        _spread(val, 1.5), _spread(test * 1.2, 1.5)))
    # Neither a baseline nor the oracle is chosen, however good on validation.
    run.results.append(_quantile_result("clairvoyant", "baseline", _spread(val, 1.0),
                                        _spread(test, 1.0)))
    table = experiment.results_table(run).set_index("label")
    assert table.loc["peeker", "pinball_loss_s"] == 0.0
    assert table.loc["honest", "val_pinball_loss_s"] < table.loc["peeker", "val_pinball_loss_s"]
    assert table.index[table["selected_distribution"].astype(bool)].tolist() == ["honest"]
    # The point model is chosen among the point models only.
    assert not table.loc[table["kind"] == distribution.DISTRIBUTION_KIND, "selected"].any()
    assert table.loc[["global_median", "user_mean"], "pinball_loss_s"].isna().all()
    low, high = table.loc["honest", ["pinball_ci_low", "pinball_ci_high"]]
    assert low <= table.loc["honest", "pinball_loss_s"] <= high
    assert table.loc["honest", "coverage_80"] == 1.0


def _planted_work(tmp_path: Path, with_quantiles: bool) -> tuple[pd.DataFrame, Path, Path]:
    frame = planted_sessions(users=24, sessions=40, seed=2)
    work, raw = write_work(tmp_path, frame)
    if with_quantiles:
        truth = pd.read_csv(raw / "ground_truth" / "sessions.csv", dtype={C.USER_ID: str})
        planted = np.round(planted_quantiles(frame))
        truth[C.GT_Q10], truth[C.GT_Q90] = planted[:, 0], planted[:, 2]
        truth.to_csv(raw / "ground_truth" / "sessions.csv", index=False)
    return frame, work, raw


def test_oracle_row_gets_the_planted_quantiles(tmp_path):
    frame, work, raw = _planted_work(tmp_path, with_quantiles=True)
    run = experiment.start_experiment(work, sequence_length=4)
    experiment.add_baselines(run, raw)
    distribution.add_distribution_baselines(run, raw, LEVELS)
    oracle = next(r for r in run.results if r.label == "oracle")
    test = frame[frame[C.SESSION_ID] >= 32].sort_values([C.USER_ID, C.TIMESTAMP])
    planted = planted_quantiles(test)
    np.testing.assert_allclose(oracle.quantiles_s[:, 0], np.round(planted[:, 0]))
    np.testing.assert_allclose(oracle.quantiles_s[:, 2], np.round(planted[:, 2]))
    np.testing.assert_allclose(oracle.quantiles_s[:, 1], test["true_median_s"])
    # A ground truth from before the quantile columns serves the median only.
    _, old_work, old_raw = _planted_work(tmp_path / "old", with_quantiles=False)
    old = experiment.start_experiment(old_work, sequence_length=4)
    experiment.add_baselines(old, old_raw)
    distribution.add_distribution_baselines(old, old_raw, LEVELS)
    assert next(r for r in old.results if r.label == "oracle").quantiles_s is None
    assert any(r.label == distribution.RUNNING_QUANTILES and r.quantiles_s is not None
               for r in old.results)


def test_quantile_boosters_fit_beside_the_networks_match_a_fit_in_line(tmp_path):
    frame, work, raw = _planted_work(tmp_path, with_quantiles=True)
    candidates = candidate_settings(BoostingSettings(max_rounds=60, min_child_samples=20),
                                    [2, 4], [1.0])
    runs = [experiment.start_experiment(work, sequence_length=4) for _ in range(2)]
    experiment.train_lightgbm(runs[0], candidates, log=lambda _: None)
    distribution_models.train_quantile_lightgbm(runs[0], LEVELS, log=lambda _: None)
    point = experiment.start_lightgbm(runs[1], candidates)
    job = distribution_models.start_quantile_lightgbm(runs[1], point, LEVELS)
    lines: list[str] = []
    experiment.train_lightgbm(runs[1], point, log=lambda _: None)
    distribution_models.train_quantile_lightgbm(runs[1], job, log=lines.append)
    in_line, beside = (run.results[-1] for run in runs)
    assert beside.model == distribution_models.QUANTILE_LIGHTGBM
    np.testing.assert_array_equal(in_line.quantiles_s, beside.quantiles_s)
    np.testing.assert_array_equal(in_line.val_quantiles_s, beside.val_quantiles_s)
    assert in_line.params == beside.params and len(lines) == 1


def test_every_distributional_model_is_recorded_with_the_new_columns(tmp_path):
    frame, work, raw = _planted_work(tmp_path, with_quantiles=True)
    run = experiment.start_experiment(work, sequence_length=4)
    experiment.add_baselines(run, raw)
    experiment.train_lightgbm(run, candidate_settings(
        BoostingSettings(max_rounds=60, min_child_samples=20), [2, 4], [1.0]),
        log=lambda _: None)
    distribution.add_distribution_baselines(run, raw, LEVELS)
    distribution_models.train_quantile_lightgbm(run, LEVELS, log=lambda _: None)
    params = ModelParams(epochs=5, batch_size=128, hidden_dim=8, dropout=[0.0], seed=5)
    lines = distribution_models.train_quantile_network(run, params, 2, LEVELS,
                                                       log=lambda _: None)
    assert lines["epochs_run"].iloc[0] <= 2
    fitted = survival.train_survival(run, LEVELS, log=lambda _: None)
    assert fitted.coefficients.index.tolist() == survival.SURVIVAL_FEATURES
    table = experiment.results_table(run)
    experiment.record_results(run, table, experiment.comparisons(run, table))

    recorded = load_experiments(work).set_index("model")
    assert [c for c in recorded.columns if c in distribution.DISTRIBUTION_COLUMNS] == \
        distribution.DISTRIBUTION_COLUMNS
    spread = ["lightgbm_quantile", "gru_quantile", "survival_cox",
              distribution.RUNNING_QUANTILES, "oracle"]
    assert recorded.loc[spread, "pinball_loss_s"].notna().all()
    assert recorded.loc[spread, "val_pinball_loss_s"].notna().all()
    assert (recorded.loc[spread, "pinball_ci_low"] <= recorded.loc[spread, "pinball_loss_s"]).all()
    assert recorded.loc[spread, "coverage_80"].between(0, 1).all()
    assert (recorded.loc[spread, "interval_width_s"] > 0).all()
    point = ["lightgbm", "user_mean", "gru"] if "gru" in recorded.index else ["lightgbm"]
    assert recorded.loc[point, "pinball_loss_s"].isna().all()
    assert recorded["selected"].sum() == 1 and recorded.loc["lightgbm", "selected"]
    chosen = recorded.index[recorded["selected_distribution"].astype(bool)].tolist()
    trained = recorded.loc[["lightgbm_quantile", "gru_quantile", "survival_cox"]]
    assert chosen == [trained["val_pinball_loss_s"].idxmin()]
    params = json.loads(recorded.loc["lightgbm_quantile", "params"])
    point_params = json.loads(recorded.loc["lightgbm", "params"])
    assert params["num_leaves"] == point_params["num_leaves"]
    assert params["levels"] == list(LEVELS)

    figures = distribution_plots.draw_distribution_figures(run, table, fitted, 2)
    for name in figures:
        assert (WorkLayout(work).figures / f"baseline_{name}.png").stat().st_size > 1000
    headline = distribution.distribution_headline(table)
    assert set(headline.index) == {*spread[:1], "gru_quantile (dropout 0)", *spread[2:]}
    text = report.write_report(work).read_text(encoding="utf-8")
    best = f"`{chosen[0]}`" if chosen[0] != "gru_quantile" else "`gru_quantile (dropout 0)`"
    assert "## Distributional models\n" in text
    assert f"- **baseline**: {best}, selected on validation pinball loss" in text


def test_an_experiments_file_from_before_the_distribution_columns_still_loads(tmp_path):
    old_columns = [c for c in C.EXPERIMENT_COLUMNS if c not in distribution.DISTRIBUTION_COLUMNS]
    path = WorkLayout(tmp_path).experiments
    path.parent.mkdir(parents=True)
    pd.DataFrame([{**dict.fromkeys(old_columns, 1.0), "run_id": "r0", "stage": "baseline",
                   "model": "gru", "params": "{}", "selected": True}]
                 ).to_csv(path, index=False)
    new = {**dict.fromkeys(C.EXPERIMENT_COLUMNS, 2.0), "run_id": "r1", "stage": "baseline",
           "model": "gru_quantile", "params": "{}", "selected": False,
           "selected_distribution": True}
    append_experiments(tmp_path, [new])
    table = load_experiments(tmp_path)
    assert table.columns.tolist() == C.EXPERIMENT_FILE_COLUMNS
    assert pd.isna(table.loc[0, "pinball_loss_s"]) and table.loc[1, "pinball_loss_s"] == 2.0


def test_quantile_network_outputs_are_ordered_before_sorting(big_features):
    model = distribution_models.build_quantile_network(big_features, 4, 0.0, 1, LEVELS)
    from utils.baseline.models import make_dataset

    inputs, _ = next(iter(make_dataset(big_features, big_features.rows["test"][:64], 64,
                                       False, 0)))
    raw = np.asarray(model(inputs))
    assert raw.shape == (64, 3) and (np.diff(raw, axis=1) >= 0).all()
    loss = distribution_models.pinball_loss_fn(LEVELS)
    # Keras' loss agrees with the metric on the standardized scale.
    y = np.array([0.0, 1.0], dtype=np.float32)
    q = np.array([[-1.0, 0.0, 1.0], [0.5, 2.0, 3.0]], dtype=np.float32)
    np.testing.assert_allclose(np.asarray(loss(y, q)),
                               distribution.pinball_losses(y, q, LEVELS), rtol=1e-6)


def test_survival_quantiles_come_from_its_survival_function(big_features):
    model = survival.fit_survival(big_features, log=lambda _: None)
    rows = big_features.rows["test"][:20]
    quantiles = survival.survival_quantiles(model, big_features, rows, LEVELS)
    assert (np.diff(quantiles, axis=1) > 0).all()
    # The library's own survival function: at each quantile it has just reached 1 - level.
    functions = model.estimator.predict_survival_function(survival.covariates(big_features,
                                                                              rows))
    step = np.diff(model.times_s).min() / 2
    for j, function in enumerate(functions):
        assert (function(quantiles[j]) <= 1.0 - np.array(LEVELS) + 1e-12).all()
        assert (function(quantiles[j] - step) > 1.0 - np.array(LEVELS)).all()
    np.testing.assert_allclose(
        survival.survival_curves(model, big_features, rows[:3], quantiles[0]),
        np.column_stack([f(quantiles[0]) for f in functions[:3]]), rtol=1e-10)
    # The planted sessions' length falls with the listener's level: a higher level, a lower
    # hazard.
    assert model.coefficients["hist_median_log"] < 0
    np.testing.assert_allclose(survival.empirical_survival(np.array([10.0, 20.0, 30.0, 40.0]),
                                                           np.array([0.0, 20.0, 45.0])),
                               [1.0, 0.5, 0.0])
