"""Track durations: the API answer when there is one, else an offline estimate from the plays.

The estimate is the track's median in-session gap, else its artist's, else a default, and every
duration records where it came from (api | estimated | default). With synthetic data, whose
catalog holds the true durations, the estimate's errors can be measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from utils.core.columns import (
    ARTIST_GAP_MEDIAN_S,
    ARTIST_KEY,
    ARTIST_NAME,
    DURATION,
    DURATION_SOURCE,
    GAP_MEDIAN_S,
    GENRE,
    GT_TRACKS_COLUMNS,
    TRACK_KEY,
    TRACK_NAME,
)
from utils.core.errors import SessionlenError
from utils.data_processing import lastfm_client as client
from utils.data_processing.crawl_cache import KEYS, STATUS_NOT_REQUESTED, STATUS_OK

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The columns track_metadata.csv holds after TRACK_METADATA_COLUMNS.
API_STATUS = "api_status"
ESTIMATED_DURATION = "estimated_duration"


def estimate_durations(tracks: pd.DataFrame, default_s: float) -> pd.DataFrame:
    """Offline durations: the track's median in-session gap, else its artist's, else a default."""
    own = tracks[GAP_MEDIAN_S].where(tracks[GAP_MEDIAN_S] > 0)
    artist = tracks[ARTIST_GAP_MEDIAN_S].where(tracks[ARTIST_GAP_MEDIAN_S] > 0)
    duration = own.fillna(artist).fillna(default_s)
    source = np.where(own.notna() | artist.notna(), "estimated", "default")
    return pd.DataFrame({DURATION: duration.to_numpy(), DURATION_SOURCE: source},
                        index=tracks.index)


def assemble_metadata(tracks: pd.DataFrame, cached: pd.DataFrame,
                      default_s: float) -> pd.DataFrame:
    """One row per unique track, in input order: API duration when known, else the estimate."""
    answers = tracks[KEYS].merge(cached, how="left", on=KEYS, validate="m:1")
    estimate = estimate_durations(tracks, default_s)
    ok = answers["status"].eq(STATUS_OK).to_numpy()
    api_duration = pd.to_numeric(answers["duration_s"], errors="coerce").to_numpy()
    from_api = ok & (api_duration > 0)
    return pd.DataFrame({
        ARTIST_KEY: tracks[ARTIST_KEY].to_numpy(),
        TRACK_KEY: tracks[TRACK_KEY].to_numpy(),
        DURATION: np.where(from_api, api_duration, estimate[DURATION].to_numpy()).round(3),
        GENRE: np.where(ok, answers["genres"].fillna("").astype(str).to_numpy(), ""),
        DURATION_SOURCE: np.where(from_api, "api", estimate[DURATION_SOURCE].to_numpy()),
        API_STATUS: answers["status"].fillna(STATUS_NOT_REQUESTED).to_numpy(),
        ESTIMATED_DURATION: estimate[DURATION].round(3).to_numpy(),
    })


def duration_errors(metadata: pd.DataFrame, catalog_csv: Path) -> pd.DataFrame:
    """Per track with a known true duration: the output and the offline estimate against it."""
    truth = pd.read_csv(catalog_csv, dtype=str, keep_default_na=False)
    missing = [c for c in GT_TRACKS_COLUMNS if c not in truth.columns]
    if missing:
        raise SessionlenError(f"{catalog_csv}: missing column(s) {', '.join(missing)}")
    truth = pd.DataFrame({
        ARTIST_KEY: client.normalize_names(truth[ARTIST_NAME]),
        TRACK_KEY: client.normalize_names(truth[TRACK_NAME]),
        "true_duration": pd.to_numeric(truth["duration_ms"], errors="coerce") / 1000.0,
    }).drop_duplicates(KEYS)
    joined = metadata.merge(truth[truth["true_duration"] > 0], on=KEYS, how="inner")
    joined["error_s"] = joined[DURATION] - joined["true_duration"]
    joined["estimate_error_s"] = joined[ESTIMATED_DURATION] - joined["true_duration"]
    return joined[[*KEYS, DURATION_SOURCE, "true_duration", DURATION, ESTIMATED_DURATION,
                   "error_s", "estimate_error_s"]]


def duration_error_table(errors: pd.DataFrame) -> pd.DataFrame:
    """Median and mean absolute error (s) per duration source, plus the offline estimate alone."""
    final = errors.assign(abs_error=errors["error_s"].abs())
    table = final.groupby(DURATION_SOURCE)["abs_error"].agg(
        tracks="size", median_abs_error_s="median", mean_abs_error_s="mean")
    offline = errors["estimate_error_s"].abs()
    table.loc["offline estimate, every track"] = [len(offline), offline.median(), offline.mean()]
    return table.round(2)


def plot_duration_errors(errors: pd.DataFrame, out: Path | None = None) -> Figure:
    """Histogram of offline-estimate errors against the true durations (saved to `out` if given).

    The figure is released from pyplot, so a notebook shows it once: when a cell returns it.
    """
    # Imported here: the CLI's metadata stage never plots, and matplotlib is slow to import.
    import matplotlib.pyplot as plt

    from utils.core.plots import finish_figure

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.hist(errors["estimate_error_s"].clip(-300, 300), bins=60, color="tab:blue", alpha=0.8)
    ax.axvline(0, color="black", linewidth=1)
    ax.set_xlabel("offline estimate - true duration (s, clipped to ±300)")
    ax.set_ylabel("tracks")
    ax.set_title(f"Offline duration estimate error, {len(errors)} tracks "
                 f"(median |error| {errors['estimate_error_s'].abs().median():.1f} s)")
    return finish_figure(fig, out)
