"""The per-cluster run's results: tables, comparisons, figures and their records.

Every model and baseline is scored on the same test rows (see cluster_models); the per-cluster
table breaks the test MAE down by the group each row belongs to.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from utils.baseline import experiment
from utils.core import columns as C
from utils.core import plots
from utils.core.config import WorkLayout
from utils.core.errors import SessionlenError
from utils.core.results import append_comparisons, append_experiments, utc_now
from utils.core.stage_io import write_manifest
from utils.core.work_lock import stage_lock
from utils.models_with_clusters.cluster_groups import group_names
from utils.models_with_clusters.cluster_models import ClusterExperiment

STAGE = "clusters"
MANIFEST_STAGE = "cluster_models"


def results_table(run: ClusterExperiment) -> pd.DataFrame:
    """Every model and baseline on the same test rows: MAE, RMSE, normalized MAE, headroom."""
    return experiment.results_table(run.base)


def per_cluster_table(run: ClusterExperiment) -> pd.DataFrame:
    """Test MAE (seconds) of global, per-cluster and user_mean predictions within each group."""
    predictions = run.base.predictions()
    needed = [f"global_{run.model}", f"cluster_{run.model}", experiment.NORMALIZER]
    missing = [name for name in needed if name not in predictions]
    if missing:
        raise SessionlenError(f"train and score {', '.join(missing)} before the per-cluster table")
    actual = run.base.actual_s
    errors = pd.DataFrame({name: np.abs(actual - predictions[name]) for name in needed})
    errors["group"] = group_names(run.groups[run.features.rows["test"]])
    table = errors.groupby("group")[needed].mean()
    table.loc["all"] = errors[needed].mean()
    sizes = errors.groupby("group").size()
    table.insert(0, "test_sessions", [int(sizes.get(g, len(errors))) for g in table.index])
    table = table.rename(columns={name: f"{name}_mae_s" for name in needed})
    table["cluster_vs_global"] = table[needed[1] + "_mae_s"] / table[needed[0] + "_mae_s"]
    return table


def record_cluster_results(run: ClusterExperiment, table: pd.DataFrame, compared: pd.DataFrame
                           ) -> Path:
    """Append every row (stage clusters) to experiments.csv, the comparisons to
    comparisons.csv, and record the stage manifest."""
    rows = table.assign(run_id=run.base.run_id, finished_at=utc_now(), stage=STAGE)
    layout = WorkLayout(run.base.work)
    n_test = int(table["n_test"].iloc[0])
    with stage_lock(layout.results, exclusive=True):
        path = append_experiments(run.base.work, rows[C.EXPERIMENT_COLUMNS])
        append_comparisons(run.base.work, compared.assign(run_id=run.base.run_id, stage=STAGE))
        write_manifest(
            layout.results, MANIFEST_STAGE,
            inputs=[layout.summary_dir, layout.user_profile_cluster],
            parameters={"run_id": run.base.run_id, "model": run.model, **run.params.to_dict()},
            rows_in=n_test, rows_out=n_test, rows_rejected=0,
            outputs=[layout.experiments.name],
            timings={"train": float(table["train_seconds"].sum())},
        )
    return path


def plot_mae_per_cluster(per_cluster: pd.DataFrame) -> Figure:
    """Grouped bars per cluster: global model, per-cluster model and user_mean test MAE."""
    shown = per_cluster.filter(like="_mae_s")
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(shown.columns)
    x = np.arange(len(shown))
    for i, column in enumerate(shown.columns):
        ax.bar(x + i * width, shown[column], width, label=column.removesuffix("_mae_s"))
    ax.set_xticks(x + width * (len(shown.columns) - 1) / 2, [str(i) for i in shown.index])
    ax.set_xlabel("cluster (unclustered: predicted by the global model in both runs)")
    ax.set_ylabel("test MAE (seconds)")
    ax.set_title("Test MAE per cluster")
    ax.legend()
    fig.tight_layout()
    plt.close(fig)  # released from pyplot: a notebook shows it once, when a cell returns it
    return fig


def draw_cluster_figures(run: ClusterExperiment, table: pd.DataFrame,
                         per_cluster: pd.DataFrame) -> dict[str, Figure]:
    """The stage's figures, saved under WORK/results/figures/ and returned for display."""
    figures_dir = WorkLayout(run.base.work).figures
    figures = {"mae_per_model": plots.plot_mae_per_model(table),
               "mae_per_cluster": plot_mae_per_cluster(per_cluster)}
    for name, fig in figures.items():
        plots.save_figure(fig, figures_dir / f"{STAGE}_{name}.png", run.base.run_id)
    return figures


def headline(table: pd.DataFrame) -> pd.DataFrame:
    """The results as the notebook shows them: the deciding metrics, best first."""
    return experiment.headline(table)


def cluster_comparisons(run: ClusterExperiment, table: pd.DataFrame) -> pd.DataFrame:
    """The selected model against the others and the reference, and per-cluster against global:
    paired test-MAE differences with intervals (see `experiment.comparisons`)."""
    general = experiment.comparisons(run.base, table)
    versus = experiment.comparisons(run.base, table,
                                    [(f"cluster_{run.model}", f"global_{run.model}")])
    return pd.concat([versus, general], ignore_index=True).drop_duplicates(["model", "versus"])
