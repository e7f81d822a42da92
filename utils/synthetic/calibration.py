"""How a generated dataset compares with the real Last.fm 1K figures, and how hard its task is.

Count targets are the real dataset's, scaled by the share of its plays a scale generates
(users x plays_factor); percentages are unscaled. The task-difficulty figures come from the
ground truth on the chronological split (baseline.splits), exactly as the pipeline splits sessions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.preprocessing import StandardScaler

from utils.baseline.baselines import naive_predictions
from utils.baseline.splits import split_codes
from utils.core.columns import (
    CURRENT_SESSION_LENGTH,
    PREVIOUS_SESSION_LENGTH,
    SESSION_ID,
    TIMESTAMP,
    USER_ID,
)
from utils.core.config import SYNTH_MECHANICS, ClusterParams, SessionParams
from utils.core.evaluation import mae

REAL_USERS = 992
REAL_PLAYS = 19_150_868
REAL_ARTISTS = 176_948  # 107,528 with MBID + 69,420 without (the dataset's README)
REAL_ARTISTS_MBID = 107_528
REAL_TRACKS = 1_000_000  # distinct (artist, track) names: "a million and more"
REAL_NO_TRACK_MBID_PCT = 28.0
REAL_NON_ASCII_PCT = 20.0
REAL_DUPLICATE_PCT = 3.0
REAL_EMPTY_PROFILE = {"gender": 108, "age": 706, "country": 85, "registered": 8}  # of 992
TOLERANCE = 0.10
USER_MEAN_MAE_RANGE = (3500.0, 5500.0)
ORACLE_VS_USER_MEAN_RANGE = (0.70, 0.90)
ORACLE_VS_USER_MEDIAN_RANGE = (0.90, 0.97)
MIN_ARI = 0.8
# Catalog counts do not scale linearly with plays, so they are checked only near full size; the
# task figures need enough users to be stable.
CATALOG_CHECK_SHARE = 0.5
TASK_CHECK_USERS = 100


@dataclass(frozen=True)
class Figure:
    """One calibration row: a generated value against a target value or an accepted range."""

    name: str
    value: float
    target: float | None = None
    low: float | None = None
    high: float | None = None
    decimals: int = 0
    checked: bool = True  # False: the target is shown for reference only

    @property
    def ok(self) -> bool | None:
        """Within ±10% of the target, or inside the range; None when there is nothing to check."""
        if math.isnan(self.value) or not self.checked:
            return None
        if self.target is not None:
            return abs(self.value - self.target) <= TOLERANCE * abs(self.target)
        if self.low is None and self.high is None:
            return None
        return (self.low is None or self.value >= self.low) and (
            self.high is None or self.value <= self.high)

    def target_text(self) -> str:
        """The target as printed: a number, a range, a bound, or a dash (~ when unchecked)."""
        if self.target is not None:
            return ("" if self.checked else "~") + _number(self.target, self.decimals)
        mark = "" if self.checked else "~"
        if self.low is not None and self.high is not None:
            return f"{mark}{_number(self.low, self.decimals)}–{_number(self.high, self.decimals)}"
        if self.low is not None:
            return f"{mark}>= {_number(self.low, self.decimals)}"
        return "—"


def _number(value: float, decimals: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{decimals}f}"


@dataclass(frozen=True)
class SynthReport:
    """What `generate_dataset` wrote and how it compares with its calibration targets."""

    out: Path
    scale: str
    users: int
    seed: int
    plays: int
    sessions: int
    seconds: float
    figures: tuple[Figure, ...]
    mechanics: str = SYNTH_MECHANICS[0]

    def figure(self, name: str) -> Figure:
        """The figure called `name`."""
        return next(f for f in self.figures if f.name == name)


def format_calibration(report: SynthReport) -> str:
    """The calibration table: figure | target | generated | within ±10% (or range)?

    A target marked ~ is for reference only at this size (see CATALOG_CHECK_SHARE and
    TASK_CHECK_USERS), or under a law whose listener types overlap by design (cluster ARI).
    """
    header = ("figure", "target", "generated", "within ±10%?")
    rows = [(f.name, f.target_text(), _number(f.value, f.decimals),
             {True: "yes", False: "NO", None: "—"}[f.ok]) for f in report.figures]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join((r[0].ljust(widths[0]), r[1].rjust(widths[1]), r[2].rjust(widths[2]),
                          r[3].ljust(widths[3]))) for r in rows]
    law = "" if report.mechanics == SYNTH_MECHANICS[0] else f" ({report.mechanics} law)"
    title = (f"synthetic Last.fm 1K{law}, scale {report.scale}, {report.users} users, seed "
             f"{report.seed}: {report.plays:,} plays in {report.sessions:,} sessions, "
             f"{report.seconds:.1f} s")
    if any(not f.checked for f in report.figures):
        lines.append("~ target for reference only at this size or under this law (not checked)")
    return "\n".join([title, *lines])


def count_figures(counts: dict[str, float], users: int, share: float) -> list[Figure]:
    """Dataset-shape figures; `share` = generated plays target / real plays."""
    rows = counts["plays"]
    catalog = share >= CATALOG_CHECK_SHARE
    figures = [
        Figure("users", counts["users"], users),
        Figure("plays", rows, REAL_PLAYS * share),
        Figure("artists", counts["artists"], REAL_ARTISTS * share, checked=catalog),
        Figure("artists with MBID", counts["artists_mbid"], REAL_ARTISTS_MBID * share,
               checked=catalog),
        Figure("distinct tracks", counts["tracks"], REAL_TRACKS * share, checked=catalog),
        Figure("% plays without track MBID", 100 * counts["no_track_mbid"] / rows,
               REAL_NO_TRACK_MBID_PCT, decimals=1, checked=catalog),
        Figure("% plays with non-ASCII names", 100 * counts["non_ascii"] / rows,
               REAL_NON_ASCII_PCT, decimals=1, checked=catalog),
        Figure("% duplicated (user, timestamp)", 100 * counts["duplicates"] / rows,
               REAL_DUPLICATE_PCT, decimals=2),
    ]
    figures += [Figure(f"empty profile {field}", counts[f"empty_{field}"],
                       round(n * users / REAL_USERS))
                for field, n in REAL_EMPTY_PROFILE.items()]
    return figures


def positions(user: np.ndarray) -> np.ndarray:
    """Each session's index among its user's sessions (sessions sorted by user then start)."""
    counts = np.bincount(user)
    return np.arange(len(user)) - np.repeat(np.cumsum(counts) - counts, counts)


def chrono_roles(user: np.ndarray) -> np.ndarray:
    """0 train, 1 validate, 2 test for sessions sorted by user then start (the chrono split)."""
    return split_codes(pd.DataFrame({USER_ID: user, SESSION_ID: positions(user)}),
                       SessionParams(split="chrono"))


def difficulty_figures(user: np.ndarray, length_s: np.ndarray, median_s: np.ndarray
                       ) -> list[Figure]:
    """user_mean / user_median / oracle MAE on the chrono test sessions, and their ratios.

    The baselines are the baseline stage's own (fit on train, predicted for test).
    """
    checked = len(np.unique(user)) >= TASK_CHECK_USERS
    sessions = pd.DataFrame({USER_ID: user, TIMESTAMP: 0, SESSION_ID: positions(user),
                             CURRENT_SESSION_LENGTH: length_s, PREVIOUS_SESSION_LENGTH: 0.0})
    role = split_codes(sessions, SessionParams(split="chrono"))
    test = role == 2
    if test.any():
        truth = length_s[test]
        predicted = naive_predictions(sessions[role == 0], sessions[test])
        mae_mean = mae(truth, predicted["user_mean"].to_numpy())
        mae_median = mae(truth, predicted["user_median"].to_numpy())
        mae_oracle = mae(truth, median_s[test])
    else:
        mae_mean = mae_median = mae_oracle = math.nan
    return [
        Figure("user_mean MAE (s), chrono test", mae_mean,
               low=USER_MEAN_MAE_RANGE[0], high=USER_MEAN_MAE_RANGE[1], checked=checked),
        Figure("user_median MAE (s)", mae_median),
        Figure("oracle MAE (s)", mae_oracle),
        Figure("oracle / user_mean MAE", mae_oracle / mae_mean, low=ORACLE_VS_USER_MEAN_RANGE[0],
               high=ORACLE_VS_USER_MEAN_RANGE[1], decimals=3, checked=checked),
        Figure("oracle / user_median MAE", mae_oracle / mae_median,
               low=ORACLE_VS_USER_MEDIAN_RANGE[0], high=ORACLE_VS_USER_MEDIAN_RANGE[1],
               decimals=3, checked=checked),
    ]


def cluster_figure(user: np.ndarray, length_s: np.ndarray, rows: np.ndarray,
                   archetype: np.ndarray, k: int, plays_factor: float, seed: int,
                   separated: bool = True) -> Figure:
    """ARI of KMeans on standardized train (average, median, total sessions) vs the archetypes.

    Eligibility mirrors the clustering stage's defaults, with the row and session minimums
    scaled by plays_factor as it does for synthetic data. When the planted types overlap by
    design (`separated` False) the ARI is shown for reference only.
    """
    params = ClusterParams()
    train = chrono_roles(user) == 0
    n_users = len(archetype)
    sessions = np.bincount(user[train], minlength=n_users)
    total = np.bincount(user[train], weights=length_s[train], minlength=n_users)
    train_rows = np.bincount(user[train], weights=rows[train], minlength=n_users)
    average = total / np.maximum(sessions, 1)
    median = pd.Series(length_s[train], dtype=np.float64).groupby(user[train]).median().reindex(
        range(n_users)).to_numpy()
    eligible = ((train_rows >= math.ceil(params.min_rows * plays_factor))
                & (sessions >= max(1, math.ceil(params.min_sessions * plays_factor)))
                & (average <= params.max_average_length) & (sessions > 0))
    name = f"cluster ARI (KMeans k={k}, train profiles)"
    checked = separated and n_users >= TASK_CHECK_USERS
    if eligible.sum() < 2 * k:
        return Figure(name, math.nan, low=MIN_ARI, decimals=3, checked=checked)
    features = StandardScaler().fit_transform(
        np.column_stack([average, median, sessions])[eligible])
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(features)
    return Figure(name, float(adjusted_rand_score(archetype[eligible], labels)), low=MIN_ARI,
                  decimals=3, checked=checked)
