"""Peer groups: the kinds of listener, fit on train users' habits, and each session's features
from them (group probabilities, the expected group level, the user's shrunk deviation)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from utils.core import columns as C

# What a listener's history says about the kind of listener: peer groups are fit on these.
PEER_DESCRIPTORS = ["hist_median_log", "hist_mean_log", "hist_q25_log", "hist_q75_log",
                    "log_sessions_per_day", "weekend_share", "hour_regularity"]
# History sizes (sessions) at which a user's own level counts half in the shrunk deviations.
PEER_SHRINK_SESSIONS = (30, 100)
# Upper end of the peer-group numbers BIC chooses among.
MAX_PEER_GROUPS = 8


@dataclass(frozen=True)
class PeerGroups:
    """A Gaussian mixture over train users' habits: the kinds of listener, and their levels."""

    mixture: GaussianMixture
    center: np.ndarray
    scale: np.ndarray
    levels: np.ndarray

    def probabilities(self, descriptors: np.ndarray) -> np.ndarray:
        """Group membership of each row; rows without history get the groups' shares."""
        known = ~np.isnan(descriptors).any(axis=1)
        probs = np.tile(self.mixture.weights_, (len(descriptors), 1))
        if known.any():
            probs[known] = self.mixture.predict_proba((descriptors[known] - self.center)
                                                      / self.scale)
        return probs


def _ordered_mixture(values: np.ndarray, groups: int, seed: int) -> GaussianMixture:
    """A seeded diagonal Gaussian mixture of `groups` components over standardized rows."""
    # One row per user: the native thread pools' start-up costs more than the work (ten times
    # more under load from other processes).
    with threadpool_limits(1):
        return GaussianMixture(groups, covariance_type="diag", n_init=5, reg_covar=1e-4,
                               random_state=seed).fit(values)


def choose_peer_groups(values: np.ndarray, seed: int, most: int = MAX_PEER_GROUPS) -> int:
    """The number of groups (1..most, two users per group at least) with the lowest BIC.

    BIC weighs the fit to the train users against the parameters each group adds, so the
    number follows the data, whatever generated it, without looking at any session to predict.
    """
    candidates = range(1, max(1, min(most, len(values) // 2)) + 1)
    bic = [_ordered_mixture(values, k, seed).bic(values) for k in candidates]
    return int(candidates[int(np.argmin(bic))])


def fit_peer_groups(sessions: pd.DataFrame, train_rows: np.ndarray, groups: int | None,
                    seed: int) -> PeerGroups | None:
    """Fit peer groups on each train user's habits as of their last train session.

    `groups` None chooses the number by BIC on those train users (`choose_peer_groups`).
    Groups are ordered by level (mean log-length). None when groups is 0 or there are too few
    train users (fewer than two per group) to fit them.
    """
    train = sessions.iloc[train_rows]
    last = train.groupby(C.USER_ID, sort=False).tail(1)[PEER_DESCRIPTORS].dropna()
    if groups == 0 or len(last) < 2 * (groups or 1):
        return None
    values = last.to_numpy(dtype=np.float64)
    center, scale = values.mean(axis=0), values.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    standardized = (values - center) / scale
    if groups is None:
        groups = choose_peer_groups(standardized, seed)
    mixture = _ordered_mixture(standardized, groups, seed)
    order = np.argsort(mixture.means_[:, 1] * scale[1] + center[1])
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        setattr(mixture, name, getattr(mixture, name)[order])
    levels = mixture.means_[:, 1] * scale[1] + center[1]
    return PeerGroups(mixture, center, scale, levels)


def peer_features(sessions: pd.DataFrame, peers: PeerGroups) -> tuple[np.ndarray, list[str]]:
    """Group probabilities, the expected group level, and the user's own deviation from it.

    The deviation is shrunk by history size: with few sessions a user's mean says little beyond
    their group's level, with many it says how they differ (an empirical-Bayes estimate, left to
    the models to weigh through two shrinkage strengths).
    """
    probs = peers.probabilities(sessions[PEER_DESCRIPTORS].to_numpy(dtype=np.float64))
    level = probs @ peers.levels
    deviation = np.nan_to_num(sessions["hist_mean_log"].to_numpy(dtype=np.float64) - level)
    count = np.expm1(sessions["log_history_count"].to_numpy(dtype=np.float64))
    shrunk = [deviation * count / (count + k) for k in PEER_SHRINK_SESSIONS]
    names = ([f"peer_p{k + 1}" for k in range(probs.shape[1])] + ["peer_level"]
             + [f"peer_deviation_{k}" for k in PEER_SHRINK_SESSIONS])
    return np.column_stack([probs, level, *shrunk]), names
