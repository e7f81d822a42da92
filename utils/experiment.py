"""The baseline stage's experiment: every model and baseline scored on the same test rows.

The notebook `baseline/2_train_and_test_model` calls these steps in order: build the features,
compute the baselines, train the networks (one per architecture and dropout value) and LightGBM,
tabulate the metrics, append them to WORK/results/experiments.csv, draw the figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from utils import columns as C
from utils import evaluation, plots
from utils.baselines import BASELINES, KEY_COLUMNS, ORACLE, baseline_predictions
from utils.boosting import BoostingSettings, TrainedBooster, fit_lightgbm, predict_lightgbm
from utils.config import ModelParams, WorkLayout
from utils.errors import DatasetTooSmallError, SessionlenError
from utils.features import FeatureSet, build_feature_set
from utils.results import append_experiments, new_run_id, utc_now
from utils.splits import split_minimum
from utils.stage_io import require_stage, write_manifest
from utils.summaries import load_summaries, load_user_ids
from utils.work_lock import stage_lock

STAGE = "baseline"
MANIFEST_STAGE = "baseline_models"
NORMALIZER = "user_mean"
HEADROOM_REFERENCE = "user_median"
GROUND_TRUTH = "ground_truth"


@dataclass
class ModelResult:
    """One evaluated model or baseline: its test predictions (FeatureSet test order) and cost.

    `model` is the experiments.csv name (gru for every dropout value, the dropout being in
    `params`); `label` tells the variants apart in tables and figures.
    """

    model: str
    kind: str
    params: dict[str, Any]
    predictions_s: np.ndarray
    train_seconds: float = 0.0
    curves: dict[str, list[float]] | None = None
    label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or self.model


@dataclass
class Experiment:
    """The state a notebook carries from step to step."""

    work: Path
    features: FeatureSet
    splits: dict[str, pd.DataFrame]
    results: list[ModelResult] = field(default_factory=list)
    run_id: str = field(default_factory=new_run_id)

    @property
    def actual_s(self) -> np.ndarray:
        """Actual lengths (seconds) of the test rows."""
        return self.features.lengths_s[self.features.rows["test"]]

    def predictions(self) -> dict[str, np.ndarray]:
        """Test predictions (seconds) by model label."""
        return {r.label: r.predictions_s for r in self.results}


def start_experiment(work: str | Path, sequence_length: int, train_file: str = "train",
                     validation_file: str = "validate", test_file: str = "test",
                     peer_groups: int = 4, seed: int = 1) -> Experiment:
    """Load WORK/summary_dir and build the features and sequences every model shares."""
    splits = load_summaries(Path(work))
    features = build_feature_set(splits, sequence_length, train_file, validation_file, test_file,
                                 peer_groups=peer_groups, seed=seed)
    check_split_sizes(Path(work), features)
    return Experiment(Path(work), features, splits)


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


def add_baselines(experiment: Experiment, raw_dir: str | Path | None) -> pd.DataFrame:
    """Score the naive baselines (and the oracle, if ground truth exists) on the test rows."""
    truth = Path(raw_dir) / GROUND_TRUTH if raw_dir else None
    truth = truth if truth is not None and truth.is_dir() else None
    names = experiment.features.split_names
    # Baselines are fit on the train role and predict the test role, whatever the folder names.
    roles = {"train": experiment.splits[names["train"]], "test": experiment.splits[names["test"]]}
    predicted = baseline_predictions(roles, truth, load_user_ids(experiment.work))
    test = experiment.features.role_frame("test")[KEY_COLUMNS]
    aligned = test.merge(predicted, on=KEY_COLUMNS, how="left", validate="one_to_one")
    names = [*BASELINES, *([ORACLE] if truth is not None else [])]
    for name in names:
        if name not in aligned or aligned[name].isna().any():
            raise SessionlenError(f"baseline {name!r} has no prediction for some test sessions")
        experiment.results.append(ModelResult(
            name, ORACLE if name == ORACLE else "baseline", {},
            aligned[name].to_numpy(dtype=np.float64)))
    return aligned


def network_params(params: ModelParams, dropout: float) -> dict[str, Any]:
    """The hyperparameters that define one trained network, for its results row."""
    keep = ("no_layers", "loss_func", "optimizer", "hidden_dim", "batch_size", "epochs",
            "sequence_length", "patience", "learning_rate", "seed")
    return {**{k: v for k, v in params.to_dict().items() if k in keep}, "dropout": dropout}


def train_networks(experiment: Experiment, params: ModelParams, compare_networks: bool = True,
                   log: Callable[[str], None] = print) -> pd.DataFrame:
    """Train each network once per dropout value; return one summary line per network."""
    from utils.models import fit_network, networks_to_train, predict_seconds

    if not params.dropout:
        raise SessionlenError("dropout must list at least one value (one network per value)")
    features, lines = experiment.features, []
    for name in networks_to_train(params, compare_networks):
        for dropout in params.dropout:
            trained = fit_network(name, features, params, dropout, log)
            label = f"{name} (dropout {dropout:g})"
            experiment.results.append(ModelResult(
                name, "network", network_params(params, dropout),
                predict_seconds(trained.model, features, features.rows["test"]),
                trained.train_seconds, trained.history, label))
            lines.append({"model": label, "epochs_run": len(trained.history["loss"]),
                          "best_epoch": trained.best_epoch,
                          "best_val_loss": min(trained.history["val_loss"]),
                          "seconds_per_epoch": float(np.mean(trained.epoch_seconds)),
                          "train_seconds": trained.train_seconds})
    return pd.DataFrame(lines).set_index("model")


def train_lightgbm(experiment: Experiment, settings: BoostingSettings,
                   log: Callable[[str], None] = print) -> TrainedBooster:
    """Fit LightGBM on the same train rows and features, and score it on the test rows."""
    trained = fit_lightgbm(experiment.features, settings, log)
    experiment.results.append(ModelResult(
        "lightgbm", "lightgbm", {**settings.to_dict(), "best_round": trained.best_round},
        predict_lightgbm(trained, experiment.features, experiment.features.rows["test"]),
        trained.train_seconds, trained.curves))
    return trained


def results_table(experiment: Experiment) -> pd.DataFrame:
    """One row per model: MAE, RMSE, normalized MAE and headroom captured, best first."""
    actual = experiment.actual_s
    mae = {r.label: evaluation.mae(actual, r.predictions_s) for r in experiment.results}
    if NORMALIZER not in mae:
        raise SessionlenError("baselines must be added before the results table")
    oracle_mae = mae.get(ORACLE)
    rows = []
    for r in experiment.results:
        rows.append({
            "label": r.label, "model": r.model, "kind": r.kind, "n_test": len(actual),
            "mae_s": mae[r.label],
            "rmse_s": evaluation.rmse(actual, r.predictions_s),
            "baseline_mae_s": mae[NORMALIZER],
            "normalized_mae": evaluation.normalized_mae(mae[r.label], mae[NORMALIZER]),
            "headroom_captured": (np.nan if oracle_mae is None else evaluation.headroom_captured(
                mae[r.label], mae[HEADROOM_REFERENCE], oracle_mae)),
            "train_seconds": r.train_seconds, "params": json.dumps(r.params, sort_keys=True),
        })
    return pd.DataFrame(rows).sort_values("mae_s", ignore_index=True)


def best_model(table: pd.DataFrame, kinds: tuple[str, ...] = ("network", "lightgbm")) -> str:
    """The label of the trained model with the lowest test MAE among `kinds`."""
    trained = table[table["kind"].isin(kinds)]
    if trained.empty:
        raise SessionlenError(f"no trained model of kind {', '.join(kinds)} in the results")
    return str(trained.loc[trained["mae_s"].idxmin(), "label"])


def record_results(experiment: Experiment, table: pd.DataFrame) -> Path:
    """Append every model's row to WORK/results/experiments.csv and record the stage manifest."""
    rows = table.assign(run_id=experiment.run_id, finished_at=utc_now(), stage=STAGE)
    layout = WorkLayout(experiment.work)
    n_test = int(table["n_test"].iloc[0])
    with stage_lock(layout.results, exclusive=True):
        path = append_experiments(experiment.work, rows[C.EXPERIMENT_COLUMNS])
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
    best = best_model(table)
    compared = [best, *BASELINES, *([ORACLE] if ORACLE in experiment.predictions() else [])]
    by_model = experiment.predictions()
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
        plots.save_figure(fig, figures_dir / f"{STAGE}_{name}.png")
    return figures


def headline(table: pd.DataFrame) -> pd.DataFrame:
    """The results table as the notebook shows it: the metrics that decide, best first."""
    shown = ["label", "kind", "mae_s", "rmse_s", "normalized_mae", "headroom_captured",
             "train_seconds"]
    return table[shown].set_index("label").round(4)
