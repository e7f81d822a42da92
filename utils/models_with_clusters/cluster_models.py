"""Per-cluster models of the models_with_clusters stage, scored against one global model.

Eligible users are clustered on their train profiles; each cluster large enough to train gets
its own model, fit on its users' train sessions and stopped early on their validation sessions.
Every other test row (users outside the eligible set, users of a cluster too small to train) is
predicted by the global model: the same model type trained on every train session. So the
per-cluster model, the global model and the baselines are scored on exactly the same test rows.

Standardization concerns the target, log1p(session length in seconds):
- `standardize=False`: models learn log1p(seconds) as it is (the "raw" target; the log keeps the
  heavy tail from dominating, and a median in log space is the median in seconds).
- `standardize=True`: the global model learns (log1p(s) - mean) / std with mean and std of all
  train sessions; each cluster model with mean and std of its own cluster's train sessions.
- `mix_std=True` (needs `standardize`): a cluster with at least `mix_std_threshold` users keeps
  its own scaler; a smaller cluster is standardized with the global scaler instead, since a few
  users give an unreliable mean and spread.
Predictions are transformed back to seconds, each row with the scaler it was trained with,
before any metric. The input features stay standardized on all train rows (features.py): tree
models are insensitive to feature scaling, and the networks share one feature space.
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
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from utils.baseline import experiment
from utils.baseline.boosting import BoostingSettings
from utils.baseline.experiment_state import Experiment, ModelResult
from utils.baseline.features import FeatureSet, TargetScaler, tabular_features
from utils.baseline.summary_dir import load_user_ids
from utils.core import columns as C
from utils.core import plots
from utils.core.config import ClusterParams, ModelParams, WorkLayout
from utils.core.errors import DatasetTooSmallError, SessionlenError
from utils.core.results import append_comparisons, append_experiments, utc_now
from utils.core.stage_io import write_manifest
from utils.core.work_lock import stage_lock
from utils.models_with_clusters.clustering import (
    archetype_agreement,
    check_enough_users,
    cluster_users,
    resolve_columns,
)
from utils.models_with_clusters.profiles import load_profiles

STAGE = "clusters"
MANIFEST_STAGE = "cluster_models"
MODELS = ("lightgbm", "gru", "lstm")
GLOBAL = -1  # group of the rows the global model predicts (and of the global scaler)
UNCLUSTERED = "unclustered"
# A cluster needs this many train sessions for a model of its own; below, its users go global.
MIN_TRAIN_SESSIONS = 20
# The "raw" target: log1p(seconds) unchanged.
IDENTITY = TargetScaler(0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Groups and scalers
# ---------------------------------------------------------------------------------------------

def row_clusters(users: np.ndarray, labels: pd.Series) -> np.ndarray:
    """The cluster of each row's user; GLOBAL for users outside the clustered (eligible) set."""
    return labels.reindex(users).fillna(GLOBAL).to_numpy(dtype=np.int64)


def trainable_clusters(labels: pd.Series, groups: np.ndarray, rows: dict[str, np.ndarray],
                       min_cluster_users: int) -> list[int]:
    """Clusters with enough users, train sessions and at least one validation session."""
    users = labels.value_counts()
    train = pd.Series(groups[rows["train"]]).value_counts()
    validate = pd.Series(groups[rows["validate"]]).value_counts()
    return [int(c) for c in sorted(users.index)
            if users[c] >= min_cluster_users and train.get(c, 0) >= MIN_TRAIN_SESSIONS
            and validate.get(c, 0) > 0]


def check_some_trainable(trained: list[int], params: ClusterParams) -> None:
    """Fail with DatasetTooSmallError when no cluster can have a model of its own."""
    if not trained:
        raise DatasetTooSmallError(
            f"no cluster has the min_cluster_users={params.min_cluster_users} users, "
            f"{MIN_TRAIN_SESSIONS} train sessions and a validation session a model of its own "
            f"needs, so per-cluster models would all be the global one: lower min_cluster_users "
            f"or set fewer clusters (clusters={params.clusters}), or use data with more "
            f"listeners")


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


def fit_scalers(lengths_s: np.ndarray, groups: np.ndarray, train_rows: np.ndarray,
                clusters: list[int], cluster_users_count: pd.Series, params: ClusterParams
                ) -> dict[int, TargetScaler]:
    """The target scaler of the global model (key GLOBAL) and of each cluster in `clusters`."""
    if not params.standardize:
        return {group: IDENTITY for group in (GLOBAL, *clusters)}
    global_scaler = TargetScaler.fit(lengths_s[train_rows])
    scalers = {GLOBAL: global_scaler}
    for cluster in clusters:
        own = not params.mix_std or cluster_users_count[cluster] >= params.mix_std_threshold
        members = train_rows[groups[train_rows] == cluster]
        scalers[cluster] = TargetScaler.fit(lengths_s[members]) if own else global_scaler
    return scalers


def _per_row(groups: np.ndarray, scalers: dict[int, TargetScaler]) -> tuple[np.ndarray, ...]:
    """Each row's scaler mean and std, looked up by its group."""
    table = pd.DataFrame({"mean": [s.mean for s in scalers.values()],
                          "std": [s.std for s in scalers.values()]}, index=list(scalers))
    per_row = table.reindex(groups)
    if per_row["mean"].isna().any():
        missing = sorted(set(np.unique(groups)) - set(scalers))
        raise SessionlenError(f"no scaler for group(s) {missing}")
    return per_row["mean"].to_numpy(), per_row["std"].to_numpy()


def standardize(seconds: np.ndarray, groups: np.ndarray, scalers: dict[int, TargetScaler]
                ) -> np.ndarray:
    """Lengths in seconds to each row's standardized log target (row order kept)."""
    mean, std = _per_row(groups, scalers)
    return (np.log1p(np.asarray(seconds, dtype=np.float64)) - mean) / std


def unstandardize(values: np.ndarray, groups: np.ndarray, scalers: dict[int, TargetScaler]
                  ) -> np.ndarray:
    """Standardized log values back to non-negative seconds, each row with its group's scaler."""
    mean, std = _per_row(groups, scalers)
    return np.clip(np.expm1(np.asarray(values, dtype=np.float64) * std + mean), 0.0, None)


# ---------------------------------------------------------------------------------------------
# Fitting one model on a subset of rows
# ---------------------------------------------------------------------------------------------

def fit_predict_lightgbm(table: pd.DataFrame, target: np.ndarray, rows: dict[str, np.ndarray],
                         predict_rows: np.ndarray, settings: BoostingSettings) -> np.ndarray:
    """LightGBM on `rows` (early stopping on the validate rows): targets for `predict_rows`."""
    train = lgb.Dataset(table.iloc[rows["train"]], target[rows["train"]], free_raw_data=False)
    valid = lgb.Dataset(table.iloc[rows["validate"]], target[rows["validate"]], reference=train)
    booster = lgb.train(settings.lightgbm_params(), train, num_boost_round=settings.max_rounds,
                        valid_sets=[valid], valid_names=["validate"],
                        callbacks=[lgb.early_stopping(settings.early_stopping_rounds,
                                                      verbose=False)])
    return np.asarray(booster.predict(table.iloc[predict_rows],
                                      num_iteration=booster.best_iteration), dtype=np.float64)


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
                             model: str = "lightgbm", sequence_length: int = 10,
                             peer_groups: int | None = None) -> ClusterExperiment:
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
    frame = pd.DataFrame({"group": _group_names(run.groups),
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


def _group_names(groups: np.ndarray) -> np.ndarray:
    """Group ids as table labels: the cluster number, or 'unclustered'."""
    return np.where(groups == GLOBAL, UNCLUSTERED, groups.astype(str))


def _fit_group(run: ClusterExperiment, target: np.ndarray, rows: dict[str, np.ndarray],
               predict_rows: np.ndarray, settings: BoostingSettings, net: ModelParams,
               log: Callable[[str], None]) -> np.ndarray:
    """One model of the chosen type on `rows`: standardized predictions for `predict_rows`."""
    if run.model == "lightgbm":
        return fit_predict_lightgbm(run.tabular, target, rows, predict_rows,
                                    settings)
    return fit_predict_network(run.model, run.features, target, rows, predict_rows, net, log)


def _model_params(run: ClusterExperiment, settings: BoostingSettings, net: ModelParams
                  ) -> dict[str, Any]:
    """The trained model's own hyperparameters, for its results row."""
    chosen = experiment.feature_params(run.features)
    if run.model == "lightgbm":
        return {**settings.to_dict(), **chosen}
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


def results_table(run: ClusterExperiment) -> pd.DataFrame:
    """Every model and baseline on the same test rows: MAE, RMSE, normalized MAE, headroom."""
    return experiment.results_table(run.base)


def per_cluster_table(run: ClusterExperiment) -> pd.DataFrame:
    """Test MAE (seconds) of global, per-cluster and user_mean predictions within each group."""
    predictions = run.base.predictions()
    needed = [f"global_{run.model}", f"cluster_{run.model}", experiment.NORMALIZER]
    missing = [name for name in needed if name not in predictions]
    if missing:
        raise SessionlenError(f"train and score {', '.join(missing)} before the per-cluster table")
    actual = run.base.actual_s
    errors = pd.DataFrame({name: np.abs(actual - predictions[name]) for name in needed})
    errors["group"] = _group_names(run.groups[run.features.rows["test"]])
    table = errors.groupby("group")[needed].mean()
    table.loc["all"] = errors[needed].mean()
    sizes = errors.groupby("group").size()
    table.insert(0, "test_sessions", [int(sizes.get(g, len(errors))) for g in table.index])
    table = table.rename(columns={name: f"{name}_mae_s" for name in needed})
    table["cluster_vs_global"] = table[needed[1] + "_mae_s"] / table[needed[0] + "_mae_s"]
    return table


def record_cluster_results(run: ClusterExperiment, table: pd.DataFrame, compared: pd.DataFrame
                           ) -> Path:
    """Append every row (stage clusters) to experiments.csv, the comparisons to
    comparisons.csv, and record the stage manifest."""
    rows = table.assign(run_id=run.base.run_id, finished_at=utc_now(), stage=STAGE)
    layout = WorkLayout(run.base.work)
    n_test = int(table["n_test"].iloc[0])
    with stage_lock(layout.results, exclusive=True):
        path = append_experiments(run.base.work, rows[C.EXPERIMENT_COLUMNS])
        append_comparisons(run.base.work, compared.assign(run_id=run.base.run_id, stage=STAGE))
        write_manifest(
            layout.results, MANIFEST_STAGE,
            inputs=[layout.summary_dir, layout.user_profile_cluster],
            parameters={"run_id": run.base.run_id, "model": run.model, **run.params.to_dict()},
            rows_in=n_test, rows_out=n_test, rows_rejected=0,
            outputs=[layout.experiments.name],
            timings={"train": float(table["train_seconds"].sum())},
        )
    return path


def plot_mae_per_cluster(per_cluster: pd.DataFrame) -> Figure:
    """Grouped bars per cluster: global model, per-cluster model and user_mean test MAE."""
    shown = per_cluster.filter(like="_mae_s")
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(shown.columns)
    x = np.arange(len(shown))
    for i, column in enumerate(shown.columns):
        ax.bar(x + i * width, shown[column], width, label=column.removesuffix("_mae_s"))
    ax.set_xticks(x + width * (len(shown.columns) - 1) / 2, [str(i) for i in shown.index])
    ax.set_xlabel("cluster (unclustered: predicted by the global model in both runs)")
    ax.set_ylabel("test MAE (seconds)")
    ax.set_title("Test MAE per cluster")
    ax.legend()
    fig.tight_layout()
    plt.close(fig)  # released from pyplot: a notebook shows it once, when a cell returns it
    return fig


def draw_cluster_figures(run: ClusterExperiment, table: pd.DataFrame,
                         per_cluster: pd.DataFrame) -> dict[str, Figure]:
    """The stage's figures, saved under WORK/results/figures/ and returned for display."""
    figures_dir = WorkLayout(run.base.work).figures
    figures = {"mae_per_model": plots.plot_mae_per_model(table),
               "mae_per_cluster": plot_mae_per_cluster(per_cluster)}
    for name, fig in figures.items():
        plots.save_figure(fig, figures_dir / f"{STAGE}_{name}.png", run.base.run_id)
    return figures


def headline(table: pd.DataFrame) -> pd.DataFrame:
    """The results as the notebook shows them: the deciding metrics, best first."""
    return experiment.headline(table)


def cluster_comparisons(run: ClusterExperiment, table: pd.DataFrame) -> pd.DataFrame:
    """The selected model against the others and the reference, and per-cluster against global:
    paired test-MAE differences with intervals (see `experiment.comparisons`)."""
    general = experiment.comparisons(run.base, table)
    versus = experiment.comparisons(run.base, table,
                                    [(f"cluster_{run.model}", f"global_{run.model}")])
    return pd.concat([versus, general], ignore_index=True).drop_duplicates(["model", "versus"])
