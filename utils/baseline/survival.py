"""A survival model of session length (scikit-survival's Cox model): S(t), the chance that a
session is still going t seconds after it started, given what is known at its start.

Cox proportional hazards: S(t | x) = S0(t) ** exp(x'b), with S0 the Breslow estimate from the
train sessions. It assumes no law for the length (S0 is whatever the data says), only that a
feature scales the hazard by the same factor at every t: a peer from a well-kept library that
shapes the distribution quite differently from the quantile models. Every session ends before
the data does (the 30-minute rule closes it, none is left open), so there is no censoring:
every row is an observed event. Its quantiles are read off its survival function: the
q-quantile is the first time where S(t | x) <= 1 - q. S0 stops at the longest train session,
so a quantile beyond it is that session's length (the model cannot say more).

It sees a handful of the standardized start-time features (the listener's level and spread,
recent sessions, the gap since the last one, the time of day and week), not the full set: it is
a transparent peer, not a rival booster.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from utils.baseline.distribution import DEFAULT_LEVELS, check_levels, sort_quantiles
from utils.baseline.experiment import feature_params
from utils.baseline.experiment_state import Experiment
from utils.baseline.features import FeatureSet
from utils.core.errors import SessionlenError

SURVIVAL_MODEL = "survival_cox"
SURVIVAL_FEATURES = ["hist_median_log", "hist_std_log", "ewm_fast_log", "lag1_log",
                     "has_history", "log_gap_since_end", "hour_sin", "hour_cos", "is_weekend"]
# Enough sessions to pin down nine coefficients and S0; bounds the fit at full scale.
MAX_TRAIN_ROWS = 60_000
# A small ridge penalty keeps Newton's steps finite when features are nearly collinear (the
# history statistics are); too small to move the coefficients otherwise.
PENALIZER = 0.01


@dataclass
class SurvivalModel:
    """The fitted Cox model, its baseline survival S0 (times, values) and its train rows."""

    estimator: Any
    times_s: np.ndarray
    baseline: np.ndarray
    train_rows: int
    train_seconds: float

    @property
    def coefficients(self) -> pd.Series:
        """Log hazard ratio per standardized feature (positive: the session ends sooner)."""
        return pd.Series(np.asarray(self.estimator.coef_), index=SURVIVAL_FEATURES,
                         name="log_hazard_ratio")


def covariates(features: FeatureSet, rows: np.ndarray) -> np.ndarray:
    """The survival model's standardized start-time features of `rows`."""
    missing = [n for n in SURVIVAL_FEATURES if n not in features.context_names]
    if missing:
        raise SessionlenError(f"the features lack {', '.join(missing)}")
    index = [features.context_names.index(n) for n in SURVIVAL_FEATURES]
    return features.context[np.asarray(rows)][:, index].astype(np.float64)


def fit_survival(features: FeatureSet, seed: int = 1, log: Callable[[str], None] = print
                 ) -> SurvivalModel:
    """Fit the Cox model on the train rows (at most MAX_TRAIN_ROWS of them, seeded); every
    session is an event."""
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    train_rows = features.rows["train"]
    if len(train_rows) > MAX_TRAIN_ROWS:
        rng = np.random.default_rng(seed)
        train_rows = np.sort(rng.choice(train_rows, MAX_TRAIN_ROWS, replace=False))
    lengths = features.lengths_s[train_rows]
    target = Surv.from_arrays(event=np.ones(len(lengths), dtype=bool), time=lengths)
    started = time.perf_counter()
    estimator = CoxPHSurvivalAnalysis(alpha=PENALIZER).fit(covariates(features, train_rows),
                                                           target)
    seconds = time.perf_counter() - started
    baseline = estimator.baseline_survival_
    log(f"{SURVIVAL_MODEL}: fit on {len(train_rows):,} sessions ({seconds:.1f} s)")
    return SurvivalModel(estimator, np.asarray(baseline.x, dtype=np.float64),
                         np.asarray(baseline.y, dtype=np.float64), len(train_rows), seconds)


def _risk(model: SurvivalModel, features: FeatureSet, rows: np.ndarray) -> np.ndarray:
    """exp(x'b) per row: the factor on the baseline hazard."""
    return np.exp(model.estimator.predict(covariates(features, rows)))


def survival_quantiles(model: SurvivalModel, features: FeatureSet, rows: np.ndarray,
                       levels: Sequence[float]) -> np.ndarray:
    """Quantiles in seconds (rows x levels): per level q the first time where
    S0(t) ** risk <= 1 - q, i.e. S0(t) <= (1 - q) ** (1 / risk)."""
    risk = _risk(model, features, rows)
    target = (1.0 - np.asarray(levels, dtype=np.float64))[None, :] ** (1.0 / risk[:, None])
    # S0 decreases: its negation increases, so the first time at or below the target is found
    # by a sorted search; past S0's last time the longest train session is the answer.
    index = np.searchsorted(-model.baseline, -target.ravel(), side="left")
    index = np.minimum(index, len(model.times_s) - 1).reshape(target.shape)
    return sort_quantiles(model.times_s[index])


def survival_curves(model: SurvivalModel, features: FeatureSet, rows: np.ndarray,
                    times_s: np.ndarray) -> np.ndarray:
    """S(t | x) for each row (columns) at each time in seconds (rows of the result)."""
    position = np.searchsorted(model.times_s, np.asarray(times_s, dtype=np.float64),
                               side="right")
    base = np.where(position > 0, model.baseline[np.maximum(position - 1, 0)], 1.0)
    return base[:, None] ** _risk(model, features, rows)[None, :]


def empirical_survival(lengths_s: np.ndarray, times_s: np.ndarray) -> np.ndarray:
    """Share of the given sessions still going at each time (no censoring: 1 - the ECDF)."""
    lengths = np.sort(np.asarray(lengths_s, dtype=np.float64))
    if not len(lengths):
        return np.full(len(times_s), np.nan)
    return 1.0 - np.searchsorted(lengths, times_s, side="right") / len(lengths)


def train_survival(experiment: Experiment, levels: Sequence[float] = DEFAULT_LEVELS,
                   log: Callable[[str], None] = print) -> SurvivalModel:
    """Fit the survival model and add its quantiles to the experiment."""
    from utils.baseline.distribution_models import quantile_result

    levels = check_levels(levels)
    features = experiment.features
    model = fit_survival(features, experiment.seed, log)
    experiment.results.append(quantile_result(
        SURVIVAL_MODEL, {"features": SURVIVAL_FEATURES, "penalizer": PENALIZER,
                         "train_rows": model.train_rows, **feature_params(features)},
        levels, survival_quantiles(model, features, features.rows["validate"], levels),
        survival_quantiles(model, features, features.rows["test"], levels),
        model.train_seconds))
    return model
