"""Trained distributional models of the baseline stage: quantile LightGBM and a quantile network.

Both fit quantiles of the log length, on the same train rows and features as the point models,
and stop early on the validation rows. A quantile survives any increasing transform (the
q-quantile of log1p(L) is log1p of the q-quantile of L), so quantiles fit on the log scale,
where the noise is about symmetric and of one size for short and long listeners, are exactly
the quantiles in seconds once transformed back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from utils.baseline.boosting import BoostingSettings, LogLengthSets, log_length_sets
from utils.baseline.distribution import (
    DEFAULT_LEVELS,
    DISTRIBUTION_KIND,
    check_levels,
    median_column,
    sort_quantiles,
)
from utils.baseline.experiment import LightGBMJob, feature_params, network_params
from utils.baseline.experiment_state import Experiment, ModelResult
from utils.baseline.features import FeatureSet, tabular_features
from utils.core.config import ModelParams
from utils.core.errors import SessionlenError
from utils.core.parallel import worker_count

QUANTILE_LIGHTGBM = "lightgbm_quantile"
QUANTILE_NETWORK = "gru_quantile"


def chosen_boosting_settings(experiment: Experiment) -> BoostingSettings:
    """The LightGBM settings the point model kept on validation (experiment.train_lightgbm):
    the quantile boosters reuse them instead of searching again, so the two differ only by
    their objective."""
    point = next((r for r in experiment.results if r.kind == "lightgbm"), None)
    if point is None:
        raise SessionlenError("train the point LightGBM (train_lightgbm) before its quantile "
                              "version: it reuses the settings chosen there")
    names = {f.name for f in fields(BoostingSettings)}
    return BoostingSettings.from_dict({k: v for k, v in point.params.items() if k in names})


@dataclass
class QuantileBooster:
    """One booster per level, each with its best round on validation."""

    levels: tuple[float, ...]
    boosters: list[lgb.Booster]
    best_rounds: list[int]
    train_seconds: float


def _fit_level(sets: LogLengthSets, settings: BoostingSettings, level: float, threads: int
               ) -> lgb.Booster:
    """One quantile booster on log1p(length), stopping early on the validation pinball loss."""
    params: dict[str, Any] = {**settings.lightgbm_params(threads), "objective": "quantile",
                              "alpha": level, "metric": "quantile"}
    return lgb.train(params, sets.train, num_boost_round=settings.max_rounds,
                     valid_sets=[sets.validate],
                     callbacks=[lgb.early_stopping(settings.early_stopping_rounds,
                                                   verbose=False)])


def fit_quantile_lightgbm(features: FeatureSet, settings: BoostingSettings,
                          levels: Sequence[float] = DEFAULT_LEVELS,
                          log: Callable[[str], None] = print, threads: int | None = None
                          ) -> QuantileBooster:
    """Fit a quantile booster per level, one after another on the same binned rows, with
    `threads` threads (by default up to two) each."""
    levels = check_levels(levels)
    threads = threads or worker_count(cap=2)
    started = time.perf_counter()
    shared = log_length_sets(features, settings)
    boosters = [_fit_level(shared, settings, level, threads) for level in levels]
    seconds = time.perf_counter() - started
    rounds = [b.best_iteration for b in boosters]
    log(f"{QUANTILE_LIGHTGBM}: levels {list(levels)}, best rounds {rounds} ({seconds:.1f} s)")
    return QuantileBooster(levels, boosters, rounds, seconds)


def predict_quantile_lightgbm(model: QuantileBooster, features: FeatureSet, rows: np.ndarray
                              ) -> np.ndarray:
    """Quantiles in seconds (rows x levels), sorted per row."""
    table = tabular_features(features).iloc[rows]
    logs = np.column_stack([b.predict(table, num_iteration=r)
                            for b, r in zip(model.boosters, model.best_rounds, strict=True)])
    return sort_quantiles(np.expm1(logs))


def quantile_result(model: str, params: dict[str, Any], levels: tuple[float, ...],
                     val_q: np.ndarray, test_q: np.ndarray, seconds: float,
                     curves: dict[str, list[float]] | None = None, label: str = ""
                     ) -> ModelResult:
    """A distributional result: its medians are its point predictions."""
    return ModelResult(model, DISTRIBUTION_KIND, {**params, "levels": list(levels)},
                       median_column(val_q, levels), median_column(test_q, levels), seconds,
                       curves, label, val_quantiles_s=val_q, quantiles_s=test_q,
                       quantile_levels=levels)


@dataclass
class QuantileLightGBMJob:
    """Quantile boosters being fit on a thread of their own, and the lines they logged."""

    future: Future[QuantileBooster]
    lines: list[str]


def start_quantile_lightgbm(experiment: Experiment, point: LightGBMJob,
                            levels: Sequence[float] = DEFAULT_LEVELS) -> QuantileLightGBMJob:
    """Fit the quantile boosters, one level at a time on a thread of their own, as soon as the
    point LightGBM started by `experiment.start_lightgbm` has done all its work (candidates,
    refit, predictions: LightGBM's native code is not safe to run from two threads at once);
    `train_quantile_lightgbm` collects them. Like the point candidates, they use the core the
    networks leave idle."""
    levels = check_levels(levels)
    lines: list[str] = []

    def fit() -> QuantileBooster:
        # After all the point model's LightGBM work: no two LightGBM fits at once.
        settings = point.future.result().settings
        return fit_quantile_lightgbm(experiment.features, settings, levels, lines.append, 1)

    pool = ThreadPoolExecutor(1, thread_name_prefix="lightgbm-quantile")
    future = pool.submit(fit)
    pool.shutdown(wait=False)
    return QuantileLightGBMJob(future, lines)


def train_quantile_lightgbm(experiment: Experiment,
                            levels: Sequence[float] | QuantileLightGBMJob = DEFAULT_LEVELS,
                            log: Callable[[str], None] = print) -> QuantileBooster:
    """Quantile LightGBM with the point LightGBM's chosen settings (or the boosters
    `start_quantile_lightgbm` fit with them), added to the experiment."""
    features, settings = experiment.features, chosen_boosting_settings(experiment)
    if isinstance(levels, QuantileLightGBMJob):
        model = levels.future.result()
        for line in levels.lines:
            log(line)
    else:
        model = fit_quantile_lightgbm(features, settings, levels, log)
    experiment.results.append(quantile_result(
        QUANTILE_LIGHTGBM, {**settings.to_dict(), "best_rounds": model.best_rounds,
                            **feature_params(features)}, model.levels,
        predict_quantile_lightgbm(model, features, features.rows["validate"]),
        predict_quantile_lightgbm(model, features, features.rows["test"]),
        model.train_seconds))
    return model


# --- the quantile network -----------------------------------------------------------------
# Why quantiles and not a log-normal head: the pinball loss asks nothing of the law's shape,
# while a log-normal likelihood would force a symmetric bell on the log scale. The variant law
# mixes short check-ins with a heavy-tailed body, and the real data is no better known; a wrong
# shape miscalibrates q10 and q90 even when the median is right. The cost, quantiles at the
# chosen levels only, is what the metrics need.


def pinball_loss_fn(levels: Sequence[float]) -> Callable[[Any, Any], Any]:
    """A Keras loss: the pinball loss averaged over `levels` (y_true one column, y_pred one
    column per level)."""
    import keras

    tau = keras.ops.convert_to_tensor(np.asarray(levels, dtype=np.float32)[None, :])

    def pinball(y_true: Any, y_pred: Any) -> Any:
        error = keras.ops.reshape(keras.ops.cast(y_true, "float32"), (-1, 1)) - y_pred
        return keras.ops.mean(keras.ops.maximum(tau * error, (tau - 1.0) * error), axis=-1)

    return pinball


def build_quantile_network(features: FeatureSet, hidden_dim: int, dropout: float,
                           no_layers: int, levels: Sequence[float]) -> Any:
    """The point GRU (models.build_network: same inputs, recurrent stack and join) with
    its one-output read-out replaced by one linear output per level, ordered by construction.

    The lowest level is read out directly and each next one adds a softplus step, so the
    quantiles can never cross; predictions are still sorted, at no cost, as a guard.
    """
    import keras

    from utils.baseline.models import build_network

    base = build_network("gru", features, hidden_dim, dropout, no_layers)
    joined = base.get_layer("joined").output
    raw = keras.layers.Dense(len(levels), name="quantile_raw")(joined)
    lowest = keras.layers.Lambda(lambda z: z[:, :1], name="lowest")(raw)
    steps = keras.layers.Lambda(lambda z: keras.ops.softplus(z[:, 1:]), name="steps")(raw)
    ordered = keras.layers.Concatenate(name="quantile_steps")([lowest, steps])
    output = keras.layers.Lambda(lambda z: keras.ops.cumsum(z, axis=1),
                                 name="log_quantiles")(ordered)
    return keras.Model(inputs=base.input, outputs=output, name=QUANTILE_NETWORK)


@dataclass
class QuantileNetwork:
    """A fitted quantile network with its curves and timing."""

    model: Any
    levels: tuple[float, ...]
    dropout: float
    history: dict[str, list[float]]
    best_epoch: int
    train_seconds: float


def fit_quantile_network(features: FeatureSet, params: ModelParams, dropout: float,
                         levels: Sequence[float] = DEFAULT_LEVELS,
                         log: Callable[[str], None] = print) -> QuantileNetwork:
    """Seed, build and train the quantile GRU with the point networks' recipe (models:
    averaged weights, early stopping on the validation loss with the best weights restored,
    step size halved on plateaus), the pinball loss on the standardized log length."""
    from utils.baseline.models import (
        PREDICT_BATCH,
        averaging_optimizer,
        fit_compiled,
        make_dataset,
        seed_everything,
    )

    levels = check_levels(levels)
    if params.epochs < 1 or params.batch_size < 1:
        raise SessionlenError(f"epochs and batch_size must be positive, got {params.epochs}, "
                              f"{params.batch_size}")
    seed_everything(params.seed)
    model = build_quantile_network(features, params.hidden_dim, dropout, params.no_layers,
                                   levels)
    steps = -(-len(features.rows["train"]) // params.batch_size)
    model.compile(optimizer=averaging_optimizer(params.optimizer, params.learning_rate, steps),
                  loss=pinball_loss_fn(levels))
    train = make_dataset(features, features.rows["train"], params.batch_size, True, params.seed)
    validate = make_dataset(features, features.rows["validate"], PREDICT_BATCH, False,
                            params.seed)
    history, seconds, _, best_epoch = fit_compiled(model, train, validate, params,
                                                   f"{QUANTILE_NETWORK} (dropout {dropout:g})",
                                                   log)
    return QuantileNetwork(model, levels, dropout, history, best_epoch, seconds)


def predict_quantile_network(trained: QuantileNetwork, features: FeatureSet, rows: np.ndarray
                             ) -> np.ndarray:
    """Quantiles in seconds (rows x levels), sorted per row."""
    from utils.baseline.models import PREDICT_BATCH, make_dataset

    dataset = make_dataset(features, rows, PREDICT_BATCH, False, seed=0)
    z = np.asarray(trained.model.predict(dataset, verbose=0), dtype=np.float64)
    scaler = features.target_scaler
    return sort_quantiles(np.expm1(z * scaler.std + scaler.mean))


def train_quantile_network(experiment: Experiment, params: ModelParams, epochs: int,
                           levels: Sequence[float] = DEFAULT_LEVELS,
                           log: Callable[[str], None] = print) -> pd.DataFrame:
    """Train one quantile GRU (the first `params.dropout` value, at most `epochs` epochs and
    never more than `params.epochs`), add it to the experiment; one summary line."""
    if not params.dropout:
        raise SessionlenError("dropout must list at least one value")
    if epochs < 1:
        raise SessionlenError(f"quantile_epochs must be positive, got {epochs}")
    short = replace(params, epochs=min(epochs, params.epochs))
    features, dropout = experiment.features, params.dropout[0]
    trained = fit_quantile_network(features, short, dropout, levels, log)
    label = f"{QUANTILE_NETWORK} (dropout {dropout:g})"
    experiment.results.append(quantile_result(
        QUANTILE_NETWORK, {**network_params(short, dropout), **feature_params(features)},
        trained.levels, predict_quantile_network(trained, features, features.rows["validate"]),
        predict_quantile_network(trained, features, features.rows["test"]),
        trained.train_seconds, trained.history, label))
    return pd.DataFrame([{"model": label, "epochs_run": len(trained.history["loss"]),
                          "best_epoch": trained.best_epoch,
                          "best_val_loss": min(trained.history["val_loss"]),
                          "train_seconds": trained.train_seconds}]).set_index("model")
