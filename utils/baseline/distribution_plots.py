"""Figures of the distributional models: calibration per model and survival curves of listeners.

Each function draws one figure and returns it; `draw_distribution_figures` saves them under
WORK/results/figures/ with the run they show, like the point models' figures.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from utils.baseline.distribution import coverage, share_below
from utils.baseline.experiment import STAGE
from utils.baseline.experiment_state import Experiment
from utils.baseline.survival import SurvivalModel, empirical_survival, survival_curves
from utils.core import columns as C
from utils.core import plots
from utils.core.config import DisplayParams, WorkLayout

# A listener's curve of earlier sessions needs enough of them to be a curve.
MIN_EARLIER_SESSIONS = 20
CURVE_POINTS = 200


def plot_calibration(actual_s: np.ndarray, quantiles: dict[str, np.ndarray],
                     levels: tuple[float, ...], selected: str | None = None) -> Figure:
    """Per model, the share of test sessions at or below each predicted quantile against its
    level (a reliability diagram): on the diagonal when calibrated, above it when the quantiles
    are too long, below when too short. The title gives the 80% interval's coverage."""
    n = max(1, len(quantiles))
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    for ax, (name, q) in zip(axes.flat, quantiles.items(), strict=False):
        observed = share_below(actual_s, q, levels)
        ax.plot([0, 1], [0, 1], color="#9e9e9e", linestyle="--", linewidth=1)
        ax.plot(levels, observed, marker="o", color="#1f77b4")
        for level, share in zip(levels, observed, strict=True):
            ax.annotate(f"{share:.3f}", (level, share), xytext=(5, -10),
                        textcoords="offset points", fontsize=7)
        chosen = " (selected)" if name == selected else ""
        ax.set_title(f"{name}{chosen}\ncoverage 80%: {coverage(actual_s, q, levels):.3f}",
                     fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("quantile level (nominal)")
        ax.set_ylabel("share of test sessions below")
    for ax in list(axes.flat)[len(quantiles):]:
        ax.set_visible(False)
    fig.suptitle("Calibration of the predicted quantiles (test)")
    fig.tight_layout()
    return fig


def session_positions(experiment: Experiment) -> np.ndarray:
    """Each session's position among its listener's sessions (0 for the first)."""
    sessions = experiment.features.sessions
    return sessions.groupby(C.USER_ID, sort=False).cumcount().to_numpy()


def earlier_rows(positions: np.ndarray, row: int) -> np.ndarray:
    """FeatureSet rows of the same listener's sessions before `row`: sessions are in (user,
    time) order, so they are the `positions[row]` rows just above it."""
    return np.arange(row - int(positions[row]), row)


def example_listeners(experiment: Experiment, count: int = 3) -> list[int]:
    """FeatureSet rows of `count` listeners' first test sessions: among listeners with at least
    MIN_EARLIER_SESSIONS earlier sessions, those at evenly spaced ranks of the median of their
    earlier sessions (short to long listeners). Chosen from history only, never from test
    outcomes."""
    features = experiment.features
    test = features.rows["test"]
    users = features.sessions[C.USER_ID].to_numpy()
    first = pd.Series(test, index=users[test]).groupby(level=0).min()
    positions, medians = session_positions(experiment), {}
    for row in first.to_numpy():
        earlier = earlier_rows(positions, int(row))
        if len(earlier) >= MIN_EARLIER_SESSIONS:
            medians[int(row)] = float(np.median(features.lengths_s[earlier]))
    if not medians:
        return []
    ranked = sorted(medians, key=lambda row: (medians[row], row))
    picks = np.linspace(0, len(ranked) - 1, min(count, len(ranked))).round().astype(int)
    return [int(ranked[i]) for i in dict.fromkeys(picks)]


def plot_survival_examples(times_s: np.ndarray, model: dict[str, np.ndarray],
                           empirical: dict[str, np.ndarray]) -> Figure:
    """For each example listener, S(t) of their next session from the survival model and the
    share of their earlier sessions that lasted longer than t."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    minutes = times_s / 60.0
    for i, name in enumerate(model):
        color = f"C{i}"
        ax.plot(minutes, model[name], color=color, label=f"{name}: model")
        ax.step(minutes, empirical[name], where="post", color=color, linestyle=":",
                label=f"{name}: earlier sessions")
    ax.set_xlabel("minutes since the session started")
    ax.set_ylabel("S(t): chance the session is still going")
    ax.set_ylim(0, 1.02)
    ax.set_title("Survival of a listener's next session (Cox model) vs their earlier sessions")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def survival_examples(experiment: Experiment, survival: SurvivalModel, count: int = 3
                      ) -> Figure:
    """The survival figure for `example_listeners`, up to the 95th percentile of train
    lengths (beyond it the curves are all near 0)."""
    features = experiment.features
    rows = example_listeners(experiment, count)
    horizon = float(np.quantile(features.lengths_s[features.rows["train"]], 0.95))
    times = np.linspace(0.0, horizon, CURVE_POINTS)
    curves = survival_curves(survival, features, np.asarray(rows, dtype=np.int64), times) \
        if rows else np.empty((len(times), 0))
    users = features.sessions[C.USER_ID].to_numpy()
    model, empirical, positions = {}, {}, session_positions(experiment)
    for j, row in enumerate(rows):
        name = f"listener {users[row]}"
        model[name] = curves[:, j]
        earlier = earlier_rows(positions, row)
        empirical[name] = empirical_survival(features.lengths_s[earlier], times)
    return plot_survival_examples(times, model, empirical)


def draw_distribution_figures(experiment: Experiment, table: pd.DataFrame,
                              survival: SurvivalModel,
                              examples: int = DisplayParams.survival_examples
                              ) -> dict[str, Figure]:
    """The calibration and survival figures, saved under WORK/results/figures/ and returned."""
    mine = [r for r in experiment.results if r.quantiles_s is not None]
    chosen = table.loc[table["selected_distribution"].astype(bool), "label"]
    figures = {
        "calibration": plot_calibration(
            experiment.actual_s, {r.label: r.quantiles_s for r in mine},
            mine[0].quantile_levels if mine else (), chosen.iloc[0] if len(chosen) else None),
        "survival_curves": survival_examples(experiment, survival, examples),
    }
    figures_dir = WorkLayout(experiment.work).figures
    for name, fig in figures.items():
        plots.save_figure(fig, figures_dir / f"{STAGE}_{name}.png", experiment.run_id)
    return figures
