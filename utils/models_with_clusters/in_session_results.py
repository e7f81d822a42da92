"""Scoring, recording and drawing the in-session stage: one results table per checkpoint.

Per checkpoint, the model selected is the trained model with the lowest validation MAE and the
reference of headroom_captured is the baseline with the lowest validation MAE; test MAE is
reported with 95% paired bootstrap intervals over users (utils.core.evaluation), and every trained
model is compared with every baseline on the same resamples.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from utils.baseline.baselines import ORACLE
from utils.baseline.distribution import point_only
from utils.baseline.experiment import TRAINED_KINDS, reference_baseline
from utils.core import columns as C
from utils.core import evaluation, plots
from utils.core.config import InSessionParams, WorkLayout
from utils.core.errors import SessionlenError
from utils.core.results import append_comparisons, append_experiments, utc_now
from utils.core.stage_io import write_manifest
from utils.core.work_lock import stage_lock
from utils.models_with_clusters.in_session import (
    BASELINES,
    NORMALIZER,
    STAGE,
    Checkpoint,
    InSessionRun,
)

MANIFEST_STAGE = "in_session_models"
FIGURE_NAME = "in_session_mae_by_checkpoint"
MARKERS = {"network": "o", "lightgbm": "s", "baseline": "^", ORACLE: "x"}


def _val_mae(point: Checkpoint) -> dict[str, float]:
    actual = point.data.length_s["validate"]
    return {r.model: evaluation.mae(actual, r.val_predictions_s) for r in point.results}


def _scores(run: InSessionRun, point: Checkpoint) -> evaluation.BootstrapScores:
    """Test MAE of every model of a checkpoint, in the same paired resamples of the users."""
    return evaluation.bootstrap_scores(point.data.length_s["test"],
                                       {r.model: r.predictions_s for r in point.results},
                                       point.users(run.features), seed=run.params.seed)


def checkpoint_table(run: InSessionRun, point: Checkpoint) -> pd.DataFrame:
    """One checkpoint's rows: validation MAE (what picks), test metrics with intervals."""
    val_mae = _val_mae(point)
    if NORMALIZER not in val_mae:
        raise SessionlenError("baselines must be added before the results table")
    reference = reference_baseline(val_mae, BASELINES)
    selected = evaluation.lowest_on_validation(
        val_mae, [r.model for r in point.results if r.kind in TRAINED_KINDS])
    oracle = ORACLE if ORACLE in val_mae else None
    metrics = evaluation.score_table(_scores(run, point), NORMALIZER, reference, oracle)
    actual = point.data.length_s["test"]
    rows = [{
        "label": r.model, "model": r.model, "kind": r.kind, "n_test": len(actual),
        **evaluation.metric_columns(r.model, actual, r.predictions_s, val_mae, metrics,
                                    NORMALIZER, reference, selected),
        "train_seconds": r.train_seconds,
        "params": json.dumps(r.params, sort_keys=True), C.CHECKPOINT_S: point.checkpoint_s,
    } for r in point.results]
    return pd.DataFrame(rows)


def results_table(run: InSessionRun) -> pd.DataFrame:
    """Every checkpoint's table, checkpoint by checkpoint, best test MAE first within one."""
    tables = [checkpoint_table(run, point) for point in run.checkpoints.values()]
    return pd.concat(tables, ignore_index=True).sort_values(
        [C.CHECKPOINT_S, "mae_s"], ignore_index=True)


def comparisons(run: InSessionRun, table: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint: each trained model minus each baseline (and the selected model minus the
    other trained models), test MAE with its paired interval and what it allows to say."""
    rows = []
    for e, point in run.checkpoints.items():
        mine = table[table[C.CHECKPOINT_S] == e]
        trained = list(mine.loc[mine["kind"].isin(TRAINED_KINDS), "model"])
        chosen = list(mine.loc[mine["selected"].astype(bool), "model"])
        pairs = [(m, b) for m in trained for b in BASELINES]
        pairs += [(c, m) for c in chosen for m in trained if m != c]
        scores = _scores(run, point)
        for first, second in pairs:
            diff, low, high = scores.difference(first, second)
            rows.append({C.CHECKPOINT_S: e, "model": first, "versus": second,
                         "diff_mae_s": diff, "diff_ci_low": low, "diff_ci_high": high,
                         "verdict": evaluation.verdict(first, second, low, high)})
    return pd.DataFrame(rows)


def acceptance(table: pd.DataFrame, compared: pd.DataFrame,
               baselines: tuple[str, ...] = BASELINES[:2]) -> pd.DataFrame:
    """Per checkpoint: does the model selected on validation beat each of `baselines` on test,
    with a paired 95% interval of the MAE difference entirely below zero?"""
    lines = []
    for e, mine in table.groupby(C.CHECKPOINT_S, sort=True):
        chosen = mine.loc[mine["selected"].astype(bool), "model"]
        if chosen.empty:
            continue
        best = str(chosen.iloc[0])
        line: dict[str, object] = {C.CHECKPOINT_S: e, "selected": best}
        for name in baselines:
            diff = compared[(compared[C.CHECKPOINT_S] == e) & (compared["model"] == best)
                            & (compared["versus"] == name)].iloc[0]
            line[f"vs {name}"] = (f"{diff['diff_mae_s']:+,.0f} [{diff['diff_ci_low']:+,.0f}, "
                                  f"{diff['diff_ci_high']:+,.0f}]")
            line[f"beats {name}"] = bool(diff["diff_ci_high"] < 0)
        lines.append(line)
    frame = pd.DataFrame(lines).set_index(C.CHECKPOINT_S)
    frame["holds"] = frame[[f"beats {name}" for name in baselines]].all(axis=1)
    return frame


def record_results(run: InSessionRun, table: pd.DataFrame, compared: pd.DataFrame) -> None:
    """Append the rows (stage in_session, with checkpoint_s) to experiments.csv and
    comparisons.csv, and record the stage manifest."""
    layout = WorkLayout(run.work)
    rows = point_only(table).assign(run_id=run.run_id, finished_at=utc_now(), stage=STAGE)
    with stage_lock(layout.results, exclusive=True):
        append_experiments(run.work, rows[C.EXPERIMENT_FILE_COLUMNS])
        append_comparisons(run.work, compared.assign(run_id=run.run_id, stage=STAGE))
        write_manifest(
            layout.results, MANIFEST_STAGE, inputs=[layout.summary_dir, layout.final_dir],
            parameters={"run_id": run.run_id, **run.params.to_dict(),
                        "skipped_checkpoints": {str(e): why for e, why in run.skipped.items()}},
            rows_in=len(table), rows_out=len(table), rows_rejected=0,
            outputs=[layout.experiments.name],
            timings={"train": float(table["train_seconds"].sum())})


def headline(table: pd.DataFrame) -> pd.DataFrame:
    """The results as the notebook shows them, checkpoint by checkpoint."""
    shown = [C.CHECKPOINT_S, "model", "kind", "selected", "val_mae_s", "mae_s", "mae_ci_low",
             "mae_ci_high", "normalized_mae", "headroom_captured", "diff_vs_reference_s",
             "diff_vs_reference_ci_low", "diff_vs_reference_ci_high", "train_seconds"]
    return table[shown].set_index([C.CHECKPOINT_S, "model"]).round(3)


def plot_mae_by_checkpoint(table: pd.DataFrame) -> Figure:
    """Test MAE per model at each checkpoint with its 95% interval (left), and each model's
    paired difference to the checkpoint's reference baseline (right)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    checkpoints = sorted(table[C.CHECKPOINT_S].unique())
    models = list(dict.fromkeys(table.sort_values("kind")["model"]))
    width = 0.8 / max(1, len(models))
    for i, model in enumerate(models):
        mine = table[table["model"] == model].set_index(C.CHECKPOINT_S).reindex(checkpoints)
        x = np.arange(len(checkpoints)) + (i - (len(models) - 1) / 2) * width
        kind = str(mine["kind"].dropna().iloc[0])
        style = {"fmt": MARKERS.get(kind, "o"), "capsize": 3, "label": model,
                 "color": plots.KIND_COLORS.get(kind) if kind in (ORACLE,) else None}
        left.errorbar(x, mine["mae_s"], yerr=[mine["mae_s"] - mine["mae_ci_low"],
                                              mine["mae_ci_high"] - mine["mae_s"]], **style)
        right.errorbar(x, mine["diff_vs_reference_s"],
                       yerr=[mine["diff_vs_reference_s"] - mine["diff_vs_reference_ci_low"],
                             mine["diff_vs_reference_ci_high"] - mine["diff_vs_reference_s"]],
                       **style)
    labels = [f"{e / 60:g} min" for e in checkpoints]
    for ax in (left, right):
        ax.set_xticks(np.arange(len(checkpoints)), labels)
        ax.set_xlabel("the session has lasted")
    left.set_ylabel("test MAE of the total length (s), 95% interval")
    right.axhline(0.0, color="#9e9e9e", linestyle=":")
    right.set_ylabel("MAE minus the reference baseline's (s), paired 95% interval")
    left.set_title("In-session MAE by checkpoint")
    right.set_title("Difference to the best baseline on validation")
    left.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def draw_figure(run: InSessionRun, table: pd.DataFrame) -> Figure:
    """The MAE-by-checkpoint figure, saved under WORK/results/figures/ and returned."""
    fig = plot_mae_by_checkpoint(table)
    plots.save_figure(fig, WorkLayout(run.work).figures / f"{FIGURE_NAME}.png", run.run_id)
    return fig


def run_in_session(work: str | Path, raw: str | Path | None, params: InSessionParams,
                   log: Callable[[str], None] = print) -> pd.DataFrame:
    """The notebook's steps in one call (the `sessionlen in-session` command): rows, baselines,
    models, results recorded, figure saved; returns the acceptance table."""
    from utils.models_with_clusters.in_session import add_baselines, start_in_session, train_models

    run = start_in_session(work, raw, params, log)
    add_baselines(run)
    train_models(run, log)
    table = results_table(run)
    compared = comparisons(run, table)
    record_results(run, table, compared)
    draw_figure(run, table)
    log(headline(table).to_string())
    return acceptance(table, compared)
