"""The baseline stage's experiment: every model and baseline scored on the same test rows.

The notebook `baseline/2_train_and_test_model` calls these steps in order: build the features,
compute the baselines, train the networks (one per architecture and dropout value) and LightGBM,
blend them (utils.baseline.blend), tabulate the metrics, append them to
WORK/results/experiments.csv, draw the figures.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from utils.baseline import distribution
from utils.baseline.baselines import BASELINES, KEY_COLUMNS, ORACLE, baseline_predictions
from utils.baseline.blend import BLEND_STEPS, FOLDS, fit_blend
from utils.baseline.boosting import (
    BoostingSettings,
    ChosenLightGBM,
    TrainedBooster,
    fit_chosen_lightgbm,
)
from utils.baseline.experiment_state import Experiment, ModelResult
from utils.baseline.features import FeatureSet, build_feature_set
from utils.baseline.splits import split_minimum
from utils.baseline.summary_dir import load_summaries, load_user_ids
from utils.core import columns as C
from utils.core import evaluation, plots
from utils.core.columns import GROUND_TRUTH
from utils.core.config import ModelParams, WorkLayout
from utils.core.errors import DatasetTooSmallError, SessionlenError
from utils.core.parallel import worker_count
from utils.core.results import append_comparisons, append_experiments, utc_now
from utils.core.stage_io import require_stage, write_manifest
from utils.core.work_lock import stage_lock

STAGE = "baseline"
MANIFEST_STAGE = "baseline_models"
NORMALIZER = "user_mean"
# The point models the blend averages; the blend is a trained point model too, picked like them.
BLENDED_KINDS = ("network", "lightgbm")
TRAINED_KINDS = (*BLENDED_KINDS, "blend")


def start_experiment(work: str | Path, sequence_length: int,
                     train_file: str = ModelParams.train_file,
                     validation_file: str = ModelParams.validation_file,
                     test_file: str = ModelParams.test_file,
                     peer_groups: int | None = ModelParams.peer_groups,
                     seed: int = ModelParams.seed) -> Experiment:
    """Load WORK/summary_dir and build the features and sequences every model shares."""
    splits = load_summaries(Path(work))
    features = build_feature_set(splits, sequence_length, train_file, validation_file, test_file,
                                 peer_groups=peer_groups, seed=seed)
    check_split_sizes(Path(work), features)
    return Experiment(Path(work), features, splits, seed=seed)


def check_split_sizes(work: Path, features: FeatureSet) -> None:
    """Fail with DatasetTooSmallError, saying what the split needs, if a role has no sessions."""
    empty = [role for role in ("train", "validate", "test") if not len(features.rows[role])]
    if empty:
        params = require_stage(WorkLayout(work).summary_dir, "summarize")["parameters"]
        raise DatasetTooSmallError(
            f"the {features.split_names[empty[0]]!r} split has no sessions, and the models need "
            f"train, validation and test sessions: {split_minimum(params)}")


def split_sizes(experiment: Experiment) -> pd.DataFrame:
    """Sessions and users per role: what the models train, stop and are scored on."""
    features = experiment.features
    return pd.DataFrame([
        {"role": role, "split": features.split_names[role], "sessions": len(rows),
         "users": features.sessions[C.USER_ID].iloc[rows].nunique()}
        for role, rows in features.rows.items()
    ]).set_index("role")


def _aligned_baselines(experiment: Experiment, role: str, truth: Path | None,
                       user_ids: pd.DataFrame) -> pd.DataFrame:
    """Every baseline's predictions for the rows of `role`, in FeatureSet role order."""
    names = experiment.features.split_names
    predicted = baseline_predictions(experiment.splits, truth, user_ids, train=names["train"],
                                     predict=names[role])
    rows = experiment.features.role_frame(role)[KEY_COLUMNS]
    aligned = rows.merge(predicted, on=KEY_COLUMNS, how="left", validate="one_to_one")
    aligned.attrs = dict(predicted.attrs)
    return aligned


def add_baselines(experiment: Experiment, raw_dir: str | Path | None) -> pd.DataFrame:
    """Score the naive baselines (and the oracle, if ground truth exists); the test predictions.

    Frozen baselines are fit on the train role and running ones read all earlier sessions, for
    the validation rows (where the reference baseline is chosen) and the test rows.
    """
    truth = Path(raw_dir) / GROUND_TRUTH if raw_dir else None
    truth = truth if truth is not None and truth.is_dir() else None
    user_ids = load_user_ids(experiment.work)
    validate = _aligned_baselines(experiment, "validate", truth, user_ids)
    test = _aligned_baselines(experiment, "test", truth, user_ids)
    names = [*BASELINES, *([ORACLE] if truth is not None else [])]
    for name in names:
        for frame in (validate, test):
            if name not in frame or frame[name].isna().any():
                raise SessionlenError(f"baseline {name!r} has no prediction for some sessions")
        experiment.results.append(ModelResult(
            name, ORACLE if name == ORACLE else "baseline", {},
            validate[name].to_numpy(dtype=np.float64), test[name].to_numpy(dtype=np.float64)))
    if truth is not None:
        experiment.oracle_coverage = {"test_sessions": len(test),
                                      "exact_matches": int(test.attrs["oracle_exact_rows"])}
    return test


def network_params(params: ModelParams, dropout: float) -> dict[str, Any]:
    """The hyperparameters that define one trained network, for its results row."""
    keep = ("no_layers", "loss_func", "optimizer", "hidden_dim", "head_units", "batch_size",
            "epochs", "sequence_length", "patience", "learning_rate", "refit_networks", "seed")
    return {**{k: v for k, v in params.to_dict().items() if k in keep}, "dropout": dropout}


def feature_params(features: FeatureSet) -> dict[str, Any]:
    """The choices made while building the features, for a trained model's results row."""
    return {"peer_groups": features.peer_groups}


def train_networks(experiment: Experiment, params: ModelParams,
                   compare_networks: bool = ModelParams.compare_networks,
                   log: Callable[[str], None] = print) -> pd.DataFrame:
    """Train each network once per dropout value, and refit it on train and validation rows
    for the test rows if `params.refit_networks` (models.refit_network); one summary line per
    network."""
    from utils.baseline.models import (
        fit_network,
        networks_to_train,
        predict_seconds,
        refit_network,
    )

    if not params.dropout:
        raise SessionlenError("dropout must list at least one value (one network per value)")
    features, lines = experiment.features, []
    for name in networks_to_train(params, compare_networks):
        for dropout in params.dropout:
            trained = fit_network(name, features, params, dropout, log)
            test_model, refit_seconds = (refit_network(trained, features, params, log)
                                         if params.refit_networks else (trained.model, 0.0))
            label = f"{name} (dropout {dropout:g})"
            experiment.results.append(ModelResult(
                name, "network", {**network_params(params, dropout), **feature_params(features)},
                predict_seconds(trained.model, features, features.rows["validate"]),
                predict_seconds(test_model, features, features.rows["test"]),
                trained.train_seconds + refit_seconds, trained.history, label))
            lines.append({"model": label, "epochs_run": len(trained.history["loss"]),
                          "best_epoch": trained.best_epoch,
                          "best_val_loss": min(trained.history["val_loss"]),
                          "seconds_per_epoch": float(np.mean(trained.epoch_seconds)),
                          "train_seconds": trained.train_seconds,
                          "refit_seconds": refit_seconds})
    return pd.DataFrame(lines).set_index("model")


@dataclass
class LightGBMJob:
    """The LightGBM work of the stage being done on a thread of its own, and the lines it
    logged."""

    future: Future[ChosenLightGBM]
    lines: list[str]


def start_lightgbm(experiment: Experiment, candidates: list[BoostingSettings]) -> LightGBMJob:
    """Start fitting the LightGBM candidates, the refit of the chosen one and their predictions
    (boosting.fit_chosen_lightgbm) on a thread of their own; `train_lightgbm` collects them and
    prints what they logged.

    Started before the networks train, they use the core a network leaves idle: its small
    recurrent steps keep about one core busy. Each fit is deterministic whatever runs beside it.
    """
    for settings in candidates:
        settings.lightgbm_params()
    lines: list[str] = []
    pool = ThreadPoolExecutor(1, thread_name_prefix="lightgbm")
    # Lines are kept, not printed, so that they never cut into the networks' epoch lines.
    future = pool.submit(fit_chosen_lightgbm, experiment.features, candidates, lines.append)
    pool.shutdown(wait=False)
    return LightGBMJob(future, lines)


def train_lightgbm(experiment: Experiment, candidates: list[BoostingSettings] | LightGBMJob,
                   log: Callable[[str], None] = print, refit: bool = True) -> TrainedBooster:
    """Fit LightGBM with each candidate setting on the same train rows and features (or wait for
    the fits `start_lightgbm` started) and keep the one with the lowest validation MAE; its
    validation predictions are scored, and the test rows are predicted by the same setting
    refit on train and validation rows for the rounds it kept if `refit`
    (boosting.refit_on_validation_rows). Returns the booster chosen on validation."""
    features = experiment.features
    if isinstance(candidates, LightGBMJob):
        chosen = candidates.future.result()
        for line in candidates.lines:
            log(line)
    else:
        chosen = fit_chosen_lightgbm(features, candidates, log, worker_count(cap=2), refit)
    trained = chosen.trained
    experiment.results.append(ModelResult(
        "lightgbm", "lightgbm",
        {**chosen.settings.to_dict(), "best_round": trained.best_round,
         "candidates": len(trained.candidates), "refit_on_validation": chosen.refit,
         **feature_params(features)},
        chosen.val_predictions_s, chosen.predictions_s,
        float(trained.candidates["train_seconds"].sum())
        + (chosen.test_booster.train_seconds if chosen.refit else 0.0), trained.curves))
    return trained


def train_blend(experiment: Experiment, steps: int = BLEND_STEPS) -> pd.DataFrame:
    """Blend every network and LightGBM trained so far (utils.baseline.blend): its validation
    predictions cross-fitted over validation users, its test ones with weights chosen on all of
    them. The weights, per model: chosen on all validation users and on each half.

    With fewer validation users than folds there is no blend (and a one-row table says why):
    its validation score would come from the rows its weights were chosen on.
    """
    members = [r for r in experiment.results if r.kind in BLENDED_KINDS]
    if not members:
        raise SessionlenError("train the networks or LightGBM before blending them")
    users = experiment.features.role_frame("validate")[C.USER_ID].to_numpy()
    n_users = len(np.unique(users))
    if n_users < FOLDS:
        return pd.DataFrame({"not blended": [
            f"{n_users} validation user(s): the blend's validation predictions are "
            f"cross-fitted over users, which needs at least {FOLDS}"]})
    started = time.perf_counter()
    blend = fit_blend(np.column_stack([r.val_predictions_s for r in members]),
                      experiment.actual_val_s, users,
                      np.column_stack([r.predictions_s for r in members]), experiment.seed, steps)
    weights = {r.label: float(w) for r, w in zip(members, blend.weights, strict=True) if w > 0}
    experiment.results.append(ModelResult(
        "blend", "blend", {"weights": weights, "steps": steps, "seed": experiment.seed,
                           **feature_params(experiment.features)},
        blend.val_predictions_s, blend.predictions_s, time.perf_counter() - started))
    return pd.DataFrame({"weight": blend.weights,
                         **{f"weight_half_{i + 1}": w for i, w in enumerate(blend.fold_weights)}},
                        index=pd.Index([r.label for r in members], name="model"))


def reference_baseline(val_mae: dict[str, float], baselines: Iterable[str] = BASELINES) -> str:
    """The naive baseline with the lowest validation MAE: the reference of headroom_captured."""
    scored = [name for name in baselines if name in val_mae]
    reference = evaluation.lowest_on_validation(val_mae, scored)
    if reference is None:
        raise SessionlenError("baselines must be added before the results table")
    return reference


def _oracle_params(experiment: Experiment, result: ModelResult) -> dict[str, Any]:
    """A result's params; the oracle's also say how its test sessions met the planted ones."""
    return {**result.params, **experiment.oracle_coverage} if result.kind == ORACLE \
        else result.params


def results_table(experiment: Experiment) -> pd.DataFrame:
    """One row per model: validation MAE, then test metrics with their bootstrap intervals.

    The reference baseline and the selected model are chosen on validation MAE; the test
    columns are reported, never compared to choose. Distributional models (kind distribution)
    are scored on their medians like the others but never selected as the point model; their
    quantiles fill the distribution columns (distribution), empty for point-only models.
    Sorted by test MAE for reading.
    """
    actual, actual_val = experiment.actual_s, experiment.actual_val_s
    val_mae = {r.label: evaluation.mae(actual_val, r.val_predictions_s)
               for r in experiment.results}
    if NORMALIZER not in val_mae:
        raise SessionlenError("baselines must be added before the results table")
    reference = reference_baseline(val_mae)
    oracle = ORACLE if ORACLE in val_mae else None
    scores = evaluation.bootstrap_scores(actual, experiment.predictions(), experiment.test_users,
                                         seed=experiment.seed)
    metrics = evaluation.score_table(scores, NORMALIZER, reference, oracle)
    selected = selected_model(experiment.results, val_mae)
    spread = distribution.distribution_scores(experiment)
    rows = [{
        "label": r.label, "model": r.model, "kind": r.kind, "n_test": len(actual),
        **evaluation.metric_columns(r.label, actual, r.predictions_s, val_mae, metrics,
                                    NORMALIZER, reference, selected),
        "train_seconds": r.train_seconds,
        "params": json.dumps(_oracle_params(experiment, r), sort_keys=True),
        **spread.loc[r.label].to_dict(),
    } for r in experiment.results]
    return pd.DataFrame(rows).sort_values("mae_s", ignore_index=True)


def selected_model(results: list[ModelResult], val_mae: dict[str, float],
                   kinds: tuple[str, ...] = TRAINED_KINDS) -> str | None:
    """The label of the trained model with the lowest validation MAE (None if none trained)."""
    return evaluation.lowest_on_validation(val_mae, [r.label for r in results if r.kind in kinds])


def best_model(table: pd.DataFrame) -> str:
    """The label of the model selected on validation (see `results_table`)."""
    chosen = table.loc[table["selected"], "label"]
    if chosen.empty:
        raise SessionlenError(f"no trained model of kind {', '.join(TRAINED_KINDS)} in the "
                              f"results")
    return str(chosen.iloc[0])


def comparisons(experiment: Experiment, table: pd.DataFrame,
                pairs: list[tuple[str, str]] | None = None) -> pd.DataFrame:
    """Paired test-MAE differences with their bootstrap intervals, and what they allow to say.

    By default the selected model against every other trained model and the reference baseline.
    A model is called better only where the interval of the difference excludes zero.
    """
    if pairs is None:
        best = best_model(table)
        others = table.loc[table["kind"].isin(TRAINED_KINDS) & (table["label"] != best), "label"]
        pairs = [(best, str(other)) for other in [*others, table["reference"].iloc[0]]]
    scores = evaluation.bootstrap_scores(experiment.actual_s, experiment.predictions(),
                                         experiment.test_users, seed=experiment.seed)
    rows = []
    for first, second in pairs:
        diff, low, high = scores.difference(first, second)
        rows.append({"model": first, "versus": second, "diff_mae_s": diff,
                     "diff_ci_low": low, "diff_ci_high": high,
                     "verdict": evaluation.verdict(first, second, low, high)})
    return pd.DataFrame(rows)


def record_results(experiment: Experiment, table: pd.DataFrame, compared: pd.DataFrame
                   ) -> Path:
    """Append every model's row to experiments.csv, the comparisons to comparisons.csv, and
    record the stage manifest."""
    rows = table.assign(run_id=experiment.run_id, finished_at=utc_now(), stage=STAGE)
    layout = WorkLayout(experiment.work)
    n_test = int(table["n_test"].iloc[0])
    with stage_lock(layout.results, exclusive=True):
        path = append_experiments(experiment.work, rows[C.EXPERIMENT_COLUMNS])
        append_comparisons(experiment.work,
                           compared.assign(run_id=experiment.run_id, stage=STAGE))
        write_manifest(
            layout.results, MANIFEST_STAGE, inputs=[layout.summary_dir],
            parameters={"run_id": experiment.run_id, "models": list(table["label"])},
            rows_in=n_test, rows_out=n_test, rows_rejected=0, outputs=[layout.experiments.name],
            timings={"train": float(table["train_seconds"].sum())},
        )
    return path


def draw_figures(experiment: Experiment, table: pd.DataFrame) -> dict[str, Figure]:
    """The comparison figures, saved under WORK/results/figures/ and returned for display."""
    figures_dir = WorkLayout(experiment.work).figures
    best, by_model = best_model(table), experiment.predictions()
    compared = list(dict.fromkeys([best, table["reference"].iloc[0], NORMALIZER,
                                   *([ORACLE] if ORACLE in by_model else [])]))
    curves = {r.label: r.curves for r in experiment.results if r.kind == "network" and r.curves}
    figures = {
        "mae_per_model": plots.plot_mae_per_model(table),
        "predicted_vs_actual": plots.plot_predicted_vs_actual(
            experiment.actual_s, by_model[best], best),
        "error_by_bucket": plots.plot_error_by_bucket(
            experiment.actual_s, {name: by_model[name] for name in compared}),
        "learning_curves": plots.plot_learning_curves(curves),
    }
    for name, fig in figures.items():
        plots.save_figure(fig, figures_dir / f"{STAGE}_{name}.png", experiment.run_id)
    return figures


def headline(table: pd.DataFrame) -> pd.DataFrame:
    """The results table as the notebook shows it: validation MAE (what picks), then the test
    metrics with their 95% intervals, best test MAE first."""
    shown = ["label", "kind", "selected", "val_mae_s", "mae_s", "mae_ci_low", "mae_ci_high",
             "normalized_mae", "headroom_captured", "headroom_ci_low", "headroom_ci_high",
             "diff_vs_reference_s", "train_seconds"]
    return table[shown].set_index("label").round(4)
