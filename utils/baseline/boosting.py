"""LightGBM on the same start-time features the networks see, as one tabular row per session.

Trained with the L1 objective on log1p(length): the prediction is the conditional median, which
minimizes MAE in seconds after the transform back. Seeded and deterministic on any thread count,
so a rerun reproduces the same trees. A few candidate settings are fit one after another and the
one with the lowest validation MAE in seconds is kept: how large the trees may be and how many
features each sees depends on the data (how strong and how nonlinear its signal is), which no
fixed choice knows in advance.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from utils.baseline.features import FeatureSet, tabular_features
from utils.core import evaluation
from utils.core.config import DEFAULT_SEED, ClusterModelParams
from utils.core.errors import SessionlenError
from utils.core.strict_params import StrictParams

LOG_EVERY = 100


@dataclass(frozen=True)
class BoostingSettings(StrictParams):
    """LightGBM knobs kept few on purpose; everything else is LightGBM's default.

    Small trees and large leaves by default: a session's length varies by a factor of about e
    around its conditional median, so the signal a split can find is small next to the noise,
    and each leaf needs hundreds of sessions before its median means something. Early stopping
    on the validation split sets the number of trees; `candidate_settings` varies the rest.
    The defaults are the one setting models_with_clusters/5 trains (config.ClusterModelParams).
    """

    learning_rate: float = ClusterModelParams.lgbm_learning_rate
    num_leaves: int = ClusterModelParams.lgbm_num_leaves
    min_child_samples: int = ClusterModelParams.lgbm_min_child_samples
    feature_fraction: float = 0.8
    max_rounds: int = ClusterModelParams.lgbm_max_rounds
    early_stopping_rounds: int = 100
    seed: int = DEFAULT_SEED

    def lightgbm_params(self, threads: int = 1) -> dict[str, Any]:
        """The parameter dict LightGBM reads, for a fit on `threads` threads.

        Fits side by side take one thread each; a fit alone takes the cores. With
        `deterministic` and row-wise histograms the trees do not depend on the thread count.
        """
        for name in ("learning_rate", "feature_fraction"):
            fraction = getattr(self, name)
            if not 0.0 < fraction <= 1.0:
                raise SessionlenError(f"LightGBM {name} must be in (0, 1], got {fraction}")
        if self.num_leaves < 2:
            raise SessionlenError(f"LightGBM num_leaves must be at least 2, got {self.num_leaves}")
        for name in ("min_child_samples", "max_rounds", "early_stopping_rounds"):
            value = getattr(self, name)
            if value < 1:
                raise SessionlenError(f"LightGBM {name} must be positive, got {value}")
        return {
            "objective": "l1", "metric": "l1", "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves, "min_child_samples": self.min_child_samples,
            "feature_fraction": self.feature_fraction, "seed": self.seed,
            "deterministic": True, "force_row_wise": True, "num_threads": threads, "verbosity": -1,
        }


@dataclass
class TrainedBooster:
    """A fitted booster with its validation curve and timing."""

    booster: lgb.Booster
    feature_names: list[str]
    best_round: int
    train_seconds: float
    curves: dict[str, list[float]] = field(default_factory=dict)
    candidates: pd.DataFrame = field(default_factory=pd.DataFrame)
    importance: pd.Series = field(init=False)

    def __post_init__(self) -> None:
        # Read where the booster was fit, so that reading it later needs no LightGBM call
        # from a thread where another fit may be running.
        gain = self.booster.feature_importance(importance_type="gain")
        self.importance = pd.Series(gain, index=self.feature_names).sort_values(ascending=False)


def candidate_settings(base: BoostingSettings, num_leaves: list[int],
                       feature_fraction: list[float]) -> list[BoostingSettings]:
    """`base` with every combination of the listed tree sizes and feature fractions.

    Few leaves with every feature suits a signal that is nearly additive; more leaves find
    interactions, and a small feature fraction decorrelates the trees when many features carry
    the same information (the listener's level is in a dozen history statistics), which damps
    the noise each tree fits.
    """
    if not num_leaves or not feature_fraction:
        raise SessionlenError("LightGBM num_leaves and feature_fraction must list at least one "
                              "value each")
    return [replace(base, num_leaves=leaves, feature_fraction=fraction)
            for leaves, fraction in itertools.product(num_leaves, feature_fraction)]


def _log_target(features: FeatureSet, rows: np.ndarray) -> np.ndarray:
    return np.log1p(features.lengths_s[rows])


@dataclass(frozen=True)
class LogLengthSets:
    """LightGBM's binned train and validation rows of the tabular features, log-length target.

    Binning every column of the train rows is a large part of a fit at full scale; built once,
    the sets serve every fit on the same rows with the same `min_child_samples` (LightGBM drops
    the columns no leaf of that size can split when it bins). Fits one after another only: a
    set is not shared between threads.
    """

    train: lgb.Dataset
    validate: lgb.Dataset


def log_length_sets(features: FeatureSet, settings: BoostingSettings) -> LogLengthSets:
    """The binned train and validation sets of `features` for fits with `settings`."""
    table = tabular_features(features)
    train_rows, val_rows = features.rows["train"], features.rows["validate"]
    train = lgb.Dataset(table.iloc[train_rows], _log_target(features, train_rows),
                        free_raw_data=False, params=settings.lightgbm_params()).construct()
    validate = lgb.Dataset(table.iloc[val_rows], _log_target(features, val_rows),
                           reference=train).construct()
    return LogLengthSets(train, validate)


def train_l1_booster(settings: BoostingSettings,
                     train: tuple[pd.DataFrame, np.ndarray] | lgb.Dataset,
                     validate: tuple[pd.DataFrame, np.ndarray] | lgb.Dataset,
                     *callbacks: Callable[[Any], None],
                     threads: int = 1) -> tuple[lgb.Booster, dict[str, list[float]], float]:
    """Fit on (table, log-length) train rows, or a set binned already, with `threads` threads,
    stopping early on the validation rows' MAE of log-lengths; the booster, its train and
    validation curves, and the seconds taken."""
    train_set = (train if isinstance(train, lgb.Dataset)
                 else lgb.Dataset(*train, free_raw_data=False))
    valid_set = (validate if isinstance(validate, lgb.Dataset)
                 else lgb.Dataset(*validate, reference=train_set))
    curves: dict[str, dict[str, list[float]]] = {}
    started = time.perf_counter()
    booster = lgb.train(
        settings.lightgbm_params(threads), train_set, num_boost_round=settings.max_rounds,
        valid_sets=[train_set, valid_set], valid_names=["train", "validate"],
        callbacks=[lgb.early_stopping(settings.early_stopping_rounds, verbose=False),
                   lgb.record_evaluation(curves), *callbacks],
    )
    return (booster, {"loss": curves["train"]["l1"], "val_loss": curves["validate"]["l1"]},
            time.perf_counter() - started)


def fit_lightgbm(features: FeatureSet, settings: BoostingSettings,
                 log: Callable[[str], None] = print, progress: bool = True,
                 sets: LogLengthSets | None = None, threads: int = 1) -> TrainedBooster:
    """Fit on the train rows (binned already in `sets`, if given) with `threads` threads,
    stopping early on the validation rows' MAE of log-lengths.

    Logs the scores every LOG_EVERY rounds if `progress`, and the best round at the end.
    """
    table = tabular_features(features)
    sets = sets or log_length_sets(features, settings)
    booster, curves, seconds = train_l1_booster(
        settings, sets.train, sets.validate, *([_progress(log)] if progress else []),
        threads=threads)
    log(f"lightgbm num_leaves {settings.num_leaves} feature_fraction "
        f"{settings.feature_fraction:g}: best round {booster.best_iteration} of "
        f"{booster.current_iteration()} ({seconds:.1f} s)")
    return TrainedBooster(booster, list(table.columns), booster.best_iteration, seconds, curves)


def validation_mae(trained: TrainedBooster, features: FeatureSet) -> float:
    """MAE in seconds on the validation rows: what chooses among candidate settings."""
    rows = features.rows["validate"]
    return evaluation.mae(features.lengths_s[rows], predict_lightgbm(trained, features, rows))


def fit_lightgbm_candidates(features: FeatureSet, candidates: list[BoostingSettings],
                            log: Callable[[str], None] = print, threads: int = 1
                            ) -> tuple[TrainedBooster, BoostingSettings]:
    """Fit every candidate, one after another with `threads` threads each, and keep the one
    with the lowest validation MAE, with the table of every candidate's score as its
    `candidates`.

    One fit at a time: LightGBM's native code is not safe to run from two threads of a process
    at once. Candidates with the same `min_child_samples` share the binned rows. Each fit logs
    one line when it ends.
    """
    if not candidates:
        raise SessionlenError("no LightGBM settings to fit")
    for settings in candidates:
        settings.lightgbm_params()
    binned: dict[int, LogLengthSets] = {}
    fitted = []
    for settings in candidates:
        if settings.min_child_samples not in binned:
            binned[settings.min_child_samples] = log_length_sets(features, settings)
        fitted.append(fit_lightgbm(features, settings, log, progress=False,
                                   sets=binned[settings.min_child_samples], threads=threads))
    scores = [validation_mae(trained, features) for trained in fitted]
    best = min(range(len(candidates)), key=lambda i: (scores[i], i))
    table = pd.DataFrame([{
        "num_leaves": s.num_leaves, "feature_fraction": s.feature_fraction,
        "min_child_samples": s.min_child_samples, "best_round": t.best_round,
        "val_mae_s": score, "train_seconds": t.train_seconds, "chosen": i == best,
    } for i, (s, t, score) in enumerate(zip(candidates, fitted, scores, strict=True))])
    chosen = candidates[best]
    fitted[best].candidates = table
    log(f"lightgbm: chose num_leaves {chosen.num_leaves}, feature_fraction "
        f"{chosen.feature_fraction:g} of {len(candidates)} candidates on validation MAE "
        f"{scores[best]:,.0f} s")
    return fitted[best], chosen


def refit_on_validation_rows(trained: TrainedBooster, features: FeatureSet,
                             settings: BoostingSettings, threads: int = 1) -> TrainedBooster:
    """The chosen setting fit again on the train and validation rows together, for the number
    of rounds early stopping kept: the booster that predicts the test rows.

    Once the setting and the round count are chosen, the validation targets have nothing left
    to choose and become training data: a fifth more sessions, and the ones closest in time to
    the test split, which matters when listeners drift. Judged without the test split, by
    holding out the last fifth of each listener's train sessions to stop on and scoring on
    validation, the refit captured more of the headroom in 7 of 10 comparisons (mean +0.03).
    Its validation predictions are not honest scores, so only the test rows use it.
    """
    rows = np.r_[features.rows["train"], features.rows["validate"]]
    started = time.perf_counter()
    booster = fit_for_rounds(settings.lightgbm_params(threads),
                             tabular_features(features).iloc[rows], _log_target(features, rows),
                             trained.best_round)
    return TrainedBooster(booster, trained.feature_names, trained.best_round,
                          time.perf_counter() - started)


def fit_for_rounds(params: dict[str, Any], table: pd.DataFrame, target: np.ndarray,
                   rounds: int) -> lgb.Booster:
    """A booster fit on every row of `table` for exactly `rounds` rounds, nothing held out:
    the refit once early stopping on validation has chosen the rounds."""
    return lgb.train(params, lgb.Dataset(table, target, params=params), num_boost_round=rounds)


@dataclass
class ChosenLightGBM:
    """The LightGBM kept on validation, its settings, and its predictions in seconds: the
    validation rows' from the fit chosen there, the test rows' from `test_booster`."""

    trained: TrainedBooster
    settings: BoostingSettings
    test_booster: TrainedBooster
    val_predictions_s: np.ndarray
    predictions_s: np.ndarray

    @property
    def refit(self) -> bool:
        """Whether the test rows are predicted by a refit on train and validation rows."""
        return self.test_booster is not self.trained


def fit_chosen_lightgbm(features: FeatureSet, candidates: list[BoostingSettings],
                        log: Callable[[str], None] = print, threads: int = 1,
                        refit: bool = True) -> ChosenLightGBM:
    """Every candidate fit, the one with the lowest validation MAE kept, refit on train and
    validation rows if `refit` (refit_on_validation_rows), and every prediction made: all of a
    stage's LightGBM work in one call, so it can run on one thread of its own."""
    trained, settings = fit_lightgbm_candidates(features, candidates, log, threads)
    test_booster = trained
    if refit:
        test_booster = refit_on_validation_rows(trained, features, settings, threads)
        log(f"lightgbm: refit on train and validation rows, {test_booster.best_round} rounds "
            f"({test_booster.train_seconds:.1f} s), for the test rows")
    return ChosenLightGBM(trained, settings, test_booster,
                          predict_lightgbm(trained, features, features.rows["validate"]),
                          predict_lightgbm(test_booster, features, features.rows["test"]))


def _progress(log: Callable[[str], None]) -> Callable[[Any], None]:
    """A LightGBM callback logging train and validation MAE every LOG_EVERY rounds."""

    def report(env: Any) -> None:
        if (env.iteration + 1) % LOG_EVERY == 0:
            scores = " ".join(f"{data} l1 {value:.4f}"
                              for data, _, value, _ in env.evaluation_result_list)
            log(f"lightgbm round {env.iteration + 1}: {scores}")

    return report


def predict_lightgbm(trained: TrainedBooster, features: FeatureSet, rows: np.ndarray) -> np.ndarray:
    """Predicted session lengths in seconds for `rows`, with the best round's trees."""
    table = tabular_features(features).iloc[rows]
    log_pred = trained.booster.predict(table, num_iteration=trained.best_round)
    return np.clip(np.expm1(np.asarray(log_pred, dtype=np.float64)), 0.0, None)


def feature_importance(trained: TrainedBooster) -> pd.Series:
    """Total gain per feature, largest first, as read when the booster was fit."""
    return trained.importance
