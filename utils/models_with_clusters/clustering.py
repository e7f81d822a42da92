"""Clustering listeners by their train profiles, and the diagnostics that say whether it worked.

Features are the chosen profile columns, standardized with a scaler fit on the eligible train
profiles (the only users there are). Every number here is fit per call: the elbow and the
silhouette analysis refit the model for each k instead of reusing one fit, and baseline errors
are reported per cluster in seconds and, separately, in that cluster's standardized units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans, SpectralClustering
from sklearn.metrics import adjusted_rand_score, silhouette_samples
from sklearn.neighbors import kneighbors_graph
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from utils.baseline.baselines import naive_predictions
from utils.baseline.session_table import SOURCE_ID
from utils.core import columns as C
from utils.core.config import ClusterParams, WorkLayout
from utils.core.errors import DatasetTooSmallError, SessionlenError
from utils.core.stage_io import require_file, require_stage
from utils.models_with_clusters.final_dir import PROFILES_STAGE

CLUSTER = "cluster"
ARCHETYPE = "archetype"
FEATURE_COLUMNS = [c for c in C.PROFILE_CLUSTER_COLUMNS if c != C.USER_ID]
KMEANS_INITS = 10
MAX_NEIGHBORS = 10
# Upper end of the k that `choose_clusters` compares.
MAX_CHOSEN_CLUSTERS = 8
FAINT_LINK = 1e-4
UNCLUSTERED = "unclustered"
ALL = "all"
# The knee is the point farthest below the line through the first and the last of at least 3.
MIN_ELBOW_K = 3


def resolve_columns(columns: Sequence[str | int]) -> list[str]:
    """Profile column names from names or indices into PROFILE_CLUSTER_COLUMNS."""
    if not columns:
        raise SessionlenError("ClusterParams cluster_columns is empty; name at least one column")
    names = []
    for column in columns:
        if isinstance(column, int):
            if not 0 <= column < len(C.PROFILE_CLUSTER_COLUMNS):
                raise SessionlenError(
                    f"cluster column index {column} is out of range 0.."
                    f"{len(C.PROFILE_CLUSTER_COLUMNS) - 1} (columns: "
                    f"{', '.join(C.PROFILE_CLUSTER_COLUMNS)})")
            column = C.PROFILE_CLUSTER_COLUMNS[column]
        if column not in FEATURE_COLUMNS:
            raise SessionlenError(
                f"unknown cluster column {column!r}; valid columns: {', '.join(FEATURE_COLUMNS)}")
        names.append(column)
    if len(set(names)) != len(names):
        raise SessionlenError(f"cluster columns repeat a column: {', '.join(names)}")
    return names


def feature_matrix(profiles: pd.DataFrame, columns: Sequence[str | int]) -> np.ndarray:
    """The chosen profile columns, standardized with a scaler fit on these (train) profiles."""
    names = resolve_columns(columns)
    missing = [c for c in names if c not in profiles.columns]
    if missing:
        raise SessionlenError(f"the profiles lack column(s) {', '.join(missing)}")
    values = profiles[names].to_numpy(dtype=np.float64)
    if not len(values):
        raise SessionlenError("no eligible user profiles to cluster (user_profile_cluster.csv "
                              "is empty); loosen the eligibility thresholds")
    if np.isnan(values).any():
        raise SessionlenError(f"the profiles have missing values in {', '.join(names)}")
    return StandardScaler().fit_transform(values)


def check_enough_users(work: str | Path, params: ClusterParams, elbow: bool = False) -> None:
    """Fail with DatasetTooSmallError, naming what to change, if too few users are eligible.

    Clustering needs `clusters` eligible users; the elbow plot needs MIN_ELBOW_K of them too.
    """
    entry = require_stage(WorkLayout(Path(work)).final_dir, PROFILES_STAGE)
    eligible, users, thresholds = entry["rows_out"], entry["rows_in"], entry["parameters"]
    # Choosing k compares at least k = 2 against a third user's silhouette.
    clusters = params.clusters if params.clusters is not None else 3
    needed = max(clusters, MIN_ELBOW_K if elbow else 0)
    if eligible >= needed:
        return
    chosen = f"clusters={params.clusters}" if params.clusters is not None else \
        "choosing the number of clusters"
    why = chosen + (f"; the elbow needs {MIN_ELBOW_K} values of k" if elbow else "")
    applied = ", ".join(f"{name}={value}" for name, value in thresholds.items())
    raise DatasetTooSmallError(
        f"clustering needs at least {needed} eligible users ({why}); user_profile_cluster.csv "
        f"has {eligible} of the {users} users{f' ({applied})' if applied else ''}: lower "
        f"clusters or the eligibility thresholds "
        f"(models_with_clusters/3_build_user_profiles), or use data with more listeners")


def check_k(k: int, n_users: int) -> None:
    """Fail with a one-line error unless 2 <= k <= the number of eligible users."""
    if k < 2:
        raise SessionlenError(f"clusters={k}: at least 2 clusters are needed")
    if k > n_users:
        raise DatasetTooSmallError(
            f"clusters={k} exceeds the {n_users} eligible users in user_profile_cluster.csv; "
            f"lower clusters or loosen the eligibility thresholds")


def spectral_affinity(features: np.ndarray) -> np.ndarray:
    """The symmetrized nearest-neighbour graph of the users, joined by a faint uniform link.

    Spectral clustering embeds a graph in pieces meaninglessly across the pieces (and warns);
    a uniform weight far below the neighbour links makes the graph connected while separate
    groups of listeners stay in separate clusters.
    """
    n_users = len(features)
    graph = kneighbors_graph(features, max(1, min(MAX_NEIGHBORS, n_users - 1)),
                             include_self=True).toarray()
    return 0.5 * (graph + graph.T) + FAINT_LINK


def fit_labels(features: np.ndarray, k: int, spectral: bool, seed: int) -> np.ndarray:
    """Cluster labels of the rows of `features` by seeded KMeans or spectral clustering."""
    check_k(k, len(features))
    # A few thousand users at most: starting and spinning the native thread pools costs far
    # more than the work, and under load from other processes many times more (40 s against
    # under 1 s for one silhouette search at full scale).
    with threadpool_limits(1):
        if spectral:
            model = SpectralClustering(
                n_clusters=k, affinity="precomputed", assign_labels="kmeans",
                n_init=KMEANS_INITS, random_state=seed)
            return model.fit_predict(spectral_affinity(features)).astype(np.int64)
        model = KMeans(n_clusters=k, n_init=KMEANS_INITS, random_state=seed)
        return model.fit_predict(features).astype(np.int64)


def canonical_labels(labels: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Renumber clusters 0.. by ascending mean of `key`, so reruns and plots read the same."""
    clusters = np.unique(labels)
    means = np.array([key[labels == c].mean() for c in clusters])
    order = clusters[np.lexsort((clusters, means))]
    mapping = np.empty(clusters.max() + 1, dtype=np.int64)
    mapping[order] = np.arange(len(order))
    return mapping[labels]


def choose_clusters(features: np.ndarray, spectral: bool, seed: int,
                    most: int = MAX_CHOSEN_CLUSTERS) -> int:
    """The k in 2..most (below the number of users) whose clustering has the best silhouette.

    The silhouette compares each user's distance to its own cluster with the nearest other
    one, on the train profiles alone: no session to predict is looked at.
    """
    candidates = range(2, min(most, len(features) - 1) + 1)
    if not candidates:
        raise DatasetTooSmallError(
            f"choosing the number of clusters needs at least 3 eligible users, got "
            f"{len(features)}; loosen the eligibility thresholds or set clusters")
    scores = [silhouette_samples(features, fit_labels(features, k, spectral, seed)).mean()
              for k in candidates]
    return int(candidates[int(np.argmax(scores))])


def cluster_users(profiles: pd.DataFrame, params: ClusterParams) -> pd.Series:
    """user_id -> cluster (0 = lowest mean of the first cluster column).

    `params.clusters` None chooses k by silhouette (`choose_clusters`); `attrs["clusters"]`
    holds the k used and `attrs["chosen_by"]` how it was set.
    """
    features = feature_matrix(profiles, params.cluster_columns)
    k = params.clusters
    if k is None:
        k = choose_clusters(features, params.use_spectral_clustering, params.seed)
    check_k(k, len(profiles))
    labels = fit_labels(features, k, params.use_spectral_clustering, params.seed)
    labels = canonical_labels(labels, features[:, 0])
    series = pd.Series(labels, index=pd.Index(profiles[C.USER_ID].to_numpy(), name=C.USER_ID),
                       name=CLUSTER)
    series.attrs = {"clusters": k, "chosen_by": "silhouette" if params.clusters is None
                    else "given"}
    return series


def cluster_sizes(labels: pd.Series, min_cluster_users: int) -> pd.DataFrame:
    """Users per cluster, flagging clusters below min_cluster_users (kept, never dropped)."""
    sizes = labels.value_counts().sort_index().rename("users").to_frame()
    sizes["below_min_cluster_users"] = sizes["users"] < min_cluster_users
    return sizes


# ---------------------------------------------------------------------------------------------
# Choosing k: elbow and silhouettes
# ---------------------------------------------------------------------------------------------

def knee_index(x: np.ndarray, y: np.ndarray) -> int:
    """Position of the knee of a decreasing convex curve (the Kneedle difference maximum).

    Both axes are scaled to [0, 1]; the knee is the point lying farthest below the straight
    line from the first point to the last, i.e. where extra clusters stop paying off.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < MIN_ELBOW_K:
        raise SessionlenError(f"a knee needs at least {MIN_ELBOW_K} values of k, got {len(x)}")
    span_y = y.max() - y.min()
    x_n = (x - x[0]) / (x[-1] - x[0])
    y_n = (y - y.min()) / span_y if span_y > 0 else np.zeros_like(y)
    return int(np.argmax((1.0 - x_n) - y_n))


def elbow_table(profiles: pd.DataFrame, columns: Sequence[str | int], k_range: Sequence[int],
                seed: int = 1) -> pd.DataFrame:
    """KMeans inertia for each k (one fit per k, k = 1 included) and which k is the knee."""
    features = feature_matrix(profiles, columns)
    ks = sorted(set(int(k) for k in k_range))
    if ks and not 1 <= ks[0] <= ks[-1] <= len(features):
        raise SessionlenError(
            f"elbow k range {ks[0]}..{ks[-1]} must lie within 1..{len(features)} (the eligible "
            f"users)")
    inertia = [KMeans(n_clusters=k, n_init=KMEANS_INITS, random_state=seed).fit(features).inertia_
               for k in ks]
    table = pd.DataFrame({"k": ks, "inertia": inertia})
    table["knee"] = False
    table.loc[knee_index(table["k"].to_numpy(), table["inertia"].to_numpy()), "knee"] = True
    return table


@dataclass(frozen=True)
class SilhouetteFit:
    """One k's own fit: its labels, every user's silhouette value and their average."""

    k: int
    labels: np.ndarray
    values: np.ndarray
    average: float


def silhouette_fits(profiles: pd.DataFrame, columns: Sequence[str | int], k_values: Sequence[int],
                    spectral: bool = False, seed: int = 1) -> list[SilhouetteFit]:
    """A separate clustering and silhouette for each k (silhouettes need 2 <= k < users)."""
    features = feature_matrix(profiles, columns)
    fits = []
    for k in sorted(set(int(k) for k in k_values)):
        if k >= len(features):
            raise SessionlenError(
                f"silhouette for k={k} needs more than {k} users; there are {len(features)}")
        labels = canonical_labels(fit_labels(features, k, spectral, seed), features[:, 0])
        values = silhouette_samples(features, labels)
        fits.append(SilhouetteFit(k, labels, values, float(values.mean())))
    return fits


def feasible_k(k_values: Sequence[int], n_users: int, silhouette: bool = False) -> list[int]:
    """The k that can be fit on n_users: 1..n for an elbow, 2..n-1 for silhouettes.

    Diagnostics sweep a range of k; on a small dataset the top of the range cannot be fit, and
    the sweep keeps the part that can instead of failing as a whole.
    """
    low, high = (2, n_users - 1) if silhouette else (1, n_users)
    return sorted({int(k) for k in k_values if low <= int(k) <= high})


# ---------------------------------------------------------------------------------------------
# Baseline error per cluster
# ---------------------------------------------------------------------------------------------

def _mae_row(train: pd.DataFrame, test: pd.DataFrame, predicted: np.ndarray) -> dict:
    """Users, sessions and the user_mean MAE of one group (seconds and its train z-units)."""
    lengths = train[C.CURRENT_SESSION_LENGTH].to_numpy(np.float64)
    std = float(lengths.std()) if len(lengths) > 1 else np.nan
    errors = np.abs(test[C.CURRENT_SESSION_LENGTH].to_numpy(np.float64) - predicted)
    mae_s = float(errors.mean()) if len(errors) else np.nan
    return {
        "users": int(pd.concat([train[C.USER_ID], test[C.USER_ID]]).nunique()),
        "train_sessions": len(train), "test_sessions": len(test),
        "train_mean_s": float(lengths.mean()) if len(lengths) else np.nan,
        "train_std_s": std,
        "user_mean_mae_s": mae_s,
        # Standardizing by the cluster's train mean and std scales every error by 1/std.
        "user_mean_mae_z": mae_s / std if std and std > 0 else np.nan,
    }


def baseline_mae_table(train: pd.DataFrame, test: pd.DataFrame, labels: pd.Series,
                       min_cluster_users: int = 0) -> pd.DataFrame:
    """Per cluster, for unclustered users and overall: the user_mean baseline on the test rows.

    The baseline is the stage's own (each user's mean train session length), fit once on all
    train rows; the groups only partition its test errors, so the rows add up to `all`.
    """
    predicted = naive_predictions(train, test)["user_mean"].to_numpy(np.float64)
    test_group = test[C.USER_ID].map(labels)
    train_group = train[C.USER_ID].map(labels)
    rows = {}
    for cluster in sorted(labels.unique()):
        on_test = (test_group == cluster).to_numpy()
        rows[cluster] = _mae_row(train[(train_group == cluster).to_numpy()], test[on_test],
                                 predicted[on_test])
    off_test = test_group.isna().to_numpy()
    rows[UNCLUSTERED] = _mae_row(train[train_group.isna().to_numpy()], test[off_test],
                                 predicted[off_test])
    rows[ALL] = _mae_row(train, test, predicted)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = CLUSTER
    table["below_min_cluster_users"] = (table["users"] < min_cluster_users) & ~table.index.isin(
        [UNCLUSTERED, ALL])
    return table


def get_baseline_mae(splits: dict[str, pd.DataFrame], labels: pd.Series,
                     min_cluster_users: int = 0) -> pd.DataFrame:
    """baseline_mae_table on the summarized train and test sessions (baseline.summaries splits)."""
    for name in ("train", "test"):
        if name not in splits:
            raise SessionlenError(f"the summaries have no {name!r} split")
    return baseline_mae_table(splits["train"], splits["test"], labels, min_cluster_users)


# ---------------------------------------------------------------------------------------------
# Agreement with the planted archetypes of a synthetic dataset
# ---------------------------------------------------------------------------------------------

def read_archetypes(users_csv: Path, user_ids: pd.DataFrame) -> pd.Series:
    """Planted archetype per integer user_id, from ground_truth/users.csv and the id mapping."""
    path = require_file(Path(users_csv), "ground-truth users")
    truth = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in C.GT_USERS_COLUMNS if c not in truth.columns]
    if missing:
        raise SessionlenError(f"{path}: missing column(s) {', '.join(missing)}")
    codes = pd.Series(user_ids[C.USER_ID].to_numpy(), index=user_ids[SOURCE_ID].to_numpy())
    archetype = pd.Series(truth[ARCHETYPE].to_numpy(), index=truth[C.USER_ID].to_numpy())
    known = archetype.index.isin(codes.index)
    return pd.Series(archetype[known].to_numpy(), index=codes[archetype.index[known]].to_numpy(),
                     name=ARCHETYPE)


def adjusted_rand_vs_truth(labels: pd.Series, users_csv: Path, user_ids: pd.DataFrame) -> float:
    """Adjusted Rand index of the clusters against the planted archetypes of the same users."""
    truth = read_archetypes(users_csv, user_ids)
    absent = labels.index.difference(truth.index)
    if len(absent):
        raise SessionlenError(
            f"{users_csv}: no archetype for {len(absent)} clustered users (user_id {absent[0]}); "
            f"is it the ground truth of this dataset?")
    return float(adjusted_rand_score(truth[labels.index].to_numpy(), labels.to_numpy()))


def compare_methods(profiles: pd.DataFrame, params: ClusterParams, users_csv: Path,
                    user_ids: pd.DataFrame) -> pd.DataFrame:
    """ARI against the planted archetypes for KMeans and spectral clustering, same k and columns."""
    archetypes = read_archetypes(users_csv, user_ids)
    rows = []
    for spectral in (False, True):
        labels = cluster_users(profiles, ClusterParams.from_dict(
            {**params.to_dict(), "use_spectral_clustering": spectral}))
        rows.append({"method": "spectral" if spectral else "kmeans",
                     "clusters": labels.attrs["clusters"],
                     "users": len(labels),
                     "planted_archetypes": int(archetypes.reindex(labels.index).nunique()),
                     "adjusted_rand": adjusted_rand_vs_truth(labels, users_csv, user_ids)})
    return pd.DataFrame(rows).set_index("method")


def archetype_agreement(profiles: pd.DataFrame, params: ClusterParams, raw_dir: str | Path,
                        user_ids: pd.DataFrame) -> pd.DataFrame:
    """compare_methods against a synthetic dataset's planted archetypes; a note for real data."""
    users_csv = Path(raw_dir) / C.GROUND_TRUTH / C.GT_USERS_FILE
    if not users_csv.is_file():
        return pd.DataFrame({"note": [f"no planted archetypes to compare with: {users_csv} "
                                      f"does not exist (real data has none)"]})
    return compare_methods(profiles, params, users_csv, user_ids)
