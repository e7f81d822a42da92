"""Per-cluster models of the models_with_clusters stage, scored against one global model.

Eligible users are clustered on their train profiles; each cluster large enough to train gets
its own model, fit on its users' train sessions and stopped early on their validation sessions.
Every other test row (users outside the eligible set, users of a cluster too small to train) is
predicted by the global model: the same model type trained on every train session. So the
per-cluster model, the global model and the baselines are scored on exactly the same test rows.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from utils.baseline import experiment
from utils.baseline.boosting import BoostingSettings, fit_for_rounds
from utils.baseline.experiment_state import Experiment, ModelResult
from utils.baseline.features import FeatureSet, TargetScaler, tabular_features
from utils.baseline.summary_dir import load_user_ids
from utils.core import columns as C
from utils.core.config import ClusterModelParams, ClusterParams, ModelParams
from utils.core.errors import SessionlenError
from utils.core.parallel import worker_count
from utils.models_with_clusters.cluster_groups import (
    GLOBAL,
    check_some_trainable,
    fit_scalers,
    group_names,
    row_clusters,
    standardize,
    trainable_clusters,
    unstandardize,
)
from utils.models_with_clusters.clustering import (
    UNCLUSTERED,
    archetype_agreement,
    check_enough_users,
    cluster_users,
    resolve_columns,
)
from utils.models_with_clusters.profiles import load_profiles

MODELS = ("lightgbm", "gru", "lstm")


def check_model_options(params: ClusterParams, model: str) -> None:
    """Fail with a one-line error on a model or standardization choice that cannot run."""
    if model not in MODELS:
        raise SessionlenError(f"unknown per-cluster model {model!r}; valid: {', '.join(MODELS)}")
    if params.mix_std and not params.standardize:
        raise SessionlenError("mix_std=True mixes per-cluster and global standardization; "
                              "it needs standardize=True")
    if params.mix_std_threshold < 1 or params.min_cluster_users < 1:
        raise SessionlenError(
            f"mix_std_threshold ({params.mix_std_threshold}) and min_cluster_users "
            f"({params.min_cluster_users}) must be positive")


# ---------------------------------------------------------------------------------------------
# Fitting one model on a subset of rows
# ---------------------------------------------------------------------------------------------

def fit_predict_lightgbm(table: pd.DataFrame, target: np.ndarray, rows: dict[str, np.ndarray],
                         settings: BoostingSettings) -> np.ndarray:
    """LightGBM on `rows` (early stopping on the validate rows): targets for the validate rows,
    then for the test rows from the same setting refit on the train and validate rows for the
    rounds it kept (boosting.fit_for_rounds, as the baseline stage's LightGBM)."""
    train = lgb.Dataset(table.iloc[rows["train"]], target[rows["train"]], free_raw_data=False)
    valid = lgb.Dataset(table.iloc[rows["validate"]], target[rows["validate"]], reference=train)
    # The clusters' models are fit one after another, so each takes the cores.
    params = settings.lightgbm_params(threads=worker_count())
    booster = lgb.train(params, train, num_boost_round=settings.max_rounds,
                        valid_sets=[valid], valid_names=["validate"],
                        callbacks=[lgb.early_stopping(settings.early_stopping_rounds,
                                                      verbose=False)])
    seen = np.r_[rows["train"], rows["validate"]]
    refit = fit_for_rounds(params, table.iloc[seen], target[seen], booster.best_iteration)
    validate = booster.predict(table.iloc[rows["validate"]], num_iteration=booster.best_iteration)
    return np.r_[validate, refit.predict(table.iloc[rows["test"]])].astype(np.float64)


def fit_predict_network(name: str, features: FeatureSet, target: np.ndarray,
                        rows: dict[str, np.ndarray], predict_rows: np.ndarray,
                        params: ModelParams, log: Callable[[str], None] = print) -> np.ndarray:
    """A baseline-stage network trained on `rows` only: targets for `predict_rows`."""
    from utils.baseline.models import PREDICT_BATCH, fit_network, make_dataset

    subset = dataclasses.replace(features, rows=rows, target=target.astype(np.float32))
    trained = fit_network(name, subset, params, params.dropout[0], log)
    dataset = make_dataset(subset, predict_rows, PREDICT_BATCH, False, seed=0)
    return np.asarray(trained.model.predict(dataset, verbose=0), dtype=np.float64).reshape(-1)


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------

@dataclass
class ClusterExperiment:
    """The state notebook 5 carries from step to step."""

    base: Experiment
    params: ClusterParams
    model: str
    labels: pd.Series
    groups: np.ndarray
    trained: list[int]
    agreement: pd.DataFrame

    @property
    def features(self) -> FeatureSet:
        """The shared features of every session."""
        return self.base.features

    @functools.cached_property
    def tabular(self) -> pd.DataFrame:
        """The tree models' table of every session, built once for all the models."""
        return tabular_features(self.features)

    def serving_groups(self) -> np.ndarray:
        """Per row: the cluster whose model predicts it, or GLOBAL."""
        return np.where(np.isin(self.groups, self.trained), self.groups, GLOBAL)


def start_cluster_experiment(work: str | Path, raw: str | Path | None, params: ClusterParams,
                             model: str = ClusterModelParams.model,
                             sequence_length: int = ClusterModelParams.sequence_length,
                             peer_groups: int | None = ClusterModelParams.peer_groups
                             ) -> ClusterExperiment:
    """Cluster the eligible users, build the shared features and decide which clusters train."""
    check_model_options(params, model)
    check_enough_users(work, params)
    profiles = load_profiles(work)
    labels = cluster_users(profiles, params)
    base = experiment.start_experiment(work, sequence_length, peer_groups=peer_groups,
                                       seed=params.seed)
    groups = row_clusters(base.features.sessions[C.USER_ID].to_numpy(), labels)
    trained = trainable_clusters(labels, groups, base.features.rows, params.min_cluster_users)
    check_some_trainable(trained, params)
    agreement = (archetype_agreement(profiles, params, raw, load_user_ids(Path(work)))
                 if raw else pd.DataFrame())
    return ClusterExperiment(base, params, model, labels, groups, trained, agreement)


def cluster_overview(run: ClusterExperiment) -> pd.DataFrame:
    """Users and sessions per cluster, and who predicts them (own model or global)."""
    features = run.features
    frame = pd.DataFrame({"group": group_names(run.groups),
                          C.USER_ID: features.sessions[C.USER_ID].to_numpy(),
                          "role": np.empty(len(run.groups), dtype=object)})
    for role, rows in features.rows.items():
        frame.loc[rows, "role"] = role
    counts = frame.pivot_table(index="group", columns="role", values=C.USER_ID, aggfunc="size",
                               fill_value=0)
    table = pd.DataFrame({"users": frame.groupby("group")[C.USER_ID].nunique()}).join(counts)
    table["predicted_by"] = [
        "own model" if name != UNCLUSTERED and int(name) in run.trained else "global model"
        for name in table.index]
    return table


def _fit_group(run: ClusterExperiment, target: np.ndarray, rows: dict[str, np.ndarray],
               predict_rows: np.ndarray, settings: BoostingSettings, net: ModelParams,
               log: Callable[[str], None]) -> np.ndarray:
    """One model of the chosen type on `rows`: standardized predictions for `predict_rows`."""
    if run.model == "lightgbm":
        # The validate rows then the test rows, as `predict_rows` lists them.
        return fit_predict_lightgbm(run.tabular, target, rows, settings)
    return fit_predict_network(run.model, run.features, target, rows, predict_rows, net, log)


def _model_params(run: ClusterExperiment, settings: BoostingSettings, net: ModelParams
                  ) -> dict[str, Any]:
    """The trained model's own hyperparameters, for its results row."""
    chosen = experiment.feature_params(run.features)
    if run.model == "lightgbm":
        return {**settings.to_dict(), "refit_on_validation": True, **chosen}
    return {**experiment.network_params(net, net.dropout[0]), **chosen}


def _role_split(run: ClusterExperiment, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values for the validation rows followed by the test rows, split back into the two."""
    n_val = len(run.features.rows["validate"])
    return values[:n_val], values[n_val:]


def train_global(run: ClusterExperiment, settings: BoostingSettings, net: ModelParams,
                 log: Callable[[str], None] = print) -> ModelResult:
    """The global model: every train session, scored on every validation and test row."""
    features, rows = run.features, run.features.rows
    groups = np.full(len(features.lengths_s), GLOBAL)
    scalers = fit_scalers(features.lengths_s, groups, rows["train"], [], pd.Series(dtype=int),
                          run.params)
    target = standardize(features.lengths_s, groups, scalers)
    scored = np.r_[rows["validate"], rows["test"]]
    started = time.perf_counter()
    predicted = unstandardize(_fit_group(run, target, rows, scored, settings, net, log),
                              groups[scored], scalers)
    seconds = time.perf_counter() - started
    log(f"global {run.model}: {seconds:.1f} s")
    result = ModelResult(
        f"global_{run.model}", _kind(run.model),
        {**_model_params(run, settings, net), "standardize": run.params.standardize},
        *_role_split(run, predicted), seconds)
    run.base.results.append(result)
    return result


def train_per_cluster(run: ClusterExperiment, global_model: ModelResult,
                      settings: BoostingSettings, net: ModelParams,
                      log: Callable[[str], None] = print) -> ModelResult:
    """One model per trainable cluster; the global model's predictions for every other row."""
    features, rows = run.features, run.features.rows
    serving = run.serving_groups()
    scalers = fit_scalers(features.lengths_s, serving, rows["train"], run.trained,
                          run.labels.value_counts(), run.params)
    target = standardize(features.lengths_s, serving, scalers)
    scored = np.r_[rows["validate"], rows["test"]]
    scored_groups = serving[scored]
    predicted = np.r_[global_model.val_predictions_s, global_model.predictions_s]
    started = time.perf_counter()
    for cluster in run.trained:
        own = {role: r[serving[r] == cluster] for role, r in rows.items()}
        mine = scored_groups == cluster
        standardized = _fit_group(run, target, own, scored[mine], settings, net, log)
        predicted[mine] = unstandardize(standardized, scored_groups[mine], scalers)
        log(f"cluster {cluster}: {len(own['train'])} train, {len(own['test'])} test sessions")
    seconds = time.perf_counter() - started
    result = ModelResult(
        f"cluster_{run.model}", _kind(run.model),
        {**_model_params(run, settings, net), **cluster_settings(run, scalers)},
        *_role_split(run, predicted), seconds)
    run.base.results.append(result)
    return result


def _kind(model: str) -> str:
    return "lightgbm" if model == "lightgbm" else "network"


def cluster_settings(run: ClusterExperiment, scalers: dict[int, TargetScaler]) -> dict[str, Any]:
    """What defines the per-cluster run: clustering, k, standardization, who trained."""
    p = run.params
    own_scaler = [c for c in run.trained if p.standardize and scalers[c] is not scalers[GLOBAL]]
    settings = {
        "clustering": "spectral" if p.use_spectral_clustering else "kmeans",
        "clusters": run.labels.attrs["clusters"], "clusters_chosen_by": run.labels.attrs[
            "chosen_by"], "cluster_columns": resolve_columns(p.cluster_columns),
        "standardize": p.standardize, "mix_std": p.mix_std,
        "mix_std_threshold": p.mix_std_threshold, "min_cluster_users": p.min_cluster_users,
        "clusters_trained": run.trained, "clusters_with_own_scaler": own_scaler,
        "clustered_users": len(run.labels), "cluster_seed": p.seed,
    }
    if "adjusted_rand" in run.agreement:
        settings["adjusted_rand"] = run.agreement["adjusted_rand"].round(4).to_dict()
    return settings
