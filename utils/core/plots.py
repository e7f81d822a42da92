"""The figures of the model comparison: each function draws one, saves it as PNG, returns it.

Figures are closed after saving so that a notebook shows each exactly once: when a cell returns it.
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from utils.core.stage_io import atomic_file

# Length buckets (seconds) for the error breakdown: minutes to many hours, heavy tail included.
BUCKET_EDGES_S = [0, 300, 900, 1800, 3600, 7200, 14400, np.inf]
BUCKET_LABELS = ["<5 min", "5-15 min", "15-30 min", "30-60 min", "1-2 h", "2-4 h", ">4 h"]
FIGURE_RUN_KEY = "sessionlen run"
FIGURE_SAVED_KEY = "sessionlen saved"
KIND_COLORS = {"baseline": "#9e9e9e", "oracle": "#212121", "network": "#1f77b4",
               "lightgbm": "#2ca02c", "blend": "#d62728", "distribution": "#9467bd"}


def finish_figure(fig: Figure, path: Path | str | None) -> Figure:
    """Save `fig` when a path is given, and release it from pyplot either way.

    Released, a figure shows once in a notebook: as the value a cell returns.
    """
    if path is None:
        plt.close(fig)
    else:
        save_figure(fig, Path(path))
    return fig


def save_figure(fig: Figure, path: Path, run_id: str | None = None) -> Path:
    """Write `fig` as a PNG atomically and release it from pyplot.

    The PNG records when it was saved and, for a figure of recorded results, the run that
    recorded them: a notebook rerun by hand replaces some figures and not others, and the
    report says which run each one shows.
    """
    stamp = {FIGURE_SAVED_KEY: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             **({FIGURE_RUN_KEY: run_id} if run_id else {})}
    with atomic_file(Path(path), "wb") as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight", metadata=stamp)
    plt.close(fig)
    return Path(path)


def figure_stamp(path: Path) -> dict[str, str]:
    """The run and save time a PNG written by `save_figure` records (empty for other PNGs)."""
    with Image.open(path) as image:
        text = getattr(image, "text", {})
        return {k: text[k] for k in (FIGURE_RUN_KEY, FIGURE_SAVED_KEY) if k in text}


def _interval_dots(ax: Axes, shown: pd.DataFrame, value: str, low: str, high: str) -> None:
    """One dot per model at `value` with a bar from `low` to `high`; the selected one a star."""
    for row, (_, model) in enumerate(shown.iterrows()):
        chosen = bool(model["selected"])
        ax.errorbar(model[value], row, xerr=[[model[value] - model[low]],
                                             [model[high] - model[value]]],
                    fmt="*" if chosen else "o", markersize=11 if chosen else 6, capsize=3,
                    color=KIND_COLORS.get(model["kind"], "#ff7f0e"))
        ax.annotate(f"{model[value]:,.0f}", (model[high], row), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8)


def plot_mae_per_model(table: pd.DataFrame) -> Figure:
    """Test MAE per model with its 95% interval, and the paired difference to the reference.

    `table` needs columns label, kind (baseline | oracle | network | lightgbm | blend), selected
    (the validation pick, drawn as a star), mae_s, mae_ci_low/high, reference, diff_vs_reference_s
    and its ci_low/high. The left panel's intervals are wide because listeners differ; the right
    panel pairs every model with the reference on the same users, which is what tells models
    apart. The oracle is the dashed line.
    """
    shown = table[table["kind"] != "oracle"].sort_values("mae_s", ascending=False)
    fig, (left, right) = plt.subplots(1, 2, sharey=True, figsize=(12, 0.35 * len(shown) + 1.8),
                                      gridspec_kw={"width_ratios": [3, 2]})
    _interval_dots(left, shown, "mae_s", "mae_ci_low", "mae_ci_high")
    _interval_dots(right, shown, "diff_vs_reference_s", "diff_vs_reference_ci_low",
                   "diff_vs_reference_ci_high")
    labels = [f"{label} (selected)" if chosen else label
              for label, chosen in zip(shown["label"], shown["selected"], strict=True)]
    left.set_yticks(np.arange(len(shown)), labels)
    oracle = table.loc[table["kind"] == "oracle"]
    if len(oracle):
        left.axvline(oracle["mae_s"].iloc[0], color=KIND_COLORS["oracle"], linestyle="--",
                     label=f"oracle {oracle['mae_s'].iloc[0]:,.0f} s")
        right.axvline(oracle["diff_vs_reference_s"].iloc[0], color=KIND_COLORS["oracle"],
                      linestyle="--")
        left.legend(loc="upper right")
    right.axvline(0.0, color=KIND_COLORS["baseline"], linewidth=1)
    # The right panel is about the models near the reference: far worse baselines run off it
    # (the left panel shows them).
    gain = min(shown["diff_vs_reference_ci_low"].min(),
               oracle["diff_vs_reference_s"].min() if len(oracle) else 0.0)
    if gain < 0:
        right.set_xlim(1.25 * gain, -0.6 * gain)
    low = min(shown["mae_ci_low"].min(), oracle["mae_s"].min() if len(oracle) else np.inf)
    # Models differ by a few percent: start the axis near the best so differences are visible.
    left.set_xlim(0.97 * low, 1.04 * shown["mae_ci_high"].max())
    left.set_xlabel("test MAE (s), 95% bootstrap interval over users")
    right.set_xlabel(f"MAE − {table['reference'].iloc[0]} MAE (s), paired 95% interval")
    fig.suptitle("MAE per model (grey: baselines; star: selected on validation)")
    fig.tight_layout()
    return fig


def plot_predicted_vs_actual(actual_s: np.ndarray, predicted_s: np.ndarray, model: str) -> Figure:
    """Log-log density of predicted against actual session length, with the identity line."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    actual, predicted = np.log10(1.0 + actual_s), np.log10(1.0 + predicted_s)
    hexes = ax.hexbin(actual, predicted, gridsize=50, bins="log", mincnt=1, cmap="viridis")
    ends = [min(actual.min(), predicted.min()), max(actual.max(), predicted.max())]
    ax.plot(ends, ends, color="red", linewidth=1, label="predicted = actual")
    ax.set_xlabel("actual length, log10(1 + s)")
    ax.set_ylabel("predicted length, log10(1 + s)")
    ax.set_title(f"{model}: predicted vs actual (test)")
    ax.legend(loc="upper left")
    fig.colorbar(hexes, ax=ax, label="sessions (log)")
    return fig


def error_by_bucket(actual_s: np.ndarray, predictions: dict[str, np.ndarray]) -> pd.DataFrame:
    """MAE of each model within buckets of the actual length (rows: buckets, with counts)."""
    bucket = pd.cut(actual_s, BUCKET_EDGES_S, labels=BUCKET_LABELS, right=False)
    errors = pd.DataFrame({name: np.abs(pred - actual_s) for name, pred in predictions.items()})
    table = errors.groupby(bucket, observed=False).mean()
    table.insert(0, "sessions", errors.groupby(bucket, observed=False).size())
    return table


def plot_error_by_bucket(actual_s: np.ndarray, predictions: dict[str, np.ndarray]) -> Figure:
    """MAE per actual-length bucket for each model (log scale: errors grow with length)."""
    table = error_by_bucket(actual_s, predictions)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    positions = np.arange(len(table))
    for name in predictions:
        ax.plot(positions, table[name], marker="o", label=name)
    ax.set_xticks(positions, [f"{label}\n(n={n:,})" for label, n in
                              zip(table.index, table["sessions"], strict=True)], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("MAE (seconds)")
    ax.set_xlabel("actual session length")
    ax.set_title("MAE by actual-length bucket (test)")
    ax.legend(fontsize=8)
    return fig


def plot_learning_curves(curves: dict[str, dict[str, list[float]]]) -> Figure:
    """Train and validation loss per epoch for each network, best epoch marked."""
    n = max(1, len(curves))
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, curve) in zip(axes.flat, curves.items(), strict=False):
        epochs = np.arange(1, len(curve["loss"]) + 1)
        ax.plot(epochs, curve["loss"], label="train")
        ax.plot(epochs, curve["val_loss"], label="validation")
        best = int(np.argmin(curve["val_loss"]))
        ax.axvline(best + 1, color="grey", linestyle=":", label=f"best epoch {best + 1}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (MAE, standardized log)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(curves):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig
