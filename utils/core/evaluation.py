"""The metrics of DESIGN.md's evaluation protocol: MAE/RMSE in seconds, the two ratios, and
their paired bootstrap intervals over users."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from utils.core.errors import SessionlenError


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


def lowest_on_validation(val_scores: dict[str, float], names: Iterable[str]) -> str | None:
    """The one of `names` with the lowest validation score (ties by name); None if none: the
    rule by which every stage chooses, whatever the score."""
    names = list(names)
    return min(names, key=lambda name: (val_scores[name], name)) if names else None


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


def headroom_captured(model_mae: ArrayLike, reference_mae: ArrayLike, oracle_mae: ArrayLike
                      ) -> Any:
    """Share of the reference -> oracle improvement a model captures (NaN without headroom).

    Works elementwise on arrays (the bootstrap's resamples) as on single numbers.
    """
    span = np.asarray(reference_mae, dtype=np.float64) - oracle_mae
    with np.errstate(invalid="ignore", divide="ignore"):
        captured = np.where(span > 0, (np.asarray(reference_mae) - model_mae) / span, np.nan)
    return float(captured) if captured.ndim == 0 else captured


# Paired bootstrap over users. A user's sessions share the user's habits, so they are not
# independent draws: resampling whole users keeps that dependence, and resampling the same users
# for every model keeps the models' errors paired, which is what makes their differences sharp.
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95


def bootstrap_weights(n_users: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 1
                      ) -> np.ndarray:
    """How often each user is drawn in each resample (resamples x users), seeded."""
    if n_users < 1:
        raise SessionlenError("no users to resample")
    if resamples < 1:
        raise SessionlenError(f"resamples must be positive, got {resamples}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=resamples
                           ).astype(np.float64)


def per_user_sums(values: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column sums of `values` (rows x columns) per user, and each user's row count.

    Users are numbered by sorted id; the same ids give the same numbering for every call.
    """
    _, index = np.unique(np.asarray(users), return_inverse=True)
    n_users = int(index.max()) + 1 if len(index) else 0
    matrix = np.asarray(values, dtype=np.float64).reshape(len(index), -1)
    sums = np.zeros((n_users, matrix.shape[1]))
    np.add.at(sums, index, matrix)
    return sums, np.bincount(index, minlength=n_users).astype(np.float64)


def resampled_means(sums: np.ndarray, counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The row-weighted mean of each column in each resample (resamples x columns)."""
    return (weights @ sums) / (weights @ counts)[:, None]


def percentile_interval(samples: np.ndarray, level: float = CONFIDENCE
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The central `level` percentile interval of each column (NaN resamples ignored)."""
    tail = 50.0 * (1.0 - level)
    with warnings.catch_warnings():
        # A column that is NaN in every resample (no headroom anywhere) has no interval.
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(samples, [tail, 100.0 - tail], axis=0)
    return low, high


@dataclass(frozen=True)
class BootstrapScores:
    """Test MAE of each model, as measured and in every paired resample of the users."""

    names: list[str]
    mae: np.ndarray  # per model
    resampled: np.ndarray  # resamples x models

    def column(self, name: str) -> int:
        """The position of a model's column."""
        if name not in self.names:
            raise SessionlenError(f"no predictions of {name!r} to compare with")
        return self.names.index(name)

    def difference(self, name: str, other: str) -> tuple[float, float, float]:
        """MAE of `name` minus MAE of `other`, with its paired percentile interval."""
        a, b = self.column(name), self.column(other)
        low, high = percentile_interval(self.resampled[:, [a]] - self.resampled[:, [b]])
        return float(self.mae[a] - self.mae[b]), float(low[0]), float(high[0])


def bootstrap_scores(actual: np.ndarray, predictions: dict[str, np.ndarray], users: np.ndarray,
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 1) -> BootstrapScores:
    """Every model's test MAE and its MAE in each resample of the users (the same resamples)."""
    names = list(predictions)
    errors = np.column_stack([np.abs(np.subtract(*_paired(actual, predictions[n])))
                              for n in names])
    sums, counts = per_user_sums(errors, users)
    weights = bootstrap_weights(len(counts), resamples, seed)
    return BootstrapScores(names, errors.mean(axis=0), resampled_means(sums, counts, weights))


def score_table(scores: BootstrapScores, normalizer: str, reference: str, oracle: str | None
                ) -> pd.DataFrame:
    """Per model: MAE, normalized MAE, headroom captured and the difference to the reference,
    each with its 95% paired bootstrap interval (headroom needs an oracle, else NaN)."""
    boot, point = scores.resampled, scores.mae
    norm, ref = scores.column(normalizer), scores.column(reference)
    table = pd.DataFrame({"mae_s": point}, index=scores.names)
    columns = {
        "mae": (point, boot),
        "normalized_mae": (point / point[norm], boot / boot[:, [norm]]),
        "diff_vs_reference": (point - point[ref], boot - boot[:, [ref]]),
    }
    if oracle is not None:
        best = scores.column(oracle)
        columns["headroom"] = (headroom_captured(point, point[ref], point[best]),
                               headroom_captured(boot, boot[:, [ref]], boot[:, [best]]))
    for name, (value, samples) in columns.items():
        low, high = percentile_interval(samples)
        table[name if name != "mae" else "mae_s"] = value
        table[f"{name}_ci_low"], table[f"{name}_ci_high"] = low, high
    if oracle is None:
        table["headroom"] = table["headroom_ci_low"] = table["headroom_ci_high"] = np.nan
    return table.rename(columns={"headroom": "headroom_captured",
                                 "diff_vs_reference": "diff_vs_reference_s"})


def metric_columns(label: str, actual: np.ndarray, predicted: np.ndarray,
                   val_mae: dict[str, float], metrics: pd.DataFrame, normalizer: str,
                   reference: str, selected: str | None) -> dict[str, Any]:
    """One model's metric columns as every stage records them: its validation MAE, its test
    metrics with their intervals (a `score_table` row), RMSE, the normalizer's test MAE, the
    reference baseline and whether it is the model picked on validation."""
    return {
        "val_mae_s": val_mae[label], **metrics.loc[label].to_dict(),
        "rmse_s": rmse(actual, predicted),
        "baseline_mae_s": float(metrics.loc[normalizer, "mae_s"]), "reference": reference,
        "selected": label == selected,
    }


def verdict(first: str, second: str, low: float, high: float) -> str:
    """What an interval of MAE(first) - MAE(second) allows to say about the two models."""
    if high < 0:
        return f"{first} better"
    if low > 0:
        return f"{second} better"
    return "not distinguishable"
