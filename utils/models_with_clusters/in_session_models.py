"""The in-session models of one checkpoint: a recurrent network over the plays so far, joined
with the start-time features, and LightGBM on the summarized plays.

Both are trained on log1p(total length) with an L1 loss: the prediction is the conditional
median of the length given what is known at e, which minimizes MAE in seconds after the
transform back. A session in these rows has lasted more than e, so every prediction is raised
to at least e: that is known, not learned. Both stop early on the validation rows of the same
checkpoint; the test rows are only predicted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from utils.baseline.boosting import BoostingSettings, train_l1_booster
from utils.baseline.features import CATEGORICAL_FEATURES, Standardizer, TargetScaler
from utils.core.config import InSessionParams
from utils.core.parallel import worker_count
from utils.models_with_clusters.in_session_features import PLAY_FEATURES, PlaySequences

# Importing the baseline networks' module first sets TensorFlow's logging, CPU kernels and
# fixed thread counts, so the in-session networks are as reproducible as theirs.
from utils.baseline.models import (  # isort: skip
    EMBEDDING_DIMS,
    MIN_IMPROVEMENT,
    PREDICT_BATCH,
    EpochLogger,
    seed_everything,
)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

ROLES = ("train", "validate", "test")


@dataclass
class CheckpointData:
    """Everything the models of one checkpoint read, per role (train, validate, test).

    `context`: the standardized start-time features (utils.baseline.features) of each row;
    `categorical`: their embedded ids; `summary`: the summarized plays (raw, NaN where unknown);
    `tabular`: LightGBM's start-time columns; `sequences`: the plays so far;
    `length_s`: the target.
    """

    checkpoint_s: int
    context: dict[str, np.ndarray]
    categorical: dict[str, dict[str, np.ndarray]]
    vocab_sizes: dict[str, int]
    summary: dict[str, pd.DataFrame]
    tabular: dict[str, pd.DataFrame]
    sequences: dict[str, PlaySequences]
    length_s: dict[str, np.ndarray]


@dataclass
class TrainedModel:
    """A model's validation and test predictions (seconds) with its cost and curves."""

    model: str
    kind: str
    params: dict[str, Any]
    val_predictions_s: np.ndarray
    predictions_s: np.ndarray
    train_seconds: float
    curves: dict[str, list[float]] = field(default_factory=dict)


def at_least(seconds: np.ndarray, checkpoint_s: int) -> np.ndarray:
    """Predictions raised to the checkpoint: every session in the rows lasted longer."""
    return np.maximum(np.asarray(seconds, dtype=np.float64), float(checkpoint_s))


def _network_inputs(data: CheckpointData, role: str, numeric: Standardizer,
                    summary: Standardizer, summary_fill: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays one role feeds the network, scaled with the train rows' scalers."""
    seq = data.sequences[role]
    shape = seq.numeric.shape
    plays = numeric.apply(seq.numeric.reshape(-1, shape[-1])).reshape(shape)
    plays[..., 0] = seq.numeric[..., 0]  # `present` stays exactly 1 (0 on padding)
    plays *= seq.numeric[..., :1]  # padded steps stay all zeros
    raw = data.summary[role].to_numpy(np.float64)
    filled = np.where(np.isnan(raw), summary_fill, raw)
    return {"plays": plays, "artist": seq.artist, "track": seq.track,
            "context": np.hstack([data.context[role], summary.apply(filled)]),
            **data.categorical[role]}


def _dataset(inputs: dict[str, np.ndarray], target: np.ndarray | None, batch_size: int,
             shuffle_seed: int | None) -> tf.data.Dataset:
    """Batches of the arrays as a tf.data pipeline without a map step: Keras's own adapter for
    arrays adds a parallel map whose graph node TensorFlow's runtime complains about on stderr."""
    tensors = inputs if target is None else (inputs, target)
    dataset = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(next(iter(inputs.values()))), seed=shuffle_seed,
                                  reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def build_network(params: InSessionParams, plays_shape: tuple[int, int], context_width: int,
                  vocab_sizes: dict[str, int]) -> keras.Model:
    """Recurrent layer over the embedded plays (padding masked by the id embeddings), joined with
    the start-time and summary features and embedded start-time ids, read out linearly (the
    baseline networks' design, utils.baseline.models)."""
    plays = keras.Input(shape=plays_shape, name="plays")
    artist = keras.Input(shape=plays_shape[:1], dtype="int32", name="artist")
    track = keras.Input(shape=plays_shape[:1], dtype="int32", name="track")
    context = keras.Input(shape=(context_width,), name="context")
    ids = {n: keras.Input(shape=(), dtype="int32", name=n) for n in CATEGORICAL_FEATURES}
    artist_vec = keras.layers.Embedding(params.max_artist_ids + 3, params.artist_embedding,
                                        mask_zero=True, name="embed_artist")(artist)
    track_vec = keras.layers.Embedding(params.max_track_ids + 3, params.track_embedding,
                                       mask_zero=True, name="embed_track")(track)
    steps = keras.layers.Concatenate(name="steps")([plays, artist_vec, track_vec])
    layer = keras.layers.LSTM if params.cell == "lstm" else keras.layers.GRU
    state = layer(params.hidden_dim, dropout=params.dropout, name=params.cell)(steps)
    embedded = [keras.layers.Embedding(vocab_sizes[n], EMBEDDING_DIMS[n], name=f"embed_{n}")(
        ids[n]) for n in CATEGORICAL_FEATURES]
    joined = keras.layers.Concatenate(name="joined")([state, context, *embedded])
    output = keras.layers.Dense(1, name="log_length")(joined)
    return keras.Model(inputs={"plays": plays, "artist": artist, "track": track,
                               "context": context, **ids}, outputs=output, name=params.cell)


def fit_network(data: CheckpointData, params: InSessionParams,
                log: Callable[[str], None] = print) -> TrainedModel:
    """Seed, build and train the network of one checkpoint; early stopping on validation."""
    seed_everything(params.seed)
    train_seq = data.sequences["train"].numeric
    real = train_seq[train_seq[..., 0] > 0]
    numeric = Standardizer.fit(real if len(real) else np.zeros((1, len(PLAY_FEATURES))))
    summary_raw = data.summary["train"].to_numpy(np.float64)
    summary_fill = np.nan_to_num(np.nanmean(summary_raw, axis=0)) if len(summary_raw) else \
        np.zeros(summary_raw.shape[1])
    summary = Standardizer.fit(np.where(np.isnan(summary_raw), summary_fill, summary_raw))
    inputs = {role: _network_inputs(data, role, numeric, summary, summary_fill) for role in ROLES}
    target = TargetScaler.fit(data.length_s["train"])
    model = build_network(params, train_seq.shape[1:], inputs["train"]["context"].shape[1],
                          data.vocab_sizes)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=params.learning_rate),
                  loss="mae")
    label = f"{params.cell} @ {data.checkpoint_s} s"
    started = time.perf_counter()
    fitted = model.fit(
        _dataset(inputs["train"], target.encode(data.length_s["train"]), params.batch_size,
                 params.seed),
        validation_data=_dataset(inputs["validate"], target.encode(data.length_s["validate"]),
                                 PREDICT_BATCH, None),
        epochs=params.epochs, shuffle=False, verbose=0,
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=params.patience,
                                                 min_delta=MIN_IMPROVEMENT,
                                                 restore_best_weights=True),
                   EpochLogger(label, params.epochs, log)])
    seconds = time.perf_counter() - started
    curves = {k: [float(v) for v in values] for k, values in fitted.history.items()}

    def predict(role: str) -> np.ndarray:
        raw = model.predict(_dataset(inputs[role], None, PREDICT_BATCH, None), verbose=0)
        return at_least(target.decode(raw), data.checkpoint_s)

    kept = ("cell", "max_plays", "hidden_dim", "artist_embedding", "track_embedding",
            "max_artist_ids", "max_track_ids", "dropout", "batch_size", "epochs", "patience",
            "learning_rate", "max_train_sessions", "seed")
    return TrainedModel(
        params.cell, "network",
        {**{k: v for k, v in params.to_dict().items() if k in kept},
         "best_epoch": int(np.argmin(curves["val_loss"])) + 1},
        predict("validate"), predict("test"), seconds, curves)


def boosting_settings(params: InSessionParams) -> BoostingSettings:
    """The baseline stage's LightGBM settings class with the in-session knobs."""
    return BoostingSettings(
        learning_rate=params.lgbm_learning_rate, num_leaves=params.lgbm_num_leaves,
        min_child_samples=params.lgbm_min_child_samples, max_rounds=params.lgbm_max_rounds,
        early_stopping_rounds=params.lgbm_early_stopping_rounds, seed=params.seed)


def lightgbm_table(data: CheckpointData, role: str) -> pd.DataFrame:
    """Start-time columns and summarized plays side by side (NaN is LightGBM's missing)."""
    return pd.concat([data.tabular[role].reset_index(drop=True),
                      data.summary[role].reset_index(drop=True)], axis=1)


def fit_lightgbm(data: CheckpointData, params: InSessionParams,
                 log: Callable[[str], None] = print, threads: int | None = None
                 ) -> TrainedModel:
    """LightGBM (L1 on log1p length) for one checkpoint, stopped early on validation, on
    `threads` threads (by default the cores)."""
    settings = boosting_settings(params)
    tables = {role: lightgbm_table(data, role) for role in ROLES}
    booster, curves, seconds = train_l1_booster(
        settings, (tables["train"], np.log1p(data.length_s["train"])),
        (tables["validate"], np.log1p(data.length_s["validate"])),
        threads=threads or worker_count())
    log(f"lightgbm @ {data.checkpoint_s} s: best round {booster.best_iteration} of "
        f"{booster.current_iteration()} ({seconds:.1f} s)")

    def predict(role: str) -> np.ndarray:
        raw = booster.predict(tables[role], num_iteration=booster.best_iteration)
        return at_least(np.expm1(np.asarray(raw, dtype=np.float64)), data.checkpoint_s)

    return TrainedModel(
        "lightgbm", "lightgbm", {**settings.to_dict(), "best_round": booster.best_iteration,
                                 "max_train_sessions": params.max_train_sessions},
        predict("validate"), predict("test"), seconds, curves)
