"""The predicted distribution of a session's length at its start: quantiles and their scores.

A distributional model gives, per session, its quantiles at `levels` (seconds, one column per
level, sorted). They are scored on the test rows by the pinball loss (the proper score of a
quantile: its expectation is smallest at the true quantile, so it rewards sharpness and
calibration together), the share of sessions inside the central 80% interval [q10, q90] and that
interval's mean width. The best distributional model is chosen on the VALIDATION pinball loss,
among the trained distributional models only, just as the point model is chosen on validation
MAE; the test scores are reported, never compared to choose.

This module holds the metrics, the naive and oracle distributions and the choice; the trained
distributional models are in `utils.baseline.distribution_models` and `utils.baseline.survival`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from utils.baseline.baselines import (
    GT_SESSIONS_FILE,
    GT_START,
    ORACLE,
    oracle_predictions,
)
from utils.baseline.experiment_state import Experiment, ModelResult
from utils.baseline.summary_dir import load_user_ids
from utils.core import columns as C
from utils.core import evaluation
from utils.core.columns import GROUND_TRUTH
from utils.core.errors import SessionlenError
from utils.core.stage_io import require_file

DEFAULT_LEVELS = (0.1, 0.5, 0.9)
# The central 80% interval, and the level whose quantile is the point prediction (the median,
# which minimizes MAE, the point models' metric).
INTERVAL = (0.1, 0.9)
MEDIAN = 0.5
DISTRIBUTION_KIND = "distribution"
RUNNING_QUANTILES = "user_quantiles_running"
# Appended to experiments.csv (utils.core.columns.EXPERIMENT_COLUMNS), empty for point-only models.
DISTRIBUTION_COLUMNS = ["pinball_loss_s", "pinball_ci_low", "pinball_ci_high", "coverage_80",
                        "interval_width_s", "val_pinball_loss_s", "selected_distribution"]


def check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    """The levels as a tuple, checked: increasing, inside (0, 1), with 0.1, 0.5 and 0.9.

    coverage_80 and the interval width need q10 and q90, and the point prediction is q50.
    """
    found = tuple(float(level) for level in levels)
    if not found or any(not 0.0 < level < 1.0 for level in found) or \
            any(b <= a for a, b in zip(found, found[1:], strict=False)):
        raise SessionlenError(f"quantile_levels must increase strictly inside (0, 1), got "
                              f"{list(levels)}")
    missing = [level for level in (*INTERVAL, MEDIAN) if not any(
        math.isclose(level, f) for f in found)]
    if missing:
        raise SessionlenError(f"quantile_levels must include 0.1, 0.5 and 0.9 (the 80% interval "
                              f"and the median), missing {missing}")
    return found


def level_index(levels: Sequence[float], level: float) -> int:
    """The column of `level` among `levels`."""
    for i, found in enumerate(levels):
        if math.isclose(found, level):
            return i
    raise SessionlenError(f"no quantile at level {level} among {list(levels)}")


def sort_quantiles(quantiles: np.ndarray) -> np.ndarray:
    """Quantiles sorted along each row and clipped at 0 s.

    Quantiles fit level by level (LightGBM, a network's outputs) may cross where data is thin;
    a distribution function cannot, and sorting each row is the rearrangement that never
    increases the pinball loss (Chernozhukov et al. 2010).
    """
    values = np.asarray(quantiles, dtype=np.float64)
    if values.ndim != 2:
        raise SessionlenError(f"quantiles must be rows x levels, got shape {values.shape}")
    return np.clip(np.sort(values, axis=1), 0.0, None)


def _checked(actual: np.ndarray, quantiles: np.ndarray, levels: Sequence[float]
             ) -> tuple[np.ndarray, np.ndarray]:
    """actual (n,) and quantiles (n, levels) as float64, checked for shape and NaN."""
    y = np.asarray(actual, dtype=np.float64).reshape(-1)
    q = np.asarray(quantiles, dtype=np.float64)
    if q.ndim != 2 or q.shape != (len(y), len(levels)):
        raise SessionlenError(f"quantiles of shape {q.shape} for {len(y)} sessions and "
                              f"{len(levels)} levels")
    if not len(y):
        raise SessionlenError("no rows to evaluate")
    if np.isnan(y).any() or np.isnan(q).any():
        raise SessionlenError("missing (NaN) actual values or quantiles")
    return y, q


def pinball_losses(actual: np.ndarray, quantiles: np.ndarray, levels: Sequence[float]
                   ) -> np.ndarray:
    """Per row, the pinball loss (seconds) averaged over the levels.

    At level t a quantile q costs t * (y - q) when the session outlasts it and (1 - t) * (q - y)
    when it does not.
    """
    y, q = _checked(actual, quantiles, levels)
    tau = np.asarray(levels, dtype=np.float64)[None, :]
    error = y[:, None] - q
    return np.maximum(tau * error, (tau - 1.0) * error).mean(axis=1)


def pinball_loss(actual: np.ndarray, quantiles: np.ndarray, levels: Sequence[float]) -> float:
    """Mean pinball loss (seconds) over rows and levels."""
    return float(pinball_losses(actual, quantiles, levels).mean())


def coverage(actual: np.ndarray, quantiles: np.ndarray, levels: Sequence[float]) -> float:
    """Share of sessions whose length lies inside [q10, q90] (0.8 when calibrated)."""
    y, q = _checked(actual, quantiles, levels)
    low, high = (q[:, level_index(levels, level)] for level in INTERVAL)
    return float(np.mean((y >= low) & (y <= high)))


def interval_width(quantiles: np.ndarray, levels: Sequence[float]) -> float:
    """Mean width (seconds) of the 80% interval q90 - q10: how sharp the prediction is."""
    q = np.asarray(quantiles, dtype=np.float64)
    return float(np.mean(q[:, level_index(levels, INTERVAL[1])]
                         - q[:, level_index(levels, INTERVAL[0])]))


def share_below(actual: np.ndarray, quantiles: np.ndarray, levels: Sequence[float]
                ) -> np.ndarray:
    """Per level, the share of sessions shorter than or equal to the predicted quantile.

    A calibrated model's shares equal the levels: the reliability curve is the diagonal.
    """
    y, q = _checked(actual, quantiles, levels)
    return (y[:, None] <= q).mean(axis=0)


def median_column(quantiles: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """The q50 column: a distributional model's point prediction."""
    return np.asarray(quantiles, dtype=np.float64)[:, level_index(levels, MEDIAN)]


def bootstrap_pinball(actual: np.ndarray, quantiles: dict[str, np.ndarray], users: np.ndarray,
                      levels: Sequence[float], seed: int = 1) -> pd.DataFrame:
    """Each model's test pinball loss with its 95% paired bootstrap interval over users.

    The resamples of users are those of the MAE intervals (utils.core.evaluation, same seed), so the
    intervals of two models are paired in the same way.
    """
    names = list(quantiles)
    losses = np.column_stack([pinball_losses(actual, quantiles[n], levels) for n in names])
    sums, counts = evaluation.per_user_sums(losses, users)
    weights = evaluation.bootstrap_weights(len(counts), seed=seed)
    low, high = evaluation.percentile_interval(
        evaluation.resampled_means(sums, counts, weights))
    return pd.DataFrame({"pinball_loss_s": losses.mean(axis=0), "pinball_ci_low": low,
                         "pinball_ci_high": high}, index=names)


def _common_levels(results: list[ModelResult]) -> tuple[float, ...] | None:
    """The levels every distributional result shares (None when there is none)."""
    found = {tuple(r.quantile_levels) for r in results if r.quantiles_s is not None}
    if len(found) > 1:
        raise SessionlenError(f"distributional models predict different quantile levels "
                              f"{sorted(found)}; their pinball losses cannot be compared")
    return found.pop() if found else None


def selected_distribution(val_pinball: dict[str, float], kinds: dict[str, str]) -> str | None:
    """The trained distributional model with the lowest VALIDATION pinball loss (None if none).

    Baselines and the oracle are never chosen, as for the point models.
    """
    trained = [label for label in val_pinball if kinds[label] == DISTRIBUTION_KIND]
    return evaluation.lowest_on_validation(val_pinball, trained)


def distribution_scores(experiment: Experiment) -> pd.DataFrame:
    """DISTRIBUTION_COLUMNS per result label: NaN for a point-only model, and
    `selected_distribution` True for the one distributional model chosen on validation."""
    table = pd.DataFrame(np.nan, index=[r.label for r in experiment.results],
                         columns=DISTRIBUTION_COLUMNS, dtype=object)
    table["selected_distribution"] = False
    levels = _common_levels(experiment.results)
    if levels is None:
        return table
    mine = [r for r in experiment.results if r.quantiles_s is not None]
    scores = bootstrap_pinball(experiment.actual_s, {r.label: r.quantiles_s for r in mine},
                               experiment.test_users, levels, experiment.seed)
    val_pinball = {r.label: pinball_loss(experiment.actual_val_s, r.val_quantiles_s, levels)
                   for r in mine}
    chosen = selected_distribution(val_pinball, {r.label: r.kind for r in mine})
    for r in mine:
        table.loc[r.label, list(scores.columns)] = scores.loc[r.label].to_numpy()
        table.loc[r.label, "coverage_80"] = coverage(experiment.actual_s, r.quantiles_s, levels)
        table.loc[r.label, "interval_width_s"] = interval_width(r.quantiles_s, levels)
        table.loc[r.label, "val_pinball_loss_s"] = val_pinball[r.label]
        table.loc[r.label, "selected_distribution"] = r.label == chosen
    return table


def point_only(rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` with DISTRIBUTION_COLUMNS as a point-only model has them: empty, never selected.

    For stages that predict one number per session (in-session) and record their rows in the
    same experiments.csv.
    """
    empty: dict[str, object] = {**dict.fromkeys(DISTRIBUTION_COLUMNS, np.nan),
                                "selected_distribution": False}
    return rows.assign(**empty)


def running_quantiles(sessions: pd.DataFrame, levels: Sequence[float], fallback: np.ndarray
                      ) -> np.ndarray:
    """Per session, the `levels` quantiles of the lengths of the user's EARLIER sessions.

    `sessions` must be in (user, time) order (FeatureSet.sessions); every split is history, as
    for user_median_running. A user's first session gets `fallback` (the train quantiles).
    """
    lengths = sessions[C.CURRENT_SESSION_LENGTH].astype(np.float64).reset_index(drop=True)
    users = sessions[C.USER_ID].reset_index(drop=True)
    grouped = lengths.groupby(users, sort=False)
    out = np.empty((len(lengths), len(levels)))
    for i, level in enumerate(levels):
        upto = grouped.expanding().quantile(level).reset_index(level=0, drop=True).sort_index()
        before = upto.groupby(users, sort=False).shift(1)
        out[:, i] = before.fillna(float(fallback[i])).to_numpy()
    return sort_quantiles(out)


def read_truth_quantiles(ground_truth_dir: Path) -> pd.DataFrame | None:
    """user_id, start_ms and the planted q10/median/q90 of ground_truth/sessions.csv, or None
    for a dataset generated before the quantile columns existed."""
    path = require_file(Path(ground_truth_dir) / GT_SESSIONS_FILE, "ground-truth sessions")
    header = pd.read_csv(path, nrows=0).columns
    wanted = [C.USER_ID, GT_START, *C.GT_QUANTILE_LEVELS]
    if any(c not in header for c in wanted):
        return None
    return pd.read_csv(path, usecols=wanted, dtype={C.USER_ID: str}, keep_default_na=False)


def oracle_quantiles(rows: pd.DataFrame, truth: pd.DataFrame, user_ids: pd.DataFrame,
                     levels: Sequence[float]) -> np.ndarray | None:
    """The planted quantiles of each row's session (matched as the oracle's median is), or
    None when `levels` are not exactly the planted ones."""
    planted = sorted(C.GT_QUANTILE_LEVELS.items(), key=lambda item: item[1])
    if len(planted) != len(levels) or not all(
            math.isclose(level, p) for (_, p), level in zip(planted, levels, strict=True)):
        return None
    columns = []
    for name, _ in planted:
        # oracle_predictions reads the median column: hand it each planted quantile in turn.
        as_median = truth[[C.USER_ID, GT_START]].assign(**{C.GT_MEDIAN: truth[name]})
        columns.append(oracle_predictions(rows, as_median, user_ids)[0])
    return sort_quantiles(np.column_stack(columns))


def add_distribution_baselines(experiment: Experiment, raw_dir: str | Path | None,
                               levels: Sequence[float] = DEFAULT_LEVELS) -> None:
    """Add the running empirical quantiles as a baseline, and the planted quantiles to the
    oracle's result when the ground truth has them (call after experiment.add_baselines)."""
    levels = check_levels(levels)
    features = experiment.features
    train = features.lengths_s[features.rows["train"]]
    running = running_quantiles(features.sessions, levels, np.quantile(train, levels))
    val_rows, test_rows = features.rows["validate"], features.rows["test"]
    experiment.results.append(ModelResult(
        RUNNING_QUANTILES, "baseline", {"levels": list(levels)},
        median_column(running[val_rows], levels), median_column(running[test_rows], levels),
        val_quantiles_s=running[val_rows], quantiles_s=running[test_rows],
        quantile_levels=levels))
    truth_dir = Path(raw_dir) / GROUND_TRUTH if raw_dir else None
    oracle = next((r for r in experiment.results if r.kind == ORACLE), None)
    if truth_dir is None or not truth_dir.is_dir() or oracle is None:
        return
    truth = read_truth_quantiles(truth_dir)
    if truth is None:
        return
    user_ids = load_user_ids(experiment.work)
    val_q = oracle_quantiles(features.role_frame("validate"), truth, user_ids, levels)
    test_q = oracle_quantiles(features.role_frame("test"), truth, user_ids, levels)
    if val_q is not None and test_q is not None:
        oracle.val_quantiles_s, oracle.quantiles_s, oracle.quantile_levels = val_q, test_q, levels


def distribution_headline(table: pd.DataFrame) -> pd.DataFrame:
    """The distributional rows of the results table: validation pinball loss (what picks),
    then the test pinball loss with its interval, coverage of the 80% interval and its width."""
    shown = ["label", "kind", "selected_distribution", "val_pinball_loss_s", "pinball_loss_s",
             "pinball_ci_low", "pinball_ci_high", "coverage_80", "interval_width_s", "mae_s"]
    rows = table[table["pinball_loss_s"].notna()]
    return rows[shown].sort_values("pinball_loss_s").set_index("label").round(4)
