"""Figures of the cluster analysis: each function draws one, saves it as PNG, returns it.

A figure is released from pyplot before it is returned, so a notebook shows it exactly once:
when the cell returns it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from utils.core import columns as C
from utils.core.errors import SessionlenError
from utils.core.plots import finish_figure
from utils.models_with_clusters.clustering import (
    ALL,
    UNCLUSTERED,
    SilhouetteFit,
    elbow_table,
    resolve_columns,
    silhouette_fits,
)

PALETTE = plt.get_cmap("tab10")
GROUP_GREY = "#9e9e9e"  # the unclustered users and the overall row
SILHOUETTE_GAP = 0.02  # blank space between clusters, as a share of the users


def _finish(fig: Figure, path: Path | None) -> Figure:
    """Save to `path` when given; release from pyplot either way."""
    fig.tight_layout()
    return finish_figure(fig, path)


def plot_cluster_elbow(profiles: pd.DataFrame, columns: Sequence[str | int],
                       k_range: Sequence[int], seed: int = 1, path: Path | None = None) -> Figure:
    """KMeans inertia over k (each k its own fit) with the knee marked."""
    table = elbow_table(profiles, columns, k_range, seed)
    knee = table[table["knee"]].iloc[0]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(table["k"], table["inertia"], marker="o", color=PALETTE(0))
    ax.axvline(knee["k"], color="crimson", linestyle="--", linewidth=1)
    ax.scatter([knee["k"]], [knee["inertia"]], s=120, facecolors="none", edgecolors="crimson",
               zorder=3, label=f"knee: k = {int(knee['k'])}")
    ax.set_xticks(table["k"])
    ax.set_xlabel("clusters k")
    ax.set_ylabel("inertia (standardized features)")
    ax.set_title(f"Elbow over {', '.join(resolve_columns(columns))}", fontsize=10)
    ax.legend()
    return _finish(fig, path)


def _column_name(column: str | int) -> str:
    """A profile column given by name or index (the user id is allowed as an axis too)."""
    if isinstance(column, str) and column == C.USER_ID:
        return column
    return resolve_columns([column])[0]


def plot_clusters(profiles: pd.DataFrame, labels: pd.Series, x: str | int, y: str | int,
                  log: bool = False, path: Path | None = None) -> Figure:
    """Users on any two profile columns (raw units), coloured by cluster."""
    x_name, y_name = _column_name(x), _column_name(y)
    cluster = profiles[C.USER_ID].map(labels)
    if cluster.isna().any():
        raise SessionlenError(f"{int(cluster.isna().sum())} profiles have no cluster label")
    fig, ax = plt.subplots(figsize=(7, 5))
    for index, value in enumerate(sorted(cluster.unique())):
        rows = (cluster == value).to_numpy()
        ax.scatter(profiles.loc[rows, x_name], profiles.loc[rows, y_name], s=18, alpha=0.75,
                   color=PALETTE(index % 10), label=f"cluster {int(value)} ({int(rows.sum())})")
    if log:
        ax.set_xscale("symlog")
        ax.set_yscale("symlog")
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)
    ax.set_title(f"{len(profiles)} users in {cluster.nunique()} clusters")
    ax.legend(fontsize=8)
    return _finish(fig, path)


def _draw_silhouette(ax: plt.Axes, fit: SilhouetteFit) -> None:
    """One k's silhouette plot: each cluster's sorted values as a band, the average as a line."""
    gap = max(1, int(SILHOUETTE_GAP * len(fit.values)))
    bottom = gap
    for cluster in range(fit.k):
        values = np.sort(fit.values[fit.labels == cluster])
        top = bottom + len(values)
        ax.fill_betweenx(np.arange(bottom, top), 0, values, color=PALETTE(cluster % 10),
                         alpha=0.8, linewidth=0)
        ax.text(-0.05, (bottom + top) / 2, str(cluster), ha="right", va="center", fontsize=8)
        bottom = top + gap
    ax.axvline(fit.average, color="crimson", linestyle="--", linewidth=1)
    ax.set_xlim(min(-0.1, float(fit.values.min()) - 0.05), 1.0)
    ax.set_ylim(0, bottom)
    ax.set_yticks([])
    ax.set_xlabel("silhouette value")
    ax.set_title(f"k = {fit.k}: average {fit.average:.3f}", fontsize=10)


def silhouette_analysis(profiles: pd.DataFrame, columns: Sequence[str | int],
                        k_values: Sequence[int], spectral: bool = False, seed: int = 1,
                        path: Path | None = None) -> Figure:
    """One silhouette plot per k, each from its own clustering with that k."""
    fits = silhouette_fits(profiles, columns, k_values, spectral, seed)
    cols = min(3, len(fits))
    rows = math.ceil(len(fits) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax, fit in zip(axes.flat, fits, strict=False):
        _draw_silhouette(ax, fit)
    for ax in axes.flat[len(fits):]:
        ax.set_visible(False)
    best = max(fits, key=lambda f: f.average)
    method = "spectral clustering" if spectral else "KMeans"
    fig.suptitle(f"Silhouettes ({method}); best average at k = {best.k}", fontsize=11)
    return _finish(fig, path)


def plot_baseline_mae(table: pd.DataFrame, path: Path | None = None) -> Figure:
    """user_mean baseline MAE per cluster: seconds (left) and the cluster's z-units (right)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = [str(c) for c in table.index]
    colors = [GROUP_GREY if c in (UNCLUSTERED, ALL) else PALETTE(i % 10)
              for i, c in enumerate(table.index)]
    left.bar(labels, table["user_mean_mae_s"], color=colors)
    left.set_ylabel("MAE (s)")
    left.set_title("user_mean baseline, seconds")
    right.bar(labels, table["user_mean_mae_z"], color=colors)
    right.set_ylabel("MAE (standardized units of the cluster)")
    right.set_title("user_mean baseline, standardized")
    for ax in (left, right):
        ax.set_xlabel("cluster")
        ax.tick_params(axis="x", labelrotation=30)
    return _finish(fig, path)
