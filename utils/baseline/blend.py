"""The blend: a weighted average of the trained point models, its weights chosen on validation.

The point models see the same features, but each also fits its own share of the noise (its
architecture, its dropout, its trees), and with as much noise as a session's length carries
that share is a large part of each model's error. Averaging models whose errors are not
perfectly correlated cancels some of it. The average is taken in log1p space (a weighted
geometric mean of 1 + length): every model is fit to the median of the log length and its
errors are multiplicative.

The weights lie on the simplex, in steps of 1 / `steps`, and are chosen by greedy forward
selection with replacement: `steps` times, add the model whose extra share most lowers the MAE
in seconds, the metric the validation pick uses. The cost grows with the number of models, not
with the number of weight vectors, and the coarse steps keep the weights from chasing noise.

The weights are chosen on the validation rows, so the blend's MAE on those same rows would be
optimistic, and the blend would win the validation pick by what it fit there. Its validation
predictions are therefore cross-fitted over users: the validation users are split into two
seeded halves, and the weights chosen on one half predict the other. Whole users, because a
user's sessions share the user's habits: weights chosen on some of a user's sessions would
know the others. The weights for the test rows are then chosen on every validation user: the
same procedure on twice the rows (the cross-fitted score is, as in cross-validation, a slightly
pessimistic estimate of it), and one weight vector rather than the average of two that may
sit on different corners of the simplex.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utils.core.errors import SessionlenError

BLEND_STEPS = 10
FOLDS = 2


@dataclass(frozen=True)
class Blend:
    """The blend's weights (one per model, on the simplex) and its predictions in seconds.

    `val_predictions_s` are cross-fitted: each validation row is predicted with `fold_weights`
    chosen without its user. `predictions_s` (test rows) use `weights`, chosen on every
    validation row.
    """

    weights: np.ndarray
    fold_weights: np.ndarray
    val_predictions_s: np.ndarray
    predictions_s: np.ndarray


def greedy_weights(log_predictions: np.ndarray, actual_s: np.ndarray,
                   steps: int = BLEND_STEPS) -> np.ndarray:
    """Simplex weights, multiples of 1 / `steps`, for the columns of `log_predictions` (log1p
    seconds, rows x models): `steps` times add the model that most lowers the MAE in seconds
    (ties: the first model)."""
    if steps < 1:
        raise SessionlenError(f"blend steps must be positive, got {steps}")
    counts = np.zeros(log_predictions.shape[1])
    total = np.zeros(len(actual_s))
    for step in range(1, steps + 1):
        candidates = np.expm1((total[:, None] + log_predictions) / step)
        chosen = int(np.argmin(np.abs(candidates - actual_s[:, None]).mean(axis=0)))
        counts[chosen] += 1
        total += log_predictions[:, chosen]
    return counts / steps


def user_folds(users: np.ndarray, seed: int, folds: int = FOLDS) -> np.ndarray:
    """The fold of each row: users (sorted, then shuffled with `seed`) dealt out in turn."""
    unique, index = np.unique(np.asarray(users), return_inverse=True)
    if len(unique) < folds:
        raise SessionlenError(f"the blend needs at least {folds} validation users, got "
                              f"{len(unique)}")
    fold_of_user = np.empty(len(unique), dtype=np.int64)
    fold_of_user[np.random.default_rng(seed).permutation(len(unique))] = \
        np.arange(len(unique)) % folds
    return fold_of_user[index]


def fit_blend(val_predictions_s: np.ndarray, actual_val_s: np.ndarray, val_users: np.ndarray,
              test_predictions_s: np.ndarray, seed: int, steps: int = BLEND_STEPS) -> Blend:
    """Blend the models (columns of the prediction matrices, seconds) on the validation rows,
    cross-fitted over `val_users` (module docstring); the test rows only receive predictions."""
    val_log = np.log1p(np.asarray(val_predictions_s, dtype=np.float64))
    test_log = np.log1p(np.asarray(test_predictions_s, dtype=np.float64))
    actual = np.asarray(actual_val_s, dtype=np.float64)
    if val_log.ndim != 2 or val_log.shape[1] < 1 or test_log.shape[1:] != val_log.shape[1:]:
        raise SessionlenError("the blend needs the same models' predictions, one column each, "
                              "for the validation and the test rows")
    if len(val_log) != len(actual) or len(actual) != len(val_users):
        raise SessionlenError("validation predictions, actual lengths and users differ in length")
    fold = user_folds(val_users, seed)
    cross_fitted = np.empty(len(actual))
    fold_weights = []
    for held_out in range(FOLDS):
        fit, scored = fold != held_out, fold == held_out
        weights = greedy_weights(val_log[fit], actual[fit], steps)
        fold_weights.append(weights)
        cross_fitted[scored] = np.expm1(val_log[scored] @ weights)
    weights = greedy_weights(val_log, actual, steps)
    return Blend(weights, np.vstack(fold_weights), cross_fitted, np.expm1(test_log @ weights))
