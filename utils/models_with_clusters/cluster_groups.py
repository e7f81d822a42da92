"""Who predicts each row of the per-cluster run, and the target scaler of each such group.

A row's group is its user's cluster when that cluster trains a model of its own, else GLOBAL
(the global model). Standardization concerns the target, log1p(session length in seconds):
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

import numpy as np
import pandas as pd

from utils.baseline.features import TargetScaler
from utils.core.config import ClusterParams
from utils.core.errors import DatasetTooSmallError, SessionlenError
from utils.models_with_clusters.clustering import UNCLUSTERED

GLOBAL = -1  # group of the rows the global model predicts (and of the global scaler)
# A cluster needs this many train sessions for a model of its own; below, its users go global.
MIN_TRAIN_SESSIONS = 20
# The "raw" target: log1p(seconds) unchanged.
IDENTITY = TargetScaler(0.0, 1.0)


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


def group_names(groups: np.ndarray) -> np.ndarray:
    """Group ids as table labels: the cluster number, or 'unclustered'."""
    return np.where(groups == GLOBAL, UNCLUSTERED, groups.astype(str))
