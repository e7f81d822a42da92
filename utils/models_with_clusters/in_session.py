"""In-session predictions: once a session has lasted e seconds, how long will it be in total?

The rows of checkpoint e are the sessions of each split that lasted more than e: train rows fit,
validation rows choose and stop, test rows are scored once. A model knows the start-time
features of the session-start models (baseline.features, fit on train) and the plays from the start
to start + e (in_session_features). The baselines and the oracle are computed by code on
the same rows: see `lasted_baselines` and `oracle_given`.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from utils.baseline.baselines import (
    GLOBAL_MEDIAN_LASTED,
    GT_START,
    IN_SESSION_BASELINES,
    ORACLE,
    USER_MEDIAN_LASTED,
    USER_REMAINING,
    oracle_predictions,
)
from utils.baseline.features import (
    CATEGORICAL_FEATURES,
    FeatureSet,
    build_feature_set,
    tabular_features,
)
from utils.baseline.summary_dir import load_summaries, load_user_ids
from utils.core import columns as C
from utils.core.config import InSessionParams
from utils.core.errors import DatasetTooSmallError, SessionlenError
from utils.core.results import new_run_id
from utils.models_with_clusters.in_session_features import (
    attach_sessions,
    known_plays,
    play_sequences,
    play_table,
    read_plays,
    summarize_known,
)
from utils.models_with_clusters.in_session_models import ROLES, CheckpointData, TrainedModel

STAGE = "in_session"
# The baselines (names and meaning in utils.baseline.baselines); (a) and (b) fall back to the global
# train median of sessions that lasted more than e for a user without such an earlier session.
BASELINES = IN_SESSION_BASELINES
# normalized_mae of this stage is a model's MAE over baseline (a)'s on the same rows.
NORMALIZER = USER_MEDIAN_LASTED
# A checkpoint needs sessions of every role to be fitted, stopped and scored.
MIN_ROWS = {"train": 20, "validate": 5, "test": 5}


@dataclass
class Checkpoint:
    """One checkpoint's rows (positions in the FeatureSet per role), inputs and results."""

    checkpoint_s: int
    rows: dict[str, np.ndarray]
    data: CheckpointData
    results: list[TrainedModel] = field(default_factory=list)
    oracle_exact: int | None = None

    def users(self, features: FeatureSet, role: str = "test") -> np.ndarray:
        """The user of each row of a role: the unit the bootstrap resamples."""
        return features.sessions[C.USER_ID].to_numpy()[self.rows[role]]


@dataclass
class InSessionRun:
    """The state the notebook carries from step to step."""

    work: Path
    raw: Path | None
    params: InSessionParams
    features: FeatureSet
    checkpoints: dict[int, Checkpoint]
    skipped: dict[int, str]
    run_id: str = field(default_factory=new_run_id)


def lasted_baselines(sessions: pd.DataFrame, checkpoint_s: float, train: np.ndarray
                     ) -> pd.DataFrame:
    """The baselines for every session that lasted more than e, indexed by its row in `sessions`.

    `sessions`: user_id, timestamp and current_session_length, sorted by (user, time), every
    split (history is history: a test session follows the user's train sessions); `train`: a
    boolean mask of the train rows, the only ones the fallback is fit on. (a) and (b) are
    computed separately; a median commutes with a shift, so they agree wherever a user has such
    history, and the fallbacks agree too.
    """
    length = sessions[C.CURRENT_SESSION_LENGTH].to_numpy(np.float64)
    lasted = length > checkpoint_s
    if not (lasted & train).any():
        raise DatasetTooSmallError(f"no train session lasted more than {checkpoint_s:g} s")
    fallback_total = float(np.median(length[lasted & train]))
    fallback_remaining = float(np.median(length[lasted & train] - checkpoint_s))
    mine = pd.DataFrame({"user": sessions[C.USER_ID].to_numpy()[lasted],
                         "total": length[lasted], "remaining": length[lasted] - checkpoint_s},
                        index=np.flatnonzero(lasted))
    grouped = mine.groupby("user", sort=False)

    def median_before(column: str) -> pd.Series:
        upto = grouped[column].expanding().median().reset_index(level=0, drop=True)
        return upto.sort_index().groupby(mine["user"], sort=False).shift(1)

    return pd.DataFrame({
        USER_MEDIAN_LASTED: median_before("total").fillna(fallback_total),
        USER_REMAINING: checkpoint_s + median_before("remaining").fillna(fallback_remaining),
        GLOBAL_MEDIAN_LASTED: fallback_total,
    }, index=mine.index)


def given_column(checkpoint_s: int) -> str:
    """The ground-truth column of the planted median given the session lasted e seconds."""
    return f"median_length_given_{checkpoint_s}_s"


def read_truth_given(raw: Path | None, checkpoints: list[int]) -> pd.DataFrame | None:
    """ground_truth/sessions.csv's user, start and given-e medians (None without ground truth).

    Checkpoints the generator did not solve get no oracle; a dataset generated before the
    given-e columns existed gets none at all.
    """
    if raw is None or not (Path(raw) / C.GROUND_TRUTH).is_dir():
        return None
    path = Path(raw) / C.GROUND_TRUTH / C.GT_SESSIONS_FILE
    header = pd.read_csv(path, nrows=0).columns
    wanted = [given_column(e) for e in checkpoints if given_column(e) in header]
    if not wanted:
        return None
    return pd.read_csv(path, usecols=[C.USER_ID, GT_START, *wanted], dtype={C.USER_ID: str},
                       keep_default_na=False)


def oracle_given(frame: pd.DataFrame, truth: pd.DataFrame, user_ids: pd.DataFrame,
                 checkpoint_s: int) -> tuple[np.ndarray, int]:
    """(planted median given e per row, rows starting exactly at a planted session).

    Matched exactly as the session-start oracle is (baseline.baselines.oracle_predictions): by the
    user's source id and the start time, a session taking the planted session in progress at its
    start when the pipeline's sessions differ from the planted ones.
    """
    column = given_column(checkpoint_s)
    renamed = truth[[C.USER_ID, GT_START, column]].rename(columns={column: C.GT_MEDIAN})
    return oracle_predictions(frame, renamed, user_ids)


def _role_rows(features: FeatureSet, checkpoint_s: int) -> dict[str, np.ndarray]:
    """FeatureSet positions of each role's sessions that lasted more than e."""
    lasted = features.lengths_s > checkpoint_s
    return {role: rows[lasted[rows]] for role, rows in features.rows.items()}


def _too_few(rows: dict[str, np.ndarray]) -> str | None:
    """Why a checkpoint's rows are too few to fit, stop and score (None when they suffice)."""
    short = [f"{role} {len(rows[role])} (needs {need})" for role, need in MIN_ROWS.items()
             if len(rows[role]) < need]
    return "sessions that lasted long enough: " + ", ".join(short) if short else None


def fit_rows(rows: dict[str, np.ndarray], most: int, seed: int) -> dict[str, np.ndarray]:
    """The rows the models fit on: every validation and test row, and at most `most` train
    rows (a seeded sample, kept in order, when there are more)."""
    if most < 1:
        raise SessionlenError(f"max_train_sessions must be positive, got {most}")
    train = rows["train"]
    if len(train) > most:
        train = train[np.sort(np.random.default_rng(seed).choice(len(train), most,
                                                                 replace=False))]
    return {**rows, "train": train}


def checkpoint_data(features: FeatureSet, tabular: pd.DataFrame, plays: pd.DataFrame,
                    rows: dict[str, np.ndarray], checkpoint_s: int, params: InSessionParams
                    ) -> CheckpointData:
    """The models' inputs for one checkpoint: start-time features and the plays known at e."""
    lasted = features.lengths_s > checkpoint_s
    known = known_plays(plays, lasted, checkpoint_s)
    summary = summarize_known(known, len(features.sessions), checkpoint_s)
    return CheckpointData(
        checkpoint_s=checkpoint_s,
        context={r: features.context[rows[r]] for r in ROLES},
        categorical={r: {n: features.categorical[n][rows[r]] for n in CATEGORICAL_FEATURES}
                     for r in ROLES},
        vocab_sizes=features.vocab_sizes,
        summary={r: summary.iloc[rows[r]].reset_index(drop=True) for r in ROLES},
        tabular={r: tabular.iloc[rows[r]].reset_index(drop=True) for r in ROLES},
        sequences={r: play_sequences(known, rows[r], params.max_plays, params.max_artist_ids,
                                     params.max_track_ids) for r in ROLES},
        length_s={r: features.lengths_s[rows[r]] for r in ROLES},
    )


def start_in_session(work: str | Path, raw: str | Path | None, params: InSessionParams,
                     log: Callable[[str], None] = print) -> InSessionRun:
    """Build the start-time features and every checkpoint's rows and inputs.

    A checkpoint with too few sessions in some role is skipped (and said so); when every one
    is, the data is too small for the stage (DatasetTooSmallError).
    """
    if not params.checkpoints or min(params.checkpoints) <= 0:
        raise SessionlenError(f"checkpoints must be positive seconds, got {params.checkpoints}")
    work = Path(work)
    features = build_feature_set(load_summaries(work), 1, peer_groups=params.peer_groups,
                                 seed=params.seed)
    tabular = tabular_features(features)
    plays = play_table(attach_sessions(read_plays(work), features.sessions))
    checkpoints, skipped = {}, {}
    for e in sorted(set(params.checkpoints)):
        rows = _role_rows(features, e)
        reason = _too_few(rows)
        if reason is not None:
            skipped[e] = reason
            log(f"checkpoint {e} s skipped: {reason}")
            continue
        fitted = fit_rows(rows, params.max_train_sessions, params.seed)
        checkpoints[e] = Checkpoint(e, rows, checkpoint_data(features, tabular, plays, fitted, e,
                                                             params))
    if not checkpoints:
        raise DatasetTooSmallError(
            f"no checkpoint has enough sessions that lasted that long: "
            f"{'; '.join(f'{e} s: {why}' for e, why in skipped.items())}")
    return InSessionRun(work, Path(raw) if raw else None, params, features, checkpoints,
                        skipped)


def rows_overview(run: InSessionRun) -> pd.DataFrame:
    """Sessions and users per checkpoint and role, with the share of the role's sessions."""
    users = run.features.sessions[C.USER_ID].to_numpy()
    lines = [{"checkpoint_s": e, "role": role, "sessions": len(rows),
              "share_of_sessions": len(rows) / max(1, len(run.features.rows[role])),
              "users": len(np.unique(users[rows]))}
             for e, point in run.checkpoints.items() for role, rows in point.rows.items()]
    return pd.DataFrame(lines).set_index(["checkpoint_s", "role"])


def add_baselines(run: InSessionRun) -> pd.DataFrame:
    """Every checkpoint's baselines (and oracle, given ground truth) on its validation and
    test rows; returns their validation MAE (the split choices are made on)."""
    sessions = run.features.sessions
    train = np.zeros(len(sessions), bool)
    train[run.features.rows["train"]] = True
    truth = read_truth_given(run.raw, list(run.checkpoints))
    user_ids = load_user_ids(run.work) if truth is not None else None
    lines = []
    for e, point in run.checkpoints.items():
        point.results = [r for r in point.results if r.kind not in ("baseline", ORACLE)]
        base = lasted_baselines(sessions, e, train)
        for name in BASELINES:
            point.results.append(TrainedModel(
                name, "baseline", {"fallback": "global train median of sessions > e"},
                base.loc[point.rows["validate"], name].to_numpy(np.float64),
                base.loc[point.rows["test"], name].to_numpy(np.float64), 0.0))
        if truth is not None and given_column(e) in truth.columns:
            val, _ = oracle_given(sessions.iloc[point.rows["validate"]], truth, user_ids, e)
            test, point.oracle_exact = oracle_given(sessions.iloc[point.rows["test"]], truth,
                                                    user_ids, e)
            point.results.append(TrainedModel(
                ORACLE, ORACLE, {"ground_truth": given_column(e),
                                 "test_sessions": len(test), "exact_matches": point.oracle_exact},
                val, test, 0.0))
        actual = point.data.length_s["validate"]
        lines += [{"checkpoint_s": e, "model": r.model,
                   "val_mae_s": float(np.mean(np.abs(actual - r.val_predictions_s)))}
                  for r in point.results if r.kind in ("baseline", ORACLE)]
    return pd.DataFrame(lines).pivot(index="model", columns="checkpoint_s", values="val_mae_s")


def train_models(run: InSessionRun, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Train the network and LightGBM of every checkpoint; one line per trained model.

    The LightGBM fits run one after another on a thread of their own while the networks train
    (a network's small recurrent steps keep about one core busy); their lines are printed as
    each checkpoint's models are collected, never in the middle of an epoch line.
    """
    from utils.models_with_clusters.in_session_models import fit_lightgbm, fit_network

    logged: list[str] = []
    pool = ThreadPoolExecutor(1, thread_name_prefix="lightgbm")
    boosted = {e: pool.submit(fit_lightgbm, point.data, run.params, logged.append, 1)
               for e, point in run.checkpoints.items()}
    pool.shutdown(wait=False)
    lines, printed = [], 0
    for e, point in run.checkpoints.items():
        point.results = [r for r in point.results if r.kind in ("baseline", ORACLE)]
        for trained in (fit_network(point.data, run.params, log), boosted[e].result()):
            point.results.append(trained)
            actual = point.data.length_s["validate"]
            lines.append({"checkpoint_s": e, "model": trained.model,
                          "val_mae_s": float(np.mean(np.abs(actual
                                                            - trained.val_predictions_s))),
                          "epochs_or_rounds": len(trained.curves.get("val_loss", [])),
                          "train_seconds": trained.train_seconds})
        for line in logged[printed:]:
            log(line)
        printed = len(logged)
    return pd.DataFrame(lines).set_index(["checkpoint_s", "model"])
