"""Views of the summarize stage for notebook 1: split sizes, length histograms, gap sensitivity."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from utils.baseline.sessions import session_lengths, session_starts
from utils.baseline.user_plays import read_plays, user_files
from utils.core.columns import CURRENT_SESSION_LENGTH, USER_ID
from utils.core.config import WorkLayout
from utils.core.stage_io import require_stage

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def split_overview(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per split: sessions, users and the mean/median session length in seconds."""
    rows = {
        name: {
            "sessions": len(frame),
            "users": frame[USER_ID].nunique(),
            "median_length_s": frame[CURRENT_SESSION_LENGTH].median(),
            "mean_length_s": frame[CURRENT_SESSION_LENGTH].mean(),
        }
        for name, frame in splits.items()
    }
    return pd.DataFrame.from_dict(rows, orient="index")


def threshold_sensitivity(work: Path, gap_minutes: Sequence[float]) -> pd.DataFrame:
    """Sessions and median session length (s) under several gap thresholds, on the same plays."""
    layout = WorkLayout(Path(work))
    require_stage(layout.user_dir, "denormalize")
    plays = read_plays(user_files(layout.user_dir))
    rows = []
    for gap in sorted(set(gap_minutes)):
        starts = session_starts(plays.user_code, plays.timestamp_ms, plays.duration_s, gap)
        _, lengths = session_lengths(starts, plays.timestamp_ms, plays.duration_s)
        rows.append({"gap_minutes": gap, "sessions": int(starts.sum()),
                     "median_length_s": float(np.median(lengths)) if len(lengths) else np.nan})
    return pd.DataFrame(rows)


def plot_session_lengths(splits: dict[str, pd.DataFrame], path: Path | None = None) -> Figure:
    """Histogram of session lengths per split on a log x axis; saved as PNG when `path` is given."""
    import matplotlib.pyplot as plt

    from utils.core.plots import finish_figure

    fig, ax = plt.subplots(figsize=(8, 4))
    # A one-play session of unknown duration lasts 0 s: it is counted in the first log bin.
    lengths = {n: np.maximum(f[CURRENT_SESSION_LENGTH].to_numpy(), 1.0) for n, f in splits.items()}
    top = max((float(v.max()) for v in lengths.values() if len(v)), default=10.0)
    bins = np.logspace(0, np.log10(max(top, 10.0)), 60)
    for name, values in lengths.items():
        ax.hist(values, bins=bins, histtype="step", label=f"{name} ({len(values)} sessions)")
    ax.set_xscale("log")
    ax.set_xlabel("session length (s, log scale; 0 s counted as 1 s)")
    ax.set_ylabel("sessions")
    ax.set_title("Session lengths per split")
    ax.legend()
    fig.tight_layout()
    return finish_figure(fig, path)
