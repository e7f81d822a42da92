"""The blend of the point models: weights chosen on validation only, its validation predictions
cross-fitted over users so it competes fairly in the validation pick, seeded."""

from __future__ import annotations

import numpy as np
import pytest
from test_evaluation import _experiment

from utils.baseline import experiment
from utils.baseline.blend import fit_blend, greedy_weights, user_folds
from utils.baseline.experiment_state import ModelResult
from utils.core import columns as C
from utils.core import evaluation
from utils.core.errors import SessionlenError


def test_weights_are_chosen_on_validation_never_on_test(tmp_path):
    run = _experiment(tmp_path)
    run.results.append(ModelResult(
        "good_on_validation", "network", {}, run.actual_val_s * 1.05, run.actual_s * 3.0))
    run.results.append(ModelResult(
        "good_on_test", "lightgbm", {}, run.actual_val_s * 3.0, run.actual_s.copy()))
    weights = experiment.train_blend(run)
    assert weights.loc["good_on_validation", "weight"] == 1.0
    assert weights.loc["good_on_test", "weight"] == 0.0
    blend = run.results[-1]
    assert blend.kind == "blend" and blend.params["weights"] == {"good_on_validation": 1.0}
    np.testing.assert_allclose(blend.predictions_s, run.actual_s * 3.0)


def test_validation_predictions_are_cross_fitted_so_fitted_noise_does_not_win(tmp_path):
    """An honest model and five that add pure noise to it: weights chosen on all validation rows
    put some weight on noise that happens to cancel the honest model's errors there, and that
    in-sample blend would beat the honest model on validation; scored on the users its weights
    were not chosen on, the blend is worse, and the honest model stays the pick."""
    run = _experiment(tmp_path)
    rng = np.random.default_rng(2)
    actual_val, actual = run.actual_val_s, run.actual_s
    honest_val = actual_val * np.exp(rng.normal(0.0, 0.3, len(actual_val)))
    honest = actual * np.exp(rng.normal(0.0, 0.3, len(actual)))
    run.results.append(ModelResult("honest", "network", {}, honest_val, honest))
    for i in range(5):
        run.results.append(ModelResult(
            f"noise_{i}", "lightgbm", {},
            honest_val * np.exp(rng.normal(0.0, 1.0, len(actual_val))),
            honest * np.exp(rng.normal(0.0, 1.0, len(actual)))))
    log_members = np.log1p(np.column_stack([r.val_predictions_s for r in run.results[-6:]]))
    in_sample = np.expm1(log_members @ greedy_weights(log_members, actual_val))
    assert evaluation.mae(actual_val, in_sample) < evaluation.mae(actual_val, honest_val)

    experiment.train_blend(run)
    table = experiment.results_table(run).set_index("label")
    assert table.loc["blend", "val_mae_s"] > table.loc["honest", "val_mae_s"]
    assert table.loc["honest", "selected"] and not table.loc["blend", "selected"]


def test_each_validation_row_is_predicted_with_weights_chosen_without_its_user():
    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(12), 5)
    actual = rng.lognormal(7.0, 1.0, len(users))
    members = actual[:, None] * np.exp(rng.normal(0.0, 0.5, (len(users), 3)))
    blend = fit_blend(members, actual, users, members, seed=1)
    fold = user_folds(users, seed=1)
    for held_out, weights in enumerate(blend.fold_weights):
        rows = fold == held_out
        again = greedy_weights(np.log1p(members[~rows]), actual[~rows])
        np.testing.assert_array_equal(weights, again)
        np.testing.assert_allclose(blend.val_predictions_s[rows],
                                   np.expm1(np.log1p(members[rows]) @ weights))
    np.testing.assert_array_equal(blend.weights, greedy_weights(np.log1p(members), actual))
    # No user is in both halves, and both halves have users.
    assert all(len(set(fold[users == u])) == 1 for u in np.unique(users))
    assert set(fold) == {0, 1}


def test_blend_is_seeded_and_reproducible():
    rng = np.random.default_rng(4)
    users = np.repeat(np.arange(20), 4)
    actual = rng.lognormal(7.0, 1.0, len(users))
    members = actual[:, None] * np.exp(rng.normal(0.0, 0.6, (len(users), 4)))
    first, again = (fit_blend(members, actual, users, members[:10], seed=5) for _ in range(2))
    np.testing.assert_array_equal(first.val_predictions_s, again.val_predictions_s)
    np.testing.assert_array_equal(first.predictions_s, again.predictions_s)
    assert np.isclose(first.weights.sum(), 1.0) and (first.weights >= 0).all()
    assert not np.array_equal(user_folds(users, seed=5), user_folds(users, seed=6))


def test_blend_needs_point_models_and_two_validation_users(tmp_path):
    with pytest.raises(SessionlenError, match="before blending"):
        experiment.train_blend(_experiment(tmp_path))
    with pytest.raises(SessionlenError, match="at least 2 validation users"):
        fit_blend(np.ones((3, 2)), np.ones(3), np.zeros(3), np.ones((2, 2)), seed=1)


def test_no_blend_with_one_validation_user(tmp_path, monkeypatch):
    run = _experiment(tmp_path)
    role_frame = type(run.features).role_frame

    def one_validation_user(features, role):
        frame = role_frame(features, role)
        return frame.assign(**{C.USER_ID: frame[C.USER_ID].iloc[0]}) if role == "validate" \
            else frame

    monkeypatch.setattr(type(run.features), "role_frame", one_validation_user)
    run.results.append(ModelResult("net", "network", {}, run.actual_val_s, run.actual_s))
    note = experiment.train_blend(run)
    assert list(note.columns) == ["not blended"]
    assert note.iloc[0, 0].startswith("1 validation user(s)")
    assert "blend" not in {r.kind for r in run.results}
