"""Clustering of profiles, its diagnostics (elbow, silhouettes, baseline MAE, ARI) and plots."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from utils.core import columns as C
from utils.core.config import ClusterParams, CrawlParams, SessionParams, WorkLayout
from utils.core.errors import SessionlenError
from utils.models_with_clusters import cluster_plots
from utils.models_with_clusters.clustering import (
    ALL,
    UNCLUSTERED,
    adjusted_rand_vs_truth,
    archetype_agreement,
    baseline_mae_table,
    canonical_labels,
    cluster_sizes,
    cluster_users,
    compare_methods,
    elbow_table,
    feasible_k,
    feature_matrix,
    fit_labels,
    get_baseline_mae,
    knee_index,
    resolve_columns,
    silhouette_fits,
)

CENTRES = {"short": 1000.0, "medium": 5000.0, "long": 9000.0}


def silhouette_table(fits: list) -> pd.DataFrame:
    """Average silhouette per k, and the smallest cluster's size (a degenerate fit shows there)."""
    return pd.DataFrame({
        "k": [f.k for f in fits],
        "average_silhouette": [f.average for f in fits],
        "smallest_cluster": [int(np.bincount(f.labels).min()) for f in fits],
    })


def planted_profiles(per_group: int = 15, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """Profiles of three listener archetypes, and the archetype of each user_id."""
    rng = np.random.default_rng(seed)
    rows, truth = [], {}
    for g, (name, centre) in enumerate(CENTRES.items()):
        for i in range(per_group):
            user = 100 * (g + 1) + i
            average = centre * np.exp(rng.normal(0, 0.1))
            rows.append({C.USER_ID: user, C.GENDER: int(rng.integers(-1, 2)), C.AGE: 25,
                         C.COUNTRY: 1, C.REGISTERED: 0, "top_artist": 1, "top_track": 1,
                         "total_sessions": int(rng.integers(40, 60)),
                         C.AVERAGE_SESSION_LENGTH: average,
                         "max_session_length": 4 * average,
                         "median_session_length": 0.8 * average * np.exp(rng.normal(0, 0.05)),
                         "total_session_rows": int(rng.integers(600, 900))})
            truth[user] = name
    return pd.DataFrame(rows)[C.PROFILE_CLUSTER_COLUMNS], pd.Series(truth)


def truth_files(tmp_path: Path, truth: pd.Series) -> tuple[Path, pd.DataFrame]:
    """A ground_truth/users.csv keyed by source ids, and the source id <-> user_id mapping."""
    user_ids = pd.DataFrame({"source_id": [f"user_{u:06d}" for u in truth.index],
                             C.USER_ID: truth.index.to_numpy()})
    path = tmp_path / "users.csv"
    pd.DataFrame({C.USER_ID: user_ids["source_id"], "archetype": truth.to_numpy()}).to_csv(
        path, index=False)
    return path, user_ids


PARAMS = ClusterParams(clusters=3, cluster_columns=["average_session_length",
                                                    "median_session_length"])


@pytest.mark.parametrize("spectral", [False, True])
def test_recovers_planted_archetypes(tmp_path: Path, spectral: bool) -> None:
    profiles, truth = planted_profiles()
    params = ClusterParams.from_dict({**PARAMS.to_dict(), "use_spectral_clustering": spectral})
    labels = cluster_users(profiles, params)
    assert labels.index.tolist() == profiles[C.USER_ID].tolist()
    users_csv, user_ids = truth_files(tmp_path, truth)
    assert adjusted_rand_vs_truth(labels, users_csv, user_ids) == pytest.approx(1.0)
    # Canonical order: cluster 0 holds the shortest average sessions.
    assert set(labels[truth[truth == "short"].index]) == {0}
    assert set(labels[truth[truth == "long"].index]) == {2}


def test_labels_are_reproducible_and_ari_table(tmp_path: Path) -> None:
    profiles, truth = planted_profiles()
    first = cluster_users(profiles, PARAMS)
    shuffled = profiles.sample(frac=1.0, random_state=3)
    again = cluster_users(shuffled, PARAMS)
    assert (again.sort_index() == first.sort_index()).all()
    users_csv, user_ids = truth_files(tmp_path, truth)
    table = compare_methods(profiles, PARAMS, users_csv, user_ids)
    assert list(table.index) == ["kmeans", "spectral"]
    assert (table["adjusted_rand"] >= 0.99).all()
    assert (table["planted_archetypes"] == 3).all()


def test_archetype_agreement_with_and_without_ground_truth(tmp_path: Path) -> None:
    profiles, truth = planted_profiles()
    users_csv, user_ids = truth_files(tmp_path, truth)
    (tmp_path / "ground_truth").mkdir()
    users_csv.rename(tmp_path / "ground_truth" / "users.csv")
    table = archetype_agreement(profiles, PARAMS, tmp_path, user_ids)
    assert table.loc["kmeans", "adjusted_rand"] == pytest.approx(1.0)
    note = archetype_agreement(profiles, PARAMS, tmp_path / "real", user_ids)
    assert "real data has none" in note["note"].iloc[0]


def test_columns_by_name_or_index_and_bad_columns() -> None:
    assert resolve_columns([10, "total_sessions"]) == ["median_session_length", "total_sessions"]
    with pytest.raises(SessionlenError, match="unknown cluster column 'session_count'"):
        resolve_columns(["session_count"])
    with pytest.raises(SessionlenError, match="index 12 is out of range"):
        resolve_columns([12])
    with pytest.raises(SessionlenError, match="unknown cluster column 'user_id'"):
        resolve_columns([0])
    with pytest.raises(SessionlenError, match="empty"):
        resolve_columns([])
    profiles, _ = planted_profiles()
    with pytest.raises(SessionlenError, match="unknown cluster column"):
        cluster_users(profiles, ClusterParams(cluster_columns=["nope"]))


def test_features_are_standardized_on_the_profiles() -> None:
    profiles, _ = planted_profiles()
    features = feature_matrix(profiles, ["average_session_length", "total_sessions"])
    assert np.allclose(features.mean(axis=0), 0.0)
    assert np.allclose(features.std(axis=0), 1.0)
    with pytest.raises(SessionlenError, match="missing values"):
        feature_matrix(profiles.assign(total_sessions=np.nan), ["total_sessions"])


def test_more_clusters_than_eligible_users_is_a_clear_error() -> None:
    profiles, _ = planted_profiles(per_group=1)
    with pytest.raises(SessionlenError, match="clusters=4 exceeds the 3 eligible users"):
        cluster_users(profiles, ClusterParams(clusters=4))
    with pytest.raises(SessionlenError, match="clusters=1"):
        cluster_users(profiles, ClusterParams(clusters=1))
    with pytest.raises(SessionlenError, match="no eligible user profiles"):
        cluster_users(profiles.iloc[:0], ClusterParams(clusters=2))
    small = cluster_users(profiles, ClusterParams(clusters=2, use_spectral_clustering=True))
    assert sorted(small.unique()) == [0, 1]


def test_feasible_k_keeps_what_can_be_fit() -> None:
    assert feasible_k(range(1, 11), 6) == [1, 2, 3, 4, 5, 6]
    assert feasible_k([2, 3, 4, 5, 6], 5, silhouette=True) == [2, 3, 4]
    assert feasible_k([1, 2], 2, silhouette=True) == []


def test_knee_of_a_known_curve() -> None:
    k = np.arange(1, 9)
    inertia = np.array([1000, 400, 150, 120, 100, 90, 82, 76], dtype=float)
    assert k[knee_index(k, inertia)] == 3
    with pytest.raises(SessionlenError, match="at least 3"):
        knee_index(k[:2], inertia[:2])


def test_elbow_marks_the_planted_k() -> None:
    profiles, _ = planted_profiles()
    table = elbow_table(profiles, PARAMS.cluster_columns, range(1, 9))
    assert table["inertia"].is_monotonic_decreasing
    assert table.loc[table["knee"], "k"].tolist() == [3]
    with pytest.raises(SessionlenError, match="must lie within 1..45"):
        elbow_table(profiles, PARAMS.cluster_columns, range(1, 50))


def test_silhouette_refits_for_each_k() -> None:
    profiles, _ = planted_profiles()
    fits = silhouette_fits(profiles, PARAMS.cluster_columns, [2, 3, 5])
    assert [len(np.unique(f.labels)) for f in fits] == [2, 3, 5]
    table = silhouette_table(fits)
    assert table.loc[table["average_silhouette"].idxmax(), "k"] == 3
    with pytest.raises(SessionlenError, match="needs more than 45 users"):
        silhouette_fits(profiles, PARAMS.cluster_columns, [45])


def test_canonical_labels_order_by_key() -> None:
    labels = np.array([2, 2, 0, 1, 1])
    key = np.array([5.0, 5.0, 9.0, 1.0, 1.0])
    assert canonical_labels(labels, key).tolist() == [1, 1, 2, 0, 0]


def _sessions(user: list[int], length: list[float]) -> pd.DataFrame:
    return pd.DataFrame({C.USER_ID: user, C.TIMESTAMP: np.arange(len(user)),
                         C.SESSION_ID: np.arange(len(user)),
                         C.PREVIOUS_SESSION_LENGTH: 0.0, C.CURRENT_SESSION_LENGTH: length})


def test_baseline_mae_per_cluster_in_seconds_and_z_units() -> None:
    train = _sessions([1, 1, 2, 2, 3, 3], [100.0, 300.0, 1000.0, 3000.0, 50.0, 50.0])
    test = _sessions([1, 2, 2, 3], [400.0, 1000.0, 2000.0, 20.0])
    labels = pd.Series({1: 0, 2: 1})
    table = baseline_mae_table(train, test, labels, min_cluster_users=2)
    assert table.loc[0, "user_mean_mae_s"] == pytest.approx(200.0)  # |400 - 200|
    assert table.loc[1, "user_mean_mae_s"] == pytest.approx(500.0)  # |1000-2000|, |2000-2000|
    assert table.loc[UNCLUSTERED, "test_sessions"] == 1
    assert table.loc[UNCLUSTERED, "user_mean_mae_s"] == pytest.approx(30.0)
    assert table.loc[ALL, "test_sessions"] == 4
    assert table.loc[ALL, "user_mean_mae_s"] == pytest.approx((200 + 1000 + 0 + 30) / 4)
    std1 = np.std([1000.0, 3000.0])
    assert table.loc[1, "user_mean_mae_z"] == pytest.approx(500.0 / std1)
    assert table.loc[0, "below_min_cluster_users"]
    assert not table.loc[ALL, "below_min_cluster_users"]
    sizes = cluster_sizes(labels, min_cluster_users=2)
    assert sizes["users"].tolist() == [1, 1] and sizes["below_min_cluster_users"].all()
    with pytest.raises(SessionlenError, match="no 'test' split"):
        get_baseline_mae({"train": train}, labels)


def test_ground_truth_errors(tmp_path: Path) -> None:
    profiles, truth = planted_profiles(per_group=3)
    labels = cluster_users(profiles, PARAMS)
    users_csv, user_ids = truth_files(tmp_path, truth.iloc[:-1])
    with pytest.raises(SessionlenError, match="no archetype for 1 clustered users"):
        adjusted_rand_vs_truth(labels, users_csv, user_ids)
    with pytest.raises(SessionlenError, match="ground-truth users not found"):
        adjusted_rand_vs_truth(labels, tmp_path / "none.csv", user_ids)
    (tmp_path / "bad.csv").write_text("user_id,group\nuser_000100,a\n")
    with pytest.raises(SessionlenError, match="missing column"):
        adjusted_rand_vs_truth(labels, tmp_path / "bad.csv", user_ids)


def test_plots_are_written(tmp_path: Path) -> None:
    profiles, _ = planted_profiles()
    labels = cluster_users(profiles, PARAMS)
    figures = [
        cluster_plots.plot_cluster_elbow(profiles, PARAMS.cluster_columns, range(1, 7),
                                         path=tmp_path / "elbow.png"),
        cluster_plots.plot_clusters(profiles, labels, "average_session_length", 11, log=True,
                                    path=tmp_path / "clusters.png"),
        cluster_plots.silhouette_analysis(profiles, PARAMS.cluster_columns, [2, 3, 4, 5],
                                          spectral=True, path=tmp_path / "silhouette.png"),
    ]
    assert all(len(f.axes) >= 1 for f in figures)
    assert sum(ax.get_visible() for ax in figures[2].axes) == 4
    for name in ("elbow", "clusters", "silhouette"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SessionlenError, match="no cluster label"):
        cluster_plots.plot_clusters(profiles, labels.iloc[:-1], 9, 10)


def synthetic_work(root: Path, scale: str) -> tuple[Path, Path]:
    """(raw, WORK) of a generated dataset run through every stage up to the profiles."""
    from utils.baseline.summaries import summarize
    from utils.core.config import get_scale
    from utils.data_processing.denormalize import denormalize
    from utils.data_processing.track_metadata import build_track_metadata
    from utils.data_processing.tracks import build_unique_tracks
    from utils.models_with_clusters.profiles import build_user_profiles
    from utils.models_with_clusters.session_data import build_session_data
    from utils.models_with_clusters.vocab import build_vocab
    from utils.synthetic.generate import generate_dataset

    raw, work = root / "raw", root / "work"
    generate_dataset(raw, scale=scale, seed=1)
    build_unique_tracks(raw, work)
    build_track_metadata(work, CrawlParams(), api_key=None, api_url="", progress=False)
    denormalize(raw, work)
    summarize(work, SessionParams())
    build_vocab(work)
    build_session_data(work)
    size = get_scale(scale)
    build_user_profiles(work, ClusterParams(min_rows=size.min_rows, min_sessions=size.min_sessions))
    return raw, work


def test_tiny_synthetic_pipeline_end_to_end(tmp_path: Path) -> None:
    from utils.baseline.summary_dir import load_summaries, load_user_ids
    from utils.core.stage_io import require_stage
    from utils.models_with_clusters.profiles import load_profiles
    from utils.models_with_clusters.session_data import read_final_split

    raw, work = synthetic_work(tmp_path, "tiny")
    final = WorkLayout(work).final_dir
    plays = require_stage(WorkLayout(work).summary_dir, "summarize")["rows_in"]
    assert sum(len(read_final_split(work, s)) for s in ("train", "validate", "test")) == plays
    assert require_stage(final, "session_data")["rows_out"] == plays
    profiles = load_profiles(work)
    assert len(profiles) >= 4
    labels = cluster_users(profiles, ClusterParams(clusters=2, use_spectral_clustering=True))
    splits = load_summaries(work)
    table = get_baseline_mae(splits, labels)
    assert table.loc[ALL, "test_sessions"] == len(splits["test"])
    assert table.drop(index=ALL)["test_sessions"].sum() == len(splits["test"])
    ari = adjusted_rand_vs_truth(labels, raw / "ground_truth" / "users.csv", load_user_ids(work))
    assert -1.0 <= ari <= 1.0


@pytest.mark.slow
def test_demo_clusters_recover_the_planted_archetypes(tmp_path: Path) -> None:
    from utils.baseline.summary_dir import load_user_ids
    from utils.models_with_clusters.profiles import load_profiles

    raw, work = synthetic_work(tmp_path, "demo")
    table = archetype_agreement(load_profiles(work), ClusterParams(clusters=4), raw,
                                load_user_ids(work))
    assert table["planted_archetypes"].tolist() == [4, 4]
    assert table["adjusted_rand"].max() >= 0.8


def test_spectral_clustering_of_separate_groups_is_connected_and_exact():
    rng = np.random.default_rng(3)
    groups = [rng.normal(center, 0.05, size=(30, 2)) for center in (0.0, 10.0, 20.0)]
    features = np.vstack(groups)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Graph is not fully connected" would be raised here
        labels = fit_labels(features, 3, spectral=True, seed=1)
    truth = np.repeat([0, 1, 2], 30)
    assert adjusted_rand_score(truth, labels) == pytest.approx(1.0)


def test_the_number_of_clusters_is_chosen_on_the_profiles_when_not_given():
    rng = np.random.default_rng(5)
    centers = [(0.0, 0.0), (8.0, 0.0), (0.0, 8.0)]
    values = np.vstack([rng.normal(c, 0.3, size=(20, 2)) for c in centers])
    profiles = pd.DataFrame({C.USER_ID: np.arange(60), "average_session_length": values[:, 0],
                             "median_session_length": values[:, 1]})
    params = ClusterParams(cluster_columns=["average_session_length", "median_session_length"])
    labels = cluster_users(profiles, params)
    assert labels.attrs == {"clusters": 3, "chosen_by": "silhouette"}
    assert adjusted_rand_score(np.repeat([0, 1, 2], 20), labels.to_numpy()) == pytest.approx(1.0)
    given = cluster_users(profiles, ClusterParams(clusters=2,
                                                  cluster_columns=params.cluster_columns))
    assert given.attrs == {"clusters": 2, "chosen_by": "given"}
