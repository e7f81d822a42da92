"""The metrics of DESIGN.md's evaluation protocol: MAE/RMSE in seconds and the two ratios."""

from __future__ import annotations

import math

import numpy as np

from utils.errors import SessionlenError


def _paired(actual: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as float64, checked to be non-empty, of equal length and free of NaN."""
    y = np.asarray(actual, dtype=np.float64).reshape(-1)
    p = np.asarray(predicted, dtype=np.float64).reshape(-1)
    if len(y) != len(p):
        raise SessionlenError(f"{len(y)} actual values but {len(p)} predictions")
    if not len(y):
        raise SessionlenError("no test rows to evaluate")
    missing = int(np.isnan(y).sum() + np.isnan(p).sum())
    if missing:
        raise SessionlenError(f"{missing} missing (NaN) actual or predicted values")
    return y, p


def mae(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Mean absolute error (seconds)."""
    y, p = _paired(actual, predicted)
    return float(np.mean(np.abs(y - p)))


def rmse(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Root mean squared error (seconds)."""
    y, p = _paired(actual, predicted)
    return float(np.sqrt(np.mean((y - p) ** 2)))


def normalized_mae(model_mae: float, user_mean_mae: float) -> float:
    """Model MAE / MAE of the user_mean baseline on the same rows (NaN if that MAE is 0)."""
    return model_mae / user_mean_mae if user_mean_mae > 0 else math.nan


def headroom_captured(model_mae: float, user_median_mae: float, oracle_mae: float) -> float:
    """Share of the user_median -> oracle improvement a model captures (NaN without headroom)."""
    headroom = user_median_mae - oracle_mae
    return (user_median_mae - model_mae) / headroom if headroom > 0 else math.nan
