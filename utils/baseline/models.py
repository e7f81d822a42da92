"""The baseline stage's sequence networks: Keras builders, tf.data input, seeded training.

A network reads the user's previous K sessions through recurrent layers (GRU or LSTM, one or
`no_layers` deep, padded steps masked), joins their final state with the features of the session
being predicted and the embedded categorical ids, and reads the standardized log1p length out of
that with one linear layer, and, given `head_units`, a small ReLU layer beside it whose output
is added. Trained with MAE on that target it predicts the conditional median, which is what
minimizes MAE in seconds once transformed back.

Why a linear read-out: most start-time effects are close to additive in log-length once the
interactions with the listener's habits are given as features, and the noise is large (a
session's length varies by a factor of about e around its median), so the linear path carries
the bulk with little variance. Some effects are not additive (how long a break since the last
session was can change what kind of session follows, and how much depends on the listener), and
a linear read-out of the features cannot take their shape. A ReLU layer beside it can, when
there are enough sessions to fit its weights: measured on validation rows only, 32 units raised
an LSTM's headroom captured from 0.74 to 0.79 on the full-size variant law (seed 1) and left
the standard law's at 0.94, while at demo size (a twentieth of the train sessions) the same
layer overfit (0.94 to 0.14 on the standard law, 0.53 to 0.34 on the variant). Hence no ReLU
layer by default and 32 units at full scale (config.SCALES).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from utils.baseline.features import CATEGORICAL_FEATURES, FeatureSet
from utils.core.config import ModelParams
from utils.core.errors import SessionlenError

# Before TensorFlow loads: keep its C++ start-up chatter out of notebooks and logs, and use
# TensorFlow's own CPU kernels rather than oneDNN's, whose results may vary with the thread
# layout (reruns must reproduce the same metrics).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

# Each trained network gets its own predict function; TensorFlow warns about that "retracing".
tf.get_logger().setLevel("ERROR")
# Float sums split over threads round differently per split, so the thread counts are fixed
# rather than taken from the machine: the same seed gives the same weights on any core count.
TRAINING_THREADS = 2
tf.config.threading.set_intra_op_parallelism_threads(TRAINING_THREADS)
tf.config.threading.set_inter_op_parallelism_threads(1)

# Network name -> (recurrent cell, layered?). The original's flags pick one of these.
NETWORKS = {
    "gru": ("gru", False),
    "lstm": ("lstm", False),
    "layered_gru": ("gru", True),
    "layered_lstm": ("lstm", True),
}
COMPARISON_NETWORKS = ("gru", "lstm", "layered_lstm")
EMBEDDING_DIMS = {"country": 4, "gender": 2, "hour": 4, "weekday": 3}
# Weights are evaluated and kept as an exponential moving average over about one epoch (at most
# 100 steps): MAE gradients have a constant size, so the raw weights jitter around the optimum.
EMA_MAX_MOMENTUM = 0.99
PREDICT_BATCH = 4096
# A validation loss (the MAE of the standardized log length, about 0.5) lower by less than this
# is no improvement. On hundreds of thousands of sessions each halving of the step size still
# buys a gain in the fifth decimal, far inside any interval on the metric, and every such gain
# would restart the patience until the epoch limit.
MIN_IMPROVEMENT = 1e-4


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow's ops deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def network_name(model_lstm: bool, layered: bool) -> str:
    """The network the original's flags select: GRU or LSTM, single or layered."""
    return ("layered_" if layered else "") + ("lstm" if model_lstm else "gru")


def networks_to_train(params: ModelParams, compare_networks: bool) -> list[str]:
    """The comparison set (plus the flag-selected network), or only the flag-selected one."""
    chosen = network_name(params.model_lstm, params.layered)
    if not compare_networks:
        return [chosen]
    return list(COMPARISON_NETWORKS) + ([chosen] if chosen not in COMPARISON_NETWORKS else [])


def _batch_gatherer(features: FeatureSet) -> Callable[[tf.Tensor], Any]:
    """A tf.data map function turning a batch of row ids into (inputs, target)."""
    steps = tf.constant(features.steps)
    history = tf.constant(features.history)
    context = tf.constant(features.context)
    target = tf.constant(features.target)
    categorical = {name: tf.constant(features.categorical[name]) for name in CATEGORICAL_FEATURES}

    def gather(ids: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        inputs = {"history": tf.gather(steps, tf.gather(history, ids)),
                  "context": tf.gather(context, ids)}
        inputs.update({name: tf.gather(ids_of, ids) for name, ids_of in categorical.items()})
        return inputs, tf.gather(target, ids)

    return gather


def make_dataset(features: FeatureSet, rows: np.ndarray, batch_size: int, shuffle: bool,
                 seed: int) -> tf.data.Dataset:
    """Batches of rows as model inputs; sequences are gathered per batch, not materialized."""
    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(rows, dtype=np.int32))
    if shuffle:
        dataset = dataset.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    return (dataset.batch(batch_size)
            .map(_batch_gatherer(features), num_parallel_calls=tf.data.AUTOTUNE,
                 deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def _recurrent_stack(history: keras.KerasTensor, cell: str, layers: int, hidden_dim: int,
                     dropout: float) -> keras.KerasTensor:
    """`layers` recurrent layers over the masked history; the last returns its final state."""
    layer_type = keras.layers.LSTM if cell == "lstm" else keras.layers.GRU
    x = keras.layers.Masking(mask_value=0.0, name="mask_padding")(history)
    for i in range(layers):
        x = layer_type(hidden_dim, dropout=dropout, return_sequences=i < layers - 1,
                       name=f"{cell}_{i + 1}")(x)
    return x


def build_network(name: str, features: FeatureSet, hidden_dim: int, dropout: float,
                  no_layers: int, head_units: int = 0) -> keras.Model:
    """The named network (see NETWORKS) sized for `features`, with a ReLU layer of
    `head_units` units beside its linear read-out (none if 0)."""
    if name not in NETWORKS:
        raise SessionlenError(f"unknown network {name!r}; valid: {', '.join(NETWORKS)}")
    if not 0.0 <= dropout < 1.0:
        raise SessionlenError(f"dropout must be in [0, 1), got {dropout}")
    if no_layers < 1 or hidden_dim < 1:
        raise SessionlenError(f"no_layers and hidden_dim must be positive, got {no_layers}, "
                              f"{hidden_dim}")
    if head_units < 0:
        raise SessionlenError(f"head_units must be 0 (linear read-out only) or more, got "
                              f"{head_units}")
    cell, layered = NETWORKS[name]
    history = keras.Input(shape=features.history.shape[1:] + features.steps.shape[1:],
                          name="history")
    context = keras.Input(shape=features.context.shape[1:], name="context")
    ids = {n: keras.Input(shape=(), dtype="int32", name=n) for n in CATEGORICAL_FEATURES}
    embedded = [
        keras.layers.Embedding(features.vocab_sizes[n], EMBEDDING_DIMS[n],
                               name=f"embed_{n}")(ids[n])
        for n in CATEGORICAL_FEATURES
    ]
    sequence = _recurrent_stack(history, cell, no_layers if layered else 1, hidden_dim, dropout)
    sequence = keras.layers.Dropout(dropout, name="state_dropout")(sequence)
    joined = keras.layers.Concatenate(name="joined")([sequence, context, *embedded])
    if head_units:
        linear = keras.layers.Dense(1, name="linear_read_out")(joined)
        hidden = keras.layers.Dense(head_units, activation="relu", name="head_hidden")(joined)
        nonlinear = keras.layers.Dense(1, name="head_read_out")(hidden)
        output = keras.layers.Add(name="log_length")([linear, nonlinear])
    else:
        output = keras.layers.Dense(1, name="log_length")(joined)
    return keras.Model(inputs={"history": history, "context": context, **ids},
                       outputs=output, name=name)


def _loss(name: str) -> keras.losses.Loss:
    try:
        return keras.losses.get(name)
    except ValueError as exc:
        raise SessionlenError(f"unknown loss_func {name!r} (e.g. mae, mse, huber)") from exc


def averaging_optimizer(name: str, learning_rate: float, steps_per_epoch: int
                        ) -> keras.optimizers.Optimizer:
    """The named optimizer keeping an exponential moving average of the weights (see
    EMA_MAX_MOMENTUM), the average spanning about one epoch."""
    momentum = min(EMA_MAX_MOMENTUM, 1.0 - 1.0 / max(2, steps_per_epoch))
    config = {"learning_rate": learning_rate, "use_ema": True, "ema_momentum": momentum}
    try:
        return keras.optimizers.get({"class_name": name, "config": config})
    except ValueError as exc:
        raise SessionlenError(f"unknown optimizer {name!r} (e.g. adam, rmsprop, sgd)") from exc


class EpochLogger(keras.callbacks.Callback):
    """One progress line per epoch: losses, learning rate, seconds."""

    def __init__(self, label: str, epochs: int, log: Callable[[str], None] = print) -> None:
        super().__init__()
        self.label, self.epochs, self.log = label, epochs, log

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        validation = f"val_loss {logs['val_loss']:.4f} " if "val_loss" in logs else ""
        self.log(f"{self.label} epoch {epoch + 1}/{self.epochs}: "
                 f"loss {logs.get('loss', np.nan):.4f} {validation}lr {rate:.2g} "
                 f"({time.perf_counter() - self.started:.1f} s)")


@dataclass
class TrainedNetwork:
    """A fitted network with its learning curves and timing."""

    name: str
    dropout: float
    model: keras.Model
    history: dict[str, list[float]]
    best_epoch: int
    train_seconds: float
    epoch_seconds: list[float] = field(default_factory=list)


class _EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.seconds.append(time.perf_counter() - self.started)


def fit_compiled(model: keras.Model, train: tf.data.Dataset, validate: tf.data.Dataset,
                 params: ModelParams, label: str, log: Callable[[str], None] = print
                 ) -> tuple[dict[str, list[float]], float, list[float], int]:
    """Train a compiled network the way every baseline-stage network is trained; return its
    history, the training seconds, the seconds of each epoch and the epoch whose weights it
    keeps (not always the lowest validation loss: a gain below MIN_IMPROVEMENT is none)."""
    timer = _EpochTimer()
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=params.patience,
                                            min_delta=MIN_IMPROVEMENT, restore_best_weights=True)
    callbacks = [
        # Validation, early stopping and the restored best weights all use the averaged weights.
        keras.callbacks.SwapEMAWeights(swap_on_epoch=True),
        stopper,
        # Halving the step size as soon as validation stalls lets MAE settle on the median.
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                          patience=max(1, params.patience // 4),
                                          min_delta=MIN_IMPROVEMENT),
        timer,
        EpochLogger(label, params.epochs, log),
    ]
    started = time.perf_counter()
    fitted = model.fit(train, validation_data=validate, epochs=params.epochs,
                       callbacks=callbacks, shuffle=False, verbose=0)
    history = {k: [float(v) for v in values] for k, values in fitted.history.items()}
    return history, time.perf_counter() - started, timer.seconds, stopper.best_epoch + 1


def fit_network(name: str, features: FeatureSet, params: ModelParams, dropout: float,
                log: Callable[[str], None] = print) -> TrainedNetwork:
    """Seed, build and train a network; stop early on validation loss, keep the best weights."""
    if params.epochs < 1 or params.batch_size < 1:
        raise SessionlenError(f"epochs and batch_size must be positive, got {params.epochs}, "
                              f"{params.batch_size}")
    seed_everything(params.seed)
    model = build_network(name, features, params.hidden_dim, dropout, params.no_layers,
                          params.head_units)
    steps = -(-len(features.rows["train"]) // params.batch_size)
    model.compile(optimizer=averaging_optimizer(params.optimizer, params.learning_rate, steps),
                  loss=_loss(params.loss_func))
    train = make_dataset(features, features.rows["train"], params.batch_size, True, params.seed)
    validate = make_dataset(features, features.rows["validate"], PREDICT_BATCH, False, params.seed)
    history, seconds, epoch_seconds, best_epoch = fit_compiled(
        model, train, validate, params, f"{name} (dropout {dropout:g})", log)
    return TrainedNetwork(name, dropout, model, history, best_epoch=best_epoch,
                          train_seconds=seconds, epoch_seconds=epoch_seconds)


def refit_network(trained: TrainedNetwork, features: FeatureSet, params: ModelParams,
                  log: Callable[[str], None] = print) -> tuple[keras.Model, float]:
    """The same network trained again from its seed on the train and validation rows, for the
    epochs whose weights it kept, each at the learning rate it had then: the network that
    predicts the test rows, and its training seconds.

    Once the stopping epoch and the schedule are chosen on validation, the validation targets
    have nothing left to choose and become training data: a fifth more sessions, and the ones
    closest in time to the test split, which matters when listeners drift. With nothing held
    out, nothing is monitored: the run replays the chosen epochs and keeps the averaged
    weights at their end.
    """
    rates = trained.history.get("learning_rate")
    if not rates or len(rates) < trained.best_epoch:
        raise SessionlenError(f"{trained.name}: no learning rate recorded for the "
                              f"{trained.best_epoch} epochs to replay")
    rows = np.r_[features.rows["train"], features.rows["validate"]]
    seed_everything(params.seed)
    model = build_network(trained.name, features, params.hidden_dim, trained.dropout,
                          params.no_layers, params.head_units)
    steps = -(-len(rows) // params.batch_size)
    model.compile(optimizer=averaging_optimizer(params.optimizer, params.learning_rate, steps),
                  loss=_loss(params.loss_func))
    label = f"{trained.name} (dropout {trained.dropout:g}) refit"
    started = time.perf_counter()
    model.fit(make_dataset(features, rows, params.batch_size, True, params.seed),
              epochs=trained.best_epoch, shuffle=False, verbose=0,
              callbacks=[keras.callbacks.LearningRateScheduler(lambda epoch, _: rates[epoch]),
                         EpochLogger(label, trained.best_epoch, log)])
    model.optimizer.finalize_variable_values(model.trainable_variables)
    return model, time.perf_counter() - started


def predict_seconds(model: keras.Model, features: FeatureSet, rows: np.ndarray) -> np.ndarray:
    """Predicted session lengths in seconds for `rows`."""
    dataset = make_dataset(features, rows, PREDICT_BATCH, False, seed=0)
    return features.target_scaler.decode(model.predict(dataset, verbose=0))
