"""Sequence networks, LightGBM and the figures: shapes, learning, determinism, clear errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from utils.baseline import experiment
from utils.baseline.boosting import (
    BoostingSettings,
    candidate_settings,
    fit_lightgbm,
    fit_lightgbm_candidates,
    predict_lightgbm,
    refit_on_validation_rows,
    train_l1_booster,
    validation_mae,
)
from utils.baseline.experiment_state import Experiment
from utils.baseline.features import FeatureSet, build_feature_set, tabular_features
from utils.baseline.models import (
    MIN_IMPROVEMENT,
    build_network,
    fit_network,
    make_dataset,
    networks_to_train,
    predict_seconds,
    refit_network,
)
from utils.baseline.session_table import SOURCE_ID
from utils.baseline.summary_dir import COUNTRY_VOCAB_FILE, SUMMARY_OUTPUTS, USER_IDS_FILE
from utils.core import columns as C
from utils.core import plots
from utils.core.config import ModelParams, WorkLayout
from utils.core.errors import SessionlenError, StageIncompleteError
from utils.core.results import load_comparisons, load_experiments
from utils.core.stage_io import write_manifest

HOUR_MS = 3_600_000
START_MS = 1_230_768_000_000  # 2009-01-01T00:00:00Z


def planted_sessions(users: int = 40, sessions: int = 60, seed: int = 0) -> pd.DataFrame:
    """Summary rows whose log-lengths carry a user effect, an hour effect and persistence from
    one session to the next (signal a model can learn at session start); `true_median_s` is
    the planted conditional median given the past, i.e. the oracle."""
    rng = np.random.default_rng(seed)
    user_effect = rng.normal(0.0, 0.8, users)
    gaps_h = rng.exponential(20.0, (users, sessions)) + 1.0
    start_ms = START_MS + (np.cumsum(gaps_h, axis=1) * HOUR_MS).astype(np.int64)
    hour = (start_ms // HOUR_MS) % 24
    residual = np.zeros((users, sessions))
    noise = rng.normal(0.0, 0.5, (users, sessions))
    for s in range(sessions):
        residual[:, s] = noise[:, s] + (0.5 * residual[:, s - 1] if s else 0.0)
    center = 7.0 + user_effect[:, None] + 0.6 * np.sin(2 * np.pi * hour / 24)
    known = np.concatenate([np.zeros((users, 1)), 0.5 * residual[:, :-1]], axis=1)
    return pd.DataFrame({
        C.TIMESTAMP: start_ms.ravel(), C.USER_ID: np.repeat(np.arange(users), sessions),
        C.SESSION_ID: np.tile(np.arange(sessions), users), C.GENDER: np.repeat(
            rng.integers(-1, 2, users), sessions),
        C.AGE: np.repeat(rng.integers(18, 60, users), sessions), C.COUNTRY: np.repeat(
            rng.integers(0, 5, users), sessions), C.REGISTERED: -1,
        C.PREVIOUS_SESSION_LENGTH: 0.0, C.AVERAGE_SESSION_LENGTH: 0.0,
        C.CURRENT_SESSION_LENGTH: np.round(np.expm1(center + residual).ravel(), 3),
        "true_median_s": np.expm1(center + known).ravel(),
    })


def chrono_splits(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per user 70% train, 10% validate, 20% test in time order (summary columns only)."""
    position = frame[C.SESSION_ID] / (frame[C.SESSION_ID].max() + 1)
    frame = frame[C.SUMMARY_COLUMNS]
    return {"train": frame[position < 0.7], "validate": frame[(position >= 0.7) & (position < 0.8)],
            "test": frame[position >= 0.8]}


def planted_splits() -> dict[str, pd.DataFrame]:
    """The default planted dataset, chrono-split."""
    return chrono_splits(planted_sessions())


@pytest.fixture(scope="module")
def features() -> FeatureSet:
    return build_feature_set(planted_splits(), sequence_length=6)


def mae_on_test(features: FeatureSet, predicted: np.ndarray) -> float:
    """MAE (seconds) of predictions for the test rows."""
    return float(np.abs(predicted - features.lengths_s[features.rows["test"]]).mean())


def global_median_mae(features: FeatureSet) -> float:
    """The global-median baseline's test MAE."""
    median = np.median(features.lengths_s[features.rows["train"]])
    return mae_on_test(features, np.full(len(features.rows["test"]), median))


def user_median_mae(features: FeatureSet) -> float:
    """The user-median baseline's test MAE."""
    frame = features.sessions
    train = frame.iloc[features.rows["train"]]
    medians = train.groupby(C.USER_ID)[C.CURRENT_SESSION_LENGTH].median()
    test_users = frame.iloc[features.rows["test"]][C.USER_ID]
    return mae_on_test(features, test_users.map(medians).to_numpy())


@pytest.mark.parametrize(("name", "cell", "layers"), [
    ("gru", "GRU", 1), ("lstm", "LSTM", 1), ("layered_lstm", "LSTM", 3), ("layered_gru", "GRU", 3),
])
def test_networks_have_the_named_cells_and_depth(features, name, cell, layers):
    model = build_network(name, features, hidden_dim=8, dropout=0.1, no_layers=3)
    recurrent = [layer for layer in model.layers if type(layer).__name__ in ("GRU", "LSTM")]
    assert [type(layer).__name__ for layer in recurrent] == [cell] * layers
    embedded = {layer.name for layer in model.layers if type(layer).__name__ == "Embedding"}
    assert embedded == {"embed_country", "embed_gender", "embed_hour", "embed_weekday"}
    inputs, _ = next(iter(make_dataset(features, features.rows["test"][:5], 5, False, 0)))
    assert model(inputs).shape == (5, 1)


def test_relu_layer_beside_the_read_out_adds_its_output_to_the_linear_one(features):
    plain = build_network("gru", features, hidden_dim=8, dropout=0.0, no_layers=1)
    headed = build_network("gru", features, hidden_dim=8, dropout=0.0, no_layers=1,
                           head_units=4)
    assert plain.get_layer("log_length").units == 1
    assert headed.get_layer("head_hidden").units == 4
    inputs, _ = next(iter(make_dataset(features, features.rows["test"][:5], 5, False, 0)))
    joined = keras.Model(headed.inputs, headed.get_layer("joined").output)(inputs).numpy()
    linear = joined @ headed.get_layer("linear_read_out").kernel.numpy() \
        + headed.get_layer("linear_read_out").bias.numpy()
    hidden = np.maximum(joined @ headed.get_layer("head_hidden").kernel.numpy()
                        + headed.get_layer("head_hidden").bias.numpy(), 0.0)
    nonlinear = hidden @ headed.get_layer("head_read_out").kernel.numpy() \
        + headed.get_layer("head_read_out").bias.numpy()
    np.testing.assert_allclose(headed(inputs).numpy(), linear + nonlinear, rtol=1e-4, atol=1e-5)
    with pytest.raises(SessionlenError, match="head_units"):
        build_network("gru", features, 8, 0.0, 1, head_units=-1)


def test_dataset_gathers_each_rows_history_and_is_seeded(features):
    rows = features.rows["train"][:64]
    inputs, target = next(iter(make_dataset(features, rows, 64, False, 0)))
    np.testing.assert_array_equal(inputs["history"].numpy(),
                                  features.steps[features.history[rows]])
    np.testing.assert_array_equal(inputs["country"].numpy(), features.categorical["country"][rows])
    np.testing.assert_array_equal(inputs["context"].numpy(), features.context[rows])
    np.testing.assert_array_equal(target.numpy(), features.target[rows])

    def order(seed: int) -> np.ndarray:
        batches = make_dataset(features, rows, 16, True, seed)
        return np.concatenate([t.numpy() for _, t in batches])

    np.testing.assert_array_equal(order(5), order(5))
    assert not np.array_equal(order(5), features.target[rows])
    assert sorted(order(5)) == sorted(features.target[rows])


def test_networks_to_train_follows_the_original_flags():
    assert networks_to_train(ModelParams(), compare_networks=True) == ["gru", "lstm",
                                                                       "layered_lstm"]
    chosen = ModelParams(model_lstm=False, layered=True)
    assert networks_to_train(chosen, compare_networks=True)[-1] == "layered_gru"
    assert networks_to_train(ModelParams(model_lstm=True), compare_networks=False) == ["lstm"]


def test_gru_learns_the_planted_signal_and_restores_its_best_epoch(features):
    params = ModelParams(epochs=15, batch_size=64, hidden_dim=8, patience=4, seed=3,
                         learning_rate=0.005)
    lines: list[str] = []
    trained = fit_network("gru", features, params, dropout=0.2, log=lines.append)
    assert len(lines) == len(trained.history["loss"]) and "gru (dropout 0.2) epoch 1/15" in lines[0]
    val = make_dataset(features, features.rows["validate"], 4096, False, 0)
    restored = trained.model.evaluate(val, verbose=0)
    # The kept epoch is the reported one; a later gain below MIN_IMPROVEMENT does not replace it.
    assert restored == pytest.approx(trained.history["val_loss"][trained.best_epoch - 1],
                                     rel=1e-4)
    assert restored <= min(trained.history["val_loss"]) + MIN_IMPROVEMENT * (1 + 1e-3)
    mae = mae_on_test(features, predict_seconds(trained.model, features, features.rows["test"]))
    assert mae < 0.85 * global_median_mae(features)
    assert mae < user_median_mae(features)


def test_training_is_reproducible_with_a_seed(features):
    params = ModelParams(epochs=2, batch_size=256, hidden_dim=8, seed=11)
    runs = [predict_seconds(fit_network("lstm", features, params, 0.2, log=lambda _: None).model,
                            features, features.rows["test"]) for _ in range(2)]
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5)


def test_bad_network_settings_are_one_line_errors(features):
    with pytest.raises(SessionlenError, match="unknown network 'transformer'"):
        build_network("transformer", features, 8, 0.0, 1)
    with pytest.raises(SessionlenError, match=r"dropout must be in \[0, 1\)"):
        build_network("gru", features, 8, 1.5, 1)
    with pytest.raises(SessionlenError, match="unknown optimizer 'adamm'"):
        fit_network("gru", features, ModelParams(optimizer="adamm", epochs=1), 0.0)
    with pytest.raises(SessionlenError, match="unknown loss_func 'l7'"):
        fit_network("gru", features, ModelParams(loss_func="l7", epochs=1), 0.0)
    with pytest.raises(SessionlenError, match="epochs and batch_size must be positive"):
        fit_network("gru", features, ModelParams(epochs=0), 0.0)


def test_lightgbm_learns_the_signal_and_is_deterministic(features):
    settings = BoostingSettings(max_rounds=300, early_stopping_rounds=30, seed=4)
    runs = [fit_lightgbm(features, settings, log=lambda _: None) for _ in range(2)]
    predictions = [predict_lightgbm(run, features, features.rows["test"]) for run in runs]
    np.testing.assert_array_equal(predictions[0], predictions[1])
    assert runs[0].best_round >= 1
    assert len(runs[0].curves["val_loss"]) >= runs[0].best_round
    mae = mae_on_test(features, predictions[0])
    assert mae < 0.85 * global_median_mae(features)
    assert mae < user_median_mae(features)


def test_lightgbm_trees_do_not_depend_on_the_thread_count(features):
    # A fit alone takes every core, fits side by side one each: both must give the same trees.
    table = tabular_features(features)
    train, val = features.rows["train"], features.rows["validate"]
    target = np.log1p(features.lengths_s)
    settings = BoostingSettings(max_rounds=200, early_stopping_rounds=20, num_leaves=16, seed=3)
    fits = [train_l1_booster(settings, (table.iloc[train], target[train]),
                             (table.iloc[val], target[val]), threads=threads)[0]
            for threads in (1, 2)]
    trees = [fit.model_to_string().split("\nparameters:")[0] for fit in fits]
    assert fits[0].num_trees() > 1 and trees[0] == trees[1]


def test_lightgbm_started_beside_the_networks_matches_a_fit_in_line(features, tmp_path):
    candidates = candidate_settings(BoostingSettings(max_rounds=150, early_stopping_rounds=15),
                                    [4, 16], [0.8])
    in_line, beside = (Experiment(tmp_path, features, {}) for _ in range(2))
    lines: list[str] = []
    job = experiment.start_lightgbm(beside, candidates)
    fit_network("gru", features, ModelParams(epochs=1, batch_size=512), 0.0, log=lambda _: None)
    boosters = [experiment.train_lightgbm(in_line, candidates, log=lambda _: None),
                experiment.train_lightgbm(beside, job, log=lines.append)]
    for first, second in zip(in_line.results, beside.results, strict=True):
        np.testing.assert_array_equal(first.predictions_s, second.predictions_s)
        np.testing.assert_array_equal(first.val_predictions_s, second.val_predictions_s)
    assert boosters[0].best_round == boosters[1].best_round
    assert len(lines) == len(candidates) + 2 and "best round" in lines[0]
    assert "refit on train and validation rows" in lines[-1]


def test_the_test_rows_are_predicted_by_the_chosen_setting_refit_with_validation_rows(
        features, tmp_path):
    settings = BoostingSettings(max_rounds=200, early_stopping_rounds=20, seed=4)
    runs = [Experiment(tmp_path, features, {}) for _ in range(2)]
    trained = experiment.train_lightgbm(runs[0], [settings], log=lambda _: None)
    experiment.train_lightgbm(runs[1], [settings], log=lambda _: None, refit=False)
    refit = refit_on_validation_rows(trained, features, settings)
    validate, test = features.rows["validate"], features.rows["test"]
    assert refit.booster.num_trees() == trained.best_round
    result, unrefit = runs[0].results[-1], runs[1].results[-1]
    assert result.params["refit_on_validation"] and not unrefit.params["refit_on_validation"]
    # Validation is scored by the fit that stopped on it, test by the refit: the two differ.
    np.testing.assert_array_equal(result.val_predictions_s, unrefit.val_predictions_s)
    np.testing.assert_array_equal(result.val_predictions_s,
                                  predict_lightgbm(trained, features, validate))
    np.testing.assert_array_equal(result.predictions_s, predict_lightgbm(refit, features, test))
    np.testing.assert_array_equal(unrefit.predictions_s,
                                  predict_lightgbm(trained, features, test))
    assert not np.array_equal(result.predictions_s, unrefit.predictions_s)
    # The refit learned from the validation targets: it fits them better than the train-only fit.
    actual = features.lengths_s[validate]
    assert (np.abs(predict_lightgbm(refit, features, validate) - actual).mean()
            < np.abs(predict_lightgbm(trained, features, validate) - actual).mean())


def test_a_network_refit_replays_its_kept_epochs_on_train_and_validation_rows(features):
    params = ModelParams(epochs=4, patience=4, batch_size=128, hidden_dim=8, seed=3)
    trained = fit_network("gru", features, params, 0.0, log=lambda _: None)
    lines: list[str] = []
    refits = [refit_network(trained, features, params, log=lines.append) for _ in range(2)]
    assert len(lines) == 2 * trained.best_epoch and "refit epoch 1/" in lines[0]
    assert "val_loss" not in lines[0]
    validate, test = features.rows["validate"], features.rows["test"]
    first, second = (predict_seconds(model, features, test) for model, _ in refits)
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, predict_seconds(trained.model, features, test))
    actual = features.lengths_s[validate]
    assert (np.abs(predict_seconds(refits[0][0], features, validate) - actual).mean()
            < np.abs(predict_seconds(trained.model, features, validate) - actual).mean())
    assert mae_on_test(features, first) < user_median_mae(features)
    with pytest.raises(SessionlenError, match="no learning rate recorded"):
        refit_network(dataclasses.replace(trained, history={"loss": [1.0]}), features, params)


def test_lightgbm_keeps_the_candidate_with_the_lowest_validation_mae(features):
    base = BoostingSettings(max_rounds=200, early_stopping_rounds=20, min_child_samples=20, seed=4)
    candidates = candidate_settings(base, [2, 8], [0.3, 1.0])
    assert [(c.num_leaves, c.feature_fraction) for c in candidates] == [
        (2, 0.3), (2, 1.0), (8, 0.3), (8, 1.0)]
    trained, chosen = fit_lightgbm_candidates(features, candidates, log=lambda _: None)
    table = trained.candidates
    assert len(table) == 4 and table["chosen"].sum() == 1
    best = table.loc[table["val_mae_s"].idxmin()]
    assert bool(best["chosen"])
    assert (chosen.num_leaves, chosen.feature_fraction) == (best["num_leaves"],
                                                            best["feature_fraction"])
    # Each candidate's score is its own fit's validation MAE: refitting the chosen one alone
    # gives the same trees.
    alone = fit_lightgbm(features, chosen, log=lambda _: None)
    assert validation_mae(alone, features) == pytest.approx(best["val_mae_s"])
    validate = features.rows["validate"]
    np.testing.assert_array_equal(predict_lightgbm(alone, features, validate),
                                  predict_lightgbm(trained, features, validate))
    with pytest.raises(SessionlenError, match="must list at least one value"):
        candidate_settings(base, [], [0.5])
    with pytest.raises(SessionlenError, match="feature_fraction must be in"):
        fit_lightgbm_candidates(features, candidate_settings(base, [4], [1.5]))


def test_lightgbm_settings_are_validated():
    with pytest.raises(SessionlenError, match="learning_rate must be in"):
        BoostingSettings(learning_rate=0.0).lightgbm_params()
    with pytest.raises(SessionlenError, match="num_leaves must be at least 2"):
        BoostingSettings(num_leaves=1).lightgbm_params()
    with pytest.raises(SessionlenError, match="unknown BoostingSettings parameter.*leaves"):
        BoostingSettings.from_dict({"leaves": 10})
    with pytest.raises(SessionlenError, match="num_leaves=2.5 has the wrong type"):
        BoostingSettings(num_leaves=2.5)


def test_figures_are_written_as_png(tmp_path, features):
    actual = features.lengths_s[features.rows["test"]]
    rng = np.random.default_rng(0)
    predictions = {"a": actual * rng.lognormal(0, 0.3, len(actual)), "b": np.full_like(actual, 900)}
    mae = np.array([float(np.abs(p - actual).mean()) for p in predictions.values()] + [100.0])
    table = pd.DataFrame({"label": ["a", "b", "oracle"], "kind": ["network", "baseline", "oracle"],
                          "mae_s": mae, "mae_ci_low": mae - 20, "mae_ci_high": mae + 30,
                          "selected": [True, False, False], "reference": "b",
                          "diff_vs_reference_s": mae - mae[1],
                          "diff_vs_reference_ci_low": mae - mae[1] - 5,
                          "diff_vs_reference_ci_high": mae - mae[1] + 5})
    buckets = plots.error_by_bucket(actual, predictions)
    assert buckets["sessions"].sum() == len(actual)
    assert buckets.loc[buckets["sessions"] > 0, "b"].notna().all()
    figures = {
        "mae": plots.plot_mae_per_model(table),
        "scatter": plots.plot_predicted_vs_actual(actual, predictions["a"], "a"),
        "buckets": plots.plot_error_by_bucket(actual, predictions),
        "curves": plots.plot_learning_curves({"a": {"loss": [3, 2, 1.5], "val_loss": [3, 2.5, 2.6]},
                                              "b": {"loss": [1, 0.5], "val_loss": [1, 0.9]}}),
    }
    for name, fig in figures.items():
        path = plots.save_figure(fig, tmp_path / f"{name}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figures["mae"].axes[0].get_legend().get_texts()[0].get_text() == "oracle 100 s"
    ticks = [t.get_text() for t in figures["mae"].axes[0].get_yticklabels()]
    assert sorted(ticks) == ["a (selected)", "b"]
    for axis, width in zip(figures["mae"].axes, (50, 10), strict=True):
        bars = [line for line in axis.collections if len(line.get_segments())]
        spans = sorted(round(float(np.ptp(seg[:, 0]))) for c in bars for seg in c.get_segments())
        assert spans == [width, width]  # each interval drawn from its low to its high end


def write_work(root: Path, frame: pd.DataFrame) -> tuple[Path, Path]:
    """A WORK with a complete summarize stage, and a RAW with the planted ground truth."""
    work, raw = root / "work", root / "raw"
    summary_dir = WorkLayout(work).summary_dir
    for name, split in chrono_splits(frame).items():
        (summary_dir / name).mkdir(parents=True)
        for user, rows in split.groupby(C.USER_ID):
            rows.to_csv(summary_dir / name / f"{user}.csv", index=False)
    users = pd.DataFrame({SOURCE_ID: [f"user_{u:06d}" for u in sorted(frame[C.USER_ID].unique())],
                          C.USER_ID: sorted(frame[C.USER_ID].unique())})
    users.to_csv(summary_dir / USER_IDS_FILE, index=False)
    pd.DataFrame({C.COUNTRY: ["X"], "code": [1]}).to_csv(summary_dir / COUNTRY_VOCAB_FILE,
                                                         index=False)
    write_manifest(summary_dir, "summarize", inputs=[], parameters={}, rows_in=len(frame),
                   rows_out=len(frame), rows_rejected=0, outputs=SUMMARY_OUTPUTS, timings={})
    truth = raw / "ground_truth"
    truth.mkdir(parents=True)
    pd.DataFrame({C.USER_ID: users.set_index(C.USER_ID)[SOURCE_ID].reindex(frame[C.USER_ID])
                  .to_numpy(), "start_ms": frame[C.TIMESTAMP], "length_s":
                  frame[C.CURRENT_SESSION_LENGTH], "median_length_s": frame["true_median_s"]}
                 ).to_csv(truth / "sessions.csv", index=False)
    return work, raw


def test_experiment_scores_every_model_on_the_same_rows_and_records_them(tmp_path):
    frame = planted_sessions(users=24, sessions=40, seed=2)
    work, raw = write_work(tmp_path, frame)
    run = experiment.start_experiment(work, sequence_length=4)
    assert experiment.split_sizes(run).loc["test", "sessions"] == 24 * 8
    experiment.add_baselines(run, raw)
    params = ModelParams(epochs=1, batch_size=128, hidden_dim=8, dropout=[0.0, 0.3], seed=5)
    trained = experiment.train_networks(run, params, log=lambda _: None)
    assert len(trained) == 6 and (trained["epochs_run"] == 1).all()
    assert (trained["refit_seconds"] > 0).all()
    booster = experiment.train_lightgbm(
        run, candidate_settings(BoostingSettings(max_rounds=50, min_child_samples=20), [2, 4],
                                [1.0]), log=lambda _: None)
    assert len(booster.candidates) == 2 and booster.candidates["chosen"].sum() == 1
    table = experiment.results_table(run)
    compared = experiment.comparisons(run, table)
    assert experiment.record_results(run, table, compared) == WorkLayout(work).experiments

    recorded = load_experiments(work)
    assert recorded["model"].value_counts().to_dict() == {
        "gru": 2, "lstm": 2, "layered_lstm": 2, "lightgbm": 1, "global_median": 1,
        "user_mean": 1, "user_median": 1, "previous_session": 1, "user_mean_running": 1,
        "user_median_running": 1, "oracle": 1}
    assert recorded["val_mae_s"].notna().all() and recorded["selected"].sum() == 1
    assert recorded["reference"].nunique() == 1
    assert (recorded["mae_ci_low"] <= recorded["mae_s"]).all()
    assert len(load_comparisons(work)) == len(compared) == 7  # 6 other models + reference
    assert (recorded["stage"] == "baseline").all() and (recorded["n_test"] == 24 * 8).all()
    dropouts = sorted(json.loads(p)["dropout"] for p in recorded.loc[recorded["model"] == "gru",
                                                                    "params"])
    assert dropouts == [0.0, 0.3]
    user_mean = recorded.loc[recorded["model"] == "user_mean"].iloc[0]
    assert user_mean["normalized_mae"] == pytest.approx(1.0)
    actual = frame.loc[frame[C.SESSION_ID] >= 32, C.CURRENT_SESSION_LENGTH].to_numpy()
    oracle = frame.loc[frame[C.SESSION_ID] >= 32, "true_median_s"].to_numpy()
    assert table.set_index("label").loc["oracle", "mae_s"] == pytest.approx(
        np.abs(actual - oracle).mean())
    by_label = table.set_index("label")
    assert by_label.loc["oracle", "headroom_captured"] == pytest.approx(1.0)
    reference = by_label["reference"].iloc[0]
    assert by_label.loc[reference, "headroom_captured"] == pytest.approx(0.0)
    params = json.loads(by_label.loc["oracle", "params"])
    assert params == {"test_sessions": 24 * 8, "exact_matches": 24 * 8}

    figures = experiment.draw_figures(run, table)
    for name in figures:
        assert (WorkLayout(work).figures / f"baseline_{name}.png").stat().st_size > 1000
    assert "baseline_models" in json.loads((WorkLayout(work).results / "_manifest.json")
                                           .read_text())
    headline = experiment.headline(table)
    assert {"normalized_mae", "headroom_captured"} <= set(headline.columns)
    assert "gru (dropout 0.3)" in headline.index


def test_experiment_refuses_missing_summaries_and_unknown_split_names(tmp_path):
    with pytest.raises(StageIncompleteError, match="summarize"):
        experiment.start_experiment(tmp_path / "work", sequence_length=3)
    work, _ = write_work(tmp_path, planted_sessions(users=3, sessions=20))
    with pytest.raises(SessionlenError, match="validate split 'valid' not found"):
        experiment.start_experiment(work, 3, validation_file="valid")
