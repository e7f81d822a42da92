"""Per-cluster models: scaler round trips, fallback to the global model, errors, recorded rows."""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.baseline.boosting import BoostingSettings
from utils.baseline.experiment_state import Experiment, ModelResult
from utils.baseline.features import TargetScaler, build_feature_set
from utils.core import columns as C
from utils.core.config import ClusterParams, ModelParams, WorkLayout
from utils.core.errors import DatasetTooSmallError, SessionlenError
from utils.core.results import load_experiments
from utils.core.stage_io import write_manifest
from utils.models_with_clusters import cluster_groups as cg
from utils.models_with_clusters import cluster_models as cm
from utils.models_with_clusters import cluster_results as cr
from utils.models_with_clusters.profiles import STAGE as PROFILES_STAGE

SESSIONS_PER_USER = 40
FAST_BOOSTING = BoostingSettings(min_child_samples=5, max_rounds=60, early_stopping_rounds=10)


def _user_sessions(user: int, level_s: float, rng: np.random.Generator) -> pd.DataFrame:
    """One user's sessions in the summary format: lengths around `level_s`, a day apart."""
    lengths = np.round(level_s * rng.lognormal(0.0, 0.5, SESSIONS_PER_USER))
    previous = np.r_[0.0, lengths[:-1]]
    average = np.r_[0.0, np.cumsum(lengths)[:-1] / np.arange(1, SESSIONS_PER_USER)]
    return pd.DataFrame({
        C.TIMESTAMP: 1_200_000_000_000 + np.arange(SESSIONS_PER_USER) * 86_400_000
        + user * 3_600_000,
        C.USER_ID: user, C.SESSION_ID: np.arange(SESSIONS_PER_USER), C.GENDER: user % 2,
        C.AGE: 20 + user, C.COUNTRY: user % 3, C.REGISTERED: 1_100_000_000_000,
        C.PREVIOUS_SESSION_LENGTH: previous, C.AVERAGE_SESSION_LENGTH: average,
        C.CURRENT_SESSION_LENGTH: lengths,
    })


def _splits(levels: dict[int, float]) -> dict[str, pd.DataFrame]:
    """Hand-made summaries, split per user in time: 28 train, 4 validate, 8 test sessions."""
    rng = np.random.default_rng(7)
    users = pd.concat([_user_sessions(u, level, rng) for u, level in levels.items()],
                      ignore_index=True)
    edges = {"train": (0, 28), "validate": (28, 32), "test": (32, SESSIONS_PER_USER)}
    return {name: users[users[C.SESSION_ID].between(lo, hi - 1)].reset_index(drop=True)
            for name, (lo, hi) in edges.items()}


# users 0-5: short sessions (cluster 0), 6-11: long ones (cluster 1), 12-13: a 2-user cluster
# (too small), 14-15: outside the eligible set.
LEVELS = {**{u: 600.0 for u in range(6)}, **{u: 6000.0 for u in range(6, 12)},
          12: 2000.0, 13: 2100.0, 14: 1500.0, 15: 3000.0}
LABELS = pd.Series({**{u: 0 for u in range(6)}, **{u: 1 for u in range(6, 12)}, 12: 2, 13: 2},
                   name="cluster")


def _run(params: ClusterParams, tmp_path: Path) -> cm.ClusterExperiment:
    """A cluster experiment on the hand-made summaries with fixed labels."""
    splits = _splits(LEVELS)
    features = build_feature_set(splits, sequence_length=3, peer_groups=0)
    base = Experiment(tmp_path, features, splits)
    labels = LABELS.copy()
    labels.attrs = {"clusters": 3, "chosen_by": "given"}
    groups = cg.row_clusters(features.sessions[C.USER_ID].to_numpy(), labels)
    trained = cg.trainable_clusters(labels, groups, features.rows, params.min_cluster_users)
    return cm.ClusterExperiment(base, params, "lightgbm", labels, groups, trained,
                                pd.DataFrame())


def _baselines(run: cm.ClusterExperiment) -> None:
    """Add the naive baselines without a ground truth (no user id mapping needed)."""
    from utils.baseline.baselines import BASELINES, naive_predictions

    train = run.base.splits["train"]
    validate = naive_predictions(train, run.features.role_frame("validate"))
    test = naive_predictions(train, run.features.role_frame("test"))
    for name in BASELINES[:4]:
        run.base.results.append(ModelResult(
            name, "baseline", {}, validate[name].to_numpy(np.float64),
            test[name].to_numpy(np.float64)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 1e6), st.sampled_from([cg.GLOBAL, 0, 1])),
                min_size=1, max_size=50),
       st.floats(-3.0, 10.0), st.floats(0.05, 5.0))
def test_standardize_round_trip_keeps_rows_and_order(rows, mean, std):
    seconds = np.array([s for s, _ in rows])
    groups = np.array([g for _, g in rows])
    scalers = {cg.GLOBAL: TargetScaler(mean, std), 0: TargetScaler(mean + 1.0, std * 2.0),
               1: cg.IDENTITY}
    z = cg.standardize(seconds, groups, scalers)
    assert z.shape == seconds.shape
    back = cg.unstandardize(z, groups, scalers)
    np.testing.assert_allclose(back, seconds, rtol=1e-9, atol=1e-6)


def test_unstandardize_without_a_scaler_is_an_error():
    with pytest.raises(SessionlenError, match="no scaler for group"):
        cg.unstandardize(np.zeros(2), np.array([0, 5]), {0: cg.IDENTITY})


def test_fit_scalers_per_cluster_mixed_and_raw():
    lengths = np.array([100.0, 200.0, 300.0, 5000.0, 7000.0, 9000.0, 50.0])
    groups = np.array([0, 0, 0, 1, 1, 1, cg.GLOBAL])
    train = np.arange(len(lengths))
    users = pd.Series({0: 3, 1: 300})
    per_cluster = cg.fit_scalers(lengths, groups, train, [0, 1], users, ClusterParams())
    assert per_cluster[0].mean == pytest.approx(np.log1p(lengths[:3]).mean())
    assert per_cluster[1].mean == pytest.approx(np.log1p(lengths[3:6]).mean())
    assert per_cluster[cg.GLOBAL].mean == pytest.approx(np.log1p(lengths).mean())
    mixed = cg.fit_scalers(lengths, groups, train, [0, 1], users,
                           ClusterParams(mix_std=True, mix_std_threshold=200))
    assert mixed[0] is mixed[cg.GLOBAL]  # 3 users < 200: the global scaler
    assert mixed[1].mean == pytest.approx(per_cluster[1].mean)  # 300 users: its own
    raw = cg.fit_scalers(lengths, groups, train, [0, 1], users, ClusterParams(standardize=False))
    assert set(raw.values()) == {cg.IDENTITY}


def test_per_cluster_models_score_every_test_row_and_fall_back(tmp_path):
    run = _run(ClusterParams(clusters=3, min_cluster_users=3), tmp_path)
    assert run.trained == [0, 1]  # cluster 2 has 2 users < min_cluster_users
    _baselines(run)
    global_model = cm.train_global(run, FAST_BOOSTING, ModelParams(), log=lambda _: None)
    cluster_model = cm.train_per_cluster(run, global_model, FAST_BOOSTING, ModelParams(),
                                         log=lambda _: None)
    global_pred, cluster_pred = global_model.predictions_s, cluster_model.predictions_s
    val_users = run.features.role_frame("validate")[C.USER_ID].to_numpy()
    assert len(cluster_model.val_predictions_s) == len(val_users) == 16 * 4
    np.testing.assert_array_equal(
        cluster_model.val_predictions_s[np.isin(val_users, [12, 13, 14, 15])],
        global_model.val_predictions_s[np.isin(val_users, [12, 13, 14, 15])])
    test_users = run.features.role_frame("test")[C.USER_ID].to_numpy()
    assert len(cluster_pred) == len(global_pred) == len(test_users) == 16 * 8
    assert np.isfinite(cluster_pred).all() and (cluster_pred >= 0).all()
    fallback = np.isin(test_users, [12, 13, 14, 15])  # small cluster and ineligible users
    np.testing.assert_array_equal(cluster_pred[fallback], global_pred[fallback])
    assert not np.allclose(cluster_pred[~fallback], global_pred[~fallback])
    # Each cluster model is fit on its own level: short listeners get short predictions.
    short, long_ = np.isin(test_users, range(6)), np.isin(test_users, range(6, 12))
    assert np.median(cluster_pred[short]) < 1500 < np.median(cluster_pred[long_])

    table = cr.results_table(run)
    assert set(table["n_test"]) == {len(test_users)}
    per_cluster = cr.per_cluster_table(run)
    assert per_cluster.loc["all", "test_sessions"] == len(test_users)
    assert per_cluster.loc[["0", "1", "2", "unclustered"], "test_sessions"].sum() == len(test_users)
    assert per_cluster.loc["2", "cluster_vs_global"] == pytest.approx(1.0)
    compared = cr.cluster_comparisons(run, table).set_index(["model", "versus"])
    versus = compared.loc[("cluster_lightgbm", "global_lightgbm")]
    mae = table.set_index("label")["mae_s"]
    assert versus["diff_mae_s"] == pytest.approx(mae["cluster_lightgbm"] - mae["global_lightgbm"])
    assert versus["diff_ci_low"] <= versus["diff_mae_s"] <= versus["diff_ci_high"]
    assert compared.index.is_unique

    # The manifest describes the stage's inputs: the summaries and the profiles.
    layout = WorkLayout(tmp_path)
    layout.summary_dir.mkdir(parents=True)
    layout.final_dir.mkdir(parents=True)
    LABELS.rename_axis(C.USER_ID).to_csv(layout.user_profile_cluster)
    cr.record_cluster_results(run, table, compared.reset_index())
    recorded = load_experiments(tmp_path)
    assert set(recorded["stage"]) == {"clusters"}
    assert {"global_lightgbm", "cluster_lightgbm", "user_mean"} <= set(recorded["model"])
    params = json.loads(recorded.set_index("model").loc["cluster_lightgbm", "params"])
    assert params["clustering"] == "kmeans" and params["clusters"] == 3
    assert params["standardize"] is True and params["clusters_trained"] == [0, 1]
    manifest = json.loads((layout.results / "_manifest.json").read_text())
    assert manifest[cr.MANIFEST_STAGE]["rows_out"] == len(test_users)


def test_standardized_and_raw_runs_are_scored_on_the_same_rows(tmp_path):
    scored = {}
    for standardize in (True, False):
        run = _run(ClusterParams(clusters=3, min_cluster_users=3, standardize=standardize),
                   tmp_path / str(standardize))
        global_model = cm.train_global(run, FAST_BOOSTING, ModelParams(), log=lambda _: None)
        scored[standardize] = (run.base.actual_s,
                               cm.train_per_cluster(run, global_model, FAST_BOOSTING,
                                                    ModelParams(), log=lambda _: None
                                                    ).predictions_s)
    np.testing.assert_array_equal(scored[True][0], scored[False][0])
    # L1 trees are equivariant to an affine change of the target: the same medians come back.
    np.testing.assert_allclose(scored[True][1], scored[False][1], rtol=0.05)


def _profiles_work(tmp_path: Path, users: int) -> Path:
    """A WORK holding only a completed profiles stage with `users` eligible users."""
    layout = WorkLayout(tmp_path)
    layout.final_dir.mkdir(parents=True)
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({c: rng.integers(1, 100, users) for c in C.PROFILE_CLUSTER_COLUMNS})
    frame[C.USER_ID] = np.arange(users)
    frame.to_csv(layout.user_profile_cluster, index=False)
    (layout.final_dir / "user_profile_excluded.csv").write_text(
        "user_id,reason,total_session_rows,total_sessions,average_session_length\n")
    write_manifest(layout.final_dir, PROFILES_STAGE, inputs=[], parameters={}, rows_in=users,
                   rows_out=users, rows_rejected=0,
                   outputs=[layout.user_profile_cluster.name], timings={})
    return tmp_path


def test_more_clusters_than_eligible_users_is_too_small_data(tmp_path):
    work = _profiles_work(tmp_path, users=3)
    with pytest.raises(DatasetTooSmallError, match=r"^clustering needs at least 5 eligible users "
                       r"\(clusters=5\); user_profile_cluster.csv has 3 of the 3 users: lower "
                       r"clusters or the eligibility thresholds"):
        cm.start_cluster_experiment(work, None, ClusterParams(clusters=5))


def test_unknown_cluster_column_is_an_error(tmp_path):
    work = _profiles_work(tmp_path, users=10)
    with pytest.raises(SessionlenError, match="unknown cluster column 'shoe_size'"):
        cm.start_cluster_experiment(work, None, ClusterParams(
            clusters=2, cluster_columns=["total_sessions", "shoe_size"]))
    with pytest.raises(SessionlenError, match="index 99 is out of range"):
        cm.start_cluster_experiment(work, None, ClusterParams(clusters=2, cluster_columns=[99]))


@pytest.mark.parametrize("params, model, message", [
    (ClusterParams(), "xgboost", "unknown per-cluster model 'xgboost'"),
    (ClusterParams(standardize=False, mix_std=True), "lightgbm", "needs standardize=True"),
    (ClusterParams(mix_std_threshold=0), "lightgbm", "must be positive"),
])
def test_bad_model_options_are_errors(params, model, message):
    with pytest.raises(SessionlenError, match=message):
        cm.check_model_options(params, model)


def test_missing_profiles_stage_is_an_error(tmp_path):
    with pytest.raises(SessionlenError, match="profiles"):
        cm.start_cluster_experiment(tmp_path, None, ClusterParams(clusters=2))


def test_no_cluster_big_enough_for_its_own_model_is_too_small_data() -> None:
    with pytest.raises(DatasetTooSmallError, match=r"^no cluster has the min_cluster_users=5 "
                       r"users, 20 train sessions .*: lower min_cluster_users or set fewer "
                       r"clusters \(clusters=None\)"):
        cg.check_some_trainable([], ClusterParams())
    cg.check_some_trainable([1], ClusterParams())



def test_lightgbm_predicts_test_rows_with_a_refit_on_train_and_validation_rows():
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"x": rng.normal(size=600), "z": rng.normal(size=600)})
    target = 2.0 * table["x"].to_numpy() + rng.normal(0.0, 0.3, 600)
    rows = {"train": np.arange(300), "validate": np.arange(300, 450), "test": np.arange(450, 600)}
    predicted = cm.fit_predict_lightgbm(table, target, rows, FAST_BOOSTING)
    params = FAST_BOOSTING.lightgbm_params()
    train = lgb.Dataset(table.iloc[:300], target[:300])
    stopped = lgb.train(params, train, FAST_BOOSTING.max_rounds,
                        valid_sets=[lgb.Dataset(table.iloc[300:450], target[300:450],
                                                reference=train)],
                        callbacks=[lgb.early_stopping(FAST_BOOSTING.early_stopping_rounds,
                                                      verbose=False)])
    refit = lgb.train(params, lgb.Dataset(table.iloc[:450], target[:450]), stopped.best_iteration)
    np.testing.assert_allclose(predicted[:150], stopped.predict(table.iloc[300:450],
                                                                num_iteration=stopped.best_iteration))
    np.testing.assert_allclose(predicted[150:], refit.predict(table.iloc[450:]))
    assert not np.allclose(predicted[150:], stopped.predict(table.iloc[450:],
                                                            num_iteration=stopped.best_iteration))
