"""Naive baselines (and the synthetic oracle) predicted for the validation or test rows.

Two families: frozen baselines are fit on the train split only (the original's user_mean is the
normalizer of normalized_mae); running baselines use every EARLIER session of the user, from any
split, which is exactly the information a model may use at session start.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from utils.baseline.session_table import SOURCE_ID
from utils.baseline.summary_dir import USER_IDS_COLUMNS
from utils.core.columns import (
    CURRENT_SESSION_LENGTH,
    GT_MEDIAN,
    GT_SESSIONS_FILE,
    PREVIOUS_SESSION_LENGTH,
    SESSION_ID,
    TIMESTAMP,
    USER_ID,
)
from utils.core.errors import SessionlenError
from utils.core.stage_io import require_file

RUNNING_BASELINES = ("user_mean_running", "user_median_running")
BASELINES = ("global_median", "user_mean", "user_median", "previous_session", *RUNNING_BASELINES)
ORACLE = "oracle"
# The in-session stage's baselines (models_with_clusters.in_session.lasted_baselines), once a
# session has lasted e seconds: (a) the median of the user's earlier sessions that lasted more
# than e; (b) e plus the median time those sessions went on after e; the global train median of
# sessions that lasted more than e (also what (a) and (b) fall back to for a user without such a
# session).
USER_MEDIAN_LASTED = "user_median_lasted"
USER_REMAINING = "e_plus_user_median_remaining"
GLOBAL_MEDIAN_LASTED = "global_median_lasted"
IN_SESSION_BASELINES = (USER_MEDIAN_LASTED, USER_REMAINING, GLOBAL_MEDIAN_LASTED)
KEY_COLUMNS = [USER_ID, TIMESTAMP, SESSION_ID]
GT_START = "start_ms"
# What the oracle reads of ground_truth/sessions.csv: datasets generated before the quantile
# columns were added still serve it.
GT_ORACLE_COLUMNS = [USER_ID, GT_START, GT_MEDIAN]


def _train_lengths(splits: dict[str, pd.DataFrame], train: str, predict: str) -> pd.DataFrame:
    """The train rows' (user_id, length), failing if a split is missing or train is empty."""
    for name in (train, predict):
        if name not in splits:
            raise SessionlenError(f"the summaries have no {name!r} split")
    lengths = splits[train][[USER_ID, CURRENT_SESSION_LENGTH]]
    if lengths.empty:
        raise SessionlenError("the train split has no sessions: baselines cannot be fit")
    return lengths


def naive_predictions(train: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """The frozen baselines for each `test` row (row order kept), fit on `train` only.

    Users without train sessions get the global train mean (user_mean) and the global train
    median (user_median); a user's first session has no previous one and gets the global median.
    """
    lengths = train[CURRENT_SESSION_LENGTH]
    per_user = train.groupby(USER_ID)[CURRENT_SESSION_LENGTH].agg(["mean", "median"])
    stats = per_user.reindex(test[USER_ID].to_numpy())
    global_median = float(lengths.median())
    first = test[SESSION_ID].to_numpy() == 0
    out = test[KEY_COLUMNS].reset_index(drop=True)
    out["global_median"] = global_median
    out["user_mean"] = stats["mean"].fillna(float(lengths.mean())).to_numpy()
    out["user_median"] = stats["median"].fillna(global_median).to_numpy()
    out["previous_session"] = np.where(
        first, global_median, test[PREVIOUS_SESSION_LENGTH].to_numpy(dtype=np.float64))
    cold = stats["mean"].isna().to_numpy()
    out.attrs["cold_start_rows"] = int(cold.sum())
    out.attrs["cold_start_users"] = int(pd.unique(test[USER_ID].to_numpy()[cold]).size)
    return out


def running_predictions(splits: dict[str, pd.DataFrame], fallback: float) -> pd.DataFrame:
    """The mean and median length of each session's EARLIER sessions of the same user.

    Every split is history (a test session follows the user's train and validation sessions).
    One row per session, keyed by KEY_COLUMNS; a user's first session gets `fallback`.
    """
    history = pd.concat([frame[[*KEY_COLUMNS, CURRENT_SESSION_LENGTH]] for frame in
                         splits.values()], ignore_index=True)
    history = history.sort_values(KEY_COLUMNS, kind="stable", ignore_index=True)
    lengths = history[CURRENT_SESSION_LENGTH].astype(np.float64)
    grouped = lengths.groupby(history[USER_ID], sort=False)
    earlier = grouped.cumcount().to_numpy()
    running_sum = grouped.cumsum().to_numpy() - lengths.to_numpy()
    median_upto = grouped.expanding().median().reset_index(level=0, drop=True).sort_index()
    median_before = median_upto.groupby(history[USER_ID], sort=False).shift(1)
    out = history[KEY_COLUMNS].copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        out["user_mean_running"] = np.where(earlier > 0, running_sum / earlier, fallback)
    out["user_median_running"] = median_before.fillna(fallback).to_numpy()
    return out


def read_ground_truth_sessions(ground_truth_dir: Path) -> pd.DataFrame:
    """The oracle's columns of a synthetic dataset's ground_truth/sessions.csv, checked."""
    path = require_file(Path(ground_truth_dir) / GT_SESSIONS_FILE, "ground-truth sessions")
    truth = pd.read_csv(path, dtype={USER_ID: str}, keep_default_na=False)
    missing = [c for c in GT_ORACLE_COLUMNS if c not in truth.columns]
    if missing:
        raise SessionlenError(f"{path}: missing column(s) {', '.join(missing)}")
    return truth[GT_ORACLE_COLUMNS]


def oracle_predictions(test: pd.DataFrame, truth: pd.DataFrame, user_ids: pd.DataFrame
                       ) -> tuple[np.ndarray, int]:
    """(planted median length per test row, rows whose start matches a planted start exactly).

    Sessions are matched on the user's source id and start time. When the pipeline's sessions
    differ from the planted ones (estimated durations), a session takes the planted session in
    progress at its start: the latest planted start at or before it.
    """
    missing = [c for c in USER_IDS_COLUMNS if c not in user_ids.columns]
    if missing:
        raise SessionlenError(f"user id mapping lacks column(s) {', '.join(missing)}")
    source = pd.Series(user_ids[SOURCE_ID].to_numpy(), index=user_ids[USER_ID].to_numpy())
    left = pd.DataFrame({
        SOURCE_ID: source.reindex(test[USER_ID].to_numpy()).to_numpy(dtype=object),
        TIMESTAMP: test[TIMESTAMP].to_numpy(dtype=np.int64),
        "row": np.arange(len(test)),
    }).sort_values(TIMESTAMP, kind="stable")
    right = pd.DataFrame({
        SOURCE_ID: truth[USER_ID].to_numpy(dtype=object),
        GT_START: truth[GT_START].to_numpy(dtype=np.int64),
        GT_MEDIAN: truth[GT_MEDIAN].to_numpy(dtype=np.float64),
    }).sort_values(GT_START, kind="stable")
    matched = pd.merge_asof(left, right, left_on=TIMESTAMP, right_on=GT_START, by=SOURCE_ID,
                            direction="backward").sort_values("row")
    unmatched = int(matched[GT_MEDIAN].isna().sum())
    if unmatched:
        raise SessionlenError(
            f"the ground truth has no planted session for {unmatched} of {len(test)} test "
            f"sessions (is it the ground truth of this dataset?)")
    exact = int((matched[GT_START] == matched[TIMESTAMP]).sum())
    return matched[GT_MEDIAN].to_numpy(), exact


def baseline_predictions(splits: dict[str, pd.DataFrame], ground_truth_dir: Path | None,
                         user_ids: pd.DataFrame, train: str = "train", predict: str = "test"
                         ) -> pd.DataFrame:
    """Every baseline's prediction (seconds) for each row of the `predict` split, in its order.

    Columns: user_id, timestamp, session_id (the row keys), then one column per baseline, plus
    `oracle` when `ground_truth_dir` is given. `attrs` counts the cold-start users and rows and
    the oracle's exact matches.
    """
    lengths = _train_lengths(splits, train, predict)
    target = splits[predict]
    frozen = naive_predictions(lengths, target)
    running = running_predictions(splits, float(lengths[CURRENT_SESSION_LENGTH].median()))
    out = frozen.merge(running, on=KEY_COLUMNS, how="left", validate="one_to_one")
    out.attrs = dict(frozen.attrs)
    if ground_truth_dir is not None:
        truth = read_ground_truth_sessions(Path(ground_truth_dir))
        out[ORACLE], out.attrs["oracle_exact_rows"] = oracle_predictions(target, truth, user_ids)
    return out
